"""Where things stand: the registry joined with every experiment dir, as one state.

`build_state()` is the one model of where things stand: per experiment and leg a mark
(recorded, done, running, queued, waiting, failed, stopped, pending) with its dir and figures
against its baseline, the running legs, the next pending leg with its exact command (the
execution template), and the GPUs. `cockpit status`, `cockpit resume` and the TUI all render this
state (resume_text.py writes its words: the status lines and the resume guide); none of them joins
registry and dirs alone. Building it reads only.

Layer 3: imports the layers below (registry, vocab, logs, gpus, checkout, expdir, baseline, report).
"""

from __future__ import annotations

import datetime as dt
import os
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from cockpit import baseline, expdir, flags, fsutil, gpus, logs, report
from cockpit import registry as reg
from cockpit.baseline import Baseline
from cockpit.checkout import Branch, branch_check
from cockpit.expdir import ExpDir, LegState
from cockpit.vocab import (
    ACTIVE_MARKS,
    FINISHED_MARKS,
    TODO_MARKS,
    Mark,
    RunStatus,
    Status,
)


@dataclass
class LegMark:
    experiment: str
    leg: str
    mark: Mark
    dir: str | None = None  # the experiment dir the mark comes from (a recorded leg: where it ran)
    row: report.ReportRow | None = None  # figures: from the log here, or recorded (row.source)
    summary: logs.LegSummary | None = None  # the log's summary (progress of a running leg)
    note: str | None = None  # why failed/stopped/waiting, or "log ended without its final lines"
    description: str | None = None
    is_baseline: bool = False
    state: LegState | None = None  # the supervisor's record (reconciled): pid, times, exit code
    run: str | None = None  # the run whose log `summary` is: the leg's, or one of its repeats (`dense.r1`)
    baseline: Baseline | None = None  # what the leg's figures are compared with (baseline.choose)
    baseline_row: report.ReportRow | None = None  # the baseline's figures

    @property
    def log_name(self) -> str:
        """The file stem of the log the mark's summary comes from."""
        return self.run or self.leg

    @property
    def compared(self) -> bool:
        """Has the leg figures and a baseline with figures that is not the leg itself?"""
        b = self.baseline
        if (
            b is None
            or self.row is None
            or not self.row.has_figures
            or self.baseline_row is None
            or not self.baseline_row.has_figures
        ):
            return False
        itself = b.experiment == self.experiment and b.leg == self.leg
        return not (itself and (b.dir is None or (self.dir is not None and b.dir == Path(self.dir))))

    not_here: str | None = None  # why this machine cannot run it (a leg still to run): "needs 8 GPUs, ..."

    @property
    def pid(self) -> int | None:
        """torchrun's pid of a leg the cockpit runs (None for a manual run or no state)."""
        return self.state.pid if self.state is not None else None

    @property
    def job(self) -> str | None:
        """A Slurm leg's job in a few words (`job 123 on n[1-2], 0:42`); None for a local leg."""
        return expdir.job_text(self.state) if self.state is not None and self.state.job_id else None

    @property
    def process(self) -> str | None:
        """What runs the leg, for a reader: its Slurm job, else torchrun's pid and the GPUs it
        runs on (`pid 4242 on GPUs 2,3`)."""
        if self.job:
            return self.job
        return f"pid {self.pid}{expdir.gpus_text(self.state)}" if self.pid is not None else None

    @property
    def ref(self) -> str:
        return f"{self.experiment}/{self.leg}"


@dataclass
class ExperimentState:
    id: str
    title: str | None
    device: str
    nproc_per_node: int
    baseline: str | None  # "leg" or "experiment/leg", as in the registry
    decision: str | None
    hypothesis: str | None
    notes: tuple[str, ...]
    legs: list[LegMark]
    dirs: list[str]  # this experiment's dirs under exp_root, oldest first
    baseline_mark: LegMark | None = None
    prepare: reg.Prepare | None = None  # its prepare step (a launch runs it first when needed)
    prepare_missing: list[str] = field(default_factory=list)  # what the prepare creates that is not there now
    prepare_text: str | None = None  # the prepare step in one line: what it makes, whether a launch runs it

    @property
    def finished(self) -> list[LegMark]:
        return [m for m in self.legs if m.mark in FINISHED_MARKS]

    @property
    def todo(self) -> list[LegMark]:
        return [m for m in self.legs if m.mark in TODO_MARKS]

    @property
    def baseline_row(self) -> report.ReportRow | None:
        return self.baseline_mark.row if self.baseline_mark else None


@dataclass
class NextLeg:
    experiment: str
    leg: str
    mark: str  # pending, or failed/stopped when nothing is pending
    description: str | None
    exp_dir_template: str  # <exp_root>/$(date +%Y%m%d_%H%M%S)_<experiment>
    command: str  # the execution template: EXP_DIR=..., mkdir -p, torchrun ... | tee
    report_command: str
    cockpit: str  # the one-key equivalent


@dataclass
class GpuStatus:
    state: str  # "idle" | "busy" | "unknown"
    text: str  # one line for humans
    count: int = 0
    busy: list[int] = field(default_factory=list)
    visible: int | None = None  # GPUs NVML sees here; None when it cannot say
    reason: str | None = None  # why it cannot say


@dataclass
class ResumeState:
    generated: str
    project: str
    registry_path: str
    branch: str | None
    exp_root: str
    tail: int
    experiments: list[ExperimentState]
    running: list[LegMark]
    active: list[LegMark]  # running, queued and waiting
    next: NextLeg | None  # the next leg this machine (or the experiment's executor) can run
    gpus: GpuStatus
    reports: list[str]  # latest report.md files, newest first
    safety: list[str]
    dirs: list[ExpDir] = field(default_factory=list)  # every experiment dir under exp_root, oldest first
    checkout: Branch | None = None  # the checkout's branch beside the expected one (read-only git)
    workdir: str = ""  # the checkout the legs run in (the registry's dir unless it says otherwise)
    # the first leg to run in registry order, when this machine cannot run it (it comes before `next`)
    next_elsewhere: NextLeg | None = None

    @property
    def not_here(self) -> list[LegMark]:
        """Legs still to run that this machine cannot run (each says why: `not_here`)."""
        return [m for m in self.marks() if m.not_here and m.mark in TODO_MARKS]

    @property
    def activity(self) -> str:
        """What is going on, in a few words that are true: `2 legs running, 1 queued`,
        `nothing running, 4 legs to run, 1 of them not here`, `all done` (every leg done or recorded)."""
        rest = self.activity_clauses()
        if self.running:
            return ", ".join([f"{_n(len(self.running), 'leg')} running", *rest])
        return ", ".join(["nothing running", *rest]) if rest else "all done"

    def activity_clauses(self) -> list[str]:
        """Beside the running legs: the queued ones, else those still to run; unknown ones
        (`1 queued`, `4 legs to run`, `1 of them not here`, `1 unknown`)."""
        out = []
        if queued := len(self.active) - len(self.running):
            out.append(f"{queued} queued")
        elif not self.running and (todo := sum(len(e.todo) for e in self.experiments)):
            out.append(f"{_n(todo, 'leg')} to run")
            if far := len(self.not_here):
                out.append(
                    f"{far} of them not here"
                    if far < todo
                    else "not on this machine"
                    if todo == 1
                    else "none of them here"
                )
        if unknown := sum(m.mark == Mark.UNKNOWN for m in self.marks()):
            out.append(f"{unknown} unknown")
        return out

    def marks(self) -> list[LegMark]:
        return [m for e in self.experiments for m in e.legs]

    def find(self, ref: str) -> LegMark | None:
        return next((m for m in self.marks() if m.ref == ref), None)


# ----------------------------------------------------------------------------------------------
# building the state


def _leg_mark(exp: reg.Experiment, leg: reg.Leg, dirs: list[ExpDir], tail: int, now: float | None) -> LegMark:
    """The leg's mark from its dirs (newest first decides what is active) and the registry. A leg
    run with repeats counts as done in a dir when every repeat is done there; its row is then the
    aggregate of its repeats' rows."""
    m = LegMark(exp.id, leg.name, Mark.PENDING, description=leg.description)
    newest_first = list(reversed(dirs))
    done_in = None
    last_outcome = None  # (mark, dir, summary, note, state, run) of the newest run that did not finish
    for d in newest_first:
        runs = d.runs(leg.name)
        if not runs:
            continue
        seen = []  # (run, state, summary) of each run of the leg here
        for run in runs:
            log = d.log(run)
            seen.append(
                (
                    run,
                    d.states.get(run),
                    logs.summarize(log, tail=tail, now=now) if fsutil.is_regular(log) else None,
                )
            )
        for run, st, summary in seen:
            if st is not None and st.status == Status.UNKNOWN:
                return LegMark(
                    exp.id,
                    leg.name,
                    Mark.UNKNOWN,
                    str(d.path),
                    report.row_from_summary(summary, RunStatus.UNKNOWN) if summary else None,
                    summary,
                    st.note,
                    leg.description,
                    state=st,
                    run=run,
                )
        active = sorted(
            (x for x in seen if x[1] is not None and x[1].active), key=lambda x: x[1].status != Status.RUNNING
        )
        if active:
            run, st, summary = active[0]
            note = st.waiting_reason if st.status == Status.WAITING else st.note
            return LegMark(
                exp.id,
                leg.name,
                Mark(st.status),
                str(d.path),
                report.row_from_summary(summary, st.status) if summary else None,
                summary,
                note,
                leg.description,
                state=st,
                run=run,
            )
        for run, st, summary in seen:
            if st is None and summary is not None and d.plan is None and summary.status == RunStatus.RUNNING:
                # a manual run (no state) whose log is still growing
                return LegMark(
                    exp.id,
                    leg.name,
                    Mark.RUNNING,
                    str(d.path),
                    report.row_from_summary(summary),
                    summary,
                    "log growing (no cockpit state)",
                    leg.description,
                    run=run,
                )
        outcomes = []  # (mark, note, run, state, summary) of each run that ended
        for run, st, summary in seen:
            if st is not None:
                outcome = Mark(st.status)
                note = st.note or (st.error_tail[-1] if st.error_tail else None)
            elif summary is not None:
                outcome = {RunStatus.COMPLETED: Mark.DONE, RunStatus.FAILED: Mark.FAILED}.get(
                    summary.status, Mark.STOPPED
                )
                note = (
                    summary.error_line
                    if outcome == Mark.FAILED
                    else ("log ended without its final lines" if outcome == Mark.STOPPED else None)
                )
            else:
                continue
            scheduler_said = st is not None and st.job_id is not None and st.note  # NODE_FAIL, TIMEOUT...
            if outcome == Mark.FAILED and summary and summary.error_line and not scheduler_said:
                note = summary.error_line
            outcomes.append((outcome, note, run, st, summary))
        if not outcomes:
            continue
        if len(outcomes) == len(runs) and all(o[0] == Mark.DONE for o in outcomes):
            if done_in is None:
                done_in = (d, outcomes)
        elif last_outcome is None and done_in is None:
            outcome, note, run, st, summary = next(
                (o for o in outcomes if o[0] == Mark.FAILED), None
            ) or next((o for o in outcomes if o[0] != Mark.DONE), outcomes[-1])
            if outcome == Mark.DONE:  # every run that ended is done, and some never started
                outcome, note = Mark.STOPPED, f"{len(outcomes)} of {len(runs)} repeats done"
            last_outcome = (outcome, d, summary, note, st, run)
    if done_in is not None:
        d, outcomes = done_in
        m.mark, m.dir = Mark.DONE, str(d.path)
        _, _, m.run, m.state, m.summary = outcomes[-1]
        rows = [report.row_from_summary(o[4], RunStatus.COMPLETED) for o in outcomes if o[4] is not None]
        m.row = rows[0] if len(rows) == 1 else report.aggregate(leg.name, rows) if rows else None
        return m
    if leg.recorded is not None:
        m.mark, m.dir = Mark.RECORDED, leg.recorded.dir
        m.row = report.row_from_recorded(leg.name, leg.recorded)
        m.note = leg.recorded.source
        return m
    if last_outcome is not None:
        outcome, d, summary, note, m.state, m.run = last_outcome
        m.mark, m.dir, m.summary, m.note = outcome, str(d.path), summary, note
        m.row = report.row_from_summary(summary, outcome) if summary else None
    return m


def gpu_status(registry: reg.Registry, sampler: gpus.Sampler | None = None) -> GpuStatus:
    """Idle or busy by the registry's thresholds, from NVML; unknown (with why) without it."""
    try:
        if sampler is None:
            sampler = gpus.GpuSampler(history=1)
        snap = sampler.sample()
    except Exception as e:  # noqa: BLE001 - no GPU sampler is a normal state, shown as unknown
        why = f"GPU sampler failed: {type(e).__name__}: {e}"
        return GpuStatus("unknown", f"unknown ({why})", reason=why)
    if not snap.available:
        return GpuStatus("unknown", f"unknown (NVML unavailable: {snap.reason})", reason=snap.reason)
    if not snap.gpus:
        return GpuStatus("unknown", "unknown (NVML sees no GPU)", visible=0)
    idle = registry.settings.gpu_idle
    busy = [
        g
        for g in snap.gpus
        if (g.util_pct is not None and g.util_pct > idle.max_util_pct)
        or (g.mem_used_mib is not None and g.mem_used_mib > idle.max_mem_mib)
    ]
    at = (
        dt.datetime.fromtimestamp(snap.time or dt.datetime.now().timestamp())
        .astimezone()
        .strftime("%H:%M %z")
    )
    n = len(snap.gpus)
    util = max((g.util_pct or 0 for g in snap.gpus), default=0)
    mem = max((g.mem_used_mib or 0 for g in snap.gpus), default=0)
    if not busy:
        what = "1 GPU is" if n == 1 else f"{n} GPUs are"
        return GpuStatus(
            "idle", f"{what} idle (max `{util:.0f}% util`, max `{mem:.0f} MiB` used, at {at})", n, visible=n
        )
    detail = ", ".join(
        f"GPU {g.index} ({g.util_pct or 0:.0f}% util, {g.mem_used_mib or 0:.0f} MiB)" for g in busy
    )
    return GpuStatus(
        "busy", f"{len(busy)} of {n} GPUs are busy at {at}: {detail}", n, [g.index for g in busy], visible=n
    )


def prepare_text(p: reg.Prepare, exp_root: Path) -> str:
    """An experiment's prepare step in one line: whether a launch will run it, and its command."""

    def short(path: Path) -> str:
        return os.path.relpath(path, exp_root) if fsutil.is_inside(path, exp_root) else str(path)

    if p.unfinished():
        return (
            f"its last run did not end well ({short(p.mark)} is there), so what it left under exp_root is not "
            f"trusted: a launch runs `{shlex.join(p.command('python'))}` again first (output in <dir>/prepare.log)"
        )
    if missing := p.missing():
        return (
            f"{', '.join(short(m) for m in missing)} missing under exp_root: a launch runs "
            f"`{shlex.join(p.command('python'))}` first (output in <dir>/prepare.log)"
        )
    return f"ready ({', '.join(short(c) for c in p.creates)} under exp_root)"


def not_here(exp: reg.Experiment, leg: reg.Leg, gpu: GpuStatus) -> str | None:
    """Why this machine cannot run the leg, or None: a CPU leg runs anywhere, a leg sent to a
    Slurm cluster gets its GPUs from the scheduler, and a GPU leg needs that many GPUs here."""
    if leg.device == "cpu" or getattr(exp, "executor", "local") == "slurm":
        return None
    return gpus.shortfall(leg.nproc_per_node, gpu.visible, gpu.reason or gpu.text)


def _dq(text: str) -> str:
    """Double-quote for the shell, keeping `$EXP_DIR` and `$(date ...)` live."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("`", "\\`") + '"'


def _shell_arg(arg: str) -> str:
    if "$EXP_DIR" in arg:
        return _dq(arg)
    return shlex.quote(arg)


def execution_template(registry: reg.Registry, leg: reg.Leg) -> tuple[str, str]:
    """The shell recipe that runs a leg by hand in a fresh dir (activate the venv, EXP_DIR=<stamped
    dir>, mkdir, torchrun ... | tee the log): (EXP_DIR value, whole text)."""
    exp_dir_value = f"{registry.settings.exp_root}/$(date +%Y%m%d_%H%M%S)_{leg.experiment}"
    rt = leg.runtime or registry.runtime
    torchrun = str(rt.torchrun) if rt is not None and rt.torchrun is not None else "torchrun"
    lines = flags.command_lines(leg.argv("$EXP_DIR", torchrun), _shell_arg)
    lines[-1] += f' 2>&1 | tee "$EXP_DIR/{leg.name}.log"'
    head = ["source .venv/bin/activate" if torchrun == "torchrun" else f"# the legs' python: {rt.python}"]
    if rt is not None and rt.workdir != registry.workdir:  # the guide's `cd` is to the default checkout
        head.append(f"cd {shlex.quote(str(rt.workdir))}")
    head += [f"export {k}={shlex.quote(v)}" for k, v in (rt.env if rt is not None else {}).items()]
    prep = []
    exp = registry.experiment(leg.experiment)
    if exp is not None and exp.prepare is not None and exp.prepare.missing():
        python = "python" if torchrun == "torchrun" else str(rt.python)
        prep = [
            "# its inputs, first (missing now):",
            shlex.join(exp.prepare.command(python)) + ' 2>&1 | tee "$EXP_DIR/prepare.log"',
        ]
    text = "\n".join(
        [
            *head,
            f"EXP_DIR={_dq(exp_dir_value)}",
            'mkdir -p "$EXP_DIR/ckpt_root"',
            *prep,
            "",
            " \\\n  ".join(lines),
        ]
    )
    return exp_dir_value, text


def _cockpit_cmd(registry: reg.Registry, *args: str) -> str:
    """A cockpit command line; `--registry` only when a bare `cockpit` here would find another file."""
    try:
        found = reg.find_registry().resolve()
    except (reg.RegistryError, OSError):
        found = None
    extra = [] if found == registry.path.resolve() else ["--registry", str(registry.path)]
    return " ".join(shlex.quote(a) for a in ["cockpit", *args, *extra])


def next_leg(registry: reg.Registry, experiments: list[ExperimentState], here: bool = True) -> NextLeg | None:
    """The first pending leg in registry order; else the first failed or stopped one. `here`:
    only legs this machine (or the experiment's executor) can run (see `not_here`)."""
    marks = [m for e in experiments for m in e.legs if not (here and m.not_here)]
    pick = next((m for m in marks if m.mark == Mark.PENDING), None) or next(
        (m for m in marks if m.mark in (Mark.FAILED, Mark.STOPPED)), None
    )
    if pick is None:
        return None
    leg = registry.find_leg(pick.ref)
    assert leg is not None  # marks come from the registry
    value, text = execution_template(registry, leg)
    return NextLeg(
        experiment=pick.experiment,
        leg=pick.leg,
        mark=pick.mark,
        description=leg.description,
        exp_dir_template=value,
        command=text,
        report_command='cockpit report --exp-dir "$EXP_DIR" --out-md "$EXP_DIR/report.md"',
        cockpit=_cockpit_cmd(registry, "launch", pick.experiment, "--legs", pick.leg),
    )


def safety_lines(registry: reg.Registry) -> list[str]:
    s = registry.settings
    out = []
    if s.branch:
        out.append(f"Main branch must remain `{s.branch}`.")
    out.append(f"Only write experiment outputs/checkpoints under: `{s.exp_root}/`")
    for ro in s.read_only:
        out.append(f"Treat `{ro}` as read-only.")
    out += [
        f"Every launch makes a fresh dir `{s.exp_root}/<YYYYmmdd_HHMMSS>_<experiment>`; never reuse or overwrite an old one.",
        "Do not re-run completed legs (done here, or recorded) unless explicitly requested (`cockpit launch --rerun`).",
        "Preserve unrelated dirty/untracked files: the cockpit runs no git command that changes state.",
    ]
    return out


def build_state(
    registry: reg.Registry,
    sampler: gpus.Sampler | None = None,
    now: float | None = None,
    gpu: GpuStatus | None = None,
    dirs: list[ExpDir] | None = None,
    checkout: Branch | None = None,
) -> ResumeState:
    """Join the registry with every experiment dir under exp_root. Reads only; writes nothing.

    `sampler`: a GpuSampler (or anything with .sample()); by default one is made here. `gpu`:
    an already computed GPU status (the TUI samples on its own timer). `dirs`: the dirs of
    `expdir.discover(exp_root)` when the caller has them already (the TUI discovers once a pass).
    `checkout`: the checkout's branch when the caller has it (else git is asked, read only).
    """
    s = registry.settings
    tail = s.tail
    if dirs is None:
        dirs = expdir.discover(s.exp_root)
    if gpu is None:
        gpu = gpu_status(registry, sampler)
    experiments: list[ExperimentState] = []
    for exp in registry.experiments:
        mine = [d for d in dirs if d.experiment == exp.id]
        marks = [_leg_mark(exp, leg, mine, tail, now) for leg in exp.legs]
        for m, leg in zip(marks, exp.legs, strict=True):
            m.is_baseline = exp.baseline == m.leg
            if m.mark in TODO_MARKS:
                m.not_here = not_here(exp, leg, gpu)
        experiments.append(
            ExperimentState(
                exp.id,
                exp.title,
                exp.device,
                exp.nproc_per_node,
                exp.baseline,
                exp.decision,
                exp.hypothesis,
                exp.notes,
                marks,
                [str(d.path) for d in mine],
                prepare=exp.prepare,
                prepare_missing=[str(p) for p in exp.prepare.missing()] if exp.prepare else [],
                prepare_text=prepare_text(exp.prepare, s.exp_root) if exp.prepare else None,
            )
        )
    by_ref = {m.ref: m for e in experiments for m in e.legs}
    for e in experiments:
        if e.baseline:
            ref = e.baseline if "/" in e.baseline else f"{e.id}/{e.baseline}"
            e.baseline_mark = by_ref.get(ref)
    found: dict[tuple[str, str | None], tuple[Baseline | None, report.ReportRow | None]] = {}
    for e in experiments:  # each leg's baseline: the one its own dir's runs are compared with
        for m in e.legs:
            if m.row is None or not m.row.has_figures:
                continue
            key = (e.id, m.dir if m.mark != Mark.RECORDED else None)
            if key not in found:
                b = baseline.choose(registry, e.id, key[1], dirs)
                found[key] = (b, report.baseline_row(b, tail, now) if b is not None else None)
            m.baseline, m.baseline_row = found[key]
    reports = [str(d.path / "report.md") for d in reversed(dirs) if fsutil.is_regular(d.path / "report.md")]
    marks = [m for e in experiments for m in e.legs]
    nxt, first = next_leg(registry, experiments), next_leg(registry, experiments, here=False)
    return ResumeState(
        generated=dt.datetime.fromtimestamp(now if now is not None else dt.datetime.now().timestamp())
        .astimezone()
        .strftime("%Y-%m-%d %H:%M %z"),
        project=s.name,
        registry_path=str(registry.path),
        branch=s.branch,
        exp_root=str(s.exp_root),
        tail=tail,
        experiments=experiments,
        running=[m for m in marks if m.mark == Mark.RUNNING],
        active=[m for m in marks if m.mark in ACTIVE_MARKS],
        next=nxt,
        next_elsewhere=first
        if first is not None and (nxt is None or first.leg != nxt.leg or first.experiment != nxt.experiment)
        else None,
        gpus=gpu,
        reports=reports[:5],  # of the newest dirs (expdir's order), not by a clock
        safety=safety_lines(registry),
        dirs=dirs,
        checkout=checkout if checkout is not None else branch_check(checkout_dir(registry), s.branch),
        workdir=str(checkout_dir(registry)),
    )


def checkout_dir(registry: reg.Registry) -> Path:
    """The checkout the legs run in: `[defaults] workdir`, else the registry's dir."""
    return registry.workdir


def _n(k: int, word: str) -> str:
    return f"{k} {word}{'' if k == 1 else 's'}"
