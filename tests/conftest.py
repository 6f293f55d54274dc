"""Fixtures and helpers shared by the test modules."""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import psutil
import pytest

from cockpit import expdir, fsutil, procs

_spawned: list[subprocess.Popen] = []  # live legs of the running test (killed when it ends)
_locks: list[int] = []  # supervisor locks this test process holds (released when it ends)
_bin: list[Path] = []


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
        env.update(expdir.leg_env(exp_dir, leg))
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


def _shared_torchrun() -> Path:
    if not _bin:
        d = Path(tempfile.mkdtemp(prefix="cockpit-test-bin-"))
        atexit.register(shutil.rmtree, d, True)
        _bin.append(fake_torchrun(d))
    return _bin[0]


def live_leg(exp_dir: Path, leg: str) -> tuple[int, float, list[str]]:
    """A process that is provably the leg's torchrun until the test ends: (pid, create time, the
    argv its plan must record). Put both in the dir's plan and the leg's state."""
    argv = [str(_shared_torchrun()), "--standalone", "--nproc_per_node=1", "-m", "tests.fake_trainer", "--",
            "--model-tag", leg]
    p = spawn_leg_process(Path(exp_dir), leg, argv)
    _spawned.append(p)
    return p.pid, psutil.Process(p.pid).create_time(), argv


def live_leg_pids() -> list[int]:
    """Pids of the live legs the running test started, oldest first."""
    return [p.pid for p in _spawned]


def hold_supervisor_lock(exp_dir: Path) -> dict:
    """Make this test process the dir's live supervisor, provably (it holds state/supervisor.lock
    until the test ends): returns the record to write as state/supervisor.json."""
    fd = fsutil.try_lock(Path(exp_dir) / expdir.STATE_DIR / f"{expdir.SUPERVISOR}.lock")
    assert fd is not None
    _locks.append(fd)
    me = psutil.Process()
    return {"pid": me.pid, "create_time": me.create_time(), "ended_at": None}


@pytest.fixture(autouse=True)
def _end_live_legs_and_locks():
    yield
    while _spawned:
        p = _spawned.pop()
        p.kill()
        p.wait()
    while _locks:
        os.close(_locks.pop())


def mount_tmpfs(where: Path, options: str) -> bool:
    """Mount a small tmpfs at `where` (root with mount rights only); False when it cannot be done."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    where.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True)
    return r.returncode == 0


@pytest.fixture
def readonly_dir(tmp_path):
    """A directory on a read-only filesystem (a tmpfs mounted ro), or the test is skipped."""
    d = tmp_path / "ro-fs"
    if not mount_tmpfs(d, "size=1m,ro"):
        pytest.skip("cannot mount a read-only tmpfs here (needs root and mount rights)")
    yield d
    subprocess.run(["umount", "-l", str(d)], capture_output=True)
