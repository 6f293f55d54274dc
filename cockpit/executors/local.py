"""The local executor: a launch's legs run on this machine by a supervisor process.

As an executor it offers what launch.py calls of every executor (see executors/__init__.py):

- `start` spawns `python -m cockpit.supervisor DIR` detached (its own session, its output in
  `state/supervisor.log`), hands it the experiment's queue lock, and returns once the supervisor
  has taken over (its record is written): closing the terminal or the cockpit never touches a
  leg. With `foreground` it runs the same supervisor in this process (`cockpit launch --foreground`).
- `stop` stops one leg or the whole queue through the live supervisor, or (the supervisor was
  killed) by signalling the leg's processes here, only when proven the leg's.

Layer 2: imports fsutil, procs, safetext, vocab, plan, expdir and the supervisor.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from cockpit import fsutil, procs, safetext
from cockpit.expdir import (
    STATE_DIR,
    LegState,
    RunError,
    clear_stop_request,
    describe,
    leg_env,
    now_iso,
    open_dir,
    read_json,
    read_state,
    stop_request_path,
    supervisor_identity,
    tail_lines,
    write_state,
)
from cockpit.plan import STOP_GRACE_S, SUPERVISOR, Plan
from cockpit.supervisor import Supervisor
from cockpit.vocab import Status

NAME = "local"
START_WAIT_S = 15.0  # how long a spawned supervisor may take to write its record


def start(
    exp_dir: Path, plan: Plan, lock_fd: int, foreground: bool = False, grace_s: float | None = None
) -> None:
    """Run the dir's planned legs: a detached supervisor (or, `foreground`, this process's, echoing
    its progress), handed the experiment's queue lock `lock_fd`. The supervisor reads the plan
    from the dir's plan.json. RunError when it cannot start."""
    del plan  # written to plan.json already: the supervisor reads it there
    if foreground:
        run_here(exp_dir, lock_fd, grace_s)
    else:
        spawn(exp_dir, lock_fd)


def spawn(exp_dir: Path, lock_fd: int, wait_s: float = START_WAIT_S, continuation: int | None = None) -> None:
    """Start the detached supervisor and wait until it has taken over (its record is written:
    the record names its pid). `continuation`: it runs only what the dir's plan.<n>.json asks.

    It runs in its own session, and a thread here reaps it when it ends: the TUI launches and
    lives on, and must not collect <defunct> children. RunError when it cannot start.
    """
    log_path = exp_dir / STATE_DIR / f"{SUPERVISOR}.log"
    try:
        log_fd = fsutil.create_or_append(log_path, root=exp_dir)
    except OSError as e:
        raise RunError(f"cannot create the supervisor's log: {describe(e)}") from None
    try:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        here = str(Path(__file__).resolve().parents[2])  # `-m cockpit.supervisor` imports this cockpit
        env["PYTHONPATH"] = os.pathsep.join(p for p in (here, env.get("PYTHONPATH", "")) if p)
        more = ["--continuation", str(continuation)] if continuation is not None else []
        proc = subprocess.Popen(
            [sys.executable, "-m", "cockpit.supervisor", str(exp_dir), "--lock-fd", str(lock_fd), *more],
            stdin=subprocess.DEVNULL,
            stdout=log_fd,
            stderr=log_fd,
            start_new_session=True,
            pass_fds=(lock_fd,),
            close_fds=True,
            env=env,
        )
    finally:
        os.close(log_fd)
    procs.reap_when_done(proc)
    deadline = time.monotonic() + wait_s
    record = exp_dir / STATE_DIR / f"{SUPERVISOR}.json"
    while time.monotonic() < deadline:
        if _record_pid(record) == proc.pid:  # not an earlier supervisor's record of this dir
            return
        if proc.poll() is not None:
            tail = tail_lines(log_path, 1)
            raise RunError(
                f"supervisor exited at once ({proc.returncode}): "
                f"{safetext.oneline(tail[-1]) if tail else 'no output'}"
            )
        time.sleep(0.05)
    raise RunError(f"supervisor did not start within {wait_s:.0f}s (see {exp_dir}/state/supervisor.log)")


def _record_pid(record: Path) -> int | None:
    try:
        data = read_json(record)
    except (OSError, ValueError, RecursionError):
        return None  # not there yet (or being replaced)
    return data.get("pid") if isinstance(data, dict) else None


def run_here(
    exp_dir: Path, lock_fd: int, grace_s: float | None = None, continuation: int | None = None
) -> int:
    """Run the dir's queue in this process, echoing its progress; its exit code (0: every leg done).
    `continuation`: only what the dir's plan.<n>.json asks."""
    return Supervisor(exp_dir, lock_fd=lock_fd, echo=True, grace_s=grace_s, continuation=continuation).run()


def stop(
    exp_dir: Path, leg: str | None = None, grace_s: float = STOP_GRACE_S, wait_s: float | None = None
) -> None:
    """Stop one leg, or the whole queue, of a dir run by a supervisor.

    With a live supervisor (proven: see supervisor_identity), ask it (SIGTERM for the queue; a
    stop request file plus SIGUSR1 for one leg) and wait for it to record the outcome. Without
    one (it was killed), stop the leg's process tree here, if proven the leg's, and record the
    leg as stopped. Nothing unproven is signalled: RunError says so.
    """
    d = open_dir(exp_dir)
    names = [leg] if leg else list(d.legs)
    targets = [n for n in names if n in d.states and d.states[n].active]
    sup = supervisor_identity(exp_dir, d.supervisor)
    if wait_s is None:  # the supervisor stops with the plan's grace period, then records it
        wait_s = (d.plan.grace(grace_s) if d.plan is not None else grace_s) + 10.0
    if sup.alive:
        if leg is None:
            sig = signal.SIGTERM
        elif not targets:
            return  # the leg ended before the stop came: no request is left to be read as pending
        else:
            try:
                fsutil.atomic_write_json(
                    stop_request_path(exp_dir, leg), {"requested_at": now_iso()}, root=exp_dir
                )
            except OSError as e:
                raise RunError(f"cannot write the stop request: {describe(e)}") from None
            sig = signal.SIGUSR1
        procs.signal_proven(sup, sig)
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            d = open_dir(exp_dir)
            if leg is None and not d.supervisor_alive:
                break
            if leg is not None and (leg not in d.states or not d.states[leg].active):
                break
            if (
                leg is not None
                and d.states[leg].status == Status.QUEUED
                and stop_request_path(exp_dir, leg).exists()
            ):
                break  # the supervisor will skip it when its turn comes
            time.sleep(0.1)
        if leg is not None and leg in d.states and not d.states[leg].active:
            clear_stop_request(exp_dir, leg)  # the supervisor removes it; not when it died meanwhile
        return
    unproven = [
        f"leg {n}: {d.states[n].note}"
        for n in names
        if n in d.states and d.states[n].status == Status.UNKNOWN
    ]
    if sup.verdict == procs.UNPROVEN:
        unproven.insert(0, f"supervisor: {Status.UNKNOWN}: {procs.NOT_PROVEN} ({sup.why})")
    if not targets:
        if unproven:
            raise RunError(f"nothing stopped in {exp_dir}: " + "; ".join(unproven))
        if leg is not None and leg in d.states:
            clear_stop_request(exp_dir, leg)
            return  # the leg ended before the stop came: its state says how
        raise RunError(f"nothing running in {exp_dir}")
    # no supervisor: the legs still alive are orphans; stop them here, if proven theirs, each in
    # its own thread (legs that ran side by side stop within one grace period, not one per leg)
    stoppers: list[threading.Thread] = []
    ended: list[LegState] = []
    for name in targets:
        st = read_state(exp_dir, name)
        if st is None or not st.active:
            continue
        if st.status == Status.RUNNING:
            ident = procs.identify(st.pid, st.create_time, d.expect(name))
            if ident.verdict == procs.UNPROVEN:
                continue  # reconciled as unknown a moment ago; said by the caller from the state
            stoppers.append(
                threading.Thread(target=_stop_orphan, args=(exp_dir, name, ident, grace_s), daemon=True)
            )
            stoppers[-1].start()
            st.note = "stopped by request (supervisor gone; exit code unknown)"
        else:
            st.note = "stopped by request before it started (supervisor gone)"
        st.status, st.ended_at, st.exit_code, st.exit_code_known = Status.STOPPED, now_iso(), None, False
        ended.append(st)
    for t in stoppers:
        t.join()
    for st in ended:
        _record_stopped(exp_dir, st)


def _stop_orphan(exp_dir: Path, name: str, ident: procs.Identity, grace_s: float) -> None:
    """SIGTERM a proven orphan leg's torchrun, the grace period, SIGKILL what is left of its tree,
    then every process still carrying its marker (workers torchrun left)."""
    if ident.alive and ident.process is not None:
        procs.terminate(ident.process, grace_s)
    procs.terminate_all(procs.marked(leg_env(exp_dir, name)), grace_s)


def _record_stopped(exp_dir: Path, st: LegState) -> None:
    try:
        write_state(exp_dir, st)
    except OSError as e:
        raise RunError(f"leg {st.leg} stopped, but its state could not be recorded: {describe(e)}") from None
