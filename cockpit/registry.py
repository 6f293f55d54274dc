"""The experiment registry: `experiments.toml` -> typed Settings, Experiment and Leg objects.

The registry is the researcher's plan written as data: where experiment dirs go, what must
never be written, and every experiment with its legs (trainer args merged over experiment and
global defaults), its baseline, its decision, and the figures of legs that ran elsewhere.

Every problem in the file is reported as one `RegistryError` whose text is
`path:line: message`, so the CLI can print it on one line and exit 2.

Layer 0: imports nothing from the cockpit but fsutil, procs, safetext, sbatch_opts, flags, vocab and
toml_lines.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import itertools
import math
import os
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cockpit import fsutil, procs, safetext, sbatch_opts
from cockpit.flags import FlagDiff, diff_flags, parse_flags, render_args
from cockpit.toml_lines import locate_keys
from cockpit.vocab import METRICS

DEFAULT_REGISTRY = "experiments.toml"
REGISTRY_ENV = "COCKPIT_REGISTRY"  # names the registry file when no --registry is given
DEVICES = ("cuda", "cpu")
FAILURE_POLICIES = ("stop", "continue")
EXECUTORS = ("local", "slurm")  # who runs a launch's legs: a supervisor here, or Slurm batch jobs
EXP_ROOT_PLACEHOLDER = "{exp_root}"  # in a trainer arg or a prepare entry: project.exp_root, filled at load
PYTHON_PLACEHOLDER = "{python}"  # in a prepare argv: the Python of the legs, filled at launch
PREPARE = "prepare"  # an experiment's prepare step: <dir>/prepare.log, state/prepare.json (no leg's name)
# <exp_root>/.cockpit-prepare/<key>.running: a prepare step of those outputs started and has not ended well
PREPARE_MARK_DIR = ".cockpit-prepare"
REGISTRY_MAX_BYTES = 16 << 20  # a registry is a hand-written file: a bigger one is not a registry
# Bounds of the numbers a registry holds: each is checked with its file:line.
TAIL_MAX = 1_000_000  # step lines in the report's tail window
NPROC_MAX = 128  # processes per node (torchrun --nproc_per_node)
WAIT_S_MAX = 7 * 24 * 3600.0  # how long a leg may wait for idle GPUs
NODES_MAX = 4096  # nodes of one Slurm job
CPUS_MAX = 4096  # CPUs of one node's task
PARALLEL_MAX = 64  # legs of one experiment running side by side on one node
GPU_INDEX_MAX = 1023  # a GPU's index as NVML numbers it
# The files the cockpit names after an experiment id or a leg name, so both must fit the
# filesystem's limits with the longest of these around them (see expdir.py):
#   <exp_root>/<YYYYmmdd_HHMMSS>_<id>/state/<leg>.json, .../<leg>.log, .lock, .stop
#   <exp_root>/.cockpit-locks/<id>.lock
DIR_STAMP = "YYYYmmdd_HHMMSS_"
LEG_SUFFIXES = (".log", ".json", ".lock", ".stop")
EXPERIMENT_FILES = (f"{DIR_STAMP}{{}}", "{}.lock")  # its dirs, its queue lock
LEG_FILES = tuple(f"{{}}{s}" for s in LEG_SUFFIXES)
_MODULE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
# Repeats: a leg with `repeats = N` (N >= 2) runs N times in one launch, run i named `<leg>.r<i>`
# (its log `<leg>.r<i>.log`, its state `state/<leg>.r<i>.json`) with `--seed` base + i, the base
# being the leg's `seed` arg, else the trainer's default.
REPEATS_MAX = 100
# Runs (legs x repeats, a grid's legs counted) are bounded: per experiment, and in all. Each run is
# a state file, a log and a line of every view; a grid of 100 x 100 x 100 values would make 10^6
# of them (status: 30 s and 1.4 GB). Checked before a grid is expanded.
RUNS_MAX = 1_000
REGISTRY_RUNS_MAX = 10_000
REPEAT_NAME = re.compile(r"^(.+)\.r(0|[1-9][0-9]*)$")
DEFAULT_SEED = 42  # nanochat.base_train's --seed default (tests/test_registry.py checks they agree)


def repeat_name(leg: str, i: int) -> str:
    """The run name of repeat i of a leg: `dense.r0`."""
    return f"{leg}.r{i}"


def split_repeat(name: str) -> tuple[str, int | None]:
    """A run name -> (its leg, its repeat index), or (name, None) for a run that is no repeat."""
    m = REPEAT_NAME.match(name)
    return (m.group(1), int(m.group(2))) if m else (name, None)


class RegistryError(Exception):
    """A problem in the registry file, located at `path:line`."""

    def __init__(self, path: Path | str, line: int | None, message: str):
        self.path = str(path)
        self.line = line
        self.message = safetext.oneline(message)  # whatever the file held: one printable line
        where = f"{self.path}:{line}" if line else self.path
        super().__init__(f"{where}: {self.message}")


# ----------------------------------------------------------------------------------------------
# typed objects


@dataclass(frozen=True)
class GpuIdle:
    """When a GPU counts as idle for the preflight, and how long to wait for it."""

    max_util_pct: float = 5.0
    max_mem_mib: float = 1024.0
    wait_s: float = 600.0


@dataclass(frozen=True)
class SlurmSettings:
    """What every Slurm job of a launch asks the scheduler for (`[project.slurm]`, `[experiment.slurm]`)."""

    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    time: str | None = None  # Slurm's time limit syntax: "30", "4:00:00", "1-00:00:00"
    nodes: int = 1
    gpus_per_node: int | None = None  # None: one per torchrun process (nproc_per_node); 0 for CPU legs
    cpus_per_task: int | None = None  # one task per node: the CPUs of one node's torchrun and workers
    mem: str | None = None  # per node, Slurm's syntax: "64G"
    extra_args: tuple[str, ...] = ()  # more sbatch arguments, one argv item each
    setup: tuple[str, ...] = ()  # shell lines the job runs before srun (activate the venv, load modules)


@dataclass(frozen=True)
class Settings:
    name: str
    exp_root: Path
    read_only: tuple[Path, ...]
    branch: str | None
    tail: int
    gpu_idle: GpuIdle
    on_failure: str  # "stop" or "continue": what the queue does after a failed leg
    # run by the supervisor when a leg ends done or failed: an argv (no shell), its placeholders
    # filled (NOTIFY_FIELDS); it may fail or time out, which is noted, never fatal
    notify: tuple[str, ...] | None = None
    notify_timeout_s: float = 10.0
    executor: str = "local"  # who runs the legs unless an experiment says otherwise (EXECUTORS)
    slurm: SlurmSettings = SlurmSettings()  # `[project.slurm]`: every experiment's Slurm jobs
    max_parallel: int = 1  # legs of an experiment run side by side, unless it says otherwise (1: one at a time)
    # the GPUs (NVML indices) legs may run on: None, every GPU NVML shows (or CUDA_VISIBLE_DEVICES names);
    # without NVML, legs run side by side only on GPUs named here
    gpus: tuple[int, ...] | None = None


@dataclass(frozen=True)
class Runtime:
    """Where and with what a leg runs: the checkout it runs in (its working directory, put first
    on PYTHONPATH), the Python whose `torchrun` runs it, and extra environment variables.
    `[defaults]` sets them; an experiment may set its own (its env is added to the defaults')."""

    workdir: Path  # the registry's dir unless `workdir` says otherwise
    python: Path | None = None  # None: the cockpit's own Python (the torchrun beside it, else on PATH)
    env: dict[str, str] = field(default_factory=dict)

    @property
    def torchrun(self) -> Path | None:
        """The torchrun of the configured Python: the one beside it (a venv's bin), never resolved
        through the symlink a venv's python is (that would leave the venv)."""
        return self.python.parent / "torchrun" if self.python is not None else None


@dataclass(frozen=True)
class Prepare:
    """A step a launch runs once before an experiment's first leg, when the path it creates is
    missing (a corpus, a tokenizer): an argv (no shell) in the legs' checkout, with their env."""

    argv: tuple[str, ...]  # `{python}` stands for the legs' Python
    creates: tuple[Path, ...]  # inside exp_root: the step runs when any of them is missing
    line: int | None = None
    # A file the supervisor writes before the step starts and removes when it ends well: while it
    # is there (the step failed, was stopped, or its supervisor was killed), what the step left is
    # not trusted, and the next launch runs the step again (`prepare_mark`).
    mark: Path | None = None

    def unfinished(self) -> bool:
        """Did a run of the step start and not end well? Then its outputs are not trusted."""
        return self.mark is not None and os.path.lexists(self.mark)

    def missing(self) -> list[Path]:
        """What the step must make now (it runs when this is not empty): what it creates that is
        not there, or all of it after a run that did not end well."""
        return list(self.creates) if self.unfinished() else [p for p in self.creates if not os.path.lexists(p)]

    def why(self) -> str | None:
        """Why a launch runs the step now, in a few words, or None when it does not."""
        if self.unfinished():
            return f"its last run did not end well ({self.mark} is there): what it left is not trusted"
        missing = self.missing()
        return f"{', '.join(map(str, missing))} missing" if missing else None

    def makes(self, path: Path | str) -> bool:
        """Is `path` one of the paths it creates, or inside one?"""
        return any(fsutil.is_inside(path, c) for c in self.creates)

    def command(self, python: str) -> list[str]:
        """The argv it runs, with the legs' Python."""
        return [a.replace(PYTHON_PLACEHOLDER, python) for a in self.argv]


@dataclass(frozen=True)
class Recorded:
    """Figures of a leg that ran elsewhere (copied from a report), not measured here."""

    tok_per_sec: float | None = None
    dt_ms: float | None = None
    mfu: float | None = None
    peak_mem_mib: float | None = None
    total_time_min: float | None = None
    dir: str | None = None
    source: str | None = None


@dataclass(frozen=True)
class Leg:
    name: str
    experiment: str
    module: str
    device: str
    nproc_per_node: int
    args: dict[str, Any]  # merged: defaults < experiment < leg, in that insertion order
    recorded: Recorded | None
    description: str | None
    line: int | None
    repeats: int = 1  # runs of the leg in one launch (see REPEAT_NAME)
    grid: dict[str, Any] | None = None  # a leg of the experiment's grid: its value on each axis
    runtime: Runtime | None = None  # where and with what it runs (the experiment's)
    # the line of the registry that gives each of `args` (defaults, experiment, grid or leg)
    arg_lines: dict[str, int | None] = field(default_factory=dict, compare=False, repr=False)

    @property
    def is_recorded(self) -> bool:
        return self.recorded is not None

    def run_names(self) -> list[str]:
        """The names of the leg's runs in a launch: the leg's own, or one per repeat."""
        return [self.name] if self.repeats == 1 else [repeat_name(self.name, i) for i in range(self.repeats)]

    def run_args(self, repeat: int | None = None) -> dict[str, Any]:
        """The leg's trainer args; for repeat i, `seed` is the base seed + i (in its place when set)."""
        if repeat is None:
            return self.args
        base = self.args.get("seed", DEFAULT_SEED)
        base = int(base) if isinstance(base, int | str) and str(base).lstrip("-").isdigit() else DEFAULT_SEED
        return {**self.args, "seed": base + repeat}

    def trainer_args(self, exp_dir: Path | str | None = None, repeat: int | None = None) -> list[str]:
        """The trainer's flags as an argv list; `{exp_dir}` in a value becomes the leg's dir."""
        return render_args(self.run_args(repeat), exp_dir)

    def argv(self, exp_dir: Path | str | None = None, torchrun: str = "torchrun", repeat: int | None = None) -> list[str]:
        """The exact command a launch runs: torchrun, the module, then the trainer's flags after `--`."""
        return [
            torchrun,
            "--standalone",
            f"--nproc_per_node={self.nproc_per_node}",
            "-m",
            self.module,
            "--",
            *self.trainer_args(exp_dir, repeat),
        ]

    def runs(self, exp_dir: Path | str | None = None, torchrun: str = "torchrun") -> list[tuple[str, int | None, list[str]]]:
        """(run name, repeat index or None, argv) of each run of the leg in a launch."""
        if self.repeats == 1:
            return [(self.name, None, self.argv(exp_dir, torchrun))]
        return [(repeat_name(self.name, i), i, self.argv(exp_dir, torchrun, i)) for i in range(self.repeats)]


@dataclass(frozen=True)
class Experiment:
    id: str
    title: str | None
    device: str
    nproc_per_node: int
    legs: tuple[Leg, ...]
    baseline: str | None  # a leg of this experiment, or "<experiment>/<leg>"
    decision: str | None
    hypothesis: str | None
    notes: tuple[str, ...]
    line: int | None
    runtime: Runtime | None = None  # where and with what its legs run
    prepare: Prepare | None = None  # run before its first leg when what it creates is missing
    executor: str = "local"  # EXECUTORS: the project's, or the experiment's own
    slurm: SlurmSettings = SlurmSettings()  # `[project.slurm]`, each key `[experiment.slurm]` gives replaced
    max_parallel: int = 1  # legs run side by side on disjoint GPU sets (local executor), at most this many

    def leg(self, name: str) -> Leg | None:
        return next((leg for leg in self.legs if leg.name == name), None)

    @property
    def gpus_needed(self) -> int:
        return 0 if self.device == "cpu" else self.nproc_per_node


@dataclass(frozen=True)
class Registry:
    path: Path
    settings: Settings
    experiments: tuple[Experiment, ...]
    raw: dict[str, Any] = field(repr=False)  # the file as parsed: the plan's snapshot
    runtime: Runtime | None = None  # [defaults]' workdir, python and env (an experiment may differ)

    @property
    def workdir(self) -> Path:
        """The checkout the legs run in by default (`[defaults] workdir`, else the registry's dir)."""
        return self.runtime.workdir if self.runtime is not None else self.path.resolve().parent

    def experiment(self, exp_id: str) -> Experiment | None:
        return next((e for e in self.experiments if e.id == exp_id), None)

    def find_leg(self, ref: str, default_experiment: str | None = None) -> Leg | None:
        """A leg by `name` (in default_experiment) or `experiment/name`."""
        exp_id, _, name = ref.rpartition("/")
        exp = self.experiment(exp_id or (default_experiment or ""))
        return exp.leg(name) if exp else None

    def baseline_of(self, leg: Leg) -> Leg | None:
        """The baseline leg of the leg's experiment (maybe in another experiment), or None."""
        exp = self.experiment(leg.experiment)
        return self.find_leg(exp.baseline, exp.id) if exp is not None and exp.baseline else None

    def leg_diff(self, leg: Leg, other: Leg | None = None) -> list[FlagDiff] | None:
        """The trainer flags where `leg` differs from `other` (default: its baseline), in the
        leg's flag order, then the other's flags the leg lacks. None when there is nothing to
        compare with (no baseline); [] when the flags are the same."""
        other = other if other is not None else self.baseline_of(leg)
        if other is None:
            return None
        return diff_flags(parse_flags(other.trainer_args()), parse_flags(leg.trainer_args()))


# ----------------------------------------------------------------------------------------------
# validation


_SCHEMA: dict[str, dict[str, tuple[type, ...]]] = {
    "": {"project": (dict,), "defaults": (dict,), "experiment": (list,)},
    "project": {
        "name": (str,),
        "exp_root": (str,),
        "read_only": (list,),
        "branch": (str,),
        "tail": (int,),
        "on_failure": (str,),
        "gpu_idle": (dict,),
        "notify": (list,),
        "notify_timeout_s": (int, float),
        "executor": (str,),
        "slurm": (dict,),
        "max_parallel": (int,),
        "gpus": (list,),
    },
    "gpu_idle": {"max_util_pct": (int, float), "max_mem_mib": (int, float), "wait_s": (int, float)},
    "defaults": {"module": (str,), "nproc_per_node": (int,), "device": (str,), "args": (dict,),
                 "workdir": (str,), "python": (str,), "env": (dict,)},
    "experiment": {
        "id": (str,),
        "title": (str,),
        "device": (str,),
        "nproc_per_node": (int,),
        "baseline": (str,),
        "decision": (str,),
        "hypothesis": (str,),
        "notes": (list,),
        "repeats": (int,),
        "args": (dict,),
        "leg": (list,),
        "grid": (dict,),
        "workdir": (str,),
        "python": (str,),
        "env": (dict,),
        "prepare": (dict,),
        "executor": (str,),
        "slurm": (dict,),
        "max_parallel": (int,),
    },
    "prepare": {"argv": (list,), "creates": (str, list)},
    "leg": {
        "name": (str,),
        "description": (str,),
        "nproc_per_node": (int,),
        "repeats": (int,),
        "args": (dict,),
        "recorded": (dict,),
    },
    "slurm": {
        "partition": (str,),
        "account": (str,),
        "qos": (str,),
        "time": (str, int),
        "nodes": (int,),
        "gpus_per_node": (int,),
        "cpus_per_task": (int,),
        "mem": (str,),
        "extra_args": (list,),
        "setup": (list,),
    },
    "recorded": {
        **{m: (int, float) for m in METRICS},
        "dir": (str,),
        "source": (str,),
    },
}

_ARG_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")


def _type_name(types: tuple[type, ...]) -> str:
    names = {dict: "table", list: "array", str: "string", int: "integer", float: "number", bool: "boolean"}
    return " or ".join(names.get(t, t.__name__) for t in types)


def _is_a(value: Any, types: tuple[type, ...]) -> bool:
    if isinstance(value, bool):  # bool is an int in Python, never in a registry
        return bool in types
    return isinstance(value, types)


def _bad_name(name: str, files: tuple[str, ...] = ()) -> str | None:
    """Why a leg name or experiment id cannot be a file name, or None when it can.

    `files`: the names the cockpit makes of it (`"{}.json"`); each must fit in one path
    component (NAME_MAX bytes).
    """
    if not name.strip():
        return "is empty"
    if name in (".", "..") or "/" in name or "\\" in name:
        return "cannot be a file name (no '/', '\\', '.' or '..')"
    if (bad := safetext.bad_chars(name)) is not None:
        kind = "a control character" if bad.endswith("(Cc)") else "a character that hides or reorders text"
        return f"holds {kind}: {bad}"
    if name.startswith("-"):
        return "cannot start with '-'"
    if name.startswith("."):
        return "cannot start with '.' (hidden files are not listed)"
    if name != name.strip():
        return "cannot start or end with a space"
    longest = max(files, key=len, default="{}")
    if not fsutil.name_fits(longest.format(name)):
        n = len(os.fsencode(name))
        room = fsutil.NAME_MAX - len(os.fsencode(longest.format("")))
        return (f"is too long for a file name: {n} bytes, at most {room} (the cockpit names a file "
                f"'{longest.format('<name>')}', and a file name has at most {fsutil.NAME_MAX} bytes)")
    return None


def _bad_text(text: str) -> str | None:
    """Why free text (a title, a note) may not be shown as it is: a control character other
    than tab and newline, or a bidi override that reorders what the reader sees."""
    for c in text:
        if c in "\n\t":
            continue
        if (bad := safetext.bad_chars(c)) is not None and not bad.endswith("(Zs)"):
            return f"holds {bad}"
    return None


class _Loader:
    def __init__(self, path: Path, text: str):
        self.path = path
        self.lines = locate_keys(text)

    def line(self, loc: tuple) -> int | None:
        while loc:
            if loc in self.lines:
                return self.lines[loc]
            loc = loc[:-1]
        return None

    def fail(self, loc: tuple, message: str) -> RegistryError:
        return RegistryError(self.path, self.line(loc), message)

    def check_table(self, table: dict, kind: str, loc: tuple) -> None:
        schema = _SCHEMA[kind]
        for key, value in table.items():
            where = ".".join(str(p) for p in loc + (key,) if not isinstance(p, int)) or key
            if key not in schema:
                hint = difflib.get_close_matches(key, list(schema), n=1)
                more = f"; did you mean '{hint[0]}'?" if hint else f"; known: {', '.join(schema)}"
                raise self.fail(loc + (key,), f"unknown key '{where}'{more}")
            if not _is_a(value, schema[key]):
                raise self.fail(
                    loc + (key,),
                    f"'{where}' must be a {_type_name(schema[key])}, not {type(value).__name__} {_show(value)}",
                )
            if isinstance(value, float) and not math.isfinite(value):
                raise self.fail(loc + (key,), f"'{where}' must be a finite number, not {value!r}")
            if isinstance(value, str) and (why := _bad_text(value)):
                raise self.fail(loc + (key,), f"'{where}' {why}")
            if isinstance(value, list):
                for item in value:
                    if isinstance(item, str) and (why := _bad_text(item)):
                        raise self.fail(loc + (key,), f"an item of '{where}' {why}")

    def arg_lines(self, args: Any, loc: tuple) -> dict[str, int | None]:
        """The line of each trainer arg of the table at `loc` (its table's line when inline)."""
        return {key: self.line(loc + (key,)) for key in args} if isinstance(args, dict) else {}

    def check_range(self, value: int | float, lo: float, hi: float, loc: tuple, what: str) -> None:
        """A number within [lo, hi] (finite), or a located error that says the range."""
        if not (isinstance(value, int | float) and lo <= value <= hi):
            raise self.fail(loc, f"'{what}' must be between {_plain(lo)} and {_plain(hi)}, not {_show(value)}")

    def check_args(self, args: dict, loc: tuple) -> dict:
        for key, value in args.items():
            if not _ARG_KEY.match(key):
                raise self.fail(loc + (key,), f"trainer arg {_show(key)} is not a flag name")
            if isinstance(value, dict | list) or value is None:
                raise self.fail(
                    loc + (key,),
                    f"trainer arg '{key}' must be a string, number or boolean, not {type(value).__name__}",
                )
            if isinstance(value, float) and not math.isfinite(value):
                raise self.fail(loc + (key,), f"trainer arg '{key}' must be a finite number, not {value!r}")
            if isinstance(value, str) and "\x00" in value:
                raise self.fail(loc + (key,), f"trainer arg '{key}' holds a NUL byte (no command line can)")
        return dict(args)


def _plain(x: float) -> str:
    """A bound as a person writes it: 1000000, 0.5."""
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def _first(names, n: int = 8) -> str:
    """The first `n` names, and how many there are in all when more: a message stays one line."""
    names = list(names)
    return ", ".join(names[:n]) + (f", ... ({_count(len(names))} in all)" if len(names) > n else "")


def _count(n: int) -> str:
    """A count as a person reads it: 1,000,000."""
    return f"{n:,}"


def _cut(text: str, n: int = 100) -> str:
    """A long path or name cut in its middle, for a message that must stay readable."""
    return text if len(text) <= n else f"{text[: n // 2 - 2]}...{text[-(n // 2 - 1):]}"


def _show(value: Any) -> str:
    """A value in a message: its repr, cut to a readable length (one line: repr escapes controls)."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def find_registry(start: Path | str | None = None, environ: Mapping[str, str] | None = None) -> Path:
    """The registry a command uses when none is named: `$COCKPIT_REGISTRY`, else the nearest
    `experiments.toml` in `start` (default: the current directory) or a directory above it, up
    to the filesystem root, as git finds `.git`. Found in `start` itself, it is the bare name
    (paths shown stay short); above it, an absolute path. RegistryError says where it looked."""
    environ = os.environ if environ is None else environ
    named = environ.get(REGISTRY_ENV, "")
    if named.strip():
        path = Path(os.path.expanduser(named))
        if not path.is_file():
            raise RegistryError(path, None, f"${REGISTRY_ENV} names no registry file")
        return path
    try:
        here = Path(os.path.abspath(start if start is not None else os.getcwd()))
    except FileNotFoundError:  # the current directory was removed under us
        raise RegistryError(DEFAULT_REGISTRY, None, "registry file not found: the current directory no longer "
                            "exists; give --registry PATH or set $" + REGISTRY_ENV) from None
    for d in (here, *here.parents):
        if (d / DEFAULT_REGISTRY).is_file():
            return Path(DEFAULT_REGISTRY) if start is None and d == here else d / DEFAULT_REGISTRY
    raise RegistryError(DEFAULT_REGISTRY, None, f"registry file not found in {_cut(str(here))} or any directory "
                        f"above it; give --registry PATH or set ${REGISTRY_ENV}")


def load(path: Path | str = DEFAULT_REGISTRY) -> Registry:
    """Read and validate a registry file. Raises RegistryError (one line, with file:line)."""
    path = Path(path)
    try:
        text = fsutil.read_text(path, REGISTRY_MAX_BYTES)
    except FileNotFoundError:
        raise RegistryError(path, None, "registry file not found") from None
    except UnicodeDecodeError as e:
        raise RegistryError(path, None, f"cannot read registry: not UTF-8 text (byte {e.start})") from None
    except OSError as e:
        raise RegistryError(path, None, f"cannot read registry: {fsutil.oneline(e)}") from None
    return loads(text, path)


def loads(text: str, path: Path | str = DEFAULT_REGISTRY) -> Registry:
    path = Path(path)
    text = text.removeprefix("\ufeff")  # a UTF-8 byte order mark, as some editors write one
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        m = re.search(r"\(at line (\d+), column (\d+)\)", str(e))
        msg = re.sub(r"\s*\(at line \d+, column \d+\)", "", str(e))
        raise RegistryError(path, int(m.group(1)) if m else None, f"TOML syntax error: {msg}") from None
    return from_raw(raw, path, text)


def from_raw(raw: dict[str, Any], path: Path | str = DEFAULT_REGISTRY, text: str = "") -> Registry:
    """A registry from an already parsed table (plan.json's snapshot `registry.raw`); `path` is
    where relative paths resolve from, `text` (the file, when there is one) locates errors."""
    path = Path(path)
    if not isinstance(raw, dict):
        raise RegistryError(path, None, "registry snapshot is not a table")
    ld = _Loader(path, text)
    ld.check_table(raw, "", ())

    proj = raw.get("project", {})
    ld.check_table(proj, "project", ("project",))
    base = path.resolve().parent
    if "exp_root" not in proj:
        raise ld.fail(("project",), "missing key 'project.exp_root' (where experiment dirs are created)")
    exp_root = _resolve(proj["exp_root"], base, ld, ("project", "exp_root"), "project.exp_root")
    if why := _root_problem(exp_root):
        raise ld.fail(("project", "exp_root"), f"exp_root '{_cut(str(exp_root))}' {why}")
    read_only: list[Path] = []
    for i, p in enumerate(proj.get("read_only", [])):
        if not isinstance(p, str):
            raise ld.fail(("project", "read_only"), f"'project.read_only' item {i} must be a string path")
        read_only.append(_resolve(p, base, ld, ("project", "read_only"), f"project.read_only item {i}"))
    for ro in read_only:
        if exp_root == ro or ro in exp_root.parents:
            raise ld.fail(
                ("project", "exp_root"),
                f"exp_root '{exp_root}' lies inside read-only path '{ro}': experiments could never be written",
            )
    tail = proj.get("tail", 50)
    if tail < 1:
        raise ld.fail(("project", "tail"), f"'project.tail' must be at least 1, not {tail}")
    ld.check_range(tail, 1, TAIL_MAX, ("project", "tail"), "project.tail")
    on_failure = proj.get("on_failure", "stop")
    if on_failure not in FAILURE_POLICIES:
        raise ld.fail(
            ("project", "on_failure"),
            f"'project.on_failure' must be one of {FAILURE_POLICIES}, not {on_failure!r}",
        )
    idle = proj.get("gpu_idle", {})
    ld.check_table(idle, "gpu_idle", ("project", "gpu_idle"))
    for key, hi in (("max_util_pct", 100.0), ("max_mem_mib", 1e9), ("wait_s", WAIT_S_MAX)):
        if key in idle:
            ld.check_range(idle[key], 0.0, hi, ("project", "gpu_idle", key), f"project.gpu_idle.{key}")
    notify = _notify(ld, proj, base) if "notify" in proj else None
    timeout = proj.get("notify_timeout_s", 10.0)
    ld.check_range(timeout, 0.1, NOTIFY_TIMEOUT_MAX, ("project", "notify_timeout_s"), "project.notify_timeout_s")
    executor = _check_executor(ld, proj.get("executor", "local"), ("project", "executor"), "project.executor")
    slurm = _slurm(ld, SlurmSettings(), proj.get("slurm", {}), ("project", "slurm"))
    max_parallel = proj.get("max_parallel", 1)
    ld.check_range(max_parallel, 1, PARALLEL_MAX, ("project", "max_parallel"), "project.max_parallel")
    settings = Settings(
        name=proj.get("name", base.name),
        exp_root=exp_root,
        read_only=tuple(read_only),
        branch=proj.get("branch"),
        tail=tail,
        gpu_idle=GpuIdle(**{k: float(v) for k, v in idle.items()}),
        on_failure=on_failure,
        notify=notify,
        notify_timeout_s=float(timeout),
        executor=executor,
        slurm=slurm,
        max_parallel=max_parallel,
        gpus=_gpus(ld, proj["gpus"], ("project", "gpus")) if "gpus" in proj else None,
    )

    defaults = raw.get("defaults", {})
    ld.check_table(defaults, "defaults", ("defaults",))
    d_args = ld.check_args(defaults.get("args", {}), ("defaults", "args"))
    d_lines = ld.arg_lines(d_args, ("defaults", "args"))
    module = defaults.get("module", "nanochat.base_train")
    if not _MODULE.match(module):
        raise ld.fail(("defaults", "module"),
                      f"'defaults.module' must be a Python module name (like nanochat.base_train), not {_show(module)}")
    d_device = _check_device(ld, defaults.get("device", "cuda"), ("defaults", "device"))
    d_nproc = _check_nproc(ld, defaults.get("nproc_per_node", 1), ("defaults", "nproc_per_node"))
    d_runtime = _runtime(ld, defaults, ("defaults",), base, Runtime(workdir=base))

    experiments: list[Experiment] = []
    seen_ids: dict[str, int | None] = {}
    total_runs = 0
    for i, exp in enumerate(raw.get("experiment", [])):
        loc = ("experiment", i)
        if not isinstance(exp, dict):
            raise ld.fail(loc, "each [[experiment]] must be a table")
        ld.check_table(exp, "experiment", loc)
        exp_id = exp.get("id")
        if exp_id is None:
            raise ld.fail(loc, "experiment without 'id'")
        if why := _bad_name(exp_id, EXPERIMENT_FILES):
            raise ld.fail(loc + ("id",), f"experiment id {_show(exp_id)} {why}")
        if exp_id in seen_ids:
            raise ld.fail(
                loc + ("id",), f"duplicate experiment id '{exp_id}' (first at line {seen_ids[exp_id]})"
            )
        seen_ids[exp_id] = ld.line(loc + ("id",))
        device = _check_device(ld, exp.get("device", d_device), loc + ("device",))
        nproc = _check_nproc(ld, exp.get("nproc_per_node", d_nproc), loc + ("nproc_per_node",))
        runtime = _runtime(ld, exp, loc, base, d_runtime)
        e_args = _roots({**d_args, **ld.check_args(exp.get("args", {}), loc + ("args",))}, exp_root)
        e_lines = {**d_lines, **ld.arg_lines(exp.get("args", {}), loc + ("args",))}
        prepare = _prepare(ld, exp["prepare"], loc + ("prepare",), base, exp_root, read_only) if "prepare" in exp else None
        e_parallel = exp.get("max_parallel", max_parallel)
        ld.check_range(e_parallel, 1, PARALLEL_MAX, loc + ("max_parallel",), f"{exp_id}.max_parallel")
        e_repeats = exp.get("repeats", 1)
        ld.check_range(e_repeats, 1, REPEATS_MAX, loc + ("repeats",), f"{exp_id}.repeats")
        notes = exp.get("notes", [])
        if not all(isinstance(n, str) for n in notes):
            raise ld.fail(loc + ("notes",), f"'{exp_id}'.notes must be an array of strings")

        legs: list[Leg] = []
        seen_legs: dict[str, int | None] = {}
        runs = 0  # of this experiment so far (legs x repeats)
        for j, leg in enumerate(exp.get("leg", [])):
            lloc = loc + ("leg", j)
            if not isinstance(leg, dict):
                raise ld.fail(lloc, "each [[experiment.leg]] must be a table")
            ld.check_table(leg, "leg", lloc)
            name = leg.get("name")
            if name is None:
                raise ld.fail(lloc, f"leg {j} of '{exp_id}' has no 'name'")
            repeats = leg.get("repeats", e_repeats)
            ld.check_range(repeats, 1, REPEATS_MAX, lloc + ("repeats",), f"{exp_id}/{name}.repeats")
            runs += repeats
            if runs > RUNS_MAX:
                raise ld.fail(lloc, f"'{exp_id}' has {_count(runs)} runs (legs x repeats) up to its leg {_show(name)}: "
                                    f"an experiment holds at most {_count(RUNS_MAX)}")
            if why := _bad_name(name, LEG_FILES):
                raise ld.fail(lloc + ("name",), f"leg name {_show(name)} in '{exp_id}' {why}")
            if REPEAT_NAME.match(name):
                raise ld.fail(lloc + ("name",), f"leg name {_show(name)} in '{exp_id}' ends like a repeat's run "
                                                f"name (.r<N>, as in {repeat_name('dense', 0)}): choose another")
            longest = repeat_name(name, repeats - 1) if repeats > 1 else name
            if longest != name and (why := _bad_name(longest, LEG_FILES)):
                raise ld.fail(lloc + ("repeats",), f"run name {_show(longest)} of '{exp_id}/{name}' {why}")
            if why := _path_too_long(exp_root, exp_id, longest):
                raise ld.fail(lloc + ("name",), why)
            if name == PREPARE and prepare is not None:
                raise ld.fail(lloc + ("name",), f"leg name '{PREPARE}' in '{exp_id}' is its prepare step's "
                                                "(prepare.log): name the leg otherwise")
            if name in seen_legs:
                raise ld.fail(
                    lloc + ("name",),
                    f"duplicate leg name '{name}' in '{exp_id}' (first at line {seen_legs[name]})",
                )
            seen_legs[name] = ld.line(lloc + ("name",))
            recorded = None
            if "recorded" in leg:
                ld.check_table(leg["recorded"], "recorded", lloc + ("recorded",))
                for k in METRICS:
                    if k in leg["recorded"]:
                        ld.check_range(leg["recorded"][k], 0.0, 1e15, lloc + ("recorded", k),
                                       f"{exp_id}/{name} recorded.{k}")
                recorded = Recorded(
                    **{k: (float(v) if k in METRICS else v) for k, v in leg["recorded"].items()}
                )
            legs.append(
                Leg(
                    name=name,
                    experiment=exp_id,
                    module=module,
                    device=device,
                    nproc_per_node=_check_nproc(
                        ld, leg.get("nproc_per_node", nproc), lloc + ("nproc_per_node",)
                    ),
                    args=_roots({**e_args, **ld.check_args(leg.get("args", {}), lloc + ("args",))}, exp_root),
                    recorded=recorded,
                    description=leg.get("description"),
                    line=ld.line(lloc),
                    repeats=repeats,
                    runtime=runtime,
                    arg_lines={**e_lines, **ld.arg_lines(leg.get("args", {}), lloc + ("args",))},
                )
            )
        if "grid" in exp:
            grid_legs = []
            expanded = _expand_grid(ld, exp["grid"], loc + ("grid",), exp_id, e_args, seen_legs, runs, e_repeats)
            runs += len(expanded) * e_repeats
            for name, args, desc, values in expanded:
                if why := _path_too_long(exp_root, exp_id, repeat_name(name, e_repeats - 1) if e_repeats > 1 else name):
                    raise ld.fail(loc + ("grid", "name"), why)
                g_args = exp["grid"].get("args", {})
                lines = {**e_lines, **ld.arg_lines(g_args, loc + ("grid", "args")),
                         **{k: ld.line(loc + ("grid", k)) for k in values}}
                grid_legs.append(Leg(name=name, experiment=exp_id, module=module, device=device, nproc_per_node=nproc,
                                     args=_roots(args, exp_root), recorded=None, description=desc, line=ld.line(loc + ("grid",)),
                                     grid=values, runtime=runtime, repeats=e_repeats, arg_lines=lines))
            # the grid's legs stand where the grid stands among the hand-written ones
            at = ld.line(loc + ("grid",)) or 0
            cut = sum(1 for leg in legs if (leg.line or 0) < at)
            legs[cut:cut] = grid_legs
        total_runs += runs
        if total_runs > REGISTRY_RUNS_MAX:
            raise ld.fail(loc, f"the registry has {_count(total_runs)} runs (legs x repeats) up to experiment "
                               f"'{exp_id}': it holds at most {_count(REGISTRY_RUNS_MAX)}")
        experiments.append(
            Experiment(
                id=exp_id,
                title=exp.get("title"),
                device=device,
                nproc_per_node=nproc,
                legs=tuple(legs),
                baseline=exp.get("baseline"),
                decision=exp.get("decision"),
                hypothesis=exp.get("hypothesis"),
                notes=tuple(notes),
                line=ld.line(loc),
                runtime=runtime,
                prepare=prepare,
                executor=_check_executor(ld, exp.get("executor", executor), loc + ("executor",),
                                         f"{exp_id}.executor"),
                slurm=_slurm(ld, slurm, exp.get("slurm", {}), loc + ("slurm",)),
                max_parallel=e_parallel,
            )
        )

    registry = Registry(path=path, settings=settings, experiments=tuple(experiments), raw=raw, runtime=d_runtime)
    for i, exp in enumerate(registry.experiments):
        if exp.baseline and registry.find_leg(exp.baseline, exp.id) is None:
            raise ld.fail(
                ("experiment", i, "baseline"),
                f"baseline '{exp.baseline}' of '{exp.id}' names no leg"
                + (f" (legs: {_first(leg.name for leg in exp.legs)})" if exp.legs else ""),
            )
    return registry


# ----------------------------------------------------------------------------------------------
# sweeps: a grid of legs
#
#     [experiment.grid]
#     name = "{compile-mode}_cap{moe-capacity-factor}"      # each leg's name: every axis in it
#     compile-mode = ["static", "dynamic"]                 # an axis: a trainer flag and its values
#     moe-capacity-factor = [0.0, 1.0, 1.25]
#     args = { model-tag = "sweep_{name}" }                # optional: args of every grid leg
#
# expands to one leg per combination (the first axis varies slowest), named by the template:
# static_cap0p0, static_cap1p0, static_cap1p25, dynamic_cap0p0, ... A value renders in a name as
# a file name can hold it: 1.0 -> 1p0, 1.25 -> 1p25, -1 -> m1, 1e-05 -> 1em05, true -> true,
# a string as it is. A grid leg's args: the experiment's, then the grid's `args`, then its axis
# values; `{name}` and `{<axis>}` in the grid's args and description stand for the leg's own.

GRID_KEYS = ("name", "description", "args")  # a grid's keys that are not axes
_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")


def name_part(value: Any) -> str:
    """An axis value as it appears in a leg name: `1.0` -> `1p0`, `-0.5` -> `m0p5`, `true`."""
    if isinstance(value, bool):
        return "true" if value else "false"
    text = repr(value) if isinstance(value, float) else str(value)
    return text.replace(".", "p").replace("-", "m").replace("+", "") if isinstance(value, int | float) else text


def _fill(template: str, values: dict[str, str]) -> str:
    """`{key}` -> values[key] for the keys given; any other `{...}` (`{exp_dir}`) stays as it is."""
    return _PLACEHOLDER.sub(lambda m: values.get(m.group(1), m.group(0)), template)


def _expand_grid(ld: _Loader, grid: dict, loc: tuple, exp_id: str, e_args: dict, seen: dict[str, int | None],
                 runs: int = 0, repeats: int = 1) -> list[tuple[str, dict, str | None, dict]]:
    """The legs of an experiment's grid as (name, args, description, axis values), checked: a
    template that names every axis and nothing else, axes of distinct scalar values, names no
    other leg has (`seen`: name -> line), and no more runs than RUNS_MAX with the `runs` the
    experiment has beside it, each leg run `repeats` times (counted before anything is expanded)."""
    template = grid.get("name")
    if not isinstance(template, str):
        raise ld.fail(loc, f"the grid of '{exp_id}' needs a name template (e.g. name = \"{{compile-mode}}_cap"
                           "{moe-capacity-factor}\") whose placeholders are its axes")
    axes = {k: v for k, v in grid.items() if k not in GRID_KEYS}
    if not axes:
        raise ld.fail(loc, f"the grid of '{exp_id}' has no axis (a trainer flag = [values])")
    for key, values in axes.items():
        if not _ARG_KEY.match(key):
            raise ld.fail(loc + (key,), f"grid axis {_show(key)} of '{exp_id}' is not a flag name")
        if not isinstance(values, list) or not values:
            raise ld.fail(loc + (key,), f"grid axis '{key}' of '{exp_id}' must be a non-empty array of values, "
                                        f"not {_show(values)}")
    size = math.prod(len(v) for v in axes.values())
    if runs + size * repeats > RUNS_MAX:
        shape = " x ".join(str(len(v)) for v in axes.values())
        also = f", with {_count(runs)} beside it" if runs else ""
        rep = f" x {repeats} repeats" if repeats > 1 else ""
        raise ld.fail(loc, f"the grid of '{exp_id}' makes {_count(size)} legs ({shape}){rep}{also}: an experiment "
                           f"holds at most {_count(RUNS_MAX)} runs (legs x repeats)")
    for key, values in axes.items():
        for v in values:
            ld.check_args({key: v}, loc + (key,))
        shown = [name_part(v) for v in values]
        if len(set(shown)) < len(shown):
            dup = next(x for x in shown if shown.count(x) > 1)
            raise ld.fail(loc + (key,), f"grid axis '{key}' of '{exp_id}' repeats a value ({dup} in a name)")
    desc = grid.get("description")
    if desc is not None and not isinstance(desc, str):
        raise ld.fail(loc + ("description",), f"the grid's description in '{exp_id}' must be a string")
    g_args = ld.check_args(grid.get("args", {}), loc + ("args",)) if isinstance(grid.get("args", {}), dict) else None
    if g_args is None:
        raise ld.fail(loc + ("args",), f"the grid's args in '{exp_id}' must be a table")
    where = loc + ("name",)
    stripped = _PLACEHOLDER.sub("", template)
    if "{" in stripped or "}" in stripped:
        raise ld.fail(where, f"grid name template {_show(template)} of '{exp_id}' has an unmatched brace")
    named = _PLACEHOLDER.findall(template)
    if unknown := [n for n in named if n not in axes]:
        raise ld.fail(where, f"grid name template {_show(template)} of '{exp_id}' names {{{unknown[0]}}}, which is "
                             f"not an axis (axes: {', '.join(axes)})")
    if missing := [a for a in axes if a not in named]:
        raise ld.fail(where, f"grid name template {_show(template)} of '{exp_id}' leaves out axis '{missing[0]}': "
                             "legs that differ only there would share a name")
    legs = []
    first: dict[str, dict] = {}
    for combo in itertools.product(*axes.values()):
        values = dict(zip(axes, combo, strict=True))
        name = _fill(template, {k: name_part(v) for k, v in values.items()})
        show = ", ".join(f"{k} = {_show(v)}" for k, v in values.items())
        if why := _bad_name(name, LEG_FILES):
            raise ld.fail(where, f"grid leg name {_show(name)} ({show}) in '{exp_id}' {why}")
        if name in seen:
            raise ld.fail(where, f"grid leg '{name}' ({show}) of '{exp_id}' has the name of the leg at line {seen[name]}")
        if name in first:
            other = ", ".join(f"{k} = {_show(v)}" for k, v in first[name].items())
            raise ld.fail(where, f"grid legs ({other}) and ({show}) of '{exp_id}' would both be named '{name}'")
        first[name] = values
        subst = {"name": name, **{k: str(v) for k, v in values.items()}}
        args = {**e_args, **{k: _fill(v, subst) if isinstance(v, str) else v for k, v in g_args.items()}, **values}
        legs.append((name, args, _fill(desc, subst) if desc is not None else None, values))
    return legs


def _resolve(p: str, base: Path, ld: _Loader | None = None, loc: tuple = (), what: str = "path") -> Path:
    """A registry path made absolute (relative to the registry's dir, `~` expanded), or a located
    error: an empty path, `~user` of no such user, a NUL byte."""
    def bad(why: str) -> Exception:
        return ld.fail(loc, f"'{what}' {why}") if ld is not None else ValueError(why)

    if not p.strip():
        raise bad("is empty (give a directory)")
    if "\x00" in p:
        raise bad("holds a NUL byte")
    path = Path(os.path.expanduser(p))  # unchanged when there is no such user (Path's would raise)
    if p.startswith("~") and str(path).startswith("~"):
        user = p[1:].split("/", 1)[0]
        raise bad(f"names the home of user '{user}', who does not exist here" if user else "needs a HOME to expand '~'")
    try:
        return (path if path.is_absolute() else base / path).resolve()
    except (OSError, RuntimeError) as e:
        raise bad(f"cannot be resolved: {e}") from None


def _root_problem(root: Path) -> str | None:
    """Why exp_root can never hold experiment dirs (it, or a dir above it, is a file), or None.
    A missing exp_root is made by the first launch; a read-only one is refused at launch."""
    if len(os.fsencode(str(root))) >= fsutil.PATH_MAX - 2 * fsutil.NAME_MAX:
        return f"is too long a path ({len(os.fsencode(str(root)))} bytes) to hold experiment dirs"
    here = root
    while True:
        try:
            st = os.stat(here)
        except (FileNotFoundError, NotADirectoryError):
            if here.parent == here:
                return None
            here = here.parent
            continue
        except OSError:
            return None  # no permission to look: a launch will say what it cannot do
        if here == root and not os.path.isdir(here):
            return "is a file, not a directory"
        if not os.path.isdir(here):
            return f"lies under {here}, which is a file, not a directory"
        del st
        return None


def _path_too_long(exp_root: Path, exp_id: str, leg: str) -> str | None:
    """Why the longest path the cockpit writes for this leg would exceed PATH_MAX, or None."""
    longest = max(LEG_SUFFIXES, key=len)
    path = f"{exp_root}/{DIR_STAMP}{exp_id}/state/{leg}{longest}"
    n = len(os.fsencode(path))
    if n >= fsutil.PATH_MAX:
        return (f"leg '{exp_id}/{leg}': its files under exp_root would have paths of {n} bytes, "
                f"more than the {fsutil.PATH_MAX - 1} a path may have")
    return None


NOTIFY_FIELDS = ("event", "experiment", "leg", "dir", "log")  # `{event}`: done or failed
NOTIFY_TIMEOUT_MAX = 600.0


def _notify(ld: _Loader, proj: dict, base: Path) -> tuple[str, ...]:
    """`project.notify`, checked: a non-empty array of strings, placeholders only NOTIFY_FIELDS; a
    program given as a path (it has a '/') is the registry dir's and must be an executable file.
    A bare name is looked up on PATH when it runs (PATH differs from machine to machine)."""
    loc = ("project", "notify")
    argv = proj["notify"]
    if not argv or not all(isinstance(a, str) for a in argv):
        raise ld.fail(loc, "'project.notify' must be a non-empty array of strings: a command and its arguments "
                           "(no shell), e.g. [\"notify-send\", \"{experiment}/{leg}: {event}\"]")
    if not argv[0].strip():
        raise ld.fail(loc, "'project.notify' names no program (its first item is empty)")
    for a in argv:
        if "\x00" in a:
            raise ld.fail(loc, "'project.notify' holds a NUL byte (no command line can)")
        if unknown := [n for n in _PLACEHOLDER.findall(a) if n not in NOTIFY_FIELDS]:
            raise ld.fail(loc, f"'project.notify' names {{{unknown[0]}}}; it knows "
                               + ", ".join(f"{{{f}}}" for f in NOTIFY_FIELDS))
    program = argv[0]
    if "/" in program:
        path = _resolve_kept(ld, program, base, loc, "project.notify")
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise ld.fail(loc, f"'project.notify' program {_cut(str(path))} is not an executable file")
        program = str(path)
    return (program, *argv[1:])


def fill_notify(argv: tuple[str, ...] | list[str], fields: dict[str, str]) -> list[str]:
    """The notify command for one leg: each `{field}` replaced (NOTIFY_FIELDS), nothing else."""
    return [_fill(a, fields) for a in argv]


def _roots(args: dict, exp_root: Path) -> dict:
    """Trainer args with `{exp_root}` filled in their string values (a corpus a prepare made there)."""
    return {k: v.replace(EXP_ROOT_PLACEHOLDER, str(exp_root)) if isinstance(v, str) else v for k, v in args.items()}


def _prepare(ld: _Loader, table: Any, loc: tuple, base: Path, exp_root: Path, read_only: list[Path]) -> Prepare:
    """An experiment's prepare entry, checked: an argv of strings whose placeholders are `{python}`
    and `{exp_root}`, and the path it creates, inside exp_root (nothing is written elsewhere) and
    outside every read-only path."""
    ld.check_table(table, "prepare", loc)
    argv = table.get("argv")
    if not argv or not all(isinstance(a, str) for a in argv) or not argv[0].strip():
        raise ld.fail(loc + ("argv",), "'prepare.argv' must be a non-empty array of strings: a command and its "
                                       "arguments (no shell), e.g. [\"{python}\", \"-m\", \"nanochat.smoke_data\", "
                                       "\"--out\", \"{exp_root}/_data/smoke\"]")
    known = (PYTHON_PLACEHOLDER[1:-1], EXP_ROOT_PLACEHOLDER[1:-1])
    for a in argv:
        if "\x00" in a:
            raise ld.fail(loc + ("argv",), "'prepare.argv' holds a NUL byte (no command line can)")
        if unknown := [n for n in _PLACEHOLDER.findall(a) if n not in known]:
            raise ld.fail(loc + ("argv",), f"'prepare.argv' names {{{unknown[0]}}}; it knows {{python}} and {{exp_root}}")
    if "creates" not in table:
        raise ld.fail(loc, "a prepare entry needs 'creates': the paths it makes (it runs when one is missing)")
    given = table["creates"] if isinstance(table["creates"], list) else [table["creates"]]
    if not given or not all(isinstance(c, str) for c in given):
        raise ld.fail(loc + ("creates",), "'prepare.creates' must be a path or a non-empty array of paths")
    creates = []
    for c in given:
        path = _resolve(c.replace(EXP_ROOT_PLACEHOLDER, str(exp_root)), base, ld, loc + ("creates",), "prepare.creates")
        if not (path != exp_root and exp_root in path.parents):
            raise ld.fail(loc + ("creates",), f"'prepare.creates' {_cut(str(path))} must lie inside exp_root "
                                              f"{_cut(str(exp_root))} (the cockpit writes nowhere else): use "
                                              "{exp_root}/...")
        for ro in read_only:
            if path == ro or ro in path.parents:
                raise ld.fail(loc + ("creates",), f"'prepare.creates' {_cut(str(path))} lies inside read-only path {ro}")
        creates.append(path)
    return Prepare(tuple(a.replace(EXP_ROOT_PLACEHOLDER, str(exp_root)) for a in argv), tuple(creates), ld.line(loc),
                   prepare_mark(exp_root, creates))


def prepare_mark(exp_root: Path, creates: list[Path] | tuple[Path, ...]) -> Path:
    """`<exp_root>/.cockpit-prepare/<key>.running`, the key naming the set of paths a prepare step
    creates (two experiments that prepare the same paths share it)."""
    key = hashlib.sha256("\0".join(sorted(map(str, creates))).encode("utf-8", "surrogateescape")).hexdigest()[:16]
    return exp_root / PREPARE_MARK_DIR / f"{key}.running"


ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")  # an environment variable's name
RESERVED_ENV = (procs.ENV_EXP_DIR, procs.ENV_LEG)  # the supervisor's marker on a leg's processes


def _runtime(ld: _Loader, table: dict, loc: tuple, base: Path, parent: Runtime) -> Runtime:
    """The workdir, python and env a table sets (over `parent`'s), checked now: the workdir is a
    directory, the python an executable file, each env key a variable name and each value a
    string. Relative paths are the registry's dir's; `~` is expanded; symlinks are kept (a venv's
    python is one)."""
    where = ".".join(str(p) for p in loc if not isinstance(p, int)) or "defaults"
    workdir, python = parent.workdir, parent.python
    if "workdir" in table:
        workdir = _resolve_kept(ld, table["workdir"], base, loc + ("workdir",), f"{where}.workdir")
        if not workdir.exists():
            raise ld.fail(loc + ("workdir",), f"'{where}.workdir' {_cut(str(workdir))} does not exist")
        if not workdir.is_dir():
            raise ld.fail(loc + ("workdir",), f"'{where}.workdir' {_cut(str(workdir))} is not a directory")
    if "python" in table:
        python = _resolve_kept(ld, table["python"], base, loc + ("python",), f"{where}.python")
        if not python.exists():
            raise ld.fail(loc + ("python",), f"'{where}.python' {_cut(str(python))} does not exist")
        if not python.is_file() or not os.access(python, os.X_OK):
            raise ld.fail(loc + ("python",), f"'{where}.python' {_cut(str(python))} is not an executable file")
    env = dict(parent.env)
    for key, value in table.get("env", {}).items():
        if not ENV_NAME.match(key):
            raise ld.fail(loc + ("env", key), f"'{where}.env' key {_show(key)} is not an environment variable name")
        if key in RESERVED_ENV:
            raise ld.fail(loc + ("env", key), f"'{where}.env' may not set {key}: the cockpit marks a leg's processes with it")
        if not isinstance(value, str):
            raise ld.fail(loc + ("env", key), f"'{where}.env.{key}' must be a string (quote it: \"{value}\"), "
                                              f"not {type(value).__name__}")
        if "\x00" in value:
            raise ld.fail(loc + ("env", key), f"'{where}.env.{key}' holds a NUL byte")
        env[key] = value
    return Runtime(workdir=workdir, python=python, env=env)


def _resolve_kept(ld: _Loader, p: str, base: Path, loc: tuple, what: str) -> Path:
    """A path made absolute like _resolve, but its symlinks kept (a venv's python is a symlink:
    resolved, it would be the interpreter outside the venv)."""
    real = _resolve(p, base, ld, loc, what)  # the same checks (empty, NUL, ~user)
    del real
    path = Path(os.path.expanduser(p))
    return Path(os.path.normpath(path if path.is_absolute() else base / path))
def _gpus(ld: _Loader, value: list, loc: tuple) -> tuple[int, ...]:
    """`project.gpus`, checked: a non-empty array of distinct GPU indices (as NVML numbers them)."""
    if not value or not all(_is_a(v, (int,)) for v in value):
        raise ld.fail(loc, f"'project.gpus' must be a non-empty array of GPU indices (like [0, 1, 2, 3]), "
                           f"not {_show(value)}")
    if bad := [v for v in value if not 0 <= v <= GPU_INDEX_MAX]:
        raise ld.fail(loc, f"'project.gpus' names GPU {bad[0]}: an index is between 0 and {GPU_INDEX_MAX}")
    if len(set(value)) != len(value):
        twice = next(v for v in value if value.count(v) > 1)
        raise ld.fail(loc, f"'project.gpus' names GPU {twice} twice")
    return tuple(value)


def _check_executor(ld: _Loader, name: str, loc: tuple, what: str) -> str:
    if name not in EXECUTORS:
        raise ld.fail(loc, f"'{what}' must be one of {EXECUTORS}, not {_show(name)}")
    return name


# The Slurm settings that are single tokens (a partition, a time limit, ...) hold no whitespace,
# quote, backslash, `#` or control character: each is written into an #SBATCH line as one word.
SBATCH_UNSAFE = re.compile(r"[\s'\"\\#\x00-\x1f\x7f]")
_SLURM_TIME = re.compile(r"^(\d+-)?\d+(:\d+){0,2}$|^(UNLIMITED|INFINITE)$")  # 30, 4:00:00, 1-12, 2-00:00:00
_SLURM_MEM = re.compile(r"^\d+[KMGT]?$")  # per node; a bare number is MB
# sbatch options the cockpit sets itself (by their long names: an abbreviation or a short form in
# extra_args is read as sbatch reads it, see sbatch_opts), with what each is for
COCKPIT_SBATCH = {
    **dict.fromkeys(("output", "error", "open-mode"), "the leg's log"),
    "chdir": "the legs' checkout",
    "job-name": "the name that proves a job is the leg's",
    **dict.fromkeys(("dependency", "kill-on-invalid-dep"), "the chain of legs"),
    **dict.fromkeys(("requeue", "no-requeue"), "a leg is never requeued behind your back"),
    **dict.fromkeys(("ntasks", "ntasks-per-node", "tasks-per-node"), "one torchrun per node"),
    **dict.fromkeys(("array", "wrap"), "one batch script per leg"),
    **dict.fromkeys(("parsable", "test-only", "wait", "help", "usage", "version"), "how sbatch answers the cockpit"),
    **dict.fromkeys(("cluster", "clusters"), "the cluster that squeue and scancel ask"),
    **dict.fromkeys(("uid", "gid"), "the user that proves a job is the leg's"),
}
# sbatch options a Slurm setting of the registry writes: extra_args names the setting instead
SLURM_KEY_OPTIONS = {"partition": "partition", "account": "account", "qos": "qos", "time": "time",
                     "nodes": "nodes", "gpus-per-node": "gpus_per_node", "cpus-per-task": "cpus_per_task",
                     "mem": "mem"}


def extra_args_problem(items: Sequence[str]) -> str | None:
    """Why these sbatch arguments cannot be a leg's extra_args, read as sbatch reads them (an
    abbreviation, grouped short options), or None: one the cockpit sets itself, one a setting of
    the registry writes, anything sbatch would refuse or read otherwise than written."""
    try:
        for item in items:
            sbatch_opts.word(item)  # an #SBATCH line carries it (no control character, not empty)
        options = sbatch_opts.parse(items)
    except sbatch_opts.SbatchError as e:
        return str(e)
    for opt in options:
        said = opt.written if opt.written == f"--{opt.name}" or opt.written.startswith(f"--{opt.name}=") \
            else f"{opt.written} (sbatch reads --{opt.name})"
        if opt.name in COCKPIT_SBATCH:
            return f"{said} is set by the cockpit itself ({COCKPIT_SBATCH[opt.name]})"
        if opt.name in SLURM_KEY_OPTIONS:
            return f"{said} has its own key: set {SLURM_KEY_OPTIONS[opt.name]} instead"
    return None


def _slurm(ld: _Loader, base: SlurmSettings, table: dict, loc: tuple) -> SlurmSettings:
    """`[project.slurm]` or `[experiment.slurm]` over `base`: each key given replaces the base's."""
    ld.check_table(table, "slurm", loc)
    where = ".".join(str(p) for p in loc if not isinstance(p, int))
    values: dict[str, Any] = {}
    for key, value in table.items():
        at, name = loc + (key,), f"{where}.{key}"
        if key in ("nodes", "gpus_per_node", "cpus_per_task"):
            lo, hi = {"nodes": (1, NODES_MAX), "gpus_per_node": (0, NPROC_MAX), "cpus_per_task": (1, CPUS_MAX)}[key]
            ld.check_range(value, lo, hi, at, name)
        elif key in ("extra_args", "setup"):
            if not all(isinstance(v, str) for v in value):
                raise ld.fail(at, f"'{name}' must be an array of strings")
            for v in value:
                if key == "setup" and ("\n" in v or "\x00" in v):
                    raise ld.fail(at, f"an item of '{name}' must be one line: {_show(v)}")
            if key == "extra_args" and (why := extra_args_problem(value)):
                raise ld.fail(at, f"'{name}': {why}")
            value = tuple(value)
        else:
            value = str(value) if key == "time" else value
            _sbatch_ok(ld, value, at, f"'{name}'")
            if key == "time" and not _SLURM_TIME.match(value):
                raise ld.fail(at, f"'{name}' must be a Slurm time limit (minutes, H:MM:SS, D-HH:MM:SS), "
                                  f"not {_show(table[key])}")
            if key == "mem" and not _SLURM_MEM.match(value):
                raise ld.fail(at, f"'{name}' must be a Slurm memory size (like 64G or 500M), not {_show(value)}")
        values[key] = value
    return dataclasses.replace(base, **values)


def _sbatch_ok(ld: _Loader, value: str, loc: tuple, what: str) -> None:
    """A value that an #SBATCH line can carry whole, or a located error."""
    if not value or SBATCH_UNSAFE.search(value):
        raise ld.fail(loc, f"{what} {_show(value)} cannot go on an #SBATCH line (empty, or holds spaces, quotes, "
                           "backslashes or #)")


def _check_device(ld: _Loader, device: str, loc: tuple) -> str:
    if device not in DEVICES:
        raise ld.fail(loc, f"device must be one of {DEVICES}, not {device!r}")
    return device


def _check_nproc(ld: _Loader, n: Any, loc: tuple) -> int:
    if not _is_a(n, (int,)) or not 1 <= n <= NPROC_MAX:
        raise ld.fail(loc, f"nproc_per_node must be a positive integer up to {NPROC_MAX}, not {_show(n)}")
    return n
