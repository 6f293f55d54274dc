"""Experiment dirs on disk: each leg's state file, the plan, discovery, and reconciling with the process table.

An experiment dir is the one place a launch writes to:

    <exp_root>/<YYYYmmdd_HHMMSS>_<experiment>/
        plan.json             written once at launch: every leg's argv, the registry, git, host
        plan.<n>.json         written once by the n-th continuation of the dir (`launch --into`):
                              the runs it adds, the dir's runs it asks to run now, its own git
                              (both read as one typed plan: plan.py)
        <leg>.log             the leg's combined torchrun output (the supervisor is not in the path)
        ckpt_root/            the legs' --checkpoint-root
        state/<leg>.json      status, pids, times, exit code (written atomically)
        state/<leg>.stop      a request to stop the leg (`cockpit stop DIR LEG`)
        state/supervisor.*    the supervisor's own record, log and lock
        state/.plan.lock      held while a continuation is recorded, and while the supervisor
                              decides to end (so a continuation is either taken or sees it ended)
        report.md             regenerated after every leg

Every client (the CLI, the TUI, the supervisor starting over) reads the same files and reconciles
them with the process table, or, for a leg run as a Slurm batch job (its state holds the job id),
with the scheduler's job table (`reconcile_job`): a leg recorded as running whose torchrun is gone (its supervisor was
killed) is judged from its log's final lines, with the exit code marked unknown. Reading a dir
(`open_dir`, `discover`) writes nothing: the reconciled states live in memory, and a Slurm leg's
news is recorded only by a reader that asks for it (executors.slurm_record). A recorded
process counts as the leg's only when proven (pid, create time, torchrun with the plan's args and
this dir's marker: see procs.py); one that cannot be proven is `unknown` and is never signalled.
Every file written here is created inside its dir without following a planted link (see
fsutil.py), and a dir that cannot be read is that dir's problem (`ExpDir.problem`), never the
whole view's.

Layer 1: imports fsutil, procs, scheduler, safetext, registry, vocab, logs and plan.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from cockpit import fsutil, logs, procs, safetext, scheduler
from cockpit import registry as reg
from cockpit.plan import PLAN_FILE, SUPERVISOR, Plan, PlanError, PlanRun, Seq, leg_name_ok
from cockpit.vocab import ACTIVE_STATUSES, ENDED_STATUSES, LEG_STATUSES, RunStatus, Status

STAMP_FORMAT = "%Y%m%d_%H%M%S"
DIR_NAME = re.compile(r"^(\d{8}_\d{6})_(.+)$")
STATE_DIR = "state"
LOCK_DIR = ".cockpit-locks"  # <exp_root>/.cockpit-locks/<experiment>.lock: one queue per experiment
ERROR_TAIL = 20  # lines of the log kept in a failed leg's state
# A Slurm job no source knows: not judged while its log was written this recently (something still
# writes it), and the judgment asked again this long after it was made (see reconcile_job)
LOG_FRESH_S = 60.0
REVIVE_S = 24 * 3600.0
STATE_MAX_BYTES = 1 << 20  # a state file is a few hundred bytes; a bigger one is not ours


class RunError(Exception):
    """A refusal or a bad request: one line, shown by the CLI with exit code 2."""


def describe(e: BaseException) -> str:
    """An exception as one printable line of at most 200 characters (for a RunError or a problem)."""
    return safetext.oneline(fsutil.oneline(e))[:200]


# ----------------------------------------------------------------------------------------------
# leg state


@dataclass
class LegState:
    leg: str
    status: Status  # one of LEG_STATUSES as written; UNKNOWN once reconciled (see reconcile)
    pid: int | None = None  # torchrun's pid
    create_time: float | None = None  # torchrun's psutil create time: guards against pid reuse
    supervisor_pid: int | None = None
    supervisor_create_time: float | None = None
    started_at: str | None = None  # ISO times
    ended_at: str | None = None
    exit_code: int | None = None
    exit_code_known: bool = True  # False when the outcome came from the log (supervisor gone)
    error_tail: list[str] = field(default_factory=list)
    waiting_reason: str | None = None  # why a leg waits (busy GPUs), while status is "waiting"
    note: str | None = None  # e.g. "preflight skipped: NVML unavailable: ...", why it stopped
    log: str | None = None  # path of <exp_dir>/<leg>.log
    log_id: list[int] | None = (
        None  # (device, inode) of the log the supervisor created: only it is appended to
    )
    notify_error: str | None = None  # the registry's notify command failed for this leg: why (never fatal)
    # A leg run as a Slurm batch job: the scheduler runs it, not a supervisor (see reconcile_job)
    job_id: str | None = None
    nodes: str | None = None  # the Slurm node list it holds or held ("n[1-2]")
    elapsed_s: int | None = None  # its run time so far, as the scheduler counts it
    forgotten_at: str | None = (
        None  # when the scheduler was found not to know its job (outcome read from the log)
    )
    gpus: list[int] | None = (
        None  # the GPUs (NVML indices) it runs or ran on; None: a CPU leg, or not placed yet
    )

    @property
    def active(self) -> bool:
        return self.status in ACTIVE_STATUSES

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LegState | None:
        """A state from its JSON, or None when it is not one (a hand-edited or foreign file)."""
        known = {f.name for f in fields(cls)}
        st = cls(**{k: v for k, v in data.items() if k in known})
        ok = (
            isinstance(st.leg, str)
            and st.status in LEG_STATUSES
            and all(_is_int(v) for v in (st.pid, st.supervisor_pid, st.exit_code) if v is not None)
            and all(_is_num(v) for v in (st.create_time, st.supervisor_create_time) if v is not None)
            and isinstance(st.exit_code_known, bool)
            and isinstance(st.error_tail, list)
            and all(isinstance(v, str) for v in st.error_tail)
            and all(
                v is None or isinstance(v, str)
                for v in (st.started_at, st.ended_at, st.waiting_reason, st.note, st.log, st.notify_error)
            )
            and (
                st.log_id is None
                or (
                    isinstance(st.log_id, list) and len(st.log_id) == 2 and all(_is_int(v) for v in st.log_id)
                )
            )
            and (st.job_id is None or (isinstance(st.job_id, str) and st.job_id.isdigit()))
            and (st.nodes is None or isinstance(st.nodes, str))
            and (st.elapsed_s is None or _is_int(st.elapsed_s))
            and (st.forgotten_at is None or isinstance(st.forgotten_at, str))
            and (
                st.gpus is None or (isinstance(st.gpus, list) and all(_is_int(v) and v >= 0 for v in st.gpus))
            )
        )
        return st if ok else None


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def now_iso() -> str:
    return dt.datetime.now().astimezone().isoformat(timespec="seconds")


def state_path(exp_dir: Path | str, leg: str) -> Path:
    return Path(exp_dir) / STATE_DIR / f"{leg}.json"


def write_state(exp_dir: Path | str, state: LegState) -> None:
    fsutil.atomic_write_json(state_path(exp_dir, state.leg), asdict(state), root=exp_dir)


def read_json(path: Path | str, limit: int = STATE_MAX_BYTES) -> Any:
    """A small JSON file (a regular file, at most `limit` bytes); OSError or ValueError."""
    return json.loads(fsutil.read_bytes(path, limit))


def read_state(exp_dir: Path | str, leg: str) -> LegState | None:
    """The leg's state as recorded (not reconciled); None when there is none or it is unreadable."""
    try:
        data = read_json(state_path(exp_dir, leg))
        st = LegState.from_dict(data) if isinstance(data, dict) and "status" in data else None
    except (OSError, ValueError, TypeError, RecursionError):  # unreadable, not JSON, keys of wrong kinds
        return None
    return (
        st if st is not None and st.leg == leg else None
    )  # another leg's (or no leg's) record: not this one


def stop_request_path(exp_dir: Path | str, leg: str) -> Path:
    """`state/<leg>.stop`: asks the supervisor to stop the leg (or not to start it)."""
    return Path(exp_dir) / STATE_DIR / f"{leg}.stop"


# The note of a leg that ended done while a stop was on its way: the stop lost the race.
STOP_CAME_LATE = "stop came after it ended"


def clear_stop_request(exp_dir: Path | str, leg: str) -> bool:
    """Remove a leg's stop request once the leg has ended (it was honoured, or it came too late):
    none stays behind to be read as pending. The state dir is walked without following a link;
    the request itself is unlinked, never followed. True when one was there."""
    exp_dir = Path(exp_dir)
    try:
        fd = fsutil.open_dir(exp_dir / STATE_DIR, root=exp_dir)
    except OSError:
        return False
    try:
        os.unlink(f"{leg}.stop", dir_fd=fd)
        return True
    except OSError:  # none there (the common case), or not ours to remove
        return False
    finally:
        os.close(fd)


def lock_path(exp_root: Path | str, experiment: str) -> Path:
    """`<exp_root>/.cockpit-locks/<experiment>.lock`: held by the experiment's one live queue."""
    return Path(exp_root) / LOCK_DIR / f"{experiment}.lock"


def try_lock(path: Path, held_message: str, root: Path | str | None = None) -> int:
    """Take an exclusive flock on `path` without waiting and return its fd; RunError(held_message)
    when another process holds it. The lock lasts as long as the fd stays open. The lock file is
    created inside `root` (default: its own dir), never through a symlink."""
    try:
        fd = fsutil.try_lock(path, root if root is not None else Path(path).parent)
    except OSError as e:
        raise RunError(f"cannot take the lock {path}: {describe(e)}") from None
    if fd is None:
        raise RunError(held_message)
    return fd


PLAN_LOCK = ".plan.lock"  # state/.plan.lock: no leg's (a leg name never starts with '.')


def plan_lock(exp_dir: Path | str, wait_s: float = 30.0) -> int:
    """Take the dir's `state/.plan.lock`, waiting up to wait_s for whoever holds it (a
    continuation being recorded, a supervisor deciding to end: both brief); its fd, or RunError."""
    path = Path(exp_dir) / STATE_DIR / PLAN_LOCK
    deadline = time.monotonic() + wait_s
    while True:
        try:
            fd = fsutil.try_lock(path, exp_dir)
        except OSError as e:
            raise RunError(f"cannot take the lock {path}: {describe(e)}") from None
        if fd is not None:
            return fd
        if time.monotonic() >= deadline:
            raise RunError(f"{path} is held by another process for more than {wait_s:.0f}s")
        time.sleep(0.05)


def leg_expect(exp_dir: Path | str, leg: str, argv: Any) -> procs.Expect | None:
    """What the leg's torchrun runs: the plan's argv, with this dir's marker in its environment
    (the supervisor puts it there). None when the plan gives no usable argv."""
    if not (isinstance(argv, list) and argv and all(isinstance(a, str) for a in argv)):
        return None
    return procs.Expect(
        program=os.path.basename(argv[0]),
        argv=tuple(argv[1:]),
        environ={procs.ENV_EXP_DIR: os.path.realpath(exp_dir), procs.ENV_LEG: leg},
    )


def leg_env(exp_dir: Path | str, leg: str) -> dict[str, str]:
    """The marker the supervisor puts in a leg's environment (see leg_expect)."""
    return {procs.ENV_EXP_DIR: os.path.realpath(exp_dir), procs.ENV_LEG: leg}


def supervisor_identity(exp_dir: Path | str, record: dict | None) -> procs.Identity:
    """Is the supervisor that `state/supervisor.json` names alive, and provably this dir's?

    Proof: its pid and create time, and it holds this dir's `state/supervisor.lock` (a
    regular file with one link: /proc/locks names the holder). Where the system cannot say who
    holds a lock, its command line must be `-m cockpit.supervisor <this dir>`.
    """
    if not record or not isinstance(record, dict):
        return procs.Identity(procs.GONE, "no supervisor record")
    if record.get("ended_at"):
        return procs.Identity(procs.GONE, "the supervisor recorded its end")
    pid, created = record.get("pid"), record.get("create_time")
    same = procs.same_process(pid, created)
    if not same.alive:
        return same
    holders = fsutil.lock_holders(Path(exp_dir) / STATE_DIR / f"{SUPERVISOR}.lock")
    if holders is None:
        return procs.identify(
            pid, created, procs.Expect(argv=("cockpit.supervisor", os.path.realpath(exp_dir)))
        )
    if pid not in holders:
        return procs.Identity(procs.UNPROVEN, f"pid {pid} runs, but does not hold this dir's supervisor lock")
    return procs.Identity(procs.ALIVE, f"pid {pid} holds this dir's supervisor lock", same.process)


# ----------------------------------------------------------------------------------------------
# reading a leg's log: finished, crashed, or neither


def log_outcome(log: Path | str) -> tuple[RunStatus, list[str]]:
    """How a leg ended, judged from its log's final lines: (completed, failed or unknown, error tail)."""
    s = logs.summarize(log)
    if s.failed:
        return RunStatus.FAILED, error_tail(log)
    if s.finished:
        return RunStatus.COMPLETED, []
    return RunStatus.UNKNOWN, error_tail(log)


_GLOG = re.compile(r"^[WIE]\d{4} \d\d:\d\d:\d\d")  # torch.distributed's own log prefix


def error_tail(log: Path | str, n: int = ERROR_TAIL) -> list[str]:
    """The lines that say why a leg failed: the workers' last output before torchrun's report.

    torchrun ends a failed run with its own traceback and a ChildFailedError box, which name
    the failed rank but not the cause; the cause (a worker's traceback, an argparse error) is
    just above, often twice (every rank prints it). So: the worker lines above torchrun's
    `failed (exitcode: ...)` line, duplicates dropped, then that line itself.
    """
    lines = tail_lines(log, 400)
    cut = next((i for i, ln in enumerate(lines) if "failed (exitcode:" in ln), None)
    if cut is None:
        return lines[-n:]
    seen: set[str] = set()
    worker = []
    for ln in lines[:cut]:
        if _GLOG.match(ln) or ln in seen:
            continue
        seen.add(ln)
        worker.append(ln)
    summary = ln if (ln := lines[cut]).find("failed (exitcode:") < 0 else ln[ln.find("failed (exitcode:") :]
    return [*worker[-(n - 1) :], f"torchrun: {summary}"]


def tail_lines(path: Path | str, n: int, max_bytes: int = 64 * 1024) -> list[str]:
    """The last n non-empty lines of a file (reads at most max_bytes from its end)."""
    try:
        with fsutil.open_read(path) as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - max_bytes))
            data = f.read(max_bytes)
    except (OSError, ValueError):
        return []
    text = safetext.strip_escapes(data.decode("utf-8", errors="replace")).replace("\r", "\n")
    return [ln.rstrip() for ln in text.split("\n") if ln.strip()][-n:]


# ----------------------------------------------------------------------------------------------
# experiment dirs


@dataclass
class ExpDir:
    path: Path
    experiment: str  # from plan.json, else from the dir name
    created: str  # the YYYYmmdd_HHMMSS stamp of the dir name ("" when it has none)
    plan: Plan | None  # plan.json with its continuations; None: a dir of manual logs, or one it cannot read
    legs: list[str]  # planned runs, else the stems of the dir's *.log files
    states: dict[str, LegState]  # reconciled with the process table
    supervisor: dict | None = None  # state/supervisor.json as written
    supervisor_alive: bool = False  # proven (see supervisor_identity)
    problem: str | None = None  # what could not be read here (one line); the rest is what could
    prepare: LegState | None = None  # the plan's prepare step, as state/prepare.json records it (reconciled)

    @property
    def running(self) -> list[LegState]:
        return [s for s in self.states.values() if s.status == Status.RUNNING]

    @property
    def active(self) -> bool:
        return any(s.active for s in self.states.values())

    def log(self, leg: str) -> Path:
        return self.path / f"{leg}.log"

    def runs(self, leg: str) -> list[str]:
        """The runs of a registry leg here: its own name, or one per repeat (`dense.r0`, ...), in
        order. A plan says which run is which leg's; a dir of logs says it by their names."""
        out = []
        for name in self.legs:
            spec = self.spec(name)
            if spec is not None and spec.leg is not None:
                mine = spec.leg == leg
            else:
                base, i = reg.split_repeat(name)
                mine = name == leg or (i is not None and base == leg and spec is None)
            if mine:
                out.append(name)
        return out

    def spec(self, run: str) -> PlanRun | None:
        """The plan's entry of a run (name, argv, and for a repeat its leg and index), if any."""
        return self.plan.run(run) if self.plan is not None else None

    def run_done(self, run: str, by_log: bool = False) -> bool:
        """Did this run finish here: its state says done; in a dir of logs (no plan), its log's
        final lines. `by_log`: a run without a state in a planned dir (a log put there by hand)
        too, by its log."""
        st = self.states.get(run)
        if st is not None:
            return st.status == Status.DONE
        return (self.plan is None or by_log) and log_outcome(self.log(run))[0] == RunStatus.COMPLETED

    def never_started(self, run: str) -> bool:
        """Is a planned run of this dir still to run here: no process was ever started for it
        (no pid, no job, no log: it was stopped or failed before it started, or never reached),
        and nothing has it queued now."""
        st = self.states.get(run)
        if st is not None and (st.active or st.pid is not None or st.job_id is not None):
            return False
        return not os.path.lexists(self.log(run))

    def leg_done(self, leg: str, by_log: bool = False) -> bool:
        """Did a registry leg finish here: it ran here, and every one of its runs is done (see run_done)."""
        runs = self.runs(leg)
        return bool(runs) and all(self.run_done(r, by_log) for r in runs)

    @property
    def supervisor_text(self) -> str | None:
        """What became of the dir's supervisor, in words that say what is true: `running (pid N)`,
        `finished` (every leg done), `ended, legs not done`, or `gone` (killed: it never recorded
        its end). None when the dir never had one (a manual dir)."""
        sup = self.supervisor
        if not sup:
            return None
        if self.supervisor_alive:
            return f"running (pid {sup.get('pid')})"
        if sup.get("ended_at"):
            return "finished" if sup.get("status") == "finished" else "ended, legs not done"
        return "gone (killed before it recorded its end)"

    def expect(self, leg: str) -> procs.Expect | None:
        """What the leg's torchrun must be running to be proven the leg's (from the plan)."""
        spec = self.spec(leg)
        return leg_expect(self.path, leg, list(spec.argv)) if spec else None


def open_dir(path: Path | str) -> ExpDir:
    """Read one experiment dir (ours, or a manual one holding only logs) and reconcile its states.

    Never raises for what the dir holds: what cannot be read (a broken plan, an unreadable
    dir, names no file can have) is said in `problem`, and the rest is read as far as it goes.
    """
    path = Path(path)
    problems: list[str] = []
    plan = None
    if os.path.lexists(path / PLAN_FILE):
        try:
            plan = Plan.read(path)
            problems += [f"plan.json: {p}" for p in plan.problems] + list(plan.left_out)
        except PlanError as e:
            problems.append(f"plan.json unreadable: {e.why.removeprefix('unreadable: ')}")
    m = DIR_NAME.match(path.name)
    experiment = plan.experiment if plan is not None and plan.experiment else (m.group(2) if m else path.name)
    created = m.group(1) if m else ""
    if plan is not None:
        legs = plan.run_names
    else:
        try:
            legs = sorted(p.stem for p in path.glob("*.log") if fsutil.is_regular(p) and leg_name_ok(p.stem))
        except OSError as e:
            legs = []
            problems.append(f"cannot list the dir: {describe(e)}")
    sup = None
    if os.path.lexists(path / STATE_DIR / f"{SUPERVISOR}.json"):
        try:
            sup = read_json(path / STATE_DIR / f"{SUPERVISOR}.json")
            sup = sup if isinstance(sup, dict) else None
        except (OSError, ValueError, RecursionError) as e:
            problems.append(f"state/supervisor.json unreadable: {describe(e)}")
    sup_alive = supervisor_identity(path, sup).alive
    d = ExpDir(path, experiment, created, plan, legs, {}, sup, sup_alive)
    odd = [f"{leg}.log" for leg in legs if os.path.lexists(d.log(leg)) and not fsutil.is_regular(d.log(leg))]
    if odd:
        problems.append(f"not a regular file: {', '.join(odd)}")
    if plan is not None and plan.prepare is not None and (prep := read_state(path, reg.PREPARE)) is not None:
        d.prepare = _reconcile_prepare(path, prep, sup_alive)  # first: a Slurm leg's end may be its doing
    for leg in legs:
        st = read_state(path, leg)
        if st is not None:
            d.states[leg] = reconcile(path, st, sup_alive, d.expect(leg))
    d.problem = "; ".join(problems) or None
    return d


def reconcile(
    exp_dir: Path, st: LegState, supervisor_alive: bool, expect: procs.Expect | None = None
) -> LegState:
    """The state as it stands now. Only a dead supervisor leaves a state stale; fix it in memory.

    A leg recorded as running is judged by its process: proven alive, it runs on (the
    supervisor was killed, torchrun goes on logging); gone, it is judged from its log's final
    lines; there but not proven the leg's (`expect`), it is UNKNOWN and nothing may signal it.
    A Slurm leg is the scheduler's to judge (reconcile_job).
    """
    if st.job_id is not None:
        return reconcile_job(exp_dir, st)
    if supervisor_alive or not st.active:
        return st
    if st.status == Status.RUNNING:
        ident = procs.identify(st.pid, st.create_time, expect)
        if ident.alive:
            return st  # the supervisor was killed; torchrun goes on logging
        if ident.verdict == procs.UNPROVEN:
            st.status = Status.UNKNOWN
            st.note = f"{Status.UNKNOWN}: {procs.NOT_PROVEN} ({ident.why}); nothing will be signalled"
            return st
        outcome, tail = log_outcome(st.log or exp_dir / f"{st.leg}.log")
        st.status = Status.DONE if outcome == RunStatus.COMPLETED else Status.FAILED
        st.exit_code, st.exit_code_known = None, False
        st.error_tail = tail if st.status == Status.FAILED else []
        st.note = "supervisor gone: outcome read from the log's final lines" + (
            "" if outcome != RunStatus.UNKNOWN else " (neither finished nor crashed)"
        )
        return st
    # queued or waiting, and nobody left to start it
    st.status = Status.STOPPED
    st.note = "supervisor gone before the leg started"
    return st


def _reconcile_prepare(exp_dir: Path, st: LegState, supervisor_alive: bool) -> LegState:
    """A prepare step recorded as running or queued by a supervisor that is gone: still running
    when its process is (pid and create time), else stopped. One run as the first job of a Slurm
    chain is the scheduler's to judge, as a leg (reconcile_job); a failure says its last line."""
    if st.job_id is not None:
        st = reconcile_job(exp_dir, st)
        if st.status == Status.FAILED and st.note is None:
            st.note = f"exit {st.exit_code}" + (f": {st.error_tail[-1]}" if st.error_tail else "")
        return st
    if supervisor_alive or not st.active:
        return st
    if st.status == Status.RUNNING and procs.alive(st.pid, st.create_time):
        return st
    st.status, st.note = Status.STOPPED, "supervisor gone while it prepared"
    return st


def gpus_text(st: LegState | None) -> str:
    """` on GPUs 2,3` for a leg the supervisor placed on GPUs; "" for a CPU leg or one not placed."""
    return f" on GPUs {','.join(map(str, st.gpus))}" if st is not None and st.gpus else ""


def job_text(st: LegState) -> str:
    """A Slurm leg's job in a few words: `job 123 on n[1-2], 0:42`."""
    text = f"job {st.job_id}"
    if st.nodes:
        text += f" on {st.nodes}"
    if st.elapsed_s is not None and st.status == Status.RUNNING:
        m, sec = divmod(st.elapsed_s, 60)
        text += f", {m // 60}:{m % 60:02d}:{sec:02d}" if m >= 60 else f", {m}:{sec:02d}"
    return text


def reconcile_job(exp_dir: Path, st: LegState) -> LegState:
    """A Slurm leg's state as the scheduler tells it: pending (Dependency: queued; Resources,
    Priority, ...: waiting, with Slurm's reason), running (nodes, elapsed), or ended: done,
    failed with the scheduler's reason (NODE_FAIL, TIMEOUT, OUT_OF_MEMORY, CANCELLED) or the
    log's error line, stopped when the cockpit cancelled it (its stop request is there) or a leg
    before it failed under afterok (DependencyNeverSatisfied).

    A job id is only what the state file says: the job is shown as the leg only when it is proven
    the leg's (scheduler.proof: the name the cockpit gave it, this user, the leg's log as its
    output); else the leg is UNKNOWN, and nothing is recorded or cancelled.

    Reads only. The scheduler forgets a job MinJobAge after it ends (accounting, where there is
    some, keeps it): so a reader that wants what it was told kept records it in the leg's state
    file (executors.slurm_record.record_jobs), and an ended leg is not asked about again. A job
    that scontrol, squeue and sacct all do not know is forgotten: judged from its log's final lines, as a leg whose supervisor died, and
    never taken for running; while its log was written less than LOG_FRESH_S ago it is UNKNOWN
    instead (something still writes it). That judgment is asked again for REVIVE_S, or whenever
    the log grew since: a scheduler that knows the job again revives the leg.
    A scheduler that cannot be asked leaves the leg UNKNOWN (nothing may be said or signalled).
    """
    revive = not st.active and _may_revive(exp_dir, st)
    if not st.active and not revive:
        return st  # its end is recorded: the scheduler may have forgotten it since
    try:
        job = scheduler.job_state(st.job_id or "")
    except scheduler.SlurmError as e:
        if revive:
            return st
        st.status = Status.UNKNOWN
        st.note = f"{Status.UNKNOWN}: Slurm job {st.job_id} cannot be asked about: {e}"
        return st
    log_path = exp_dir / f"{st.leg}.log"  # the leg's log by the dir's own naming, not the state file's
    if job.phase != "forgotten":
        if why := scheduler.proof(job, scheduler.job_name(exp_dir.name, st.leg), str(log_path)):
            if revive:
                return st  # another job has that id now: the recorded judgment stands
            st.status = Status.UNKNOWN
            st.note = f"{Status.UNKNOWN}: Slurm job {st.job_id} is not proven the leg's ({why}); nothing will be cancelled"
            return st
        if revive:
            st.error_tail, st.ended_at = [], None
        st.forgotten_at = None
    elif revive:
        return st  # still forgotten: the recorded judgment stands
    st.nodes = job.nodes or st.nodes
    st.elapsed_s = job.elapsed_s if job.elapsed_s is not None else st.elapsed_s
    st.waiting_reason = None
    requested = os.path.lexists(stop_request_path(exp_dir, st.leg))
    log = log_path
    where = f"Slurm job {st.job_id}" + (f" on {job.nodes}" if job.nodes else "")
    if job.phase == "pending":
        if job.reason == "Dependency":
            st.status, st.note = Status.QUEUED, f"{where} pending (Dependency): waits for the leg before it"
        elif job.reason is None:  # just submitted: the scheduler has not looked at it yet
            st.status, st.note = Status.QUEUED, f"{where} pending"
        else:
            st.status, st.waiting_reason = Status.WAITING, f"{where} pending in Slurm: {job.reason}"
    elif job.phase == "running":
        st.status, st.started_at = Status.RUNNING, job.started or st.started_at or now_iso()
        st.note = f"{where}; the scheduler allocated its GPUs (no local preflight)"
    elif job.phase == "completed":
        st.status, st.exit_code, st.exit_code_known = Status.DONE, job.exit_code, True
        st.note = f"{where} completed"
    elif job.phase == "failed":
        st.exit_code, st.exit_code_known = job.exit_code, job.exit_code is not None
        if job.slurm_state == "CANCELLED" and (requested or job.reason == "DependencyNeverSatisfied"):
            st.status = Status.STOPPED
            prep = read_state(exp_dir, reg.PREPARE) if st.leg != reg.PREPARE else None
            if requested:
                st.note = "stopped by request (scancel)"
            elif prep is not None and prep.job_id and prep.status in (Status.FAILED, Status.STOPPED):
                st.note = f"not started: {reg.PREPARE} {prep.status} (Slurm: DependencyNeverSatisfied)"
            else:
                st.note = (
                    "queue stopped: a leg before it did not end done (on_failure = stop; "
                    "Slurm: DependencyNeverSatisfied)"
                )
            st.note += "" if job.ran or st.note.startswith("not started") else ", before it started"
        else:
            st.status, st.error_tail = Status.FAILED, error_tail(log) if job.ran else []
            if job.reason == "NonZeroExitCode":  # the trainer's own failure: its log says why
                st.note = None
            else:  # the scheduler ended it: its reason is the cause, said last (the line shown)
                st.note = f"{job.reason} ({where})"
                st.error_tail = [*st.error_tail[-(ERROR_TAIL - 1) :], st.note]
    else:  # forgotten: scontrol, squeue and sacct (where there is accounting) do not know the job
        if (age := _written_ago(log)) is not None and age < LOG_FRESH_S:
            st.status = Status.UNKNOWN
            st.note = (
                f"{Status.UNKNOWN}: the scheduler does not know Slurm job {st.job_id}, but its log was written "
                f"{age:.0f}s ago: asked again at the next look"
            )
            return st
        st.exit_code, st.exit_code_known = None, False
        st.forgotten_at = now_iso()
        outcome, tail = log_outcome(log) if _has_bytes(log) else (None, [])
        if outcome is None:
            st.status = Status.STOPPED
            st.note = (
                f"Slurm job {st.job_id} ended without writing to its log; the scheduler has forgotten it"
            )
        elif requested and outcome != RunStatus.COMPLETED:
            st.status, st.note = Status.STOPPED, "stopped by request (scancel)"
        else:
            st.status = Status.DONE if outcome == RunStatus.COMPLETED else Status.FAILED
            st.error_tail = tail if st.status == Status.FAILED else []
            st.note = (
                f"Slurm job {st.job_id} is forgotten by the scheduler (no accounting): outcome read from "
                "the log's final lines"
                + (" (neither finished nor crashed)" if outcome == RunStatus.UNKNOWN else "")
            )
    if st.status in ENDED_STATUSES:
        st.ended_at = job.ended or st.ended_at or now_iso()
    return st


def _may_revive(exp_dir: Path, st: LegState) -> bool:
    """Is this ended leg's end a forgotten job's, judged from its log recently enough (REVIVE_S),
    or before its log grew, to ask the scheduler again?"""
    if not st.job_id or not st.forgotten_at:
        return False
    try:
        judged = dt.datetime.fromisoformat(st.forgotten_at).timestamp()
    except ValueError:
        return False
    if dt.datetime.now().timestamp() - judged < REVIVE_S:
        return True
    try:
        return (exp_dir / f"{st.leg}.log").stat().st_mtime > judged + 1.0
    except OSError:
        return False


def _written_ago(path: Path) -> float | None:
    """Seconds since the file was last written, or None when it cannot be read."""
    try:
        return max(0.0, dt.datetime.now().timestamp() - path.stat().st_mtime)
    except OSError:
        return None


def _has_bytes(path: Path) -> bool:
    try:
        return fsutil.is_regular(path) and path.stat().st_size > 0
    except OSError:
        return False


def discover(exp_root: Path | str) -> list[ExpDir]:
    """Every experiment dir under exp_root (ours or manual ones with logs), oldest first.

    A dir that cannot be read at all is still listed, with its `problem`: one bad dir is that
    dir's problem, never the whole view's.
    """
    root = Path(exp_root)
    try:
        entries = [p for p in root.iterdir() if not p.name.startswith(".") and fsutil.is_dir(p)]
    except OSError:
        return []
    out = []
    for p in entries:
        try:
            if os.path.lexists(p / PLAN_FILE) or fsutil.is_dir(p / STATE_DIR) or any(p.glob("*.log")):
                out.append(open_dir(p))
        except Exception as e:  # noqa: BLE001 - one dir's trouble, shown on that dir
            m = DIR_NAME.match(p.name)
            out.append(
                ExpDir(
                    p,
                    m.group(2) if m else p.name,
                    m.group(1) if m else "",
                    None,
                    [],
                    {},
                    problem=f"unreadable: {describe(e)}",
                )
            )
    return sorted(out, key=order_key)


def order_key(d: ExpDir) -> tuple:
    """Oldest first: dirs without a `seq` (launched before it, or holding only logs) by their
    name's stamp, then every dir with one by its number (see plan.Seq)."""
    seq = d.plan.seq if d.plan is not None else None
    if seq is None:
        return (0, 0, d.created or "99999999_999999", d.path.name)
    return (1, seq.n, seq.utc, d.path.name)


def next_seq(exp_root: Path | str) -> Seq:
    """The `seq` of a plan written now under exp_root: one more than any plan's there."""
    top = 0
    try:
        names = [p for p in Path(exp_root).iterdir() if DIR_NAME.match(p.name)]
    except OSError:
        names = []
    for p in names:
        try:
            seq = Plan.read(p).seq
        except PlanError:
            continue
        if seq is not None:
            top = max(top, seq.n)
    return Seq(top + 1, dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"))


def find_dir(exp_root: Path | str, ref: str) -> Path:
    """A dir given as a path, a dir name under exp_root, or an experiment id (its newest dir).

    Only dirs inside exp_root are found: a path elsewhere is refused (the cockpit acts only on
    the dirs it owns).
    """
    if not ref or not ref.strip():
        raise RunError(
            "no experiment dir given (an empty name): give a dir under exp_root or an experiment id"
        )
    root = Path(exp_root).resolve()
    p = Path(os.path.expanduser(ref))
    candidates = [p] if p.is_absolute() or os.sep in ref or ref.startswith(".") else [root / ref, p]
    for c in candidates:
        if fsutil.is_dir(c):
            real = c.resolve()
            if not fsutil.is_inside(real, root) or real == root:
                raise RunError(
                    f"{safetext.oneline(str(real))} is not an experiment dir under exp_root {root}: "
                    "the cockpit acts only on the dirs it owns"
                )
            return real
    mine = [d for d in discover(root) if d.experiment == ref]
    if mine:
        active = [d for d in mine if d.active]
        return (active or mine)[-1].path
    raise RunError(
        f"no experiment dir '{safetext.oneline(ref)}' (not a dir, and no dir of that experiment under {root})"
    )


def done_legs(exp_root: Path | str, experiment: str) -> dict[str, Path]:
    """Legs of an experiment that finished: leg -> the newest dir it finished in. A leg with
    repeats finished in a dir when every repeat did there."""
    out: dict[str, Path] = {}
    for d in discover(exp_root):
        if d.experiment != experiment:
            continue
        for leg in dict.fromkeys(_leg_of(d, run) for run in d.legs):
            if d.leg_done(leg):
                out[leg] = d.path
    return out


def _leg_of(d: ExpDir, run: str) -> str:
    """The registry leg a run of a dir belongs to (a repeat's leg, else the run itself)."""
    spec = d.spec(run)
    if spec is not None:
        return spec.leg or run
    return reg.split_repeat(run)[0]
