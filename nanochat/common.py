"""
Process plumbing shared by the trainer and the benchmarks: the torchrun environment, the process
group (nccl on CUDA, gloo on CPU), rank-0 printing, worker death with torchrun, and the bf16 peak
FLOPS table that MFU is measured against.
"""

from __future__ import annotations

import ctypes
import os
import resource
import signal
import sys
import time

import torch
import torch.distributed as dist

# ---------------------------------------------------------------------------------------------
# printing


def is_rank0() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def print0(*args, **kwargs) -> None:
    """Print on rank 0 only, flushed at once: the log is a file that the cockpit follows live."""
    if is_rank0():
        print(*args, **kwargs, flush=True)


# ---------------------------------------------------------------------------------------------
# process lifetime


def set_pdeathsig(sig: int = signal.SIGTERM) -> bool:
    """Ask Linux to send `sig` to this process when its parent (torchrun) dies.

    torchrun's workers run in their own sessions, so a SIGKILL of torchrun alone would leave them
    running and holding the GPUs. With PR_SET_PDEATHSIG the kernel ends them for us.
    Returns False where prctl is not available (not Linux).
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
    except OSError:
        return False
    PR_SET_PDEATHSIG = 1
    if libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
        return False
    # the parent may have died between our fork and the prctl call: then we are already orphaned
    if os.getppid() == 1:
        os.kill(os.getpid(), sig)
    return True


def install_sigterm_exit() -> None:
    """SIGTERM (from the cockpit's stop, from torchrun, or from the parent-death signal) ends the
    worker at once with the conventional exit status 128+15, without a traceback."""

    def _handler(signum, frame):  # noqa: ARG001
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(128 + signum)

    signal.signal(signal.SIGTERM, _handler)


# ---------------------------------------------------------------------------------------------
# devices and the process group


def autodetect_device_type() -> str:
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def get_dist_info() -> tuple[bool, int, int, int]:
    """(is_distributed, rank, local_rank, world_size) from torchrun's environment."""
    if all(k in os.environ for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE")):
        return True, int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"]), int(os.environ["WORLD_SIZE"])
    return False, 0, 0, 1


def compute_init(device_type: str) -> tuple[bool, int, int, int, torch.device]:
    """Set up the device and, under torchrun, the process group. Returns
    (ddp, rank, local_rank, world_size, device)."""
    ddp, rank, local_rank, world_size = get_dist_info()
    if device_type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("--device-type cuda but torch sees no CUDA device")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    elif device_type == "mps":
        device = torch.device("mps")
    else:
        device = torch.device("cpu")
    if ddp and world_size > 1:
        backend = "nccl" if device_type == "cuda" else "gloo"
        if device_type == "cuda":
            dist.init_process_group(backend=backend, device_id=device)
        else:
            dist.init_process_group(backend=backend)
        dist.barrier()
    return ddp and world_size > 1, rank, local_rank, world_size, device


def let_go(sent: list[torch.Tensor], timeout_s: float = 10.0) -> None:
    """Return once no collective's thread still holds one of `sent` (each held here once, no
    view of it made yet, its Work dropped), the GIL yielded meanwhile. gloo's worker thread lets
    go of a collective's tensors a moment after wait() returns, and letting go of a tensor Python
    made needs the GIL. When that moment falls after the interpreter began to finalize (a step a
    few milliseconds before exit), the thread cannot have it and torch aborts the process
    (SIGABRT, "terminate called without an active exception") after a run that finished: seen in
    about 1 two-rank run of 15 here (nanochat/muon.py's all-gathers). Usually it has let go
    already; else within a few yields. CPU tensors only: NCCL keeps its tensors until the GPU is
    done with them, and waiting for that would stall the step."""
    sent = [t for t in sent if not t.is_cuda]
    deadline = time.monotonic() + timeout_s
    while any(t._use_count() > 1 for t in sent) and time.monotonic() < deadline:
        time.sleep(0)


def wait_and_let_go(works: list[dist.Work], sent: list[torch.Tensor]) -> None:
    """Wait for every collective in `works` (emptied: a waited Work still holds its tensors),
    then for their threads to let go of `sent`, the tensors handed to them (let_go)."""
    while works:
        works.pop().wait()
    let_go(sent)


def compute_cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def peak_memory_mib(device: torch.device) -> float:
    """CUDA max allocated on a GPU; the process's peak resident set size elsewhere."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 1024**2
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return rss / 1024**2 if sys.platform == "darwin" else rss / 1024


# ---------------------------------------------------------------------------------------------
# peak bf16 FLOPS (dense, no sparsity), per GPU; the denominator of MFU

# Matched as case-insensitive substrings of torch.cuda.get_device_name(), first match wins, so
# each variant comes before the names it contains ("H200 NVL" before "H200" before "H20").
PEAK_BF16_FLOPS: list[tuple[str, float]] = [
    ("GH200", 989e12),
    ("H200 NVL", 836e12),  # the PCIe/NVL card: lower clocks and power than the SXM module
    ("H200", 989e12),  # SXM
    ("H100 NVL", 835e12),
    ("H100 PCIe", 756e12),
    ("H100", 989e12),  # SXM
    ("H800", 756e12),  # the export H100 (SXM): what the fork's logged MFU implies per GPU
    ("H20", 148e12),
    ("B200", 2250e12),
    ("A100", 312e12),
    ("A800", 312e12),
    ("L40S", 362e12),
]


def peak_flops_for(device_name: str) -> float:
    """bf16 dense peak of a GPU by name; 0.0 for an unknown GPU or a CPU (MFU then reads 0;
    the trainer says so and names --peak-flops)."""
    for key, flops in PEAK_BF16_FLOPS:
        if key.lower() in device_name.lower():
            return flops
    return 0.0


def device_peak_flops(device: torch.device) -> tuple[str, float]:
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        return name, peak_flops_for(name)
    return device.type, 0.0
