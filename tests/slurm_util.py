"""A real local Slurm cluster for tests (two nodes, n1 and n2, on this host), started once a session
by scripts/slurm_local.sh.

Where Slurm cannot start here (not root, no apt-get to install it) the tests that need it skip and
say why; in CI (`CI` set) or with COCKPIT_REQUIRE_SLURM=1, failing to start is an error instead.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "slurm_local.sh"
NODES = ("n1", "n2")


def slurm_required() -> bool:
    return bool(os.environ.get("CI")) or os.environ.get("COCKPIT_REQUIRE_SLURM") == "1"


def _cannot(why: str) -> None:
    if slurm_required():
        pytest.fail(f"local Slurm required (CI or COCKPIT_REQUIRE_SLURM=1) but {why}", pytrace=False)
    pytest.skip(f"local Slurm unavailable: {why}")


@pytest.fixture(scope="session")
def slurm_cluster() -> tuple[str, ...]:
    """Start (or find) the local two-node cluster; the node names."""
    status = subprocess.run(["bash", str(SCRIPT), "status"], capture_output=True, text=True)
    if status.returncode != 0:
        if os.geteuid() != 0:
            _cannot("starting it needs root (scripts/slurm_local.sh installs packages and starts daemons)")
        if shutil.which("slurmctld") is None and shutil.which("apt-get") is None:
            _cannot("Slurm is not installed and apt-get is not available to install it")
        t0 = time.monotonic()
        start = subprocess.run(["bash", str(SCRIPT), "start"], capture_output=True, text=True, timeout=600)
        if start.returncode != 0:
            last = (start.stderr.strip() or start.stdout.strip() or "no output").splitlines()[-1]
            _cannot(f"scripts/slurm_local.sh start failed: {last}")
        print(f"local Slurm started in {time.monotonic() - t0:.1f}s")
    return NODES


def node_state(node: str) -> str:
    return subprocess.run(
        ["sinfo", "--noheader", "--Node", "--nodes", node, "--format=%t"], capture_output=True, text=True
    ).stdout.strip()


def resume_node(node: str, timeout_s: float = 60.0) -> None:
    """Bring a node a test set down back to idle (it may already be back: ReturnToService=2)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        state = node_state(node)
        if state in ("idle", "mix", "alloc"):
            return
        if state.startswith(("down", "drain", "drng", "fail")):
            subprocess.run(["scontrol", "update", f"nodename={node}", "state=resume"], capture_output=True)
        time.sleep(0.5)
    raise AssertionError(f"node {node} not back to idle after {timeout_s:.0f}s: {node_state(node)!r}")
