"""Continuing an experiment dir (`cockpit launch EXP --into DIR`, `L` after `l`): which runs a
continuation starts and skips, how it is recorded (`plan.<n>.json` beside an untouched plan.json)
and read back (plan.Plan.read), what is refused, and real queues of tests/fake_trainer.py legs
joined while they run or started again after they ended."""

from __future__ import annotations

import hashlib
import json
import signal
from pathlib import Path

import pytest
from helpers import (
    REPO,
    cockpit,
    hold_supervisor_lock,
    kill_leftovers,
    log_lines,
    make_app,
    notes,
    ready,
    screen_text,
    select,
    until,
    wait_for,
    write_dir,
    write_registry,
)

from cockpit import continuation, expdir, launch, provenance, report_md, supervisor
from cockpit import registry as reg
from cockpit.expdir import LegState, RunError, write_state
from cockpit.plan import Continued, Plan, continuation_numbers

LEGS = {"a": 'model-tag = "a"', "b": 'model-tag = "b"', "c": 'model-tag = "c"'}


def _registry(tmp_path: Path, legs: dict[str, str] = LEGS, **kw) -> Path:
    kw.setdefault("common", 'num-iterations = 4\nstep-sleep = 0.02\ncheckpoint-root = "{exp_dir}/ckpt_root"')
    return write_registry(tmp_path, legs, nproc=1, **kw)


def _planned(path: Path, legs: list[str]) -> Path:
    """A dir as a launch of `legs` leaves it (plan.json written; nothing run)."""
    registry = reg.load(path)
    exp_dir = launch.new_exp_dir(registry.settings.exp_root, "fake")
    launch.write_plan(registry, launch.plan_launch(registry, "fake", legs), exp_dir)
    (exp_dir / "state").mkdir()
    return exp_dir


def _state(exp_dir: Path, leg: str, status: str, started: bool = True) -> None:
    st = LegState(leg, status, pid=4242 if started else None, log=str(exp_dir / f"{leg}.log"))
    if started:
        (exp_dir / f"{leg}.log").write_text("step 00000/00004 (0.00%) | loss: 9.0\n")
    write_state(exp_dir, st)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ----------------------------------------------------------------------------------------------
# what a continuation runs and skips


def test_the_legs_a_dir_has_not_planned_are_added_and_a_never_started_run_runs_again(tmp_path):
    path = _registry(tmp_path, {**LEGS, "d": 'model-tag = "d"'})
    d = _planned(path, ["a", "b", "c"])
    _state(d, "a", "done")
    _state(d, "b", "stopped", started=False)  # the queue stopped before it started: no process, no log
    _state(d, "c", "failed")  # it started: its log is there
    cont = continuation.plan_continue(reg.load(path), "fake", d)
    assert [leg.name for leg in cont.plan.legs] == ["d"] and cont.again == ["b"] and cont.runs == ["b", "d"]
    assert cont.supervisor_pid is None
    skipped = dict(cont.skipped)
    assert skipped["a"] == f"done in {d}; a continuation never runs it there again"
    assert skipped["c"].startswith(f"started in {d} before (failed): a run is never started twice in its dir")
    # --rerun: a done here is still never run here again
    cont = continuation.plan_continue(reg.load(path), "fake", d, rerun=True)
    assert dict(cont.skipped)["a"] == f"done in {d}; a continuation never runs it there again"
    assert cont.runs == ["b", "d"]


def test_a_continuation_is_a_new_plan_file_every_reader_sees_and_plan_json_is_untouched(tmp_path):
    path = _registry(tmp_path)
    d = _planned(path, ["a"])
    _state(d, "a", "done")
    before = _sha(d / "plan.json")
    registry = reg.load(path)
    n = continuation.record(registry, continuation.plan_continue(registry, "fake", d))
    assert n == 1 and _sha(d / "plan.json") == before
    cont = json.loads((d / "plan.1.json").read_text())
    assert (
        cont["continues"] == "fake"
        and [x["name"] for x in cont["legs"]] == ["b", "c"]
        and cont["again"] == []
    )
    assert cont["legs"][0]["argv"][-2:] == ["--model-tag", "b"] and "git" in cont and "trainer" in cont
    plan = Plan.read(d)
    assert plan.run_names == ["a", "b", "c"]
    assert plan.continuations == (Continued(1, "plan.1.json", cont["created_at"], ("b", "c"), ()),)
    assert plan.to_dict() == json.loads((d / "plan.json").read_text())  # plan.json's own keys and runs
    opened = expdir.open_dir(d)
    assert opened.legs == ["a", "b", "c"] and opened.problem is None
    # the next continuation plans what this one left: nothing new
    assert continuation.plan_continue(registry, "fake", d).plan.legs == []


@pytest.mark.slow
def test_the_report_knows_the_flags_of_a_run_a_continuation_added(tmp_path):
    path = _registry(tmp_path)
    d = _planned(path, ["a"])
    _state(d, "a", "done")
    registry = reg.load(path)
    continuation.record(registry, continuation.plan_continue(registry, "fake", d, ["b"]))
    for n in "ab":
        (d / f"{n}.log").write_text("".join(x + "\n" for x in log_lines(20, 20)))
    text = report_md.render_report(d, "a", 10)
    assert "args differ: --model-tag a -> b" in text, text


def test_a_bad_continuation_file_is_left_out_and_said(tmp_path):
    path = _registry(tmp_path)
    d = _planned(path, ["a"])
    (d / "plan.1.json").write_text(json.dumps({"continues": "fake", "legs": [{"name": "a", "argv": ["x"]}]}))
    (d / "plan.2.json").write_text("{not json")
    (d / "plan.3.json").write_text(json.dumps({"continues": "other", "legs": []}))
    (d / "plan.4.json").write_text(
        json.dumps({"continues": "fake", "legs": [{"name": "supervisor", "argv": ["x"]}]})
    )
    opened = expdir.open_dir(d)
    assert opened.legs == ["a"]
    assert "plan.4.json: names a run no file can be named after: 'supervisor'" in opened.problem
    # the dir's supervisor runs what it can, and says what it left out
    sup = supervisor.Supervisor(d, echo=True)
    plan = Plan.read(d)
    assert sup._first_runs(plan) == ["a"]
    assert "plan.1.json: adds run a, which the dir has already" in opened.problem
    assert "plan.2.json: unreadable" in opened.problem and "plan.3.json: continues 'other'" in opened.problem
    assert [x.split(":")[0] for x in plan.left_out] == [
        "plan.1.json",
        "plan.2.json",
        "plan.3.json",
        "plan.4.json",
    ]


@pytest.mark.slow
@pytest.mark.parametrize("case", ["outside", "other experiment", "no plan", "slurm"])
def test_a_dir_that_cannot_be_continued_is_refused_in_one_line(tmp_path, case):
    path = _registry(tmp_path)
    registry = reg.load(path)
    d = _planned(path, ["a"])
    if case == "outside":
        d = tmp_path / "elsewhere"
        d.mkdir()
        words = "is not an experiment dir under exp_root"
    elif case == "other experiment":
        plan = json.loads((d / "plan.json").read_text())
        (d / "plan.json").unlink()
        (d / "plan.json").write_text(json.dumps({**plan, "experiment": "other"}))
        words = "holds experiment 'other', not 'fake'"
    elif case == "no plan":
        (d / "plan.json").unlink()
        words = "has no readable plan.json"
    else:
        plan = json.loads((d / "plan.json").read_text())
        (d / "plan.json").unlink()
        (d / "plan.json").write_text(json.dumps({**plan, "executor": "slurm"}))
        words = "runs its legs as Slurm jobs"
    with pytest.raises(RunError, match=words):
        continuation.plan_continue(registry, "fake", d)
    r = cockpit("--registry", str(path), "launch", "fake", "--into", str(d))
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and words in r.stderr, r.stderr
    assert not (d / "plan.1.json").exists()


@pytest.mark.slow
def test_another_commit_is_refused_and_nothing_is_written(tmp_path, monkeypatch):
    path = _registry(tmp_path)
    registry = reg.load(path)
    d = _planned(path, ["a"])
    real = provenance.collect

    def moved(*a, **kw):
        origin = real(*a, **kw)
        return {**origin, "git": {**origin["git"], "commit": "9c8d7e6f5a4b" * 3 + "abcd"}}

    monkeypatch.setattr(provenance, "collect", moved)
    with pytest.raises(RunError, match="the checkout is at commit 9c8d7e6f5a4b, the dir was launched at"):
        continuation.start(registry, "fake", d)
    assert continuation_numbers(d) == []


@pytest.mark.slow
def test_dry_run_into_says_what_would_run_and_writes_nothing(tmp_path):
    path = _registry(tmp_path)
    d = _planned(path, ["a", "b"])
    _state(d, "a", "done")
    _state(d, "b", "stopped", started=False)
    before = sorted(p.name for p in d.rglob("*"))
    r = cockpit("--registry", str(path), "launch", "fake", "--into", d.name, "--dry-run")
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert out.startswith(f"# dry run: continue fake in {d}, nothing written")
    assert "# recorded as plan.1.json (plan.json is not touched); a supervisor starts for them" in out
    assert "# b: planned in the dir, never started: runs as planned there" in out and "--model-tag b" in out
    assert "# leg c" in out and "--model-tag c" in out and f"# skip a: done in {d}" in out
    assert sorted(p.name for p in d.rglob("*")) == before


@pytest.mark.slow
def test_a_live_supervisor_that_does_not_take_it_in_time_is_said_and_foreground_is_refused(
    tmp_path, monkeypatch
):
    path = _registry(tmp_path)
    registry = reg.load(path)
    d = _planned(path, ["a"])
    _state(d, "a", "done")
    (d / "state" / "supervisor.json").write_text(json.dumps(hold_supervisor_lock(d)))  # this process: alive
    with pytest.raises(
        RunError,
        match=r"supervisor \(pid \d+\) runs its queue: the legs join it there; "
        "leave out --foreground",
    ):
        continuation.start(registry, "fake", d, foreground=True)
    assert continuation_numbers(d) == []
    asked = []
    old = signal.signal(signal.SIGUSR1, lambda *a: asked.append(1))  # what the supervisor hears
    monkeypatch.setattr(continuation, "JOIN_WAIT_S", 0.3)
    try:
        out = continuation.start(registry, "fake", d)
    finally:
        signal.signal(signal.SIGUSR1, old)
    assert asked and out.joined is None and out.runs == ["b", "c"]
    assert out.note.startswith("recorded in plan.1.json; the dir's supervisor (pid ")
    assert continuation.runs_text(out).startswith("b, c: recorded in plan.1.json;")


# ----------------------------------------------------------------------------------------------
# real queues


@pytest.fixture
def checkout(monkeypatch, tmp_path):
    # legs run `-m tests.fake_trainer` from the temp registry's dir: the checkout must be importable
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    yield
    kill_leftovers(str(tmp_path))


@pytest.mark.slow
def test_the_remaining_legs_join_the_running_queue_of_the_dir(tmp_path, checkout):
    path = _registry(tmp_path, {"a": 'model-tag = "a", wait-for = "{exp_dir}/go"', "b": 'model-tag = "b"'})
    r = cockpit("--registry", str(path), "launch", "fake", "--legs", "a")
    assert r.returncode == 0, r.stderr
    d = Path(r.stdout.strip().splitlines()[-1])
    plan_sha = _sha(d / "plan.json")
    wait_for(
        lambda: (st := expdir.read_state(d, "a")) and st.status == "running", timeout=60, what="a running"
    )
    r = cockpit("--registry", str(path), "launch", "fake", "--into", str(d))
    assert r.returncode == 0, r.stderr
    sup = json.loads((d / "state" / "supervisor.json").read_text())
    lines = r.stdout.strip().splitlines()
    assert lines == [
        f"skip a: running in {d} already",
        f"b: joined the queue of {d}'s supervisor (pid {sup['pid']})",
        str(d),
    ]
    assert expdir.read_state(d, "b").status == "queued"
    (d / "go").touch()
    wait_for(lambda: not expdir.open_dir(d).supervisor_alive, timeout=90, what="the queue's end")
    opened = expdir.open_dir(d)
    assert [opened.states[n].status for n in "ab"] == ["done"] * 2
    assert _sha(d / "plan.json") == plan_sha and continuation_numbers(d) == [1]
    assert json.loads((d / "state" / "supervisor.json").read_text())["continuations"] == [1]
    status = cockpit("--registry", str(path), "status").stdout
    assert f"{d.name}  supervisor finished;  a done, b done" in status, status
    assert all(f"| {n} |" in (d / "report.md").read_text() for n in "ab")


@pytest.mark.slow
def test_an_ended_dir_runs_its_never_started_runs_under_a_new_supervisor(tmp_path, checkout):
    path = _registry(tmp_path, {"a": 'model-tag = "a", fail-at-step = 1', "b": 'model-tag = "b"'})
    registry = reg.load(path)
    d = launch.start(registry, "fake", foreground=True)
    opened = expdir.open_dir(d)
    assert [opened.states[n].status for n in "ab"] == ["failed", "stopped"]
    a_log = (d / "a.log").read_bytes()
    out = continuation.start(registry, "fake", d, foreground=True)
    assert out.runs == ["b"] and out.exit_code == 1  # the dir's queue as a whole: a is still failed
    opened = expdir.open_dir(d)
    assert [opened.states[n].status for n in "ab"] == ["failed", "done"]
    assert (d / "a.log").read_bytes() == a_log  # a started here before: never again, its log untouched
    assert json.loads((d / "plan.1.json").read_text())["again"] == ["b"]
    assert json.loads((d / "state" / "supervisor.json").read_text())["status"] == "ended with legs not done"


@pytest.mark.slow
async def test_L_after_l_offers_to_continue_in_the_same_dir(tmp_path, monkeypatch):
    """The dir `l` made runs leg a (its supervisor alive): `L` offers `Continue in dir [c]`
    beside the fresh launch, naming what it runs there and skips; `c` continues that dir."""
    from cockpit.tui.confirm import ConfirmScreen
    from cockpit.tui.experiments import Selection

    path = _registry(tmp_path, {"a": 'model-tag = "a"', "b": 'model-tag = "b"'})
    d = write_dir(
        tmp_path / "exp",
        "20260224_190000_fake",
        "fake",
        {"a": ("running", log_lines(3, 4, finished=False))},
        supervisor_alive=True,
    )
    asked = []

    def start(registry, exp_id, exp_dir, *a, **kw):
        asked.append((exp_id, Path(exp_dir)))
        return continuation.Outcome(Path(exp_dir), 1, ["b"], joined=4242)

    monkeypatch.setattr(continuation, "start", start)
    app = make_app(path)
    async with app.run_test(size=(160, 48)) as pilot:
        await ready(pilot, app)
        await select(pilot, app, Selection("leg", "fake", "b"))
        await pilot.press("l")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen), what="confirm l")
        assert "Continue in dir" not in screen_text(app)  # `l` launches one leg in a fresh dir
        await pilot.press("n")
        await select(pilot, app, Selection("experiment", "fake"))
        await pilot.press("L")
        screen = await until(
            pilot, lambda: isinstance(app.screen, ConfirmScreen) and app.screen, what="confirm L"
        )
        body = str(screen.body)
        assert f"or continue in {d} [c]:" in body and "runs b there; its queue runs (supervisor pid" in body
        assert f"skips a: running in {d} already" in body
        await until(
            pilot,
            lambda: "Launch [y]" in screen_text(app) and "Continue in dir [c]" in screen_text(app),
            what="both choices shown with their keys",
        )
        await pilot.press("c")
        await until(
            pilot,
            lambda: any(f"b: joined the queue of {d}'s supervisor (pid 4242)" in m for m in notes(app)),
            what="the joined note",
        )
    assert asked == [("fake", d)]


def test_no_dir_to_continue_when_the_newest_has_nothing_left(tmp_path):
    path = _registry(tmp_path, {"a": 'model-tag = "a"', "b": 'model-tag = "b"'})
    assert continuation.candidate(reg.load(path), "fake") is None  # no dir yet
    d = _planned(path, ["a", "b"])
    _state(d, "a", "done")
    _state(d, "b", "failed")  # it started: a fresh dir runs it again
    assert continuation.candidate(reg.load(path), "fake") is None
