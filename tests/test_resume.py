"""resume.py: the one model of where things stand, and the guide rendered from it."""

import os
import shlex
import subprocess

import pytest
from helpers import NOW, FakeSampler, bundled_registry, check_golden, gpu, make_dir, normalized

from cockpit import report_files, resume, resume_text

NO_NVML = FakeSampler(nvml=False)
SMOKE = "20261126_043113_cpu-smoke"
SMOKE_LOGS = {
    "dense": ("done", "cpu-smoke/dense.log"),
    "moe_dropless": ("done", "cpu-smoke/moe_dropless.log"),
    "moe_cap1p0": ("done", "cpu-smoke/moe_cap1p0.log"),
}


def marks(state: resume.ResumeState) -> dict[str, str]:
    return {m.ref: m.mark for m in state.marks()}


def test_guide_for_the_bundled_registry_with_no_dirs(tmp_path):
    registry = bundled_registry(tmp_path)
    state = resume.build_state(registry, sampler=NO_NVML, now=NOW)
    assert set(marks(state).values()) == {"recorded", "pending"}
    assert state.running == [] and state.reports == [] and state.gpus.state == "unknown"
    # without NVML the 8-GPU leg cannot run here: next is the first leg this machine can run,
    # and the 8-GPU leg, first in registry order, is said with why
    nxt, far = state.next, state.next_elsewhere
    assert (nxt.experiment, nxt.leg, nxt.mark) == ("cpu-smoke", "dense", "pending")
    assert (far.experiment, far.leg, far.mark) == (
        "moe-fp8-capacity-opt-v3",
        "moe_fp8_experts_static_cap1p0_v3",
        "pending",
    )
    why = "needs 8 GPUs, and NVML is unavailable here: NVML Shared Library Not Found"
    assert [(m.ref, m.not_here) for m in state.not_here] == [(f"{far.experiment}/{far.leg}", why)]
    assert state.activity == "nothing running, 4 legs to run, 1 of them not here"
    text = resume_text.render_guide(state)
    for section in [
        "## Current State",
        "## Completed Work (Do Not Re-run)",
        "## Remaining Work",
        "## Safety/Path Constraints Reminder",
        "## Resume Environment",
    ]:
        assert section in text
    assert "- Nothing running, 4 legs to run, 1 of them not here." in text
    assert f"- `{far.experiment}/{far.leg}` pending; not on this machine: {why}" in text
    assert "Next leg here: `cpu-smoke/dense`." in text
    assert "- GPUs: unknown (NVML unavailable: NVML Shared Library Not Found)" in text
    # the seed's buffer-reuse comparison, from recorded figures, marked as recorded
    assert (
        "| metric | baseline static_cap1p0 (recorded) | static_cap1p0_bufreuse (recorded) | delta |" in text
    )
    assert "| tail50 tok/sec | 785203.42 | 806400.06 | +2.70% |" in text
    assert "| static_cap1p0 | 785203.42 | 670.31 | 9.5014 | 18983.58 | 3.00 | recorded |" in text
    # the seed's execution template, in a fresh dir
    assert f'EXP_DIR="{tmp_path}/exp/$(date +%Y%m%d_%H%M%S)_moe-fp8-capacity-opt-v3"' in text
    assert '  --checkpoint-root "$EXP_DIR/ckpt_root" \\\n' in text
    assert '  --moe-capacity-factor 1.0 2>&1 | tee "$EXP_DIR/moe_fp8_experts_static_cap1p0_v3.log"' in text
    assert (
        "`cockpit launch moe-fp8-capacity-opt-v3 --legs moe_fp8_experts_static_cap1p0_v3 --registry " in text
    )
    check_golden("resume-bundled.md", normalized(text, tmp_path))
    assert not (tmp_path / "exp").exists()  # building the state wrote nothing
    # with 8 idle GPUs, the 8-GPU leg is next here, and nothing is said about elsewhere
    state = resume.build_state(registry, sampler=FakeSampler(gpus_=[gpu(i) for i in range(8)]), now=NOW)
    assert (state.next.leg, state.next_elsewhere, state.not_here) == (
        "moe_fp8_experts_static_cap1p0_v3",
        None,
        [],
    )
    assert state.activity == "nothing running, 4 legs to run"
    # with 4 GPUs: too few
    state = resume.build_state(registry, sampler=FakeSampler(gpus_=[gpu(i) for i in range(4)]), now=NOW)
    assert state.next.leg == "dense" and state.not_here[0].not_here == "needs 8 GPUs, 4 visible here"


def test_next_leg_on_a_machine_without_gpus_cpu_only(tmp_path):
    registry = bundled_registry(tmp_path)
    done = {leg: ("done", f"cpu-smoke/{leg}.log") for leg in ("dense", "moe_dropless", "moe_cap1p0")}
    make_dir(registry.settings.exp_root, SMOKE, done)
    state = resume.build_state(registry, sampler=NO_NVML, now=NOW)
    # every leg this machine can run is done: nothing here, and the one left says why
    assert state.next is None and state.next_elsewhere.leg == "moe_fp8_experts_static_cap1p0_v3"
    assert state.activity == "nothing running, 1 leg to run, not on this machine"
    status = resume_text.render_status(state).splitlines()
    assert "running: none (1 leg to run, not on this machine)" in status
    assert status[-2:] == [
        "next: nothing this machine can run",
        "not here: moe-fp8-capacity-opt-v3/moe_fp8_experts_static_cap1p0_v3: needs 8 GPUs, and NVML is "
        "unavailable here: NVML Shared Library Not Found",
    ]
    text = resume_text.render_guide(state)
    assert "Nothing left to run that this machine can run." in text
    assert (
        "Next leg on a machine that can run it: `moe-fp8-capacity-opt-v3/moe_fp8_experts_static_cap1p0_v3` "
        "(the seed's next leg: fixed capacity 1.0, static compile, v3 dispatch). This machine cannot run it: "
        "needs 8 GPUs, and NVML is unavailable here: NVML Shared Library Not Found."
    ) in text
    # a leg sent to a Slurm cluster gets its GPUs from the scheduler: runnable from here
    exp = registry.experiment("moe-fp8-capacity-opt-v3")
    leg = exp.legs[0]
    assert resume.not_here(exp, leg, state.gpus) is not None
    slurm = type("SlurmExperiment", (), {"executor": "slurm"})()
    assert resume.not_here(slurm, leg, state.gpus) is None
    assert (
        resume.not_here(exp, registry.find_leg("cpu-smoke/dense"), state.gpus) is None
    )  # a CPU leg: anywhere


def test_execution_template_is_the_legs_exact_argv(tmp_path):
    registry = bundled_registry(tmp_path)
    for exp in registry.experiments:
        for leg in exp.legs:
            value, text = resume.execution_template(registry, leg)
            lines = text.split("\n")
            assert lines[:3] == [
                "source .venv/bin/activate",
                f'EXP_DIR="{value}"',
                'mkdir -p "$EXP_DIR/ckpt_root"',
            ]
            command = text.split("\n\n", 1)[1].replace(" \\\n", " ")
            command = command.replace("$EXP_DIR", "/x/exp dir")  # the shell expands it inside "..."
            argv = shlex.split(command)
            assert argv[-4:] == ["2>&1", "|", "tee", f"/x/exp dir/{leg.name}.log"]
            assert argv[:-4] == leg.argv("/x/exp dir")


def test_guide_with_a_finished_cpu_smoke_dir(tmp_path):
    registry = bundled_registry(tmp_path)
    d = make_dir(registry.settings.exp_root, SMOKE, SMOKE_LOGS)
    report_files.write_report(d, plots=False, now=NOW)
    state = resume.build_state(registry, sampler=FakeSampler(gpus_=[gpu(i) for i in range(8)]), now=NOW)
    m = marks(state)
    assert [m[f"cpu-smoke/{leg}"] for leg in SMOKE_LOGS] == ["done", "done", "done"]
    assert m["moe-fp8-capacity-ablation-v1/static_cap1p0"] == "recorded"
    assert state.next.leg == "moe_fp8_experts_static_cap1p0_v3"
    assert state.reports == [str(d / "report.md")]
    assert state.gpus.state == "idle" and state.gpus.text.startswith("8 GPUs are idle")
    smoke = next(e for e in state.experiments if e.id == "cpu-smoke")
    assert smoke.baseline_mark.leg == "dense" and smoke.baseline_row.source == "log"
    assert smoke.dirs == [str(d)] and all(x.dir == str(d) for x in smoke.legs)
    text = resume_text.render_guide(state)
    dense = smoke.legs[0].row
    assert (
        f"| dense | {dense.figures.tok_per_sec:.2f} | {dense.figures.dt_ms:.2f} | {dense.figures.mfu:.4f} | {dense.figures.peak_mem_mib:.2f} | "
        in text
    )
    assert "Result of `moe_cap1p0` vs baseline `dense`:" in text
    assert f"- `{d}` (run here)" in text
    check_golden("resume-cpu-smoke.md", normalized(text, tmp_path))
    # nothing pending in cpu-smoke: a registry of cpu-smoke alone has no next leg
    only = bundled_registry(
        tmp_path,
        (tmp_path / "experiments.toml").read_text().split("# ---")[0]
        + "[[experiment]]"
        + (tmp_path / "experiments.toml").read_text().split("[[experiment]]")[-1],
    )
    assert [e.id for e in only.experiments] == ["cpu-smoke"]
    state = resume.build_state(only, sampler=NO_NVML, now=NOW)
    assert state.next is None and state.activity == "all done"
    text = resume_text.render_guide(state)
    assert "Nothing pending: every leg in the registry is done, recorded or under way." in text
    assert "- All done: nothing running, and every leg is done here or recorded." in text
    assert "running: none (all done)" in resume_text.render_status(state).splitlines()


def test_marks_from_states_and_logs(tmp_path):
    registry = bundled_registry(tmp_path)
    root = registry.settings.exp_root
    # an older dir where dense finished and moe_cap1p0 crashed; a newer live queue
    make_dir(
        root,
        "20261126_010000_cpu-smoke",
        {"dense": ("done", "cpu-smoke/dense.log"), "moe_cap1p0": ("failed", "crashed-torchrun.log")},
    )
    live = make_dir(
        root,
        "20261126_020000_cpu-smoke",
        {"moe_dropless": ("running", "upstream-old-mfu.log"), "moe_cap1p0": ("waiting", None)},
        supervisor=True,
    )
    # a manual dir of plain logs for the v3 experiment: its log ended without final lines
    manual = root / "20261126_030000_moe-fp8-capacity-opt-v3"
    manual.mkdir()
    (manual / "moe_fp8_experts_static_cap1p0_v3.log").write_text("step 00001/00280 (0.36%) | loss: 9.0\n")
    state = resume.build_state(
        registry, sampler=FakeSampler(gpus_=[gpu(0, util=97, mem=30000), gpu(1)]), now=NOW
    )
    m = marks(state)
    assert m["cpu-smoke/dense"] == "done"
    assert m["cpu-smoke/moe_dropless"] == "running" and m["cpu-smoke/moe_cap1p0"] == "waiting"
    assert m["moe-fp8-capacity-opt-v3/moe_fp8_experts_static_cap1p0_v3"] == "stopped"
    assert [x.ref for x in state.running] == ["cpu-smoke/moe_dropless"]
    running = state.running[0]
    assert running.dir == str(live) and resume_text.progress(running).startswith(
        "step 3/21400 (0.01%), loss 9.9531"
    )
    waiting = state.find("cpu-smoke/moe_cap1p0")
    assert waiting.note == "GPU 0 busy: util 97% > 5%"
    assert state.gpus.state == "busy" and state.gpus.busy == [0]
    # next: nothing pending, so the first failed or stopped leg; it needs 8 GPUs, and 2 are here
    assert state.next is None
    assert (state.next_elsewhere.leg, state.next_elsewhere.mark) == (
        "moe_fp8_experts_static_cap1p0_v3",
        "stopped",
    )
    assert state.activity == "1 leg running, 1 queued"
    text = resume_text.render_guide(state)
    assert "- Running: `cpu-smoke/moe_dropless` running in " in text
    assert "- Waiting: `cpu-smoke/moe_cap1p0` waiting in " in text
    assert "1 of 2 GPUs are busy at " in text
    assert "`moe-fp8-capacity-opt-v3/moe_fp8_experts_static_cap1p0_v3` stopped in " in text
    assert "log ended without its final lines" in text

    # the queue is gone (supervisor and the leg's process): the failed run of the older dir shows
    (live / "state" / "supervisor.json").unlink()
    (live / "state" / "moe_dropless.json").unlink()
    (live / "moe_dropless.log").unlink()
    state = resume.build_state(registry, sampler=NO_NVML, now=NOW)
    failed = state.find("cpu-smoke/moe_cap1p0")
    assert failed.mark == "stopped"  # the newest record: queued/waiting with nobody to start it
    (live / "state" / "moe_cap1p0.json").unlink()
    state = resume.build_state(registry, sampler=NO_NVML, now=NOW)
    failed = state.find("cpu-smoke/moe_cap1p0")
    assert failed.mark == "failed" and failed.note.startswith("torch.OutOfMemoryError")
    assert state.find("cpu-smoke/moe_dropless").mark == "pending"
    assert (state.next.experiment, state.next.leg, state.next.mark) == (
        "cpu-smoke",
        "moe_dropless",
        "pending",
    )


@pytest.mark.parametrize(
    "sampler, state_, text",
    [
        (NO_NVML, "unknown", "unknown (NVML unavailable: NVML Shared Library Not Found)"),
        (FakeSampler(gpus_=[]), "unknown", "unknown (NVML sees no GPU)"),
        (
            FakeSampler(gpus_=[gpu(0, 3, 1000), gpu(1, 5, 1024)]),
            "idle",
            "2 GPUs are idle (max `5% util`, max `1024 MiB`",
        ),
        (FakeSampler(gpus_=[gpu(0), gpu(1, 0, 1025)]), "busy", "1 of 2 GPUs are busy at "),
        (FakeSampler(gpus_=[gpu(0, None, None)]), "idle", "1 GPU is idle (max `0% util`, max `0 MiB` used"),
    ],
)
def test_gpu_status_by_registry_thresholds(tmp_path, sampler, state_, text):
    g = resume.gpu_status(bundled_registry(tmp_path), sampler)
    assert g.state == state_ and text in g.text


def test_gpu_sampler_errors_are_unknown(tmp_path):
    class Broken:
        def sample(self):
            raise RuntimeError("driver went away")

    g = resume.gpu_status(bundled_registry(tmp_path), Broken())
    assert g.state == "unknown" and "driver went away" in g.text


def test_write_guide(tmp_path):
    registry = bundled_registry(tmp_path)
    out = resume_text.write_guide(registry, sampler=NO_NVML, now=NOW)
    assert out == registry.settings.exp_root / "resume-guide.md"
    assert out.read_text().startswith("# Nanochat Resume Guide\n")
    with pytest.raises(OSError, match="is a directory"):  # refused before anything is written
        resume_text.write_guide(registry, tmp_path, sampler=NO_NVML)


def git(cwd, *args):
    subprocess.run(
        ["git", *args],
        cwd=cwd,
        check=True,
        capture_output=True,
        env={
            **os.environ,
            "GIT_AUTHOR_NAME": "t",
            "GIT_AUTHOR_EMAIL": "t@t",
            "GIT_COMMITTER_NAME": "t",
            "GIT_COMMITTER_EMAIL": "t@t",
        },
    )


def test_branch_line_says_the_checkouts_branch_the_expected_one_and_whether_it_exists(tmp_path):
    registry = bundled_registry(tmp_path)  # expects yxb/moe-add-sft-claude
    git(tmp_path, "init", "-q", "-b", "main")
    git(tmp_path, "commit", "-q", "--allow-empty", "-m", "x")

    def guide() -> tuple[str, list[str]]:
        state = resume.build_state(registry, sampler=NO_NVML, now=NOW)
        text = resume_text.render_guide(state)
        env = text.split("## Resume Environment")[1].split("```bash\n")[1].split("```")[0].splitlines()
        return next(ln for ln in text.splitlines() if ln.startswith("Branch: ")), env

    line, env = guide()
    assert line == (
        "Branch: the checkout is on `main`; the registry expects `yxb/moe-add-sft-claude`, "
        "which does not exist locally"
    )
    assert (
        env[1]
        == "# the checkout is on main; the registry expects yxb/moe-add-sft-claude, which does not exist locally"
    )
    assert not any(
        ln.startswith("git checkout") for ln in env
    )  # never a checkout of a branch that is not there
    status = resume_text.render_status(resume.build_state(registry, sampler=NO_NVML, now=NOW)).splitlines()
    assert status[3] == (
        "branch: the checkout is on main; the registry expects yxb/moe-add-sft-claude, "
        "which does not exist locally"
    )

    git(tmp_path, "branch", "yxb/moe-add-sft-claude")
    line, env = guide()
    assert line.endswith("the registry expects `yxb/moe-add-sft-claude`, which exists locally")
    assert env[1] == "git checkout yxb/moe-add-sft-claude"

    git(tmp_path, "checkout", "-q", "yxb/moe-add-sft-claude")
    line, env = guide()
    assert line == "Branch: the checkout is on `yxb/moe-add-sft-claude`, as the registry expects"
    assert env[1] == "git status --short --branch"  # nothing to switch
    # reading the branch changed nothing in the checkout
    out = subprocess.run(
        ["git", "status", "--porcelain", "--ignored"], cwd=tmp_path, capture_output=True, text=True
    )
    assert out.stdout.splitlines() == ["?? experiments.toml"]
