"""The GPU panel: a row per GPU (utilization and memory bars, temperature, power, the leg owning
its processes, utilization history); without NVML, the reason and the host's CPU and RAM instead.
Below, the nodes each running Slurm leg holds: NVML sees only this machine's GPUs."""

from __future__ import annotations

from rich.text import Text
from textual.reactive import reactive
from textual.widgets import Static

from cockpit.tui import fmt
from cockpit.tui.state import GpuView


class GpuPanel(Static):
    ALLOW_MAXIMIZE = True

    gpu: reactive[GpuView | None] = reactive(None)

    def watch_gpu(self, old: GpuView | None, new: GpuView | None) -> None:
        # A relayout of the screen only when the panel's height changes (GPUs appear or go).
        if _lines(old) != _lines(new):
            self.refresh(layout=True)

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
            # One fixed-width line per GPU: a narrow terminal crops the leg column at the right.
            out = Text(no_wrap=True, overflow="crop")
            leg_w = max(len(g.leg or "-") for g in gpu.gpus)
            for n, g in enumerate(gpu.gpus):
                mem_pct = (
                    100.0 * g.mem_used_mib / g.mem_total_mib
                    if g.mem_used_mib is not None and g.mem_total_mib
                    else None
                )
                busy = (g.util_pct or 0) > 5 or (mem_pct or 0) > 5
                if n:
                    out.append("\n")
                out.append(f"{g.index:>2} ", style="bold")
                out.append(fmt.bar(g.util_pct, 8), style="green" if busy else "dim")
                out.append(f" {fmt.pct(g.util_pct, 0):>4} ")
                out.append(fmt.bar(mem_pct, 6), style="magenta" if busy else "dim")
                out.append(f" {fmt.mib(g.mem_used_mib) + '/' + fmt.mib(g.mem_total_mib):>11} ")
                out.append(f" {'-' if g.temp_c is None else f'{g.temp_c:.0f}°C':>5}")
                out.append(f" {'-' if g.power_w is None else f'{g.power_w:.0f}W':>5}  ")
                out.append((g.leg or "-").ljust(leg_w), style="bold cyan" if g.leg else "dim")
                out.append("  ")
                out.append(fmt.spark(g.util_hist, 12), style="cyan")
            return out
        out = Text()
        out.append("no GPU view: ", style="bold yellow")
        out.append((gpu.reason or "no GPUs found") + "\n", style="yellow")
        h = gpu.host
        if h is not None:
            ram_pct = 100.0 * h.ram_used_mib / h.ram_total_mib if h.ram_used_mib is not None and h.ram_total_mib else None
            out.append("host cpu ", style="bold")
            out.append(fmt.bar(h.cpu_pct, 10), style="green")
            out.append(f" {fmt.pct(h.cpu_pct, 0):>4}  ")
            out.append(fmt.spark(h.cpu_hist, 12), style="cyan")
            out.append("\nhost ram ", style="bold")
            out.append(fmt.bar(ram_pct, 10), style="magenta")
            out.append(f" {fmt.mib(h.ram_used_mib)}/{fmt.mib(h.ram_total_mib)}")
            if h.load1 is not None:
                out.append(f"  load {h.load1:.2f}")
        return out


def _lines(gpu: GpuView | None) -> int:
    """The panel's height class: one line (sampling), a line per GPU, or the no-GPU text."""
    if gpu is None:
        return -1
    return (len(gpu.gpus) if gpu.available and gpu.gpus else -2) * 1000 + len(gpu.slurm)
