"""plan.json typed (cockpit/plan.py): a launch's Plan written once and read back whole; one line
naming the file when there is no plan to speak of; what a plan holds that cannot be taken left out
and said; old and odd plans still read."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytest
from helpers import write_registry

from cockpit import launch, procs
from cockpit import registry as reg
from cockpit.plan import PLAN_FILE, Plan, PlanError, PlanRun, Prepare


def _launched(
    tmp_path: Path, extra_project: str = "", legs: dict[str, str] | None = None
) -> tuple[Path, Plan]:
    path = write_registry(
        tmp_path, legs or {"a": 'model-tag = "a"', "b": 'model-tag = "b"'}, extra_project=extra_project
    )
    registry = reg.load(path)
    exp_dir = registry.settings.exp_root / "20260101_000000_fake"
    exp_dir.mkdir(parents=True)
    return exp_dir, launch.write_plan(registry, launch.plan_launch(registry, "fake"), exp_dir)


def test_a_launchs_plan_reads_back_as_it_was_written(tmp_path):
    exp_dir, written = _launched(tmp_path, 'max_parallel = 2\ngpus = [1, 3]\nnotify = ["true", "{leg}"]')
    read = Plan.read(exp_dir)
    assert read == written
    assert read.to_dict() == json.loads((exp_dir / PLAN_FILE).read_text())
    assert (read.experiment, read.run_names, read.max_parallel, read.gpus) == ("fake", ["a", "b"], 2, (1, 3))
    assert read.notify.argv == ("true", "{leg}") and read.baseline is not None and read.seq.n == 1
    a = read.run("a")
    assert (
        a.argv[-2:] == ("--model-tag", "a") and a.log == str(exp_dir / "a.log") and read.run("nosuch") is None
    )
    assert read.unrunnable() is None and read.problems == () and read.left_out == ()
    with pytest.raises(FileExistsError):  # written once: never over anything
        written.write(exp_dir)


@pytest.mark.parametrize(
    "content, why",
    [
        ("{not json", "unreadable: "),
        ("[1, 2]", "not a JSON object"),
        ('{"experiment": "x", "legs": {"a": 1}}', "no list of legs"),
        ("[" * 100_000 + "]" * 100_000, "unreadable: "),
    ],
)
def test_no_plan_to_speak_of_is_one_line_naming_the_file(tmp_path, content, why):
    (tmp_path / PLAN_FILE).write_text(content)
    with pytest.raises(PlanError) as e:
        Plan.read(tmp_path)
    assert str(e.value).startswith(f"{tmp_path / PLAN_FILE}: {why}") and "\n" not in str(e.value)


def test_a_plan_that_is_not_a_regular_file_is_refused_without_blocking(tmp_path):
    os.mkfifo(tmp_path / PLAN_FILE)
    with pytest.raises(PlanError, match="unreadable: "):
        Plan.read(tmp_path)
    assert not (tmp_path / "missing").exists()
    with pytest.raises(PlanError, match="unreadable: "):
        Plan.read(tmp_path / "missing")


def test_runs_it_cannot_take_are_left_out_and_said_and_no_supervisor_runs_it(tmp_path):
    (tmp_path / PLAN_FILE).write_text(
        json.dumps(
            {
                "experiment": "x",
                "legs": [
                    {"name": "a", "argv": ["t"]},
                    {"name": "../b"},
                    "c",
                    {"name": "y" * 300},
                    {"name": "a", "argv": ["u"]},
                ],
            }
        )
    )
    plan = Plan.read(tmp_path)
    assert plan.run_names == ["a"] and plan.run("a").argv == ("t",)  # the first entry of a run planned twice
    assert plan.problems == (
        "'../b' is not a leg name a file can have (and 2 more): left out",
        "leg a is planned twice: its first entry taken",
    )
    assert plan.unrunnable() == plan.problems[0]


@pytest.mark.parametrize(
    "data, why",
    [
        ({"legs": [{"name": "a", "argv": ["t"]}]}, "no experiment id"),
        (
            {"experiment": "x", "executor": "slurm", "legs": [{"name": "a", "argv": ["t"]}]},
            "not under a supervisor",
        ),
        ({"experiment": "x", "legs": []}, "no legs"),
        (
            {"experiment": "x", "legs": [{"name": "a", "argv": "rm -rf /"}]},
            "leg a: argv is not a list of strings",
        ),
        ({"experiment": "x", "legs": [{"name": "supervisor", "argv": ["t"]}]}, "is not a leg name"),
        (
            {"experiment": "x", "prepare": {"argv": ["t"]}, "legs": [{"name": "prepare", "argv": ["t"]}]},
            "is not a leg name",
        ),
    ],
)
def test_what_a_supervisor_cannot_run_is_said(data, why):
    assert why in Plan.from_dict(data).unrunnable()


def test_values_of_the_wrong_kind_read_as_their_defaults_and_unknown_keys_are_kept(tmp_path):
    plan = Plan.from_dict(
        {
            "experiment": 7,
            "legs": [{"name": "a", "nproc_per_node": "8", "repeat": -1, "device": 3, "future": 1}],
            "tail": 0,
            "max_parallel": 1000,
            "gpus": [1, 1],
            "stop_grace_s": float("inf"),
            "gpu_idle": {"wait_s": -5},
            "env": {"OK": "1", "BAD NAME": "x", "N": 3, procs.ENV_EXP_DIR: "/elsewhere"},
            "notify": {"argv": []},
            "seq": {"n": "7", "utc": 3},
            "git": [],
            "prepare": {"argv": "make", "mark": "relative"},
            "baseline": "garbage",
            "from_the_future": {"k": 1},
        }
    )
    assert (plan.experiment, plan.tail, plan.max_parallel, plan.gpus, plan.stop_grace_s) == (
        "",
        50,
        1,
        None,
        None,
    )
    assert (
        plan.gpu_idle == reg.GpuIdle()
        and plan.env == {"OK": "1"}
        and plan.notify is None
        and plan.seq is None
    )
    assert plan.git == {} and plan.prepare == Prepare((), (), None) and not plan.prepare.runnable
    assert plan.baseline == {}  # there, but not a pin the cockpit wrote: no baseline, never the old rule
    assert plan.runs == (PlanRun("a", extra={"future": 1}),) and plan.grace(3.0) == 3.0
    assert plan.to_dict()["from_the_future"] == {"k": 1} and plan.to_dict()["legs"][0]["future"] == 1


def test_an_old_plan_reads_without_the_keys_it_never_had(tmp_path):
    """A dir launched before seq, pins, prepare, continuations (and one hand-written): no key it lacks
    is needed, and a plan without a `baseline` key is not pinned."""
    plan = Plan.from_dict({"experiment": "x", "legs": [{"name": "a"}, {"name": "b"}]})
    assert (
        plan.run_names == ["a", "b"] and plan.seq is None and plan.baseline is None and plan.prepare is None
    )
    assert (plan.executor, plan.on_failure, plan.tail, plan.max_parallel) == ("local", "stop", 50, 1)
    assert plan.registry_of(tmp_path) is None and plan.continuations == ()


def test_the_registry_a_plan_names_else_its_snapshot(tmp_path):
    exp_dir, plan = _launched(tmp_path)
    assert plan.registry_of(exp_dir).experiment("fake") is not None
    path = Path(plan.registry.path)
    path.write_text(path.read_text().replace('id = "fake"', 'id = "other"'))  # the file no longer has it
    assert plan.registry_of(exp_dir).experiment("fake") is not None  # the snapshot has
    gone = dataclasses.replace(plan, registry=dataclasses.replace(plan.registry, raw=None))
    assert gone.registry_of(exp_dir) is None
