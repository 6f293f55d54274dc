"""`Figures`, the one shape of a run's figures: a field per metric name, held by the registry's
recorded figures, a report's row and the app's rows; and the one default tail window."""

from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path

import pytest

from cockpit import registry as reg
from cockpit import report, schema
from cockpit.figures import Figures
from cockpit.logs.summary import LegSummary
from cockpit.tui import state as vm
from cockpit.vocab import DEFAULT_TAIL, METRICS, QUALITY

REPO = Path(__file__).resolve().parents[1]


def test_a_field_per_metric_name_in_vocabs_order():
    assert [f.name for f in dataclasses.fields(Figures)] == [*METRICS, *QUALITY]
    f = Figures(tok_per_sec=1.5, bal=1.01)
    assert f.value("tok_per_sec") == 1.5 and f.value("dt_ms") is None
    assert f.items()[0] == ("tok_per_sec", 1.5) and f.items()[-1] == ("bal", 1.01)
    with pytest.raises(dataclasses.FrozenInstanceError):
        f.mfu = 3.0  # type: ignore[misc]


def test_has_metrics_counts_the_metric_table_only():
    assert not Figures().has_metrics
    assert not Figures(min_val_bpb=1.2, bal=1.0).has_metrics  # quality and routing alone
    assert Figures(peak_mem_mib=10.0).has_metrics


def test_mean_takes_each_figure_over_those_that_have_it_finite():
    m = Figures.mean(
        [
            Figures(tok_per_sec=1.0, mfu=2.0),
            Figures(tok_per_sec=3.0, mfu=math.nan),
            Figures(tok_per_sec=5.0, final_loss=4.0),
        ]
    )
    assert m == Figures(tok_per_sec=3.0, mfu=2.0, final_loss=4.0)
    assert Figures.mean([]) == Figures()


def test_the_registry_records_the_metrics_as_keys_of_its_table():
    assert list(schema.keys_of(reg.Recorded)) == [*METRICS, "dir", "source"]
    rec = reg.Recorded(figures=Figures(tok_per_sec=9.0, total_time_min=3.0), dir="/runs/a", source="seed")
    table = rec.as_table()  # what a launch pins in plan.json: the registry's keys, flat
    assert list(table) == [*METRICS, "dir", "source"] and table["tok_per_sec"] == 9.0 and table["mfu"] is None
    assert reg.Recorded.of(table) == rec
    assert reg.Recorded.of({"tok_per_sec": 1.0, "final_loss": 2.0, "junk": 3}).figures == Figures(
        tok_per_sec=1.0
    )


def test_a_registrys_recorded_table_reads_into_figures(tmp_path):
    path = tmp_path / "experiments.toml"
    path.write_text(
        f'[project]\nexp_root = "{tmp_path / "runs"}"\n[[experiment]]\nid = "e"\n'
        '[[experiment.leg]]\nname = "l"\nnproc_per_node = 1\n'
        '[experiment.leg.recorded]\ntok_per_sec = 100\nmfu = 9.5\nsource = "a report"\n'
    )
    rec = reg.load(path).experiment("e").legs[0].recorded
    assert rec == reg.Recorded(figures=Figures(tok_per_sec=100.0, mfu=9.5), source="a report")
    assert report.row_from_recorded("l", rec).figures is rec.figures


def test_a_summarys_figures_are_a_reports():
    s = LegSummary(
        path="x.log",
        run="x",
        tok_per_sec=5.0,
        last_loss=2.5,
        drop_pct=9.0,
        tail_drop_pct=1.0,
        bal=2.0,
        tail_bal=1.1,
        min_val_bpb=0.9,
    )
    assert s.figures == Figures(tok_per_sec=5.0, final_loss=2.5, drop_pct=1.0, bal=1.1, min_val_bpb=0.9)
    assert report.row_from_summary(s).figures == s.figures


@pytest.mark.parametrize("cls", [reg.Recorded, report.ReportRow, vm.LiveView, vm.RowView, vm.LegView])
def test_whatever_holds_figures_holds_a_figures_and_no_copy_of_its_fields(cls):
    fields = {f.name: f for f in dataclasses.fields(cls)}
    assert fields["figures"].type in ("Figures", Figures)
    assert not set(fields) & {f.name for f in dataclasses.fields(Figures)}


def test_an_aggregate_rows_figures_are_the_mean_of_its_repeats():
    rows = [
        report.ReportRow("a.r0", Figures(tok_per_sec=2.0, drop_pct=1.0)),
        report.ReportRow("a.r1", Figures(tok_per_sec=4.0, peak_mem_mib=8.0)),
    ]
    agg = report.aggregate("a", rows)
    assert agg.figures == Figures(tok_per_sec=3.0, peak_mem_mib=8.0, drop_pct=1.0) and agg.has_figures


def test_the_tail_window_has_one_default():
    said = [
        (p.relative_to(REPO), n)
        for p in sorted((REPO / "cockpit").rglob("*.py"))
        for n, line in enumerate(p.read_text().splitlines(), 1)
        if re.search(r"\bDEFAULT_TAIL\s*=|\btail\b[^=\n]*(=|\belse)\s*50\b|var\(50\)", line)
    ]
    assert said == [(Path("cockpit/vocab.py"), said[0][1])] and DEFAULT_TAIL == 50
    tail = next(f for f in dataclasses.fields(reg.Settings) if f.name == "tail")
    assert tail.default == DEFAULT_TAIL  # the registry's, when it says none
