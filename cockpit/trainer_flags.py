"""The flags a trainer module takes, asked of the module itself, so a typo in the registry
(`--device-bach-size`) is refused before a launch instead of failing the leg at its start.

The legs' Python runs `python -m MODULE --help` in the legs' checkout, with their environment
and no GPU visible (a module that ignored `--help` and started training would find none), within
HELP_TIMEOUT_S; every `--flag` its help prints is a flag it takes. The cockpit never imports the
trainer (nor torch): the module answers in its own process.

What a module answered is kept by the hash of its file: in this process, and under exp_root
(`<exp_root>/.cockpit-cache/trainer-flags/<sha256>.json`, the only place the cockpit may write),
so the module is asked once per version of its file, and a launch costs one `--help` at most
(a module not in the checkout is found where the legs' Python finds it; one whose file cannot be
found at all is asked every time). A module that
cannot be asked (no torch in the legs' Python, an error, a timeout, a help with no flags) gives
a reason instead of flags, never kept: the launch goes on and says the flags were not checked.

A flag is known when the help names it, or when it is the start of exactly one flag the help
names (argparse takes an unambiguous abbreviation). An unknown one gets the closest known flag as
its did-you-mean.

Layer 1: imports fsutil.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import re
import signal
import subprocess
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from cockpit import fsutil

HELP_TIMEOUT_S = 60.0  # a trainer that imports torch takes seconds; one that trains instead is stopped
FIND_TIMEOUT_S = 30.0  # where an installed module's file is: its parent package imported
CACHE_DIR = Path(".cockpit-cache") / "trainer-flags"  # under exp_root
CACHE_MAX_BYTES = 1 << 20
_FLAG = re.compile(r"(?<![\w-])--([A-Za-z0-9][A-Za-z0-9_-]*)")
_memo: dict[tuple[str, str, str], Known] = {}  # (python, module, file hash) -> its answer


@dataclass(frozen=True)
class Known:
    """A module's flags (without their dashes), or why it could not say."""

    flags: frozenset[str] | None
    why: str | None = None  # set when flags is None
    command: str = ""  # what was asked: `python -m MODULE --help`


_FIND = (
    "import importlib.util, sys; s = importlib.util.find_spec(sys.argv[1]); "
    "print(s.origin if s is not None and s.origin else '')"
)


def module_file(
    module: str, workdir: Path, python: str | None = None, env: Mapping[str, str] | None = None
) -> Path | None:
    """The file `python -m MODULE` runs: in the checkout (MODULE.py, or a package's __main__.py),
    else where the legs' `python` finds it (an installed module; its parent package is imported
    to find it); None when neither says."""
    base = workdir.joinpath(*module.split("."))
    for path in (base.with_suffix(".py"), base / "__main__.py"):
        if fsutil.is_regular(path):
            return path
    if python is None:
        return None
    try:
        out = subprocess.run(
            [python, "-c", _FIND, module],
            cwd=workdir,
            env=_env(workdir, env),
            capture_output=True,
            text=True,
            timeout=FIND_TIMEOUT_S,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, ValueError, subprocess.SubprocessError):
        return None
    found = Path(out.stdout.strip()) if out.returncode == 0 and out.stdout.strip() else None
    if found is not None and found.name == "__init__.py":
        found = found.parent / "__main__.py"
    return found if found is not None and fsutil.is_regular(found) else None


def _env(workdir: Path, env: Mapping[str, str] | None) -> dict[str, str]:
    """The legs' environment for a question: their extra variables, the checkout first on the
    path, no GPU visible."""
    run_env = {**os.environ, **(env or {}), "CUDA_VISIBLE_DEVICES": ""}
    run_env["PYTHONPATH"] = os.pathsep.join(p for p in (str(workdir), run_env.get("PYTHONPATH", "")) if p)
    return run_env


def parse_help(text: str) -> frozenset[str]:
    """The flags an argparse help names (`--device-batch-size DEVICE_BATCH_SIZE` ->
    `device-batch-size`), `help` left out."""
    return frozenset(_FLAG.findall(text)) - {"help"}


def ask(
    module: str,
    python: str,
    workdir: Path,
    env: Mapping[str, str] | None = None,
    exp_root: Path | None = None,
    write_cache: bool = False,
    timeout: float = HELP_TIMEOUT_S,
) -> Known:
    """The flags `module` takes, asked of it (see the module's docstring). `exp_root`: where the
    answer is cached (read; written too with `write_cache`, never by a dry run)."""
    command = f"{python} -m {module} --help"
    path = module_file(module, workdir, python, env)
    digest = _sha256(path) if path is not None else None
    key = (python, module, digest) if digest is not None else None
    cache = exp_root / CACHE_DIR / f"{digest}.json" if exp_root is not None and digest is not None else None
    known = _memo.get(key) if key is not None else None
    cached = (
        known is None and cache is not None and (known := _read_cache(cache, module, command)) is not None
    )
    if known is None:
        known = _run_help(module, python, workdir, env, timeout, command)
    if known.flags is not None and cache is not None and write_cache and not cached and exp_root is not None:
        _write_cache(cache, exp_root, module, path, known)
    if key is not None and known.flags is not None:
        _memo[key] = known
    return known


def unknown(keys: Iterable[str], flags: frozenset[str]) -> list[tuple[str, str | None]]:
    """The keys that are no flag of `flags` (nor an unambiguous start of one), each with the
    closest flag as its did-you-mean (None when nothing is close)."""
    out = []
    for key in keys:
        if key in flags or sum(f.startswith(key) for f in flags) == 1:
            continue
        hint = difflib.get_close_matches(key, sorted(flags), n=1, cutoff=0.6)
        out.append((key, hint[0] if hint else None))
    return out


def _sha256(path: Path) -> str | None:
    try:
        return hashlib.sha256(fsutil.read_bytes(path, 64 << 20)).hexdigest()
    except (OSError, ValueError):
        return None


def _read_cache(path: Path, module: str, command: str) -> Known | None:
    try:
        data = json.loads(fsutil.read_text(path, CACHE_MAX_BYTES))
    except (OSError, ValueError, RecursionError):
        return None
    flags = data.get("flags") if isinstance(data, dict) and data.get("module") == module else None
    if not (isinstance(flags, list) and flags and all(isinstance(f, str) for f in flags)):
        return None
    return Known(frozenset(flags), command=command)


def _write_cache(path: Path, exp_root: Path, module: str, file: Path | None, known: Known) -> None:
    """The answer kept for the next launch (once exp_root exists); a cache that cannot be written
    is only not kept."""
    if os.path.lexists(path) or not fsutil.is_dir(exp_root):
        return
    try:
        fsutil.make_dirs(path.parent, root=exp_root)
        fsutil.atomic_write_json(
            path, {"module": module, "file": str(file), "flags": sorted(known.flags or ())}, root=path.parent
        )
    except OSError:
        pass


def _run_help(
    module: str, python: str, workdir: Path, env: Mapping[str, str] | None, timeout: float, command: str
) -> Known:
    """`python -m MODULE --help` in the checkout, its own session (killed whole on a timeout)."""
    try:
        proc = subprocess.Popen(
            [python, "-m", module, "--help"],
            cwd=workdir,
            env=_env(workdir, env),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
    except (OSError, ValueError) as e:
        return Known(None, f"cannot run {python}: {fsutil.oneline(e)}", command)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except OSError:
            pass
        proc.communicate()
        return Known(None, f"`{command}` did not answer within {timeout:g}s", command)
    text = out.decode("utf-8", "replace")
    if proc.returncode != 0:
        last = (err.decode("utf-8", "replace").strip().splitlines() or [f"exit code {proc.returncode}"])[-1]
        return Known(None, f"`{command}` failed: {last.strip()[:200]}", command)
    flags = parse_help(text)
    if not flags:
        return Known(None, f"`{command}` listed no --flags", command)
    return Known(flags, command=command)
