"""The user's checkout as git sees it, read only: its branch and commit, and the registry's branch.

Every git command here only reads (`rev-parse`, `show-ref`), with `GIT_OPTIONAL_LOCKS=0` so that
not even the index is refreshed: the cockpit never changes the state of a checkout.

Layer 0: imports nothing from the cockpit.
"""

from __future__ import annotations

import os
import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path

GIT_TIMEOUT_S = 5.0


def _git(cwd: Path | str, *args: str) -> subprocess.CompletedProcess | None:
    """A read-only git command in `cwd`; None when git cannot be run or takes too long."""
    env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0"}
    try:
        return subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True, text=True,
                              timeout=GIT_TIMEOUT_S, check=False)
    except (OSError, subprocess.SubprocessError):
        return None


def _out(cwd: Path | str, *args: str) -> str | None:
    r = _git(cwd, *args)
    return (r.stdout.strip() or None) if r is not None and r.returncode == 0 else None


def git_info(cwd: Path) -> dict[str, str | None]:
    """Branch and commit of the checkout, read only (no command here changes git state)."""
    top = _out(cwd, "rev-parse", "--show-toplevel")
    if top is None:
        here = Path(__file__).resolve().parents[1]  # the checkout cockpit runs from, if it is one
        return git_info(here) if here != Path(cwd).resolve() else {"dir": None, "branch": None, "commit": None}
    return {"dir": top, "branch": _out(cwd, "rev-parse", "--abbrev-ref", "HEAD"), "commit": _out(cwd, "rev-parse", "HEAD")}


@dataclass(frozen=True)
class Branch:
    """The checkout's branch beside the one the registry expects (`project.branch`)."""

    dir: str  # the checkout asked (where the legs run)
    current: str | None  # None: not a git checkout (or git is missing); "HEAD": a detached HEAD
    expected: str | None  # None: the registry expects none
    expected_exists: bool | None  # is there a local branch of that name (None: nothing to ask)

    @property
    def ok(self) -> bool:
        """Nothing to warn about: no branch expected, or the checkout is on it."""
        return self.expected is None or self.current == self.expected

    @property
    def checkout_command(self) -> str | None:
        """`git checkout X`, only when the checkout is elsewhere and X exists locally."""
        if self.ok or not self.expected_exists:
            return None
        return f"git checkout {shlex.quote(self.expected)}"  # type: ignore[arg-type]

    def text(self, code: str = "") -> str:
        """One line that says what is true, e.g. `the checkout is on main; the registry expects
        yxb/moe, which does not exist locally`. `code`: a quote for names (markdown: a backtick)."""
        def q(name: str) -> str:
            return f"{code}{name}{code}"

        if self.current is None:
            where = f"{q(self.dir)} is not a git checkout"
        elif self.current == "HEAD":
            where = "the checkout is on a detached HEAD"
        else:
            where = f"the checkout is on {q(self.current)}"
        if self.expected is None:
            return where
        if self.current == self.expected:
            return f"{where}, as the registry expects"
        if self.expected_exists is None:
            return f"{where}; the registry expects {q(self.expected)}"
        if not self.expected_exists:
            return f"{where}; the registry expects {q(self.expected)}, which does not exist locally"
        return f"{where}; the registry expects {q(self.expected)}, which exists locally"


def branch_check(cwd: Path | str, expected: str | None) -> Branch:
    """The checkout at `cwd` against the expected branch. Reads only; never raises."""
    current = _out(cwd, "rev-parse", "--abbrev-ref", "HEAD") if Path(cwd).is_dir() else None
    exists = None
    if expected is not None and current is not None:
        r = _git(cwd, "show-ref", "--verify", "--quiet", f"refs/heads/{expected}")
        exists = None if r is None or r.returncode not in (0, 1) else r.returncode == 0
    return Branch(str(cwd), current, expected, exists)
