"""The trainer end to end: torchrun cpu-smoke leg, the real recipe on the smoke corpus (2 ranks,
validation bpb, resume), static compile, bad flags, worker death."""

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
import torch
from helpers import registry_file

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
def test_torchrun_cpu_smoke_moe_leg(tmp_path, smoke_corpus):
    """The bundled cpu-smoke MoE leg, exactly as the registry renders it (its corpus where the
    prepare step would make it), under 2-process torchrun."""
    leg = registry.load(registry_file(tmp_path, corpus=smoke_corpus)).find_leg("cpu-smoke/moe_cap1p0")
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
    # the loss falls visibly (real text; the fork's recipe scales every lr by sqrt(1024 / 2^19)
    # at this batch: 6.93 -> 6.51 in 40 steps seen)
    assert losses[-1] < losses[0] - 0.3
    assert steps[11].group(14) is not None and steps[10].group(14) is None  # eta from step 11
    moe = [MOE_RE.match(line) for line in p.stdout.splitlines() if line.startswith("moe step")]
    assert [int(m.group(1)) for m in moe] == [0, 10, 20, 30]
    loads = [float(v) for v in moe[-1].group(3).split(",")]
    assert len(loads) == 4 and abs(sum(loads) - 1) < 0.01
    assert re.search(r"^Peak memory usage: \d+\.\d{2}MiB$", p.stdout, re.M)
    assert re.search(r"^Total training time: \d+\.\d{2}m$", p.stdout, re.M)
    assert "Checkpoint dir: " in p.stdout and "Estimated FLOPs per token: " in p.stdout
    ckpt = tmp_path / "ckpt_root" / "smoke_moe_cap1p0"
    assert (ckpt / "model_000040.pt").is_file()
    assert (ckpt / "optim_000040_rank0.pt").is_file() and (ckpt / "optim_000040_rank1.pt").is_file()
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
    # the fork's per-layer scalars, value embeddings and gates are in the checkpoint, trained away
    # from their init (so the exact resume above depends on them), with their AdamW / Muon state
    model = torch.load(tmp_path / "r" / "model_000004.pt", weights_only=True)
    assert {
        "resid_lambdas",
        "x0_lambdas",
        "value_embeds.1.weight",
        "transformer.h.1.attn.ve_gate.weight",
    } <= set(model)
    assert not torch.allclose(model["x0_lambdas"], torch.full((2,), 0.1))
    assert not torch.equal(model["resid_lambdas"], torch.ones(2))
    assert model["transformer.h.1.attn.ve_gate.weight"].any()
    optim = torch.load(tmp_path / "r" / "optim_000004_rank0.pt", weights_only=True)
    assert sum(len(g["params"]) for g in optim["param_groups"]) == len(model)
    assert all(v for v in optim["state"].values())


@pytest.mark.slow
@pytest.mark.parametrize("cf,mode,label", [("1.0", "static", "static"), ("0.0", "auto", "auto -> static")])
def test_static_compile_does_not_recompile_after_first_step(tmp_path, cf, mode, label):
    """Fixed capacity and dropless alike have static shapes: `auto` compiles them statically, each
    to one graph (dropless's grouped matmul included, in the CPU's fp32)."""
    # dynamo traces the real training loop; the cheap "eager" backend skips code generation
    args = [*TINY, "--moe-capacity-factor", cf, "--num-iterations", "4", "--checkpoint-root", str(tmp_path),
            "--compile-mode", mode, "--compile-backend", "eager"]  # fmt: skip
    p = run_trainer(args)
    assert p.returncode == 0, p.stderr[-2000:]
    assert f"torch.compile(dynamic=False) [compile_mode={label}]" in p.stdout
    # the optimizer's update math compiled too: a graph per parameter shape, in the first step only
    assert re.search(r"^torch\.compile: 1 graph\(s\) in the first step, 0 recompile\(s\) after it \| "
                     r"optimizer: [1-9]\d* graph\(s\), one per shape$", p.stdout, re.M)  # fmt: skip


VAL_RE = re.compile(r"^Step (\d{5}) \| Validation bpb: (\d+\.\d{6})$", re.M)

SMOKE = [
    "--device-type", "cpu", "--depth", "2", "--max-seq-len", "128", "--device-batch-size", "4",
    "--total-batch-size", "1024", "--use-moe", "--n-experts", "4", "--moe-capacity-factor", "1.0",
    "--moe-log-every", "-1", "--num-iterations", "40", "--eval-every", "10", "--eval-tokens", "8192",
    "--compile-mode", "none", "--data", "parquet",
]  # fmt: skip


def torchrun(args, timeout=180, extra_env=None):
    cmd = [
        str(VENV_BIN / "torchrun"),
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "nanochat.base_train",
        "--",
        *args,
    ]
    return subprocess.run(cmd, cwd=ROOT, env={**env(), **(extra_env or {})}, capture_output=True, text=True,
                          timeout=timeout)  # fmt: skip


@pytest.mark.slow
def test_real_recipe_on_the_smoke_corpus_two_ranks_bpb_falls_and_resume_is_exact(smoke_corpus, tmp_path):
    """MoE on real text (BPE tokens, best-fit rows, Muon) under 2-process torchrun: validation bpb
    falls from eval to eval; a run resumed from its step-20 checkpoint (both ranks' Muon shares and
    data positions) prints exactly the uninterrupted run's lines from there on. The first run is
    tracked (a stand-in wandb, tests/fake_wandb): rank 0 alone imports it and logs."""
    data = ["--data-dir", str(smoke_corpus / "base_data"), "--tokenizer-dir", str(smoke_corpus / "tokenizer"),
            "--checkpoint-root", str(tmp_path), "--model-tag", "smoke"]  # fmt: skip
    calls = tmp_path / "wandb_calls.jsonl"
    tracked = {
        "PYTHONPATH": f"{ROOT / 'tests' / 'fake_wandb'}{os.pathsep}{ROOT}",
        "FAKE_WANDB_CALLS": str(calls),
    }
    t0 = time.time()
    full = torchrun([*SMOKE, *data, "--save-every", "20", "--run", "smoke"], extra_env=tracked)
    assert full.returncode == 0, (full.stdout + full.stderr)[-3000:]
    assert time.time() - t0 < 60
    wandb_calls = [json.loads(line) for line in calls.read_text().splitlines()]
    assert {c["rank"] for c in wandb_calls} == {"0"}
    assert [c["call"] for c in wandb_calls if c["call"] != "log"] == ["import", "init", "finish"]
    assert {c["step"] for c in wandb_calls if c["call"] == "log"} == {
        0,
        10,
        20,
        30,
        39,
        40,
    }  # every 100, evals, last
    out = full.stdout
    assert "Vocab size: 1,024" in out and "vocab 1024" in out
    # AdamW: lm_head, token embedding, layer 1's value embedding, resid_lambdas, x0_lambdas
    assert re.search(
        r"^Optimizer: Muon \(27 matrices, [\d,]+ params\) \+ AdamW \(5 tensors, 393,220 params\)$", out, re.M
    )
    assert re.search(r"^Data: parquet .*base_data \(4 training shard\(s\) \+ 1 validation shard\)", out, re.M)
    evals = [(int(m.group(1)), float(m.group(2))) for m in VAL_RE.finditer(out)]
    assert [s for s, _ in evals] == [0, 10, 20, 30, 40]
    bpb = [v for _, v in evals]
    assert all(b < a for a, b in zip(bpb, bpb[1:], strict=False)), bpb  # falls at every eval
    assert bpb[0] > 3.0 and bpb[-1] < bpb[0] - 0.2, bpb  # 3.87 -> 3.57 seen (lrs x sqrt(1024 / 2^19))
    assert f"Minimum validation bpb: {min(bpb):.6f}" in out.splitlines()[-1]
    steps = step_lines(out)
    assert [int(m.group(1)) for m in steps] == list(range(40)) and {m.group(11) for m in steps} == {
        "1"
    }  # epoch 1
    for r in (0, 1):
        assert (tmp_path / "smoke" / f"optim_000020_rank{r}.pt").is_file()

    resumed = torchrun([*SMOKE, *data, "--resume-from-step", "20"])
    assert resumed.returncode == 0, (resumed.stdout + resumed.stderr)[-3000:]
    key = lambda m: (m.group(4), m.group(6), m.group(16))  # loss, bal, drop
    a = {int(m.group(1)): key(m) for m in steps}
    b = {int(m.group(1)): key(m) for m in step_lines(resumed.stdout)}
    assert sorted(b) == list(range(20, 40))
    assert all(b[s] == a[s] for s in b), [(s, a[s], b[s]) for s in b if a[s] != b[s]]
    assert VAL_RE.findall(resumed.stdout) == VAL_RE.findall(out)[2:]
    # each rank holds its share of Muon's momentum: another world size cannot resume it
    one = run_trainer([*SMOKE, *data, "--resume-from-step", "20"])
    assert one.returncode == 2 and "was written by 2 rank(s)" in one.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--use-moe", "--n-experts", "4", "--expert-topk", "5"], "--expert-topk"),
        (["--use-moe", "--moe-capacity-factor", "-1"], "--moe-capacity-factor"),
        (["--depth", "0"], "--depth"),
        (["--moe-freq", "0"], "--moe-freq"),
        (
            ["--data", "parquet", "--data-dir", "/nonexistent/dir"],
            "/nonexistent/dir: no such directory; make one: python -m nanochat.smoke_data --out DIR",
        ),
        (
            ["--data", "parquet", "--data-dir", "SMOKE/base_data", "--tokenizer-dir", "/nonexistent/tok"],
            "--tokenizer-dir /nonexistent/tok: no such directory; train one: python -m nanochat.tok_train",
        ),
        (
            ["--data", "parquet", "--data-dir", "SMOKE/base_data", "--vocab-size", "512"],
            "the tokenizer gives the vocab",
        ),
        (["--eval-every", "10"], "--eval-every needs --data parquet"),
        (["--tokenizer-dir", "/x"], "only used with --data parquet"),
        (["--total-batch-size", "1000"], "--total-batch-size"),
        (["--fp8-include-moe-experts", "--use-moe"], "needs --fp8"),
        (["--fp8", "--fp8-include-moe-experts"], "needs --use-moe"),
        (["--compile-mode", "fast"], "--compile-mode"),
        (
            ["--window-pattern", "SSX"],
            "--window-pattern must be letters S (half context) and L (full context)",
        ),
        (["--window-pattern", ""], "--window-pattern"),
        (["--use-moe", "--moe-drop-order", "random"], "--moe-drop-order"),
        (["--scalar-lr", "-1"], "--scalar-lr must be >= 0"),
        (["--target-flops", "0"], "--target-flops"),
        (
            [
                "--max-seq-len",
                "64",
                "--device-batch-size",
                "3",
                "--total-batch-size",
                "-1",
                "--depth",
                "1",
                "--vocab-size",
                "64",
                "--target-param-data-ratio",
                "0.0001",
            ],
            "--total-batch-size -1: the derived batch",
        ),
        (["--no-such-flag"], "--no-such-flag"),
        (["--wandb-log-every", "0"], "--wandb-log-every must be >= 1 (got 0)"),
        (["--resume-from-step", "5", "--checkpoint-root", "/nonexistent/ck"], "no checkpoint file"),
    ],
)
def test_bad_flags_one_line_exit_2(args, needle, capsys, request):
    if any("SMOKE" in a for a in args):
        smoke = request.getfixturevalue("smoke_corpus")
        args = [a.replace("SMOKE", str(smoke)) for a in args]
    rc = base_train.main(["--device-type", "cpu", *args])
    err = capsys.readouterr().err
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("base_train: error: ") and needle in lines[0], err


def test_bal_is_the_fork_s_sum_of_per_layer_balance_losses(capsys):
    """`bal:` is the quantity the fork prints: per MoE layer E * sum_i f_i * P_i with f = counts / T
    (k at perfect balance), summed over layers. The router starts at zero (uniform probabilities):
    every layer's value is exactly k, so step 0 prints k x layers (the fork's d12 runs: 24.0000)."""
    rc = base_train.main([*TINY, "--num-iterations", "1", "--compile-mode", "none", "--save-every", "0",
                          "--moe-log-every", "1"])  # fmt: skip
    out = capsys.readouterr().out
    assert rc == 0, out[-2000:]
    step = step_lines(out)[0]
    assert step.group(6) == "4.0000"  # 2 layers x top-2
    assert MOE_RE.match(next(ln for ln in out.splitlines() if ln.startswith("moe step"))).group(4) == "4.0000"


def test_lr_schedule_and_peak_flops_table():
    lrm = [base_train.lr_multiplier(s, 100, 0.0, 0.2, 0.0) for s in range(100)]
    assert lrm[0] == 1.0 and lrm[80] == 1.0 and lrm[81] < 1.0 and lrm[99] == pytest.approx(0.05)
    assert base_train.lr_multiplier(0, 100, 0.1, 0.2, 0.0) == pytest.approx(0.1)
    assert base_train.lr_multiplier(99, 100, 0.0, 0.5, 0.1) == pytest.approx(0.02 + 0.98 * 0.1)
    mom = [base_train.muon_momentum(s) for s in (0, 150, 300, 1000)]
    assert mom == pytest.approx([0.85, 0.90, 0.95, 0.95])
    assert base_train.muon_weight_decay(0, 100, 0.2) == 0.2 and base_train.muon_weight_decay(
        75, 100, 0.2
    ) == pytest.approx(0.05)
    assert peak_flops_for("NVIDIA H100 80GB HBM3") == 989e12
    assert peak_flops_for("NVIDIA H100 PCIe") == 756e12
    assert peak_flops_for("NVIDIA H100 NVL") == 835e12
    assert peak_flops_for("NVIDIA H200") == 989e12
    assert peak_flops_for("NVIDIA H200 NVL") == 836e12
    assert peak_flops_for("NVIDIA H800") == 756e12
    assert peak_flops_for("NVIDIA H20") == 148e12
    assert peak_flops_for("NVIDIA GH200 480GB") == 989e12
    assert peak_flops_for("NVIDIA L40S") == 362e12
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
        workers = [
            c for c in psutil.Process(p.pid).children(recursive=True) if "base_train" in " ".join(c.cmdline())
        ]
        assert len(workers) == 2
        os.kill(p.pid, signal.SIGKILL)
        p.wait(10)
        gone, alive = psutil.wait_procs(workers, timeout=15)
        assert not alive, alive
    finally:
        if p.poll() is None:
            p.kill()
        log.close()
