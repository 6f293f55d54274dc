"""The report of an experiment dir: its metric table, deltas against a baseline, each run's status.

Data first, text second: `rows()` and `delta_rows()` give dataclasses the TUI turns into
DataTables; `render_*` turn the same rows into markdown. A dir holding only the `*.log` files
of manual runs (no plan, no state) is a valid input: each log is a run named by its stem.

The metric table has one row per run: `| run | tail50 tok/sec | tail50 dt (ms) | tail50 mfu |
peak mem (MiB) | total time (min) |`, the tail columns being means over the last 50 step lines
(`--tail N` renames them). Numbers keep fixed decimals, so tables of different runs and days line
up: tok/sec, dt, peak memory and total time with 2, MFU with 4, deltas as signed percentages with
2 (`+2.70%`); a delta that is not a number (a figure missing, zero, nan or inf) is `-`, and the
table says why.

Everything taken from a log or a file name (run names, error lines) is made printable and
escaped for markdown. Output files are checked before anything is written (a directory, a path
under a file, a read-only place: one line, nothing written), then written as temps and renamed
into place together. A log of any size costs bounded memory: its step lines stream, a chunk at a
time, as numpy columns into the per-step CSV (numbers as the log printed them), and a plotted
series keeps a min and a max per pixel column. Big logs are read side by side by worker
processes (see stream_steps).

Layer 2: imports the layers below (registry, vocab, stats, logs, numtext, expdir).
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple

from cockpit import expdir, fsutil, lazy, logs, numtext, safetext, stats
from cockpit import registry as reg
from cockpit.vocab import METRICS, RunStatus, Source, Status, run_status

# Each metric's column (in vocab.METRICS order): its header, after `tail<N> ` when it is a tail
# mean, and its format.
COLUMNS = dict(zip(METRICS, (
    ("tok/sec", ".2f", True),
    ("dt (ms)", ".2f", True),
    ("mfu", ".4f", True),
    ("peak mem (MiB)", ".2f", False),
    ("total time (min)", ".2f", False),
), strict=True))

np: Any = None  # numpy, loaded when a report writes its per-step files


def _load_numpy() -> None:
    global np
    if np is None:
        np = lazy.numpy()


class ReportError(Exception):
    """Bad report input (no such dir, unknown baseline): one line for the CLI."""


@dataclass
class ReportRow:
    """One run of the table. `source` says where the figures come from: a log here, or recorded."""

    run: str
    tok_per_sec: float | None = None
    dt_ms: float | None = None
    mfu: float | None = None
    peak_mem_mib: float | None = None
    total_time_min: float | None = None
    source: str = Source.LOG
    status: str = RunStatus.UNKNOWN  # a RunStatus, or the status of the leg's state (see vocab.run_status)
    note: str | None = None  # e.g. "log ended without its final lines"
    summary: logs.LegSummary | None = None
    path: str | None = None  # the log, or the recorded dir

    @property
    def has_figures(self) -> bool:
        return any(getattr(self, m) is not None for m in METRICS)

    def value(self, metric: str) -> float | None:
        return getattr(self, metric)


@dataclass
class DeltaRow:
    metric: str  # header text, e.g. "tail50 tok/sec"
    attr: str
    baseline: float | None
    run: float | None
    delta_pct: float | None
    why: str | None = None  # why there is no delta (delta_pct None), e.g. "the baseline's figure is 0"


def headers(tail: int) -> list[str]:
    return [f"tail{tail} {h}" if tailed else h for h, _, tailed in COLUMNS.values()]


def fmt_value(attr: str, value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:{COLUMNS[attr][1]}}"


# ----------------------------------------------------------------------------------------------
# rows


def row_from_summary(s: logs.LegSummary, status: str | None = None) -> ReportRow:
    note = None
    if s.error:
        note = f"unreadable: {s.error}"
    elif s.failed:
        note = "failed" + (f": {s.error_line}" if s.error_line else "")
    elif not s.finished and s.steps_observed:
        note = "log ended without its final lines (no peak memory / total time yet)"
    elif not s.steps_observed:
        note = "no step lines in the log"
    return ReportRow(
        run=s.run,
        tok_per_sec=s.tok_per_sec,
        dt_ms=s.dt_ms,
        mfu=s.mfu,
        peak_mem_mib=s.peak_mem_mib,
        total_time_min=s.total_time_min,
        source=Source.LOG,
        status=status or s.status,
        note=note,
        summary=s,
        path=s.path,
    )


def row_from_recorded(name: str, recorded: reg.Recorded) -> ReportRow:
    """A row of figures recorded in the registry (a leg that ran elsewhere): never measured here."""
    return ReportRow(
        run=name,
        tok_per_sec=recorded.tok_per_sec,
        dt_ms=recorded.dt_ms,
        mfu=recorded.mfu,
        peak_mem_mib=recorded.peak_mem_mib,
        total_time_min=recorded.total_time_min,
        source=Source.RECORDED,
        status=RunStatus.RECORDED,
        note="recorded" + (f": {recorded.source}" if recorded.source else ""),
        path=recorded.dir,
    )


def _dir_legs(exp_dir: Path) -> tuple[list[str], dict[str, str], bool]:
    """Planned legs (plan order), their state statuses, and whether the plan has a prepare step
    (its prepare.log is no run); a dir of plain logs has none of these."""
    try:
        d = expdir.open_dir(exp_dir)
    except Exception:  # noqa: BLE001 - a broken plan or state never stops a report
        return [], {}, False
    planned = d.legs if d.plan else []
    return planned, {leg: st.status for leg, st in d.states.items()}, bool(d.plan and d.plan.get("prepare"))


def _log_order(exp_dir: Path) -> list[Path]:
    """The dir's logs in the order they ran: by modification time (end of the run), then name."""
    found = []
    for p in exp_dir.glob("*.log"):
        try:
            if p.is_file():
                found.append((p.stat().st_mtime, p.name, p))
        except OSError:
            continue
    return [p for _, _, p in sorted(found)]


def rows(exp_dir: Path | str, tail: int = 50, now: float | None = None) -> list[ReportRow]:
    """One row per log in the dir (run = log stem), plus planned legs with no log yet (not run).

    Planned legs come first in plan order, then any other logs in the order they ran. Never
    raises on a bad log: its row says what it could read.
    """
    exp_dir = Path(exp_dir)
    planned, states, prepared = _dir_legs(exp_dir)
    by_stem = {p.stem: p for p in _log_order(exp_dir) if not (prepared and p.stem == reg.PREPARE)}
    out: list[ReportRow] = []
    for leg in planned:
        log = by_stem.pop(leg, None)
        state = states.get(leg)
        if log is None:
            waits = (Status.QUEUED, Status.WAITING, Status.STOPPED, Status.FAILED)
            status = state if state in waits else RunStatus.NOT_RUN
            out.append(ReportRow(run=leg, source=Source.LOG, status=status))
            continue
        s = logs.summarize(log, tail=tail, now=now)
        out.append(row_from_summary(s, _status(s, state)))
    for stem, log in by_stem.items():
        s = logs.summarize(log, tail=tail, now=now)
        out.append(row_from_summary(s, _status(s, states.get(stem))))
    return out


def _status(s: logs.LegSummary, state: str | None) -> str:
    """The report's status word: the supervisor's record where there is one, else the log's."""
    if state is None:
        return s.status
    return run_status(state)


def delta_rows(base: ReportRow, run: ReportRow, tail: int = 50) -> list[DeltaRow]:
    out = []
    for attr, head in zip(METRICS, headers(tail), strict=True):
        b, r = base.value(attr), run.value(attr)
        out.append(DeltaRow(head, attr, b, r, *stats.pct_change(b, r)))
    return out


def resolve_baseline(exp_dir: Path, ref: str, tail: int = 50, now: float | None = None) -> ReportRow:
    """`RUN` (a log in the dir) or `OTHER_DIR/RUN` (a log in another dir) -> its row.

    OTHER_DIR may be a path, or a sibling dir's name (under the same exp_root).
    """
    if not ref.strip():
        raise ReportError("--baseline is empty: give RUN (a log in the dir) or OTHER_DIR/RUN")
    ref = ref.removesuffix(".log")
    candidates = [exp_dir / f"{ref}.log"]
    if "/" in ref:
        candidates += [Path(f"{ref}.log").expanduser(), exp_dir.parent / f"{ref}.log"]
    candidates = list(dict.fromkeys(Path(os.path.abspath(c)) for c in candidates))
    for path in candidates:
        if fsutil.is_regular(path):
            row = row_from_summary(logs.summarize(path, tail=tail, now=now))
            if path.parent.resolve() != exp_dir.resolve():
                row.run = f"{path.parent.name}/{row.run}"
            return row
    shown = safetext.oneline(ref)
    if len(candidates) == 1:
        c = candidates[0]
        where = f"no log at {c}" + ("" if fsutil.is_dir(c.parent) else f" ({c.parent} is not a dir)")
    else:
        missing = [c for c in candidates if not fsutil.is_dir(c.parent)]
        where = "no log at " + ", ".join(str(c) for c in candidates)
        if len(missing) == len(candidates):
            where = f"no log '{Path(ref).name}.log': none of {', '.join(str(c.parent) for c in candidates)} is a dir"
    raise ReportError(f"baseline '{shown}': {safetext.oneline(where)} (give RUN, a log of this dir, or DIR/RUN)")


def _plan_experiment(exp_dir: Path) -> tuple[reg.Registry, reg.Experiment] | None:
    """(registry, experiment) of a dir the cockpit launched, from its plan.json: the registry file
    the plan names (as it is now), else the plan's snapshot of it (the file moved, broke or no
    longer has the experiment). None for a dir without a plan; raises on a broken plan."""
    try:
        plan = expdir.read_json(exp_dir / "plan.json", expdir.PLAN_MAX_BYTES)
    except FileNotFoundError:
        return None
    exp_id, snap = plan["experiment"], plan.get("registry") or {}
    path = snap.get("path") or exp_dir / "plan.json"
    loaders = [lambda: reg.load(path)] if snap.get("path") else []
    if isinstance(snap.get("raw"), dict):
        loaders.append(lambda: reg.from_raw(snap["raw"], path))
    for load in loaders:
        try:
            registry = load()
        except reg.RegistryError:
            continue
        exp = registry.experiment(exp_id)
        if exp is not None:
            return registry, exp
    return None


def plan_baseline(exp_dir: Path, tail: int = 50, now: float | None = None) -> ReportRow | None:
    """The baseline the registry names for this dir's experiment (a dir launched by the cockpit,
    so `write_report(exp_dir)` from the supervisor gets deltas): its log in this dir, else its
    newest finished log in another dir under exp_root, else its recorded figures. The registry
    is the file plan.json names, else plan.json's snapshot of it. None when there is no plan,
    registry or baseline; never raises."""
    try:
        found = _plan_experiment(exp_dir)
        if found is None:
            return None
        registry, exp = found
        leg = registry.find_leg(exp.baseline, exp.id) if exp.baseline else None
        if leg is None:
            return None
        here = exp_dir / f"{leg.name}.log"
        if leg.experiment == exp.id and here.is_file():
            return row_from_summary(logs.summarize(here, tail=tail, now=now))
        for d in reversed(expdir.discover(registry.settings.exp_root)):
            if d.experiment != leg.experiment or leg.name not in d.legs or d.path.resolve() == exp_dir.resolve():
                continue
            s = logs.summarize(d.log(leg.name), tail=tail, now=now)
            if s.finished and not s.failed:
                row = row_from_summary(s)
                row.run = f"{d.path.name}/{leg.name}"
                return row
        if leg.recorded is not None:
            return row_from_recorded(f"{leg.experiment}/{leg.name} (recorded)", leg.recorded)
    except Exception:  # noqa: BLE001 - a missing or broken plan/registry only means no baseline
        return None
    return None


def flags_of(row: ReportRow, exp_dir: Path) -> dict[str, str | bool] | None:
    """The trainer flags a run ran with, its dir's path written `{exp_dir}` (so two dirs compare
    by what they asked, not where): a log of a cockpit dir from its plan.json; a recorded
    baseline from the registry the plan names. None when nothing says (a manual log)."""
    try:
        if row.source == Source.RECORDED:
            found = _plan_experiment(exp_dir)
            leg = found[0].find_leg(row.run.removesuffix(" (recorded)")) if found else None
            return reg.parse_flags(leg.trainer_args()) if leg is not None else None
        if not row.path:
            return None
        log = Path(row.path)
        plan = expdir.read_json(log.parent / "plan.json", expdir.PLAN_MAX_BYTES)
        spec = next(x for x in plan["legs"] if isinstance(x, dict) and x.get("name") == log.stem)
        where = plan.get("dir") if isinstance(plan.get("dir"), str) else str(log.parent)
        argv = [a.replace(where, reg.EXP_DIR_PLACEHOLDER) if isinstance(a, str) else str(a) for a in spec["argv"]]
        return reg.parse_flags(argv)
    except Exception:  # noqa: BLE001 - no plan, a broken one, no such leg: nothing to compare
        return None


# ----------------------------------------------------------------------------------------------
# markdown


def _md_row(cells: list[str]) -> str:
    """A markdown table row; each cell made printable, with pipes and backticks escaped."""
    return "| " + " | ".join(safetext.md_cell(c) for c in cells) + " |"


def render_table(rows_: list[ReportRow], tail: int = 50, source_column: bool = False) -> str:
    """The metric table: one row per run with figures (see the module's docstring for its columns)."""
    head = ["run", *headers(tail)] + (["source"] if source_column else [])
    lines = [_md_row(head), "| --- |" + " ---: |" * len(METRICS) + (" --- |" if source_column else "")]
    for r in rows_:
        cells = [r.run] + [fmt_value(attr, r.value(attr)) for attr in METRICS]
        if source_column:
            cells.append(r.source)
        lines.append(_md_row(cells))
    return "\n".join(lines)


def render_delta(base: ReportRow, run: ReportRow, tail: int = 50, base_label: str | None = None) -> str:
    """`metric | baseline | run | delta`: one row per metric, the delta a signed percentage."""
    label = base_label or f"baseline {base.run}"
    lines = [_md_row(["metric", label, run.run, "delta"]), "| --- | ---: | ---: | ---: |"]
    why = []
    for d in delta_rows(base, run, tail):
        lines.append(_md_row([d.metric, fmt_value(d.attr, d.baseline), fmt_value(d.attr, d.run), stats.fmt_pct(d.delta_pct)]))
        if d.delta_pct is None and d.why and d.baseline is not None and d.run is not None:
            why.append(f"{d.metric}: {d.why}")
    if why:  # a missing figure speaks for itself; a zero, nan or inf one is said
        lines += ["", "No delta (`-`) where " + "; ".join(why) + "."]
    return "\n".join(lines)


def _fmt_loss(v: float | None) -> str:
    return "-" if v is None else f"{v:.6f}"


def render_status_table(rows_: list[ReportRow]) -> str:
    """Per run: status, steps observed, last step, last loss, the error line of a failed run."""
    lines = [
        _md_row(["run", "status", "steps observed", "last step", "last loss", "error"]),
        "| --- | --- | ---: | ---: | ---: | --- |",
    ]
    for r in rows_:
        s = r.summary
        if s is None:
            lines.append(_md_row([r.run, r.status, "-", "-", "-", ""]))
            continue
        last = "-" if s.last_step is None else (f"{s.last_step}/{s.total_steps}" if s.total_steps else str(s.last_step))
        observed = str(s.steps_observed) if s.exact_count else f"~{s.steps_observed}"
        err = s.error_line or (s.error or "")
        if r.status == RunStatus.FAILED and not err and s.failure:
            err = s.failure[-1]
        lines.append(_md_row([r.run, r.status, observed, last, _fmt_loss(s.last_loss), err]))
    return "\n".join(lines)


def render_report(
    exp_dir: Path | str,
    baseline: str | None = None,
    tail: int = 50,
    links: dict[str, str] | None = None,
    now: float | None = None,
    rows_: list[ReportRow] | None = None,
    base: ReportRow | None = None,
) -> str:
    """The whole report as markdown. `links`: label -> relative path of the CSVs and plots.
    `base`: the baseline's row when the caller resolved it already."""
    exp_dir = Path(exp_dir)
    if not fsutil.is_dir(exp_dir):
        raise ReportError(f"{safetext.oneline(str(exp_dir))}: no such experiment dir")
    all_rows = rows(exp_dir, tail, now) if rows_ is None else rows_
    stamp = dt.datetime.fromtimestamp(now if now is not None else dt.datetime.now().timestamp()).astimezone()
    out = [
        f"# Report: {safetext.printable(exp_dir.name, newlines=False)}",
        "",
        f"Experiment directory: {safetext.md_code(str(exp_dir))}",
        f"Generated: {stamp.strftime('%Y-%m-%d %H:%M %z')}",
        "",
        "## Final metrics",
        "",
    ]
    with_figures = [r for r in all_rows if r.has_figures]
    if with_figures:
        out.append(render_table(with_figures, tail))
    else:
        out.append("No run has step lines yet.")
    code, text_ = safetext.md_code, _md_text
    notes = [f"- {code(r.run)}: {text_(r.note)}" for r in all_rows if r.note and r.status != RunStatus.NOT_RUN]
    not_run = [r.run for r in all_rows if r.status == RunStatus.NOT_RUN]
    if not_run:
        notes.append("- Not run yet: " + ", ".join(code(n) for n in not_run) + ".")
    short = [r for r in with_figures if r.summary and r.summary.tail_n < tail]
    if short:
        notes.append(
            f"- Fewer than {tail} step lines (mean over all of them): "
            + ", ".join(f"{code(r.run)} ({r.summary.tail_n})" for r in short if r.summary)
            + "."
        )
    if notes:
        out += ["", *notes]
    out += ["", "## Status", "", render_status_table(all_rows)]
    if base is None:
        base = resolve_baseline(exp_dir, baseline, tail, now) if baseline is not None else plan_baseline(exp_dir, tail, now)
    if base is not None and base.has_figures:
        why = "" if baseline else " (the registry's baseline of this experiment)"
        out += ["", f"## Delta vs baseline {safetext.md_code(base.run)}{why}"]
        if base.source == Source.RECORDED and base.note:
            out += ["", f"Baseline figures {_md_text(base.note)} (not measured here)."]
        base_flags = flags_of(base, exp_dir)
        for r in all_rows:
            if r.run == base.run or not r.has_figures:
                continue
            out += ["", f"### {_md_text(r.run)}", "", render_delta(base, r, tail)]
            run_flags = flags_of(r, exp_dir)
            if base_flags is not None and run_flags is not None:
                out += ["", f"args differ: {_md_text(reg.format_diff(reg.diff_flags(base_flags, run_flags)))}"]
    if links:
        out += ["", "## Files", ""]
        for label, rel in links.items():
            link = rel.replace(" ", "%20").replace("(", "%28").replace(")", "%29")
            if rel.endswith(".png"):
                out.append(f"![{label}]({link})")
            else:
                out.append(f"- [{label}]({link})")
    return "\n".join(out) + "\n"


def _md_text(text: str) -> str:
    """Text from a file or log in running markdown: printable, on one line."""
    return safetext.printable(text).replace("\n", " ")



# ----------------------------------------------------------------------------------------------
# files: report.md, CSVs, plots

STEP_COLUMNS = (
    "step", "total", "loss", "bal", "lrm", "dt_ms", "tok_per_sec", "mfu", "epoch",
    "total_time_min", "eta_min", "drop_pct",
)
SUMMARY_COLUMNS = (
    "run", "status", "source", "steps_observed", "last_step", "total_steps", "last_loss", "tail_n",
    "tok_per_sec", "dt_ms", "mfu", "peak_mem_mib", "total_time_min", "error",
)
PLOTS = (("loss", "loss"), ("tok_per_sec", "tok/sec"), ("mfu", "MFU (%)"), ("dt_ms", "dt (ms)"))
PLOT_SIZE_IN, PLOT_DPI = (8, 4.5), 100
PLOT_BUCKETS = PLOT_SIZE_IN[0] * PLOT_DPI  # a plotted series keeps a min and a max per pixel column at most


def _cell(v: object) -> str:
    """A summary CSV cell: empty for no figure; a float without float noise (numtext.computed)."""
    if v is None:
        return ""
    return numtext.computed(v) if isinstance(v, float) else str(v)


def _summary_rows(rows_: list[ReportRow]) -> Iterator[Sequence[str]]:
    yield SUMMARY_COLUMNS
    for r in rows_:
        s = r.summary
        yield [
            safetext.printable(r.run), r.status, r.source,
            _cell(s.steps_observed if s else None), _cell(s.last_step if s else None),
            _cell(s.total_steps if s else None), _cell(s.last_loss if s else None),
            _cell(s.tail_n if s else None),
            *(_cell(r.value(a)) for a in METRICS),
            safetext.printable((s.error_line or s.error or "") if s else ""),
        ]


def _csv_field(text: str) -> str:
    """One CSV field as the csv module writes it (quoted when it holds a comma, a quote...)."""
    buf = io.StringIO()
    csv.writer(buf, lineterminator="").writerow([text])
    return buf.getvalue()


class Series(NamedTuple):
    """A run's metric per step, as plotted. A long series keeps, for each pixel column of the
    plot, its first step and the least and the greatest value there (`lows`, `highs`)."""

    steps: Any  # numpy float64
    lows: Any
    highs: Any  # the same as lows when the series is drawn point by point
    decimated: bool


class _Collected:
    """A run's plotted metrics, a chunk of step lines at a time (finite values only)."""

    def __init__(self) -> None:
        self.parts: dict[str, list[tuple[Any, Any]]] = {attr: [] for attr, _ in PLOTS}

    def add(self, table: logs.StepTable) -> None:
        step = table.column("step")
        x = step.values.astype(np.float64) if step.values.dtype != object else np.array(
            [float(v) if abs(v) < 2**1000 else np.inf for v in step.values.tolist()])  # a step of 400 digits
        for attr, parts in self.parts.items():
            col = table.column(attr)
            keep = col.present & step.present & np.isfinite(col.values) & np.isfinite(x)
            if keep.any():
                parts.append((x[keep], col.values[keep]))

    def series(self) -> dict[str, Series]:
        out = {}
        for attr, parts in self.parts.items():
            if parts:
                x, y = (np.concatenate(a) for a in zip(*parts, strict=True))
                out[attr] = decimate(x, y, PLOT_BUCKETS)
        return out


def decimate(x: Any, y: Any, buckets: int) -> Series:
    """A series to draw `buckets` pixel columns wide. Up to 2 points a column it is kept as it
    is; a longer one keeps, per column's range of x, its first x and its least and greatest y:
    drawn as a band from least to greatest, it covers every pixel the whole series covers."""
    n = len(x)
    if n <= 2 * buckets:
        return Series(x, y, y, False)
    if (np.diff(x) < 0).any():  # a run restarted from a checkpoint: its steps go back
        order = np.argsort(x, kind="stable")
        x, y = x[order], y[order]
    lo, hi = x[0], x[-1]
    column = np.minimum(((x - lo) * (buckets / (hi - lo))).astype(np.int64), buckets - 1) if hi > lo else np.zeros(n, np.int64)
    starts = np.flatnonzero(np.concatenate(([True], column[1:] != column[:-1])))
    return Series(x[starts], np.minimum.reduceat(y, starts), np.maximum.reduceat(y, starts), True)


PARALLEL_MIN_BYTES = 64 << 20  # logs of less, all told, are read in this process: a worker's start costs more
PARALLEL_MAX_WORKERS = 8


def stream_steps(rows_: list[ReportRow], out: BinaryIO, tail: int = 50) -> dict[str, dict[str, Series]]:
    """Write every step line of every run's log to `out` as CSV rows (bytes), numbers as the log
    printed them; return each run's plotted series.

    Each log is read a chunk of lines at a time. Big logs (PARALLEL_MIN_BYTES together) are read
    side by side by worker processes (`python -c`, one per CPU), each writing its logs' rows to part
    files in a private temp dir; the parts are copied into `out` in the runs' order, the same bytes
    as one after the other. A log a worker could not do is read here."""
    out.write((",".join(["run", *STEP_COLUMNS]) + "\r\n").encode())
    jobs = [(r.run, r.path) for r in rows_ if r.path and r.summary and not r.summary.error]
    workers = _workers([path for _, path in jobs])
    tmp = tempfile.mkdtemp(prefix="cockpit-report-") if workers > 1 else None  # private: 0700
    try:
        done = _in_workers(jobs, tail, workers, tmp) if tmp else {}  # job -> (its part file, its series)
        series: dict[str, dict[str, Series]] = {}
        for i, (run, path) in enumerate(jobs):
            if i in done:
                part, found = done[i]
                _append(part, out)
                os.unlink(part)
            else:
                found = _steps_csv(path, run, tail, out)
            if found:
                series[run] = found
        return series
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)


def _append(part: str, out: BinaryIO) -> None:
    """The bytes of file `part` after what `out` holds: copied by the kernel where it can."""
    with open(part, "rb") as f:
        try:
            out.flush()
            while os.copy_file_range(f.fileno(), out.fileno(), 1 << 30):
                pass
        except (AttributeError, OSError, io.UnsupportedOperation):  # no such call, or `out` is no file
            f.seek(os.lseek(f.fileno(), 0, os.SEEK_CUR))  # on from what the kernel copied, if anything
            shutil.copyfileobj(f, out, 1 << 20)


def _workers(paths: list[str]) -> int:
    """How many processes read these logs: 1 unless there are several and they are big."""
    try:
        size = sum(os.stat(p).st_size for p in paths)
    except OSError:
        return 1
    if len(paths) < 2 or size < PARALLEL_MIN_BYTES:
        return 1
    return max(1, min(len(paths), os.cpu_count() or 1, PARALLEL_MAX_WORKERS))


def _in_workers(jobs: list[tuple[str, str]], tail: int, workers: int, tmp: str) -> dict[int, tuple[str, dict[str, Series]]]:
    """Jobs read by `workers` processes, job i by worker i % workers: {job: (part file, series)}
    for each one a worker did (its part complete, its series pickled beside it)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")) if p)}
    procs = []
    for w in range(workers):
        mine = list(range(w, len(jobs), workers))
        spec = os.path.join(tmp, f"w{w}.jobs")
        with open(fsutil.create_new(spec), "wb") as f:
            pickle.dump([(i, jobs[i][0], jobs[i][1], tail, os.path.join(tmp, f"{i}.csv")) for i in mine], f)
        try:
            procs.append(subprocess.Popen([sys.executable, "-c", _WORKER, spec], env=env, stdin=subprocess.DEVNULL,
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        except OSError:
            continue  # its logs are read here
    try:
        for proc in procs:
            proc.wait()
    finally:  # interrupted: no worker outlives the report
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    done = {}
    for i in range(len(jobs)):
        part, result = os.path.join(tmp, f"{i}.csv"), os.path.join(tmp, f"{i}.series")
        if os.path.exists(result):  # written last: the part is complete
            with open(result, "rb") as f:
                done[i] = (part, pickle.load(f))
    return done


_WORKER = "import sys; from cockpit.report import _worker; _worker(sys.argv[1])"


def _worker(spec: str) -> None:
    """A worker process: its jobs' part files, and each one's series (pickled) once its part is done."""
    with open(spec, "rb") as f:
        jobs = pickle.load(f)
    for i, run, path, tail, part in jobs:
        with open(fsutil.create_new(part), "wb") as f:
            found = _steps_csv(path, run, tail, f)
        with open(fsutil.create_new(os.path.join(os.path.dirname(part), f"{i}.series")), "wb") as f:
            pickle.dump(found, f)


def _steps_csv(path: str, run: str, tail: int, out: BinaryIO) -> dict[str, Series]:
    """One log's step lines as CSV rows into `out`; its plotted series. A log that cannot be read
    (any more) adds the rows read so far, and no series."""
    _load_numpy()
    prefix = (_csv_field(safetext.printable(run)) + ",").encode()
    kept = _Collected()

    def sink(table: logs.StepTable) -> None:
        out.write(numtext.csv_text(prefix, [_cells(table.column(name), name in logs.INT_FIELDS)
                                            for name in STEP_COLUMNS]))
        kept.add(table)

    try:
        logs.parse_file(path, tail=tail, on_steps=sink)
    except (OSError, ValueError):
        return {}
    return kept.series()


def _cells(col: logs.Column, integer: bool) -> Any:
    """A column's CSV cells: str() of each number, from the characters the log printed it with
    when the parse kept them, else from its value."""
    if not col.present.any():
        return np.zeros((len(col.present), 0), np.uint8)
    if col.text is not None:
        return numtext.token_cells(col.text, col.present, col.values, integer)
    if integer:
        return numtext.int_cells(col.values, col.present)
    return numtext.float_cells(col.values, col.present, col.decimals)


def draw_plots(series: dict[str, dict[str, Series]]) -> dict[str, bytes]:
    """PNG per metric (loss, tok/sec, MFU, dt) per step, one line (or band) per run: attr -> PNG
    bytes. A run keeps its colour in every plot."""
    # function-level: matplotlib is heavy, and only a report with plots needs it (Agg: no display)
    from matplotlib import rcParams
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    colours = rcParams["axes.prop_cycle"].by_key()["color"]
    made: dict[str, bytes] = {}
    for attr, label in PLOTS:
        lines = [(i, run, kept[attr]) for i, (run, kept) in enumerate(series.items()) if attr in kept]
        if not lines:
            continue
        fig = Figure(figsize=PLOT_SIZE_IN, dpi=PLOT_DPI)
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        decimated = False
        for i, run, s in lines:
            name, colour = safetext.printable(run, newlines=False), colours[i % len(colours)]
            if s.decimated:  # a band: stroking a zigzag through every min and max costs ten times more
                ax.fill_between(s.steps, s.lows, s.highs, color=colour, alpha=0.4, linewidth=0.8, label=name)
            else:
                ax.plot(s.steps, s.lows, color=colour, label=name, linewidth=1.2)
            decimated |= s.decimated
        ax.set_xlabel("step")
        ax.set_ylabel(label)
        ax.set_title(f"{label} per step" + (" (long runs: least to greatest per pixel column)" if decimated else ""))
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8, loc="upper right")  # a fixed place: "best" searches every point of every line
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        made[attr] = buf.getvalue()
    return made


def output_files(out: Path, plots: bool = True) -> dict[str, Path]:
    """Every file a report at `out` writes: the markdown, its two CSVs, its plots."""
    files = {"report": out, "steps": out.with_name(f"{out.stem}_steps.csv"),
             "summary": out.with_name(f"{out.stem}_summary.csv")}
    if plots:
        files.update({attr: out.with_name(f"{out.stem}_{attr}.png") for attr, _ in PLOTS})
    return files


def check_output(out: Path, plots: bool = True) -> None:
    """Raise ReportError (one line) when any file of a report at `out` cannot be written there;
    checked before anything is written anywhere."""
    for path in output_files(out, plots).values():
        if why := fsutil.output_problem(path):
            raise ReportError(f"--out-md {safetext.oneline(str(out))}: {safetext.oneline(why)}")


def write_report(
    exp_dir: Path | str,
    out_md: Path | str | None = None,
    baseline: str | None = None,
    tail: int = 50,
    plots: bool = True,
    now: float | None = None,
) -> Path:
    """Write the report (default `<exp_dir>/report.md`) with its CSVs and plots beside it.

    The supervisor calls this after every leg: a log it cannot read becomes a row saying so,
    and a plot that cannot be drawn becomes a note; only an unusable exp_dir or out path, or an
    unknown baseline, raises (ReportError or OSError), and then nothing is written. Files
    inside the dir are never written through a symlink planted there.
    """
    exp_dir = Path(exp_dir)
    if not fsutil.is_dir(exp_dir):
        raise ReportError(f"{safetext.oneline(str(exp_dir))}: no such experiment dir")
    out = Path(os.path.abspath(os.path.expanduser(out_md))) if out_md is not None else exp_dir / "report.md"
    check_output(out, plots)
    files = output_files(out, plots)
    root = exp_dir if fsutil.is_inside(out.parent, exp_dir) else None
    all_rows = rows(exp_dir, tail, now)
    base = resolve_baseline(exp_dir, baseline, tail, now) if baseline is not None else None  # fails before writing
    links = {"per-step CSV": files["steps"].name, "summary CSV": files["summary"].name}
    with fsutil.StagedFiles(root) as staged:
        with staged.open(files["steps"], "wb") as f:
            series = stream_steps(all_rows, f, tail)
        with staged.open(files["summary"], "w") as f:
            csv.writer(f).writerows(_summary_rows(all_rows))
        plot_note = None
        if plots and series:
            try:
                pngs = draw_plots(series)
            except Exception as e:  # noqa: BLE001 - a plot problem must not lose the report
                pngs, plot_note = {}, f"plots not drawn: {type(e).__name__}: {e}"
            for attr, label in PLOTS:
                if attr in pngs:
                    with staged.open(files[attr], "wb") as f:
                        f.write(pngs[attr])
                    links[label] = files[attr].name
        text = render_report(exp_dir, baseline, tail, links, now, rows_=all_rows, base=base)
        if plot_note:
            text += f"\n{_md_text(plot_note)}\n"
        with staged.open(out, "w") as f:
            f.write(text)
    return out
