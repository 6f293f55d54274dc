"""The resume state as one JSON document: what `cockpit status --json` and `cockpit resume --json` print.

It serializes `resume.ResumeState` (the one model of where things stand) and builds nothing of
its own: every value is a field of that state, or a figure the report computes from it
(`report.delta_rows`). The shape is stable; `"schema"` says its version, raised only when a key
changes meaning or goes away (a new key may appear at any version). Version 1:

    {"schema": 1, "generated": "2026-02-24 19:12 +0800", "project", "registry", "exp_root",
     "workdir", "tail": 50, "activity": "nothing running, 3 legs to run",
     "branch": {"current", "expected", "ok", "text"} | null,
     "gpus": {"state": "idle" | "busy" | "unknown", "text", "count", "busy": [index], "visible", "reason"},
     "experiments": [{"id", "title", "device", "nproc_per_node", "baseline", "hypothesis",
                      "decision", "notes": [], "prepare", "dirs": [path], "legs": [LEG]}],
     "running": [ref], "active": [ref],      # refs are "experiment/leg"
     "dirs": [{"path", "experiment", "problem", "legs": {run: status}}],
     "next": NEXT | null, "next_elsewhere": NEXT | null, "reports": [path], "safety": [line]}

    LEG = {"ref", "experiment", "leg", "mark", "dir", "run", "log", "description", "baseline": bool,
           "note", "not_here", "pid", "job",
           "progress": {"step", "total", "pct", "loss", "tok_per_sec", "eta_min"} | null,
           "figures": {"source": "log" | "recorded", "repeats": n, <metric>: number | null} | null,
           "delta": {"vs", "experiment", "dir", "source",
                     "metrics": {<metric>: {"baseline", "run", "pct", "ci_pct", "verdict", "why"}}} | null}
    NEXT = {"experiment", "leg", "mark", "description", "command", "report_command", "cockpit"}

A mark, a status and a verdict are the words of cockpit/vocab.py; metric names are vocab's METRICS
and QUALITY. A number that is not finite (nan, inf) is null. Text keeps what the files hold; the
document is printed as ASCII, so a control character read from a log reaches the terminal as a
JSON escape (`\\u001b`), never as itself.

Layer 3: imports resume and the layers below it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from cockpit import expdir, fsutil, report
from cockpit.resume import ExperimentState, LegMark, NextLeg, ResumeState
from cockpit.vocab import Mark

SCHEMA = 1


def _num(v: Any) -> Any:
    """A number as JSON can hold it: a non-finite float is null."""
    return None if isinstance(v, float) and not math.isfinite(v) else v


def _progress(m: LegMark) -> dict[str, Any] | None:
    s = m.summary
    if s is None or s.last_step is None:
        return None
    return {
        "step": s.last_step,
        "total": s.total_steps,
        "pct": _num(s.pct),
        "loss": _num(s.last_loss),
        "tok_per_sec": _num(s.tok_per_sec),
        "eta_min": _num(s.eta_min),
    }


def _figures(row: report.ReportRow | None) -> dict[str, Any] | None:
    if row is None:
        return None
    return {
        "source": str(row.source),
        "repeats": len(row.repeats),
        **{k: _num(v) for k, v in row.figures.items()},
    }


def _delta(m: LegMark, tail: int) -> dict[str, Any] | None:
    """The leg against its baseline (baseline.choose), every metric the report compares."""
    if not m.compared:
        return None
    b = m.baseline
    assert b is not None and m.baseline_row is not None and m.row is not None
    rows = report.delta_rows(m.baseline_row, m.row, tail)
    return {
        "vs": b.leg,
        "experiment": b.experiment,
        "dir": str(b.dir) if b.dir is not None else None,
        "source": b.source,
        "metrics": {
            d.attr: {
                "baseline": _num(d.baseline),
                "run": _num(d.run),
                "pct": _num(d.delta_pct),
                "ci_pct": _num(d.ci_pct),
                "verdict": str(d.verdict),
                "why": d.why,
            }
            for d in rows
        },
    }


def _leg(m: LegMark, tail: int) -> dict[str, Any]:
    log = str(Path(m.dir) / f"{m.log_name}.log") if m.dir and m.mark != Mark.RECORDED else None
    return {
        "ref": m.ref,
        "experiment": m.experiment,
        "leg": m.leg,
        "mark": str(m.mark),
        "dir": m.dir,
        "run": m.run,
        "log": log,
        "description": m.description,
        "baseline": m.is_baseline,
        "note": m.note,
        "not_here": m.not_here,
        "pid": m.pid,
        "job": m.job,
        "progress": _progress(m),
        "figures": _figures(m.row),
        "delta": _delta(m, tail),
    }


def _experiment(e: ExperimentState, tail: int) -> dict[str, Any]:
    return {
        "id": e.id,
        "title": e.title,
        "device": e.device,
        "nproc_per_node": e.nproc_per_node,
        "baseline": e.baseline,
        "hypothesis": e.hypothesis,
        "decision": e.decision,
        "notes": list(e.notes),
        "prepare": e.prepare_text,
        "dirs": list(e.dirs),
        "legs": [_leg(m, tail) for m in e.legs],
    }


def _dir(d: expdir.ExpDir) -> dict[str, Any]:
    """A dir under exp_root: each run's status as its state says, else whether it has a log."""
    legs = {}
    for run in d.legs:
        st = d.states.get(run)
        legs[run] = (
            str(st.status) if st is not None else "log" if fsutil.is_regular(d.log(run)) else "not started"
        )
    return {"path": str(d.path), "experiment": d.experiment, "problem": d.problem, "legs": legs}


def _next(n: NextLeg | None) -> dict[str, Any] | None:
    if n is None:
        return None
    return {
        "experiment": n.experiment,
        "leg": n.leg,
        "mark": str(n.mark),
        "description": n.description,
        "command": n.command,
        "report_command": n.report_command,
        "cockpit": n.cockpit,
    }


def document(state: ResumeState) -> dict[str, Any]:
    """The state as the JSON document above (plain dicts, lists, strings and numbers)."""
    co, g = state.checkout, state.gpus
    return {
        "schema": SCHEMA,
        "generated": state.generated,
        "project": state.project,
        "registry": state.registry_path,
        "exp_root": state.exp_root,
        "workdir": state.workdir,
        "tail": state.tail,
        "activity": state.activity,
        "branch": None
        if co is None
        else {"current": co.current, "expected": co.expected, "ok": co.ok, "text": co.text()},
        "gpus": {
            "state": g.state,
            "text": g.text,
            "count": g.count,
            "busy": list(g.busy),
            "visible": g.visible,
            "reason": g.reason,
        },
        "experiments": [_experiment(e, state.tail) for e in state.experiments],
        "running": [m.ref for m in state.running],
        "active": [m.ref for m in state.active],
        "dirs": [_dir(d) for d in state.dirs],
        "next": _next(state.next),
        "next_elsewhere": _next(state.next_elsewhere),
        "reports": list(state.reports),
        "safety": list(state.safety),
    }


def dumps(state: ResumeState) -> str:
    """The document as JSON text: indented, ASCII only (every other character escaped), strict
    (no NaN or Infinity, which JSON does not have)."""
    return json.dumps(document(state), indent=2, ensure_ascii=True, allow_nan=False)
