"""Live metrics of the running legs: progress as the log's last step line says it (`42/280`,
`15.00%`), last step's figures (routing too: drop % and the balance loss), tail-N means so far
(`(23 of 50)` while they rest on fewer steps than the window), the ETA as h:mm:ss (the words of
`cockpit status`: logs.progress), the delta against the baseline of the leg's dir so far (its 95%
interval, with what it rests on when repeats are in it, and verdict once the tail window is full,
or the run has all the steps it will have; only a significant delta is coloured; a `within noise`
verdict says how many repeats would resolve it; the baseline named, or why it has no figures), and
sparklines of tok/sec and loss."""

from __future__ import annotations

from rich.text import Text
from textual.coordinate import Coordinate
from textual.reactive import var
from textual.widgets import DataTable

from cockpit.logs import progress
from cockpit.stats import fmt_ci, fmt_pct
from cockpit.tui import fmt
from cockpit.tui.state import LiveView
from cockpit.vocab import DEFAULT_TAIL, Verdict

SPARK_WIDTH = 16
# the delta and its verdict right after the tail mean they judge; routing (MoE legs) after them
COLUMNS = (
    "leg",
    "step",
    "%",
    "loss",
    "dt (ms)",
    "tok/sec",
    "mfu",
    "tail tok/sec",
    "eta",
    "Δ base",
    "verdict",
    "drop %",
    "bal",
    "baseline",
    "tok/sec",
    "loss",
)


class LiveTable(DataTable):
    """A row per running leg, keyed by `exp_dir/leg`; only the cells that changed are rewritten."""

    live: var[tuple[LiveView, ...]] = var(())
    tail: var[int] = var(DEFAULT_TAIL)  # the tail window the means are over (the subtitle says it)

    def __init__(self, **kwargs) -> None:
        super().__init__(cursor_type="row", zebra_stripes=True, **kwargs)

    def on_mount(self) -> None:
        for i, c in enumerate(COLUMNS):
            # the sparklines get their full width up front: they fill as the steps come in
            self.add_column(c, width=SPARK_WIDTH if i >= len(COLUMNS) - 2 else None)

    def watch_tail(self, tail: int) -> None:
        self.border_subtitle = (
            f"tail = last {tail} steps; Δ base = tail tok/sec vs the baseline of the leg's dir, "
            f"±95% interval and verdict once {tail} steps are in (a shorter run: all of it); "
            "coloured only when significant"
        )

    def watch_live(self, old: tuple[LiveView, ...], live: tuple[LiveView, ...]) -> None:
        self.border_title = "Live metrics" if live else "Live metrics: no leg running"
        self.set_class(not live, "-empty")  # a short terminal gives its rows to the logs meanwhile
        if live and [v.key for v in old] == [v.key for v in live] and self.row_count == len(live):
            for r, (was, now) in enumerate(zip(old, live, strict=True)):  # the same legs: changed cells only
                if was == now:
                    continue
                for c, (a, b) in enumerate(
                    zip(self.row(now, self.tail), self.row(was, self.tail), strict=True)
                ):
                    if a != b:
                        self.update_cell_at(Coordinate(r, c), a, update_width=True)
            return
        self.clear()
        for v in live:
            self.add_row(*self.row(v, self.tail), key=v.key)

    @staticmethod
    def row(v: LiveView, tail: int = DEFAULT_TAIL) -> tuple:
        d = v.delta_tok_pct
        # only a significant delta is coloured (green faster, red slower); within noise dim; a delta
        # without its verdict yet (the tail window filling) has no colour
        dstyle = ("green" if d is not None and d >= 0 else "red") if v.verdict == Verdict.SIGNIFICANT else ""
        if v.verdict == Verdict.WITHIN_NOISE:
            dstyle = "dim"
        delta = fmt_pct(d) + (f" {fmt_ci(v.delta_ci_pct)}" if v.delta_ci_pct is not None else "")
        delta += f" ({v.delta_basis})" if v.delta_basis else ""
        verdict = (v.verdict or "-") + (f"; to resolve: {v.resolve}" if v.resolve else "")
        return (
            Text(v.leg, style="bold cyan"),
            progress.step_text(v.step, v.total),
            progress.pct_text(v.pct),
            fmt.num(v.figures.final_loss, 4),
            fmt.num(v.figures.dt_ms, 1),
            fmt.num(v.figures.tok_per_sec, 0, comma=True),
            fmt.num(v.figures.mfu, 2),
            fmt.num(v.tail_tok_per_sec, 0, comma=True)
            + (f" ({v.tail_n} of {tail})" if progress.short_tail(v.tail_n, tail) else ""),
            progress.eta_text(v.eta_min),
            Text(delta, style=dstyle),
            Text(verdict, style=f"bold {dstyle}" if v.verdict == Verdict.SIGNIFICANT else "dim"),
            fmt.num(v.figures.drop_pct, 2),
            fmt.num(v.figures.bal, 4),
            Text(v.baseline_problem, style="yellow")
            if v.baseline_problem
            else Text(v.baseline_label or "-", style="italic"),
            Text(fmt.spark(v.tok_hist, SPARK_WIDTH), style="green"),
            Text(fmt.spark(v.loss_hist, SPARK_WIDTH), style="yellow"),
        )
