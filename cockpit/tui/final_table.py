"""Final metrics of the selected experiment dir: the report's table (`cockpit report`'s columns)
with the delta of each run against the experiment's baseline."""

from __future__ import annotations

from rich.text import Text
from textual.reactive import var
from textual.widgets import DataTable

from cockpit.report import fmt_value
from cockpit.stats import fmt_pct
from cockpit.tui.state import ReportView
from cockpit.vocab import HIGHER_IS_BETTER, METRICS, Mark, RunStatus


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


def delta_text(metric: str, d: float | None) -> Text:
    good = d is not None and ((d >= 0) == HIGHER_IS_BETTER[metric])
    return Text(fmt_pct(d), style="dim" if d is None or d == 0 else ("green" if good else "red"))


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
        if report is None:
            self.border_title, self.border_subtitle = "Final metrics", ""
            rows.append(([Text("select an experiment or a dir", style="dim"), *blank], 1))
        else:
            self.border_title = f"Final metrics: {report.title}"
            self.border_subtitle = f"second line: Δ vs baseline {report.baseline}" if report.baseline else "no baseline"
            names = {r.run for r in report.rows}
            if report.baseline and report.baseline_figures and report.baseline not in names:
                rows.append(([Text(report.baseline, style="italic"), Text("baseline", style="italic"),
                              *(Text(fmt_value(m, report.baseline_figures.get(m))) for m in METRICS)], 1))
            with_deltas = any(r.deltas for r in report.rows)
            for r in report.rows:
                is_base = r.run == report.baseline or bool(report.baseline and report.baseline.endswith("/" + r.run))
                status = Text(r.status, style=status_style(r.status))
                if is_base:
                    status.append("\nbaseline" if with_deltas else " (baseline)", style="italic")
                cells: list = [Text(r.run, style="bold"), status]
                for m in METRICS:
                    cell = Text(fmt_value(m, r.figures.get(m)))
                    if with_deltas:
                        cell.append("\n")
                        cell.append_text(delta_text(m, r.deltas.get(m)))
                    cells.append(cell)
                rows.append((cells, 2 if with_deltas else 1))
            if not report.rows:
                rows.append(([Text(report.note or "no logs in this dir yet", style="dim"), *blank], 1))
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


def status_style(status: str) -> str:
    return {RunStatus.COMPLETED: "green", Mark.DONE: "green", Mark.RECORDED: "green", Mark.RUNNING: "cyan",
            Mark.FAILED: "bold red"}.get(status, "yellow")
