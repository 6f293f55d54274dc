"""The trainer's benchmark scripts still run (their CPU forms): figures are not checked, the
pipeline and the last lines are."""

import os
import platform
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run(args, timeout=240):
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)  # fmt: skip


@pytest.mark.slow
def test_bench_moe_prints_median_and_best_ratios():
    p = run(["bench.moe", "--tokens", "256", "--dim", "64", "--rounds", "3", "--warmup", "1", "--no-compile"])
    assert p.returncode in (0, 1), p.stderr[-2000:]  # 1: the guard broken (a tiny block on a busy CPU may)
    lines = p.stdout.strip().splitlines()
    last = re.fullmatch(r"cap1\.0/dense fwd\+bwd: median (\d+\.\d\d), best \d+\.\d\d; guard median <= 1\.15: (held|BROKEN)",
                        lines[-1])  # fmt: skip
    assert last, lines[-1]
    assert (last.group(2) == "held") == (float(last.group(1)) <= 1.15) and p.returncode == (
        last.group(2) != "held"
    )
    assert any(line.startswith("cap1.0/experts fwd+bwd (eager): median") for line in lines)
    assert sum(line.startswith("| ") for line in lines) == 2 + 5  # header, rule, 5 eager variants
    if platform.libc_ver()[0] == "glibc":  # its mallopt keeps the page faults of freed tensors out
        assert lines[0].endswith("; malloc keeps freed memory"), lines[0]


@pytest.mark.slow
def test_bench_gpu_cpu_check_runs_the_trainer_legs():
    p = run(["bench.gpu", "--cpu-check", "--steps", "3", "--legs", "bf16_cap1p0_static,fp8_cap1p0_static"])
    assert p.returncode == 0, (p.stdout + p.stderr)[-3000:]
    out = p.stdout
    assert "| fp8_cap1p0_static | " in out and "| 98,150 | " in out  # the fork's per-GPU figure beside ours
    assert "Optimizer: Muon" in out and "Vocab size: 512" in out
    assert out.strip().splitlines()[-1].startswith("RESULT: ours/fork tok/sec per GPU: fp8_cap1p0_static ")


@pytest.mark.slow
def test_bench_moe_kinds_and_profile():
    p = run(["bench.moe", "--tokens", "256", "--dim", "64", "--rounds", "2", "--warmup", "1", "--no-compile",
             "--kinds", "dense,cap1.0", "--profile", "--guard", "100"])  # fmt: skip
    assert p.returncode == 0, p.stderr[-2000:]
    lines = p.stdout.strip().splitlines()
    assert sum(line.startswith("| ") for line in lines) == 2 + 2  # header, rule, dense and cap1.0 eager
    profiles = [line for line in lines if line.startswith("profile ")]
    assert [line.split(":")[0] for line in profiles] == ["profile dense eager", "profile cap1.0 eager"]
    assert any("aten::bmm" in line for line in lines)  # the experts' matmuls show by name
    assert re.fullmatch(r"cap1\.0/dense fwd\+bwd: median \d+\.\d\d, best \d+\.\d\d; guard median <= 100\.00: held",
                        lines[-1])  # fmt: skip
    bad = run(["bench.moe", "--kinds", "dense,nonsense", "--no-compile"])
    assert bad.returncode == 2 and "--kinds" in bad.stderr


def test_bench_gpu_verdict_flags_graph_breaks_recompiles_and_failures():
    from bench.gpu import verdict

    def leg(rc=0, graphs=1, recompiles=0, tok=1000.0):
        return {"rc": rc, "graphs": graphs, "recompiles": recompiles, "tok_per_sec": tok}

    results = {"fp8_cap1p0_static": leg(), "bf16_dropless_static": leg(graphs=9),
               "bf16_cap1p0_static": leg(tok=338_008.0), "dense_static": leg(tok=481_723.0)}  # fmt: skip
    lines, ok = verdict(results, ["fp8_cap1p0_static 2.82x"], compiled=True)
    assert not ok
    assert "bf16_dropless_static 9/0" in lines[0]
    assert lines[1] == "MoE bf16 cap 1.0 / dense step time, same active FLOPs: 1.43"
    assert lines[-1].endswith(" | GRAPH BREAKS: bf16_dropless_static (9 graphs)")
    results["bf16_dropless_static"] = leg(graphs=1)
    assert verdict(results, [], compiled=True)[1]
    results["fp8_cap1p0_static"] = leg(rc=1, graphs=None, recompiles=None)
    lines, ok = verdict(results, [], compiled=True)
    assert (
        not ok and "FAILED: fp8_cap1p0_static" in lines[-1] and "RECOMPILED: fp8_cap1p0_static" in lines[-1]
    )
    assert verdict({"bf16_dropless_static": leg(graphs=9)}, [], compiled=False)[1]  # eager (CPU) legs


def test_device_check_script_parses_and_names_every_step():
    assert subprocess.run(["bash", "-n", str(ROOT / "bench" / "device_check.sh")]).returncode == 0
    text = (ROOT / "bench" / "device_check.sh").read_text()
    for module in ("bench.cuda_checks", "bench.moe", "bench.gpu"):
        assert text.count(f"-m {module}") == 2  # the GPU form and the --cpu form
    assert "--legs all" in text  # FP8 experts compiled, dropless, cap 1.0 and dense: every leg


def test_bench_parity_verdict_compares_finals_and_capacity_deltas_with_the_fork():
    from bench import parity

    fork = {"dense": {200: 2.50}, "dropless": {200: 2.50}, "cap1.0": {200: 2.575}}  # +3.00% from both
    near = {"dense": {200: 2.51}, "dropless": {200: 2.49}, "cap1.0": {200: 2.57}}
    line = parity.verdict(near, fork, 200)
    assert line.startswith("RESULT: final val bpb vs the fork: dense +0.40%, dropless -0.40%, cap1.0 -0.19%")
    assert "dropless->cap1.0 +3.21% (fork +3.00%, 0.21 points apart)" in line
    assert "dense->cap1.0 +2.39% (fork +3.00%, 0.61 points apart)" in line and line.endswith("OFF TARGET")
    near["dense"][200] = 2.499
    assert parity.verdict(near, fork, 200).endswith(": on target")
    assert "no fork figures" in parity.verdict(near, {}, 200)


@pytest.mark.slow
def test_bench_parity_runs_the_trainer_variants_and_prints_the_table(smoke_corpus):
    p = run(["bench.parity", "--data", str(smoke_corpus), "--steps", "2", "--every", "1", "--depth", "1",
             "--variants", "dense,cap1.0", "--compile-mode", "none"])  # fmt: skip
    assert p.returncode == 0, (p.stdout + p.stderr)[-3000:]
    lines = p.stdout.strip().splitlines()
    assert "| step | dense | dense fork | Δ | cap1.0 | cap1.0 fork | Δ |" in lines
    rows = [ln for ln in lines if re.match(r"^\| \d+ \| ", ln)]
    assert [r.split(" | ")[0] for r in rows] == [
        "| 0",
        "| 1",
        "| 2",
    ]  # an eval at each step, the fork's cells '-'
    assert all(re.fullmatch(r"\| \d \| \d\.\d{6} \| - \| - \| \d\.\d{6} \| - \| - \|", r) for r in rows), rows
    assert lines[-1].startswith("RESULT: final val bpb at step 2: dense ") and "no fork figures" in lines[-1]
