"""Which baseline a run is compared with: one decision, for every table that shows a delta.

A delta is only as good as its baseline, and a verdict must not change after the fact. So a
launch pins its baseline in plan.json (`pin`, under the key `baseline`), and `choose` reads the
pin; nothing that happens later (another launch, a re-run of the baseline) moves it:

- `own`: the launch runs the experiment's baseline leg (the registry's `baseline`) itself: the
  same code, machine and hour. When that run fails, is stopped or has not finished, the dir has
  no deltas (`Baseline.problem` says why, `Baseline.instead` how to compare with another run
  through `--baseline`); never a silent switch to another dir.
- `dir`: the launch does not run it: the newest finished run of it at launch time, in another
  dir, is pinned by its path and run names.
- `recorded`: no dir had one, and the registry records its figures (a run elsewhere): the figures
  themselves are copied into the pin, so a later edit of the registry does not move them either.
- `none`: nothing to compare with at launch (no finished run, nothing recorded): no deltas, said
  with how to name one through `--baseline`. An experiment that names no baseline pins nothing.

A dir launched before pins existed (its plan has no `baseline` key, or a dir of plain logs)
gets a rule that later runs cannot change: its own finished run of the baseline leg, else the
newest finished one in a dir created before it (and, where its state records an end time,
ended before it was created), else the registry's recorded figures.

A baseline from anywhere but the run's own dir is named wherever its delta is shown (`baseline
from 20261130_202037_cpu-smoke`), with what differs between the two launches (git commit or
patch, host, GPU model, versions, environment, the baseline leg's args: provenance.differences).
`--baseline RUN` or `OTHER_DIR/RUN` names one explicitly (`explicit`) for one report, labelled the
same way.

The report, the resume guide, `cockpit status` and the terminal app's tables all ask `choose()`;
a report asks `for_dir`, which also takes `--baseline` (`find_log`), and each Baseline carries
the trainer flags it ran with (its `args differ` line).

Layer 2: imports flags, fsutil, safetext, registry, expdir and provenance.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cockpit import expdir, flags, fsutil, provenance, safetext
from cockpit import registry as reg
from cockpit.expdir import ExpDir
from cockpit.vocab import ACTIVE_STATUSES, Status


@dataclass(frozen=True)
class Baseline:
    """Where a run's baseline figures come from."""

    leg: str  # the baseline leg (for an explicit one: the run named)
    experiment: str | None  # its experiment (None: a dir the registry does not know)
    dir: Path | None  # the dir it ran in; None: figures recorded in the registry
    runs: tuple[str, ...] = ()  # its runs in that dir: the leg's own, or one per repeat
    own: bool = False  # the run's own dir
    explicit: bool = False  # named with --baseline
    recorded: reg.Recorded | None = None
    differs: tuple[
        str, ...
    ] = ()  # what differs between its launch and the run's (empty: nothing recorded does)
    unknown: str | None = None  # why the two launches' origins cannot be compared (a dir without plan.json)
    pinned: bool = False  # chosen at launch (plan.json's pin), not by the rule for older dirs
    problem: str | None = None  # why there are no figures to compare with (the pinned run failed, ...)
    instead: str | None = None  # with a problem: the command that compares with another run
    # the trainer flags its run ran with, its dir's path written `{exp_dir}` (its plan's, or for
    # recorded figures the registry's leg); None: nothing says (a manual log, a leg with repeats)
    flags: Mapping[str, str | bool] | None = None

    @property
    def source(self) -> str | None:
        """Where it comes from, when that is not the run's own dir: `baseline from <dir name>`,
        or `recorded in the registry (<source>)`; None for the run's own dir."""
        if self.own:
            return None
        if self.dir is None and self.recorded is None:
            return None  # nothing to compare with (a problem says why)
        if self.dir is None:
            src = self.recorded.source if self.recorded is not None else None
            return "recorded in the registry" + (f" ({src})" if src else "") + ", not measured here"
        return f"baseline from {self.dir.name}"

    @property
    def column(self) -> str:
        """The heading of the baseline's column in a delta table."""
        if self.own:
            return f"baseline {self.leg}"
        if self.dir is None:
            return f"baseline {self.leg} (recorded)"
        return f"{self.leg} ({self.source})"

    def is_it(self, run_dir: Path | str, run: str) -> bool:
        """Is this run (a run name of a dir) the baseline itself, or one of its repeats?"""
        return self.dir is not None and _same(self.dir, run_dir) and run in self.runs


def _same(a: Path | str, b: Path | str) -> bool:
    return os.path.realpath(a) == os.path.realpath(b)


def _dir(dirs: list[ExpDir], path: Path | str | ExpDir) -> ExpDir:
    if isinstance(path, ExpDir):
        return path
    return next((d for d in dirs if _same(d.path, path)), None) or expdir.open_dir(path)


def _run_flags(d: ExpDir, runs: tuple[str, ...]) -> dict[str, str | bool] | None:
    """The flags of a baseline that is one run of dir `d`, as its plan has them (see Baseline.flags)."""
    return d.plan.flags_of(runs[0], d.path) if d.plan is not None and len(runs) == 1 else None


def _leg_flags(leg: reg.Leg | None) -> dict[str, str | bool] | None:
    """The flags the registry gives a leg whose figures it records (see Baseline.flags)."""
    return flags.parse_flags(leg.trainer_args()) if leg is not None else None


def _expected_argv(leg: reg.Leg, run_d: ExpDir, first_run: str) -> list[str]:
    """The baseline leg's command as the run's launch gives it (its plan, else the registry),
    in provenance.normal_argv's terms."""
    spec = run_d.spec(first_run)
    if spec is not None and spec.argv:
        return provenance.normal_argv(
            list(spec.argv), (run_d.plan.dir if run_d.plan else None) or str(run_d.path)
        )
    _, i = reg.split_repeat(first_run)
    return provenance.normal_argv(
        leg.argv(str(run_d.path), "torchrun", i if leg.repeats > 1 else None), str(run_d.path)
    )


RECORDED_RUN = "the run's figures are recorded in the registry: its origin is unknown here"


OWN, DIR, RECORDED, NONE = "own", "dir", "recorded", "none"  # the pin's `source`


def pin(
    registry: reg.Registry, exp: reg.Experiment, planned: list[reg.Leg], dirs: list[ExpDir] | None = None
) -> dict[str, Any]:
    """What a launch of `planned` legs of `exp` pins as its baseline (plan.json's `baseline`): the
    leg, and where its figures come from (OWN, DIR, RECORDED or NONE; see the module's
    docstring). `dirs`: expdir.discover(exp_root), when the caller has it. Reads only."""
    leg = registry.find_leg(exp.baseline, exp.id) if exp.baseline else None
    if leg is None:
        return {"source": NONE, "leg": None, "why": f"experiment '{exp.id}' names no baseline"}
    which = {"leg": leg.name, "experiment": leg.experiment}
    if leg.experiment == exp.id and any(x.name == leg.name for x in planned):
        return {**which, "source": OWN, "runs": leg.run_names()}
    if dirs is None:
        dirs = expdir.discover(registry.settings.exp_root)
    for d in reversed(dirs):  # newest first
        if d.experiment == leg.experiment and d.leg_done(leg.name):
            return {**which, "source": DIR, "dir": str(d.path), "runs": d.runs(leg.name)}
    if leg.recorded is not None:
        return {**which, "source": RECORDED, "recorded": leg.recorded.as_table()}
    return {
        **which,
        "source": NONE,
        "why": f"no finished run of {leg.experiment}/{leg.name} and no recorded figures when this dir was launched",
    }


def pin_text(p: dict[str, Any]) -> str:
    """A pin in words, as a dry run and the plan's reader see it."""
    if p.get("leg") is None:
        return f"none ({p.get('why')})"
    name = p["leg"] if p.get("source") == OWN else f"{p['experiment']}/{p['leg']}"
    return {
        OWN: f"{name}, run by this launch",
        DIR: f"{name} as it ran in {Path(str(p.get('dir'))).name}",
        RECORDED: f"{name}, the figures the registry records",
    }.get(p.get("source"), f"{name}: none ({p.get('why')})")


def choose(
    registry: reg.Registry,
    experiment: str,
    run_dir: Path | str | ExpDir | None,
    dirs: list[ExpDir] | None = None,
) -> Baseline | None:
    """The baseline of the runs of `run_dir`, a dir of `experiment`: what its plan pinned at
    launch, else (a dir from before pins, or of plain logs) its own finished run of the registry's
    baseline leg, else the newest finished one in another dir of the baseline's experiment made
    before it, else the registry's recorded figures; None when the experiment names no baseline.
    `run_dir` None: a run recorded in the registry (it ran elsewhere), whose comparable baseline
    is the recorded one, else the newest finished one here. `run_dir` may be the dir as read
    already; `dirs`: expdir.discover(exp_root), when the caller has it. Reads only."""
    run_d = _dir(dirs or [], run_dir) if run_dir is not None else None
    if run_d is not None and run_d.plan is not None and run_d.plan.baseline is not None:
        return _pinned(registry, run_d, run_d.plan.baseline, dirs)
    exp = registry.experiment(experiment)
    leg = registry.find_leg(exp.baseline, exp.id) if exp is not None and exp.baseline else None
    if leg is None:
        return None
    if run_d is None and leg.recorded is not None:
        return Baseline(leg.name, leg.experiment, None, recorded=leg.recorded, flags=_leg_flags(leg))
    if dirs is None:
        dirs = expdir.discover(registry.settings.exp_root)
    # the run's own dir: a finished log of the baseline counts even without a state (put there by hand)
    if run_d is not None and leg.experiment == experiment and run_d.leg_done(leg.name, by_log=True):
        runs = tuple(run_d.runs(leg.name))
        return Baseline(leg.name, leg.experiment, run_d.path, runs, own=True, flags=_run_flags(run_d, runs))
    made = _created(run_d) if run_d is not None else None
    for d in reversed(dirs):  # newest first
        if (
            d.experiment != leg.experiment
            or (run_d is not None and _same(d.path, run_d.path))
            or not d.leg_done(leg.name)
        ):
            continue
        runs = tuple(d.runs(leg.name))
        if run_d is None:
            return Baseline(
                leg.name, leg.experiment, d.path, runs, unknown=RECORDED_RUN, flags=_run_flags(d, runs)
            )
        if not _before(d, runs, run_d, made):
            continue  # made or ended after the run's dir: it cannot have been its baseline
        return _from_dir(leg.name, leg.experiment, d, runs, run_d, leg)
    if leg.recorded is not None:
        return Baseline(leg.name, leg.experiment, None, recorded=leg.recorded, flags=_leg_flags(leg))
    return None


def _from_dir(
    name: str,
    experiment: str,
    d: ExpDir,
    runs: tuple[str, ...],
    run_d: ExpDir,
    leg: reg.Leg | None,
    pinned: bool = False,
) -> Baseline:
    """The baseline `runs` of another dir `d`, with what differs between its launch and the run's."""
    expected = _expected_argv(leg, run_d, runs[0]) if leg is not None else None
    differs = provenance.differences(d.plan, run_d.plan, runs[0], expected)
    return Baseline(
        name,
        experiment,
        d.path,
        runs,
        differs=tuple(differs),
        unknown=provenance.unknown(d.plan, run_d.plan),
        pinned=pinned,
        flags=_run_flags(d, runs),
    )


def _pinned(registry: reg.Registry, run_d: ExpDir, p: Any, dirs: list[ExpDir] | None) -> Baseline | None:
    """The baseline plan.json pinned at launch (see `pin`): never another."""
    if not isinstance(p, dict) or p.get("leg") is None:
        return None  # the experiment named no baseline at launch
    name, experiment, source = p.get("leg"), p.get("experiment"), p.get("source")
    if not (isinstance(name, str) and isinstance(experiment, str) and source in (OWN, DIR, RECORDED, NONE)):
        return Baseline(
            str(name),
            None,
            None,
            pinned=True,
            problem="plan.json's baseline pin is not one the cockpit wrote",
            instead=_instead(run_d, str(name), None, dirs, registry),
        )
    if source == RECORDED:
        figures = p.get("recorded") if isinstance(p.get("recorded"), dict) else {}
        kept = {k: v for k, v in figures.items() if v is None or isinstance(v, str) or _finite(v)}
        return Baseline(
            name,
            experiment,
            None,
            recorded=reg.Recorded.of(kept),
            pinned=True,
            flags=_leg_flags(registry.find_leg(f"{experiment}/{name}")),
        )
    runs = p.get("runs")
    runs = (
        tuple(runs) if isinstance(runs, list) and runs and all(isinstance(r, str) for r in runs) else (name,)
    )
    if source == OWN:
        b = Baseline(name, experiment, run_d.path, runs, own=True, pinned=True, flags=_run_flags(run_d, runs))
        why = _not_done(run_d, runs)
        return (
            b
            if why is None
            else dataclasses.replace(
                b,
                problem=f"this dir's own run of {name} (the launch ran it) {why}",
                instead=_instead(run_d, name, experiment, dirs, registry),
            )
        )
    if source == DIR:
        where = Path(str(p.get("dir")))
        base_d = _pinned_dir(where, run_d, dirs)
        if base_d is not None and all(base_d.run_done(r, by_log=True) for r in runs):
            return _from_dir(
                name, experiment, base_d, runs, run_d, registry.find_leg(f"{experiment}/{name}"), pinned=True
            )
        why = "is gone" if base_d is None else f"no longer holds a finished run of {name}"
        return Baseline(
            name,
            experiment,
            where,
            runs,
            pinned=True,
            problem=f"the dir pinned at launch, {where.name}, {why}",
            instead=_instead(run_d, name, experiment, dirs, registry),
        )
    return Baseline(
        name,
        experiment,
        None,
        pinned=True,
        problem=str(p.get("why") or "nothing was pinned at launch"),
        instead=_instead(run_d, name, experiment, dirs, registry),
    )


def _finite(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _pinned_dir(where: Path, run_d: ExpDir, dirs: list[ExpDir] | None) -> ExpDir | None:
    """The pinned dir (read already when it is one of `dirs`): at its path, else (exp_root moved)
    beside the run's dir by its name."""
    for path in (where, run_d.path.parent / where.name):
        if os.path.isdir(path):
            return _dir(dirs or [], path)
    return None


def _not_done(d: ExpDir, runs: tuple[str, ...]) -> str | None:
    """Why the runs of a dir are not all done (None: they are): failed, stopped, not finished."""
    if all(d.run_done(r, by_log=True) for r in runs):
        return None
    states = [d.states[r].status for r in runs if r in d.states]
    if Status.FAILED in states:
        return "failed"
    if any(s in ACTIVE_STATUSES for s in states):
        return "has not finished yet: the deltas come when it does"
    if Status.STOPPED in states:
        return "was stopped"
    return "did not finish" if states or any(os.path.exists(d.log(r)) for r in runs) else "has not run"


def _instead(
    run_d: ExpDir, name: str, experiment: str | None, dirs: list[ExpDir] | None, registry: reg.Registry
) -> str:
    """How to compare with another run for one report: `--baseline`, naming the newest finished
    run of the baseline leg in another dir when there is one."""
    if dirs is None:
        dirs = expdir.discover(registry.settings.exp_root)
    other = next(
        (
            d
            for d in reversed(dirs)
            if d.experiment == experiment and not _same(d.path, run_d.path) and d.leg_done(name)
        ),
        None,
    )
    ref = f"{other.path.name}/{other.runs(name)[0]}" if other is not None else f"OTHER_DIR/{name}"
    return f"cockpit report --exp-dir {run_d.path} --baseline {ref}"


def _stamp_time(stamp: str) -> float | None:
    try:
        return dt.datetime.strptime(stamp, expdir.STAMP_FORMAT).astimezone().timestamp()
    except ValueError:
        return None


def _iso_time(text: Any) -> float | None:
    try:
        t = dt.datetime.fromisoformat(text)
    except (TypeError, ValueError):
        return None
    return (t if t.tzinfo else t.astimezone()).timestamp()


def _created(d: ExpDir) -> float | None:
    """When a dir was made: its plan's `created_at`, else the stamp of its name; None: unknown."""
    made = _iso_time(d.plan.created_at) if d.plan is not None else None
    return made if made is not None else _stamp_time(d.created) if d.created else None


def _before(d: ExpDir, runs: tuple[str, ...], run_d: ExpDir, made: float | None) -> bool:
    """Was dir `d` made before the run's dir, and did its `runs` end before it (where its states
    record an end)? A dir of unknown age is never before."""
    if made is None or not d.created or not run_d.created or d.created >= run_d.created:
        return False
    ends = [_iso_time(d.states[r].ended_at) for r in runs if r in d.states and d.states[r].ended_at]
    return all(e is not None and e <= made for e in ends)


class BaselineError(Exception):
    """A baseline named with --baseline that is no log: one line."""


def find_log(exp_dir: Path, ref: str) -> Path:
    """`RUN` (a log in the dir) or `OTHER_DIR/RUN` (a log in another dir) -> the log's path;
    BaselineError when there is none. OTHER_DIR may be a path, or a sibling dir's name (under the
    same exp_root)."""
    if not ref.strip():
        raise BaselineError("--baseline is empty: give RUN (a log in the dir) or OTHER_DIR/RUN")
    ref = ref.removesuffix(".log")
    candidates = [exp_dir / f"{ref}.log"]
    if "/" in ref:
        candidates += [Path(f"{ref}.log").expanduser(), exp_dir.parent / f"{ref}.log"]
    candidates = list(dict.fromkeys(Path(os.path.abspath(c)) for c in candidates))
    for path in candidates:
        if fsutil.is_regular(path):
            return path
    shown = safetext.oneline(ref)
    if len(candidates) == 1:
        c = candidates[0]
        where = f"no log at {c}" + ("" if fsutil.is_dir(c.parent) else f" ({c.parent} is not a dir)")
    else:
        missing = [c for c in candidates if not fsutil.is_dir(c.parent)]
        where = "no log at " + ", ".join(str(c) for c in candidates)
        if len(missing) == len(candidates):
            where = f"no log '{Path(ref).name}.log': none of {', '.join(str(c.parent) for c in candidates)} is a dir"
    raise BaselineError(
        f"baseline '{shown}': {safetext.oneline(where)} (give RUN, a log of this dir, or DIR/RUN)"
    )


def for_dir(d: ExpDir, ref: str | None = None, registry: reg.Registry | None = None) -> Baseline | None:
    """The baseline of a dir's runs (read once, as `d`), for its report: `--baseline REF` when given
    (BaselineError when no such log), else `choose` with the registry of the dir's plan (the file
    as it is now, else its snapshot), else `registry` for a dir of plain logs whose name says its
    experiment. None when no registry names one; never raises then."""
    if ref is not None:
        return explicit(d, find_log(d.path, ref))
    try:
        if d.plan is not None:
            registry, experiment = d.plan.registry_of(d.path), d.plan.experiment
        elif registry is not None and registry.experiment(d.experiment) is not None:
            experiment = d.experiment
        else:
            return None
        return choose(registry, experiment, d) if registry is not None else None
    except Exception:  # noqa: BLE001 - a missing or broken plan/registry only means no baseline
        return None


def explicit(run_d: ExpDir, log: Path) -> Baseline:
    """The baseline named with --baseline: the run of `log` (a log of the run's dir `run_d`, or of another)."""
    if _same(log.parent, run_d.path):
        runs = (log.stem,)
        return Baseline(
            log.stem,
            run_d.experiment,
            run_d.path,
            runs,
            own=True,
            explicit=True,
            flags=_run_flags(run_d, runs),
        )
    base_d = expdir.open_dir(log.parent)
    differs = provenance.differences(base_d.plan, run_d.plan, log.stem)
    return Baseline(
        log.stem,
        base_d.experiment,
        base_d.path,
        (log.stem,),
        explicit=True,
        differs=tuple(differs),
        unknown=provenance.unknown(base_d.plan, run_d.plan),
        flags=_run_flags(base_d, (log.stem,)),
    )
