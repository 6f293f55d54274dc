"""Fixtures and hooks shared by the test modules; the plain helpers they import are in helpers.py.

- after every test: the live legs it started are killed, the supervisor locks it holds released
- `leg_process`: stand-in torchruns with a dir's marker, killed at the end
- `snapshot_lock`: the snapshot cases' fixed dirs, held for the session
- `readonly_dir`: a dir on a read-only filesystem
- `slurm_cluster`: a local two-node Slurm, session-wide
- `smoke_corpus`: the smoke corpus and its tokenizer, made once a session
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from helpers import (
    NODES,
    SCRIPT,
    SNAP_ROOT,
    end_live_legs_and_locks,
    mount_tmpfs,
    slurm_required,
    spawn_leg_process,
)


@pytest.fixture(autouse=True)
def _end_live_legs_and_locks():
    yield
    end_live_legs_and_locks()


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


@pytest.fixture(scope="session")
def snapshot_lock():
    """The snapshot cases' fixed dirs (SNAP_ROOT) held for the session: two test runs on one
    machine (two checkouts) take turns instead of writing each other's logs into the same case."""
    SNAP_ROOT.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{SNAP_ROOT}.lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


@pytest.fixture
def readonly_dir(tmp_path):
    """A directory on a read-only filesystem (a tmpfs mounted ro), or the test is skipped."""
    d = tmp_path / "ro-fs"
    if not mount_tmpfs(d, "size=1m,ro"):
        pytest.skip("cannot mount a read-only tmpfs here (needs root and mount rights)")
    yield d
    subprocess.run(["umount", "-l", str(d)], capture_output=True)


@pytest.fixture(scope="session")
def slurm_cluster() -> tuple[str, ...]:
    """Start (or find) the local two-node cluster; the node names. Where it cannot start here (not
    root, no apt-get) the tests that need it skip and say why, unless `slurm_required()`."""

    def cannot(why: str) -> None:
        if slurm_required():
            pytest.fail(f"local Slurm required (CI or COCKPIT_REQUIRE_SLURM=1) but {why}", pytrace=False)
        pytest.skip(f"local Slurm unavailable: {why}")

    status = subprocess.run(["bash", str(SCRIPT), "status"], capture_output=True, text=True)
    if status.returncode != 0:
        if os.geteuid() != 0:
            cannot("starting it needs root (scripts/slurm_local.sh installs packages and starts daemons)")
        if shutil.which("slurmctld") is None and shutil.which("apt-get") is None:
            cannot("Slurm is not installed and apt-get is not available to install it")
        t0 = time.monotonic()
        start = subprocess.run(["bash", str(SCRIPT), "start"], capture_output=True, text=True, timeout=600)
        if start.returncode != 0:
            last = (start.stderr.strip() or start.stdout.strip() or "no output").splitlines()[-1]
            cannot(f"scripts/slurm_local.sh start failed: {last}")
        print(f"local Slurm started in {time.monotonic() - t0:.1f}s")
    return NODES


@pytest.fixture(scope="session")
def smoke_corpus(tmp_path_factory) -> Path:
    """The smoke corpus and its tokenizer, made once per session (a few seconds):
    <dir>/base_data/shard_0000{0..4}.parquet and <dir>/tokenizer/ (vocab 1024)."""
    from nanochat import smoke_data

    out = tmp_path_factory.mktemp("smoke")
    assert smoke_data.main(["--out", str(out)]) == 0
    return out
