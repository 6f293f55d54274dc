"""Run a Slurm leg again in its own dir: its saved batch script submitted as a new job, a fresh log.

A leg of a Slurm chain that failed or was stopped (a node lost, a time limit, a cancelled chain)
can run again from the batch script its launch saved (`<dir>/slurm/<leg>.sbatch`). Submitting
that file by hand would leave the leg's state on the old job and append the new run to the old
log, so a report would read two runs as one. `resubmit` does it whole:

    1. each leg is checked: it has ended (not queued, running or unknown; done only with
       `rerun`), and its saved script still names its job, its log and nothing of the chain
       (read as sbatch reads it), so the new job is provably the leg's;
    2. its attempt so far is kept: `<leg>.log` and `state/<leg>.json` move to
       `<dir>/attempts/<leg>.<n>.log` and `.json` (n = 1 for the launch's, then 2, ...), never
       over anything; a fresh, empty `<leg>.log` takes the log's place;
    3. the scripts are submitted as a chain (the prepare step's first, when it is one of them;
       each leg after the one before it, by the plan's on_failure), and each leg's state records
       its new job and its attempt. Anything refused on the way puts the attempts back.

Layer 2: imports fsutil, expdir, registry, sbatch_opts, slurm_policy, scheduler, vocab and executors.slurm.
"""

from __future__ import annotations

import errno
import json
import os
import re
from dataclasses import asdict
from pathlib import Path

from cockpit import fsutil, sbatch_opts
from cockpit.executors import slurm
from cockpit.expdir import LegState, RunError, describe, open_dir, state_path, stop_request_path, write_state
from cockpit.registry import PREPARE
from cockpit.scheduler import SlurmError, cancel, job_name, output_pattern
from cockpit.slurm_policy import COCKPIT_SBATCH
from cockpit.vocab import ACTIVE_STATUSES, Status

ATTEMPTS_DIR = "attempts"  # <dir>/attempts/<leg>.<n>.log and .json: the earlier attempts of a resubmitted leg
SCRIPT_MAX_BYTES = 1 << 20  # a batch script the cockpit wrote is a few KB
# what a leg's or the prepare step's saved script sets of the options the cockpit sets itself
_SCRIPT_SETS = {
    "job-name",
    "output",
    "error",
    "open-mode",
    "chdir",
    "ntasks-per-node",
    "ntasks",
    "no-requeue",
}


def attempt_path(exp_dir: Path | str, leg: str, n: int, suffix: str) -> Path:
    """Where attempt `n` of a resubmitted leg is kept: `<dir>/attempts/<leg>.<n><suffix>`."""
    return Path(exp_dir) / ATTEMPTS_DIR / f"{leg}.{n}{suffix}"


def attempts(exp_dir: Path | str, leg: str) -> int:
    """How many earlier attempts of the leg are kept."""
    pattern = re.compile(re.escape(leg) + r"\.([1-9][0-9]*)\.(log|json)")
    try:
        names = os.listdir(Path(exp_dir) / ATTEMPTS_DIR)
    except FileNotFoundError:
        return 0
    except OSError as e:
        raise RunError(f"cannot list {Path(exp_dir) / ATTEMPTS_DIR}: {describe(e)}") from None
    return max((int(m.group(1)) for n in names if (m := pattern.fullmatch(n))), default=0)


def check_script(exp_dir: Path, leg: str) -> Path:
    """The leg's saved batch script, when sbatch would run it as the leg's job: its name, its log
    (output and error, appended), no option of the chain; RunError (one line) says what is not."""
    path = slurm.script_path(exp_dir, leg)
    try:
        text = fsutil.read_text(path, SCRIPT_MAX_BYTES, follow=False)
        options = sbatch_opts.parse(sbatch_opts.directives(text))
    except FileNotFoundError:
        raise RunError(f"leg {leg}: no saved batch script {path} (was it launched on Slurm?)") from None
    except (OSError, UnicodeDecodeError) as e:
        raise RunError(
            f"leg {leg}: cannot read {path}: {describe(e) if isinstance(e, OSError) else e}"
        ) from None
    except sbatch_opts.SbatchError as e:
        raise RunError(f"leg {leg}: {path} is not what the cockpit saved: {e}") from None
    got = {o.name: o.value for o in options}
    log = output_pattern(str(slurm.leg_log(exp_dir, leg)))
    want = {"job-name": job_name(exp_dir.name, leg), "output": log, "error": log, "open-mode": "append"}
    for key, value in want.items():
        if got.get(key) != value:
            raise RunError(
                f"leg {leg}: {path} was changed (its --{key} is {got.get(key)!r}, not {value!r}): its job "
                "would not be the leg's; launch the leg again instead"
            )
    if odd := sorted(k for k in got if k in COCKPIT_SBATCH and k not in _SCRIPT_SETS):
        raise RunError(
            f"leg {leg}: {path} was changed (it sets --{odd[0]}, which the cockpit sets itself); "
            "launch the leg again instead"
        )
    return path


def _ended(exp_dir: Path, leg: str, st: LegState | None, rerun: bool) -> None:
    """RunError unless the leg's attempt so far has ended (done only with `rerun`)."""
    if st is None:
        return
    if st.status in ACTIVE_STATUSES:
        job = f" as Slurm job {st.job_id}" if st.job_id else ""
        raise RunError(f"leg {leg} is {st.status}{job}: stop it first (cockpit stop {exp_dir} {leg})")
    if st.status == Status.UNKNOWN:
        raise RunError(f"leg {leg}: {st.note}; resubmit it once the scheduler can say where it stands")
    if st.status == Status.DONE and not rerun:
        raise RunError(f"leg {leg} is done; resubmit it again with --rerun")


def _move(exp_dir: Path, src: Path, dst: Path) -> None:
    """Move a file of the dir to a new name in it: a hard link, then the old name removed (never
    over an existing file, never through a link); a copy where the filesystem has no hard links."""
    dfd = fsutil.open_dir(src.parent, root=exp_dir)
    afd = fsutil.open_dir(dst.parent, root=exp_dir, create=True)
    try:
        try:
            os.link(src.name, dst.name, src_dir_fd=dfd, dst_dir_fd=afd, follow_symlinks=False)
        except OSError as e:
            if e.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EMLINK, errno.EXDEV):
                raise
            with (
                fsutil.open_read(src, follow=False) as f,
                os.fdopen(fsutil.create_new(dst, root=exp_dir), "wb") as out,
            ):
                while chunk := f.read(1 << 20):
                    out.write(chunk)
        os.unlink(src.name, dir_fd=dfd)
    finally:
        os.close(dfd)
        os.close(afd)


class _Kept:
    """One leg's attempt moved aside: its log and state under attempts/, a fresh log in place."""

    def __init__(self, exp_dir: Path, leg: str, st: LegState | None):
        self.exp_dir, self.leg, self.state = exp_dir, leg, st
        self.n = attempts(exp_dir, leg) + 1
        self.log = slurm.leg_log(exp_dir, leg)
        self.moved_log = self.wrote_state = self.fresh = self.recorded = False

    def keep(self) -> None:
        if os.path.lexists(self.log):
            _move(self.exp_dir, self.log, attempt_path(self.exp_dir, self.leg, self.n, ".log"))
            self.moved_log = True
        if self.state is not None:
            fd = fsutil.create_new(attempt_path(self.exp_dir, self.leg, self.n, ".json"), root=self.exp_dir)
            with os.fdopen(fd, "w") as f:
                json.dump(asdict(self.state), f, indent=2)
            self.wrote_state = True
        os.close(fsutil.create_new(self.log, root=self.exp_dir))
        self.fresh = True

    def put_back(self) -> None:
        """Undo keep() and the new state, as far as they went (best effort: the refusal that
        made it necessary is what is reported)."""
        try:
            if self.recorded:
                if self.state is not None:
                    write_state(self.exp_dir, self.state)
                else:
                    os.unlink(state_path(self.exp_dir, self.leg))
            if self.fresh and os.path.getsize(self.log) == 0:
                os.unlink(self.log)
            if self.moved_log:
                _move(self.exp_dir, attempt_path(self.exp_dir, self.leg, self.n, ".log"), self.log)
            if self.wrote_state:
                os.unlink(attempt_path(self.exp_dir, self.leg, self.n, ".json"))
        except OSError:
            pass

    def where(self) -> str:
        return str(attempt_path(self.exp_dir, self.leg, self.n, ".log"))


def resubmit(
    exp_dir: Path, legs: list[str], rerun: bool = False
) -> list[tuple[slurm.SubmittedJob, str | None]]:
    """Submit the saved batch scripts of these legs of a Slurm dir again, as one chain in the
    plan's order, each with a fresh log (see the module's docstring). Returns each new job with
    where the leg's earlier attempt is kept (None when it had no log). RunError (one line) when
    anything refuses; then nothing is submitted and every attempt is where it was."""
    d = open_dir(exp_dir)
    if d.plan is None or d.plan.executor != slurm.NAME:
        raise RunError(
            f"{exp_dir} was not launched on Slurm: a local leg runs again with "
            "`cockpit launch EXPERIMENT --legs LEG --rerun` (a fresh dir)"
        )
    names: list[str] = []
    for leg in legs:
        runs = [leg] if leg == PREPARE or leg in d.legs else d.runs(leg)
        if not runs or (leg == PREPARE and d.prepare is None):
            raise RunError(f"{exp_dir} has no leg '{leg}' (legs: {', '.join(d.legs) or 'none'})")
        names += [r for r in runs if r not in names]
    order = [PREPARE, *d.legs]
    names.sort(key=order.index)
    states = {n: d.prepare if n == PREPARE else d.states.get(n) for n in names}
    scripts = []
    for name in names:
        _ended(exp_dir, name, states[name], rerun)
        scripts.append((name, check_script(exp_dir, name)))
    kept = [_Kept(exp_dir, n, states[n]) for n in names]
    jobs: list[slurm.SubmittedJob] = []
    try:
        for k in kept:
            k.keep()
        jobs = slurm.submit_chain(scripts, d.plan.on_failure, prepare=names[0] == PREPARE)
        for k, job in zip(kept, jobs, strict=True):
            before = (
                f"attempt {k.n} ({k.state.status}, Slurm job {k.state.job_id})"
                if k.state
                else f"attempt {k.n}"
            )
            k.recorded = True
            write_state(
                exp_dir,
                LegState(
                    k.leg,
                    Status.QUEUED,
                    job_id=job.job_id,
                    log=str(k.log),
                    note=f"attempt {k.n + 1}: resubmitted as Slurm job {job.job_id}; {before} kept in {ATTEMPTS_DIR}/",
                ),
            )
            try:
                os.unlink(
                    stop_request_path(exp_dir, k.leg)
                )  # the earlier attempt's: this one was not asked to stop
            except FileNotFoundError:
                pass
    except (OSError, SlurmError) as e:
        if jobs:
            try:
                cancel([j.job_id for j in jobs])
            except SlurmError:
                pass  # the first error is the one to report
        for k in reversed(kept):
            k.put_back()
        why = describe(e) if isinstance(e, OSError) else str(e)
        raise RunError(f"nothing resubmitted in {exp_dir}: {why}") from None
    return [(job, k.where() if k.moved_log else None) for k, job in zip(kept, jobs, strict=True)]
