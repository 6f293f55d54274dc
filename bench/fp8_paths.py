"""One GPU: does each FP8 matmul path of the trainer run, eager and compiled, and how fast is it?

    PYTHONPATH=. python -m bench.fp8_paths

Fixed-capacity experts (x [E,C,K] @ w [E,K,N] at the d12 leg's sizes) as per-expert _scaled_mm
(fp8_bmm), as a grouped matmul with constant offsets (fp8_grouped_mm), beside bf16 bmm; and one
FP8 linear layer. A path that fails prints its error (the last frames) and the rest go on.
"""

import sys
import time
import traceback

import torch

from nanochat import fp8

E, C, K, N = 8, 4096, 768, 1536


def main() -> int:
    if not torch.cuda.is_available():
        print("bench.fp8_paths: needs one NVIDIA GPU (CUDA); none here", file=sys.stderr)
        return 2
    torch.cuda.set_device(0)
    x = torch.randn(E, C, K, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    w = torch.randn(E, K, N, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    offs = (torch.arange(1, E + 1, device="cuda") * C).to(torch.int32)
    wl = w[0].t().contiguous().detach().requires_grad_()

    def grouped(x, w):
        return fp8.fp8_grouped_mm(x.reshape(E * C, K), w, offs)

    def linear(x, w):
        return fp8.fp8_linear(x[0], wl)

    def compiled(fn):
        return torch.compile(fn, dynamic=False, fullgraph=True)

    cases = {"fp8 bmm": fp8.fp8_bmm, "fp8 grouped": grouped, "bf16 bmm": torch.bmm, "fp8 linear": linear}
    print(f"{torch.cuda.get_device_name(0)} | torch {torch.__version__} | E={E} C={C} K={K} N={N}")
    print("| path | eager fwd+bwd (ms) | compiled fwd+bwd (ms) |")
    print("| --- | ---: | ---: |")
    times: dict[str, float] = {}
    for name, fn in cases.items():
        cells = []
        for mode, f in (("eager", fn), ("compiled", compiled(fn))):
            try:
                for i in range(13):  # 3 warm-up calls, then 10 timed
                    if i == 3:
                        torch.cuda.synchronize()
                        t0 = time.perf_counter()
                    f(x, w).float().sum().backward()
                torch.cuda.synchronize()
                times[f"{mode} {name}"] = ms = (time.perf_counter() - t0) / 10 * 1e3
                cells.append(f"{ms:.3f}")
            except Exception:
                cells.append("FAILED")
                print(f"{mode} {name} FAILED:", file=sys.stderr)
                traceback.print_exc(limit=-4)
        print(f"| {name} | {cells[0]} | {cells[1]} |", flush=True)
    fixed = "compiled fp8 bmm"
    base = times.get("compiled bf16 bmm")
    ratio = f"{times[fixed] / base:.2f}" if fixed in times and base else "-"
    print(f"RESULT: compiled FP8 fixed-capacity experts / compiled bf16 bmm, fwd+bwd time: {ratio}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
