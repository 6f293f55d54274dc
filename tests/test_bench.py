"""The trainer's benchmark scripts still run (their CPU forms): figures are not checked, the
pipeline and the last lines are."""

import os
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


def test_bench_moe_prints_median_and_best_ratios():
    p = run(["bench.moe", "--tokens", "256", "--dim", "64", "--rounds", "3", "--warmup", "1", "--no-compile"])
    assert p.returncode == 0, p.stderr[-2000:]
    lines = p.stdout.strip().splitlines()
    assert re.fullmatch(r"cap1\.0/dense fwd\+bwd: median \d+\.\d\d, best \d+\.\d\d", lines[-1])
    assert any(line.startswith("cap1.0/experts fwd+bwd (eager): median") for line in lines)
    assert sum(line.startswith("| ") for line in lines) == 2 + 5  # header, rule, 5 eager variants


@pytest.mark.slow
def test_bench_gpu_cpu_check_runs_the_trainer_legs():
    p = run(["bench.gpu", "--cpu-check", "--steps", "3", "--legs", "bf16_cap1p0_static,fp8_cap1p0_static"])
    assert p.returncode == 0, (p.stdout + p.stderr)[-3000:]
    out = p.stdout
    assert "| fp8_cap1p0_static | " in out and "| 98,150 | " in out  # the fork's per-GPU figure beside ours
    assert "Optimizer: Muon" in out and "Vocab size: 512" in out
    assert out.strip().splitlines()[-1].startswith("RESULT: ours/fork tok/sec per GPU: fp8_cap1p0_static ")


def test_device_check_script_parses_and_names_every_step():
    assert subprocess.run(["bash", "-n", str(ROOT / "bench" / "device_check.sh")]).returncode == 0
    text = (ROOT / "bench" / "device_check.sh").read_text()
    for module in ("bench.cuda_checks", "bench.gpu", "bench.fp8_gpu"):
        assert text.count(f"-m {module}") == 2  # the GPU form and the --cpu form
