"""
Pretrain the nanochat GPT (dense or Mixture-of-Experts) on one process or under torchrun:

    torchrun --standalone --nproc_per_node=8 -m nanochat.base_train -- --depth 12 --use-moe ...
    python -m nanochat.base_train --device-type cpu --depth 2 ...          # one process

It takes every flag of the seed's execution template with the same meaning, and prints upstream
nanochat's log lines (the cockpit parses them; see DESIGN.md):

    step 00042/00280 (15.00%) | loss: 6.123456 | bal: 1.0123 | lrm: 1.00 | dt: 650.67ms | ...
    moe step 00042 | drop: 1.20% | load: 0.131,0.122,... | bal: 1.0023
    Peak memory usage: 18987.83MiB
    Total training time: 2.97m
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

from nanochat import moe as moe_lib
from nanochat.checkpoint import checkpoint_dir, checkpoint_paths, load_checkpoint, save_checkpoint
from nanochat.common import (
    autodetect_device_type,
    compute_cleanup,
    compute_init,
    device_peak_flops,
    install_sigterm_exit,
    is_rank0,
    peak_memory_mib,
    print0,
    set_pdeathsig,
    synchronize,
)
from nanochat.data import BYTE_VOCAB, ParquetStream, SyntheticStream, list_parquet_files
from nanochat.gpt import GPT, GPTConfig, model_dims

PROG = "base_train"


class UsageError(Exception):
    """A bad flag or flag combination: one line on stderr, exit status 2."""


class _Parser(argparse.ArgumentParser):
    # argparse prints the whole usage block before its error; the cockpit shows the tail of a
    # failed leg's log, so keep bad input to the one line that says what is wrong.
    def error(self, message):
        raise UsageError(message)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog=PROG, description="Pretrain a nanochat GPT (dense or MoE).")
    # logging / runtime
    p.add_argument("--run", type=str, default="dummy", help="run name ('dummy': no experiment tracker)")
    p.add_argument("--device-type", type=str, default="", help="cuda|cpu|mps; empty = autodetect")
    p.add_argument("--seed", type=int, default=42)
    # model
    p.add_argument("--depth", type=int, default=12, help="number of transformer layers")
    p.add_argument("--aspect-ratio", type=int, default=64, help="model_dim = depth * aspect_ratio")
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--max-seq-len", type=int, default=1024)
    p.add_argument("--vocab-size", type=int, default=65536)
    # mixture of experts
    p.add_argument("--use-moe", action="store_true", help="MoE block instead of the MLP")
    p.add_argument("--n-experts", type=int, default=8)
    p.add_argument("--expert-topk", type=int, default=2)
    p.add_argument("--moe-freq", type=int, default=1, help="MoE in every moe_freq-th layer")
    p.add_argument("--expert-hidden-mult", type=float, default=2.0, help="expert hidden = mult x model_dim")
    p.add_argument("--balance-loss-coeff", type=float, default=0.01)
    p.add_argument("--moe-capacity-factor", type=float, default=0.0, help="0 = dropless; >0 = fixed capacity")
    p.add_argument("--moe-log-every", type=int, default=10, help="routing line every N steps; -1 = never")
    # precision / compile
    p.add_argument("--fp8", action="store_true", help="FP8 matmuls for the linear layers (nanochat/fp8.py)")
    p.add_argument("--fp8-include-moe-experts", action="store_true", help="FP8 for the expert matmuls too")
    p.add_argument("--compile-mode", choices=["auto", "static", "dynamic", "none"], default="auto")
    p.add_argument("--compile-backend", type=str, default="inductor", help="torch.compile backend (tests: aot_eager)")
    # batch / schedule
    p.add_argument("--device-batch-size", type=int, default=16, help="sequences per rank per micro-step")
    p.add_argument("--total-batch-size", type=int, default=524288, help="tokens per optimizer step")
    p.add_argument("--num-iterations", type=int, default=-1, help="-1 = from --target-param-data-ratio")
    p.add_argument("--target-param-data-ratio", type=float, default=20.0)
    p.add_argument("--embedding-lr", type=float, default=0.2)
    p.add_argument("--unembedding-lr", type=float, default=0.004)
    p.add_argument("--matrix-lr", type=float, default=0.004)
    p.add_argument("--router-lr", type=float, default=-1.0, help="MoE router lr; -1 = --matrix-lr")
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--grad-clip", type=float, default=1.0, help="0 = no clipping")
    p.add_argument("--warmup-ratio", type=float, default=0.0)
    p.add_argument("--warmdown-ratio", type=float, default=0.2)
    p.add_argument("--final-lr-frac", type=float, default=0.0)
    # data
    p.add_argument("--data", choices=["synthetic", "parquet"], default="synthetic")
    p.add_argument("--data-dir", type=str, default="", help="parquet shards with a `text` column")
    # periodic actions (-1 disables, as upstream)
    p.add_argument("--eval-every", type=int, default=-1)
    p.add_argument("--core-metric-every", type=int, default=-1)
    p.add_argument("--sample-every", type=int, default=-1)
    p.add_argument("--save-every", type=int, default=-1, help="-1 = only at the end; 0 = never (benchmarks)")
    # checkpoints
    p.add_argument("--checkpoint-root", type=str, default="checkpoints")
    p.add_argument("--model-tag", type=str, default="", help="default: d<depth>[_moe]")
    p.add_argument("--resume-from-step", type=int, default=-1)
    # MFU
    p.add_argument("--peak-flops", type=float, default=0.0, help="bf16 peak FLOPS per device; 0 = table")
    return p


def validate(args: argparse.Namespace, world_size: int) -> None:
    """Flag checks that argparse's types cannot express; each raises UsageError with one line."""

    def need(cond: bool, msg: str) -> None:
        if not cond:
            raise UsageError(msg)

    need(args.depth >= 1, f"--depth must be >= 1 (got {args.depth})")
    need(args.aspect_ratio >= 1, f"--aspect-ratio must be >= 1 (got {args.aspect_ratio})")
    need(args.head_dim >= 2 and args.head_dim % 2 == 0, f"--head-dim must be even and >= 2 (got {args.head_dim})")
    need(args.max_seq_len >= 1, f"--max-seq-len must be >= 1 (got {args.max_seq_len})")
    need(args.vocab_size >= 2, f"--vocab-size must be >= 2 (got {args.vocab_size})")
    need(args.device_batch_size >= 1, f"--device-batch-size must be >= 1 (got {args.device_batch_size})")
    need(args.n_experts >= 1, f"--n-experts must be >= 1 (got {args.n_experts})")
    need(
        1 <= args.expert_topk <= args.n_experts,
        f"--expert-topk must be in 1..--n-experts ({args.n_experts}) (got {args.expert_topk})",
    )
    need(args.moe_freq >= 1, f"--moe-freq must be >= 1 (got {args.moe_freq})")
    if args.use_moe:
        need(args.moe_freq <= args.depth, f"--moe-freq {args.moe_freq} > --depth {args.depth}: no MoE layer")
    need(args.expert_hidden_mult > 0, f"--expert-hidden-mult must be > 0 (got {args.expert_hidden_mult})")
    need(args.balance_loss_coeff >= 0, f"--balance-loss-coeff must be >= 0 (got {args.balance_loss_coeff})")
    need(
        math.isfinite(args.moe_capacity_factor) and args.moe_capacity_factor >= 0,
        f"--moe-capacity-factor must be >= 0 (0 = dropless) (got {args.moe_capacity_factor})",
    )
    need(args.moe_log_every == -1 or args.moe_log_every >= 1, "--moe-log-every must be >= 1 or -1")
    need(args.num_iterations == -1 or args.num_iterations >= 1, "--num-iterations must be >= 1 or -1")
    need(args.target_param_data_ratio > 0, "--target-param-data-ratio must be > 0")
    need(args.save_every >= -1, "--save-every must be >= 1, -1 (only at the end) or 0 (never)")
    for name in ("eval_every", "core_metric_every", "sample_every"):
        v = getattr(args, name)
        need(v == -1 or v >= 1, f"--{name.replace('_', '-')} must be >= 1 or -1 (got {v})")
    for name in ("embedding_lr", "unembedding_lr", "matrix_lr", "weight_decay", "grad_clip", "peak_flops"):
        need(getattr(args, name) >= 0, f"--{name.replace('_', '-')} must be >= 0")
    need(0 <= args.warmup_ratio <= 1 and 0 <= args.warmdown_ratio <= 1, "--warmup/warmdown-ratio must be in [0, 1]")
    need(args.warmup_ratio + args.warmdown_ratio <= 1, "--warmup-ratio + --warmdown-ratio must be <= 1")
    need(args.device_type in ("", "cuda", "cpu", "mps"), f"--device-type must be cuda, cpu or mps (got {args.device_type!r})")
    if args.fp8_include_moe_experts:
        need(args.fp8, "--fp8-include-moe-experts needs --fp8")
        need(args.use_moe, "--fp8-include-moe-experts needs --use-moe")
    need(args.model_tag == "" or "/" not in args.model_tag, f"--model-tag must not contain '/' (got {args.model_tag!r})")
    tokens_per_fwdbwd = args.device_batch_size * args.max_seq_len * world_size
    need(
        args.total_batch_size >= 1 and args.total_batch_size % tokens_per_fwdbwd == 0,
        f"--total-batch-size {args.total_batch_size} is not a multiple of device_batch_size * max_seq_len * "
        f"world_size = {args.device_batch_size} * {args.max_seq_len} * {world_size} = {tokens_per_fwdbwd}",
    )
    if args.data == "parquet":
        need(args.data_dir != "", "--data parquet needs --data-dir")
        d = Path(args.data_dir).expanduser()
        need(d.is_dir(), f"--data-dir {args.data_dir}: no such directory")
        need(bool(list_parquet_files(d)), f"--data-dir {args.data_dir}: no *.parquet files")
        need(args.vocab_size >= BYTE_VOCAB, f"--data parquet uses a byte tokenizer: --vocab-size must be >= {BYTE_VOCAB}")
    elif args.data_dir:
        raise UsageError("--data-dir is only used with --data parquet")


def lr_multiplier(step: int, num_iterations: int, warmup_ratio: float, warmdown_ratio: float, final_frac: float) -> float:
    """Upstream nanochat's schedule: linear warmup, flat, linear warmdown to final_frac."""
    warmup = round(warmup_ratio * num_iterations)
    warmdown = round(warmdown_ratio * num_iterations)
    if step < warmup:
        return (step + 1) / warmup
    if step <= num_iterations - warmdown:
        return 1.0
    progress = (num_iterations - step) / warmdown
    return progress + (1 - progress) * final_frac


def allreduce_mean_grads(params: list[torch.nn.Parameter], world_size: int) -> None:
    """Average gradients over ranks with one collective on a flat buffer (gloo has no AVG op)."""
    grads = [p.grad for p in params if p.grad is not None]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat.div_(world_size)
    offset = 0
    for g in grads:
        n = g.numel()
        g.copy_(flat[offset : offset + n].view_as(g))
        offset += n


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--"]:  # `torchrun -m nanochat.base_train -- <flags>`
        argv = argv[1:]
    try:
        args = build_parser().parse_args(argv)
        world_env = int(os.environ.get("WORLD_SIZE", "1"))
        validate(args, world_env)
        if args.device_type == "cuda" and not torch.cuda.is_available():
            raise UsageError("--device-type cuda but torch sees no CUDA device")
        if args.resume_from_step >= 0:
            tag = args.model_tag or default_model_tag(args)
            paths = checkpoint_paths(checkpoint_dir(args.checkpoint_root, tag), args.resume_from_step)
            for key in ("model", "meta", "optim"):
                if not paths[key].is_file():
                    raise UsageError(f"--resume-from-step {args.resume_from_step}: no checkpoint file {paths[key]}")
    except UsageError as e:
        if is_rank0():
            print(f"{PROG}: error: {e}", file=sys.stderr, flush=True)
        return 2
    try:
        return train(args)
    except KeyboardInterrupt:
        return 130
    finally:
        compute_cleanup()


def compiled_graphs() -> int:
    """Graphs torch.compile has produced so far in this process (dynamo's own counter)."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def default_model_tag(args: argparse.Namespace) -> str:
    return f"d{args.depth}" + ("_moe" if args.use_moe else "")


def train(args: argparse.Namespace) -> int:
    # ---------------------------------------------------------------------------------------
    # device, process group
    autodetected = args.device_type == ""
    device_type = autodetect_device_type() if autodetected else args.device_type
    ddp, rank, local_rank, world_size, device = compute_init(device_type)
    if autodetected:
        print0(f"Autodetected device type: {device_type}")
    else:
        print0(f"Device type: {device_type}")
    is_master = rank == 0
    autocast_ctx = (
        torch.autocast(device_type="cuda", dtype=torch.bfloat16) if device_type == "cuda" else contextlib.nullcontext()
    )
    compute_dtype = torch.bfloat16 if device_type == "cuda" else torch.float32

    # ---------------------------------------------------------------------------------------
    # model
    model_dim, n_head = model_dims(args.depth, args.aspect_ratio, args.head_dim)
    config = GPTConfig(
        sequence_len=args.max_seq_len,
        vocab_size=args.vocab_size,
        n_layer=args.depth,
        n_head=n_head,
        n_embd=model_dim,
        use_moe=args.use_moe,
        n_experts=args.n_experts,
        expert_topk=args.expert_topk,
        moe_freq=args.moe_freq,
        expert_hidden_mult=args.expert_hidden_mult,
        moe_capacity_factor=args.moe_capacity_factor,
        balance_loss_coeff=args.balance_loss_coeff,
    )
    model_tag = args.model_tag or default_model_tag(args)
    ckpt_dir = checkpoint_dir(args.checkpoint_root, model_tag)
    print0(f"Checkpoint dir: {ckpt_dir}")
    torch.manual_seed(args.seed)  # same init on every rank
    with torch.device(device):
        model = GPT(config)
    model.init_weights()
    num_params = sum(p.numel() for p in model.parameters())
    print0(
        f"Model: depth {config.n_layer}, width {config.n_embd}, heads {config.n_head}, "
        f"seq {config.sequence_len}, vocab {config.vocab_size}, params {num_params:,}"
    )
    dropless = args.use_moe and args.moe_capacity_factor == 0.0
    fixed_capacity = args.use_moe and args.moe_capacity_factor > 0.0
    if args.use_moe:
        tokens_per_micro = args.device_batch_size * args.max_seq_len
        route = (
            "dropless"
            if dropless
            else f"fixed capacity {moe_lib.expert_capacity(tokens_per_micro, args.expert_topk, args.n_experts, args.moe_capacity_factor)} "
            f"slots/expert (cf {args.moe_capacity_factor:g}, {tokens_per_micro} tokens x top-{args.expert_topk})"
        )
        print0(
            f"MoE: {config.n_moe_layers}/{config.n_layer} layers, {args.n_experts} experts, top-{args.expert_topk}, "
            f"hidden {int(args.expert_hidden_mult * model_dim)}, {route}, balance coeff {args.balance_loss_coeff:g}"
        )
        expert_hidden = int(args.expert_hidden_mult * model_dim)
        grouped_ok = moe_lib.probe_grouped_mm(device, compute_dtype, model_dim, expert_hidden)
        if dropless and not grouped_ok and not args.fp8_include_moe_experts:
            print0(
                "MoE dropless: torch._grouped_mm does not run here (it needs sm90+ on CUDA); computing every assignment "
                "with T slots per expert instead (exact, E/k x the expert FLOPs)"
            )

    resume_meta = None
    if args.resume_from_step >= 0:
        model_state, optim_state, resume_meta = load_checkpoint(ckpt_dir, args.resume_from_step, device)
        if resume_meta.get("config") != config.to_dict():
            msg = f"checkpoint {ckpt_dir} step {args.resume_from_step} has another model config"
            print0(f"{PROG}: error: {msg}", file=sys.stderr)
            return 2
        model.load_state_dict(model_state)
        print0(f"Resumed model from {ckpt_dir} step {args.resume_from_step}")

    if args.fp8:
        from nanochat.fp8 import convert_to_fp8

        info = convert_to_fp8(model, include_experts=args.fp8_include_moe_experts)
        print0(info["log_line"])

    # torch.compile: static shapes with a fixed capacity, dynamic when dropless (auto)
    mode = args.compile_mode
    if mode == "auto":
        mode = "dynamic" if dropless else "static"
    if mode == "none":
        train_model = model
        print0(f"torch.compile disabled [compile_mode={args.compile_mode}]")
    else:
        dynamic = mode == "dynamic"
        train_model = torch.compile(model, dynamic=dynamic, backend=args.compile_backend)
        label = args.compile_mode if args.compile_mode == mode else f"{args.compile_mode} -> {mode}"
        print0(f"torch.compile(dynamic={dynamic}) [compile_mode={label}]")

    num_flops_per_token = model.estimate_flops()
    print0(f"Estimated FLOPs per token: {num_flops_per_token:e}")

    # ---------------------------------------------------------------------------------------
    # batch, schedule, optimizer
    tokens_per_fwdbwd = args.device_batch_size * args.max_seq_len * world_size
    grad_accum_steps = args.total_batch_size // tokens_per_fwdbwd
    print0(f"Tokens / micro-batch / rank: {args.device_batch_size} x {args.max_seq_len} = {args.device_batch_size * args.max_seq_len:,}")
    print0(f"Tokens / micro-batch: {tokens_per_fwdbwd:,}")
    print0(f"Total batch size {args.total_batch_size:,} => gradient accumulation steps: {grad_accum_steps}")
    if args.num_iterations > 0:
        num_iterations = args.num_iterations
    else:
        num_iterations = max(1, round(args.target_param_data_ratio * num_params / args.total_batch_size))
        print0(f"Calculated number of iterations from target data:param ratio: {num_iterations:,}")
    not_done = [
        f"{flag} {v}"
        for flag, v in (
            ("--eval-every", args.eval_every),
            ("--core-metric-every", args.core_metric_every),
            ("--sample-every", args.sample_every),
        )
        if v != -1
    ]
    if not_done:
        print0(f"Not implemented in this trainer, skipped: {', '.join(not_done)} (validation, CORE metric, sampling)")
    if args.run != "dummy":
        print0(f"No experiment tracker in this trainer: --run {args.run} is recorded in checkpoint meta only")

    peak_name, peak_flops = device_peak_flops(device)
    if args.peak_flops > 0:
        peak_flops = args.peak_flops
    if peak_flops == 0:
        print0(f"bf16 peak FLOPS unknown for {peak_name}: bf16_mfu reads 0 (set --peak-flops)")
    optimizer = model.setup_optimizer(
        args.embedding_lr,
        args.unembedding_lr,
        args.matrix_lr,
        weight_decay=args.weight_decay,
        router_lr=None if args.router_lr < 0 else args.router_lr,
        fused=device_type == "cuda",
    )
    params = [p for p in model.parameters() if p.requires_grad]

    # ---------------------------------------------------------------------------------------
    # data
    if args.data == "parquet":
        try:
            loader = ParquetStream(args.data_dir, args.device_batch_size, args.max_seq_len, device, rank, world_size)
        except (ImportError, OSError, ValueError) as e:  # no pyarrow, unreadable shard, no `text` column
            print0(f"{PROG}: error: --data-dir {args.data_dir}: {e}", file=sys.stderr)
            return 2
    else:
        loader = SyntheticStream(args.vocab_size, args.device_batch_size, args.max_seq_len, device, args.seed, rank)

    # ---------------------------------------------------------------------------------------
    # resume
    start_step = 0
    smooth_loss = 0.0
    prior_training_time = 0.0
    if resume_meta is not None:
        optimizer.load_state_dict(optim_state)
        start_step = int(resume_meta["step"])
        loop = resume_meta.get("loop", {})
        smooth_loss = float(loop.get("smooth_loss", 0.0))
        prior_training_time = float(loop.get("total_training_time", 0.0))
        states = loop.get("loader_states") or []
        if rank < len(states):
            loader.load_state_dict(states[rank])
        else:
            loader.load_state_dict({"batch_index": start_step * grad_accum_steps, "epoch": 0})
        if start_step >= num_iterations:
            print0(f"Checkpoint step {start_step} >= --num-iterations {num_iterations}: nothing to train")

    n_experts = args.n_experts if args.use_moe else 0
    # per-step statistics, accumulated on the device and synced once per step:
    # [ce, bal, dropped, assigned, load_0..load_{E-1}]
    n_stats = 4 + n_experts

    def pack(stats: dict) -> torch.Tensor:
        if n_experts == 0:
            return torch.stack([stats["ce"].float(), *([torch.zeros((), device=device)] * 3)])
        return torch.cat(
            [torch.stack([stats["ce"], stats["bal"], stats["dropped"], stats["assigned"]]).float(), stats["load"].float()]
        )

    def save(step_done: int, last_loss: float, loader_state: dict) -> None:
        loader_states = [loader_state]
        if ddp:
            loader_states = [None] * world_size
            dist.all_gather_object(loader_states, loader_state)
        if is_master:
            meta = {
                "step": step_done,
                "loss": last_loss,
                "config": config.to_dict(),
                "args": vars(args),
                "model_tag": model_tag,
                "world_size": world_size,
                "grad_accum_steps": grad_accum_steps,
                "num_iterations": num_iterations,
                "loop": {
                    "smooth_loss": smooth_loss,
                    "total_training_time": total_training_time,
                    "loader_states": loader_states,
                },
            }
            path = save_checkpoint(ckpt_dir, step_done, model.state_dict(), optimizer.state_dict(), meta)
            print0(f"Saved checkpoint: {path}")

    # ---------------------------------------------------------------------------------------
    # the loop
    ema_beta = 0.9
    total_training_time = prior_training_time
    timed_time, timed_steps = 0.0, 0
    x, y = next(loader)
    loader_state = loader.state_dict()
    graphs_first_step = 0
    for step in range(start_step, num_iterations):
        synchronize(device)
        t0 = time.perf_counter()
        acc = torch.zeros(n_stats, device=device)
        for micro in range(grad_accum_steps):
            with autocast_ctx:
                loss, stats = train_model(x, y)
            (loss / grad_accum_steps).backward()
            acc += pack(stats)
            if micro == grad_accum_steps - 1:
                loader_state = loader.state_dict()  # position after this step's batches
            x, y = next(loader)  # prefetch while the device works
        if ddp:
            allreduce_mean_grads(params, world_size)
            dist.all_reduce(acc, op=dist.ReduceOp.SUM)
        lrm = lr_multiplier(step, num_iterations, args.warmup_ratio, args.warmdown_ratio, args.final_lr_frac)
        for group in optimizer.param_groups:
            group["lr"] = group["initial_lr"] * lrm
        if args.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, args.grad_clip)
        optimizer.step()
        model.zero_grad(set_to_none=True)
        vals = acc.tolist()  # the one host sync of the step
        synchronize(device)
        dt = time.perf_counter() - t0

        n_micro = grad_accum_steps * world_size
        train_loss = vals[0] / n_micro
        smooth_loss = ema_beta * smooth_loss + (1 - ema_beta) * train_loss
        debiased = smooth_loss / (1 - ema_beta ** (step + 1))
        if step - start_step > 10:  # as upstream: the first steps (compilation, warmup) are not timed
            total_training_time += dt
            timed_time += dt
            timed_steps += 1
        tok_per_sec = int(args.total_batch_size / dt)
        mfu = 100 * num_flops_per_token * args.total_batch_size / dt / (peak_flops * world_size) if peak_flops else 0.0
        pct = 100 * step / num_iterations
        bal_str = f" | bal: {vals[1] / n_micro:.4f}" if args.use_moe else ""
        eta_str = ""
        if timed_steps > 0:
            eta_str = f" | eta: {(num_iterations - step) * timed_time / timed_steps / 60:.1f}m"
        drop_frac = vals[2] / vals[3] if args.use_moe and vals[3] > 0 else 0.0
        drop_str = f" | drop: {100 * drop_frac:.2f}%" if fixed_capacity else ""
        print0(
            f"step {step:05d}/{num_iterations:05d} ({pct:.2f}%) | loss: {debiased:.6f}{bal_str} | lrm: {lrm:.2f} | "
            f"dt: {dt * 1000:.2f}ms | tok/sec: {tok_per_sec:,} | bf16_mfu: {mfu:.2f} | epoch: {loader.epoch} | "
            f"total time: {total_training_time / 60:.2f}m{eta_str}{drop_str}"
        )
        if args.use_moe and args.moe_log_every > 0 and step % args.moe_log_every == 0:
            load = vals[4:]
            total = sum(load) or 1.0
            print0(
                f"moe step {step:05d} | drop: {100 * drop_frac:.2f}% | "
                f"load: {','.join(f'{v / total:.3f}' for v in load)} | bal: {vals[1] / n_micro:.4f}"
            )
        if step == start_step:
            graphs_first_step = compiled_graphs()
        step_done = step + 1
        at_end = step_done == num_iterations and args.save_every != 0
        if at_end or (args.save_every > 0 and step_done % args.save_every == 0):
            save(step_done, train_loss, loader_state)

    if mode != "none":
        recompiles = compiled_graphs() - graphs_first_step
        print0(f"torch.compile: {graphs_first_step} graph(s) in the first step, {recompiles} recompile(s) after it")
    print0(f"Peak memory usage: {peak_memory_mib(device):.2f}MiB")
    print0(f"Total training time: {total_training_time / 60:.2f}m")
    return 0


if __name__ == "__main__":
    # as a process of its own (torchrun's worker): die with torchrun, end quietly on SIGTERM
    set_pdeathsig()
    install_sigterm_exit()
    sys.exit(main())
