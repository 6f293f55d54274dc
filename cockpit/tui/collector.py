"""The worker side of the cockpit: everything that touches a file, a process or NVML.

One `Collector` runs in a Textual thread worker. Each pass it (re)loads the registry when asked,
samples the GPUs, asks the core for the state of things (the resume state, the experiment dirs,
the report rows of the selected dir) and follows the logs of the legs on screen. It publishes
an immutable `CockpitView` plus the new log lines; the UI thread picks them up on its own 0.5 s
timer. Nothing here knows a widget.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cockpit import logs, runs
from cockpit import registry as reg
from cockpit.tui import state as vm

FOLLOW_TAIL_BYTES = 2 << 20  # a log opened mid-way is read from this far before its end
HIST = 120  # steps kept per leg for the sparklines


@dataclass
class Followed:
    """A log followed for the screen: its follower, what it has parsed, and lines not yet shown."""

    key: str
    path: Path
    follower: logs.LogFollower
    state: logs.LogState
    pending: deque[str]
    pending_count: int = 0
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

    # ------------------------------------------------------------------------------------------
    # the worker's loop

    def run(self, stopped: Callable[[], bool], period: float = 0.25, state_every: float = 1.0,
            gpu_every: float = 1.0) -> None:
        last_state = last_gpu = -1e9
        while not stopped():
            now = time.monotonic()
            try:
                if now - last_gpu >= gpu_every:
                    self.sample()
                    last_gpu = now
                if now - last_state >= state_every or self.wake.is_set():
                    self.wake.clear()
                    self.compute()
                    last_state = now
                self.poll_logs()
            except Exception as e:  # never let the worker die: show it and go on
                self.error = f"cockpit internal error: {type(e).__name__}: {e}"
                self._publish(self.published.view, self.published.report)
            self.wake.wait(period)

    def poke(self) -> None:
        """Recompute now (after a launch, a stop, a selection)."""
        self.wake.set()

    # ------------------------------------------------------------------------------------------

    def load(self) -> reg.Registry | None:
        try:
            self.registry = reg.load(self.registry_path)
            self.error = None
        except reg.RegistryError as e:
            self.registry, self.error = None, str(e)
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
        if registry is None:
            self._publish(None, None)
            return
        view = build_view(registry, self._snapshot, self.sampler, self.branch(), self.clock(),
                          {k: f.state for k, f in self.followed.items()})
        req = self.request
        report = build_report(registry, view, req.report_exp, req.report_dir)
        self._publish(view, report)

    def _publish(self, view: vm.CockpitView | None, report: vm.ReportView | None) -> None:
        with self.lock:
            self._seq += 1
            lines = self.published.lines
            self.published = Published(view, self.error, report, self._seq, lines)

    # ------------------------------------------------------------------------------------------
    # logs

    def poll_logs(self) -> None:
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
            f.state.feed_many(lines)
            with self.lock:
                out = self.published.lines.setdefault(key, [])
                out.extend(lines)
                if len(out) > self.max_log_lines:  # the pane keeps no more than this anyway
                    del out[: len(out) - self.max_log_lines]

    def _open(self, key: str, path: Path) -> Followed:
        tail = self.registry.settings.tail if self.registry else 50
        try:
            size = path.stat().st_size
        except OSError:
            size = 0
        offset = max(0, size - FOLLOW_TAIL_BYTES)
        return Followed(key, path, logs.LogFollower(path, offset=offset),
                        logs.LogState(tail=tail, keep_steps=HIST), deque(), skip_partial=offset > 0)

    def take(self) -> Published:
        """The latest publication, with the log lines gathered since the last take."""
        with self.lock:
            pub = self.published
            self.published = Published(pub.view, pub.error, pub.report, pub.seq, {})
        return pub


# ----------------------------------------------------------------------------------------------
# the view, from the core's answers


def _gpu_view(snapshot: Any | None, sampler: Any | None, owners: dict[int, str]) -> vm.GpuView | None:
    if snapshot is None:
        return None
    hist = getattr(sampler, "history", {}) or {}

    def h(key: str) -> tuple[float, ...]:
        return tuple(v for v in hist.get(key, ()) if v is not None)

    rows = tuple(
        vm.GpuRow(g.index, g.name or "?", g.util_pct, g.mem_used_mib, g.mem_total_mib, g.temp_c, g.power_w,
                  next((owners[p] for p in g.pids if p in owners), None), h(f"gpu{g.index}.util_pct"))
        for g in snapshot.gpus
    )
    host = snapshot.host
    host_row = vm.HostRow(host.cpu_pct, host.ram_used_mib, host.ram_total_mib, host.load1, h("host.cpu_pct"))
    if not snapshot.available:
        summary = "no NVML"
    elif not rows:
        summary = "no GPUs"
    else:
        busy = sum(1 for g in rows if (g.util_pct or 0) > 5 or g.leg)
        summary = f"{len(rows)} GPUs idle" if busy == 0 else f"{busy}/{len(rows)} GPUs busy"
    return vm.GpuView(snapshot.available, snapshot.reason, rows, host_row, summary)


def build_view(registry: reg.Registry, snapshot: Any | None, sampler: Any | None, branch: str | None,
               now: dt.datetime, followed: dict[str, logs.LogState]) -> vm.CockpitView:
    s = registry.settings
    dirs = runs.discover(s.exp_root)
    errors: list[str] = []
    by_exp: dict[str, list[vm.DirView]] = {}
    running: list[tuple[runs.ExpDir, runs.LegState]] = []
    for d in dirs:
        legs = []
        for name in d.legs:
            st = d.states.get(name)
            status = st.status if st else _log_status(d.log(name))
            legs.append(vm.DirLegView(name, status, str(d.log(name))))
            if st is not None and st.status == "running":
                running.append((d, st))
        by_exp.setdefault(d.experiment, []).append(vm.DirView(str(d.path), d.path.name, d.experiment, tuple(legs)))
    experiments = []
    for exp in registry.experiments:
        exp_dirs = tuple(by_exp.get(exp.id, ()))
        legs = []
        for leg in exp.legs:
            mark, where, log, figures, source = "pending", None, None, {}, ""
            if leg.recorded is not None:
                mark, figures, source = "recorded", leg.recorded.metrics(), "recorded"
            for dv in exp_dirs:  # newest dir last: its state wins
                for x in dv.legs:
                    if x.name == leg.name:
                        mark, where, log = x.status, dv.path, x.log
            legs.append(vm.LegView(exp.id, leg.name, mark, leg.description,
                                   _is_baseline(exp, leg.name), where, log, figures, source))
        experiments.append(vm.ExperimentView(exp.id, exp.title, exp.device, exp.gpus_needed, exp.baseline,
                                             exp.hypothesis, exp.decision, tuple(legs), exp_dirs))
    live = []
    owners: dict[int, str] = {}
    for d, st in running:
        key = f"{d.path}/{st.leg}"
        state = followed.get(key)
        live.append(_live_view(registry, d, st, state))
    if snapshot is not None and snapshot.available and running:
        from cockpit.gpus import leg_for_pids

        pids = [p for g in snapshot.gpus for p in g.pids]
        owners = leg_for_pids(pids, [(st.leg, st.pid, st.create_time) for _, st in running])
    n = len(running)
    training = f"{n} leg{'s' if n != 1 else ''} running" if n else "paused"
    return vm.CockpitView(
        project=s.name,
        registry_path=str(registry.path),
        exp_root=str(s.exp_root),
        branch=branch,
        expected_branch=s.branch,
        training=training,
        experiments=tuple(experiments),
        gpu=_gpu_view(snapshot, sampler, owners),
        live=tuple(live),
        resume=_resume_view(registry, experiments, now),
        errors=tuple(errors),
    )


def _is_baseline(exp: reg.Experiment, leg: str) -> bool:
    return exp.baseline is not None and exp.baseline in (leg, f"{exp.id}/{leg}")


def _log_status(log: Path) -> str:
    s = logs.summarize(log)
    return {"completed": "done", "running": "running", "failed": "failed"}.get(s.status, "stopped")


def _live_view(registry: reg.Registry, d: runs.ExpDir, st: runs.LegState,
               state: logs.LogState | None) -> vm.LiveView:
    key = f"{d.path}/{st.leg}"
    log = st.log or str(d.log(st.leg))
    if state is None:
        summary = logs.summarize(log, tail=registry.settings.tail)
        last = None
        hist_tok: tuple[float, ...] = ()
        hist_loss: tuple[float, ...] = ()
    else:
        summary = logs.summary_of(state, log)
        last = state.last
        hist_tok = tuple(r.tok_per_sec for r in state.steps if r.tok_per_sec is not None)
        hist_loss = tuple(r.loss for r in state.steps if r.loss is not None)
    exp = registry.experiment(d.experiment)
    base = _baseline_figures(registry, exp) if exp else {}
    base_tok = base.get("tok_per_sec")
    delta = None
    if base_tok and summary.tok_per_sec is not None:
        delta = 100.0 * (summary.tok_per_sec - base_tok) / base_tok
    return vm.LiveView(
        key=key, exp_id=d.experiment, leg=st.leg, exp_dir=str(d.path), log=log,
        step=summary.last_step, total=summary.total_steps, pct=summary.pct, loss=summary.last_loss,
        dt_ms=last.dt_ms if last else summary.dt_ms, tok_per_sec=last.tok_per_sec if last else summary.tok_per_sec,
        mfu=last.mfu if last else summary.mfu, tail_tok_per_sec=summary.tok_per_sec, tail_n=summary.tail_n,
        eta_min=summary.eta_min, delta_tok_pct=delta, baseline=exp.baseline if exp else None,
        tok_hist=hist_tok, loss_hist=hist_loss,
    )


def _baseline_figures(registry: reg.Registry, exp: reg.Experiment) -> dict[str, float | None]:
    if not exp.baseline:
        return {}
    leg = registry.find_leg(exp.baseline, exp.id)
    if leg is not None and leg.recorded is not None:
        return leg.recorded.metrics()
    return {}


def _resume_view(registry: reg.Registry, experiments: list[vm.ExperimentView], now: dt.datetime) -> vm.ResumeView:
    completed, remaining = [], []
    nxt: tuple[str, reg.Leg] | None = None
    for e in experiments:
        for leg in e.legs:
            if leg.is_done:
                completed.append(f"{e.id}/{leg.name} ({leg.mark})")
            elif leg.mark not in ("running", "queued", "waiting"):
                remaining.append(f"{e.id}/{leg.name} ({leg.mark})")
                if nxt is None:
                    nxt = (e.id, registry.find_leg(leg.name, e.id))
    s = registry.settings
    rules = [
        "every launch makes a fresh dir; an existing dir is never reused",
        f"write only under {s.exp_root}",
        *(f"read-only: {p}" for p in s.read_only),
        "done and recorded legs are not re-run unless asked explicitly",
    ]
    if s.branch:
        rules.append(f"the checkout stays on branch {s.branch}")
    if nxt is None:
        return vm.ResumeView(tuple(completed), tuple(remaining), None, (), None, tuple(rules))
    exp_id, leg = nxt
    fresh = s.exp_root / f"{now.strftime(runs.STAMP_FORMAT)}_{exp_id}"
    return vm.ResumeView(tuple(completed), tuple(remaining), f"{exp_id}/{leg.name}", tuple(leg.argv(fresh)),
                         str(fresh), tuple(rules))


def build_report(registry: reg.Registry, view: vm.CockpitView, exp_id: str | None,
                 exp_dir: str | None) -> vm.ReportView | None:
    """The final table of a dir (or of the experiment's newest dir): summaries of its logs."""
    if exp_id is None:
        return None
    exp = view.experiment(exp_id)
    if exp is None:
        return None
    if exp_dir is None:
        if not exp.dirs:
            rec = tuple(
                vm.RowView(leg.name, "recorded", dict(leg.figures))
                for leg in exp.legs if leg.source == "recorded"
            )
            return vm.ReportView(None, f"{exp_id} (recorded in the registry)", registry.settings.tail, rec,
                                 exp.baseline, {}, None if rec else "no dir and no recorded figures")
        exp_dir = exp.dirs[-1].path
    tail = registry.settings.tail
    d = next((x for x in exp.dirs if x.path == exp_dir), None)
    rows = []
    for x in d.legs if d else ():
        s = logs.summarize(x.log, tail=tail)
        rows.append(vm.RowView(x.name, s.status, {
            "tok_per_sec": s.tok_per_sec, "dt_ms": s.dt_ms, "mfu": s.mfu,
            "peak_mem_mib": s.peak_mem_mib, "total_time_min": s.total_time_min}))
    return vm.ReportView(exp_dir, Path(exp_dir).name, tail, tuple(rows), exp.baseline, {})
