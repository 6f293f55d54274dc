"""scripts/hostile.py is run by hand, so nothing else notices when a change of the product breaks
one of its cases (a launch that now checks trainer flags refused its Slurm registries' made-up
flag). Its Slurm cases use fake scheduler commands and take about a second each: they run here,
and each must hold."""

import importlib.util
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "hostile.py"


def _load():
    spec = importlib.util.spec_from_file_location("hostile_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


hostile = _load()
SLURM_ITEMS = ["2.1", "2.2", "2.3", "2.4", "2.5", "2.6"]  # the script's numbers of its Slurm cases
SLURM_CASES = [c for c in hostile.CASES if c[0] in SLURM_ITEMS]


def test_the_six_slurm_cases_are_found():
    assert [c[0] for c in SLURM_CASES] == SLURM_ITEMS


@pytest.mark.slow  # each case runs the CLI as a subprocess, a few times
@pytest.mark.parametrize("item,title,case", SLURM_CASES, ids=[c[0] for c in SLURM_CASES])
def test_a_slurm_case_of_the_hostile_script_holds(item, title, case, tmp_path):
    try:
        detail = case(hostile.Env(tmp_path))
    except hostile.Broken as e:
        pytest.fail(f"{item}. {title}: broken: {e}")
    assert isinstance(detail, str) and detail
