"""An experiment's prepare step: run once by the launch before the first leg when a path it creates
is missing, its output in <dir>/prepare.log; shown in --dry-run and status; a failed prepare fails
the launch with its last lines. (Its success with the real smoke corpus: test_runner_real.py.)"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from helpers import REPO, bundled_registry, child_env, cockpit, wait_for, write_registry

from cockpit import expdir, launch, report, resume, resume_text
from cockpit import registry as reg


def with_prepare(tmp_path: Path, code: str, creates: str = '"{exp_root}/_data/made"', legs: int = 2) -> Path:
    """A fake-trainer registry whose experiment prepares with `python -c code`."""
    path = write_registry(tmp_path, {n: f'model-tag = "{n}"' for n in "ab"[:legs]}, nproc=1)
    text = path.read_text().replace(
        'id = "fake"\n',
        f'id = "fake"\n[experiment.prepare]\n'
        f'argv = ["{{python}}", "-c", {json.dumps(code)}, "{{exp_root}}/_data/made"]\n'
        f"creates = {creates}\n",
    )
    path.write_text(text)
    return path


def test_the_bundled_cpu_smoke_prepares_its_corpus_under_exp_root(tmp_path):
    registry = bundled_registry(tmp_path)
    root = registry.settings.exp_root
    prep = registry.experiment("cpu-smoke").prepare
    assert prep.argv == ("{python}", "-m", "nanochat.smoke_data", "--out", f"{root}/_data/smoke")
    assert prep.creates == (root / "_data/smoke/base_data", root / "_data/smoke/tokenizer")
    assert prep.command("/venv/bin/python")[0] == "/venv/bin/python"
    dense = registry.find_leg("cpu-smoke/dense")
    assert dense.args["data"] == "parquet" and dense.args["data-dir"] == f"{root}/_data/smoke/base_data"
    assert dense.args["tokenizer-dir"] == f"{root}/_data/smoke/tokenizer" and "vocab-size" not in dense.args
    assert (dense.args["eval-every"], dense.args["eval-tokens"]) == (10, 8192)
    # the seed's legs read the real recipe's inputs from the read-only cache
    v3 = registry.find_leg("moe-fp8-capacity-opt-v3/moe_fp8_experts_static_cap1p0_v3")
    assert v3.args["data-dir"] == "cache/base_data" and v3.args["tokenizer-dir"] == "cache/tokenizer"
    # status says a launch makes the corpus first; the dry run shows the step and warns of nothing for it
    state = resume.build_state(registry)
    smoke = next(e for e in state.experiments if e.id == "cpu-smoke")
    assert smoke.prepare_missing == [str(root / "_data/smoke/base_data"), str(root / "_data/smoke/tokenizer")]
    assert (
        "  prepare: _data/smoke/base_data, _data/smoke/tokenizer missing under exp_root: a launch runs "
        f"`python -m nanochat.smoke_data --out {root}/_data/smoke` first (output in <dir>/prepare.log)"
        in resume_text.render_status(state).splitlines()
    )
    text = launch.dry_run_text(registry, launch.plan_launch(registry, "cpu-smoke"))
    assert f"# prepare, first ({root}/_data/smoke/base_data, {root}/_data/smoke/tokenizer missing):" in text
    assert (
        f'{sys.executable} -m nanochat.smoke_data --out {root}/_data/smoke > "$EXP_DIR/prepare.log" 2>&1'
        in text
    )
    assert "would fail at once" not in text
    # the resume guide's recipe makes the inputs first
    assert (
        "# its inputs, first (missing now):\npython -m nanochat.smoke_data --out "
        in resume_text.render_guide(state)
    )


def test_dry_run_says_a_leg_whose_data_is_missing_would_fail_at_once(tmp_path):
    registry = bundled_registry(tmp_path)
    text = launch.dry_run_text(registry, launch.plan_launch(registry, "moe-fp8-capacity-opt-v3"))
    assert (
        "# leg moe_fp8_experts_static_cap1p0_v3 would fail at once: --data-dir cache/base_data does not exist "
        "(make it: python -m nanochat.smoke_data --out DIR (a small corpus and tokenizer), or upstream "
        "nanochat's dataset download)"
    ) in text
    assert "--tokenizer-dir cache/tokenizer does not exist" in text
    (tmp_path / "cache" / "base_data").mkdir(parents=True)
    (tmp_path / "cache" / "tokenizer").mkdir()
    assert "would fail at once" not in launch.dry_run_text(
        registry, launch.plan_launch(registry, "moe-fp8-capacity-opt-v3")
    )


@pytest.mark.parametrize(
    "prepare, line, words",
    [
        ('argv = []\ncreates = "{exp_root}/x"', 19, ["'prepare.argv' must be a non-empty array of strings"]),
        (
            'argv = ["x", "{out}"]\ncreates = "{exp_root}/x"',
            19,
            ["'prepare.argv' names {out}; it knows {python} and {exp_root}"],
        ),
        ('argv = ["x"]', 18, ["needs 'creates'"]),
        ('argv = ["x"]\ncreates = "elsewhere/x"', 20, ["must lie inside exp_root", "use {exp_root}/..."]),
        ('argv = ["x"]\ncreates = "{exp_root}"', 20, ["must lie inside exp_root"]),
        ('argv = ["x"]\ncreates = "ro/x"', 20, ["must lie inside exp_root"]),
        ('argv = ["x"]\ncreates = []', 20, ["a path or a non-empty array of paths"]),
        ('argv = ["x"]\ncreates = "{exp_root}/x"\nrun = "y"', 21, ["unknown key 'experiment.prepare.run'"]),
    ],
)
def test_bad_prepare_is_one_located_line(tmp_path, prepare, line, words):
    path = write_registry(tmp_path, {"a": 'model-tag = "a"'})
    path.write_text(
        path.read_text().replace('id = "fake"\n', f'id = "fake"\n[experiment.prepare]\n{prepare}\n')
    )
    with pytest.raises(reg.RegistryError) as e:
        reg.load(path)
    assert e.value.line == line, str(e.value)
    for w in words:
        assert w in str(e.value)


def test_a_leg_may_not_be_named_prepare_beside_a_prepare_step(tmp_path):
    path = write_registry(tmp_path, {"prepare": 'model-tag = "p"'})
    assert reg.load(path).experiment("fake").leg("prepare") is not None  # no prepare step: any name
    path.write_text(
        path.read_text().replace(
            'id = "fake"\n', 'id = "fake"\n[experiment.prepare]\nargv = ["x"]\ncreates = "{exp_root}/x"\n'
        )
    )
    with pytest.raises(reg.RegistryError, match="leg name 'prepare' in 'fake' is its prepare step's"):
        reg.load(path)


@pytest.mark.slow
def test_a_failed_prepare_fails_the_launch_with_its_last_lines(tmp_path):
    code = "import sys; print('fetching shards'); print('no network here', file=sys.stderr); sys.exit(3)"
    path = with_prepare(tmp_path, code)
    r = cockpit("--registry", str(path), "launch", "fake", "--foreground", timeout=60)
    assert r.returncode == 1, r.stdout + r.stderr
    exp_dir = Path(r.stdout.strip().splitlines()[-1])
    assert "a: failed (prepare failed: exit 3: no network here)" in r.stdout
    d = expdir.open_dir(exp_dir)
    assert (d.prepare.status, d.prepare.exit_code) == ("failed", 3)
    assert d.prepare.error_tail == ["fetching shards", "no network here"]
    a, b = d.states["a"], d.states["b"]
    assert (a.status, a.note) == ("failed", "prepare failed: exit 3: no network here")
    assert a.error_tail == ["prepare: fetching shards", "prepare: no network here"]
    assert (b.status, b.note) == ("stopped", "not started: prepare failed")
    assert (exp_dir / "prepare.log").read_text() == "fetching shards\nno network here\n"
    assert not (exp_dir / "a.log").exists() and not (exp_dir / "b.log").exists()  # no leg started
    # status and the report tell it; prepare.log is no run of the report
    status = cockpit("--registry", str(path), "status").stdout
    assert (
        f"  {exp_dir.name}  supervisor ended, legs not done;  prepare failed (exit 3: no network here);  "
        "a failed, b stopped" in status.splitlines()
    )
    assert [r_.run for r_ in report.rows(exp_dir)] == ["a", "b"]


@pytest.mark.slow
def test_a_prepare_that_creates_nothing_fails(tmp_path):
    path = with_prepare(tmp_path, "print('done, honest')", legs=1)
    r = cockpit("--registry", str(path), "launch", "fake", "--foreground", timeout=60)
    assert r.returncode == 1
    d = expdir.open_dir(Path(r.stdout.strip().splitlines()[-1]))
    assert d.prepare.note == f"exited 0 but did not create {tmp_path}/exp/_data/made"
    assert d.states["a"].note == f"prepare failed: exited 0 but did not create {tmp_path}/exp/_data/made"


@pytest.mark.slow
def test_prepare_makes_what_the_legs_read_then_is_skipped(tmp_path, monkeypatch):
    """One fake-trainer leg (~4 s): the prepare step runs in the legs' checkout with their env,
    makes its path, the leg runs; launched again, the step is skipped."""
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    code = "import os, sys; os.makedirs(sys.argv[1]); print('made', sys.argv[1], os.getcwd())"
    path = with_prepare(tmp_path, code, legs=1)
    r = cockpit("--registry", str(path), "launch", "fake", "--foreground", timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    d = expdir.open_dir(Path(r.stdout.strip().splitlines()[-1]))
    assert (d.prepare.status, d.states["a"].status) == ("done", "done")
    assert (d.path / "prepare.log").read_text() == f"made {tmp_path}/exp/_data/made {tmp_path}\n"
    assert not reg.load(path).experiment("fake").prepare.unfinished()  # its mark removed: it ended well
    r = cockpit("--registry", str(path), "launch", "fake", "--rerun", "--foreground", timeout=120)
    again = expdir.open_dir(Path(r.stdout.strip().splitlines()[-1]))
    assert again.prepare.note == "skipped: what it creates exists" and again.states["a"].status == "done"


@pytest.mark.slow
def test_stopping_the_queue_while_it_prepares(tmp_path):
    marker = str(tmp_path / "prep-marker")
    code = f"import time; time.sleep(120)  # {marker}"
    path = with_prepare(tmp_path, code)
    exp_dir = launch.start(reg.load(path), "fake", grace_s=2.0)
    prep = wait_for(
        lambda: (p := expdir.open_dir(exp_dir).prepare) is not None and p.status == "running" and p,
        timeout=30,
        what="the prepare step running",
    )
    assert psutil.pid_exists(prep.pid)
    dirs = cockpit("--registry", str(path), "status").stdout
    assert "prepare running;" in dirs
    t0 = time.monotonic()
    r = cockpit("--registry", str(path), "stop", str(exp_dir))
    assert r.returncode == 0, r.stderr
    assert time.monotonic() - t0 < 15
    wait_for(lambda: not expdir.open_dir(exp_dir).supervisor_alive, timeout=30, what="the supervisor's end")
    d = expdir.open_dir(exp_dir)
    assert (d.prepare.status, d.prepare.note) == ("stopped", "stopped by request")
    assert [d.states[n].status for n in "ab"] == ["stopped", "stopped"]
    assert d.states["a"].note == "stopped by request while preparing"
    assert not [p for p in psutil.process_iter(["cmdline"]) if marker in " ".join(p.info["cmdline"] or [])]


@pytest.mark.slow
def test_a_failed_prepare_is_remembered_and_run_again(tmp_path):
    """A prepare that fails after making its path: what it left is not trusted. Status and the
    dry run say so, and the next launch runs the step again instead of skipping it."""
    code = "import os, sys; os.makedirs(sys.argv[1]); print('half done'); sys.exit(3)"
    path = with_prepare(tmp_path, code, legs=1)
    made = tmp_path / "exp" / "_data" / "made"
    r = cockpit("--registry", str(path), "launch", "fake", "--foreground", timeout=60)
    assert r.returncode == 1 and made.is_dir()
    prep = reg.load(path).experiment("fake").prepare
    assert prep.unfinished() and prep.mark.parent == tmp_path / "exp" / ".cockpit-prepare"
    status = cockpit("--registry", str(path), "status").stdout
    assert (
        f"  prepare: its last run did not end well (.cockpit-prepare/{prep.mark.name} is there), so what it left "
        "under exp_root is not trusted: a launch runs `python -c"
    ) in status
    dry = cockpit("--registry", str(path), "launch", "fake", "--dry-run").stdout
    assert (
        f"# prepare, first (its last run did not end well ({prep.mark} is there): what it left is not trusted):"
        in dry
    )
    r = cockpit("--registry", str(path), "launch", "fake", "--rerun", "--foreground", timeout=60)
    again = expdir.open_dir(Path(r.stdout.strip().splitlines()[-1]))
    assert again.prepare.status == "failed" and "FileExistsError" in again.prepare.note  # it ran again
    assert "prepare: its last run did not end well" in r.stdout and prep.unfinished()


@pytest.mark.slow
def test_a_prepare_that_ends_well_removes_its_mark(tmp_path):
    """Four supervisor runs (~5 s; no torchrun: the plan's legs are plain commands). The supervisor
    writes the mark before the step starts and removes it when it ends well; a mark left there
    makes it run over outputs that exist; a plan's mark outside its exp_root is not written."""
    made, mark = tmp_path / "exp" / "_data" / "made", tmp_path / "exp" / ".cockpit-prepare" / "k.running"
    seen = tmp_path / "seen"
    code = (
        f"import os, sys; print(os.path.exists({str(mark)!r}), file=open({str(seen)!r}, 'a')); "
        "os.makedirs(sys.argv[1], exist_ok=True)"
    )

    def run(mark: Path = mark) -> expdir.ExpDir:
        d = launch.new_exp_dir(tmp_path / "exp", "x")
        (d / "state").mkdir()
        plan = {
            "experiment": "x",
            "cwd": str(tmp_path),
            "legs": [{"name": "a", "argv": [sys.executable, "-c", "0"]}],
            "prepare": {
                "argv": [sys.executable, "-c", code, str(made)],
                "creates": [str(made)],
                "mark": str(mark),
            },
        }
        (d / "plan.json").write_text(json.dumps(plan))
        assert (
            subprocess.run(
                [sys.executable, "-m", "cockpit.supervisor", str(d)],
                env=child_env(),
                capture_output=True,
                timeout=60,
            ).returncode
            == 0
        )
        return expdir.open_dir(d)

    assert run().prepare.status == "done" and not mark.exists() and made.is_dir()
    assert seen.read_text() == "True\n"  # the mark was there while it ran
    assert run().prepare.note == "skipped: what it creates exists"
    mark.write_text("{}")  # a run that did not end well
    assert run().prepare.status == "done" and not mark.exists() and seen.read_text() == "True\nTrue\n"
    # a plan whose mark lies outside its exp_root: nothing is written there
    made.rmdir()
    elsewhere = tmp_path / "elsewhere" / ".cockpit-prepare" / "k.running"
    assert run(elsewhere).prepare.status == "done" and not (tmp_path / "elsewhere").exists()
