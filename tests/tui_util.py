"""Fixtures for the TUI tests: registries, experiment dirs in every state, a fake GPU sampler.

Snapshot tests need the same screen every run: their dirs live under one fixed temp path
(`SNAP_ROOT/<case>`, recreated per test), the clock, the git branch and the GPU figures are
injected, and a "running" leg's supervisor is this very test process (alive, pid-reuse safe).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import shutil
import time
from collections import deque
from pathlib import Path

from conftest import hold_supervisor_lock, live_leg, live_leg_pids

from cockpit.gpus import GpuInfo, HostInfo, Snapshot

REPO = Path(__file__).resolve().parents[1]
SNAP_ROOT = Path("/tmp/cockpit-tui-snap")  # not $TMPDIR: the SVGs show these paths
CLOCK = dt.datetime(2026, 2, 24, 19, 12, 0)


def fixed_clock() -> dt.datetime:
    return CLOCK


def case_dir(name: str) -> Path:
    """A fixed, empty dir for one snapshot case (same path every run: the SVG shows paths)."""
    path = SNAP_ROOT / name
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def bundled_registry(dest: Path, iterations: int | None = None) -> Path:
    """The bundled experiments.toml with exp_root and read-only paths moved into `dest`."""
    text = (REPO / "experiments.toml").read_text()
    text = re.sub(r'^exp_root = ".*"$', 'exp_root = "exp"', text, count=1, flags=re.M)
    text = text.replace("~/.cache/nanochat/", "ro/")
    if iterations is not None:
        text = re.sub(r"^num-iterations = 40$", f"num-iterations = {iterations}", text, flags=re.M)
        text = re.sub(r"^save-every = 40$", "save-every = -1", text, flags=re.M)
    path = dest / "experiments.toml"
    path.write_text(text)
    return path


def step_line(step: int, total: int, loss: float, dt_ms: float, tok: float, mfu: float, t_min: float,
              eta: float | None = None) -> str:
    line = (f"step {step:05d}/{total:05d} ({100 * step / total:.2f}%) | loss: {loss:.6f} | lrm: 1.00 | "
            f"dt: {dt_ms:.2f}ms | tok/sec: {int(tok):,} | bf16_mfu: {mfu:.2f} | epoch: 0 | total time: {t_min:.2f}m")
    return line + (f" | eta: {eta:.1f}m" if eta is not None else "")


def log_lines(steps: int, total: int, tok: float = 1000.0, dt_ms: float = 1024.0, finished: bool = True,
              crash: bool = False) -> list[str]:
    out = ["Autodetected device type: cpu", "Estimated FLOPs per token: 1.0e+06"]
    for i in range(steps):
        wobble = (i % 5 - 2) * 0.01
        out.append(step_line(i, total, 6.2 - 0.05 * i, dt_ms * (1 - wobble), tok * (1 + wobble), 0.5 + wobble,
                             i * dt_ms / 60000, (total - i) * dt_ms / 60000 if i > 10 else None))
    if crash:
        out += ["Traceback (most recent call last):", '  File "nanochat/base_train.py", line 1, in <module>',
                "RuntimeError: CUDA out of memory (fake)"]
    elif finished:
        out += ["Peak memory usage: 812.50MiB", f"Total training time: {steps * dt_ms / 60000:.2f}m"]
    return out


def write_dir(exp_root: Path, name: str, experiment: str, legs: dict[str, tuple[str, list[str]]],
              supervisor_alive: bool = False) -> Path:
    """An experiment dir: plan.json, `<leg>.log` and state/<leg>.json per leg (status, log lines).

    A live supervisor (this test process, holding the dir's lock) keeps "running"/"queued" states
    as they are written; a "running" leg is a live stand-in torchrun (conftest.live_leg)."""
    d = exp_root / name
    (d / "state").mkdir(parents=True)
    plan = {"experiment": experiment, "legs": [{"name": n} for n in legs]}
    for leg, (status, lines) in legs.items():
        if lines or status != "queued":
            (d / f"{leg}.log").write_text("".join(x + "\n" for x in lines))
        state = {"leg": leg, "status": status, "log": str(d / f"{leg}.log"),
                 "started_at": "2026-02-24T19:00:00+08:00"}
        if status == "running":  # a live process, provably this leg's torchrun
            pid, created, argv = live_leg(d, leg)
            state |= {"pid": pid, "create_time": created}
            next(x for x in plan["legs"] if x["name"] == leg)["argv"] = argv
        if status in ("done", "failed", "stopped"):
            state |= {"ended_at": "2026-02-24T19:05:00+08:00", "exit_code": 0 if status == "done" else 1}
        (d / "state" / f"{leg}.json").write_text(json.dumps(state))
    (d / "plan.json").write_text(json.dumps(plan))
    if supervisor_alive:
        (d / "state" / "supervisor.json").write_text(json.dumps(hold_supervisor_lock(d)))
    return d


class FakeSampler:
    """Fixed GPU figures: `n` GPUs (those in `busy` at 97%, with the newest live leg's torchrun on
    them, else this process), or no NVML."""

    def __init__(self, n: int = 8, busy: tuple[int, ...] = (), nvml: bool = True):
        self.n, self.busy, self.nvml = n, busy, nvml
        self.history: dict[str, deque] = {}
        self.calls = 0

    def sample(self) -> Snapshot:
        self.calls += 1
        host = HostInfo(cpu_pct=12.5, ram_used_mib=6144.0, ram_total_mib=24576.0, load1=0.42)
        self.history["host.cpu_pct"] = deque([10.0, 12.0, 15.0, 11.0, 12.5] * 3)
        if not self.nvml:
            return Snapshot(False, "NVML Shared Library Not Found", [], host, CLOCK.timestamp())
        gpus = []
        for i in range(self.n):
            on = i in self.busy
            gpus.append(GpuInfo(i, "NVIDIA H100 80GB HBM3", 97.0 if on else 0.0, 18987.0 if on else 0.0,
                                81559.0, 64.0 if on else 31.0, 612.0 if on else 71.0,
                                (live_leg_pids()[-1:] or [os.getpid()]) if on else []))
            self.history[f"gpu{i}.util_pct"] = deque([0.0, 40.0, 95.0, 97.0, 96.0, 97.0] if on else [0.0] * 6)
        return Snapshot(True, None, gpus, host, CLOCK.timestamp())


async def until(pilot, cond, timeout: float = 15.0, what: str = "condition", step: float = 0.05):
    """Let the app run until cond() is truthy; return its value, or fail naming what was awaited."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        await pilot.pause(step)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")
