"""The user's own trainer checkout: `workdir`, `python` and `env` in [defaults] (an experiment may
set its own), validated at load, recorded in plan.json, shown in --dry-run, and used by the legs.

The stand-in: a temp checkout with a trainer package `scripts.base_train` (prints what it runs
with, then a few step lines) and its own venv (`python -m venv`), whose torchrun is the real one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from helpers import cockpit

from cockpit import expdir, logs
from cockpit import registry as reg

TRAINER = '''"""A stand-in trainer: says what it runs with, then trains for three steps."""
import os
import sys

print("python prefix:", sys.prefix)
print("cwd:", os.getcwd())
print("STAND_IN:", os.environ.get("STAND_IN"), "OMP:", os.environ.get("OMP_NUM_THREADS"))
print("args:", " ".join(sys.argv[1:]))
for i in range(3):
    print(f"step {i:05d}/00003 ({100 * i / 3:.2f}%) | loss: {6 - i:.6f} | lrm: 1.00 | dt: 10.00ms | "
          f"tok/sec: 1,000 | bf16_mfu: 0.00 | epoch: 0 | total time: 0.00m")
print("Peak memory usage: 1.00MiB")
print("Total training time: 0.00m")
'''


@pytest.fixture(scope="module")
def checkout(tmp_path_factory) -> Path:
    """A trainer checkout with its own venv: scripts/base_train.py, .venv/bin/{python,torchrun}."""
    root = tmp_path_factory.mktemp("user") / "my-nanochat"
    (root / "scripts").mkdir(parents=True)
    (root / "scripts" / "base_train.py").write_text(TRAINER)
    venv = root / ".venv"
    subprocess.run(
        [sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)], check=True
    )
    # torch comes from this test's environment (a .pth file); the torchrun script is pip's, by hand
    purelib = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    Path(purelib, "outer.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    torchrun = venv / "bin" / "torchrun"
    torchrun.write_text(
        f"#!{venv}/bin/python\nimport sys\nfrom torch.distributed.run import main\nsys.exit(main())\n"
    )
    torchrun.chmod(0o755)
    return root


def registry_text(checkout: Path, extra_defaults: str = "", extra_exp: str = "") -> str:
    return f"""[project]
exp_root = "exp"
[defaults]
module = "scripts.base_train"
device = "cpu"
nproc_per_node = 1
workdir = "{checkout}"
python = "{checkout}/.venv/bin/python"
env = {{ OMP_NUM_THREADS = "1", STAND_IN = "defaults" }}
{extra_defaults}
[defaults.args]
model-tag = "x"

[[experiment]]
id = "mine"
{extra_exp}
[[experiment.leg]]
name = "a"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "experiments.toml"
    path.write_text(text)
    return path


def test_runtime_loads_and_merges(tmp_path, checkout):
    r = reg.load(
        write(tmp_path, registry_text(checkout, extra_exp='env = { STAND_IN = "experiment", X = "1" }'))
    )
    rt = r.experiment("mine").runtime
    assert rt.workdir == checkout and rt.python == checkout / ".venv" / "bin" / "python"
    assert rt.torchrun == checkout / ".venv" / "bin" / "torchrun"
    assert rt.env == {
        "OMP_NUM_THREADS": "1",
        "STAND_IN": "experiment",
        "X": "1",
    }  # the experiment's over the defaults'
    assert r.experiment("mine").legs[0].runtime == rt and r.workdir == checkout
    # the venv's python is a symlink: kept as written, never resolved out of the venv
    assert rt.python.is_symlink() and rt.python.parent.name == "bin"
    # relative paths are the registry's dir's
    (tmp_path / "co").symlink_to(checkout)
    r = reg.load(
        write(tmp_path, registry_text(checkout).replace(f'workdir = "{checkout}"', 'workdir = "co"'))
    )
    assert r.workdir == tmp_path / "co"


@pytest.mark.slow
@pytest.mark.parametrize(
    "defaults, line, words",
    [
        ('workdir = "nope"', 7, ["'defaults.workdir'", "/nope does not exist"]),
        ('workdir = "experiments.toml"', 7, ["is not a directory"]),
        ('python = "nope/python"', 8, ["'defaults.python'", "does not exist"]),
        ('python = "experiments.toml"', 8, ["is not an executable file"]),
        ('env = { 1BAD = "x" }', 9, ["key '1BAD' is not an environment variable name"]),
        (
            "env = { OMP_NUM_THREADS = 4 }",
            9,
            ["'defaults.env.OMP_NUM_THREADS' must be a string (quote it: \"4\")"],
        ),
        ('env = { COCKPIT_LEG = "x" }', 9, ["may not set COCKPIT_LEG"]),
        ("env = 3", 9, ["'defaults.env' must be a table"]),
    ],
)
def test_bad_runtime_is_one_located_line(tmp_path, checkout, defaults, line, words):
    text = registry_text(checkout)
    key = defaults.split(" ")[0]
    text = "\n".join(defaults if ln.startswith(f"{key} = ") else ln for ln in text.splitlines())
    with pytest.raises(reg.RegistryError) as e:
        reg.load(write(tmp_path, text))
    assert e.value.line == line, str(e.value)
    for w in words:
        assert w in str(e.value)
    # through the CLI: one line, exit 2
    r = cockpit("--registry", str(tmp_path / "experiments.toml"), "status")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and f"experiments.toml:{line}: " in r.stderr


@pytest.mark.slow
def test_dry_run_shows_the_checkout_the_python_and_the_env(tmp_path, checkout):
    path = write(tmp_path, registry_text(checkout))
    r = cockpit("--registry", str(path), "launch", "mine", "--dry-run", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert "a real launch would be refused" not in r.stdout
    i = lines.index(f"cd {checkout}")
    assert lines[i - 1] == f"# python: {checkout}/.venv/bin/python (its torchrun runs the legs)"
    assert lines[i + 1 : i + 3] == ["export OMP_NUM_THREADS=1", "export STAND_IN=defaults"]
    assert (
        f"{checkout}/.venv/bin/torchrun --standalone --nproc_per_node=1 -m scripts.base_train -- \\" in lines
    )
    # a python with no torchrun beside it: a real launch would be refused, and says why
    bare = tmp_path / "bare"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(bare)], check=True)
    write(
        tmp_path,
        registry_text(checkout).replace(
            f'python = "{checkout}/.venv/bin/python"', f'python = "{bare}/bin/python"'
        ),
    )
    r = cockpit("--registry", str(path), "launch", "mine", "--dry-run")
    assert f"# a real launch would be refused here: torchrun not found beside {bare}/bin/python" in r.stdout
    r = cockpit("--registry", str(path), "launch", "mine")
    assert r.returncode == 2 and "torchrun not found beside" in r.stderr and not (tmp_path / "exp").exists()


@pytest.mark.slow
def test_legs_run_in_the_checkout_with_its_python_and_env(tmp_path, checkout):
    """One real torchrun launch (~5 s): the venv's torchrun, the checkout as cwd, the env."""
    path = write(tmp_path, registry_text(checkout, extra_exp='env = { STAND_IN = "experiment" }'))
    r = cockpit("--registry", str(path), "launch", "mine", "--foreground", cwd=tmp_path, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    exp_dir = Path(r.stdout.strip().splitlines()[-1])
    plan = json.loads((exp_dir / "plan.json").read_text())
    assert plan["cwd"] == str(checkout) and plan["python"] == f"{checkout}/.venv/bin/python"
    assert plan["torchrun"] == f"{checkout}/.venv/bin/torchrun"
    assert plan["env"] == {"OMP_NUM_THREADS": "1", "STAND_IN": "experiment"}
    assert plan["legs"][0]["argv"][:5] == [
        f"{checkout}/.venv/bin/torchrun",
        "--standalone",
        "--nproc_per_node=1",
        "-m",
        "scripts.base_train",
    ]
    log = (exp_dir / "a.log").read_text()
    assert f"python prefix: {checkout}/.venv\n" in log  # the workers run the venv's python
    assert f"cwd: {checkout}\n" in log and "STAND_IN: experiment OMP: 1\n" in log
    assert expdir.open_dir(exp_dir).states["a"].status == "done"
    assert logs.summarize(exp_dir / "a.log").finished
    assert sorted(os.listdir(checkout)) == [".venv", "scripts"]  # nothing written in the user's checkout
