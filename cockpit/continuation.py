"""Continuing an experiment dir: its experiment's remaining legs run in a dir a launch made,
rather than in a fresh one (`cockpit launch EXP --into DIR`; `L` after `l` in the cockpit).

A dir's plan.json is written once, at launch, and never again. A continuation is recorded beside
it as `plan.<n>.json` (n = 1, 2, ...), published whole and never over anything: the runs it adds,
each with its exact argv as a launch plans it; the runs of the dir it asks to run now because
they never started there (stopped or failed before they started: they run as the dir planned
them); its own provenance and the registry as it was. Every reader sees the dir through
`Plan.read`, plan.json with its continuations' runs after its own: the supervisor,
`cockpit status` and the resume guide, the report, the cockpit's tree. plan.json's keys (the
dir's settings, its pinned baseline, its git) stay the dir's.

A continuation never starts a run twice in its dir (a run that started there, done or not, has
its log: it is skipped, and a fresh dir runs it again), never runs a leg done in the dir, and is
refused for a dir of another experiment, a dir without a plan, a Slurm dir, and a dir launched
from another commit or other uncommitted changes (its legs would not compare with the dir's).

Who runs it: the dir's live supervisor, which takes the new plan file into its queue (SIGUSR1
asks it to look at once; its record lists the continuations it took), or, when the dir's queue
has ended, a supervisor started for that continuation alone, as a launch starts one.

Layer 3: imports registry, fsutil, procs, safetext, plan, provenance, expdir, executors.local and launch.
"""

from __future__ import annotations

import os
import signal
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

from cockpit import fsutil, launch, procs, provenance, safetext
from cockpit import registry as reg
from cockpit.executors import local
from cockpit.expdir import (
    STATE_DIR,
    ExpDir,
    RunError,
    describe,
    discover,
    now_iso,
    open_dir,
    plan_lock,
    read_json,
    supervisor_identity,
)
from cockpit.plan import (
    STOP_GRACE_S,
    SUPERVISOR,
    ContinuationFile,
    Plan,
    continuation_numbers,
    continuation_path,
)

JOIN_WAIT_S = 30.0  # how long the dir's live supervisor may take to queue a continuation's runs
GONE_WAIT_S = 15.0  # how long an ending supervisor may take to exit, before another starts


@dataclass
class Continuation:
    """What continuing a dir would run (nothing is written to plan it)."""

    exp_dir: Path
    plan: launch.LaunchPlan  # its legs: the registry legs new to the dir (every run of each added)
    again: list[str] = field(
        default_factory=list
    )  # runs the dir planned that never started: run now, as planned
    supervisor_pid: int | None = None  # the dir's live supervisor, whose queue the runs join

    @property
    def runs(self) -> list[str]:
        """Every run it would start, in order: the dir's own first, then the new ones."""
        return [*self.again, *(name for leg in self.plan.legs for name in leg.run_names())]

    @property
    def skipped(self) -> list[tuple[str, str]]:
        return self.plan.skipped


@dataclass
class Outcome:
    """What a continuation did: `plan.<n>.json` written; its runs joined the live supervisor's
    queue (`joined`: its pid) or a supervisor was started for them; a note when the live
    supervisor had not taken them yet (it will, before it ends)."""

    exp_dir: Path
    n: int
    runs: list[str]
    joined: int | None = None
    note: str | None = None
    exit_code: int | None = None  # --foreground: the supervisor's


def plan_continue(
    registry: reg.Registry,
    exp_id: str,
    exp_dir: Path | str,
    legs: list[str] | None = None,
    rerun: bool = False,
) -> Continuation:
    """Which runs continuing `exp_dir` would start, and which legs it skips and why. Reads only.
    RunError when the dir cannot be continued at all (not this experiment's, no plan, Slurm)."""
    d = _continuable(registry, exp_id, exp_dir)
    base = launch.plan_launch(registry, exp_id, legs, rerun)
    new: list[reg.Leg] = []
    again: list[str] = []
    here = f"done in {d.path}; a continuation never runs it there again"
    skipped = [(name, here if why.startswith(f"done in {d.path};") else why) for name, why in base.skipped]
    for leg in base.legs:
        runs = leg.run_names()
        planned = [r for r in runs if r in d.legs]
        if not planned:
            new.append(leg)
            continue
        if d.leg_done(leg.name):
            skipped.append((leg.name, here))
            continue
        todo = [r for r in planned if d.never_started(r)]
        again += todo
        for run in planned:
            if run not in todo and not d.run_done(run):
                skipped.append((run, _why_not_again(d, run)))
        if missing := [r for r in runs if r not in planned]:
            skipped.append(
                (
                    leg.name,
                    f"{', '.join(missing)}: not in {d.path}'s plan (the registry's repeats "
                    "changed since): a fresh dir runs every repeat",
                )
            )
    plan = launch.LaunchPlan(base.experiment, new, skipped, base.torchrun, base.cwd, base.runtime)
    sup = supervisor_identity(d.path, d.supervisor)
    return Continuation(
        d.path, plan, again, sup.process.pid if sup.alive and sup.process is not None else None
    )


def _why_not_again(d: ExpDir, run: str) -> str:
    st = d.states.get(run)
    if st is not None and st.active:
        return f"{st.status} in {d.path} already"
    status = st.status if st is not None else "a log"
    return (
        f"started in {d.path} before ({status}): a run is never started twice in its dir (its log would "
        "hold both); a fresh dir runs it again"
    )


def _continuable(registry: reg.Registry, exp_id: str, exp_dir: Path | str) -> ExpDir:
    root = registry.settings.exp_root.resolve()
    path = Path(exp_dir).resolve()
    if not (fsutil.is_inside(path, root) and path != root):
        raise RunError(
            f"{safetext.oneline(str(exp_dir))} is not an experiment dir under exp_root {root}: "
            "the cockpit continues only the dirs it owns"
        )
    d = open_dir(path)
    if d.plan is None:
        raise RunError(
            f"{path} has no readable plan.json: only a dir a launch made can be continued"
            + (f" ({d.problem})" if d.problem else "")
        )
    if d.experiment != exp_id:
        raise RunError(f"{path} holds experiment '{safetext.oneline(d.experiment)}', not '{exp_id}'")
    if d.plan.executor != local.NAME:
        raise RunError(
            f"{path} runs its legs as Slurm jobs: a continuation runs legs under the dir's supervisor "
            "here; launch the rest in a fresh dir"
        )
    return d


def candidate(registry: reg.Registry, exp_id: str) -> Continuation | None:
    """The dir a `launch all remaining legs` may continue rather than open a fresh one: the
    experiment's newest dir, when continuing it would run something (its queue runs, or it
    ended with legs still to run). None when there is none."""
    mine = [d for d in discover(registry.settings.exp_root) if d.experiment == exp_id and d.plan is not None]
    if not mine:
        return None
    try:
        cont = plan_continue(registry, exp_id, mine[-1].path)
    except RunError:
        return None
    return cont if cont.runs else None


def refusals(registry: reg.Registry, cont: Continuation) -> list[str]:
    """Every reason continuing would be refused now ([] when none); reads only. The dir's own
    runs asked again are checked as their registry legs (torchrun, GPUs, paths) with the new ones."""
    if not cont.runs:
        return []
    d = open_dir(cont.exp_dir)
    exp = cont.plan.experiment
    mine = []
    for run in cont.again:
        spec = d.spec(run)
        leg = exp.leg(spec.leg if spec is not None and spec.leg else reg.split_repeat(run)[0])
        if leg is not None and leg not in mine:
            mine.append(leg)
    p = cont.plan
    planned = launch.LaunchPlan(exp, [*mine, *p.legs], p.skipped, p.torchrun, p.cwd, p.runtime)
    return launch.launch_refusals(registry, planned, cont.exp_dir, into=True)


def dry_run_text(registry: reg.Registry, cont: Continuation) -> str:
    """What continuing would run, as shell text, and where; nothing is written."""
    d = open_dir(cont.exp_dir)
    out = [f"# dry run: continue {cont.plan.experiment.id} in {cont.exp_dir}, nothing written"]
    out += [f"# skip {name}: {why}" for name, why in cont.skipped]
    if not cont.runs:
        out.append("# nothing to run")
        return "\n".join(out)
    out += [f"# a real continuation would be refused here: {why}" for why in refusals(registry, cont)]
    n = (continuation_numbers(cont.exp_dir) or [0])[-1] + 1
    who = (
        f"they join the queue of its supervisor (pid {cont.supervisor_pid})"
        if cont.supervisor_pid
        else "a supervisor starts for them"
    )
    out.append(f"# recorded as {continuation_path(cont.exp_dir, n).name} (plan.json is not touched); {who}")
    for run in cont.again:
        spec = d.spec(run)
        out += [
            "",
            f"# {run}: planned in the dir, never started: runs as planned there",
            launch.run_command(run, list(spec.argv) if spec is not None else [], cont.exp_dir),
        ]
    for leg in cont.plan.legs:
        out += [
            "",
            f"# leg {leg.name}" + (f": {leg.description}" if leg.description else ""),
            launch.format_command(leg, cont.exp_dir, cont.plan.torchrun),
        ]
    return "\n".join(out)


def _code_differs(dir_plan: Plan | None, git: dict) -> str | None:
    """Why the checkout now is not the code the dir was launched with (commit, uncommitted
    changes), or None when it is."""
    was = dir_plan.git if dir_plan is not None else {}

    def short(v: object) -> str:
        return str(v)[:12] if v else "none"

    if was.get("commit") != git.get("commit"):
        return f"the checkout is at commit {short(git.get('commit'))}, the dir was launched at {short(was.get('commit'))}"
    if (was.get("dirty"), was.get("patch_sha256")) != (git.get("dirty"), git.get("patch_sha256")):
        return (
            "the checkout's uncommitted changes differ from those the dir was launched with (its git.patch)"
        )
    return None


def record(registry: reg.Registry, cont: Continuation, grace_s: float = STOP_GRACE_S) -> int:
    """Publish the continuation as the dir's next `plan.<n>.json` (never over anything) and
    return n. RunError, with nothing written, when the code is not the dir's."""
    d = open_dir(cont.exp_dir)
    runtime = cont.plan.runtime
    origin = provenance.collect(
        cont.plan.cwd,
        cont.plan.torchrun,
        str(runtime.python) if runtime and runtime.python else None,
        dict(runtime.env) if runtime else None,
        digest=True,
    )
    if why := _code_differs(d.plan, origin.get("git") or {}):
        raise RunError(
            f"{cont.exp_dir} cannot be continued: {why}; its legs would not compare with the dir's: "
            "launch them in a fresh dir"
        )
    data = launch.plan_data(registry, cont.plan, cont.exp_dir, grace_s, origin)
    body = ContinuationFile(
        cont.plan.experiment.id,
        data.runs,
        tuple(cont.again),
        str(cont.exp_dir),
        now_iso(),
        socket.gethostname(),
        os.environ.get("USER"),
        origin,
        data.registry,
        data.skipped,
    )
    try:
        return body.publish(cont.exp_dir)
    except OSError as e:
        raise RunError(f"cannot write {cont.exp_dir}/plan.<n>.json: {describe(e)}") from None


def start(
    registry: reg.Registry,
    exp_id: str,
    exp_dir: Path | str,
    legs: list[str] | None = None,
    rerun: bool = False,
    foreground: bool = False,
    grace_s: float = STOP_GRACE_S,
) -> Outcome | None:
    """Continue `exp_dir`: record the continuation, then hand its runs to the dir's live
    supervisor, or start a supervisor for them (detached; `foreground`: in this process). None
    when there is nothing to run (nothing is written then). RunError when refused."""
    d = _continuable(registry, exp_id, exp_dir)
    lock = plan_lock(d.path, wait_s=5.0)  # one continuation of a dir at a time: each plans what the last left
    try:
        cont = plan_continue(registry, exp_id, d.path, legs, rerun)
        if not cont.runs:
            return None
        if why := refusals(registry, cont):
            raise RunError(why[0])
        if foreground and cont.supervisor_pid is not None:
            raise RunError(
                f"{d.path}'s supervisor (pid {cont.supervisor_pid}) runs its queue: the legs join it "
                "there; leave out --foreground"
            )
        n = record(registry, cont, grace_s)
        if cont.supervisor_pid is not None:
            joined, note = _join(d.path, n)
            if joined is not None or note is not None:
                return Outcome(d.path, n, cont.runs, joined, note)
        code = _start_for(registry, d.path, exp_id, n, foreground, grace_s)
        return Outcome(d.path, n, cont.runs, exit_code=code)
    finally:
        os.close(lock)


def _record_of(exp_dir: Path) -> dict | None:
    try:
        data = read_json(exp_dir / STATE_DIR / f"{SUPERVISOR}.json")
    except (OSError, ValueError, RecursionError):
        return None
    return data if isinstance(data, dict) else None


def _join(exp_dir: Path, n: int) -> tuple[int | None, str | None]:
    """Ask the dir's live supervisor to take continuation n, and wait until its record says it
    did: (its pid, None). (None, None) when it ended (or was killed) without taking it: a new
    supervisor must. (None, note) when it still runs but has not looked yet (busy: a report,
    a notify command, a prepare step): it takes it before it ends."""
    deadline = time.monotonic() + JOIN_WAIT_S
    sup = supervisor_identity(exp_dir, _record_of(exp_dir))
    procs.signal_proven(sup, signal.SIGUSR1)
    while True:
        rec = _record_of(exp_dir)
        if rec is not None and n in (rec.get("continuations") or []):
            return rec.get("pid"), None
        if not supervisor_identity(exp_dir, rec).alive:
            return None, None
        if time.monotonic() >= deadline:
            pid = (rec or {}).get("pid")
            return None, (
                f"recorded in {continuation_path(exp_dir, n).name}; the dir's supervisor (pid {pid}) has "
                f"not taken it within {JOIN_WAIT_S:.0f}s (busy): it does before its queue ends"
            )
        time.sleep(0.05)


def _start_for(
    registry: reg.Registry, exp_dir: Path, exp_id: str, n: int, foreground: bool, grace_s: float
) -> int | None:
    """A supervisor for continuation n of a dir whose queue has ended: once the last one has
    exited, under the experiment's queue lock (another dir of it running refuses)."""
    deadline = time.monotonic() + GONE_WAIT_S
    while not _lock_free(exp_dir / STATE_DIR / f"{SUPERVISOR}.lock", exp_dir) and time.monotonic() < deadline:
        time.sleep(0.05)  # the last supervisor recorded its end, and is letting go of its locks
    root = registry.settings.exp_root
    if (busy := launch.running_elsewhere(root, exp_id, exp_dir)) is not None:
        raise RunError(
            f"'{exp_id}' is running in {busy.path}; stop it first: cockpit stop {busy.path} "
            f"({continuation_path(exp_dir, n).name} is recorded: a later continuation runs it)"
        )
    lock_fd = launch.experiment_lock(root, exp_id)
    try:
        if foreground:
            return local.run_here(exp_dir, lock_fd, grace_s, continuation=n)
        local.spawn(exp_dir, lock_fd, continuation=n)
        return None
    finally:
        os.close(lock_fd)


def _lock_free(path: Path, root: Path) -> bool:
    """Could a supervisor take this lock now? (Taken and let go at once.)"""
    try:
        fd = fsutil.try_lock(path, root)
    except OSError:
        return True  # the supervisor will say what it cannot do
    if fd is None:
        return False
    os.close(fd)
    return True


def runs_text(out: Outcome) -> str:
    """What a continuation did, in one line, for the CLI and the cockpit's notice."""
    names = ", ".join(out.runs)
    if out.joined is not None:
        return f"{names}: joined the queue of {out.exp_dir}'s supervisor (pid {out.joined})"
    if out.note is not None:
        return f"{names}: {out.note}"
    return f"{names}: a new supervisor runs {'it' if len(out.runs) == 1 else 'them'} in {out.exp_dir}"


def run_statuses(exp_dir: Path, runs: list[str]) -> list[tuple[str, str]]:
    """(run, its status now) of a continuation's runs, as `--foreground` reports them at the end."""
    d = open_dir(exp_dir)
    return [(r, d.states[r].status if r in d.states else "not run") for r in runs]
