"""The report as markdown: the seed's metric table, quality and routing, status per run, and a
delta section per run against the baseline (`| metric | baseline | run | delta | 95% CI | verdict |`,
the baseline's origin, what differs between the launches, the args that differ); `render` turns
a dir's rows (report.rows) into report.md's text, `render_report` reads a dir once and renders it.

Everything taken from a log or a file name (run names, error lines) is made printable and escaped
for markdown.

Layer 2: imports flags, fsutil, safetext, stats, registry, vocab, expdir, baseline and report.
"""

from __future__ import annotations

import datetime as dt
import math
import os
from pathlib import Path

from cockpit import baseline as baseline_
from cockpit import flags, fsutil, report, safetext, stats
from cockpit import registry as reg
from cockpit.baseline import Baseline
from cockpit.expdir import ExpDir
from cockpit.report import (
    DELTA_QUALITY,
    DeltaRow,
    ReportError,
    ReportRow,
    delta_rows,
    fmt_cell,
    fmt_value,
    headers,
    quality_headers,
)
from cockpit.vocab import DEFAULT_TAIL, METRICS, QUALITY, RunStatus, Verdict


def _md_row(cells: list[str]) -> str:
    """A markdown table row; each cell made printable, with pipes and backticks escaped."""
    return "| " + " | ".join(safetext.md_cell(c) for c in cells) + " |"


def render_table(rows_: list[ReportRow], tail: int = DEFAULT_TAIL, source_column: bool = False) -> str:
    """The metric table: one row per run with figures (see the module's docstring for its columns)."""
    head = ["run", *headers(tail)] + (["source"] if source_column else [])
    lines = [_md_row(head), "| --- |" + " ---: |" * len(METRICS) + (" --- |" if source_column else "")]
    for r in rows_:
        cells = [r.run] + [fmt_cell(r, attr) for attr in METRICS]
        if source_column:
            cells.append(r.source)
        lines.append(_md_row(cells))
    return "\n".join(lines)


def render_quality(rows_: list[ReportRow], tail: int = DEFAULT_TAIL) -> str:
    """The quality and routing table: `| run | min val bpb | last val bpb | final loss |
    tail50 drop % | tail50 bal |`, `-` for a figure a run does not have (never 0)."""
    lines = [_md_row(["run", *quality_headers(tail)]), "| --- |" + " ---: |" * len(QUALITY)]
    for r in rows_:
        lines.append(_md_row([r.run] + [fmt_cell(r, attr) for attr in QUALITY]))
    return "\n".join(lines)


def render_delta(
    base: ReportRow, run: ReportRow, tail: int = DEFAULT_TAIL, base_label: str | None = None
) -> str:
    """`metric | baseline | run | delta | 95% CI | verdict`: one row per metric (see report.delta_rows)."""
    label = base_label or f"baseline {base.run}"
    lines = [
        _md_row(["metric", label, run.run, "delta", "95% CI", "verdict"]),
        "| --- | ---: | ---: | ---: | ---: | --- |",
    ]
    why = []
    ds = delta_rows(base, run, tail)
    for d in ds:
        if d.attr in DELTA_QUALITY and d.baseline is None and d.run is None:
            continue  # neither run has the figure (no validation, dropless routing): no row of dashes
        lines.append(
            _md_row(
                [
                    d.metric,
                    fmt_value(d.attr, d.baseline),
                    fmt_value(d.attr, d.run),
                    stats.fmt_pct(d.delta_pct),
                    d.ci_text,
                    d.verdict,
                ]
            )
        )
        if d.delta_pct is None and d.why and d.baseline is not None and d.run is not None:
            why.append(f"{d.metric}: {d.why}")
    if why:  # a missing figure speaks for itself; a zero, nan or inf one is said
        lines += ["", "No delta (`-`) where " + "; ".join(why) + "."]
    if resolve := resolve_text(ds):
        lines += ["", resolve]
    lines += [f"\n{line}" for line in repeat_lines(base, run, label, tail)]
    return "\n".join(lines)


def resolve_text(ds: list[DeltaRow]) -> str:
    """How many repeats would resolve each `within noise` delta of a run, if the difference is
    real (stats.repeats_to_resolve): `To resolve ... tail50 tok/sec (+1.20%): about 6 repeats of
    each leg (4 more).`; "" when no delta is within noise (or one is exactly 0)."""
    parts = [
        f"{d.metric} ({stats.fmt_pct(d.delta_pct)}): {stats.fmt_resolve(d.resolve)}"
        for d in ds
        if d.verdict == Verdict.WITHIN_NOISE and d.resolve is not None and d.delta_pct
    ]
    return (
        f"To resolve `within noise` if the difference is real (80% power): {'; '.join(parts)}."
        if parts
        else ""
    )


def repeat_lines(
    base: ReportRow, run: ReportRow, base_label: str, tail: int = DEFAULT_TAIL, metric: str = "tok_per_sec"
) -> list[str]:
    """For each side run with repeats: how much its repeats vary beyond their tail windows, and how
    well so few repeats know it (stats.Spread), on the tail tok/sec."""
    out = []
    head = headers(tail)[METRICS.index(metric)]
    for name, row in ((base_label, base), (run.run, run)):
        e = row.estimate(metric) if row.is_aggregate else None
        if e is None or e.spread is None or not e.mean or not math.isfinite(e.mean):
            continue
        sp, pct = e.spread, 100.0 / abs(e.mean)
        out.append(
            f"{safetext.md_code(name)}: n={sp.repeats} repeats; between-repeat sd of {head} "
            f"{sp.between * pct:.2f}% of the mean (95% upper bound {sp.between_hi * pct:.2f}%: "
            f"{sp.repeats} repeats know it {'poorly' if sp.repeats < 5 else 'roughly'}), each window's own "
            f"{sp.within * pct:.2f}%."
        )
    return out


def no_delta_text(b: Baseline) -> str:
    """Why a dir has no deltas although it has a baseline (the pinned run failed, ...), and how to
    compare with another run for one report."""
    text = f"No deltas: {md_text(b.problem or 'the baseline has no figures')}"
    text += (
        ". The baseline was pinned when this dir was launched and is never replaced by another"
        if b.pinned
        else ""
    )
    return text + (f". To compare with another run: {safetext.md_code(b.instead)}." if b.instead else ".")


def baseline_notes(b: Baseline, exp_dir: Path | None = None) -> list[str]:
    """The lines a delta section says about its baseline: where it comes from, when not the run's
    own dir (`exp_dir`), and what differs between its launch and the run's."""
    if b.own:
        return []
    if b.dir is None:
        rec = b.recorded.source if b.recorded is not None and b.recorded.source else None
        return [
            f"Baseline figures recorded{': ' + rec if rec else ''} (not measured here; no per-step samples, "
            "so no verdict)."
        ]
    sibling = exp_dir is not None and os.path.realpath(b.dir.parent) == os.path.realpath(Path(exp_dir).parent)
    head = f"the baseline ran in another launch, {safetext.md_code(b.dir.name if sibling else str(b.dir))}"
    head += " (pinned when this dir was launched)" if b.pinned else ""
    if b.unknown:
        return [f"**Warning:** {head}; {md_text(b.unknown)}."]
    if not b.differs:
        return [
            f"Note: {head}; what it recorded of its origin (git, host, GPUs, versions, environment, "
            f"the baseline's args) is the same as this dir's."
        ]
    return [
        f"**Warning:** {head}, which differs from this dir's in: "
        + "; ".join(md_text(x) for x in b.differs)
        + "."
    ]


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
        last = (
            "-"
            if s.last_step is None
            else (f"{s.last_step}/{s.total_steps}" if s.total_steps else str(s.last_step))
        )
        observed = str(s.steps_observed) if s.exact_count else f"~{s.steps_observed}"
        err = s.error_line or (s.error or "")
        if r.status == RunStatus.FAILED and not err and s.failure:
            err = s.failure[-1]
        lines.append(_md_row([r.run, r.status, observed, last, _fmt_loss(s.last_loss), err]))
    return "\n".join(lines)


def render_report(
    exp_dir: Path | str,
    baseline: str | None = None,
    tail: int = DEFAULT_TAIL,
    now: float | None = None,
    registry: reg.Registry | None = None,
) -> str:
    """The whole report of a dir as markdown (`cockpit report` to stdout): the dir read once
    (report.read_dir), its rows, and its baseline (baseline.for_dir: `--baseline` when given,
    else its plan's; `registry`: for a dir of plain logs, the registry whose experiment its name
    says). ReportError (one line) for no dir, or a `baseline` that names no log."""
    exp_dir = Path(exp_dir)
    if not fsutil.is_dir(exp_dir):
        raise ReportError(f"{safetext.oneline(str(exp_dir))}: no such experiment dir")
    d = report.read_dir(exp_dir)
    return render(d, report.rows(d, tail, now), find_baseline(d, baseline, registry), tail, now=now)


def find_baseline(d: ExpDir, ref: str | None, registry: reg.Registry | None = None) -> Baseline | None:
    """baseline.for_dir, its refusal of a `--baseline` that names no log as a ReportError."""
    try:
        return baseline_.for_dir(d, ref, registry)
    except baseline_.BaselineError as e:
        raise ReportError(str(e)) from None


def render(
    d: ExpDir,
    all_rows: list[ReportRow],
    base: Baseline | None,
    tail: int = DEFAULT_TAIL,
    links: dict[str, str] | None = None,
    now: float | None = None,
) -> str:
    """The markdown of a dir read already: its rows (report.rows) and baseline (None: none).
    `links`: label -> relative path of the CSVs and plots. Reads nothing."""
    exp_dir = d.path
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
    code, text_ = safetext.md_code, md_text
    notes = [
        f"- {code(r.run)}: {text_(r.note)}" for r in all_rows if r.note and r.status != RunStatus.NOT_RUN
    ]
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
    base_row = report.baseline_row(base, tail, now) if base is not None else None
    if base is not None and base_row is not None and base_row.has_figures:
        where = f" ({md_text(base.source)})" if base.source and base.dir is not None else ""
        named = "" if base.explicit else " (the registry's baseline of this experiment)" if base.own else ""
        name = f"{base_row.run} (recorded)" if base.dir is None else base.leg
        done = set(base.runs) if base.dir is not None and base.own else set()
        sections = []
        for r in all_rows:
            if r.run in done or (r.run == base.leg and base.own) or not r.has_figures:
                continue
            if not r.is_aggregate and report.repeat_with_aggregate(r, all_rows):
                continue  # a repeat: its leg's aggregate row has the delta
            title = (
                f"{r.run} ({len(r.repeats)} repeats: interval from their windows and the spread between them)"
                if r.is_aggregate
                else r.run
            )
            sections += ["", f"### {md_text(title)}", "", render_delta(base_row, r, tail, base.column)]
            run_flags = d.plan.flags_of(r.run, exp_dir) if d.plan is not None and r.path else None
            if base.flags is not None and run_flags is not None:
                sections += [
                    "",
                    f"args differ: {md_text(flags.format_diff(flags.diff_flags(base.flags, run_flags)))}",
                ]
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


def md_text(text: str) -> str:
    """Text from a file or log in running markdown: printable, on one line."""
    return safetext.printable(text).replace("\n", " ")
