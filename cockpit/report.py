"""The report of an experiment dir: the seed's metric table, deltas vs a baseline, run status.

Data first, text second: `rows()` and `delta_rows()` give dataclasses the TUI turns into
DataTables; `render_*` turn the same rows into markdown. A dir holding only the `*.log` files
of manual runs (no plan, no state) is a valid input: each log is a run named by its stem.

Numbers are formatted exactly like the seed's tables: tok/sec, dt, peak memory and total time
with 2 decimals, MFU with 4, deltas as signed percentages with 2 (`+2.70%`).
"""

from __future__ import annotations

import csv
import datetime as dt
import os
from dataclasses import dataclass
from pathlib import Path

from cockpit import logs

# (attribute, header after the tail prefix or alone, format)
METRICS = (
    ("tok_per_sec", "tok/sec", ".2f", True),
    ("dt_ms", "dt (ms)", ".2f", True),
    ("mfu", "mfu", ".4f", True),
    ("peak_mem_mib", "peak mem (MiB)", ".2f", False),
    ("total_time_min", "total time (min)", ".2f", False),
)
STATUS_NOT_RUN = "not run"
SOURCE_LOG = "log"
SOURCE_RECORDED = "recorded"


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
    source: str = SOURCE_LOG  # "log" | "recorded"
    status: str = "unknown"  # completed / running / failed / unknown / not run / recorded / a leg state
    note: str | None = None  # e.g. "log ended without its final lines"
    summary: logs.LegSummary | None = None
    path: str | None = None  # the log, or the recorded dir

    @property
    def has_figures(self) -> bool:
        return any(getattr(self, m[0]) is not None for m in METRICS)

    def value(self, metric: str) -> float | None:
        return getattr(self, metric)


@dataclass
class DeltaRow:
    metric: str  # header text, e.g. "tail50 tok/sec"
    attr: str
    baseline: float | None
    run: float | None
    delta_pct: float | None


def headers(tail: int) -> list[str]:
    return [f"tail{tail} {h}" if tailed else h for _, h, _, tailed in METRICS]


def fmt_value(attr: str, value: float | None) -> str:
    if value is None:
        return "-"
    spec = next(m[2] for m in METRICS if m[0] == attr)
    return f"{value:{spec}}"


def pct_change(baseline: float | None, run: float | None) -> float | None:
    if baseline is None or run is None or baseline == 0:
        return None
    return (run - baseline) / baseline * 100.0


def fmt_delta(pct: float | None) -> str:
    return "-" if pct is None else f"{pct:+.2f}%"


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
        source=SOURCE_LOG,
        status=status or s.status,
        note=note,
        summary=s,
        path=s.path,
    )


def row_from_recorded(name: str, recorded) -> ReportRow:
    """A row of figures recorded in the registry (a leg that ran elsewhere): never measured here."""
    return ReportRow(
        run=name,
        tok_per_sec=recorded.tok_per_sec,
        dt_ms=recorded.dt_ms,
        mfu=recorded.mfu,
        peak_mem_mib=recorded.peak_mem_mib,
        total_time_min=recorded.total_time_min,
        source=SOURCE_RECORDED,
        status=SOURCE_RECORDED,
        note="recorded" + (f": {recorded.source}" if recorded.source else ""),
        path=recorded.dir,
    )


def _dir_legs(exp_dir: Path) -> tuple[list[str], dict[str, str]]:
    """Planned legs (plan order) and their state statuses; a dir of plain logs has neither."""
    try:
        from cockpit import runs

        d = runs.open_dir(exp_dir)
    except Exception:  # noqa: BLE001 - a broken plan or state never stops a report
        return [], {}
    planned = d.legs if d.plan else []
    return planned, {leg: st.status for leg, st in d.states.items()}


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
    planned, states = _dir_legs(exp_dir)
    by_stem = {p.stem: p for p in _log_order(exp_dir)}
    out: list[ReportRow] = []
    for leg in planned:
        log = by_stem.pop(leg, None)
        state = states.get(leg)
        if log is None:
            status = state if state in ("queued", "waiting", "stopped", "failed") else STATUS_NOT_RUN
            out.append(ReportRow(run=leg, source=SOURCE_LOG, status=status))
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
    return {"done": "completed"}.get(state, state)


def delta_rows(base: ReportRow, run: ReportRow, tail: int = 50) -> list[DeltaRow]:
    out = []
    for (attr, _, _, _), head in zip(METRICS, headers(tail), strict=True):
        b, r = base.value(attr), run.value(attr)
        out.append(DeltaRow(head, attr, b, r, pct_change(b, r)))
    return out


def resolve_baseline(exp_dir: Path, ref: str, tail: int = 50, now: float | None = None) -> ReportRow:
    """`RUN` (a log in the dir) or `OTHER_DIR/RUN` (a log in another dir) -> its row.

    OTHER_DIR may be a path, or a sibling dir's name (under the same exp_root).
    """
    ref = ref.removesuffix(".log")
    candidates = [exp_dir / f"{ref}.log"]
    if "/" in ref:
        candidates += [Path(f"{ref}.log").expanduser(), exp_dir.parent / f"{ref}.log"]
    for path in candidates:
        if path.is_file():
            row = row_from_summary(logs.summarize(path, tail=tail, now=now))
            if path.parent.resolve() != exp_dir.resolve():
                row.run = f"{path.parent.name}/{row.run}"
            return row
    where = ", ".join(str(c) for c in candidates)
    raise ReportError(f"baseline '{ref}': no log at {where}")


def _plan_experiment(exp_dir: Path):
    """(registry, experiment) of a dir the cockpit launched, from its plan.json: the registry file
    the plan names (as it is now), else the plan's snapshot of it (the file moved, broke or no
    longer has the experiment). None for a dir without a plan; raises on a broken plan."""
    import json

    from cockpit import registry as reg

    try:
        text = (exp_dir / "plan.json").read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    plan = json.loads(text)
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
        from cockpit import runs

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
        for d in reversed(runs.discover(registry.settings.exp_root)):
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


# ----------------------------------------------------------------------------------------------
# markdown


def _md_row(cells: list[str]) -> str:
    return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"


def render_table(rows_: list[ReportRow], tail: int = 50, source_column: bool = False) -> str:
    """The seed's table: one row per run with figures, columns exactly as DESIGN.md says."""
    head = ["run", *headers(tail)] + (["source"] if source_column else [])
    lines = [_md_row(head), "| --- |" + " ---: |" * len(METRICS) + (" --- |" if source_column else "")]
    for r in rows_:
        cells = [r.run] + [fmt_value(attr, r.value(attr)) for attr, *_ in METRICS]
        if source_column:
            cells.append(r.source)
        lines.append(_md_row(cells))
    return "\n".join(lines)


def render_delta(base: ReportRow, run: ReportRow, tail: int = 50, base_label: str | None = None) -> str:
    """`metric | baseline | run | delta`, as the seed's buffer-reuse comparison."""
    label = base_label or f"baseline {base.run}"
    lines = [_md_row(["metric", label, run.run, "delta"]), "| --- | ---: | ---: | ---: |"]
    for d in delta_rows(base, run, tail):
        lines.append(_md_row([d.metric, fmt_value(d.attr, d.baseline), fmt_value(d.attr, d.run), fmt_delta(d.delta_pct)]))
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
        if r.status == "failed" and not err and s.failure:
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
) -> str:
    """The whole report as markdown. `links`: label -> relative path of the CSVs and plots."""
    exp_dir = Path(exp_dir)
    if not exp_dir.is_dir():
        raise ReportError(f"{exp_dir}: no such experiment dir")
    all_rows = rows(exp_dir, tail, now) if rows_ is None else rows_
    stamp = dt.datetime.fromtimestamp(now if now is not None else dt.datetime.now().timestamp()).astimezone()
    out = [
        f"# Report: {exp_dir.name}",
        "",
        f"Experiment directory: `{exp_dir}`",
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
    notes = [f"- `{r.run}`: {r.note}" for r in all_rows if r.note and r.status != STATUS_NOT_RUN]
    not_run = [r.run for r in all_rows if r.status == STATUS_NOT_RUN]
    if not_run:
        notes.append("- Not run yet: " + ", ".join(f"`{n}`" for n in not_run) + ".")
    short = [r for r in with_figures if r.summary and r.summary.tail_n < tail]
    if short:
        notes.append(
            f"- Fewer than {tail} step lines (mean over all of them): "
            + ", ".join(f"`{r.run}` ({r.summary.tail_n})" for r in short if r.summary)
            + "."
        )
    if notes:
        out += ["", *notes]
    out += ["", "## Status", "", render_status_table(all_rows)]
    base = resolve_baseline(exp_dir, baseline, tail, now) if baseline else plan_baseline(exp_dir, tail, now)
    if base is not None and base.has_figures:
        why = "" if baseline else " (the registry's baseline of this experiment)"
        out += ["", f"## Delta vs baseline `{base.run}`{why}"]
        if base.source == SOURCE_RECORDED and base.note:
            out += ["", f"Baseline figures {base.note} (not measured here)."]
        for r in all_rows:
            if r.run == base.run or not r.has_figures:
                continue
            out += ["", f"### {r.run}", "", render_delta(base, r, tail)]
    if links:
        out += ["", "## Files", ""]
        for label, rel in links.items():
            if rel.endswith(".png"):
                out.append(f"![{label}]({rel})")
            else:
                out.append(f"- [{label}]({rel})")
    return "\n".join(out) + "\n"


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


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _cell(v) -> str:
    return "" if v is None else (repr(v) if isinstance(v, float) else str(v))


def write_csvs(rows_: list[ReportRow], steps: dict[str, logs.StepTable], steps_csv: Path, summary_csv: Path) -> None:
    """Per-step CSV (one line per step line of every run) and summary CSV (one line per run)."""
    tmp = steps_csv.with_name(f".{steps_csv.name}.{os.getpid()}.tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["run", *STEP_COLUMNS])
        for run, table in steps.items():
            cols = [[_cell(v) for v in table.cols[c]] for c in STEP_COLUMNS]
            w.writerows(zip([run] * len(table), *cols, strict=True))
    os.replace(tmp, steps_csv)
    tmp = summary_csv.with_name(f".{summary_csv.name}.{os.getpid()}.tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(SUMMARY_COLUMNS)
        for r in rows_:
            s = r.summary
            w.writerow([
                r.run, r.status, r.source,
                _cell(s.steps_observed if s else None), _cell(s.last_step if s else None),
                _cell(s.total_steps if s else None), _cell(s.last_loss if s else None),
                _cell(s.tail_n if s else None),
                *(_cell(r.value(a)) for a, *_ in METRICS),
                (s.error_line or s.error or "") if s else "",
            ])
    os.replace(tmp, summary_csv)


def write_plots(steps: dict[str, logs.StepTable], out_dir: Path, prefix: str) -> dict[str, str]:
    """PNG per metric (loss, tok/sec, MFU, dt) per step, one line per run. Returns label -> file name.

    matplotlib is imported here, with the Agg backend, only when plots are drawn.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made: dict[str, str] = {}
    for attr, label in PLOTS:
        series = {}
        for run, table in steps.items():
            pts = [(x, y) for x, y in zip(table.cols["step"], table.cols[attr], strict=True) if y is not None]
            if pts:
                series[run] = pts
        if not series:
            continue
        fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
        for run, pts in series.items():
            ax.plot([p[0] for p in pts], [p[1] for p in pts], label=run, linewidth=1.2)
        ax.set_xlabel("step")
        ax.set_ylabel(label)
        ax.set_title(f"{label} per step")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        name = f"{prefix}{attr}.png"
        tmp = out_dir / f".{name}.{os.getpid()}.tmp.png"
        fig.savefig(tmp)
        plt.close(fig)
        os.replace(tmp, out_dir / name)
        made[label] = name
    return made


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
    unknown baseline, raises (ReportError or OSError).
    """
    exp_dir = Path(exp_dir)
    if not exp_dir.is_dir():
        raise ReportError(f"{exp_dir}: no such experiment dir")
    out = Path(out_md) if out_md is not None else exp_dir / "report.md"
    out_dir = out.parent
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = out.stem
    all_rows = rows(exp_dir, tail, now)
    steps: dict[str, logs.StepTable] = {}
    for r in all_rows:
        if r.path and r.summary and not r.summary.error:
            try:
                table = logs.parse_file(r.path, tail=tail, keep_steps=None).table
            except OSError:
                continue
            if table is not None:
                steps[r.run] = table
    links: dict[str, str] = {}
    steps_csv, summary_csv = out_dir / f"{stem}_steps.csv", out_dir / f"{stem}_summary.csv"
    write_csvs(all_rows, steps, steps_csv, summary_csv)
    links["per-step CSV"] = steps_csv.name
    links["summary CSV"] = summary_csv.name
    plot_note = None
    if plots and steps:
        try:
            for label, name in write_plots(steps, out_dir, f"{stem}_").items():
                links[label] = name
        except Exception as e:  # noqa: BLE001 - a plot problem must not lose the report
            plot_note = f"plots not drawn: {type(e).__name__}: {e}"
    text = render_report(exp_dir, baseline, tail, links, now, rows_=all_rows)
    if plot_note:
        text += f"\n{plot_note}\n"
    _atomic_write(out, text)
    return out
