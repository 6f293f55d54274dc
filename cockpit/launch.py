"""Launching and stopping: plan a launch, refuse what must not run, start it through an executor, stop it.

A launch of an experiment (`cockpit launch EXP`, or `l` in the cockpit) goes:

1. `plan_launch`: which legs run and which are skipped (done here, or recorded in the registry,
   unless re-run is asked). Reads only.
2. `launch_refusals`: every reason the machine or the paths refuse it now (no torchrun, a trainer
   flag the trainer module does not take (`check_flags`, with file:line and a did-you-mean), too
   few GPUs, a path outside exp_root or inside a read-only path, an exp_root that cannot be
   written, the experiment already running). `dry_run_text` lists them with the exact commands.
3. `start`: under the experiment's queue lock, a fresh dir `<exp_root>/<stamp>_<experiment>/`
   (never an existing one), `plan.json` with every leg's exact argv and the git provenance, then
   the experiment's executor: `local`, a supervisor here, detached (or in this process,
   `foreground`); or `slurm`, a chain of batch jobs (see executors/).

`stop` stops one leg or a dir's whole queue through the dir's executor: its live supervisor, or
(the supervisor was killed) the leg's processes here, only when proven the leg's; or scancel.
Nothing in the user's checkout is touched: git is only read.

Layer 3: imports the layers below (registry, checkout, fsutil, safetext, vocab, gpus, plan, expdir, provenance,
trainer_flags, baseline, executors).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import re
import shlex
import shutil
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from cockpit import baseline, expdir, flags, fsutil, gpus, provenance, safetext, trainer_flags
from cockpit import registry as reg
from cockpit.checkout import git_info
from cockpit.executors import EXECUTORS, Executor, slurm
from cockpit.executors.resubmit import resubmit as resubmit_legs
from cockpit.expdir import (
    STAMP_FORMAT,
    STATE_DIR,
    STOP_CAME_LATE,
    ExpDir,
    RunError,
    describe,
    discover,
    done_legs,
    lock_path,
    now_iso,
    open_dir,
    stop_request_path,
    try_lock,
)
from cockpit.plan import STOP_GRACE_S, SUPERVISOR, FlagsChecked, Notify, Plan, PlanRun, RegistrySnapshot, Seq
from cockpit.plan import Prepare as PlanPrepare
from cockpit.scheduler import SlurmError
from cockpit.vocab import Status

# Args that name trainer inputs: they may point into a read-only path (read, never written).
INPUT_ARGS = ("data-dir", "tokenizer-dir", "data", "tokenizer")


@dataclass
class LaunchPlan:
    experiment: reg.Experiment
    legs: list[reg.Leg]  # to run, in order
    skipped: list[tuple[str, str]]  # (leg, why)
    torchrun: str
    cwd: Path  # the checkout the legs run in (the registry's dir, or the experiment's workdir)
    runtime: reg.Runtime | None = None  # the experiment's workdir, python and env

    @property
    def executor(self) -> str:
        """Who runs the legs: `local` (a supervisor here) or `slurm` (a chain of batch jobs)."""
        return self.experiment.executor


def runtime_of(registry: reg.Registry, exp: reg.Experiment) -> reg.Runtime:
    """Where and with what an experiment's legs run (the registry's defaults when it says nothing)."""
    return exp.runtime or registry.runtime or reg.Runtime(workdir=registry.path.resolve().parent)


def torchrun_for(runtime: reg.Runtime) -> str:
    """The torchrun that runs the legs: beside the configured python, else beside this Python or on PATH."""
    if runtime.torchrun is not None:
        return str(runtime.torchrun)
    return find_torchrun() or "torchrun"


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
        if leg.name == reg.PREPARE and exp.prepare is not None:
            raise RunError(f"leg name '{reg.PREPARE}' is reserved for the experiment's prepare step")

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
    runtime = runtime_of(registry, exp)
    return LaunchPlan(exp, run, skipped, torchrun_for(runtime), runtime.workdir, runtime)


def check_gpus(legs: list[reg.Leg], named: tuple[int, ...] | None = None) -> str | None:
    """Why these legs cannot run on this machine's GPUs, or None. CPU legs need none. `named`:
    the registry's gpus, the only ones legs run on: each must be one NVML shows (when it can
    say), and together enough for the biggest leg."""
    need = max((leg.nproc_per_node for leg in legs if leg.device == "cuda"), default=0)
    if need == 0:
        return None
    visible, why = gpus.visible_gpus()
    if named:
        if visible is not None and (unseen := [i for i in named if i >= visible]):
            return f"the registry's gpus name GPU {unseen[0]}, and NVML shows {visible} (0-{visible - 1})"
        if len(named) < need:
            return f"needs {need} GPUs, the registry's gpus name {len(named)}: {gpus.fmt_set(named)}"
        if visible is None:
            return None  # no NVML: the named GPUs are taken as they are (the supervisor says so)
    return gpus.shortfall(need, visible, why)


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
            text = value.replace(flags.EXP_DIR_PLACEHOLDER, str(exp_dir))
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


def running_elsewhere(exp_root: Path | str, experiment: str, but: Path | None = None) -> ExpDir | None:
    """A dir of this experiment with a live queue or a live leg, if any (`but` that dir)."""
    for d in discover(exp_root):
        if (
            d.experiment == experiment
            and (d.supervisor_alive or d.active)
            and (but is None or d.path.resolve() != but.resolve())
        ):
            return d
    return None


def experiment_lock(exp_root: Path, experiment: str) -> int:
    """Take the experiment's queue lock (non-blocking) and return its fd, or raise RunError.

    launch takes it before creating the dir and hands the fd to the supervisor, which holds it
    for the queue's lifetime: two concurrent launches of one experiment cannot both pass.
    """
    return try_lock(
        lock_path(exp_root, experiment),
        f"'{experiment}' is being launched or run by another cockpit; stop it first",
        root=exp_root,
    )


def fresh_dir_name(exp_root: Path | str, experiment_id: str) -> Path:
    """The path a launch made now would create (nothing is created)."""
    return Path(exp_root) / f"{dt.datetime.now().strftime(STAMP_FORMAT)}_{experiment_id}"


def new_exp_dir(exp_root: Path | str, experiment_id: str, preferred: Path | None = None) -> Path:
    """Create `<exp_root>/<YYYYmmdd_HHMMSS>_<experiment>/`: always a new dir, never an existing one.

    mkdir is atomic, so two launches in the same second cannot share a dir: the second one waits
    for the next second (the name keeps its `<stamp>_<experiment>` form). `preferred` (the
    name a confirmation showed, from fresh_dir_name) is taken when it is still free.
    """
    root = Path(exp_root)
    try:
        fsutil.make_dirs(root)
    except OSError as e:
        raise RunError(f"cannot create exp_root: {describe(e)}") from None
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


def format_command(leg: reg.Leg, exp_dir: Path | str, torchrun: str = "torchrun") -> str:
    """The leg's command, one flag per line as the resume guide's execution template writes it,
    its output going to the leg's log; a leg with repeats, one command per repeat."""
    return "\n".join(run_command(name, argv, exp_dir) for name, _, argv in leg.runs(exp_dir, torchrun))


def run_command(name: str, argv: list[str], exp_dir: Path | str) -> str:
    """One run's command (its argv, one flag per line), its output going to `<dir>/<name>.log`."""
    log = shlex.quote(str(Path(exp_dir) / f"{name}.log"))
    return " \\\n  ".join(flags.command_lines(argv)) + f" > {log} 2>&1"


def check_exp_root(exp_root: Path) -> str | None:
    """Why no experiment dir can be made under exp_root (a file there or above, a read-only
    filesystem, no permission), or None. Checks only; writes nothing."""
    if fsutil.is_dir(exp_root):
        if why := fsutil.output_problem(exp_root / ".cockpit-probe"):
            return f"exp_root {exp_root}: {why}"
        return None
    why = fsutil.output_problem(exp_root)
    return f"exp_root {exp_root} cannot be created: {why}" if why else None


@dataclass(frozen=True)
class FlagCheck:
    """The planned legs' trainer flags against the flags their trainer module takes."""

    refusals: list[str]  # one line per flag the module does not take: `file:line: exp/leg: --x ...`
    checked: bool  # False: the module could not be asked (`why`), and nothing was refused
    why: str | None = None
    command: str = ""  # what was asked

    @property
    def text(self) -> str:
        """The check in words, for a dry run or a warning."""
        if self.checked:
            return f"trainer flags checked against `{self.command}`"
        return (
            f"trainer flags not checked: {self.why} (a flag the trainer does not take fails its leg at once)"
        )

    def record(self) -> FlagsChecked:
        """What plan.json keeps of it."""
        return FlagsChecked(self.checked, self.command, self.why)


def check_flags(registry: reg.Registry, plan: LaunchPlan, write_cache: bool = False) -> FlagCheck:
    """Every trainer flag of the planned legs (a repeat's `--seed` included) that their trainer
    module does not take, asked of the module (trainer_flags.ask, run by the legs' Python in
    their checkout; cached under exp_root by the module file's hash, written only with
    `write_cache`, once a launch made its dir). A module that cannot be asked refuses nothing:
    `checked` is False, and why."""
    if not plan.legs:
        return FlagCheck([], True)
    python = (
        str(plan.runtime.python)
        if plan.runtime and plan.runtime.python
        else provenance.legs_python(plan.torchrun)
    )
    env = dict(plan.runtime.env) if plan.runtime else {}
    refusals, why, commands = [], [], []
    for module in dict.fromkeys(leg.module for leg in plan.legs):
        known = trainer_flags.ask(module, python, plan.cwd, env, registry.settings.exp_root, write_cache)
        commands.append(known.command)
        if known.flags is None:
            why.append(known.why or "no answer")
            continue
        for leg in (x for x in plan.legs if x.module == module):
            args = leg.run_args(0 if leg.repeats > 1 else None)
            for key, hint in trainer_flags.unknown(
                [k for k, v in args.items() if v is not False], known.flags
            ):
                line = leg.arg_lines.get(key) or leg.line
                where = f"{registry.path}:{line}" if line else str(registry.path)
                more = f"; did you mean --{hint}?" if hint else f" (`{known.command}` lists its flags)"
                refusals.append(
                    f"{where}: {leg.experiment}/{leg.name}: --{key} is not a flag of {module}{more}"
                )
    return FlagCheck(refusals, not why, "; ".join(why) or None, "; ".join(commands))


def launch_refusals(
    registry: reg.Registry,
    plan: LaunchPlan,
    exp_dir: Path,
    into: bool = False,
    checked: FlagCheck | None = None,
) -> list[str]:
    """Every reason a launch of `plan` into `exp_dir` would be refused now ([] when none).
    Reads only: the dry run lists these, a real launch raises the first. On Slurm the GPUs are
    the scheduler's to find (no preflight here); its commands and the batch scripts must work.
    `into`: a continuation of the existing dir `exp_dir` (its own queue may run: they join it).
    `checked`: the trainer flags' check when the caller has it (else it is made here)."""
    out = []
    runtime = plan.runtime
    if runtime is not None and runtime.torchrun is not None:
        if not (os.path.isfile(runtime.torchrun) and os.access(runtime.torchrun, os.X_OK)):
            out.append(
                f"torchrun not found beside {runtime.python} (no {runtime.torchrun}): install torch in that "
                "environment, or set python to one that has it"
            )
    elif find_torchrun() is None:
        out.append("torchrun not found next to this Python or on PATH (install the 'train' extra)")
    if plan.executor == slurm.NAME:
        try:
            chain = slurm.chain_of(plan_data(registry, plan, exp_dir), exp_dir)
        except SlurmError as e:
            out.append(f"a batch script cannot be written: {e}")
        else:
            if shutil.which("sbatch") is None:
                out.append(
                    "sbatch not found on PATH: a Slurm launch runs where sbatch, squeue and scancel work"
                )
            else:
                try:
                    out += slurm.refusals(chain)
                except SlurmError as e:
                    out.append(str(e))
    for why in (
        check_gpus(plan.legs, registry.settings.gpus) if plan.executor == "local" else None,
        check_exp_root(registry.settings.exp_root),
        check_paths(registry, plan.legs, exp_dir, plan.cwd),
    ):
        if why:
            out.append(why)
    out += (checked if checked is not None else check_flags(registry, plan)).refusals
    root = registry.settings.exp_root
    exp_id = plan.experiment.id
    if (busy := running_elsewhere(root, exp_id, exp_dir if into else None)) is not None:
        out.append(f"'{exp_id}' is running in {busy.path}; stop it first: cockpit stop {busy.path}")
    elif not into and fsutil.lock_holders(lock_path(root, exp_id)):
        out.append(f"'{exp_id}' is being launched or run by another cockpit; stop it first")
    return out


def describe_legs(registry: reg.Registry, plan: LaunchPlan, exp_dir: Path) -> list[tuple[str, str]]:
    """(leg, what it runs) for each planned leg, as a reader checks it before a launch: locally
    the torchrun command and its log; on Slurm the batch script and its sbatch command line."""
    if plan.executor != slurm.NAME:
        return [(leg.name, format_command(leg, exp_dir, plan.torchrun)) for leg in plan.legs]
    chain = slurm.chain_of(plan_data(registry, plan, exp_dir), exp_dir)
    return [
        (leg, f"{text.rstrip()}\n\n{argv}")
        for (leg, text), argv in zip(chain.scripts, chain.argv_lines(exp_dir), strict=True)
    ]


def dry_run_text(registry: reg.Registry, plan: LaunchPlan) -> str:
    """The exact commands a launch would run, as shell text; nothing is written. Whatever a
    real launch would refuse is said first. On Slurm: each leg's batch script as it would be
    saved, then the chain's sbatch command lines."""
    root = registry.settings.exp_root
    exp_dir = root / f"{dt.datetime.now().strftime(STAMP_FORMAT)}_{plan.experiment.id}"
    out = [f"# dry run: {plan.experiment.id}, nothing written"]
    out += [f"# skip {name}: {why}" for name, why in plan.skipped]
    if not plan.legs:
        out.append("# nothing to run")
        return "\n".join(out)
    checked = check_flags(registry, plan)
    refusals = launch_refusals(registry, plan, exp_dir, checked=checked)
    for why in refusals:
        out.append(f"# a real launch would be refused here: {why}")
    out.append(f"# {checked.text}")
    out.append(
        f"# baseline (pinned in plan.json at launch): {baseline.pin_text(baseline.pin(registry, plan.experiment, plan.legs))}"
    )
    if plan.runtime is not None and plan.runtime.python is not None:
        out.append(f"# python: {plan.runtime.python} (its torchrun runs the legs)")
    out.append(f"cd {shlex.quote(str(plan.cwd))}")
    out += [f"export {k}={shlex.quote(v)}" for k, v in (plan.runtime.env if plan.runtime else {}).items()]
    out += [f"EXP_DIR={shlex.quote(str(exp_dir))}", 'mkdir -p "$EXP_DIR/ckpt_root"']
    if plan.executor == slurm.NAME:
        if registry.settings.notify:
            out.append(
                "# notify: not run for Slurm legs (the scheduler runs them; no supervisor sees them end)"
            )
        try:
            out += ['mkdir -p "$EXP_DIR/slurm"', *slurm.dry_run(plan_data(registry, plan, exp_dir), exp_dir)]
        except SlurmError:
            pass  # said above, as a refusal
        return "\n".join(out)
    if (n := plan.experiment.max_parallel) > 1 and len(plan.legs) > 1:
        named = f" of {gpus.fmt_set(registry.settings.gpus)}" if registry.settings.gpus else ""
        out.append(
            f"# up to {n} legs at once, side by side: each on idle GPUs{named} no other leg holds "
            "(CUDA_VISIBLE_DEVICES set per leg), in this order"
        )
    if (prep := plan.experiment.prepare) is not None:
        out += ["", prepare_text(prep, plan)]
    if registry.settings.notify:
        out.append(
            f"# when a leg ends (done or failed): {shlex.join(registry.settings.notify)}"
            f" (within {registry.settings.notify_timeout_s:g}s; a failure is noted, never fatal)"
        )
    for leg in plan.legs:
        repeats = f" ({leg.repeats} repeats, --seed base + i)" if leg.repeats > 1 else ""
        out += ["", f"# leg {leg.name}{repeats}" + (f": {leg.description}" if leg.description else "")]
        for why in missing_inputs(leg, plan):
            out.append(f"# {why}")
        out.append(format_command(leg, exp_dir, plan.torchrun))
    return "\n".join(out)


def legs_python(plan: LaunchPlan) -> str:
    """The Python of the legs: the configured one, else this one (whose torchrun runs them)."""
    return (
        str(plan.runtime.python)
        if plan.runtime is not None and plan.runtime.python is not None
        else sys.executable
    )


def prepare_text(prep: reg.Prepare, plan: LaunchPlan) -> str:
    """The prepare step as a dry run shows it: whether it will run, and its exact command."""
    command = shlex.join(prep.command(legs_python(plan))) + ' > "$EXP_DIR/prepare.log" 2>&1'
    why = prep.why()
    if why is None:
        return (
            f"# prepare: skipped, what it creates exists ({', '.join(map(str, prep.creates))})\n# {command}"
        )
    return f"# prepare, first ({why}):\n{command}"


# The trainer's input dirs when its flags name none (nanochat/data.py, nanochat/tokenizer.py).
TRAINER_INPUTS = {"data-dir": "~/.cache/nanochat/base_data", "tokenizer-dir": "~/.cache/nanochat/tokenizer"}


def missing_inputs(leg: reg.Leg, plan: LaunchPlan) -> list[str]:
    """Why a leg would fail at once for want of its data (a parquet leg's data or tokenizer dir
    missing, and no prepare step of its experiment will make it): one line each, saying how to
    make it. Reads only."""
    if leg.args.get("data") != "parquet":
        return []
    out = []
    prep = plan.experiment.prepare
    for key, default in TRAINER_INPUTS.items():
        value = leg.args.get(key, default)
        path = Path(os.path.expanduser(str(value)))
        path = path if path.is_absolute() else plan.cwd / path
        if os.path.exists(path):
            continue
        if prep is not None and prep.makes(path):
            continue  # the prepare step makes it before the first leg
        make = (
            "python -m nanochat.smoke_data --out DIR (a small corpus and tokenizer), or upstream nanochat's "
            "dataset download" + (" and tokenizer training" if key == "tokenizer-dir" else "")
        )
        out.append(f"leg {leg.name} would fail at once: --{key} {value} does not exist (make it: {make})")
    return out


def plan_data(
    registry: reg.Registry,
    plan: LaunchPlan,
    exp_dir: Path,
    grace_s: float = STOP_GRACE_S,
    origin: dict | None = None,
    seq: Seq | None = None,
) -> Plan:
    """What plan.json records of a launch into `exp_dir`: every run's exact argv (one per repeat of
    a leg with repeats; on Slurm, what srun starts on each node), its module and trainer flags, the
    executor and its settings, the registry snapshot, host, and the launch's provenance `origin`
    (provenance.collect: git, the machine, the trainer's versions, the launch's environment;
    without it, git's branch and commit alone), and its place in exp_root's order `seq`
    (expdir.next_seq; a dry run has none). Writes nothing."""
    on_slurm = plan.executor == slurm.NAME
    runs = []
    for leg in plan.legs:
        for name, i, argv in leg.runs(exp_dir, plan.torchrun):
            args = leg.trainer_args(exp_dir, i)
            if on_slurm:
                cmd = slurm.LegCommand(
                    name,
                    plan.torchrun,
                    leg.nproc_per_node,
                    leg.module,
                    tuple(args),
                    uses_gpus=leg.device != "cpu",
                )
                argv = slurm.node_argv(cmd)
            runs.append(
                PlanRun(
                    name,
                    tuple(argv),
                    leg.name if i is not None else None,
                    i,
                    leg.device,
                    leg.nproc_per_node,
                    leg.module,
                    tuple(args),
                    str(exp_dir / f"{name}.log"),
                )
            )
    origin = origin if origin is not None else {"git": git_info(plan.cwd)}
    s = registry.settings
    prep = plan.experiment.prepare
    return Plan(
        experiment=plan.experiment.id,
        runs=tuple(runs),
        dir=str(exp_dir),
        created_at=now_iso(),
        seq=seq,
        host=socket.gethostname(),
        user=os.environ.get("USER"),
        cwd=str(plan.cwd),
        python=str(plan.runtime.python) if plan.runtime and plan.runtime.python else sys.executable,
        torchrun=plan.torchrun,
        env=dict(plan.runtime.env) if plan.runtime else {},
        git=origin.get("git") or {},
        machine=origin.get("machine"),
        trainer=origin.get("trainer"),
        launch_env=origin.get("launch_env"),
        executor=plan.executor,
        on_failure=s.on_failure,
        tail=s.tail,
        stop_grace_s=grace_s,
        gpu_idle=s.gpu_idle,
        max_parallel=plan.experiment.max_parallel,
        gpus=tuple(s.gpus) if s.gpus else None,
        notify=Notify(tuple(s.notify), s.notify_timeout_s) if s.notify else None,
        skipped=tuple(plan.skipped),
        prepare=(
            PlanPrepare(
                tuple(prep.command(legs_python(plan))),
                tuple(str(p) for p in prep.creates),
                str(prep.mark) if prep.mark is not None else None,
            )
            if prep
            else None
        ),
        registry=RegistrySnapshot(str(registry.path.resolve()), registry.raw),
        slurm=plan.experiment.slurm if on_slurm else None,
        preflight=slurm.PREFLIGHT if on_slurm else None,
    )


def write_plan(
    registry: reg.Registry,
    plan: LaunchPlan,
    exp_dir: Path,
    grace_s: float = STOP_GRACE_S,
    checked: FlagCheck | None = None,
) -> Plan:
    """plan.json in the fresh dir, written once, never over anything, with the launch's provenance
    (git, with `git.patch` beside it when the tree is dirty; the machine; the trainer's versions,
    read by the legs' python; the launch's environment: see provenance) and its baseline pinned
    (baseline.pin: its own run of the baseline leg, a finished one in another dir, recorded
    figures, or none) and what `checked` (check_flags) found of its trainer flags. Returns what it
    holds."""
    runtime = plan.runtime
    origin = provenance.collect(
        plan.cwd,
        plan.torchrun,
        str(runtime.python) if runtime and runtime.python else None,
        dict(runtime.env) if runtime else None,
        exp_dir,
    )
    data = dataclasses.replace(
        plan_data(registry, plan, exp_dir, grace_s, origin, expdir.next_seq(exp_dir.parent)),
        # the baseline this dir's runs are compared with, fixed now: later launches never move it
        baseline=baseline.pin(registry, plan.experiment, plan.legs),
        trainer_flags=checked.record() if checked is not None else None,
    )
    data.write(exp_dir)  # written once, never over anything
    return data


def executor_of(d: ExpDir) -> Executor:
    """The executor that runs a dir's legs, as its plan says (a dir without a plan: local)."""
    name = d.plan.executor if d.plan is not None else "local"
    if name not in EXECUTORS:
        raise RunError(f"{d.path}/plan.json names an unknown executor {safetext.oneline(repr(name))[:40]}")
    return EXECUTORS[name]


def start(
    registry: reg.Registry,
    exp_id: str,
    legs: list[str] | None = None,
    rerun: bool = False,
    foreground: bool = False,
    plan: LaunchPlan | None = None,
    grace_s: float = STOP_GRACE_S,
    exp_dir: Path | None = None,
) -> Path | None:
    """Make a fresh dir, write plan.json and start its legs through the experiment's executor: a
    supervisor here, detached (or in this process, `foreground`), or a chain of Slurm jobs (with
    `foreground`, waited for).

    Returns the dir, or None when every leg was skipped (nothing is written then). Raises
    RunError, with nothing written, when the machine or the paths refuse the launch. `exp_dir`
    is the fresh dir a confirmation showed: used when still free, else the next fresh name.
    """
    plan = plan or plan_launch(registry, exp_id, legs, rerun)
    if not plan.legs:
        return None
    root = registry.settings.exp_root
    probe = exp_dir or fresh_dir_name(root, exp_id)
    checked = check_flags(registry, plan)
    if refused := launch_refusals(registry, plan, probe, checked=checked):
        raise RunError(refused[0])
    lock_fd = experiment_lock(root, exp_id)
    try:
        if (busy := running_elsewhere(root, exp_id)) is not None:  # again, now under the lock
            raise RunError(f"'{exp_id}' is running in {busy.path}; stop it first: cockpit stop {busy.path}")
        exp_dir = new_exp_dir(root, exp_id, preferred=exp_dir)
        check_flags(
            registry, plan, write_cache=True
        )  # the answer kept for the next launch (asked once above)
        try:
            data = write_plan(registry, plan, exp_dir, grace_s, checked)
            fsutil.make_dirs(exp_dir / STATE_DIR, root=exp_dir)
        except OSError as e:
            raise RunError(f"cannot write the plan in {exp_dir}: {describe(e)}") from None
        EXECUTORS[plan.executor].start(exp_dir, data, lock_fd, foreground, grace_s)
        return exp_dir
    finally:
        try:
            os.close(lock_fd)
        except OSError:
            pass


def stop(
    exp_dir: Path | str,
    leg: str | None = None,
    grace_s: float = STOP_GRACE_S,
    wait_s: float | None = None,
    exp_root: Path | str | None = None,
) -> ExpDir:
    """Stop one leg, or the whole queue, of an experiment dir; return the dir as it stands after.

    The dir's executor stops it: locally its supervisor (or, the supervisor killed, the leg's
    proven processes here); on Slurm, scancel of the leg and the rest of its chain. Nothing
    unproven is signalled: RunError says so. With `exp_root`, a dir outside it is refused before
    anything is read or written.
    """
    exp_dir = Path(exp_dir)
    if exp_root is not None:
        check_owned(exp_dir, exp_root)
    d = open_dir(exp_dir)
    if leg is not None and leg not in d.legs:
        raise RunError(
            f"{exp_dir} has no leg '{safetext.oneline(leg)}' (legs: {', '.join(d.legs) or 'none'})"
        )
    executor_of(d).stop(exp_dir, leg, grace_s, wait_s)
    return open_dir(exp_dir)


def check_owned(exp_dir: Path, exp_root: Path | str) -> None:
    """RunError unless `exp_dir` is a dir under exp_root (the cockpit acts only on the dirs it owns)."""
    if not (
        fsutil.is_inside(exp_dir.resolve(), Path(exp_root).resolve())
        and exp_dir.resolve() != Path(exp_root).resolve()
    ):
        raise RunError(
            f"{safetext.oneline(str(exp_dir))} is not an experiment dir under exp_root {exp_root}: "
            "the cockpit acts only on the dirs it owns"
        )


def resubmit(exp_dir: Path | str, legs: list[str], exp_root: Path | str, rerun: bool = False) -> list[str]:
    """Submit Slurm legs of a dir under exp_root again from their saved batch scripts, each with a
    fresh log (executors/resubmit.py), under the experiment's queue lock; one line per leg says
    its new job and where its earlier attempt is kept. RunError (one line) when refused."""
    exp_dir = Path(exp_dir)
    check_owned(exp_dir, exp_root)
    d = open_dir(exp_dir)
    lock_fd = experiment_lock(Path(exp_root), d.experiment)
    try:
        busy = running_elsewhere(exp_root, d.experiment)
        if busy is not None and busy.path.resolve() != exp_dir.resolve():  # one queue per experiment
            raise RunError(
                f"'{d.experiment}' is running in {busy.path}; stop it first: cockpit stop {busy.path}"
            )
        done = resubmit_legs(exp_dir, legs, rerun)
    finally:
        os.close(lock_fd)
    return [
        f"{job.leg}: Slurm job {job.job_id} (queued)"
        + (f"; the attempt before kept in {kept}" if kept else "")
        for job, kept in done
    ]


def stop_outcome(d: ExpDir, leg: str, asked: bool = True) -> str:
    """What became of a leg once a stop came back (`d`: its dir as `stop` returned it), in the
    words `cockpit stop` and the terminal app say: `stopped (stopped by request)`, `queued, stop
    requested: it will not start`, or, for a leg named (`asked`) that was done by then, `done (stop
    came after it ended)`: the stop lost the race to the leg's end, and nothing was stopped."""
    st = d.states.get(leg)
    if st is None:
        return "not run"
    if st.status == Status.QUEUED and stop_request_path(d.path, leg).exists():
        return "queued, stop requested: it will not start"
    note = STOP_CAME_LATE if st.status == Status.DONE and asked else st.note
    return f"{st.status}" + (f" ({note})" if note else "")
