"""A stand-in for nanochat.base_train for the runner's tests: no torch, real log lines, on demand
slow, failing, deaf to SIGTERM, or with a grandchild process.

    torchrun --standalone --nproc_per_node=2 -m tests.fake_trainer -- --num-iterations 20 ...

Rank 0 prints the trainer's step lines and final lines; other ranks only sleep along. An unknown
flag fails as the real trainer does (argparse error, exit 2), which torchrun reports as a failure.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--run", default="dummy")
    p.add_argument("--model-tag", default="fake")
    p.add_argument("--checkpoint-root", default=None)
    p.add_argument("--num-iterations", type=int, default=10)
    p.add_argument("--step-sleep", type=float, default=0.05)
    p.add_argument("--fail-at-step", type=int, default=-1)
    p.add_argument("--ignore-sigterm", action="store_true", help="workers ignore SIGTERM (forces SIGKILL)")
    p.add_argument("--spawn-child", action="store_true", help="each worker starts a sleeping grandchild")
    p.add_argument("--line-bytes", type=int, default=0, help="pad each step line's extra field to this size")
    p.add_argument("--progress-file", default=None, help="rank 0 records '<last step> <bytes written>' here")
    p.add_argument(
        "--wait-for", default=None, help="every rank waits (up to 120 s) for this path before step 0"
    )
    p.add_argument(
        "--echo-env", default="", help="rank 0 first prints 'env NAME=value' for each NAME (a,b,c)"
    )
    args = p.parse_args()

    rank = int(os.environ.get("RANK", "0"))
    if args.ignore_sigterm:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    child = None
    if args.spawn_child:
        child = subprocess.Popen(
            [sys.executable, "-c", "import time; time.sleep(600)"], start_new_session=True
        )
    if args.progress_file and rank == 0:
        os.makedirs(os.path.dirname(os.path.abspath(args.progress_file)), exist_ok=True)
    if rank == 0:
        for name in filter(None, args.echo_env.split(",")):
            print(f"env {name}={os.environ.get(name, '<unset>')}", flush=True)
    if args.wait_for:
        deadline = time.time() + 120
        while not os.path.exists(args.wait_for) and time.time() < deadline:
            time.sleep(0.05)
    n = args.num_iterations
    t0 = time.time()
    written = 0
    for step in range(n):
        time.sleep(args.step_sleep)
        if step == args.fail_at_step:
            raise RuntimeError(f"fake failure at step {step}")
        if rank == 0:
            dt_ms = args.step_sleep * 1000.0
            pad = f" | pad: {'x' * args.line_bytes}" if args.line_bytes else ""
            eta = f" | eta: {(n - step - 1) * args.step_sleep / 60:.1f}m" if step >= 11 else ""
            line = (
                f"step {step:05d}/{n:05d} ({100 * step / n:.2f}%) | loss: {10 - step * 0.01:.6f} | lrm: 1.00 | "
                f"dt: {dt_ms:.2f}ms | tok/sec: {int(1024 / args.step_sleep):,} | bf16_mfu: 1.00 | epoch: 0 | "
                f"total time: {(time.time() - t0) / 60:.2f}m{eta}{pad}\n"
            )
            sys.stdout.write(line)
            sys.stdout.flush()  # the line is in the kernel (the log file) from here on
            written += len(line.encode())
            if args.progress_file:  # the soak's witness: what the log must hold, whatever kills us next
                tmp = f"{args.progress_file}.tmp"
                with open(tmp, "w") as f:
                    f.write(f"{step} {written}\n")
                os.replace(tmp, args.progress_file)
    if args.checkpoint_root and rank == 0:
        os.makedirs(args.checkpoint_root, exist_ok=True)
        with open(os.path.join(args.checkpoint_root, f"{args.model_tag}.done"), "w") as f:
            f.write("ok\n")
    if rank == 0:
        print("Peak memory usage: 0.00MiB", flush=True)
        print(f"Total training time: {(time.time() - t0) / 60:.2f}m", flush=True)
    if child is not None:
        child.kill()
        child.wait()


if __name__ == "__main__":
    main()
