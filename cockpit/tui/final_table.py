"""Final metrics of the selected experiment dir, as its report has them: the metric table and the
quality and routing table side by side (`cockpit report`'s columns), a row per run (a repeat, the
aggregate of a leg's repeats, the baseline from another dir: each named so), under each figure its
delta against the dir's baseline (`baseline.choose`: named when it is not the dir's own) with its
95% interval, then the verdict as a word, then what the interval rests on when repeats are in it
(`(n=2 repeats)`). Only a significant delta is coloured, green better and red worse; one within
noise is dim, and one without an interval (no per-step samples) has no colour. What the deltas
are against, what differs between the two launches (or why the pinned baseline has no figures,
and the command that compares with another run), and the report's notes (short tails, troubles,
why a delta is `-`, the repeats that would resolve a `within noise` verdict) are whole lines
around the table, wrapped."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import VerticalScroll
from textual.geometry import Region
from textual.reactive import var
from textual.widgets import DataTable, Static

from cockpit.report import fmt_value, headers, quality_headers
from cockpit.stats import fmt_ci, fmt_pct
from cockpit.tui.state import ReportView, RowView
from cockpit.vocab import DEFAULT_TAIL, HIGHER_IS_BETTER, METRICS, QUALITY, Mark, RunStatus, Verdict

FIGURES = (*METRICS, *QUALITY)  # the report's two tables, side by side
# Which way is better for the quality figures that have a delta: less bpb, loss and dropping.
BETTER = {
    **HIGHER_IS_BETTER,
    "min_val_bpb": False,
    "last_val_bpb": False,
    "final_loss": False,
    "drop_pct": False,
}


def columns(tail: int) -> tuple[str, ...]:
    return ("run", "status", *headers(tail), *quality_headers(tail))


def delta_text(metric: str, d: float | None, ci: float | None = None, verdict: str | None = None) -> Text:
    """`+2.70% ±2.68%`: green or red only when significant (better or worse), dim within noise,
    no colour without an interval (no per-step samples: peak memory, total time)."""
    style = ""
    if d is not None and verdict == Verdict.SIGNIFICANT:
        style = "green" if (d >= 0) == BETTER.get(metric, True) else "red"
    elif verdict == Verdict.WITHIN_NOISE:
        style = "dim"
    return Text(fmt_pct(d) + (f" {fmt_ci(ci)}" if ci is not None else ""), style=style)


def verdict_text(metric: str, d: float | None, verdict: str | None) -> Text:
    """The verdict as a word, as the report writes it: `significant` (in the delta's colour),
    `within noise`, or `-` when the delta has no interval."""
    if verdict == Verdict.SIGNIFICANT and d is not None:
        return Text(verdict, style="bold " + ("green" if (d >= 0) == BETTER.get(metric, True) else "red"))
    return Text(verdict or Verdict.NONE, style="dim")


def figure_text(r: RowView, metric: str) -> str:
    """A figure, `mean ± std` for a leg's aggregate over its repeats."""
    text = fmt_value(metric, r.figures.value(metric))
    return text + (f" ± {fmt_value(metric, r.spread[metric])}" if metric in r.spread else "")


class FinalTable(DataTable):
    """One row per run; with a baseline, each figure has its signed delta on a second line, the
    verdict on a third, and what its interval rests on on a fourth when repeats are in it."""

    def __init__(self, **kwargs) -> None:
        super().__init__(cursor_type="row", zebra_stripes=True, **kwargs)

    def show(self, report: ReportView | None) -> None:
        heads = columns(report.tail if report else DEFAULT_TAIL)
        blank = [Text("") for _ in heads[1:]]
        rows: list[list[Text]] = []
        if report is None:
            rows.append([Text("select an experiment or a dir", style="dim"), *blank])
        else:
            with_deltas = any(r.deltas for r in report.rows)
            for r in report.rows:
                name = Text(r.name, style="italic bold" if r.label else "bold")
                if r.sub:
                    name.append(f"\n{r.sub}", style="italic dim")
                cells = [name, Text(r.status, style=status_style(r.status))]
                for m in FIGURES:
                    cell = Text(figure_text(r, m))
                    if with_deltas and m in r.deltas:
                        cell.append("\n")
                        cell.append_text(delta_text(m, r.deltas[m], r.cis.get(m), r.verdicts.get(m)))
                        cell.append("\n")
                        cell.append_text(verdict_text(m, r.deltas[m], r.verdicts.get(m)))
                        if m in r.bases:
                            cell.append(f"\n({r.bases[m]})", style="dim")
                    cells.append(cell)
                rows.append(cells)
            if not report.rows:
                rows.append([Text(report.note or "no logs in this dir yet", style="dim"), *blank])
        # Fixed widths from the content: a table rebuilt before its first layout renders the same.
        widths = [len(h) for h in heads]
        for cells in rows:
            for i, c in enumerate(cells):
                widths[i] = max(widths[i], *(len(line) for line in c.plain.split("\n")))
        self.clear(columns=True)
        for h, w in zip(heads, widths, strict=True):
            self.add_column(h, width=w)
        for cells in rows:
            self.add_row(*cells, height=max(c.plain.count("\n") + 1 for c in cells))


class FinalPane(VerticalScroll, can_focus=False):
    """The final table with what the report says around it: above, what the deltas are against
    (and what differs when the baseline ran in another launch); below, the report's notes. Each
    line whole, wrapped to the pane; the table scrolls sideways, the pane up and down."""

    ALLOW_MAXIMIZE = True
    report: var[ReportView | None] = var(None)

    def compose(self) -> ComposeResult:
        yield Static(id="final-head")
        yield FinalTable(id="final-table")
        yield Static(id="final-notes")

    def watch_report(self, report: ReportView | None) -> None:
        head, notes = self.query_one("#final-head", Static), self.query_one("#final-notes", Static)
        self.border_title = f"Final metrics: {report.title}" if report else "Final metrics"
        self.border_subtitle = (
            "colour: significant only, green better, red worse; within noise dim"
            if report is not None and report.baseline_label
            else ""
        )
        text = Text()
        if report is not None:
            text.append(report.head or "", style="dim")
            for w in report.warnings:  # what differs in the baseline's launch, or why it has no figures
                text.append(f"\n{w}" if text.plain else w, style="yellow")
        head.update(text)
        head.display = bool(text.plain)
        lines = Text("\n".join(report.notes) if report is not None else "", style="dim")
        notes.update(lines)
        notes.display = bool(lines.plain)
        self.query_one(FinalTable).show(report)

    def cursor_region(self) -> Region | None:
        """Where the table's cursor row is, in the pane's scrolled content."""
        table = self.query_one(FinalTable)
        heights = [row.height for row in table.rows.values()]
        if not 0 <= table.cursor_row < len(heights):
            return None
        y = table.virtual_region.y + table.header_height + sum(heights[: table.cursor_row])
        return Region(0, y, 1, heights[table.cursor_row])

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        """The row under the cursor is in view: the table is as tall as its rows, the pane scrolls."""
        if event.data_table.has_focus and (region := self.cursor_region()) is not None:
            self.scroll_to_region(region, animate=False)

    def top(self) -> None:
        """Back to the top when the cursor row shows from there: focusing the table (or maximizing
        the pane) scrolls the table whole into view, which hides the lines above it."""
        region = self.cursor_region()
        if region is not None and region.bottom <= self.scrollable_content_region.height:
            self.scroll_home(animate=False)

    def on_descendant_focus(self) -> None:
        self.call_after_refresh(self.top)

    def on_resize(self) -> None:
        if self.query_one(FinalTable).has_focus:
            self.call_after_refresh(self.top)


def status_style(status: str) -> str:
    return {
        RunStatus.COMPLETED: "green",
        Mark.DONE: "green",
        Mark.RECORDED: "green",
        Mark.RUNNING: "cyan",
        Mark.FAILED: "bold red",
    }.get(status, "yellow")
