"""cockpit.provenance: what a launch records of its origin (git and its patch, the machine, the
trainer's versions, the environment) and what differs between two launches."""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fake_nvml import FakeNVML
from helpers import write_registry

from cockpit import checkout, gpus, launch, provenance
from cockpit import registry as reg
from cockpit.plan import Plan


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout


def repo(tmp_path: Path) -> Path:
    d = tmp_path / "repo"
    d.mkdir(parents=True)
    git(d, "init", "-q", "-b", "main")
    git(d, "config", "user.email", "t@example.com")
    git(d, "config", "user.name", "t")
    (d / "a.py").write_text("x = 1\n")
    git(d, "add", "a.py")
    git(d, "commit", "-qm", "one")
    return d


def test_git_clean_then_dirty_with_its_patch_and_nothing_changed(tmp_path):
    d = repo(tmp_path)
    out = tmp_path / "exp"
    out.mkdir()
    info = provenance.git_info(d, out)
    assert (info["branch"], info["commit"], info["dirty"], info["untracked"]) == (
        "main",
        git(d, "rev-parse", "HEAD").strip(),
        False,
        0,
    )
    assert "patch" not in info and not (out / "git.patch").exists()
    (d / "a.py").write_text("x = 2\n")
    (d / "new.txt").write_text("not in the patch\n")
    index = (d / ".git" / "index").stat().st_mtime_ns
    info = provenance.git_info(d, out)
    assert info["dirty"] is True and info["untracked"] == 1 and info["patch"] == "git.patch"
    patch = (out / "git.patch").read_bytes()
    assert patch.decode() == git(d, "diff", "HEAD") and "+x = 2" in patch.decode()
    assert info["patch_bytes"] == len(patch) and info["patch_sha256"] == hashlib.sha256(patch).hexdigest()
    assert (d / ".git" / "index").stat().st_mtime_ns == index  # read only: not even the index refreshed
    assert git(d, "status", "--porcelain").splitlines() == [" M a.py", "?? new.txt"]
    assert provenance.git_info(d)["dirty"] is True  # without a dir: no patch written anywhere
    before = sorted(tmp_path.rglob("*"))
    hashed = provenance.git_info(d, digest=True)  # a continuation compares with the saved patch
    assert hashed["patch_sha256"] == info["patch_sha256"] and "patch" not in hashed
    assert sorted(tmp_path.rglob("*")) == before


def test_a_huge_diff_is_streamed_into_the_patch_and_cut(tmp_path, monkeypatch):
    """The diff goes from git's pipe straight into git.patch, a chunk at a time, and git is
    stopped at the cut: the patch is never held in memory whole."""
    monkeypatch.setattr(provenance, "PATCH_MAX_BYTES", 200_000)
    d = repo(tmp_path)
    (d / "a.py").write_text("".join(f"line {i} of a big change\n" for i in range(200_000)))  # a 5 MB diff
    chunks = []
    real = checkout.git

    def spy(cwd, *args, **kw):
        r = real(cwd, *args, **kw)
        if args[0] == "diff":
            chunks.append((kw.get("sink") is not None, r.out))
        return r

    monkeypatch.setattr(checkout, "git", spy)
    out = tmp_path / "exp"
    out.mkdir()
    info = provenance.git_info(d, out)
    assert chunks == [(True, b"")]  # streamed to the file, nothing kept
    patch = (out / "git.patch").read_bytes()
    assert len(patch) == info["patch_bytes"] == 200_000 and info["patch_truncated"] is True
    assert info["patch_sha256"] == hashlib.sha256(patch).hexdigest()
    assert git(d, "diff", "HEAD").encode()[:200_000] == patch


# programs a checkout's git config can name, each planted to leave a mark if git runs it
PLANTS = {
    "core.fsmonitor": "fsmonitor",
    "filter.evil.clean": "clean",
    "filter.evil.smudge": "smudge",
    "filter.evil.process": "process",
    "filter.a=b.clean": "clean-eq",
    "diff.evil.textconv": "textconv",
    "diff.evil.command": "diff-command",
    "diff.external": "diff-external",
    "core.sshCommand": "ssh",
}
HOOKS = ("post-index-change", "reference-transaction", "post-checkout", "pre-auto-gc", "fsmonitor-watchman")


@pytest.mark.slow
def test_git_runs_no_program_the_checkouts_config_names(tmp_path, monkeypatch):
    """fsmonitor, filter drivers (one named with a `=`), textconv, external diffs, hooks, and the
    GIT_* variables of the caller: none runs while provenance, the branch check and the
    collector read the checkout, and the patch is the raw diff."""
    d = repo(tmp_path)
    marks = tmp_path / "marks"
    marks.mkdir()

    def program(name: str) -> str:
        path = tmp_path / f"{name}.sh"
        path.write_text(f"#!/bin/sh\ntouch {marks}/{name}\ncat\n")
        path.chmod(0o755)
        return str(path)

    (d / ".gitattributes").write_text("*.py filter=evil diff=evil\n*.txt filter=a=b\n")
    (d / "b.txt").write_text("b\n")
    git(d, "add", ".")
    git(d, "commit", "-qm", "attributes")
    for key, name in PLANTS.items():
        git(d, "config", key, program(name))
    git(d, "config", "filter.evil.required", "true")
    for hook in HOOKS:
        Path(program(hook)).rename(d / ".git" / "hooks" / hook)
    other = repo(tmp_path / "other")  # the caller's GIT_DIR names another repository: not asked
    monkeypatch.setenv("GIT_DIR", str(other / ".git"))
    monkeypatch.setenv("GIT_EXTERNAL_DIFF", program("env-external-diff"))
    monkeypatch.setenv("GIT_CONFIG_PARAMETERS", f"'core.fsmonitor'='{program('env-fsmonitor')}'")
    time.sleep(1.1)  # past the index's stat times: git must look at the contents (and filter them)
    (d / "a.py").write_text("x = 2\n")
    (d / "b.txt").write_text("c\n")
    out = tmp_path / "exp"
    out.mkdir()
    info = provenance.git_info(d, out)
    assert checkout.branch_check(d, "main").ok and checkout.git_info(d)["branch"] == "main"
    assert sorted(p.name for p in marks.iterdir()) == []
    assert info["dirty"] is True and "error" not in info and info["dir"] == str(d)
    patch = (out / "git.patch").read_text()
    assert "-x = 1\n+x = 2" in patch and "-b\n+c" in patch


def test_a_dir_that_is_no_checkout_is_recorded_so(tmp_path):
    """Not the cockpit's own checkout, nor one git finds above by searching up from the dir: a
    dir is a checkout when it is one's top or a dir that checkout's HEAD holds."""
    plain = tmp_path / "plain"
    plain.mkdir()
    nothing = {"dir": None, "branch": None, "commit": None, "error": "not a git checkout", "dirty": None}
    assert provenance.git_info(plain) == nothing
    home = repo(tmp_path)  # a home dir that is itself a checkout (dotfiles)
    scratch = home / "scratch" / "work"
    scratch.mkdir(parents=True)
    (scratch / "train.py").write_text("untracked\n")
    assert provenance.git_info(scratch) == nothing
    assert (
        checkout.branch_check(scratch, "main").text()
        == f"{scratch} is not a git checkout; the registry expects main"
    )
    sub = home / "src"
    sub.mkdir()
    (sub / "m.py").write_text("tracked\n")
    git(home, "add", "src")
    git(home, "commit", "-qm", "src")
    info = provenance.git_info(sub)
    assert (info["dir"], info["branch"], info["dirty"]) == (str(home), "main", False)
    r = launch.plan_data(*_registry_and_plan(plain))
    assert r.git["commit"] is None and r.git["error"] == "not a git checkout"


def _registry_and_plan(workdir: Path):
    path = write_registry(workdir, {"a": "model-tag = 'a'"})
    registry = reg.load(path)
    return registry, launch.plan_launch(registry, "fake"), registry.settings.exp_root / "20260101_000000_fake"


def test_trainer_versions_are_read_by_the_legs_python(tmp_path):
    torchrun = Path(sys.executable).parent / "torchrun"
    assert (
        provenance.legs_python(str(torchrun)) == sys.executable
        or Path(provenance.legs_python(str(torchrun))).resolve() == Path(sys.executable).resolve()
    )
    env = provenance.trainer_env(sys.executable)
    assert env["torch"] == importlib.metadata.version("torch")  # without importing torch
    assert env["python"] == ".".join(map(str, sys.version_info[:3])) and env["cuda"] is None  # the CPU wheel
    broken = tmp_path / "python"
    broken.write_text("#!/bin/sh\necho 'no python here' >&2\nexit 3\n")
    broken.chmod(0o755)
    assert provenance.trainer_env(str(broken)) == {
        "executable": str(broken),
        "error": f"{broken} did not say its versions: no python here",
    }
    slow = tmp_path / "slow"
    slow.write_text("#!/bin/sh\nsleep 5\n")
    slow.chmod(0o755)
    assert "did not say its versions within 0.2s" in provenance.trainer_env(str(slow), timeout=0.2)["error"]
    assert "cannot run" in provenance.trainer_env(str(tmp_path / "missing"))["error"]
    script = tmp_path / "torchrun"
    script.write_text("#!/usr/bin/python3.99 -u\n")
    assert provenance.legs_python(str(script)) == "/usr/bin/python3.99"
    script.write_text("#!/bin/sh\n")
    assert provenance.legs_python(str(script)) == sys.executable


def test_environment_and_machine():
    environ = {
        "NCCL_DEBUG": "INFO",
        "NCCL_P2P_DISABLE": "1",
        "OMP_NUM_THREADS": "4",
        "CUDA_VISIBLE_DEVICES": "0,1",
        "HOME": "/root",
        "NCCLX": "no",
    }
    assert provenance.env_vars(environ) == {
        "CUDA_VISIBLE_DEVICES": "0,1",
        "NCCL_DEBUG": "INFO",
        "NCCL_P2P_DISABLE": "1",
        "OMP_NUM_THREADS": "4",
    }
    assert gpus.machine(FakeNVML(n=2)) == {
        "gpus": ["NVIDIA H100 80GB HBM3"] * 2,
        "driver": "550.54.15",
        "cuda_driver": "12.4",
    }
    assert gpus.machine(FakeNVML(init_error=9))["error"].startswith("NVML unavailable: ")


def test_a_launch_records_its_origin_and_saves_the_patch(tmp_path, monkeypatch):
    d = repo(tmp_path)
    (d / "a.py").write_text("x = 3\n")
    reg_path = write_registry(d, {"a": "model-tag = 'a'"})
    reg_path.write_text(
        reg_path.read_text().replace("[defaults.args]", 'env = { NCCL_ALGO = "Tree" }\n[defaults.args]')
    )
    registry = reg.load(reg_path)
    monkeypatch.setenv("NCCL_DEBUG", "WARN")
    monkeypatch.setenv("NCCL_ALGO", "Ring")
    plan = launch.plan_launch(registry, "fake")
    exp_dir = registry.settings.exp_root / "20260101_000000_fake"
    exp_dir.mkdir(parents=True)
    data = launch.write_plan(registry, plan, exp_dir)
    on_disk = json.loads((exp_dir / "plan.json").read_text())
    assert on_disk["git"] == data.git and data.git["dirty"] is True and data.git["patch"] == "git.patch"
    assert (exp_dir / "git.patch").read_text() == git(d, "diff", "HEAD")
    assert data.launch_env["NCCL_DEBUG"] == "WARN" and data.launch_env["NCCL_ALGO"] == "Tree"  # the legs' own
    assert data.env == {"NCCL_ALGO": "Tree"} and ("error" in data.machine or "gpus" in data.machine)
    assert set(data.trainer) >= {"python", "torch", "executable"}
    assert (exp_dir / "git.patch").stat().st_mode & 0o777 == 0o644 and not os.path.islink(
        exp_dir / "git.patch"
    )


BASE = {
    "dir": "/exp/20260101_000000_e",
    "host": "a",
    "git": {"commit": "1" * 40, "dirty": False},
    "machine": {"gpus": ["NVIDIA H100"] * 8, "driver": "550"},
    "trainer": {"python": "3.12.1", "torch": "2.11.0", "cuda": "12.8", "nccl": "2.27.3"},
    "launch_env": {"OMP_NUM_THREADS": "1"},
    "legs": [
        {
            "name": "dense",
            "argv": [
                "/x/torchrun",
                "--standalone",
                "--nproc_per_node=8",
                "-m",
                "m",
                "--",
                "--depth",
                "12",
                "--checkpoint-root",
                "/exp/20260101_000000_e/ckpt",
            ],
        }
    ],
}


def test_differences_name_what_differs():
    same = json.loads(
        json.dumps(BASE).replace("20260101_000000_e", "20260202_000000_e").replace("/x/", "/y/")
    )
    base = Plan.from_dict(BASE)
    assert (
        provenance.differences(base, Plan.from_dict(same), "dense") == []
    )  # another dir, another torchrun path
    other = json.loads(json.dumps(same))
    other["git"] = {"commit": "2" * 40, "dirty": True, "patch_sha256": "ab" * 32}
    other["host"] = "b"
    other["machine"] = {"gpus": ["NVIDIA A100"] * 8, "driver": "550"}
    other["trainer"]["torch"] = "2.12.0"
    other["launch_env"] = {"OMP_NUM_THREADS": "8", "NCCL_ALGO": "Ring"}
    other["legs"][0]["argv"][6:8] = ["--depth", "24"]
    assert provenance.differences(base, Plan.from_dict(other), "dense") == [
        "git commit 111111111111 -> 222222222222",
        "uncommitted changes clean -> patch abababababab",
        "host a -> b",
        "GPUs 8 x NVIDIA H100 -> 8 x NVIDIA A100",
        "torch 2.11.0 -> 2.12.0",
        "NCCL_ALGO unset -> Ring",
        "OMP_NUM_THREADS 1 -> 8",
        "args of dense: --depth 12 -> 24",
    ]
    # the run's launch did not run the baseline leg: its args as the run's registry gives them
    expected = provenance.normal_argv(BASE["legs"][0]["argv"], BASE["dir"])
    without = Plan.from_dict({**same, "legs": []})
    assert provenance.differences(base, without, "dense", expected) == []
    assert provenance.differences(base, without, "dense", [*expected, "--fp8"]) == [
        "args of dense: --fp8 only in the run's"
    ]
    assert provenance.differences(None, base) == [] and provenance.unknown(base, base) is None
    assert (
        provenance.unknown(None, base)
        == "the baseline's dir has no plan.json: its git, host, GPUs and versions are unknown"
    )
    assert provenance.unknown(base, None).startswith("this dir has no plan.json")
    assert provenance.unknown(None, None).startswith("neither dir has a plan.json")


@pytest.mark.slow
def test_a_git_that_cannot_switch_a_filter_off_is_not_asked_about_the_tree(tmp_path, monkeypatch):
    """A git older than GIT_CONFIG_COUNT ignores the overrides (here: as if, the variables
    dropped): the filter is seen still on, and neither status nor diff runs."""
    d = repo(tmp_path)
    mark = tmp_path / "ran"
    (tmp_path / "clean.sh").write_text(f"#!/bin/sh\ntouch {mark}\ncat\n")
    (tmp_path / "clean.sh").chmod(0o755)
    (d / ".gitattributes").write_text("*.py filter=evil\n")
    git(d, "config", "filter.evil.clean", str(tmp_path / "clean.sh"))
    real = checkout.git_env
    monkeypatch.setattr(checkout, "git_env", lambda overrides=None: real(None))
    time.sleep(1.1)
    (d / "a.py").write_text("x = 2\n")
    info = provenance.git_info(d, tmp_path)
    assert info["dirty"] is None and info["error"] == (
        "this git cannot switch off filter.evil.clean (that needs GIT_CONFIG_COUNT, git 2.31 or later)"
    )
    assert not mark.exists() and not (tmp_path / "git.patch").exists()
