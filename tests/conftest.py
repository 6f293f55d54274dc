"""Fixtures and helpers shared by the test modules."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from cockpit import procs, runs


def fake_torchrun(bin_dir: Path) -> Path:
    """An executable named `torchrun` that only sleeps: a stand-in whose command line and
    environment can be made exactly those of a leg's torchrun."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    path = bin_dir / "torchrun"
    path.write_text(f"#!{sys.executable}\nimport time\ntime.sleep(600)\n")
    path.chmod(0o755)
    return path


def spawn_leg_process(exp_dir: Path, leg: str, argv: list[str], marker: bool = True) -> subprocess.Popen:
    """Start `argv` (argv[0] a fake_torchrun) as the leg's torchrun would run: with this dir's
    marker in its environment (`marker=False`: without it, as a process of somewhere else)."""
    env = dict(os.environ)
    if marker:
        env.update(runs.leg_env(exp_dir, leg))
    else:
        env.pop(procs.ENV_EXP_DIR, None)
    return subprocess.Popen(argv, env=env, start_new_session=True)


@pytest.fixture
def leg_process(tmp_path):
    """spawn_leg_process, with every process it started killed and reaped at the end."""
    started: list[subprocess.Popen] = []

    def spawn(exp_dir: Path, leg: str, argv: list[str], marker: bool = True) -> subprocess.Popen:
        p = spawn_leg_process(exp_dir, leg, argv, marker)
        started.append(p)
        return p

    yield spawn
    for p in started:
        p.kill()
        p.wait()
