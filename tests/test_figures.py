"""`cockpit report --out-md`'s figures: the baseline in every plot and in the per-step CSV (from
this dir, another one, or recorded figures), bars from zero, SVG beside each PNG, and paper
figures without the dir and commit in their titles."""

import csv
import json
import shutil

import numpy as np
import pytest
from helpers import FIXTURES, NOW, bundled_registry, make_dir

from cockpit import cli, launch, plots, report, report_files

PLOTTED = ("loss", "tok_per_sec", "dt_ms", "drop_pct", "tail_means")  # a CPU run: no MFU; no validation


def _svg(path) -> str:
    return path.read_text()


@pytest.mark.slow  # four reports with their figures
def test_the_baseline_from_another_dir_is_in_every_plot_and_in_the_csv(tmp_path, capsys):
    registry = bundled_registry(tmp_path)
    root = registry.settings.exp_root
    old = make_dir(
        root, "20261126_040000_cpu-smoke", {"dense": ("done", "cpu-smoke/dense.log")}, registry=registry
    )
    d = root / "20261126_050000_cpu-smoke"
    d.mkdir()
    launch.write_plan(registry, launch.plan_launch(registry, "cpu-smoke", ["moe_cap1p0"]), d)
    shutil.copy(FIXTURES / "cpu-smoke" / "moe_cap1p0.log", d / "moe_cap1p0.log")
    out = report_files.write_report(d, tmp_path / "out" / "r.md", now=NOW, svg=True)
    base = f"dense ({old.name})"
    with open(out.with_name("r_steps.csv"), newline="") as f:
        table = list(csv.DictReader(f))
    assert list(table[0])[-1] == "baseline"
    assert {r["run"] for r in table if r["baseline"] == "1"} == {base}
    assert {r["run"] for r in table if r["baseline"] == "0"} == {"moe_cap1p0"}
    dense = [
        ln for ln in (FIXTURES / "cpu-smoke" / "dense.log").read_text().splitlines() if ln.startswith("step ")
    ]
    assert sum(r["run"] == base for r in table) == len(dense)
    text = out.read_text()
    for attr in PLOTTED:
        svg = out.with_name(f"r_{attr}.svg")
        assert out.with_name(f"r_{attr}.png").is_file() and svg.is_file(), attr
        assert f"{base} (baseline)" in _svg(svg), attr  # its legend entry, or its bar
        assert f"cpu-smoke · {d.name}" in _svg(svg), attr  # the title's context line
        assert f"(r_{attr}.svg)" in text
    # drop %: the dense baseline has none in its log, and its legend says so
    assert f"{base} (baseline): none in its log" in _svg(out.with_name("r_drop_pct.svg"))
    # the same figure, the same bytes: an SVG carries no date or random ids
    again = report_files.write_report(d, tmp_path / "again" / "r.md", now=NOW, svg=True)
    assert (
        again.with_name("r_tok_per_sec.svg").read_bytes() == out.with_name("r_tok_per_sec.svg").read_bytes()
    )

    # paper figures: the titles name no dir nor commit
    assert (
        cli.main(
            [
                "report",
                "--registry",
                str(registry.path),
                "--exp-dir",
                str(d),
                "--out-md",
                str(tmp_path / "paper" / "r.md"),
                "--figures",
                "paper",
            ]
        )
        == 0
    )
    capsys.readouterr()
    for attr in PLOTTED:
        svg = _svg(tmp_path / "paper" / f"r_{attr}.svg")
        assert d.name not in svg and "cpu-smoke ·" not in svg and f"{base} (baseline)" in svg
    assert d.name in _svg(out.with_name("r_loss.svg"))  # where the full ones do
    assert (
        cli.main(
            [
                "report",
                "--registry",
                str(registry.path),
                "--exp-dir",
                str(d),
                "--out-md",
                str(tmp_path / "x.md"),
                "--figures",
                "poster",
            ]
        )
        == 2
    )
    assert capsys.readouterr().err == "cockpit: --figures poster: give one of full, paper\n"


@pytest.mark.slow
def test_a_recorded_baseline_is_a_line_at_its_figures_and_a_bar(tmp_path):
    registry = bundled_registry(tmp_path)
    root = registry.settings.exp_root
    v3 = root / "20261126_070000_moe-fp8-capacity-opt-v3"
    v3.mkdir(parents=True)
    launch.write_plan(registry, launch.plan_launch(registry, "moe-fp8-capacity-opt-v3"), v3)
    shutil.copy(
        FIXTURES / "seed" / "20260224_175412_moe-fp8-capacity-ablation-v1" / "static_cap1p25.log",
        v3 / "moe_fp8_experts_static_cap1p0_v3.log",
    )
    out = report_files.write_report(v3, now=NOW, svg=True)
    name = "moe-fp8-capacity-opt-v2-buffer/static_cap1p0_bufreuse"
    assert f"{name} (baseline, recorded)" in _svg(out.with_name("report_tok_per_sec.svg"))
    assert f"{name} (baseline): no per-step figures: recorded" in _svg(out.with_name("report_loss.svg"))
    assert f"{name} (baseline)" in _svg(out.with_name("report_tail_means.svg"))
    with open(out.with_name("report_steps.csv"), newline="") as f:
        assert {r["baseline"] for r in csv.DictReader(f)} == {"0"}  # recorded: no steps to add


@pytest.mark.slow
def test_the_own_dirs_baseline_is_marked_and_bars_start_at_zero(tmp_path):
    registry = bundled_registry(tmp_path)
    d = make_dir(
        registry.settings.exp_root,
        "20261126_040000_cpu-smoke",
        {"dense": ("done", "cpu-smoke/dense.log"), "moe_cap1p0": ("done", "cpu-smoke/moe_cap1p0.log")},
        registry=registry,
    )
    out = report_files.write_report(d, now=NOW)  # as the supervisor writes it: PNG only
    with open(out.with_name("report_steps.csv"), newline="") as f:
        assert {(r["run"], r["baseline"]) for r in csv.DictReader(f)} == {("dense", "1"), ("moe_cap1p0", "0")}
    assert out.with_name("report_tok_per_sec.png").is_file() and not list(d.glob("*.svg"))
    drawn = plots.draw_plots(
        {"dense": {}, "moe": {}},
        report_files._tail_bars(report.rows(d, now=NOW), 50),
        50,
        "",
        plots.BaselineMark(frozenset({"dense"}), "dense"),
        ("svg",),
    )
    assert "dense (baseline)" in drawn["tail_means"]["svg"].decode()
    assert json.loads((d / "plan.json").read_text())["experiment"] == "cpu-smoke"
    # bars from zero: 780k against 806k is a 3% difference, drawn as one (the axis is never cut)
    assert plots.bar_axis(np.array([785203.0, 806400.0]), np.array([5000.0, 4000.0]))[0] == 0.0
    lo, hi = plots.bar_axis(np.array([-2.0, 3.0]), np.array([1.0, 0.5]))
    assert lo < -3.0 and hi > 3.5
