"""
Pretrain the nanochat GPT (dense or Mixture-of-Experts) on one process or under torchrun:

    torchrun --standalone --nproc_per_node=8 -m nanochat.base_train -- --depth 12 --use-moe ...
    python -m nanochat.base_train --device-type cpu --depth 2 ...          # one process

It takes every flag of the fork's ablation runs (its base_train) with the same meaning, trains with upstream
nanochat's recipe (BPE-tokenized parquet shards packed best-fit, Muon for the matrices and AdamW
for the embeddings, warmup/warmdown schedule, validation bits per byte) or on a synthetic stream,
and prints upstream nanochat's log lines (the cockpit parses them; see README.md):

    step 00042/00280 (15.00%) | loss: 6.123456 | bal: 24.0123 | lrm: 1.00 | dt: 650.67ms | ...
    moe step 00042 | drop: 1.20% | load: 0.131,0.122,... | bal: 24.0123
    Step 00250 | Validation bpb: 0.812345
    Peak memory usage: 18987.83MiB
    Total training time: 2.97m
    Minimum validation bpb: 0.801234
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib.util
import math
import os
import sys
import time

import torch
import torch.distributed as dist

from nanochat import fp8 as fp8_lib
from nanochat import moe as moe_lib
from nanochat import recipe
from nanochat import tracker as tr
from nanochat.checkpoint import (
    CheckpointError,
    checkpoint_dir,
    checkpoint_paths,
    load_checkpoint,
    save_checkpoint,
)
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
from nanochat.data import DEFAULT_DATA_DIR, BestFitLoader, DataDirError, SyntheticStream, split_files
from nanochat.gpt import GPT, GPTConfig, config_flops, model_dims
from nanochat.loss_eval import evaluate_bpb
from nanochat.tokenizer import DEFAULT_TOKENIZER_DIR, Tokenizer, TokenizerError

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
    p.add_argument("--run", type=str, default="dummy", help="wandb run name ('dummy': no experiment tracker)")
    p.add_argument(
        "--wandb-log-every",
        type=int,
        default=100,
        help="log the step series to wandb every N steps (and the last)",
    )
    p.add_argument("--device-type", type=str, default="", help="cuda|cpu|mps; empty = autodetect")
    p.add_argument("--seed", type=int, default=42)
    # model
    p.add_argument("--depth", type=int, default=12, help="number of transformer layers")
    p.add_argument("--aspect-ratio", type=int, default=64, help="model_dim = depth * aspect_ratio")
    p.add_argument("--head-dim", type=int, default=128)
    p.add_argument("--max-seq-len", type=int, default=2048)
    p.add_argument("--window-pattern", type=str, default="SSSL",
                   help="attention window per layer, tiled (L = full context, S = half); the last layer is L")  # fmt: skip
    p.add_argument(
        "--vocab-size",
        type=int,
        default=None,
        help="--data synthetic only (default 32768); parquet: the tokenizer's",
    )
    # mixture of experts
    p.add_argument("--use-moe", action="store_true", help="MoE block instead of the MLP")
    p.add_argument("--n-experts", type=int, default=8)
    p.add_argument("--expert-topk", type=int, default=2)
    p.add_argument("--moe-freq", type=int, default=1, help="MoE in every moe_freq-th layer")
    p.add_argument("--expert-hidden-mult", type=float, default=4.0, help="expert hidden = mult x model_dim")
    p.add_argument(
        "--balance-loss-coeff", type=float, default=0.01, help="x the balance losses summed over MoE layers"
    )
    p.add_argument("--moe-capacity-factor", type=float, default=0.0, help="0 = dropless; >0 = fixed capacity")
    p.add_argument("--moe-drop-order", choices=moe_lib.DROP_ORDERS, default="token",
                   help="which assignments a full expert drops: token = the batch's last tokens (the fork's), "
                        "choice = second choices first")  # fmt: skip
    p.add_argument("--moe-log-every", type=int, default=10, help="routing line every N steps; -1 = never")
    # precision / compile
    p.add_argument("--fp8", action="store_true", help="FP8 matmuls for the linear layers (nanochat/fp8.py)")
    p.add_argument("--fp8-include-moe-experts", action="store_true", help="FP8 for the expert matmuls too")
    p.add_argument("--compile-mode", choices=["auto", "static", "dynamic", "none"], default="auto")
    p.add_argument(
        "--compile-backend", type=str, default="inductor", help="torch.compile backend (tests: aot_eager)"
    )
    # batch / schedule
    p.add_argument("--device-batch-size", type=int, default=16, help="sequences per rank per micro-step")
    p.add_argument("--total-batch-size", type=int, default=-1,
                   help="tokens per optimizer step; -1 = from the training horizon (2^19 at d12, x (D/D_d12)^0.383)")  # fmt: skip
    p.add_argument(
        "--num-iterations",
        type=int,
        default=-1,
        help="-1 = from --target-flops, else --target-param-data-ratio",
    )
    p.add_argument(
        "--target-flops", type=float, default=-1.0, help="steps to spend this many FLOPs; -1 = not used"
    )
    p.add_argument(
        "--target-param-data-ratio", type=float, default=10.5, help="training tokens per scaling parameter"
    )
    # every lr below is multiplied by sqrt(total batch / 2^19), as the fork's
    p.add_argument(
        "--embedding-lr",
        type=float,
        default=0.3,
        help="AdamW, token and value embeddings (x 1/sqrt(width/768))",
    )
    p.add_argument("--unembedding-lr", type=float, default=0.004, help="AdamW, lm_head (x 1/sqrt(width/768))")
    p.add_argument("--matrix-lr", type=float, default=0.02, help="Muon, every matrix in the blocks")
    p.add_argument("--router-lr", type=float, default=-1.0, help="Muon, MoE routers; -1 = --matrix-lr")
    p.add_argument("--scalar-lr", type=float, default=0.5, help="AdamW, x0_lambdas (resid_lambdas: x 0.01)")
    p.add_argument("--weight-decay", type=float, default=0.2,
                   help="Muon's cautious weight decay at d12 and batch 2^19 (scaled as the fork's), falls linearly to 0")  # fmt: skip
    p.add_argument(
        "--grad-clip", type=float, default=0.0, help="clip the global gradient norm; 0 = no clipping"
    )
    p.add_argument(
        "--warmup-ratio", type=float, default=0.0, help="fraction of steps with lr rising linearly"
    )
    p.add_argument(
        "--warmdown-ratio", type=float, default=0.5, help="fraction of steps with lr falling linearly"
    )
    p.add_argument(
        "--final-lr-frac", type=float, default=0.0, help="lr at the end, as a fraction of the peak"
    )
    # data
    p.add_argument("--data", choices=["synthetic", "parquet"], default="synthetic")
    p.add_argument("--data-dir", type=str, default="", help=f"parquet shards; default {DEFAULT_DATA_DIR}")
    p.add_argument(
        "--tokenizer-dir",
        type=str,
        default="",
        help=f"tokenizer.pkl + token_bytes.pt; default {DEFAULT_TOKENIZER_DIR}",
    )
    p.add_argument("--eval-tokens", type=int, default=40 * 524288, help="validation tokens per evaluation")
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
    need(
        args.head_dim >= 2 and args.head_dim % 2 == 0,
        f"--head-dim must be even and >= 2 (got {args.head_dim})",
    )
    need(args.max_seq_len >= 1, f"--max-seq-len must be >= 1 (got {args.max_seq_len})")
    need(
        args.window_pattern != "" and not set(args.window_pattern.upper()) - {"S", "L"},
        f"--window-pattern must be letters S (half context) and L (full context) (got {args.window_pattern!r})",
    )
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
    need(args.wandb_log_every >= 1, f"--wandb-log-every must be >= 1 (got {args.wandb_log_every})")
    need(args.num_iterations == -1 or args.num_iterations >= 1, "--num-iterations must be >= 1 or -1")
    need(args.target_param_data_ratio > 0, "--target-param-data-ratio must be > 0")
    need(args.target_flops == -1 or args.target_flops > 0, "--target-flops must be > 0 or -1")
    need(args.save_every >= -1, "--save-every must be >= 1, -1 (only at the end) or 0 (never)")
    for name in ("eval_every", "core_metric_every", "sample_every"):
        v = getattr(args, name)
        need(v == -1 or v >= 1, f"--{name.replace('_', '-')} must be >= 1 or -1 (got {v})")
    for name in ("embedding_lr", "unembedding_lr", "matrix_lr", "scalar_lr", "weight_decay", "grad_clip", "peak_flops",
                 "final_lr_frac"):  # fmt: skip
        need(getattr(args, name) >= 0, f"--{name.replace('_', '-')} must be >= 0")
    need(
        0 <= args.warmup_ratio <= 1 and 0 <= args.warmdown_ratio <= 1,
        "--warmup/warmdown-ratio must be in [0, 1]",
    )
    need(args.warmup_ratio + args.warmdown_ratio <= 1, "--warmup-ratio + --warmdown-ratio must be <= 1")
    need(
        args.device_type in ("", "cuda", "cpu", "mps"),
        f"--device-type must be cuda, cpu or mps (got {args.device_type!r})",
    )
    if args.fp8_include_moe_experts:
        need(args.fp8, "--fp8-include-moe-experts needs --fp8")
        need(args.use_moe, "--fp8-include-moe-experts needs --use-moe")
    need(
        args.model_tag == "" or "/" not in args.model_tag,
        f"--model-tag must not contain '/' (got {args.model_tag!r})",
    )
    if args.total_batch_size != -1:
        check_batch(args.total_batch_size, args, world_size, "--total-batch-size")
    need(args.eval_tokens >= 1, f"--eval-tokens must be >= 1 (got {args.eval_tokens})")
    if args.data == "parquet":
        need(
            args.vocab_size is None,
            "--vocab-size is for --data synthetic; with parquet data the tokenizer gives the vocab",
        )
        for module in ("pyarrow", "tiktoken"):
            need(
                importlib.util.find_spec(module) is not None,
                f"--data parquet needs {module}: pip install -e '.[train]'",
            )
        split_files(
            args.data_dir or DEFAULT_DATA_DIR, "train"
        )  # DataDirError: one line saying how to make it
    else:
        need(
            args.vocab_size is None or args.vocab_size >= 2,
            f"--vocab-size must be >= 2 (got {args.vocab_size})",
        )
        need(
            not args.data_dir and not args.tokenizer_dir,
            "--data-dir and --tokenizer-dir are only used with --data parquet",
        )
        need(
            args.eval_every == -1,
            "--eval-every needs --data parquet: bits per byte needs a tokenizer's token bytes",
        )


def check_batch(total: int, args: argparse.Namespace, world_size: int, what: str) -> None:
    """A total batch must be whole micro-batches of every rank (UsageError naming `what` if not)."""
    tokens_per_fwdbwd = args.device_batch_size * args.max_seq_len * world_size
    if total < 1 or total % tokens_per_fwdbwd:
        raise UsageError(
            f"{what} {total} is not a multiple of device_batch_size * max_seq_len * world_size = "
            f"{args.device_batch_size} * {args.max_seq_len} * {world_size} = {tokens_per_fwdbwd}"
        )


def lr_multiplier(
    step: int, num_iterations: int, warmup_ratio: float, warmdown_ratio: float, final_frac: float
) -> float:
    """Upstream nanochat's schedule: linear warmup, flat, linear warmdown to final_frac."""
    warmup = round(warmup_ratio * num_iterations)
    warmdown = round(warmdown_ratio * num_iterations)
    if step < warmup:
        return (step + 1) / warmup
    if step <= num_iterations - warmdown:
        return 1.0
    progress = (num_iterations - step) / warmdown
    return progress + (1 - progress) * final_frac


def muon_momentum(step: int) -> float:
    """Muon's momentum warms up from 0.85 to 0.95 over the first 300 steps (the fork's schedule)."""
    frac = min(step / 300, 1.0)
    return 0.85 + frac * (0.95 - 0.85)


def muon_weight_decay(step: int, num_iterations: int, weight_decay: float) -> float:
    """Muon's weight decay falls linearly to 0 at the last step (the fork's schedule)."""
    return weight_decay * (1 - step / num_iterations)


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
            rank = int(os.environ.get("RANK", "0"))
            paths = checkpoint_paths(checkpoint_dir(args.checkpoint_root, tag), args.resume_from_step, rank)
            for key in ("model", "meta", "optim"):
                if not paths[key].is_file():
                    raise UsageError(
                        f"--resume-from-step {args.resume_from_step}: no checkpoint file {paths[key]}"
                    )
        tokenizer = None
        if args.data == "parquet":
            tokenizer = Tokenizer.from_dir(args.tokenizer_dir or DEFAULT_TOKENIZER_DIR)
    except (UsageError, DataDirError, TokenizerError) as e:
        if is_rank0():
            print(f"{PROG}: error: {e}", file=sys.stderr, flush=True)
        return 2
    try:
        return train(args, tokenizer)
    except (
        UsageError,
        DataDirError,
    ) as e:  # a derived value, or a shard, found bad once training has started
        if is_rank0():
            print(f"{PROG}: error: {e}", file=sys.stderr, flush=True)
        return 2
    except CheckpointError as e:  # each rank says its own: a rank's optimizer file is its own
        print(f"{PROG}: error: {e}", file=sys.stderr, flush=True)
        return e.exit_code
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


def train(args: argparse.Namespace, tokenizer: Tokenizer | None) -> int:
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
        torch.autocast(device_type="cuda", dtype=torch.bfloat16)
        if device_type == "cuda"
        else contextlib.nullcontext()
    )
    compute_dtype = torch.bfloat16 if device_type == "cuda" else torch.float32

    # ---------------------------------------------------------------------------------------
    # data source and vocab: the tokenizer's with parquet shards, --vocab-size with synthetic data
    if tokenizer is not None:
        vocab_size = tokenizer.vocab_size
        data_dir = args.data_dir or DEFAULT_DATA_DIR
        n_train = len(split_files(data_dir, "train"))
        print0(f"Data: parquet {data_dir} ({n_train} training shard(s) + 1 validation shard), "
               f"tokenizer {args.tokenizer_dir or DEFAULT_TOKENIZER_DIR}, BOS-aligned best-fit rows")  # fmt: skip
    else:
        vocab_size = args.vocab_size or 32768
        print0(f"Data: synthetic (a learnable Markov stream, seed {args.seed})")
    print0(f"Vocab size: {vocab_size:,}")

    # ---------------------------------------------------------------------------------------
    # model
    model_dim, n_head = model_dims(args.depth, args.aspect_ratio, args.head_dim)
    config = GPTConfig(
        sequence_len=args.max_seq_len,
        vocab_size=vocab_size,
        n_layer=args.depth,
        n_head=n_head,
        n_embd=model_dim,
        window_pattern=args.window_pattern.upper(),
        use_moe=args.use_moe,
        n_experts=args.n_experts,
        expert_topk=args.expert_topk,
        moe_freq=args.moe_freq,
        expert_hidden_mult=args.expert_hidden_mult,
        moe_capacity_factor=args.moe_capacity_factor,
        balance_loss_coeff=args.balance_loss_coeff,
        moe_drop_order=args.moe_drop_order,
    )
    # batch, horizon, lr and weight decay scaling (nanochat/recipe.py): from the config alone
    plan = recipe.derive(
        config,
        recipe.reference_config(config, args.aspect_ratio, args.head_dim),
        config_flops(config),
        total_batch_size=args.total_batch_size,
        num_iterations=args.num_iterations,
        target_flops=args.target_flops,
        param_data_ratio=args.target_param_data_ratio,
        weight_decay=args.weight_decay,
    )
    for note in plan.notes:
        print0(note)
    total_batch_size, num_iterations = plan.total_batch_size, plan.num_iterations
    check_batch(total_batch_size, args, world_size, "--total-batch-size -1: the derived batch")
    model_tag = args.model_tag or default_model_tag(args)
    ckpt_dir = checkpoint_dir(args.checkpoint_root, model_tag)
    print0(f"Checkpoint dir: {ckpt_dir}")
    with torch.device(device):
        model = GPT(config)
    torch.manual_seed(args.seed)  # same init on every rank; with the fork's seed, the fork's weights
    model.init_weights()
    num_params = sum(p.numel() for p in model.parameters())
    print0(
        f"Model: depth {config.n_layer}, width {config.n_embd}, heads {config.n_head}, "
        f"seq {config.sequence_len}, vocab {config.vocab_size}, params {num_params:,}, "
        f"windows {''.join('L' if w >= config.sequence_len else 'S' for w in model.windows)}"
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
        model_state, optim_state, resume_meta = load_checkpoint(ckpt_dir, args.resume_from_step, device, rank)
        msg = None
        if resume_meta.get("config") != config.to_dict():
            msg = f"checkpoint {ckpt_dir} step {args.resume_from_step} has another model config"
        elif resume_meta.get("world_size", world_size) != world_size:
            msg = (f"checkpoint {ckpt_dir} step {args.resume_from_step} was written by {resume_meta['world_size']} "
                   f"rank(s) (each holds its share of Muon's state): resume with {resume_meta['world_size']}")  # fmt: skip
        if msg:
            print0(f"{PROG}: error: {msg}", file=sys.stderr)
            return 2
        model.load_state_dict(model_state)
        print0(f"Resumed model from {ckpt_dir} step {args.resume_from_step}")

    if args.fp8:
        info = fp8_lib.convert_to_fp8(model, include_experts=args.fp8_include_moe_experts)
        print0(info["log_line"])

    # torch.compile. Every shape here is static: the batch is fixed, a fixed capacity gives static
    # expert buffers, and dropless keeps k*T rows in one grouped matmul (only the group offsets,
    # values on the device, change). So `auto` is static; `dynamic` stays for experiments.
    mode = args.compile_mode
    if mode == "auto":
        mode = "static"
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
    grad_accum_steps = total_batch_size // tokens_per_fwdbwd
    print0(
        f"Tokens / micro-batch / rank: {args.device_batch_size} x {args.max_seq_len} = {args.device_batch_size * args.max_seq_len:,}"
    )
    print0(f"Tokens / micro-batch: {tokens_per_fwdbwd:,}")
    print0(f"Total batch size {total_batch_size:,} => gradient accumulation steps: {grad_accum_steps}")
    not_done = [
        f"{flag} {v}"
        for flag, v in (
            ("--core-metric-every", args.core_metric_every),
            ("--sample-every", args.sample_every),
        )
        if v != -1
    ]
    if not_done:
        print0(f"Not implemented in this trainer, skipped: {', '.join(not_done)} (CORE metric, sampling)")

    peak_name, peak_flops = device_peak_flops(device)
    if args.peak_flops > 0:
        peak_flops = args.peak_flops
        print0(f"bf16 peak FLOPS per device: {peak_flops:.3e} (--peak-flops)")
    elif peak_flops > 0:
        print0(f"GPU: {peak_name} | bf16 peak FLOPS: {peak_flops:.3e}")
    elif device.type == "cuda":
        print0(f"GPU: {peak_name} is not in the bf16 peak FLOPS table: bf16_mfu reads 0; "
               f"pass --peak-flops <bf16 dense FLOPS per GPU> to measure MFU")  # fmt: skip
    else:
        print0(f"bf16_mfu reads 0 on {device.type} (no peak FLOPS for it; --peak-flops sets one)")
    lr_scale = plan.lr_scale
    optimizer = model.setup_optimizer(
        args.embedding_lr * lr_scale,
        args.unembedding_lr * lr_scale,
        args.matrix_lr * lr_scale,
        weight_decay=plan.weight_decay,
        router_lr=None if args.router_lr < 0 else args.router_lr * lr_scale,
        rank=rank,
        world_size=world_size,
        max_grad_norm=args.grad_clip,
        scalar_lr=args.scalar_lr * lr_scale,
        compile_backend=None if mode == "none" else args.compile_backend,  # the step compiled as the fork's
    )
    print0(f"Optimizer: {optimizer.describe()}")

    # ---------------------------------------------------------------------------------------
    # data
    if tokenizer is not None:
        loader = BestFitLoader(tokenizer, data_dir, "train", args.device_batch_size, args.max_seq_len, device,
                               rank, world_size)  # fmt: skip
    else:
        loader = SyntheticStream(
            vocab_size, args.device_batch_size, args.max_seq_len, device, args.seed, rank
        )

    # validation: the same rows every time, read once (eval_tokens over all ranks)
    eval_steps = max(1, args.eval_tokens // tokens_per_fwdbwd)
    val_batches: list[tuple[torch.Tensor, torch.Tensor]] = []

    def validation_bpb() -> float:
        if not val_batches:
            val_loader = BestFitLoader(tokenizer, data_dir, "val", args.device_batch_size, args.max_seq_len, device,
                                       rank, world_size)  # fmt: skip
            val_batches.extend(next(val_loader) for _ in range(eval_steps))
        with fp8_lib.high_precision():  # as the fork: validation without FP8 (a no-op without --fp8)
            return evaluate_bpb(train_model, val_batches, token_bytes, autocast_ctx)

    if args.eval_every > 0:
        token_bytes = tokenizer.token_bytes.to(device)
        print0(
            f"Validation: {eval_steps} x {tokens_per_fwdbwd:,} tokens every {args.eval_every} steps and at the end"
        )

    # ---------------------------------------------------------------------------------------
    # resume
    start_step = 0
    smooth_loss = 0.0
    prior_training_time = 0.0
    min_val_bpb, val_bpb = float("inf"), None
    if resume_meta is not None:
        optimizer.load_state_dict(optim_state)
        start_step = int(resume_meta["step"])
        loop = resume_meta.get("loop", {})
        smooth_loss = float(loop.get("smooth_loss", 0.0))
        prior_training_time = float(loop.get("total_training_time", 0.0))
        min_val_bpb = float(loop.get("min_val_bpb", float("inf")))
        val_bpb = loop.get("val_bpb")
        states = loop.get("loader_states") or []
        if rank < len(states):
            loader.load_state_dict(states[rank])
        elif tokenizer is None:  # synthetic batches are a function of their index
            loader.load_state_dict({"batch_index": start_step * grad_accum_steps, "epoch": 0})
        else:
            print0(
                f"{PROG}: error: checkpoint {ckpt_dir} step {start_step} has no data position",
                file=sys.stderr,
            )
            return 2
        if start_step >= num_iterations:
            print0(f"Checkpoint step {start_step} >= --num-iterations {num_iterations}: nothing to train")

    # the tracker starts once nothing above can refuse the run (rank 0, a named run; else it does nothing)
    tracker = tr.open_tracker(args.run, vars(args).copy(), is_master)

    n_experts = args.n_experts if args.use_moe else 0
    # per-step statistics, accumulated on the device and synced once per step:
    # [ce, bal, dropped, assigned, load_0..load_{E-1}]
    n_stats = 4 + n_experts

    def pack(stats: dict) -> torch.Tensor:
        if n_experts == 0:
            return torch.stack([stats["ce"].float(), *([torch.zeros((), device=device)] * 3)])
        return torch.cat(
            [
                torch.stack([stats["ce"], stats["bal"], stats["dropped"], stats["assigned"]]).float(),
                stats["load"].float(),
            ]
        )

    def save(step_done: int, last_loss: float, loader_state: dict) -> None:
        loader_states = [loader_state]
        if ddp:
            loader_states = [None] * world_size
            dist.all_gather_object(loader_states, loader_state)
        meta = None
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
                    "min_val_bpb": min_val_bpb,
                    "val_bpb": val_bpb,
                },
            }
        path = save_checkpoint(ckpt_dir, step_done, model.state_dict(), optimizer.state_dict(),
                               meta if is_master else None, rank, barrier=dist.barrier if ddp else None)  # fmt: skip
        print0(f"Saved checkpoint: {path}")

    # ---------------------------------------------------------------------------------------
    # the loop: step counts finished optimizer steps; the last pass only evaluates and saves
    ema_beta = 0.9
    total_training_time = prior_training_time
    timed_time, timed_steps = 0.0, 0
    x, y = next(loader)
    loader_state = loader.state_dict()
    train_loss = float("nan")
    graphs_first_step = model_graphs = 0  # all graphs after the first step; the model's alone
    for step in range(start_step, num_iterations + 1):
        last_step = step == num_iterations
        if args.eval_every > 0 and (last_step or step % args.eval_every == 0):
            val_bpb = validation_bpb()
            min_val_bpb = min(min_val_bpb, val_bpb)
            print0(f"Step {step:05d} | Validation bpb: {val_bpb:.6f}")
            tracker.log({tr.TOTAL_TIME: total_training_time, tr.VAL_BPB: val_bpb}, step)
        if (
            step > start_step
            and args.save_every != 0
            and (last_step or (args.save_every > 0 and step % args.save_every == 0))
        ):
            gc.collect()  # the collector is off during training (below): collect at checkpoints
            save(step, train_loss, loader_state)
        if last_step:
            break

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
            dist.all_reduce(acc, op=dist.ReduceOp.SUM)
        if step == start_step:
            model_graphs = compiled_graphs()  # before the optimizer's own graphs
        lrm = lr_multiplier(step, num_iterations, args.warmup_ratio, args.warmdown_ratio, args.final_lr_frac)
        for group in optimizer.param_groups:
            group["lr"] = group["initial_lr"] * lrm
            if group["kind"] == "muon":
                group["momentum"] = muon_momentum(step)
                group["weight_decay"] = muon_weight_decay(step, num_iterations, plan.weight_decay)
        optimizer.step()  # averages the gradients over ranks itself (nanochat/muon.py)
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
        tok_per_sec = int(total_batch_size / dt)
        mfu = (
            100 * num_flops_per_token * total_batch_size / dt / (peak_flops * world_size)
            if peak_flops
            else 0.0
        )
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
        if step % args.wandb_log_every == 0 or step == num_iterations - 1:
            # the step line's figures, in upstream's keys and units (tracker.py)
            series = {tr.LOSS: debiased, tr.LRM: lrm, tr.DT: dt, tr.TOK_PER_SEC: tok_per_sec, tr.MFU: mfu,
                      tr.TOTAL_TIME: total_training_time}  # fmt: skip
            if args.use_moe:
                series[tr.BAL] = vals[1] / n_micro
            if fixed_capacity:
                series[tr.DROP_PCT] = 100 * drop_frac
            tracker.log(series, step)
        if args.use_moe and args.moe_log_every > 0 and step % args.moe_log_every == 0:
            load = vals[4:]
            total = sum(load) or 1.0
            print0(
                f"moe step {step:05d} | drop: {100 * drop_frac:.2f}% | "
                f"load: {','.join(f'{v / total:.3f}' for v in load)} | bal: {vals[1] / n_micro:.4f}"
            )
        if step == start_step:
            graphs_first_step = compiled_graphs()
            # Python's cycle collector stalls a step now and then (hundreds of ms at this heap
            # size) to find almost nothing: collect the setup's garbage once, freeze what
            # survives out of its sight, and switch it off (collected at checkpoints and every
            # 5000 steps), as upstream.
            gc.collect()
            gc.freeze()
            gc.disable()
        elif (step + 1) % 5000 == 0:
            gc.collect()

    if mode != "none":
        recompiles = compiled_graphs() - graphs_first_step
        print0(f"torch.compile: {model_graphs} graph(s) in the first step, {recompiles} recompile(s) after it | "
               f"optimizer: {graphs_first_step - model_graphs} graph(s), one per shape")  # fmt: skip
    print0(f"Peak memory usage: {peak_memory_mib(device):.2f}MiB")
    print0(f"Total training time: {total_training_time / 60:.2f}m")
    if val_bpb is not None:
        print0(f"Minimum validation bpb: {min_val_bpb:.6f}")
    tracker.finish()
    return 0


if __name__ == "__main__":
    # as a process of its own (torchrun's worker): die with torchrun, end quietly on SIGTERM
    set_pdeathsig()
    install_sigterm_exit()
    sys.exit(main())
