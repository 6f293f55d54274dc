"""Benchmark of the log code: `python -m bench.logs [--scale 1.0] [--steps N,...] [--only NAME] [--keep]`
(from the repository root).

Generates trainer logs under a temp dir (about 2.7 GB at scale 1, deleted at the end) and prints,
side by side in one run:

1. full parse throughput (lines/s) against a plain `for line in file` read of the same bytes;
2. the tail-N summary of a 1 GB log (it seeks from the end);
3. `cockpit report` (markdown to stdout, a fresh process) on a dir of 10 legs of 100 MB each;
4. `cockpit report --out-md` (the table, the per-step and summary CSVs, the PNG plots; a fresh
   process, imports included) on 10 logs of each size of `--steps` in upstream nanochat's format
   with its `| epoch: 0 pq: 1 rg: 2 |` field (280 steps: the seed's legs; 20,000 and 100,000: a
   long pretrain; 400,000: a stress case), against a plain `re.search` pass over the same lines;
   and the summary report (no --out-md) on the same dir. The CPU seconds of each report (its
   worker processes included) are printed beside the wall time: on a shared machine they move less.

Targets: 1 GB tail summary < 0.2 s; 10-leg report < 1 s; the summary report ~0.08x the re.search
pass. The full parse and the per-step CSV run at the line parser's speed (about 16 us a step line
on one core), which `--out-md` adds to the imports and plots (about 3 s of CPU): its cost per
size is what the last line gives.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cockpit import logs, report_md

MB = 1 << 20


def step_line(step: int, total: int, rng: random.Random) -> str:
    dt = 650 + rng.uniform(-30, 30)
    return (
        f"step {step:05d}/{total:05d} ({100 * step / total:.2f}%) | loss: {3.7 + rng.random():.6f} | "
        f"bal: {1 + rng.random() / 50:.4f} | lrm: 1.00 | dt: {dt:.2f}ms | tok/sec: {int(524288 / dt * 1000):,} | "
        f"bf16_mfu: {9.7 + rng.random() / 5:.2f} | epoch: 1 | total time: {step * dt / 60000:.2f}m | "
        f"eta: {(total - step) * dt / 60000:.1f}m | drop: {rng.random() * 3:.2f}%"
    )


def write_log(path: Path, size: int, seed: int = 0) -> int:
    """A log of the trainer's lines (a step line every step, a moe line every 10, some noise),
    about `size` bytes, ending with the final lines. Returns the number of lines."""
    rng = random.Random(seed)
    block_lines = []
    for i in range(2000):
        block_lines.append(step_line(i, 10**6, rng))
        if i % 10 == 0:
            block_lines.append(
                f"moe step {i:05d} | drop: 1.20% | load: {','.join(['0.125'] * 8)} | bal: 1.0023"
            )
        if i % 500 == 0:
            block_lines.append(
                "W1126 04:00:00.000000 1234 torch/_dynamo/convert_frame.py:844] recompile (noise)"
            )
    block = ("\n".join(block_lines) + "\n").encode()
    n_blocks = max(1, size // len(block))
    header = b"Autodetected device type: cuda\nEstimated FLOPs per token: 7.301376e+08\n"
    tail = b"Peak memory usage: 18987.83MiB\nTotal training time: 2.97m\n"
    with open(path, "wb") as f:
        f.write(header)
        for _ in range(n_blocks):
            f.write(block)
        f.write(tail)
    return 2 + n_blocks * len(block_lines) + 2


def upstream_line(step: int, total: int, rng: random.Random) -> str:
    """A step line as upstream nanochat prints it, with its `epoch: E pq: P rg: R` field."""
    dt = 650 + rng.uniform(-30, 30)
    return (
        f"step {step:05d}/{total:05d} ({100 * step / total:.2f}%) | loss: {3.7 + rng.random():.6f} | lrm: 1.00 | "
        f"dt: {dt:.2f}ms | tok/sec: {int(524288 / dt * 1000):,} | bf16_mfu: {9.7 + rng.random() / 5:.2f} | "
        f"epoch: 0 pq: {step // 1000} rg: {step % 7} | total time: {step * dt / 60000:.2f}m | "
        f"eta: {(total - step) * dt / 60000:.1f}m"
    )


def write_upstream_log(path: Path, steps: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    with open(path, "w") as f:
        f.write("Autodetected device type: cuda\nEstimated FLOPs per token: 7.301376e+08\n")
        for i in range(steps):
            f.write(upstream_line(i, steps, rng) + "\n")
        f.write("Peak memory usage: 18987.83MiB\nTotal training time: 4400.00m\n")


def regex_pass(paths: list[Path]) -> float:
    """The naive reader: every line of every log through one re.search."""
    tok = re.compile(r"tok/sec: ([\d,]+)")
    t0 = time.perf_counter()
    for p in paths:
        with open(p, encoding="utf-8", errors="replace") as f:
            for line in f:
                tok.search(line)
    return time.perf_counter() - t0


def cli_run(args: list[str]) -> tuple[float, float, float]:
    """`cockpit ARGS` in a fresh process: (wall seconds, CPU seconds, peak RSS in MiB), the CPU of
    its children (worker processes) included."""
    cmd = [sys.executable, "-c", _PEAK, *args]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, check=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return wall, cpu, int(r.stderr.split("PEAK")[1].split()[0]) / 1024


# the report's own peak RSS (VmHWM: this process image's, not the bench's)
_PEAK = (
    "import sys\nfrom cockpit import cli\nrc = cli.main(sys.argv[1:])\n"
    "hwm = next(ln for ln in open('/proc/self/status') if ln.startswith('VmHWM:')).split()[1]\n"
    "print('PEAK', hwm, file=sys.stderr)\nsys.exit(rc)\n"
)


def plain_read(path: Path) -> tuple[int, float]:
    t0 = time.perf_counter()
    n = 0
    with open(path, encoding="utf-8", errors="replace") as f:
        for _ in f:
            n += 1
    return n, time.perf_counter() - t0


def full_parse(path: Path) -> tuple[int, float]:
    t0 = time.perf_counter()
    state = logs.parse_file(path)
    dt = time.perf_counter() - t0
    return state.lines_seen, dt


def best(fn, repeat: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.logs", description=__doc__.split("\n")[0])
    ap.add_argument("--scale", type=float, default=1.0, help="size factor of every generated log (default 1)")
    ap.add_argument(
        "--parse-mb", type=float, default=200, help="size of the full-parse log in MB (default 200)"
    )
    ap.add_argument("--keep", action="store_true", help="keep the generated logs")
    ap.add_argument(
        "--steps",
        default=",".join(map(str, ARTIFACT_STEPS)),
        help="step lines per log of case 4, comma-separated (default %(default)s; times --scale)",
    )
    ap.add_argument("--only", choices=("artifacts",), help="run only this case (4)")
    args = ap.parse_args(argv)
    try:
        sizes = [max(100, int(int(x) * args.scale)) for x in args.steps.split(",")]
    except ValueError:
        ap.error(f"--steps: comma-separated integers, not {args.steps!r}")

    root = Path(tempfile.mkdtemp(prefix="cockpit-bench-"))
    rows: list[tuple[str, str, str, str]] = []
    last: list[str] = []
    try:
        if args.only in (None, "artifacts"):
            last.append(artifacts(root, sizes, rows))
        if args.only == "artifacts":
            return _print(rows, last)
        # 1. full parse vs plain read, same file, each best of 3 (warm page cache for both)
        p = root / "parse.log"
        n_lines = write_log(p, int(args.parse_mb * args.scale * MB))
        size_mb = p.stat().st_size / MB
        plain_t = min(plain_read(p)[1] for _ in range(3))
        parse_runs = [full_parse(p) for _ in range(3)]
        parse_t = min(t for _, t in parse_runs)
        assert parse_runs[0][0] == n_lines, (parse_runs[0][0], n_lines)
        ratio = plain_t / parse_t
        rows.append(
            (
                "plain `for line in file`",
                f"{size_mb:.0f} MB, {n_lines:,} lines",
                f"{plain_t:.3f} s",
                f"{n_lines / plain_t:,.0f} lines/s",
            )
        )
        rows.append(
            (
                "full parse (logs.parse_file)",
                f"{size_mb:.0f} MB, {n_lines:,} lines",
                f"{parse_t:.3f} s",
                f"{n_lines / parse_t:,.0f} lines/s = {ratio:.2f}x plain (the line parser's speed)",
            )
        )
        p.unlink()

        # 2. tail-N summary of a 1 GB log
        big = root / "big.log"
        write_log(big, int(1024 * args.scale * MB), seed=1)
        big_mb = big.stat().st_size / MB
        t_first = time.perf_counter()
        s = logs.summarize(big)
        t_first = time.perf_counter() - t_first
        t_tail, s = best(lambda: logs.summarize(big), 5)
        assert s.finished and s.tail_n == 50, s
        rows.append(
            (
                "tail-50 summary (logs.summarize)",
                f"{big_mb:.0f} MB",
                f"{t_tail * 1000:.1f} ms",
                f"first call {t_first * 1000:.1f} ms (target < 200 ms)",
            )
        )
        big.unlink()

        # 3. cockpit report on 10 legs of 100 MB
        exp = root / "20261126_000000_bench"
        exp.mkdir()
        first = exp / "leg_00.log"
        write_log(first, int(100 * args.scale * MB), seed=2)
        for i in range(1, 10):
            shutil.copyfile(first, exp / f"leg_{i:02d}.log")
        leg_mb = first.stat().st_size / MB
        t_inproc, text = best(lambda: report_md.render_report(exp), 3)
        assert all(text.count(f"| leg_{i:02d} |") == 3 for i in range(10)), text  # figures, quality, status
        cmd = [
            sys.executable,
            "-m",
            "cockpit.cli",
            "report",
            "--registry",
            str(root / "none.toml"),
            "--exp-dir",
            str(exp),
        ]
        t_cli = []
        for _ in range(3):
            t0 = time.perf_counter()
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
            t_cli.append(time.perf_counter() - t0)
        assert all(out.count(f"| leg_{i:02d} |") == 3 for i in range(10)), out
        rows.append(
            ("report_md.render_report (in process)", f"10 x {leg_mb:.0f} MB", f"{t_inproc * 1000:.1f} ms", "")
        )
        rows.append(
            (
                "`cockpit report --exp-dir` (new process)",
                f"10 x {leg_mb:.0f} MB",
                f"{min(t_cli) * 1000:.1f} ms",
                "target < 1000 ms, Python start and imports included",
            )
        )
    finally:
        if args.keep:
            print(f"logs kept in {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)

    last.append(
        f"full parse / plain read = {ratio:.2f}x; "
        f"{big_mb:.0f} MB tail summary {t_tail * 1000:.1f} ms; 10 x {leg_mb:.0f} MB report {min(t_cli) * 1000:.0f} ms"
    )
    return _print(rows, last)


ARTIFACT_STEPS = (280, 20_000, 100_000, 400_000)  # the seed's legs, a long pretrain (two), a stress case
ARTIFACT_LOGS = 10


def artifacts(root: Path, sizes: list[int], rows: list[tuple[str, str, str, str]]) -> str:
    """Case 4: the report's files on 10 logs of each size (upstream step lines), against a re.search pass."""
    extra: list[str] = []
    for steps in sizes:
        exp = root / f"20261201_000000_upstream_{steps}"
        exp.mkdir()
        write_upstream_log(exp / "leg_00.log", steps)
        for i in range(1, ARTIFACT_LOGS):
            shutil.copyfile(exp / "leg_00.log", exp / f"leg_{i:02d}.log")
        logs_ = sorted(exp.glob("*.log"))
        total_mb = sum(p.stat().st_size for p in logs_) / MB
        lines = ARTIFACT_LOGS * (steps + 4)
        naive = min(regex_pass(logs_) for _ in range(2))  # the second pass: warm page cache, as the report's
        none = str(root / "none.toml")
        out = root / f"out_{steps}" / "report.md"
        t_art, cpu_art, rss_mib = cli_run(
            ["report", "--registry", none, "--exp-dir", str(exp), "--out-md", str(out)]
        )
        csv_rows = sum(1 for _ in open(out.with_name("report_steps.csv"), "rb")) - 1
        assert csv_rows == ARTIFACT_LOGS * steps, csv_rows
        pngs = [
            out.with_name(f"report_{m}.png") for m in ("loss", "tok_per_sec", "mfu", "dt_ms", "tail_means")
        ]
        assert all(p.stat().st_size > 0 for p in pngs)
        t_sum, cpu_sum, _ = min(
            cli_run(["report", "--registry", none, "--exp-dir", str(exp)]) for _ in range(3)
        )
        shutil.rmtree(exp)
        shutil.rmtree(out.parent)
        what = f"{ARTIFACT_LOGS} x {steps:,} lines, {total_mb:.0f} MB"
        rows.append(
            ("plain re.search pass (naive reader)", what, f"{naive:.2f} s", f"{lines / naive:,.0f} lines/s")
        )
        rows.append(
            (
                "`cockpit report --out-md` (new process)",
                what,
                f"{t_art:.2f} s",
                f"{t_art / naive:.1f}x naive, {cpu_art:.2f} s CPU; steps CSV ({csv_rows:,} rows), summary CSV, "
                f"{len(pngs)} PNGs; peak RSS {rss_mib:.0f} MiB",
            )
        )
        rows.append(
            (
                "`cockpit report` (summary, new process)",
                what,
                f"{t_sum:.2f} s",
                f"{t_sum / naive:.2f}x naive, {cpu_sum:.2f} s CPU",
            )
        )
        extra.append(f"{steps:,} steps: {t_art:.1f} s ({cpu_art:.1f} s CPU)")
    return "report --out-md on 10 logs of " + ", ".join(extra)


def _print(rows: list[tuple[str, str, str, str]], last: list[str]) -> int:
    w = [max(len(r[i]) for r in rows) for i in range(4)]
    print(f"{'benchmark':<{w[0]}}  {'input':<{w[1]}}  {'time':>{w[2]}}  rate / note")
    for r in rows:
        print(f"{r[0]:<{w[0]}}  {r[1]:<{w[1]}}  {r[2]:>{w[2]}}  {r[3]}")
    print(f"cpu count: {os.cpu_count()}, python {sys.version.split()[0]}")
    print("; ".join(last))
    return 0


if __name__ == "__main__":
    sys.exit(main())
