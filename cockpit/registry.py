"""The experiment registry: `experiments.toml` -> typed Settings, Experiment and Leg objects.

The registry is the researcher's plan written as data: where experiment dirs go, what must
never be written, and every experiment with its legs (trainer args merged over experiment and
global defaults), its baseline, its decision, and the figures of legs that ran elsewhere.

Each table of the file is one dataclass below, and each of its keys a field declared with
`schema.key`: what the file may hold there, the default, the range or choices, what it means.
The loader checks every table against those fields, then does what no declaration says (paths,
names, the grid's legs, Slurm's options). Every problem in the file is reported as one
`RegistryError` whose text is `path:line: message`, so the CLI can print it on one line and exit 2.

Layer 0: imports nothing from the cockpit but fsutil, procs, flags, names, schema, grid,
slurm_policy, vocab and figures.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import os
import re
import stat
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cockpit import fsutil, procs, slurm_policy
from cockpit.figures import Figures
from cockpit.flags import FlagDiff, diff_flags, parse_flags, render_args
from cockpit.grid import PLACEHOLDER, REGISTRY_RUNS_MAX, RUNS_MAX, expand, fill
from cockpit.grid import name_part as name_part
from cockpit.names import EXPERIMENT_FILES, LEG_FILES, REPEAT_NAME, bad_name, path_too_long, repeat_name
from cockpit.names import split_repeat as split_repeat
from cockpit.schema import Loader, RegistryError, count, cut, dotted, first, is_a, key, keys_of, show
from cockpit.slurm_policy import extra_args_problem as extra_args_problem
from cockpit.vocab import DEFAULT_TAIL

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
REPEATS_MAX = 100  # runs of one leg in a launch (names.REPEAT_NAME)
NOTIFY_TIMEOUT_MAX = 600.0
NOTIFY_FIELDS = ("event", "experiment", "leg", "dir", "log")  # `{event}`: done or failed
DEFAULT_SEED = 42  # nanochat.base_train's --seed default (tests/test_registry.py checks they agree)
_MODULE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")  # an environment variable's name
RESERVED_ENV = (procs.ENV_EXP_DIR, procs.ENV_LEG)  # the supervisor's marker on a leg's processes
_NPROC = (
    "nproc_per_node must be a positive integer up to {hi}, not {value}"  # the words of an nproc out of range
)
_DEVICE = "device must be one of {choices}, not {value}"


# ----------------------------------------------------------------------------------------------
# the schema: one dataclass per table, one field per key


@dataclass(frozen=True, kw_only=True)
class GpuIdle:
    """`[project.gpu_idle]`: when a GPU counts as idle for the preflight, and how long to wait for it."""

    max_util_pct: float = key(
        int, float, default=5.0, lo=0.0, hi=100.0, doc="utilization at most this (percent)"
    )
    max_mem_mib: float = key(
        int, float, default=1024.0, lo=0.0, hi=1e9, doc="memory in use at most this (MiB)"
    )
    wait_s: float = key(
        int, float, default=600.0, lo=0.0, hi=WAIT_S_MAX, doc="how long a leg waits for idle GPUs"
    )


@dataclass(frozen=True, kw_only=True)
class SlurmSettings:
    """`[project.slurm]`, `[experiment.slurm]`: what every Slurm job of a launch asks the scheduler for.
    An experiment's keys replace the project's one by one; slurm_policy says what each may hold."""

    partition: str | None = key(str, default=None, doc="the partition the jobs run in")
    account: str | None = key(str, default=None, doc="the account charged")
    qos: str | None = key(str, default=None, doc="the quality of service")
    time: str | None = key(
        str, int, default=None, doc="the time limit in Slurm's syntax: 30, 4:00:00, 1-00:00:00"
    )
    nodes: int = key(int, default=1, lo=1, hi=NODES_MAX, doc="nodes of each job")
    gpus_per_node: int | None = key(
        int,
        default=None,
        lo=0,
        hi=NPROC_MAX,
        doc="None: one per torchrun process (nproc_per_node); 0 for CPU legs",
    )
    cpus_per_task: int | None = key(
        int,
        default=None,
        lo=1,
        hi=CPUS_MAX,
        doc="one task per node: the CPUs of one node's torchrun and workers",
    )
    mem: str | None = key(str, default=None, doc="memory per node in Slurm's syntax: 64G")
    extra_args: tuple[str, ...] = key(
        list, default=(), items=str, doc="more sbatch arguments, one argv item each"
    )
    setup: tuple[str, ...] = key(
        list,
        default=(),
        items=str,
        doc="shell lines the job runs before srun (activate the venv, load modules)",
    )


@dataclass(frozen=True, kw_only=True)
class Settings:
    """`[project]`: where experiment dirs go, what is never written, and how a queue of legs runs."""

    name: str = key(str, doc="the project's name (default: the registry's dir's)")
    exp_root: Path = key(str, own=True, doc="where experiment dirs are created (required)")
    read_only: tuple[Path, ...] = key(
        list, default=(), own=True, doc="paths never written (a corpus, a tokenizer)"
    )
    branch: str | None = key(str, default=None, doc="the git branch the legs are meant to run from")
    tail: int = key(
        int, default=DEFAULT_TAIL, lo=1, hi=TAIL_MAX, doc="step lines in the report's tail window"
    )
    on_failure: str = key(
        str, default="stop", choices=FAILURE_POLICIES, doc="what the queue does after a failed leg"
    )
    gpu_idle: GpuIdle = key(dict, default=GpuIdle(), own=True, doc="when a GPU counts as idle")
    # run by the supervisor when a leg ends done or failed: an argv (no shell), its placeholders
    # filled (NOTIFY_FIELDS); it may fail or time out, which is noted, never fatal
    notify: tuple[str, ...] | None = key(list, default=None, own=True, doc="a command run when a leg ends")
    notify_timeout_s: float = key(
        int, float, default=10.0, lo=0.1, hi=NOTIFY_TIMEOUT_MAX, doc="how long the notify command may run"
    )
    executor: str = key(
        str, default="local", choices=EXECUTORS, doc="who runs the legs unless an experiment says otherwise"
    )
    slurm: SlurmSettings = key(dict, default=SlurmSettings(), own=True, doc="every experiment's Slurm jobs")
    max_parallel: int = key(
        int,
        default=1,
        lo=1,
        hi=PARALLEL_MAX,
        doc="legs of an experiment run side by side, unless it says otherwise (1: one at a time)",
    )
    # without NVML, legs run side by side only on GPUs named here
    gpus: tuple[int, ...] | None = key(
        list,
        default=None,
        own=True,
        doc="the GPUs (NVML indices) legs may run on "
        "(default: those CUDA_VISIBLE_DEVICES names, else every one NVML shows)",
    )


@dataclass(frozen=True, kw_only=True)
class Runtime:
    """Where and with what a leg runs: the checkout it runs in (its working directory, put first
    on PYTHONPATH), the Python whose `torchrun` runs it, and extra environment variables.
    `[defaults]` sets them; an experiment may set its own (its env is added to the defaults')."""

    workdir: Path = key(str, own=True, doc="the checkout the legs run in (default: the registry's dir)")
    python: Path | None = key(
        str,
        default=None,
        own=True,
        doc="the Python whose torchrun runs the legs (default: "
        "the cockpit's own: the torchrun beside it, else on PATH)",
    )
    env: dict[str, str] = key(dict, default={}, own=True, doc="environment variables added to the legs'")

    @property
    def torchrun(self) -> Path | None:
        """The torchrun of the configured Python: the one beside it (a venv's bin), never resolved
        through the symlink a venv's python is (that would leave the venv)."""
        return self.python.parent / "torchrun" if self.python is not None else None


@dataclass(frozen=True, kw_only=True)
class Defaults:
    """`[defaults]`: what every experiment's legs get unless the experiment or the leg says otherwise."""

    module: str = key(str, default="nanochat.base_train", doc="the trainer module torchrun runs (-m)")
    nproc_per_node: int = key(
        int, default=1, lo=1, hi=NPROC_MAX, message=_NPROC, doc="torchrun processes per node"
    )
    device: str = key(
        str, default="cuda", choices=DEVICES, message=_DEVICE, doc="what the legs run on (cpu: no GPU)"
    )
    args: dict[str, Any] = key(
        dict, default={}, own=True, doc="trainer args of every leg (flag name without --)"
    )
    runtime: Runtime = key(flat=Runtime, doc="the legs' checkout, Python and environment")
    arg_lines: dict[str, int | None] = field(
        default_factory=dict, compare=False, repr=False
    )  # where each of args is


@dataclass(frozen=True, kw_only=True)
class Prepare:
    """`[experiment.prepare]`: a step a launch runs once before an experiment's first leg, when the
    path it creates is missing (a corpus, a tokenizer): an argv (no shell) in the legs' checkout,
    with their env."""

    argv: tuple[str, ...] = key(list, own=True, doc="the command ({python}: the legs' Python; {exp_root})")
    creates: tuple[Path, ...] = key(
        str, list, own=True, doc="paths inside exp_root: it runs when one is missing"
    )
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
        return (
            list(self.creates) if self.unfinished() else [p for p in self.creates if not os.path.lexists(p)]
        )

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


@dataclass(frozen=True, kw_only=True)
class Recorded:
    """`[experiment.leg.recorded]`: figures of a leg that ran elsewhere (copied from a report), not
    measured here. Its figure keys sit in the table itself: those `Figures` declares as keys (the
    metrics of vocab.METRICS, in that order)."""

    figures: Figures = key(flat=Figures, default=Figures(), doc="the figures of the run")
    dir: str | None = key(str, default=None, doc="the dir it ran in")
    source: str | None = key(str, default=None, doc="where the figures come from")

    @classmethod
    def of(cls, table: Mapping[str, Any]) -> Recorded:
        """From its keys (a table the loader read, or `as_table`'s); any other key left out."""
        keys = keys_of(Recorded)
        figures = {k: v for k, v in table.items() if k in keys and k not in ("dir", "source")}
        return cls(figures=Figures(**figures), dir=table.get("dir"), source=table.get("source"))

    def as_table(self) -> dict[str, Any]:
        """Its keys, as the registry's table names them, each with its value (None: left out)."""
        keys = keys_of(Recorded)
        figures = {k: v for k, v in dataclasses.asdict(self.figures).items() if k in keys}
        return {**figures, "dir": self.dir, "source": self.source}


@dataclass(frozen=True, kw_only=True)
class Leg:
    """`[[experiment.leg]]`, or one leg of the experiment's grid (grid.py)."""

    name: str = key(str, own=True, doc="its runs' logs and states are named after it")
    description: str | None = key(str, default=None, doc="what it tries, in a line")
    nproc_per_node: int = key(int, lo=1, hi=NPROC_MAX, message=_NPROC, doc="torchrun processes per node")
    repeats: int = key(
        int,
        default=1,
        lo=1,
        hi=REPEATS_MAX,
        doc="runs of the leg in one launch: run i is <leg>.r<i>, its --seed the base seed + i",
    )
    args: dict[str, Any] = key(
        dict, own=True, doc="merged: defaults < experiment < leg, in that insertion order"
    )
    recorded: Recorded | None = key(dict, default=None, own=True, doc="the figures of a run made elsewhere")
    experiment: str
    module: str
    device: str
    line: int | None
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

    def argv(
        self, exp_dir: Path | str | None = None, torchrun: str = "torchrun", repeat: int | None = None
    ) -> list[str]:
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

    def runs(
        self, exp_dir: Path | str | None = None, torchrun: str = "torchrun"
    ) -> list[tuple[str, int | None, list[str]]]:
        """(run name, repeat index or None, argv) of each run of the leg in a launch."""
        if self.repeats == 1:
            return [(self.name, None, self.argv(exp_dir, torchrun))]
        return [(repeat_name(self.name, i), i, self.argv(exp_dir, torchrun, i)) for i in range(self.repeats)]


@dataclass(frozen=True, kw_only=True)
class Experiment:
    """`[[experiment]]`: legs that answer one question, compared with a baseline."""

    id: str = key(str, own=True, doc="its dirs are <stamp>_<id>")
    title: str | None = key(str, default=None, doc="what it asks, in a line")
    device: str = key(
        str, choices=DEVICES, message=_DEVICE, doc="what its legs run on (default: [defaults]')"
    )
    nproc_per_node: int = key(
        int, lo=1, hi=NPROC_MAX, message=_NPROC, doc="torchrun processes per node of its legs"
    )
    baseline: str | None = key(str, default=None, doc="a leg of this experiment, or <experiment>/<leg>")
    decision: str | None = key(str, default=None, doc="what was decided from its figures")
    hypothesis: str | None = key(str, default=None, doc="what it expects")
    notes: tuple[str, ...] = key(list, default=(), items=str, doc="lines the resume guide shows")
    repeats: int = key(
        int, default=1, lo=1, hi=REPEATS_MAX, doc="runs of each leg in a launch, unless the leg says"
    )
    args: dict[str, Any] = key(dict, default={}, own=True, doc="trainer args of its legs, over [defaults]'")
    legs: tuple[Leg, ...] = key(list, toml="leg", default=(), own=True, doc="its hand-written legs")
    grid: dict[str, Any] | None = key(
        dict, default=None, own=True, doc="a sweep: a leg per combination (grid.py)"
    )
    runtime: Runtime | None = key(flat=Runtime, default=None, doc="where and with what its legs run")
    prepare: Prepare | None = key(dict, default=None, own=True, doc="run before its first leg when needed")
    executor: str = key(
        str, default="local", choices=EXECUTORS, doc="who runs its legs (default: the project's)"
    )
    slurm: SlurmSettings = key(
        dict, default=SlurmSettings(), own=True, doc="the project's, each key given replaced"
    )
    max_parallel: int = key(
        int,
        default=1,
        lo=1,
        hi=PARALLEL_MAX,
        doc="legs run side by side on disjoint GPU sets (local executor), at most this many",
    )
    line: int | None = None
    arg_lines: dict[str, int | None] = field(
        default_factory=dict, compare=False, repr=False
    )  # where each of args is

    def leg(self, name: str) -> Leg | None:
        return next((leg for leg in self.legs if leg.name == name), None)

    @property
    def gpus_needed(self) -> int:
        return 0 if self.device == "cpu" else self.nproc_per_node


@dataclass(frozen=True, kw_only=True)
class Registry:
    """The whole file: `[project]`, `[defaults]` and every `[[experiment]]`."""

    settings: Settings = key(dict, toml="project", own=True, doc="where dirs go and how legs run")
    defaults: Defaults = key(dict, own=True, doc="what every leg gets unless its experiment says otherwise")
    experiments: tuple[Experiment, ...] = key(
        list, toml="experiment", own=True, doc="the experiments, in order"
    )
    path: Path
    raw: dict[str, Any] = field(repr=False)  # the file as parsed: the plan's snapshot

    @property
    def runtime(self) -> Runtime:
        """[defaults]' workdir, python and env (an experiment may differ)."""
        return self.defaults.runtime

    @property
    def workdir(self) -> Path:
        """The checkout the legs run in by default (`[defaults] workdir`, else the registry's dir)."""
        return self.runtime.workdir

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
        raise RegistryError(
            DEFAULT_REGISTRY,
            None,
            "registry file not found: the current directory no longer "
            "exists; give --registry PATH or set $" + REGISTRY_ENV,
        ) from None
    for d in (here, *here.parents):
        if (d / DEFAULT_REGISTRY).is_file():
            return Path(DEFAULT_REGISTRY) if start is None and d == here else d / DEFAULT_REGISTRY
    raise RegistryError(
        DEFAULT_REGISTRY,
        None,
        f"registry file not found in {cut(str(here))} or any directory "
        f"above it; give --registry PATH or set ${REGISTRY_ENV}",
    )


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
    ld = Loader(path, text)
    ld.check_table(raw, Registry, ())
    base = path.resolve().parent
    settings = _settings(ld, raw.get("project", {}), base)
    defaults = _defaults(ld, raw.get("defaults", {}), base)
    experiments: list[Experiment] = []
    seen_ids: dict[str, int | None] = {}
    total_runs = 0
    for i, table in enumerate(raw.get("experiment", [])):
        exp = _experiment(ld, table, ("experiment", i), settings, defaults, base, seen_ids)
        total_runs += sum(leg.repeats for leg in exp.legs)
        if total_runs > REGISTRY_RUNS_MAX:
            raise ld.fail(
                ("experiment", i),
                f"the registry has {count(total_runs)} runs (legs x repeats) up to "
                f"experiment '{exp.id}': it holds at most {count(REGISTRY_RUNS_MAX)}",
            )
        experiments.append(exp)

    registry = Registry(
        path=path, settings=settings, defaults=defaults, experiments=tuple(experiments), raw=raw
    )
    for i, exp in enumerate(registry.experiments):
        if exp.baseline and registry.find_leg(exp.baseline, exp.id) is None:
            raise ld.fail(
                ("experiment", i, "baseline"),
                f"baseline '{exp.baseline}' of '{exp.id}' names no leg"
                + (f" (legs: {first(leg.name for leg in exp.legs)})" if exp.legs else ""),
            )
    return registry


def _settings(ld: Loader, proj: dict, base: Path) -> Settings:
    """`[project]`: exp_root resolved and able to hold dirs, outside every read-only path."""
    loc = ("project",)
    ld.check_table(proj, Settings, loc)
    if "exp_root" not in proj:
        raise ld.fail(loc, "missing key 'project.exp_root' (where experiment dirs are created)")
    given = ld.read(proj, Settings, loc, "project")
    exp_root = _resolve(proj["exp_root"], base, ld, loc + ("exp_root",), "project.exp_root")
    if why := _root_problem(exp_root):
        raise ld.fail(loc + ("exp_root",), f"exp_root '{cut(str(exp_root))}' {why}")
    read_only: list[Path] = []
    for i, p in enumerate(proj.get("read_only", [])):
        if not isinstance(p, str):
            raise ld.fail(loc + ("read_only",), f"'project.read_only' item {i} must be a string path")
        read_only.append(_resolve(p, base, ld, loc + ("read_only",), f"project.read_only item {i}"))
    for ro in read_only:
        if exp_root == ro or ro in exp_root.parents:
            raise ld.fail(
                loc + ("exp_root",),
                f"exp_root '{exp_root}' lies inside read-only path '{ro}': experiments could never be written",
            )
    idle = proj.get("gpu_idle", {})
    ld.check_table(idle, GpuIdle, loc + ("gpu_idle",))
    return Settings(
        **{"name": base.name, **given},
        exp_root=exp_root,
        read_only=tuple(read_only),
        gpu_idle=GpuIdle(**ld.read(idle, GpuIdle, loc + ("gpu_idle",), "project.gpu_idle")),
        notify=_notify(ld, proj, base) if "notify" in proj else None,
        slurm=_slurm(ld, SlurmSettings(), proj.get("slurm", {}), loc + ("slurm",)),
        gpus=_gpus(ld, proj["gpus"], loc + ("gpus",)) if "gpus" in proj else None,
    )


def _defaults(ld: Loader, table: dict, base: Path) -> Defaults:
    """`[defaults]`: trainer args checked, the module a module name, the runtime's paths there."""
    loc = ("defaults",)
    ld.check_table(table, Defaults, loc)
    args = ld.check_args(table.get("args", {}), loc + ("args",))
    if not _MODULE.match(module := table.get("module", "nanochat.base_train")):
        raise ld.fail(
            loc + ("module",),
            f"'defaults.module' must be a Python module name (like nanochat.base_train), not {show(module)}",
        )
    return Defaults(
        **ld.read(table, Defaults, loc, "defaults"),
        args=args,
        arg_lines=ld.arg_lines(args, loc + ("args",)),
        runtime=_runtime(ld, table, loc, base, Runtime(workdir=base)),
    )


def _experiment(
    ld: Loader,
    table: Any,
    loc: tuple,
    settings: Settings,
    defaults: Defaults,
    base: Path,
    seen_ids: dict[str, int | None],
) -> Experiment:
    """An `[[experiment]]` with its legs (the hand-written ones, and its grid's where the grid stands)."""
    if not isinstance(table, dict):
        raise ld.fail(loc, "each [[experiment]] must be a table")
    ld.check_table(table, Experiment, loc)
    exp_id = table.get("id")
    if exp_id is None:
        raise ld.fail(loc, "experiment without 'id'")
    if why := bad_name(exp_id, EXPERIMENT_FILES):
        raise ld.fail(loc + ("id",), f"experiment id {show(exp_id)} {why}")
    if exp_id in seen_ids:
        raise ld.fail(loc + ("id",), f"duplicate experiment id '{exp_id}' (first at line {seen_ids[exp_id]})")
    seen_ids[exp_id] = ld.line(loc + ("id",))
    given = ld.read(table, Experiment, loc, exp_id)
    exp_root = settings.exp_root
    args = ld.check_args(table.get("args", {}), loc + ("args",))
    exp = Experiment(
        **{
            "device": defaults.device,
            "nproc_per_node": defaults.nproc_per_node,
            "executor": settings.executor,
            "max_parallel": settings.max_parallel,
            **given,
        },
        id=exp_id,
        line=ld.line(loc),
        runtime=_runtime(ld, table, loc, base, defaults.runtime),
        args=_roots({**defaults.args, **args}, exp_root),
        arg_lines={**defaults.arg_lines, **ld.arg_lines(args, loc + ("args",))},
        prepare=_prepare(ld, table["prepare"], loc + ("prepare",), base, settings)
        if "prepare" in table
        else None,
    )
    legs: list[Leg] = []
    seen: dict[str, int | None] = {}  # leg name -> its line
    runs = 0  # the experiment's so far (legs x repeats)
    for j, leg in enumerate(table.get("leg", [])):
        legs.append(_leg(ld, leg, loc + ("leg", j), exp, defaults.module, exp_root, seen, runs))
        runs += legs[-1].repeats
    if "grid" in table:
        # the grid's legs stand where the grid stands among the hand-written ones
        at = ld.line(loc + ("grid",)) or 0
        cut_at = sum(1 for leg in legs if (leg.line or 0) < at)
        legs[cut_at:cut_at] = _grid_legs(
            ld, table["grid"], loc + ("grid",), exp, defaults.module, exp_root, seen, runs
        )
    slurm = _slurm(ld, settings.slurm, table.get("slurm", {}), loc + ("slurm",))
    return dataclasses.replace(exp, legs=tuple(legs), slurm=slurm)


def _leg(
    ld: Loader,
    table: Any,
    loc: tuple,
    exp: Experiment,
    module: str,
    exp_root: Path,
    seen: dict[str, int | None],
    runs: int,
) -> Leg:
    """An `[[experiment.leg]]`: a name that makes good file names and no other leg has, its args
    over the experiment's, and the runs it adds to the `runs` before it bounded (grid.RUNS_MAX)."""
    j = loc[-1]
    if not isinstance(table, dict):
        raise ld.fail(loc, "each [[experiment.leg]] must be a table")
    ld.check_table(table, Leg, loc)
    name = table.get("name")
    if name is None:
        raise ld.fail(loc, f"leg {j} of '{exp.id}' has no 'name'")
    given = {
        "nproc_per_node": exp.nproc_per_node,
        "repeats": exp.repeats,
        **ld.read(table, Leg, loc, f"{exp.id}/{name}"),
    }
    repeats = given["repeats"]
    if runs + repeats > RUNS_MAX:
        raise ld.fail(
            loc,
            f"'{exp.id}' has {count(runs + repeats)} runs (legs x repeats) up to its leg {show(name)}: "
            f"an experiment holds at most {count(RUNS_MAX)}",
        )
    if why := bad_name(name, LEG_FILES):
        raise ld.fail(loc + ("name",), f"leg name {show(name)} in '{exp.id}' {why}")
    if REPEAT_NAME.match(name):
        raise ld.fail(
            loc + ("name",),
            f"leg name {show(name)} in '{exp.id}' ends like a repeat's run "
            f"name (.r<N>, as in {repeat_name('dense', 0)}): choose another",
        )
    longest = repeat_name(name, repeats - 1) if repeats > 1 else name
    if longest != name and (why := bad_name(longest, LEG_FILES)):
        raise ld.fail(loc + ("repeats",), f"run name {show(longest)} of '{exp.id}/{name}' {why}")
    if why := path_too_long(exp_root, exp.id, longest):
        raise ld.fail(loc + ("name",), why)
    if name == PREPARE and exp.prepare is not None:
        raise ld.fail(
            loc + ("name",),
            f"leg name '{PREPARE}' in '{exp.id}' is its prepare step's (prepare.log): name the leg otherwise",
        )
    if name in seen:
        raise ld.fail(
            loc + ("name",), f"duplicate leg name '{name}' in '{exp.id}' (first at line {seen[name]})"
        )
    seen[name] = ld.line(loc + ("name",))
    recorded = None
    if "recorded" in table:
        rloc = loc + ("recorded",)
        ld.check_table(table["recorded"], Recorded, rloc)
        recorded = Recorded.of(ld.read(table["recorded"], Recorded, rloc, f"{exp.id}/{name} recorded"))
    args = ld.check_args(table.get("args", {}), loc + ("args",))
    return Leg(
        **given,
        name=name,
        experiment=exp.id,
        module=module,
        device=exp.device,
        args=_roots({**exp.args, **args}, exp_root),
        recorded=recorded,
        line=ld.line(loc),
        runtime=exp.runtime,
        arg_lines={**exp.arg_lines, **ld.arg_lines(args, loc + ("args",))},
    )


def _grid_legs(
    ld: Loader,
    grid: dict,
    loc: tuple,
    exp: Experiment,
    module: str,
    exp_root: Path,
    seen: dict[str, int | None],
    runs: int,
) -> list[Leg]:
    """The legs of an experiment's `[experiment.grid]` (grid.expand), each run `exp.repeats` times."""
    legs = []
    for name, args, desc, values in expand(ld, grid, loc, exp.id, exp.args, seen, runs, exp.repeats):
        if why := path_too_long(
            exp_root, exp.id, repeat_name(name, exp.repeats - 1) if exp.repeats > 1 else name
        ):
            raise ld.fail(loc + ("name",), why)
        lines = {
            **exp.arg_lines,
            **ld.arg_lines(grid.get("args", {}), loc + ("args",)),
            **{k: ld.line(loc + (k,)) for k in values},
        }
        legs.append(
            Leg(
                name=name,
                experiment=exp.id,
                module=module,
                device=exp.device,
                nproc_per_node=exp.nproc_per_node,
                args=_roots(args, exp_root),
                description=desc,
                line=ld.line(loc),
                grid=values,
                runtime=exp.runtime,
                repeats=exp.repeats,
                arg_lines=lines,
            )
        )
    return legs


def _resolve(p: str, base: Path, ld: Loader | None = None, loc: tuple = (), what: str = "path") -> Path:
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
        raise bad(
            f"names the home of user '{user}', who does not exist here"
            if user
            else "needs a HOME to expand '~'"
        )
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


def _notify(ld: Loader, proj: dict, base: Path) -> tuple[str, ...]:
    """`project.notify`, checked: a non-empty array of strings, placeholders only NOTIFY_FIELDS; a
    program given as a path (it has a '/') is the registry dir's and must be an executable file.
    A bare name is looked up on PATH when it runs (PATH differs from machine to machine)."""
    loc = ("project", "notify")
    argv = proj["notify"]
    if not argv or not all(isinstance(a, str) for a in argv):
        raise ld.fail(
            loc,
            "'project.notify' must be a non-empty array of strings: a command and its arguments "
            '(no shell), e.g. ["notify-send", "{experiment}/{leg}: {event}"]',
        )
    if not argv[0].strip():
        raise ld.fail(loc, "'project.notify' names no program (its first item is empty)")
    for a in argv:
        if "\x00" in a:
            raise ld.fail(loc, "'project.notify' holds a NUL byte (no command line can)")
        if unknown := [n for n in PLACEHOLDER.findall(a) if n not in NOTIFY_FIELDS]:
            raise ld.fail(
                loc,
                f"'project.notify' names {{{unknown[0]}}}; it knows "
                + ", ".join(f"{{{f}}}" for f in NOTIFY_FIELDS),
            )
    program = argv[0]
    if "/" in program:
        path = _resolve_kept(ld, program, base, loc, "project.notify")
        if not (_is_file(_stat(ld, path, loc, "project.notify")) and os.access(path, os.X_OK)):
            raise ld.fail(loc, f"'project.notify' program {cut(str(path))} is not an executable file")
        program = str(path)
    return (program, *argv[1:])


def fill_notify(argv: tuple[str, ...] | list[str], fields: dict[str, str]) -> list[str]:
    """The notify command for one leg: each `{field}` replaced (NOTIFY_FIELDS), nothing else."""
    return [fill(a, fields) for a in argv]


def _roots(args: dict, exp_root: Path) -> dict:
    """Trainer args with `{exp_root}` filled in their string values (a corpus a prepare made there)."""
    return {
        k: v.replace(EXP_ROOT_PLACEHOLDER, str(exp_root)) if isinstance(v, str) else v
        for k, v in args.items()
    }


def _prepare(ld: Loader, table: Any, loc: tuple, base: Path, settings: Settings) -> Prepare:
    """An experiment's prepare entry, checked: an argv of strings whose placeholders are `{python}`
    and `{exp_root}`, and the path it creates, inside exp_root (nothing is written elsewhere) and
    outside every read-only path."""
    exp_root = settings.exp_root
    ld.check_table(table, Prepare, loc)
    argv = table.get("argv")
    if not argv or not all(isinstance(a, str) for a in argv) or not argv[0].strip():
        raise ld.fail(
            loc + ("argv",),
            "'prepare.argv' must be a non-empty array of strings: a command and its "
            'arguments (no shell), e.g. ["{python}", "-m", "nanochat.smoke_data", '
            '"--out", "{exp_root}/_data/smoke"]',
        )
    known = (PYTHON_PLACEHOLDER[1:-1], EXP_ROOT_PLACEHOLDER[1:-1])
    for a in argv:
        if "\x00" in a:
            raise ld.fail(loc + ("argv",), "'prepare.argv' holds a NUL byte (no command line can)")
        if unknown := [n for n in PLACEHOLDER.findall(a) if n not in known]:
            raise ld.fail(
                loc + ("argv",),
                f"'prepare.argv' names {{{unknown[0]}}}; it knows {{python}} and {{exp_root}}",
            )
    if "creates" not in table:
        raise ld.fail(
            loc, "a prepare entry needs 'creates': the paths it makes (it runs when one is missing)"
        )
    given = table["creates"] if isinstance(table["creates"], list) else [table["creates"]]
    if not given or not all(isinstance(c, str) for c in given):
        raise ld.fail(loc + ("creates",), "'prepare.creates' must be a path or a non-empty array of paths")
    creates = []
    for c in given:
        path = _resolve(
            c.replace(EXP_ROOT_PLACEHOLDER, str(exp_root)), base, ld, loc + ("creates",), "prepare.creates"
        )
        if not (path != exp_root and exp_root in path.parents):
            raise ld.fail(
                loc + ("creates",),
                f"'prepare.creates' {cut(str(path))} must lie inside exp_root "
                f"{cut(str(exp_root))} (the cockpit writes nowhere else): use "
                "{exp_root}/...",
            )
        for ro in settings.read_only:
            if path == ro or ro in path.parents:
                raise ld.fail(
                    loc + ("creates",), f"'prepare.creates' {cut(str(path))} lies inside read-only path {ro}"
                )
        creates.append(path)
    return Prepare(
        argv=tuple(a.replace(EXP_ROOT_PLACEHOLDER, str(exp_root)) for a in argv),
        creates=tuple(creates),
        line=ld.line(loc),
        mark=prepare_mark(exp_root, creates),
    )


def prepare_mark(exp_root: Path, creates: list[Path] | tuple[Path, ...]) -> Path:
    """`<exp_root>/.cockpit-prepare/<key>.running`, the key naming the set of paths a prepare step
    creates (two experiments that prepare the same paths share it)."""
    key = hashlib.sha256("\0".join(sorted(map(str, creates))).encode("utf-8", "surrogateescape")).hexdigest()[
        :16
    ]
    return exp_root / PREPARE_MARK_DIR / f"{key}.running"


def _runtime(ld: Loader, table: dict, loc: tuple, base: Path, parent: Runtime) -> Runtime:
    """The workdir, python and env a table sets (over `parent`'s), checked now: the workdir is a
    directory, the python an executable file, each env key a variable name and each value a
    string. Relative paths are the registry's dir's; `~` is expanded; symlinks are kept (a venv's
    python is one)."""
    where = ".".join(str(p) for p in loc if not isinstance(p, int)) or "defaults"
    workdir, python = parent.workdir, parent.python
    if "workdir" in table:
        workdir = _resolve_kept(ld, table["workdir"], base, loc + ("workdir",), f"{where}.workdir")
        if (st := _stat(ld, workdir, loc + ("workdir",), f"{where}.workdir")) is None:
            raise ld.fail(loc + ("workdir",), f"'{where}.workdir' {cut(str(workdir))} does not exist")
        if not stat.S_ISDIR(st.st_mode):
            raise ld.fail(loc + ("workdir",), f"'{where}.workdir' {cut(str(workdir))} is not a directory")
    if "python" in table:
        python = _resolve_kept(ld, table["python"], base, loc + ("python",), f"{where}.python")
        if (st := _stat(ld, python, loc + ("python",), f"{where}.python")) is None:
            raise ld.fail(loc + ("python",), f"'{where}.python' {cut(str(python))} does not exist")
        if not _is_file(st) or not os.access(python, os.X_OK):
            raise ld.fail(loc + ("python",), f"'{where}.python' {cut(str(python))} is not an executable file")
    env = dict(parent.env)
    for name, value in table.get("env", {}).items():
        if not ENV_NAME.match(name):
            raise ld.fail(
                loc + ("env", name), f"'{where}.env' key {show(name)} is not an environment variable name"
            )
        if name in RESERVED_ENV:
            raise ld.fail(
                loc + ("env", name),
                f"'{where}.env' may not set {name}: the cockpit marks a leg's processes with it",
            )
        if not isinstance(value, str):
            raise ld.fail(
                loc + ("env", name),
                f"'{where}.env.{name}' must be a string (quote it: \"{value}\"), not {type(value).__name__}",
            )
        if "\x00" in value:
            raise ld.fail(loc + ("env", name), f"'{where}.env.{name}' holds a NUL byte")
        env[name] = value
    return Runtime(workdir=workdir, python=python, env=env)


def _resolve_kept(ld: Loader, p: str, base: Path, loc: tuple, what: str) -> Path:
    """A path made absolute like _resolve, but its symlinks kept (a venv's python is a symlink:
    resolved, it would be the interpreter outside the venv)."""
    real = _resolve(p, base, ld, loc, what)  # the same checks (empty, NUL, ~user)
    del real
    path = Path(os.path.expanduser(p))
    return Path(os.path.normpath(path if path.is_absolute() else base / path))


def _stat(ld: Loader, path: Path, loc: tuple, what: str) -> os.stat_result | None:
    """A registry path's stat (its links followed), None when nothing is there, or a located error
    when the system cannot say (a name longer than the filesystem takes, a dir it may not search)."""
    try:
        return os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as e:
        if e.errno == errno.ELOOP:  # a loop of links leads nowhere
            return None
        raise ld.fail(loc, f"'{what}' {cut(str(path))} cannot be looked at: {e.strerror}") from None


def _is_file(st: os.stat_result | None) -> bool:
    return st is not None and stat.S_ISREG(st.st_mode)


def _gpus(ld: Loader, value: list, loc: tuple) -> tuple[int, ...]:
    """`project.gpus`, checked: a non-empty array of distinct GPU indices (as NVML numbers them)."""
    if not value or not all(is_a(v, (int,)) for v in value):
        raise ld.fail(
            loc,
            f"'project.gpus' must be a non-empty array of GPU indices (like [0, 1, 2, 3]), not {show(value)}",
        )
    if bad := [v for v in value if not 0 <= v <= GPU_INDEX_MAX]:
        raise ld.fail(loc, f"'project.gpus' names GPU {bad[0]}: an index is between 0 and {GPU_INDEX_MAX}")
    if len(set(value)) != len(value):
        twice = next(v for v in value if value.count(v) > 1)
        raise ld.fail(loc, f"'project.gpus' names GPU {twice} twice")
    return tuple(value)


def _slurm(ld: Loader, base: SlurmSettings, table: dict, loc: tuple) -> SlurmSettings:
    """`[project.slurm]` or `[experiment.slurm]` over `base`: each key given replaces the base's."""
    where = dotted(loc)
    ld.check_table(table, SlurmSettings, loc)
    given = ld.read(table, SlurmSettings, loc, where)
    for name, value in table.items():
        if why := slurm_policy.setting_problem(name, value, f"{where}.{name}"):
            raise ld.fail(loc + (name,), why)
    if "time" in given:
        given["time"] = str(given["time"])  # minutes, as sbatch reads a bare number
    return dataclasses.replace(base, **given)
