"""A run's figures, in one shape: `Figures`, a field per metric name of vocab (METRICS, then
QUALITY, in that order). A report's row, a leg's figures in the resume state, the registry's
recorded figures, the terminal app's rows and its live row all hold one, so a metric is added
here (and its name in vocab) and every one of them has it.

The figures a registry may record for a run made elsewhere (`[experiment.leg.recorded]`, the
metrics of vocab.METRICS) are declared as the registry's keys (`schema.key`): what the file may
hold there and what it means. The others are measured here only.

In a report the speed and routing figures are tail means (over the last `tail` step lines, step 0
left out); a live row holds the last step line's figures in this shape.

Layer 0: imports nothing from the cockpit but vocab and schema.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from cockpit.schema import key
from cockpit.vocab import METRICS, QUALITY

FIGURE_MAX = 1e15  # the largest figure a registry may record


def _recorded(doc: str) -> Any:
    """A figure a registry may record: a non-negative number, or left out (None)."""
    return key(int, float, default=None, lo=0.0, hi=FIGURE_MAX, doc=doc)


@dataclass(frozen=True)
class Figures:
    """A run's figures by metric name; None where the run has no such figure (yet)."""

    tok_per_sec: float | None = _recorded("tail tokens per second")  # tokens per second, global
    dt_ms: float | None = _recorded("tail step time (ms)")  # a whole optimizer step (all micro-steps)
    mfu: float | None = _recorded("tail MFU (percent)")  # model FLOPs utilization, % of the bf16 peak
    peak_mem_mib: float | None = _recorded("peak memory (MiB)")  # the trainer's `Peak memory usage`
    total_time_min: float | None = _recorded("total training time (min)")  # the first 10 steps left out
    min_val_bpb: float | None = None  # the lowest validation bits per byte
    last_val_bpb: float | None = None  # the last validation bits per byte
    final_loss: float | None = None  # the last step line's loss
    drop_pct: float | None = None  # routed tokens a fixed capacity dropped, percent (MoE legs)
    bal: float | None = None  # the balance loss averaged over MoE layers (1.0 at perfect balance)

    def value(self, metric: str) -> float | None:
        """The figure of a metric name of vocab (METRICS or QUALITY)."""
        return getattr(self, metric)

    def items(self) -> list[tuple[str, float | None]]:
        """(metric, figure) of every metric, in vocab's order: METRICS, then QUALITY."""
        return [(m, getattr(self, m)) for m in (*METRICS, *QUALITY)]

    @property
    def has_metrics(self) -> bool:
        """Has it any figure of the metric table (vocab.METRICS)?"""
        return any(getattr(self, m) is not None for m in METRICS)

    @classmethod
    def mean(cls, of: Iterable[Figures]) -> Figures:
        """Each figure the mean over those of `of` that have it (finite); None where none has."""
        of = list(of)
        means = {}
        for f in dataclasses.fields(cls):
            vals = [v for x in of if (v := getattr(x, f.name)) is not None and math.isfinite(v)]
            means[f.name] = math.fsum(vals) / len(vals) if vals else None
        return cls(**means)
