"""The report of an experiment dir: its metric tables, deltas against a baseline with their noise
verdicts, each run's status.

Data first, text second: `rows()` and `delta_rows()` give dataclasses the TUI turns into
DataTables; `render_*` turn the same rows into markdown. A dir holding only the `*.log` files
of manual runs (no plan, no state) is a valid input: each log is a run named by its stem.

The metric table has one row per run: `| run | tail50 tok/sec | tail50 dt (ms) | tail50 mfu |
peak mem (MiB) | total time (min) |`, the tail columns being means over the last 50 step lines
(`--tail N` renames them). Numbers keep fixed decimals, so tables of different runs and days line
up: tok/sec, dt, peak memory and total time with 2, MFU with 4, deltas as signed percentages with
2 (`+2.70%`); a delta that is not a number (a figure missing, zero, nan or inf) is `-`, and the
table says why. A second table gives quality and routing beside speed: `| run | min val bpb |
last val bpb | final loss | tail50 drop % | tail50 bal |`, `-` where a run has no such figure.

A leg run with repeats (`<leg>.r0`, `<leg>.r1`, ...) has a row per repeat and an aggregate row
(`mean ± std` across the repeats).

Deltas: `| metric | baseline | run | delta | 95% CI | verdict |`. The baseline is the one
`baseline.choose` decides (pinned at launch: the run's own dir's, else named: `baseline from
<dir>`, with what differs between the two launches; a pinned run that failed gives no deltas,
said with the `--baseline` that compares with another). The interval is that of the difference
of the two means (stats.compare): from each tail window's spread, correlation between steps
accounted for; for a leg with repeats, their windows and the spread between them combined
(stats.pooled), the cell saying what it rests on (`±0.98% (n=2 repeats)`) and a line under the
table how well so few repeats know their spread. The verdict is `significant` when the interval
excludes 0, `within noise` when it does not (with the repeats that would resolve it), `-` without
per-step samples or repeats (peak memory, total time, validation bpb and final loss of a single
run).

Everything taken from a log or a file name (run names, error lines) is made printable and
escaped for markdown. Output files are checked before anything is written (a directory, a path
under a file, a read-only place: one line, nothing written), then written as temps and renamed
into place together. A log of any size costs bounded memory: its step lines stream, a chunk at a
time, as numpy columns into the per-step CSV (numbers as the log printed them; step_files), and a
plotted series keeps a min and a max per pixel column (plots). Big logs are read side by side by
worker processes (step_files.stream_steps).

Layer 2: imports the layers below (registry, vocab, stats, logs, numtext, plan, expdir), baseline, plots
and step_files.
"""

from __future__ import annotations

import csv
import datetime as dt
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cockpit import baseline, expdir, flags, fsutil, logs, numtext, safetext, stats, step_files
from cockpit import plots as plots_
from cockpit import registry as reg
from cockpit.baseline import Baseline
from cockpit.plan import Plan, PlanError
from cockpit.vocab import METRICS, QUALITY, STEP_METRICS, RunStatus, Source, Status, Verdict, run_status

# Each metric's column (in vocab.METRICS order): its header, after `tail<N> ` when it is a tail
# mean, and its format.
COLUMNS = dict(zip(METRICS, (
    ("tok/sec", ".2f", True),
    ("dt (ms)", ".2f", True),
    ("mfu", ".4f", True),
    ("peak mem (MiB)", ".2f", False),
    ("total time (min)", ".2f", False),
), strict=True))
# The quality and routing table's columns (vocab.QUALITY order), the same way.
QUALITY_COLUMNS = dict(zip(QUALITY, (
    ("min val bpb", ".6f", False),
    ("last val bpb", ".6f", False),
    ("final loss", ".6f", False),
    ("drop %", ".2f", True),
    ("bal", ".4f", True),
), strict=True))
FORMATS = {**COLUMNS, **QUALITY_COLUMNS}
DELTA_QUALITY = ("min_val_bpb", "final_loss", "drop_pct")  # the quality rows of a delta table
SAMPLED = (*STEP_METRICS, "drop_pct")  # figures with per-step samples: a single run's verdict from its tail

class ReportError(Exception):
    """Bad report input (no such dir, unknown baseline): one line for the CLI."""


@dataclass
class ReportRow:
    """One run of the tables. `source` says where the figures come from: a log here, or recorded.
    An aggregate row (a leg run with repeats) holds its repeats' rows in `repeats`: its figures are
    their means."""

    run: str
    tok_per_sec: float | None = None
    dt_ms: float | None = None
    mfu: float | None = None
    peak_mem_mib: float | None = None
    total_time_min: float | None = None
    min_val_bpb: float | None = None
    last_val_bpb: float | None = None
    final_loss: float | None = None
    drop_pct: float | None = None  # tail means
    bal: float | None = None
    source: str = Source.LOG
    status: str = RunStatus.UNKNOWN  # a RunStatus, or the status of the leg's state (see vocab.run_status)
    note: str | None = None  # e.g. "log ended without its final lines"
    summary: logs.LegSummary | None = None
    path: str | None = None  # the log, or the recorded dir
    repeats: list[ReportRow] = field(default_factory=list)  # an aggregate row's repeats

    @property
    def has_figures(self) -> bool:
        return any(getattr(self, m) is not None for m in METRICS)

    @property
    def is_aggregate(self) -> bool:
        return bool(self.repeats)

    def value(self, metric: str) -> float | None:
        return getattr(self, metric)

    def estimate(self, metric: str) -> stats.Estimate | None:
        """The figure's mean with its 95% interval: for an aggregate row, over its repeats, each
        one's tail window and the spread between them combined (stats.pooled); else from the tail
        window's steps; None without samples."""
        if self.repeats:
            return stats.pooled([r.estimate(metric) or r.value(metric) for r in self.repeats])
        if self.summary is not None and metric in self.summary.tail_values:
            return stats.estimate(self.summary.tail_values[metric])
        return None

    def spread(self, metric: str) -> float | None:
        """An aggregate row's standard deviation across its repeats (None for a single run)."""
        e = self.estimate(metric) if self.repeats else None
        return e.std if e is not None else None


@dataclass
class DeltaRow:
    metric: str  # header text, e.g. "tail50 tok/sec"
    attr: str
    baseline: float | None
    run: float | None
    delta_pct: float | None
    why: str | None = None  # why there is no delta (delta_pct None), e.g. "the baseline's figure is 0"
    ci_pct: float | None = None  # half-width of the delta's 95% interval, in percent
    verdict: Verdict = Verdict.NONE
    runs: tuple[int, int] = (1, 1)  # the runs the interval rests on: (baseline's, run's); >1: repeats
    resolve: stats.Resolve | None = None  # a `within noise` verdict: the repeats that would resolve it

    @property
    def ci_text(self) -> str:
        """The interval's cell: `±1.74%`, with what it rests on when repeats are in it
        (`±3.21% (n=2 repeats)`)."""
        basis = stats.fmt_runs(stats.Delta(self.delta_pct, self.ci_pct, self.verdict, runs=self.runs))
        text = stats.fmt_ci(self.ci_pct)
        return f"{text} ({basis})" if basis and self.ci_pct is not None else text


def headers(tail: int) -> list[str]:
    return [f"tail{tail} {h}" if tailed else h for h, _, tailed in COLUMNS.values()]


def quality_headers(tail: int) -> list[str]:
    return [f"tail{tail} {h}" if tailed else h for h, _, tailed in QUALITY_COLUMNS.values()]


def fmt_value(attr: str, value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:{FORMATS[attr][1]}}"


def fmt_cell(r: ReportRow, attr: str) -> str:
    """A table cell: the figure, and for an aggregate row `mean ± std` across its repeats."""
    text = fmt_value(attr, r.value(attr))
    sd = r.spread(attr) if r.value(attr) is not None else None
    return text if sd is None else f"{text} ± {fmt_value(attr, sd)}"


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
        min_val_bpb=s.min_val_bpb,
        last_val_bpb=s.last_val_bpb,
        final_loss=s.last_loss,
        drop_pct=s.tail_drop_pct,
        bal=s.tail_bal,
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


def aggregate(leg: str, repeats: list[ReportRow]) -> ReportRow:
    """The aggregate row of a leg's repeats: each figure the mean over the repeats that have it."""
    row = ReportRow(run=leg, repeats=list(repeats), source=Source.LOG)
    for attr in (*METRICS, *QUALITY):
        vals = [v for r in repeats if (v := r.value(attr)) is not None and math.isfinite(v)]
        setattr(row, attr, math.fsum(vals) / len(vals) if vals else None)
    statuses = {r.status for r in repeats}
    row.status = statuses.pop() if len(statuses) == 1 else "mixed"
    row.note = f"mean ± std over {len(repeats)} repeats"
    return row


def _dir_legs(exp_dir: Path) -> tuple[list[str], dict[str, str], dict[str, str], bool]:
    """Planned runs (plan order), their state statuses, each repeat's leg, and whether the plan has
    a prepare step (its prepare.log is no run); a dir of plain logs has no plan or states, and its
    repeats are known by their names."""
    try:
        d = expdir.open_dir(exp_dir)
    except Exception:  # noqa: BLE001 - a broken plan or state never stops a report
        return [], {}, {}, False
    planned = d.legs if d.plan is not None else []
    legs = {run.name: run.leg for run in (d.plan.runs if d.plan is not None else ()) if run.leg is not None}
    prepared = d.plan is not None and d.plan.prepare is not None
    return planned, {leg: st.status for leg, st in d.states.items()}, legs, prepared


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
    """One row per log in the dir (run = log stem), plus planned legs with no log yet (not run),
    and after the last repeat of a leg run with repeats, the leg's aggregate row.

    Planned legs come first in plan order, then any other logs in the order they ran. Never
    raises on a bad log: its row says what it could read.
    """
    exp_dir = Path(exp_dir)
    planned, states, legs, prepared = _dir_legs(exp_dir)
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
    return with_aggregates(out, legs if planned else None)


def with_aggregates(rows_: list[ReportRow], legs: dict[str, str] | None = None) -> list[ReportRow]:
    """The rows, with an aggregate row after the last repeat of each leg run with repeats (two or
    more with figures). `legs`: run -> leg from a plan; without one, a run's name says it."""
    groups: dict[str, list[ReportRow]] = {}
    for r in rows_:
        leg = legs.get(r.run) if legs is not None else reg.split_repeat(r.run)[0]
        if leg is not None and leg != r.run:
            groups.setdefault(leg, []).append(r)
    last = {id(g[-1]): leg for leg, g in groups.items() if sum(r.has_figures for r in g) >= 2}
    out = []
    for r in rows_:
        out.append(r)
        if id(r) in last:
            leg = last[id(r)]
            out.append(aggregate(leg, [x for x in groups[leg] if x.has_figures]))
    return out


def _status(s: logs.LegSummary, state: str | None) -> str:
    """The report's status word: the supervisor's record where there is one, else the log's."""
    if state is None:
        return s.status
    return run_status(state)


def delta_rows(base: ReportRow, run: ReportRow, tail: int = 50) -> list[DeltaRow]:
    """A row per metric (speed, then min val bpb, final loss and drop %): both figures, the change
    in percent of the baseline's, and its 95% interval and verdict where both have samples."""
    out = []
    attrs = (*METRICS, *DELTA_QUALITY)
    heads = dict(zip(METRICS, headers(tail), strict=True)) | dict(zip(QUALITY, quality_headers(tail), strict=True))
    for attr in attrs:
        b, r = base.value(attr), run.value(attr)
        pct, why = stats.pct_change(b, r)
        d = stats.compare(base.estimate(attr), run.estimate(attr)) if pct is not None else None
        if d is None or d.pct is None:
            out.append(DeltaRow(heads[attr], attr, b, r, pct, why))
            continue
        out.append(DeltaRow(heads[attr], attr, b, r, pct, why, d.ci_pct, d.verdict, d.runs, d.resolve))
    return out


# ----------------------------------------------------------------------------------------------
# the baseline


def find_log(exp_dir: Path, ref: str) -> Path:
    """`RUN` (a log in the dir) or `OTHER_DIR/RUN` (a log in another dir) -> the log's path.

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
            return path
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


def plan_registry(exp_dir: Path) -> tuple[reg.Registry, str] | None:
    """(registry, experiment id) of a dir the cockpit launched, from its plan.json: the registry
    file the plan names (as it is now), else the plan's snapshot of it (the file moved, broke or no
    longer has the experiment). None for a dir without a usable plan."""
    try:
        plan = Plan.read(exp_dir)
    except PlanError:
        return None
    registry = plan.registry_of(exp_dir)
    return (registry, plan.experiment) if registry is not None else None


def find_baseline(exp_dir: Path, ref: str | None = None, registry: reg.Registry | None = None) -> Baseline | None:
    """The baseline of a dir's runs: `--baseline REF` when given (ReportError when no such log),
    else baseline.choose with the registry of the dir's plan, else `registry` (a dir of plain logs
    whose name says its experiment). None when no registry names one; never raises then."""
    if ref is not None:
        return baseline.explicit(exp_dir, find_log(exp_dir, ref))
    try:
        found = plan_registry(exp_dir)
        if found is None and registry is not None:
            d = expdir.open_dir(exp_dir)
            found = (registry, d.experiment) if d.plan is None and registry.experiment(d.experiment) else None
        if found is None:
            return None
        return baseline.choose(*found, exp_dir)
    except Exception:  # noqa: BLE001 - a missing or broken plan/registry only means no baseline
        return None


def baseline_row(b: Baseline, tail: int = 50, now: float | None = None) -> ReportRow:
    """The baseline's figures as a row: its log (the aggregate of its repeats), or recorded; a
    row without figures when it has none to give (`b.problem`: the pinned run failed, ...)."""
    if b.problem:
        return ReportRow(run=b.leg, note=b.problem)
    if b.dir is None:
        return row_from_recorded(f"{b.experiment}/{b.leg}" if b.experiment else b.leg, b.recorded or reg.Recorded())
    runs = [row_from_summary(logs.summarize(b.dir / f"{r}.log", tail=tail, now=now)) for r in b.runs]
    row = runs[0] if len(runs) == 1 else aggregate(b.leg, runs)
    row.run = b.leg
    return row


def flags_of(row: ReportRow, exp_dir: Path) -> dict[str, str | bool] | None:
    """The trainer flags a run ran with, its dir's path written `{exp_dir}` (so two dirs compare
    by what they asked, not where): a log of a cockpit dir from its plan.json; a recorded
    baseline from the registry the plan names. None when nothing says (a manual log)."""
    try:
        if row.source == Source.RECORDED:
            found = plan_registry(exp_dir)
            leg = found[0].find_leg(row.run.removesuffix(" (recorded)")) if found else None
            return flags.parse_flags(leg.trainer_args()) if leg is not None else None
        if not row.path:
            return None
        log = Path(row.path)
        plan = Plan.read(log.parent)  # a run a continuation added is in its plan.<n>.json
        spec = plan.run(log.stem)
        if spec is None or not spec.argv:
            return None
        where = plan.dir or str(log.parent)
        return flags.parse_flags([a.replace(where, flags.EXP_DIR_PLACEHOLDER) for a in spec.argv])
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
        cells = [r.run] + [fmt_cell(r, attr) for attr in METRICS]
        if source_column:
            cells.append(r.source)
        lines.append(_md_row(cells))
    return "\n".join(lines)


def render_quality(rows_: list[ReportRow], tail: int = 50) -> str:
    """The quality and routing table: `| run | min val bpb | last val bpb | final loss |
    tail50 drop % | tail50 bal |`, `-` for a figure a run does not have (never 0)."""
    lines = [_md_row(["run", *quality_headers(tail)]), "| --- |" + " ---: |" * len(QUALITY)]
    for r in rows_:
        lines.append(_md_row([r.run] + [fmt_cell(r, attr) for attr in QUALITY]))
    return "\n".join(lines)


def render_delta(base: ReportRow, run: ReportRow, tail: int = 50, base_label: str | None = None) -> str:
    """`metric | baseline | run | delta | 95% CI | verdict`: one row per metric (see delta_rows)."""
    label = base_label or f"baseline {base.run}"
    lines = [_md_row(["metric", label, run.run, "delta", "95% CI", "verdict"]),
             "| --- | ---: | ---: | ---: | ---: | --- |"]
    why, resolve = [], []
    for d in delta_rows(base, run, tail):
        if d.attr in DELTA_QUALITY and d.baseline is None and d.run is None:
            continue  # neither run has the figure (no validation, dropless routing): no row of dashes
        lines.append(_md_row([d.metric, fmt_value(d.attr, d.baseline), fmt_value(d.attr, d.run),
                              stats.fmt_pct(d.delta_pct), d.ci_text, d.verdict]))
        if d.delta_pct is None and d.why and d.baseline is not None and d.run is not None:
            why.append(f"{d.metric}: {d.why}")
        if d.verdict == Verdict.WITHIN_NOISE and d.resolve is not None and d.delta_pct:
            resolve.append(f"{d.metric} ({stats.fmt_pct(d.delta_pct)}): {stats.fmt_resolve(d.resolve)}")
    if why:  # a missing figure speaks for itself; a zero, nan or inf one is said
        lines += ["", "No delta (`-`) where " + "; ".join(why) + "."]
    if resolve:
        lines += ["", "To resolve `within noise` if the difference is real (80% power): " + "; ".join(resolve) + "."]
    lines += [f"\n{line}" for line in repeat_lines(base, run, label, tail)]
    return "\n".join(lines)


def repeat_lines(base: ReportRow, run: ReportRow, base_label: str, tail: int = 50, metric: str = "tok_per_sec") -> list[str]:
    """For each side run with repeats: how much its repeats vary beyond their tail windows, and how
    well so few repeats know it (stats.Spread), on the tail tok/sec."""
    out = []
    head = headers(tail)[METRICS.index(metric)]
    for name, row in ((base_label, base), (run.run, run)):
        e = row.estimate(metric) if row.is_aggregate else None
        if e is None or e.spread is None or not e.mean or not math.isfinite(e.mean):
            continue
        sp, pct = e.spread, 100.0 / abs(e.mean)
        out.append(f"{safetext.md_code(name)}: n={sp.repeats} repeats; between-repeat sd of {head} "
                   f"{sp.between * pct:.2f}% of the mean (95% upper bound {sp.between_hi * pct:.2f}%: "
                   f"{sp.repeats} repeats know it {'poorly' if sp.repeats < 5 else 'roughly'}), each window's own "
                   f"{sp.within * pct:.2f}%.")
    return out


def no_delta_text(b: Baseline) -> str:
    """Why a dir has no deltas although it has a baseline (the pinned run failed, ...), and how to
    compare with another run for one report."""
    text = f"No deltas: {_md_text(b.problem or 'the baseline has no figures')}"
    text += ". The baseline was pinned when this dir was launched and is never replaced by another" if b.pinned else ""
    return text + (f". To compare with another run: {safetext.md_code(b.instead)}." if b.instead else ".")


def baseline_notes(b: Baseline, exp_dir: Path | None = None) -> list[str]:
    """The lines a delta section says about its baseline: where it comes from, when not the run's
    own dir (`exp_dir`), and what differs between its launch and the run's."""
    if b.own:
        return []
    if b.dir is None:
        rec = b.recorded.source if b.recorded is not None and b.recorded.source else None
        return [f"Baseline figures recorded{': ' + rec if rec else ''} (not measured here; no per-step samples, "
                "so no verdict)."]
    sibling = exp_dir is not None and os.path.realpath(b.dir.parent) == os.path.realpath(Path(exp_dir).parent)
    head = f"the baseline ran in another launch, {safetext.md_code(b.dir.name if sibling else str(b.dir))}"
    head += " (pinned when this dir was launched)" if b.pinned else ""
    if b.unknown:
        return [f"**Warning:** {head}; {_md_text(b.unknown)}."]
    if not b.differs:
        return [f"Note: {head}; what it recorded of its origin (git, host, GPUs, versions, environment, "
                f"the baseline's args) is the same as this dir's."]
    return [f"**Warning:** {head}, which differs from this dir's in: " + "; ".join(_md_text(x) for x in b.differs) + "."]


def _fmt_loss(v: float | None) -> str:
    return "-" if v is None else f"{v:.6f}"


def render_status_table(rows_: list[ReportRow]) -> str:
    """Per run: status, steps observed, last step, last loss, the error line of a failed run."""
    lines = [
        _md_row(["run", "status", "steps observed", "last step", "last loss", "error"]),
        "| --- | --- | ---: | ---: | ---: | --- |",
    ]
    for r in rows_:
        if r.is_aggregate:
            continue
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


FIND = object()  # render_report's `base` when the caller did not look for one


def render_report(
    exp_dir: Path | str,
    baseline: str | None = None,
    tail: int = 50,
    links: dict[str, str] | None = None,
    now: float | None = None,
    rows_: list[ReportRow] | None = None,
    base: Baseline | None | object = FIND,
    registry: reg.Registry | None = None,
) -> str:
    """The whole report as markdown. `links`: label -> relative path of the CSVs and plots.
    `base`: the baseline when the caller found it already (find_baseline; None: none), else it is
    found here; `registry`: for a dir of plain logs, the registry whose experiment its name says
    (a launched dir has its plan's)."""
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
            f"- Fewer than {tail} step lines (mean over all of them but step 0): "
            + ", ".join(f"{code(r.run)} ({r.summary.tail_n})" for r in short if r.summary)
            + "."
        )
    if notes:
        out += ["", *notes]
    if with_figures:
        out += ["", "## Quality and routing", "", render_quality(with_figures, tail)]
    out += ["", "## Status", "", render_status_table(all_rows)]
    if base is FIND:
        base = find_baseline(exp_dir, baseline, registry)
    assert base is None or isinstance(base, Baseline)
    base_row = baseline_row(base, tail, now) if base is not None else None
    if base is not None and base_row is not None and base_row.has_figures:
        where = f" ({_md_text(base.source)})" if base.source and base.dir is not None else ""
        named = "" if base.explicit else " (the registry's baseline of this experiment)" if base.own else ""
        name = f"{base_row.run} (recorded)" if base.dir is None else base.leg
        done = set(base.runs) if base.dir is not None and base.own else set()
        sections = []
        base_flags = flags_of(base_row, exp_dir)
        for r in all_rows:
            if r.run in done or (r.run == base.leg and base.own) or not r.has_figures:
                continue
            if not r.is_aggregate and _repeat_with_aggregate(r, all_rows):
                continue  # a repeat: its leg's aggregate row has the delta
            title = (f"{r.run} ({len(r.repeats)} repeats: interval from their windows and the spread between them)"
                     if r.is_aggregate else r.run)
            sections += ["", f"### {_md_text(title)}", "", render_delta(base_row, r, tail, base.column)]
            run_flags = flags_of(r, exp_dir)
            if base_flags is not None and run_flags is not None:
                sections += ["", f"args differ: {_md_text(flags.format_diff(flags.diff_flags(base_flags, run_flags)))}"]
        if sections:  # a dir holding only the baseline has no delta
            out += ["", f"## Delta vs baseline {safetext.md_code(name)}{where}{named}"]
            out += [f"\n{line}" for line in baseline_notes(base, exp_dir)]
            out += sections
    elif base is not None and base.problem and any(r.has_figures for r in all_rows):
        out += ["", f"## Delta vs baseline {safetext.md_code(base.leg)}", "", no_delta_text(base)]
    if links:
        out += ["", "## Files", ""]
        for label, rel in links.items():
            link = rel.replace(" ", "%20").replace("(", "%28").replace(")", "%29")
            if rel.endswith(".png"):
                out.append(f"![{label}]({link})")
            else:
                out.append(f"- [{label}]({link})")
    return "\n".join(out) + "\n"


def _repeat_with_aggregate(r: ReportRow, rows_: list[ReportRow]) -> bool:
    return any(r in a.repeats for a in rows_ if a.is_aggregate)


def _md_text(text: str) -> str:
    """Text from a file or log in running markdown: printable, on one line."""
    return safetext.printable(text).replace("\n", " ")



# ----------------------------------------------------------------------------------------------
# files: report.md, its CSVs and plots (see step_files and plots)

SUMMARY_COLUMNS = (
    "run", "status", "source", "steps_observed", "last_step", "total_steps", "last_loss", "tail_n",
    "tok_per_sec", "dt_ms", "mfu", "peak_mem_mib", "total_time_min", "error",
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
            safetext.printable(r.run), r.status, r.source,
            _cell(s.steps_observed if s else None), _cell(s.last_step if s else None),
            _cell(s.total_steps if s else None), _cell(s.last_loss if s else None),
            _cell(s.tail_n if s else None),
            *(_cell(r.value(a)) for a in METRICS),
            safetext.printable((s.error_line or s.error or "") if s else ""),
        ]


FIGURES = ("full", "paper")  # plots' titles: with the experiment, dir and commit, or without (for a paper)
BaselineBar = tuple[str, ReportRow]  # the baseline's bar when it is no row of the dir: (its name, its figures)


def _tail_bars(rows_: Sequence[ReportRow], tail: int, extra: BaselineBar | None = None) -> list[plots_.Bars]:
    """(metric label, [(run, estimate)]) of each speed metric some run has a nonzero tail mean of;
    a leg with repeats as its aggregate (the interval from their spread); `extra`: the baseline
    from another dir, or recorded (a bar without an interval), first."""
    out = []
    for attr in STEP_METRICS:
        runs = [(r.run, e) for r in rows_ if not _repeat_with_aggregate(r, list(rows_))
                and (e := r.estimate(attr)) is not None and math.isfinite(e.mean)]
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


def baseline_in_files(b: Baseline | None, tail: int = 50, now: float | None = None
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
    return plots_.BaselineMark(frozenset({name for name, _ in jobs} | {label}), label), jobs, (label, baseline_row(b, tail, now))


def output_files(out: Path, plots: bool = True, svg: bool = False) -> dict[str, Path]:
    """Every file a report at `out` writes: the markdown, its two CSVs, its plots (PNG, and with
    `svg` each as SVG too, keyed `<plot>.svg`)."""
    files = {"report": out, "steps": out.with_name(f"{out.stem}_steps.csv"),
             "summary": out.with_name(f"{out.stem}_summary.csv")}
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
    tail: int = 50,
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
    all_rows = rows(exp_dir, tail, now)
    base = find_baseline(exp_dir, baseline, registry)  # an unknown --baseline fails before anything is written
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
            context = plots_.plot_context(exp_dir) if figures == "full" else ""
            try:
                drawn = plots_.draw_plots(series, _tail_bars(all_rows, tail, base_bar), tail, context, mark,
                                          ("png", "svg") if svg else ("png",))
            except Exception as e:  # noqa: BLE001 - a plot problem must not lose the report
                drawn, plot_note = {}, f"plots not drawn: {type(e).__name__}: {e}"
            for attr, label in (*plots_.PLOTS, *plots_.EXTRA_PLOTS):
                for fmt, data in drawn.get(attr, {}).items():
                    key = attr if fmt == "png" else f"{attr}.{fmt}"
                    with staged.open(files[key], "wb") as f:
                        f.write(data)
                    links[label if fmt == "png" else f"{label} ({fmt.upper()})"] = files[key].name
        text = render_report(exp_dir, baseline, tail, links, now, rows_=all_rows, base=base)
        if plot_note:
            text += f"\n{_md_text(plot_note)}\n"
        with staged.open(out, "w") as f:
            f.write(text)
    return out
