"""The CLI's shape: every subcommand has a description in its --help and takes --registry before or after it."""

import importlib.metadata
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import child_env, cockpit, make_dir, registry_file

from cockpit import cli
from cockpit import registry as reg


def test_every_subcommand_help_has_its_description(capsys):
    parser = cli.build_parser()
    commands = parser._subparsers._group_actions[0].choices  # the subcommands argparse knows
    assert set(commands) == {
        "status",
        "resume",
        "launch",
        "stop",
        "resubmit",
        "report",
        "gpus",
        "completion",
        "logs",
        "export",
    }
    for name in commands:
        with pytest.raises(SystemExit) as done:
            cli.main([name, "--help"])
        assert done.value.code == 0
        out = capsys.readouterr().out
        func = commands[name].get_default("func")
        first = " ".join(func.__doc__.split())[:40]
        assert f"usage: cockpit {name}" in out and first in " ".join(out.split()), name
        assert "--registry PATH" in out, name


def test_registry_before_or_after_the_subcommand(tmp_path):
    parser = cli.build_parser()
    assert parser.parse_args(["--registry", "a.toml", "status"]).registry == "a.toml"
    assert parser.parse_args(["status", "--registry", "b.toml"]).registry == "b.toml"
    assert parser.parse_args(["--registry", "a.toml", "status", "--registry", "b.toml"]).registry == "b.toml"
    assert parser.parse_args(["status"]).registry is None  # none named: found (see below)


def test_registry_found_upward_from_any_subdirectory(tmp_path, monkeypatch):
    monkeypatch.delenv(reg.REGISTRY_ENV, raising=False)
    path = registry_file(tmp_path)
    deep = tmp_path / "a" / "b" / "c"
    deep.mkdir(parents=True)
    assert reg.find_registry(deep) == path
    assert reg.find_registry(tmp_path) == path
    monkeypatch.chdir(tmp_path)
    assert reg.find_registry() == Path("experiments.toml")  # here: the bare name, as before
    # the real CLI, from a subdirectory: the checkout's registry, and the next command needs no --registry
    r = cockpit("status", cwd=deep)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[0] == f"nanochat moe-fp8  ({path})"
    nxt = next(line for line in r.stdout.splitlines() if line.startswith("next:"))
    assert "--registry" not in nxt


@pytest.mark.slow
def test_registry_from_the_environment(tmp_path, monkeypatch):
    path = registry_file(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    assert reg.find_registry(elsewhere, {reg.REGISTRY_ENV: str(path)}) == path
    # the environment wins over a registry found upward; --registry wins over both
    other = registry_file(elsewhere)
    assert reg.find_registry(elsewhere, {reg.REGISTRY_ENV: str(path)}) == path
    assert reg.find_registry(elsewhere, {}) == other
    env = {**child_env(), reg.REGISTRY_ENV: str(path)}
    r = subprocess.run(
        [sys.executable, "-m", "cockpit.cli", "status"],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0 and r.stdout.splitlines()[0].endswith(f"({path})"), r.stderr
    r = subprocess.run(
        [sys.executable, "-m", "cockpit.cli", "status", "--registry", str(other)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0 and r.stdout.splitlines()[0].endswith(f"({other})"), r.stderr
    # a $COCKPIT_REGISTRY that names nothing is one line, exit 2
    env[reg.REGISTRY_ENV] = str(tmp_path / "nope.toml")
    r = subprocess.run(
        [sys.executable, "-m", "cockpit.cli", "status"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (r.returncode, r.stdout) == (2, "")
    assert r.stderr == f"cockpit: {tmp_path}/nope.toml: $COCKPIT_REGISTRY names no registry file\n"


@pytest.mark.slow
@pytest.mark.parametrize("command", [["status"], ["resume"], ["launch", "x"], [], ["stop", "x"]])
def test_no_registry_anywhere_says_where_it_looked(tmp_path, command):
    # tmp_path's parents hold no experiments.toml (/tmp and /): every command that needs one says so
    assert not any((d / "experiments.toml").exists() for d in tmp_path.parents)
    env = {k: v for k, v in child_env().items() if k != reg.REGISTRY_ENV}
    r = subprocess.run(
        [sys.executable, "-m", "cockpit.cli", *command],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (r.returncode, r.stdout) == (2, "")
    assert r.stderr == (
        f"cockpit: experiments.toml: registry file not found in {tmp_path} or any directory "
        "above it; give --registry PATH or set $COCKPIT_REGISTRY\n"
    )


@pytest.mark.slow
def test_report_needs_no_registry(tmp_path):
    d = make_dir(tmp_path, "20261126_043113_cpu-smoke", {"dense": ("done", "cpu-smoke/dense.log")})
    env = {k: v for k, v in child_env().items() if k != reg.REGISTRY_ENV}
    r = subprocess.run(
        [sys.executable, "-m", "cockpit.cli", "report", "--exp-dir", str(d)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0 and "| dense |" in r.stdout, r.stderr


@pytest.mark.slow
def test_version_is_the_installed_distributions(monkeypatch):
    r = cockpit("--version")
    assert (r.returncode, r.stdout, r.stderr) == (
        0,
        f"cockpit {importlib.metadata.version('nanochat-cockpit')}\n",
        "",
    )

    def not_installed(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", not_installed)  # run from a bare source tree
    assert cli.version() == "unknown (nanochat-cockpit is not installed: pip install -e .)"


def complete(script: str, words: list[str], cwd: Path) -> list[str]:
    """What bash offers for the last of `words` (a command line being typed), with the script loaded."""
    line = " ".join(words)
    code = (
        f'source "$1"; COMP_WORDS=({" ".join(repr(w) for w in words)}); COMP_CWORD={len(words) - 1}; '
        f'COMP_LINE={line!r}; COMP_POINT=${{#COMP_LINE}}; _shtab_cockpit; printf "%s\\n" "${{COMPREPLY[@]}}"'
    )
    r = subprocess.run(
        ["bash", "-c", code, "bash", script], cwd=cwd, capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0, r.stderr
    return r.stdout.split()


@pytest.mark.slow
def test_completion_scripts_complete_commands_flags_and_paths(tmp_path, capsys, monkeypatch):
    assert shutil.which("bash")
    r = cockpit("completion", "bash")
    assert r.returncode == 0 and r.stderr == "", r.stderr
    script = tmp_path / "cockpit.bash"
    script.write_text(r.stdout)
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs.txt").write_text("")
    assert complete(str(script), ["cockpit", "st"], tmp_path) == ["status", "stop"]
    assert complete(str(script), ["cockpit", "c"], tmp_path) == ["completion"]
    assert complete(str(script), ["cockpit", "launch", "x", "--d"], tmp_path) == ["--dry-run"]
    assert "--json" in complete(str(script), ["cockpit", "status", "--"], tmp_path)
    assert complete(str(script), ["cockpit", "report", "--exp-dir", "ru"], tmp_path) == ["runs"]  # dirs only
    assert complete(str(script), ["cockpit", "status", "--registry", "runs."], tmp_path) == ["runs.txt"]
    assert cli.main(["completion", "zsh"]) == 0
    zsh = capsys.readouterr().out
    assert zsh.startswith("#compdef cockpit") and "status" in zsh and "_files" in zsh
    assert cli.main(["completion", "tcsh"]) == 0 and "complete cockpit" in capsys.readouterr().out
    # without the optional shtab: one line saying how to get it, exit 2
    monkeypatch.setattr(cli, "shtab", None)
    assert cli.main(["completion", "bash"]) == 2
    out = capsys.readouterr()
    assert out.out == "" and out.err == (
        "cockpit: completion needs shtab, which is not installed: "
        "pip install -e '.[completion]' (or: pip install shtab)\n"
    )
