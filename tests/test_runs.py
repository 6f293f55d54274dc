"""Experiment dirs and launches without torchrun: dirs, states, reconcile, the done guard, refusals, dry run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from helpers import REPO, cockpit, fake_torchrun, make_dir, write_registry

from cockpit import expdir, gpus, launch, procs
from cockpit import registry as reg

FINAL = "step 00009/00010 (90.00%) | loss: 3.0 | dt: 10ms | tok/sec: 1,000\nPeak memory usage: 1.00MiB\nTotal training time: 0.10m\n"
CRASH = (
    "step 00003/00010 (30.00%) | loss: 3.0 | dt: 10ms | tok/sec: 1,000\n"
    'Traceback (most recent call last):\n  File "x.py", line 1, in <module>\n'
    "RuntimeError: CUDA error: out of memory\n"
)


def dead_process() -> tuple[int, float]:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    ct = psutil.Process(p.pid).create_time()
    p.wait()
    return p.pid, ct


def test_state_roundtrip_atomic(tmp_path):
    st = expdir.LegState(
        "a", "running", pid=12, create_time=1.5, error_tail=["x"], log=str(tmp_path / "a.log")
    )
    expdir.write_state(tmp_path, st)
    assert expdir.read_state(tmp_path, "a") == st
    assert sorted(p.name for p in (tmp_path / "state").iterdir()) == ["a.json"]  # no temp file left
    (tmp_path / "state" / "b.json").write_text("{half")
    assert expdir.read_state(tmp_path, "b") is None
    assert expdir.read_state(tmp_path, "missing") is None


def test_is_alive_guards_pid_reuse():
    me = os.getpid()
    ct = psutil.Process(me).create_time()
    assert procs.alive(me, ct)
    assert not procs.alive(me, ct - 3600)  # same pid, another process
    pid, ct = dead_process()
    assert not procs.alive(pid, ct)
    assert not procs.alive(None, None)


@pytest.mark.slow
def test_new_exp_dir_is_always_fresh(tmp_path):
    stamp = time.strftime(expdir.STAMP_FORMAT)
    taken = tmp_path / f"{stamp}_x"
    taken.mkdir()
    (taken / "keep.log").write_text("old\n")
    dirs = [launch.new_exp_dir(tmp_path, "x") for _ in range(2)]
    assert len({taken, *dirs}) == 3
    assert (taken / "keep.log").read_text() == "old\n"
    for d in dirs:
        assert expdir.DIR_NAME.match(d.name).group(2) == "x" and not any(d.iterdir())


@pytest.mark.slow
def test_new_exp_dir_takes_the_confirmed_name_only_while_free(tmp_path):
    shown = launch.fresh_dir_name(tmp_path, "x")
    assert not shown.exists()
    assert launch.new_exp_dir(tmp_path, "x", preferred=shown) == shown
    (shown / "keep.log").write_text("old\n")
    again = launch.new_exp_dir(tmp_path, "x", preferred=shown)  # taken now: the next fresh name
    assert again != shown and expdir.DIR_NAME.match(again.name).group(2) == "x"
    assert (shown / "keep.log").read_text() == "old\n"
    outside = tmp_path / "elsewhere" / shown.name
    assert launch.new_exp_dir(tmp_path, "x", preferred=outside).parent == tmp_path


def test_discover_manual_and_planned_dirs(tmp_path):
    manual = tmp_path / "20260224_175412_moe-v1-resume"
    manual.mkdir()
    (manual / "static_cap1p0.log").write_text(FINAL)
    (manual / "dynamic_cap1p0.log").write_text(CRASH)
    planned = tmp_path / "20260301_120000_exp"
    (planned / "state").mkdir(parents=True)
    (planned / "plan.json").write_text(
        json.dumps({"experiment": "exp", "legs": [{"name": "a"}, {"name": "b"}]})
    )
    expdir.write_state(planned, expdir.LegState("a", "done", exit_code=0))
    (tmp_path / ".cockpit-locks").mkdir()
    (tmp_path / "empty").mkdir()
    found = expdir.discover(tmp_path)
    assert [d.path.name for d in found] == [manual.name, planned.name]
    m, p = found
    assert (m.experiment, m.created, m.plan, m.legs) == (
        "moe-v1-resume",
        "20260224_175412",
        None,
        ["dynamic_cap1p0", "static_cap1p0"],
    )
    assert p.experiment == "exp" and p.legs == ["a", "b"] and list(p.states) == ["a"]
    assert expdir.done_legs(tmp_path, "moe-v1-resume") == {"static_cap1p0": manual}
    assert expdir.done_legs(tmp_path, "exp") == {"a": planned}


LEG_ARGV = ["--standalone", "--nproc_per_node=1", "-m", "tests.fake_trainer", "--", "--num-iterations", "10"]


def _orphan_dir(tmp_path: Path, log_text: str, legs=("a", "b")) -> Path:
    """A dir under tmp_path/exp whose supervisor was killed: leg a was running (its torchrun is
    gone too), leg b queued. The plan's torchrun is a fake one in tmp_path/bin."""
    d = tmp_path / "exp" / "20260301_120000_exp"
    (d / "state").mkdir(parents=True)
    torchrun = str(fake_torchrun(tmp_path / "bin"))
    (d / "plan.json").write_text(
        json.dumps({"experiment": "exp", "legs": [{"name": n, "argv": [torchrun, *LEG_ARGV]} for n in legs]})
    )
    sup_pid, sup_ct = dead_process()
    (d / "state" / "supervisor.json").write_text(
        json.dumps({"pid": sup_pid, "create_time": sup_ct, "ended_at": None})
    )
    pid, ct = dead_process()
    (d / "a.log").write_text(log_text)
    expdir.write_state(
        d,
        expdir.LegState(
            "a", "running", pid=pid, create_time=ct, supervisor_pid=sup_pid, log=str(d / "a.log")
        ),
    )
    expdir.write_state(d, expdir.LegState("b", "queued", supervisor_pid=sup_pid))
    return d


def test_reconcile_after_supervisor_killed_finished(tmp_path):
    d = expdir.open_dir(_orphan_dir(tmp_path, FINAL))
    assert not d.supervisor_alive
    a, b = d.states["a"], d.states["b"]
    assert (a.status, a.exit_code, a.exit_code_known) == ("done", None, False)
    assert "supervisor gone" in a.note
    assert b.status == "stopped" and "before the leg started" in b.note
    assert expdir.read_state(d.path, "a").status == "running"  # reconciled in memory, the file is untouched


def test_reconcile_after_supervisor_killed_crashed(tmp_path):
    a = expdir.open_dir(_orphan_dir(tmp_path, CRASH)).states["a"]
    assert (a.status, a.exit_code_known) == ("failed", False)
    assert any("out of memory" in ln for ln in a.error_tail)


def test_running_leg_with_live_pid_stays_running(tmp_path, leg_process):
    d = _orphan_dir(tmp_path, "step 00001/00010 (10.00%) | loss: 3.0\n")
    p = leg_process(d, "a", [str(tmp_path / "bin" / "torchrun"), *LEG_ARGV])
    st = expdir.read_state(d, "a")
    st.pid, st.create_time = p.pid, psutil.Process(p.pid).create_time()
    expdir.write_state(d, st)
    assert expdir.open_dir(d).states["a"].status == "running"
    assert [s.leg for s in expdir.open_dir(d).running] == ["a"]


@pytest.mark.slow
def test_a_live_pid_that_is_not_the_legs_is_unknown_and_never_signalled(tmp_path, leg_process):
    """The same live pid and create time, but not this leg's torchrun: not proven, not touched."""
    d = _orphan_dir(tmp_path, "step 00001/00010 (10.00%) | loss: 3.0\n")
    path = write_registry(tmp_path, {"a": 'model-tag = "a"'}, exp_id="exp")
    torchrun = str(tmp_path / "bin" / "torchrun")
    others = {
        "this test process": None,
        "torchrun of other args": leg_process(d, "a", [torchrun, "--standalone", "-m", "other"]),
        "torchrun of another dir": leg_process(d, "a", [torchrun, *LEG_ARGV], marker=False),
    }
    for what, p in others.items():
        proc = psutil.Process(p.pid if p else os.getpid())
        for created in (proc.create_time(), None):  # and a record without a create time
            st = expdir.read_state(d, "a")
            st.status, st.pid, st.create_time = "running", proc.pid, created
            expdir.write_state(d, st)
            a = expdir.open_dir(d).states["a"]
            assert a.status == "unknown" and "process identity not proven" in a.note, (what, a.note)
            r = cockpit("--registry", str(path), "stop", str(d), "a")
            assert r.returncode == 2 and "process identity not proven" in r.stderr, (what, r.stderr)
            assert "nothing" in r.stderr and len(r.stderr.strip().splitlines()) == 1
            assert proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE, what
            assert expdir.read_state(d, "a").status == "running"  # nothing written either


# ----------------------------------------------------------------------------------------------
# launch refusals and the done guard (no torchrun: everything here is refused or skipped)


def test_plan_skips_recorded_and_done_legs(tmp_path):
    bundled = reg.load(REPO / "experiments.toml")
    plan = launch.plan_launch(bundled, "moe-fp8-capacity-ablation-v1")
    assert plan.legs == [] and len(plan.skipped) == 5
    assert all("recorded in the registry" in why for _, why in plan.skipped)
    assert len(launch.plan_launch(bundled, "moe-fp8-capacity-ablation-v1", rerun=True).legs) == 5
    with pytest.raises(expdir.RunError, match="has no leg nope"):
        launch.plan_launch(bundled, "cpu-smoke", ["dense", "nope"])
    with pytest.raises(expdir.RunError, match="no experiment 'zzz'"):
        launch.plan_launch(bundled, "zzz")


@pytest.mark.slow
def test_gpu_need_refused_before_anything_is_written(tmp_path, monkeypatch):
    path = write_registry(tmp_path, {"big": 'model-tag = "big"'}, device="cuda", nproc=8)
    count, reason = gpus.visible_gpus()
    if count is None:  # a machine without a driver (CI, this laptop): the real NVML refuses
        r = cockpit("--registry", str(path), "launch", "fake")
        assert r.returncode == 2 and r.stdout == ""
        assert r.stderr.strip() == f"cockpit: needs 8 GPUs, and NVML is unavailable here: {reason}"
        assert not (tmp_path / "exp").exists()
    registry = reg.load(path)
    monkeypatch.setattr(gpus, "visible_gpus", lambda nvml=None: (0, None))
    with pytest.raises(expdir.RunError, match="^needs 8 GPUs, 0 visible here$"):
        launch.start(registry, "fake")
    monkeypatch.setattr(gpus, "visible_gpus", lambda nvml=None: (8, None))
    assert launch.check_gpus(list(registry.experiment("fake").legs)) is None
    assert not (tmp_path / "exp").exists()


@pytest.mark.slow
@pytest.mark.parametrize(
    "args, why",
    [
        ('checkpoint-root = "{exp_dir}/../elsewhere"', "must lie inside the experiment dir"),
        ('checkpoint-root = "ro/ckpt"', "must lie inside the experiment dir"),
        ('out-dir = "ro/out"', "lies inside read-only path"),
        ('out-dir = "/tmp"', "lies outside exp_root"),
        ('out-dir = "./results"', "lies outside exp_root"),  # relative: inside the checkout
        ('report-file = "~/r.md"', "lies outside exp_root"),
    ],
)
def test_path_policy_refusals(tmp_path, args, why):
    path = write_registry(tmp_path, {"a": args})
    r = cockpit("--registry", str(path), "launch", "fake")
    assert r.returncode == 2, r.stderr
    assert why in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "exp").exists()


def test_path_policy_allows_inputs_from_read_only(tmp_path):
    registry = reg.load(write_registry(tmp_path, {"a": 'data-dir = "ro/base_data"'}))
    legs = list(registry.experiment("fake").legs)
    exp_dir = registry.settings.exp_root / "20260101_000000_fake"
    assert launch.check_paths(registry, legs, exp_dir, tmp_path) is None


@pytest.mark.slow
def test_dry_run_prints_commands_and_writes_nothing(tmp_path):
    path = write_registry(tmp_path, {"a": 'model-tag = "a"', "b": 'model-tag = "b", fail-at-step = 3'})
    r = cockpit("--registry", str(path), "launch", "fake", "--dry-run")
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "-m tests.fake_trainer -- \\\n  --num-iterations 20 \\\n  --step-sleep 0.05" in out
    assert "--fail-at-step 3" in out and out.count("--nproc_per_node=2") == 2
    exp_dir = out.split("EXP_DIR=")[1].split("\n")[0]
    assert f"--checkpoint-root {exp_dir}/ckpt_root" in out and f"> {exp_dir}/b.log 2>&1" in out
    assert not (tmp_path / "exp").exists()


@pytest.mark.slow
def test_launch_refused_while_another_launch_holds_the_experiment(tmp_path):
    path = write_registry(tmp_path, {"a": 'model-tag = "a"'})
    root = reg.load(path).settings.exp_root
    fd = launch.experiment_lock(root, "fake")
    try:
        r = cockpit("--registry", str(path), "launch", "fake")
    finally:
        os.close(fd)
    assert r.returncode == 2 and "being launched or run by another cockpit" in r.stderr
    assert [p.name for p in root.iterdir()] == [".cockpit-locks"]


@pytest.mark.slow
def test_stop_unknown_targets(tmp_path):
    path = write_registry(tmp_path, {"a": 'model-tag = "a"'})
    r = cockpit("--registry", str(path), "stop", "fake")
    assert r.returncode == 2 and "no experiment dir 'fake'" in r.stderr
    d = _orphan_dir(tmp_path, FINAL)
    r = cockpit("--registry", str(path), "stop", str(d), "zz")
    assert r.returncode == 2 and "has no leg 'zz'" in r.stderr


@pytest.mark.slow
def test_a_stop_that_came_after_the_leg_ended_says_so_and_leaves_no_request(tmp_path):
    """The leg ended (its log has the final lines) before the stop came: `done (stop came after it
    ended)`, exit 0, and no stop request is left behind, with the supervisor gone or alive."""
    path = write_registry(tmp_path, {"a": 'model-tag = "a"', "b": 'model-tag = "b"'}, exp_id="exp")
    d = _orphan_dir(tmp_path, FINAL)  # the supervisor is gone; leg a's log ended well
    r = cockpit("--registry", str(path), "stop", str(d), "a")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[0] == "a: done (stop came after it ended)"
    assert not expdir.stop_request_path(d, "a").exists()
    # a live supervisor (this process, holding the dir's lock) is neither asked nor signalled
    live = make_dir(
        tmp_path / "exp",
        "20260301_130000_exp",
        {"a": ("done", "cpu-smoke/dense.log"), "b": ("queued", None)},
        supervisor=True,
    )
    got: list[int] = []
    before = signal.signal(signal.SIGUSR1, lambda sig, _: got.append(sig))
    try:
        after = launch.stop(live, "a", exp_root=tmp_path / "exp", wait_s=1.0)
    finally:
        signal.signal(signal.SIGUSR1, before)
    assert got == [] and not expdir.stop_request_path(live, "a").exists()
    assert launch.stop_outcome(after, "a") == "done (stop came after it ended)"
    assert launch.stop_outcome(after, "b") == "queued" and launch.stop_outcome(after, "zz") == "not run"


def test_the_supervisor_judges_a_stop_that_raced_the_legs_end():
    """A leg signalled for a stop that had exited 0 with its final lines was done before the stop
    reached it; a stop request there at a clean exit came too late; any other signalled exit is stopped."""
    from cockpit import supervisor
    from cockpit.vocab import Status

    late = (Status.DONE, expdir.STOP_CAME_LATE)
    assert supervisor.ended(stopped=True, rc=0, requested=True, finished=True) == late
    assert supervisor.ended(stopped=False, rc=0, requested=True, finished=True) == late
    assert supervisor.ended(stopped=True, rc=0, requested=True, finished=False) == (
        Status.STOPPED,
        "stopped by request",
    )
    assert supervisor.ended(stopped=True, rc=-15, requested=True, finished=True)[0] == Status.STOPPED
    assert supervisor.ended(stopped=False, rc=0, requested=False, finished=True) == (Status.DONE, None)
    assert supervisor.ended(stopped=False, rc=1, requested=False, finished=False) == (Status.FAILED, None)


def test_a_leg_that_ends_takes_its_stop_request_with_it(tmp_path):
    from cockpit import supervisor
    from cockpit.vocab import Status

    d = _orphan_dir(tmp_path, FINAL)
    sup = supervisor.Supervisor(d, echo=False)
    sup.states["a"] = expdir.read_state(d, "a")
    expdir.stop_request_path(d, "a").write_text("{}")
    sup._finish("a", Status.DONE, note=expdir.STOP_CAME_LATE, exit_code=0)
    assert not expdir.stop_request_path(d, "a").exists()
    st = expdir.read_state(d, "a")
    assert (st.status, st.note) == ("done", "stop came after it ended")
    assert expdir.clear_stop_request(d, "a") is False  # none left; a second call is harmless


@pytest.mark.slow
def test_garbage_on_disk_never_crashes_discovery(tmp_path):
    root = tmp_path / "exp"
    d = root / "20260301_120000_exp"
    (d / "state").mkdir(parents=True)
    (d / "plan.json").write_text(
        json.dumps({"experiment": 7, "legs": [{"name": "a"}, {"name": 3}, "x", {"name": "../b"}]})
    )
    (d / "state" / "a.json").write_text(
        json.dumps({"leg": "a", "status": "running", "pid": "12", "create_time": "x"})
    )
    (d / "state" / "supervisor.json").write_text(json.dumps({"pid": [1], "create_time": None}))
    other = root / "20260301_120001_exp"
    (other / "state").mkdir(parents=True)
    (other / "plan.json").write_text("{not json")
    (other / "state" / "a.json").write_text(json.dumps({"leg": "a", "status": "exploded"}))
    (other / "a.log").write_bytes(b"\x00\xff garbage\nstep 1/x\n")
    found = expdir.discover(root)
    assert [(x.experiment, x.legs, list(x.states)) for x in found] == [("exp", ["a"], []), ("exp", ["a"], [])]
    assert not found[0].supervisor_alive
    path = write_registry(tmp_path, {"a": 'model-tag = "a"'}, exp_id="exp")
    r = cockpit("--registry", str(path), "status")
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr


@pytest.mark.slow
def test_supervisor_never_starts_a_leg_that_still_runs(tmp_path, leg_process):
    from cockpit import supervisor

    d = _orphan_dir(tmp_path, "step 00001/00010 (10.00%) | loss: 3.0\n")
    p = leg_process(d, "a", [str(tmp_path / "bin" / "torchrun"), *LEG_ARGV])  # "torchrun" is alive
    st = expdir.read_state(d, "a")
    st.pid, st.create_time = p.pid, psutil.Process(p.pid).create_time()
    expdir.write_state(d, st)
    with pytest.raises(expdir.RunError, match=f"leg a still runs \\(torchrun pid {p.pid}\\)"):
        supervisor.Supervisor(d, echo=False).run()
    assert expdir.read_state(d, "a").status == "running" and not (d / "state" / "supervisor.log").exists()
    r = subprocess.run([sys.executable, "-m", "cockpit.supervisor", str(d)], capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.startswith("supervisor: leg a still runs")
    # a live process that cannot be proven the leg's (this test process) is not proven gone either
    st.pid, st.create_time = os.getpid(), psutil.Process().create_time()
    expdir.write_state(d, st)
    with pytest.raises(expdir.RunError, match="leg a may still run .*process identity not proven"):
        supervisor.Supervisor(d, echo=False).run()


def test_repeats_are_planned_one_run_each_and_a_leg_is_done_when_all_its_repeats_are(tmp_path):
    path = write_registry(tmp_path, {"a": 'model-tag = "a", seed = 7', "b": 'model-tag = "b"'})
    path.write_text(path.read_text().replace('name = "a"\n', 'name = "a"\nrepeats = 2\n'))
    registry = reg.load(path)
    plan = launch.plan_launch(registry, "fake")
    exp_dir = tmp_path / "exp" / "20261130_101010_fake"
    (exp_dir / "state").mkdir(parents=True)
    data = launch.plan_data(registry, plan, exp_dir, origin={"git": {}})
    assert [(x.name, x.leg, x.repeat) for x in data.runs] == [
        ("a.r0", "a", 0),
        ("a.r1", "a", 1),
        ("b", None, None),
    ]
    seeds = [x.argv[x.argv.index("--seed") + 1] for x in data.runs[:2]]
    assert seeds == ["7", "8"] and data.runs[1].log == str(exp_dir / "a.r1.log")
    assert "--seed" not in data.runs[2].argv  # a leg without repeats keeps the trainer's default
    data.write(exp_dir)

    def ended(run: str, status: str) -> None:
        (exp_dir / f"{run}.log").write_text(FINAL if status == "done" else CRASH)
        expdir.write_state(
            exp_dir,
            expdir.LegState(
                run, status, exit_code=0 if status == "done" else 1, log=str(exp_dir / f"{run}.log")
            ),
        )

    ended("a.r0", "done")
    ended("a.r1", "failed")
    ended("b", "done")
    d = expdir.open_dir(exp_dir)
    assert d.runs("a") == ["a.r0", "a.r1"] and not d.leg_done("a") and d.leg_done("b")
    again = launch.plan_launch(registry, "fake")
    assert [leg.name for leg in again.legs] == ["a"] and [name for name, _ in again.skipped] == ["b"]
    ended("a.r1", "done")
    assert launch.plan_launch(registry, "fake").legs == []  # every repeat done: the leg is
