"""Where things stand, in words: `cockpit status`'s lines and the resume guide.

`render_status()` gives the state (resume.build_state) in a few lines; `render_guide()` writes it
as a resume guide, in the sections a researcher would write one by hand for whoever picks the
work up: current state, latest reports, completed work (do not re-run) with tables and decisions,
remaining work with the next command, and the safety constraints; `write_guide()` puts it in a
file. Text from a log or a file is made printable here; nothing is computed here that the state
does not hold.

Layer 3: imports the layers below (registry, vocab, stats, logs, fsutil, safetext, expdir,
report, report_md) and resume.
"""

from __future__ import annotations

import dataclasses
import os
import shlex
from pathlib import Path

from cockpit import expdir, fsutil, gpus, report, report_md, safetext, stats
from cockpit import registry as reg
from cockpit.expdir import ExpDir
from cockpit.logs import progress as logs_progress
from cockpit.resume import ExperimentState, LegMark, NextLeg, ResumeState, build_state
from cockpit.vocab import ACTIVE_MARKS, DEFAULT_TAIL, NOTED_MARKS, QUALITY, Mark, Source, Status, Verdict


def progress(m: LegMark, tail: int = DEFAULT_TAIL) -> str:
    """`step 42/280 (15.00%), loss 6.1235, 806,400 tok/s, ETA 0:02:36` from the leg's log (the
    words the terminal app's live table uses too: logs.progress)."""
    return "no step lines yet" if m.summary is None else logs_progress.line(m.summary, tail)


def _mark_line(m: LegMark, tail: int = DEFAULT_TAIL) -> str:
    where = f" in {safetext.md_code(m.dir)}" if m.dir else ""
    where += f" (Slurm {m.job})" if m.job else ""
    note = f" ({_text(m.note)})" if m.note else ""
    if m.mark in ACTIVE_MARKS:
        return f"`{m.ref}` {m.mark}{where}: {progress(m, tail) if m.mark == Mark.RUNNING else _text(m.note or 'waiting its turn')}"
    return f"`{m.ref}` {m.mark}{where}{note}"


def _text(text: str) -> str:
    """Text from a file (a note, an error line) in running markdown: printable, one line."""
    return safetext.printable(text).replace("\n", " ")


def _title(e: ExperimentState) -> str:
    return f"{e.title} (`{e.id}`)" if e.title else f"`{e.id}`"


def render_guide(state: ResumeState) -> str:
    """The resume guide as markdown: Current State, Completed Work (Do Not Re-run), Resume
    Environment, Remaining Work, Safety/Path Constraints Reminder."""
    out = [
        "# Nanochat Resume Guide",
        "",
        f"Last updated: {state.generated}",
    ]
    if state.checkout is not None:
        out.append(f"Branch: {state.checkout.text('`')}")
    out += [
        f"Registry: `{state.registry_path}`",
        f"Experiment root: `{state.exp_root}`",
        "",
        "## Current State",
        "",
    ]
    if state.running:
        out += [f"- Running: {_mark_line(m, state.tail)}" for m in state.running]
    elif state.activity == "all done":
        out.append("- All done: nothing running, and every leg is done here or recorded.")
    else:
        out.append(f"- {state.activity.capitalize()}.")
    out += [f"- {m.mark.capitalize()}: {_mark_line(m)}" for m in state.active if m.mark != Mark.RUNNING]
    out += [f"- Unknown: {_mark_line(m)}" for m in state.marks() if m.mark == Mark.UNKNOWN]
    for d in state.dirs:
        if d.problem:
            out.append(f"- Unreadable: {safetext.md_code(str(d.path))}: {_text(d.problem)}")
    out.append(f"- GPUs: {state.gpus.text}" if state.gpus.state == "unknown" else f"- {state.gpus.text}")
    if state.reports:
        out.append("- Latest reports:")
        out += [f"  - {safetext.md_code(p)}" for p in state.reports]
    else:
        out.append("- Latest reports: none yet (no experiment dir holds a report.md).")

    out += ["", "## Completed Work (Do Not Re-run)"]
    done_any = False
    for e in state.experiments:
        fin = [m for m in e.finished if m.row is not None]
        if not fin:
            continue
        done_any = True
        out += ["", f"### {_title(e)}", ""]
        dirs = list(dict.fromkeys(m.dir for m in fin if m.dir))
        if dirs:
            out.append("Experiment directories:")
            for d in dirs:
                kinds = sorted(
                    {"recorded" if m.mark == Mark.RECORDED else "run here" for m in fin if m.dir == d}
                )
                out.append(f"- {safetext.md_code(d)} ({', '.join(kinds)})")
            out.append("")
        out += [
            "Final metrics snapshot:",
            "",
            report_md.render_table([m.row for m in fin], state.tail, source_column=True),
        ]
        if len({m.dir for m in fin if m.mark == Mark.DONE}) > 1:
            out += [
                "",
                "These legs finished in more than one dir (above): each delta below compares a leg "
                "with the baseline of its own dir, or names the dir its baseline comes from.",
            ]
        if any(m.row.value(q) is not None for m in fin for q in QUALITY):
            out += [
                "",
                "Quality and routing:",
                "",
                report_md.render_quality([m.row for m in fin], state.tail),
            ]
        sources = sorted({m.note for m in fin if m.mark == Mark.RECORDED and m.note})
        if sources:
            out += ["", "Recorded figures (not measured here) come from: " + "; ".join(sources) + "."]
        others = [m for m in e.todo + [x for x in e.legs if x.mark in ACTIVE_MARKS]]
        if others:
            out += ["", "Not complete: " + ", ".join(f"`{m.leg}` ({m.mark})" for m in others) + "."]
        if e.notes:
            out += ["", "Notes:", *[f"- {n}" for n in e.notes]]
        if e.decision:
            out += ["", "Decision:", f"- {e.decision}"]
        for m in fin:  # each leg against the baseline of its own dir (baseline.choose)
            if not m.compared:
                continue
            b = m.baseline
            assert b is not None and m.baseline_row is not None
            run = dataclasses.replace(m.row, run=m.leg + (" (recorded)" if m.mark == Mark.RECORDED else ""))
            where = f" ({_text(b.source)})" if b.source and b.dir is not None else ""
            out += ["", f"Result of `{m.leg}` vs baseline `{e.baseline}`{where}:"]
            if b.dir is not None:  # recorded figures are said once, above
                out += [f"\n{line}" for line in report_md.baseline_notes(b, Path(m.dir) if m.dir else None)]
            out += ["", report_md.render_delta(m.baseline_row, run, state.tail, base_label=b.column)]
    if not done_any:
        out += ["", "Nothing completed yet."]

    out += ["", "## Resume Environment", "", "```bash", f"cd {shlex.quote(state.workdir)}"]
    co = state.checkout
    if co is not None and not co.ok:
        out.append(co.checkout_command or f"# {co.text()}")
    out += ["git status --short --branch", "source .venv/bin/activate", "```"]

    out += ["", "## Remaining Work", ""]
    nxt, far = state.next, state.next_elsewhere
    if nxt is None and far is None:
        out.append("Nothing pending: every leg in the registry is done, recorded or under way.")
    else:
        out.append(
            "Goal: run the next pending leg; do not re-run completed legs (done or recorded) unless explicitly requested."
        )
    for e in state.experiments:
        todo = e.todo
        if not todo:
            continue
        out += ["", f"### {_title(e)}", ""]
        if e.hypothesis:
            out += ["Hypothesis:", f"- {e.hypothesis}", ""]
        if e.baseline:
            out.append(
                f"Baseline: `{e.baseline}`" + (f" ({e.baseline_mark.mark})" if e.baseline_mark else "")
            )
        if e.prepare_text:
            out.append(f"Prepare: {_text(e.prepare_text)}")
        out += [
            f"- {_mark_line(m)}" + (f"; not on this machine: {m.not_here}" if m.not_here else "")
            for m in todo
        ]
    if far is not None:
        why = state.find(f"{far.experiment}/{far.leg}")
        out += [
            "",
            f"Next leg on a machine that can run it: {_next_text(far)}. This machine cannot run it: "
            f"{why.not_here if why else 'see above'}.",
            "",
        ]
        out += _template(far)
    if nxt is not None:
        out += ["", f"Next leg{' here' if far is not None else ''}: {_next_text(nxt)}.", ""]
        out += _template(nxt)
    elif far is not None:
        out += ["", "Nothing left to run that this machine can run."]

    out += ["", "## Safety/Path Constraints Reminder", "", *[f"- {line}" for line in state.safety]]
    return "\n".join(out) + "\n"


def _next_text(nxt: NextLeg) -> str:
    what = f"`{nxt.experiment}/{nxt.leg}`" + (f" ({nxt.description})" if nxt.description else "")
    return what + (f", again: it {nxt.mark}" if nxt.mark != Mark.PENDING else "")


def _template(nxt: NextLeg) -> list[str]:
    """The execution template of a next leg, its report command and the cockpit's one step."""
    return [
        "Execution template (new fresh dir, never reuse an old dir):",
        "",
        "```bash",
        nxt.command,
        "```",
        "",
        "Then regenerate the report immediately:",
        "",
        "```bash",
        nxt.report_command,
        "```",
        "",
        f"Or in one step with the cockpit (fresh dir, waits for idle GPUs, writes report.md after each leg): "
        f"`{nxt.cockpit}`",
    ]


def _figures(m: LegMark, tail: int = DEFAULT_TAIL) -> str:
    """`  6694.57 tok/s, mfu 0.0000  Δ -31.30% ±4.12% significant vs dense 9744.48 tok/s`: the
    leg's tail figures (with how many steps they rest on when the run was shorter than the window)
    and its tok/sec against its baseline's figure (named when it is not its own dir's)."""
    r = m.row
    f = r.figures if r is not None else None
    if r is None or f is None or f.tok_per_sec is None:
        return ""
    text = f"  {f.tok_per_sec:.2f} tok/s"
    s = r.summary
    if s is not None and logs_progress.short_tail(s.tail_n, tail):
        text += f" ({logs_progress.tail_text(s.tail_n, tail)})"
    if f.mfu is not None:
        text += f", mfu {f.mfu:.4f}"
    # a recorded leg's mark says it already; a figure from elsewhere on another mark says so
    text += "  [recorded]" if r.source == Source.RECORDED and m.mark != Mark.RECORDED else ""
    return text + delta_words(m)


def delta_words(m: LegMark, metric: str = "tok_per_sec") -> str:
    """`  Δ -31.30% ±4.12% significant vs dense 9744.48 tok/s (baseline from <dir>)`: the delta,
    its interval (`±0.98% (n=2 repeats)` when repeats are in it) and verdict, and the baseline's
    figure it was taken against; `  Δ - (dense: <why>)` when the pinned baseline has no figures (it
    failed, ...); "" without a baseline."""
    b = m.baseline
    if b is not None and b.problem and m.row is not None and m.row.has_figures and not m.is_baseline:
        return f"  Δ - ({b.leg}: {b.problem})"
    if not m.compared:
        return ""
    assert m.baseline is not None and m.baseline_row is not None and m.row is not None
    base = m.baseline_row.value(metric)
    pct, _ = stats.pct_change(base, m.row.value(metric))
    d = stats.compare(m.baseline_row.estimate(metric), m.row.estimate(metric))
    basis = stats.fmt_runs(d)
    ci = f" {stats.fmt_ci(d.ci_pct)}" + (f" ({basis})" if basis else "") if d.ci_pct is not None else ""
    verdict = f" {d.verdict}" if d.verdict != Verdict.NONE else ""
    figure = f" {report.fmt_value(metric, base)} {UNITS.get(metric, '')}".rstrip() if base is not None else ""
    where = (
        " (recorded)" if m.baseline.dir is None else f" ({m.baseline.source})" if m.baseline.source else ""
    )
    return f"  Δ {stats.fmt_pct(pct)}{ci}{verdict} vs {m.baseline.leg}{figure}{where}"


UNITS = {"tok_per_sec": "tok/s", "dt_ms": "ms"}  # a figure's unit after it, in a line of words


def running_line(m: LegMark, tail: int = DEFAULT_TAIL) -> str:
    """A running leg in one line: `cpu-smoke/dense  pid 4242  step 20/40 (50.00%), loss 1.9, 7,000 tok/s, ETA 0:00:06`.

    tok/s is the tail mean (with how many steps it rests on while fewer than the window); ETA is
    the trainer's (`eta:`), else remaining steps x tail dt; a figure the log does not give yet
    reads n/a, so the line always has the same parts.
    """
    pid = m.process or "no cockpit state (manual run)"
    return f"{m.ref}  {pid}  {progress(m, tail)}"


def dir_line(d: ExpDir, known: bool = True) -> str:
    """An experiment dir in one line: its name, its supervisor, each leg's state, its problem."""
    legs = []
    for leg in d.legs:
        st = d.states.get(leg)
        if st is not None:
            pid = (
                f" (pid {st.pid}{expdir.gpus_text(st)})"
                if st.status == Status.RUNNING and st.pid is not None
                else ""
            )
            legs.append(f"{leg} {st.status}" + (f" ({expdir.job_text(st)})" if st.job_id else pid))
        elif fsutil.is_regular(d.log(leg)):
            legs.append(f"{leg} {'log' if d.plan else 'manual log'}")
        else:
            legs.append(f"{leg} not started")
    sup = f"  supervisor {d.supervisor_text};" if d.supervisor_text else ""
    if d.plan is not None and d.plan.executor == "slurm":
        sup = "  on Slurm;"
    if (p := d.prepare) is not None:
        why = f" ({p.note})" if p.note and p.status != Status.DONE else ""
        sup += f"  {reg.PREPARE} {p.status}{why};"
    other = "" if known else f"  (experiment '{d.experiment}' is not in the registry)"
    problem = f"  [problem: {d.problem}]" if d.problem else ""
    return f"{d.path.name}{sup}  {', '.join(legs) or 'no legs, no logs'}{other}{problem}"


def render_status(state: ResumeState) -> str:
    """`cockpit status`: the same state in a few lines."""
    out = [
        f"{state.project}  ({state.registry_path})",
        f"exp_root: {state.exp_root}",
        f"GPUs: {state.gpus.text}",
    ]
    if state.checkout is not None:
        out.append(f"branch: {state.checkout.text()}")
    if state.running:
        for m in state.running:
            out += [f"running: {running_line(m, state.tail)}", f"  dir: {m.dir}"]
    else:
        out.append(f"running: none ({', '.join(state.activity_clauses()) or 'all done'})")
    for e in state.experiments:
        where = "cpu" if e.device == "cpu" else f"{e.nproc_per_node} GPUs"
        counts: dict[str, int] = {}
        for m in e.legs:
            counts[m.mark] = counts.get(m.mark, 0) + 1
        summary = ", ".join(f"{n} {k}" for k, n in counts.items())
        out += ["", f"{e.id}  [{where}]  {summary}"]
        if e.prepare_text:
            out.append(f"  prepare: {e.prepare_text}")
        width = max((len(m.leg) for m in e.legs), default=0)
        for m in e.legs:
            base = "  (baseline)" if m.is_baseline else ""
            pid = f"{m.process}  " if m.process else ""
            job = f"  {m.job}" if m.job and m.mark != Mark.RUNNING else ""
            extra = (
                f"  {pid}{progress(m, state.tail)}"
                if m.mark == Mark.RUNNING
                else job + _figures(m, state.tail)
            )
            noted = m.mark in NOTED_MARKS or (m.job is not None and m.mark == Mark.QUEUED)
            why = f"  ({m.note})" if m.note and noted else ""
            if m.state is not None and m.state.notify_error:
                why += f"  [notify failed: {m.state.notify_error}]"
            out.append(f"  {m.leg:<{width}}  {m.mark:<8}{extra}{base}{why}".rstrip())
    known = {e.id for e in state.experiments}
    out += ["", f"dirs under exp_root: {len(state.dirs) or 'none yet'}"]
    out += [f"  {dir_line(d, d.experiment in known)}" for d in state.dirs]
    if state.next:
        out += ["", f"next: {state.next.experiment}/{state.next.leg}  ->  {state.next.cockpit}"]
    elif state.not_here:
        out += ["", "next: nothing this machine can run"]
    else:
        out += ["", "next: nothing pending"]
    out += [f"not here: {m.ref}: {m.not_here}" for m in state.not_here]
    return "\n".join(out)


GUIDE_NAME = "resume-guide.md"


def guide_path(registry: reg.Registry, out_md: Path | str | None = None) -> Path:
    """Where the guide goes: `out_md` (a user's choice, `~` expanded, made absolute), else
    `<exp_root>/resume-guide.md`. The TUI offers the default and writes where the user says."""
    if out_md is None or not str(out_md).strip():
        return registry.settings.exp_root / GUIDE_NAME
    return Path(os.path.abspath(os.path.expanduser(out_md)))


def write_guide(
    registry: reg.Registry,
    out_md: Path | str | None = None,
    sampler: gpus.Sampler | None = None,
    now: float | None = None,
    dirs: list[ExpDir] | None = None,
) -> Path:
    """Write the guide at `guide_path(registry, out_md)` (regenerated in place), atomically;
    `dirs`: expdir.discover(exp_root) when the caller has it.

    A place it cannot go (a directory, a path under a file, a read-only filesystem) is refused
    before anything is written: fsutil.UnsafePath, whose strerror is the one line to show.
    Inside exp_root, no symlink planted there is followed.
    """
    root = registry.settings.exp_root
    out = guide_path(registry, out_md)
    if why := fsutil.output_problem(out):
        raise fsutil.UnsafePath(out, why)
    text = render_guide(build_state(registry, sampler=sampler, now=now, dirs=dirs))
    fsutil.atomic_write(out, text, root=root if fsutil.is_inside(out.parent, root) else None)
    return out
