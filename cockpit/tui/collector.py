"""The worker side of the cockpit: everything that touches a file, a process or NVML.

One `Collector` runs in a Textual thread worker. Every 0.25 s it follows the logs of the legs on
screen (new lines, and the live figures parsed from them); every second it samples the GPUs.
When the registry or the experiment dirs change on disk (a stat fingerprint), when poked (a
launch, a stop, a selection), and at least every 10 s, it asks the core for the whole state (see
build.py): the resume state (marks, next leg, safety), the dirs, the report rows of the selected
dir. It publishes an immutable `CockpitView` plus the new log lines; the UI thread picks them up on its
own 0.5 s timer. Nothing here knows a widget; nothing here joins the registry with the dirs.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from cockpit import gpus, logs, resume, runs
from cockpit import registry as reg
from cockpit.tui import build
from cockpit.tui import state as vm

FOLLOW_TAIL_BYTES = 2 << 20  # a log opened mid-way is read from this far before its end
HIST = 120  # steps kept per leg for the sparklines


@dataclass
class Followed:
    """A log followed for the screen: its follower and what it has parsed (the live row's figures)."""

    key: str
    path: Path
    follower: logs.LogFollower
    state: logs.LogState
    skip_partial: bool = False  # opened mid-file: the first line is a fragment


@dataclass
class Request:
    """What the UI wants from the next pass (set from the UI thread, read by the worker)."""

    tabs: tuple[tuple[str, str], ...] = ()  # (key, log path) of the log panes
    report_dir: str | None = None  # the dir whose final table is shown
    report_exp: str | None = None


@dataclass
class Published:
    view: vm.CockpitView | None
    error: str | None  # the registry could not be loaded: its file:line message
    report: vm.ReportView | None
    seq: int
    lines: dict[str, list[str]] = field(default_factory=dict)


class Collector:
    def __init__(
        self,
        registry_path: Path | str,
        sampler: build.Sampler | None = None,
        branch: Callable[[], str | None] | str | None = None,
        clock: Callable[[], dt.datetime] | None = None,
        max_log_lines: int = 2000,
    ):
        self.registry_path = Path(registry_path)
        self.sampler = sampler
        self.branch_fn = branch
        self.clock = clock or dt.datetime.now
        self.max_log_lines = max_log_lines
        self.registry: reg.Registry | None = None
        self.error: str | None = None
        self.request = Request()
        self.followed: dict[str, Followed] = {}
        self.lock = threading.Lock()
        self.wake = threading.Event()
        self.published = Published(None, None, None, 0)
        self._branch: str | None = None
        self._branch_at = -1e9
        self._snapshot: gpus.Snapshot | None = None
        self._seq = 0
        self._stamp: tuple | None = None
        self._state: resume.ResumeState | None = None  # the last resume state: the running legs for the live rows
        self._running: list[build.RunningLeg] = []
        self._fp: tuple | None = None

    # ------------------------------------------------------------------------------------------
    # the worker's loop

    def run(self, stopped: Callable[[], bool], period: float = 0.25, state_every: float = 10.0,
            gpu_every: float = 1.0, live_every: float = 0.5, report_every: float = 2.0) -> None:
        """Until stopped: follow the logs every `period`; republish the live rows and the GPUs at
        most every `live_every`; recompute the whole state (dirs, marks, next leg, report) when the
        experiment dirs or the registry change on disk (a cheap stat fingerprint, every pass),
        when poked (a launch, a stop, a selection), and at least every `state_every` (a process
        that died without a word); the final table of a dir with a running leg every `report_every`."""
        last_state = last_gpu = last_live = last_report = time.monotonic()  # the first pass just ran
        fresh = False  # new lines or a new GPU sample since the last publication
        while not stopped():
            now = time.monotonic()
            try:
                if now - last_gpu >= gpu_every:
                    self.sample()
                    last_gpu, fresh = now, True
                if self.wake.is_set() or self.fingerprint() != self._fp or now - last_state >= state_every:
                    self.wake.clear()
                    self.compute()
                    last_state = last_live = last_report = now
                    fresh = False
                else:
                    if now - last_report >= report_every and self.report_is_live():
                        self.refresh_report()
                        last_report = now
                    if fresh and now - last_live >= live_every:
                        self.refresh_live()
                        last_live, fresh = now, False
                fresh = self.poll_logs() or fresh
            except Exception as e:  # never let the worker die: show it and go on
                self.error = f"cockpit internal error: {type(e).__name__}: {e}"
                self._publish(self.published.view, self.published.report)
            self.wake.wait(period)

    def fingerprint(self) -> tuple:
        """What a full pass depends on that a stat can see: the registry file, and each
        experiment dir with its state/ dir (a new log, plan or state file, an atomic replace)."""
        out: list[tuple] = []
        try:
            st = self.registry_path.stat()
            out.append((st.st_mtime_ns, st.st_size))
        except OSError:
            out.append(None)
        root = self.registry.settings.exp_root if self.registry else None
        if root is None:
            return tuple(out)
        try:
            with os.scandir(root) as it:
                for e in it:
                    if e.name.startswith(".") or not e.is_dir():
                        continue
                    try:
                        state = os.stat(os.path.join(e.path, runs.STATE_DIR)).st_mtime_ns
                    except OSError:
                        state = None
                    out.append((e.name, e.stat().st_mtime_ns, state))
        except OSError:
            pass
        return tuple(sorted(out, key=repr))

    def report_is_live(self) -> bool:
        """Is the shown final table a dir with a leg still running (its figures still move)?"""
        rep = self.published.report
        return rep is not None and any(r.status in runs.ACTIVE_STATUSES for r in rep.rows)

    def refresh_report(self) -> None:
        view, registry, req = self.published.view, self.registry, self.request
        if view is None or registry is None:
            return
        self._publish(view, build.build_report(registry, view, req.report_exp, req.report_dir))

    def poke(self) -> None:
        """Recompute now (after a launch, a stop, a selection)."""
        self.wake.set()

    # ------------------------------------------------------------------------------------------

    def load(self) -> reg.Registry | None:
        """The registry, re-read only when its file changed (a fix is picked up within a pass)."""
        try:
            st = self.registry_path.stat()
            stamp: tuple | None = (st.st_mtime_ns, st.st_size, st.st_ino)
        except OSError:
            stamp = None
        if stamp is not None and stamp == self._stamp:
            return self.registry
        try:
            self.registry = reg.load(self.registry_path)
            self.error = None
        except reg.RegistryError as e:
            self.registry, self.error = None, str(e)
        self._stamp = stamp
        return self.registry

    def sample(self) -> None:
        if self.sampler is None:
            self.sampler = gpus.GpuSampler(history=HIST)
        self._snapshot = self.sampler.sample()

    def branch(self) -> str | None:
        fn = self.branch_fn
        if fn is None or callable(fn):
            if time.monotonic() - self._branch_at > 10.0:  # git is a subprocess: not every pass
                if fn is None:
                    self._branch = runs.git_info(self.registry_path.resolve().parent).get("branch")
                else:
                    self._branch = fn()
                self._branch_at = time.monotonic()
            return self._branch
        return fn

    def compute(self) -> None:
        registry = self.load()
        self._fp = self.fingerprint()  # taken first: a change during this pass shows in the next
        if registry is None:
            self._publish(None, None)
            return
        view, self._state, self._running = build.build_view(
            registry, self._snapshot, self.sampler, self.branch(), self.clock().timestamp(),
            {k: f.state for k, f in self.followed.items()})
        req = self.request
        self._publish(view, build.build_report(registry, view, req.report_exp, req.report_dir))

    def refresh_live(self) -> None:
        """Between two full passes: the live rows from the followed logs, and the GPUs."""
        view, registry = self.published.view, self.registry
        if view is None or registry is None or self._state is None:
            return
        followed = {k: f.state for k, f in self.followed.items()}
        live = tuple(build.live_view(self._state, m, followed.get(f"{m.dir}/{m.leg}"))
                     for m in self._state.running if m.dir)
        gpu = view.gpu
        if self._snapshot is not None:
            gpu = build.gpu_view(self._snapshot, build.gpu_status(registry, self._snapshot),
                                 build.owners(self._snapshot, self._running), self.sampler)
        self._publish(dataclasses.replace(view, live=live, gpu=gpu), self.published.report)

    def _publish(self, view: vm.CockpitView | None, report: vm.ReportView | None) -> None:
        with self.lock:
            self._seq += 1
            lines = self.published.lines
            self.published = Published(view, self.error, report, self._seq, lines)

    # ------------------------------------------------------------------------------------------
    # logs

    def poll_logs(self) -> bool:
        """Read what the followed logs gained; True when some did."""
        got = False
        wanted = dict(self.request.tabs)
        for key in [k for k in self.followed if k not in wanted]:
            self.followed.pop(key).follower.close()
        for key, path in wanted.items():
            f = self.followed.get(key)
            if f is None:
                f = self.followed[key] = self._open(key, Path(path))
            lines = f.follower.poll()
            if f.skip_partial and lines:
                lines, f.skip_partial = lines[1:], False
            if not lines:
                continue
            got = True
            f.state.feed_many(lines)
            with self.lock:
                out = self.published.lines.setdefault(key, [])
                out.extend(lines)
                if len(out) > self.max_log_lines:  # the pane keeps no more than this anyway
                    del out[: len(out) - self.max_log_lines]
        return got

    def _open(self, key: str, path: Path) -> Followed:
        tail = self.registry.settings.tail if self.registry else 50
        try:
            size = path.stat().st_size
        except OSError:
            size = 0
        offset = max(0, size - FOLLOW_TAIL_BYTES)
        return Followed(key, path, logs.LogFollower(path, offset=offset),
                        logs.LogState(tail=tail, keep_steps=HIST), skip_partial=offset > 0)

    def take(self) -> Published:
        """The latest publication, with the log lines gathered since the last take."""
        with self.lock:
            pub = self.published
            self.published = Published(pub.view, pub.error, pub.report, pub.seq, {})
        return pub
