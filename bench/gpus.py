"""How long one GPU + host sample takes: cockpit.gpus against a fake NVML of 8 GPUs.

    python -m bench.gpus [-n 2000]    (from the repository root)

The fake answers at once, so the figures are the sampler's own cost (the calls it makes, the
conversions, the history, psutil's host figures): the part the cockpit controls. A real driver
adds its own per-call latency on top (a few microseconds a call on a datacenter node).
Rows: 8 GPUs all fields; 8 GPUs with per-field errors (the n/a path raises and catches);
the host alone; no driver at all.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

import pynvml  # noqa: E402
from fake_nvml import FakeNVML  # noqa: E402

from cockpit import gpus  # noqa: E402


def per_sample_ms(fn, n: int) -> tuple[float, float]:
    fn()  # warm: handles, names, the first cpu_percent
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    times.sort()
    return 1000 * sum(times) / n, 1000 * times[int(0.99 * (n - 1))]


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.gpus", description=__doc__.split("\n")[0])
    ap.add_argument("-n", type=int, default=2000)
    n = ap.parse_args().n
    fields = ("util", "mem", "temp", "power", "procs")
    broken = {(i, f) for i in range(8) for f in fields if (i + fields.index(f)) % 3 == 0}
    nodriver = FakeNVML(init_error=pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)
    cases = [
        ("8 GPUs, all fields", gpus.GpuSampler(nvml=FakeNVML(8)).sample),
        (f"8 GPUs, {len(broken)} field errors", gpus.GpuSampler(nvml=FakeNVML(8, broken=broken)).sample),
        ("host only (psutil)", gpus.GpuSampler(nvml=nodriver).sample_host),
        ("no driver (host too)", gpus.GpuSampler(nvml=nodriver).sample),
    ]
    print(f"{'case':<26} {'mean ms':>8} {'p99 ms':>8}")
    results = {}
    for name, fn in cases:
        mean, p99 = per_sample_ms(fn, n)
        results[name] = mean
        print(f"{name:<26} {mean:>8.3f} {p99:>8.3f}")
    mean8 = results["8 GPUs, all fields"]
    print(f"one sample of 8 GPUs: {mean8:.3f} ms mean over {n}, {10 / mean8:.0f}x under the 10 ms budget")


if __name__ == "__main__":
    main()
