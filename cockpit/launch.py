"""Launching and stopping: plan a launch, refuse what must not run, start it through an executor, stop it.

A launch of an experiment (`cockpit launch EXP`, or `l` in the cockpit) goes:

1. `plan_launch`: which legs run and which are skipped (done here, or recorded in the registry,
   unless re-run is asked). Reads only.
2. `launch_refusals`: every reason the machine or the paths refuse it now (no torchrun, too few
   GPUs, a path outside exp_root or inside a read-only path, an exp_root that cannot be written,
   the experiment already running). `dry_run_text` lists them with the exact commands.
3. `start`: under the experiment's queue lock, a fresh dir `<exp_root>/<stamp>_<experiment>/`
   (never an existing one), `plan.json` with every leg's exact argv and the git provenance, then
   the local executor's supervisor, detached (or in this process, `foreground`).

`stop` stops one leg or a dir's whole queue, through its live supervisor, or (the supervisor was
killed) by signalling the leg's processes here, only when proven the leg's. Nothing in the user's
checkout is touched: git is only read.

Layer 3: imports the layers below (registry, fsutil, procs, safetext, vocab, gpus, expdir,
provenance, executors.local).
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
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from cockpit import fsutil, gpus, procs, provenance, safetext
from cockpit import registry as reg
from cockpit.executors import local
from cockpit.expdir import (
    STAMP_FORMAT,
    STATE_DIR,
    STOP_GRACE_S,
    SUPERVISOR,
    ExpDir,
    RunError,
    describe,
    discover,
    done_legs,
    leg_env,
    lock_path,
    now_iso,
    open_dir,
    plan_grace,
    read_state,
    stop_request_path,
    supervisor_identity,
    try_lock,
    write_state,
)
from cockpit.vocab import Status

# Args that name trainer inputs: they may point into a read-only path (read, never written).
INPUT_ARGS = ("data-dir", "tokenizer-dir", "data", "tokenizer")


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


def experiment_lock(exp_root: Path, experiment: str) -> int:
    """Take the experiment's queue lock (non-blocking) and return its fd, or raise RunError.

    launch takes it before creating the dir and hands the fd to the supervisor, which holds it
    for the queue's lifetime: two concurrent launches of one experiment cannot both pass.
    """
    return try_lock(lock_path(exp_root, experiment),
                    f"'{experiment}' is being launched or run by another cockpit; stop it first", root=exp_root)


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
    out = []
    for name, _, argv in leg.runs(exp_dir, torchrun):
        log = shlex.quote(str(Path(exp_dir) / f"{name}.log"))
        out.append(" \\\n  ".join(reg.command_lines(argv)) + f" > {log} 2>&1")
    return "\n".join(out)


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
        repeats = f" ({leg.repeats} repeats, --seed base + i)" if leg.repeats > 1 else ""
        out += ["", f"# leg {leg.name}{repeats}" + (f": {leg.description}" if leg.description else "")]
        out.append(format_command(leg, exp_dir, plan.torchrun))
    return "\n".join(out)


def write_plan(registry: reg.Registry, plan: LaunchPlan, exp_dir: Path, grace_s: float = STOP_GRACE_S) -> dict:
    """plan.json, written once: every run's exact argv (one per repeat of a leg with repeats),
    the registry's snapshot, and the launch's provenance (git, with `git.patch` beside it when
    the tree is dirty; the machine; the trainer's versions; the environment: see provenance)."""
    origin, patch = provenance.collect(plan.cwd, plan.torchrun)
    if patch is not None:
        try:
            provenance.save_patch(exp_dir, patch)
            origin["git"]["patch"] = provenance.PATCH_NAME
        except OSError as e:
            origin["git"]["patch_error"] = f"{provenance.PATCH_NAME} not written: {describe(e)}"
    data = {
        "experiment": plan.experiment.id,
        "dir": str(exp_dir),
        "created_at": now_iso(),
        "host": socket.gethostname(),
        "user": os.environ.get("USER"),
        "cwd": str(plan.cwd),
        "python": sys.executable,
        "torchrun": plan.torchrun,
        **origin,
        "on_failure": registry.settings.on_failure,
        "tail": registry.settings.tail,  # the report's tail window: the supervisor's report.md uses it
        "stop_grace_s": grace_s,
        "gpu_idle": asdict(registry.settings.gpu_idle),
        "legs": [
            {
                "name": name,
                **({"leg": leg.name, "repeat": i} if i is not None else {}),
                "device": leg.device,
                "nproc_per_node": leg.nproc_per_node,
                "argv": argv,
                "log": str(exp_dir / f"{name}.log"),
            }
            for leg in plan.legs
            for name, i, argv in leg.runs(exp_dir, plan.torchrun)
        ],
        "skipped": [{"leg": name, "why": why} for name, why in plan.skipped],
        "registry": {"path": str(registry.path.resolve()), "raw": registry.raw},
    }
    fd = fsutil.create_new(exp_dir / "plan.json", root=exp_dir)  # written once, never over anything
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, default=str)
        f.write("\n")
    return data


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
    """Make a fresh dir, write plan.json and start its legs through the local executor: a supervisor,
    detached (or in this process, `foreground`).

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
            raise RunError(f"cannot write the plan in {exp_dir}: {describe(e)}") from None
        if foreground:
            local.run_here(exp_dir, lock_fd, grace_s)
        else:
            local.start(exp_dir, lock_fd)
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
                fsutil.atomic_write_json(stop_request_path(exp_dir, leg), {"requested_at": now_iso()}, root=exp_dir)
            except OSError as e:
                raise RunError(f"cannot write the stop request: {describe(e)}") from None
            sig = signal.SIGUSR1
        procs.signal_proven(sup, sig)
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            d = open_dir(exp_dir)
            if leg is None and not d.supervisor_alive:
                break
            if leg is not None and (leg not in d.states or not d.states[leg].active):
                break
            if leg is not None and d.states[leg].status == Status.QUEUED and stop_request_path(exp_dir, leg).exists():
                break  # the supervisor will skip it when its turn comes
            time.sleep(0.1)
        return open_dir(exp_dir)
    unproven = [f"leg {n}: {d.states[n].note}" for n in names if n in d.states and d.states[n].status == Status.UNKNOWN]
    if sup.verdict == procs.UNPROVEN:
        unproven.insert(0, f"supervisor: {Status.UNKNOWN}: {procs.NOT_PROVEN} ({sup.why})")
    if not targets:
        if unproven:
            raise RunError(f"nothing stopped in {exp_dir}: " + "; ".join(unproven))
        raise RunError(f"nothing running in {exp_dir}")
    # no supervisor: the legs still alive are orphans; stop them here, if proven theirs
    for name in targets:
        st = read_state(exp_dir, name)
        if st is None or not st.active:
            continue
        if st.status == Status.RUNNING:
            ident = procs.identify(st.pid, st.create_time, d.expect(name))
            if ident.verdict == procs.UNPROVEN:
                continue  # reconciled as unknown a moment ago; said by the caller from the state
            if ident.alive and ident.process is not None:
                procs.terminate(ident.process, grace_s)
            procs.terminate_all(procs.marked(leg_env(exp_dir, name)), grace_s)  # workers torchrun left
            st.note = "stopped by request (supervisor gone; exit code unknown)"
        else:
            st.note = "stopped by request before it started (supervisor gone)"
        st.status, st.ended_at, st.exit_code, st.exit_code_known = Status.STOPPED, now_iso(), None, False
        try:
            write_state(exp_dir, st)
        except OSError as e:
            raise RunError(f"leg {name} stopped, but its state could not be recorded: {describe(e)}") from None
    return open_dir(exp_dir)
