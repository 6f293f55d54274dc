"""The Slurm executor: a launch's legs as a chain of batch jobs, watched and stopped through the scheduler.

One leg is one batch job. Its script asks for `nodes` nodes with one task each, and that task is a
torchrun for the node: `srun` starts them all, and they meet at a c10d rendezvous on the first node
of the allocation, so a leg of N nodes x P processes trains with world size N*P. The module and the
trainer's flags are exactly those of a local launch; every flag is shell-quoted, so nothing a user
wrote in a flag can be interpreted by the job's shell. The job's stdout and stderr append to
`<dir>/<leg>.log`, the same file a local leg writes, so logs are read the same way. Every value
of an `#SBATCH` line is written as one word sbatch reads back as given (sbatch_opts).

The legs of one launch run in order: each job depends on the one before it, `afterok` when the chain
stops at a failure (a failed leg leaves the rest cancelled by the scheduler, reason
DependencyNeverSatisfied), `afterany` when it goes on regardless. When what the experiment's
prepare step creates is missing, that step is the chain's first job, and every leg also waits for
it to end well. There is no supervisor: the scheduler runs the chain, and `state/<leg>.json`
holds the leg's job id. Where a job stands is the scheduler's to say (scheduler.py); expdir.py
asks it whenever a dir is read, and slurm_record.py records what it said.

As an executor it offers what launch.py calls of every executor (see executors/__init__.py):
`start` submits a dir's planned legs (or `--foreground`: and waits for the chain to end), `stop`
cancels a leg and the rest of its chain through scancel; both record what they see end
(slurm_record.record_jobs: the leg's state, then report.md).

Layer 2: imports fsutil, safetext, sbatch_opts, registry, slurm_policy, scheduler, vocab, plan, expdir and
executors.slurm_record.
"""

from __future__ import annotations

import os
import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from cockpit import fsutil, safetext, sbatch_opts
from cockpit.executors.slurm_record import record_jobs
from cockpit.expdir import (
    LegState,
    RunError,
    describe,
    now_iso,
    open_dir,
    stop_request_path,
    write_state,
)
from cockpit.plan import Plan
from cockpit.registry import PREPARE, SlurmSettings
from cockpit.scheduler import SlurmError, call, cancel, command_failed, job_name, last_line, output_pattern
from cockpit.slurm_policy import extra_args_problem
from cockpit.vocab import ENDED_STATUSES, Status

NAME = "slurm"
RDZV_PORT_BASE = 20000  # the rendezvous port is RDZV_PORT_BASE + job id mod RDZV_PORT_SPAN:
RDZV_PORT_SPAN = 20000  # two jobs sharing a node rarely pick the same one
SCRIPT_DIR = "slurm"  # <dir>/slurm/<leg>.sbatch
PREFLIGHT = "no local GPU preflight: the scheduler allocates the GPUs"
FOLLOW_POLL_S = 2.0  # --foreground: how often the chain is asked where it stands

OnFailure = Literal["stop", "continue"]


@dataclass(frozen=True)
class LegCommand:
    """What one leg runs, as a local launch would run it: torchrun, the module, the trainer's flags."""

    leg: str
    torchrun: str  # path of the torchrun to run (the same path on every node: a shared filesystem)
    nproc_per_node: int
    module: str  # e.g. "nanochat.base_train"
    args: tuple[str, ...]  # the trainer's flags, as an argv list
    uses_gpus: bool = True  # False for a CPU leg: it asks for no GPU unless the settings say so
    env: tuple[tuple[str, str], ...] = ()  # the registry's extra environment variables (name, value)


@dataclass(frozen=True)
class SubmittedJob:
    leg: str
    job_id: str
    argv: tuple[str, ...]  # the sbatch command line that submitted it


# ----------------------------------------------------------------------------------------------
# the batch script of one leg


def _sbatch_word(option: str, value: object) -> str:
    """`option=value` as one word of an #SBATCH line, the value read back by sbatch exactly as
    given (quoted where it holds a space, a quote or a `#`); SlurmError for a value no line can
    carry (empty, a control character)."""
    try:
        return sbatch_opts.option_word(option, value)
    except sbatch_opts.SbatchError as e:
        raise SlurmError(f"{option}: {e}") from None


def leg_log(exp_dir: Path | str, leg: str) -> Path:
    """The leg's log: the job's stdout and stderr, appended."""
    return Path(exp_dir) / f"{leg}.log"


def gpus_per_node(cmd: LegCommand, settings: SlurmSettings) -> int:
    """GPUs the job asks for on each node: the settings' figure, else one per torchrun process."""
    if settings.gpus_per_node is not None:
        return settings.gpus_per_node
    return cmd.nproc_per_node if cmd.uses_gpus else 0


def node_argv(cmd: LegCommand) -> list[str]:
    """What srun starts on each node: torchrun with the allocation's rendezvous, the module, the
    trainer's flags. `$SLURM_NNODES`, `$SLURM_JOB_ID`, `$rdzv_host` and `$rdzv_port` are the batch
    shell's variables, expanded when the job runs."""
    return [
        cmd.torchrun,
        "--nnodes=$SLURM_NNODES",
        f"--nproc_per_node={int(cmd.nproc_per_node)}",
        "--rdzv_id=$SLURM_JOB_ID",
        "--rdzv_backend=c10d",
        "--rdzv_endpoint=$rdzv_host:$rdzv_port",
        "-m",
        cmd.module,
        "--",
        *cmd.args,
    ]


def _shell_words(cmd: LegCommand) -> list[str]:
    """node_argv as words of the batch script: the rendezvous flags keep their `$` variables live
    in double quotes; torchrun's path, the module and the trainer's flags are single-quoted by
    shlex, so nothing a user wrote is ever expanded."""
    argv = node_argv(cmd)
    cut = argv.index("--")
    ours = {i for i in range(1, cut) if "$" in argv[i]}  # the flags node_argv itself wrote
    return [f'"{w}"' if i in ours else shlex.quote(w) for i, w in enumerate(argv)]


def render_batch_script(
    cmd: LegCommand,
    settings: SlurmSettings,
    exp_dir: Path | str,
    workdir: Path | str,
    job_name: str,
) -> str:
    """The batch script of one leg: #SBATCH lines, the setup lines, then srun + torchrun.

    `workdir` is the checkout the legs run from (`-m nanochat.base_train` imports from there), on
    the same path on every node. Every value of an #SBATCH line is one word sbatch reads back as
    given (sbatch_opts.word: a `#` or a space in a path is quoted, never a comment or a second
    word), and extra_args are read as sbatch reads them before they are written. Pure: reads
    nothing, writes nothing.
    """
    if int(settings.nodes) < 1 or int(cmd.nproc_per_node) < 1:
        raise SlurmError(f"leg {cmd.leg}: nodes and nproc_per_node must be at least 1")
    _sbatch_word("leg name", cmd.leg)  # it names a comment line and the log: one line, never empty
    opts = [
        f"--nodes={int(settings.nodes)}",
        "--ntasks-per-node=1",
    ]  # one torchrun per node; it starts the node's nproc_per_node workers
    gpus = gpus_per_node(cmd, settings)
    if gpus > 0:
        opts.append(f"--gpus-per-node={gpus}")
    lines = [
        f"# leg {cmd.leg}: a batch job of the nanochat cockpit; `cockpit resubmit DIR {cmd.leg}` runs it again"
        " (a new job, a fresh log)"
    ]
    lines += _job_head(settings, leg_log(exp_dir, cmd.leg), workdir, job_name, opts, cmd.env)
    # srun does not pass the job's --cpus-per-task on to its steps (Slurm 22.05+): say it again
    step_cpus = f" --cpus-per-task={int(settings.cpus_per_task)}" if settings.cpus_per_task else ""
    words = _shell_words(cmd)
    cut = words.index("--") + 1
    trainer = " ".join(words[cut:])
    lines += [
        "",
        "# torchrun's rendezvous lives on the first node of the allocation, at the address Slurm reaches it by",
        'head_node=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)',
        "head_addr=$(scontrol show node -o \"$head_node\" | tr ' ' '\\n' | sed -n 's/^NodeAddr=//p')",
        "rdzv_host=${head_addr:-$head_node}",
        f"rdzv_port=$(({RDZV_PORT_BASE} + SLURM_JOB_ID % {RDZV_PORT_SPAN}))",
        "",
        f"exec srun --ntasks-per-node=1{step_cpus} --kill-on-bad-exit=1 \\",
        f"    {' '.join(words[:3])} \\",
        f"    {' '.join(words[3:6])} \\",
        f"    {' '.join(words[6:cut])}" + (f" \\\n    {trainer}" if trainer else ""),
        "",
    ]
    return "\n".join(["#!/bin/bash", *lines])


def _job_head(
    settings: SlurmSettings,
    log: Path,
    workdir: Path | str,
    job_name: str,
    opts: list[str],
    env: tuple[tuple[str, str], ...],
) -> list[str]:
    """The lines every batch job of a launch starts with: its #SBATCH lines (its name, its log,
    the checkout, `opts`, the settings' resources, extra_args), the setup lines, the env."""
    pattern = output_pattern(str(log))
    head = [
        _sbatch_word("--job-name", job_name),
        _sbatch_word("--output", pattern),
        _sbatch_word("--error", pattern),
        "--open-mode=append",  # a log is only ever appended to, as locally
        _sbatch_word("--chdir", workdir),
        *opts,
        "--no-requeue",  # a job that lost a node fails: rerunning it from the start is the user's call
    ]
    for option, value in (
        ("--partition", settings.partition),
        ("--account", settings.account),
        ("--qos", settings.qos),
        ("--time", settings.time),
        ("--cpus-per-task", settings.cpus_per_task),
        ("--mem", settings.mem),
    ):
        if value is not None:
            head.append(_sbatch_word(option, value))
    lines = [f"#SBATCH {opt}" for opt in head]
    if settings.extra_args:  # read again as sbatch reads them: a plan is a file, it may hold anything
        if why := extra_args_problem(settings.extra_args):
            raise SlurmError(f"extra_args: {why}")
        lines.append("#SBATCH " + " ".join(sbatch_opts.word(a) for a in settings.extra_args))
    lines += ["", "export PYTHONUNBUFFERED=1  # every line reaches the log when it is printed", "set -e"]
    lines += list(settings.setup)
    # the registry's env, after the setup lines (it wins, as over the environment of a local leg)
    lines += [f"export {name}={shlex.quote(value)}" for name, value in env]
    return lines


def render_prepare_script(
    argv: list[str],
    creates: list[str],
    settings: SlurmSettings,
    exp_dir: Path | str,
    workdir: Path | str,
    job_name: str,
    env: tuple[tuple[str, str], ...] = (),
    mark: str | None = None,
) -> str:
    """The batch script of a launch's prepare step, the first job of its chain: one task on one
    node, no GPU, running the prepare argv (shell-quoted) from the checkout with the legs' setup
    and env, its output in `<dir>/prepare.log`. It ends well only when what the step creates is
    there (at once, when it already was and no `mark` says a run before did not end well). The
    `mark` (registry.Prepare.mark, under exp_root) is made before the step runs and removed only
    once it has ended well: a step that fails or is killed halfway leaves it, and the next launch
    does not trust what it left. Pure: reads nothing, writes nothing."""
    if (
        not argv
        or not creates
        or not all(isinstance(a, str) and a for a in [*argv, *creates, *([mark] if mark else [])])
    ):
        raise SlurmError(f"the plan's {PREPARE} step is not an argv and the paths it creates")
    lines = [
        f"# the {PREPARE} step of a launch of the nanochat cockpit: it makes what the legs read, before them"
    ]
    lines += _job_head(
        settings, Path(exp_dir) / f"{PREPARE}.log", workdir, job_name, ["--nodes=1", "--ntasks=1"], env
    )
    paths = " ".join(shlex.quote(c) for c in creates)
    trusted = f"[ ! -e {shlex.quote(mark)} ] && " if mark else ""
    lines += [
        f"export PYTHONPATH={shlex.quote(str(workdir))}${{PYTHONPATH:+:$PYTHONPATH}}",
        "",
        'made() { for p in "$@"; do [ -e "$p" ] || [ -L "$p" ] || return 1; done; }',
        f'if {trusted}made {paths}; then echo "{PREPARE}: skipped, what it creates exists"; exit 0; fi',
    ]
    if mark:  # there until the step has ended well
        lines += [
            f'mkdir -p {shlex.quote(str(Path(mark).parent))} && echo "$SLURM_JOB_ID" > {shlex.quote(mark)} || exit 1'
        ]
    lines += [
        shlex.join(argv),
        f'for p in {paths}; do made "$p" || {{ echo "{PREPARE}: exited 0 but did not create $p" >&2; exit 1; }}; done',
        *([f"rm -f {shlex.quote(mark)}"] if mark else []),
        "",
    ]
    return "\n".join(["#!/bin/bash", *lines])


def script_path(exp_dir: Path | str, leg: str) -> Path:
    """Where a leg's batch script is kept, so what ran can be read and resubmitted (cockpit resubmit)."""
    return Path(exp_dir) / SCRIPT_DIR / f"{leg}.sbatch"


def write_script(exp_dir: Path | str, leg: str, text: str) -> Path:
    """Save a leg's batch script as a new file (never over an existing one, never through a symlink)."""
    if not leg or "/" in leg or leg in (".", ".."):
        raise SlurmError(f"leg name {leg!r} cannot name a file")
    path = script_path(exp_dir, leg)
    try:
        fd = fsutil.create_new(path, root=exp_dir)
    except FileExistsError:
        raise SlurmError(f"{path} exists: a launch writes its scripts into a fresh dir") from None
    except OSError as e:
        raise SlurmError(f"cannot write {path}: {describe(e)}") from None
    with os.fdopen(fd, "w") as f:
        f.write(text)
    return path


# ----------------------------------------------------------------------------------------------
# submitting a chain


def dependency_type(on_failure: OnFailure) -> str:
    """afterok: a failed leg leaves the rest never run; afterany: the next leg runs regardless."""
    if on_failure not in ("stop", "continue"):
        raise SlurmError(f"on_failure {on_failure!r}: expected 'stop' or 'continue'")
    return "afterok" if on_failure == "stop" else "afterany"


def sbatch_argv(
    script: Path | str,
    after: str | None = None,
    on_failure: OnFailure = "stop",
    prepared_by: str | None = None,
) -> list[str]:
    """The sbatch command line of one job; `after` is the leg's job id it waits for, if any, and
    `prepared_by` the prepare step's, which it waits for to end well whatever on_failure says.

    With afterok, a job whose dependency can never be met is cancelled by the scheduler instead of
    pending forever.
    """
    argv = ["sbatch", "--parsable"]
    deps = [f"afterok:{prepared_by}"] if prepared_by is not None else []
    if after is not None:
        deps.append(f"{dependency_type(on_failure)}:{after}")
    if deps:  # a comma: every one of them must be met
        argv += [f"--dependency={','.join(deps)}", "--kill-on-invalid-dep=yes"]
    return [*argv, str(script)]


def submit(
    script: Path | str,
    after: str | None = None,
    on_failure: OnFailure = "stop",
    prepared_by: str | None = None,
) -> tuple[str, list[str]]:
    """Submit one batch script; its job id and the command line that submitted it."""
    argv = sbatch_argv(script, after, on_failure, prepared_by)
    proc = call(argv)
    if proc.returncode != 0:
        raise command_failed(proc, "sbatch")
    # --parsable prints "<job id>" or "<job id>;<cluster>"
    job_id = last_line(proc.stdout).split(";")[0]
    if not job_id.isdigit():
        raise SlurmError(f"sbatch printed no job id: {last_line(proc.stdout)!r}")
    return job_id, argv


def submit_chain(
    scripts: list[tuple[str, Path]], on_failure: OnFailure = "stop", prepare: bool = False
) -> list[SubmittedJob]:
    """Submit (leg, script) in order, each job depending on the one before it; with `prepare`,
    the first script is the prepare step's, and every leg also waits for it to end well.

    If a submission fails, the jobs already submitted are cancelled and SlurmError says which leg
    could not be submitted: a chain is submitted whole or not at all.
    """
    dependency_type(on_failure)
    done: list[SubmittedJob] = []
    prepared_by = prev = None
    for i, (leg, script) in enumerate(scripts):
        try:
            job_id, argv = submit(script, prev, on_failure, prepared_by)
        except SlurmError as e:
            if done:
                try:
                    cancel([j.job_id for j in done])
                except SlurmError:
                    pass  # the submission error is the one to report
            raise SlurmError(f"leg {leg}: {e}") from None
        done.append(SubmittedJob(leg, job_id, tuple(argv)))
        if prepare and i == 0:
            prepared_by = job_id
        else:
            prev = job_id
    return done


@dataclass
class ChainPlan:
    """The scripts of a launch's jobs, rendered: what --dry-run prints and what a launch submits."""

    scripts: list[tuple[str, str]] = field(default_factory=list)  # (leg, script text), in order
    on_failure: OnFailure = "stop"
    prepare: bool = False  # the first script is the prepare step's (`prepare`): every leg waits for it

    def argv_lines(self, exp_dir: Path | str) -> list[str]:
        """The sbatch command lines, with the job ids they wait for as placeholders."""
        out: list[str] = []
        prepared_by = prev = None
        for i, (leg, _) in enumerate(self.scripts):
            out.append(shlex.join(sbatch_argv(script_path(exp_dir, leg), prev, self.on_failure, prepared_by)))
            if self.prepare and i == 0:
                prepared_by = f"<job id of {leg}>"
            else:
                prev = f"<job id of {leg}>"
        return out


def plan_chain(
    commands: list[LegCommand],
    settings: SlurmSettings,
    exp_dir: Path | str,
    workdir: Path | str,
    dir_name: str,
    on_failure: OnFailure = "stop",
    prepare: tuple[list[str], list[str]] | tuple[list[str], list[str], str | None] | None = None,
) -> ChainPlan:
    """Render every leg's script (job name `<dir_name>/<leg>`, see scheduler.job_name), after the
    prepare step's when `prepare` (its argv, the paths it creates, and its mark) is given; raises
    SlurmError on a bad setting."""
    dependency_type(on_failure)
    scripts = [
        (c.leg, render_batch_script(c, settings, exp_dir, workdir, job_name(dir_name, c.leg)))
        for c in commands
    ]
    if prepare is not None:
        env = commands[0].env if commands else ()
        argv, creates, *rest = prepare
        text = render_prepare_script(
            argv,
            creates,
            settings,
            exp_dir,
            workdir,
            job_name(dir_name, PREPARE),
            env,
            rest[0] if rest else None,
        )
        scripts.insert(0, (PREPARE, text))
    return ChainPlan(scripts, on_failure, prepare is not None)


def refusals(plan: ChainPlan) -> list[str]:
    """What the scheduler would refuse of these scripts now (a partition it does not have, more
    nodes or GPUs than it has), asked with `sbatch --test-only`: nothing is submitted."""
    out = []
    for leg, text in plan.scripts:
        proc = call(["sbatch", "--test-only"], stdin=text)
        if proc.returncode != 0:
            out.append(
                f"Slurm refuses leg {leg}: {last_line(proc.stderr) or last_line(proc.stdout) or 'no message'}"
            )
    return out


def launch_chain(plan: ChainPlan, exp_dir: Path | str) -> list[SubmittedJob]:
    """Save each script as `<exp_dir>/slurm/<leg>.sbatch`, then submit them as one chain."""
    paths = [(leg, write_script(exp_dir, leg, text)) for leg, text in plan.scripts]
    return submit_chain(paths, plan.on_failure, plan.prepare)


# ----------------------------------------------------------------------------------------------
# the executor: a launch's plan in, a chain of jobs out


def chain_of(plan: Plan, exp_dir: Path | str) -> ChainPlan:
    """The chain of a plan (what launch.py writes as plan.json): every leg's script, rendered."""
    env = tuple(plan.env.items())
    commands = [
        LegCommand(
            run.name,
            plan.torchrun or "torchrun",
            run.nproc_per_node,
            run.module or "",
            run.args,
            uses_gpus=run.uses_gpus,
            env=env,
        )
        for run in plan.runs
    ]
    return plan_chain(
        commands,
        plan.slurm or SlurmSettings(),
        exp_dir,
        plan.cwd or str(exp_dir),
        Path(exp_dir).name,
        plan.on_failure,
        prepare_needed(plan, exp_dir),
    )


def prepare_needed(plan: Plan, exp_dir: Path | str) -> tuple[list[str], list[str], str | None] | None:
    """The plan's prepare step (argv, the paths it creates, its mark) when one of those paths is
    missing now, or its mark says its last run did not end well: it then runs as the chain's first
    job. A mark outside this dir's exp_root's mark dir is not the plan's to name: left out. Reads only."""
    prep = plan.prepare
    if prep is None:
        return None
    if not prep.runnable:
        raise SlurmError(f"the plan's {PREPARE} step is not an argv and the paths it creates")
    mark = prep.mark_in(exp_dir)
    unfinished = mark is not None and os.path.lexists(mark)
    missing = any(not os.path.lexists(c) for c in prep.creates)
    return (list(prep.argv), list(prep.creates), mark) if missing or unfinished else None


def dry_run(plan: Plan, exp_dir: Path | str) -> list[str]:
    """What a launch would submit: each leg's batch script as it would be saved, then the sbatch
    command lines of the chain. Writes nothing."""
    chain = chain_of(plan, exp_dir)
    out = [
        f"# executor: Slurm, one batch job per leg, chained {dependency_type(chain.on_failure)}; {PREFLIGHT}"
    ]
    if (prep := prepare_needed(plan, exp_dir)) is not None:
        missing = ", ".join(c for c in prep[1] if not os.path.lexists(c))
        why = f"{missing} missing" if missing else f"its last run did not end well: {prep[2]} is there"
        out.append(
            f"# {PREPARE}, first ({why}): the chain's first job runs `{shlex.join(prep[0])}`; "
            "every leg waits for it to end well (afterok)"
        )
    elif plan.prepare is not None:
        out.append(f"# {PREPARE}: skipped, what it creates exists")
    for leg, text in chain.scripts:
        out += ["", f"# ---- {script_path(exp_dir, leg)} ----", text.rstrip("\n"), "# ---- end ----"]
    return [*out, "", *chain.argv_lines(exp_dir)]


def start(
    exp_dir: Path,
    plan: Plan,
    lock_fd: int | None = None,
    foreground: bool = False,
    grace_s: float | None = None,
    echo: Callable[[str], None] | None = None,
) -> None:
    """Submit the dir's planned legs as one chain and record each leg's job id in its state.

    Each leg's log is created new first (the job appends to that very file), then the scripts are
    saved and submitted. If the states cannot be recorded the chain is cancelled: no job runs
    that the cockpit does not know. `lock_fd` (the experiment's queue lock) is only held while
    submitting: afterwards the scheduler holds the queue, and a second launch is refused while
    the chain has a job queued or running. RunError (one line) when anything refuses.
    With `foreground`, wait until every job of the chain has ended, `echo`ing each leg's end.
    """
    del lock_fd, grace_s  # the scheduler queues and stops the legs: nothing here to hand over
    try:
        chain = chain_of(plan, exp_dir)
        for leg, _ in chain.scripts:
            os.close(fsutil.create_new(leg_log(exp_dir, leg), root=exp_dir))
        jobs = launch_chain(chain, exp_dir)
    except SlurmError as e:
        raise RunError(str(e)) from None
    except OSError as e:
        raise RunError(f"cannot prepare the legs' files in {exp_dir}: {describe(e)}") from None
    try:
        if plan.prepare is not None and not chain.prepare:  # as a supervisor records it
            write_state(
                exp_dir,
                LegState(
                    PREPARE,
                    Status.DONE,
                    note="skipped: what it creates exists",
                    log=str(leg_log(exp_dir, PREPARE)),
                    ended_at=now_iso(),
                ),
            )
        for job in jobs:
            write_state(
                exp_dir,
                LegState(
                    job.leg,
                    Status.QUEUED,
                    job_id=job.job_id,
                    log=str(leg_log(exp_dir, job.leg)),
                    note=f"submitted as Slurm job {job.job_id}"
                    + (
                        ": the chain's first job, the legs wait for it"
                        if job.leg == PREPARE and chain.prepare
                        else f"; {PREFLIGHT}"
                    ),
                ),
            )
    except OSError as e:
        try:
            cancel([j.job_id for j in jobs])
        except SlurmError:
            pass  # the state error is the one to report
        raise RunError(
            f"jobs cancelled: their states could not be recorded in {exp_dir}: {describe(e)}"
        ) from None
    if foreground:
        follow(exp_dir, echo or (lambda line: print(safetext.oneline(line), flush=True)))


def follow(exp_dir: Path, echo: Callable[[str], None], poll_s: float = FOLLOW_POLL_S) -> None:
    """Until no leg of the dir is queued or running: say each leg's end, as the scheduler tells it."""
    said: set[str] = set()
    while True:
        d = open_dir(exp_dir)
        for name in [PREPARE, *d.legs]:
            st = d.prepare if name == PREPARE else d.states.get(name)
            if st is not None and st.status in ENDED_STATUSES and name not in said:
                said.add(name)
                echo(f"{name}: {st.status}" + (f" ({st.note})" if st.note else ""))
        record_jobs([d])  # writes: each end seen, and report.md
        if not d.active and not (d.prepare is not None and d.prepare.active):
            return
        time.sleep(poll_s)


def stop(
    exp_dir: Path, leg: str | None = None, grace_s: float | None = None, wait_s: float | None = None
) -> None:
    """Cancel a leg and the rest of its chain (no leg: the whole chain) through scancel, and wait
    until squeue lists none of their jobs: the scheduler has then ended their processes on every
    node. Each cancelled leg first gets its stop request (`state/<leg>.stop`), so whoever reads
    the dir next records it as stopped by request, not failed. RunError (one line) when nothing
    is queued or running there, or the scheduler refuses."""
    del grace_s  # the scheduler's KillWait is the grace period between SIGTERM and SIGKILL
    d = open_dir(exp_dir)
    names = d.legs[d.legs.index(leg) :] if leg is not None else d.legs
    states = [d.states[n] for n in names if n in d.states and d.states[n].job_id]
    if (
        leg is None and d.prepare is not None and d.prepare.job_id
    ):  # the chain's first job: the legs wait for it
        states.insert(0, d.prepare)
    unknown = [f"leg {s.leg}: {s.note}" for s in states if s.status == Status.UNKNOWN]
    targets = [s for s in states if s.active]
    if not targets:
        if unknown:
            raise RunError(f"nothing stopped in {exp_dir}: " + "; ".join(unknown))
        raise RunError(f"nothing queued or running on Slurm in {exp_dir}")
    for s in targets:
        try:
            fsutil.atomic_write_json(
                stop_request_path(exp_dir, s.leg),
                {"requested_at": now_iso(), "job_id": s.job_id},
                root=exp_dir,
            )
        except OSError as e:
            raise RunError(f"cannot write the stop request: {describe(e)}") from None
    try:
        cancel([s.job_id for s in targets if s.job_id], timeout_s=wait_s or 60.0)
    except SlurmError as e:
        raise RunError(str(e)) from None
    record_jobs([open_dir(exp_dir)])  # writes: each cancelled leg, stopped, and report.md
