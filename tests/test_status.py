"""`cockpit status` and `cockpit resume`: the resume state through the CLI."""

import json
import os
from pathlib import Path

from helpers import NOW, FakeSampler, bundled_registry, make_dir

from cockpit import cli, expdir, gpus, resume, resume_text


def run(capsys, *argv):
    code = cli.main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_status_of_the_bundled_registry(tmp_path, capsys):
    bundled_registry(tmp_path)
    code, out, err = run(capsys, "status", "--registry", str(tmp_path / "experiments.toml"))
    assert code == 0 and err == ""
    lines = out.splitlines()
    assert lines[0] == f"nanochat moe-fp8  ({tmp_path}/experiments.toml)"
    assert lines[2].startswith("GPUs: ")  # idle/busy from NVML, or unknown (NVML unavailable: ...) here
    assert "moe-fp8-capacity-ablation-v1  [8 GPUs]  5 recorded" in lines
    # a recorded leg says so once (its mark), not again after its figures; recorded: no samples, no verdict
    # the delta names the baseline's figure it was taken against
    assert (
        "  static_cap1p0           recorded  785203.42 tok/s, mfu 9.5014  "
        "Δ +67.50% vs static_cap0p0_baseline 468782.94 tok/s (recorded)"
    ) in lines
    assert "cpu-smoke  [cpu]  3 pending" in lines
    count, reason = gpus.visible_gpus()
    v3 = "moe-fp8-capacity-opt-v3/moe_fp8_experts_static_cap1p0_v3"
    if (count or 0) >= 8:  # a node with 8 GPUs: the 8-GPU leg is next
        assert "running: none (4 legs to run)" in lines
        assert lines[-1] == (
            f"next: {v3}  ->  cockpit launch moe-fp8-capacity-opt-v3 --legs "
            f"moe_fp8_experts_static_cap1p0_v3 --registry {tmp_path}/experiments.toml"
        )
    else:  # this machine: next is the first leg it can run, and the other says why not here
        assert "running: none (4 legs to run, 1 of them not here)" in lines
        assert lines[-2:] == [
            f"next: cpu-smoke/dense  ->  cockpit launch cpu-smoke --legs dense --registry {tmp_path}/experiments.toml",
            f"not here: {v3}: {gpus.shortfall(8, count, reason)}",
        ]
    assert len(lines) < 30


def test_status_shows_running_legs_with_pid_progress_eta_and_every_dir(tmp_path, capsys):
    registry = bundled_registry(tmp_path)
    root = registry.settings.exp_root
    # a live queue: its supervisor is this test process, its running leg a live stand-in torchrun
    live = make_dir(
        root,
        "20261126_043113_cpu-smoke",
        {
            "dense": ("done", "cpu-smoke/dense.log"),
            "moe_dropless": ("running", "cpu-smoke/moe_dropless.log"),
            "moe_cap1p0": ("queued", None),
        },
        supervisor=True,
        mtime=NOW,
    )
    log = live / "moe_dropless.log"  # the leg is halfway: its log ends at step 20 (no final lines)
    lines = log.read_text().splitlines(keepends=True)
    log.write_text(
        "".join(lines[: next(i for i, ln in enumerate(lines) if ln.startswith("step 00020/")) + 1])
    )
    older = make_dir(root, "20261126_010000_cpu-smoke", {"moe_cap1p0": ("failed", "crashed-torchrun.log")})
    manual = root / "20261126_050000_scratch"  # a manual dir of an experiment the registry does not know
    manual.mkdir()
    (manual / "probe.log").write_text("hello\n")
    code, out, _ = run(capsys, "status", "--registry", str(registry.path))
    assert code == 0
    pid, sup = expdir.read_state(live, "moe_dropless").pid, os.getpid()
    lines = out.splitlines()
    # step and percent as the log's last step line (`step 00020/00040 (50.00%)`), the ETA as h:mm:ss,
    # and a tail mean over fewer steps than the window says so
    progress = (
        "step 20/40 (50.00%), loss 2.0788, 5,011 tok/s (tail 20 of 50 steps, step 0 left out), ETA 0:00:06"
    )
    i = lines.index(f"running: cpu-smoke/moe_dropless  pid {pid}  {progress}")
    assert lines[i + 1] == f"  dir: {live}"
    assert "cpu-smoke  [cpu]  1 done, 1 running, 1 queued" in lines
    assert f"  moe_dropless  running   pid {pid}  {progress}" in lines
    assert (
        "  dense         done      9691.74 tok/s (tail 39 of 50 steps, step 0 left out), mfu 0.0000  (baseline)"
        in lines
    )
    # every dir under exp_root, oldest first, with its supervisor and each leg's state
    i = lines.index("dirs under exp_root: 3")
    assert lines[i + 1 : i + 4] == [
        f"  {older.name}  moe_cap1p0 failed",
        f"  {live.name}  supervisor running (pid {sup});  dense done, moe_dropless running (pid {pid}), moe_cap1p0 queued",
        f"  {manual.name}  probe manual log  (experiment 'scratch' is not in the registry)",
    ]


def test_dir_words_say_what_became_of_the_supervisor(tmp_path):
    registry = bundled_registry(tmp_path)
    root = registry.settings.exp_root
    legs = {"dense": ("done", "cpu-smoke/dense.log")}
    finished = make_dir(root, "20261126_010000_cpu-smoke", legs)
    ended = make_dir(root, "20261126_020000_cpu-smoke", {"dense": ("failed", "crashed-torchrun.log")})
    killed = make_dir(root, "20261126_030000_cpu-smoke", legs)
    record = {"pid": 999999, "create_time": 1.0, "started_at": "2026-11-26T01:00:00+00:00"}
    ends = {"ended_at": "2026-11-26T01:05:00+00:00"}
    (finished / "state" / "supervisor.json").write_text(json.dumps({**record, **ends, "status": "finished"}))
    (ended / "state" / "supervisor.json").write_text(
        json.dumps({**record, **ends, "status": "ended with legs not done"})
    )
    (killed / "state" / "supervisor.json").write_text(json.dumps(record))  # never recorded its end
    lines = [resume_text.dir_line(d) for d in expdir.discover(root)]
    assert lines == [
        f"{finished.name}  supervisor finished;  dense done",
        f"{ended.name}  supervisor ended, legs not done;  dense failed",
        f"{killed.name}  supervisor gone (killed before it recorded its end);  dense done",
    ]


def test_status_running_leg_without_eta_or_state(tmp_path, capsys):
    """A manual run (no cockpit state) whose log has no eta yet: the same parts, read n/a."""
    registry = bundled_registry(tmp_path)
    d = registry.settings.exp_root / "20261126_060000_cpu-smoke"
    d.mkdir(parents=True)
    (d / "dense.log").write_text("step 00003/00040 (7.50%) | loss: 9.000000 | dt: 100.00ms\n")
    code, out, _ = run(capsys, "status", "--registry", str(registry.path))
    assert code == 0
    # no tok/sec field; ETA from the remaining 36 steps x 100 ms
    assert (
        "running: cpu-smoke/dense  no cockpit state (manual run)  step 3/40 (7.50%), loss 9.0000, tok/s n/a, "
        "ETA 0:00:04"
    ) in out
    (d / "dense.log").write_text("step 00003 | loss: 9.000000\n")
    out = run(capsys, "status", "--registry", str(registry.path))[1]
    assert (
        "running: cpu-smoke/dense  no cockpit state (manual run)  step 3/?, loss 9.0000, tok/s n/a, ETA n/a"
        in out
    )
    assert f"  dir: {d}" in out and "dirs under exp_root: 1" in out
    # dirs the caller discovered already (the TUI) give the same state
    dirs = expdir.discover(registry.settings.exp_root)
    given = resume.build_state(registry, sampler=FakeSampler(nvml=False, reason="x"), dirs=dirs)
    assert given.dirs is dirs and resume_text.render_status(given) == resume_text.render_status(
        resume.build_state(registry, sampler=FakeSampler(nvml=False, reason="x"))
    )


def test_resume_to_stdout_and_file(tmp_path, capsys):
    registry = bundled_registry(tmp_path)
    code, out, _ = run(capsys, "resume", "--registry", str(registry.path))
    assert code == 0 and out.startswith("# Nanochat Resume Guide\n") and "## Remaining Work" in out
    target = tmp_path / "guides" / "guide.md"
    code, out, _ = run(capsys, "resume", "--registry", str(registry.path), "--out-md", str(target))
    assert (
        code == 0
        and out.strip() == str(target)
        and "## Safety/Path Constraints Reminder" in target.read_text()
    )
    assert not [p for p in target.parent.iterdir() if p.name.startswith(".")]  # no temp file left
    # the core's guide path: the default the TUI offers, and a chosen one (~ expanded, made absolute)
    assert resume_text.guide_path(registry) == registry.settings.exp_root / "resume-guide.md"
    assert resume_text.guide_path(registry, "  ") == registry.settings.exp_root / "resume-guide.md"
    assert resume_text.guide_path(registry, "~/g.md") == Path.home() / "g.md"
    assert resume_text.write_guide(
        registry, target.with_name("chosen.md"), sampler=FakeSampler(nvml=False), now=NOW
    ) == target.with_name("chosen.md")
    assert target.with_name("chosen.md").read_text().startswith("# Nanochat Resume Guide\n")
    assert resume_text.write_guide(
        registry, sampler=FakeSampler(nvml=False), now=NOW
    ) == resume_text.guide_path(registry)


def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text("[project]\nexp_root = 3\n")
    for argv in (
        ["status", "--registry", str(bad)],
        ["resume", "--registry", str(bad)],
        ["status", "--registry", str(tmp_path / "missing.toml")],
    ):
        code, out, err = run(capsys, *argv)
        assert code == 2 and out == "" and err.count("\n") == 1 and err.startswith("cockpit: ")
    registry = bundled_registry(tmp_path)
    code, _, err = run(capsys, "resume", "--registry", str(registry.path), "--out-md", str(tmp_path))
    assert code == 2 and "is a directory" in err and err.count("\n") == 1
