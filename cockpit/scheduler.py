"""Slurm's job table: where a job stands, which jobs are still queued, cancelling them.

The cluster's scheduler is to a Slurm leg what the process table is to a local one: the one
authority on whether it waits, runs or ended, and how. This module asks it through its client
commands, each run as an argv list (never through a shell), and reads their answers:

    scontrol show job -o ID    the controller's view of a job, kept for MinJobAge (300 s by
                               default) after the job ends
    sacct                      the accounting's view, where the cluster keeps accounting
    squeue --jobs ID,...       the jobs still queued (pending, running or completing)
    scancel ID ...             cancel; the job leaves squeue once its processes are gone

    squeue --states=all        the same controller's job table, asked a second time before a job
                               scontrol does not know is taken for forgotten

A job that neither scontrol, nor squeue, nor sacct knows any more is "forgotten": whoever asked
judges it from its log. A missing or failing command raises SlurmError with one line that says
what went wrong.

A job id is only a number someone wrote in a state file: a job is the leg's when its name is the
one the cockpit gave it (`job_name`), its user is this user and, where the scheduler says it, its
standard output is the leg's log (`proof`). Nothing unproven is shown as the leg or cancelled.

Layer 0: imports nothing from the cockpit.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from typing import Literal

CALL_TIMEOUT_S = 30.0  # one Slurm command; a controller that does not answer in this long is down

Phase = Literal["pending", "running", "completed", "failed", "forgotten"]


class SlurmError(Exception):
    """A Slurm command is missing, failed or answered something unreadable; the message is one line."""


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
    started: str | None = None  # when it got its nodes, as the scheduler says it ("2026-02-24T17:27:15")
    ended: str | None = None  # when it ended
    source: str = "scontrol"  # where this came from: scontrol, squeue, sacct, or "" for forgotten
    name: str | None = None  # the job's name, as the scheduler has it
    user_id: int | None = None  # the uid it runs as
    stdout: str | None = (
        None  # its standard output's path as given to sbatch (None where the source does not say)
    )

    @property
    def ran(self) -> bool:
        """The job got nodes at some point (a job cancelled while pending never ran)."""
        return bool(self.nodes)


# A job's name as the cockpit gives it: `<dir name>/<leg>`, with anything outside this set made `_`
# (a name travels through #SBATCH lines and one-line `Key=Value` answers: no space, quote or `=`).
_NAME_UNSAFE = re.compile(r"[^A-Za-z0-9_.+,:@%/-]")


def job_name(dir_name: str, leg: str) -> str:
    """The name the cockpit gives the batch job of a leg of the dir named `dir_name`."""
    return _NAME_UNSAFE.sub("_", f"{dir_name}/{leg}")


def output_pattern(path: str) -> str:
    """A file name as sbatch's --output takes it: Slurm expands %j and friends, so a literal % is %%."""
    return path.replace("%", "%%")


def proof(job: JobState, name: str, log: str) -> str | None:
    """Why `job` is not proven to be the leg's whose job is called `name` and whose log is `log`,
    or None when it is: its name, its user (this process's), and its standard output where the
    scheduler says it (as given to sbatch, or expanded)."""
    if job.name != name:
        return f"its name is {job.name!r}, not {name!r}" if job.name else "the scheduler gives no name for it"
    if job.user_id is None:
        return "the scheduler gives no user for it"
    if job.user_id != os.getuid():
        return f"it runs as uid {job.user_id}, not {os.getuid()}"
    if job.stdout is not None and job.stdout not in (log, output_pattern(log)):
        return f"its output goes to {job.stdout}, not the leg's log"
    return None


# The scheduler's job states, by phase. Anything else that has ended counts as failed.
_PENDING = {"PENDING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD", "RESV_DEL_HOLD"}
_RUNNING = {
    "RUNNING",
    "CONFIGURING",
    "COMPLETING",
    "SUSPENDED",
    "STOPPED",
    "SIGNALING",
    "STAGE_OUT",
    "RESIZING",
    "POWER_UP_NODE",
    "UPDATE_DB",
}
_COMPLETED = {"COMPLETED"}


# ----------------------------------------------------------------------------------------------
# running Slurm's commands


def call(
    argv: list[str], timeout: float = CALL_TIMEOUT_S, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run one Slurm command (argv, no shell; `stdin`: its input); SlurmError when it is missing or
    hangs. Any exit code."""
    if shutil.which(argv[0]) is None:
        raise SlurmError(f"{argv[0]} not found on PATH: the Slurm client commands are needed on this machine")
    try:
        if stdin is not None:
            return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, input=stdin)
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise SlurmError(f"{argv[0]} did not answer in {timeout:.0f}s (is slurmctld up?)") from None
    except OSError as e:
        raise SlurmError(f"{argv[0]}: {e.strerror or e}") from None


def last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def command_failed(proc: subprocess.CompletedProcess[str], what: str) -> SlurmError:
    why = last_line(proc.stderr) or last_line(proc.stdout) or "no message"
    return SlurmError(f"{what} failed (exit {proc.returncode}): {why}")


# ----------------------------------------------------------------------------------------------
# where a job stands


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


def _time(text: str | None) -> str | None:
    """A StartTime or EndTime: an ISO time, or None for Unknown, None and the like."""
    text = (text or "").strip()
    return text if re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d", text) else None


def _nodes(text: str | None) -> str | None:
    text = (text or "").strip()
    return text if text and text != "(null)" else None


def _uid(text: str | None) -> int | None:
    """A uid from `root(0)` (scontrol) or `0` (squeue, sacct)."""
    m = re.fullmatch(r"(?:[^()]*\()?(\d+)\)?", (text or "").strip())
    return int(m.group(1)) if m else None


def state_from_fields(job_id: str, fields: dict[str, str], source: str = "scontrol") -> JobState:
    """A JobState from the scheduler's fields (JobState, Reason, NodeList, RunTime, ExitCode,
    StartTime, EndTime; JobName, UserId, StdOut where the source has them)."""
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
        started=_time(fields.get("StartTime")),
        source=source,
        name=fields.get("JobName") or None,
        user_id=_uid(fields.get("UserId")),
        stdout=fields.get("StdOut") or None,
    )
    if slurm_state in _PENDING:  # a StartTime now is only the scheduler's guess
        return JobState(phase="pending", reason=reason, **{**common, "started": None})
    if slurm_state in _RUNNING:  # an EndTime now is only the time limit's
        return JobState(phase="running", reason=reason, **common)
    common["ended"] = _time(fields.get("EndTime"))
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
    proc = call(["scontrol", "show", "job", "-o", job_id])
    if proc.returncode != 0:
        if "Invalid job id" in proc.stderr:
            return None
        raise command_failed(proc, "scontrol show job")
    for line in proc.stdout.splitlines():
        fields = parse_scontrol_job(line)
        # a job array or het job prints several lines; ours is the one with our id
        if fields.get("JobId") == job_id:
            return state_from_fields(job_id, fields)
    raise SlurmError(f"scontrol show job {job_id}: no line for the job in its answer")


# squeue's fields, in order (-O, each ended by `|`); StdOut last: a path may hold a `|`
_SQUEUE = (
    ("JobId", "JobID"),
    ("JobName", "Name"),
    ("UserId", "UserID"),
    ("JobState", "State"),
    ("Reason", "Reason"),
    ("NodeList", "NodeList"),
    ("RunTime", "TimeUsed"),
    ("StartTime", "StartTime"),
    ("EndTime", "EndTime"),
    ("StdOut", "STDOUT"),
)


def _from_squeue(job_id: str) -> JobState | None:
    """The controller's job table asked through squeue (every state it still keeps), or None when
    it does not list the job: a second opinion before a job is taken for forgotten."""
    fmt = ",".join(f"{field}:|" for _, field in _SQUEUE)
    proc = call(["squeue", "--noheader", "--states=all", "--jobs", job_id, "-O", fmt])
    if proc.returncode != 0:
        if "Invalid job id" in proc.stderr:
            return None
        raise command_failed(proc, "squeue")
    for line in proc.stdout.splitlines():
        parts = line.split("|", len(_SQUEUE) - 1)
        if len(parts) == len(_SQUEUE) and parts[0].strip() == job_id:
            parts[-1] = parts[-1].removesuffix("|")
            fields = {key: value.strip() for (key, _), value in zip(_SQUEUE, parts, strict=True)}
            return state_from_fields(job_id, fields, source="squeue")
    return None


def _from_sacct(job_id: str) -> JobState | None:
    """The accounting's view of a finished job, or None where there is no accounting or no record."""
    if shutil.which("sacct") is None:
        return None
    names = (
        "JobId",
        "JobState",
        "NodeList",
        "RunTime",
        "ExitCode",
        "StartTime",
        "EndTime",
        "UserId",
        "JobName",
    )
    fmt = "JobID,State,NodeList,Elapsed,ExitCode,Start,End,UID,JobName"
    proc = call(["sacct", "--noheader", "--parsable2", "--allocations", "--jobs", job_id, f"--format={fmt}"])
    if proc.returncode != 0:
        return None  # e.g. "Slurm accounting storage is disabled": nothing to ask
    for line in proc.stdout.splitlines():
        parts = line.split("|")
        if len(parts) >= len(names) and parts[0] == job_id:
            parts = [
                *parts[: len(names) - 1],
                "|".join(parts[len(names) - 1 :]),
            ]  # the name last: it may hold a |
            fields = dict(zip(names, parts, strict=True))
            fields["NodeList"] = "" if fields["NodeList"] == "None assigned" else fields["NodeList"]
            # sacct says "CANCELLED by 0": the state word is the first
            return state_from_fields(job_id, fields, source="sacct")
    return None


def job_state(job_id: str) -> JobState:
    """Where one job stands: the controller's view (scontrol, then squeue: one wrong "Invalid job
    id" is not enough), else the accounting's, else forgotten."""
    return (
        _from_scontrol(job_id)
        or _from_squeue(job_id)
        or _from_sacct(job_id)
        or JobState(job_id=job_id, phase="forgotten", source="")
    )


def job_states(job_ids: list[str]) -> dict[str, JobState]:
    """job_state of each id, by id."""
    return {j: job_state(j) for j in job_ids}


def queued(job_ids: list[str]) -> list[str]:
    """The ids among these that squeue still lists (pending, running or completing)."""
    if not job_ids:
        return []
    proc = call(["squeue", "--noheader", "--format=%i", "--jobs", ",".join(job_ids)])
    if proc.returncode != 0:
        if "Invalid job id" in proc.stderr:
            return []  # squeue knows none of them any more
        raise command_failed(proc, "squeue")
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
    proc = call(["scancel", *reversed(job_ids)])
    if proc.returncode != 0:  # ids already ended or forgotten are no error to scancel: this is one
        raise command_failed(proc, "scancel")
    deadline = time.monotonic() + timeout_s
    left = queued(job_ids)
    while left:
        if time.monotonic() > deadline:
            raise SlurmError(f"jobs {','.join(left)} still queued {timeout_s:.0f}s after scancel")
        time.sleep(poll_s)
        left = queued(left)


def expand_nodes(nodelist: str) -> list[str]:
    """A node list expression ("n[1-2]") as node names, through `scontrol show hostnames`."""
    proc = call(["scontrol", "show", "hostnames", nodelist])
    if proc.returncode != 0:
        raise command_failed(proc, "scontrol show hostnames")
    return [line.strip() for line in proc.stdout.splitlines() if line.strip()]
