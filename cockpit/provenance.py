"""Where a run came from, and what differs between two runs' origins.

A delta means something only when the two runs differ in what the experiment changed and in
nothing else. So a launch records, in its plan.json, everything else a run's speed or loss
depends on that the cockpit can see:

- the code: git branch and commit, whether the tree had uncommitted changes, and then those
  changes themselves (`git diff HEAD`, streamed into `<dir>/git.patch`, its sha256 in the plan);
  a dir that is no checkout is recorded as "not a git checkout";
- the machine: host, the GPUs' model and driver (NVML);
- the trainer's environment: the Python, torch, CUDA and NCCL versions of the interpreter the
  legs run with (read by that interpreter in a subprocess: the cockpit never imports torch), and
  the variables that steer devices and threads (`CUDA_VISIBLE_DEVICES`, `NCCL_*`, `OMP_NUM_THREADS`).

Whatever cannot be read is recorded as such, with why: provenance never stops a launch.
`differences()` compares two plans (a run's, its baseline's) and says, in a few words each, what
differs: the report and the resume guide print it as a warning beside the delta.

Git runs only through checkout.git: read only, and none of the programs the checkout's config
names (filters, diff drivers, fsmonitor, hooks) is run.

Layer 1: imports checkout, fsutil, gpus and plan.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cockpit import checkout, fsutil, gpus
from cockpit.plan import Plan

PATCH_NAME = "git.patch"  # <exp_dir>/git.patch: the uncommitted changes the legs ran with
PATCH_MAX_BYTES = 32 << 20  # a bigger diff is cut there (the plan says so)
GIT_TIMEOUT_S = 10.0  # a status or diff of the whole tree
PROBE_TIMEOUT_S = 20.0  # reading versions starts one Python: well under a second, unless the disk is cold
ENV_NAMES = ("CUDA_VISIBLE_DEVICES", "OMP_NUM_THREADS")  # and every NCCL_* variable
ENV_PREFIXES = ("NCCL_",)

# What the trainer's interpreter runs to say its versions. It finds torch without importing it
# (its version.py read as text), and NCCL from the nvidia-nccl wheel torch depends on, if any.
_PROBE = r"""
import ast, importlib.metadata as md, importlib.util, json, os, platform, sys
out = {"python": platform.python_version(), "executable": sys.executable, "torch": None, "cuda": None, "nccl": None}
spec = importlib.util.find_spec("torch")
if spec is not None and spec.submodule_search_locations:
    path = os.path.join(list(spec.submodule_search_locations)[0], "version.py")
    try:
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read())
    except (OSError, SyntaxError, ValueError) as e:
        out["error"] = f"torch found, its version.py unreadable: {e}"
        tree = None
    for node in tree.body if tree else ():
        target = node.targets[0] if isinstance(node, ast.Assign) else getattr(node, "target", None)
        value = getattr(node, "value", None)
        if isinstance(target, ast.Name) and isinstance(value, ast.Constant):
            if target.id == "__version__":
                out["torch"] = value.value
            elif target.id in ("cuda", "hip"):
                out[target.id] = value.value
nccl = sorted(d.version for d in md.distributions() if (d.metadata["Name"] or "").lower().startswith("nvidia-nccl"))
out["nccl"] = nccl[-1] if nccl else None
print(json.dumps(out))
"""


def git_info(cwd: Path, exp_dir: Path | None = None, digest: bool = False) -> dict[str, Any]:
    """checkout.git_info (top dir, branch, commit), and whether the tree is dirty. When it is and
    `exp_dir` is given, its `git diff HEAD` is streamed into `<exp_dir>/git.patch` (created new
    there), cut at PATCH_MAX_BYTES: never held in memory whole; `digest` without `exp_dir`: only
    hashed, to compare with a patch saved before. Read only; runs no program the checkout's config
    names (see checkout)."""
    info: dict[str, Any] = dict(checkout.git_info(cwd))
    if info["dir"] is None:
        info["dirty"] = None
        return info
    top = Path(info["dir"])
    off = checkout.drivers_off(top)
    if isinstance(off, str):
        info["dirty"], info["error"] = None, off
        return info
    lines = _Lines()
    status = checkout.git(
        top,
        "status",
        "--porcelain",
        "--untracked-files=normal",
        checkout.SUBMODULES,
        overrides=off,
        timeout=GIT_TIMEOUT_S,
        sink=lines.add,
    )
    if status.out is None:
        info["dirty"], info["error"] = None, f"git status: {status.why}"
        return info
    info["dirty"] = lines.tracked > 0  # tracked files changed (the patch)
    info["untracked"] = lines.untracked  # new files: not in the patch
    if info["dirty"] and (exp_dir is not None or digest):
        info.update(_save_patch(top, exp_dir, off))
    return info


class _Lines:
    """`git status --porcelain` counted as it streams: changed tracked files, untracked ones."""

    def __init__(self) -> None:
        self.tracked = self.untracked = 0
        self.rest = b""

    def add(self, chunk: bytes) -> bool:
        *whole, self.rest = (self.rest + chunk).split(b"\n")
        for line in whole:
            if line.startswith(b"??"):
                self.untracked += 1
            elif line:
                self.tracked += 1
        self.rest = self.rest[:3]  # what says which kind the line is, however long its path
        return True


def _save_patch(top: Path, exp_dir: Path | None, off: dict[str, str]) -> dict[str, Any]:
    """`git diff HEAD` streamed into `<exp_dir>/git.patch` (None: nowhere), hashed on the way; git
    is stopped once PATCH_MAX_BYTES are read. What the plan records of it (`patch`, `patch_sha256`,
    `patch_bytes`, `patch_truncated`; or `patch_error`, and no file)."""
    path = exp_dir / PATCH_NAME if exp_dir is not None else None
    fd = None
    if exp_dir is not None:
        try:
            fd = fsutil.create_new(path, root=exp_dir)
        except OSError as e:
            return {"patch_error": f"{PATCH_NAME} not written: {fsutil.oneline(e)}"}
    sha, size, cut = hashlib.sha256(), 0, False

    def write(chunk: bytes) -> bool:
        nonlocal size, cut
        room = PATCH_MAX_BYTES - size
        part = chunk[:room]
        view = memoryview(part)
        while view and fd is not None:
            view = view[os.write(fd, view) :]
        sha.update(part)
        size += len(part)
        cut = len(chunk) > room
        return not cut

    try:
        r = checkout.git(
            top,
            "diff",
            "HEAD",
            "--no-color",
            *checkout.DIFF_OPTIONS,
            overrides=off,
            timeout=GIT_TIMEOUT_S,
            sink=write,
        )
    except OSError as e:
        r = checkout.Result(None, f"{PATCH_NAME} not written: {fsutil.oneline(e)}")
    finally:
        if fd is not None:
            os.close(fd)
    if r.out is None:
        try:
            if path is not None:
                path.unlink()
        except OSError:
            pass
        return {"patch_error": r.why if (r.why or "").startswith(PATCH_NAME) else f"git diff HEAD: {r.why}"}
    return {
        **({"patch": PATCH_NAME} if path is not None else {}),
        "patch_sha256": sha.hexdigest(),
        "patch_bytes": size,
        **({"patch_truncated": True} if cut else {}),
    }


def legs_python(torchrun: str) -> str:
    """The interpreter the legs run with: the one torchrun's first line names, else this one."""
    try:
        with open(torchrun, "rb") as f:
            first = f.readline(4096)
    except OSError:
        return sys.executable
    if first.startswith(b"#!"):
        words = first[2:].decode("utf-8", "replace").split()
        if words and "python" in os.path.basename(words[0]) and os.path.isabs(words[0]):
            return words[0]
    return sys.executable


def trainer_env(
    python: str, cwd: Path | str | None = None, timeout: float = PROBE_TIMEOUT_S
) -> dict[str, Any]:
    """The versions the trainer runs with, read by its interpreter: {"python", "torch", "cuda",
    "nccl", "executable"}; {"error": why} when that interpreter cannot say in time."""
    try:
        out = subprocess.run(
            [python, "-c", _PROBE],
            cwd=cwd,
            capture_output=True,
            timeout=timeout,
            text=True,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired:
        return {"executable": python, "error": f"{python} did not say its versions within {timeout:g}s"}
    except (OSError, ValueError) as e:
        return {"executable": python, "error": f"cannot run {python}: {fsutil.oneline(e)}"}
    try:
        data = json.loads(out.stdout.strip().splitlines()[-1])
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
    except (ValueError, IndexError):
        last = (out.stderr.strip().splitlines() or [f"exit code {out.returncode}"])[-1]
        return {"executable": python, "error": f"{python} did not say its versions: {last[:200]}"}
    return data


def env_vars(environ: dict[str, str] | None = None) -> dict[str, str]:
    """The variables that steer a run's devices and threads, as set (absent ones left out)."""
    environ = os.environ if environ is None else environ
    return {k: environ[k] for k in sorted(environ) if k in ENV_NAMES or k.startswith(ENV_PREFIXES)}


def collect(
    cwd: Path,
    torchrun: str,
    python: str | None = None,
    leg_env: dict[str, str] | None = None,
    exp_dir: Path | None = None,
    digest: bool = False,
) -> dict[str, Any]:
    """Everything a plan records of a launch's origin: {"git": ..., "machine": ..., "trainer":
    ..., "launch_env": ...}, with `<exp_dir>/git.patch` written beside it when the tree is dirty.
    `python`: the legs' interpreter when the registry names one (else the one torchrun's first
    line names); `leg_env`: what the registry adds to the legs' environment (it wins over this
    process's); `digest`: the patch only hashed, when there is no `exp_dir` to save it in."""
    return {
        "git": git_info(cwd, exp_dir, digest),
        "machine": gpus.machine(),
        "trainer": trainer_env(python or legs_python(torchrun), cwd),
        "launch_env": env_vars({**os.environ, **(leg_env or {})}),
    }


# ----------------------------------------------------------------------------------------------
# comparing two origins


def _get(plan: Plan, *keys: str) -> Any:
    """A value of a plan's provenance (`git`, `machine`, `trainer`, `launch_env`, `host`), by its keys."""
    v: Any = getattr(plan, keys[0])
    for k in keys[1:]:
        v = v.get(k) if isinstance(v, Mapping) else None
    return v


def _short(v: Any) -> str:
    if v is None:
        return "unknown"
    text = str(v)
    return text[:12] if len(text) == 40 and all(c in "0123456789abcdef" for c in text) else text[:60]


def leg_argv(plan: Plan, leg: str) -> list[str] | None:
    """A leg's trainer flags as a plan recorded them, with the plan's dir written `{exp_dir}`
    (two launches differ in their dirs, never in that)."""
    run = plan.run(leg)
    if run is None or not run.argv:
        return None
    return normal_argv(list(run.argv), plan.dir)


def normal_argv(argv: list[str], exp_dir: str | None) -> list[str]:
    """A leg's command after its launcher (torchrun's options, the module, the trainer's flags),
    the dir written `{exp_dir}`."""
    return [a.replace(exp_dir, "{exp_dir}") if exp_dir else a for a in argv[1:]]


def _args_differ(base: list[str], run: list[str]) -> str | None:
    """`--depth 2 -> 4, --fp8 dropped` for two flag lists, or None when the same."""

    def as_map(flags: list[str]) -> dict[str, str | None]:
        out: dict[str, str | None] = {}
        i = 0
        while i < len(flags):
            if flags[i].startswith("--") and i + 1 < len(flags) and not flags[i + 1].startswith("--"):
                out[flags[i]], i = flags[i + 1], i + 2
            else:
                out[flags[i]], i = None, i + 1
        return out

    a, b = as_map(base), as_map(run)
    if a == b:
        return None
    said = []
    for k in list(dict.fromkeys([*a, *b])):
        if k not in b:
            said.append(f"{k} {a[k] or ''}".rstrip() + " only in the baseline's")
        elif k not in a:
            said.append(f"{k} {b[k] or ''}".rstrip() + " only in the run's")
        elif a[k] != b[k]:
            said.append(f"{k} {a[k]} -> {b[k]}")
    return ", ".join(said[:6]) + (f" and {len(said) - 6} more" if len(said) > 6 else "")


def unknown(base_plan: Plan | None, run_plan: Plan | None) -> str | None:
    """Why two launches' origins cannot be compared (a dir of manual logs has no plan.json), or None."""
    if base_plan is None and run_plan is None:
        return "neither dir has a plan.json: their git, host, GPUs and versions are unknown"
    if base_plan is None or run_plan is None:
        who = "the baseline's dir" if base_plan is None else "this dir"
        return f"{who} has no plan.json: its git, host, GPUs and versions are unknown"
    return None


def differences(
    base_plan: Plan | None,
    run_plan: Plan | None,
    base_leg: str | None = None,
    expected_argv: list[str] | None = None,
) -> list[str]:
    """What differs between the launch a baseline ran in and the launch of the run compared with
    it, a few words each (`git commit 3f2a1b0c9d8e -> 9c8d7e6f5a4b`). `base_leg`: the baseline
    leg, whose args are compared with `expected_argv` (its flags as the run's launch would give
    them, `{exp_dir}` for the dir), else with the run's plan's own run of that leg."""
    if base_plan is None or run_plan is None:
        return []  # see unknown()
    out = []

    def same(what: str, *keys: str) -> None:
        a, b = _get(base_plan, *keys), _get(run_plan, *keys)
        if a != b and not (a is None and b is None):
            out.append(f"{what} {_short(a)} -> {_short(b)}")

    same("git commit", "git", "commit")
    a_patch, b_patch = _get(base_plan, "git", "patch_sha256"), _get(run_plan, "git", "patch_sha256")
    a_dirty, b_dirty = _get(base_plan, "git", "dirty"), _get(run_plan, "git", "dirty")
    if (a_dirty, a_patch) != (b_dirty, b_patch):

        def said(dirty: Any, sha: Any) -> str:
            return (
                "clean"
                if dirty is False
                else (f"patch {sha[:12]}" if sha else "dirty" if dirty else "unknown")
            )

        out.append(f"uncommitted changes {said(a_dirty, a_patch)} -> {said(b_dirty, b_patch)}")
    same("host", "host")
    a_gpus, b_gpus = _get(base_plan, "machine", "gpus"), _get(run_plan, "machine", "gpus")
    if a_gpus != b_gpus:

        def gpus_(g: Any) -> str:
            if not isinstance(g, list):
                return "unknown"
            if not g:
                return "none"
            models = sorted({str(x) for x in g})
            return f"{len(g)} x {', '.join(models)}"

        out.append(f"GPUs {gpus_(a_gpus)} -> {gpus_(b_gpus)}")
    same("GPU driver", "machine", "driver")
    for key, what in (("python", "trainer Python"), ("torch", "torch"), ("cuda", "CUDA"), ("nccl", "NCCL")):
        same(what, "trainer", key)
    a_env, b_env = _get(base_plan, "launch_env"), _get(run_plan, "launch_env")
    if isinstance(a_env, Mapping) and isinstance(b_env, Mapping) and a_env != b_env:
        for k in sorted(set(a_env) | set(b_env)):
            if a_env.get(k) != b_env.get(k):
                out.append(f"{k} {a_env.get(k, 'unset')} -> {b_env.get(k, 'unset')}")
    if base_leg is not None:
        theirs = leg_argv(base_plan, base_leg)
        ours = expected_argv if expected_argv is not None else leg_argv(run_plan, base_leg)
        if theirs is not None and ours is not None and (d := _args_differ(theirs, ours)):
            out.append(f"args of {base_leg}: {d}")
    return out
