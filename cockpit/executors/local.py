"""The local executor: a launch's legs run on this machine by a supervisor process.

`start` spawns `python -m cockpit.supervisor DIR` detached (its own session, its output in
`state/supervisor.log`), hands it the experiment's queue lock, and returns once the supervisor has
taken over (its record is written): closing the terminal or the cockpit never touches a leg.
`run_here` runs the same supervisor in this process instead (`cockpit launch --foreground`).

Layer 2: imports fsutil, procs, safetext, expdir and the supervisor.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from cockpit import fsutil, procs, safetext
from cockpit.expdir import STATE_DIR, SUPERVISOR, RunError, describe, tail_lines
from cockpit.supervisor import Supervisor

START_WAIT_S = 15.0  # how long a spawned supervisor may take to write its record


def start(exp_dir: Path, lock_fd: int, wait_s: float = START_WAIT_S) -> None:
    """Start the detached supervisor and wait until it has taken over (its record is written).

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
        proc = subprocess.Popen(
            [sys.executable, "-m", "cockpit.supervisor", str(exp_dir), "--lock-fd", str(lock_fd)],
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
        if record.exists():
            return
        if proc.poll() is not None:
            tail = tail_lines(log_path, 1)
            raise RunError(f"supervisor exited at once ({proc.returncode}): "
                           f"{safetext.oneline(tail[-1]) if tail else 'no output'}")
        time.sleep(0.05)
    raise RunError(f"supervisor did not start within {wait_s:.0f}s (see {exp_dir}/state/supervisor.log)")


def run_here(exp_dir: Path, lock_fd: int, grace_s: float | None = None) -> int:
    """Run the dir's queue in this process, echoing its progress; its exit code (0: every leg done)."""
    return Supervisor(exp_dir, lock_fd=lock_fd, echo=True, grace_s=grace_s).run()
