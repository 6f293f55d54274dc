"""A dir's step series for other tools: `cockpit export DIR --tensorboard OUT`.

Each leg's log of the dir is one TensorBoard run (`OUT/<run>/events.out.tfevents...`), and so is
each earlier attempt a resubmit kept (`OUT/attempts/<leg>.<n>/`). Every step line gives one event
with the figures it carries, tagged as vocab.TRACKER_SERIES names them (upstream nanochat's wandb
keys: `train/loss`, `train/tok_per_sec`, `train/dt` in seconds, ..., plus `train/bal` and
`train/drop_pct`), and every `Validation bpb` line one `val/bpb` event at its step. A log's lines
carry no clock, so an event's wall time is the log's last write less the dt of the steps after it.

The records are TensorBoard's own: its protos (`Event`, `Summary`) framed by its `RecordWriter`
(the CRCs its readers check), the file named as its EventFileWriter names one. The files are
created by the cockpit (fsutil.create_new), so nothing is written through a link: OUT must be a
new path or an empty dir (never a symlink), and every dir under it is made here. Each log is read
twice in chunks (the dt total, then the events): memory stays bounded whatever its size.

tensorboard is an optional dependency (`pip install -e '.[export]'`), imported only here.

Layer 2: imports plan, expdir, fsutil, logs, registry, safetext, vocab and executors.resubmit (the
attempts' names).
"""

from __future__ import annotations

import os
import re
import socket
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cockpit import expdir, fsutil, logs, safetext
from cockpit import registry as reg
from cockpit.executors.resubmit import ATTEMPTS_DIR
from cockpit.plan import leg_name_ok
from cockpit.vocab import TRACKER_SERIES, TRACKER_VAL_BPB

FILE_VERSION = "brain.Event:2"  # the first event of every event file, as TensorBoard's writer puts it
MISSING = (
    "--tensorboard needs the tensorboard package, which is not installed: pip install -e '.[export]' "
    "(or: pip install tensorboard)"
)
_ATTEMPT = re.compile(r"(.+)\.([1-9][0-9]*)\.log")


class ExportError(Exception):
    """Bad export input (no such dir, OUT not empty, tensorboard missing): one line for the CLI."""


@dataclass(frozen=True)
class Written:
    run: str  # the run's name in TensorBoard: the log's path under the dir, without `.log`
    steps: int  # step lines written as events
    vals: int  # validation bpb lines written as events
    path: Path  # the event file


def _tensorboard() -> tuple[Any, Any, Any]:
    """TensorBoard's (event_pb2, summary_pb2, RecordWriter), or ExportError saying how to get them."""
    try:
        # function-level: tensorboard (protobuf) takes most of a second to import; only an export needs it
        from tensorboard.compat.proto import event_pb2, summary_pb2
        from tensorboard.summary.writer.record_writer import RecordWriter
    except ImportError:
        raise ExportError(MISSING) from None
    return event_pb2, summary_pb2, RecordWriter


def runs(exp_dir: Path) -> list[tuple[str, Path]]:
    """(run name, log) of every leg's log in the dir (planned legs first, in plan order, then any
    other log; not the prepare step's), then each attempt kept under attempts/ by leg and number."""
    d = expdir.open_dir(exp_dir)
    names = list(d.legs)
    try:
        others = sorted(p.stem for p in exp_dir.glob("*.log") if leg_name_ok(p.stem))
    except OSError as e:
        raise ExportError(f"cannot list {safetext.oneline(str(exp_dir))}: {fsutil.oneline(e)}") from None
    prepared = d.plan is not None and d.plan.prepare is not None
    names += [n for n in others if n not in names and not (prepared and n == reg.PREPARE)]
    out = [(n, d.log(n)) for n in names if fsutil.is_regular(d.log(n))]
    try:
        kept = os.listdir(exp_dir / ATTEMPTS_DIR)
    except (FileNotFoundError, NotADirectoryError):
        kept = []
    except OSError as e:
        raise ExportError(
            f"cannot list {safetext.oneline(str(exp_dir / ATTEMPTS_DIR))}: {fsutil.oneline(e)}"
        ) from None
    attempts = sorted((m.group(1), int(m.group(2)), name) for name in kept if (m := _ATTEMPT.fullmatch(name)))
    out += [
        (f"{ATTEMPTS_DIR}/{name[:-4]}", p)
        for _, _, name in attempts
        if fsutil.is_regular(p := exp_dir / ATTEMPTS_DIR / name)
    ]
    return out


def prepare_out(out: str | os.PathLike[str]) -> Path:
    """OUT made ready: a new dir, or an empty one already there (not a symlink, not a file)."""
    text = os.fspath(out)
    if not text.strip():
        raise ExportError("--tensorboard: empty path: give a new or empty dir")
    p = Path(os.path.abspath(os.path.expanduser(text)))
    shown = safetext.oneline(str(p))
    try:
        st = os.lstat(p)
    except FileNotFoundError:
        st = None
    except OSError as e:
        raise ExportError(f"--tensorboard {shown}: {fsutil.oneline(e)}") from None
    try:
        if st is None:
            os.makedirs(p.parent, exist_ok=True)
            os.mkdir(p, 0o755)
        elif stat.S_ISLNK(st.st_mode):
            raise ExportError(
                f"--tensorboard {shown} is a symlink (refused: the cockpit never writes through a link)"
            )
        elif not stat.S_ISDIR(st.st_mode):
            raise ExportError(f"--tensorboard {shown} exists and is not a dir")
        elif os.listdir(p):
            raise ExportError(f"--tensorboard {shown} is not empty: export writes into a new or empty dir")
    except OSError as e:
        raise ExportError(f"--tensorboard {shown}: {fsutil.oneline(e)}") from None
    return p


def tensorboard(exp_dir: Path, out: str | os.PathLike[str]) -> tuple[Path, list[Written]]:
    """Write the dir's runs as TensorBoard event files under OUT (see the module's docstring):
    (OUT made absolute, each run written). ExportError, one line, when anything refuses; the
    input is checked, and tensorboard imported, before OUT is made."""
    exp_dir = Path(exp_dir)
    if not fsutil.is_dir(exp_dir):
        raise ExportError(f"{safetext.oneline(str(exp_dir))}: no such experiment dir")
    found = runs(exp_dir)
    if not found:
        raise ExportError(
            f"{safetext.oneline(str(exp_dir))}: no *.log file here: nothing to export "
            "(give the dir of an experiment, or any dir of *.log files)"
        )
    tb = _tensorboard()
    root = prepare_out(out)
    written = []
    for i, (run, log) in enumerate(found):
        try:
            written.append(_write_run(tb, root, run, log, i))
        except OSError as e:
            done = f"; {', '.join(w.run for w in written)} written" if written else ""
            raise ExportError(f"{safetext.oneline(run)}: {fsutil.oneline(e)}{done}") from None
    return root, written


def _write_run(tb: tuple[Any, Any, Any], root: Path, run: str, log: Path, index: int) -> Written:
    event_pb2, summary_pb2, RecordWriter = tb
    fields = ["step", *TRACKER_SERIES]
    total_dt = 0.0

    def add_dt(table: logs.StepTable) -> None:
        nonlocal total_dt
        c = table.column("dt_ms")
        total_dt += float(c.values[c.present].sum())

    first = logs.parse_file(log, on_steps=add_dt)
    vals = [(v.step, v.value) for v in first.val_bpb if v.step is not None]
    end = os.stat(log).st_mtime
    name = f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}.{os.getpid()}.{index}"
    path = root / run / name
    fd = fsutil.create_new(path, root=root)
    with os.fdopen(fd, "wb") as f:
        writer = RecordWriter(f)

        def put(wall: float, step: int, values: list[tuple[str, float]]) -> None:
            summary = summary_pb2.Summary(
                value=[summary_pb2.Summary.Value(tag=t, simple_value=v) for t, v in values]
            )
            writer.write(event_pb2.Event(wall_time=wall, step=step, summary=summary).SerializeToString())

        writer.write(
            event_pb2.Event(wall_time=end - total_dt / 1000.0, file_version=FILE_VERSION).SerializeToString()
        )
        val_steps = sorted({s for s, _ in vals})
        val_wall: dict[int, float] = {}
        elapsed = 0.0  # ms of the steps so far
        steps = 0
        v = 0  # the next validation step to place

        def write(table: logs.StepTable) -> None:
            nonlocal elapsed, steps, v
            cols = {k: table.column(k) for k in fields}
            lists = {k: (cols[k].values.tolist(), cols[k].present.tolist()) for k in fields}
            step_at, step_there = lists["step"]
            dt, dt_there = lists["dt_ms"]
            prev = end - (total_dt - elapsed) / 1000.0
            for i in range(len(table)):
                elapsed += dt[i] if dt_there[i] else 0.0
                wall = end - (total_dt - elapsed) / 1000.0
                step = step_at[i] if step_there[i] else 0
                while (
                    v < len(val_steps) and val_steps[v] <= step
                ):  # a validation: its step's wall time (or the one before)
                    val_wall[val_steps[v]] = wall if val_steps[v] == step else prev
                    v += 1
                prev = wall
                values = [
                    (tag, lists[k][0][i] * factor)
                    for k, (tag, factor) in TRACKER_SERIES.items()
                    if lists[k][1][i]
                ]
                if values:
                    put(wall, step, values)
                    steps += 1

        logs.parse_file(log, on_steps=write)
        for step, value in vals:
            put(val_wall.get(step, end), step, [(TRACKER_VAL_BPB, value)])
        writer.flush()
    return Written(run, steps, len(vals), path)
