"""A report's per-step CSV, streamed: every step line of every run's log as CSV rows (numbers as
the log printed them, then `baseline`: 1 on the rows of the report's baseline, whether it ran in
the dir or in another one, else 0), and each run's plotted series collected on the way
(plots.Series).

A log of any size costs bounded memory: its step lines come a chunk at a time (logs.parse_file)
and go out as CSV rows (the csv module; a number is str() of what the line parser read, `650.67`
as printed, `1.00` as `1.0`). Big logs are read side by side by
worker processes (`python -c`, one per CPU), each writing its logs' rows to part files in a
private temp dir; the parts are copied into the CSV in the runs' order: the same bytes as one
after the other.

Layer 2: imports the layers below (fsutil, lazy, logs, safetext) and plots.
"""

from __future__ import annotations

import csv
import io
import math
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import BinaryIO

from cockpit import fsutil, lazy, logs, plots, safetext
from cockpit.plots import Series
from cockpit.vocab import DEFAULT_TAIL

# The per-step CSV's columns: a step line's fields, less the percent (step / total says it).
STEP_COLUMNS = tuple(f for f in logs.STEP_FIELDS if f != "pct")
BASELINE_COLUMN = "baseline"  # after the step columns: 1 on the baseline's rows


# Each log's parse is CPU-bound (the line parser, about 16 us a step line) and independent of the
# others: on free cores, big logs read side by side end together, for the same CPU time in all.
PARALLEL_MIN_BYTES = 64 << 20  # logs of less, all told, are read in this process: a worker's start costs more
PARALLEL_MAX_WORKERS = 8


def stream_steps(
    jobs: list[tuple[str, str]],
    out: BinaryIO,
    tail: int = DEFAULT_TAIL,
    baseline: frozenset[str] = frozenset(),
) -> dict[str, dict[str, Series]]:
    """Write every step line of each (run, log path) of `jobs` to `out` as CSV rows (bytes),
    numbers as the log printed them, `baseline` 1 for the runs named in `baseline`; return each
    run's plotted series.

    Each log is read a chunk of lines at a time. Big logs (PARALLEL_MIN_BYTES together) are read
    side by side by worker processes (`python -c`, one per CPU), each writing its logs' rows to part
    files in a private temp dir; the parts are copied into `out` in the runs' order, the same bytes
    as one after the other. A log a worker could not do is read here."""
    out.write((",".join(["run", *STEP_COLUMNS, BASELINE_COLUMN]) + "\r\n").encode())
    workers = _workers([path for _, path in jobs])
    tmp = tempfile.mkdtemp(prefix="cockpit-report-") if workers > 1 else None  # private: 0700
    try:
        done = (
            _in_workers(jobs, tail, workers, tmp, baseline) if tmp else {}
        )  # job -> (its part file, its series)
        series: dict[str, dict[str, Series]] = {}
        for i, (run, path) in enumerate(jobs):
            if i in done:
                part, found = done[i]
                _append(part, out)
                os.unlink(part)
            else:
                found = _steps_csv(path, run, tail, out, run in baseline)
            if found:
                series[run] = found
        return series
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)


def _append(part: str, out: BinaryIO) -> None:
    """The bytes of file `part` after what `out` holds: copied by the kernel where it can."""
    with open(part, "rb") as f:
        try:
            out.flush()
            while os.copy_file_range(f.fileno(), out.fileno(), 1 << 30):
                pass
        except (AttributeError, OSError, io.UnsupportedOperation):  # no such call, or `out` is no file
            f.seek(os.lseek(f.fileno(), 0, os.SEEK_CUR))  # on from what the kernel copied, if anything
            shutil.copyfileobj(f, out, 1 << 20)


def _workers(paths: list[str]) -> int:
    """How many processes read these logs: 1 unless there are several and they are big."""
    try:
        size = sum(os.stat(p).st_size for p in paths)
    except OSError:
        return 1
    if len(paths) < 2 or size < PARALLEL_MIN_BYTES:
        return 1
    return max(1, min(len(paths), os.cpu_count() or 1, PARALLEL_MAX_WORKERS))


def _in_workers(
    jobs: list[tuple[str, str]], tail: int, workers: int, tmp: str, baseline: frozenset[str] = frozenset()
) -> dict[int, tuple[str, dict[str, Series]]]:
    """Jobs read by `workers` processes, job i by worker i % workers: {job: (part file, series)}
    for each one a worker did (its part complete, its series pickled beside it)."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(
            p for p in (str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")) if p
        ),
    }
    procs = []
    for w in range(workers):
        mine = list(range(w, len(jobs), workers))
        spec = os.path.join(tmp, f"w{w}.jobs")
        with open(fsutil.create_new(spec), "wb") as f:
            pickle.dump(
                [
                    (i, jobs[i][0], jobs[i][1], tail, os.path.join(tmp, f"{i}.csv"), jobs[i][0] in baseline)
                    for i in mine
                ],
                f,
            )
        try:
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-c", _WORKER, spec],
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        except OSError:
            continue  # its logs are read here
    try:
        for proc in procs:
            proc.wait()
    finally:  # interrupted: no worker outlives the report
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    done = {}
    for i in range(len(jobs)):
        part, result = os.path.join(tmp, f"{i}.csv"), os.path.join(tmp, f"{i}.series")
        if os.path.exists(result):  # written last: the part is complete
            with open(result, "rb") as f:
                done[i] = (part, pickle.load(f))
    return done


_WORKER = "import sys; from cockpit.step_files import _worker; _worker(sys.argv[1])"


def _worker(spec: str) -> None:
    """A worker process: its jobs' part files, and each one's series (pickled) once its part is done."""
    with open(spec, "rb") as f:
        jobs = pickle.load(f)
    for i, run, path, tail, part, base in jobs:
        with open(fsutil.create_new(part), "wb") as f:
            found = _steps_csv(path, run, tail, f, base)
        with open(fsutil.create_new(os.path.join(os.path.dirname(part), f"{i}.series")), "wb") as f:
            pickle.dump(found, f)


def _steps_csv(path: str, run: str, tail: int, out: BinaryIO, baseline: bool = False) -> dict[str, Series]:
    """One log's step lines as CSV rows into `out` (`baseline`: the report's baseline's); its
    plotted series. A log that cannot be read (any more) adds the rows read so far, and no series."""
    np = lazy.numpy()
    name = safetext.printable(run)
    flag = 1 if baseline else 0
    kept = plots.Collected(tail)
    buf = io.StringIO()
    writer = csv.writer(buf)  # None -> an empty cell, a number -> str()

    def sink(table: logs.StepTable) -> None:
        writer.writerows([name, *[getattr(r, f) for f in STEP_COLUMNS], flag] for r in table.rows())
        out.write(buf.getvalue().encode())
        buf.seek(0)
        buf.truncate()
        kept.add(table)

    try:
        state = logs.parse_file(path, tail=tail, on_steps=sink)
    except (OSError, ValueError):
        return {}
    found = kept.series()
    val = [(v.step, v.value) for v in state.val_bpb if v.step is not None and math.isfinite(v.value)]
    if val:
        x, y = (np.array(a, np.float64) for a in zip(*val, strict=True))
        found["val_bpb"] = Series(x, y, y, False, batch_tokens=state.batch_tokens or 0)
    return found
