"""The user's checkout as git sees it, read only: its branch and commit, and the registry's branch.

Every git command the cockpit runs goes through `git()` here. It only reads, and it runs none of
the programs a checkout's git config can name, because the checkout is the user's, or a
colleague's, or a tarball's, and reading where a launch came from must not run code from it:

- a filesystem monitor (`core.fsmonitor`, a hook git runs to ask what changed): off;
- filter drivers (`filter.<name>.clean/smudge/process`, run on a file's content when git
  compares it): every one the config names is overridden to nothing (`drivers_off`);
- diff drivers (`diff.<name>.textconv/command`, `diff.external`): a diff runs with
  `--no-textconv --no-ext-diff` (`DIFF_OPTIONS`);
- hooks: `core.hooksPath` points at nothing;
- submodules are judged by their recorded commit only (`SUBMODULES`: asking one whether it is
  dirty runs git inside it, under its own config);
- no transport at all (a partial clone would fetch a missing blob: ssh, `ext::`, a credential
  helper): `GIT_ALLOW_PROTOCOL` names none;
- the system config is not read (`GIT_CONFIG_NOSYSTEM`), and no `GIT_*` variable of this process
  reaches git (`GIT_EXTERNAL_DIFF`, `GIT_DIR`, `GIT_CONFIG_PARAMETERS` ...) but ours.

`GIT_OPTIONAL_LOCKS=0`: not even the index is refreshed; the cockpit never changes the state of a
checkout. A git that cannot switch a driver off (one older than `GIT_CONFIG_COUNT`) is not asked
about the working tree at all (`drivers_off`).

Which checkout a dir is: the one git finds from it, when the dir is that checkout's top or a dir
its HEAD holds. A dir that is neither (a scratch dir under a home dir that is itself a checkout,
or a dir outside any) is not a git checkout, and is recorded so.

Layer 0: imports pipes.
"""

from __future__ import annotations

import os
import shlex
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from cockpit import pipes

GIT_TIMEOUT_S = 5.0
OUTPUT_KEEP = 64 * 1024  # bytes of a command's output kept (the commands asked here print a line or two)
NOT_A_CHECKOUT = "not a git checkout"
# -c options of every git command: the programs a config can name that no driver list covers
SAFE_OPTIONS = (
    "core.fsmonitor=false",
    "core.hooksPath=/dev/null",
    "status.submoduleSummary=false",
    "diff.submodule=short",
    "protocol.allow=never",
)
SUBMODULES = "--ignore-submodules=dirty"  # of a status or a diff: a submodule's commit, not its tree
DIFF_OPTIONS = ("--no-textconv", "--no-ext-diff", SUBMODULES)  # of every diff
# the keys of a filter driver that name a program, and what each is set to here (an empty
# command is no filter; `required` would make git fail for want of one)
FILTER_KEYS = {"clean": "", "smudge": "", "process": "", "required": "false"}


@dataclass(frozen=True)
class Result:
    """A git command's end: `out` when it exited 0, else `why` (its last line of stderr, or what
    stopped it)."""

    out: bytes | None
    why: str | None = None

    @property
    def text(self) -> str | None:
        """Its output as one stripped line of text, None when it failed or printed nothing."""
        return (self.out.decode("utf-8", "surrogateescape").strip() or None) if self.out is not None else None


def git_env(overrides: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of every git command: this process's without any GIT_* variable, then
    ours; `overrides` (config key -> value) go in through GIT_CONFIG_COUNT, which takes any key
    (a driver's name may hold a `=` that `-c` would split at)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env.update(
        {
            "GIT_OPTIONAL_LOCKS": "0",
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_TERMINAL_PROMPT": "0",
            "GIT_ALLOW_PROTOCOL": "none-allowed",
            "LC_ALL": "C",
        }
    )
    items = list((overrides or {}).items())
    env["GIT_CONFIG_COUNT"] = str(len(items))
    for i, (k, v) in enumerate(items):
        env[f"GIT_CONFIG_KEY_{i}"], env[f"GIT_CONFIG_VALUE_{i}"] = k, v
    return env


def git(
    cwd: Path | str,
    *args: str,
    overrides: dict[str, str] | None = None,
    timeout: float = GIT_TIMEOUT_S,
    sink: Callable[[bytes], bool] | None = None,
) -> Result:
    """Run `git <args>` in `cwd` as the module says (read only, no program of the config run).
    `sink`: gets stdout chunk by chunk instead of it being kept (pipes.read; it returns False to
    stop git there, and then `out` is b""). Raises only what `sink` raises."""
    argv = ["git", "--no-pager", *(a for o in SAFE_OPTIONS for a in ("-c", o)), *args]
    try:
        proc = subprocess.Popen(
            argv,
            cwd=cwd,
            env=git_env(overrides),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
    except (OSError, ValueError) as e:
        return Result(None, f"cannot run git: {e.strerror or e}" if isinstance(e, OSError) else str(e))
    try:
        got = pipes.read(proc, timeout, keep=OUTPUT_KEEP, sink=sink)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        proc.stdout.close()
        proc.stderr.close()
    if got.timed_out:
        return Result(None, f"git {args[0]} took more than {timeout:g}s")
    if got.returncode is None:  # the sink had enough: git was stopped there
        return Result(b"")
    if got.returncode != 0:
        lines = got.err.decode("utf-8", "replace").strip().splitlines()
        return Result(None, lines[-1] if lines else f"exit code {got.returncode}")
    return Result(got.out)


def drivers_off(cwd: Path | str) -> dict[str, str] | str:
    """Config overrides that switch off every filter driver the checkout's config (or the
    user's) names; a string saying why when git would still run one of them."""
    listed = git(cwd, "config", "-z", "--get-regexp", r"^filter\.")
    if listed.out is None and listed.why != "exit code 1":  # 1: no such key
        return f"git config: {listed.why}"
    overrides = {
        f"filter.{name}.{key}": value
        for name, _, _ in _filters(listed.out or b"")
        for key, value in FILTER_KEYS.items()
    }
    if not overrides:
        return overrides
    check = git(cwd, "config", "-z", "--get-regexp", r"^filter\.", overrides=overrides)
    if check.out is None:
        return f"git config: {check.why}"
    last = {(name, key): value for name, key, value in _filters(check.out)}
    if alive := sorted(f"filter.{n}.{k}" for (n, k), v in last.items() if v and FILTER_KEYS.get(k) == ""):
        return f"this git cannot switch off {alive[0]} (that needs GIT_CONFIG_COUNT, git 2.31 or later)"
    return overrides


def _filters(listing: bytes) -> Iterator[tuple[str, str, str]]:
    """(driver name, key, value) of each `filter.<name>.<key>` entry of `git config -z`."""
    for entry in listing.split(b"\0"):
        key, _, value = entry.decode("utf-8", "surrogateescape").partition("\n")
        name, _, var = key.removeprefix("filter.").rpartition(".")
        if key.startswith("filter.") and name:
            yield name, var, value


def git_info(cwd: Path | str) -> dict[str, str | None]:
    """The checkout `cwd` is (its top dir, branch and commit), read only. {"dir": None, ...,
    "error": "not a git checkout"} when it is none (see the module)."""
    top = git(cwd, "rev-parse", "--show-toplevel").text
    if top is None or not _holds(cwd):
        return {"dir": None, "branch": None, "commit": None, "error": NOT_A_CHECKOUT}
    return {
        "dir": top,
        "branch": git(cwd, "rev-parse", "--abbrev-ref", "HEAD").text,
        "commit": git(cwd, "rev-parse", "--verify", "--quiet", "HEAD").text,
    }


def _holds(cwd: Path | str) -> bool:
    """Is `cwd` its checkout's top, or a dir that checkout's HEAD holds (not a dir git found a
    checkout above by searching up from it)?"""
    prefix = git(cwd, "rev-parse", "--show-prefix").text
    if prefix is None:
        return True  # the top itself (an empty prefix)
    return git(cwd, "rev-parse", "--verify", "--quiet", f"HEAD:{prefix}").out is not None


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
            where = f"{q(self.dir)} is {NOT_A_CHECKOUT}"
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
    current = git_info(cwd)["branch"] if Path(cwd).is_dir() else None
    exists = None
    if expected is not None and current is not None:
        r = git(cwd, "show-ref", "--verify", "--quiet", f"refs/heads/{expected}")
        exists = True if r.out is not None else False if r.why == "exit code 1" else None
    return Branch(str(cwd), current, expected, exists)
