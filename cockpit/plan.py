"""plan.json, typed: what a launch recorded of an experiment dir, read once and written once.

A launch writes `<dir>/plan.json` once (`Plan.write`, never over anything): every run's exact
argv, the dir's settings (executor, failure policy, tail window, GPUs, notify, prepare step), the
registry as it was, where the launch came from (git, machine, trainer versions, environment) and
its pinned baseline. Each continuation of the dir (`launch --into`) adds `plan.<n>.json` beside
it (`ContinuationFile`), never touching plan.json. `Plan.read(dir)` is the one reader: plan.json
with the runs of every continuation after its own, as one `Plan`.

A plan is a file: it may hold anything. `Plan.read` raises `PlanError` (one line: the file and
what is wrong) only when there is no plan to speak of (unreadable, not JSON, not an object, no
list of runs). Short of that it reads what it can: a run no file can be named after, or one
planned twice, is left out and said in `problems`; a continuation that cannot be taken is left
out and said in `left_out`; a value of the wrong kind reads as its default; keys it does not know
are kept in `extra` (written back as they were). So dirs launched by older versions still read.

Layer 1: imports flags, fsutil, procs, safetext and registry.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cockpit import flags, fsutil, procs, safetext
from cockpit import registry as reg
from cockpit.vocab import DEFAULT_TAIL

PLAN_FILE = "plan.json"
PLAN_MAX_BYTES = 64 << 20  # plan.json holds the registry: a few KB, a big registry some MB
CONTINUATION = re.compile(r"^plan\.([1-9][0-9]{0,5})\.json$")  # plan.<n>.json, n = 1, 2, ...
SUPERVISOR = "supervisor"  # state/supervisor.{json,log,lock}: the supervisor's own, never a run's name
STOP_GRACE_S = 10.0  # after SIGTERM to torchrun, how long before every process left is killed


class PlanError(ValueError):
    """A plan that cannot be read at all: `path` and `why` (one printable line)."""

    def __init__(self, path: Path | str, why: str):
        self.path, self.why = str(path), safetext.oneline(why)[:300]
        super().__init__(f"{self.path}: {self.why}")


def leg_name_ok(name: Any) -> bool:
    """A run name read from disk (a plan, a log's stem) that the cockpit can name files after."""
    return (
        isinstance(name, str)
        and bool(name)
        and "/" not in name
        and "\x00" not in name
        and name not in (".", "..")
        and all(fsutil.name_fits(f.format(name)) for f in reg.LEG_FILES)
    )


# ----------------------------------------------------------------------------------------------
# the parts of a plan


@dataclass(frozen=True)
class PlanRun:
    """One run of a dir: a leg, or one repeat of a leg with repeats."""

    name: str  # its log is <dir>/<name>.log, its state state/<name>.json
    argv: tuple[
        str, ...
    ] = ()  # torchrun's exact command line, launcher first; (): the plan gives none usable
    leg: str | None = None  # the registry leg of a repeat (`dense` of `dense.r1`); None: the run is its leg
    repeat: int | None = None  # a repeat's index (its seed is the leg's base + it)
    device: str | None = None  # "cpu": no GPU preflight here, no GPUs asked of Slurm
    nproc_per_node: int = 1  # torchrun's processes per node
    module: str | None = None  # the trainer module (`nanochat.base_train`)
    args: tuple[str, ...] = ()  # the trainer's flags alone (what a Slurm job hands torchrun)
    log: str | None = None  # the log's path as the launch named it
    extra: Mapping[str, Any] = field(default_factory=dict)  # keys this version does not know, kept

    @property
    def uses_gpus(self) -> bool:
        return self.device != "cpu"

    def to_dict(self) -> dict[str, Any]:
        repeat = {"leg": self.leg, "repeat": self.repeat} if self.leg is not None else {}
        return {
            "name": self.name,
            **repeat,
            "device": self.device,
            "nproc_per_node": self.nproc_per_node,
            "module": self.module,
            "args": list(self.args),
            "argv": list(self.argv),
            "log": self.log,
            **self.extra,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PlanRun:
        """A run from its JSON (its name already checked); a value of the wrong kind reads as its default."""
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(
            name=d["name"],
            argv=_strs(d.get("argv")),
            leg=_str(d.get("leg")),
            repeat=_int(d.get("repeat"), None, 0, reg.REPEATS_MAX),
            device=_str(d.get("device")),
            nproc_per_node=_int(d.get("nproc_per_node"), 1, 1, reg.NPROC_MAX),
            module=_str(d.get("module")),
            args=_strs(d.get("args")),
            log=_str(d.get("log")),
            extra={k: v for k, v in d.items() if k not in known},
        )


@dataclass(frozen=True)
class Seq:
    """A launch's place in exp_root's order: `n` one more than any plan's there when it was
    written, `utc` its UTC stamp (only breaks a tie: two launches at once). A dir name's local time
    cannot order dirs: a clock set back, or a timezone change, makes an older dir look newest."""

    n: int  # 1, 2, ...
    utc: str  # `2026-03-01T12:00:00.000000Z`

    @classmethod
    def parse(cls, v: Any) -> Seq | None:
        """A plan's `seq` as the file holds it, or None (not one)."""
        if not isinstance(v, dict):
            return None
        n, utc = v.get("n"), v.get("utc")
        return (
            cls(n, utc)
            if isinstance(n, int) and not isinstance(n, bool) and n >= 1 and isinstance(utc, str)
            else None
        )


@dataclass(frozen=True)
class Prepare:
    """The experiment's prepare step, as the launch resolved it (see registry.Prepare)."""

    argv: tuple[str, ...]  # its command, the legs' python filled in; (): none usable
    creates: tuple[str, ...]  # the paths it makes, inside exp_root; the step runs when one is missing
    mark: str | None = None  # <exp_root>/.cockpit-prepare/<key>.running while a run has not ended well

    @property
    def runnable(self) -> bool:
        """Is it a command and the paths it creates (a plan is a file: it may hold less)?"""
        return bool(self.argv) and bool(self.creates)

    def mark_in(self, exp_dir: Path | str) -> str | None:
        """Its mark, when it is in the mark dir of this dir's exp_root (a plan may name any file;
        only that dir is the cockpit's to write and remove)."""
        marks = Path(exp_dir).parent / reg.PREPARE_MARK_DIR
        if self.mark is None or os.path.realpath(Path(self.mark).parent) != os.path.realpath(marks):
            return None
        return str(marks / Path(self.mark).name)


@dataclass(frozen=True)
class Notify:
    """The command the supervisor runs when a leg ends done or failed (placeholders filled then)."""

    argv: tuple[str, ...]  # no shell; `{leg}`, `{event}`, ... filled when it runs
    timeout_s: float = 10.0  # then it is stopped (a failure noted, never fatal)


@dataclass(frozen=True)
class RegistrySnapshot:
    """The registry a launch was planned from: its file, and its table as it was then."""

    path: str | None  # the file, resolved
    raw: Mapping[str, Any] | None  # its parsed table

    def load(self, experiment: str, exp_dir: Path | str) -> reg.Registry | None:
        """The registry that has the experiment: the file as it is now, else the snapshot (the
        file moved, broke or no longer has it; its relative paths from the file's place, else
        from the dir's plan.json); None when neither does."""
        where = self.path or Path(exp_dir) / PLAN_FILE
        loaders = [lambda: reg.load(where)] if self.path else []
        if isinstance(self.raw, dict):
            loaders.append(lambda: reg.from_raw(dict(self.raw), where))
        for load in loaders:
            try:
                registry = load()
            except (reg.RegistryError, OSError, ValueError, TypeError):
                continue
            if registry.experiment(experiment) is not None:
                return registry
        return None


@dataclass(frozen=True)
class FlagsChecked:
    """What the launch found of its legs' trainer flags (launch.check_flags)."""

    checked: bool  # False: the trainer module could not be asked (`why`), and nothing was refused
    command: str = ""  # what was asked
    why: str | None = None


@dataclass(frozen=True)
class Continued:
    """A continuation taken into the plan: its `plan.<n>.json`, and the runs it added and asked again."""

    n: int  # its number
    file: str  # plan.<n>.json
    created_at: str | None  # when it was recorded
    runs: tuple[str, ...]  # the runs it added
    again: tuple[str, ...]  # the dir's runs it asked to run now (they never started)


# ----------------------------------------------------------------------------------------------
# the plan


@dataclass(frozen=True)
class Plan:
    """What a launch recorded of an experiment dir (plan.json), with its continuations' runs."""

    experiment: str  # the experiment id ("": the plan names none)
    runs: tuple[PlanRun, ...]  # every run, in order: plan.json's, then each continuation's
    dir: str | None = None  # the dir the launch made: paths in argv name it
    created_at: str | None = None  # when the launch wrote it (ISO, local time)
    seq: Seq | None = None  # its place in exp_root's order; None: launched before it was recorded
    host: str | None = None  # where the launch ran
    user: str | None = None  # who launched it ($USER)
    cwd: str | None = None  # the checkout the legs run in (their working dir, first on PYTHONPATH)
    python: str | None = None  # the legs' python
    torchrun: str | None = None  # the torchrun that runs them
    env: Mapping[str, str] = field(default_factory=dict)  # added to each leg's environment
    git: Mapping[str, Any] = field(default_factory=dict)  # provenance: branch, commit, dirty, patch
    machine: Mapping[str, Any] | None = None  # provenance: GPUs and driver (NVML)
    trainer: Mapping[str, Any] | None = None  # provenance: the trainer environment's versions
    launch_env: Mapping[str, Any] | None = None  # provenance: CUDA_VISIBLE_DEVICES, NCCL_*, OMP_NUM_THREADS
    executor: str = "local"  # who runs the legs: a supervisor here, or Slurm batch jobs
    on_failure: str = "stop"  # what the queue does after a failed leg: stop, or continue
    tail: int = DEFAULT_TAIL  # the report's tail window (the registry's at launch)
    stop_grace_s: float | None = None  # SIGTERM to SIGKILL when a leg is stopped; None: unsaid
    gpu_idle: reg.GpuIdle = reg.GpuIdle()  # when a GPU counts as idle, and how long a leg waits for it
    max_parallel: int = 1  # legs side by side on disjoint GPU sets
    gpus: tuple[int, ...] | None = None  # the GPUs legs may use (`[project] gpus`); None: any
    notify: Notify | None = None  # run when a leg ends done or failed
    skipped: tuple[tuple[str, str], ...] = ()  # (leg, why) the launch did not run
    prepare: Prepare | None = None  # run before the first leg when what it creates is missing
    registry: RegistrySnapshot | None = None  # the registry as it was
    slurm: reg.SlurmSettings | None = None  # what a Slurm launch's jobs asked for
    preflight: str | None = None  # a Slurm launch: why there is no GPU preflight here
    baseline: Mapping[str, Any] | None = (
        None  # the pinned baseline (baseline.pin); None: launched before pins
    )
    trainer_flags: FlagsChecked | None = None  # the trainer flag check
    continuations: tuple[Continued, ...] = ()  # each plan.<n>.json taken, in order of n
    problems: tuple[str, ...] = ()  # what plan.json holds that could not be taken (runs left out)
    left_out: tuple[str, ...] = ()  # continuations that could not be taken: `plan.<n>.json: why`
    extra: Mapping[str, Any] = field(default_factory=dict)  # keys this version does not know, kept

    # -- reading -------------------------------------------------------------------------------

    @classmethod
    def read(cls, exp_dir: Path | str) -> Plan:
        """The dir's plan as every reader sees it: plan.json, with the runs of each continuation
        (`plan.<n>.json`, in order of n) after its own. PlanError when plan.json cannot be read."""
        exp_dir = Path(exp_dir)
        path = exp_dir / PLAN_FILE
        try:
            data = read_json(path)
        except (OSError, ValueError, RecursionError) as e:
            raise PlanError(path, f"unreadable: {fsutil.oneline(e)}") from None
        plan = cls.from_dict(data, path)
        return plan.with_continuations(exp_dir) if continuation_numbers(exp_dir) else plan

    @classmethod
    def from_dict(cls, data: Any, path: Path | str = PLAN_FILE) -> Plan:
        """A plan from plan.json's object; PlanError when it is not one (not an object, no list of
        runs). Runs no file can be named after, or planned twice, are left out (`problems`)."""
        if not isinstance(data, dict):
            raise PlanError(path, "not a JSON object")
        if not isinstance(data.get("legs"), list):
            raise PlanError(path, "no list of legs")
        runs, problems = _runs(data["legs"])
        known = {f.name for f in dataclasses.fields(cls)} - {"runs", "problems", "left_out", "extra"} | {
            "legs"
        }
        prep = data.get("prepare")
        flags_ = data.get("trainer_flags")
        return cls(
            experiment=data.get("experiment") if isinstance(data.get("experiment"), str) else "",
            runs=runs,
            dir=_str(data.get("dir")),
            created_at=_str(data.get("created_at")),
            seq=Seq.parse(data.get("seq")),
            host=_str(data.get("host")),
            user=_str(data.get("user")),
            cwd=_str(data.get("cwd")),
            python=_str(data.get("python")),
            torchrun=_str(data.get("torchrun")),
            env=_env(data.get("env")),
            git=_dict(data.get("git")) or {},
            machine=_dict(data.get("machine")),
            trainer=_dict(data.get("trainer")),
            launch_env=_dict(data.get("launch_env")),
            executor=_str(data.get("executor")) or "local",
            on_failure=_str(data.get("on_failure")) or "stop",
            tail=_int(data.get("tail"), DEFAULT_TAIL, 1, reg.TAIL_MAX),
            stop_grace_s=_num(data.get("stop_grace_s"), None, 0.0, 3600.0),
            gpu_idle=_gpu_idle(data.get("gpu_idle")),
            max_parallel=_int(data.get("max_parallel"), 1, 1, reg.PARALLEL_MAX),
            gpus=_gpus(data.get("gpus")),
            notify=_notify(data.get("notify")),
            skipped=_skipped(data.get("skipped")),
            prepare=(
                Prepare(
                    _strs(prep.get("argv"), nonempty=True),
                    _strs(prep.get("creates"), nonempty=True),
                    _path(prep.get("mark")),
                )
                if isinstance(prep, dict) and prep
                else None
            ),
            registry=_snapshot(data.get("registry")),
            slurm=_slurm(data.get("slurm")),
            preflight=_str(data.get("preflight")),
            baseline=(data["baseline"] if isinstance(data["baseline"], dict) else {})
            if "baseline" in data
            else None,
            trainer_flags=(
                FlagsChecked(
                    flags_.get("checked") is not False,
                    _str(flags_.get("command")) or "",
                    _str(flags_.get("why")),
                )
                if isinstance(flags_, dict)
                else None
            ),
            problems=problems,
            extra={k: v for k, v in data.items() if k not in known},
        )

    def with_continuations(self, exp_dir: Path | str) -> Plan:
        """This plan (plan.json's) with the runs of the dir's continuations after its own; one that
        cannot be read, or names a run the dir has already, is left out (`left_out`)."""
        runs, taken, left_out = list(self.runs), [], list(self.left_out)
        names = {r.name for r in runs}
        for n in continuation_numbers(exp_dir):
            path = continuation_path(exp_dir, n)
            try:
                cont = ContinuationFile.from_dict(read_json(path), path)
                why = cont.problem(self, names)
            except (OSError, ValueError, RecursionError) as e:
                why = e.why if isinstance(e, PlanError) else f"unreadable: {fsutil.oneline(e)[:200]}"
            if why is not None:
                left_out.append(f"{path.name}: {why}")
                continue
            runs += cont.runs
            names |= {r.name for r in cont.runs}
            taken.append(
                Continued(n, path.name, cont.created_at, tuple(r.name for r in cont.runs), cont.again)
            )
        return dataclasses.replace(
            self, runs=tuple(runs), continuations=(*self.continuations, *taken), left_out=tuple(left_out)
        )

    # -- asking --------------------------------------------------------------------------------

    def run(self, name: str) -> PlanRun | None:
        """The plan's entry of a run, if it has one."""
        return next((r for r in self.runs if r.name == name), None)

    @property
    def run_names(self) -> list[str]:
        return [r.name for r in self.runs]

    def flags_of(self, name: str, exp_dir: Path | str) -> dict[str, str | bool] | None:
        """The trainer flags a run ran with, the dir's path written `{exp_dir}` (two dirs compare by
        what they asked, not where); None when the plan gives the run no argv."""
        run = self.run(name)
        if run is None or not run.argv:
            return None
        where = self.dir or str(exp_dir)
        return flags.parse_flags([a.replace(where, flags.EXP_DIR_PLACEHOLDER) for a in run.argv])

    def grace(self, default: float = STOP_GRACE_S) -> float:
        """The stop grace period the plan recorded, else `default`."""
        return self.stop_grace_s if self.stop_grace_s is not None else default

    def registry_of(self, exp_dir: Path | str) -> reg.Registry | None:
        """The registry this plan's experiment is in (the file as it is now, else the snapshot)."""
        if not self.experiment or self.registry is None:
            return None
        return self.registry.load(self.experiment, exp_dir)

    def continuation(self, n: int) -> Continued | None:
        return next((c for c in self.continuations if c.n == n), None)

    def unrunnable(self) -> str | None:
        """Why a supervisor cannot run this plan (one line), or None: it names its experiment, runs
        here, and every run has a name a file can have (not the supervisor's, not the prepare
        step's) and an argv."""
        if self.problems:
            return self.problems[0]
        if not self.experiment:
            return "no experiment id"
        if self.executor != "local":
            return f"its legs run as {safetext.oneline(self.executor)[:20]} jobs, not under a supervisor"
        if not self.runs:
            return "no legs"
        for run in self.runs:
            if run.name == SUPERVISOR or (run.name == reg.PREPARE and self.prepare is not None):
                return f"{safetext.oneline(repr(run.name))[:60]} is not a leg name a file can have"
            if not run.argv:
                return f"leg {run.name}: argv is not a list of strings"
        return None

    # -- writing -------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """plan.json's object: the plan as it reads back (plan.json's own runs and keys; a
        continuation's runs are in its own file)."""
        own = [r for r in self.runs if not any(r.name in c.runs for c in self.continuations)]
        out: dict[str, Any] = {
            "experiment": self.experiment,
            "dir": self.dir,
            "created_at": self.created_at,
            **({"seq": dataclasses.asdict(self.seq)} if self.seq is not None else {}),
            "host": self.host,
            "user": self.user,
            "cwd": self.cwd,
            "python": self.python,
            "torchrun": self.torchrun,
            "env": dict(self.env),
            "git": dict(self.git),
            **{
                k: dict(v)
                for k in ("machine", "trainer", "launch_env")
                if (v := getattr(self, k)) is not None
            },
            "executor": self.executor,
            "on_failure": self.on_failure,
            "tail": self.tail,
            "stop_grace_s": self.stop_grace_s,
            "gpu_idle": dataclasses.asdict(self.gpu_idle),
            "max_parallel": self.max_parallel,
            "gpus": list(self.gpus) if self.gpus is not None else None,
            "notify": (
                {"argv": list(self.notify.argv), "timeout_s": self.notify.timeout_s}
                if self.notify is not None
                else None
            ),
            "legs": [r.to_dict() for r in own],
            "skipped": [{"leg": leg, "why": why} for leg, why in self.skipped],
            "prepare": (
                {
                    "argv": list(self.prepare.argv),
                    "creates": list(self.prepare.creates),
                    "mark": self.prepare.mark,
                }
                if self.prepare is not None
                else None
            ),
            "registry": (
                {"path": self.registry.path, "raw": self.registry.raw} if self.registry is not None else None
            ),
        }
        if self.slurm is not None:
            out["slurm"] = {
                k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self.slurm).items()
            }
        if self.preflight is not None:
            out["preflight"] = self.preflight
        if self.baseline is not None:
            out["baseline"] = dict(self.baseline)
        if self.trainer_flags is not None:
            f = self.trainer_flags
            out["trainer_flags"] = {
                "checked": f.checked,
                "command": f.command,
                **({"why": f.why} if f.why else {}),
            }
        return {**out, **self.extra}

    def write(self, exp_dir: Path | str) -> None:
        """plan.json in the fresh dir: created new, never over anything, never through a link."""
        exp_dir = Path(exp_dir)
        fd = fsutil.create_new(exp_dir / PLAN_FILE, root=exp_dir)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(self.to_dict(), f, indent=2, default=str)
            f.write("\n")


@dataclass(frozen=True)
class ContinuationFile:
    """What a continuation of a dir records in its `plan.<n>.json`: the runs it adds (each with its
    exact argv, as a launch plans it), the dir's runs it asks to run now, and its own origin."""

    continues: str | None  # the experiment it continues: the dir's
    runs: tuple[PlanRun, ...]  # the runs it adds
    again: tuple[str, ...] = ()  # the dir's runs it asks to run now (they never started)
    dir: str | None = None  # the dir it continues
    created_at: str | None = None  # when it was recorded (ISO, local time)
    host: str | None = None  # where it was recorded
    user: str | None = None  # who recorded it ($USER)
    origin: Mapping[str, Any] = field(
        default_factory=dict
    )  # provenance.collect: git, machine, trainer, launch_env
    registry: RegistrySnapshot | None = None  # the registry as it was
    skipped: tuple[tuple[str, str], ...] = ()  # (leg, why) it did not run
    n: int | None = None  # its number: the file is plan.<n>.json
    bad_runs: tuple[str, ...] = ()  # what its list of runs holds that is not a run (it is then not taken)

    @classmethod
    def from_dict(cls, data: Any, path: Path | str) -> ContinuationFile:
        if not isinstance(data, dict) or not isinstance(data.get("legs"), list):
            raise PlanError(path, "not a continuation (no list of legs)")
        runs, bad = [], []
        for spec in data["legs"]:
            name = spec.get("name") if isinstance(spec, dict) else None
            if not leg_name_ok(name):
                bad.append(f"names a run no file can be named after: {safetext.oneline(repr(name))[:60]}")
                continue
            run = PlanRun.from_dict(spec)
            runs.append(run)
            if not run.argv:
                bad.append(f"run {name}: argv is not a list of strings")
        again = data.get("again") or []
        if not (isinstance(again, list) and all(isinstance(a, str) for a in again)):
            bad.append("asks again for runs the dir does not have")
            again = []
        return cls(
            continues=_str(data.get("continues")),
            runs=tuple(runs),
            again=tuple(again),
            dir=_str(data.get("dir")),
            created_at=_str(data.get("created_at")),
            host=_str(data.get("host")),
            user=_str(data.get("user")),
            origin={k: data[k] for k in ("git", "machine", "trainer", "launch_env") if k in data},
            registry=_snapshot(data.get("registry")),
            skipped=_skipped(data.get("skipped")),
            n=_int(data.get("n"), None, 1, 999_999),
            bad_runs=tuple(bad),
        )

    def problem(self, plan: Plan, names: set[str]) -> str | None:
        """Why it cannot be taken into `plan` (whose runs so far are `names`), or None: it must
        continue the dir's experiment, add runs with names a file can have (not the supervisor's,
        not the prepare step's) and argv lists, none the dir has, and ask again only for runs the
        dir has."""
        if self.continues != plan.experiment:
            return f"continues {safetext.oneline(repr(self.continues))[:60]}, not this dir's experiment"
        if self.bad_runs:
            return self.bad_runs[0]
        added: set[str] = set()
        for run in self.runs:
            if run.name == SUPERVISOR or (run.name == reg.PREPARE and plan.prepare is not None):
                return f"names a run no file can be named after: {safetext.oneline(repr(run.name))[:60]}"
            if run.name in names or run.name in added:
                return f"adds run {run.name}, which the dir has already"
            added.add(run.name)
        if not all(a in names for a in self.again):
            return "asks again for runs the dir does not have"
        return None

    def to_dict(self) -> dict[str, Any]:
        return {
            "continues": self.continues,
            "dir": self.dir,
            "created_at": self.created_at,
            "host": self.host,
            "user": self.user,
            **self.origin,
            "registry": ({"path": self.registry.path, "raw": self.registry.raw} if self.registry else None),
            "legs": [r.to_dict() for r in self.runs],
            "again": list(self.again),
            "skipped": [{"leg": leg, "why": why} for leg, why in self.skipped],
            **({"n": self.n} if self.n is not None else {}),
        }

    def publish(self, exp_dir: Path | str) -> int:
        """Publish it whole as the dir's next `plan.<n>.json` (never over anything); its n.
        OSError when it cannot be written; FileExistsError when no free name was found."""
        for _ in range(100):
            n = (continuation_numbers(exp_dir) or [0])[-1] + 1
            text = json.dumps(dataclasses.replace(self, n=n).to_dict(), indent=2, default=str) + "\n"
            try:
                fsutil.publish_new(continuation_path(exp_dir, n), text, root=exp_dir)
                return n
            except FileExistsError:
                continue
        raise FileExistsError(f"no free plan.<n>.json name in {exp_dir}")


# ----------------------------------------------------------------------------------------------
# files and order


def read_json(path: Path | str, limit: int = PLAN_MAX_BYTES) -> Any:
    """A JSON file (a regular file, at most `limit` bytes); OSError or ValueError."""
    return json.loads(fsutil.read_bytes(path, limit))


def continuation_path(exp_dir: Path | str, n: int) -> Path:
    """`<dir>/plan.<n>.json`: what the n-th continuation of the dir recorded."""
    return Path(exp_dir) / f"plan.{n}.json"


def continuation_numbers(exp_dir: Path | str) -> list[int]:
    """The n of every `plan.<n>.json` in the dir, in order (the dir unreadable: none)."""
    try:
        names = os.listdir(exp_dir)
    except OSError:
        return []
    return sorted(int(m.group(1)) for m in map(CONTINUATION.match, names) if m)


# ----------------------------------------------------------------------------------------------
# values as a file may hold them


def _runs(specs: list[Any]) -> tuple[tuple[PlanRun, ...], tuple[str, ...]]:
    """plan.json's runs, and one line on those left out (no name a file can have, planned twice)."""
    runs: list[PlanRun] = []
    bad, twice = [], []
    seen: set[str] = set()
    for spec in specs:
        name = spec.get("name") if isinstance(spec, dict) else spec
        if not (isinstance(spec, dict) and leg_name_ok(name)):
            bad.append(name)
        elif name in seen:
            twice.append(name)
        else:
            seen.add(name)
            runs.append(PlanRun.from_dict(spec))
    problems = []
    if bad:
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        problems.append(
            f"{safetext.oneline(repr(bad[0]))[:60]} is not a leg name a file can have{more}: left out"
        )
    if twice:
        problems.append(f"leg {safetext.oneline(twice[0])[:60]} is planned twice: its first entry taken")
    return tuple(runs), tuple(problems)


def _str(v: Any) -> str | None:
    return v if isinstance(v, str) else None


def _path(v: Any) -> str | None:
    """An absolute path, as a plan names a file the cockpit writes."""
    return v if isinstance(v, str) and v and "\x00" not in v and os.path.isabs(v) else None


def _strs(v: Any, nonempty: bool = False) -> tuple[str, ...]:
    """A list of strings no command line or path refuses (non-empty ones, when `nonempty`); else ()."""
    ok = isinstance(v, list) and all(
        isinstance(x, str) and "\x00" not in x and (x or not nonempty) for x in v
    )
    return tuple(v) if ok else ()


def _num(v: Any, default: float | None, lo: float, hi: float) -> float | None:
    ok = isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) and lo <= v <= hi
    return float(v) if ok else default


def _int(v: Any, default: Any, lo: int, hi: int) -> Any:
    return v if isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi else default


def _dict(v: Any) -> dict | None:
    return v if isinstance(v, dict) else None


def _env(v: Any) -> dict[str, str]:
    """Names and string values only, never the marker that proves a process is a leg's."""
    if not isinstance(v, dict):
        return {}
    return {
        k: x
        for k, x in v.items()
        if isinstance(k, str)
        and isinstance(x, str)
        and reg.ENV_NAME.match(k)
        and "\x00" not in x
        and k not in (procs.ENV_EXP_DIR, procs.ENV_LEG)
    }


def _gpu_idle(v: Any) -> reg.GpuIdle:
    d = v if isinstance(v, dict) else {}
    base = reg.GpuIdle()
    return reg.GpuIdle(
        max_util_pct=_num(d.get("max_util_pct"), base.max_util_pct, 0.0, 100.0),
        max_mem_mib=_num(d.get("max_mem_mib"), base.max_mem_mib, 0.0, 1e9),
        wait_s=_num(d.get("wait_s"), base.wait_s, 0.0, reg.WAIT_S_MAX),
    )


def _gpus(v: Any) -> tuple[int, ...] | None:
    ok = (
        isinstance(v, list)
        and v
        and all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i for i in v)
        and len(set(v)) == len(v)
    )
    return tuple(v) if ok else None


def _notify(v: Any) -> Notify | None:
    if not isinstance(v, dict) or not (argv := _strs(v.get("argv"))):
        return None
    return Notify(argv, _num(v.get("timeout_s"), 10.0, 0.1, 600.0))


def _skipped(v: Any) -> tuple[tuple[str, str], ...]:
    if not isinstance(v, list):
        return ()
    return tuple(
        (x["leg"], x["why"])
        for x in v
        if isinstance(x, dict) and isinstance(x.get("leg"), str) and isinstance(x.get("why"), str)
    )


def _snapshot(v: Any) -> RegistrySnapshot | None:
    if not isinstance(v, dict):
        return None
    return RegistrySnapshot(_str(v.get("path")), v.get("raw") if isinstance(v.get("raw"), dict) else None)


def _slurm(v: Any) -> reg.SlurmSettings | None:
    """The Slurm settings a launch recorded (keys this version does not know left out)."""
    if not isinstance(v, dict):
        return None
    known = {f.name for f in dataclasses.fields(reg.SlurmSettings)}
    return reg.SlurmSettings(
        **{k: tuple(x) if isinstance(x, list) else x for k, x in v.items() if k in known}
    )
