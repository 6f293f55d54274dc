"""A report's files: `<dir>/report.md` (or `--out-md FILE`) with its per-step CSV, summary CSV
and plots beside it, the baseline in each (its rows marked in the CSV, black and dashed in every
plot).

Output files are checked before anything is written (a directory, a path under a file, a
read-only place: one line, nothing written), then written as temps and renamed into place
together. A log of any size costs bounded memory: its step lines stream, a chunk at a time, into
the per-step CSV (numbers as the log printed them; step_files), and a plotted series keeps a min and a max per pixel column (plots). Big logs are read side by side by worker
processes (step_files.stream_steps). The dir is read once (report.read_dir).

Layer 2: imports fsutil, numtext, safetext, stats, registry, vocab, baseline, plots, step_files,
report and report_md.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

from cockpit import fsutil, numtext, report, report_md, safetext, stats, step_files
from cockpit import plots as plots_
from cockpit import registry as reg
from cockpit.baseline import Baseline
from cockpit.report import COLUMNS, ReportError, ReportRow, baseline_row, repeat_with_aggregate
from cockpit.vocab import DEFAULT_TAIL, METRICS, STEP_METRICS

SUMMARY_COLUMNS = (
    "run",
    "status",
    "source",
    "steps_observed",
    "last_step",
    "total_steps",
    "last_loss",
    "tail_n",
    "tok_per_sec",
    "dt_ms",
    "mfu",
    "peak_mem_mib",
    "total_time_min",
    "error",
)


def _cell(v: object) -> str:
    """A summary CSV cell: empty for no figure; a float without float noise (numtext.computed)."""
    if v is None:
        return ""
    return numtext.computed(v) if isinstance(v, float) else str(v)


def _summary_rows(rows_: list[ReportRow]) -> Iterator[Sequence[str]]:
    yield SUMMARY_COLUMNS
    for r in rows_:
        if r.is_aggregate:
            continue  # a CSV row is a log's
        s = r.summary
        yield [
            safetext.printable(r.run),
            r.status,
            r.source,
            _cell(s.steps_observed if s else None),
            _cell(s.last_step if s else None),
            _cell(s.total_steps if s else None),
            _cell(s.last_loss if s else None),
            _cell(s.tail_n if s else None),
            *(_cell(r.value(a)) for a in METRICS),
            safetext.printable((s.error_line or s.error or "") if s else ""),
        ]


FIGURES = ("full", "paper")  # plots' titles: with the experiment, dir and commit, or without (for a paper)
BaselineBar = tuple[
    str, ReportRow
]  # the baseline's bar when it is no row of the dir: (its name, its figures)


def _tail_bars(rows_: Sequence[ReportRow], tail: int, extra: BaselineBar | None = None) -> list[plots_.Bars]:
    """(metric label, [(run, estimate)]) of each speed metric some run has a nonzero tail mean of;
    a leg with repeats as its aggregate (the interval from their spread); `extra`: the baseline
    from another dir, or recorded (a bar without an interval), first."""
    out = []
    for attr in STEP_METRICS:
        runs = [
            (r.run, e)
            for r in rows_
            if not repeat_with_aggregate(r, list(rows_))
            and (e := r.estimate(attr)) is not None
            and math.isfinite(e.mean)
        ]
        if extra is not None:
            name, row = extra
            e = row.estimate(attr)
            if e is None and (v := row.value(attr)) is not None and math.isfinite(v):
                e = stats.Estimate(v, 0.0, 1, 1.0, 0.0)  # one figure: no interval
            if e is not None and math.isfinite(e.mean):
                runs.insert(0, (name, e))
        if any(e.mean for _, e in runs):
            out.append((f"tail{tail} {COLUMNS[attr][0]}", runs))
    return out


def baseline_in_files(
    b: Baseline | None, tail: int = DEFAULT_TAIL, now: float | None = None
) -> tuple[plots_.BaselineMark | None, list[tuple[str, str]], BaselineBar | None]:
    """The baseline in a report's per-step CSV and plots: (what of them is the baseline, the logs
    of another dir to add as (name, path), the bar to add). Its own dir's runs are there already;
    another dir's are added named `<run> (<its dir>)`; recorded figures are lines and a bar
    without an interval. Nothing for a baseline without figures (`b.problem`)."""
    if b is None or b.problem:
        return None, [], None
    if b.dir is None:
        row = baseline_row(b, tail, now)
        recorded = {m: v for m in STEP_METRICS if (v := row.value(m)) is not None}
        return plots_.BaselineMark(frozenset({row.run}), row.run, recorded), [], (row.run, row)
    if b.own:
        return plots_.BaselineMark(frozenset({*b.runs, b.leg}), b.leg), [], None
    named = [(f"{run} ({b.dir.name})", str(b.dir / f"{run}.log")) for run in b.runs]
    jobs = [(name, path) for name, path in named if fsutil.is_regular(path)]
    label = f"{b.leg} ({b.dir.name})"  # its one run's series, or the aggregate of its repeats
    return (
        plots_.BaselineMark(frozenset({name for name, _ in jobs} | {label}), label),
        jobs,
        (label, baseline_row(b, tail, now)),
    )


def output_files(out: Path, plots: bool = True, svg: bool = False) -> dict[str, Path]:
    """Every file a report at `out` writes: the markdown, its two CSVs, its plots (PNG, and with
    `svg` each as SVG too, keyed `<plot>.svg`)."""
    files = {
        "report": out,
        "steps": out.with_name(f"{out.stem}_steps.csv"),
        "summary": out.with_name(f"{out.stem}_summary.csv"),
    }
    if plots:
        for attr, _ in (*plots_.PLOTS, *plots_.EXTRA_PLOTS):
            files[attr] = out.with_name(f"{out.stem}_{attr}.png")
            if svg:
                files[f"{attr}.svg"] = out.with_name(f"{out.stem}_{attr}.svg")
    return files


def check_output(out: Path, plots: bool = True, svg: bool = False) -> None:
    """Raise ReportError (one line) when any file of a report at `out` cannot be written there;
    checked before anything is written anywhere."""
    for path in output_files(out, plots, svg).values():
        if why := fsutil.output_problem(path):
            raise ReportError(f"--out-md {safetext.oneline(str(out))}: {safetext.oneline(why)}")


def write_report(
    exp_dir: Path | str,
    out_md: Path | str | None = None,
    baseline: str | None = None,
    tail: int = DEFAULT_TAIL,
    plots: bool = True,
    now: float | None = None,
    registry: reg.Registry | None = None,
    figures: str = "full",
    svg: bool = False,
) -> Path:
    """Write the report (default `<exp_dir>/report.md`) with its CSVs and plots beside it, the
    baseline in both (baseline_in_files); `figures` "paper": plot titles without the
    experiment, dir and commit; `svg`: each plot as SVG beside its PNG (`cockpit report
    --out-md`; the supervisor's report.md keeps to PNG, a third cheaper).

    The supervisor calls this after every leg: a log it cannot read becomes a row saying so,
    and a plot that cannot be drawn becomes a note; only an unusable exp_dir or out path, or an
    unknown baseline, raises (ReportError or OSError), and then nothing is written. Files
    inside the dir are never written through a symlink planted there.
    """
    exp_dir = Path(exp_dir)
    if figures not in FIGURES:
        raise ReportError(f"--figures {safetext.oneline(figures)[:40]}: give one of {', '.join(FIGURES)}")
    if not fsutil.is_dir(exp_dir):
        raise ReportError(f"{safetext.oneline(str(exp_dir))}: no such experiment dir")
    out = Path(os.path.abspath(os.path.expanduser(out_md))) if out_md is not None else exp_dir / "report.md"
    check_output(out, plots, svg)
    files = output_files(out, plots, svg)
    root = exp_dir if fsutil.is_inside(out.parent, exp_dir) else None
    d = report.read_dir(exp_dir)  # once: the rows, the baseline, the flags and the plots' titles read it
    all_rows = report.rows(d, tail, now)
    base = report_md.find_baseline(
        d, baseline, registry
    )  # an unknown --baseline fails before anything is written
    mark, base_jobs, base_bar = baseline_in_files(base, tail, now)
    links = {"per-step CSV": files["steps"].name, "summary CSV": files["summary"].name}
    with fsutil.StagedFiles(root) as staged:
        with staged.open(files["steps"], "wb") as f:
            jobs = [(r.run, r.path) for r in all_rows if r.path and r.summary and not r.summary.error]
            series = step_files.stream_steps(jobs + base_jobs, f, tail, mark.names if mark else frozenset())
        with staged.open(files["summary"], "w") as f:
            csv.writer(f).writerows(_summary_rows(all_rows))
        plot_note = None
        if plots and series:
            context = plots_.plot_context(exp_dir, d.plan) if figures == "full" else ""
            try:
                drawn = plots_.draw_plots(
                    series,
                    _tail_bars(all_rows, tail, base_bar),
                    tail,
                    context,
                    mark,
                    ("png", "svg") if svg else ("png",),
                )
            except Exception as e:  # noqa: BLE001 - a plot problem must not lose the report
                drawn, plot_note = {}, f"plots not drawn: {type(e).__name__}: {e}"
            for attr, label in (*plots_.PLOTS, *plots_.EXTRA_PLOTS):
                for fmt, data in drawn.get(attr, {}).items():
                    key = attr if fmt == "png" else f"{attr}.{fmt}"
                    with staged.open(files[key], "wb") as f:
                        f.write(data)
                    links[label if fmt == "png" else f"{label} ({fmt.upper()})"] = files[key].name
        text = report_md.render(d, all_rows, base, tail, links, now)
        if plot_note:
            text += f"\n{report_md.md_text(plot_note)}\n"
        with staged.open(out, "w") as f:
            f.write(text)
    return out
