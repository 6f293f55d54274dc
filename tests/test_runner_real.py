"""The real trainer under the real `cockpit launch --foreground`: two legs of the bundled cpu-smoke
experiment (copied into a temp registry, exp_root in tmp_path, 20 steps a leg), its prepare step
run for real first (the smoke corpus and tokenizer, made under exp_root), the done guard, --rerun
(the prepare step skipped: what it makes is there)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import cockpit, registry_file

from cockpit import expdir, logs

pytestmark = pytest.mark.slow
LEGS = ("dense", "moe_cap1p0")


def test_foreground_two_legs_then_skip_then_rerun(tmp_path):
    reg_path = registry_file(tmp_path, iterations=20)
    corpus = tmp_path / "exp" / "_data" / "smoke"
    assert not corpus.exists()
    r = cockpit("--registry", str(reg_path), "launch", "cpu-smoke", "--legs", ",".join(LEGS), "--foreground", timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    exp_dir = Path(r.stdout.strip().splitlines()[-1])
    assert exp_dir.parent == tmp_path / "exp" and exp_dir.name.endswith("_cpu-smoke")
    d = expdir.open_dir(exp_dir)
    assert d.legs == list(LEGS) and d.plan["git"]["commit"]
    # the prepare step ran first, under exp_root, its output in prepare.log
    assert (d.prepare.status, d.prepare.exit_code) == ("done", 0)
    assert sorted(p.name for p in corpus.iterdir()) == ["base_data", "tokenizer"]
    assert "BPE tokenizer, vocab 1,024" in (exp_dir / "prepare.log").read_text()
    assert json.loads((exp_dir / "plan.json").read_text())["prepare"]["creates"] == [
        str(corpus / "base_data"), str(corpus / "tokenizer")]
    for leg in LEGS:
        st = d.states[leg]
        assert (st.status, st.exit_code, st.exit_code_known) == ("done", 0, True)
        assert st.note == "cpu leg: no GPU preflight" and st.pid and st.started_at and st.ended_at
        s = logs.summarize(exp_dir / f"{leg}.log")
        assert s.finished and not s.failed and s.steps_observed == 20 and s.last_step == 19
        text = (exp_dir / f"{leg}.log").read_text()
        assert "Vocab size: 1,024" in text and "Step 00020 | Validation bpb: " in text  # the real recipe's lines
        assert (exp_dir / "ckpt_root").is_dir()
    argv = d.plan["legs"][0]["argv"]
    assert argv[1:6] == ["--standalone", "--nproc_per_node=2", "-m", "nanochat.base_train", "--"]
    assert f"{exp_dir}/ckpt_root" in argv
    report = (exp_dir / "report.md").read_text()
    table = report.split("| run | tail50 tok/sec")[1].split("\n\n")[0].splitlines()[2:]
    assert [row.split("|")[1].strip() for row in table] == list(LEGS)

    again = cockpit("--registry", str(reg_path), "launch", "cpu-smoke", "--legs", ",".join(LEGS))
    assert again.returncode == 0, again.stderr
    assert again.stdout.splitlines() == [
        *(f"skip {leg}: done in {exp_dir}; --rerun runs it" for leg in LEGS),
        "nothing to run in cpu-smoke",
    ]
    # no new dir: only the first one and the corpus its prepare step made (no experiment dir)
    assert sorted(p.name for p in (tmp_path / "exp").iterdir() if not p.name.startswith(".")) == [exp_dir.name, "_data"]
    assert [d.path for d in expdir.discover(tmp_path / "exp")] == [exp_dir]

    rerun = cockpit("--registry", str(reg_path), "launch", "cpu-smoke", "--legs", "dense", "--rerun", "--foreground",
                    timeout=240)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    new_dir = Path(rerun.stdout.strip().splitlines()[-1])
    assert new_dir != exp_dir and new_dir.parent == exp_dir.parent
    assert expdir.open_dir(new_dir).states["dense"].status == "done"
    assert expdir.open_dir(new_dir).prepare.note == "skipped: what it creates exists"
    assert not (new_dir / "prepare.log").exists()
    assert expdir.open_dir(exp_dir).states["dense"].status == "done"  # the first dir is untouched
