"""Sweeps: an experiment's grid of legs, and the bound on the runs a registry may make.

    [experiment.grid]
    name = "{compile-mode}_cap{moe-capacity-factor}"      # each leg's name: every axis in it
    compile-mode = ["static", "dynamic"]                 # an axis: a trainer flag and its values
    moe-capacity-factor = [0.0, 1.0, 1.25]
    args = { model-tag = "sweep_{name}" }                # optional: args of every grid leg

expands to one leg per combination (the first axis varies slowest), named by the template:
static_cap0p0, static_cap1p0, static_cap1p25, dynamic_cap0p0, ... A value renders in a name as
a file name can hold it: 1.0 -> 1p0, 1.25 -> 1p25, -1 -> m1, 1e-05 -> 1em05, true -> true,
a string as it is. A grid leg's args: the experiment's, then the grid's `args`, then its axis
values; `{name}` and `{<axis>}` in the grid's args and description stand for the leg's own.

Layer 0: imports nothing from the cockpit but names and schema.
"""

from __future__ import annotations

import itertools
import math
import re
from typing import Any

from cockpit.names import LEG_FILES, bad_name
from cockpit.schema import ARG_KEY, Loader, count, show

# Runs (legs x repeats, a grid's legs counted) are bounded: per experiment, and in all. Each run is
# a state file, a log and a line of every view; a grid of 100 x 100 x 100 values would make 10^6
# of them (status: 30 s and 1.4 GB). Checked before a grid is expanded.
RUNS_MAX = 1_000
REGISTRY_RUNS_MAX = 10_000
GRID_KEYS = ("name", "description", "args")  # a grid's keys that are not axes
PLACEHOLDER = re.compile(r"\{([^{}]*)\}")


def name_part(value: Any) -> str:
    """An axis value as it appears in a leg name: `1.0` -> `1p0`, `-0.5` -> `m0p5`, `true`."""
    if isinstance(value, bool):
        return "true" if value else "false"
    text = repr(value) if isinstance(value, float) else str(value)
    return (
        text.replace(".", "p").replace("-", "m").replace("+", "") if isinstance(value, int | float) else text
    )


def fill(template: str, values: dict[str, str]) -> str:
    """`{key}` -> values[key] for the keys given; any other `{...}` (`{exp_dir}`) stays as it is."""
    return PLACEHOLDER.sub(lambda m: values.get(m.group(1), m.group(0)), template)


def expand(
    ld: Loader,
    grid: dict,
    loc: tuple,
    exp_id: str,
    e_args: dict,
    seen: dict[str, int | None],
    runs: int = 0,
    repeats: int = 1,
) -> list[tuple[str, dict, str | None, dict]]:
    """The legs of an experiment's grid as (name, args, description, axis values), checked: a
    template that names every axis and nothing else, axes of distinct scalar values, names no
    other leg has (`seen`: name -> line), and no more runs than RUNS_MAX with the `runs` the
    experiment has beside it, each leg run `repeats` times (counted before anything is expanded)."""
    template = grid.get("name")
    if not isinstance(template, str):
        raise ld.fail(
            loc,
            f"the grid of '{exp_id}' needs a name template (e.g. name = \"{{compile-mode}}_cap"
            '{moe-capacity-factor}") whose placeholders are its axes',
        )
    axes = {k: v for k, v in grid.items() if k not in GRID_KEYS}
    if not axes:
        raise ld.fail(loc, f"the grid of '{exp_id}' has no axis (a trainer flag = [values])")
    for key, values in axes.items():
        if not ARG_KEY.match(key):
            raise ld.fail(loc + (key,), f"grid axis {show(key)} of '{exp_id}' is not a flag name")
        if not isinstance(values, list) or not values:
            raise ld.fail(
                loc + (key,),
                f"grid axis '{key}' of '{exp_id}' must be a non-empty array of values, not {show(values)}",
            )
    size = math.prod(len(v) for v in axes.values())
    if runs + size * repeats > RUNS_MAX:
        shape = " x ".join(str(len(v)) for v in axes.values())
        also = f", with {count(runs)} beside it" if runs else ""
        rep = f" x {repeats} repeats" if repeats > 1 else ""
        raise ld.fail(
            loc,
            f"the grid of '{exp_id}' makes {count(size)} legs ({shape}){rep}{also}: an experiment "
            f"holds at most {count(RUNS_MAX)} runs (legs x repeats)",
        )
    for key, values in axes.items():
        for v in values:
            ld.check_args({key: v}, loc + (key,))
        shown = [name_part(v) for v in values]
        if len(set(shown)) < len(shown):
            dup = next(x for x in shown if shown.count(x) > 1)
            raise ld.fail(loc + (key,), f"grid axis '{key}' of '{exp_id}' repeats a value ({dup} in a name)")
    desc = grid.get("description")
    if desc is not None and not isinstance(desc, str):
        raise ld.fail(loc + ("description",), f"the grid's description in '{exp_id}' must be a string")
    g_args = (
        ld.check_args(grid.get("args", {}), loc + ("args",))
        if isinstance(grid.get("args", {}), dict)
        else None
    )
    if g_args is None:
        raise ld.fail(loc + ("args",), f"the grid's args in '{exp_id}' must be a table")
    where = loc + ("name",)
    stripped = PLACEHOLDER.sub("", template)
    if "{" in stripped or "}" in stripped:
        raise ld.fail(where, f"grid name template {show(template)} of '{exp_id}' has an unmatched brace")
    named = PLACEHOLDER.findall(template)
    if unknown := [n for n in named if n not in axes]:
        raise ld.fail(
            where,
            f"grid name template {show(template)} of '{exp_id}' names {{{unknown[0]}}}, which is "
            f"not an axis (axes: {', '.join(axes)})",
        )
    if missing := [a for a in axes if a not in named]:
        raise ld.fail(
            where,
            f"grid name template {show(template)} of '{exp_id}' leaves out axis '{missing[0]}': "
            "legs that differ only there would share a name",
        )
    legs = []
    first: dict[str, dict] = {}
    for combo in itertools.product(*axes.values()):
        values = dict(zip(axes, combo, strict=True))
        name = fill(template, {k: name_part(v) for k, v in values.items()})
        said = ", ".join(f"{k} = {show(v)}" for k, v in values.items())
        if why := bad_name(name, LEG_FILES):
            raise ld.fail(where, f"grid leg name {show(name)} ({said}) in '{exp_id}' {why}")
        if name in seen:
            raise ld.fail(
                where,
                f"grid leg '{name}' ({said}) of '{exp_id}' has the name of the leg at line {seen[name]}",
            )
        if name in first:
            other = ", ".join(f"{k} = {show(v)}" for k, v in first[name].items())
            raise ld.fail(
                where, f"grid legs ({other}) and ({said}) of '{exp_id}' would both be named '{name}'"
            )
        first[name] = values
        subst = {"name": name, **{k: str(v) for k, v in values.items()}}
        args = {
            **e_args,
            **{k: fill(v, subst) if isinstance(v, str) else v for k, v in g_args.items()},
            **values,
        }
        legs.append((name, args, fill(desc, subst) if desc is not None else None, values))
    return legs
