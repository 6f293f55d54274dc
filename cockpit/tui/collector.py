"""The worker side of the cockpit: everything that touches a file, a process or NVML.

One `Collector` loop runs in a Textual thread worker. Every 0.25 s it follows the logs of the legs
on screen (new lines, and the live figures parsed from them); every second it samples the GPUs.
When the registry or the experiment dirs change on disk (a stat fingerprint), when poked (a
launch, a stop, a selection), and at least every 10 s, it asks the core for the whole state (see
build.py), after recording what the scheduler said of Slurm legs (the one write of a pass:
executors.slurm_record). Each new immutable view, and the new log lines, go to the screen as
messages (messages.py), at most twice a second. Nothing here knows a widget; nothing here joins
the registry with the dirs.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from textual.message import Message

from cockpit import checkout, expdir, gpus, logs, resume
from cockpit import registry as reg
from cockpit.executors import slurm_record
from cockpit.tui import build
from cockpit.tui import state as vm
from cockpit.tui.messages import LogLines, ViewPublished
from cockpit.vocab import ACTIVE_STATUSES, DEFAULT_TAIL

FOLLOW_TAIL_BYTES = 2 << 20  # a log opened mid-way is read from this far before its end
HIST = 120  # steps kept per leg for the sparklines
SLURM_EVERY_S = 2.0  # the whole state this often while a Slurm leg is queued or running: nothing on
# disk changes when the scheduler starts or ends a job, so a stat fingerprint cannot see it


@dataclass
class Followed:
    """A log followed for the screen: its follower and what it has parsed (the live row's figures)."""

    key: str
    path: Path
    follower: logs.LogFollower
    state: logs.LogState
    skip_partial: bool = False  # opened mid-file: the first line is a fragment


@dataclass(frozen=True)
class Request:
    """What the screen wants from the next pass. The UI thread replaces it whole; the worker reads it."""

    tabs: tuple[tuple[str, str], ...] = ()  # (key, log path) of the log panes
    report_dir: str | None = None  # the dir whose final table is shown
    report_exp: str | None = None


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
        self.request = Request()
        self.followed: dict[str, Followed] = {}
        self.wake = threading.Event()  # set: the loop's wait ends now (a poke, or stop)
        self.stopped = threading.Event()  # set: the loop ends at its next turn
        # The latest results (the worker's own; the screen gets them through messages).
        self.view: vm.CockpitView | None = None
        self.report: vm.ReportView | None = None
        self.error: str | None = None  # the registry's load error, or the loop's last internal error
        self._posted: tuple | None = None  # (view, error, report) as last posted
        self._lines: dict[str, list[str]] = {}  # new log lines not posted yet, by pane key
        self._branch: str | None = None
        self._branch_at = -1e9
        self._snapshot: gpus.Snapshot | None = None
        self._stamp: tuple | None = None
        self._state: resume.ResumeState | None = None  # the last resume state: its running legs
        self._running: list[build.RunningLeg] = []
        self._fp: tuple | None = None
        self._slurm_active = False  # a Slurm leg is queued or running: ask the scheduler every SLURM_EVERY_S

    # ------------------------------------------------------------------------------------------
    # the worker's loop

    def run(
        self,
        post: Callable[[Message], object],
        cancelled: Callable[[], bool],
        period: float = 0.25,
        post_every: float = 0.5,
        state_every: float = 10.0,
        gpu_every: float = 1.0,
        live_every: float = 0.5,
        report_every: float = 2.0,
    ) -> None:
        """Until stopped (or `cancelled()`): follow the logs every `period`; recompute the live rows and the GPUs at
        most every `live_every`; recompute the whole state (dirs, marks, next leg, report) when the
        experiment dirs or the registry change on disk (a cheap stat fingerprint, every pass),
        when poked (a launch, a stop, a selection), and at least every `state_every` (a process
        that died without a word); the final table of a dir with a running leg every `report_every`.
        What changed goes out through `post` at most every `post_every`; the first view at once."""
        never = -1e9
        last_state = last_gpu = last_live = last_report = last_post = never
        fresh = False  # new lines or a new GPU sample since the live rows were computed
        while not self.stopped.is_set() and not cancelled():
            now = time.monotonic()
            try:
                if now - last_gpu >= gpu_every:
                    self.sample()
                    last_gpu, fresh = now, True
                every = min(state_every, SLURM_EVERY_S) if self._slurm_active else state_every
                if self.wake.is_set() or self.fingerprint() != self._fp or now - last_state >= every:
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
            wait = period
            if self._lines or self._news() is not None:
                due = last_post + post_every - time.monotonic()
                if due <= 0:
                    self.post_news(post)
                    last_post = time.monotonic()
                else:
                    wait = min(period, due)
            self.wake.wait(wait)

    def post_news(self, post: Callable[[Message], object]) -> None:
        """Post what changed since the last call: the latest view, then the new log lines."""
        news = self._news()
        if news is not None:
            self._posted = news
            post(ViewPublished(*news))
        if self._lines:
            lines, self._lines = self._lines, {}
            post(LogLines(lines))

    def _news(self) -> tuple | None:
        """(view, error, report) when it differs from what was last posted, else None."""
        now = (self.view, self.error, self.report)
        if self._posted is not None and all(a is b for a, b in zip(now, self._posted, strict=True)):
            return None  # the common case, cheap: nothing recomputed since
        return None if now == self._posted else now

    def fingerprint(self) -> tuple:
        """What a full pass depends on that a stat can see: the registry file, and each
        experiment dir with its state/ dir (a new log, plan or state file, an atomic replace)."""
        out: list[tuple | None] = []
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
                        state = os.stat(os.path.join(e.path, expdir.STATE_DIR)).st_mtime_ns
                    except OSError:
                        state = None
                    out.append((e.name, e.stat().st_mtime_ns, state))
        except OSError:
            pass
        return tuple(sorted(out, key=repr))

    def report_is_live(self) -> bool:
        """Is the shown final table a dir with a leg still running (its figures still move)?"""
        rep = self.report
        return rep is not None and any(r.status in ACTIVE_STATUSES for r in rep.rows)

    def refresh_report(self) -> None:
        view, registry, req = self.view, self.registry, self.request
        if view is None or registry is None:
            return
        self.report = build.build_report(
            registry,
            view,
            req.report_exp,
            req.report_dir,
            self._state.dirs if self._state is not None else None,
        )

    def poke(self) -> None:
        """Recompute now (after a launch, a stop, a selection). Called from the UI thread."""
        self.wake.set()

    def stop(self) -> None:
        """End the loop without waiting out its period (the screen is closing)."""
        self.stopped.set()
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
                    self._branch = checkout.git_info(self.registry_path.resolve().parent).get("branch")
                else:
                    self._branch = fn()
                self._branch_at = time.monotonic()
            return self._branch
        return fn

    def compute(self) -> None:
        """The whole state: the view, and the final table the screen asks for."""
        registry = self.load()
        self._fp = self.fingerprint()  # taken first: a change during this pass shows in the next
        if registry is None:
            self.view, self.report = None, None
            return
        dirs = expdir.discover(registry.settings.exp_root)
        slurm_record.record_jobs(
            dirs
        )  # writes: what the scheduler said of Slurm legs, report.md of one ended
        view, self._state, self._running = build.build_view(
            registry,
            self._snapshot,
            self.sampler,
            self.branch(),
            self.clock().timestamp(),
            {k: f.state for k, f in self.followed.items()},
            dirs,
        )
        self._slurm_active = any(m.job for m in self._state.active)
        req = self.request
        self.view, self.report = (
            view,
            build.build_report(registry, view, req.report_exp, req.report_dir, self._state.dirs),
        )

    def refresh_live(self) -> None:
        """Between two full passes: the live rows from the followed logs, and the GPUs."""
        view, registry, state = self.view, self.registry, self._state
        if view is None or registry is None or state is None:
            return
        followed = {k: f.state for k, f in self.followed.items()}
        live = tuple(
            build.live_view(state, m, followed.get(f"{m.dir}/{m.log_name}")) for m in state.running if m.dir
        )
        gpu = view.gpu
        if self._snapshot is not None:
            gpu = build.gpu_view(
                self._snapshot,
                build.gpu_status(registry, self._snapshot),
                build.owners(self._snapshot, self._running),
                self.sampler,
            )
        self.view = dataclasses.replace(view, live=live, gpu=gpu)

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
            out = self._lines.setdefault(key, [])
            out.extend(lines)
            if len(out) > self.max_log_lines:  # the pane keeps no more than this anyway
                del out[: len(out) - self.max_log_lines]
        return got

    def _open(self, key: str, path: Path) -> Followed:
        tail = self.registry.settings.tail if self.registry else DEFAULT_TAIL
        try:
            size = path.stat().st_size
        except OSError:
            size = 0
        offset = max(0, size - FOLLOW_TAIL_BYTES)
        return Followed(
            key,
            path,
            logs.LogFollower(path, offset=offset),
            logs.LogState(tail=tail, keep_steps=HIST),
            skip_partial=offset > 0,
        )
