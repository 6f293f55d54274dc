"""The worker side of the cockpit: everything that touches a file, a process or NVML.

One `Collector` runs in a Textual thread worker. Every 0.25 s it follows the logs of the legs on
screen (new lines, and the live figures parsed from them); every second it samples the GPUs.
When the registry or the experiment dirs change on disk (a stat fingerprint), when poked (a
launch, a stop, a selection), and at least every 10 s, it asks the core for the whole state: the
resume state (marks, next leg, safety), the dirs, the report rows of the selected dir. It
publishes an immutable `CockpitView` plus the new log lines; the UI thread picks them up on its
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
from typing import Any

from cockpit import logs, report, runs
from cockpit import registry as reg
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
        sampler: Any | None = None,
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
        self._snapshot: Any | None = None
        self._seq = 0
        self._stamp: tuple | None = None
        self._state: Any | None = None  # the last resume state: the running legs for the live rows
        self._owners: list[tuple[str, int | None, float | None]] = []
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
        return rep is not None and any(r.status in ("running", "queued", "waiting") for r in rep.rows)

    def refresh_report(self) -> None:
        view, registry, req = self.published.view, self.registry, self.request
        if view is None or registry is None:
            return
        self._publish(view, build_report(registry, view, req.report_exp, req.report_dir))

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
            from cockpit.gpus import GpuSampler

            self.sampler = GpuSampler(history=HIST)
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
        view, self._state, self._owners = build_view(
            registry, self._snapshot, self.sampler, self.branch(), self.clock(),
            {k: f.state for k, f in self.followed.items()})
        req = self.request
        report = build_report(registry, view, req.report_exp, req.report_dir)
        self._publish(view, report)

    def refresh_live(self) -> None:
        """Between two full passes: the live rows from the followed logs, and the GPUs."""
        view, registry = self.published.view, self.registry
        if view is None or registry is None or self._state is None:
            return
        followed = {k: f.state for k, f in self.followed.items()}
        live = tuple(_live_view(self._state, m, followed.get(f"{m.dir}/{m.leg}"))
                     for m in self._state.running if m.dir)
        gpu = view.gpu
        if self._snapshot is not None:
            gpu = _gpu_view(self._snapshot, _gpu_status(registry, self._snapshot),
                            _owners(self._snapshot, self._owners), getattr(self.sampler, "history", None) or {})
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


# ----------------------------------------------------------------------------------------------
# the view, from the core's answers


class _Taken:
    """A sampler that returns a snapshot already taken (the GPU status needs no second sample)."""

    def __init__(self, snapshot: Any):
        self.snapshot = snapshot

    def sample(self) -> Any:
        return self.snapshot


def build_view(registry: reg.Registry, snapshot: Any | None, sampler: Any | None, branch: str | None,
               now: dt.datetime, followed: dict[str, logs.LogState]) -> tuple[vm.CockpitView, Any, list]:
    """The view of everything, from `resume.build_state` (marks, next leg, safety, GPU status),
    `runs.discover` (the dirs and their legs' states) and the followed logs (live figures)."""
    from cockpit import resume

    gpus = _gpu_status(registry, snapshot) if snapshot is not None else None
    found = runs.discover(registry.settings.exp_root)  # once a pass: the state and the tree share it
    state = resume.build_state(
        registry, now=now.timestamp(), gpus=gpus or resume.GpuStatus("unknown", "sampling"), dirs=found
    )
    dirs = {str(d.path): d for d in found}
    experiments = []
    for e in state.experiments:
        legs = tuple(_leg_view(e, m) for m in e.legs)
        dir_views = tuple(_dir_view(dirs[p]) for p in e.dirs if p in dirs)
        base = e.baseline_row
        experiments.append(vm.ExperimentView(e.id, e.title, e.device, 0 if e.device == "cpu" else e.nproc_per_node,
                                             e.baseline, e.hypothesis, e.decision, legs, dir_views,
                                             {k: base.value(k) for k in vm.METRICS} if base is not None else {}))
    live = tuple(_live_view(state, m, followed.get(f"{m.dir}/{m.leg}")) for m in state.running if m.dir)
    running = [(m.leg, st.pid, st.create_time) for m in state.running if m.dir and str(m.dir) in dirs
               for st in [dirs[str(m.dir)].states.get(m.leg)] if st is not None]
    owners = _owners(snapshot, running) if snapshot is not None else {}
    n = len(state.running)
    queued = len(state.active) - n
    training = f"{n} leg{'s' if n != 1 else ''} running" if n else "paused"
    if queued:
        training += f", {queued} queued"
    view = vm.CockpitView(
        project=state.project,
        registry_path=state.registry_path,
        exp_root=state.exp_root,
        branch=branch,
        expected_branch=registry.settings.branch,
        training=training,
        experiments=tuple(experiments),
        gpu=_gpu_view(snapshot, gpus, owners, getattr(sampler, "history", None) or {}) if snapshot is not None else None,
        live=live,
        resume=_resume_view(state),
    )
    return view, state, running


def _gpu_status(registry: reg.Registry, snapshot: Any) -> Any:
    from cockpit import resume

    return resume.gpu_status(registry, _Taken(snapshot))


def _owners(snapshot: Any, running: list[tuple[str, int | None, float | None]]) -> dict[int, str]:
    """GPU pid -> the running leg whose process tree holds it (the core's leg_for_pids)."""
    if not snapshot.available or not running:
        return {}
    from cockpit.gpus import leg_for_pids

    return leg_for_pids([p for g in snapshot.gpus for p in g.pids], running)


def _leg_view(e: Any, m: Any) -> vm.LegView:
    figures = {k: m.row.value(k) for k in vm.METRICS} if m.row is not None else {}
    log = str(Path(m.dir) / f"{m.leg}.log") if m.dir and m.mark != "recorded" else None
    note = m.note if m.mark in ("failed", "stopped", "waiting") else None
    return vm.LegView(e.id, m.leg, m.mark, m.description, m.is_baseline, m.dir if log else None, log,
                      figures, m.row.source if m.row is not None else "", note)


def _dir_view(d: runs.ExpDir) -> vm.DirView:
    legs = []
    for name in d.legs:
        st = d.states.get(name)
        status = st.status if st is not None else ("log" if d.log(name).exists() else "pending")
        legs.append(vm.DirLegView(name, status, str(d.log(name))))
    return vm.DirView(str(d.path), d.path.name, d.experiment, tuple(legs))


def _gpu_view(snapshot: Any, status: Any, owners: dict[int, str], hist: dict) -> vm.GpuView:
    """GPU rows from the snapshot and the sampler's history; the summary from the core's status."""

    def h(key: str) -> tuple[float, ...]:
        return tuple(v for v in hist.get(key, ()) if v is not None)

    rows = tuple(
        vm.GpuRow(g.index, g.name or "?", g.util_pct, g.mem_used_mib, g.mem_total_mib, g.temp_c, g.power_w,
                  next((owners[p] for p in g.pids if p in owners), None), h(f"gpu{g.index}.util_pct"))
        for g in snapshot.gpus
    )
    host = snapshot.host
    host_row = vm.HostRow(host.cpu_pct, host.ram_used_mib, host.ram_total_mib, host.load1, h("host.cpu_pct"))
    if status.state == "idle":
        summary = f"{status.count} GPUs idle"
    elif status.state == "busy":
        summary = f"{len(status.busy)}/{status.count} GPUs busy"
    else:
        summary = "GPUs unknown (no NVML)" if not snapshot.available else "GPUs unknown"
    return vm.GpuView(snapshot.available, snapshot.reason, rows, host_row, summary)


def _live_view(state: Any, m: Any, followed: logs.LogState | None) -> vm.LiveView:
    log = str(Path(m.dir) / f"{m.leg}.log")
    if followed is not None:
        summary, last = logs.summary_of(followed, log), followed.last
        tok_hist = tuple(r.tok_per_sec for r in followed.steps if r.tok_per_sec is not None)
        loss_hist = tuple(r.loss for r in followed.steps if r.loss is not None)
    else:  # not followed yet (the first pass): the core's summary of the log
        summary, last, tok_hist, loss_hist = m.summary or logs.summarize(log, tail=state.tail), None, (), ()
    exp = next(e for e in state.experiments if e.id == m.experiment)
    base = exp.baseline_row
    base_tok = base.tok_per_sec if base is not None and not (exp.baseline_mark and exp.baseline_mark.leg == m.leg
                                                             and exp.baseline_mark.experiment == m.experiment) else None
    return vm.LiveView(
        key=f"{m.dir}/{m.leg}", exp_id=m.experiment, leg=m.leg, exp_dir=str(m.dir), log=log,
        step=summary.last_step, total=summary.total_steps, pct=summary.pct, loss=summary.last_loss,
        dt_ms=last.dt_ms if last else summary.dt_ms, tok_per_sec=last.tok_per_sec if last else summary.tok_per_sec,
        mfu=last.mfu if last else summary.mfu, tail_tok_per_sec=summary.tok_per_sec, tail_n=summary.tail_n,
        eta_min=summary.eta_min, delta_tok_pct=report.pct_change(base_tok, summary.tok_per_sec),
        baseline=exp.baseline, tok_hist=tok_hist, loss_hist=loss_hist,
    )


def _group(marks: list[Any]) -> tuple[str, ...]:
    """`experiment (mark): leg, leg` lines, in registry order."""
    out: dict[tuple[str, str], list[str]] = {}
    for m in marks:
        out.setdefault((m.experiment, m.mark), []).append(m.leg)
    return tuple(f"{exp} ({mark}): {', '.join(legs)}" for (exp, mark), legs in out.items())


def _resume_view(state: Any) -> vm.ResumeView:
    finished = [m for e in state.experiments for m in e.finished]
    todo = [m for e in state.experiments for m in e.todo]
    nxt = state.next
    if nxt is None:
        return vm.ResumeView(_group(finished), _group(todo), None, None, None, None, tuple(state.safety),
                             tuple(_group(state.active)), state.gpus.text)
    return vm.ResumeView(_group(finished), _group(todo), f"{nxt.experiment}/{nxt.leg} ({nxt.mark})", nxt.command,
                         nxt.exp_dir_template, nxt.cockpit, tuple(state.safety), tuple(_group(state.active)),
                         state.gpus.text)


def build_report(registry: reg.Registry, view: vm.CockpitView, exp_id: str | None,
                 exp_dir: str | None) -> vm.ReportView | None:
    """The final table of a dir (or of the experiment's newest dir): `report.rows`, with each
    run's delta against the experiment's baseline (a run of the dir, else its figures elsewhere)."""
    if exp_id is None:
        return None
    exp = view.experiment(exp_id)
    if exp is None:
        return None
    tail = registry.settings.tail
    base_name = exp.baseline.rpartition("/")[2] if exp.baseline else None
    if exp_dir is None and not exp.dirs:
        rec = [vm.RowView(leg.name, leg.mark, dict(leg.figures)) for leg in exp.legs if leg.source == "recorded"]
        rows = tuple(_with_deltas(r, exp.baseline_figures) for r in rec)
        return vm.ReportView(None, f"{exp_id}: recorded in the registry (ran elsewhere)", tail, rows,
                             exp.baseline, exp.baseline_figures if base_name not in {r.run for r in rec} else {},
                             None if rec else "not run yet: no dir, no recorded figures")
    exp_dir = exp_dir or exp.dirs[-1].path
    rows_ = [vm.RowView(r.run, r.status, {m: r.value(m) for m in vm.METRICS}) for r in report.rows(exp_dir, tail)]
    here = next((r for r in rows_ if r.run == base_name and any(v is not None for v in r.figures.values())), None)
    base = dict(here.figures) if here is not None else exp.baseline_figures
    return vm.ReportView(exp_dir, Path(exp_dir).name, tail, tuple(_with_deltas(r, base) for r in rows_),
                         exp.baseline, base if here is None else {})


def _with_deltas(r: vm.RowView, base: dict[str, float | None]) -> vm.RowView:
    if not base or r.figures == base:  # the baseline itself
        return r
    return vm.RowView(r.run, r.status, r.figures, {m: report.pct_change(base.get(m), r.figures.get(m)) for m in vm.METRICS})
