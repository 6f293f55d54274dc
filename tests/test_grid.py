"""Sweeps as data: an experiment's `[experiment.grid]` expands to named legs beside hand-written
ones; bad templates and name clashes are one line with file:line."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import cockpit

from cockpit import grid as sweeps
from cockpit import registry as reg

HEAD = """[project]
exp_root = "exp"
[defaults]
device = "cpu"
nproc_per_node = 2
[defaults.args]
depth = 2
compile-mode = "none"

[[experiment]]
id = "sweep"
baseline = "dense"
args = { use-moe = true }
"""

GRID = """[[experiment.leg]]
name = "dense"
args = { use-moe = false }

[experiment.grid]
name = "{compile-mode}_cap{moe-capacity-factor}"
description = "capacity {moe-capacity-factor}, {compile-mode} compile"
compile-mode = ["static", "dynamic"]
moe-capacity-factor = [0.0, 1.0, 1.25]
args = { model-tag = "sweep_{name}", checkpoint-root = "{exp_dir}/ckpt" }

[[experiment.leg]]
name = "eager_cap1p0"
args = { compile-mode = "none", moe-capacity-factor = 1.0 }
"""


def load(tmp_path: Path, body: str) -> reg.Registry:
    path = tmp_path / "experiments.toml"
    path.write_text(HEAD + body)
    return reg.load(path)


def test_grid_expands_to_named_legs_beside_hand_written_ones(tmp_path):
    exp = load(tmp_path, GRID).experiment("sweep")
    # the grid's legs stand where the grid stands; the first axis varies slowest
    assert [leg.name for leg in exp.legs] == [
        "dense",
        "static_cap0p0",
        "static_cap1p0",
        "static_cap1p25",
        "dynamic_cap0p0",
        "dynamic_cap1p0",
        "dynamic_cap1p25",
        "eager_cap1p0",
    ]
    leg = exp.leg("dynamic_cap1p25")
    assert leg.grid == {"compile-mode": "dynamic", "moe-capacity-factor": 1.25}
    assert leg.description == "capacity 1.25, dynamic compile"
    assert leg.line == 5 + HEAD.count("\n")  # the grid's header, for file:line
    # args: defaults < experiment < the grid's args < the axes; {name} filled, {exp_dir} left for the launch
    assert leg.args == {
        "depth": 2,
        "compile-mode": "dynamic",
        "use-moe": True,
        "model-tag": "sweep_dynamic_cap1p25",
        "checkpoint-root": "{exp_dir}/ckpt",
        "moe-capacity-factor": 1.25,
    }
    assert leg.trainer_args("/x") == [
        "--depth",
        "2",
        "--compile-mode",
        "dynamic",
        "--use-moe",
        "--model-tag",
        "sweep_dynamic_cap1p25",
        "--checkpoint-root",
        "/x/ckpt",
        "--moe-capacity-factor",
        "1.25",
    ]
    assert exp.leg("dense").grid is None and exp.leg("eager_cap1p0").grid is None


@pytest.mark.parametrize(
    "value, part",
    [
        (1.0, "1p0"),
        (0.0, "0p0"),
        (1.25, "1p25"),
        (-0.5, "m0p5"),
        (8, "8"),
        (-1, "m1"),
        (1e-05, "1em05"),
        (1e20, "1e20"),
        (True, "true"),
        (False, "false"),
        ("static", "static"),
    ],
)
def test_a_value_in_a_leg_name(value, part):
    assert reg.name_part(value) == part


@pytest.mark.parametrize(
    "body, line, words",
    [
        # a grid leg with the name of a hand-written leg: the grid's name line, and where the other is
        (
            '[[experiment.leg]]\nname = "static_cap1p0"\n\n[experiment.grid]\nname = "{compile-mode}_cap{moe-capacity-factor}"\n'
            'compile-mode = ["static"]\nmoe-capacity-factor = [1.0]\n',
            18,
            [
                "grid leg 'static_cap1p0' (compile-mode = 'static', moe-capacity-factor = 1.0)",
                "leg at line 15",
            ],
        ),
        # two grid legs that would share a name (the template runs values together)
        (
            '[experiment.grid]\nname = "{a}{b}"\na = ["x", "xy"]\nb = ["yz", "z"]\n',
            15,
            ["grid legs (a = 'x', b = 'yz') and (a = 'xy', b = 'z')", "would both be named 'xyz'"],
        ),
        (
            '[experiment.grid]\nname = "cap{moe-capacity-factor"\nmoe-capacity-factor = [1.0]\n',
            15,
            ["unmatched brace"],
        ),
        (
            '[experiment.grid]\nname = "cap{capacity}"\nmoe-capacity-factor = [1.0]\n',
            15,
            ["names {capacity}, which is not an axis (axes: moe-capacity-factor)"],
        ),
        (
            '[experiment.grid]\nname = "cap{moe-capacity-factor}"\nmoe-capacity-factor = [1.0]\ncompile-mode = ["static"]\n',
            15,
            ["leaves out axis 'compile-mode'"],
        ),
        ('[experiment.grid]\nname = "x{depth}"\ndepth = []\n', 16, ["axis 'depth'", "non-empty array"]),
        ('[experiment.grid]\nname = "x{depth}"\ndepth = [2, 2]\n', 16, ["repeats a value (2 in a name)"]),
        (
            '[experiment.grid]\nname = "x{depth}"\ndepth = [[2]]\n',
            16,
            ["trainer arg 'depth' must be a string, number"],
        ),
        (
            '[experiment.grid]\nname = "{run}"\nrun = ["a/b"]\n',
            15,
            ["grid leg name 'a/b' (run = 'a/b')", "cannot be a file name"],
        ),
        ('[experiment.grid]\nname = "{run}"\nrun = ["-x"]\n', 15, ["cannot start with '-'"]),
        ("[experiment.grid]\ndepth = [2]\n", 14, ["needs a name template"]),
        ('[experiment.grid]\nname = "x"\n', 14, ["has no axis"]),
        (
            '[experiment.grid]\nname = "x{depth}"\ndepth = [2]\nargs = 3\n',
            17,
            ["the grid's args in 'sweep' must be a table"],
        ),
    ],
)
def test_bad_grids_are_one_located_line(tmp_path, body, line, words):
    with pytest.raises(reg.RegistryError) as e:
        load(tmp_path, body)
    text = str(e.value)
    assert e.value.line == line, text
    assert text.startswith(f"{tmp_path}/experiments.toml:{line}: ") and "\n" not in text
    for w in words:
        assert w in text


@pytest.mark.slow
def test_grid_legs_in_dry_run_and_status(tmp_path):
    path = tmp_path / "experiments.toml"
    path.write_text(HEAD + GRID)
    dry = cockpit("--registry", str(path), "launch", "sweep", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    legs = [ln for ln in dry.stdout.splitlines() if ln.startswith("# leg ")]
    assert legs[1:3] == [
        "# leg static_cap0p0: capacity 0.0, static compile",
        "# leg static_cap1p0: capacity 1.0, static compile",
    ]
    assert len(legs) == 8 and "--model-tag sweep_dynamic_cap1p25" in dry.stdout
    status = cockpit("--registry", str(path), "status")
    assert status.returncode == 0, status.stderr
    lines = status.stdout.splitlines()
    assert "sweep  [cpu]  8 pending" in lines and "  dynamic_cap1p25  pending" in lines
    # a grid leg is launched by its name, like any other
    dry = cockpit("--registry", str(path), "launch", "sweep", "--legs", "dynamic_cap1p0", "--dry-run")
    assert dry.returncode == 0 and [ln for ln in dry.stdout.splitlines() if ln.startswith("# leg ")] == [
        "# leg dynamic_cap1p0: capacity 1.0, dynamic compile"
    ]


@pytest.mark.slow
def test_runs_are_bounded_before_a_grid_is_expanded(tmp_path, monkeypatch):
    """10^6 legs are refused at the grid's line without one being made; 1,000 runs (legs x
    repeats) per experiment is the bound, hand-written legs and a registry's total likewise."""

    def no_product(*axes):
        raise AssertionError("the grid was expanded")

    def load(tmp_path: Path, body: str) -> reg.Registry:  # no baseline: no leg needs to be named dense
        path = tmp_path / "experiments.toml"
        path.write_text(HEAD.replace('baseline = "dense"\n', "") + body)
        return reg.load(path)

    monkeypatch.setattr(sweeps.itertools, "product", no_product)
    axes = "\n".join(f"{k} = [{', '.join(str(i) for i in range(100))}]" for k in ("a", "b", "c"))
    with pytest.raises(reg.RegistryError) as e:
        load(tmp_path, f'[experiment.grid]\nname = "{{a}}_{{b}}_{{c}}"\n{axes}\n')
    assert e.value.line == 13 and str(e.value).endswith(
        "the grid of 'sweep' makes 1,000,000 legs (100 x 100 x 100): an experiment holds at most 1,000 runs "
        "(legs x repeats)"
    )
    monkeypatch.undo()
    ten = ", ".join(str(i) for i in range(10))
    grid = f'[experiment.grid]\nname = "{{a}}_{{b}}_{{c}}"\na = [{ten}]\nb = [{ten}]\nc = [{ten}]\n'
    assert len(load(tmp_path, grid).experiment("sweep").legs) == 1_000  # the bound itself is fine
    with pytest.raises(reg.RegistryError, match=r"makes 1,000 legs \(10 x 10 x 10\), with 1 beside it: "):
        load(tmp_path, '[[experiment.leg]]\nname = "dense"\n' + grid)
    with pytest.raises(reg.RegistryError, match=r"makes 400 legs \(10 x 10 x 4\) x 3 repeats: "):
        load(tmp_path, "repeats = 3\n" + grid.replace(f"c = [{ten}]", "c = [0, 1, 2, 3]"))
    legs = "".join(f'[[experiment.leg]]\nname = "l{i}"\nrepeats = 10\n' for i in range(101))
    with pytest.raises(reg.RegistryError) as e:
        load(tmp_path, legs)
    assert (
        e.value.line == 13 + 3 * 100
        and "'sweep' has 1,010 runs (legs x repeats) up to its leg 'l100'" in str(e.value)
    )
    many = "".join(f'[[experiment]]\nid = "e{i}"\n{grid}' for i in range(11))
    path = tmp_path / "many.toml"
    path.write_text(HEAD.split("[[experiment]]")[0] + many)
    r = cockpit("--registry", str(path), "status")
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    line = 10 + 7 * 10  # experiment e10
    assert r.stderr.startswith(
        f"cockpit: {path}:{line}: the registry has 11,000 runs (legs x repeats) up to experiment 'e10': "
        "it holds at most 10,000"
    )
