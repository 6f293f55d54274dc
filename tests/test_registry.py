"""The registry loader: the bundled registry, arg rendering, and every bad input with its location."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cockpit import registry as reg
from cockpit import schema, toml_lines
from cockpit.cli import main
from cockpit.vocab import METRICS

ROOT = Path(__file__).resolve().parent.parent
BUNDLED = ROOT / "experiments.toml"

# The seed's final metrics snapshot and its buffer-reuse leg, as the resume guide prints them.
SEED_FIGURES = {
    "static_cap0p0_baseline": (468782.94, 1120.38, 5.6722, 22790.06, 5.21),
    "static_cap1p0": (785203.42, 670.31, 9.5014, 18983.58, 3.00),
    "static_cap1p25": (747298.44, 706.31, 9.0426, 19722.27, 3.13),
    "dynamic_cap1p0": (749886.60, 701.27, 9.0742, 19057.08, 3.15),
    "nocompile_cap1p0": (363122.12, 1449.95, 4.3932, 22808.69, 6.34),
    "static_cap1p0_bufreuse": (806400.06, 650.67, 9.7588, 18987.83, 2.97),
}

SEED_TEMPLATE = """torchrun --standalone --nproc_per_node=8 -m nanochat.base_train -- \
--run dummy --use-moe --n-experts 8 --expert-topk 2 --moe-freq 1 --expert-hidden-mult 2 \
--balance-loss-coeff 0.01 --depth 12 --aspect-ratio 64 --head-dim 64 --max-seq-len 1024 \
--device-batch-size 16 --num-iterations 280 --eval-every -1 --core-metric-every -1 \
--sample-every -1 --save-every 280 --checkpoint-root EXP/ckpt_root --fp8 --fp8-include-moe-experts \
--data parquet --data-dir ~/.cache/nanochat/base_data --tokenizer-dir ~/.cache/nanochat/tokenizer \
--model-tag moe_fp8_experts_static_cap1p0_v3 --compile-mode static --moe-capacity-factor 1.0"""


def test_bundled_registry_holds_the_seed() -> None:
    r = reg.load(BUNDLED)
    assert [e.id for e in r.experiments] == [
        "moe-fp8-capacity-ablation-v1",
        "moe-fp8-capacity-opt-v2-buffer",
        "moe-fp8-capacity-opt-v3",
        "cpu-smoke",
    ]
    v1 = r.experiment("moe-fp8-capacity-ablation-v1")
    assert [leg.name for leg in v1.legs] == [
        "static_cap0p0_baseline",
        "static_cap1p0",
        "static_cap1p25",
        "dynamic_cap1p0",
        "nocompile_cap1p0",
    ]
    assert v1.baseline == "static_cap0p0_baseline"
    assert "--moe-capacity-factor 1.0" in v1.decision
    for exp in r.experiments:
        for leg in exp.legs:
            if leg.name in SEED_FIGURES:
                rec = leg.recorded
                assert rec is not None and rec.source and "seed" in rec.source
                assert (
                    rec.figures.tok_per_sec,
                    rec.figures.dt_ms,
                    rec.figures.mfu,
                    rec.figures.peak_mem_mib,
                    rec.figures.total_time_min,
                ) == SEED_FIGURES[leg.name]
    v2 = r.experiment("moe-fp8-capacity-opt-v2-buffer")
    assert r.find_leg(v2.baseline, v2.id).name == "static_cap1p0"
    v3 = r.experiment("moe-fp8-capacity-opt-v3")
    assert v3.hypothesis and not any(leg.is_recorded for leg in v3.legs)
    assert r.settings.tail == 50 and r.settings.on_failure == "stop"
    assert r.settings.branch == "yxb/moe-add-sft-claude"
    smoke = r.experiment("cpu-smoke")
    assert smoke.device == "cpu" and smoke.nproc_per_node == 2 and smoke.gpus_needed == 0
    assert {leg.name for leg in smoke.legs} == {"dense", "moe_dropless", "moe_cap1p0"}
    assert "--use-moe" not in smoke.leg("dense").trainer_args()
    assert "--fp8" not in smoke.leg("moe_cap1p0").trainer_args()
    assert v1.gpus_needed == 8


def test_v3_leg_renders_the_seed_execution_template() -> None:
    # the seed's template, plus the real recipe's inputs named (read-only paths, never written)
    leg = reg.load(BUNDLED).experiment("moe-fp8-capacity-opt-v3").legs[0]
    assert leg.argv("EXP") == SEED_TEMPLATE.split()


def test_settings_resolve_relative_to_the_registry(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "r.toml"
    path.parent.mkdir()
    path.write_text('[project]\nexp_root = "runs"\nread_only = ["data"]\n')
    r = reg.load(path)
    assert r.settings.exp_root == (tmp_path / "sub" / "runs").resolve()
    assert r.settings.read_only == ((tmp_path / "sub" / "data").resolve(),)
    assert r.settings.gpu_idle == reg.GpuIdle()


def test_args_merge_defaults_experiment_leg() -> None:
    r = reg.loads(
        """
[project]
exp_root = "/tmp/x"
[defaults]
nproc_per_node = 4
[defaults.args]
a = 1
b = "x"
flag = true
[[experiment]]
id = "e"
args = { b = "y", c = 2.5 }
[[experiment.leg]]
name = "l"
nproc_per_node = 2
args = { c = 3, flag = false, d = true }
"""
    )
    leg = r.experiment("e").leg("l")
    assert leg.args == {"a": 1, "b": "y", "flag": False, "c": 3, "d": True}
    assert leg.trainer_args() == ["--a", "1", "--b", "y", "--c", "3", "--d"]
    assert leg.argv()[:6] == [
        "torchrun",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "nanochat.base_train",
        "--",
    ]


def test_repeats_run_a_leg_n_times_with_seed_base_plus_i() -> None:
    r = reg.loads(
        GOOD_HEAD
        + "[[experiment]]\nid = 'e'\nrepeats = 2\n"
        + "[[experiment.leg]]\nname = 'a'\nargs = { seed = 7, depth = 2 }\n"
        + "[[experiment.leg]]\nname = 'b'\nrepeats = 3\n"
        + "[[experiment.leg]]\nname = 'c'\nrepeats = 1\n"
    )
    a, b, c = r.experiment("e").legs
    assert (a.repeats, b.repeats, c.repeats) == (2, 3, 1)
    assert a.run_names() == ["a.r0", "a.r1"] and c.run_names() == ["c"]
    assert [argv[-4:] for _, _, argv in a.runs()] == [
        ["--seed", "7", "--depth", "2"],
        ["--seed", "8", "--depth", "2"],
    ]
    assert [(name, i, argv[-2:]) for name, i, argv in b.runs()] == [
        (f"b.r{i}", i, ["--seed", str(reg.DEFAULT_SEED + i)]) for i in range(3)
    ]
    assert c.runs() == [("c", None, c.argv())] and "--seed" not in c.argv()
    assert reg.split_repeat("a.r12") == ("a", 12) and reg.split_repeat("a.r") == ("a.r", None)
    assert reg.split_repeat("a.r01") == ("a.r01", None)  # no run is named so


TABLES = (
    reg.Registry,
    reg.Settings,
    reg.GpuIdle,
    reg.SlurmSettings,
    reg.Defaults,
    reg.Runtime,
    reg.Experiment,
    reg.Prepare,
    reg.Leg,
    reg.Recorded,
)


def test_every_key_is_declared_once_with_its_types_and_a_doc() -> None:
    """The dataclasses are the schema: each key of a table is one field with its types and a line
    that says what it means; a recorded leg's figures are the metrics, by their one name."""
    for cls in TABLES:
        keys = schema.keys_of(cls)
        assert keys, cls
        for name, (_, k) in keys.items():
            assert k.types and k.doc.strip() and "\n" not in k.doc, (cls.__name__, name)
            assert k.lo is None or (k.hi is not None and k.lo <= k.hi), (cls.__name__, name)
    assert list(schema.keys_of(reg.Recorded)) == [*METRICS, "dir", "source"]
    assert list(schema.keys_of(reg.Registry)) == ["project", "defaults", "experiment"]
    # the runtime's keys sit in [defaults] and in each [[experiment]] itself
    assert {"workdir", "python", "env"} <= set(schema.keys_of(reg.Defaults)) & set(
        schema.keys_of(reg.Experiment)
    )


def test_what_a_table_leaves_out_is_its_declared_default() -> None:
    r = reg.loads(GOOD_HEAD + "[[experiment]]\nid = 'e'\n[[experiment.leg]]\nname = 'l'\n", "/tmp/r.toml")
    assert r.settings == reg.Settings(name="tmp", exp_root=Path("/tmp/exp"))
    assert (r.settings.tail, r.settings.on_failure, r.settings.max_parallel, r.settings.executor) == (
        50,
        "stop",
        1,
        "local",
    )
    exp, leg = r.experiment("e"), r.experiment("e").leg("l")
    assert (exp.device, exp.nproc_per_node, exp.repeats, exp.slurm) == ("cuda", 1, 1, reg.SlurmSettings())
    assert (leg.module, leg.device, leg.nproc_per_node, leg.repeats, leg.args) == (
        "nanochat.base_train",
        "cuda",
        1,
        1,
        {},
    )
    assert exp.runtime == r.runtime == reg.Runtime(workdir=Path("/tmp"))
    # an experiment's keys it leaves out are the project's and the defaults'; a leg's, its experiment's
    r = reg.loads(
        GOOD_HEAD + "max_parallel = 3\nexecutor = 'slurm'\n[defaults]\ndevice = 'cpu'\nnproc_per_node = 2\n"
        "[[experiment]]\nid = 'e'\nrepeats = 2\n[[experiment.leg]]\nname = 'l'\n",
        "/tmp/r.toml",
    )
    exp = r.experiment("e")
    assert (exp.device, exp.nproc_per_node, exp.max_parallel, exp.executor) == ("cpu", 2, 3, "slurm")
    assert (exp.legs[0].nproc_per_node, exp.legs[0].repeats, exp.legs[0].device) == (2, 2, "cpu")


def test_default_seed_is_the_trainers() -> None:
    """A repeat's seed counts from the trainer's own default when the leg sets none."""
    import re

    source = (ROOT / "nanochat" / "base_train.py").read_text()
    assert re.search(r'add_argument\("--seed", type=int, default=(\d+)\)', source).group(1) == str(
        reg.DEFAULT_SEED
    )


# ---- bad input: one line, file:line, the key ---------------------------------------------------

GOOD_HEAD = '[project]\nexp_root = "/tmp/exp"\n'

BAD = [
    # (text, line, words that must be in the message)
    (GOOD_HEAD + "[[experiment]\n", 3, ["TOML syntax error"]),
    (GOOD_HEAD + "tial = 50\n", 3, ["unknown key 'project.tial'", "did you mean 'tail'"]),
    ('[project]\nexp_root = "/tmp/exp"\n\n[projet]\n', 4, ["unknown key 'projet'", "did you mean 'project'"]),
    (
        GOOD_HEAD + "[[experiment]]\nid = 'e'\nbasline = 'x'\n",
        5,
        ["unknown key 'experiment.basline'", "baseline"],
    ),
    (GOOD_HEAD + "tail = 'fifty'\n", 3, ["'project.tail' must be an integer", "'fifty'"]),
    (GOOD_HEAD + "tail = true\n", 3, ["'project.tail' must be an integer"]),
    (GOOD_HEAD + "[project.gpu_idle]\nwait_s = '1m'\n", 4, ["'project.gpu_idle.wait_s' must be"]),
    (
        GOOD_HEAD + "[[experiment]]\nid = 'a'\n\n[[experiment]]\nid = 'a'\n",
        7,
        ["duplicate experiment id 'a'", "first at line 4"],
    ),
    (
        GOOD_HEAD
        + "[[experiment]]\nid = 'a'\n[[experiment.leg]]\nname = 'x'\n[[experiment.leg]]\nname = 'x'\n",
        8,
        ["duplicate leg name 'x' in 'a'", "first at line 6"],
    ),
    (
        GOOD_HEAD + "[[experiment]]\nid = 'a'\n[[experiment.leg]]\nname = 'x/y'\n",
        6,
        ["leg name 'x/y'", "file name"],
    ),
    (GOOD_HEAD + "[[experiment]]\nid = 'a'\n[[experiment.leg]]\nname = '..'\n", 6, ["leg name '..'"]),
    (GOOD_HEAD + "[[experiment]]\nid = 'a'\n[[experiment.leg]]\nname = ''\n", 6, ["leg name ''", "empty"]),
    (
        GOOD_HEAD + "[[experiment]]\nid = 'a'\n[[experiment.leg]]\nname = \"a\\tb\"\n",
        6,
        ["control character"],
    ),
    (GOOD_HEAD + "[[experiment]]\nid = 'a/b'\n", 4, ["experiment id 'a/b'"]),
    (
        GOOD_HEAD + "[[experiment]]\nid = 'a'\nbaseline = 'nope'\n[[experiment.leg]]\nname = 'x'\n",
        5,
        ["baseline 'nope' of 'a' names no leg", "legs: x"],
    ),
    (
        '[project]\nexp_root = "/data/nc/tmp_exp"\nread_only = ["/data/nc"]\n',
        2,
        ["lies inside read-only path"],
    ),
    ('[project]\nexp_root = "/data/x"\nread_only = ["/data/x"]\n', 2, ["read-only"]),
    ("[project]\nname = 'x'\n", 1, ["missing key 'project.exp_root'"]),
    (GOOD_HEAD + "on_failure = 'retry'\n", 3, ["'project.on_failure' must be one of"]),
    (GOOD_HEAD + "[defaults]\ndevice = 'tpu'\n", 4, ["device must be one of"]),
    (GOOD_HEAD + "[defaults]\nnproc_per_node = 0\n", 4, ["nproc_per_node must be a positive integer"]),
    (
        GOOD_HEAD + "[defaults.args]\ndepth = [1, 2]\n",
        4,
        ["trainer arg 'depth' must be a string, number or boolean"],
    ),
    (GOOD_HEAD + '[defaults.args]\n"bad flag" = 1\n', 4, ["trainer arg 'bad flag' is not a flag name"]),
    (
        GOOD_HEAD
        + "[[experiment]]\nid = 'a'\n[[experiment.leg]]\nname = 'x'\n[experiment.leg.recorded]\nmfu = 'high'\n",
        8,
        ["'experiment.leg.recorded.mfu' must be an integer or number"],
    ),
    (
        GOOD_HEAD
        + "[[experiment]]\nid = 'a'\n[[experiment.leg]]\nname = 'x'\n[[experiment.leg]]\nname = 'y'\nargs = { depth = 2, lr = [1] }\n",
        9,
        ["trainer arg 'lr'"],
    ),
    (GOOD_HEAD + "[[experiment]]\nid = 'a'\nrepeats = 0\n", 5, ["'a.repeats' must be between 1 and 100"]),
    (
        GOOD_HEAD + "[[experiment]]\nid = 'a'\n[[experiment.leg]]\nname = 'x'\nrepeats = 'two'\n",
        7,
        ["'experiment.leg.repeats' must be an integer"],
    ),
    (
        GOOD_HEAD + "[[experiment]]\nid = 'a'\n[[experiment.leg]]\nname = 'x.r1'\n",
        6,
        ["leg name 'x.r1'", "ends like a repeat's run name"],
    ),
]


@pytest.mark.parametrize(("text", "line", "words"), BAD, ids=[str(i) for i in range(len(BAD))])
def test_bad_registry_is_one_located_line(tmp_path: Path, text: str, line: int, words: list[str]) -> None:
    path = tmp_path / "experiments.toml"
    path.write_text(text)
    with pytest.raises(reg.RegistryError) as info:
        reg.load(path)
    msg = str(info.value)
    assert "\n" not in msg
    assert msg.startswith(f"{path}:{line}: "), msg
    for w in words:
        assert w in msg, msg


@pytest.mark.slow
@pytest.mark.parametrize(
    ("body", "line", "what"),
    [
        ("[defaults]\nworkdir = '{long}'\n", 4, "'defaults.workdir'"),
        ("[defaults]\npython = '{long}'\n", 4, "'defaults.python'"),
        ("[[experiment]]\nid = 'e'\npython = '{long}/python'\n", 5, "'experiment.python'"),
        ("notify = ['./{long}']\n", 3, "'project.notify'"),
    ],
)
def test_a_path_the_system_cannot_look_at_is_one_located_line(
    tmp_path: Path, body: str, line: int, what: str
) -> None:
    """A name longer than the filesystem takes (ENAMETOOLONG from stat) is the key's error, not a traceback."""
    path = tmp_path / "experiments.toml"
    path.write_text(GOOD_HEAD + body.replace("{long}", "n" * 300))
    with pytest.raises(reg.RegistryError) as info:
        reg.load(path)
    msg = str(info.value)
    assert msg.startswith(f"{path}:{line}: {what} ") and msg.endswith(
        " cannot be looked at: File name too long"
    ), msg
    assert len(msg) < 300 + len(str(path))  # the path is cut in its middle
    proc = subprocess.run(
        [sys.executable, "-m", "cockpit.cli", "--registry", str(path), "status"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert proc.returncode == 2 and proc.stderr == f"cockpit: {msg}\n"


def test_missing_registry(tmp_path: Path) -> None:
    with pytest.raises(reg.RegistryError, match="registry file not found"):
        reg.load(tmp_path / "none.toml")


def test_cli_bad_registry_exits_2_without_traceback(tmp_path: Path) -> None:
    path = tmp_path / "experiments.toml"
    path.write_text(GOOD_HEAD + "tial = 5\n")
    proc = subprocess.run(
        [sys.executable, "-m", "cockpit.cli", "--registry", str(path), "status"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr.strip() == f"cockpit: {path}:3: unknown key 'project.tial'; did you mean 'tail'?"
    assert "Traceback" not in proc.stderr


def test_cli_status_shows_the_registry(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--registry", str(BUNDLED), "status"]) == 0
    out = capsys.readouterr().out
    for word in (
        "moe-fp8-capacity-ablation-v1",
        "static_cap1p0_bufreuse",
        "moe_fp8_experts_static_cap1p0_v3",
        "cpu-smoke",
    ):
        assert word in out


def test_locate_keys_handles_arrays_of_tables_and_multiline_values() -> None:
    text = (
        "[project]\n"  # 1
        "read_only = [\n"  # 2
        "  'a = 1',\n"  # 3: inside a value, not a key
        "]\n"  # 4
        "[[experiment]]\n"  # 5
        "id = 'x'  # comment [\n"  # 6
        "[[experiment.leg]]\n"  # 7
        "name = 'l'\n"  # 8
        "[experiment.leg.recorded]\n"  # 9
        "mfu = 1\n"  # 10
        "[[experiment]]\n"  # 11
        "'id' = 'y'\n"  # 12
    )
    lines = toml_lines.locate_keys(text)
    assert lines[("project", "read_only")] == 2
    assert ("project", "a") not in lines
    assert lines[("experiment", 0, "id")] == 6
    assert lines[("experiment", 0, "leg", 0, "name")] == 8
    assert lines[("experiment", 0, "leg", 0, "recorded", "mfu")] == 10
    assert lines[("experiment", 1, "id")] == 12


# ---- arg rendering round-trips ------------------------------------------------------------------

flag_names = st.from_regex(r"[a-z][a-z0-9-]{0,12}", fullmatch=True)
values = st.one_of(
    st.booleans(),
    st.integers(min_value=-(2**40), max_value=2**40),
    st.floats(allow_nan=False, allow_infinity=False, width=64),
    st.text(min_size=1, max_size=20).filter(
        lambda s: (
            not s.startswith("--") and "{exp_dir}" not in s and "{exp_root}" not in s and "\x00" not in s
        )  # no argv holds a NUL
    ),
)


def _toml_value(v: object) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, int):
        return str(v)
    return json.dumps(v, ensure_ascii=False).replace("\x7f", "\\u007f")  # a TOML basic string


def _parse_argv(argv: list[str]) -> dict[str, object]:
    out: dict[str, object] = {}
    i = 0
    while i < len(argv):
        key = argv[i][2:]
        if i + 1 < len(argv) and not argv[i + 1].startswith("--"):
            out[key] = argv[i + 1]
            i += 2
        else:
            out[key] = True
            i += 1
    return out


@pytest.mark.slow
@settings(max_examples=150, deadline=None)
@given(args=st.dictionaries(flag_names, values, max_size=12), nproc=st.integers(1, 16))
def test_any_valid_leg_round_trips_to_its_argv(args: dict[str, object], nproc: int) -> None:
    body = "\n".join(f'"{k}" = {_toml_value(v)}' for k, v in args.items())
    text = f'[project]\nexp_root = "/tmp/e"\n[[experiment]]\nid = "e"\n[[experiment.leg]]\nname = "l"\nnproc_per_node = {nproc}\n[experiment.leg.args]\n{body}\n'
    leg = reg.loads(text).experiment("e").leg("l")
    argv = leg.argv()
    assert argv[:6] == [
        "torchrun",
        "--standalone",
        f"--nproc_per_node={nproc}",
        "-m",
        "nanochat.base_train",
        "--",
    ]
    expected = {k: (True if v is True else str(v)) for k, v in args.items() if v is not False}
    assert _parse_argv(argv[6:]) == expected
    for k, v in args.items():
        if isinstance(v, float) and v not in (True, False):
            assert math.isclose(float(leg.args[k]), v) or leg.args[k] == v
