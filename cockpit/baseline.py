"""Which baseline a run is compared with: one decision, for every table that shows a delta.

A delta is only as good as its baseline. A run's baseline is its experiment's baseline leg (the
registry's `baseline`) as it ran in the run's own experiment dir: the same launch, so the same
code, machine and hour. When that dir holds no finished run of it (the leg was re-run alone in a
new dir, or the baseline failed there), the newest finished run of it in another dir of its
experiment; when there is none, the figures the registry records for it (a run elsewhere).

A baseline from anywhere but the run's own dir is named wherever its delta is shown (`baseline
from 20261130_202037_cpu-smoke`), with what differs between the two launches (git commit or
patch, host, GPU model, versions, environment, the baseline leg's args: provenance.differences).
`--baseline RUN` or `OTHER_DIR/RUN` names one explicitly (`explicit`), labelled the same way.

The report, the resume guide, `cockpit status` and the terminal app's tables all ask `choose()`.

Layer 2: imports registry, expdir and provenance.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from cockpit import expdir, provenance
from cockpit import registry as reg
from cockpit.expdir import ExpDir


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
    differs: tuple[str, ...] = ()  # what differs between its launch and the run's (empty: nothing recorded does)
    unknown: str | None = None  # why the two launches' origins cannot be compared (a dir without plan.json)

    @property
    def source(self) -> str | None:
        """Where it comes from, when that is not the run's own dir: `baseline from <dir name>`,
        or `recorded in the registry (<source>)`; None for the run's own dir."""
        if self.own:
            return None
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


def _dir(dirs: list[ExpDir], path: Path | str) -> ExpDir:
    return next((d for d in dirs if _same(d.path, path)), None) or expdir.open_dir(path)


def _expected_argv(leg: reg.Leg, run_d: ExpDir, first_run: str) -> list[str]:
    """The baseline leg's command as the run's launch gives it (its plan, else the registry),
    in provenance.normal_argv's terms."""
    spec = run_d.spec(first_run)
    argv = spec.get("argv") if spec else None
    if isinstance(argv, list) and all(isinstance(a, str) for a in argv):
        return provenance.normal_argv(argv, (run_d.plan or {}).get("dir") or str(run_d.path))
    _, i = reg.split_repeat(first_run)
    return provenance.normal_argv(leg.argv(str(run_d.path), "torchrun", i if leg.repeats > 1 else None), str(run_d.path))


RECORDED_RUN = "the run's figures are recorded in the registry: its origin is unknown here"


def choose(registry: reg.Registry, experiment: str, run_dir: Path | str | None,
           dirs: list[ExpDir] | None = None) -> Baseline | None:
    """The baseline of the runs of `run_dir`, a dir of `experiment`: its own finished run of the
    registry's baseline leg, else the newest finished one in another dir of the baseline's
    experiment, else the registry's recorded figures; None when the experiment names no baseline.
    `run_dir` None: a run recorded in the registry (it ran elsewhere), whose comparable baseline
    is the recorded one, else the newest finished one here. `dirs`: expdir.discover(exp_root),
    when the caller has it. Reads only."""
    exp = registry.experiment(experiment)
    leg = registry.find_leg(exp.baseline, exp.id) if exp is not None and exp.baseline else None
    if leg is None:
        return None
    if run_dir is None and leg.recorded is not None:
        return Baseline(leg.name, leg.experiment, None, recorded=leg.recorded)
    if dirs is None:
        dirs = expdir.discover(registry.settings.exp_root)
    run_d = _dir(dirs, run_dir) if run_dir is not None else None
    # the run's own dir: a finished log of the baseline counts even without a state (put there by hand)
    if run_d is not None and leg.experiment == experiment and run_d.leg_done(leg.name, by_log=True):
        return Baseline(leg.name, leg.experiment, run_d.path, tuple(run_d.runs(leg.name)), own=True)
    for d in reversed(dirs):  # newest first
        if d.experiment != leg.experiment or (run_d is not None and _same(d.path, run_d.path)) or not d.leg_done(leg.name):
            continue
        runs = tuple(d.runs(leg.name))
        if run_d is None:
            return Baseline(leg.name, leg.experiment, d.path, runs, unknown=RECORDED_RUN)
        differs = provenance.differences(d.plan, run_d.plan, runs[0], _expected_argv(leg, run_d, runs[0]))
        return Baseline(leg.name, leg.experiment, d.path, runs, differs=tuple(differs),
                        unknown=provenance.unknown(d.plan, run_d.plan))
    if leg.recorded is not None:
        return Baseline(leg.name, leg.experiment, None, recorded=leg.recorded)
    return None


def explicit(run_dir: Path | str, log: Path) -> Baseline:
    """The baseline named with --baseline: the run of `log` (a log of this dir or another)."""
    run_d = expdir.open_dir(run_dir)
    if _same(log.parent, run_dir):
        return Baseline(log.stem, run_d.experiment, run_d.path, (log.stem,), own=True, explicit=True)
    base_d = expdir.open_dir(log.parent)
    differs = provenance.differences(base_d.plan, run_d.plan, log.stem)
    return Baseline(log.stem, base_d.experiment, base_d.path, (log.stem,), explicit=True, differs=tuple(differs),
                    unknown=provenance.unknown(base_d.plan, run_d.plan))
