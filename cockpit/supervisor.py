"""The supervisor: runs one experiment dir's planned legs one after another.

    python -m cockpit.supervisor EXP_DIR [--lock-fd N]

`cockpit launch` starts it detached (its own session, output to state/supervisor.log), or runs
it in its own process with --foreground. For each leg it waits for idle GPUs, starts torchrun
with stdout+stderr going straight into `<exp_dir>/<leg>.log` (the supervisor never touches the
data path, so killing it loses no log byte), records the leg's state atomically, regenerates
report.md, and on a failure stops the queue or goes on, per the registry's `on_failure`.

Signals: SIGTERM/SIGINT stop the queue (the running leg is stopped: SIGTERM to torchrun, a grace
period, then SIGKILL to every process left in its tree); SIGUSR1 makes it look for a stop request
file `state/<leg>.stop` (`cockpit stop DIR LEG`).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from cockpit import gpus
from cockpit.runs import (
    LOCK_DIR,
    STATE_DIR,
    STOP_GRACE_S,
    SUPERVISOR,
    LegState,
    RunError,
    error_tail,
    is_alive,
    now_iso,
    process_identity,
    read_state,
    terminate_tree,
    try_lock,
    write_json_atomic,
    write_state,
)


class Supervisor:
    def __init__(
        self,
        exp_dir: Path | str,
        lock_fd: int | None = None,
        echo: bool = True,
        grace_s: float | None = None,
        sampler: gpus.GpuSampler | None = None,
        poll_s: float = 5.0,
    ):
        self.exp_dir = Path(exp_dir).resolve()
        self.lock_fd = lock_fd
        self.echo = echo
        self.grace_s = grace_s  # None: the plan's stop_grace_s
        self.sampler = sampler
        self.poll_s = poll_s
        self.stop_all = False  # set by SIGTERM / SIGINT
        self.states: dict[str, LegState] = {}
        self.me = os.getpid()
        self.my_create_time = process_identity(self.me)

    # ------------------------------------------------------------------------------------------
    def say(self, msg: str) -> None:
        if self.echo:
            print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)

    def put(self, st: LegState) -> None:
        self.states[st.leg] = st
        write_state(self.exp_dir, st)

    def stop_requested(self, leg: str) -> bool:
        return self.stop_all or (self.exp_dir / STATE_DIR / f"{leg}.stop").exists()

    def _lock(self, path: Path, what: str) -> int:
        return try_lock(path, f"{what} is held by another supervisor")

    # ------------------------------------------------------------------------------------------
    def run(self) -> int:
        """Run the queue; 0 when every leg is done, 1 otherwise. RunError when it cannot start."""
        plan_path = self.exp_dir / "plan.json"
        try:
            plan = json.loads(plan_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise RunError(f"{plan_path}: cannot read the plan: {e}") from None
        if self.grace_s is None:
            self.grace_s = float(plan.get("stop_grace_s", STOP_GRACE_S))
        state_dir = self.exp_dir / STATE_DIR
        state_dir.mkdir(exist_ok=True)
        fds = [self._lock(state_dir / f"{SUPERVISOR}.lock", f"experiment dir {self.exp_dir}")]
        try:
            if self.lock_fd is None:  # started by hand: take the experiment's queue lock ourselves
                lock_dir = self.exp_dir.parent / LOCK_DIR
                lock_dir.mkdir(exist_ok=True)
                fds.append(self._lock(lock_dir / f"{plan['experiment']}.lock", f"experiment '{plan['experiment']}'"))
            for spec in plan["legs"]:  # a leg left running by a killed supervisor is never started twice
                prev = read_state(self.exp_dir, spec["name"])
                if prev is not None and prev.status == "running" and is_alive(prev.pid, prev.create_time):
                    raise RunError(f"leg {spec['name']} still runs (torchrun pid {prev.pid}) from an earlier "
                                   f"supervisor; stop it first: cockpit stop {self.exp_dir} {spec['name']}")
        except BaseException:
            for fd in fds:
                os.close(fd)
            raise
        record = {"pid": self.me, "create_time": self.my_create_time, "started_at": now_iso(), "ended_at": None}
        old = self._install_signals()
        try:
            write_json_atomic(state_dir / f"{SUPERVISOR}.json", record)
            legs = plan["legs"]
            for spec in legs:  # everything queued first, so a client sees the whole plan at once
                prev = read_state(self.exp_dir, spec["name"])
                if prev is None or prev.status != "done":
                    self.put(LegState(spec["name"], "queued", log=spec["log"], supervisor_pid=self.me,
                                      supervisor_create_time=self.my_create_time))
            self.say(f"supervisor {self.me}: {len(legs)} legs of {plan['experiment']} in {self.exp_dir}")
            for spec in legs:
                name = spec["name"]
                if name not in self.states:
                    continue  # done in an earlier run of this dir
                if self.stop_requested(name):
                    self._finish(name, "stopped", note="stopped by request before it started")
                    continue
                st = self._run_leg(plan, spec)
                self._report()
                if st.status == "failed" and plan.get("on_failure", "stop") == "stop":
                    self.say(f"{name} failed: stopping the queue (on_failure = stop)")
                    for rest in legs[legs.index(spec) + 1 :]:
                        if rest["name"] in self.states:
                            self._finish(rest["name"], "stopped", note=f"queue stopped after {name} failed (on_failure = stop)")
                    break
            ok = all(s.status == "done" for s in self.states.values())
            record["status"] = "finished" if ok else "ended with legs not done"
            return 0 if ok else 1
        finally:
            record["ended_at"] = now_iso()
            write_json_atomic(state_dir / f"{SUPERVISOR}.json", record)
            self._restore_signals(old)
            for fd in fds:
                os.close(fd)

    def _finish(self, leg: str, status: str, note: str | None = None, **kw) -> LegState:
        st = self.states[leg]
        st.status, st.ended_at, st.waiting_reason = status, now_iso(), None
        if note:
            st.note = note
        for k, v in kw.items():
            setattr(st, k, v)
        if status == "stopped" and st.pid is None:
            st.exit_code = None
        self.put(st)
        self.say(f"{leg}: {status}" + (f" ({note})" if note else ""))
        return st

    # ------------------------------------------------------------------------------------------
    def _preflight(self, plan: dict, spec: dict) -> str | None:
        """Wait for the leg's GPUs to be idle. Returns None to go on, or the leg's final status."""
        name = spec["name"]
        st = self.states[name]
        if spec.get("device") == "cpu":
            st.note = "cpu leg: no GPU preflight"
            return None
        idle = plan.get("gpu_idle", {})
        max_util, max_mem = idle.get("max_util_pct", 5.0), idle.get("max_mem_mib", 1024.0)
        wait_s = idle.get("wait_s", 600.0)
        sampler = self.sampler or gpus.GpuSampler(history=1)
        indices = gpus.leg_gpu_indices(spec.get("nproc_per_node", 1))
        deadline = time.monotonic() + wait_s
        since = now_iso()
        while True:
            ok, why = gpus.preflight(sampler.sample(), indices, max_util, max_mem)
            if ok is None:
                st.note = f"preflight skipped: {why}"
                return None
            if ok:
                st.note = f"preflight: {why}"
                return None
            if self.stop_requested(name):
                self._finish(name, "stopped", note="stopped by request while waiting for GPUs")
                return "stopped"
            if time.monotonic() >= deadline:
                self._finish(name, "failed", note="GPUs not idle in time",
                             error_tail=[f"preflight: GPUs not idle after {wait_s:.0f}s: {why}"])
                return "failed"
            st.status, st.waiting_reason = "waiting", f"{why} (waiting since {since}, up to {wait_s:.0f}s)"
            self.put(st)
            end = min(deadline, time.monotonic() + self.poll_s)
            while time.monotonic() < end and not self.stop_requested(name):
                time.sleep(0.1)

    def _run_leg(self, plan: dict, spec: dict) -> LegState:
        name = spec["name"]
        if self._preflight(plan, spec) is not None:
            return self.states[name]
        leg_fd = self._lock(self.exp_dir / STATE_DIR / f"{name}.lock", f"leg {name}")
        try:
            return self._start_and_wait(plan, spec)
        finally:
            os.close(leg_fd)

    def _start_and_wait(self, plan: dict, spec: dict) -> LegState:
        name = spec["name"]
        st = self.states[name]
        cwd = plan.get("cwd") or str(self.exp_dir)
        env = dict(os.environ)
        env["PYTHONUNBUFFERED"] = "1"
        env["PYTHONPATH"] = os.pathsep.join(p for p in (cwd, env.get("PYTHONPATH", "")) if p)
        argv = [str(a) for a in spec["argv"]]
        log_path = Path(spec["log"])
        try:
            with open(log_path, "ab") as log:  # the child holds its own copy of this fd
                proc = subprocess.Popen(
                    argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                    start_new_session=True,  # our signals only: a Ctrl-C at the terminal reaches us, not it
                )
        except OSError as e:
            return self._finish(name, "failed", note="could not start torchrun", exit_code=None,
                                error_tail=[f"{argv[0]}: {e}"], started_at=now_iso())
        st.pid, st.create_time = proc.pid, process_identity(proc.pid)
        st.status, st.started_at, st.waiting_reason = "running", now_iso(), None
        self.put(st)
        self.say(f"{name}: running, torchrun pid {proc.pid}, log {log_path}")

        stopped = False
        while proc.poll() is None:
            if self.stop_requested(name):
                self.say(f"{name}: stopping (SIGTERM, then SIGKILL after {self.grace_s:g}s)")
                killed = terminate_tree(proc.pid, st.create_time, self.grace_s, waiter=_waiter(proc))
                if killed:
                    self.say(f"{name}: killed {len(killed)} processes left after the grace period")
                stopped = True
                break
            time.sleep(0.1)
        try:
            rc = proc.wait(timeout=5.0)
        except subprocess.TimeoutExpired:
            proc.kill()
            rc = proc.wait()
        if stopped:
            return self._finish(name, "stopped", note="stopped by request", exit_code=rc)
        if rc == 0:
            return self._finish(name, "done", exit_code=0)
        return self._finish(name, "failed", exit_code=rc, error_tail=error_tail(log_path))

    # ------------------------------------------------------------------------------------------
    def _report(self) -> None:
        """Regenerate report.md; a report problem is logged, never fatal to the queue."""
        try:
            try:
                from cockpit import report
            except ImportError:
                report = None
            if report is not None and hasattr(report, "write_report"):
                report.write_report(self.exp_dir)
            else:
                _minimal_report(self.exp_dir, self.states)
        except Exception as e:  # noqa: BLE001 - the queue must go on whatever the report does
            self.say(f"report.md not regenerated: {type(e).__name__}: {e}")

    def _on_term(self, signum, frame) -> None:
        self.stop_all = True

    def _on_usr1(self, signum, frame) -> None:
        pass  # wakes the loop; stop_requested() reads the request files

    def _install_signals(self) -> dict | None:
        if threading.current_thread() is not threading.main_thread():
            return None
        old = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)}
        signal.signal(signal.SIGTERM, self._on_term)
        signal.signal(signal.SIGINT, self._on_term)
        signal.signal(signal.SIGUSR1, self._on_usr1)
        return old

    def _restore_signals(self, old: dict | None) -> None:
        for s, h in (old or {}).items():
            signal.signal(s, h)


def _waiter(proc: subprocess.Popen):
    def wait(timeout: float) -> None:
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pass

    return wait


def _minimal_report(exp_dir: Path, states: dict[str, LegState]) -> None:
    """Until cockpit/report.py exists: one row per leg with its status and exit code."""
    rows = ["| run | status | exit code | started | ended |", "| --- | --- | ---: | --- | --- |"]
    for st in states.values():
        code = st.exit_code if st.exit_code_known and st.exit_code is not None else "n/a"
        rows.append(f"| {st.leg} | {st.status} | {code} | {st.started_at or ''} | {st.ended_at or ''} |")
    tmp = exp_dir / ".report.md.tmp"
    tmp.write_text(f"# {exp_dir.name}\n\n" + "\n".join(rows) + "\n", encoding="utf-8")
    os.replace(tmp, exp_dir / "report.md")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m cockpit.supervisor", description=__doc__.split("\n")[0])
    p.add_argument("exp_dir")
    p.add_argument("--lock-fd", type=int, default=None, help="the experiment lock, handed over by launch")
    p.add_argument("--grace", type=float, default=None, help="seconds between SIGTERM and SIGKILL (default: the plan's)")
    args = p.parse_args(argv)
    try:
        return Supervisor(args.exp_dir, lock_fd=args.lock_fd, grace_s=args.grace).run()
    except RunError as e:
        print(f"supervisor: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
