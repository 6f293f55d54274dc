"""The supervisor: runs one experiment dir's planned legs one after another.

    python -m cockpit.supervisor EXP_DIR [--lock-fd N]

`cockpit launch` starts it detached (its own session, output to state/supervisor.log), or runs
it in its own process with --foreground. For each leg it waits for idle GPUs, starts torchrun
with stdout+stderr going straight into `<exp_dir>/<leg>.log` (the supervisor never touches the
data path, so killing it loses no log byte), records the leg's state atomically, regenerates
report.md, and on a failure stops the queue or goes on, per the registry's `on_failure`.

Signals: SIGTERM/SIGINT stop the queue (the running leg is stopped: SIGTERM to torchrun, a grace
period, then SIGKILL to every process left in its tree); SIGUSR1 makes it look for a stop request
file `state/<leg>.stop` (`cockpit stop DIR LEG`), removed once the leg ends. A stop that reaches a
leg which has already finished (exit 0, final lines) lost the race: the leg is done, noted
`stop came after it ended`.

Faults: a leg's log is created new (`<leg>.log` taken by anything else, a planted symlink
included, fails the leg before it starts, with that reason); any OSError of the supervisor's own
(a read-only or full filesystem, an I/O error) fails the leg it hit, recorded on the leg where it
still can be and in the supervisor's log as one line, and the queue goes on or stops per policy.
The supervisor always ends with its exit code, never with a traceback.

Layer 2: imports fsutil, procs, safetext, registry, vocab, logs, gpus, expdir and report.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import signal
import stat as stat_
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

from cockpit import fsutil, gpus, logs, procs, report, safetext
from cockpit import registry as reg
from cockpit.expdir import (
    PLAN_MAX_BYTES,
    STATE_DIR,
    STOP_CAME_LATE,
    SUPERVISOR,
    LegState,
    RunError,
    clear_stop_request,
    error_tail,
    leg_env,
    leg_expect,
    leg_name_ok,
    lock_path,
    now_iso,
    plan_grace,
    plan_tail,
    read_state,
    reconcile,
    stop_request_path,
    try_lock,
    write_state,
)
from cockpit.registry import PREPARE
from cockpit.vocab import Status


def check_plan(plan: object) -> str | None:
    """Why a plan.json cannot be run (one line), or None. A plan is a file: it may be anything."""
    if not isinstance(plan, dict):
        return "not a JSON object"
    if not isinstance(plan.get("experiment"), str) or not plan["experiment"]:
        return "no experiment id"
    if plan.get("executor", "local") != "local":
        return f"its legs run as {safetext.oneline(str(plan['executor']))[:20]} jobs, not under a supervisor"
    legs = plan.get("legs")
    if not isinstance(legs, list) or not legs:
        return "no legs"
    seen = set()
    for i, spec in enumerate(legs):
        name = spec.get("name") if isinstance(spec, dict) else None
        if not leg_name_ok(name) or name == SUPERVISOR or name in seen or (name == PREPARE and plan.get("prepare")):
            return f"leg {i}: {safetext.oneline(repr(name))[:60]} is not a leg name a file can have (or is repeated)"
        seen.add(name)
        argv = spec.get("argv")
        if not (isinstance(argv, list) and argv and all(isinstance(a, str) and "\x00" not in a for a in argv)):
            return f"leg {name}: argv is not a list of strings"
    return None


def signal_cause(rc: int) -> str | None:
    """`torchrun was killed by SIGKILL (signal 9)` for a negative return code, else None."""
    if rc >= 0:
        return None
    try:
        name = signal.Signals(-rc).name
    except ValueError:
        name = f"signal {-rc}"
    return f"torchrun was killed by {name} (signal {-rc}): not by the trainer's own error"


def ended(stopped: bool, rc: int, requested: bool, finished: bool) -> tuple[Status, str | None]:
    """How a leg whose torchrun has exited ended, when it was not a failure: (status, note).

    `stopped`: the supervisor signalled it for a stop request; `requested`: a request is there
    now; `finished`: its log has the final lines. A stop that reached a run which had already
    finished (exit 0, final lines) lost the race to the leg's end: the leg is done, and says so.
    FAILED (note None) for every other exit: the caller says why."""
    if stopped and not (rc == 0 and finished):
        return Status.STOPPED, "stopped by request"
    if rc == 0:
        return Status.DONE, STOP_CAME_LATE if stopped or requested else None
    return Status.FAILED, None


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
        self.faults: list[str] = []  # the OSErrors met, one line each (also in the log)
        self.me = os.getpid()
        self.my_create_time = procs.create_time(self.me)

    # ------------------------------------------------------------------------------------------
    def say(self, msg: str) -> None:
        if self.echo:
            try:
                print(f"[{time.strftime('%H:%M:%S')}] {safetext.oneline(msg)}", flush=True)
            except OSError:
                pass  # the log itself cannot be written (a full or read-only disk): nothing to say it with

    def fault(self, what: str, e: BaseException) -> str:
        """An OSError the supervisor met: one line in its log, kept for the record."""
        line = f"{what}: {fsutil.oneline(e)}"
        self.faults.append(line)
        self.say(f"fault: {line}")
        return line

    def put(self, st: LegState) -> None:
        """Record the leg's state: in memory always, on disk when the disk lets us."""
        self.states[st.leg] = st
        try:
            write_state(self.exp_dir, st)
        except OSError as e:
            self.fault(f"{st.leg}: state not recorded ({st.status})", e)

    def stop_requested(self, leg: str) -> bool:
        return self.stop_all or stop_request_path(self.exp_dir, leg).exists()

    def _lock(self, path: Path, what: str) -> int:
        return try_lock(path, f"{what} is held by another supervisor", root=self.exp_dir)

    # ------------------------------------------------------------------------------------------
    def run(self) -> int:
        """Run the queue; 0 when every leg is done, 1 otherwise. RunError when it cannot start."""
        plan_path = self.exp_dir / "plan.json"
        try:
            plan = json.loads(fsutil.read_bytes(plan_path, PLAN_MAX_BYTES))
        except (OSError, ValueError, RecursionError) as e:
            raise RunError(f"{plan_path}: cannot read the plan: {fsutil.oneline(e)}") from None
        if why := check_plan(plan):
            raise RunError(f"{plan_path}: {why}")
        if self.grace_s is None:
            self.grace_s = plan_grace(plan)
        state_dir = self.exp_dir / STATE_DIR
        try:
            fsutil.make_dirs(state_dir, root=self.exp_dir)
        except OSError as e:
            raise RunError(f"cannot make {state_dir}: {fsutil.oneline(e)}") from None
        fds = [self._lock(state_dir / f"{SUPERVISOR}.lock", f"experiment dir {self.exp_dir}")]
        try:
            if self.lock_fd is None:  # started by hand: take the experiment's queue lock ourselves
                root = self.exp_dir.parent
                fds.append(try_lock(lock_path(root, plan["experiment"]),
                                    f"experiment '{plan['experiment']}' is held by another supervisor", root=root))
            for spec in plan["legs"]:  # a leg left running by a killed supervisor is never started twice
                prev = read_state(self.exp_dir, spec["name"])
                if prev is not None and prev.status == Status.RUNNING:
                    now = reconcile(self.exp_dir, prev, False, leg_expect(self.exp_dir, spec["name"], spec["argv"]))
                    if now.status == Status.RUNNING:
                        raise RunError(f"leg {spec['name']} still runs (torchrun pid {prev.pid}) from an earlier "
                                       f"supervisor; stop it first: cockpit stop {self.exp_dir} {spec['name']}")
                    if now.status == Status.UNKNOWN:
                        raise RunError(f"leg {spec['name']} may still run (pid {prev.pid}): {now.note}; "
                                       f"make sure it is gone before running this dir again")
        except BaseException:
            for fd in fds:
                os.close(fd)
            raise
        record = {"pid": self.me, "create_time": self.my_create_time, "started_at": now_iso(), "ended_at": None}
        old = self._install_signals()
        try:
            try:
                fsutil.atomic_write_json(state_dir / f"{SUPERVISOR}.json", record, root=self.exp_dir)
            except OSError as e:
                raise RunError(f"cannot write {state_dir}/{SUPERVISOR}.json: {fsutil.oneline(e)}") from None
            return self._queue(plan, record)
        finally:
            record["ended_at"] = now_iso()
            if self.faults:
                record["faults"] = self.faults[-20:]
            try:
                fsutil.atomic_write_json(state_dir / f"{SUPERVISOR}.json", record, root=self.exp_dir)
            except OSError as e:
                self.fault("the supervisor's end not recorded", e)
            self._restore_signals(old)
            for fd in fds:
                os.close(fd)

    def _queue(self, plan: dict, record: dict) -> int:
        legs = plan["legs"]
        for spec in legs:  # everything queued first, so a client sees the whole plan at once
            prev = read_state(self.exp_dir, spec["name"])
            if prev is None or prev.status != Status.DONE:
                self.put(LegState(spec["name"], Status.QUEUED, log=str(self.log_path(spec["name"])),
                                  log_id=prev.log_id if prev is not None else None,
                                  supervisor_pid=self.me, supervisor_create_time=self.my_create_time))
        self.say(f"supervisor {self.me}: {len(legs)} legs of {plan['experiment']} in {self.exp_dir}")
        prep = self._prepare(plan)
        if prep is not None:  # the prepare step failed or was stopped: no leg can run
            self._prepare_ended(plan, prep)
            record["status"] = "ended with legs not done"
            return 1
        for spec in legs:
            name = spec["name"]
            if name not in self.states:
                continue  # done in an earlier run of this dir
            if self.stop_requested(name):
                self._finish(name, Status.STOPPED, note="stopped by request before it started")
                continue
            try:
                st = self._run_leg(plan, spec)
            except (OSError, RunError) as e:  # the supervisor's own I/O failed under this leg: the leg failed
                line = self.fault(name, e)
                st = self._finish(name, Status.FAILED, note=f"supervisor fault: {line}", error_tail=[f"supervisor: {line}"])
            self._report(plan_tail(plan))
            if st.status in (Status.DONE, Status.FAILED):
                self._notify(plan, st)
            if st.status == Status.FAILED and plan.get("on_failure", "stop") == "stop":
                self.say(f"{name} failed: stopping the queue (on_failure = stop)")
                for rest in legs[legs.index(spec) + 1 :]:
                    if rest["name"] in self.states:
                        self._finish(rest["name"], Status.STOPPED, note=f"queue stopped after {name} failed (on_failure = stop)")
                break
        ok = all(s.status == Status.DONE for s in self.states.values())
        record["status"] = "finished" if ok else "ended with legs not done"
        return 0 if ok else 1

    # ------------------------------------------------------------------------------------------
    def _put_prepare(self, st: LegState) -> None:
        try:
            write_state(self.exp_dir, st)
        except OSError as e:
            self.fault(f"{PREPARE}: state not recorded ({st.status})", e)

    def _prepare(self, plan: dict) -> LegState | None:
        """Run the plan's prepare step when what it creates is missing, its output in
        `<dir>/prepare.log`. None when there is none, it was not needed, or it ended well;
        else its state (failed, stopped)."""
        spec = plan_prepare(plan)
        if spec is None:
            return None
        argv, creates = spec
        log = self.exp_dir / f"{PREPARE}.log"
        st = LegState(PREPARE, Status.QUEUED, log=str(log), supervisor_pid=self.me,
                      supervisor_create_time=self.my_create_time)
        missing = [c for c in creates if not os.path.lexists(c)]
        if not missing:
            st.status, st.note, st.ended_at = Status.DONE, "skipped: what it creates exists", now_iso()
            self._put_prepare(st)
            self.say(f"{PREPARE}: skipped, {', '.join(creates)} exist")
            return None
        if self.stop_all:
            st.status, st.note, st.ended_at = Status.STOPPED, "stopped by request before it started", now_iso()
            self._put_prepare(st)
            return st
        cwd = plan.get("cwd") if isinstance(plan.get("cwd"), str) else str(self.exp_dir)
        env = {**os.environ, **plan_env(plan), "PYTHONUNBUFFERED": "1"}
        env["PYTHONPATH"] = os.pathsep.join(p for p in (cwd, env.get("PYTHONPATH", "")) if p)
        env.update(leg_env(self.exp_dir, PREPARE))  # its processes are found, and stopped, by this marker
        st.started_at = now_iso()
        try:
            fd = fsutil.create_or_append(log, root=self.exp_dir)
        except OSError as e:
            return self._prepare_done(st, Status.FAILED, f"cannot write {log.name}: {fsutil.oneline(e)}")
        try:
            proc = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=fd,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        except (OSError, ValueError) as e:
            return self._prepare_done(st, Status.FAILED, f"could not start: {fsutil.oneline(e)}")
        finally:
            os.close(fd)
        st.pid, st.create_time, st.status = proc.pid, procs.create_time(proc.pid), Status.RUNNING
        self._put_prepare(st)
        self.say(f"{PREPARE}: running, pid {proc.pid}, for {', '.join(missing)}; log {log}")
        stopped = False
        while proc.poll() is None:
            if self.stop_all:
                try:
                    procs.terminate(psutil.Process(proc.pid), self.grace_s, waiter=_waiter(proc))
                except psutil.NoSuchProcess:
                    pass
                stopped = True
                break
            time.sleep(0.1)
        rc = proc.wait()
        self._end_leftovers(PREPARE)
        st.exit_code = rc
        if stopped:
            return self._prepare_done(st, Status.STOPPED, "stopped by request")
        if rc != 0:
            tail = error_tail(log)
            why = signal_cause(rc) or f"exit {rc}"
            return self._prepare_done(st, Status.FAILED, f"{why}: {tail[-1]}" if tail else why, tail)
        if still := [c for c in creates if not os.path.lexists(c)]:
            return self._prepare_done(st, Status.FAILED, f"exited 0 but did not create {', '.join(still)}")
        self._prepare_done(st, Status.DONE, None)
        return None

    def _prepare_done(self, st: LegState, status: Status, note: str | None, tail: list[str] | None = None) -> LegState:
        st.status, st.note, st.ended_at = status, note, now_iso()
        st.error_tail = list(tail or ([note] if note and status == Status.FAILED else []))
        self._put_prepare(st)
        self.say(f"{PREPARE}: {status}" + (f" ({note})" if note else ""))
        return st

    def _prepare_ended(self, plan: dict, prep: LegState) -> None:
        """The prepare step did not end well: the first leg fails with its last lines (a stop
        request stops it), the others are not started; the notify command hears of the first."""
        names = [spec["name"] for spec in plan["legs"] if spec["name"] in self.states]
        for i, name in enumerate(names):
            if prep.status == Status.STOPPED:
                self._finish(name, Status.STOPPED, note="stopped by request while preparing")
            elif i == 0:
                st = self._finish(name, Status.FAILED, note=f"{PREPARE} failed: {prep.note}",
                                  error_tail=[f"{PREPARE}: {line}" for line in prep.error_tail])
                self._notify(plan, st)
            else:
                self._finish(name, Status.STOPPED, note=f"not started: {PREPARE} failed")

    def log_path(self, leg: str) -> Path:
        """Where a leg's output goes: always `<exp_dir>/<leg>.log`, whatever a plan says."""
        return self.exp_dir / f"{leg}.log"

    def _finish(self, leg: str, status: Status, note: str | None = None, **kw) -> LegState:
        st = self.states[leg]
        st.status, st.ended_at, st.waiting_reason = status, now_iso(), None
        if note:
            st.note = note
        for k, v in kw.items():
            setattr(st, k, v)
        if status == Status.STOPPED and st.pid is None:
            st.exit_code = None
        self.put(st)
        clear_stop_request(self.exp_dir, leg)  # honoured or too late: none is left to look pending
        self.say(f"{leg}: {status}" + (f" ({note})" if note else ""))
        return st

    # ------------------------------------------------------------------------------------------
    def _preflight(self, plan: dict, spec: dict) -> Status | None:
        """Wait for the leg's GPUs to be idle. Returns None to go on, or the leg's final status."""
        name = spec["name"]
        st = self.states[name]
        if spec.get("device") == "cpu":
            st.note = "cpu leg: no GPU preflight"
            return None
        idle = plan.get("gpu_idle") if isinstance(plan.get("gpu_idle"), dict) else {}
        max_util = _number(idle.get("max_util_pct"), 5.0, 0.0, 100.0)
        max_mem = _number(idle.get("max_mem_mib"), 1024.0, 0.0, 1e9)
        wait_s = _number(idle.get("wait_s"), 600.0, 0.0, 7 * 24 * 3600.0)
        sampler = self.sampler or gpus.GpuSampler(history=1)
        indices = gpus.leg_gpu_indices(int(_number(spec.get("nproc_per_node"), 1, 1, 128)))
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
                self._finish(name, Status.STOPPED, note="stopped by request while waiting for GPUs")
                return Status.STOPPED
            if time.monotonic() >= deadline:
                self._finish(name, Status.FAILED, note="GPUs not idle in time",
                             error_tail=[f"preflight: GPUs not idle after {wait_s:.0f}s: {why}"])
                return Status.FAILED
            st.status, st.waiting_reason = Status.WAITING, f"{why} (waiting since {since}, up to {wait_s:.0f}s)"
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

    def _open_log(self, st: LegState) -> int | str:
        """The leg's log, for torchrun's output: created new, or (a leg run again in its dir)
        the very file this supervisor created before, by its recorded (device, inode). Returns
        a write fd, or why the log path is taken (one line): nothing else is ever written to."""
        path = self.log_path(st.leg)
        try:
            fd = fsutil.create_new(path, root=self.exp_dir)
        except FileExistsError:
            if st.log_id is None:
                return (f"log path taken: {path} exists and was not created by the supervisor "
                        f"({_what_is(path)}); nothing started")
            try:
                return fsutil.open_append(path, root=self.exp_dir, expect=tuple(st.log_id))
            except OSError as e:
                return f"log path taken: {fsutil.oneline(e)}; nothing started"
        except OSError as e:
            if e.errno in (errno.ELOOP, errno.ENOTDIR, errno.EPERM):
                return f"log path refused: {fsutil.oneline(e)}; nothing started"
            raise  # the filesystem's trouble (read-only, full...): a supervisor fault
        st.log_id = list(fsutil.file_id(fd))
        return fd

    def _start_and_wait(self, plan: dict, spec: dict) -> LegState:
        name = spec["name"]
        st = self.states[name]
        cwd = plan.get("cwd") if isinstance(plan.get("cwd"), str) else str(self.exp_dir)
        env = {**os.environ, **plan_env(plan)}  # the registry's env for the legs, over ours
        env["PYTHONUNBUFFERED"] = "1"
        env["PYTHONPATH"] = os.pathsep.join(p for p in (cwd, env.get("PYTHONPATH", "")) if p)
        env.update(leg_env(self.exp_dir, name))  # proves, later, that its processes are this leg's
        argv = list(spec["argv"])
        log_path = self.log_path(name)
        log_fd = self._open_log(st)
        if isinstance(log_fd, str):
            return self._finish(name, Status.FAILED, note=log_fd, exit_code=None, error_tail=[log_fd], started_at=now_iso())
        try:
            proc = subprocess.Popen(
                argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=log_fd, stderr=subprocess.STDOUT,
                start_new_session=True,  # our signals only: a Ctrl-C at the terminal reaches us, not it
            )
        except (OSError, ValueError) as e:
            return self._finish(name, Status.FAILED, note="could not start torchrun", exit_code=None,
                                error_tail=[f"{argv[0]}: {fsutil.oneline(e)}"], started_at=now_iso())
        finally:
            os.close(log_fd)  # the child holds its own copy
        st.pid, st.create_time = proc.pid, procs.create_time(proc.pid)
        st.status, st.started_at, st.waiting_reason = Status.RUNNING, now_iso(), None
        self.put(st)
        self.say(f"{name}: running, torchrun pid {proc.pid}, log {log_path}")

        stopped = False
        while proc.poll() is None:
            if self.stop_requested(name):
                self.say(f"{name}: stopping (SIGTERM, then SIGKILL after {self.grace_s:g}s)")
                try:
                    root = psutil.Process(proc.pid)  # our own unreaped child: its pid cannot be reused
                    killed = procs.terminate(root, self.grace_s, waiter=_waiter(proc))
                except psutil.NoSuchProcess:
                    killed = []
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
        self._end_leftovers(name)
        finished = stopped and rc == 0 and logs.summarize(log_path).finished  # a stop that came at the end
        status, note = ended(stopped, rc, self.stop_requested(name), finished)
        if status == Status.STOPPED:
            return self._finish(name, Status.STOPPED, note=note, exit_code=rc)
        if status == Status.DONE:
            return self._finish(name, Status.DONE, note=note, exit_code=0)
        tail = error_tail(log_path)
        if cause := signal_cause(rc):  # the log holds no cause of a kill: say it, last (the line shown)
            tail = [*tail[-9:], cause]
            return self._finish(name, Status.FAILED, note=cause, exit_code=rc, error_tail=tail)
        return self._finish(name, Status.FAILED, exit_code=rc, error_tail=tail)

    def _end_leftovers(self, name: str) -> None:
        """torchrun is gone; its workers must be too. A worker left (torchrun was killed, its
        workers run in their own sessions) carries this leg's marker: stop it, say so."""
        left = procs.marked(leg_env(self.exp_dir, name))
        if left:
            killed = procs.terminate_all(left, min(self.grace_s, 5.0))
            self.say(f"{name}: stopped {len(left)} processes left behind by torchrun "
                     f"({len(killed)} needed SIGKILL): {', '.join(str(p.pid) for p in left)}")

    # ------------------------------------------------------------------------------------------
    def _report(self, tail: int) -> None:
        """Regenerate report.md over the plan's tail window (the registry's, as `cockpit report`
        and the cockpit's `r` use it); a report problem is logged, never fatal to the queue."""
        try:
            report.write_report(self.exp_dir, tail=tail)
        except Exception as e:  # noqa: BLE001 - the queue must go on whatever the report does
            self.say(f"report.md not regenerated: {fsutil.oneline(e)}")

    def _notify(self, plan: dict, st: LegState) -> None:
        """Run the registry's notify command for a leg that ended done or failed. It may fail,
        hang or be missing: that is said in the supervisor's log and the leg's state, never more."""
        argv, timeout_s = plan_notify(plan)
        if argv is None:
            return
        fields = {"event": str(st.status), "experiment": str(plan["experiment"]), "leg": st.leg,
                  "dir": str(self.exp_dir), "log": str(self.log_path(st.leg))}
        why = run_notify(reg.fill_notify(argv, fields), timeout_s, self.exp_dir)
        if why is None:
            self.say(f"{st.leg}: notified ({st.status})")
            return
        st.notify_error = why
        self.put(st)
        self.say(f"{st.leg}: notify failed: {why}")

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


NOTIFY_OUTPUT_MAX = 64 * 1024  # the last bytes of a notify command's output kept, for its last line


def plan_notify(plan: dict) -> tuple[list[str] | None, float]:
    """The notify command of a plan (argv with its placeholders, timeout), when it is a sane one."""
    spec = plan.get("notify")
    if not isinstance(spec, dict):
        return None, 0.0
    argv = spec.get("argv")
    if not (isinstance(argv, list) and argv and all(isinstance(a, str) and "\x00" not in a for a in argv)):
        return None, 0.0
    return argv, _number(spec.get("timeout_s"), 10.0, 0.1, 600.0)


def run_notify(argv: list[str], timeout_s: float, cwd: Path) -> str | None:
    """Run a notify command (no shell, no stdin, in its own session); None when it exits 0, else
    why not in one line: it could not start, it exited non-zero (its last line), or it ran past
    its time and was stopped with everything it started."""
    try:
        proc = subprocess.Popen(argv, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, start_new_session=True)
    except (OSError, ValueError) as e:
        return f"could not run: {safetext.oneline(fsutil.oneline(e))[:200]}"
    try:
        out, _ = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        try:
            procs.terminate(psutil.Process(proc.pid), 1.0, waiter=_waiter(proc))  # our own unreaped child
        except psutil.NoSuchProcess:
            pass
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        proc.stdout.close()  # not read to its end: a process it left behind may still hold it
        return f"timed out after {timeout_s:g}s (stopped)"
    if proc.returncode == 0:
        return None
    lines = [ln.strip() for ln in out[-NOTIFY_OUTPUT_MAX:].decode("utf-8", "replace").splitlines() if ln.strip()]
    cause = signal_cause(proc.returncode) if proc.returncode < 0 else None
    last = f": {safetext.oneline(lines[-1])[:200]}" if lines else ""
    return (f"killed by signal {-proc.returncode}" if cause else f"exited {proc.returncode}") + last


def plan_prepare(plan: dict) -> tuple[list[str], list[str]] | None:
    """The plan's prepare step (argv, the paths it creates), when it is a sane one."""
    spec = plan.get("prepare")
    if not isinstance(spec, dict):
        return None
    argv, creates = spec.get("argv"), spec.get("creates")
    return (argv, creates) if _strings(argv) and _strings(creates) else None


def _strings(xs: object) -> bool:
    """A non-empty list of non-empty strings no command line or path refuses."""
    return isinstance(xs, list) and bool(xs) and all(isinstance(x, str) and x and "\x00" not in x for x in xs)


def plan_env(plan: dict) -> dict[str, str]:
    """The extra environment the plan gives the legs: names and string values only (a plan is a
    file: it may hold anything), never the marker that proves a process is the leg's."""
    env = plan.get("env")
    if not isinstance(env, dict):
        return {}
    return {k: v for k, v in env.items() if isinstance(k, str) and isinstance(v, str) and k and "=" not in k
            and "\x00" not in k + v and k not in (procs.ENV_EXP_DIR, procs.ENV_LEG)}


def _number(v: object, default: float, lo: float, hi: float) -> float:
    """A number from the plan when it is one within [lo, hi], else the default (a plan may lie)."""
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) and lo <= v <= hi else default


def _what_is(path: Path) -> str:
    """What stands at a path, in a few words (a symlink says where it points)."""
    try:
        if path.is_symlink():
            return f"a symlink to {safetext.oneline(os.readlink(path))[:120]}"
        st = os.lstat(path)
    except OSError as e:
        return fsutil.oneline(e)
    if stat_.S_ISDIR(st.st_mode):
        return "a directory"
    if stat_.S_ISREG(st.st_mode):
        return f"a file of {st.st_size} bytes"
    return "not a regular file"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m cockpit.supervisor", description=__doc__.split("\n")[0])
    p.add_argument("exp_dir")
    p.add_argument("--lock-fd", type=int, default=None, help="the experiment lock, handed over by launch")
    p.add_argument("--grace", type=float, default=None, help="seconds between SIGTERM and SIGKILL (default: the plan's)")
    args = p.parse_args(argv)
    try:
        return Supervisor(args.exp_dir, lock_fd=args.lock_fd, grace_s=args.grace).run()
    except RunError as e:
        _last_words(f"supervisor: {e}")
        return 2
    except OSError as e:  # anything the queue's own handling did not catch: one line, no traceback
        _last_words(f"supervisor: {fsutil.oneline(e)}")
        return 1


def _last_words(line: str) -> None:
    try:
        print(safetext.oneline(line), file=sys.stderr, flush=True)
    except OSError:
        pass


if __name__ == "__main__":
    sys.exit(main())
