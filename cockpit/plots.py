"""A report's plots: which metrics are drawn, a run's series as plotted (decimated to the
figure's pixel columns, speed smoothed by a rolling mean), and the figures as PNG bytes.

Per-step plots: loss, tok/sec, MFU, dt and drop %, one line per run in a colour it keeps in every
plot; tok/sec and dt as a rolling mean over the raw steps (faint), the trainer's warm-up steps left
out and each run's tail window shaded: the steps its tail means average, never step 0 (a run
shorter than the window: from step 1, warm-up included); a metric absent or 0 on every step gets no plot. Beside
them: validation bpb against tokens seen, and the tail means with their 95% intervals as bars
starting at 0 (never a cut axis that makes 2% look like 2x). The baseline is in every plot, in
black and dashed, named `(baseline)` in the legend: its runs' lines (its own dir's or another's),
or, for figures the registry records, a horizontal line at each recorded figure (a plot whose
metric it does not record says so in its legend); in the bars it comes first, with a line at its
mean across the panel. Every title's second line names the experiment, the dir and the commit;
`paper` figures leave that line out. Each figure is drawn once and saved as PNG, and as SVG
when asked (text as text, no date: the same figure, the same bytes).
matplotlib draws off screen (Agg), at a fixed size and dpi, legends right of the plot area.

Layer 2: imports the layers below (plan, logs, safetext, stats, lazy).
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

from cockpit import lazy, logs, safetext, stats
from cockpit.plan import Plan
from cockpit.vocab import DEFAULT_TAIL

np: Any = None  # numpy, loaded when a report draws or collects its series


def load_numpy() -> None:
    global np
    if np is None:
        np = lazy.numpy()


# The per-step plots (attr, axis label). tok/sec and dt are drawn as a rolling mean over the raw
# steps (faint), the trainer's warm-up steps left out and each run's tail window shaded; loss, MFU
# and drop % as they were printed. A metric that is absent, or 0 on every step (MFU on a CPU, drop %
# of a dropless run), gets no plot.
PLOTS = (
    ("loss", "loss"),
    ("tok_per_sec", "tok/sec"),
    ("mfu", "MFU (%)"),
    ("dt_ms", "dt (ms)"),
    ("drop_pct", "dropped tokens (%)"),
)
SMOOTHED = ("tok_per_sec", "dt_ms")
NO_WARMUP = ("tok_per_sec", "dt_ms", "mfu")  # speed: the warm-up steps (compilation) would squash the scale
WARMUP_STEPS = 11  # a run's first steps the trainer leaves out of its timing (`step - start_step > 10`)
EXTRA_PLOTS = (("val_bpb", "validation bpb"), ("tail_means", "tail means"))  # not per step
PLOT_SIZE_IN, PLOT_DPI = (8, 4.5), 150
PLOT_BUCKETS = PLOT_SIZE_IN[0] * PLOT_DPI  # a plotted series keeps a min and a max per pixel column at most


def smooth_window(n: int, tail: int) -> int:
    """Steps in the rolling mean of a series of n steps: a fifth of the tail window, wider for a
    long run (a pixel column of a 400,000-step run holds hundreds of steps)."""
    return max(1, tail // 5, n // 200)


def rolling_mean(y: Any, window: int) -> Any:
    """The trailing mean of the last `window` values at each point (fewer at the start)."""
    c = np.concatenate(([0.0], np.cumsum(y, dtype=np.float64)))
    i = np.arange(1, len(y) + 1)
    lo = np.maximum(i - window, 0)
    return (c[i] - c[lo]) / (i - lo)


Bars = tuple[str, list[tuple[str, stats.Estimate]]]  # (metric label, [(run, its tail mean with interval)])
BASE_COLOUR = "0.1"  # the baseline's lines and bar: near black, dashed
FORMATS = ("png", "svg")  # what a figure can be saved as


class BaselineMark(NamedTuple):
    """What of a report's plots is its baseline: the names of its series and bars, the label
    its legend entry gets, and the figures the registry records for it (no per-step series)."""

    names: frozenset[str]
    label: str
    recorded: dict[str, float] = {}  # attr -> recorded tail figure (tok_per_sec, dt_ms, mfu)


class Series(NamedTuple):
    """A run's metric per step, as plotted. A long series keeps, for each pixel column of the
    plot, its first step and the least and the greatest value there (`lows`, `highs`); a smoothed
    one its rolling mean too (`smooth`, the column's mean of it), and the steps its tail window spans."""

    steps: Any  # numpy float64
    lows: Any
    highs: Any  # the same as lows when the series is drawn point by point
    decimated: bool
    smooth: Any = None  # the rolling mean (SMOOTHED metrics)
    window: int = 0  # its width in steps
    tail_from: float | None = None  # the first step of the tail window (what the tail means average)
    tail_to: float | None = None  # its last step
    batch_tokens: int = 0  # validation bpb: tokens per step (0: not known), to plot against tokens


class Collected:
    """A run's plotted metrics, collected a chunk of step lines at a time (finite values only)."""

    def __init__(self, tail: int = DEFAULT_TAIL) -> None:
        load_numpy()  # its chunks are numpy columns, and so are the series it gives
        self.tail = tail
        self.first_step: float | None = None
        self.parts: dict[str, list[tuple[Any, Any]]] = {attr: [] for attr, _ in PLOTS}
        # the steps of the tail means' window: the last `tail` step lines but step 0, as LogState
        # keeps them (a run shorter than the window: every step line but step 0, warm-up included)
        self.tail_steps = np.empty(0, np.float64)

    def add(self, table: logs.StepTable) -> None:
        step = table.column("step")
        x = (
            step.values.astype(np.float64)
            if step.values.dtype != object
            else np.array([float(v) if abs(v) < 2**1000 else np.inf for v in step.values.tolist()])
        )  # a step of 400 digits
        if self.first_step is None and step.present.any():
            self.first_step = float(x[np.argmax(step.present)])
        if self.tail > 0:
            self.tail_steps = np.concatenate((self.tail_steps, x[step.present & (x != 0)]))[-self.tail :]
        for attr, parts in self.parts.items():
            col = table.column(attr)
            keep = col.present & step.present & np.isfinite(col.values) & np.isfinite(x)
            if attr in NO_WARMUP and self.first_step is not None:
                keep &= x >= self.first_step + WARMUP_STEPS
            if keep.any():
                parts.append((x[keep], col.values[keep]))

    def series(self) -> dict[str, Series]:
        out = {}
        span = self.tail_steps[np.isfinite(self.tail_steps)]
        tail_from, tail_to = (float(span.min()), float(span.max())) if len(span) else (None, None)
        for attr, parts in self.parts.items():
            if parts:
                x, y = (np.concatenate(a) for a in zip(*parts, strict=True))
                if attr not in SMOOTHED:
                    out[attr] = decimate(x, y, PLOT_BUCKETS)
                    continue
                w = smooth_window(len(y), self.tail)
                s = decimate(x, y, PLOT_BUCKETS, rolling_mean(y, w))
                out[attr] = s._replace(window=w, tail_from=tail_from, tail_to=tail_to)
        return out


def decimate(x: Any, y: Any, buckets: int, smooth: Any = None) -> Series:
    """A series to draw `buckets` pixel columns wide. Up to 2 points a column it is kept as it
    is; a longer one keeps, per column's range of x, its first x and its least and greatest y:
    drawn as a band from least to greatest, it covers every pixel the whole series covers.
    `smooth` (a rolling mean of y) keeps its mean per column."""
    n = len(x)
    if n <= 2 * buckets:
        return Series(x, y, y, False, smooth)
    if (np.diff(x) < 0).any():  # a run restarted from a checkpoint: its steps go back
        order = np.argsort(x, kind="stable")
        x, y = x[order], y[order]
        smooth = smooth[order] if smooth is not None else None
    lo, hi = x[0], x[-1]
    column = (
        np.minimum(((x - lo) * (buckets / (hi - lo))).astype(np.int64), buckets - 1)
        if hi > lo
        else np.zeros(n, np.int64)
    )
    starts = np.flatnonzero(np.concatenate(([True], column[1:] != column[:-1])))
    if smooth is not None:
        smooth = np.add.reduceat(smooth, starts) / np.diff(np.append(starts, n))
    return Series(x[starts], np.minimum.reduceat(y, starts), np.maximum.reduceat(y, starts), True, smooth)


def plot_context(exp_dir: Path, plan: Plan | None) -> str:
    """The line under every plot's title: experiment, dir and commit (a dirty tree marked), from
    the dir's plan; the dir's name alone for a dir of plain logs (no plan)."""
    parts = []
    git = plan.git if plan is not None else {}
    if plan is not None and plan.experiment:
        parts.append(plan.experiment)
    parts.append(exp_dir.name)
    if isinstance(git.get("commit"), str):
        parts.append("commit " + git["commit"][:10] + (" + uncommitted changes" if git.get("dirty") else ""))
    return safetext.printable(" · ".join(parts), newlines=False)


def draw_plots(
    series: dict[str, dict[str, Series]],
    bars: Sequence[Bars] = (),
    tail: int = DEFAULT_TAIL,
    context: str = "",
    baseline: BaselineMark | None = None,
    formats: Sequence[str] = ("png",),
) -> dict[str, dict[str, bytes]]:
    """Each plot in `formats` (of FORMATS): each per-step metric (PLOTS), validation bpb against
    tokens, and the tail means with their 95% intervals as bars, one panel per entry of `bars`
    (EXTRA_PLOTS): attr -> {format: bytes}. A run keeps its colour in every plot, the baseline
    (`baseline`) is black and dashed in every one; `context` (plot_context) is every title's
    second line ("" for paper figures)."""
    load_numpy()  # the logs may all have been read by worker processes
    # function-level: matplotlib is heavy, and only a report with plots needs it
    from matplotlib import rcParams
    from matplotlib.patches import Patch

    cycle = rcParams["axes.prop_cycle"].by_key()["color"]
    base = baseline.names if baseline is not None else frozenset()
    names = [
        n for n in dict.fromkeys([*series, *(run for _, runs in bars for run, _ in runs)]) if n not in base
    ]
    colour = {run: cycle[i % len(cycle)] for i, run in enumerate(names)} | {n: BASE_COLOUR for n in base}
    made: dict[str, dict[str, bytes]] = {}

    def title(ax: Any, what: str) -> None:
        ax.set_title(what + (f"\n{context}" if context else ""), fontsize=10)

    def shown(run: str) -> str:
        name = safetext.printable(run, newlines=False)
        return f"{name} (baseline)" if run in base else name

    def baseline_elsewhere(ax: Any, attr: str, drawn: list[str]) -> None:
        """The baseline in a plot that has no series of it: a line at the figure the registry
        records, else a legend entry saying it has none."""
        if baseline is None or base & set(drawn):
            return
        value = baseline.recorded.get(attr)
        label = f"{safetext.printable(baseline.label, newlines=False)} (baseline"
        if value is not None and math.isfinite(value):
            ax.axhline(value, color=BASE_COLOUR, linestyle="--", linewidth=1.4, label=label + ", recorded)")
        else:
            why = "none in its log" if base & set(series) else "no per-step figures: recorded"
            ax.plot([], [], color=BASE_COLOUR, linestyle="--", label=f"{label}): {why}")

    for attr, label in PLOTS:
        lines = [(run, kept[attr]) for run, kept in series.items() if attr in kept]
        if not any(s.lows.any() or s.highs.any() for _, s in lines):
            continue  # absent, or 0 on every step: nothing to see
        fig = _figure()
        ax = fig.add_subplot()
        decimated, spans, windows = False, set(), set()
        for run, s in sorted(lines, key=lambda x: x[0] not in base):  # the baseline first: under the others
            name, c, dash = shown(run), colour[run], "--" if run in base else "-"
            faint = s.smooth is not None  # the steps themselves under their rolling mean
            if s.decimated:  # a band: stroking a zigzag through every min and max costs ten times more
                ax.fill_between(
                    s.steps,
                    s.lows,
                    s.highs,
                    color=c,
                    alpha=0.15 if faint else 0.4,
                    linewidth=0.8,
                    label=None if faint else name,
                )
            else:
                ax.plot(
                    s.steps,
                    s.lows,
                    color=c,
                    alpha=0.3 if faint else 1.0,
                    linewidth=0.7 if faint else 1.2,
                    label=None if faint else name,
                    linestyle="-" if faint else dash,
                )
            if faint:
                ax.plot(s.steps, s.smooth, color=c, linewidth=1.6, label=name, linestyle=dash)
                windows.add(s.window)
                if s.tail_from is not None and s.tail_to is not None:
                    spans.add((s.tail_from, s.tail_to))
            decimated |= s.decimated
        baseline_elsewhere(ax, attr, [run for run, _ in lines])
        handles, labels = ax.get_legend_handles_labels()
        for lo, hi in spans:
            ax.axvspan(lo, hi, color="0.5", alpha=0.12, linewidth=0)
        if spans:
            handles.append(Patch(color="0.5", alpha=0.25))
            labels.append(f"tail window (last {tail} steps, step 0 left out)")
        what = f"{label} per step"
        if windows:
            w = f"{min(windows)}" if len(windows) == 1 else f"{min(windows)}-{max(windows)}"
            what += f": rolling mean of {w} steps, each step faint"
        if attr in NO_WARMUP:
            what += f", first {WARMUP_STEPS} (warm-up) left out"
        if decimated:
            what += " (long runs: least to greatest per pixel column)"
        ax.set_xlabel("step")
        ax.set_ylabel(label)
        title(ax, what)
        ax.grid(True, alpha=0.3)
        _outside_legend(ax, handles, labels)
        _thousands(ax.yaxis)
        made[attr] = _render(fig, formats)

    val = [(run, kept["val_bpb"]) for run, kept in series.items() if "val_bpb" in kept]
    if val:
        tokens = all(s.batch_tokens for _, s in val)  # else every run against its steps
        fig = _figure()
        ax = fig.add_subplot()
        for run, s in sorted(val, key=lambda x: x[0] not in base):
            ax.plot(
                s.steps * s.batch_tokens if tokens else s.steps,
                s.lows,
                marker="o",
                markersize=3,
                color=colour[run],
                label=shown(run),
                linewidth=1.2,
                linestyle="--" if run in base else "-",
            )
        baseline_elsewhere(ax, "val_bpb", [run for run, _ in val])
        ax.set_xlabel("tokens" if tokens else "step")
        ax.set_ylabel("validation bpb")
        title(
            ax,
            "validation bits per byte against "
            + ("tokens seen" if tokens else "step (a log without its batch size)"),
        )
        ax.grid(True, alpha=0.3)
        _outside_legend(ax, *ax.get_legend_handles_labels())
        _thousands(ax.xaxis)
        made["val_bpb"] = _render(fig, formats)

    if bars:
        made["tail_means"] = _draw_bars(
            list(bars),
            colour,
            f"tail{tail} means with 95% intervals" + (f"\n{context}" if context else ""),
            base,
            formats,
        )
    return made


def _figure(height: float = PLOT_SIZE_IN[1]) -> Any:
    """A matplotlib figure drawn off screen (Agg: no display)."""
    # function-level: matplotlib is heavy, and only a report with plots needs it
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(PLOT_SIZE_IN[0], height), dpi=PLOT_DPI)
    FigureCanvasAgg(fig)
    return fig


def _outside_legend(ax: Any, handles: list, labels: list) -> None:
    """The legend right of the plot, never over a line (a fixed place: "best" searches every point)."""
    ax.legend(handles, labels, fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)


def _thousands(axis: Any) -> None:
    """Tick labels of big numbers with thousands separators (780,000, not 7.8e5)."""
    from matplotlib.ticker import FuncFormatter  # function-level: matplotlib is heavy (plots only)

    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}" if abs(v) >= 1000 else f"{v:g}"))


def bar_axis(means: Any, half: Any) -> tuple[float, float]:
    """A bar chart's axis limits: from 0 (or below it, for a negative bar or interval) to past
    the longest interval; never cut above 0."""
    lo = min(0.0, float((means - half).min()))
    hi = max(0.0, float((means + half).max()))
    pad = max(hi - lo, 1e-12) * 0.05
    return (lo - pad if lo < 0 else 0.0), hi + pad


def _render(fig: Any, formats: Sequence[str] = ("png",)) -> dict[str, bytes]:
    """The figure's bytes in each of `formats` (an SVG with its text as text, without a date or
    random ids: the same figure, the same bytes), cropped to what is drawn: a title wider than the
    axes (the legend sits right of them) is kept whole, never cut at the figure's edge."""
    from matplotlib import rc_context  # function-level: matplotlib is heavy (plots only)

    fig.tight_layout()
    out = {}
    for fmt in formats:
        buf = io.BytesIO()
        with rc_context({"svg.hashsalt": "cockpit", "svg.fonttype": "none"}):
            fig.savefig(
                buf,
                format=fmt,
                metadata={"Date": None} if fmt == "svg" else None,
                bbox_inches="tight",
                pad_inches=0.1,
            )
        out[fmt] = buf.getvalue()
    return out


def _draw_bars(
    bars: list[Bars],
    colour: dict[str, str],
    title: str,
    base: frozenset[str] = frozenset(),
    formats: Sequence[str] = ("png",),
) -> dict[str, bytes]:
    """One panel per metric, a bar per run with its 95% interval, the baseline first (hatched,
    with a dashed line at its mean across the panel). Every bar starts at 0: the axis is never
    cut, so a difference of a few percent looks like one."""
    n = max(len(runs) for _, runs in bars)
    fig = _figure(max(2.8, 1.6 + 0.35 * n))
    axes = fig.subplots(1, len(bars), sharey=True, squeeze=False)[0]
    for ax, (label, runs) in zip(axes, bars, strict=True):
        runs = sorted(runs, key=lambda x: x[0] not in base)
        y = np.arange(len(runs))[::-1]
        means = np.array([e.mean for _, e in runs])
        half = np.array([e.half_width if math.isfinite(e.half_width) else 0.0 for _, e in runs])
        drawn = ax.barh(
            y,
            means,
            xerr=half,
            color=[colour.get(run, "0.5") for run, _ in runs],
            alpha=0.8,
            error_kw={"capsize": 3, "linewidth": 1},
        )
        for patch, (run, e) in zip(drawn, runs, strict=True):
            if run in base:
                patch.set_hatch("//")
                patch.set_edgecolor("white")
                ax.axvline(e.mean, color=BASE_COLOUR, linestyle="--", linewidth=1)
        ax.set_xlim(*bar_axis(means, half))
        ax.set_yticks(
            y,
            [
                safetext.printable(run, newlines=False) + (" (baseline)" if run in base else "")
                for run, _ in runs
            ],
            fontsize=8,
        )
        ax.set_xlabel(label, fontsize=8)
        _thousands(ax.xaxis)
        ax.tick_params(axis="x", labelsize=7)
        ax.grid(True, axis="x", alpha=0.3)
    fig.suptitle(title, fontsize=10)
    return _render(fig, formats)
