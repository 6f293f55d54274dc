"""Live metrics of the running legs: progress, last step's figures, tail-N means so far, ETA,
the delta against the experiment's baseline so far, and sparklines of tok/sec and loss."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import DataTable

from cockpit.tui import fmt
from cockpit.tui.state import LiveView

COLUMNS = ("leg", "step", "%", "loss", "dt (ms)", "tok/sec", "mfu", "tail tok/sec", "eta", "Δ base", "tok/sec", "loss")


class LiveTable(DataTable):
    def __init__(self, **kwargs) -> None:
        super().__init__(cursor_type="row", zebra_stripes=True, **kwargs)
        self._rows: tuple | None = None

    def on_mount(self) -> None:
        for c in COLUMNS:
            self.add_column(c)

    def show(self, live: tuple[LiveView, ...], tail: int) -> None:
        rows = tuple(self.row(v) for v in live)
        if rows == self._rows:
            return
        self._rows = rows
        self.clear()
        for v, row in zip(live, rows, strict=True):
            self.add_row(*row, key=v.key)
        if not live:
            self.add_row(Text("no leg running", style="dim"), *[""] * (len(COLUMNS) - 1))
        self.border_subtitle = f"tail = last {tail} steps"

    @staticmethod
    def row(v: LiveView) -> tuple:
        step = "-" if v.step is None else f"{v.step}/{v.total if v.total is not None else '?'}"
        d = v.delta_tok_pct
        dstyle = "" if d is None else ("green" if d >= 0 else "red")
        return (
            Text(v.leg, style="bold cyan"),
            step,
            fmt.pct(v.pct, 1),
            fmt.num(v.loss, 4),
            fmt.num(v.dt_ms, 1),
            fmt.num(v.tok_per_sec, 0, comma=True),
            fmt.num(v.mfu, 2),
            fmt.num(v.tail_tok_per_sec, 0, comma=True) + (f" (n={v.tail_n})" if v.tail_n else ""),
            fmt.minutes(v.eta_min),
            Text(fmt.delta(d), style=dstyle),
            Text(fmt.spark(v.tok_hist, 16), style="green"),
            Text(fmt.spark(v.loss_hist, 16), style="yellow"),
        )
