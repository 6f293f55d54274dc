"""A dir's baseline is pinned at launch (plan.json's `baseline`) and never moves: a later run of
the baseline, in a later dir, never changes an earlier dir's deltas or verdicts; a pinned run
that failed gives no deltas, said with how to compare with another through --baseline."""

import json
import os
import shutil
from pathlib import Path

import pytest
from helpers import FIXTURES, NOW, bundled_registry, make_dir, write_registry

from cockpit import baseline, expdir, launch, report, report_md, resume, resume_text
from cockpit import registry as reg
from cockpit.vocab import Status

DELTA = "| tail50 tok/sec | 9691.74 | 6733.28 | -30.53% | ±"


def _done(
    d: Path,
    leg: str,
    fixture: Path | None = None,
    text: str | None = None,
    status: str = "done",
    ended_at: str | None = None,
) -> None:
    """A run recorded in a dir as the supervisor records it: its log and its state."""
    (d / "state").mkdir(exist_ok=True)
    if fixture is not None:
        shutil.copy(fixture, d / f"{leg}.log")
    if text is not None:
        (d / f"{leg}.log").write_text(text)
    (d / "state" / f"{leg}.json").write_text(
        json.dumps(
            {
                "leg": leg,
                "status": status,
                "log": str(d / f"{leg}.log"),
                "exit_code": 0 if status == "done" else 1,
                "ended_at": ended_at,
            }
        )
    )


def _launched(registry: reg.Registry, name: str, legs: list[str], rerun: bool = False) -> Path:
    """A dir as a launch of `legs` makes it (plan.json from launch.write_plan, its pin included)."""
    d = registry.settings.exp_root / name
    d.mkdir(parents=True)
    launch.write_plan(registry, launch.plan_launch(registry, "cpu-smoke", legs, rerun=rerun), d)
    return d


def _fast_dense(tok: float) -> str:
    """A finished dense log whose tail tok/sec is about `tok` (a later re-run that came out faster
    or slower)."""
    lines = [
        f"step {i:05d}/00040 ({2.5 * i:.2f}%) | loss: {6 - i / 20:.6f} | lrm: 1.00 | dt: 100.00ms | "
        f"tok/sec: {int(tok + (i % 3) * 10):,} | bf16_mfu: 0.00 | epoch: 0 | total time: {i / 600:.2f}m"
        for i in range(40)
    ]
    return "\n".join([*lines, "Peak memory usage: 100.00MiB", "Total training time: 0.07m"]) + "\n"


def _status_line(registry: reg.Registry, leg: str) -> str:
    text = resume_text.render_status(resume.build_state(registry, now=NOW))
    return next(ln for ln in text.splitlines() if ln.strip().startswith(leg + " "))


def test_a_later_run_never_changes_an_earlier_dirs_report(tmp_path):
    """The issue's scenario: a dir launched without its baseline leg compares with the finished
    one of another dir, pinned at launch; a later re-run of the baseline (faster or slower) in a
    newer dir changes neither its report nor its status line."""
    registry = bundled_registry(tmp_path)
    root = registry.settings.exp_root
    old = make_dir(
        root, "20261126_040000_cpu-smoke", {"dense": ("done", "cpu-smoke/dense.log")}, registry=registry
    )
    d = _launched(registry, "20261126_050000_cpu-smoke", ["moe_cap1p0"])
    _done(d, "moe_cap1p0", FIXTURES / "cpu-smoke" / "moe_cap1p0.log")
    pin = json.loads((d / "plan.json").read_text())["baseline"]
    assert pin == {
        "leg": "dense",
        "experiment": "cpu-smoke",
        "source": "dir",
        "dir": str(old),
        "runs": ["dense"],
    }
    before = report_md.render_report(d, now=NOW)
    status = _status_line(registry, "moe_cap1p0")
    assert (
        DELTA in before
        and f"the baseline ran in another launch, `{old.name}` (pinned when this dir was launched)" in before
        and "-30.53%" in status
    )
    later = _launched(registry, "20261126_060000_cpu-smoke", ["dense"], rerun=True)
    _done(later, "dense", text=_fast_dense(6700.0))
    assert report_md.render_report(d, now=NOW) == before
    assert _status_line(registry, "moe_cap1p0") == status
    # --baseline still overrides, for one report
    assert "-30.53%" not in report_md.render_report(d, baseline=f"{later.name}/dense", now=NOW)
    assert report_md.render_report(d, now=NOW) == before


def test_a_dir_from_before_pins_keeps_the_baseline_that_finished_before_it_was_made(tmp_path):
    """A dir whose plan has no pin (launched before pins existed): its baseline is the newest
    finished one in a dir made before it, ended before it was made; a later dir never moves it."""
    registry = bundled_registry(tmp_path)
    root = registry.settings.exp_root
    old = make_dir(
        root, "20261126_040000_cpu-smoke", {"dense": ("done", "cpu-smoke/dense.log")}, registry=registry
    )
    d = make_dir(
        root,
        "20261126_050000_cpu-smoke",
        {"moe_cap1p0": ("done", "cpu-smoke/moe_cap1p0.log")},
        registry=registry,
    )
    before = report_md.render_report(d, now=NOW)
    assert DELTA in before and f"## Delta vs baseline `dense` (baseline from {old.name})" in before
    later = make_dir(root, "20261126_060000_cpu-smoke", {"dense": ("done", None)}, registry=registry)
    (later / "dense.log").write_text(_fast_dense(6700.0))
    assert report_md.render_report(d, now=NOW) == before
    # a baseline whose state says it ended after the dir was made was not there to compare with
    (old / "state" / "dense.json").write_text(
        json.dumps(
            {"leg": "dense", "status": "done", "exit_code": 0, "ended_at": "2026-11-26T05:30:00+00:00"}
        )
    )
    plan = json.loads((d / "plan.json").read_text())
    plan["created_at"] = "2026-11-26T05:00:00+00:00"
    (d / "plan.json").write_text(json.dumps(plan))
    assert "## Delta" not in report_md.render_report(d, now=NOW)


def test_a_failed_own_baseline_gives_no_deltas_never_another_dirs(tmp_path):
    """A launch that ran the baseline leg pins its own run; when that run fails the dir has no
    deltas (said, with the --baseline that compares with another run), although another dir
    holds a finished one."""
    registry = bundled_registry(tmp_path)
    root = registry.settings.exp_root
    old = make_dir(
        root, "20261126_040000_cpu-smoke", {"dense": ("done", "cpu-smoke/dense.log")}, registry=registry
    )
    d = _launched(registry, "20261126_050000_cpu-smoke", ["dense", "moe_cap1p0"], rerun=True)
    assert json.loads((d / "plan.json").read_text())["baseline"] == {
        "leg": "dense",
        "experiment": "cpu-smoke",
        "source": "own",
        "runs": ["dense"],
    }
    _done(
        d,
        "dense",
        text="step 00000/00040 (0.00%) | loss: 6.0 | dt: 100.00ms | tok/sec: 10\nRuntimeError: boom\n",
        status="failed",
    )
    _done(d, "moe_cap1p0", FIXTURES / "cpu-smoke" / "moe_cap1p0.log")
    text = report_md.render_report(d, now=NOW)
    assert "-30.53%" not in text and "### moe_cap1p0" not in text
    assert (
        f"No deltas: this dir's own run of dense (the launch ran it) failed. The baseline was pinned when this "
        f"dir was launched and is never replaced by another. To compare with another run: "
        f"`cockpit report --exp-dir {d} --baseline {old.name}/dense`."
    ) in text
    assert DELTA in report_md.render_report(d, baseline=f"{old.name}/dense", now=NOW)
    b = baseline.choose(registry, "cpu-smoke", d)
    assert b.own and b.problem and not report.baseline_row(b).has_figures
    assert _status_line(registry, "moe_cap1p0").endswith(
        "Δ - (dense: this dir's own run of dense (the launch ran it) failed)"
    )
    # while it runs, the same: no other dir's in its place
    now = expdir.open_dir(d)
    now.states["dense"] = expdir.LegState("dense", Status.RUNNING)
    b = baseline.choose(registry, "cpu-smoke", d, [expdir.open_dir(old), now])
    assert (
        b.problem
        == "this dir's own run of dense (the launch ran it) has not finished yet: the deltas come when it does"
    )


@pytest.mark.slow
def test_nothing_to_pin_stays_nothing_and_recorded_figures_are_copied(tmp_path):
    """A launch with no finished baseline anywhere and none recorded pins `none`: a baseline that
    finishes later does not become its. A recorded baseline's figures are copied into the pin: a
    later edit of the registry does not move them."""
    registry = bundled_registry(tmp_path)
    root = registry.settings.exp_root
    d = _launched(registry, "20261126_050000_cpu-smoke", ["moe_cap1p0"])
    _done(d, "moe_cap1p0", FIXTURES / "cpu-smoke" / "moe_cap1p0.log")
    assert json.loads((d / "plan.json").read_text())["baseline"]["source"] == "none"
    make_dir(root, "20261126_060000_cpu-smoke", {"dense": ("done", "cpu-smoke/dense.log")}, registry=registry)
    text = report_md.render_report(d, now=NOW)
    assert "-30.53%" not in text
    assert (
        "No deltas: no finished run of cpu-smoke/dense and no recorded figures when this dir was launched. "
        "The baseline was pinned"
    ) in text and "--baseline 20261126_060000_cpu-smoke/dense`" in text
    assert (
        "# baseline (pinned in plan.json at launch): cpu-smoke/dense as it ran in 20261126_060000_cpu-smoke"
        in launch.dry_run_text(registry, launch.plan_launch(registry, "cpu-smoke", ["moe_dropless"]))
    )

    v3 = root / "20261126_070000_moe-fp8-capacity-opt-v3"
    v3.mkdir()
    launch.write_plan(registry, launch.plan_launch(registry, "moe-fp8-capacity-opt-v3"), v3)
    _done(
        v3,
        "moe_fp8_experts_static_cap1p0_v3",
        FIXTURES / "seed" / "20260224_175412_moe-fp8-capacity-ablation-v1" / "static_cap1p25.log",
    )
    pin = json.loads((v3 / "plan.json").read_text())["baseline"]
    assert pin["source"] == "recorded" and pin["recorded"]["tok_per_sec"] == 806400.06
    line = "| tail50 tok/sec | 806400.06 | 747298.44 | -7.33% | - | - |"
    assert line in report_md.render_report(v3, now=NOW)
    registry.path.write_text(registry.path.read_text().replace("806400.06", "700000.0"))
    assert line in report_md.render_report(v3, now=NOW)


def test_a_pin_the_cockpit_did_not_write_is_said_not_trusted(tmp_path):
    registry = bundled_registry(tmp_path)
    d = _launched(registry, "20261126_050000_cpu-smoke", ["moe_cap1p0"])
    _done(d, "moe_cap1p0", FIXTURES / "cpu-smoke" / "moe_cap1p0.log")
    plan = json.loads((d / "plan.json").read_text())
    plan["baseline"] = {"leg": "dense", "source": "elsewhere"}
    (d / "plan.json").write_text(json.dumps(plan))
    assert "No deltas: plan.json's baseline pin is not one the cockpit wrote" in report_md.render_report(
        d, now=NOW
    )
    plan["baseline"] = {
        "leg": "dense",
        "experiment": "cpu-smoke",
        "source": "dir",
        "dir": str(tmp_path / "gone"),
        "runs": ["dense"],
    }
    (d / "plan.json").write_text(json.dumps(plan))
    assert "No deltas: the dir pinned at launch, gone, is gone" in report_md.render_report(d, now=NOW)
    assert os.path.isdir(d)


def test_status_says_what_a_repeats_interval_rests_on(tmp_path):
    """A launch of a baseline and a leg run twice each: the pin names the baseline's repeats, and
    `cockpit status` gives the delta's interval with `n=2 repeats vs the baseline's 2`."""
    text = (Path(__file__).parents[1] / "experiments.toml").read_text()
    for leg in ("dense", "moe_cap1p0"):
        text = text.replace(f'name = "{leg}"\n', f'name = "{leg}"\nrepeats = 2\n')
    registry = bundled_registry(tmp_path, text)
    d = _launched(registry, "20261126_050000_cpu-smoke", ["dense", "moe_cap1p0"])
    assert json.loads((d / "plan.json").read_text())["baseline"]["runs"] == ["dense.r0", "dense.r1"]
    for i, tok in enumerate((9700.0, 9800.0)):
        _done(d, f"dense.r{i}", text=_fast_dense(tok))
    for i, tok in enumerate((6650.0, 6750.0)):
        _done(d, f"moe_cap1p0.r{i}", text=_fast_dense(tok))
    line = _status_line(registry, "moe_cap1p0")
    assert "(n=2 repeats vs the baseline's 2) significant vs dense" in line and "Δ -31." in line


def test_an_experiment_without_a_baseline_pins_none_and_never_gets_one(tmp_path):
    registry = reg.load(write_registry(tmp_path, {"a": 'model-tag = "a"'}))
    d = registry.settings.exp_root / "20261126_050000_fake"
    d.mkdir(parents=True)
    launch.write_plan(registry, launch.plan_launch(registry, "fake"), d)
    assert json.loads((d / "plan.json").read_text())["baseline"] == {
        "source": "none",
        "leg": None,
        "why": "experiment 'fake' names no baseline",
    }
    registry.path.write_text(registry.path.read_text().replace('id = "fake"', 'id = "fake"\nbaseline = "a"'))
    assert (
        baseline.choose(reg.load(registry.path), "fake", d) is None
    )  # a baseline named afterwards is not this dir's
