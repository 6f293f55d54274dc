"""From the core's answers to the cockpit's view-model (state.py), off the UI thread.

`build_view` asks the core once a pass: `expdir.discover` for the experiment dirs, then
`resume.build_state` for the marks, the next leg, the safety rules and the GPU status. It adds the
live figures of the logs the collector follows and the GPU rows of the latest sample. Nothing here
decides what a leg's state is: that is the resume state's job, and which baseline a run is
compared with is `baseline.choose`'s. `build_report` gives the final table of one dir from
`report.rows`, with deltas (and their intervals and verdicts) against that dir's baseline.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Protocol

from cockpit import baseline, expdir, gpus, logs, report, report_md, resume, safetext, stats
from cockpit import registry as reg
from cockpit.figures import Figures
from cockpit.logs import progress
from cockpit.tui import fmt
from cockpit.tui import state as vm
from cockpit.vocab import METRICS, NOTED_MARKS, QUALITY, Mark, RunStatus, Source, Verdict

# (label, torchrun pid, its create time) of a running leg: what `gpus.leg_for_pids` matches
RunningLeg = tuple[str, int | None, float | None]


class Sampler(Protocol):
    """A GPU sampler: `gpus.GpuSampler`, or a stand-in with fixed figures (tests)."""

    history: Mapping[str, Iterable[float | None]]  # metric key -> recent values, oldest first

    def sample(self) -> gpus.Snapshot: ...


class _Taken:
    """A sampler that returns a snapshot already taken (the GPU status needs no second sample)."""

    def __init__(self, snapshot: gpus.Snapshot):
        self.snapshot = snapshot

    def sample(self) -> gpus.Snapshot:
        return self.snapshot


def build_view(
    registry: reg.Registry,
    snapshot: gpus.Snapshot | None,
    sampler: Sampler | None,
    branch: str | None,
    now: float,
    followed: Mapping[str, logs.LogState],
    dirs: list[expdir.ExpDir] | None = None,
) -> tuple[vm.CockpitView, resume.ResumeState, list[RunningLeg]]:
    """The view of everything, the resume state it came from, and the running legs' processes.

    `followed`: the parsed state of each log the collector follows, by `exp_dir/leg`; `dirs`:
    expdir.discover(exp_root) when the caller has it (read once a pass: the state and the tree
    share it). Reads only."""
    status = gpu_status(registry, snapshot) if snapshot is not None else None
    found = dirs if dirs is not None else expdir.discover(registry.settings.exp_root)
    state = resume.build_state(
        registry, now=now, gpu=status or resume.GpuStatus("unknown", "sampling"), dirs=found
    )
    dirs = {str(d.path): d for d in found}
    executors = {x.id: x.executor for x in registry.experiments}
    experiments = []
    for e in state.experiments:
        experiments.append(
            vm.ExperimentView(
                id=e.id,
                title=e.title,
                device=e.device,
                gpus_needed=0 if e.device == "cpu" else e.nproc_per_node,
                baseline=e.baseline,
                hypothesis=e.hypothesis,
                decision=e.decision,
                legs=tuple(_leg_view(e, m) for m in e.legs),
                dirs=tuple(_dir_view(dirs[p]) for p in e.dirs if p in dirs),
                executor=executors.get(e.id, "local"),
            )
        )
    live = tuple(live_view(state, m, followed.get(f"{m.dir}/{m.log_name}")) for m in state.running if m.dir)
    running = [
        (m.log_name, st.pid, st.create_time)
        for m in state.running
        if m.dir and str(m.dir) in dirs
        for st in [dirs[str(m.dir)].states.get(m.log_name)]
        if st is not None
    ]
    view = vm.CockpitView(
        project=state.project,
        registry_path=state.registry_path,
        exp_root=state.exp_root,
        branch=branch,
        expected_branch=registry.settings.branch,
        training=state.activity,  # the words status and the guide use: "all done", "nothing running, ..."
        experiments=tuple(experiments),
        gpu=(
            gpu_view(snapshot, status, owners(snapshot, running), sampler, slurm_nodes(state))
            if snapshot is not None and status
            else None
        ),
        live=live,
        resume=_resume_view(state),
        tail=registry.settings.tail,
        running=len(state.running),
    )
    return view, state, running


def gpu_status(registry: reg.Registry, snapshot: gpus.Snapshot) -> resume.GpuStatus:
    """Idle, busy or unknown by the registry's thresholds: the core's verdict on this snapshot."""
    return resume.gpu_status(registry, _Taken(snapshot))


def owners(snapshot: gpus.Snapshot, running: list[RunningLeg]) -> dict[int, str]:
    """GPU pid -> the running leg whose process tree holds it (the core's leg_for_pids)."""
    if not snapshot.available or not running:
        return {}
    return gpus.leg_for_pids([p for g in snapshot.gpus for p in g.pids], running)


def _leg_view(e: resume.ExperimentState, m: resume.LegMark) -> vm.LegView:
    figures = m.row.figures if m.row is not None else Figures()
    log = str(Path(m.dir) / f"{m.log_name}.log") if m.dir and m.mark != Mark.RECORDED else None
    return vm.LegView(
        exp_id=e.id,
        name=m.leg,
        mark=m.mark,
        description=m.description,
        baseline=m.is_baseline,
        exp_dir=m.dir if log else None,
        log=log,
        figures=figures,
        source=m.row.source if m.row is not None else "",
        note=m.note if m.mark in NOTED_MARKS else None,
        job=m.job,
        gpus=(expdir.gpus_text(m.state).removeprefix(" on ") or None) if m.mark == Mark.RUNNING else None,
    )


def _dir_view(d: expdir.ExpDir) -> vm.DirView:
    legs = []
    for name in d.legs:
        st = d.states.get(name)
        status = st.status if st is not None else ("log" if d.log(name).exists() else "pending")
        legs.append(
            vm.DirLegView(name, status, str(d.log(name)), expdir.job_text(st) if st and st.job_id else None)
        )
    problem = safetext.oneline(d.problem) if d.problem else None
    return vm.DirView(str(d.path), d.path.name, d.experiment, tuple(legs), problem)


def slurm_nodes(state: resume.ResumeState) -> tuple[str, ...]:
    """`cpu-smoke/dense: Slurm job 123 on n[1-2], 0:42`, per running Slurm leg: NVML sees only
    this machine, so the GPU panel says where those legs' GPUs are."""
    return tuple(f"{m.ref}: Slurm {m.job}" for m in state.running if m.job)


def gpu_view(
    snapshot: gpus.Snapshot,
    status: resume.GpuStatus,
    owners: dict[int, str],
    sampler: Sampler | None,
    slurm: tuple[str, ...] = (),
) -> vm.GpuView:
    """GPU rows from the snapshot and the sampler's history; the summary from the core's status."""
    hist = sampler.history if sampler is not None else {}

    def h(key: str) -> tuple[float, ...]:
        return tuple(v for v in hist.get(key, ()) if v is not None)

    rows = tuple(
        vm.GpuRow(
            g.index,
            g.name or "?",
            g.util_pct,
            g.mem_used_mib,
            g.mem_total_mib,
            g.temp_c,
            g.power_w,
            next((owners[p] for p in g.pids if p in owners), None),
            *(h(f"gpu{g.index}.{k}") for k in ("util_pct", "mem_used_mib", "temp_c", "power_w")),
            procs=tuple(vm.GpuProc(p, owners.get(p), g.pid_mem_mib.get(p)) for p in g.pids),
            power_limit_w=g.power_limit_w,
            procs_error=g.pids_error,
        )
        for g in snapshot.gpus
    )
    host = snapshot.host
    host_row = vm.HostRow(
        host.cpu_pct,
        host.ram_used_mib,
        host.ram_total_mib,
        host.load1,
        h("host.cpu_pct"),
        h("host.ram_used_mib"),
    )
    if status.state == "idle":
        summary = f"{status.count} GPUs idle"
    elif status.state == "busy":
        summary = f"{len(status.busy)}/{status.count} GPUs busy"
    else:
        summary = "GPUs unknown (no NVML)" if not snapshot.available else "GPUs unknown"
    return vm.GpuView(snapshot.available, snapshot.reason, rows, host_row, summary, slurm)


def live_view(state: resume.ResumeState, m: resume.LegMark, followed: logs.LogState | None) -> vm.LiveView:
    """A running leg's live row: from its followed log, else (not followed yet) the core's summary.
    Its `Δ base` is its tail tok/sec against the baseline of its own dir (`baseline.choose`, in the
    resume state), with the interval and the verdict once the tail window is full."""
    log = str(Path(m.dir) / f"{m.log_name}.log")
    if followed is not None:
        summary, last = logs.summary_of(followed, log), followed.last
        tok_hist = tuple(r.tok_per_sec for r in followed.steps if r.tok_per_sec is not None)
        loss_hist = tuple(r.loss for r in followed.steps if r.loss is not None)
    else:
        summary, last, tok_hist, loss_hist = m.summary or logs.summarize(log, tail=state.tail), None, (), ()
    shown = last if last else summary  # the last step line followed, else the summary's figures
    figures = Figures(
        dt_ms=shown.dt_ms,
        tok_per_sec=shown.tok_per_sec,
        mfu=shown.mfu,
        final_loss=summary.last_loss,
        drop_pct=shown.drop_pct,
        bal=shown.bal,
    )
    exp = next(e for e in state.experiments if e.id == m.experiment)
    pct = ci = problem = None
    verdict, label, basis, resolve = "", None, "", ""
    if m.baseline is not None and m.baseline.problem and not m.is_baseline:
        problem = f"{m.baseline.leg}: {m.baseline.problem}"  # as `cockpit status` says it
    elif m.compared and m.baseline is not None and m.baseline_row is not None:
        label = m.baseline.leg + (f" ({m.baseline.source})" if m.baseline.source else "")
        pct = stats.pct_change(m.baseline_row.figures.tok_per_sec, summary.tok_per_sec)[0]
        # the window is full, or holds every step the run will have (a run shorter than the window,
        # at its last step): a verdict on as many steps as the final table's
        if summary.tail_n >= state.tail or (
            summary.total_steps and summary.tail_n >= summary.total_steps - 1
        ):
            d = stats.compare(
                m.baseline_row.estimate("tok_per_sec"), stats.estimate(summary.tail_values["tok_per_sec"])
            )
            ci, verdict = d.ci_pct, d.verdict
            basis = stats.fmt_runs(d) if ci is not None else ""
            resolve = stats.fmt_resolve(d.resolve) if d.verdict == Verdict.WITHIN_NOISE and d.pct else ""
        elif pct is not None:
            verdict = f"{summary.tail_n}/{state.tail} steps"
    return vm.LiveView(
        key=f"{m.dir}/{m.log_name}",
        exp_id=m.experiment,
        leg=m.log_name,
        exp_dir=str(m.dir),
        log=log,
        step=summary.last_step,
        total=summary.total_steps,
        pct=summary.pct,
        figures=figures,
        tail_tok_per_sec=summary.tok_per_sec,
        tail_n=summary.tail_n,
        eta_min=summary.eta_min,
        delta_tok_pct=pct,
        delta_ci_pct=ci,
        delta_basis=basis,
        verdict=verdict,
        resolve=resolve,
        baseline=exp.baseline,
        baseline_label=label,
        baseline_problem=problem,
        tok_hist=tok_hist,
        loss_hist=loss_hist,
    )


def _group(marks: list[resume.LegMark]) -> tuple[str, ...]:
    """`experiment (mark): leg, leg` lines, in registry order."""
    out: dict[tuple[str, str], list[str]] = {}
    for m in marks:
        out.setdefault((m.experiment, m.mark), []).append(m.leg)
    return tuple(f"{exp} ({mark}): {', '.join(legs)}" for (exp, mark), legs in out.items())


def _resume_view(state: resume.ResumeState) -> vm.ResumeView:
    nxt = state.next
    return vm.ResumeView(
        completed=_group([m for e in state.experiments for m in e.finished]),
        remaining=_group([m for e in state.experiments for m in e.todo]),
        next_label=f"{nxt.experiment}/{nxt.leg} ({nxt.mark})" if nxt else None,
        next_command=nxt.command if nxt else None,
        next_cockpit=nxt.cockpit if nxt else None,
        rules=tuple(state.safety),
        active=_group(state.active),
        gpus=state.gpus.text,
    )


def build_report(
    registry: reg.Registry,
    view: vm.CockpitView,
    exp_id: str | None,
    exp_dir: str | None,
    dirs: list[expdir.ExpDir] | None = None,
) -> vm.ReportView | None:
    """The final table of a dir (or of the experiment's newest dir; of its recorded figures when
    it has no dir), as its report has it: `report.rows` (metrics, quality and routing), each run
    with its delta, interval and verdict against the baseline `baseline.choose` gives that dir,
    which is named when it is not the dir's own, and the report's notes.
    `dirs`: expdir.discover(exp_root), when the caller has it."""
    if exp_id is None:
        return None
    exp = view.experiment(exp_id)
    if exp is None:
        return None
    tail = registry.settings.tail
    reg_exp = registry.experiment(exp_id)
    if exp_dir is None and not exp.dirs:
        found = baseline.choose(registry, exp_id, None, dirs)
        rows = [
            report.row_from_recorded(leg.name, leg.recorded)
            for leg in (reg_exp.legs if reg_exp else ())
            if leg.recorded is not None
        ]
        title, note = (
            f"{exp_id}: recorded in the registry (ran elsewhere)",
            None if rows else "not run yet: no dir, no recorded figures",
        )
    else:
        exp_dir = exp_dir or exp.dirs[-1].path
        found = baseline.choose(registry, exp_id, exp_dir, dirs)
        rows, title, note = report.rows(exp_dir, tail), Path(exp_dir).name, None
    base_row = report.baseline_row(found, tail) if found is not None else None
    if base_row is not None and not base_row.has_figures:
        base_row = None
    in_table = found is not None and (
        found.own or (found.dir is None and any(r.run == found.leg for r in rows))
    )
    shown = []
    if found is not None and base_row is not None and not in_table:  # a baseline from elsewhere: its own row
        where = "recorded" if found.dir is None else f"from {fmt.dir_tag(found.dir.name)} (other dir)"
        shown.append(_row_view(base_row, None, tail, label=f"{found.leg} [baseline]", sub=where))
    repeats = {id(x) for r in rows if r.is_aggregate for x in r.repeats}
    for r in rows:
        itself = found is not None and (
            found.is_it(exp_dir or "", r.run)
            or (found.dir is None and r.run == found.leg)
            or (found.own and r.run == found.leg)
        )
        # a repeat's delta is its leg's, on the aggregate row (as the report has it)
        base = None if itself or base_row is None or id(r) in repeats else base_row
        sub = f"mean of {len(r.repeats)} repeats" if r.is_aggregate else None
        if itself:
            sub = "baseline" + (f", {sub}" if sub else "")
        shown.append(_row_view(r, base, tail, itself, sub=sub))
    warnings: tuple[str, ...] = ()
    if found is not None and base_row is not None and not found.own and found.dir is not None:
        warnings = tuple(
            _plain(line) for line in report_md.baseline_notes(found, Path(exp_dir) if exp_dir else None)
        )
    head: str | None
    if found is not None and base_row is not None:
        head = f"Δ vs {found.column}: under each figure, ±95% interval and verdict"
    elif (
        found is not None and found.problem
    ):  # the pinned run failed, was stopped, is gone: why, and what to do
        head, warnings = None, (_plain(report_md.no_delta_text(found)),)
    else:
        head = (
            f"no figures of baseline {exp.baseline} yet: no deltas"
            if exp.baseline
            else "no baseline: no deltas"
        )
    return vm.ReportView(
        exp_dir=exp_dir,
        title=title,
        tail=tail,
        rows=tuple(shown),
        baseline=exp.baseline,
        note=note,
        baseline_label=found.column if found is not None and base_row is not None else None,
        baseline_source=found.source if found is not None and base_row is not None else None,
        warnings=warnings,
        head=head,
        notes=_notes(rows, shown, tail),
    )


def _notes(rows: list[report.ReportRow], shown: list[vm.RowView], tail: int) -> tuple[str, ...]:
    """The report's notes under its table, as plain lines: each run's trouble (failed with its
    error line, a log that ended without its final lines; not a run still running), the runs not
    run yet, the tail means resting on fewer steps than the window (step 0 is never in it), why a
    delta is `-`, and the repeats that would resolve each run's `within noise` deltas."""
    out = [
        f"{r.run}: {safetext.oneline(r.note)}"
        for r in rows
        if r.note
        and not r.is_aggregate
        and r.status not in (RunStatus.NOT_RUN, RunStatus.RUNNING)
        and r.source != Source.RECORDED
    ]
    if not_run := [r.run for r in rows if r.status == RunStatus.NOT_RUN]:
        out.append(f"not run yet: {', '.join(not_run)}")
    short = [
        f"{r.run} {r.summary.tail_n}"
        for r in rows
        if r.summary is not None and r.has_figures and progress.short_tail(r.summary.tail_n, tail)
    ]
    if short:
        out.append(f"fewer than {tail} steps in the tail (step 0 left out): {', '.join(short)}")
    why = dict.fromkeys(f"{metric}: {reason}" for r in shown for metric, reason in r.why.items())
    if why:
        out.append("no delta (-) where " + "; ".join(why))
    out += [f"{r.name}: {r.resolve}" for r in shown if r.resolve]
    return tuple(out)


def _plain(line: str) -> str:
    """A line of the report's markdown as the screen shows it: without bold and code marks."""
    return line.replace("**", "").replace("`", "")


def _row_view(
    r: report.ReportRow,
    base: report.ReportRow | None,
    tail: int,
    itself: bool = False,
    label: str = "",
    sub: str | None = None,
) -> vm.RowView:
    """A row of the final table; with a baseline, each figure's delta, interval and verdict."""
    figures = r.figures
    spread = {
        m: sd for m in (*METRICS, *QUALITY) if r.value(m) is not None and (sd := r.spread(m)) is not None
    }
    if base is None or not r.has_figures:
        return vm.RowView(r.run, r.status, figures, spread=spread, baseline=itself, label=label, sub=sub)
    ds = report.delta_rows(base, r, tail)
    return vm.RowView(
        r.run,
        r.status,
        figures,
        {d.attr: d.delta_pct for d in ds},
        {d.attr: d.ci_pct for d in ds if d.ci_pct is not None},
        {d.attr: d.verdict for d in ds if d.verdict != Verdict.NONE},
        spread=spread,
        bases={d.attr: d.basis for d in ds if d.basis},
        resolve=_plain(report_md.resolve_text(ds)),
        label=label,
        sub=sub,
        why={
            d.metric: d.why
            for d in ds
            if d.delta_pct is None and d.why and d.baseline is not None and d.run is not None
        },
    )
