"""The order of experiment dirs (oldest first: what "newest" means to status, stop, the baseline
and the resume guide) comes from the launch sequence plan.json records, not from the local-time
stamp in a dir's name, which a clock set back or a timezone change can make lie."""

from __future__ import annotations

import json
from pathlib import Path

from helpers import write_dir, write_registry

from cockpit import expdir, launch, resume
from cockpit import registry as reg


def _launch_into(registry: reg.Registry, name: str) -> Path:
    """What a launch writes, into a dir of a chosen name (the stamp the local clock gave it)."""
    d = registry.settings.exp_root / name
    d.mkdir(parents=True)
    launch.write_plan(registry, launch.plan_launch(registry, "fake"), d)
    return d


def test_a_clock_set_back_does_not_make_an_older_dir_newest(tmp_path):
    registry = reg.load(write_registry(tmp_path, {"a": 'model-tag = "a"'}))
    root = registry.settings.exp_root
    first = _launch_into(registry, "20260301_120000_fake")
    second = _launch_into(
        registry, "20260301_090000_fake"
    )  # the clock went back 3 hours (or the timezone moved)
    seqs = [json.loads((d / "plan.json").read_text())["seq"] for d in (first, second)]
    assert [s["n"] for s in seqs] == [1, 2] and all(s["utc"].endswith("Z") for s in seqs)
    assert [d.path for d in expdir.discover(root)] == [first, second]
    assert expdir.find_dir(root, "fake") == second  # `cockpit stop fake`: the newest queue
    # the resume guide's latest reports: the newest dir's first
    for d in (second, first):
        (d / "report.md").write_text("# report\n")
    state = resume.build_state(registry)
    assert state.reports == [str(second / "report.md"), str(first / "report.md")]


def test_dirs_launched_before_the_sequence_keep_their_stamp_order_and_come_first(tmp_path):
    registry = reg.load(write_registry(tmp_path, {"a": 'model-tag = "a"'}))
    root = registry.settings.exp_root
    lines = ["step 00000/00010 (0.00%) | loss: 1.0 | dt: 1.00ms | tok/sec: 1 | bf16_mfu: 1.00"]
    old2 = write_dir(root, "20250102_000000_fake", "fake", {"a": ("done", lines)})
    old1 = write_dir(root, "20250101_000000_fake", "fake", {"a": ("done", lines)})
    manual = root / "manual_logs"
    manual.mkdir()
    (manual / "run.log").write_text(lines[0] + "\n")
    new = _launch_into(registry, "20240101_000000_fake")  # a clock far behind
    assert json.loads((new / "plan.json").read_text())["seq"]["n"] == 1  # the old dirs have none
    assert [d.path for d in expdir.discover(root)] == [old1, old2, manual, new]
    (old2 / "plan.json").write_text(
        json.dumps({**json.loads((old2 / "plan.json").read_text()), "seq": {"n": "7", "utc": 3}})
    )  # garbage: as if none
    assert [d.path for d in expdir.discover(root)] == [old1, old2, manual, new]
    assert expdir.next_seq(root).n == 2
