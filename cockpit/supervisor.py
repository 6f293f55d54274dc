"""The supervisor: runs one experiment dir's planned legs, in order, up to max_parallel at once.

    python -m cockpit.supervisor EXP_DIR [--lock-fd N] [--continuation N]

`cockpit launch` starts it detached (its own session, output to state/supervisor.log), or runs
it in its own process with --foreground. For each leg it waits for idle GPUs, starts torchrun
with stdout+stderr going straight into `<exp_dir>/<leg>.log` (the supervisor never touches the
data path, so killing it loses no log byte), records the leg's state atomically, regenerates
report.md, and on a failure stops the queue or goes on, per the registry's `on_failure`.

Side by side (the plan's max_parallel > 1): legs start in the queue's order, each as soon as a
slot is free and enough idle GPUs of the pool no leg of this queue holds (see Supervisor._place);
each leg's torchrun sees only its own GPUs (CUDA_VISIBLE_DEVICES) and its state records them.
torchrun --standalone binds its rendezvous store to a port the kernel gives it (localhost:0),
and its workers reuse that store: two legs on one node never share a port.

Continuations (`cockpit launch EXP --into DIR`): a run recorded in `plan.<n>.json` joins the
queue of the dir's live supervisor, which looks for new ones about once a second, at once on
SIGUSR1, and always before it ends; it lists those it took in state/supervisor.json. With
--continuation N (the dir's supervisor had ended) it runs only what plan.<N>.json asks for.

Signals: SIGTERM/SIGINT stop the queue (each running leg is stopped: SIGTERM to torchrun, a grace
period, then SIGKILL to every process left in its tree); SIGUSR1 makes it look for a stop request
file `state/<leg>.stop` (`cockpit stop DIR LEG`), removed once the leg ends, and for
continuations. A stop that reaches a leg which has already finished (exit 0, final lines) lost the
race: the leg is done, noted `stop came after it ended`.

Faults: a leg's log is created new (`<leg>.log` taken by anything else, a planted symlink
included, fails the leg before it starts, with that reason); any OSError of the supervisor's own
(a read-only or full filesystem, an I/O error) fails the leg it hit, recorded on the leg where it
still can be and in the supervisor's log as one line, and the queue goes on or stops per policy.
The supervisor always ends with its exit code, never with a traceback.

Layer 2: imports fsutil, pipes, procs, safetext, registry, vocab, logs, gpus, plan, expdir and report_files.
"""

from __future__ import annotations

import argparse
import dataclasses
import errno
import os
import signal
import stat as stat_
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

from cockpit import fsutil, gpus, logs, pipes, procs, report_files, safetext
from cockpit import registry as reg
from cockpit.expdir import (
    STATE_DIR,
    STOP_CAME_LATE,
    LegState,
    RunError,
    clear_stop_request,
    error_tail,
    leg_env,
    leg_expect,
    lock_path,
    now_iso,
    read_state,
    reconcile,
    stop_request_path,
    try_lock,
    write_state,
)
from cockpit.plan import (
    PLAN_FILE,
    SUPERVISOR,
    Continued,
    Plan,
    PlanError,
    PlanRun,
    continuation_numbers,
    continuation_path,
)
from cockpit.registry import PREPARE
from cockpit.vocab import Status


def signal_cause(rc: int) -> str | None:
    """`torchrun was killed by SIGKILL (signal 9)` for a negative return code, else None."""
    if rc >= 0:
        return None
    try:
        name = signal.Signals(-rc).name
    except ValueError:
        name = f"signal {-rc}"
    return f"torchrun was killed by {name} (signal {-rc}): not by the trainer's own error"


@dataclass
class Placement:
    """Where a leg runs: its GPUs (NVML indices; [] for a CPU leg), what pins it to them
    (side by side: CUDA_VISIBLE_DEVICES in its environment), and what the preflight found."""

    gpus: list[int]
    env: dict[str, str]
    note: str


@dataclass
class Started:
    """A leg this supervisor started, until it ends."""

    spec: PlanRun
    proc: subprocess.Popen
    lock_fd: int  # state/<leg>.lock, held while it runs
    gpus: list[int]
    stopper: threading.Thread | None = None  # stopping it (SIGTERM, grace, SIGKILL), beside the queue's loop


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
        sampler: gpus.Sampler | None = None,
        poll_s: float = 5.0,
        continuation: int | None = None,
    ):
        self.exp_dir = Path(exp_dir).resolve()
        self.lock_fd = lock_fd
        self.echo = echo
        self.grace_s = grace_s  # None: the plan's stop_grace_s
        self.sampler = sampler
        self.poll_s = poll_s
        self.continuation = continuation  # started for plan.<n>.json: runs only what it asks
        self.stop_all = False  # set by SIGTERM / SIGINT
        self.states: dict[str, LegState] = {}
        self.faults: list[str] = []  # the OSErrors met, one line each (also in the log)
        self.me = os.getpid()
        self.my_create_time = procs.create_time(self.me)
        self.plan = Plan("", ())  # the dir's plan as last read (the continuations it took included)
        self.specs: dict[str, PlanRun] = {}  # every run of the dir's plan, continuations included
        self.queue: list[str] = []  # runs waiting to start, in order
        self.started: dict[str, Started] = {}  # runs running now
        self.max_parallel = 1
        self.record: dict = {}  # state/supervisor.json
        self._waits: dict[
            str, tuple[float, str]
        ] = {}  # run -> when its wait for busy GPUs began (clock, words)
        self._snap: gpus.Snapshot | None = None
        self._snap_at = -1e9
        self._snap_for: str | None = None  # the run the last sample was taken for
        self._looked = 0.0  # when the dir was last looked at for continuations
        self._look_now = True  # SIGUSR1: look now

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

    def _write_record(self) -> None:
        fsutil.atomic_write_json(
            self.exp_dir / STATE_DIR / f"{SUPERVISOR}.json", self.record, root=self.exp_dir
        )

    # ------------------------------------------------------------------------------------------
    def run(self) -> int:
        """Run the queue; 0 when every leg is done, 1 otherwise. RunError when it cannot start."""
        try:
            plan = Plan.read(self.exp_dir)
        except PlanError as e:
            raise RunError(str(e)) from None
        if why := plan.unrunnable():
            raise RunError(f"{self.exp_dir / PLAN_FILE}: {why}")
        for line in plan.left_out:
            self.say(f"left out: {line}")
        if self.grace_s is None:
            self.grace_s = plan.grace()
        state_dir = self.exp_dir / STATE_DIR
        try:
            fsutil.make_dirs(state_dir, root=self.exp_dir)
        except OSError as e:
            raise RunError(f"cannot make {state_dir}: {fsutil.oneline(e)}") from None
        fds = [self._lock(state_dir / f"{SUPERVISOR}.lock", f"experiment dir {self.exp_dir}")]
        try:
            if self.lock_fd is None:  # started by hand: take the experiment's queue lock ourselves
                root = self.exp_dir.parent
                fds.append(
                    try_lock(
                        lock_path(root, plan.experiment),
                        f"experiment '{plan.experiment}' is held by another supervisor",
                        root=root,
                    )
                )
            for spec in plan.runs:  # a leg left running by a killed supervisor is never started twice
                prev = read_state(self.exp_dir, spec.name)
                if prev is not None and prev.status == Status.RUNNING:
                    now = reconcile(
                        self.exp_dir, prev, False, leg_expect(self.exp_dir, spec.name, list(spec.argv))
                    )
                    if now.status == Status.RUNNING:
                        raise RunError(
                            f"leg {spec.name} still runs (torchrun pid {prev.pid}) from an earlier "
                            f"supervisor; stop it first: cockpit stop {self.exp_dir} {spec.name}"
                        )
                    if now.status == Status.UNKNOWN:
                        raise RunError(
                            f"leg {spec.name} may still run (pid {prev.pid}): {now.note}; "
                            f"make sure it is gone before running this dir again"
                        )
            first = self._first_runs(plan)
        except BaseException:
            for fd in fds:
                os.close(fd)
            raise
        self.record = {
            "pid": self.me,
            "create_time": self.my_create_time,
            "started_at": now_iso(),
            "ended_at": None,
            "continuations": sorted(c.n for c in plan.continuations),
        }
        old = self._install_signals()
        try:
            try:
                self._write_record()
            except OSError as e:
                raise RunError(f"cannot write {state_dir}/{SUPERVISOR}.json: {fsutil.oneline(e)}") from None
            return self._queue(plan, first)
        finally:
            self.record["ended_at"] = now_iso()
            if self.faults:
                self.record["faults"] = self.faults[-20:]
            try:
                self._write_record()
            except OSError as e:
                self.fault("the supervisor's end not recorded", e)
            self._restore_signals(old)
            for fd in fds:
                os.close(fd)

    def _first_runs(self, plan: Plan) -> list[str]:
        """The runs this supervisor queues first: every run of the plan not done here; started
        for a continuation, the runs it asks for that never started."""
        if self.continuation is None:
            out = []
            for spec in plan.runs:
                prev = read_state(self.exp_dir, spec.name)
                if prev is None or prev.status != Status.DONE:
                    out.append(spec.name)
            return out
        cont = plan.continuation(self.continuation)
        if cont is None:
            raise RunError(
                f"{continuation_path(self.exp_dir, self.continuation)}: no such continuation of this dir"
            )
        return self._asked(cont)

    def _asked(self, cont: Continued) -> list[str]:
        """The runs a continuation asks for (those it adds, those of the dir it asks again) that
        never started here: no process, no log (a run is never started twice in its dir)."""
        out = []
        for name in [*cont.runs, *cont.again]:
            prev = self.states.get(name) or read_state(self.exp_dir, name)
            if name in self.queue or name in self.started or name in out:
                continue
            if prev is not None and (prev.pid is not None or prev.job_id is not None):
                continue
            if not os.path.lexists(self.log_path(name)):
                out.append(name)
        return out

    def _enqueue(self, name: str) -> None:
        prev = self.states.get(name) or read_state(self.exp_dir, name)
        self.put(
            LegState(
                name,
                Status.QUEUED,
                log=str(self.log_path(name)),
                log_id=prev.log_id if prev is not None else None,
                supervisor_pid=self.me,
                supervisor_create_time=self.my_create_time,
            )
        )
        self.queue.append(name)

    def _queue(self, plan: Plan, first: list[str]) -> int:
        self.plan = plan
        self.specs = {spec.name: spec for spec in plan.runs}
        self.max_parallel = plan.max_parallel
        for name in first:  # everything queued first, so a client sees the whole plan at once
            self._enqueue(name)
        side = f", up to {self.max_parallel} side by side" if self.max_parallel > 1 else ""
        self.say(f"supervisor {self.me}: {len(first)} legs of {plan.experiment} in {self.exp_dir}{side}")
        prep = self._prepare(plan)
        if prep is not None:  # the prepare step failed or was stopped: no leg can run
            self._prepare_ended(plan, prep)
        else:
            self._loop()
        ok = all(self._done(name) for name in self.specs)  # the dir's every run, not only this queue's
        self.record["status"] = "finished" if ok else "ended with legs not done"
        return 0 if ok else 1

    def _done(self, name: str) -> bool:
        st = self.states.get(name) or read_state(self.exp_dir, name)
        return st is not None and st.status == Status.DONE

    def _loop(self) -> None:
        """Start what fits, watch what runs, until nothing is queued or running and no
        continuation came in: legs start in the queue's order, each when a slot (max_parallel)
        and its GPUs are free."""
        while True:
            self._take_continuations()
            self._start_what_fits()
            self._watch()
            if not self.queue and not self.started:
                if self._take_continuations(force=True):
                    continue
                return
            time.sleep(0.1)

    # ------------------------------------------------------------------------------------------
    def _take_continuations(self, force: bool = False) -> bool:
        """Queue the runs of continuations recorded since we last looked (`plan.<n>.json`, see
        continuation.py): about once a second, at once on SIGUSR1, always before ending; the
        record lists each taken. True when a run was queued."""
        if not (force or self._look_now or time.monotonic() - self._looked >= 1.0):
            return False
        self._looked, self._look_now = time.monotonic(), False
        known = set(self.record.get("continuations", []))
        if all(n in known for n in continuation_numbers(self.exp_dir)):
            return False
        try:
            plan = Plan.read(self.exp_dir)
        except PlanError as e:
            self.say(f"continuations not read: {e}")
            return False
        if plan.unrunnable() is not None:
            return False
        queued = False
        for cont in plan.continuations:
            if cont.n in known:
                continue
            for spec in plan.runs:
                self.specs.setdefault(spec.name, spec)
            asked = self._asked(cont)
            for name in asked:
                self._enqueue(name)
            self.record.setdefault("continuations", []).append(cont.n)
            self.say(
                f"continuation {cont.file}: queued {', '.join(asked) or 'nothing (every run it asks for started already)'}"
            )
            queued = queued or bool(asked)
        self.plan = dataclasses.replace(plan, runs=tuple(self.specs.values()))
        try:
            self._write_record()  # whoever recorded the continuation waits to read that it was taken
        except OSError as e:
            self.fault("continuation taken, not recorded", e)
        return queued

    def _start_what_fits(self) -> None:
        while self.queue and len(self.started) < self.max_parallel:
            name = self.queue[0]
            spec = self.specs[name]
            if self.stop_requested(name):
                self.queue.pop(0)
                self._waits.pop(name, None)
                waited = self.states[name].status == Status.WAITING
                self._finish(
                    name,
                    Status.STOPPED,
                    note="stopped by request "
                    + ("while waiting for GPUs" if waited else "before it started"),
                )
                continue
            try:
                placed = self._place(spec)
            except (OSError, RunError) as e:
                placed = self._fault_ends(name, e)
            if placed is None:
                return  # it waits for GPUs: and every leg after it (the queue's order holds)
            self.queue.pop(0)
            self._waits.pop(name, None)
            if isinstance(placed, LegState):
                self._ended(placed)
                continue
            try:
                st = self._start(spec, placed)
            except (OSError, RunError) as e:  # the supervisor's own I/O failed under this leg: the leg failed
                st = self._fault_ends(name, e)
            if st.status != Status.RUNNING:
                self._ended(st)

    def _fault_ends(self, name: str, e: BaseException) -> LegState:
        line = self.fault(name, e)
        return self._finish(
            name, Status.FAILED, note=f"supervisor fault: {line}", error_tail=[f"supervisor: {line}"]
        )

    def _watch(self) -> None:
        """Each running leg: asked to stop, stop it (beside the loop: the others are watched on);
        ended, record how, and go on per policy."""
        for name, leg in list(self.started.items()):
            if leg.proc.poll() is None:
                if leg.stopper is None and self.stop_requested(name):
                    leg.stopper = threading.Thread(target=self._stop_leg, args=(name, leg.proc), daemon=True)
                    leg.stopper.start()
                continue
            if leg.stopper is not None:
                leg.stopper.join()
            del self.started[name]
            try:
                st = self._outcome(name, leg)
            except (OSError, RunError) as e:
                st = self._fault_ends(name, e)
            finally:
                os.close(leg.lock_fd)
            self._ended(st)

    def _ended(self, st: LegState) -> None:
        """A leg ended (or failed before it started): report.md, notify, and the failure policy
        (on_failure = stop: no leg of the queue starts after it; legs running beside it end as
        they would)."""
        self._report(self.plan.tail)
        if st.status in (Status.DONE, Status.FAILED):
            self._notify(self.plan, st)
        if st.status == Status.FAILED and self.plan.on_failure == "stop" and self.queue:
            self.say(f"{st.leg} failed: stopping the queue (on_failure = stop)")
            for rest in self.queue:
                self._finish(
                    rest, Status.STOPPED, note=f"queue stopped after {st.leg} failed (on_failure = stop)"
                )
            self.queue.clear()
            self._waits.clear()

    # ------------------------------------------------------------------------------------------
    def _put_prepare(self, st: LegState) -> None:
        try:
            write_state(self.exp_dir, st)
        except OSError as e:
            self.fault(f"{PREPARE}: state not recorded ({st.status})", e)

    def _prepare(self, plan: Plan) -> LegState | None:
        """Run the plan's prepare step when what it creates is missing, its output in
        `<dir>/prepare.log`. None when there is none, it was not needed, or it ended well;
        else its state (failed, stopped)."""
        spec = plan.prepare
        if spec is None or not spec.runnable:
            return None
        argv, creates = list(spec.argv), list(spec.creates)
        mark = spec.mark_in(self.exp_dir)  # this dir's exp_root's (a plan may name any file)
        log = self.exp_dir / f"{PREPARE}.log"
        st = LegState(
            PREPARE,
            Status.QUEUED,
            log=str(log),
            supervisor_pid=self.me,
            supervisor_create_time=self.my_create_time,
        )
        missing = [c for c in creates if not os.path.lexists(c)]
        if mark is not None and os.path.lexists(mark):
            missing = creates  # an earlier run did not end well: what it left is not trusted
            self.say(f"{PREPARE}: its last run did not end well ({mark} is there): running it again")
        if not missing:
            st.status, st.note, st.ended_at = Status.DONE, "skipped: what it creates exists", now_iso()
            self._put_prepare(st)
            self.say(f"{PREPARE}: skipped, {', '.join(creates)} exist")
            return None
        if self.stop_all:
            st.status, st.note, st.ended_at = (
                Status.STOPPED,
                "stopped by request before it started",
                now_iso(),
            )
            self._put_prepare(st)
            return st
        cwd = plan.cwd or str(self.exp_dir)
        env = {**os.environ, **plan.env, "PYTHONUNBUFFERED": "1"}
        env["PYTHONPATH"] = os.pathsep.join(p for p in (cwd, env.get("PYTHONPATH", "")) if p)
        env.update(leg_env(self.exp_dir, PREPARE))  # its processes are found, and stopped, by this marker
        st.started_at = now_iso()
        try:
            fd = fsutil.create_or_append(log, root=self.exp_dir)
        except OSError as e:
            return self._prepare_done(st, Status.FAILED, f"cannot write {log.name}: {fsutil.oneline(e)}")
        if mark is not None:  # there until the step ends well, whatever ends this process
            try:
                root = self.exp_dir.parent
                fsutil.make_dirs(Path(mark).parent, root=root)
                fsutil.atomic_write_json(
                    mark, {"dir": str(self.exp_dir), "started_at": st.started_at}, root=root
                )
            except OSError as e:
                os.close(fd)
                return self._prepare_done(st, Status.FAILED, f"cannot write {mark}: {fsutil.oneline(e)}")
        try:
            proc = subprocess.Popen(
                argv,
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=fd,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
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
        if mark is not None:
            try:
                os.unlink(mark)
            except FileNotFoundError:
                pass
            except OSError as e:  # its outputs are fine; the next launch only makes them again
                self.fault(f"{PREPARE}: {mark} not removed", e)
        self._prepare_done(st, Status.DONE, None)
        return None

    def _prepare_done(
        self, st: LegState, status: Status, note: str | None, tail: list[str] | None = None
    ) -> LegState:
        st.status, st.note, st.ended_at = status, note, now_iso()
        st.error_tail = list(tail or ([note] if note and status == Status.FAILED else []))
        self._put_prepare(st)
        self.say(f"{PREPARE}: {status}" + (f" ({note})" if note else ""))
        return st

    def _prepare_ended(self, plan: Plan, prep: LegState) -> None:
        """The prepare step did not end well: the first leg fails with its last lines (a stop
        request stops it), the others are not started; the notify command hears of the first."""
        names, self.queue = self.queue, []
        for i, name in enumerate(names):
            if prep.status == Status.STOPPED:
                self._finish(name, Status.STOPPED, note="stopped by request while preparing")
            elif i == 0:
                st = self._finish(
                    name,
                    Status.FAILED,
                    note=f"{PREPARE} failed: {prep.note}",
                    error_tail=[f"{PREPARE}: {line}" for line in prep.error_tail],
                )
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
    def _sample(self, name: str) -> gpus.Snapshot:
        """The GPUs now: sampled afresh for a leg's first try, then every poll_s while it waits."""
        if self._snap is None or self._snap_for != name or time.monotonic() - self._snap_at >= self.poll_s:
            sampler = self.sampler or gpus.GpuSampler(history=1)
            self.sampler = sampler
            self._snap, self._snap_at, self._snap_for = sampler.sample(), time.monotonic(), name
        return self._snap

    def _place(self, spec: PlanRun) -> Placement | LegState | None:
        """The GPUs the queue's next leg runs on, once they are idle: a Placement; None while it
        waits (for busy GPUs, or for this queue's legs to free theirs); or its final state
        (its GPUs were not idle within the plan's wait_s, or it can never fit).

        One leg at a time (max_parallel 1, no registry gpus), a leg runs on the GPUs it would
        take by itself (the first nproc of CUDA_VISIBLE_DEVICES, else 0..n-1), checked idle.
        Side by side, or on the registry's gpus, it gets the first idle GPUs of the pool
        (gpus.gpu_pool) that no leg of this queue holds, pinned by CUDA_VISIBLE_DEVICES (with
        CUDA_DEVICE_ORDER=PCI_BUS_ID, so CUDA numbers the GPUs as NVML does). With no pool to
        place on (no NVML and no registry gpus), GPU legs run one at a time, as with
        max_parallel 1, and the note says why."""
        name = spec.name
        st = self.states[name]
        if not spec.uses_gpus:
            return Placement([], {}, "cpu leg: no GPU preflight")
        idle = self.plan.gpu_idle
        max_util, max_mem, wait_s = idle.max_util_pct, idle.max_mem_mib, idle.wait_s
        need = spec.nproc_per_node
        env = {**os.environ, **self.plan.env}
        snap = self._sample(name)
        held = {i for leg in self.started.values() for i in leg.gpus}
        named = list(self.plan.gpus) if self.plan.gpus is not None else None
        pool, source = gpus.gpu_pool(named, snap, env) if self.max_parallel > 1 or named else (None, None)
        if pool is None:
            if held:  # one GPU leg at a time: the next waits for this queue's running one
                return None
            indices = gpus.leg_gpu_indices(need, env)
            ok, why = gpus.preflight(snap, indices, max_util, max_mem)
            alone = f"; GPU legs run one at a time: {source}" if source else ""
            if ok is None:
                return Placement(indices, {}, f"preflight skipped: {why}{alone}")
            if ok:
                return Placement(indices, {}, f"preflight: {why}{alone}")
            return self._wait_gpus(name, why, wait_s)
        if len(pool) < need:
            return self._finish(
                name,
                Status.FAILED,
                note=f"needs {need} GPUs, {len(pool)} to place legs on",
                error_tail=[
                    f"preflight: needs {need} GPUs, {source} gives {len(pool)}: {gpus.fmt_set(pool)}"
                ],
            )
        got, why = gpus.pick(snap, pool, held, need, max_util, max_mem)
        if got is not None:
            pin = {"CUDA_VISIBLE_DEVICES": gpus.fmt_set(got), "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}
            skipped = "preflight skipped: " if not snap.available else "preflight: "
            return Placement(got, pin, f"{skipped}{why}; side by side, of {source}")
        if held and len([i for i in pool if i not in held]) < need:
            self._waits.pop(name, None)  # this queue's legs hold what it needs: they end; no deadline
            if st.status == Status.WAITING:
                st.status, st.waiting_reason = Status.QUEUED, None
                self.put(st)
            return None
        return self._wait_gpus(name, why, wait_s)

    def _wait_gpus(self, name: str, why: str, wait_s: float) -> LegState | None:
        """The leg waits for busy GPUs (status waiting, with why), up to wait_s from when it began
        to wait; then it fails."""
        st = self.states[name]
        since = self._waits.setdefault(name, (time.monotonic(), now_iso()))
        if time.monotonic() - since[0] >= wait_s:
            self._waits.pop(name, None)
            return self._finish(
                name,
                Status.FAILED,
                note="GPUs not idle in time",
                error_tail=[f"preflight: GPUs not idle after {wait_s:.0f}s: {why}"],
            )
        reason = f"{why} (waiting since {since[1]}, up to {wait_s:.0f}s)"
        if (st.status, st.waiting_reason) != (Status.WAITING, reason):
            st.status, st.waiting_reason = Status.WAITING, reason
            self.put(st)
        return None

    def _open_log(self, st: LegState) -> int | str:
        """The leg's log, for torchrun's output: created new, or (a leg run again in its dir)
        the very file this supervisor created before, by its recorded (device, inode). Returns
        a write fd, or why the log path is taken (one line): nothing else is ever written to."""
        path = self.log_path(st.leg)
        try:
            fd = fsutil.create_new(path, root=self.exp_dir)
        except FileExistsError:
            if st.log_id is None:
                return (
                    f"log path taken: {path} exists and was not created by the supervisor "
                    f"({_what_is(path)}); nothing started"
                )
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

    def _start(self, spec: PlanRun, placed: Placement) -> LegState:
        """Start the leg's torchrun on its GPUs, its output straight into its log; its state
        running (or failed, when it could not start)."""
        name = spec.name
        st = self.states[name]
        st.note, st.gpus = placed.note, (placed.gpus or None)
        leg_fd = self._lock(self.exp_dir / STATE_DIR / f"{name}.lock", f"leg {name}")
        try:
            proc = self._spawn(spec, st, placed)
        except BaseException:
            os.close(leg_fd)
            raise
        if proc is None:
            os.close(leg_fd)
            return st
        self.started[name] = Started(spec, proc, leg_fd, placed.gpus)
        on = f" on GPUs {gpus.fmt_set(placed.gpus)}" if placed.env else ""
        self.say(f"{name}: running{on}, torchrun pid {proc.pid}, log {self.log_path(name)}")
        return st

    def _spawn(self, spec: PlanRun, st: LegState, placed: Placement) -> subprocess.Popen | None:
        name = spec.name
        cwd = self.plan.cwd or str(self.exp_dir)
        env = {**os.environ, **self.plan.env, **placed.env}  # the registry's env for the legs, over ours
        env["PYTHONUNBUFFERED"] = "1"
        env["PYTHONPATH"] = os.pathsep.join(p for p in (cwd, env.get("PYTHONPATH", "")) if p)
        env.update(leg_env(self.exp_dir, name))  # proves, later, that its processes are this leg's
        argv = list(spec.argv)
        log_fd = self._open_log(st)
        if isinstance(log_fd, str):
            self._finish(
                name, Status.FAILED, note=log_fd, exit_code=None, error_tail=[log_fd], started_at=now_iso()
            )
            return None
        try:
            proc = subprocess.Popen(
                argv,
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log_fd,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # our signals only: a Ctrl-C at the terminal reaches us, not it
            )
        except (OSError, ValueError) as e:
            self._finish(
                name,
                Status.FAILED,
                note="could not start torchrun",
                exit_code=None,
                error_tail=[f"{argv[0]}: {fsutil.oneline(e)}"],
                started_at=now_iso(),
            )
            return None
        finally:
            os.close(log_fd)  # the child holds its own copy
        st.pid, st.create_time = proc.pid, procs.create_time(proc.pid)
        st.status, st.started_at, st.waiting_reason = Status.RUNNING, now_iso(), None
        self.put(st)
        return proc

    def _stop_leg(self, name: str, proc: subprocess.Popen) -> None:
        """SIGTERM to the leg's torchrun, the grace period, then SIGKILL to every process left in
        its tree (runs beside the queue's loop)."""
        self.say(f"{name}: stopping (SIGTERM, then SIGKILL after {self.grace_s:g}s)")
        try:
            root = psutil.Process(proc.pid)  # our own unreaped child: its pid cannot be reused
            killed = procs.terminate(root, self.grace_s, waiter=_waiter(proc))
        except psutil.NoSuchProcess:
            killed = []
        if killed:
            self.say(f"{name}: killed {len(killed)} processes left after the grace period")

    def _outcome(self, name: str, leg: Started) -> LegState:
        """A leg's torchrun has exited: its workers must be gone too; record how it ended."""
        rc = leg.proc.wait()
        self._end_leftovers(name)
        stopped = leg.stopper is not None
        log_path = self.log_path(name)
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
            self.say(
                f"{name}: stopped {len(left)} processes left behind by torchrun "
                f"({len(killed)} needed SIGKILL): {', '.join(str(p.pid) for p in left)}"
            )

    # ------------------------------------------------------------------------------------------
    def _report(self, tail: int) -> None:
        """Regenerate report.md over the plan's tail window (the registry's, as `cockpit report`
        and the cockpit's `r` use it); a report problem is logged, never fatal to the queue."""
        try:
            report_files.write_report(self.exp_dir, tail=tail)
        except Exception as e:  # noqa: BLE001 - the queue must go on whatever the report does
            self.say(f"report.md not regenerated: {fsutil.oneline(e)}")

    def _notify(self, plan: Plan, st: LegState) -> None:
        """Run the registry's notify command for a leg that ended done or failed. It may fail,
        hang or be missing: that is said in the supervisor's log and the leg's state, never more."""
        if plan.notify is None:
            return
        fields = {
            "event": str(st.status),
            "experiment": plan.experiment,
            "leg": st.leg,
            "dir": str(self.exp_dir),
            "log": str(self.log_path(st.leg)),
        }
        why = run_notify(reg.fill_notify(list(plan.notify.argv), fields), plan.notify.timeout_s, self.exp_dir)
        if why is None:
            self.say(f"{st.leg}: notified ({st.status})")
            return
        st.notify_error = why
        self.put(st)
        self.say(f"{st.leg}: notify failed: {why}")

    def _on_term(self, signum, frame) -> None:
        self.stop_all = True

    def _on_usr1(self, signum, frame) -> None:
        self._look_now = True  # a stop request file, or a continuation: the loop reads them

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


def run_notify(argv: list[str], timeout_s: float, cwd: Path) -> str | None:
    """Run a notify command (no shell, no stdin, in its own session); None when it exits 0, else
    why not in one line: it could not start, it exited non-zero (its last line), or it ran past
    its time and was stopped with everything it started.

    Its output is read as it comes and only the last NOTIFY_OUTPUT_MAX bytes kept (`yes` as a
    notifier costs a bounded buffer, not the supervisor's memory). Its end is its exit: a child
    it left behind holding stdout does not hold the queue up, and the pipe is closed then, so a
    child that goes on writing to it is not kept blocked on a supervisor that no longer reads."""
    try:
        proc = subprocess.Popen(
            argv,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    except (OSError, ValueError) as e:
        return f"could not run: {safetext.oneline(fsutil.oneline(e))[:200]}"
    try:
        got = pipes.read(proc, timeout_s, keep=NOTIFY_OUTPUT_MAX)
        if got.returncode is None:
            try:
                procs.terminate(psutil.Process(proc.pid), 1.0, waiter=_waiter(proc))  # our own unreaped child
            except psutil.NoSuchProcess:
                pass
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            return f"timed out after {timeout_s:g}s (stopped)"
    finally:
        proc.stdout.close()
    if proc.returncode == 0:
        return None
    lines = [ln.strip() for ln in got.out.decode("utf-8", "replace").splitlines() if ln.strip()]
    cause = signal_cause(proc.returncode) if proc.returncode < 0 else None
    last = f": {safetext.oneline(lines[-1])[:200]}" if lines else ""
    return (f"killed by signal {-proc.returncode}" if cause else f"exited {proc.returncode}") + last


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
    p.add_argument(
        "--grace", type=float, default=None, help="seconds between SIGTERM and SIGKILL (default: the plan's)"
    )
    p.add_argument(
        "--continuation",
        type=int,
        default=None,
        metavar="N",
        help="run only what the dir's plan.<N>.json asks for (runs that never started)",
    )
    args = p.parse_args(argv)
    try:
        return Supervisor(
            args.exp_dir, lock_fd=args.lock_fd, grace_s=args.grace, continuation=args.continuation
        ).run()
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
