"""The GPU panel: a row per GPU (utilization and memory bars, temperature, power, the leg owning
its processes with the GPU memory they hold) and, as nvitop draws them, the history of
utilization, memory, temperature and power as sparklines; without NVML, the reason and the
host's CPU and RAM instead. Below, the nodes each running Slurm leg holds: NVML sees only this
machine's GPUs.

The sparklines share what width the panel has beyond its fixed columns: a maximized panel (`m`)
shows more of the history. A terminal too narrow for the fixed columns scrolls the panel
sideways, so every column stays reachable.
"""

from __future__ import annotations

from rich.text import Text
from textual.containers import ScrollableContainer
from textual.reactive import reactive
from textual.widgets import Static

from cockpit.tui import fmt
from cockpit.tui.state import GpuRow, GpuView

TEMP_SCALE_C = (20.0, 100.0)  # the temperature history's scale: room temperature to where GPUs throttle
SPARK_MIN, SPARK_MAX = 8, 120  # each history's width, in samples (one a second)
HISTORIES = (  # (header, GpuRow field, style): the history columns, left to right
    ("util", "util_hist", "cyan"),
    ("mem", "mem_hist", "magenta"),
    ("temp", "temp_hist", "yellow"),
    ("power", "power_hist", "red"),
)


class GpuBox(ScrollableContainer):
    """The panel's frame: it scrolls the panel both ways, and `m` maximizes it."""

    ALLOW_MAXIMIZE = True

    def on_resize(self) -> None:
        # the sparklines' width follows the frame's
        for panel in self.query(GpuPanel):
            panel.refresh(layout=True)


def procs_text(g: GpuRow) -> str:
    """`leg 18.5G` (the owning leg and its processes' GPU memory), `+2 other` processes, `-`, or
    `n/a (why)` when NVML could not list the processes."""
    if g.procs_error:
        return f"n/a ({g.procs_error})"
    parts = []
    if g.leg:
        mem = g.leg_mem_mib
        parts.append(g.leg + (f" {fmt.mib(mem)}" if mem is not None else ""))
    others = [p for p in g.procs if p.leg is None]
    if others:
        mems = [p.mem_mib for p in others if p.mem_mib is not None]
        parts.append(f"+{len(others)} other" + (f" {fmt.mib(sum(mems))}" if mems else ""))
    return ", ".join(parts) or "-"


class GpuPanel(Static):
    gpu: reactive[GpuView | None] = reactive(None)

    def watch_gpu(self, old: GpuView | None, new: GpuView | None) -> None:
        # A relayout of the screen only when the panel's height changes (GPUs appear or go).
        if _lines(old) != _lines(new):
            self.refresh(layout=True)

    def frame_width(self) -> int:
        """The width the panel may fill without scrolling: its frame's."""
        parent = self.parent
        width = parent.scrollable_content_region.width if isinstance(parent, GpuBox) else self.size.width
        return max(0, width - 2)  # the panel's own padding

    def render(self) -> Text:
        gpu = self.gpu
        if gpu is None:
            return Text("sampling GPUs...", style="dim")
        out = self._local(gpu)
        for line in gpu.slurm:
            out.append("\non Slurm ", style="bold")
            out.append(line, style="cyan")
            out.append("  (its nodes' GPUs: NVML sees this machine only)", style="dim")
        return out

    def _local(self, gpu: GpuView) -> Text:
        if gpu.available and gpu.gpus:
            return self.render_gpus(gpu.gpus)
        return self.render_host(gpu)

    def render_gpus(self, rows: tuple[GpuRow, ...]) -> Text:
        # One fixed-width line per GPU under a header line; the history columns take what is left.
        procs = [procs_text(g) for g in rows]
        proc_w = max(9, *(len(p) for p in procs))
        fixed = 51 + proc_w  # index 3, util 14, memory 20, temp 6, power 8, processes
        spark_w = max(SPARK_MIN, min(SPARK_MAX, (self.frame_width() - fixed) // len(HISTORIES) - 2))
        out = Text(no_wrap=True, overflow="crop")
        out.append(
            f"{'#':>2} {'util':<14}{'memory':<20}{'temp':>6}{'power':>6}  {'processes':<{proc_w}}",
            style="dim",
        )
        for head, _, _ in HISTORIES:
            out.append(f"  {head:<{spark_w}}", style="dim")
        for g, proc in zip(rows, procs, strict=True):
            mem_pct = (
                100.0 * g.mem_used_mib / g.mem_total_mib
                if g.mem_used_mib is not None and g.mem_total_mib
                else None
            )
            busy = (g.util_pct or 0) > 5 or (mem_pct or 0) > 5
            out.append("\n")
            out.append(f"{g.index:>2} ", style="bold")
            out.append(fmt.bar(g.util_pct, 8), style="green" if busy else "dim")
            out.append(f" {fmt.pct(g.util_pct, 0):>4} ")
            out.append(fmt.bar(mem_pct, 6), style="magenta" if busy else "dim")
            out.append(f" {fmt.mib(g.mem_used_mib) + '/' + fmt.mib(g.mem_total_mib):>13}")
            out.append(f" {'-' if g.temp_c is None else f'{g.temp_c:.0f}°C':>5}")
            out.append(f" {'-' if g.power_w is None else f'{g.power_w:.0f}W':>5}  ")
            out.append(proc.ljust(proc_w), style="bold cyan" if g.leg else "dim")
            # fixed scales (a flat line then reads as its level): power up to the GPU's enforced
            # limit; where NVML does not give the limit, power is scaled to its own range
            scales = {
                "util_hist": (0.0, 100.0),
                "mem_hist": (0.0, g.mem_total_mib),
                "temp_hist": TEMP_SCALE_C,
            }
            if g.power_limit_w:
                scales["power_hist"] = (0.0, g.power_limit_w)
            for _, field, style in HISTORIES:
                lo, hi = scales.get(field, (None, None))
                out.append("  ")
                out.append(fmt.spark(getattr(g, field), spark_w, lo, hi).ljust(spark_w), style=style)
        return out

    def render_host(self, gpu: GpuView) -> Text:
        out = Text(no_wrap=True, overflow="crop")
        out.append("no GPU view: ", style="bold yellow")
        out.append((gpu.reason or "no GPUs found") + "\n", style="yellow")
        h = gpu.host
        if h is not None:
            ram_pct = (
                100.0 * h.ram_used_mib / h.ram_total_mib
                if h.ram_used_mib is not None and h.ram_total_mib
                else None
            )
            out.append("host cpu ", style="bold")
            out.append(fmt.bar(h.cpu_pct, 10), style="green")
            out.append(f" {fmt.pct(h.cpu_pct, 0):>4}  ")
            out.append(fmt.spark(h.cpu_hist, 12, 0.0, 100.0), style="cyan")
            out.append("\nhost ram ", style="bold")
            out.append(fmt.bar(ram_pct, 10), style="magenta")
            out.append(f" {fmt.mib(h.ram_used_mib)}/{fmt.mib(h.ram_total_mib)}  ")
            out.append(fmt.spark(h.ram_hist, 12, 0.0, h.ram_total_mib), style="magenta")
            if h.load1 is not None:
                out.append(f"  load {h.load1:.2f}")
        return out


def _lines(gpu: GpuView | None) -> int:
    """The panel's height class: one line (sampling), a line per GPU, or the no-GPU text."""
    if gpu is None:
        return -1
    return (len(gpu.gpus) if gpu.available and gpu.gpus else -2) * 1000 + len(gpu.slurm)
