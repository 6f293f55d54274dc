"""Final metrics of the selected experiment dir: the report's table (`cockpit report`'s columns)
with the delta of each run against the dir's baseline (`baseline.choose`: named when it is not
the dir's own), its 95% interval, and its verdict in the colour: green or red when significant
(better or worse), dim when within noise. A leg run with repeats shows `mean ± std`."""

from __future__ import annotations

from rich.text import Text
from textual.reactive import var
from textual.widgets import DataTable

from cockpit.report import fmt_value
from cockpit.stats import fmt_ci, fmt_pct
from cockpit.tui.state import ReportView, RowView
from cockpit.vocab import HIGHER_IS_BETTER, METRICS, Mark, RunStatus, Verdict


def columns(tail: int) -> tuple[str, ...]:
    return (
        "run",
        "status",
        f"tail{tail} tok/sec",
        f"tail{tail} dt (ms)",
        f"tail{tail} mfu",
        "peak mem (MiB)",
        "total time (min)",
    )


def delta_text(metric: str, d: float | None, ci: float | None = None, verdict: str | None = None) -> Text:
    """`+2.70% ±2.68%`: green or red when significant (better or worse), dim within noise; a delta
    without an interval (no per-step samples) is coloured by its sign alone."""
    good = d is not None and ((d >= 0) == HIGHER_IS_BETTER[metric])
    style = "dim" if d is None or d == 0 or verdict == Verdict.WITHIN_NOISE else ("green" if good else "red")
    return Text(fmt_pct(d) + (f" {fmt_ci(ci)}" if ci is not None else ""), style=style)


def figure_text(r: RowView, metric: str) -> str:
    """A figure, `mean ± std` for a leg's aggregate over its repeats."""
    text = fmt_value(metric, r.figures.get(metric))
    return text + (f" ± {fmt_value(metric, r.spread[metric])}" if metric in r.spread else "")


class FinalTable(DataTable):
    """One row per run; with a baseline, each figure has its signed delta on a second line."""

    report: var[ReportView | None] = var(None)

    def __init__(self, **kwargs) -> None:
        super().__init__(cursor_type="row", zebra_stripes=True, **kwargs)

    def watch_report(self, report: ReportView | None) -> None:
        tail = report.tail if report else 50
        heads = columns(tail)
        blank = [""] * (len(heads) - 1)
        rows: list[tuple[list, int]] = []  # (cells, height)
        notes: list[list] = []  # rows of one long line (warnings): cropped to the table, not widening it
        if report is None:
            self.border_title, self.border_subtitle = "Final metrics", ""
            rows.append(([Text("select an experiment or a dir", style="dim"), *blank], 1))
        else:
            self.border_title = f"Final metrics: {report.title}"
            if report.baseline_label:
                self.border_subtitle = (f"second line: Δ vs {report.baseline_label} ±95%; "
                                        "green/red significant, dim within noise")
            else:
                self.border_subtitle = f"no figures of baseline {report.baseline} yet" if report.baseline else "no baseline"
            if report.baseline_figures:  # a baseline from elsewhere: its figures, said where from
                name = report.baseline.rpartition("/")[2] if report.baseline else "baseline"
                rows.append(([Text(name, style="italic"), Text(report.baseline_source or "baseline", style="italic"),
                              *(Text(fmt_value(m, report.baseline_figures.get(m))) for m in METRICS)], 1))
            with_deltas = any(r.deltas for r in report.rows)
            for r in report.rows:
                is_base = r.baseline
                status = Text(r.status, style=status_style(r.status))
                if is_base:
                    status.append("\nbaseline" if with_deltas else " (baseline)", style="italic")
                cells: list = [Text(r.run, style="bold"), status]
                for m in METRICS:
                    cell = Text(figure_text(r, m))
                    if with_deltas:
                        cell.append("\n")
                        cell.append_text(delta_text(m, r.deltas.get(m), r.cis.get(m), r.verdicts.get(m)))
                    cells.append(cell)
                rows.append((cells, 2 if with_deltas else 1))
            if not report.rows:
                rows.append(([Text(report.note or "no logs in this dir yet", style="dim"), *blank], 1))
            for w in report.warnings:  # the baseline ran in another launch: what differs
                notes.append([Text(w, style="yellow"), *blank])
        # Fixed widths from the content: a table rebuilt before its first layout renders the same.
        widths = [len(h) for h in heads]
        for cells, _ in rows:
            for i, c in enumerate(cells):
                text = c.plain if isinstance(c, Text) else str(c)
                widths[i] = max(widths[i], *(len(line) for line in text.split("\n")))
        self.clear(columns=True)
        for h, w in zip(heads, widths, strict=True):
            self.add_column(h, width=w)
        for cells, height in rows:
            self.add_row(*cells, height=height)
        for cells in notes:
            self.add_row(*cells, height=1)


def status_style(status: str) -> str:
    return {RunStatus.COMPLETED: "green", Mark.DONE: "green", Mark.RECORDED: "green", Mark.RUNNING: "cyan",
            Mark.FAILED: "bold red"}.get(status, "yellow")
