"""Where things stand: the registry joined with every experiment dir, and the resume guide.

`build_state()` is the one model of where things stand: per experiment and leg a mark
(recorded, done, running, queued, waiting, failed, stopped, pending) with its dir and figures,
the running legs, the next pending leg with its exact command, and the GPUs. `cockpit status`,
`cockpit resume` and the TUI all render this state; none of them joins registry and dirs alone.

`render_guide()` writes it as a resume guide, in the sections a researcher would write one by hand
for whoever picks the work up: current state, latest reports, completed work (do not re-run) with
tables and decisions, remaining work with the next command, and the safety constraints.

Layer 3: imports the layers below (registry, vocab, stats, logs, gpus, expdir, baseline, report).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from cockpit import baseline, expdir, flags, fsutil, gpus, logs, report, safetext, stats
from cockpit import registry as reg
from cockpit.baseline import Baseline
from cockpit.checkout import Branch, branch_check
from cockpit.expdir import ExpDir, LegState
from cockpit.logs import progress as logs_progress
from cockpit.vocab import (
    ACTIVE_MARKS,
    FINISHED_MARKS,
    NOTED_MARKS,
    QUALITY,
    TODO_MARKS,
    Mark,
    RunStatus,
    Source,
    Status,
    Verdict,
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
        if b is None or self.row is None or not self.row.has_figures or self.baseline_row is None \
                or not self.baseline_row.has_figures:
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
        rest = self._activity_rest()
        if self.running:
            return ", ".join([f"{_n(len(self.running), 'leg')} running", *rest])
        return ", ".join(["nothing running", *rest]) if rest else "all done"

    def _activity_rest(self) -> list[str]:
        """Beside the running legs: the queued ones, else those still to run; unknown ones."""
        out = []
        if queued := len(self.active) - len(self.running):
            out.append(f"{queued} queued")
        elif not self.running and (todo := sum(len(e.todo) for e in self.experiments)):
            out.append(f"{_n(todo, 'leg')} to run")
            if far := len(self.not_here):
                out.append(f"{far} of them not here" if far < todo else
                           "not on this machine" if todo == 1 else "none of them here")
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
            seen.append((run, d.states.get(run), logs.summarize(log, tail=tail, now=now) if fsutil.is_regular(log) else None))
        for run, st, summary in seen:
            if st is not None and st.status == Status.UNKNOWN:
                return LegMark(exp.id, leg.name, Mark.UNKNOWN, str(d.path),
                               report.row_from_summary(summary, RunStatus.UNKNOWN) if summary else None,
                               summary, st.note, leg.description, state=st, run=run)
        active = sorted((x for x in seen if x[1] is not None and x[1].active), key=lambda x: x[1].status != Status.RUNNING)
        if active:
            run, st, summary = active[0]
            note = st.waiting_reason if st.status == Status.WAITING else st.note
            return LegMark(exp.id, leg.name, Mark(st.status), str(d.path),
                           report.row_from_summary(summary, st.status) if summary else None,
                           summary, note, leg.description, state=st, run=run)
        for run, st, summary in seen:
            if st is None and summary is not None and d.plan is None and summary.status == RunStatus.RUNNING:
                # a manual run (no state) whose log is still growing
                return LegMark(exp.id, leg.name, Mark.RUNNING, str(d.path), report.row_from_summary(summary),
                               summary, "log growing (no cockpit state)", leg.description, run=run)
        outcomes = []  # (mark, note, run, state, summary) of each run that ended
        for run, st, summary in seen:
            if st is not None:
                outcome = Mark(st.status)
                note = st.note or (st.error_tail[-1] if st.error_tail else None)
            elif summary is not None:
                outcome = {RunStatus.COMPLETED: Mark.DONE, RunStatus.FAILED: Mark.FAILED}.get(summary.status, Mark.STOPPED)
                note = summary.error_line if outcome == Mark.FAILED else (
                    "log ended without its final lines" if outcome == Mark.STOPPED else None)
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
            outcome, note, run, st, summary = next((o for o in outcomes if o[0] == Mark.FAILED), None) or next(
                (o for o in outcomes if o[0] != Mark.DONE), outcomes[-1])
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
        g for g in snap.gpus
        if (g.util_pct is not None and g.util_pct > idle.max_util_pct)
        or (g.mem_used_mib is not None and g.mem_used_mib > idle.max_mem_mib)
    ]
    at = dt.datetime.fromtimestamp(snap.time or dt.datetime.now().timestamp()).astimezone().strftime("%H:%M %z")
    n = len(snap.gpus)
    util = max((g.util_pct or 0 for g in snap.gpus), default=0)
    mem = max((g.mem_used_mib or 0 for g in snap.gpus), default=0)
    if not busy:
        what = "1 GPU is" if n == 1 else f"{n} GPUs are"
        return GpuStatus("idle", f"{what} idle (max `{util:.0f}% util`, max `{mem:.0f} MiB` used, at {at})", n,
                         visible=n)
    detail = ", ".join(f"GPU {g.index} ({g.util_pct or 0:.0f}% util, {g.mem_used_mib or 0:.0f} MiB)" for g in busy)
    return GpuStatus("busy", f"{len(busy)} of {n} GPUs are busy at {at}: {detail}", n, [g.index for g in busy],
                     visible=n)


def prepare_text(p: reg.Prepare, exp_root: Path) -> str:
    """An experiment's prepare step in one line: whether a launch will run it, and its command."""
    def short(path: Path) -> str:
        return os.path.relpath(path, exp_root) if fsutil.is_inside(path, exp_root) else str(path)

    if p.unfinished():
        return (f"its last run did not end well ({short(p.mark)} is there), so what it left under exp_root is not "
                f"trusted: a launch runs `{shlex.join(p.command('python'))}` again first (output in <dir>/prepare.log)")
    if missing := p.missing():
        return (f"{', '.join(short(m) for m in missing)} missing under exp_root: a launch runs "
                f"`{shlex.join(p.command('python'))}` first (output in <dir>/prepare.log)")
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
        prep = ["# its inputs, first (missing now):",
                shlex.join(exp.prepare.command(python)) + ' 2>&1 | tee "$EXP_DIR/prepare.log"']
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
                exp.id, exp.title, exp.device, exp.nproc_per_node, exp.baseline, exp.decision, exp.hypothesis,
                exp.notes, marks, [str(d.path) for d in mine], prepare=exp.prepare,
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
        next_elsewhere=first if first is not None and (nxt is None or first.leg != nxt.leg
                                                       or first.experiment != nxt.experiment) else None,
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


# ----------------------------------------------------------------------------------------------
# rendering


def _n(k: int, word: str) -> str:
    return f"{k} {word}{'' if k == 1 else 's'}"


def progress(m: LegMark, tail: int = 50) -> str:
    """`step 42/280 (15.00%), loss 6.1235, 806,400 tok/s, ETA 0:02:36` from the leg's log (the
    words the terminal app's live table uses too: logs.progress)."""
    return "no step lines yet" if m.summary is None else logs_progress.line(m.summary, tail)


def _mark_line(m: LegMark, tail: int = 50) -> str:
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
    out += [f"Registry: `{state.registry_path}`", f"Experiment root: `{state.exp_root}`", "", "## Current State", ""]
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
                kinds = sorted({"recorded" if m.mark == Mark.RECORDED else "run here" for m in fin if m.dir == d})
                out.append(f"- {safetext.md_code(d)} ({', '.join(kinds)})")
            out.append("")
        out += ["Final metrics snapshot:", "", report.render_table([m.row for m in fin], state.tail, source_column=True)]
        if len({m.dir for m in fin if m.mark == Mark.DONE}) > 1:
            out += ["", "These legs finished in more than one dir (above): each delta below compares a leg "
                        "with the baseline of its own dir, or names the dir its baseline comes from."]
        if any(m.row.value(q) is not None for m in fin for q in QUALITY):
            out += ["", "Quality and routing:", "", report.render_quality([m.row for m in fin], state.tail)]
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
                out += [f"\n{line}" for line in report.baseline_notes(b, Path(m.dir) if m.dir else None)]
            out += ["", report.render_delta(m.baseline_row, run, state.tail, base_label=b.column)]
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
            out.append(f"Baseline: `{e.baseline}`" + (f" ({e.baseline_mark.mark})" if e.baseline_mark else ""))
        if e.prepare_text:
            out.append(f"Prepare: {_text(e.prepare_text)}")
        out += [f"- {_mark_line(m)}" + (f"; not on this machine: {m.not_here}" if m.not_here else "") for m in todo]
    if far is not None:
        why = state.find(f"{far.experiment}/{far.leg}")
        out += ["", f"Next leg on a machine that can run it: {_next_text(far)}. This machine cannot run it: "
                    f"{why.not_here if why else 'see above'}.", ""]
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


def _figures(m: LegMark, tail: int = 50) -> str:
    """`  6694.57 tok/s, mfu 0.0000  Δ -31.30% ±4.12% significant vs dense 9744.48 tok/s`: the
    leg's tail figures (with how many steps they rest on when the run was shorter than the window)
    and its tok/sec against its baseline's figure (named when it is not its own dir's)."""
    r = m.row
    if r is None or r.tok_per_sec is None:
        return ""
    text = f"  {r.tok_per_sec:.2f} tok/s"
    s = r.summary
    if s is not None and logs_progress.short_tail(s.tail_n, tail):
        text += f" ({logs_progress.tail_text(s.tail_n, tail)})"
    if r.mfu is not None:
        text += f", mfu {r.mfu:.4f}"
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
    where = " (recorded)" if m.baseline.dir is None else f" ({m.baseline.source})" if m.baseline.source else ""
    return f"  Δ {stats.fmt_pct(pct)}{ci}{verdict} vs {m.baseline.leg}{figure}{where}"


UNITS = {"tok_per_sec": "tok/s", "dt_ms": "ms"}  # a figure's unit after it, in a line of words


def running_line(m: LegMark, tail: int = 50) -> str:
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
            pid = f" (pid {st.pid}{expdir.gpus_text(st)})" if st.status == Status.RUNNING and st.pid is not None else ""
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
        out.append(f"running: none ({', '.join(state._activity_rest()) or 'all done'})")
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
            extra = f"  {pid}{progress(m, state.tail)}" if m.mark == Mark.RUNNING else job + _figures(m, state.tail)
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
    registry: reg.Registry, out_md: Path | str | None = None, sampler: gpus.Sampler | None = None,
    now: float | None = None, dirs: list[ExpDir] | None = None,
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
