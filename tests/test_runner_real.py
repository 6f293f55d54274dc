"""The real trainer under the real `cockpit launch --foreground`: three legs of the bundled cpu-smoke
experiment (copied into a temp registry, exp_root in tmp_path, 20 steps a leg), its prepare step
run for real first (the smoke corpus and tokenizer, made under exp_root), the done guard, --rerun
(the prepare step skipped: what it makes is there); then the mixed-dir scenario a researcher meets
after re-running the baseline alone: `cockpit resume` and `cockpit report` compare each leg with
the baseline of its own launch."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import cockpit, registry_file

from cockpit import expdir, logs

pytestmark = pytest.mark.slow
LEGS = ("dense", "moe_dropless", "moe_cap1p0")


def delta_cells(text: str, heading: str, metric: str = "tail50 tok/sec") -> list[str]:
    """The cells of a metric's row in the delta table after `heading`."""
    after = text.split(heading, 1)[1]
    line = next(ln for ln in after.splitlines() if ln.startswith(f"| {metric} |"))
    return [c.strip() for c in line.strip("|").split("|")]


def test_foreground_legs_then_skip_then_rerun_the_baseline_alone(tmp_path):
    reg_path = registry_file(tmp_path, iterations=20)
    corpus = tmp_path / "exp" / "_data" / "smoke"
    assert not corpus.exists()
    r = cockpit(
        "--registry",
        str(reg_path),
        "launch",
        "cpu-smoke",
        "--legs",
        ",".join(LEGS),
        "--foreground",
        timeout=300,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    exp_dir = Path(r.stdout.strip().splitlines()[-1])
    assert exp_dir.parent == tmp_path / "exp" and exp_dir.name.endswith("_cpu-smoke")
    d = expdir.open_dir(exp_dir)
    assert d.legs == list(LEGS) and d.plan.git["error"] == "not a git checkout"  # the legs ran in tmp_path
    # the prepare step ran first, under exp_root, its output in prepare.log
    assert (d.prepare.status, d.prepare.exit_code) == ("done", 0)
    assert sorted(p.name for p in corpus.iterdir()) == ["base_data", "tokenizer"]
    assert "BPE tokenizer, vocab 1,024" in (exp_dir / "prepare.log").read_text()
    assert json.loads((exp_dir / "plan.json").read_text())["prepare"]["creates"] == [
        str(corpus / "base_data"),
        str(corpus / "tokenizer"),
    ]
    for leg in LEGS:
        st = d.states[leg]
        assert (st.status, st.exit_code, st.exit_code_known) == ("done", 0, True)
        assert st.note == "cpu leg: no GPU preflight" and st.pid and st.started_at and st.ended_at
        s = logs.summarize(exp_dir / f"{leg}.log")
        assert s.finished and not s.failed and s.steps_observed == 20 and s.last_step == 19
        text = (exp_dir / f"{leg}.log").read_text()
        assert (
            "Vocab size: 1,024" in text and "Step 00020 | Validation bpb: " in text
        )  # the real recipe's lines
        assert (exp_dir / "ckpt_root").is_dir()
    argv = list(d.plan.runs[0].argv)
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
    assert sorted(p.name for p in (tmp_path / "exp").iterdir() if not p.name.startswith(".")) == [
        exp_dir.name,
        "_data",
    ]
    assert [d.path for d in expdir.discover(tmp_path / "exp")] == [exp_dir]

    rerun = cockpit(
        "--registry",
        str(reg_path),
        "launch",
        "cpu-smoke",
        "--legs",
        "dense",
        "--rerun",
        "--foreground",
        timeout=240,
    )
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    new_dir = Path(rerun.stdout.strip().splitlines()[-1])
    assert new_dir != exp_dir and new_dir.parent == exp_dir.parent
    assert expdir.open_dir(new_dir).states["dense"].status == "done"
    assert expdir.open_dir(new_dir).prepare.note == "skipped: what it creates exists"
    assert not (new_dir / "prepare.log").exists()
    assert expdir.open_dir(exp_dir).states["dense"].status == "done"  # the first dir is untouched
    # The MoE legs ran beside the first dense; the newest dense ran alone, on another day as far as
    # the machine is concerned. Each leg is compared with the baseline of its own launch: the
    # guide's delta of a MoE leg is its own dir's report's, never one against the newer dense.
    old_report = (exp_dir / "report.md").read_text()
    guide = cockpit("--registry", str(reg_path), "resume")
    assert guide.returncode == 0, guide.stderr
    for leg in ("moe_dropless", "moe_cap1p0"):
        own = delta_cells(old_report, f"### {leg}")
        in_guide = delta_cells(guide.stdout, f"Result of `{leg}` vs baseline `dense`:")
        assert in_guide[1:] == own[1:], (leg, own, in_guide)  # baseline, run, delta, interval, verdict
        assert own[4].startswith("±") and own[5] in ("significant", "within noise")
    dense_old = logs.summarize(exp_dir / "dense.log").tok_per_sec
    assert delta_cells(guide.stdout, "Result of `moe_cap1p0` vs baseline `dense`:")[1] == f"{dense_old:.2f}"
    assert "baseline from" not in guide.stdout  # every leg had its own dir's baseline
    assert "finished in more than one dir" in guide.stdout
    quality = guide.stdout.split(
        "| run | min val bpb | last val bpb | final loss | tail50 drop % | tail50 bal |"
    )[1]
    moe_row = next(ln for ln in quality.splitlines() if ln.startswith("| moe_cap1p0 |")).split("|")
    assert float(moe_row[2]) > 0 and float(moe_row[5]) >= 0  # the real run's validation bpb and drop %

    rep = cockpit("--registry", str(reg_path), "report", "--exp-dir", str(exp_dir))
    assert rep.returncode == 0, rep.stderr
    assert "## Delta vs baseline `dense` (the registry's baseline of this experiment)" in rep.stdout
    assert delta_cells(rep.stdout, "### moe_cap1p0") == delta_cells(old_report, "### moe_cap1p0")
    alone = cockpit("--registry", str(reg_path), "report", "--exp-dir", str(new_dir))
    assert alone.returncode == 0 and "## Delta" not in alone.stdout  # dense alone: the baseline itself
    assert (new_dir / "plan.json").is_file() and expdir.open_dir(new_dir).plan.trainer["torch"]

    # the old dir's MoE leg against the new dense, asked for by name: labelled with its dir, and
    # the two launches' origins compared (same checkout and machine here: said so)
    named = cockpit(
        "--registry",
        str(reg_path),
        "report",
        "--exp-dir",
        str(exp_dir),
        "--baseline",
        f"{new_dir.name}/dense",
    )
    assert named.returncode == 0, named.stderr
    assert f"## Delta vs baseline `dense` (baseline from {new_dir.name})" in named.stdout
    assert (
        f"| metric | dense (baseline from {new_dir.name}) | moe_cap1p0 | delta | 95% CI | verdict |"
        in named.stdout
    )
    assert "the baseline ran in another launch" in named.stdout
