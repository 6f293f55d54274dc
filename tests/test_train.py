"""The trainer end to end: torchrun cpu-smoke leg, resume, static compile, bad flags, worker death."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from cockpit import registry
from nanochat import base_train
from nanochat.common import peak_flops_for

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
STEP_RE = re.compile(
    r"^step (\d{5})/(\d{5}) \(([\d.]+)%\) \| loss: ([\d.]+)( \| bal: ([\d.]+))? \| lrm: ([\d.]+) \| "
    r"dt: ([\d.]+)ms \| tok/sec: ([\d,]+) \| bf16_mfu: ([\d.]+) \| epoch: (\d+) \| total time: ([\d.]+)m"
    r"( \| eta: ([\d.]+)m)?( \| drop: ([\d.]+)%)?$"
)
MOE_RE = re.compile(r"^moe step (\d{5}) \| drop: ([\d.]+)% \| load: ([\d.,]+) \| bal: ([\d.]+)$")

TINY = [
    "--device-type", "cpu", "--depth", "2", "--max-seq-len", "64", "--device-batch-size", "2",
    "--total-batch-size", "256", "--vocab-size", "256", "--use-moe", "--n-experts", "4",
    "--moe-capacity-factor", "1.0", "--moe-log-every", "-1",
]  # fmt: skip


def env():
    e = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    return e


def run_trainer(args, timeout=120):
    return subprocess.run(
        [sys.executable, "-m", "nanochat.base_train", *args],
        cwd=ROOT, env=env(), capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def step_lines(text):
    return [m for m in (STEP_RE.match(line) for line in text.splitlines()) if m]


@pytest.mark.slow
def test_torchrun_cpu_smoke_moe_leg(tmp_path):
    """The bundled cpu-smoke MoE leg, exactly as the registry renders it, under 2-process torchrun."""
    leg = registry.load(ROOT / "experiments.toml").find_leg("cpu-smoke/moe_cap1p0")
    argv = leg.argv(tmp_path, torchrun=str(VENV_BIN / "torchrun"))
    t0 = time.time()
    p = subprocess.run(argv, cwd=ROOT, env=env(), capture_output=True, text=True, timeout=240)
    out = p.stdout + p.stderr
    assert p.returncode == 0, out[-3000:]
    assert time.time() - t0 < 60
    steps = step_lines(p.stdout)
    assert [int(m.group(1)) for m in steps] == list(range(40))  # rank 0 prints, once per step
    assert all(m.group(6) is not None and m.group(16) is not None for m in steps)  # bal and drop
    losses = [float(m.group(4)) for m in steps]
    assert losses[-1] < losses[0] - 1.5  # learnable stream: the loss falls visibly
    assert steps[11].group(14) is not None and steps[10].group(14) is None  # eta from step 11
    moe = [MOE_RE.match(line) for line in p.stdout.splitlines() if line.startswith("moe step")]
    assert [int(m.group(1)) for m in moe] == [0, 10, 20, 30]
    loads = [float(v) for v in moe[-1].group(3).split(",")]
    assert len(loads) == 4 and abs(sum(loads) - 1) < 0.01
    assert re.search(r"^Peak memory usage: \d+\.\d{2}MiB$", p.stdout, re.M)
    assert re.search(r"^Total training time: \d+\.\d{2}m$", p.stdout, re.M)
    assert "Checkpoint dir: " in p.stdout and "Estimated FLOPs per token: " in p.stdout
    ckpt = tmp_path / "ckpt_root" / "smoke_moe_cap1p0"
    assert (ckpt / "model_000040.pt").is_file() and (ckpt / "optim_000040.pt").is_file()
    meta = json.loads((ckpt / "meta_000040.json").read_text())
    assert meta["step"] == 40 and meta["config"]["use_moe"] and meta["args"]["moe_capacity_factor"] == 1.0


@pytest.mark.slow
def test_resume_reproduces_uninterrupted_losses(tmp_path):
    common = [*TINY, "--num-iterations", "8", "--checkpoint-root", str(tmp_path), "--model-tag", "r",
              "--compile-mode", "none"]  # fmt: skip
    full = run_trainer([*common, "--save-every", "4"])
    assert full.returncode == 0, full.stderr[-2000:]
    resumed = run_trainer([*common, "--resume-from-step", "4"])
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a = {int(m.group(1)): (m.group(4), m.group(6), m.group(16)) for m in step_lines(full.stdout)}
    b = {int(m.group(1)): (m.group(4), m.group(6), m.group(16)) for m in step_lines(resumed.stdout)}
    assert sorted(b) == [4, 5, 6, 7]
    assert all(b[s] == a[s] for s in b), (a, b)
    meta = json.loads((tmp_path / "r" / "meta_000004.json").read_text())
    assert meta["step"] == 4 and isinstance(meta["loss"], float) and meta["config"]["n_layer"] == 2


@pytest.mark.slow
def test_static_compile_does_not_recompile_after_first_step(tmp_path):
    # dynamo traces the real training loop; the cheap "eager" backend skips code generation
    p = run_trainer([*TINY, "--num-iterations", "4", "--checkpoint-root", str(tmp_path),
                     "--compile-mode", "static", "--compile-backend", "eager"])  # fmt: skip
    assert p.returncode == 0, p.stderr[-2000:]
    assert "torch.compile(dynamic=False) [compile_mode=static]" in p.stdout
    assert "torch.compile: 1 graph(s) in the first step, 0 recompile(s) after it" in p.stdout


def test_parquet_data_end_to_end(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    pq.write_table(pa.table({"text": [f"doc {i} " * 20 for i in range(40)]}), tmp_path / "s.parquet")
    p = run_trainer(["--device-type", "cpu", "--depth", "1", "--max-seq-len", "32", "--device-batch-size", "2",
                     "--total-batch-size", "64", "--vocab-size", "260", "--num-iterations", "3",
                     "--data", "parquet", "--data-dir", str(tmp_path), "--checkpoint-root", str(tmp_path / "c"),
                     "--compile-mode", "none", "--eval-every", "100"])  # fmt: skip
    assert p.returncode == 0, p.stderr[-2000:]
    assert len(step_lines(p.stdout)) == 3
    assert "Not implemented in this trainer, skipped: --eval-every 100" in p.stdout


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--use-moe", "--n-experts", "4", "--expert-topk", "5"], "--expert-topk"),
        (["--use-moe", "--moe-capacity-factor", "-1"], "--moe-capacity-factor"),
        (["--depth", "0"], "--depth"),
        (["--moe-freq", "0"], "--moe-freq"),
        (["--data", "parquet", "--data-dir", "/nonexistent/dir"], "/nonexistent/dir"),
        (["--data", "parquet"], "--data-dir"),
        (["--total-batch-size", "1000"], "--total-batch-size"),
        (["--fp8-include-moe-experts", "--use-moe"], "needs --fp8"),
        (["--fp8", "--fp8-include-moe-experts"], "needs --use-moe"),
        (["--compile-mode", "fast"], "--compile-mode"),
        (["--no-such-flag"], "--no-such-flag"),
        (["--resume-from-step", "5", "--checkpoint-root", "/nonexistent/ck"], "no checkpoint file"),
    ],
)
def test_bad_flags_one_line_exit_2(args, needle, capsys):
    rc = base_train.main(["--device-type", "cpu", *args])
    err = capsys.readouterr().err
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("base_train: error: ") and needle in lines[0], err


def test_lr_schedule_and_peak_flops_table():
    lrm = [base_train.lr_multiplier(s, 100, 0.0, 0.2, 0.0) for s in range(100)]
    assert lrm[0] == 1.0 and lrm[80] == 1.0 and lrm[81] < 1.0 and lrm[99] == pytest.approx(0.05)
    assert base_train.lr_multiplier(0, 100, 0.1, 0.2, 0.0) == pytest.approx(0.1)
    assert peak_flops_for("NVIDIA H100 80GB HBM3") == 989e12
    assert peak_flops_for("NVIDIA H100 PCIe") == 756e12
    assert peak_flops_for("NVIDIA H100 NVL") == 835e12
    assert peak_flops_for("NVIDIA H200") == 989e12
    assert peak_flops_for("NVIDIA A100-SXM4-80GB") == 312e12
    assert peak_flops_for("NVIDIA B200") == 2250e12
    assert peak_flops_for("Tesla T4") == 0.0 and peak_flops_for("cpu") == 0.0


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux only")
def test_workers_die_with_torchrun(tmp_path):
    """SIGKILL torchrun alone (no chance to forward anything): its workers must not live on."""
    log = open(tmp_path / "leg.log", "w")
    p = subprocess.Popen(
        [str(VENV_BIN / "torchrun"), "--standalone", "--nproc_per_node=2", "-m", "nanochat.base_train", "--",
         *TINY, "--num-iterations", "100000", "--checkpoint-root", str(tmp_path), "--compile-mode", "none"],
        cwd=ROOT, env=env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.time() + 90
        while "step 00001" not in (tmp_path / "leg.log").read_text():
            assert p.poll() is None and time.time() < deadline, (tmp_path / "leg.log").read_text()[-2000:]
            time.sleep(0.2)
        workers = [c for c in psutil.Process(p.pid).children(recursive=True) if "base_train" in " ".join(c.cmdline())]
        assert len(workers) == 2
        os.kill(p.pid, signal.SIGKILL)
        p.wait(10)
        gone, alive = psutil.wait_procs(workers, timeout=15)
        assert not alive, alive
    finally:
        if p.poll() is None:
            p.kill()
        log.close()
