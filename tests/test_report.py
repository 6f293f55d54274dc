"""cockpit.report and `cockpit report`: tables from plain logs, deltas, status, files."""

import csv
import io
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from helpers import (
    FIXTURES,
    NOW,
    REPO,
    bundled_registry,
    check_golden,
    hold_supervisor_lock,
    make_dir,
    step_line,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cockpit import cli, flags, launch, plots, report, report_files, report_md, stats, step_files
from cockpit import registry as reg
from cockpit.plan import Plan

V1 = "20260224_175412_moe-fp8-capacity-ablation-v1"
V2 = "20260224_182427_moe-fp8-capacity-opt-v2-buffer"
SEED_ORDER = [
    "static_cap0p0_baseline",
    "static_cap1p0",
    "static_cap1p25",
    "dynamic_cap1p0",
    "nocompile_cap1p0",
]


def copy_logs(src: Path, dst: Path, names: list[str]) -> Path:
    """Copy logs and give them increasing mtimes in `names` order (the order they ran)."""
    dst.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        shutil.copy(src / f"{name}.log", dst / f"{name}.log")
        os.utime(dst / f"{name}.log", (NOW - 10_000 + i, NOW - 10_000 + i))
    return dst


def normalized(text: str, exp_dir: Path) -> str:
    lines = [
        ln for ln in text.replace(str(exp_dir), "$EXP_DIR").splitlines() if not ln.startswith("Generated: ")
    ]
    return "\n".join(lines) + "\n"


def seed_dirs(tmp_path: Path) -> tuple[Path, Path]:
    v1 = copy_logs(FIXTURES / "seed" / V1, tmp_path / V1, SEED_ORDER)
    v2 = copy_logs(FIXTURES / "seed" / V2, tmp_path / V2, ["static_cap1p0_bufreuse"])
    return v1, v2


def test_seed_numbers_and_deltas_format_like_the_seed():
    pairs = [
        ("tok_per_sec", 785203.42, 806400.06, "+2.70%"),
        ("dt_ms", 670.31, 650.67, "-2.93%"),
        ("mfu", 9.5014, 9.7588, "+2.71%"),
        ("peak_mem_mib", 18983.58, 18987.83, "+0.02%"),
        ("total_time_min", 3.00, 2.97, "-1.00%"),
    ]
    for _attr, base, run, delta in pairs:
        assert stats.fmt_pct(stats.pct_change(base, run)[0]) == delta
    assert [report.fmt_value(a, b) for a, b, _, _ in pairs] == [
        "785203.42",
        "670.31",
        "9.5014",
        "18983.58",
        "3.00",
    ]
    assert stats.fmt_pct(stats.pct_change(0.0, 1.0)[0]) == "-" and report.fmt_value("mfu", None) == "-"
    assert stats.fmt_pct(0.0) == "+0.00%" and stats.pct_change(5.0, 5.0) == (0.0, None)


def test_seed_style_dir_of_plain_logs_gives_the_seed_table(tmp_path):
    v1, _ = seed_dirs(tmp_path)
    text = report_md.render_report(v1, now=NOW)
    seed_table = "\n".join(
        [
            "| run | tail50 tok/sec | tail50 dt (ms) | tail50 mfu | peak mem (MiB) | total time (min) |",
            "| --- | ---: | ---: | ---: | ---: | ---: |",
            "| static_cap0p0_baseline | 468782.94 | 1120.38 | 5.6722 | 22790.06 | 5.21 |",
            "| static_cap1p0 | 785203.42 | 670.31 | 9.5014 | 18983.58 | 3.00 |",
            "| static_cap1p25 | 747298.44 | 706.31 | 9.0426 | 19722.27 | 3.13 |",
            "| dynamic_cap1p0 | 749886.60 | 701.27 | 9.0742 | 19057.08 | 3.15 |",
            "| nocompile_cap1p0 | 363122.12 | 1449.95 | 4.3932 | 22808.69 | 6.34 |",
        ]
    )
    assert seed_table in text  # the seed resume guide's table, character for character
    check_golden("report-seed-v1.md", normalized(text, v1))


def test_delta_against_a_run_in_another_dir_matches_the_seed(tmp_path):
    _, v2 = seed_dirs(tmp_path)
    text = report_md.render_report(v2, baseline=f"{V1}/static_cap1p0", now=NOW)
    # the seed's five deltas, each with the 95% interval of the difference and its verdict: the
    # per-step metrics from their tail windows; peak memory and total time have no samples
    for line in [
        "| tail50 tok/sec | 785203.42 | 806400.06 | +2.70% | ±2.68% | significant |",
        "| tail50 dt (ms) | 670.31 | 650.67 | -2.93% | ±2.44% | significant |",
        "| tail50 mfu | 9.5014 | 9.7588 | +2.71% | ±2.67% | significant |",
        "| peak mem (MiB) | 18983.58 | 18987.83 | +0.02% | - | - |",
        "| total time (min) | 3.00 | 2.97 | -1.00% | - | - |",
    ]:
        assert line in text
    assert (
        f"| metric | static_cap1p0 (baseline from {V1}) | static_cap1p0_bufreuse | delta | 95% CI | verdict |"
        in text
    )
    assert "neither dir has a plan.json" in text  # two dirs of manual logs: their origins unknown
    check_golden("report-seed-v2-delta.md", normalized(text, v2))
    # the same through a path, and a baseline inside the dir
    assert "+2.70%" in report_md.render_report(v2, baseline=str(tmp_path / V1 / "static_cap1p0"), now=NOW)
    rows = report.rows(tmp_path / V1, now=NOW)
    deltas = report.delta_rows(rows[1], rows[0])
    assert [d.metric for d in deltas][0] == "tail50 tok/sec" and f"{deltas[0].delta_pct:+.2f}" == "-40.30"


def test_the_seed_comparisons_verdicts(tmp_path):
    """The decisions the seed took from its tables, with their intervals: every MoE leg against the
    dropless baseline is beyond noise; static capacity 1.25 against dynamic capacity 1.0 is not
    (-0.35%), while static 1.0 beats both."""
    v1, _ = seed_dirs(tmp_path)

    def tok(base: str, run: str) -> tuple[str, str, str]:
        rows = {r.run: r for r in report.rows(v1, now=NOW)}
        d = report.delta_rows(rows[base], rows[run])[0]
        assert d.attr == "tok_per_sec"
        return stats.fmt_pct(d.delta_pct), stats.fmt_ci(d.ci_pct), d.verdict

    assert tok("static_cap0p0_baseline", "static_cap1p0") == ("+67.50%", "±3.68%", "significant")
    assert tok("static_cap0p0_baseline", "static_cap1p25") == ("+59.41%", "±3.60%", "significant")
    assert tok("static_cap0p0_baseline", "dynamic_cap1p0") == ("+59.96%", "±4.21%", "significant")
    assert tok("static_cap0p0_baseline", "nocompile_cap1p0") == ("-22.54%", "±1.64%", "significant")
    assert tok("dynamic_cap1p0", "static_cap1p25") == ("-0.35%", "±2.76%", "within noise")
    assert tok("dynamic_cap1p0", "static_cap1p0") == ("+4.71%", "±2.85%", "significant")
    assert tok("static_cap1p0", "static_cap1p25") == ("-4.83%", "±2.25%", "significant")


def test_mixed_formats_failed_and_unfinished_runs(tmp_path):
    names = ["fork-log-excerpt", "upstream-bf16", "upstream-old-mfu", "trainer-junk", "crashed-torchrun"]
    d = copy_logs(FIXTURES, tmp_path / "mixed", names)
    text = report_md.render_report(d, now=NOW, tail=5)
    assert "tail5 tok/sec" in text
    assert (
        "| crashed-torchrun | failed | 3 | 2/280 | 9.785769 | torch.OutOfMemoryError: CUDA out of memory."
        in text
    )
    assert "`upstream-old-mfu`: log ended without its final lines" in text
    assert "| upstream-old-mfu | unknown | 4 | 3/21400 | 9.953140 |" in text
    check_golden("report-mixed.md", normalized(text, d))


def write_plan(
    d: Path, experiment: str, legs: list[str], states: dict[str, str], supervisor: bool = False
) -> None:
    """A dir in the RUNNER's format: plan.json and state/<leg>.json; a live supervisor is this process."""
    d.mkdir(parents=True, exist_ok=True)
    plan = {
        "experiment": experiment,
        "dir": str(d),
        "legs": [{"name": n, "log": str(d / f"{n}.log")} for n in legs],
    }
    (d / "plan.json").write_text(json.dumps(plan))
    (d / "state").mkdir(exist_ok=True)
    if supervisor:
        (d / "state" / "supervisor.json").write_text(json.dumps(hold_supervisor_lock(d)))
    for leg, status in states.items():
        (d / "state" / f"{leg}.json").write_text(
            json.dumps({"leg": leg, "status": status, "log": str(d / f"{leg}.log")})
        )


def test_planned_legs_without_logs_show_as_not_run(tmp_path):
    d = tmp_path / "20261126_040000_cpu-smoke"
    legs = ["dense", "moe_dropless", "moe_cap1p0"]
    write_plan(d, "cpu-smoke", legs, {"dense": "done", "moe_dropless": "queued"}, supervisor=True)
    shutil.copy(FIXTURES / "fork-log-excerpt.log", d / "dense.log")
    rows = report.rows(d, now=NOW)
    assert [(r.run, r.status) for r in rows] == [
        ("dense", "completed"),
        ("moe_dropless", "queued"),
        ("moe_cap1p0", "not run"),
    ]
    text = report_md.render_report(d, now=NOW)
    assert "- Not run yet: `moe_cap1p0`." in text and "| moe_dropless | queued |" in text
    (d / "state" / "supervisor.json").unlink()  # the supervisor is gone: nobody will start the queued leg
    assert report.rows(d, now=NOW)[1].status == "stopped"


@pytest.mark.slow
def test_write_report_files_and_bad_logs_never_raise(tmp_path):
    d = copy_logs(FIXTURES, tmp_path / "exp", ["fork-log-excerpt", "crashed-torchrun"])
    (d / "garbage.log").write_bytes(os.urandom(20_000))
    (d / "dir.log").mkdir()  # not a file: ignored
    out = report_files.write_report(d, now=NOW)
    assert out == d / "report.md"
    text = out.read_text()
    for name in [
        "report_steps.csv",
        "report_summary.csv",
        "report_loss.png",
        "report_tok_per_sec.png",
        "report_mfu.png",
        "report_dt_ms.png",
    ]:
        assert (d / name).is_file() and f"]({name})" in text
    steps = (d / "report_steps.csv").read_text().splitlines()
    assert steps[0].startswith("run,step,total,loss") and len(steps) == 1 + 20 + 3
    summary = (d / "report_summary.csv").read_text().splitlines()
    assert len(summary) == 4 and any(ln.startswith("crashed-torchrun,failed,log,3,2,280,") for ln in summary)
    assert (d / "report_loss.png").read_bytes()[:4] == b"\x89PNG"
    # only the report, CSVs and plots were written; the logs are untouched
    assert sorted(p.name for p in d.iterdir() if p.suffix == ".log") == [
        "crashed-torchrun.log",
        "dir.log",
        "fork-log-excerpt.log",
        "garbage.log",
    ]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "No run has step lines yet." in report_files.write_report(empty, plots=True, now=NOW).read_text()


def test_summary_csv_means_without_float_noise(tmp_path):
    d = tmp_path / "exp"
    d.mkdir()
    steps = [
        step_line(i, 4, 6.0 - i, dt, tok, mfu, 0.0)
        for i, (dt, tok, mfu) in enumerate(  # from step 1: 0 is no tail's
            [(0.10, 100, 0.10), (0.20, 200, 0.20), (0.20, 200, 0.20)], start=1
        )
    ]
    (d / "a.log").write_text(
        "\n".join([*steps, "Peak memory usage: 1.10MiB", "Total training time: 0.01m"]) + "\n"
    )
    report_files.write_report(d, tail=3, plots=False, now=NOW)
    header, row = (d / "report_summary.csv").read_text().splitlines()
    figures = dict(zip(header.split(","), row.split(","), strict=True))
    # the means of 0.10, 0.20, 0.20 and of 100, 200, 200: 12 significant digits, no binary noise
    assert (figures["dt_ms"], figures["tok_per_sec"], figures["mfu"]) == (
        "0.166666666667",
        "166.666666667",
        "0.166666666667",
    )
    assert (figures["peak_mem_mib"], figures["last_loss"], figures["tail_n"]) == ("1.1", "3.0", "3")
    d2 = tmp_path / "exp2"
    d2.mkdir()
    (d2 / "a.log").write_text("\n".join(steps[:2]) + "\n")
    report_files.write_report(d2, tail=2, plots=False, now=NOW)
    header, row = (d2 / "report_summary.csv").read_text().splitlines()
    assert (
        dict(zip(header.split(","), row.split(","), strict=True))["dt_ms"] == "0.15"
    )  # not 0.15000000000000002


def test_cli_report(tmp_path, capsys):
    v1, v2 = seed_dirs(tmp_path)
    reg_file = tmp_path / "none.toml"  # no registry: the tail is 50
    assert cli.main(["report", "--registry", str(reg_file), "--exp-dir", str(v1)]) == 0
    assert "| static_cap1p0 | 785203.42 | 670.31 | 9.5014 | 18983.58 | 3.00 |" in capsys.readouterr().out
    out_md = tmp_path / "reports" / "v2.md"
    assert (
        cli.main(
            [
                "report",
                "--registry",
                str(reg_file),
                "--exp-dir",
                str(v2),
                "--out-md",
                str(out_md),
                "--baseline",
                f"{V1}/static_cap1p0",
                "--no-plots",
            ]
        )
        == 0
    )
    assert capsys.readouterr().out.strip() == str(out_md)
    assert "+2.70%" in out_md.read_text() and (tmp_path / "reports" / "v2_steps.csv").is_file()
    assert not (tmp_path / "reports" / "v2_loss.png").exists()
    assert cli.main(["report", "--registry", str(reg_file), "--exp-dir", str(v1), "--tail", "3"]) == 0
    assert "tail3 tok/sec" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--exp-dir", "/no/such/dir"], "no such experiment dir"),
        (["--exp-dir", "{v1}", "--baseline", "nope"], "baseline 'nope': no log at"),
        (["--exp-dir", "{v1}", "--tail", "0"], "--tail must be at least 1"),
    ],
)
def test_cli_report_bad_input_is_one_line_exit_2(tmp_path, capsys, argv, message):
    v1, _ = seed_dirs(tmp_path)
    argv = [a.replace("{v1}", str(v1)) for a in argv]
    assert cli.main(["report", "--registry", str(tmp_path / "none.toml"), *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_registry_baseline_of_a_launched_dir(tmp_path):
    """No --baseline: a dir the cockpit launched is compared with its experiment's registry baseline."""
    registry = bundled_registry(tmp_path)
    root = registry.settings.exp_root
    v3 = make_dir(
        root,
        "20261126_050000_moe-fp8-capacity-opt-v3",
        {"moe_fp8_experts_static_cap1p0_v3": ("done", f"seed/{V1}/static_cap1p25.log")},
        registry=registry,
    )
    text = report_md.render_report(v3, now=NOW)
    assert "## Delta vs baseline `moe-fp8-capacity-opt-v2-buffer/static_cap1p0_bufreuse (recorded)`" in text
    assert "Baseline figures recorded: seed resume guide, 2026-02-24 (8 GPUs) (not measured here; " in text
    assert "| tail50 tok/sec | 806400.06 | 747298.44 | -7.33% | - | - |" in text  # recorded: no samples
    # a finished run of the baseline leg here takes precedence over the recorded figures
    smoke = make_dir(
        root,
        "20261126_040000_cpu-smoke",
        {"dense": ("done", "cpu-smoke/dense.log"), "moe_cap1p0": ("done", "cpu-smoke/moe_cap1p0.log")},
        registry=registry,
    )
    text = report_md.render_report(smoke, now=NOW)
    assert "## Delta vs baseline `dense` (the registry's baseline of this experiment)" in text
    delta = "| tail50 tok/sec | 9691.74 | 6733.28 | -30.53% | ±"
    assert delta in text
    # the plan's registry file is broken or gone: the plan's snapshot of it names the baseline
    registry.path.write_text("[project\n")
    assert delta in report_md.render_report(smoke, now=NOW)
    registry.path.unlink()
    assert delta in report_md.render_report(smoke, now=NOW)
    # neither the file nor a snapshot: no baseline, still a report
    plan = json.loads((smoke / "plan.json").read_text())
    del plan["registry"]["raw"]
    (smoke / "plan.json").write_text(json.dumps(plan))
    assert "## Delta" not in report_md.render_report(smoke, now=NOW)
    (smoke / "plan.json").write_text("{not json")
    assert "## Delta" not in report_md.render_report(smoke, now=NOW)


def test_supervisor_report_has_deltas_against_the_experiments_baseline(tmp_path):
    """`report_files.write_report(exp_dir)`, as the supervisor calls it after every leg, on a dir whose
    plan.json is the RUNNER's own (launch.write_plan): deltas against the registry's baseline."""
    registry = bundled_registry(tmp_path)
    root = registry.settings.exp_root
    old = make_dir(
        root, "20261126_040000_cpu-smoke", {"dense": ("done", "cpu-smoke/dense.log")}, registry=registry
    )
    d = root / "20261126_050000_cpu-smoke"
    d.mkdir()
    launch.write_plan(registry, launch.plan_launch(registry, "cpu-smoke", ["moe_cap1p0"]), d)
    shutil.copy(FIXTURES / "cpu-smoke" / "moe_cap1p0.log", d / "moe_cap1p0.log")
    head = f"## Delta vs baseline `dense` (baseline from {old.name})"
    delta = "| tail50 tok/sec | 9691.74 | 6733.28 | -30.53% | ±"
    text = report_files.write_report(d, plots=False, now=NOW).read_text()
    assert head in text and delta in text and "### moe_cap1p0" in text
    # edited since launch so that the experiment is gone: the plan's snapshot still knows it
    registry.path.write_text(
        registry.path.read_text().replace('id = "cpu-smoke"', 'id = "cpu-smoke-renamed"')
    )
    text = report_files.write_report(d, plots=False, now=NOW).read_text()
    assert head in text and delta in text


def test_a_report_reads_its_dir_once_and_renders_from_what_it_read(tmp_path, monkeypatch):
    """write_report reads the dir's plan once (its rows, its baseline, the args that differ and the
    plots' titles all take it from there); report_md.render reads nothing: a dir whose plan.json
    went after it was read renders the same."""
    registry = bundled_registry(tmp_path)
    d = registry.settings.exp_root / "20261126_050000_cpu-smoke"
    d.mkdir(parents=True)
    launch.write_plan(registry, launch.plan_launch(registry, "cpu-smoke"), d)
    for leg in ("dense", "moe_dropless", "moe_cap1p0"):
        shutil.copy(FIXTURES / "cpu-smoke" / f"{leg}.log", d / f"{leg}.log")
    reads = []
    real = Plan.read.__func__
    monkeypatch.setattr(
        Plan, "read", classmethod(lambda cls, exp_dir: reads.append(exp_dir) or real(cls, exp_dir))
    )
    text = report_files.write_report(d, tmp_path / "out" / "r.md", now=NOW, svg=True).read_text()
    assert reads == [d] and text.count("args differ: ") == 2 and "## Delta vs baseline `dense`" in text
    read = report.read_dir(d)
    rows, base = report.rows(read, now=NOW), report_md.find_baseline(read, None)
    (d / "plan.json").unlink()
    rendered = report_md.render(read, rows, base, now=NOW)
    assert rendered.rstrip() == text.split("## Files")[0].rstrip()


@pytest.mark.slow
def test_args_differ_line_per_run(tmp_path):
    registry = bundled_registry(tmp_path)
    root = registry.settings.exp_root
    d = root / "20261126_050000_cpu-smoke"
    d.mkdir(parents=True)
    launch.write_plan(registry, launch.plan_launch(registry, "cpu-smoke"), d)
    for leg in ("dense", "moe_dropless", "moe_cap1p0"):
        shutil.copy(FIXTURES / "cpu-smoke" / f"{leg}.log", d / f"{leg}.log")
    text = report_md.render_report(d, now=NOW)
    lines = [ln for ln in text.splitlines() if ln.startswith("args differ")]
    assert lines == [
        "args differ: --use-moe (not given) -> (set), --model-tag smoke_dense -> smoke_moe_dropless, "
        "--moe-capacity-factor (not given) -> 0.0",
        "args differ: --use-moe (not given) -> (set), --model-tag smoke_dense -> smoke_moe_cap1p0, "
        "--moe-capacity-factor (not given) -> 1.0",
    ]
    assert text.index(lines[1]) > text.index("### moe_cap1p0")
    # a baseline in another dir: its dir's path is no difference (each run's checkpoint root is its own dir's)
    later = root / "20261126_060000_cpu-smoke"
    later.mkdir()
    launch.write_plan(registry, launch.plan_launch(registry, "cpu-smoke", ["moe_cap1p0"]), later)
    shutil.copy(FIXTURES / "cpu-smoke" / "moe_cap1p0.log", later / "moe_cap1p0.log")
    text = report_md.render_report(later, baseline=f"{d.name}/dense", now=NOW)
    assert (
        "args differ: --use-moe (not given) -> (set), --model-tag smoke_dense -> smoke_moe_cap1p0, "
        "--moe-capacity-factor (not given) -> 1.0" in text
    )
    # a recorded baseline: its flags from the registry the plan names
    v3 = root / "20261126_070000_moe-fp8-capacity-opt-v3"
    v3.mkdir()
    launch.write_plan(registry, launch.plan_launch(registry, "moe-fp8-capacity-opt-v3"), v3)
    shutil.copy(FIXTURES / "seed" / V1 / "static_cap1p25.log", v3 / "moe_fp8_experts_static_cap1p0_v3.log")
    text = report_md.render_report(v3, now=NOW)
    assert (
        "args differ: --model-tag moe_fp8_experts_static_cap1p0_bufreuse -> moe_fp8_experts_static_cap1p0_v3"
        in text
    )
    # a manual dir (no plan): nothing says what ran, so no line
    manual = copy_logs(FIXTURES, tmp_path / "manual", ["fork-log-excerpt", "upstream-bf16"])
    assert "args differ" not in report_md.render_report(manual, baseline="fork-log-excerpt", now=NOW)


def test_leg_diff_against_the_baseline_or_another_leg():
    r = reg.load(REPO / "experiments.toml")
    cap1 = r.find_leg("moe-fp8-capacity-ablation-v1/static_cap1p0")
    assert flags.format_diff(r.leg_diff(cap1)) == (
        "--model-tag moe_fp8_experts_static_cap0p0_baseline -> "
        "moe_fp8_experts_static_cap1p0, --moe-capacity-factor 0.0 -> 1.0"
    )
    dyn = r.find_leg("moe-fp8-capacity-ablation-v1/dynamic_cap1p0")
    assert [(d.flag, d.base, d.run) for d in r.leg_diff(dyn, cap1)] == [
        ("model-tag", "moe_fp8_experts_static_cap1p0", "moe_fp8_experts_dynamic_cap1p0"),
        ("compile-mode", "static", "dynamic"),
    ]
    base = r.find_leg("moe-fp8-capacity-ablation-v1/static_cap0p0_baseline")
    assert r.leg_diff(base) == [] and flags.format_diff([]) == "none"  # the baseline against itself
    dense = r.find_leg("cpu-smoke/dense")
    # another experiment's leg: the device, the model, the flags only one of them gives
    diff = {d.flag: (d.base, d.run) for d in r.leg_diff(dense, cap1)}
    assert (
        diff["device-type"] == (None, "cpu") and diff["fp8"] == (True, None) and diff["depth"] == ("12", "2")
    )
    assert flags.format_diff(None) == "nothing to compare with"
    assert flags.parse_flags(["torchrun", "-m", "x", "--", "--a", "1", "--b", "--c", "-1"]) == {
        "a": "1",
        "b": True,
        "c": "-1",
    }


PRINTED = st.from_regex(r"\A([0-9]{1,9}(\.[0-9]{0,8})?|\.[0-9]{1,6}|[0-9]{16,20}\.[0-9]{1,3})\Z")


@pytest.mark.slow
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.lists(
        st.tuples(st.integers(0, 2**70), PRINTED, PRINTED, st.integers(0, 10**12), st.booleans()),
        min_size=1,
        max_size=20,
    )
)
def test_steps_csv_holds_each_number_as_the_log_printed_it(tmp_path, lines):
    """A cell is str() of the number the log printed: its digits (`1.00` as `1.0`, `.5` as `0.5`,
    `806,400` without its comma), a number of more digits than a float holds as float() reads it,
    a step of any length; a field the line does not carry is empty; the run's name is quoted."""
    log = tmp_path / "r.log"
    text = [
        f"step {n}/{2**70} | loss: {loss} | dt: {dt}ms | tok/sec: {tok:,}" + (" | bal: 1.5" if bal else "")
        for n, loss, dt, tok, bal in lines
    ]
    log.write_text("\n".join(text) + "\n")
    out = io.BytesIO()
    step_files.stream_steps([("a,b", str(log))], out)
    rows = list(csv.DictReader(io.StringIO(out.getvalue().decode(), newline="")))
    assert len(rows) == len(lines)
    for row, (n, loss, dt, tok, bal) in zip(rows, lines, strict=True):
        assert row["run"] == "a,b" and row["baseline"] == "0"
        assert (row["step"], row["total"]) == (str(n), str(2**70))
        assert (row["loss"], row["dt_ms"], row["tok_per_sec"]) == (
            str(float(loss)),
            str(float(dt)),
            str(float(tok)),
        )
        assert row["bal"] == ("1.5" if bal else "") and row["mfu"] == "" and row["epoch"] == ""
    assert out.getvalue().count(b"\r\n") == len(lines) + 1


@pytest.mark.slow
def test_big_logs_read_by_workers_give_the_same_files(tmp_path, monkeypatch):
    """Logs read side by side by worker processes: the same CSVs, table and plots as one after the
    other (a worker that cannot do a log leaves it to the report's own process)."""
    d = copy_logs(
        FIXTURES, tmp_path / "exp", ["fork-log-excerpt", "upstream-bf16", "crashed-torchrun", "trainer-junk"]
    )
    one = report_files.write_report(d, tmp_path / "one" / "r.md", now=NOW)
    monkeypatch.setattr(step_files, "PARALLEL_MIN_BYTES", 0)
    monkeypatch.setattr(step_files.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(plots, "np", None)  # as in a fresh process: only the workers read logs
    many = report_files.write_report(d, tmp_path / "many" / "r.md", now=NOW)
    pngs = sorted(p.name for p in one.parent.glob("*.png"))
    assert "r_tail_means.png" in pngs and pngs == sorted(p.name for p in many.parent.glob("*.png"))
    for name in ("r_steps.csv", "r_summary.csv"):
        assert (one.parent / name).read_bytes() == (many.parent / name).read_bytes(), name
    assert one.read_text().replace("/one/", "/x/") == many.read_text().replace("/many/", "/x/")
    monkeypatch.setattr(step_files, "_WORKER", "import sys; sys.exit(3)")  # workers that fail: read here
    again = report_files.write_report(d, tmp_path / "again" / "r.md", now=NOW)
    assert (again.parent / "r_steps.csv").read_bytes() == (one.parent / "r_steps.csv").read_bytes()


def _png_size(path: Path) -> tuple[int, int]:
    """A PNG's width and height in pixels, from its IHDR chunk."""
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")


def _trainer_log(steps: int, tok: float, mfu: float, moe: bool) -> str:
    """A log in the trainer's format: the batch size line, step lines (a slow compiled first step;
    with `moe`, bal and drop), validation every 20 steps and the final lines."""
    out = ["Autodetected device type: cpu", "Total batch size 1,024 => gradient accumulation steps: 1"]
    for i in range(steps):
        dt = 9000.0 if i == 0 else 1000.0 * (1 + 0.02 * ((i * 7) % 5 - 2))
        bal = f" | bal: {1.01:.4f}" if moe else ""
        drop = f" | drop: {2 + (i % 4) * 0.5:.2f}%" if moe else ""
        out.append(
            f"step {i:05d}/{steps:05d} ({100 * i / steps:.2f}%) | loss: {6 - i / 50:.6f}{bal} | lrm: 1.00 | "
            f"dt: {dt:.2f}ms | tok/sec: {int(tok * 1000 / dt):,} | bf16_mfu: {mfu:.2f} | epoch: 0 | "
            f"total time: {i * dt / 60000:.2f}m{drop}"
        )
        if i % 20 == 0:
            out.append(f"Step {i:05d} | Validation bpb: {2.5 - i / 100 - 0.05 * moe:.6f}")
    out += ["Minimum validation bpb: 1.750000", "Peak memory usage: 812.50MiB", "Total training time: 1.00m"]
    return "\n".join(out) + "\n"


@pytest.mark.slow
def test_figures_smoothed_warmup_left_out_tail_shaded_and_none_for_a_zero_metric(tmp_path):
    """The report's figures: tok/sec and dt as rolling means without the warm-up steps, each run's
    tail window recorded; drop % per step and validation bpb against tokens; a bar chart of the tail
    means; no MFU plot when MFU is 0 on every step (a CPU run); 150 dpi; titles name the dir."""
    d = tmp_path / "20261130_101010_cpu-smoke"
    d.mkdir()
    (d / "dense.log").write_text(_trainer_log(120, 1000.0, 0.0, moe=False))
    (d / "moe.log").write_text(_trainer_log(120, 1200.0, 0.0, moe=True))
    text = report_files.write_report(d, now=NOW).read_text()
    for name, label in [
        ("tok_per_sec", "tok/sec"),
        ("dt_ms", "dt (ms)"),
        ("drop_pct", "dropped tokens (%)"),
        ("val_bpb", "validation bpb"),
        ("tail_means", "tail means"),
        ("loss", "loss"),
    ]:
        assert f"![{label}](report_{name}.png)" in text
        width = plots.PLOT_SIZE_IN[0] * 150  # 150 dpi, cropped to what is drawn (a title, the legend)
        assert abs(_png_size(d / f"report_{name}.png")[0] - width) < 0.15 * width
    assert not (d / "report_mfu.png").exists() and "report_mfu.png" not in text

    with open(os.devnull, "wb") as sink:
        series = step_files.stream_steps([(r.run, r.path) for r in report.rows(d, now=NOW)], sink)
    tok = series["moe"]["tok_per_sec"]
    assert tok.steps[0] == plots.WARMUP_STEPS and tok.tail_from == 70 and tok.window == 10
    assert tok.smooth is not None and abs(tok.smooth[-1] - tok.lows[-10:].mean()) < 1e-6
    assert series["dense"]["loss"].steps[0] == 0  # loss keeps the first steps: the warm-up is speed's
    assert "drop_pct" not in series["dense"] and series["moe"]["drop_pct"].lows.max() == 3.5
    val = series["moe"]["val_bpb"]
    assert val.batch_tokens == 1024 and list(val.steps) == [0, 20, 40, 60, 80, 100]
    assert plots.plot_context(d, None) == d.name
    # a long run: per pixel column, the least and greatest step and the mean of the rolling mean
    x = np.arange(1000.0)
    y = 100 + (x % 7)
    long = plots.decimate(x, y, 10, plots.rolling_mean(y, 7))
    assert long.decimated and len(long.steps) == len(long.smooth) == 10
    assert (
        list(long.lows) == [100.0] * 10
        and list(long.highs) == [106.0] * 10
        and abs(long.smooth[5] - 103) < 0.01
    )

    (d / "plan.json").write_text(
        json.dumps(
            {"experiment": "cpu-smoke", "legs": [], "git": {"commit": "0123456789abcdef", "dirty": True}}
        )
    )
    assert (
        plots.plot_context(d, Plan.read(d))
        == f"cpu-smoke · {d.name} · commit 0123456789 + uncommitted changes"
    )


@pytest.mark.slow
def test_the_shaded_tail_window_is_the_steps_the_tail_means_average(tmp_path):
    """A run shorter than the tail window: its tail means average every step line but step 0 (the
    warm-up steps with them), and its shaded window spans exactly those, from step 1; a long
    run's spans its last 50 step lines."""
    from cockpit import logs

    d = tmp_path / "20261130_101010_cpu-smoke"
    d.mkdir()
    (d / "short.log").write_text(_trainer_log(30, 1000.0, 0.0, moe=False))
    (d / "long.log").write_text(_trainer_log(120, 1000.0, 0.0, moe=False))
    with open(os.devnull, "wb") as sink:
        series = step_files.stream_steps([(r.run, r.path) for r in report.rows(d, now=NOW)], sink)
    for run, first, last in (("short", 1, 29), ("long", 70, 119)):
        assert logs.summarize(d / f"{run}.log").tail_n == last - first + 1
        for attr in plots.SMOOTHED:
            assert (series[run][attr].tail_from, series[run][attr].tail_to) == (first, last), (run, attr)
    assert (
        series["short"]["tok_per_sec"].steps[0] == plots.WARMUP_STEPS
    )  # drawn without the warm-up, shaded with it
    svg = plots.draw_plots({"short": series["short"]}, formats=("svg",))["tok_per_sec"]["svg"].decode()
    assert "tail window (last 50 steps, step 0 left out)" in svg


def test_repeats_rows_per_repeat_an_aggregate_and_a_verdict_from_their_spread(tmp_path):
    """A leg run three times: a row per repeat, then the leg's aggregate row (mean ± std); its delta
    against the baseline takes its interval from the spread between the repeats, not the steps."""
    d = tmp_path / "20261130_101010_cpu-smoke"
    d.mkdir()
    (d / "dense.log").write_text(_trainer_log(80, 1000.0, 0.5, moe=False))
    for i, tok in enumerate((1180.0, 1220.0, 1200.0)):
        (d / f"moe.r{i}.log").write_text(_trainer_log(80, tok, 0.5, moe=True))
    rows = report.rows(d, now=NOW)
    assert [r.run for r in rows] == ["dense", "moe.r0", "moe.r1", "moe.r2", "moe"]
    agg = rows[-1]
    assert (
        agg.is_aggregate
        and abs(agg.figures.tok_per_sec - sum(r.figures.tok_per_sec for r in rows[1:4]) / 3) < 1e-6
    )
    sd = stats.across([r.figures.tok_per_sec for r in rows[1:4]]).std
    assert report.fmt_cell(agg, "tok_per_sec") == f"{agg.figures.tok_per_sec:.2f} ± {sd:.2f}"
    text = report_md.render_report(d, baseline="dense", now=NOW)
    assert f"| moe | {agg.figures.tok_per_sec:.2f} ± {sd:.2f} |" in text
    assert "### moe (3 repeats: interval from their windows and the spread between them)" in text
    assert "### moe.r0" not in text
    delta = next(x for x in report.delta_rows(rows[0], agg) if x.attr == "tok_per_sec")
    one = next(x for x in report.delta_rows(rows[0], rows[1]) if x.attr == "tok_per_sec")
    assert (
        delta.verdict == "significant" and delta.ci_pct > one.ci_pct
    )  # 3 samples: a wider interval than 50 steps
    assert (
        f"| tail50 tok/sec | {rows[0].figures.tok_per_sec:.2f} | {agg.figures.tok_per_sec:.2f} | {stats.fmt_pct(delta.delta_pct)} | "
        f"{stats.fmt_ci(delta.ci_pct)} (n=3 repeats) | significant |" in text
    )
    spread = agg.estimate("tok_per_sec").spread
    assert (
        f"`moe`: n=3 repeats; between-repeat sd of tail50 tok/sec {100 * spread.between / agg.figures.tok_per_sec:.2f}% "
        f"of the mean (95% upper bound {100 * spread.between_hi / agg.figures.tok_per_sec:.2f}%: 3 repeats know it poorly)"
        in text
    )


def test_two_repeats_that_agree_give_an_interval_from_their_windows_and_say_how_to_resolve(tmp_path):
    """2 repeats whose means differ by what their tail windows' noise explains: the interval rests
    on the windows (not ±100%+ from t with 1 degree of freedom on 2 means), says `n=2 repeats`,
    and a `within noise` verdict says how many repeats would resolve it."""
    d = tmp_path / "20261130_101010_cpu-smoke"
    d.mkdir()
    (d / "dense.log").write_text(_trainer_log(80, 1000.0, 0.5, moe=False))
    for i, tok in enumerate((1006.0, 998.0)):
        (d / f"moe.r{i}.log").write_text(_trainer_log(80, tok, 0.5, moe=True))
    rows = report.rows(d, now=NOW)
    agg = rows[-1]
    tok = next(x for x in report.delta_rows(rows[0], agg) if x.attr == "tok_per_sec")
    naive = stats.across(
        [r.figures.tok_per_sec for r in rows[1:3]]
    )  # the 2 means alone: t with 1 degree of freedom
    assert 3 * agg.estimate("tok_per_sec").half_width < naive.half_width
    assert tok.verdict == "within noise" and tok.ci_pct < 2.0
    assert tok.runs == (1, 2) and tok.ci_text == f"{stats.fmt_ci(tok.ci_pct)} (n=2 repeats)"
    text = report_md.render_report(d, baseline="dense", now=NOW)
    assert (
        f"| tail50 tok/sec | {rows[0].figures.tok_per_sec:.2f} | {agg.figures.tok_per_sec:.2f} | {stats.fmt_pct(tok.delta_pct)} | "
        f"{tok.ci_text} | within noise |" in text
    )
    r = tok.resolve
    assert r.at_least and r.repeats > 2  # the baseline ran once: its run-to-run spread is not known
    assert (
        f"To resolve `within noise` if the difference is real (80% power): tail50 tok/sec "
        f"({stats.fmt_pct(tok.delta_pct)}): at least {r.repeats} repeats of each leg ({r.repeats - 2} more)."
    ) in text
