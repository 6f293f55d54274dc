"""The supervisor with real torchrun and tests/fake_trainer.py: kill -9 and reattach, stop, failure
policy, concurrent launches, GPU preflight. Each torchrun start costs about 3-4 s on 2 cores."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pynvml
import pytest
from fake_nvml import FakeNVML
from helpers import REPO, alive, cockpit, kill_leftovers, tree_of, wait_for, write_registry

from cockpit import expdir, gpus, launch, procs, supervisor
from cockpit import registry as reg
from cockpit.plan import PlanRun

pytestmark = pytest.mark.slow

STEP = "step "


@pytest.fixture(autouse=True)
def importable_checkout(monkeypatch, tmp_path):
    # legs run `-m tests.fake_trainer` from the temp registry's dir: the checkout must be importable
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    yield
    kill_leftovers(str(tmp_path))  # a failed test must not leave legs running


def step_lines(log) -> list[str]:
    return [ln for ln in open(log).read().splitlines() if ln.startswith(STEP)]


def running_state(exp_dir, leg, min_steps=1):
    def ready():
        st = expdir.read_state(exp_dir, leg)
        if st is None or st.status != "running" or not os.path.exists(st.log):
            return None
        return st if len(step_lines(st.log)) >= min_steps else None

    return wait_for(ready, timeout=60, what=f"{leg} running")


def wait_supervisor_gone(exp_dir, timeout=60):
    wait_for(lambda: not expdir.open_dir(exp_dir).supervisor_alive, timeout=timeout, what="supervisor end")


def test_kill9_supervisor_leg_finishes_and_is_reconciled(tmp_path):
    path = write_registry(tmp_path, {"a": 'model-tag = "a", num-iterations = 80', "b": 'model-tag = "b"'})
    r = cockpit("--registry", str(path), "launch", "fake")
    assert r.returncode == 0, r.stderr
    exp_dir = Path(r.stdout.strip().splitlines()[-1])
    st = running_state(exp_dir, "a")
    sup = json.loads((exp_dir / "state" / "supervisor.json").read_text())
    os.kill(sup["pid"], signal.SIGKILL)
    wait_for(lambda: not procs.alive(sup["pid"], sup["create_time"]), what="supervisor killed")
    d = expdir.open_dir(exp_dir)
    assert not d.supervisor_alive and d.states["a"].status == "running"  # torchrun goes on
    assert procs.alive(st.pid, st.create_time)
    status = cockpit("--registry", str(path), "status")
    assert status.returncode == 0 and "running: fake/a" in status.stdout, status.stdout + status.stderr
    wait_for(lambda: not procs.alive(st.pid, st.create_time), timeout=60, what="leg a to end")
    d = expdir.open_dir(exp_dir)
    a, b = d.states["a"], d.states["b"]
    assert (a.status, a.exit_code, a.exit_code_known) == ("done", None, False)
    assert b.status == "stopped" and "supervisor gone" in b.note
    lines = step_lines(exp_dir / "a.log")  # complete: every step, in order, and the final lines
    assert [int(ln[5:10]) for ln in lines] == list(range(80))
    assert open(exp_dir / "a.log").read().rstrip().splitlines()[-1].startswith("Total training time:")
    assert not (exp_dir / "b.log").exists()
    status = cockpit("--registry", str(path), "status").stdout
    assert re.search(r"(?m)^\s+a\s+done\b", status) and "running: none" in status, status
    # no process of the leg is left behind
    assert not [
        p for p in psutil.process_iter(["cmdline"]) if str(exp_dir) in " ".join(p.info["cmdline"] or [])
    ]


def test_stop_one_leg_kills_its_whole_tree_and_the_queue_goes_on(tmp_path):
    # workers ignore SIGTERM and each has a grandchild in its own session: only the kill of the
    # tree collected before the first signal can leave nothing behind
    path = write_registry(
        tmp_path,
        {
            "a": 'model-tag = "a", num-iterations = 2000, ignore-sigterm = true, spawn-child = true',
            "b": 'model-tag = "b", num-iterations = 5',
        },
    )
    registry = reg.load(path)
    grace = 2.0
    exp_dir = launch.start(registry, "fake", grace_s=grace)
    st = running_state(exp_dir, "a")
    procs = wait_for(lambda: tree_of(st.pid, 5), what="torchrun, 2 workers, 2 grandchildren")
    t0 = time.monotonic()
    r = cockpit("--registry", str(path), "stop", str(exp_dir), "a")  # stop acts under the registry's exp_root
    took = time.monotonic() - t0
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[0].startswith("a: stopped")
    assert alive(procs) == [], [p.pid for p in alive(procs)]
    assert took < grace + 2.0, took
    a = expdir.read_state(exp_dir, "a")
    assert a.status == "stopped" and a.exit_code_known
    assert len(step_lines(exp_dir / "a.log")) >= 1  # the log is kept
    wait_supervisor_gone(exp_dir)
    d = expdir.open_dir(exp_dir)
    assert d.states["b"].status == "done" and d.states["b"].exit_code == 0


def test_stop_the_queue(tmp_path):
    path = write_registry(tmp_path, {"a": 'model-tag = "a", num-iterations = 2000', "b": 'model-tag = "b"'})
    exp_dir = launch.start(reg.load(path), "fake", grace_s=5.0)
    st = running_state(exp_dir, "a")
    procs = wait_for(lambda: tree_of(st.pid, 3), what="torchrun and workers")
    t0 = time.monotonic()
    sup = expdir.open_dir(exp_dir).supervisor
    os.kill(sup["pid"], signal.SIGTERM)  # what `cockpit stop DIR` sends
    gone = wait_for(
        lambda: not alive(procs) and time.monotonic() - t0, timeout=30, what="the leg's processes"
    )
    assert gone < 5.0, gone  # workers that honour SIGTERM are gone within the grace period
    wait_supervisor_gone(exp_dir)
    d = expdir.open_dir(exp_dir)
    assert not d.supervisor_alive
    assert [d.states[n].status for n in ("a", "b")] == ["stopped", "stopped"]
    assert d.states["a"].note == "stopped by request" and "before it started" in d.states["b"].note
    r = cockpit("--registry", str(path), "stop", str(exp_dir))
    assert r.returncode == 2 and "nothing running" in r.stderr


def test_stop_orphaned_leg_after_supervisor_killed(tmp_path):
    path = write_registry(
        tmp_path, {"a": 'model-tag = "a", num-iterations = 2000, ignore-sigterm = true, spawn-child = true'}
    )
    exp_dir = launch.start(reg.load(path), "fake")
    st = running_state(exp_dir, "a")
    procs = wait_for(lambda: tree_of(st.pid, 5), what="torchrun, 2 workers, 2 grandchildren")
    os.kill(expdir.open_dir(exp_dir).supervisor["pid"], signal.SIGKILL)
    wait_for(lambda: not expdir.open_dir(exp_dir).supervisor_alive, what="supervisor gone")
    t0 = time.monotonic()
    d = launch.stop(exp_dir, grace_s=1.0)  # no supervisor: the client stops the tree itself
    assert time.monotonic() - t0 < 4.0
    assert alive(procs) == []
    a = d.states["a"]
    assert (a.status, a.exit_code_known) == ("stopped", False) and "supervisor gone" in a.note
    assert expdir.read_state(exp_dir, "a").status == "stopped"  # recorded on disk


@pytest.mark.parametrize("policy, b_status", [("stop", "stopped"), ("continue", "done")])
def test_failed_leg_follows_policy(tmp_path, policy, b_status, capsys):
    path = write_registry(
        tmp_path,
        {"a": 'model-tag = "a", fail-at-step = 1', "b": 'model-tag = "b", num-iterations = 3'},
        on_failure=policy,
        extra_project="tail = 5",
    )
    exp_dir = launch.start(reg.load(path), "fake", foreground=True)
    d = expdir.open_dir(exp_dir)
    a = d.states["a"]
    assert a.status == "failed" and a.exit_code not in (0, None) and a.exit_code_known
    assert any("fake failure at step 1" in ln for ln in a.error_tail), a.error_tail
    assert d.states["b"].status == b_status
    assert (exp_dir / "a.log").exists() and "report.md" in os.listdir(exp_dir)
    out = capsys.readouterr().out
    assert "a: failed" in out and f"b: {b_status}" in out
    # report.md is written over the registry's tail window, which the plan recorded
    assert json.loads((exp_dir / "plan.json").read_text())["tail"] == 5
    if b_status == "done":
        assert "| run | tail5 tok/sec |" in (exp_dir / "report.md").read_text()


def test_two_concurrent_launches_one_refused(tmp_path):
    path = write_registry(tmp_path, {"a": 'model-tag = "a", num-iterations = 60'})
    cmd = [sys.executable, "-m", "cockpit.cli", "--registry", str(path), "launch", "fake"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    ps = [
        subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    results = [(p.wait(60), *p.communicate()) for p in ps]
    assert sorted(rc for rc, _, _ in results) == [0, 2], results
    ((_, out, _),) = [r for r in results if r[0] == 0]
    ((_, _, err),) = [r for r in results if r[0] == 2]
    assert len(err.strip().splitlines()) == 1 and "fake" in err
    dirs = [p for p in (tmp_path / "exp").iterdir() if not p.name.startswith(".")]
    assert [str(p) for p in dirs] == [out.strip()]
    launch.stop(dirs[0])


# ----------------------------------------------------------------------------------------------
# GPU preflight, with a fake NVML: these legs are "cuda" legs that the fake trainer runs on CPU


class Recorder(supervisor.Supervisor):
    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.seen: list[tuple[str, str, str | None]] = []

    def put(self, st):
        self.seen.append((st.leg, st.status, st.waiting_reason))
        super().put(st)


def _planned_dir(tmp_path, wait_s: float, legs: dict[str, str]):
    path = write_registry(
        tmp_path, legs, device="cuda", nproc=2, extra_project=f"[project.gpu_idle]\nwait_s = {wait_s}\n"
    )
    registry = reg.load(path)
    plan = launch.plan_launch(registry, "fake")
    exp_dir = launch.new_exp_dir(registry.settings.exp_root, "fake")
    launch.write_plan(registry, plan, exp_dir)
    return exp_dir


def test_preflight_waits_for_idle_gpus_then_runs(tmp_path):
    nv = FakeNVML(2)
    nv.util[1] = 93.0
    sampler = gpus.GpuSampler(nvml=nv)
    orig = sampler.sample

    def sample():
        snap = orig()
        if nv.calls > 30:  # a few polls later, GPU 1 goes idle
            nv.util[1] = 0.0
        return snap

    sampler.sample = sample
    exp_dir = _planned_dir(tmp_path, 60, {"a": 'model-tag = "a", num-iterations = 3'})
    sup = Recorder(exp_dir, sampler=sampler, poll_s=0.05, echo=False)
    assert sup.run() == 0
    waiting = [w for leg, s, w in sup.seen if s == "waiting"]
    assert waiting and waiting[0].startswith("GPU 1 busy: util 93% > 5% (waiting since ")
    a = expdir.read_state(exp_dir, "a")
    assert (a.status, a.waiting_reason, a.note) == ("done", None, "preflight: GPUs 0,1 idle")


def test_preflight_times_out_and_no_driver_is_noted(tmp_path):
    nv = FakeNVML(2)
    nv.mem_used_mib[0] = 40000.0
    exp_dir = _planned_dir(tmp_path, 0.3, {"a": 'model-tag = "a"', "b": 'model-tag = "b"'})
    sup = Recorder(exp_dir, sampler=gpus.GpuSampler(nvml=nv), poll_s=0.05, echo=False)
    assert sup.run() == 1
    a, b = expdir.read_state(exp_dir, "a"), expdir.read_state(exp_dir, "b")
    assert a.status == "failed" and a.pid is None
    assert a.error_tail == ["preflight: GPUs not idle after 0s: GPU 0 busy: mem 40000 MiB > 1024 MiB"]
    assert b.status == "stopped" and "on_failure = stop" in b.note
    assert not (exp_dir / "a.log").exists()
    # without a driver the supervisor goes on and says the preflight was skipped
    nodriver = gpus.GpuSampler(nvml=FakeNVML(init_error=pynvml.NVML_ERROR_DRIVER_NOT_LOADED))
    sup = supervisor.Supervisor(exp_dir, sampler=nodriver, echo=False)
    sup.states["a"] = expdir.LegState("a", "queued")
    placed = sup._place(PlanRun("a", device="cuda", nproc_per_node=2))
    assert (placed.gpus, placed.env) == ([0, 1], {})
    assert placed.note == "preflight skipped: NVML unavailable: Driver Not Loaded"
