"""Experiment dirs on disk: the plan, each leg's state, discovery, reattach, launch and stop.

An experiment dir is the one place a launch writes to:

    <exp_root>/<YYYYmmdd_HHMMSS>_<experiment>/
        plan.json             written once at launch: every leg's argv, the registry, git, host
        <leg>.log             the leg's combined torchrun output (the supervisor is not in the path)
        ckpt_root/            the legs' --checkpoint-root
        state/<leg>.json      status, pids, times, exit code (written atomically)
        state/supervisor.*    the supervisor's own record, log and lock
        report.md             regenerated after every leg

Every client (the CLI, the TUI) reads the same files and reconciles them with the process
table: a leg recorded as running whose torchrun is gone (its supervisor was killed) is judged
from its log's final lines, with the exit code marked unknown. A recorded process counts as the
leg's only when proven (pid, create time, torchrun with the plan's args and this dir's marker:
see procs.py); one that cannot be proven is `unknown` and is never signalled. Every file
written here is created inside its dir without following a planted link (see fsutil.py), and a
dir that cannot be read is that dir's problem (`ExpDir.problem`), never the whole view's.
Nothing here imports torch.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import psutil

from cockpit import fsutil, logs, procs, safetext
from cockpit import registry as reg
from cockpit.vocab import ACTIVE_STATUSES, LEG_STATUSES, Status

UNKNOWN = Status.UNKNOWN
STAMP_FORMAT = "%Y%m%d_%H%M%S"
DIR_NAME = re.compile(r"^(\d{8}_\d{6})_(.+)$")
STATE_DIR = "state"
SUPERVISOR = "supervisor"  # state/supervisor.{json,log,lock}: reserved, never a leg name
LOCK_DIR = ".cockpit-locks"  # <exp_root>/.cockpit-locks/<experiment>.lock: one queue per experiment
STOP_GRACE_S = 10.0  # after SIGTERM to torchrun, how long before every process left is killed
ERROR_TAIL = 20  # lines of the log kept in a failed leg's state
STATE_MAX_BYTES = 1 << 20  # a state file is a few hundred bytes; a bigger one is not ours
PLAN_MAX_BYTES = 64 << 20  # plan.json holds the registry: a few KB, a big registry some MB
# Args that name trainer inputs: they may point into a read-only path (read, never written).
INPUT_ARGS = ("data-dir", "tokenizer-dir", "data", "tokenizer")


class RunError(Exception):
    """A refusal or a bad request: one line, shown by the CLI with exit code 2."""


# ----------------------------------------------------------------------------------------------
# leg state


@dataclass
class LegState:
    leg: str
    status: str  # one of LEG_STATUSES
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
    log_id: list[int] | None = None  # (device, inode) of the log the supervisor created: only it is appended to

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
            and all(v is None or isinstance(v, str)
                    for v in (st.started_at, st.ended_at, st.waiting_reason, st.note, st.log))
            and (st.log_id is None or (isinstance(st.log_id, list) and len(st.log_id) == 2
                                       and all(_is_int(v) for v in st.log_id)))
        )
        return st if ok else None


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def leg_name_ok(name: Any) -> bool:
    """A leg name read from disk (a plan, a log's stem) that the cockpit can name files after."""
    return (isinstance(name, str) and bool(name) and "/" not in name and "\x00" not in name
            and name not in (".", "..") and all(fsutil.name_fits(f.format(name)) for f in reg.LEG_FILES))


def now_iso() -> str:
    return dt.datetime.now().astimezone().isoformat(timespec="seconds")


def state_path(exp_dir: Path | str, leg: str) -> Path:
    return Path(exp_dir) / STATE_DIR / f"{leg}.json"


def write_json_atomic(path: Path, data: Any, root: Path | str | None = None) -> None:
    """Write to a temp file in the same dir, then rename over: readers never see half a file.
    `root`: the dir it must lie in, reached without following a link (default: its own dir)."""
    fsutil.atomic_write_json(path, data, root if root is not None else Path(path).parent)


def write_state(exp_dir: Path | str, state: LegState) -> None:
    write_json_atomic(state_path(exp_dir, state.leg), asdict(state), root=exp_dir)


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
    return st if st is not None and st.leg == leg else None  # another leg's (or no leg's) record: not this one


def is_alive(pid: int | None, create_time: float | None) -> bool:
    """Is this exact process (pid and create time, both required) still running? A reused pid
    (another create time) or a zombie is not; a record without a create time proves nothing."""
    return procs.alive(pid, create_time)


def process_identity(pid: int) -> float | None:
    return procs.create_time(pid)


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
        return procs.identify(pid, created, procs.Expect(argv=("cockpit.supervisor", os.path.realpath(exp_dir))))
    if pid not in holders:
        return procs.Identity(procs.UNPROVEN, f"pid {pid} runs, but does not hold this dir's supervisor lock")
    return procs.Identity(procs.ALIVE, f"pid {pid} holds this dir's supervisor lock", same.process)


# ----------------------------------------------------------------------------------------------
# reading a leg's log: finished, crashed, or neither


def log_outcome(log: Path | str) -> tuple[str, list[str]]:
    """How a leg ended, judged from its log's final lines: ("done"|"failed"|"unknown", error tail)."""
    s = logs.summarize(log)
    if s.failed:
        return "failed", error_tail(log)
    if s.finished:
        return "done", []
    return "unknown", error_tail(log)


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
    summary = ln if (ln := lines[cut]).find("failed (exitcode:") < 0 else ln[ln.find("failed (exitcode:"):]
    return [*worker[-(n - 1):], f"torchrun: {summary}"]


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
    plan: dict | None
    legs: list[str]  # planned legs, else the stems of the dir's *.log files
    states: dict[str, LegState]  # reconciled with the process table
    supervisor: dict | None = None  # state/supervisor.json as written
    supervisor_alive: bool = False  # proven (see supervisor_identity)
    problem: str | None = None  # what could not be read here (one line); the rest is what could

    @property
    def running(self) -> list[LegState]:
        return [s for s in self.states.values() if s.status == "running"]

    @property
    def active(self) -> bool:
        return any(s.active for s in self.states.values())

    def log(self, leg: str) -> Path:
        return self.path / f"{leg}.log"

    def expect(self, leg: str) -> procs.Expect | None:
        """What the leg's torchrun must be running to be proven the leg's (from the plan)."""
        spec = next((x for x in (self.plan or {}).get("legs", []) if isinstance(x, dict) and x.get("name") == leg), None)
        return leg_expect(self.path, leg, spec.get("argv")) if spec else None


def _plan_problem(plan: Any) -> str | None:
    if not isinstance(plan, dict):
        return "plan.json is not a JSON object"
    if not isinstance(plan.get("legs"), list):
        return "plan.json has no list of legs"
    bad = [x.get("name") if isinstance(x, dict) else x for x in plan["legs"]
           if not (isinstance(x, dict) and leg_name_ok(x.get("name")))]
    if bad:
        return f"plan.json names {len(bad)} leg(s) no file can be named after: {safetext.oneline(repr(bad[0]))[:60]}"
    return None


def open_dir(path: Path | str) -> ExpDir:
    """Read one experiment dir (ours, or a manual one holding only logs) and reconcile its states.

    Never raises for what the dir holds: what cannot be read (a broken plan, an unreadable
    dir, names no file can have) is said in `problem`, and the rest is read as far as it goes.
    """
    path = Path(path)
    problems: list[str] = []
    plan = None
    if os.path.lexists(path / "plan.json"):
        try:
            plan = read_json(path / "plan.json", PLAN_MAX_BYTES)
        except (OSError, ValueError, RecursionError) as e:
            problems.append(f"plan.json unreadable: {_why(e)}")
        if plan is not None and (why := _plan_problem(plan)):
            problems.append(why)
            if not isinstance(plan, dict):
                plan = None
    m = DIR_NAME.match(path.name)
    named = (plan or {}).get("experiment")
    experiment = named if isinstance(named, str) and named else (m.group(2) if m else path.name)
    created = m.group(1) if m else ""
    if plan and isinstance(plan.get("legs"), list):
        legs = list(dict.fromkeys(leg["name"] for leg in plan["legs"]
                                  if isinstance(leg, dict) and leg_name_ok(leg.get("name"))))
    else:
        try:
            legs = sorted(p.stem for p in path.glob("*.log") if fsutil.is_regular(p) and leg_name_ok(p.stem))
        except OSError as e:
            legs = []
            problems.append(f"cannot list the dir: {_why(e)}")
    sup = None
    if os.path.lexists(path / STATE_DIR / f"{SUPERVISOR}.json"):
        try:
            sup = read_json(path / STATE_DIR / f"{SUPERVISOR}.json")
            sup = sup if isinstance(sup, dict) else None
        except (OSError, ValueError, RecursionError) as e:
            problems.append(f"state/supervisor.json unreadable: {_why(e)}")
    sup_alive = supervisor_identity(path, sup).alive
    d = ExpDir(path, experiment, created, plan, legs, {}, sup, sup_alive)
    odd = [f"{leg}.log" for leg in legs if os.path.lexists(d.log(leg)) and not fsutil.is_regular(d.log(leg))]
    if odd:
        problems.append(f"not a regular file: {', '.join(odd)}")
    for leg in legs:
        st = read_state(path, leg)
        if st is not None:
            d.states[leg] = reconcile(path, st, sup_alive, d.expect(leg))
    d.problem = "; ".join(problems) or None
    return d


def _why(e: BaseException) -> str:
    return safetext.oneline(fsutil.oneline(e))[:200]


def reconcile(exp_dir: Path, st: LegState, supervisor_alive: bool, expect: procs.Expect | None = None) -> LegState:
    """The state as it stands now. Only a dead supervisor leaves a state stale; fix it in memory.

    A leg recorded as running is judged by its process: proven alive, it runs on (the
    supervisor was killed, torchrun goes on logging); gone, it is judged from its log's final
    lines; there but not proven the leg's (`expect`), it is UNKNOWN and nothing may signal it.
    """
    if supervisor_alive or not st.active:
        return st
    if st.status == "running":
        ident = procs.identify(st.pid, st.create_time, expect)
        if ident.alive:
            return st  # the supervisor was killed; torchrun goes on logging
        if ident.verdict == procs.UNPROVEN:
            st.status = UNKNOWN
            st.note = f"{UNKNOWN}: {procs.NOT_PROVEN} ({ident.why}); nothing will be signalled"
            return st
        outcome, tail = log_outcome(st.log or exp_dir / f"{st.leg}.log")
        st.status = "done" if outcome == "done" else "failed"
        st.exit_code, st.exit_code_known = None, False
        st.error_tail = tail if st.status == "failed" else []
        st.note = "supervisor gone: outcome read from the log's final lines" + (
            "" if outcome != "unknown" else " (neither finished nor crashed)"
        )
        return st
    # queued or waiting, and nobody left to start it
    st.status = "stopped"
    st.note = "supervisor gone before the leg started"
    return st


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
            if os.path.lexists(p / "plan.json") or fsutil.is_dir(p / STATE_DIR) or any(p.glob("*.log")):
                out.append(open_dir(p))
        except Exception as e:  # noqa: BLE001 - one dir's trouble, shown on that dir
            m = DIR_NAME.match(p.name)
            out.append(ExpDir(p, m.group(2) if m else p.name, m.group(1) if m else "", None, [], {},
                              problem=f"unreadable: {_why(e)}"))
    return sorted(out, key=lambda d: (d.created or "99999999_999999", d.path.name))


def find_dir(exp_root: Path | str, ref: str) -> Path:
    """A dir given as a path, a dir name under exp_root, or an experiment id (its newest dir).

    Only dirs inside exp_root are found: a path elsewhere is refused (the cockpit acts only on
    the dirs it owns).
    """
    if not ref or not ref.strip():
        raise RunError("no experiment dir given (an empty name): give a dir under exp_root or an experiment id")
    root = Path(exp_root).resolve()
    p = Path(os.path.expanduser(ref))
    candidates = [p] if p.is_absolute() or os.sep in ref or ref.startswith(".") else [root / ref, p]
    for c in candidates:
        if fsutil.is_dir(c):
            real = c.resolve()
            if not fsutil.is_inside(real, root) or real == root:
                raise RunError(f"{safetext.oneline(str(real))} is not an experiment dir under exp_root {root}: "
                               "the cockpit acts only on the dirs it owns")
            return real
    mine = [d for d in discover(root) if d.experiment == ref]
    if mine:
        active = [d for d in mine if d.active]
        return (active or mine)[-1].path
    raise RunError(f"no experiment dir '{safetext.oneline(ref)}' (not a dir, and no dir of that experiment under {root})")


def done_legs(exp_root: Path | str, experiment: str) -> dict[str, Path]:
    """Legs of an experiment that finished here: leg -> the newest dir it finished in."""
    out: dict[str, Path] = {}
    for d in discover(exp_root):
        if d.experiment != experiment:
            continue
        for leg in d.legs:
            st = d.states.get(leg)
            if st is not None:
                if st.status == "done":
                    out[leg] = d.path
            elif d.plan is None:
                # a manual dir: no state, only a log; trust its final lines
                if log_outcome(d.log(leg))[0] == "done":
                    out[leg] = d.path
    return out


# ----------------------------------------------------------------------------------------------
# launching


@dataclass
class LaunchPlan:
    experiment: reg.Experiment
    legs: list[reg.Leg]  # to run, in order
    skipped: list[tuple[str, str]]  # (leg, why)
    torchrun: str
    cwd: Path  # the checkout that holds the registry: the legs run from here


def find_torchrun() -> str | None:
    """torchrun next to this Python (the venv's bin), else on PATH."""
    here = Path(sys.executable).parent / "torchrun"
    if here.is_file() and os.access(here, os.X_OK):
        return str(here)
    return shutil.which("torchrun")


def plan_launch(
    registry: reg.Registry, exp_id: str, legs: list[str] | None = None, rerun: bool = False
) -> LaunchPlan:
    """What a launch would run and skip, or RunError. Reads only; writes nothing."""
    exp = registry.experiment(exp_id)
    if exp is None:
        known = ", ".join(e.id for e in registry.experiments)
        raise RunError(f"no experiment '{exp_id}' in {registry.path} (known: {known})")
    if legs:
        unknown = [n for n in legs if exp.leg(n) is None]
        if unknown:
            names = ", ".join(leg.name for leg in exp.legs)
            raise RunError(f"'{exp_id}' has no leg {', '.join(unknown)} (legs: {names})")
        chosen = [exp.leg(n) for n in dict.fromkeys(legs)]
    else:
        chosen = list(exp.legs)
    if not chosen:
        raise RunError(f"'{exp_id}' has no legs")
    for leg in chosen:
        if leg.name == SUPERVISOR:
            raise RunError(f"leg name '{SUPERVISOR}' is reserved for the supervisor's own files")

    done = {} if rerun else done_legs(registry.settings.exp_root, exp_id)
    run: list[reg.Leg] = []
    skipped: list[tuple[str, str]] = []
    for leg in chosen:
        if not rerun and leg.is_recorded:
            where = f" in {leg.recorded.dir}" if leg.recorded and leg.recorded.dir else ""
            skipped.append((leg.name, f"recorded in the registry (ran elsewhere{where}); --rerun runs it"))
        elif leg.name in done:
            skipped.append((leg.name, f"done in {done[leg.name]}; --rerun runs it"))
        else:
            run.append(leg)
    return LaunchPlan(exp, run, skipped, find_torchrun() or "torchrun", registry.path.resolve().parent)


def check_gpus(legs: list[reg.Leg]) -> str | None:
    """Why these legs cannot run on this machine's GPUs, or None. CPU legs need none."""
    need = max((leg.nproc_per_node for leg in legs if leg.device == "cuda"), default=0)
    if need == 0:
        return None
    from cockpit import gpus

    count, reason = gpus.visible_gpus()
    if count is None:
        return f"NVML unavailable: {reason}"
    if count < need:
        return f"needs {need} GPUs, {count} visible"
    return None


def _inside(path: Path, parent: Path) -> bool:
    return path == parent or parent in path.parents


def check_paths(registry: reg.Registry, legs: list[reg.Leg], exp_dir: Path, cwd: Path) -> str | None:
    """Why a leg's args would write outside exp_root or into a read-only path, or None.

    Path-like values: those of keys naming a root/dir/path/file, and any value that looks like a
    path ('/', '~', './'). `--checkpoint-root` must lie inside the experiment dir; input args
    (--data-dir, --tokenizer-dir) may point into a read-only path, which the trainer only reads.
    """
    s = registry.settings
    if not _inside(exp_dir, s.exp_root):
        return f"experiment dir {exp_dir} lies outside exp_root {s.exp_root}"
    for ro in s.read_only:
        if _inside(exp_dir, ro):
            return f"experiment dir {exp_dir} lies inside read-only path {ro}"
    for leg in legs:
        for key, value in leg.args.items():
            if not isinstance(value, str):
                continue
            text = value.replace(reg.EXP_DIR_PLACEHOLDER, str(exp_dir))
            pathish = re.search(r"(root|dir|path|file)$", key) or text.startswith(("/", "~", "."))
            if not pathish and "/" not in text:
                continue
            p = Path(text).expanduser()
            p = (p if p.is_absolute() else cwd / p).resolve()
            where = f"{leg.experiment}/{leg.name} --{key} {value}"
            ro_hit = next((ro for ro in s.read_only if _inside(p, ro)), None)
            if key == "checkpoint-root" and not _inside(p, exp_dir):
                return f"{where}: checkpoint root {p} must lie inside the experiment dir (use {{exp_dir}}/ckpt_root)"
            if ro_hit is not None:
                if key in INPUT_ARGS:
                    continue
                return f"{where}: {p} lies inside read-only path {ro_hit}"
            if not _inside(p, s.exp_root):
                return f"{where}: {p} lies outside exp_root {s.exp_root}"
    return None


def running_elsewhere(exp_root: Path | str, experiment: str) -> ExpDir | None:
    """A dir of this experiment with a live queue or a live leg, if any."""
    for d in discover(exp_root):
        if d.experiment == experiment and (d.supervisor_alive or d.active):
            return d
    return None


def lock_path(exp_root: Path | str, experiment: str) -> Path:
    return Path(exp_root) / LOCK_DIR / f"{experiment}.lock"


def experiment_lock(exp_root: Path, experiment: str) -> int:
    """Take the experiment's queue lock (non-blocking) and return its fd, or raise RunError.

    launch takes it before creating the dir and hands the fd to the supervisor, which holds it
    for the queue's lifetime: two concurrent launches of one experiment cannot both pass.
    """
    return try_lock(lock_path(exp_root, experiment),
                    f"'{experiment}' is being launched or run by another cockpit; stop it first", root=exp_root)


def try_lock(path: Path, held_message: str, root: Path | str | None = None) -> int:
    """Take an exclusive flock on `path` without waiting and return its fd; RunError(held_message)
    when another process holds it. The lock lasts as long as the fd stays open. The lock file is
    created inside `root` (default: its own dir), never through a symlink."""
    try:
        fd = fsutil.try_lock(path, root if root is not None else Path(path).parent)
    except OSError as e:
        raise RunError(f"cannot take the lock {path}: {_why(e)}") from None
    if fd is None:
        raise RunError(held_message)
    return fd


def fresh_dir_name(exp_root: Path | str, experiment_id: str) -> Path:
    """The path a launch made now would create (nothing is created)."""
    return Path(exp_root) / f"{dt.datetime.now().strftime(STAMP_FORMAT)}_{experiment_id}"


def new_exp_dir(exp_root: Path | str, experiment_id: str, preferred: Path | None = None) -> Path:
    """Create `<exp_root>/<YYYYmmdd_HHMMSS>_<experiment>/`: always a new dir, never an existing one.

    mkdir is atomic, so two launches in the same second cannot share a dir: the second one waits
    for the next second (the name stays the seed's `<stamp>_<experiment>`). `preferred` (the
    name a confirmation showed, from fresh_dir_name) is taken when it is still free.
    """
    root = Path(exp_root)
    try:
        fsutil.make_dirs(root)
    except OSError as e:
        raise RunError(f"cannot create exp_root: {_why(e)}") from None
    if preferred is not None and preferred.parent == root and preferred.name.endswith(f"_{experiment_id}"):
        try:
            preferred.mkdir()
            return preferred
        except FileExistsError:
            pass
    for _ in range(30):
        path = root / f"{dt.datetime.now().strftime(STAMP_FORMAT)}_{experiment_id}"
        try:
            path.mkdir()
            return path
        except FileExistsError:
            time.sleep(1.0 - (time.time() % 1.0) + 0.01)
    raise RunError(f"could not create a fresh dir for '{experiment_id}' under {root}")


def git_info(cwd: Path) -> dict[str, str | None]:
    """Branch and commit of the checkout, read only (no command here changes git state)."""
    env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0"}

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(
                ["git", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=5, check=True
            )
            return out.stdout.strip() or None
        except (OSError, subprocess.SubprocessError):
            return None

    top = git("rev-parse", "--show-toplevel")
    if top is None:
        here = Path(__file__).resolve().parents[1]  # the checkout cockpit runs from, if it is one
        return git_info(here) if here != cwd.resolve() else {"dir": None, "branch": None, "commit": None}
    return {"dir": top, "branch": git("rev-parse", "--abbrev-ref", "HEAD"), "commit": git("rev-parse", "HEAD")}


def format_command(leg: reg.Leg, exp_dir: Path | str, torchrun: str = "torchrun") -> str:
    """The leg's command as the seed's execution template writes it, one flag per line."""
    parts = reg.command_lines(leg.argv(exp_dir, torchrun))
    log = shlex.quote(str(Path(exp_dir) / f"{leg.name}.log"))
    return " \\\n  ".join(parts) + f" > {log} 2>&1"


def check_exp_root(exp_root: Path) -> str | None:
    """Why no experiment dir can be made under exp_root (a file there or above, a read-only
    filesystem, no permission), or None. Checks only; writes nothing."""
    if fsutil.is_dir(exp_root):
        if why := fsutil.output_problem(exp_root / ".cockpit-probe"):
            return f"exp_root {exp_root}: {why}"
        return None
    why = fsutil.output_problem(exp_root)
    return f"exp_root {exp_root} cannot be created: {why}" if why else None


def launch_refusals(registry: reg.Registry, plan: LaunchPlan, exp_dir: Path) -> list[str]:
    """Every reason a launch of `plan` into `exp_dir` would be refused now ([] when none).
    Reads only: the dry run lists these, a real launch raises the first."""
    out = []
    if find_torchrun() is None:
        out.append("torchrun not found next to this Python or on PATH (install the 'train' extra)")
    for why in (check_gpus(plan.legs), check_exp_root(registry.settings.exp_root),
                check_paths(registry, plan.legs, exp_dir, plan.cwd)):
        if why:
            out.append(why)
    root = registry.settings.exp_root
    exp_id = plan.experiment.id
    if (busy := running_elsewhere(root, exp_id)) is not None:
        out.append(f"'{exp_id}' is running in {busy.path}; stop it first: cockpit stop {busy.path}")
    elif fsutil.lock_holders(lock_path(root, exp_id)):
        out.append(f"'{exp_id}' is being launched or run by another cockpit; stop it first")
    return out


def dry_run_text(registry: reg.Registry, plan: LaunchPlan) -> str:
    """The exact commands a launch would run, as shell text; nothing is written. Whatever a
    real launch would refuse is said first."""
    root = registry.settings.exp_root
    exp_dir = root / f"{dt.datetime.now().strftime(STAMP_FORMAT)}_{plan.experiment.id}"
    out = [f"# dry run: {plan.experiment.id}, nothing written"]
    out += [f"# skip {name}: {why}" for name, why in plan.skipped]
    if not plan.legs:
        out.append("# nothing to run")
        return "\n".join(out)
    for why in launch_refusals(registry, plan, exp_dir):
        out.append(f"# a real launch would be refused here: {why}")
    out += [f"cd {shlex.quote(str(plan.cwd))}", f"EXP_DIR={shlex.quote(str(exp_dir))}", 'mkdir -p "$EXP_DIR/ckpt_root"']
    for leg in plan.legs:
        out += ["", f"# leg {leg.name}" + (f": {leg.description}" if leg.description else "")]
        out.append(format_command(leg, exp_dir, plan.torchrun))
    return "\n".join(out)


def write_plan(registry: reg.Registry, plan: LaunchPlan, exp_dir: Path, grace_s: float = STOP_GRACE_S) -> dict:
    data = {
        "experiment": plan.experiment.id,
        "dir": str(exp_dir),
        "created_at": now_iso(),
        "host": socket.gethostname(),
        "user": os.environ.get("USER"),
        "cwd": str(plan.cwd),
        "python": sys.executable,
        "torchrun": plan.torchrun,
        "git": git_info(plan.cwd),
        "on_failure": registry.settings.on_failure,
        "stop_grace_s": grace_s,
        "gpu_idle": asdict(registry.settings.gpu_idle),
        "legs": [
            {
                "name": leg.name,
                "device": leg.device,
                "nproc_per_node": leg.nproc_per_node,
                "argv": leg.argv(exp_dir, plan.torchrun),
                "log": str(exp_dir / f"{leg.name}.log"),
            }
            for leg in plan.legs
        ],
        "skipped": [{"leg": name, "why": why} for name, why in plan.skipped],
        "registry": {"path": str(registry.path.resolve()), "raw": registry.raw},
    }
    fd = fsutil.create_new(exp_dir / "plan.json", root=exp_dir)  # written once, never over anything
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, default=str)
        f.write("\n")
    return data


def launch(
    registry: reg.Registry,
    exp_id: str,
    legs: list[str] | None = None,
    rerun: bool = False,
    foreground: bool = False,
    plan: LaunchPlan | None = None,
    grace_s: float = STOP_GRACE_S,
    exp_dir: Path | None = None,
) -> Path | None:
    """Make a fresh dir, write plan.json and run the supervisor for it (detached unless foreground).

    Returns the dir, or None when every leg was skipped (nothing is written then). Raises
    RunError, with nothing written, when the machine or the paths refuse the launch. `exp_dir`
    is the fresh dir a confirmation showed: used when still free, else the next fresh name.
    """
    plan = plan or plan_launch(registry, exp_id, legs, rerun)
    if not plan.legs:
        return None
    root = registry.settings.exp_root
    probe = exp_dir or fresh_dir_name(root, exp_id)
    if refused := launch_refusals(registry, plan, probe):
        raise RunError(refused[0])
    lock_fd = experiment_lock(root, exp_id)
    try:
        if (busy := running_elsewhere(root, exp_id)) is not None:  # again, now under the lock
            raise RunError(f"'{exp_id}' is running in {busy.path}; stop it first: cockpit stop {busy.path}")
        exp_dir = new_exp_dir(root, exp_id, preferred=exp_dir)
        try:
            write_plan(registry, plan, exp_dir, grace_s)
            fsutil.make_dirs(exp_dir / STATE_DIR, root=exp_dir)
        except OSError as e:
            raise RunError(f"cannot write the plan in {exp_dir}: {_why(e)}") from None
        if foreground:
            from cockpit import supervisor

            supervisor.Supervisor(exp_dir, lock_fd=lock_fd, echo=True, grace_s=grace_s).run()
        else:
            _spawn_supervisor(exp_dir, lock_fd)
        return exp_dir
    finally:
        try:
            os.close(lock_fd)
        except OSError:
            pass


def _spawn_supervisor(exp_dir: Path, lock_fd: int, wait_s: float = 15.0) -> None:
    """Start the detached supervisor and wait until it has taken over (its record is written).

    It runs in its own session, and a thread here reaps it when it ends: the TUI launches and
    lives on, and must not collect <defunct> children.
    """
    log_path = exp_dir / STATE_DIR / f"{SUPERVISOR}.log"
    try:
        log_fd = fsutil.create_or_append(log_path, root=exp_dir)
    except OSError as e:
        raise RunError(f"cannot create the supervisor's log: {_why(e)}") from None
    try:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        here = str(Path(__file__).resolve().parents[1])  # `-m cockpit.supervisor` imports this cockpit
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


# ----------------------------------------------------------------------------------------------
# stopping


def process_tree(pid: int | None, create_time: float | None) -> list[psutil.Process]:
    """The process and all its descendants (pid-reuse safe: pid and create time), parents first."""
    same = procs.same_process(pid, create_time)
    return procs.tree(same.process) if same.alive and same.process is not None else []


def plan_grace(plan: dict | None, default: float = STOP_GRACE_S) -> float:
    """The plan's stop grace period, when it is a sane number (a plan is a file: it may lie)."""
    v = (plan or {}).get("stop_grace_s", default)
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) and 0 <= v <= 3600 else default


def stop(
    exp_dir: Path | str,
    leg: str | None = None,
    grace_s: float = STOP_GRACE_S,
    wait_s: float | None = None,
    exp_root: Path | str | None = None,
) -> ExpDir:
    """Stop one leg, or the whole queue, of an experiment dir; return the dir as it stands after.

    With a live supervisor (proven: see supervisor_identity), ask it (SIGTERM for the queue; a
    stop request file plus SIGUSR1 for one leg) and wait for it to record the outcome. Without
    one (it was killed), stop the leg's process tree here, if proven the leg's, and record the
    leg as stopped. Nothing unproven is signalled: RunError says so. With `exp_root`, a dir
    outside it is refused before anything is read or written.
    """
    exp_dir = Path(exp_dir)
    if exp_root is not None and not (fsutil.is_inside(exp_dir.resolve(), Path(exp_root).resolve())
                                     and exp_dir.resolve() != Path(exp_root).resolve()):
        raise RunError(f"{safetext.oneline(str(exp_dir))} is not an experiment dir under exp_root {exp_root}: "
                       "the cockpit acts only on the dirs it owns")
    d = open_dir(exp_dir)
    if leg is not None and leg not in d.legs:
        raise RunError(f"{exp_dir} has no leg '{safetext.oneline(leg)}' (legs: {', '.join(d.legs) or 'none'})")
    names = [leg] if leg else list(d.legs)
    targets = [n for n in names if n in d.states and d.states[n].active]
    sup = supervisor_identity(exp_dir, d.supervisor)
    if wait_s is None:  # the supervisor stops with the plan's grace period, then records it
        wait_s = plan_grace(d.plan, grace_s) + 10.0
    if sup.alive:
        if leg is None:
            sig = signal.SIGTERM
        else:
            try:
                write_json_atomic(exp_dir / STATE_DIR / f"{leg}.stop", {"requested_at": now_iso()}, root=exp_dir)
            except OSError as e:
                raise RunError(f"cannot write the stop request: {_why(e)}") from None
            sig = signal.SIGUSR1
        procs.signal_proven(sup, sig)
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            d = open_dir(exp_dir)
            if leg is None and not d.supervisor_alive:
                break
            if leg is not None and (leg not in d.states or not d.states[leg].active):
                break
            if leg is not None and d.states[leg].status == "queued" and (exp_dir / STATE_DIR / f"{leg}.stop").exists():
                break  # the supervisor will skip it when its turn comes
            time.sleep(0.1)
        return open_dir(exp_dir)
    unproven = [f"leg {n}: {d.states[n].note}" for n in names if n in d.states and d.states[n].status == UNKNOWN]
    if sup.verdict == procs.UNPROVEN:
        unproven.insert(0, f"supervisor: {UNKNOWN}: {procs.NOT_PROVEN} ({sup.why})")
    if not targets:
        if unproven:
            raise RunError(f"nothing stopped in {exp_dir}: " + "; ".join(unproven))
        raise RunError(f"nothing running in {exp_dir}")
    # no supervisor: the legs still alive are orphans; stop them here, if proven theirs
    for name in targets:
        st = read_state(exp_dir, name)
        if st is None or not st.active:
            continue
        if st.status == "running":
            ident = procs.identify(st.pid, st.create_time, d.expect(name))
            if ident.verdict == procs.UNPROVEN:
                continue  # reconciled as unknown a moment ago; said by the caller from the state
            if ident.alive and ident.process is not None:
                procs.terminate(ident.process, grace_s)
            procs.terminate_all(procs.marked(leg_env(exp_dir, name)), grace_s)  # workers torchrun left
            st.note = "stopped by request (supervisor gone; exit code unknown)"
        else:
            st.note = "stopped by request before it started (supervisor gone)"
        st.status, st.ended_at, st.exit_code, st.exit_code_known = "stopped", now_iso(), None, False
        try:
            write_state(exp_dir, st)
        except OSError as e:
            raise RunError(f"leg {name} stopped, but its state could not be recorded: {_why(e)}") from None
    return open_dir(exp_dir)
