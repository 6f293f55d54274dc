"""Legs side by side on one node: `max_parallel` and `gpus` in the registry, the GPUs a leg is
placed on (gpus.gpu_pool, gpus.pick, Supervisor._place), and real queues of tests/fake_trainer.py
legs run two at a time (each torchrun start costs about 3-4 s on 2 cores)."""

from __future__ import annotations

import os
import re
import signal
import threading
import time
from pathlib import Path

import pynvml
import pytest
from fake_nvml import FakeNVML
from helpers import REPO, alive, cockpit, kill_leftovers, make_dir, tree_of, wait_for, write_registry

from cockpit import expdir, gpus, launch, procs, resume, resume_text, supervisor
from cockpit import registry as reg
from cockpit.expdir import LegState
from cockpit.plan import Plan, PlanRun
from cockpit.vocab import Mark

# ----------------------------------------------------------------------------------------------
# the registry


def _load(tmp_path: Path, project: str = "", experiment: str = "") -> reg.Registry:
    text = f"""[project]
exp_root = "exp"
{project}
[[experiment]]
id = "e"
{experiment}
[[experiment.leg]]
name = "a"
"""
    path = tmp_path / "r.toml"
    path.write_text(text)
    return reg.load(path)


def test_max_parallel_defaults_to_one_and_an_experiment_may_set_its_own(tmp_path):
    r = _load(tmp_path)
    assert (r.settings.max_parallel, r.settings.gpus, r.experiment("e").max_parallel) == (1, None, 1)
    r = _load(tmp_path, "max_parallel = 4\ngpus = [4, 5, 6, 7]")
    assert (r.settings.max_parallel, r.settings.gpus, r.experiment("e").max_parallel) == (4, (4, 5, 6, 7), 4)
    assert _load(tmp_path, "max_parallel = 4", "max_parallel = 2").experiment("e").max_parallel == 2


@pytest.mark.parametrize(
    "project, experiment, line, words",
    [
        ("max_parallel = 0", "", 3, "'project.max_parallel' must be between 1 and 64, not 0"),
        ("", "max_parallel = 65", 6, "'e.max_parallel' must be between 1 and 64, not 65"),
        ("", 'max_parallel = "2"', 6, "'experiment.max_parallel' must be an integer, not str '2'"),
        ("gpus = []", "", 3, "'project.gpus' must be a non-empty array of GPU indices"),
        ("gpus = [0, 1.5]", "", 3, "'project.gpus' must be a non-empty array of GPU indices"),
        ("gpus = [0, -1]", "", 3, "'project.gpus' names GPU -1: an index is between 0 and 1023"),
        ("gpus = [2, 3, 2]", "", 3, "'project.gpus' names GPU 2 twice"),
    ],
)
def test_bad_max_parallel_and_gpus_are_one_line_with_file_and_line(
    tmp_path, project, experiment, line, words
):
    with pytest.raises(reg.RegistryError) as e:
        _load(tmp_path, project, experiment)
    assert str(e.value).startswith(f"{tmp_path / 'r.toml'}:{line}: ") and words in str(e.value), str(e.value)


def test_the_plan_records_max_parallel_and_gpus(tmp_path):
    path = write_registry(tmp_path, {"a": 'model-tag = "a"'}, extra_project="max_parallel = 3\ngpus = [1, 2]")
    registry = reg.load(path)
    data = launch.plan_data(registry, launch.plan_launch(registry, "fake"), tmp_path / "exp" / "d")
    assert (data.max_parallel, data.gpus) == (3, (1, 2))


def test_the_dry_run_says_legs_run_side_by_side(tmp_path):
    path = write_registry(
        tmp_path,
        {"a": 'model-tag = "a"', "b": 'model-tag = "b"'},
        extra_project="max_parallel = 2\ngpus = [2, 3]",
    )
    registry = reg.load(path)
    text = launch.dry_run_text(registry, launch.plan_launch(registry, "fake"))
    assert (
        "# up to 2 legs at once, side by side: each on idle GPUs of 2,3 no other leg holds "
        "(CUDA_VISIBLE_DEVICES set per leg), in this order"
    ) in text
    one = reg.load(
        write_registry(tmp_path, {"a": 'model-tag = "a"', "b": 'model-tag = "b"'}, name="one.toml")
    )
    assert "side by side" not in launch.dry_run_text(one, launch.plan_launch(one, "fake"))


def test_a_launch_refuses_registry_gpus_that_are_not_there_or_too_few(tmp_path, monkeypatch):
    path = write_registry(
        tmp_path, {"a": 'model-tag = "a"'}, device="cuda", nproc=2, extra_project="gpus = [0, 9]"
    )
    legs = list(reg.load(path).experiment("fake").legs)
    monkeypatch.setattr(gpus, "visible_gpus", lambda nvml=None: (8, None))
    assert launch.check_gpus(legs, (0, 9)) == "the registry's gpus name GPU 9, and NVML shows 8 (0-7)"
    assert launch.check_gpus(legs, (3,)) == "needs 2 GPUs, the registry's gpus name 1: 3"
    assert launch.check_gpus(legs, (3, 4)) is None
    monkeypatch.setattr(gpus, "visible_gpus", lambda nvml=None: (None, "Driver Not Loaded"))
    assert launch.check_gpus(legs, (3, 4)) is None  # no NVML: the named GPUs are taken as named
    assert "NVML is unavailable" in launch.check_gpus(legs)


# ----------------------------------------------------------------------------------------------
# which GPUs a leg gets


def _snap(n: int = 4, busy: dict[int, float] | None = None, driver: bool = True) -> gpus.Snapshot:
    nv = FakeNVML(n) if driver else FakeNVML(init_error=pynvml.NVML_ERROR_DRIVER_NOT_LOADED)
    for i, util in (busy or {}).items():
        nv.util[i] = util
    return gpus.GpuSampler(nvml=nv).sample()


def test_the_pool_is_the_registrys_gpus_else_cuda_visible_devices_else_every_gpu():
    snap = _snap(4)
    assert gpus.gpu_pool((2, 3), snap, {}) == ([2, 3], "the registry's gpus")
    assert gpus.gpu_pool(None, snap, {"CUDA_VISIBLE_DEVICES": "3,1"}) == (
        [3, 1],
        "the GPUs CUDA_VISIBLE_DEVICES names",
    )
    assert gpus.gpu_pool(None, snap, {}) == ([0, 1, 2, 3], "every GPU NVML shows")
    pool, why = gpus.gpu_pool(None, snap, {"CUDA_VISIBLE_DEVICES": "GPU-8f2c,GPU-77aa"})
    assert pool is None and why == "CUDA_VISIBLE_DEVICES names GPUs other than by index"
    pool, why = gpus.gpu_pool(None, _snap(driver=False), {})
    assert pool is None and why == "NVML unavailable (Driver Not Loaded) and the registry names no gpus"
    assert gpus.gpu_pool((5,), _snap(driver=False), {}) == ([5], "the registry's gpus")


def test_pick_takes_the_first_idle_gpus_no_leg_of_the_queue_holds():
    snap = _snap(4, busy={1: 90.0})
    assert gpus.pick(snap, [0, 1, 2, 3], set(), 2, 5.0, 1024.0) == ([0, 2], "GPUs 0,2 idle")
    assert gpus.pick(snap, [0, 1, 2, 3], {0}, 2, 5.0, 1024.0) == ([2, 3], "GPUs 2,3 idle")
    got, why = gpus.pick(snap, [0, 1, 2, 3], {0, 2}, 2, 5.0, 1024.0)
    assert got is None
    assert why == "needs 2 GPUs, 1 idle; GPUs 0,2 held by this queue's legs; GPU 1 busy: util 90% > 5%"
    # no NVML: the named GPUs no leg holds, unchecked, and said so
    assert gpus.pick(_snap(driver=False), [4, 5, 6], {4}, 2, 5.0, 1024.0) == (
        [5, 6],
        "GPUs 5,6 (unchecked: NVML unavailable: Driver Not Loaded)",
    )


def _placer(
    tmp_path: Path, nv: FakeNVML | None, max_parallel: int, named: list[int] | None = None
) -> supervisor.Supervisor:
    nv = nv if nv is not None else FakeNVML(init_error=pynvml.NVML_ERROR_DRIVER_NOT_LOADED)
    sup = supervisor.Supervisor(tmp_path, sampler=gpus.GpuSampler(nvml=nv), echo=False)
    sup.plan = Plan.from_dict(
        {"legs": [], "max_parallel": max_parallel, "gpus": named, "gpu_idle": {"wait_s": 60}}
    )
    sup.max_parallel = max_parallel
    for name in "abc":
        sup.states[name] = LegState(name, "queued")
    return sup


def _hold(sup: supervisor.Supervisor, name: str, held: list[int]) -> None:
    """A leg of the queue running on `held` (a stand-in: only its GPUs are read)."""
    sup.started[name] = supervisor.Started({"name": name}, None, -1, held)  # type: ignore[arg-type]


def _leg(name: str, nproc: int = 2, device: str = "cuda") -> PlanRun:
    return PlanRun(name, device=device, nproc_per_node=nproc)


def test_side_by_side_legs_get_disjoint_gpus_pinned_by_cuda_visible_devices(tmp_path, monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    nv = FakeNVML(4)
    nv.util[1] = 90.0  # someone else's
    sup = _placer(tmp_path, nv, 3)
    a = sup._place(_leg("a"))
    assert a.gpus == [0, 2]
    assert a.env == {"CUDA_VISIBLE_DEVICES": "0,2", "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}
    assert a.note == "preflight: GPUs 0,2 idle; side by side, of every GPU NVML shows"
    _hold(sup, "a", a.gpus)
    # one idle GPU left, GPU 1 busy by another user: b waits for it, with the reason and a deadline
    assert sup._place(_leg("b")) is None
    b = sup.states["b"]
    assert b.status == "waiting" and b.waiting_reason.startswith(
        "needs 2 GPUs, 1 idle; GPUs 0,2 held by this queue's legs; GPU 1 busy: util 90% > 5% (waiting since "
    )
    assert "b" in sup._waits
    # GPU 1 went idle: b gets the two no leg of the queue holds
    nv.util[1] = 0.0
    sup._snap = None
    assert sup._place(_leg("b")).gpus == [1, 3]
    _hold(sup, "b", [1, 3])
    # every GPU held by the queue's own legs: c just waits its turn (queued, no deadline)
    sup._waits.clear()
    assert sup._place(_leg("c")) is None
    assert sup.states["c"].status == "queued" and "c" not in sup._waits
    assert sup._place(_leg("c", device="cpu")).gpus == []  # a CPU leg needs no GPU


def test_without_nvml_gpu_legs_run_one_at_a_time_unless_the_registry_names_gpus(tmp_path, monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    sup = _placer(tmp_path, None, 2)
    a = sup._place(_leg("a"))
    assert (a.gpus, a.env) == ([0, 1], {})
    assert a.note == (
        "preflight skipped: NVML unavailable: Driver Not Loaded; GPU legs run one at a time: "
        "NVML unavailable (Driver Not Loaded) and the registry names no gpus"
    )
    _hold(sup, "a", a.gpus)
    assert sup._place(_leg("b")) is None  # waits for a
    sup = _placer(tmp_path, None, 2, named=[4, 5, 6, 7])
    a = sup._place(_leg("a"))
    assert a.env == {"CUDA_VISIBLE_DEVICES": "4,5", "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}
    assert a.note == (
        "preflight skipped: GPUs 4,5 (unchecked: NVML unavailable: Driver Not Loaded); "
        "side by side, of the registry's gpus"
    )
    _hold(sup, "a", a.gpus)
    assert sup._place(_leg("b")).gpus == [6, 7]
    # a leg bigger than the whole pool can never run: it fails at once, saying so
    st = sup._place(_leg("c", nproc=8))
    assert st.status == "failed" and st.error_tail == [
        "preflight: needs 8 GPUs, the registry's gpus gives 4: 4,5,6,7"
    ]


def test_one_at_a_time_on_the_registrys_gpus_the_leg_is_pinned_to_them(tmp_path):
    sup = _placer(tmp_path, FakeNVML(8), 1, named=[6, 7])
    a = sup._place(_leg("a"))
    assert a.gpus == [6, 7] and a.env["CUDA_VISIBLE_DEVICES"] == "6,7"


def test_the_gpu_set_is_shown_by_status_and_the_tree(tmp_path):
    st = LegState("a", "running", pid=4242, gpus=[2, 3])
    m = resume.LegMark("e", "a", Mark.RUNNING, state=st)
    assert m.process == "pid 4242 on GPUs 2,3"
    assert resume.LegMark("e", "a", Mark.RUNNING, state=LegState("a", "running", pid=7)).process == "pid 7"
    d = expdir.ExpDir(tmp_path, "e", "", Plan("e", (PlanRun("a"),)), ["a"], {"a": st})
    assert "a running (pid 4242 on GPUs 2,3)" in resume_text.dir_line(d)
    from cockpit.tui.experiments import leg_label
    from cockpit.tui.state import LegView

    assert "[GPUs 2,3]" in leg_label(LegView("e", "a", Mark.RUNNING, gpus="GPUs 2,3")).plain


def test_a_state_with_garbage_for_gpus_is_not_a_state():
    assert LegState.from_dict({"leg": "a", "status": "running", "gpus": [0, 1]}).gpus == [0, 1]
    for bad in ("0,1", [0, "1"], [-1], [True]):
        assert LegState.from_dict({"leg": "a", "status": "running", "gpus": bad}) is None, bad


def test_orphaned_side_by_side_legs_are_stopped_together(tmp_path, monkeypatch):
    """Their supervisor gone, the legs that ran side by side are each stopped in their own thread:
    every one is in its grace period at once (a barrier both must reach), each proven first."""
    d = make_dir(tmp_path / "exp", "20260224_190000_e", {"a": ("running", None), "b": ("running", None)})
    both = threading.Barrier(2, timeout=20)
    real = procs.terminate

    def terminate(root, grace_s, waiter=None):
        both.wait()  # a stop one leg after the other never gets here twice at once
        return real(root, grace_s, waiter)

    monkeypatch.setattr(procs, "terminate", terminate)
    legs = [(st.pid, st.create_time) for st in (expdir.read_state(d, n) for n in "ab")]
    assert all(procs.alive(*leg) for leg in legs)
    after = launch.stop(d, grace_s=0.5)
    assert [after.states[n].status for n in "ab"] == ["stopped", "stopped"]
    assert not any(procs.alive(*leg) for leg in legs)


# ----------------------------------------------------------------------------------------------
# real queues: two legs at a time


@pytest.fixture
def checkout(monkeypatch, tmp_path):
    # legs run `-m tests.fake_trainer` from the temp registry's dir: the checkout must be importable
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    yield
    kill_leftovers(str(tmp_path))


class Watcher(supervisor.Supervisor):
    """A supervisor that notes how many legs ran at once, and each report.md it wrote."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.most = 0
        self.reports = 0

    def _start(self, spec, placed):
        st = super()._start(spec, placed)
        self.most = max(self.most, len(self.started))
        return st

    def _report(self, tail):
        self.reports += 1
        super()._report(tail)


def _env_lines(log: Path) -> dict[str, str]:
    return dict(m.groups() for m in re.finditer(r"(?m)^env (\w+)=(.*)$", log.read_text()))


def _dir_of(path: Path, exp: str = "fake") -> Path:
    registry = reg.load(path)
    plan = launch.plan_launch(registry, exp)
    exp_dir = launch.new_exp_dir(registry.settings.exp_root, exp)
    launch.write_plan(registry, plan, exp_dir)
    return exp_dir


@pytest.mark.slow
def test_gpu_legs_run_side_by_side_on_disjoint_gpus_and_distinct_ports(tmp_path, checkout):
    echo = 'echo-env = "CUDA_VISIBLE_DEVICES,CUDA_DEVICE_ORDER,MASTER_PORT"'
    path = write_registry(
        tmp_path,
        {n: f'model-tag = "{n}", num-iterations = {k}, {echo}' for n, k in (("a", 3), ("b", 3), ("c", 3))},
        device="cuda",
        nproc=1,
        extra_project="max_parallel = 3\n[project.gpu_idle]\nwait_s = 0.5\n",
    )
    exp_dir = _dir_of(path)
    sup = Watcher(exp_dir, sampler=gpus.GpuSampler(nvml=FakeNVML(2)), poll_s=0.05, echo=False)
    assert sup.run() == 0
    d = expdir.open_dir(exp_dir)
    assert [d.states[n].status for n in "abc"] == ["done"] * 3
    # a and b ran at once on GPUs 0 and 1; c waited for a GPU the queue held (past wait_s: its own
    # legs end, no deadline) and got the one freed first
    assert sup.most == 2
    got = {n: d.states[n].gpus for n in "abc"}
    assert got["a"] == [0] and got["b"] == [1] and got["c"] in ([0], [1])
    env = {n: _env_lines(exp_dir / f"{n}.log") for n in "abc"}
    for n in "abc":
        assert env[n]["CUDA_VISIBLE_DEVICES"] == ",".join(map(str, got[n]))
        assert env[n]["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
    assert env["a"]["MASTER_PORT"] != env["b"]["MASTER_PORT"]  # two torchruns on one node: two ports
    assert sup.reports == 3  # report.md after each leg


@pytest.mark.slow
def test_a_failure_stops_the_queue_and_the_leg_beside_it_ends_as_it_would(tmp_path, checkout):
    # a goes on only once b has failed (it waits for a file the test makes then)
    path = write_registry(
        tmp_path,
        {
            "a": 'model-tag = "a", num-iterations = 3, wait-for = "{exp_dir}/go"',
            "b": 'model-tag = "b", fail-at-step = 1',
            "c": 'model-tag = "c", num-iterations = 3',
        },
        nproc=1,
        extra_project="max_parallel = 2",
    )
    exp_dir = _dir_of(path)
    sup = Watcher(exp_dir, echo=False)

    def go_once_b_failed():
        wait_for(
            lambda: (st := expdir.read_state(exp_dir, "b")) and st.status == "failed",
            timeout=60,
            what="b failed",
        )
        (exp_dir / "go").touch()

    opener = threading.Thread(target=go_once_b_failed, daemon=True)
    opener.start()
    assert sup.run() == 1
    opener.join()
    d = expdir.open_dir(exp_dir)
    assert [d.states[n].status for n in "abc"] == ["done", "failed", "stopped"]
    assert d.states["c"].note == "queue stopped after b failed (on_failure = stop)"
    assert sup.most == 2 and not (exp_dir / "c.log").exists()


@pytest.mark.slow
def test_stop_one_of_two_side_by_side_legs_then_the_whole_queue(tmp_path, checkout):
    path = write_registry(
        tmp_path,
        {n: f'model-tag = "{n}", num-iterations = 4000, ignore-sigterm = true' for n in "abc"},
        nproc=1,
        extra_project="max_parallel = 2",
    )
    exp_dir = launch.start(reg.load(path), "fake", grace_s=1.0)

    def both_running():
        d = expdir.open_dir(exp_dir)
        return d if all(n in d.states and d.states[n].status == "running" for n in "ab") else None

    d = wait_for(both_running, timeout=60, what="a and b running side by side")
    trees = {
        n: wait_for(lambda n=n: tree_of(d.states[n].pid, 2), what=f"{n}'s torchrun and worker") for n in "ab"
    }
    r = cockpit("--registry", str(path), "stop", str(exp_dir), "a")  # proven, then SIGTERM, grace, SIGKILL
    assert r.returncode == 0 and r.stdout.startswith("a: stopped"), r.stdout + r.stderr
    assert alive(trees["a"]) == [] and alive(trees["b"]) == trees["b"]
    c = wait_for(
        lambda: (st := expdir.read_state(exp_dir, "c")) and st.status == "running" and st,
        timeout=60,
        what="c started in a's slot",
    )
    trees["c"] = wait_for(lambda: tree_of(c.pid, 2), what="c's torchrun and worker")
    t0 = time.monotonic()
    os.kill(expdir.open_dir(exp_dir).supervisor["pid"], signal.SIGTERM)  # what `cockpit stop DIR` sends
    wait_for(lambda: not alive(trees["b"]) and not alive(trees["c"]), timeout=30, what="b and c stopped")
    assert time.monotonic() - t0 < 6.0  # stopped together: one grace period, not one per leg
    wait_for(lambda: not expdir.open_dir(exp_dir).supervisor_alive, timeout=30, what="supervisor end")
    assert [expdir.read_state(exp_dir, n).status for n in "abc"] == ["stopped"] * 3
