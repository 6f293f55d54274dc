"""The Slurm executor: a launch's legs as a chain of batch jobs, watched and stopped through the scheduler.

One leg is one batch job. Its script asks for `nodes` nodes with one task each, and that task is a
torchrun for the node: `srun` starts them all, and they meet at a c10d rendezvous on the first node
of the allocation, so a leg of N nodes x P processes trains with world size N*P. The module and the
trainer's flags are exactly those of a local launch; every flag is shell-quoted, so nothing a user
wrote in a flag can be interpreted by the job's shell. The job's stdout and stderr append to
`<dir>/<leg>.log`, the same file a local leg writes, so logs are read the same way.

The legs of one launch run in order: each job depends on the one before it, `afterok` when the chain
stops at a failure (a failed leg leaves the rest cancelled by the scheduler, reason
DependencyNeverSatisfied), `afterany` when it goes on regardless.

Where a job stands comes from `scontrol show job` (the controller keeps finished jobs for its
MinJobAge, 5 minutes by default), then from `sacct` where the cluster keeps accounting. A job that
neither knows any more is "forgotten": whoever asked judges it from its log.

Every Slurm command runs as an argv list, never through a shell. A missing or failing command
raises SlurmError with one line that says what went wrong.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

CALL_TIMEOUT_S = 30.0  # one Slurm command; a controller that does not answer in this long is down
RDZV_PORT_BASE = 20000  # the rendezvous port is RDZV_PORT_BASE + job id mod RDZV_PORT_SPAN:
RDZV_PORT_SPAN = 20000  # two jobs sharing a node rarely pick the same one

OnFailure = Literal["stop", "continue"]
Phase = Literal["pending", "running", "completed", "failed", "forgotten"]


class SlurmError(Exception):
    """A Slurm command is missing, failed or answered something unreadable; the message is one line."""


@dataclass(frozen=True)
class SlurmSettings:
    """What every job of a launch asks the scheduler for (`[project.slurm]`, `[experiment.slurm]`)."""

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
class LegCommand:
    """What one leg runs, as a local launch would run it: torchrun, the module, the trainer's flags."""

    leg: str
    torchrun: str  # path of the torchrun to run (the same path on every node: a shared filesystem)
    nproc_per_node: int
    module: str  # e.g. "nanochat.base_train"
    args: tuple[str, ...]  # the trainer's flags, as an argv list
    uses_gpus: bool = True  # False for a CPU leg: it asks for no GPU unless the settings say so


@dataclass(frozen=True)
class SubmittedJob:
    leg: str
    job_id: str
    argv: tuple[str, ...]  # the sbatch command line that submitted it


@dataclass(frozen=True)
class JobState:
    """Where one job stands, in the scheduler's words.

    phase: pending (reason: Resources, Priority, Dependency, ...), running (nodes, elapsed),
    completed, failed (reason: NonZeroExitCode, NODE_FAIL, TIMEOUT, OUT_OF_MEMORY, CANCELLED,
    DependencyNeverSatisfied, ...) or forgotten (the scheduler no longer knows the job).
    """

    job_id: str
    phase: Phase
    slurm_state: str | None = None  # the scheduler's own state word: PENDING, RUNNING, NODE_FAIL, ...
    reason: str | None = None  # why it waits or why it ended; None when there is nothing to say
    nodes: str | None = None  # Slurm's node list expression ("n[1-2]"); None before it had nodes
    elapsed_s: int | None = None
    exit_code: int | None = None  # the batch script's exit status, once it ended
    exit_signal: int | None = None  # the signal that ended it, 0 for none
    source: str = "scontrol"  # where this came from: scontrol, sacct, or "" for forgotten

    @property
    def ran(self) -> bool:
        """The job got nodes at some point (a job cancelled while pending never ran)."""
        return bool(self.nodes)


# The scheduler's job states, by phase. Anything else that has ended counts as failed.
_PENDING = {"PENDING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD", "RESV_DEL_HOLD"}
_RUNNING = {
    "RUNNING", "CONFIGURING", "COMPLETING", "SUSPENDED", "STOPPED", "SIGNALING",
    "STAGE_OUT", "RESIZING", "POWER_UP_NODE", "UPDATE_DB",
}
_COMPLETED = {"COMPLETED"}


# ----------------------------------------------------------------------------------------------
# running Slurm's commands


def _run(argv: list[str], timeout: float = CALL_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
    """Run one Slurm command (argv, no shell); SlurmError when it is missing or hangs. Any exit code."""
    if shutil.which(argv[0]) is None:
        raise SlurmError(f"{argv[0]} not found on PATH: the Slurm client commands are needed on this machine")
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise SlurmError(f"{argv[0]} did not answer in {timeout:.0f}s (is slurmctld up?)") from None
    except OSError as e:
        raise SlurmError(f"{argv[0]}: {e.strerror or e}") from None


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def _failed(proc: subprocess.CompletedProcess[str], what: str) -> SlurmError:
    why = _last_line(proc.stderr) or _last_line(proc.stdout) or "no message"
    return SlurmError(f"{what} failed (exit {proc.returncode}): {why}")


# ----------------------------------------------------------------------------------------------
# the batch script of one leg

# An #SBATCH line is split on whitespace by sbatch (quotes do not group), so a value may hold no
# whitespace, no quote, no backslash and no control character.
_UNSAFE_SBATCH = re.compile(r"[\s'\"\\\x00-\x1f\x7f]")


def _sbatch_value(option: str, value: object) -> str:
    text = str(value)
    if not text or _UNSAFE_SBATCH.search(text):
        raise SlurmError(f"{option} {text!r}: an #SBATCH value may not be empty or hold spaces, quotes or backslashes")
    return text


def _output_path(path: Path) -> str:
    """A file name for --output: Slurm expands %j and friends in it, so a literal % is written %%."""
    return _sbatch_value("--output", str(path)).replace("%", "%%")


def leg_log(exp_dir: Path | str, leg: str) -> Path:
    """The leg's log: the job's stdout and stderr, appended."""
    return Path(exp_dir) / f"{leg}.log"


def gpus_per_node(cmd: LegCommand, settings: SlurmSettings) -> int:
    """GPUs the job asks for on each node: the settings' figure, else one per torchrun process."""
    if settings.gpus_per_node is not None:
        return settings.gpus_per_node
    return cmd.nproc_per_node if cmd.uses_gpus else 0


def render_batch_script(
    cmd: LegCommand,
    settings: SlurmSettings,
    exp_dir: Path | str,
    workdir: Path | str,
    job_name: str,
) -> str:
    """The batch script of one leg: #SBATCH lines, the setup lines, then srun + torchrun.

    `workdir` is the checkout the legs run from (`-m nanochat.base_train` imports from there), on
    the same path on every node. Pure: reads nothing, writes nothing.
    """
    if int(settings.nodes) < 1 or int(cmd.nproc_per_node) < 1:
        raise SlurmError(f"leg {cmd.leg}: nodes and nproc_per_node must be at least 1")
    log = _output_path(leg_log(exp_dir, cmd.leg))
    opts = [
        f"--job-name={_sbatch_value('--job-name', job_name)}",
        f"--output={log}",
        f"--error={log}",
        "--open-mode=append",  # a leg's log is only ever appended to, as locally
        f"--chdir={_sbatch_value('--chdir', workdir)}",
        f"--nodes={int(settings.nodes)}",
        "--ntasks-per-node=1",  # one torchrun per node; it starts the node's nproc_per_node workers
        "--no-requeue",  # a leg that lost a node fails: rerunning it from step 0 is the user's call
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
            opts.append(f"{option}={_sbatch_value(option, value)}")
    gpus = gpus_per_node(cmd, settings)
    if gpus > 0:
        opts.append(f"--gpus-per-node={gpus}")
    lines = ["#!/bin/bash", f"# leg {cmd.leg}: a batch job of the nanochat cockpit; `sbatch` this file to run it again"]
    lines += [f"#SBATCH {opt}" for opt in opts]
    if settings.extra_args:
        lines.append("#SBATCH " + " ".join(_sbatch_value("extra_args", a) for a in settings.extra_args))
    lines += ["", "set -e"]
    lines += list(settings.setup)
    # srun does not pass the job's --cpus-per-task on to its steps (Slurm 22.05+): say it again
    step_cpus = f" --cpus-per-task={int(settings.cpus_per_task)}" if settings.cpus_per_task else ""
    trainer = " ".join(shlex.quote(a) for a in cmd.args)
    lines += [
        "",
        "# torchrun's rendezvous lives on the first node of the allocation, at the address Slurm reaches it by",
        'head_node=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)',
        "head_addr=$(scontrol show node -o \"$head_node\" | tr ' ' '\\n' | sed -n 's/^NodeAddr=//p')",
        f"port=$(({RDZV_PORT_BASE} + SLURM_JOB_ID % {RDZV_PORT_SPAN}))",
        "",
        f"exec srun --ntasks-per-node=1{step_cpus} --kill-on-bad-exit=1 \\",
        f"    {shlex.quote(cmd.torchrun)} --nnodes=\"$SLURM_NNODES\" --nproc_per_node={int(cmd.nproc_per_node)} \\",
        '    --rdzv_id="$SLURM_JOB_ID" --rdzv_backend=c10d --rdzv_endpoint="${head_addr:-$head_node}:$port" \\',
        f"    -m {shlex.quote(cmd.module)} --" + (f" \\\n    {trainer}" if trainer else ""),
        "",
    ]
    return "\n".join(lines)


def script_path(exp_dir: Path | str, leg: str) -> Path:
    """Where a leg's batch script is kept, so what ran can be read and resubmitted by hand."""
    return Path(exp_dir) / "slurm" / f"{leg}.sbatch"


def write_script(exp_dir: Path | str, leg: str, text: str) -> Path:
    """Save a leg's batch script as a new file (never over an existing one, never through a symlink)."""
    if not leg or "/" in leg or leg in (".", ".."):
        raise SlurmError(f"leg name {leg!r} cannot name a file")
    path = script_path(exp_dir, leg)
    path.parent.mkdir(exist_ok=True)
    if path.parent.is_symlink():
        raise SlurmError(f"{path.parent} is a symlink: not writing through it")
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    except FileExistsError:
        raise SlurmError(f"{path} exists: a launch writes its scripts into a fresh dir") from None
    with os.fdopen(fd, "w") as f:
        f.write(text)
    return path


# ----------------------------------------------------------------------------------------------
# submit, query, cancel


def dependency_type(on_failure: OnFailure) -> str:
    """afterok: a failed leg leaves the rest never run; afterany: the next leg runs regardless."""
    if on_failure not in ("stop", "continue"):
        raise SlurmError(f"on_failure {on_failure!r}: expected 'stop' or 'continue'")
    return "afterok" if on_failure == "stop" else "afterany"


def sbatch_argv(script: Path | str, after: str | None = None, on_failure: OnFailure = "stop") -> list[str]:
    """The sbatch command line of one job; `after` is the job id it waits for, if any.

    With afterok, a job whose dependency can never be met is cancelled by the scheduler instead of
    pending forever.
    """
    argv = ["sbatch", "--parsable"]
    if after is not None:
        argv += [f"--dependency={dependency_type(on_failure)}:{after}", "--kill-on-invalid-dep=yes"]
    return [*argv, str(script)]


def submit(script: Path | str, after: str | None = None, on_failure: OnFailure = "stop") -> tuple[str, list[str]]:
    """Submit one batch script; its job id and the command line that submitted it."""
    argv = sbatch_argv(script, after, on_failure)
    proc = _run(argv)
    if proc.returncode != 0:
        raise _failed(proc, "sbatch")
    # --parsable prints "<job id>" or "<job id>;<cluster>"
    job_id = _last_line(proc.stdout).split(";")[0]
    if not job_id.isdigit():
        raise SlurmError(f"sbatch printed no job id: {_last_line(proc.stdout)!r}")
    return job_id, argv


def submit_chain(scripts: list[tuple[str, Path]], on_failure: OnFailure = "stop") -> list[SubmittedJob]:
    """Submit (leg, script) in order, each job depending on the one before it.

    If a submission fails, the jobs already submitted are cancelled and SlurmError says which leg
    could not be submitted: a chain is submitted whole or not at all.
    """
    dependency_type(on_failure)
    done: list[SubmittedJob] = []
    for leg, script in scripts:
        try:
            job_id, argv = submit(script, done[-1].job_id if done else None, on_failure)
        except SlurmError as e:
            if done:
                try:
                    cancel([j.job_id for j in done])
                except SlurmError:
                    pass  # the submission error is the one to report
            raise SlurmError(f"leg {leg}: {e}") from None
        done.append(SubmittedJob(leg, job_id, tuple(argv)))
    return done


# `scontrol show job -o` prints one line of Key=Value pairs; a value may hold spaces
# ("Reason=(ReqNodeNotAvail, UnavailableNodes:n2)"), so a pair ends where the next " Key=" starts.
_PAIR = re.compile(r"([A-Za-z][\w:/]*)=(.*?)(?= [A-Za-z][\w:/]*=|$)")


def parse_scontrol_job(line: str) -> dict[str, str]:
    """One job's `scontrol show job -o` line as a dict (the first value wins on a repeated key)."""
    fields: dict[str, str] = {}
    for key, value in _PAIR.findall(line.strip()):
        fields.setdefault(key, value.strip())
    return fields


def parse_duration(text: str | None) -> int | None:
    """Slurm's [D-]HH:MM:SS (or MM:SS) as seconds; None for anything else."""
    if not text:
        return None
    m = re.fullmatch(r"(?:(\d+)-)?(?:(\d+):)?(\d+):(\d+)", text.strip())
    if not m:
        return None
    days, hours, minutes, seconds = (int(g) if g else 0 for g in m.groups())
    return ((days * 24 + hours) * 60 + minutes) * 60 + seconds


def _exit(text: str | None) -> tuple[int | None, int | None]:
    m = re.fullmatch(r"(\d+):(\d+)", (text or "").strip())
    return (int(m.group(1)), int(m.group(2))) if m else (None, None)


def _nodes(text: str | None) -> str | None:
    text = (text or "").strip()
    return text if text and text != "(null)" else None


def state_from_fields(job_id: str, fields: dict[str, str], source: str = "scontrol") -> JobState:
    """A JobState from the scheduler's fields (JobState, Reason, NodeList, RunTime, ExitCode)."""
    raw = fields.get("JobState", "").split()
    slurm_state = raw[0] if raw else "UNKNOWN"
    reason = fields.get("Reason")
    reason = None if reason in (None, "", "None", "(null)") else reason
    exit_code, exit_signal = _exit(fields.get("ExitCode"))
    common = dict(
        job_id=job_id,
        slurm_state=slurm_state,
        nodes=_nodes(fields.get("NodeList")),
        elapsed_s=parse_duration(fields.get("RunTime")),
        source=source,
    )
    if slurm_state in _PENDING:
        return JobState(phase="pending", reason=reason, **common)
    if slurm_state in _RUNNING:
        return JobState(phase="running", reason=reason, **common)
    if slurm_state in _COMPLETED:
        return JobState(phase="completed", exit_code=exit_code, exit_signal=exit_signal, **common)
    # Ended otherwise. The state word says why (NODE_FAIL, TIMEOUT, OUT_OF_MEMORY, ...: its Reason,
    # e.g. NodeDown, only repeats it), except for FAILED (the script's exit status: NonZeroExitCode)
    # and CANCELLED, whose Reason tells a user's scancel from DependencyNeverSatisfied.
    why = slurm_state
    if slurm_state == "FAILED":
        why = reason or "NonZeroExitCode"
    elif slurm_state == "CANCELLED" and reason:
        why = reason
    return JobState(phase="failed", reason=why, exit_code=exit_code, exit_signal=exit_signal, **common)


def _from_scontrol(job_id: str) -> JobState | None:
    """The controller's view of a job, or None when it no longer knows it."""
    proc = _run(["scontrol", "show", "job", "-o", job_id])
    if proc.returncode != 0:
        if "Invalid job id" in proc.stderr:
            return None
        raise _failed(proc, "scontrol show job")
    for line in proc.stdout.splitlines():
        fields = parse_scontrol_job(line)
        # a job array or het job prints several lines; ours is the one with our id
        if fields.get("JobId") == job_id:
            return state_from_fields(job_id, fields)
    raise SlurmError(f"scontrol show job {job_id}: no line for the job in its answer")


def _from_sacct(job_id: str) -> JobState | None:
    """The accounting's view of a finished job, or None where there is no accounting or no record."""
    if shutil.which("sacct") is None:
        return None
    fmt = "JobID,State,NodeList,Elapsed,ExitCode"
    proc = _run(["sacct", "--noheader", "--parsable2", "--allocations", "--jobs", job_id, f"--format={fmt}"])
    if proc.returncode != 0:
        return None  # e.g. "Slurm accounting storage is disabled": nothing to ask
    for line in proc.stdout.splitlines():
        parts = line.split("|")
        if len(parts) == 5 and parts[0] == job_id:
            fields = dict(zip(("JobId", "JobState", "NodeList", "RunTime", "ExitCode"), parts, strict=True))
            fields["NodeList"] = "" if fields["NodeList"] == "None assigned" else fields["NodeList"]
            # sacct says "CANCELLED by 0": the state word is the first
            return state_from_fields(job_id, fields, source="sacct")
    return None


def job_state(job_id: str) -> JobState:
    """Where one job stands: the controller's view, else the accounting's, else forgotten."""
    return _from_scontrol(job_id) or _from_sacct(job_id) or JobState(job_id=job_id, phase="forgotten", source="")


def job_states(job_ids: list[str]) -> dict[str, JobState]:
    """job_state of each id, by id."""
    return {j: job_state(j) for j in job_ids}


def queued(job_ids: list[str]) -> list[str]:
    """The ids among these that squeue still lists (pending, running or completing)."""
    if not job_ids:
        return []
    proc = _run(["squeue", "--noheader", "--format=%i", "--jobs", ",".join(job_ids)])
    if proc.returncode != 0:
        if "Invalid job id" in proc.stderr:
            return []  # squeue knows none of them any more
        raise _failed(proc, "squeue")
    listed = {line.strip() for line in proc.stdout.splitlines()}
    return [j for j in job_ids if j in listed]


def cancel(job_ids: list[str], timeout_s: float = 60.0, poll_s: float = 0.2) -> None:
    """Cancel a chain's jobs and wait until squeue lists none of them.

    The last leg is cancelled first: under afterany, a running leg that ends before its successor
    is cancelled would let that successor start. A job leaves squeue only once its processes are
    gone from every node (the scheduler sends SIGTERM, then SIGKILL after its KillWait).
    """
    if not job_ids:
        return
    proc = _run(["scancel", *reversed(job_ids)])
    if proc.returncode != 0:  # ids already ended or forgotten are no error to scancel: this is one
        raise _failed(proc, "scancel")
    deadline = time.monotonic() + timeout_s
    left = queued(job_ids)
    while left:
        if time.monotonic() > deadline:
            raise SlurmError(f"jobs {','.join(left)} still queued {timeout_s:.0f}s after scancel")
        time.sleep(poll_s)
        left = queued(left)


def expand_nodes(nodelist: str) -> list[str]:
    """A node list expression ("n[1-2]") as node names, through `scontrol show hostnames`."""
    proc = _run(["scontrol", "show", "hostnames", nodelist])
    if proc.returncode != 0:
        raise _failed(proc, "scontrol show hostnames")
    return [line.strip() for line in proc.stdout.splitlines() if line.strip()]


@dataclass
class ChainPlan:
    """The scripts of a launch's legs, rendered: what --dry-run prints and what a launch submits."""

    scripts: list[tuple[str, str]] = field(default_factory=list)  # (leg, script text), in order
    on_failure: OnFailure = "stop"

    def argv_lines(self, exp_dir: Path | str) -> list[str]:
        """The sbatch command lines, with the previous leg's job id as a placeholder."""
        out, prev = [], None
        for leg, _ in self.scripts:
            out.append(shlex.join(sbatch_argv(script_path(exp_dir, leg), prev, self.on_failure)))
            prev = f"<job id of {leg}>"
        return out


def plan_chain(
    commands: list[LegCommand],
    settings: SlurmSettings,
    exp_dir: Path | str,
    workdir: Path | str,
    job_prefix: str,
    on_failure: OnFailure = "stop",
) -> ChainPlan:
    """Render every leg's script (job name `<job_prefix>/<leg>`); raises SlurmError on a bad setting."""
    dependency_type(on_failure)
    scripts = [
        (c.leg, render_batch_script(c, settings, exp_dir, workdir, f"{job_prefix}/{c.leg}")) for c in commands
    ]
    return ChainPlan(scripts, on_failure)


def launch_chain(plan: ChainPlan, exp_dir: Path | str) -> list[SubmittedJob]:
    """Save each script as `<exp_dir>/slurm/<leg>.sbatch`, then submit them as one chain."""
    paths = [(leg, write_script(exp_dir, leg, text)) for leg, text in plan.scripts]
    return submit_chain(paths, plan.on_failure)
