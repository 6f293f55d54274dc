"""The Slurm executor: batch scripts (pure), then real jobs on the local two-node cluster: a 2-node
training run, a chain in order, a chain stopped by a failure, a cancel mid-leg, a node lost mid-leg."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psutil
import pytest
from helpers import (
    REPO,
    FakeSampler,
    cockpit,
    fixed_clock,
    log_lines,
    place_corpus,
    ready,
    resume_node,
    select,
    until,
    wait_for,
    write_registry,
)

from cockpit import expdir, launch, report, resume, sbatch_opts, scheduler
from cockpit import registry as reg
from cockpit.executors import slurm, slurm_record
from cockpit.tui.app import CockpitApp
from cockpit.tui.confirm import ConfirmScreen
from cockpit.tui.experiments import Selection

TORCHRUN = str(Path(sys.executable).parent / "torchrun")
HOSTILE = ["$(rm -rf /)", "a;b", "it's", 'say "hi"', "`id`", "$HOME", "back\\slash", "*", "new\nline", ""]
TRAINER_SMOKE = [
    "--device-type",
    "cpu",
    "--depth",
    "2",
    "--max-seq-len",
    "128",
    "--device-batch-size",
    "4",
    "--total-batch-size",
    "1024",
    "--vocab-size",
    "512",
    "--compile-mode",
    "none",
]


def leg(name: str, args: list[str], module: str = "nanochat.base_train", nproc: int = 1) -> slurm.LegCommand:
    return slurm.LegCommand(name, TORCHRUN, nproc, module, tuple(args), uses_gpus=False)


def sbatch_lines(script: str) -> list[str]:
    return [line.removeprefix("#SBATCH ") for line in script.splitlines() if line.startswith("#SBATCH ")]


# ----------------------------------------------------------------------------------------------
# the batch script, without a cluster


def test_render_sbatch_lines(tmp_path):
    settings = slurm.SlurmSettings(
        partition="gpu",
        account="proj1",
        qos="high",
        time="4:00:00",
        nodes=2,
        cpus_per_task=16,
        mem="200G",
        extra_args=("--constraint", "h100", "--exclusive"),
        setup=("source .venv/bin/activate",),
    )
    cmd = slurm.LegCommand("cap1p0", "/opt/venv/bin/torchrun", 8, "nanochat.base_train", ("--depth", "12"))
    script = slurm.render_batch_script(cmd, settings, tmp_path / "exp%1", "/home/u/nanochat", "moe/cap1p0")
    assert sbatch_lines(script) == [
        "--job-name=moe/cap1p0",
        f"--output={tmp_path}/exp%%1/cap1p0.log",  # Slurm expands %: a literal one is doubled
        f"--error={tmp_path}/exp%%1/cap1p0.log",
        "--open-mode=append",
        "--chdir=/home/u/nanochat",
        "--nodes=2",
        "--ntasks-per-node=1",
        "--gpus-per-node=8",  # one per torchrun process by default
        "--no-requeue",
        "--partition=gpu",
        "--account=proj1",
        "--qos=high",
        "--time=4:00:00",
        "--cpus-per-task=16",
        "--mem=200G",
        "--constraint h100 --exclusive",
    ]
    body = script.split("set -e\n", 1)[1]
    assert body.startswith("source .venv/bin/activate\n")
    assert "exec srun --ntasks-per-node=1 --cpus-per-task=16 --kill-on-bad-exit=1" in body
    assert '"--rdzv_id=$SLURM_JOB_ID" --rdzv_backend=c10d "--rdzv_endpoint=$rdzv_host:$rdzv_port"' in body
    assert "-m nanochat.base_train -- \\\n    --depth 12\n" in body


def test_render_gpus_per_node():
    gpu = slurm.LegCommand("a", "torchrun", 4, "m", ())
    cpu = slurm.LegCommand("a", "torchrun", 2, "m", (), uses_gpus=False)
    default = slurm.SlurmSettings()

    def gpus(cmd, settings):
        return [
            x for x in sbatch_lines(slurm.render_batch_script(cmd, settings, "/e", "/w", "j")) if "gpus" in x
        ]

    assert gpus(gpu, default) == ["--gpus-per-node=4"]
    assert gpus(cpu, default) == []
    assert gpus(gpu, slurm.SlurmSettings(gpus_per_node=0)) == []
    assert gpus(cpu, slurm.SlurmSettings(gpus_per_node=2)) == ["--gpus-per-node=2"]


ODD = ["a#b", "two words", "it's", 'say "hi"', "back\\slash", ":colon", "hetjob", "50%"]


def read_back(script: str) -> dict[str, str | None]:
    """The options sbatch reads from a batch script's #SBATCH lines, by long name (the last wins)."""
    return {o.name: o.value for o in sbatch_opts.parse(sbatch_opts.directives(script))}


@pytest.mark.parametrize("odd", ODD)
def test_every_sbatch_value_reads_back_as_given(odd):
    """A `#`, a space, a quote or a backslash in the checkout, the dir or the leg name: sbatch reads
    each #SBATCH value back whole (a `#` is not a comment, a space not a second word)."""
    cmd = slurm.LegCommand(f"leg{odd}", "/t", 1, "m", (), uses_gpus=False)
    settings = slurm.SlurmSettings(extra_args=("--comment", f"c {odd}", f"--mail-user=u{odd}"))
    script = slurm.render_batch_script(cmd, settings, f"/exp/{odd}/d", f"/work/{odd}", f"j{odd}")
    got = read_back(script)
    log = f"/exp/{odd}/d/leg{odd}.log".replace("%", "%%")
    assert (got["chdir"], got["output"], got["error"], got["job-name"]) == (
        f"/work/{odd}",
        log,
        log,
        f"j{odd}",
    )
    assert (got["comment"], got["mail-user"]) == (f"c {odd}", f"u{odd}")
    assert got["no-requeue"] is None and got["nodes"] == "1" and "# leg leg" in script


@pytest.mark.parametrize(
    "settings, words",
    [
        (slurm.SlurmSettings(mem="4G\n#SBATCH --nodes=99"), "control character"),
        (slurm.SlurmSettings(qos=""), "empty value"),
        (
            slurm.SlurmSettings(extra_args=("--outp=/tmp/x",)),
            "--outp=/tmp/x (sbatch reads --output) is set by the cockpit",
        ),
        (
            slurm.SlurmSettings(extra_args=("-Qo/tmp/x",)),
            "-Qo/tmp/x (sbatch reads --output) is set by the cockpit",
        ),
    ],
)
def test_render_refuses_what_no_sbatch_line_can_carry(settings, words):
    with pytest.raises(scheduler.SlurmError, match=re.escape(words)) as e:
        slurm.render_batch_script(slurm.LegCommand("a", "t", 1, "m", ()), settings, "/e", "/w", "j")
    assert "\n" not in str(e.value).replace("\\n", "")
    with pytest.raises(scheduler.SlurmError, match="leg name: .* control character"):
        slurm.render_batch_script(
            slurm.LegCommand("a\n#SBATCH -o/x", "t", 1, "m", ()), slurm.SlurmSettings(), "/e", "/w", "j"
        )


@pytest.mark.parametrize(
    "items, option",
    [
        (["--outp=/tmp/x"], "output"),
        (["--chd=/tmp"], "chdir"),
        (["--depend=afterok:1"], "dependency"),
        (["--arr=1-3"], "array"),
        (["-Qo/tmp/x"], "output"),
        (["-Qo", "/tmp/x"], "output"),
        (["-QD/tmp"], "chdir"),
        (["--jo=x"], "job-name"),
        (["-vW"], "wait"),
        (["-Mother"], "clusters"),
        (["--tasks-per=1"], "tasks-per-node"),
        (["--exclusive", "-J", "x"], "job-name"),
        (["--comment", "--output=/x", "--ntasks-per-n=2"], "ntasks-per-node"),
    ],
)
def test_extra_args_are_read_as_sbatch_reads_them(items, option):
    """An abbreviation or grouped short options name what sbatch reads; a value taken by the option
    before it is a value, not an option."""
    why = reg.extra_args_problem(items)
    assert why and (f"(sbatch reads --{option})" in why or why.startswith(f"--{option}")), why
    assert "is set by the cockpit itself" in why


@pytest.mark.parametrize(
    "items, words",
    [
        (["--ex=1"], "--ex is ambiguous to sbatch (it could be --exclude, --exclusive, --export"),
        (["h100"], "'h100' is not an option"),
        (["--exclusive", "user"], "'user' is not an option"),
        (["-X"], "-X is not an option sbatch knows"),
        (["--contiguous=yes"], "--contiguous takes no value"),
        (["--constraint"], "--constraint needs a value"),
        (["--part=gpu"], "--part=gpu (sbatch reads --partition) has its own key: set partition instead"),
        (["-N2"], "-N2 (sbatch reads --nodes) has its own key: set nodes instead"),
        (["--"], "'--' is not an option"),
    ],
)
def test_extra_args_sbatch_would_refuse_or_misread_are_refused(items, words):
    assert words in (reg.extra_args_problem(items) or "")


def test_extra_args_sbatch_reads_as_written_pass():
    for items in (
        ["--constraint", "h100", "--exclusive"],
        ["-C", "h100"],
        ["--exclusive=user"],
        ["-kQ"],
        ["--comment=two words #1"],
        ["--container-image=nvcr.io#pytorch"],
        ["--gres=gpu:8", "-x", "n3"],
    ):
        assert reg.extra_args_problem(items) is None, items


@pytest.mark.slow
@pytest.mark.usefixtures("slurm_cluster")
def test_the_real_sbatch_reads_odd_paths_and_names_whole(tmp_path):
    """Submitted held: the scheduler has the checkout, the log and the job name exactly as planned,
    for a `#` and a space in the checkout, exp_root and the leg name (nothing runs)."""
    work = tmp_path / "check#out x"
    work.mkdir()
    reg_path = slurm_registry(tmp_path, {"a#1 b": "num-iterations = 5"})
    text = reg_path.read_text().replace('exp_root = "exp"', 'exp_root = "e#p x"')
    text = text.replace("[defaults]\n", f'[defaults]\nworkdir = "{work}"\n', 1)
    reg_path.write_text(text.replace("nodes = 1", 'nodes = 1\nextra_args = ["--hold"]'))
    exp_dir, ids = launched(cockpit("--registry", str(reg_path), "launch", "fake"))
    assert str(exp_dir).startswith(str(tmp_path / "e#p x")) and list(ids) == ["a#1 b"]
    job = scheduler.job_state(ids["a#1 b"])
    out = subprocess.run(
        ["scontrol", "show", "job", "-o", ids["a#1 b"]], capture_output=True, text=True
    ).stdout
    assert f" WorkDir={work} " in out and f" StdOut={exp_dir}/a#1 b.log " in out, out
    assert (job.phase, job.reason, job.name) == ("pending", "JobHeldUser", f"{exp_dir.name}/a_1_b")
    assert states(exp_dir)["a#1 b"].status == "waiting"  # proven the leg's: name, user, output
    r = cockpit("--registry", str(reg_path), "stop", str(exp_dir))
    assert r.returncode == 0, r.stderr
    assert scheduler.queued([ids["a#1 b"]]) == []


def fake_tool(bindir: Path, name: str, body: str) -> None:
    path = bindir / name
    path.write_text(f"#!/bin/bash\n{body}\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


def test_render_hostile_args_reach_the_trainer_verbatim(tmp_path):
    """Run the rendered script with bash, srun and scontrol faked: the argv srun receives is exactly
    torchrun + module + the trainer's args, whatever shell syntax they hold, and nothing ran."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    argv_file = tmp_path / "srun.argv"
    fake_tool(bindir, "srun", f"printf '%s\\0' \"$@\" > {argv_file}")
    fake_tool(
        bindir,
        "scontrol",
        'case "$2" in hostnames) echo n7; echo n8;; node) echo "NodeName=n7 NodeAddr=10.0.0.7 Port=1";; esac',
    )
    args = ["--run", *HOSTILE, "--model-tag", "x y"]
    cmd = slurm.LegCommand("a", "/venv dir/bin/torchrun", 2, "nanochat.base_train", tuple(args))
    script = tmp_path / "a.sbatch"
    script.write_text(slurm.render_batch_script(cmd, slurm.SlurmSettings(nodes=2), tmp_path, tmp_path, "j"))
    env = {
        "PATH": f"{bindir}:/usr/bin:/bin",
        "SLURM_JOB_NODELIST": "n[7-8]",
        "SLURM_JOB_ID": "123",
        "SLURM_NNODES": "2",
        "HOME": str(tmp_path / "home"),
    }
    r = subprocess.run(
        ["bash", str(script)], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=30
    )
    assert r.returncode == 0, r.stderr
    got = argv_file.read_text().split("\0")[:-1]
    assert got == [
        "--ntasks-per-node=1",
        "--kill-on-bad-exit=1",
        "/venv dir/bin/torchrun",
        "--nnodes=2",
        "--nproc_per_node=2",
        "--rdzv_id=123",
        "--rdzv_backend=c10d",
        "--rdzv_endpoint=10.0.0.7:20123",
        "-m",
        "nanochat.base_train",
        "--",
        *args,
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.sbatch", "bin", "srun.argv"]  # no `rm`, no files


def test_chain_plan_prints_sbatch_lines(tmp_path):
    plan = slurm.plan_chain([leg("a", []), leg("b", [])], slurm.SlurmSettings(), tmp_path, REPO, "exp")
    assert plan.argv_lines(tmp_path) == [
        f"sbatch --parsable {tmp_path}/slurm/a.sbatch",
        f"sbatch --parsable '--dependency=afterok:<job id of a>' --kill-on-invalid-dep=yes {tmp_path}/slurm/b.sbatch",
    ]
    cont = slurm.plan_chain(
        [leg("a", []), leg("b", [])], slurm.SlurmSettings(), tmp_path, REPO, "exp", "continue"
    )
    assert "--dependency=afterany:" in cont.argv_lines(tmp_path)[1]
    with pytest.raises(scheduler.SlurmError, match="on_failure 'maybe'"):
        slurm.plan_chain([leg("a", [])], slurm.SlurmSettings(), tmp_path, REPO, "exp", "maybe")


def test_write_script_is_new_file_only(tmp_path):
    path = slurm.write_script(tmp_path, "a", "#!/bin/bash\n")
    assert path == tmp_path / "slurm" / "a.sbatch" and path.read_text() == "#!/bin/bash\n"
    with pytest.raises(scheduler.SlurmError, match="exists"):
        slurm.write_script(tmp_path, "a", "other")
    (tmp_path / "target").write_text("keep")
    (tmp_path / "slurm" / "b.sbatch").symlink_to(tmp_path / "target")
    with pytest.raises(scheduler.SlurmError, match="exists"):
        slurm.write_script(tmp_path, "b", "other")
    assert (tmp_path / "target").read_text() == "keep"


def test_missing_commands_are_one_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    for call in (
        lambda: slurm.submit(tmp_path / "x.sbatch"),
        lambda: scheduler.job_state("1"),
        lambda: scheduler.queued(["1"]),
        lambda: scheduler.cancel(["1"]),
    ):
        with pytest.raises(scheduler.SlurmError, match=r"^\w+ not found on PATH: ") as e:
            call()
        assert "\n" not in str(e.value)


# ----------------------------------------------------------------------------------------------
# the registry's Slurm keys, the plan, the dry run


SLURM_REGISTRY = """[project]
exp_root = "exp"
executor = "slurm"
[project.slurm]
partition = "gpu"
time = "4:00:00"
nodes = 2
extra_args = ["--constraint=h100", "--exclusive"]
setup = ["source /shared/venv/bin/activate"]

[[experiment]]
id = "big"
[experiment.slurm]
nodes = 4
mem = "200G"
[[experiment.leg]]
name = "a"

[[experiment]]
id = "here"
executor = "local"
[[experiment.leg]]
name = "a"
"""


def test_registry_slurm_settings_merge_project_and_experiment(tmp_path):
    registry = reg.loads(SLURM_REGISTRY, tmp_path / "r.toml")
    big, here = registry.experiments
    assert (registry.settings.executor, big.executor, here.executor) == ("slurm", "slurm", "local")
    assert big.slurm == reg.SlurmSettings(
        partition="gpu",
        time="4:00:00",
        nodes=4,
        mem="200G",
        extra_args=("--constraint=h100", "--exclusive"),
        setup=("source /shared/venv/bin/activate",),
    )
    assert here.slurm.nodes == 2 and registry.settings.slurm.mem is None
    assert (
        reg.loads(SLURM_REGISTRY.replace('"4:00:00"', "90"), tmp_path / "r.toml").settings.slurm.time == "90"
    )


@pytest.mark.parametrize(
    "old, new, line, words",
    [
        ("partition = ", "partiton = ", 5, "unknown key 'project.slurm.partiton'; did you mean 'partition'?"),
        ("nodes = 4", 'nodes = "4"', 14, "'experiment.slurm.nodes' must be an integer, not str '4'"),
        ("nodes = 4", "nodes = 0", 14, "'experiment.slurm.nodes' must be between 1 and 4096, not 0"),
        ('executor = "slurm"', 'executor = "pbs"', 3, "'project.executor' must be one of ('local', 'slurm')"),
        ('executor = "local"', 'executor = "Slurm"', 21, "'here.executor' must be one of ('local', 'slurm')"),
        ('"4:00:00"', '"4 hours"', 6, "'project.slurm.time' '4 hours' cannot go on an #SBATCH line"),
        ('"4:00:00"', '"4h"', 6, "'project.slurm.time' must be a Slurm time limit"),
        ('"200G"', '"lots"', 15, "'experiment.slurm.mem' must be a Slurm memory size (like 64G or 500M)"),
        (
            '"--exclusive"',
            '"--comment=two\\nlines"',
            8,
            "'project.slurm.extra_args': '--comment=two\\nlines' holds a control character",
        ),
        (
            '"--exclusive"',
            '"--output=/tmp/x"',
            8,
            "'project.slurm.extra_args': --output=/tmp/x is set by the cockpit",
        ),
        (
            '"--exclusive"',
            '"-o/tmp/x"',
            8,
            "'project.slurm.extra_args': -o/tmp/x (sbatch reads --output) is set by",
        ),
        (
            '"--exclusive"',
            '"--outp=/tmp/x"',
            8,
            "--outp=/tmp/x (sbatch reads --output) is set by the cockpit",
        ),
        ('"--exclusive"', '"-Qo/tmp/x"', 8, "-Qo/tmp/x (sbatch reads --output) is set by the cockpit"),
        ('"--exclusive"', '"--arr=1-3"', 8, "--arr=1-3 (sbatch reads --array) is set by the cockpit"),
        (
            '"source /shared/venv/bin/activate"',
            '"""a\nb"""',
            9,
            "an item of 'project.slurm.setup' must be one line",
        ),
        ("gpu", "gpu'", 5, "'project.slurm.partition' \"gpu'\" cannot go on an #SBATCH line"),
    ],
)
def test_bad_slurm_keys_are_one_located_line(tmp_path, old, new, line, words):
    assert old in SLURM_REGISTRY
    path = tmp_path / "r.toml"
    path.write_text(SLURM_REGISTRY.replace(old, new, 1))
    with pytest.raises(reg.RegistryError) as e:
        reg.load(path)
    assert str(e.value).startswith(f"{path}:{line}: ") and words in str(e.value), str(e.value)
    assert "\n" not in str(e.value)


def test_cli_refuses_a_bad_slurm_key_in_one_line(tmp_path):
    path = tmp_path / "r.toml"
    path.write_text(SLURM_REGISTRY.replace("nodes = 2", "nodes = -1"))
    r = cockpit("--registry", str(path), "launch", "big", "--dry-run")
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr == f"cockpit: {path}:7: 'project.slurm.nodes' must be between 1 and 4096, not -1\n"


@pytest.mark.slow
def test_dry_run_on_slurm_prints_the_scripts_and_sbatch_lines_and_writes_nothing(tmp_path):
    reg_path = slurm_registry(
        tmp_path, {"a": "num-iterations = 5", "b": "num-iterations = 5, model-tag = 'x y'"}, nodes=2
    )
    r = cockpit("--registry", str(reg_path), "launch", "fake", "--dry-run")
    assert r.returncode == 0, r.stderr
    out = r.stdout
    exp_dir = out.split("EXP_DIR=")[1].split("\n")[0]
    assert (
        "# executor: Slurm, one batch job per leg, chained afterok; no local GPU preflight: the scheduler "
        "allocates the GPUs" in out
    )
    for leg in ("a", "b"):
        assert f"# ---- {exp_dir}/slurm/{leg}.sbatch ----\n#!/bin/bash\n" in out
        assert f"#SBATCH --output={exp_dir}/{leg}.log\n" in out
    assert out.count("#SBATCH --nodes=2\n") == 2 and "--model-tag 'x y'" in out
    assert out.rstrip().endswith(
        f"sbatch --parsable {exp_dir}/slurm/a.sbatch\n"
        f"sbatch --parsable '--dependency=afterok:<job id of a>' --kill-on-invalid-dep=yes "
        f"{exp_dir}/slurm/b.sbatch"
    )
    assert not (tmp_path / "exp").exists()


def prepare_registry(tmp_path: Path, legs: dict[str, str], code: str, on_failure: str = "stop") -> Path:
    """slurm_registry with a prepare step that runs `python -c code {exp_root}/_data/x` and creates that dir."""
    reg_path = slurm_registry(tmp_path, legs, on_failure=on_failure)
    text = reg_path.read_text().replace(
        'id = "fake"\n',
        'id = "fake"\n[experiment.prepare]\n'
        f'argv = ["{{python}}", "-c", {json.dumps(code)}, "{{exp_root}}/_data/x"]\n'
        'creates = "{exp_root}/_data/x"\n',
    )
    reg_path.write_text(text)
    return reg_path


def test_slurm_legs_get_the_registrys_env_a_prepare_job_and_no_notify_of_a_supervisor(tmp_path):
    """On Slurm no supervisor runs: the registry's env is exported in each batch script, a prepare
    step whose output is missing is the chain's first job (every leg waits for it to end well),
    and the dry run says notify is not run for these legs."""
    reg_path = prepare_registry(
        tmp_path, {"a": "num-iterations = 5", "b": "num-iterations = 5"}, "x", on_failure="continue"
    )
    text = reg_path.read_text().replace(
        'on_failure = "continue"\n', f'on_failure = "continue"\nnotify = ["{sys.executable}"]\n'
    )
    reg_path.write_text(
        text.replace("[defaults.args]", '[defaults.env]\nHF_HOME = "/data/hf x"\n[defaults.args]')
    )
    registry = reg.load(reg_path)
    plan = launch.plan_launch(registry, "fake")
    out = launch.dry_run_text(registry, plan)
    root = tmp_path / "exp"
    assert "a real launch would be refused" not in out
    assert "\nexport HF_HOME='/data/hf x'\n" in out.split("/a.sbatch ----")[1]  # in the batch script
    assert "# notify: not run for Slurm legs (the scheduler runs them; no supervisor sees them end)" in out
    assert (
        f"# prepare, first ({root}/_data/x missing): the chain's first job runs `{sys.executable} -c x "
        f"{root}/_data/x`; every leg waits for it to end well (afterok)"
    ) in out
    prep = out.split("/slurm/prepare.sbatch ----\n")[1].split("# ---- end ----")[0]
    assert "#SBATCH --nodes=1\n#SBATCH --ntasks=1\n" in prep and "gpus" not in prep
    assert f"\n{shlex.join([sys.executable, '-c', 'x', f'{root}/_data/x'])}\n" in prep
    assert read_back(prep)["output"] == str(out.split("EXP_DIR=")[1].split("\n")[0]) + "/prepare.log"
    lines = out.rstrip().splitlines()[-3:]
    assert lines[0].startswith("sbatch --parsable ") and lines[0].endswith("/slurm/prepare.sbatch")
    assert "'--dependency=afterok:<job id of prepare>' --kill" in lines[1]
    assert "'--dependency=afterok:<job id of prepare>,afterany:<job id of a>' --kill" in lines[2]
    mark = registry.experiment("fake").prepare.mark
    assert f'\nmkdir -p {mark.parent} && echo "$SLURM_JOB_ID" > {mark} || exit 1\n' in prep
    assert prep.rstrip().endswith(f"\nrm -f {mark}")  # removed only once the step ended well
    (root / "_data" / "x").mkdir(parents=True)
    out = launch.dry_run_text(registry, launch.plan_launch(registry, "fake"))
    assert "# prepare: skipped, what it creates exists" in out and "prepare.sbatch" not in out
    mark.parent.mkdir(parents=True)
    mark.write_text("41\n")  # a run before was killed halfway: what it left is not trusted
    out = launch.dry_run_text(registry, launch.plan_launch(registry, "fake"))
    assert f"# prepare, first (its last run did not end well: {mark} is there)" in out
    assert (
        f"\nif [ ! -e {mark} ] && made {root}/_data/x; then" in out.split("/slurm/prepare.sbatch ----\n")[1]
    )


@pytest.mark.slow
@pytest.mark.usefixtures("slurm_cluster")
def test_prepare_runs_as_the_chains_first_job(tmp_path):
    """A missing corpus is made by the chain's first job; the leg starts once it ended well (then
    the chain is stopped: the leg's own run is the other tests')."""
    code = "import os, sys; os.makedirs(sys.argv[1]); print('made', sys.argv[1])"
    reg_path = prepare_registry(tmp_path, {"a": "num-iterations = 3"}, code)
    exp_dir, ids = launched(cockpit("--registry", str(reg_path), "launch", "fake"))
    assert list(ids) == ["prepare", "a"]
    a = wait_for(
        lambda: (st := states(exp_dir)["a"]).status == "running" and st,
        timeout=60,
        every=0.25,
        what="leg a running",
    )
    prep = expdir.open_dir(exp_dir).prepare
    assert (prep.status, prep.job_id) == ("done", ids["prepare"])
    assert re.fullmatch(rf"Slurm job {ids['prepare']} on n[12] completed", prep.note), prep.note
    assert prep.ended_at <= a.started_at  # the scheduler's own times
    assert (tmp_path / "exp" / "_data" / "x").is_dir()
    assert (exp_dir / "prepare.log").read_text() == f"made {tmp_path}/exp/_data/x\n"
    assert f"  {exp_dir.name}  on Slurm;  prepare done;  a running (job {ids['a']} on n" in status_text(
        reg_path
    )
    assert cockpit("--registry", str(reg_path), "stop", str(exp_dir)).returncode == 0


@pytest.mark.slow
@pytest.mark.usefixtures("slurm_cluster")
def test_stopping_the_chain_cancels_its_prepare_job(tmp_path):
    reg_path = prepare_registry(
        tmp_path, {"a": "num-iterations = 3"}, "import time; print('up', flush=True); time.sleep(120)"
    )
    exp_dir, ids = launched(cockpit("--registry", str(reg_path), "launch", "fake"))
    wait_for_line(exp_dir / "prepare.log", "^up$", timeout_s=60)
    r = cockpit("--registry", str(reg_path), "stop", str(exp_dir))
    assert r.returncode == 0, r.stderr
    assert scheduler.queued(list(ids.values())) == []
    d = expdir.open_dir(exp_dir)
    assert (d.prepare.status, d.prepare.note) == ("stopped", "stopped by request (scancel)")
    assert d.states["a"].status == "stopped"


@pytest.mark.slow
@pytest.mark.usefixtures("slurm_cluster")
def test_a_failed_prepare_job_starts_no_leg(tmp_path):
    """The prepare job fails: no leg starts, even under on_failure = continue; status says why."""
    reg_path = prepare_registry(
        tmp_path,
        {"a": "num-iterations = 3", "b": "num-iterations = 3"},
        "import sys; sys.exit('no corpus for you')",
        on_failure="continue",
    )
    exp_dir, ids = launched(cockpit("--registry", str(reg_path), "launch", "fake"))
    end = until_ended(exp_dir, timeout_s=60)
    prep = expdir.open_dir(exp_dir).prepare
    assert (prep.status, prep.note) == ("failed", "exit 1: no corpus for you")
    for leg in "ab":
        assert (end[leg].status, end[leg].note, end[leg].started_at) == (
            "stopped",
            "not started: prepare failed (Slurm: DependencyNeverSatisfied)",
            None,
        )
        assert (exp_dir / f"{leg}.log").stat().st_size == 0
    assert "prepare failed (exit 1: no corpus for you)" in status_text(reg_path)
    assert scheduler.queued(list(ids.values())) == []
    assert reg.load(reg_path).experiment("fake").prepare.mark.exists()  # the next launch runs it again


# scheduler lines as Slurm 22.05 prints them, trimmed
PENDING_LINE = (
    "JobId=12 JobName=exp/b UserId=root(0) JobState=PENDING Reason=Dependency Dependency=afterok:11(unfulfilled) "
    "ExitCode=0:0 RunTime=00:00:00 StartTime=Unknown NodeList= BatchHost=n1"
)
NODE_FAIL_LINE = (
    "JobId=13 JobName=x JobState=NODE_FAIL Reason=NodeDown ExitCode=143:0 RunTime=1-02:03:04 NodeList=n[1-2]"
)
WAITING_LINE = (
    "JobId=14 JobState=PENDING Reason=(ReqNodeNotAvail, UnavailableNodes:n2) RunTime=00:00:00 NodeList="
)


def test_scheduler_lines_become_states():
    pending = scheduler.state_from_fields("12", scheduler.parse_scontrol_job(PENDING_LINE))
    assert (pending.phase, pending.reason, pending.nodes, pending.ran) == (
        "pending",
        "Dependency",
        None,
        False,
    )
    fail = scheduler.state_from_fields("13", scheduler.parse_scontrol_job(NODE_FAIL_LINE))
    assert (fail.phase, fail.reason, fail.nodes, fail.exit_code, fail.elapsed_s) == (
        "failed",
        "NODE_FAIL",
        "n[1-2]",
        143,
        93784,
    )
    waiting = scheduler.parse_scontrol_job(WAITING_LINE)
    assert waiting["Reason"] == "(ReqNodeNotAvail, UnavailableNodes:n2)" and waiting["NodeList"] == ""
    assert scheduler.state_from_fields("1", {"JobState": "CANCELLED", "Reason": "None"}).reason == "CANCELLED"
    assert (
        scheduler.state_from_fields("1", {"JobState": "CANCELLED by 0"}).reason == "CANCELLED"
    )  # sacct's words
    assert (
        scheduler.state_from_fields("1", {"JobState": "FAILED", "Reason": "None"}).reason == "NonZeroExitCode"
    )
    assert (
        scheduler.state_from_fields("1", {"JobState": "TIMEOUT", "Reason": "TimeLimit"}).reason == "TIMEOUT"
    )
    assert scheduler.state_from_fields("1", {"JobState": "COMPLETING"}).phase == "running"
    assert [scheduler.parse_duration(t) for t in ("00:00:07", "1:02:03", "2-00:00:01", "Unknown", None)] == [
        7,
        3723,
        172801,
        None,
        None,
    ]


# ----------------------------------------------------------------------------------------------
# real jobs on the local cluster


def trainer_processes(marker: str, module: str = "tests.fake_trainer") -> list[psutil.Process]:
    """This test's trainer processes (torchrun or worker): their command line holds `marker`."""
    found = []
    for p in psutil.process_iter(["cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if module in cmd and marker in cmd:
            found.append(p)
    return found


def slurm_registry(
    tmp_path: Path,
    legs: dict[str, str],
    nodes: int = 1,
    on_failure: str = "stop",
    module: str = "tests.fake_trainer",
    common: str = 'step-sleep = 0.1\ncheckpoint-root = "{exp_dir}/ckpt_root"',
) -> Path:
    """A registry whose one experiment `fake` runs on Slurm: one torchrun process per node."""
    return write_registry(
        tmp_path,
        legs,
        nproc=1,
        module=module,
        on_failure=on_failure,
        common=common,
        extra_project=f'executor = "slurm"\n[project.slurm]\nnodes = {nodes}',
    )


def launched(r: subprocess.CompletedProcess) -> tuple[Path, dict[str, str]]:
    """The dir a `cockpit launch` printed (its last line) and each leg's job id (the lines before)."""
    assert r.returncode == 0, r.stderr
    *jobs, last = r.stdout.strip().splitlines()
    ids = dict(re.fullmatch(r"(.+): Slurm job (\d+) \(\w+\)", line).groups() for line in jobs)
    return Path(last), ids


def states(exp_dir: Path) -> dict[str, expdir.LegState]:
    """The dir's legs as a client that records what it reads sees them now: asked of the
    scheduler, each change of a leg's status written to its state file (slurm_record.unrecorded;
    `cockpit status` also writes report.md then)."""
    d = expdir.open_dir(exp_dir)
    for st in slurm_record.unrecorded(d):
        expdir.write_state(exp_dir, st)
    return d.states


def until_ended(exp_dir: Path, timeout_s: float = 120.0) -> dict[str, expdir.LegState]:
    return wait_for(
        lambda: (st := states(exp_dir)) and not any(s.active for s in st.values()) and st,
        timeout=timeout_s,
        every=0.5,
        what=f"every leg of {exp_dir.name} to end",
    )


def wait_for_line(log: Path, pattern: str, timeout_s: float = 90.0) -> None:
    wait_for(
        lambda: log.exists() and re.search(pattern, log.read_text(errors="replace"), re.M),
        timeout=timeout_s,
        every=0.25,
        what=f"a line matching {pattern!r} in {log}",
    )


def status_text(reg_path: Path) -> str:
    r = cockpit("--registry", str(reg_path), "status")
    assert r.returncode == 0, r.stderr
    return r.stdout


def status_lines(reg_path: Path) -> dict[str, str]:
    """`cockpit status`: each leg's line of experiment `fake`, by leg name."""
    block = status_text(reg_path).split("\nfake  [", 1)[1].split("\n\n", 1)[0].splitlines()[1:]
    return {line.split()[0]: line.strip() for line in block}


@pytest.mark.slow
@pytest.mark.usefixtures("slurm_cluster")
def test_two_node_leg_of_the_real_trainer_through_the_cli(tmp_path, smoke_corpus):
    """`cockpit launch` of a cpu-smoke-like leg on 2 nodes x 1 process: one training run of world
    size 2 (a micro-batch spans both ranks) on the smoke corpus (parquet shards, its BPE tokenizer,
    a validation eval), done, its log and report in the dir, its job in its state."""
    t0 = time.monotonic()
    corpus = place_corpus(tmp_path / "exp", smoke_corpus)
    smoke = [a for a in TRAINER_SMOKE if a not in ("--vocab-size", "512")] + [
        "--data",
        "parquet",
        "--data-dir",
        f"{corpus}/base_data",
        "--tokenizer-dir",
        f"{corpus}/tokenizer",
        "--eval-every",
        "2",
        "--eval-tokens",
        "2048",
    ]
    common = "\n".join(f'{k[2:]} = "{v}"' for k, v in zip(smoke[::2], smoke[1::2], strict=True))
    common += '\nnum-iterations = 3\ncheckpoint-root = "{exp_dir}/ckpt_root"'
    reg_path = slurm_registry(
        tmp_path, {"smoke": 'model-tag = "smoke"'}, nodes=2, module="nanochat.base_train", common=common
    )
    exp_dir, ids = launched(cockpit("--registry", str(reg_path), "launch", "fake"))
    assert (exp_dir / "slurm" / "smoke.sbatch").is_file() and list(ids) == ["smoke"]
    st = until_ended(exp_dir, timeout_s=180)["smoke"]
    print(f"2-node real-trainer leg: launch to done {time.monotonic() - t0:.1f}s")
    log = (exp_dir / "smoke.log").read_text()
    assert (st.status, st.job_id, st.nodes, st.exit_code) == ("done", ids["smoke"], "n[1-2]", 0), log
    assert "Tokens / micro-batch / rank: 4 x 128 = 512" in log and "Tokens / micro-batch: 1,024" in log
    assert "gradient accumulation steps: 1" in log
    assert re.search(r"^step 00002/00003 ", log, re.M) and "Total training time:" in log
    assert (
        re.search(r"^Step 00002 \| Validation bpb: \d+\.\d{6}$", log, re.M)
        and "Minimum validation bpb:" in log
    )
    assert re.match(
        rf"smoke\s+done\s+job {ids['smoke']} on n\[1-2\]  \S+ tok/s", status_lines(reg_path)["smoke"]
    )
    assert (
        "| smoke | completed |" in (exp_dir / "report.md").read_text()
    )  # written by the status that saw it end


@pytest.mark.slow
@pytest.mark.usefixtures("slurm_cluster")
def test_a_chain_runs_in_order_and_a_failed_leg_stops_it(tmp_path):
    """Three legs chained afterok: the second waits (Dependency) while the first runs, fails, and
    the third never runs; status says each, and the report is regenerated after each leg."""
    reg_path = slurm_registry(
        tmp_path,
        {"a": "num-iterations = 20", "b": "num-iterations = 5, fail-at-step = 2", "c": "num-iterations = 5"},
    )
    exp_dir, ids = launched(cockpit("--registry", str(reg_path), "launch", "fake"))
    plan = json.loads((exp_dir / "plan.json").read_text())
    assert (plan["executor"], plan["slurm"]["nodes"], plan["on_failure"]) == ("slurm", 1, "stop")
    assert plan["legs"][1]["argv"][:2] == [
        plan["torchrun"],
        "--nnodes=$SLURM_NNODES",
    ]  # what srun starts per node
    assert plan["legs"][1]["args"][-2:] == ["--fail-at-step", "2"]
    wait_for_line(exp_dir / "a.log", r"^step 00001/")
    lines = status_lines(reg_path)
    assert lines["a"].startswith(f"a  running   job {ids['a']} on n")
    for leg in ("b", "c"):
        assert (
            lines[leg] == f"{leg}  queued    job {ids[leg]}  (Slurm job {ids[leg]} pending (Dependency): "
            "waits for the leg before it)"
        )
    wait_for(lambda: states(exp_dir)["a"].status == "done", timeout=90, every=0.5, what="a done")
    assert not (exp_dir / "report.md").exists()
    status_lines(reg_path)  # the first status to see a leg ended writes the dir's report
    assert "| a | completed |" in (exp_dir / "report.md").read_text()
    end = until_ended(exp_dir)
    assert [end[n].status for n in "abc"] == ["done", "failed", "stopped"]
    assert end["a"].ended_at <= end["b"].started_at  # the scheduler's own times: in order
    assert end["b"].note is None and end["b"].error_tail[-1].startswith("torchrun: failed")
    assert end["c"].started_at is None and (exp_dir / "c.log").stat().st_size == 0
    lines = status_lines(reg_path)
    assert lines["b"].endswith("(RuntimeError: fake failure at step 2)")
    assert (
        lines["c"] == f"c  stopped   job {ids['c']}  (queue stopped: a leg before it did not end done "
        "(on_failure = stop; Slurm: DependencyNeverSatisfied), before it started)"
    )
    report = (exp_dir / "report.md").read_text()
    assert "| a | completed |" in report and "| b | failed |" in report and "| c | stopped |" in report
    assert scheduler.queued(list(ids.values())) == []


@pytest.mark.slow
@pytest.mark.usefixtures("slurm_cluster")
def test_cockpit_stop_mid_leg_leaves_no_job_and_no_process(tmp_path):
    """`cockpit stop DIR` cancels the running leg and the rest of the chain (afterany: the next leg
    would otherwise start): squeue lists none of them, no trainer process is left on any node."""
    marker = str(tmp_path / "exp")
    reg_path = slurm_registry(
        tmp_path,
        {"long": "num-iterations = 10000", "after": "num-iterations = 5"},
        nodes=2,
        on_failure="continue",
    )
    exp_dir, ids = launched(cockpit("--registry", str(reg_path), "launch", "fake"))
    wait_for_line(exp_dir / "long.log", r"^step 00001/")
    assert len(trainer_processes(marker)) >= 4  # a torchrun and a worker on each node
    t0 = time.monotonic()
    r = cockpit("--registry", str(reg_path), "stop", str(exp_dir))
    print(f"cockpit stop: {time.monotonic() - t0:.1f}s")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [
        "long: stopped (stopped by request (scancel))",
        "after: stopped (stopped by request (scancel), before it started)",
        str(exp_dir),
    ]
    assert scheduler.queued(list(ids.values())) == []
    assert trainer_processes(marker) == []
    lines = status_lines(reg_path)
    assert lines["long"].startswith(f"long   stopped   job {ids['long']} on n[1-2]")
    assert lines["after"].startswith(f"after  stopped   job {ids['after']}  (stopped by request")
    assert (exp_dir / "after.log").stat().st_size == 0
    r = cockpit("--registry", str(reg_path), "stop", str(exp_dir))
    assert (
        r.returncode == 2 and r.stderr.strip() == f"cockpit: nothing queued or running on Slurm in {exp_dir}"
    )


@pytest.mark.slow
@pytest.mark.usefixtures("slurm_cluster")
def test_a_node_lost_mid_leg_fails_it_with_the_schedulers_reason(tmp_path):
    marker = str(tmp_path / "exp")
    reg_path = slurm_registry(tmp_path, {"a": "num-iterations = 1000"}, nodes=2)
    exp_dir, ids = launched(cockpit("--registry", str(reg_path), "launch", "fake"))
    try:
        wait_for_line(exp_dir / "a.log", r"^step 00001/")
        subprocess.run(["scontrol", "update", "nodename=n2", "state=down", "reason=test"], check=True)
        st = until_ended(exp_dir, timeout_s=60)["a"]
    finally:
        resume_node("n2")
    note = f"NODE_FAIL (Slurm job {ids['a']} on n[1-2])"
    assert (st.status, st.note, st.error_tail[-1]) == ("failed", note, note)
    assert status_lines(reg_path)["a"].endswith(f"({note})")  # the scheduler's reason, not a log line
    assert scheduler.queued([ids["a"]]) == []
    # the scheduler kills the job's processes on both nodes (here the downed one is still reachable)
    wait_for(lambda: trainer_processes(marker) == [], timeout=10, what="no trainer process left")


@pytest.mark.slow
@pytest.mark.usefixtures("slurm_cluster")
def test_a_launch_the_scheduler_refuses_is_one_line_and_writes_nothing(tmp_path):
    reg_path = slurm_registry(tmp_path, {"a": "num-iterations = 5"}, nodes=3)  # the cluster has 2 nodes
    r = cockpit("--registry", str(reg_path), "launch", "fake")
    assert r.returncode == 2 and r.stdout == ""
    assert (
        r.stderr
        == "cockpit: Slurm refuses leg a: allocation failure: Requested node configuration is not available\n"
    )
    assert not (tmp_path / "exp").exists() or [p.name for p in (tmp_path / "exp").iterdir()] == [
        ".cockpit-locks"
    ]


@pytest.mark.slow
@pytest.mark.usefixtures("slurm_cluster")
def test_a_foreground_launch_waits_for_the_chain(tmp_path):
    reg_path = slurm_registry(tmp_path, {"a": "num-iterations = 3", "b": "num-iterations = 3"})
    r = cockpit("--registry", str(reg_path), "launch", "fake", "--foreground")
    assert r.returncode == 0, r.stderr
    exp_dir = Path(r.stdout.splitlines()[-1])
    ids = {n: s.job_id for n, s in states(exp_dir).items()}
    lines = r.stdout.splitlines()  # each leg's end as the scheduler tells it, then the summary
    for line, leg in zip(lines[:2], "ab", strict=True):
        assert re.fullmatch(rf"{leg}: done \(Slurm job {ids[leg]} on n[12] completed\)", line), line
    assert lines[2:] == ["a: done", "b: done", str(exp_dir)]


@pytest.mark.slow
@pytest.mark.usefixtures("slurm_cluster")
def test_a_job_the_scheduler_forgot_is_judged_from_its_log(tmp_path):
    """Past MinJobAge (no accounting here) scontrol no longer knows a job: a leg recorded as
    running or queued is then judged from its log, never taken for running, and recorded."""
    exp_dir = tmp_path / "exp" / "20260101_000000_fake"
    logs = {
        "ok": log_lines(5, 5),
        "crashed": log_lines(3, 5, crash=True),
        "cut": log_lines(3, 5, finished=False),
        "never": [],
    }
    plan = {"experiment": "fake", "executor": "slurm", "legs": [{"name": n} for n in logs]}
    (exp_dir / "state").mkdir(parents=True)
    (exp_dir / "plan.json").write_text(json.dumps(plan))
    for i, (name, lines) in enumerate(logs.items()):
        (exp_dir / f"{name}.log").write_text("".join(x + "\n" for x in lines))
        expdir.write_state(
            exp_dir,
            expdir.LegState(
                name,
                "running" if lines else "queued",
                job_id=str(999999990 + i),
                log=str(exp_dir / f"{name}.log"),
            ),
        )
        past = time.time() - 600  # ended long ago: a log written just now would not be judged yet
        os.utime(exp_dir / f"{name}.log", (past, past))
    got = states(exp_dir)
    assert {n: got[n].status for n in logs} == {
        "ok": "done",
        "crashed": "failed",
        "cut": "failed",
        "never": "stopped",
    }
    assert all(got[n].forgotten_at for n in logs)
    assert "forgotten by the scheduler" in got["ok"].note and got["ok"].exit_code_known is False
    assert got["crashed"].error_tail[-1] == "RuntimeError: CUDA out of memory (fake)"
    assert got["cut"].note.endswith("(neither finished nor crashed)")
    assert (
        got["never"].note
        == "Slurm job 999999993 ended without writing to its log; the scheduler has forgotten it"
    )
    assert json.loads((exp_dir / "state" / "ok.json").read_text())["status"] == "done"  # recorded once


def slurm_dir(root: Path, legs: list[str]) -> Path:
    """A Slurm experiment dir with a plan of these legs, no state yet."""
    exp_dir = root / "20260101_000000_fake"
    (exp_dir / "state").mkdir(parents=True)
    (exp_dir / "plan.json").write_text(
        json.dumps({"experiment": "fake", "executor": "slurm", "legs": [{"name": n} for n in legs]})
    )
    return exp_dir


def held_job(name: str, output: Path) -> str:
    """A job submitted held (it never runs until released) with this name and output."""
    r = subprocess.run(
        [
            "sbatch",
            "--parsable",
            "--hold",
            f"--job-name={name}",
            f"--output={output}",
            "--time=1",
            "--wrap=true",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 0, r.stderr
    return r.stdout.strip().split(";")[0]


@pytest.mark.slow
@pytest.mark.usefixtures("slurm_cluster")
def test_a_job_not_proven_the_legs_is_never_shown_or_cancelled_as_it(tmp_path):
    """A state file naming someone else's job id (another name; the leg's name but another output):
    status says unknown and why, `cockpit stop` cancels nothing, the jobs stay queued."""
    reg_path = slurm_registry(tmp_path, {"a": "num-iterations = 5", "b": "num-iterations = 5"})
    exp_dir = slurm_dir(tmp_path / "exp", ["a", "b"])
    foreign = held_job("someone/else", tmp_path / "foreign.log")
    same_name = held_job(f"{exp_dir.name}/b", tmp_path / "elsewhere.log")
    try:
        expdir.write_state(exp_dir, expdir.LegState("a", "running", job_id=foreign))
        expdir.write_state(exp_dir, expdir.LegState("b", "queued", job_id=same_name))
        got = states(exp_dir)
        assert (got["a"].status, got["b"].status) == ("unknown", "unknown")
        assert got["a"].note == (
            f"unknown: Slurm job {foreign} is not proven the leg's (its name is 'someone/else', "
            f"not '{exp_dir.name}/a'); nothing will be cancelled"
        )
        assert got["b"].note.endswith(
            f"(its output goes to {tmp_path}/elsewhere.log, not the leg's log); nothing will be cancelled"
        )
        assert got["a"].nodes is None  # nothing of the foreign job is taken for the leg's
        r = cockpit("--registry", str(reg_path), "stop", str(exp_dir))
        assert r.returncode == 2 and "nothing stopped" in r.stderr and "is not proven the leg's" in r.stderr
        assert r.stderr.count("\n") == 1
        assert scheduler.queued([foreign, same_name]) == [foreign, same_name]
        assert "unknown" in status_lines(reg_path)["a"]
        assert (
            json.loads((exp_dir / "state" / "a.json").read_text())["status"] == "running"
        )  # nothing recorded
    finally:
        scheduler.cancel([foreign, same_name])


def lying_scontrol(bindir: Path) -> None:
    """An scontrol that answers "Invalid job id" about every job (as one asked mid-failover may),
    and passes anything else to the real one."""
    bindir.mkdir(exist_ok=True)
    real = shutil.which("scontrol")
    fake_tool(
        bindir,
        "scontrol",
        f'if [ "$1 $2" = "show job" ]; then echo "slurm_load_jobs error: Invalid job id '
        f'specified" >&2; exit 1; fi\nexec {real} "$@"',
    )


@pytest.mark.slow
@pytest.mark.usefixtures("slurm_cluster")
def test_one_wrong_invalid_job_id_neither_forgets_the_job_nor_keeps_it_forgotten(tmp_path, monkeypatch):
    """scontrol says "Invalid job id" about a queued job: squeue still lists it, so the leg waits on
    (nothing recorded). A leg recorded as forgotten by an earlier wrong answer is revived when the
    scheduler knows its job again, and a second launch of the experiment is refused."""
    root = tmp_path / "exp"
    exp_dir = slurm_dir(root, ["a", "b"])
    jobs = {leg: held_job(scheduler.job_name(exp_dir.name, leg), exp_dir / f"{leg}.log") for leg in "ab"}
    try:
        expdir.write_state(exp_dir, expdir.LegState("a", "queued", job_id=jobs["a"]))
        expdir.write_state(
            exp_dir,
            expdir.LegState(
                "b",
                "failed",
                job_id=jobs["b"],
                forgotten_at=expdir.now_iso(),
                note="Slurm job is forgotten by the scheduler",
                exit_code_known=False,
                ended_at=expdir.now_iso(),
            ),
        )
        lying_scontrol(tmp_path / "bin")
        monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{os.environ['PATH']}")
        a = states(exp_dir)["a"]
        assert (a.status, a.waiting_reason) == (
            "waiting",
            f"Slurm job {jobs['a']} pending in Slurm: JobHeldUser",
        )
        assert json.loads((exp_dir / "state" / "a.json").read_text())["status"] == "waiting"
        monkeypatch.undo()
        b = states(exp_dir)["b"]
        assert (b.status, b.forgotten_at, b.ended_at, b.error_tail) == ("waiting", None, None, [])
        assert (
            json.loads((exp_dir / "state" / "b.json").read_text())["status"] == "waiting"
        )  # revived, recorded
        assert launch.running_elsewhere(root, "fake").path == exp_dir
    finally:
        scheduler.cancel(list(jobs.values()))


def test_a_forgotten_job_whose_log_is_fresh_is_not_judged_and_an_old_judgment_is_not_asked_again(
    tmp_path, monkeypatch
):
    """No scheduler command knows the job: a log written seconds ago leaves the leg unknown (nothing
    recorded); a leg judged forgotten a day ago, its log unchanged since, is not asked about."""
    exp_dir = slurm_dir(tmp_path, ["a", "b"])
    bindir = tmp_path / "bin"
    bindir.mkdir()
    asked = tmp_path / "asked"
    for tool in ("scontrol", "squeue"):
        fake_tool(
            bindir,
            tool,
            f'echo "{tool} $*" >> {asked}; echo "slurm_load_jobs error: Invalid job id specified" '
            ">&2; exit 1",
        )
    fake_tool(
        bindir, "sacct", f'echo "sacct" >> {asked}; echo "Slurm accounting storage is disabled" >&2; exit 1'
    )
    monkeypatch.setenv("PATH", str(bindir))
    (exp_dir / "a.log").write_text("".join(x + "\n" for x in log_lines(5, 5)))
    expdir.write_state(exp_dir, expdir.LegState("a", "running", job_id="41"))
    long_ago = (dt.datetime.now().astimezone() - dt.timedelta(seconds=expdir.REVIVE_S + 60)).isoformat()
    (exp_dir / "b.log").write_text("".join(x + "\n" for x in log_lines(5, 5)))
    old = time.time() - expdir.REVIVE_S - 120
    os.utime(exp_dir / "b.log", (old, old))
    expdir.write_state(exp_dir, expdir.LegState("b", "done", job_id="42", forgotten_at=long_ago))
    got = states(exp_dir)
    assert got["a"].status == "unknown" and got["a"].note.startswith(
        "unknown: the scheduler does not know Slurm job 41, but its log was written "
    )
    assert json.loads((exp_dir / "state" / "a.json").read_text())["status"] == "running"
    assert got["b"].status == "done"
    assert [line.split(" -")[0] for line in asked.read_text().splitlines()] == [
        "scontrol show job",
        "squeue",
        "sacct",
    ]  # about a only: every source, b not asked
    os.utime(exp_dir / "b.log")  # written after the judgment: something wrote it, ask again
    asked.unlink()
    states(exp_dir)
    assert "scontrol show job -o 42" in asked.read_text()


def forgetful_scheduler(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Slurm's commands, faked on PATH: none knows any job (as after MinJobAge without accounting)."""
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    for tool in ("scontrol", "squeue"):
        fake_tool(bindir, tool, 'echo "slurm_load_jobs error: Invalid job id specified" >&2; exit 1')
    fake_tool(bindir, "sacct", 'echo "Slurm accounting storage is disabled" >&2; exit 1')
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")


def test_reading_a_slurm_dir_writes_nothing_and_recording_is_one_explicit_step(tmp_path, monkeypatch):
    """A leg whose job the scheduler forgot reads as ended from its log, in every read (the dirs,
    the resume state, the report's rows), and nothing on disk changes; record_jobs writes its state
    and report.md; `cockpit status` records it (the next reader finds it recorded)."""
    reg_path = slurm_registry(tmp_path, {"a": "num-iterations = 5"})
    registry = reg.load(reg_path)
    exp_dir = slurm_dir(registry.settings.exp_root, ["a"])
    (exp_dir / "a.log").write_text("".join(x + "\n" for x in log_lines(5, 5)))
    past = time.time() - 600
    os.utime(exp_dir / "a.log", (past, past))
    expdir.write_state(exp_dir, expdir.LegState("a", "running", job_id="41"))
    forgetful_scheduler(tmp_path, monkeypatch)

    def on_disk() -> dict[str, tuple[int, bytes]]:
        return {
            str(p.relative_to(exp_dir)): (p.stat().st_mtime_ns, p.read_bytes())
            for p in sorted(exp_dir.rglob("*"))
            if p.is_file()
        }

    before = on_disk()
    dirs = expdir.discover(registry.settings.exp_root)
    assert dirs[0].states["a"].status == "done" and dirs[0].states["a"].forgotten_at
    state = resume.build_state(registry, sampler=FakeSampler())
    assert state.find("fake/a").mark == "done"
    report.rows(exp_dir)
    assert on_disk() == before and not (exp_dir / "report.md").exists()
    assert slurm_record.unrecorded(dirs[0]) == [dirs[0].states["a"]]

    assert slurm_record.record_jobs(dirs) == [exp_dir / "report.md"]
    assert json.loads((exp_dir / "state" / "a.json").read_text())["status"] == "done"
    assert slurm_record.unrecorded(expdir.open_dir(exp_dir)) == []  # recorded: nothing new to write
    assert slurm_record.record_jobs(expdir.discover(registry.settings.exp_root)) == []  # the report is newer

    expdir.write_state(exp_dir, expdir.LegState("a", "running", job_id="41"))
    r = cockpit("--registry", str(reg_path), "status")  # PATH: the forgetful scheduler
    assert r.returncode == 0 and "a  done" in r.stdout, r.stderr
    assert json.loads((exp_dir / "state" / "a.json").read_text())["status"] == "done"


@pytest.mark.slow
@pytest.mark.usefixtures("slurm_cluster")
def test_resubmit_runs_a_failed_leg_again_with_a_fresh_log(tmp_path):
    """A leg whose first attempt failed (its log, state and saved script as a launch leaves them),
    resubmitted: a new job, recorded; the leg's log holds only the new attempt, the one before is
    kept whole under attempts/; status and report follow the new job; a done leg needs --rerun."""
    reg_path, exp_dir = ended_slurm_dir(tmp_path, args=["--num-iterations", "3", "--step-sleep", "0.05"])
    first = (exp_dir / "a.log").read_bytes()
    r = cockpit("--registry", str(reg_path), "resubmit", str(exp_dir), "a")
    assert r.returncode == 0, r.stderr
    line, last = r.stdout.splitlines()
    new = re.fullmatch(
        rf"a: Slurm job (\d+) \(queued\); the attempt before kept in {exp_dir}/attempts/a\.1\.log", line
    ).group(1)
    assert last == str(exp_dir) and new != "7"
    assert (exp_dir / "attempts" / "a.1.log").read_bytes() == first
    kept = json.loads((exp_dir / "attempts" / "a.1.json").read_text())
    assert (kept["status"], kept["job_id"]) == ("failed", "7")
    end = until_ended(exp_dir, timeout_s=120)["a"]
    assert (end.status, end.job_id) == ("done", new)
    log = (exp_dir / "a.log").read_text()
    assert "first attempt" not in log and log.count("step 00000/") == 1 and "Total training time" in log
    assert status_lines(reg_path)["a"].startswith(f"a  done      job {new} on n")
    assert "| a | completed |" in (exp_dir / "report.md").read_text()
    r = cockpit("--registry", str(reg_path), "resubmit", str(exp_dir), "a")
    assert r.returncode == 2 and r.stderr == "cockpit: leg a is done; resubmit it again with --rerun\n"


def test_resubmitted_legs_are_chained_in_the_plans_order(tmp_path, monkeypatch):
    """Legs named in any order (a leg with repeats: its runs) go to sbatch in the plan's order,
    each waiting for the one before it by the plan's on_failure; each state records its job."""
    exp_dir = slurm_dir(tmp_path / "exp", ["a", "b.r0", "b.r1"])
    plan = json.loads((exp_dir / "plan.json").read_text())
    plan["legs"] = [
        {"name": "a"},
        {"name": "b.r0", "leg": "b", "repeat": 0},
        {"name": "b.r1", "leg": "b", "repeat": 1},
    ]
    (exp_dir / "plan.json").write_text(json.dumps({**plan, "on_failure": "continue"}))
    chain = slurm.plan_chain(
        [leg(n, []) for n in ("a", "b.r0", "b.r1")], slurm.SlurmSettings(), exp_dir, REPO, exp_dir.name
    )
    for name, text in chain.scripts:
        slurm.write_script(exp_dir, name, text)
        expdir.write_state(exp_dir, expdir.LegState(name, "stopped", job_id="7"))
    bindir, calls = tmp_path / "bin", tmp_path / "calls"
    bindir.mkdir()
    fake_tool(bindir, "sbatch", f'echo "$*" >> {calls}; echo $((100 + $(wc -l < {calls})))')
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
    lines = launch.resubmit(exp_dir, ["b", "a"], tmp_path / "exp")
    assert [x.split(" (")[0] for x in lines] == [
        "a: Slurm job 101",
        "b.r0: Slurm job 102",
        "b.r1: Slurm job 103",
    ]
    assert calls.read_text().splitlines() == [
        f"--parsable {exp_dir}/slurm/a.sbatch",
        f"--parsable --dependency=afterany:101 --kill-on-invalid-dep=yes {exp_dir}/slurm/b.r0.sbatch",
        f"--parsable --dependency=afterany:102 --kill-on-invalid-dep=yes {exp_dir}/slurm/b.r1.sbatch",
    ]
    got = {n: expdir.read_state(exp_dir, n) for n in ("a", "b.r0", "b.r1")}
    assert [(s.status, s.job_id) for s in got.values()] == [
        ("queued", "101"),
        ("queued", "102"),
        ("queued", "103"),
    ]
    assert (
        got["a"].note
        == "attempt 2: resubmitted as Slurm job 101; attempt 1 (stopped, Slurm job 7) kept in attempts/"
    )


def ended_slurm_dir(
    tmp_path: Path, status: str = "failed", args: list[str] | None = None
) -> tuple[Path, Path]:
    """A registry and a Slurm dir under its exp_root whose leg `a` (tests.fake_trainer with `args`)
    ended (job 7), with the script and log a launch leaves."""
    reg_path = slurm_registry(tmp_path, {"a": "num-iterations = 3"})
    exp_dir = slurm_dir(tmp_path / "exp", ["a"])
    plan = json.loads((exp_dir / "plan.json").read_text())
    (exp_dir / "plan.json").write_text(json.dumps({**plan, "on_failure": "stop", "tail": 50}))
    chain = slurm.plan_chain(
        [leg("a", args or [], "tests.fake_trainer")], slurm.SlurmSettings(), exp_dir, REPO, exp_dir.name
    )
    slurm.write_script(exp_dir, "a", chain.scripts[0][1])
    (exp_dir / "a.log").write_text("the first attempt\n")
    expdir.write_state(exp_dir, expdir.LegState("a", status, job_id="7", ended_at=expdir.now_iso()))
    return reg_path, exp_dir


@pytest.mark.slow
def test_resubmit_refuses_in_one_line_and_moves_nothing(tmp_path, monkeypatch):
    """A running leg, an edited script, a local dir, a dir outside exp_root, a scheduler that
    refuses the job: one line, exit 2, the log and state where they were."""
    reg_path, exp_dir = ended_slurm_dir(tmp_path)
    bindir = tmp_path / "bin"
    bindir.mkdir()
    fake_tool(
        bindir, "sbatch", 'echo "sbatch: error: Batch job submission failed: Invalid account" >&2; exit 1'
    )
    fake_tool(bindir, "scontrol", "exit 1")
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")

    def refused(*args: str) -> str:
        r = cockpit("--registry", str(reg_path), "resubmit", *args)
        assert r.returncode == 2 and r.stdout == "" and r.stderr.count("\n") == 1, (r.stdout, r.stderr)
        assert (exp_dir / "a.log").read_text() == "the first attempt\n"
        assert json.loads((exp_dir / "state" / "a.json").read_text())["job_id"] == "7"
        assert not any((exp_dir / "attempts").glob("*"))
        return r.stderr.removeprefix("cockpit: ").strip()

    assert refused(str(exp_dir), "a") == (
        f"nothing resubmitted in {exp_dir}: leg a: sbatch failed (exit 1): "
        "sbatch: error: Batch job submission failed: Invalid account"
    )
    assert refused(str(exp_dir), "nosuch").startswith(f"{exp_dir} has no leg 'nosuch'")
    assert refused(str(tmp_path), "a").endswith("the cockpit acts only on the dirs it owns")
    script = slurm.script_path(exp_dir, "a")
    text = script.read_text()
    script.write_text(text.replace("--output=", "--output=/tmp/elsewhere"))
    assert "was changed (its --output is '/tmp/elsewhere" in refused(str(exp_dir), "a")
    script.write_text(
        text.replace("#SBATCH --open-mode=append", "#SBATCH --open-mode=append --dep=afterok:1")
    )
    assert "was changed (it sets --dependency, which the cockpit sets itself)" in refused(str(exp_dir), "a")
    script.write_text(text)
    expdir.write_state(exp_dir, expdir.LegState("a", "running", job_id="7"))
    fake_tool(
        bindir,
        "scontrol",
        f'echo "JobId=7 JobName={exp_dir.name}/a UserId=u({os.getuid()}) JobState=RUNNING '
        f'NodeList=n1 StdOut={exp_dir}/a.log"',
    )
    assert (
        refused(str(exp_dir), "a")
        == f"leg a is running as Slurm job 7: stop it first (cockpit stop {exp_dir} a)"
    )
    expdir.write_state(exp_dir, expdir.LegState("a", "failed", job_id="7"))
    other = exp_dir.with_name("20260102_000000_fake")
    shutil.copytree(exp_dir, other)
    expdir.write_state(other, expdir.LegState("a", "running", job_id="8"))
    fake_tool(
        bindir,
        "scontrol",
        f'echo "JobId=8 JobName={other.name}/a UserId=u({os.getuid()}) JobState=RUNNING '
        f'NodeList=n1 StdOut={other}/a.log"',
    )
    assert refused(str(exp_dir), "a") == f"'fake' is running in {other}; stop it first: cockpit stop {other}"
    shutil.rmtree(other)
    plan = json.loads((exp_dir / "plan.json").read_text())
    (exp_dir / "plan.json").write_text(json.dumps({**plan, "executor": "local"}))
    assert refused(str(exp_dir), "a").endswith(
        "was not launched on Slurm: a local leg runs again with "
        "`cockpit launch EXPERIMENT --legs LEG --rerun` (a fresh dir)"
    )


def test_a_scheduler_that_cannot_be_asked_leaves_the_leg_unknown(tmp_path, monkeypatch):
    exp_dir = tmp_path / "20260101_000000_fake"
    (exp_dir / "state").mkdir(parents=True)
    (exp_dir / "plan.json").write_text(
        json.dumps({"experiment": "fake", "executor": "slurm", "legs": [{"name": "a"}]})
    )
    expdir.write_state(exp_dir, expdir.LegState("a", "running", job_id="42"))
    monkeypatch.setenv("PATH", str(tmp_path))  # no scontrol
    st = states(exp_dir)["a"]
    assert (st.status, st.note) == (
        "unknown",
        "unknown: Slurm job 42 cannot be asked about: scontrol not found on "
        "PATH: the Slurm client commands are needed on this machine",
    )
    assert json.loads((exp_dir / "state" / "a.json").read_text())["status"] == "running"  # nothing recorded
    with pytest.raises(
        expdir.RunError, match="^nothing stopped in .*: leg a: unknown: Slurm job 42 cannot be"
    ):
        launch.stop(exp_dir)


@pytest.mark.slow
@pytest.mark.usefixtures("slurm_cluster")
async def test_a_tui_launch_goes_to_slurm(tmp_path, monkeypatch):
    """`l` on a leg of a Slurm experiment: the confirmation shows its batch script and sbatch line;
    `y` submits it; the GPU panel says which nodes it holds while it runs; it ends done."""
    monkeypatch.setenv("PYTHONPATH", str(REPO))  # the job imports tests.fake_trainer from the checkout
    reg_path = slurm_registry(tmp_path, {"a": "num-iterations = 60"}, nodes=2)
    app = CockpitApp(reg_path, sampler=FakeSampler(nvml=False), branch="main", clock=fixed_clock)
    async with app.run_test(size=(160, 48)) as pilot:
        main = await ready(pilot, app)
        await select(pilot, app, Selection("leg", "fake", "a"))
        await pilot.press("l")
        screen = await until(
            pilot, lambda: isinstance(app.screen, ConfirmScreen) and app.screen, what="confirm"
        )
        body = str(screen.body)
        assert "on Slurm: each leg a batch job" in body and "#SBATCH --nodes=2" in body
        assert "sbatch --parsable " in body and "/slurm/a.sbatch" in body
        await pilot.press("y")
        leg = await until(
            pilot,
            lambda: (v := main.view) and (x := v.experiment("fake").leg("a")).job and x,
            timeout=30,
            what="the leg's job",
        )
        d = Path(leg.exp_dir)
        job_id = json.loads((d / "state" / "a.json").read_text())["job_id"]
        panel = await until(
            pilot, lambda: main.view.gpu and main.view.gpu.slurm, timeout=60, what="its nodes"
        )
        assert panel == (f"fake/a: Slurm job {job_id} on n[1-2]" + panel[0].split("n[1-2]")[1],)
        await until(pilot, lambda: main.finished, timeout=90, what="the leg to end")
        assert main.finished == [f"{d}/a:done"]
        assert main.view.gpu.slurm == ()


@pytest.mark.slow
@pytest.mark.usefixtures("slurm_cluster")
def test_scheduler_errors_are_one_line(tmp_path):
    bad = slurm.plan_chain([leg("b", [])], slurm.SlurmSettings(partition="nosuch"), tmp_path, REPO, "t")
    with pytest.raises(
        scheduler.SlurmError, match=r"^leg b: sbatch failed \(exit 1\): .*[Ii]nvalid partition"
    ):
        slurm.launch_chain(bad, tmp_path)
    # a chain is submitted whole or not at all: the first job is cancelled when the second fails
    prefix = f"whole-{uuid.uuid4().hex[:12]}"  # the controller keeps earlier runs' jobs for MinJobAge
    good = slurm.plan_chain(
        [leg("a", ["--num-iterations", "1"], "tests.fake_trainer")],
        slurm.SlurmSettings(),
        tmp_path,
        REPO,
        prefix,
    )
    paths = [("a", slurm.write_script(tmp_path, *good.scripts[0])), ("b", tmp_path / "missing.sbatch")]
    with pytest.raises(scheduler.SlurmError, match=r"^leg b: sbatch failed \(exit 1\): .*missing.sbatch"):
        slurm.submit_chain(paths)
    out = subprocess.run(["scontrol", "show", "job", "-o"], capture_output=True, text=True).stdout
    [first] = [
        f for f in map(scheduler.parse_scontrol_job, out.splitlines()) if f.get("JobName") == f"{prefix}/a"
    ]
    assert first["JobState"] == "CANCELLED" and scheduler.queued([first["JobId"]]) == []
    assert scheduler.job_state("999999999").phase == "forgotten"
