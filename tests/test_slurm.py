"""The Slurm executor: batch scripts (pure), then real jobs on the local two-node cluster: a 2-node
training run, a chain in order, a chain stopped by a failure, a cancel mid-leg, a node lost mid-leg."""

from __future__ import annotations

import re
import stat
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psutil
import pytest
from conftest import REPO, resume_node

from cockpit import scheduler
from cockpit.executors import slurm

TORCHRUN = str(Path(sys.executable).parent / "torchrun")
HOSTILE = ["$(rm -rf /)", "a;b", "it's", 'say "hi"', "`id`", "$HOME", "back\\slash", "*", "new\nline", ""]
TRAINER_SMOKE = [
    "--device-type", "cpu", "--depth", "2", "--max-seq-len", "128", "--device-batch-size", "4",
    "--total-batch-size", "1024", "--vocab-size", "512", "--compile-mode", "none",
]


def leg(name: str, args: list[str], module: str = "nanochat.base_train", nproc: int = 1) -> slurm.LegCommand:
    return slurm.LegCommand(name, TORCHRUN, nproc, module, tuple(args), uses_gpus=False)


def sbatch_lines(script: str) -> list[str]:
    return [line.removeprefix("#SBATCH ") for line in script.splitlines() if line.startswith("#SBATCH ")]


# ----------------------------------------------------------------------------------------------
# the batch script, without a cluster


def test_render_sbatch_lines(tmp_path):
    settings = slurm.SlurmSettings(
        partition="gpu", account="proj1", qos="high", time="4:00:00", nodes=2, cpus_per_task=16, mem="200G",
        extra_args=("--constraint", "h100", "--exclusive"), setup=("source .venv/bin/activate",),
    )
    cmd = slurm.LegCommand("cap1p0", "/opt/venv/bin/torchrun", 8, "nanochat.base_train", ("--depth", "12"))
    script = slurm.render_batch_script(cmd, settings, tmp_path / "exp%1", "/home/u/nanochat", "moe/cap1p0")
    assert sbatch_lines(script) == [
        "--job-name=moe/cap1p0",
        f"--output={tmp_path}/exp%%1/cap1p0.log",  # Slurm expands %: a literal one is doubled
        f"--error={tmp_path}/exp%%1/cap1p0.log",
        "--open-mode=append",
        "--chdir=/home/u/nanochat",
        "--nodes=2",
        "--ntasks-per-node=1",
        "--no-requeue",
        "--partition=gpu",
        "--account=proj1",
        "--qos=high",
        "--time=4:00:00",
        "--cpus-per-task=16",
        "--mem=200G",
        "--gpus-per-node=8",  # one per torchrun process by default
        "--constraint h100 --exclusive",
    ]
    body = script.split("set -e\n", 1)[1]
    assert body.startswith("source .venv/bin/activate\n")
    assert "exec srun --ntasks-per-node=1 --cpus-per-task=16 --kill-on-bad-exit=1" in body
    assert '"--rdzv_id=$SLURM_JOB_ID" --rdzv_backend=c10d "--rdzv_endpoint=$rdzv_host:$rdzv_port"' in body
    assert "-m nanochat.base_train -- \\\n    --depth 12\n" in body


def test_render_gpus_per_node():
    gpu = slurm.LegCommand("a", "torchrun", 4, "m", ())
    cpu = slurm.LegCommand("a", "torchrun", 2, "m", (), uses_gpus=False)
    default = slurm.SlurmSettings()

    def gpus(cmd, settings):
        return [x for x in sbatch_lines(slurm.render_batch_script(cmd, settings, "/e", "/w", "j")) if "gpus" in x]

    assert gpus(gpu, default) == ["--gpus-per-node=4"]
    assert gpus(cpu, default) == []
    assert gpus(gpu, slurm.SlurmSettings(gpus_per_node=0)) == []
    assert gpus(cpu, slurm.SlurmSettings(gpus_per_node=2)) == ["--gpus-per-node=2"]


@pytest.mark.parametrize(
    "settings",
    [
        slurm.SlurmSettings(partition="a b"),
        slurm.SlurmSettings(account="x'y"),
        slurm.SlurmSettings(extra_args=("--comment=two words",)),
        slurm.SlurmSettings(mem="4G\n#SBATCH --nodes=99"),
        slurm.SlurmSettings(qos=""),
    ],
)
def test_render_refuses_values_sbatch_would_split(settings):
    with pytest.raises(scheduler.SlurmError, match="#SBATCH value") as e:
        slurm.render_batch_script(slurm.LegCommand("a", "t", 1, "m", ()), settings, "/e", "/w", "j")
    assert "\n" not in str(e.value).replace("\\n", "")


def fake_tool(bindir: Path, name: str, body: str) -> None:
    path = bindir / name
    path.write_text(f"#!/bin/bash\n{body}\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


def test_render_hostile_args_reach_the_trainer_verbatim(tmp_path):
    """Run the rendered script with bash, srun and scontrol faked: the argv srun receives is exactly
    torchrun + module + the trainer's args, whatever shell syntax they hold, and nothing ran."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    argv_file = tmp_path / "srun.argv"
    fake_tool(bindir, "srun", f"printf '%s\\0' \"$@\" > {argv_file}")
    fake_tool(bindir, "scontrol", 'case "$2" in hostnames) echo n7; echo n8;; node) echo "NodeName=n7 NodeAddr=10.0.0.7 Port=1";; esac')
    args = ["--run", *HOSTILE, "--model-tag", "x y"]
    cmd = slurm.LegCommand("a", "/venv dir/bin/torchrun", 2, "nanochat.base_train", tuple(args))
    script = tmp_path / "a.sbatch"
    script.write_text(slurm.render_batch_script(cmd, slurm.SlurmSettings(nodes=2), tmp_path, tmp_path, "j"))
    env = {"PATH": f"{bindir}:/usr/bin:/bin", "SLURM_JOB_NODELIST": "n[7-8]", "SLURM_JOB_ID": "123",
           "SLURM_NNODES": "2", "HOME": str(tmp_path / "home")}
    r = subprocess.run(["bash", str(script)], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    got = argv_file.read_text().split("\0")[:-1]
    assert got == [
        "--ntasks-per-node=1", "--kill-on-bad-exit=1",
        "/venv dir/bin/torchrun", "--nnodes=2", "--nproc_per_node=2",
        "--rdzv_id=123", "--rdzv_backend=c10d", "--rdzv_endpoint=10.0.0.7:20123",
        "-m", "nanochat.base_train", "--", *args,
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.sbatch", "bin", "srun.argv"]  # no `rm`, no files


def test_chain_plan_prints_sbatch_lines(tmp_path):
    plan = slurm.plan_chain([leg("a", []), leg("b", [])], slurm.SlurmSettings(), tmp_path, REPO, "exp")
    assert plan.argv_lines(tmp_path) == [
        f"sbatch --parsable {tmp_path}/slurm/a.sbatch",
        f"sbatch --parsable '--dependency=afterok:<job id of a>' --kill-on-invalid-dep=yes {tmp_path}/slurm/b.sbatch",
    ]
    cont = slurm.plan_chain([leg("a", []), leg("b", [])], slurm.SlurmSettings(), tmp_path, REPO, "exp", "continue")
    assert "--dependency=afterany:" in cont.argv_lines(tmp_path)[1]
    with pytest.raises(scheduler.SlurmError, match="on_failure 'maybe'"):
        slurm.plan_chain([leg("a", [])], slurm.SlurmSettings(), tmp_path, REPO, "exp", "maybe")


def test_write_script_is_new_file_only(tmp_path):
    path = slurm.write_script(tmp_path, "a", "#!/bin/bash\n")
    assert path == tmp_path / "slurm" / "a.sbatch" and path.read_text() == "#!/bin/bash\n"
    with pytest.raises(scheduler.SlurmError, match="exists"):
        slurm.write_script(tmp_path, "a", "other")
    (tmp_path / "target").write_text("keep")
    (tmp_path / "slurm" / "b.sbatch").symlink_to(tmp_path / "target")
    with pytest.raises(scheduler.SlurmError, match="exists"):
        slurm.write_script(tmp_path, "b", "other")
    assert (tmp_path / "target").read_text() == "keep"


def test_missing_commands_are_one_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    for call in (lambda: slurm.submit(tmp_path / "x.sbatch"), lambda: scheduler.job_state("1"),
                 lambda: scheduler.queued(["1"]), lambda: scheduler.cancel(["1"])):
        with pytest.raises(scheduler.SlurmError, match=r"^\w+ not found on PATH: ") as e:
            call()
        assert "\n" not in str(e.value)


# scheduler lines as Slurm 22.05 prints them, trimmed
PENDING_LINE = (
    "JobId=12 JobName=exp/b UserId=root(0) JobState=PENDING Reason=Dependency Dependency=afterok:11(unfulfilled) "
    "ExitCode=0:0 RunTime=00:00:00 StartTime=Unknown NodeList= BatchHost=n1"
)
NODE_FAIL_LINE = "JobId=13 JobName=x JobState=NODE_FAIL Reason=NodeDown ExitCode=143:0 RunTime=1-02:03:04 NodeList=n[1-2]"
WAITING_LINE = "JobId=14 JobState=PENDING Reason=(ReqNodeNotAvail, UnavailableNodes:n2) RunTime=00:00:00 NodeList="


def test_scheduler_lines_become_states():
    pending = scheduler.state_from_fields("12", scheduler.parse_scontrol_job(PENDING_LINE))
    assert (pending.phase, pending.reason, pending.nodes, pending.ran) == ("pending", "Dependency", None, False)
    fail = scheduler.state_from_fields("13", scheduler.parse_scontrol_job(NODE_FAIL_LINE))
    assert (fail.phase, fail.reason, fail.nodes, fail.exit_code, fail.elapsed_s) == (
        "failed", "NODE_FAIL", "n[1-2]", 143, 93784)
    waiting = scheduler.parse_scontrol_job(WAITING_LINE)
    assert waiting["Reason"] == "(ReqNodeNotAvail, UnavailableNodes:n2)" and waiting["NodeList"] == ""
    assert scheduler.state_from_fields("1", {"JobState": "CANCELLED", "Reason": "None"}).reason == "CANCELLED"
    assert scheduler.state_from_fields("1", {"JobState": "CANCELLED by 0"}).reason == "CANCELLED"  # sacct's words
    assert scheduler.state_from_fields("1", {"JobState": "FAILED", "Reason": "None"}).reason == "NonZeroExitCode"
    assert scheduler.state_from_fields("1", {"JobState": "TIMEOUT", "Reason": "TimeLimit"}).reason == "TIMEOUT"
    assert scheduler.state_from_fields("1", {"JobState": "COMPLETING"}).phase == "running"
    assert [scheduler.parse_duration(t) for t in ("00:00:07", "1:02:03", "2-00:00:01", "Unknown", None)] == [
        7, 3723, 172801, None, None]


# ----------------------------------------------------------------------------------------------
# real jobs on the local cluster


def wait_for(job_id: str, phases: tuple[str, ...], timeout_s: float = 120.0) -> scheduler.JobState:
    deadline = time.monotonic() + timeout_s
    while True:
        st = scheduler.job_state(job_id)
        if st.phase in phases:
            return st
        if time.monotonic() > deadline:
            raise AssertionError(f"job {job_id} still {st} after {timeout_s:.0f}s")
        time.sleep(0.25)


def wait_for_line(log: Path, pattern: str, timeout_s: float = 90.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if log.exists() and re.search(pattern, log.read_text(errors="replace"), re.M):
            return
        time.sleep(0.25)
    raise AssertionError(f"no line matching {pattern!r} in {log} after {timeout_s:.0f}s")


def launch(tmp_path: Path, legs: list[slurm.LegCommand], nodes: int = 1, on_failure: str = "stop",
           **settings) -> list[slurm.SubmittedJob]:
    plan = slurm.plan_chain(legs, slurm.SlurmSettings(nodes=nodes, **settings), tmp_path, REPO, "test", on_failure)
    return slurm.launch_chain(plan, tmp_path)


def trainer_processes(marker: str, module: str = "nanochat.base_train") -> list[psutil.Process]:
    """This test's trainer processes (torchrun or worker): their command line holds `marker`."""
    found = []
    for p in psutil.process_iter(["cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if module in cmd and marker in cmd:
            found.append(p)
    return found


def fields(job_id: str) -> dict[str, str]:
    out = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True).stdout
    return scheduler.parse_scontrol_job(out)


@pytest.mark.slow
@pytest.mark.usefixtures("slurm_cluster")
def test_two_node_training_run_completes(tmp_path):
    t0 = time.monotonic()
    args = [*TRAINER_SMOKE, "--num-iterations", "3", "--checkpoint-root", str(tmp_path / "ckpt")]
    [job] = launch(tmp_path, [leg("smoke", args)], nodes=2)
    assert (tmp_path / "slurm" / "smoke.sbatch").is_file() and job.argv[-1] == str(tmp_path / "slurm" / "smoke.sbatch")
    running = wait_for(job.job_id, ("running", "completed", "failed"))
    st = wait_for(job.job_id, ("completed", "failed"))
    print(f"2-node job: submit to end {time.monotonic() - t0:.1f}s")
    log = (tmp_path / "smoke.log").read_text()
    assert st.phase == "completed" and st.exit_code == 0, log
    assert running.nodes == st.nodes == "n[1-2]" and scheduler.expand_nodes(st.nodes) == ["n1", "n2"]
    # world size 2: a micro-batch spans both ranks, so 1,024 tokens need no gradient accumulation
    assert "Tokens / micro-batch / rank: 4 x 128 = 512" in log and "Tokens / micro-batch: 1,024" in log
    assert "gradient accumulation steps: 1" in log
    assert re.search(r"^step 00002/00003 ", log, re.M) and "Total training time:" in log


@pytest.mark.slow
@pytest.mark.usefixtures("slurm_cluster")
def test_chain_runs_in_order(tmp_path):
    fake = ["--num-iterations", "8", "--step-sleep", "0.2"]
    first, second = launch(tmp_path, [leg("a", fake, "tests.fake_trainer"), leg("b", fake, "tests.fake_trainer")])
    wait_for(first.job_id, ("running",))
    waiting = scheduler.job_state(second.job_id)
    assert (waiting.phase, waiting.reason, waiting.ran) == ("pending", "Dependency", False)
    assert wait_for(second.job_id, ("completed", "failed")).phase == "completed"
    assert scheduler.job_state(first.job_id).phase == "completed"
    assert fields(first.job_id)["EndTime"] <= fields(second.job_id)["StartTime"]
    for name in ("a", "b"):
        assert "Total training time:" in (tmp_path / f"{name}.log").read_text()


@pytest.mark.slow
@pytest.mark.usefixtures("slurm_cluster")
def test_failed_leg_stops_the_chain(tmp_path):
    first, second = launch(tmp_path, [
        leg("a", ["--num-iterations", "3", "--fail-at-step", "1"], "tests.fake_trainer"),
        leg("b", ["--num-iterations", "3"], "tests.fake_trainer"),
    ])
    failed = wait_for(first.job_id, ("completed", "failed"))
    assert (failed.phase, failed.reason, failed.ran) == ("failed", "NonZeroExitCode", True)
    assert failed.exit_code != 0
    never = wait_for(second.job_id, ("completed", "failed"), timeout_s=30)
    assert (never.phase, never.slurm_state, never.reason, never.ran) == (
        "failed", "CANCELLED", "DependencyNeverSatisfied", False)
    assert not (tmp_path / "b.log").exists()
    assert scheduler.queued([first.job_id, second.job_id]) == []


@pytest.mark.slow
@pytest.mark.usefixtures("slurm_cluster")
def test_cancel_mid_leg_leaves_nothing(tmp_path):
    marker = str(tmp_path / "ckpt")
    args = [*TRAINER_SMOKE, "--num-iterations", "100000", "--checkpoint-root", marker]
    jobs = launch(tmp_path, [leg("long", args), leg("after", args)], nodes=2, on_failure="continue")
    ids = [j.job_id for j in jobs]
    wait_for_line(tmp_path / "long.log", r"^step 00001/")
    assert trainer_processes(marker), "the trainer should be running"
    t0 = time.monotonic()
    scheduler.cancel(ids)
    print(f"cancel: squeue empty after {time.monotonic() - t0:.1f}s")
    assert scheduler.queued(ids) == []
    assert trainer_processes(marker) == []
    states = scheduler.job_states(ids)
    assert (states[ids[0]].phase, states[ids[0]].reason, states[ids[0]].ran) == ("failed", "CANCELLED", True)
    assert (states[ids[1]].phase, states[ids[1]].ran) == ("failed", False)  # under afterany, never started
    assert not (tmp_path / "after.log").exists()


@pytest.mark.slow
@pytest.mark.usefixtures("slurm_cluster")
def test_node_lost_mid_leg_fails_with_node_fail(tmp_path):
    marker = str(tmp_path / "ckpt")
    args = ["--num-iterations", "1000", "--step-sleep", "0.1", "--checkpoint-root", marker]
    [job] = launch(tmp_path, [leg("a", args, "tests.fake_trainer")], nodes=2)
    try:
        wait_for_line(tmp_path / "a.log", r"^step 00001/")
        assert len(trainer_processes(marker, "tests.fake_trainer")) >= 4  # a torchrun and a worker per node
        subprocess.run(["scontrol", "update", "nodename=n2", "state=down", "reason=test"], check=True)
        st = wait_for(job.job_id, ("completed", "failed"), timeout_s=60)
    finally:
        resume_node("n2")
    assert (st.phase, st.reason, st.slurm_state, st.ran) == ("failed", "NODE_FAIL", "NODE_FAIL", True)
    assert scheduler.queued([job.job_id]) == []
    # the scheduler kills the job's processes on both nodes (here the downed one is still reachable)
    deadline = time.monotonic() + 10
    while trainer_processes(marker, "tests.fake_trainer") and time.monotonic() < deadline:
        time.sleep(0.25)
    assert trainer_processes(marker, "tests.fake_trainer") == []


@pytest.mark.usefixtures("slurm_cluster")
def test_scheduler_errors_are_one_line(tmp_path):
    bad = slurm.plan_chain([leg("b", [])], slurm.SlurmSettings(partition="nosuch"), tmp_path, REPO, "t")
    with pytest.raises(scheduler.SlurmError, match=r"^leg b: sbatch failed \(exit 1\): .*[Ii]nvalid partition"):
        slurm.launch_chain(bad, tmp_path)
    # a chain is submitted whole or not at all: the first job is cancelled when the second fails
    prefix = f"whole-{uuid.uuid4().hex[:12]}"  # the controller keeps earlier runs' jobs for MinJobAge
    good = slurm.plan_chain([leg("a", ["--num-iterations", "1"], "tests.fake_trainer")], slurm.SlurmSettings(),
                            tmp_path, REPO, prefix)
    paths = [("a", slurm.write_script(tmp_path, *good.scripts[0])), ("b", tmp_path / "missing.sbatch")]
    with pytest.raises(scheduler.SlurmError, match=r"^leg b: sbatch failed \(exit 1\): .*missing.sbatch"):
        slurm.submit_chain(paths)
    out = subprocess.run(["scontrol", "show", "job", "-o"], capture_output=True, text=True).stdout
    [first] = [f for f in map(scheduler.parse_scontrol_job, out.splitlines()) if f.get("JobName") == f"{prefix}/a"]
    assert first["JobState"] == "CANCELLED" and scheduler.queued([first["JobId"]]) == []
    assert scheduler.job_state("999999999").phase == "forgotten"
