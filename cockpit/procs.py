"""Processes the cockpit may signal: a recorded pid is proven to be the leg's before anything else.

A pid in a state file names nothing by itself: the process may be gone and its pid reused, the
file may come from an old version that kept no create time, or someone may have written it by
hand. So a record is matched against the live process table in three steps:

    pid            a process with that pid exists and is not a zombie      else: gone
    create time    the record's create time is that process's               else: gone (pid reused),
                                                                                 or unproven when none is recorded
    command line   it runs what the record says (the leg's torchrun with    else: unproven
                   this dir's args and this dir's marker in its env)

Only a proven process (`Identity.verdict == ALIVE`) and the descendants it has now are ever
signalled; an unproven one is reported as such and left alone.

This module is layer 0: it imports nothing from the cockpit.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import psutil

ALIVE, GONE, UNPROVEN = "alive", "gone", "unproven"
NOT_PROVEN = "process identity not proven"
CREATE_TIME_SLACK_S = 1.0  # psutil derives create times from the boot time, which may move by a second
# The supervisor puts these in a leg's environment: torchrun and every process it starts inherit
# them, so a process of another dir (same args, same experiment) cannot pass for this dir's leg.
ENV_EXP_DIR = "COCKPIT_EXP_DIR"
ENV_LEG = "COCKPIT_LEG"


@dataclass(frozen=True)
class Expect:
    """What a recorded process must be running.

    program: the basename of its executable or script (torchrun runs as `python .../torchrun`);
    argv: these arguments, in this order and next to each other, in its command line;
    environ: these variables, with these values, in its environment.
    """

    program: str | None = None
    argv: tuple[str, ...] = ()
    environ: Mapping[str, str] = field(default_factory=dict)


@dataclass
class Identity:
    verdict: str  # ALIVE, GONE or UNPROVEN
    why: str  # one line: what was (not) proven
    process: psutil.Process | None = None

    @property
    def alive(self) -> bool:
        return self.verdict == ALIVE


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: object) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and v == v


def create_time(pid: int) -> float | None:
    try:
        return psutil.Process(pid).create_time()
    except (psutil.Error, ValueError, OverflowError):
        return None


def alive(pid: object, created: object) -> bool:
    """Does this exact process (pid and create time, both required) still run (not a zombie)?"""
    return same_process(pid, created).alive


def same_process(pid: object, created: object) -> Identity:
    """The recorded process by pid and create time alone: ALIVE (the very process still runs),
    GONE (no such pid, a zombie, or the pid names a newer process), UNPROVEN (a process has
    that pid, but no create time was recorded to tell whether it is the one)."""
    if not _is_int(pid) or pid <= 0:
        return Identity(GONE, "no pid recorded")
    try:
        p = psutil.Process(pid)
        if p.status() == psutil.STATUS_ZOMBIE:
            return Identity(GONE, f"pid {pid} has exited")
        now = p.create_time()
    except (psutil.NoSuchProcess, ValueError, OverflowError):
        return Identity(GONE, f"pid {pid} is gone")
    except psutil.Error as e:
        return Identity(UNPROVEN, f"pid {pid}: {type(e).__name__}")
    if created is None or not _is_num(created):
        return Identity(UNPROVEN, f"pid {pid} runs, but no create time was recorded for it")
    if abs(now - created) > CREATE_TIME_SLACK_S:
        return Identity(GONE, f"pid {pid} is another process now (its create time differs)")
    return Identity(ALIVE, f"pid {pid}", p)


def identify(pid: object, created: object, expect: Expect | None) -> Identity:
    """Is the recorded process (pid, create time) alive, and is it running what `expect` says?"""
    same = same_process(pid, created)
    p, why = same.process, same.why
    if not same.alive or p is None:
        return same
    if expect is None:
        return Identity(UNPROVEN, f"{why} runs, but there is nothing to check its command line against")
    try:
        cmd = p.cmdline()
        env = p.environ() if expect.environ else {}
    except psutil.NoSuchProcess:
        return Identity(GONE, f"{why} is gone")
    except psutil.Error as e:
        return Identity(UNPROVEN, f"{why}: cannot read its command line ({type(e).__name__})")
    if expect.program and not any(os.path.basename(a) == expect.program for a in cmd[:2]):
        return Identity(UNPROVEN, f"{why} is not {expect.program} (it runs {_short(cmd)})")
    if expect.argv and not _contains(cmd, list(expect.argv)):
        return Identity(UNPROVEN, f"{why} does not run the recorded command (it runs {_short(cmd)})")
    for k, v in expect.environ.items():
        if env.get(k) != v:
            return Identity(UNPROVEN, f"{why} lacks this leg's marker {k} in its environment")
    return Identity(ALIVE, f"{why} proven", p)


def _contains(seq: list[str], part: list[str]) -> bool:
    n = len(part)
    return any(seq[i : i + n] == part for i in range(len(seq) - n + 1))


def _short(cmd: list[str]) -> str:
    text = " ".join(cmd)
    return repr(text if len(text) <= 80 else text[:77] + "...")


# ----------------------------------------------------------------------------------------------
# trees and stopping


def tree(p: psutil.Process) -> list[psutil.Process]:
    """The process and all its descendants now, parents first ([] when it is gone)."""
    try:
        return [p, *p.children(recursive=True)]
    except psutil.Error:
        return []


def tree_of(pid: object, created: object) -> list[psutil.Process]:
    """The process with this pid and create time, and all its descendants, parents first; []
    when that very process is gone (a reused pid is not it)."""
    same = same_process(pid, created)
    return tree(same.process) if same.alive and same.process is not None else []


def running(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def terminate(
    root: psutil.Process, grace_s: float, waiter: Callable[[float], None] | None = None
) -> list[int]:
    """SIGTERM `root` (a proven process), wait up to grace_s, then SIGKILL every process left of its tree.

    The tree is collected before any signal (torchrun's workers run in their own sessions and
    are re-parented when torchrun exits, so they could not be found afterwards) and re-scanned
    while waiting, in case something new was spawned. `waiter(timeout)` reaps root when it is the
    caller's child (its Popen keeps the exit code). Returns the pids that needed SIGKILL.
    """
    procs = {p.pid: p for p in tree(root)}
    if not procs:
        return []
    try:
        root.send_signal(signal.SIGTERM)  # psutil checks the pid still names this very process
    except psutil.Error:
        pass
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        if waiter is not None:
            waiter(0.05)
        for p in list(procs.values()):
            try:
                for c in p.children(recursive=True):
                    procs.setdefault(c.pid, c)
            except psutil.Error:
                pass
        left = [p for p in procs.values() if running(p)]
        if not left:
            return []
        others = [p for p in left if p.pid != root.pid or waiter is None]
        if others:
            psutil.wait_procs(others, timeout=0.05)
        else:
            time.sleep(0.05)
    killed = []
    for p in procs.values():
        if running(p):
            try:
                p.kill()
                killed.append(p.pid)
            except psutil.Error:
                pass
    # SIGKILL cannot be ignored; wait (briefly) until the kernel has them all gone or zombie
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline and any(running(p) for p in procs.values()):
        if waiter is not None:
            waiter(0.02)
        time.sleep(0.02)
    return killed


def marked(environ: Mapping[str, str]) -> list[psutil.Process]:
    """The processes (this one aside) whose environment holds every one of these variables: a
    leg's processes carry its marker (ENV_EXP_DIR, ENV_LEG) from the supervisor, so its workers
    are found even after torchrun is gone (they were its children; they are orphans now)."""
    out = []
    me = os.getpid()
    for p in psutil.process_iter():
        if p.pid == me:
            continue
        try:
            env = p.environ()
        except psutil.Error:
            continue
        if all(env.get(k) == v for k, v in environ.items()):
            out.append(p)
    return out


def terminate_all(processes: list[psutil.Process], grace_s: float) -> list[int]:
    """SIGTERM each (proven) process, wait up to grace_s, SIGKILL those left. Returns the
    pids that needed SIGKILL."""
    for p in processes:
        try:
            p.send_signal(signal.SIGTERM)
        except psutil.Error:
            pass
    _, left = psutil.wait_procs(processes, timeout=grace_s)
    killed = []
    for p in left:
        try:
            p.kill()
            killed.append(p.pid)
        except psutil.Error:
            pass
    psutil.wait_procs(left, timeout=5.0)
    return killed


def signal_proven(ident: Identity, sig: int) -> bool:
    """Send `sig` to a proven process; False (nothing sent) for anything else."""
    if not ident.alive or ident.process is None:
        return False
    try:
        ident.process.send_signal(sig)
        return True
    except psutil.Error:
        return False


# ----------------------------------------------------------------------------------------------
# children that outlive the call that started them


def reap_when_done(proc: subprocess.Popen) -> threading.Thread:
    """Wait for a detached child in a daemon thread, so it never lingers as a zombie (<defunct>)
    in a long-lived parent (the TUI launches supervisors and lives on)."""
    t = threading.Thread(target=proc.wait, name=f"reap-{proc.pid}", daemon=True)
    t.start()
    return t


def zombie_children() -> list[int]:
    """Pids of this process's children that ended and were never reaped."""
    out = []
    for c in psutil.Process().children():
        try:
            if c.status() == psutil.STATUS_ZOMBIE:
                out.append(c.pid)
        except psutil.Error:
            pass
    return out
