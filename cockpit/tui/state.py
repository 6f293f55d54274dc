"""The cockpit's view-model: plain, frozen data that the widgets render.

Everything here is computed off the UI thread (in a worker, see build.py) from the core modules:
the registry, the resume state (`resume.build_state`, the one model of where things stand), the
GPU sampler, and the log summaries. The widgets get these objects and only format them; they
never read a file, join the registry with the dirs, or decide what a leg's state is. The words
(marks, statuses, metric names) are the core's own.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cockpit.figures import Figures
from cockpit.vocab import ACTIVE_STATUSES, DEFAULT_TAIL, Mark, Status


@dataclass(frozen=True)
class LegView:
    exp_id: str
    name: str
    mark: Mark
    description: str | None = None
    baseline: bool = False
    exp_dir: str | None = None  # the dir of its latest run here, if any
    log: str | None = None
    figures: Figures = Figures()  # recorded or measured (none: no run with figures)
    source: str = ""  # a vocab.Source (recorded: ran elsewhere; log: measured here), "" without figures
    note: str | None = None  # why failed, stopped or waiting (the core's words)
    job: str | None = None  # a Slurm leg's batch job: "job 123 on n[1-2], 0:42"
    gpus: str | None = None  # the GPUs a running leg was placed on: "GPUs 2,3"

    @property
    def key(self) -> str:
        return f"{self.exp_id}/{self.name}"


@dataclass(frozen=True)
class DirLegView:
    name: str
    status: str  # a leg status of the dir's state files, or "log" / "pending" without one
    log: str
    job: str | None = None  # a Slurm leg's batch job: "job 123 on n[1-2]"

    @property
    def started(self) -> bool:
        """Did this attempt start (it has a log, or a state past queued and waiting)?"""
        return self.status not in (Status.QUEUED, Status.WAITING, "pending")


@dataclass(frozen=True)
class DirView:
    path: str
    name: str
    experiment: str
    legs: tuple[DirLegView, ...] = ()
    problem: str | None = None  # what could not be read there (one printable line): the dir's own trouble

    def log_leg(self) -> DirLegView | None:
        """The leg whose log the dir opens: the one running there, else the last one that started."""
        started = [x for x in self.legs if x.started]
        active = [x for x in started if x.status in ACTIVE_STATUSES]
        return (active or started or [None])[-1]


@dataclass(frozen=True)
class ExperimentView:
    id: str
    title: str | None
    device: str
    gpus_needed: int
    baseline: str | None
    hypothesis: str | None
    decision: str | None
    legs: tuple[LegView, ...]
    dirs: tuple[DirView, ...] = ()
    executor: str = "local"  # who runs its legs: a supervisor here, or Slurm batch jobs

    def leg(self, name: str) -> LegView | None:
        return next((leg for leg in self.legs if leg.name == name), None)

    def latest_attempt(self, name: str) -> tuple[DirView, DirLegView] | None:
        """The leg's newest attempt here: the newest dir where it started (the run just stopped,
        even when an older dir holds the run that counts as done)."""
        for d in reversed(self.dirs):
            x = next((x for x in d.legs if x.name == name), None)
            if x is not None and x.started:
                return d, x
        return None


@dataclass(frozen=True)
class LiveView:
    """A running leg as its log shows it so far."""

    key: str  # "<exp_dir>/<leg>": unique across dirs
    exp_id: str
    leg: str
    exp_dir: str
    log: str
    step: int | None = None
    total: int | None = None
    pct: float | None = None
    # the last step line's loss, dt, tok/sec, MFU, drop % and balance (the log's summary until a
    # step line is followed: its tail means of dt, tok/sec and MFU)
    figures: Figures = Figures()
    tail_tok_per_sec: float | None = None
    tail_n: int = 0
    eta_min: float | None = None
    delta_tok_pct: float | None = None  # tail tok/sec vs the baseline of its dir (baseline.choose)
    delta_ci_pct: float | None = None  # the delta's 95% interval, once the tail window is full
    delta_basis: str = (
        ""  # what the interval rests on when repeats are in it: `n=1 run vs the baseline's 2 repeats`
    )
    verdict: str = ""  # a vocab.Verdict once the window is full, "12/50 steps" while it fills
    resolve: str = ""  # a `within noise` verdict: the repeats that would resolve it (stats.fmt_resolve)
    baseline: str | None = None
    baseline_label: str | None = None  # `dense`, or `dense (baseline from <dir>)`
    baseline_problem: str | None = None  # why the baseline has no figures: `dense: <why>` (then no delta)
    tok_hist: tuple[float, ...] = ()
    loss_hist: tuple[float, ...] = ()


@dataclass(frozen=True)
class RowView:
    """A row of the final table: a run of the dir (a leg, one repeat of it, or the aggregate of its
    repeats), or the baseline the dir's deltas are against when it ran elsewhere."""

    run: str  # the report's run name (the log's stem; the leg for an aggregate)
    status: str
    figures: Figures  # the report row's
    deltas: dict[str, float | None] = field(default_factory=dict)
    cis: dict[str, float] = field(default_factory=dict)  # each delta's 95% interval, where there is one
    verdicts: dict[str, str] = field(default_factory=dict)  # each delta's vocab.Verdict, where there is one
    spread: dict[str, float] = field(default_factory=dict)  # an aggregate row's std across its repeats
    baseline: bool = False  # this run is the baseline the others are compared with
    label: str = ""  # the name shown: the run's, `dense [baseline]` for a baseline run elsewhere
    sub: str | None = None  # what the name does not say: `baseline`, `mean of 3 repeats`, `from <dir>`
    why: dict[str, str] = field(default_factory=dict)  # column heading -> why its delta is `-` (a 0 figure)
    bases: dict[str, str] = field(
        default_factory=dict
    )  # what an interval rests on when repeats are in it: `n=2 repeats`
    resolve: str = ""  # the repeats that would resolve its `within noise` deltas, as the report says it

    @property
    def name(self) -> str:
        return self.label or self.run


@dataclass(frozen=True)
class ReportView:
    exp_dir: str | None
    title: str
    tail: int
    rows: tuple[RowView, ...] = ()
    baseline: str | None = None
    note: str | None = None  # why there are no rows
    baseline_label: str | None = None  # the baseline's column heading (report's Baseline.column)
    baseline_source: str | None = None  # `baseline from <dir>`, when not the dir's own
    warnings: tuple[str, ...] = ()  # what differs between the baseline's launch and the dir's, or why the
    # pinned baseline has no figures and how to compare with another run (whole lines)
    head: str | None = None  # what the deltas are against and how to read them (one line, wrapped)
    notes: tuple[str, ...] = ()  # the report's notes under its table: short tails, runs' troubles, no delta


@dataclass(frozen=True)
class ResumeView:
    completed: tuple[str, ...] = ()  # "experiment: leg (mark), ...", one line per experiment
    remaining: tuple[str, ...] = ()
    next_label: str | None = None  # "experiment/leg (pending)"
    next_command: str | None = (
        None  # the shell recipe (EXP_DIR=..., torchrun ... | tee), as the guide writes it
    )
    next_cockpit: str | None = None  # the one-command equivalent
    rules: tuple[str, ...] = ()
    active: tuple[str, ...] = ()
    gpus: str | None = None


@dataclass(frozen=True)
class GpuProc:
    """A process on a GPU: the leg whose tree holds it (None: not a leg's), its GPU memory if NVML says."""

    pid: int
    leg: str | None
    mem_mib: float | None


@dataclass(frozen=True)
class GpuRow:
    index: int
    name: str
    util_pct: float | None
    mem_used_mib: float | None
    mem_total_mib: float | None
    temp_c: float | None
    power_w: float | None
    leg: str | None
    util_hist: tuple[float, ...] = ()  # the sampler's history, oldest first, one value a sample
    mem_hist: tuple[float, ...] = ()  # MiB used
    temp_hist: tuple[float, ...] = ()
    power_hist: tuple[float, ...] = ()
    procs: tuple[GpuProc, ...] = ()
    power_limit_w: float | None = None  # NVML's enforced limit: the power history's full scale
    procs_error: str | None = None  # why NVML could not list the processes (then `procs` says nothing)

    @property
    def leg_mem_mib(self) -> float | None:
        """GPU memory of the owning leg's processes on this GPU (None: NVML gives no per-process figure)."""
        mems = [
            p.mem_mib for p in self.procs if p.leg is not None and p.leg == self.leg and p.mem_mib is not None
        ]
        return sum(mems) if mems else None


@dataclass(frozen=True)
class HostRow:
    cpu_pct: float | None
    ram_used_mib: float | None
    ram_total_mib: float | None
    load1: float | None
    cpu_hist: tuple[float, ...] = ()
    ram_hist: tuple[float, ...] = ()


@dataclass(frozen=True)
class GpuView:
    available: bool
    reason: str | None
    gpus: tuple[GpuRow, ...]
    host: HostRow | None
    summary: str  # "8 GPUs idle", "no NVML"
    slurm: tuple[str, ...] = ()  # the nodes each running Slurm leg holds: NVML sees this machine only


@dataclass(frozen=True)
class Headline:
    """What the top line shows: the project, the checkout's branch, training and GPU state."""

    project: str
    branch: str | None
    expected_branch: str | None
    training: str
    gpus: str | None  # the GPU summary; None until the first sample
    problems: int = 0  # problems found while computing (listed in the resume panel)
    running: int = 0  # legs running: the training state shows green while any is


@dataclass(frozen=True)
class CockpitView:
    project: str
    registry_path: str
    exp_root: str
    branch: str | None
    expected_branch: str | None
    training: (
        str  # resume.ResumeState.activity: "2 legs running", "nothing running, 4 legs to run", "all done"
    )
    experiments: tuple[ExperimentView, ...]
    gpu: GpuView | None
    live: tuple[LiveView, ...] = ()
    resume: ResumeView = ResumeView()
    errors: tuple[str, ...] = ()  # problems found while computing (shown, never raised)
    tail: int = (
        DEFAULT_TAIL  # the registry's tail window: live and final tables average the last `tail` steps
    )
    running: int = 0  # legs running (resume.ResumeState.running), counted beside the words in `training`

    def experiment(self, exp_id: str) -> ExperimentView | None:
        return next((e for e in self.experiments if e.id == exp_id), None)

    @property
    def headline(self) -> Headline:
        return Headline(
            self.project,
            self.branch,
            self.expected_branch,
            self.training,
            self.gpu.summary if self.gpu else None,
            len(self.errors),
            self.running,
        )

    def leg_marks(self) -> dict[str, str]:
        """`exp_dir/leg` -> status of every leg run here: the app compares two of these to notify."""
        return {
            f"{d.path}/{leg.name}": leg.status for e in self.experiments for d in e.dirs for leg in d.legs
        }
