"""The report of an experiment dir, as data: its rows (metrics, quality and routing, status per
run) and deltas against a baseline with their noise verdicts. `report_md` writes them as markdown,
`report_files` as report.md with its CSVs and plots, the TUI as DataTables.

A dir holding only the `*.log` files of manual runs (no plan, no state) is a valid input: each
log is a run named by its stem.

The metric table has one row per run: `| run | tail50 tok/sec | tail50 dt (ms) | tail50 mfu |
peak mem (MiB) | total time (min) |`, the tail columns being means over the last 50 step lines
(`--tail N` renames them). Numbers keep fixed decimals, so tables of different runs and days line
up: tok/sec, dt, peak memory and total time with 2, MFU with 4, deltas as signed percentages with
2 (`+2.70%`); a delta that is not a number (a figure missing, zero, nan or inf) is `-`, and the
table says why. A second table gives quality and routing beside speed: `| run | min val bpb |
last val bpb | final loss | tail50 drop % | tail50 bal |`, `-` where a run has no such figure.

A leg run with repeats (`<leg>.r0`, `<leg>.r1`, ...) has a row per repeat and an aggregate row
(`mean ± std` across the repeats).

Deltas: `| metric | baseline | run | delta | 95% CI | verdict |`, against the baseline
`baseline.for_dir` or `baseline.choose` decides (the report takes it; it looks up no plan and no
registry). The interval is that of the difference of the two means (stats.compare): from each
tail window's spread, correlation between steps accounted for; for a leg with repeats, their
windows and the spread between them combined (stats.pooled). The verdict is `significant` when
the interval excludes 0, `within noise` when it does not (with the repeats that would resolve
it), `-` without per-step samples or repeats (peak memory, total time, validation bpb and final
loss of a single run).

Layer 2: imports the layers below (registry, vocab, stats, logs, expdir) and baseline.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from cockpit import expdir, logs, stats
from cockpit import registry as reg
from cockpit.baseline import Baseline
from cockpit.expdir import ExpDir
from cockpit.figures import Figures
from cockpit.vocab import DEFAULT_TAIL, METRICS, QUALITY, RunStatus, Source, Status, Verdict, run_status

# Each metric's column (in vocab.METRICS order): its header, after `tail<N> ` when it is a tail
# mean, and its format.
COLUMNS = dict(
    zip(
        METRICS,
        (
            ("tok/sec", ".2f", True),
            ("dt (ms)", ".2f", True),
            ("mfu", ".4f", True),
            ("peak mem (MiB)", ".2f", False),
            ("total time (min)", ".2f", False),
        ),
        strict=True,
    )
)
# The quality and routing table's columns (vocab.QUALITY order), the same way.
QUALITY_COLUMNS = dict(
    zip(
        QUALITY,
        (
            ("min val bpb", ".6f", False),
            ("last val bpb", ".6f", False),
            ("final loss", ".6f", False),
            ("drop %", ".2f", True),
            ("bal", ".4f", True),
        ),
        strict=True,
    )
)
FORMATS = {**COLUMNS, **QUALITY_COLUMNS}
DELTA_QUALITY = ("min_val_bpb", "final_loss", "drop_pct")  # the quality rows of a delta table


class ReportError(Exception):
    """Bad report input (no such dir, unknown baseline): one line for the CLI."""


@dataclass
class ReportRow:
    """One run of the tables. `source` says where the figures come from: a log here, or recorded.
    An aggregate row (a leg run with repeats) holds its repeats' rows in `repeats`: its figures are
    their means."""

    run: str
    figures: Figures = Figures()  # speed, routing: tail means; quality: the log's last and least
    source: str = Source.LOG
    status: str = RunStatus.UNKNOWN  # a RunStatus, or the status of the leg's state (see vocab.run_status)
    note: str | None = None  # e.g. "log ended without its final lines"
    summary: logs.LegSummary | None = None
    path: str | None = None  # the log, or the recorded dir
    repeats: list[ReportRow] = field(default_factory=list)  # an aggregate row's repeats

    @property
    def has_figures(self) -> bool:
        return self.figures.has_metrics

    @property
    def is_aggregate(self) -> bool:
        return bool(self.repeats)

    def value(self, metric: str) -> float | None:
        return self.figures.value(metric)

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
    def basis(self) -> str:
        """What the interval rests on when repeats are in it (`n=2 repeats`); "" for two single
        runs, or without an interval."""
        if self.ci_pct is None:
            return ""
        return stats.fmt_runs(stats.Delta(self.delta_pct, self.ci_pct, self.verdict, runs=self.runs))

    @property
    def ci_text(self) -> str:
        """The interval's cell: `±1.74%`, with what it rests on when repeats are in it
        (`±3.21% (n=2 repeats)`)."""
        text = stats.fmt_ci(self.ci_pct)
        return f"{text} ({self.basis})" if self.basis else text


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
        figures=s.figures,
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
        figures=recorded.figures,
        source=Source.RECORDED,
        status=RunStatus.RECORDED,
        note="recorded" + (f": {recorded.source}" if recorded.source else ""),
        path=recorded.dir,
    )


def aggregate(leg: str, repeats: list[ReportRow]) -> ReportRow:
    """The aggregate row of a leg's repeats: each figure the mean over the repeats that have it."""
    row = ReportRow(
        run=leg, figures=Figures.mean(r.figures for r in repeats), repeats=list(repeats), source=Source.LOG
    )
    statuses = {r.status for r in repeats}
    row.status = statuses.pop() if len(statuses) == 1 else "mixed"
    row.note = f"mean ± std over {len(repeats)} repeats"
    return row


def read_dir(exp_dir: Path | str) -> ExpDir:
    """The dir as a report reads it (once): its plan and states (expdir.open_dir); one whose plan or
    states cannot be read at all reads as a dir of plain logs (a broken file never stops a report)."""
    exp_dir = Path(exp_dir)
    try:
        return expdir.open_dir(exp_dir)
    except Exception:  # noqa: BLE001 - a broken plan or state never stops a report
        return ExpDir(exp_dir, exp_dir.name, "", None, [], {})


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


def rows(d: ExpDir | Path | str, tail: int = DEFAULT_TAIL, now: float | None = None) -> list[ReportRow]:
    """One row per log in the dir (run = log stem), plus planned legs with no log yet (not run),
    and after the last repeat of a leg run with repeats, the leg's aggregate row. `d`: the dir as
    read already (read_dir), or its path.

    Planned legs come first in plan order, then any other logs in the order they ran; a dir of
    plain logs has no plan or states, and its repeats are known by their names. Never raises on
    a bad log: its row says what it could read.
    """
    d = d if isinstance(d, ExpDir) else read_dir(d)
    plan = d.plan
    planned = d.legs if plan is not None else []
    states = {leg: st.status for leg, st in d.states.items()}
    legs = {run.name: run.leg for run in plan.runs if run.leg is not None} if plan is not None else {}
    prepared = plan is not None and plan.prepare is not None  # its prepare.log is no run
    by_stem = {p.stem: p for p in _log_order(d.path) if not (prepared and p.stem == reg.PREPARE)}
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


def repeat_with_aggregate(r: ReportRow, rows_: list[ReportRow]) -> bool:
    """Is this row a repeat whose leg's aggregate row is among `rows_` (which has its delta, bar, ...)?"""
    return any(r in a.repeats for a in rows_ if a.is_aggregate)


def _status(s: logs.LegSummary, state: str | None) -> str:
    """The report's status word: the supervisor's record where there is one, else the log's."""
    if state is None:
        return s.status
    return run_status(state)


def delta_rows(base: ReportRow, run: ReportRow, tail: int = DEFAULT_TAIL) -> list[DeltaRow]:
    """A row per metric (speed, then min val bpb, final loss and drop %): both figures, the change
    in percent of the baseline's, and its 95% interval and verdict where both have samples."""
    out = []
    attrs = (*METRICS, *DELTA_QUALITY)
    heads = dict(zip(METRICS, headers(tail), strict=True)) | dict(
        zip(QUALITY, quality_headers(tail), strict=True)
    )
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
# the baseline's figures


def baseline_row(b: Baseline, tail: int = DEFAULT_TAIL, now: float | None = None) -> ReportRow:
    """The baseline's figures as a row: its log (the aggregate of its repeats), or recorded; a
    row without figures when it has none to give (`b.problem`: the pinned run failed, ...)."""
    if b.problem:
        return ReportRow(run=b.leg, note=b.problem)
    if b.dir is None:
        return row_from_recorded(
            f"{b.experiment}/{b.leg}" if b.experiment else b.leg, b.recorded or reg.Recorded()
        )
    runs = [row_from_summary(logs.summarize(b.dir / f"{r}.log", tail=tail, now=now)) for r in b.runs]
    row = runs[0] if len(runs) == 1 else aggregate(b.leg, runs)
    row.run = b.leg
    return row
