"""Executors: how a launch's legs get run. `local` runs them on this machine through a detached
supervisor; `slurm` submits them as a chain of batch jobs to a Slurm cluster.

launch.py calls every executor through the same two functions, and nothing else of it:

    start(exp_dir, plan, lock_fd, foreground=False, grace_s=None)
        run the planned legs of a fresh dir (`plan`: its plan.json, written already);
        `lock_fd` is the experiment's queue lock, held by the caller; RunError when refused
    stop(exp_dir, leg=None, grace_s=..., wait_s=None)
        stop one leg (and what must stop with it) or all of them; RunError when nothing can be

Which executor ran a dir is recorded in its plan (`"executor"`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from cockpit.executors import local, slurm
from cockpit.plan import Plan


class Executor(Protocol):
    NAME: str

    def start(
        self, exp_dir: Path, plan: Plan, lock_fd: int, foreground: bool = ..., grace_s: float | None = ...
    ) -> None: ...

    def stop(
        self, exp_dir: Path, leg: str | None = ..., grace_s: float = ..., wait_s: float | None = ...
    ) -> None: ...


EXECUTORS: dict[str, Executor] = {local.NAME: local, slurm.NAME: slurm}  # type: ignore[dict-item]
