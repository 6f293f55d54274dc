"""Helpers for the runner's tests: temp registries whose legs run tests/fake_trainer.py (or the real
trainer), and the real `cockpit` CLI as a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]


def write_registry(
    tmp_path: Path,
    legs: dict[str, str],
    *,
    exp_id: str = "fake",
    on_failure: str = "stop",
    module: str = "tests.fake_trainer",
    device: str = "cpu",
    nproc: int = 2,
    common: str = 'num-iterations = 20\nstep-sleep = 0.05\ncheckpoint-root = "{exp_dir}/ckpt_root"',
    extra_project: str = "",
    name: str = "reg.toml",
) -> Path:
    """A registry in tmp_path: exp_root tmp_path/exp, read-only tmp_path/ro; one experiment whose
    legs are `name -> inline args` (TOML inline-table body)."""
    leg_text = "".join(f'[[experiment.leg]]\nname = "{n}"\nargs = {{ {a} }}\n' for n, a in legs.items())
    text = f"""[project]
name = "test"
exp_root = "exp"
read_only = ["ro"]
on_failure = "{on_failure}"
{extra_project}
[defaults]
module = "{module}"
device = "{device}"
nproc_per_node = {nproc}
[defaults.args]
{common}

[[experiment]]
id = "{exp_id}"
{leg_text}"""
    path = tmp_path / name
    path.write_text(text)
    return path


def child_env() -> dict[str, str]:
    """The test process's env with the checkout importable (for `-m tests.fake_trainer`)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    return env


def cockpit(*args: str, cwd: Path | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cockpit.cli", *args],
        cwd=cwd or REPO,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def wait_for(pred, timeout: float = 30.0, every: float = 0.05, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def tree_of(pid: int, n: int) -> list[psutil.Process] | None:
    """The process tree of pid once it holds at least n processes, else None."""
    t = tree(pid)
    return t if len(t) >= n else None


def kill_leftovers(marker: str) -> list[int]:
    """Kill any process whose command line mentions marker (a test's tmp_path); return their pids."""
    me = os.getpid()
    found = []
    for p in psutil.process_iter(["cmdline"]):
        if p.pid != me and marker in " ".join(p.info["cmdline"] or []):
            found.append(p)
    for p in found:
        for c in [*p.children(recursive=True), p] if p.is_running() else []:
            try:
                c.kill()
            except psutil.NoSuchProcess:
                pass
    return [p.pid for p in found]


def tree(pid: int) -> list[psutil.Process]:
    try:
        p = psutil.Process(pid)
        return [p, *p.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def alive(procs: list[psutil.Process]) -> list[psutil.Process]:
    out = []
    for p in procs:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except psutil.NoSuchProcess:
            pass
    return out
