"""A trainer flag the trainer module does not take is refused before a launch (file:line of the
registry, did-you-mean), asked of the module itself (`python -m MODULE --help`, cached under
exp_root by its file's hash); a module that cannot be asked blocks nothing and is said."""

import json
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import psutil
import pytest
from helpers import wait_for, write_registry

from cockpit import cli, launch, provenance, trainer_flags
from cockpit import registry as reg
from cockpit.expdir import RunError

TRAINER = """import argparse
p = argparse.ArgumentParser()
for flag in ("--num-iterations", "--step-sleep", "--checkpoint-root", "--model-tag", "--device-batch-size", "--seed"):
    p.add_argument(flag)
p.add_argument("--use-moe", action="store_true")
p.parse_args()
"""


@pytest.fixture(autouse=True)
def fresh_memo(monkeypatch):
    monkeypatch.setattr(trainer_flags, "_memo", {})


def registry_with(tmp_path, leg_args: str, trainer: str = TRAINER) -> reg.Registry:
    (tmp_path / "mytrainer.py").write_text(trainer)
    return reg.load(write_registry(tmp_path, {"a": 'model-tag = "a"', "b": leg_args}, module="mytrainer"))


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_a_typo_is_refused_with_its_line_and_a_did_you_mean(tmp_path, capsys):
    registry = registry_with(tmp_path, 'model-tag = "b", device-bach-size = 4, use-moe = true')
    line = (
        registry.path.read_text()
        .splitlines()
        .index('args = { model-tag = "b", device-bach-size = 4, use-moe = true }')
        + 1
    )
    want = (
        f"{registry.path}:{line}: fake/b: --device-bach-size is not a flag of mytrainer; "
        "did you mean --device-batch-size?"
    )
    plan = launch.plan_launch(registry, "fake")
    assert launch.check_flags(registry, plan).refusals == [want]
    with pytest.raises(RunError) as e:
        launch.start(registry, "fake", plan=plan)
    assert str(e.value) == want
    assert not (registry.settings.exp_root).exists() or not any(
        p.name != ".cockpit-cache" for p in registry.settings.exp_root.iterdir()
    )  # no dir was made
    code, out, err = run(capsys, "--registry", str(registry.path), "launch", "fake")
    assert code == 2 and out == "" and err == f"cockpit: {want}\n"
    code, out, _ = run(capsys, "--registry", str(registry.path), "launch", "fake", "--dry-run")
    assert code == 0 and f"# a real launch would be refused here: {want}" in out
    python = provenance.legs_python(launch.torchrun_for(launch.runtime_of(registry, registry.experiments[0])))
    assert f"# trainer flags checked against `{python} -m mytrainer --help`" in out
    # a flag given in [defaults.args] is located there; an unambiguous start of a flag is argparse's, taken
    text = registry.path.read_text().replace("step-sleep = 0.05", "step-slep = 0.05")
    text = text.replace("device-bach-size = 4", "device-batch = 4")
    registry.path.write_text(text)
    registry = reg.load(registry.path)
    line = text.splitlines().index("step-slep = 0.05") + 1
    refused = launch.check_flags(registry, launch.plan_launch(registry, "fake")).refusals
    assert refused == [
        f"{registry.path}:{line}: fake/{leg}: --step-slep is not a flag of mytrainer; did you mean "
        f"--step-sleep?"
        for leg in ("a", "b")
    ]


def test_a_launch_records_the_check_in_its_plan_and_keeps_the_answer(tmp_path, monkeypatch):
    """launch.start (its executor stubbed: nothing runs): plan.json says the flags were checked,
    and the module's answer is kept under exp_root for the next launch."""
    registry = registry_with(tmp_path, 'model-tag = "b", device-batch-size = 4')
    started = []
    monkeypatch.setitem(launch.EXECUTORS, "local", SimpleNamespace(start=lambda *a: started.append(a)))
    d = launch.start(registry, "fake")
    assert started and json.loads((d / "plan.json").read_text())["trainer_flags"]["checked"] is True
    assert len(list((registry.settings.exp_root / trainer_flags.CACHE_DIR).iterdir())) == 1


def test_the_answer_is_cached_under_exp_root_by_the_module_files_hash(tmp_path, monkeypatch):
    registry = registry_with(tmp_path, 'model-tag = "b"')
    plan = launch.plan_launch(registry, "fake")
    cache = registry.settings.exp_root / trainer_flags.CACHE_DIR
    launch.dry_run_text(registry, plan)
    assert not cache.exists()  # a dry run writes nothing
    assert launch.check_flags(registry, plan, write_cache=True).checked
    assert not cache.exists()  # no exp_root yet: a refused first launch leaves nothing behind
    registry.settings.exp_root.mkdir()
    assert launch.check_flags(registry, plan, write_cache=True).checked
    (kept,) = cache.iterdir()
    assert json.loads(kept.read_text())["flags"] == [
        "checkpoint-root",
        "device-batch-size",
        "model-tag",
        "num-iterations",
        "seed",
        "step-sleep",
        "use-moe",
    ]
    asked = []
    monkeypatch.setattr(trainer_flags, "_memo", {})
    monkeypatch.setattr(
        trainer_flags, "_run_help", lambda *a: asked.append(a) or trainer_flags.Known(None, "asked")
    )
    assert launch.check_flags(registry, plan).checked and not asked  # from the cache: not asked again
    (tmp_path / "mytrainer.py").write_text(TRAINER + "# a new version\n")
    assert not launch.check_flags(registry, plan).checked and len(asked) == 1  # a changed file is asked


def test_a_module_that_cannot_be_asked_blocks_nothing_and_is_said(tmp_path, capsys, monkeypatch):
    registry = registry_with(
        tmp_path,
        'model-tag = "b", device-bach-size = 4',
        trainer="raise ModuleNotFoundError(\"No module named 'torch'\")\n",
    )
    plan = launch.plan_launch(registry, "fake")
    checked = launch.check_flags(registry, plan)
    assert not checked.checked and checked.refusals == []
    assert checked.command.endswith(" -m mytrainer --help")
    assert checked.why == f"`{checked.command}` failed: ModuleNotFoundError: No module named 'torch'"
    assert launch.launch_refusals(registry, plan, registry.settings.exp_root / "x", checked=checked) == []
    code, out, _ = run(capsys, "--registry", str(registry.path), "launch", "fake", "--dry-run")
    assert (
        code == 0
        and f"# trainer flags not checked: {checked.why} (a flag the trainer does not take fails its "
        "leg at once)"
        in out
    )
    monkeypatch.setitem(launch.EXECUTORS, "local", SimpleNamespace(start=lambda *a: None))  # nothing runs
    code, out, err = run(capsys, "--registry", str(registry.path), "launch", "fake")
    assert code == 0 and err == f"cockpit: warning: trainer flags not checked: {checked.why}\n"
    d = Path(out.strip())
    assert json.loads((d / "plan.json").read_text())["trainer_flags"] == {
        "checked": False,
        "command": checked.command,
        "why": checked.why,
    }


@pytest.mark.slow
def test_a_module_that_does_not_answer_is_stopped_whole(tmp_path):
    """A module that trains instead of printing its help: stopped at the timeout, its children too."""
    pids = tmp_path / "pids"
    (tmp_path / "slow.py").write_text(
        "import os, subprocess, sys, time\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        f"open({str(pids)!r}, 'w').write(f'{{os.getpid()}} {{child.pid}}')\n"
        "time.sleep(60)\n"
    )
    t0 = time.monotonic()
    known = trainer_flags.ask("slow", sys.executable, tmp_path, timeout=2.0)
    assert known.flags is None and known.why == f"`{sys.executable} -m slow --help` did not answer within 2s"
    assert time.monotonic() - t0 < 30

    def gone(pid: int) -> bool:  # killed: at most a zombie, once the kernel has finished its exit
        try:
            return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return True

    for pid in map(int, pids.read_text().split()):
        wait_for(lambda pid=pid: gone(pid), timeout=10, what=f"process {pid} gone")
    assert trainer_flags.parse_help("usage: x [-h] [--a-b A_B] [--c]\n  --a-b A_B  see --c") == {"a-b", "c"}
    assert trainer_flags.unknown(["a-b", "a", "d-e"], frozenset({"a-b", "a-c", "d-f"})) == [
        ("a", None),
        ("d-e", "d-f"),
    ]


def test_a_module_outside_the_checkout_is_found_where_the_legs_python_finds_it(tmp_path):
    """Its file (hashed for the cache) is the one the legs' Python would run, not imported here."""
    repo = Path(__file__).resolve().parents[1]
    found = trainer_flags.module_file(
        "tests.fake_trainer", tmp_path, sys.executable, {"PYTHONPATH": str(repo)}
    )
    assert found == repo / "tests" / "fake_trainer.py"
    assert trainer_flags.module_file("tests.fake_trainer", tmp_path) is None  # no python to ask
    assert trainer_flags.module_file("no_such_module_here", tmp_path, sys.executable) is None
