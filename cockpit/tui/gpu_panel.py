"""The GPU panel: a row per GPU (utilization and memory bars, history, temperature, power, the
leg owning its processes); without NVML, the reason and the host's CPU and RAM instead."""

from __future__ import annotations

from rich.table import Table
from rich.text import Text
from textual.widgets import Static

from cockpit.tui import fmt
from cockpit.tui.state import GpuView


class GpuPanel(Static):
    ALLOW_MAXIMIZE = True
    _last: GpuView | None = None
    _rows = -1

    def show(self, gpu: GpuView | None) -> None:
        if gpu is not None and gpu == self._last:
            return
        self._last = gpu
        # A relayout of the screen only when the panel's height changes (GPUs appear or go).
        rows = -1 if gpu is None else (len(gpu.gpus) if gpu.available and gpu.gpus else -2)
        layout, self._rows = rows != self._rows, rows
        if gpu is None:
            self.update(Text("sampling GPUs...", style="dim"), layout=layout)
            return
        table = Table.grid(padding=(0, 1))
        if gpu.available and gpu.gpus:
            for col in ("gpu", "util", "", "mem", "", "history", "temp", "power", "leg"):
                table.add_column(col, no_wrap=True)
            for g in gpu.gpus:
                mem_pct = (
                    100.0 * g.mem_used_mib / g.mem_total_mib
                    if g.mem_used_mib is not None and g.mem_total_mib
                    else None
                )
                busy = (g.util_pct or 0) > 5 or (mem_pct or 0) > 5
                table.add_row(
                    Text(f"{g.index}", style="bold"),
                    Text(fmt.bar(g.util_pct, 8), style="green" if busy else "dim"),
                    Text(fmt.pct(g.util_pct, 0).rjust(4)),
                    Text(fmt.bar(mem_pct, 6), style="magenta" if busy else "dim"),
                    Text(f"{fmt.mib(g.mem_used_mib)}/{fmt.mib(g.mem_total_mib)}".rjust(11)),
                    Text(fmt.spark(g.util_hist, 12).ljust(12), style="cyan"),
                    Text("-" if g.temp_c is None else f"{g.temp_c:.0f}°C"),
                    Text("-" if g.power_w is None else f"{g.power_w:.0f}W".rjust(5)),
                    Text(g.leg or "", style="bold cyan" if g.leg else "dim"),
                )
            self.update(table, layout=layout)
            return
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
        self.update(out, layout=layout)
