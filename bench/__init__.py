"""Benchmarks, run from the repository root as `python -m bench.<name>`:

    bench.moe        one MoE block fwd+bwd on any device: dense vs dropless vs fixed capacity
    bench.gpu        one GPU: the fork's d12 MoE legs through the trainer, tok/sec and MFU beside the fork's
    bench.fp8_gpu    one GPU: FP8 kernel path, numerics, bf16 vs FP8 throughput
    bench.fp8_paths  one GPU: each FP8 matmul path eager and compiled, beside bf16
    bench.tui        the cockpit's first paint and CPU use beside a bare Textual app
    device_check.sh  everything above that needs CUDA, as one script for a borrowed GPU

Scripts, not timed tests: each prints a table and a last line with the ratio that matters.
"""
