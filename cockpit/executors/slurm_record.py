"""Recording what the scheduler said of Slurm legs: the one place a reader of the dirs writes.

Reading a dir never writes (expdir.open_dir, resume.build_state, the report's rows): a Slurm leg's
state is the scheduler's to say, asked whenever a dir is read (expdir.reconcile_job). But the
scheduler forgets a job MinJobAge after it ends (300 s by default, without accounting), and no
process of the cockpit watches a chain: so whoever reads a dir and wants its news kept calls
`record_jobs` on what it read, and this writes, for each Slurm leg (and prepare step) whose status
changed since its state file was written, the state as the scheduler told it, then the dir's
report.md when a leg ended after it was written (the batch job may be killed before it could write
one). `cockpit status`, `cockpit resume`, the TUI's collector, `cockpit stop` and a foreground
Slurm launch call it; a plain read (`cockpit report`, `cockpit logs`, a dry run) does not.

Layer 2: imports expdir, report_files and vocab.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from cockpit import report_files
from cockpit.expdir import ExpDir, LegState, read_state, state_path, write_state
from cockpit.vocab import ENDED_STATUSES, Status


def unrecorded(d: ExpDir) -> list[LegState]:
    """The Slurm legs of a dir read just now (the prepare step first) whose state, as the scheduler
    told it, is not what their state file holds: another status, or the log's judgment of a job it
    forgot made or revoked. Never an UNKNOWN (nothing may be said of it), nor a state whose file
    names another job by now (resubmitted meanwhile). Reads only."""
    out = []
    for st in [d.prepare, *d.states.values()]:
        if st is None or st.job_id is None or st.status == Status.UNKNOWN:
            continue
        on_disk = read_state(d.path, st.leg)
        if on_disk is None or on_disk.job_id != st.job_id:
            continue
        if (on_disk.status, on_disk.forgotten_at) != (st.status, st.forgotten_at):
            out.append(st)
    return out


def record_jobs(dirs: Iterable[ExpDir]) -> list[Path]:
    """WRITES, for each of these dirs (as expdir read them, just now): the state file of every
    Slurm leg whose news is not recorded yet (`unrecorded`), then report.md when a leg's end is
    newer than it. A dir this process cannot write is left for the next reader; a report problem
    is never fatal. Returns the reports written."""
    written = []
    for d in dirs:
        for st in unrecorded(d):
            try:
                write_state(d.path, st)  # recorded: the scheduler will forget what it said
            except OSError:
                pass  # a dir this client cannot write: the next client records it
        if (path := _report_if_stale(d)) is not None:
            written.append(path)
    return written


def _report_if_stale(d: ExpDir) -> Path | None:
    """Regenerate a Slurm dir's report.md when one of its legs' ends was recorded after the report
    was written (the end's state file is newer); the report written, or None."""
    if d.plan is None or not any(st.job_id for st in d.states.values()):
        return None
    ended = []
    for st in d.states.values():
        if st.status in ENDED_STATUSES:
            try:
                ended.append(os.stat(state_path(d.path, st.leg)).st_mtime_ns)
            except OSError:
                continue
    if not ended:
        return None
    try:
        written = os.stat(d.path / "report.md").st_mtime_ns
    except OSError:
        written = -1
    if written >= max(ended):
        return None
    try:
        return report_files.write_report(d.path, tail=d.plan.tail)
    except Exception:  # noqa: BLE001 - a report problem never stops a status, a stop or the TUI
        return None
