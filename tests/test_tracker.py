"""The trainer's wandb tracking, through the real trainer with a stand-in `wandb` on the path
(tests/fake_wandb records every call): a named run's init, step series and finish; `--run dummy`
never imports wandb; wandb missing or refusing is one line and training goes on. No network."""

import json
import re
import sys
from pathlib import Path

import pytest

from cockpit.logs.lines import parse_step, parse_val
from cockpit.vocab import TRACKER_SERIES, TRACKER_VAL_BPB
from nanochat import base_train
from nanochat import tracker as tr

FAKE = Path(__file__).resolve().parent / "fake_wandb"
TINY = [
    "--device-type", "cpu", "--depth", "2", "--max-seq-len", "64", "--device-batch-size", "2",
    "--total-batch-size", "128", "--use-moe", "--n-experts", "4", "--moe-capacity-factor", "1.0",
    "--moe-log-every", "-1", "--compile-mode", "none", "--save-every", "0",
]  # fmt: skip


@pytest.fixture
def fake_wandb(tmp_path, monkeypatch):
    """The stand-in wandb importable; yields a reader of the calls it recorded (none: [])."""
    calls = tmp_path / "wandb_calls.jsonl"
    monkeypatch.setenv("FAKE_WANDB_CALLS", str(calls))
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_PROJECT", raising=False)
    monkeypatch.delitem(sys.modules, "wandb", raising=False)
    monkeypatch.syspath_prepend(str(FAKE))
    yield lambda: [json.loads(line) for line in calls.read_text().splitlines()] if calls.exists() else []
    sys.modules.pop("wandb", None)  # the stand-in, imported by the run


def train(argv, capsys):
    rc = base_train.main(argv)
    out = capsys.readouterr()
    assert rc == 0, (out.out + out.err)[-3000:]
    return out


def test_the_trainer_s_keys_are_the_export_s():
    """`cockpit export --tensorboard` tags a log's series as the trainer logs them to wandb."""
    assert set(tr.STEP_KEYS) == {tag for tag, _ in TRACKER_SERIES.values()}
    assert tr.VAL_BPB == TRACKER_VAL_BPB


@pytest.mark.slow
def test_named_run_logs_its_flags_series_and_finish(fake_wandb, smoke_corpus, tmp_path, capsys, monkeypatch):
    """init gets project nanochat, the run's name and its flags; every 2nd step (and the last) the
    step line's figures under upstream's keys, in upstream's units (the export's factors); each
    validation its bpb; then finish. WANDB_MODE=offline reaches wandb untouched."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    argv = [*TINY, "--data", "parquet", "--data-dir", str(smoke_corpus / "base_data"), "--tokenizer-dir",
            str(smoke_corpus / "tokenizer"), "--num-iterations", "5", "--eval-every", "2", "--eval-tokens", "256",
            "--wandb-log-every", "2", "--run", "smoke", "--checkpoint-root", str(tmp_path)]  # fmt: skip
    out = train(argv, capsys).out
    calls = fake_wandb()
    assert [c["call"] for c in calls[:2]] == ["import", "init"] and calls[-1]["call"] == "finish"
    init = calls[1]
    assert (init["project"], init["name"]) == ("nanochat", "smoke")
    assert init["config"] == vars(base_train.build_parser().parse_args(argv))
    assert init["kwargs"] == [] and init["wandb_mode"] == "offline"  # no mode or settings passed over it
    assert {c["rank"] for c in calls} == {"0"}

    logs = [c for c in calls if c["call"] == "log"]
    assert all(c["data"]["step"] == c["step"] for c in logs)
    vals = [c for c in logs if tr.VAL_BPB in c["data"]]
    steps = [c for c in logs if tr.VAL_BPB not in c["data"]]
    assert [c["step"] for c in vals] == [0, 2, 4, 5]
    assert [c["step"] for c in steps] == [0, 2, 4]  # every 2nd, and the last (step 4 of 5)
    printed_vals = {v.step: v.value for v in map(parse_val, out.splitlines()) if v}
    for c in vals:
        assert set(c["data"]) == {"step", tr.VAL_BPB, tr.TOTAL_TIME}
        assert c["data"][tr.VAL_BPB] == pytest.approx(printed_vals[c["step"]], abs=1e-6)
    lines = {s.step: s for s in map(parse_step, out.splitlines()) if s}
    for c in steps:
        line = lines[c["step"]]
        shown = {tag: (getattr(line, field), factor) for field, (tag, factor) in TRACKER_SERIES.items()
                 if getattr(line, field) is not None}  # fmt: skip
        assert set(c["data"]) == {"step", *shown}  # bal and drop too: MoE at a fixed capacity
        for tag, (value, factor) in shown.items():
            # the line rounds (dt to 0.01 ms, total time to 0.01 min): the logged figure is the unrounded one
            assert c["data"][tag] == pytest.approx(value * factor, rel=1e-3, abs=0.006 * factor), tag


@pytest.mark.slow
def test_dummy_never_imports_wandb_and_a_tracked_run_prints_the_same_lines(fake_wandb, capsys):
    """`--run dummy` (the default) leaves wandb unimported, and so does a rank other than 0; a
    tracked run's stdout has the very lines of an untracked one (numbers aside)."""
    argv = [*TINY, "--num-iterations", "2"]
    dummy = train(argv, capsys)
    assert fake_wandb() == [] and "wandb" not in sys.modules
    assert isinstance(tr.open_tracker("named", {}, master=False), tr.NoTracker)
    assert fake_wandb() == [] and "wandb" not in sys.modules

    tracked = train([*argv, "--run", "named"], capsys)
    assert [c["call"] for c in fake_wandb()] == ["import", "init", "log", "log", "finish"]
    shape = lambda text: [re.sub(r"[\d,.]+", "N", line) for line in text.splitlines()]
    assert shape(tracked.out) == shape(dummy.out)
    assert tracked.err == dummy.err == ""


def test_missing_wandb_is_one_line_and_training_goes_on(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` raises ImportError
    out = train([*TINY, "--num-iterations", "2", "--run", "named"], capsys)
    lines = out.err.strip().splitlines()
    assert len(lines) == 1 and "--run named is not tracked" in lines[0] and "pip install wandb" in lines[0], (
        lines
    )
    assert [s.step for s in map(parse_step, out.out.splitlines()) if s] == [0, 1]


def test_wandb_init_failure_is_one_line_and_training_goes_on(fake_wandb, capsys, monkeypatch):
    monkeypatch.setenv(
        "FAKE_WANDB_INIT_FAILS", "api_key not configured (no-tty). call wandb.login(key=...)\nmore"
    )
    out = train([*TINY, "--num-iterations", "2", "--run", "named"], capsys)
    lines = out.err.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(
        "wandb.init failed: api_key not configured (no-tty). call wandb.login(key=...); more: "
    )
    assert "--run named is not tracked" in lines[0]
    assert "WANDB_MODE=offline" in lines[0]
    assert [c["call"] for c in fake_wandb()] == ["import", "init"]  # nothing logged to a run that never began
    assert [s.step for s in map(parse_step, out.out.splitlines()) if s] == [0, 1]


def test_wandb_project_from_the_environment(fake_wandb, monkeypatch):
    monkeypatch.setenv("WANDB_PROJECT", "moe-ablations")
    tracker = tr.open_tracker("named", {"depth": 2}, master=True)
    tracker.log({tr.LOSS: 1.5}, 3)
    tracker.finish()
    init, log, finish = fake_wandb()[1:]
    assert (init["project"], init["name"], init["config"]) == ("moe-ablations", "named", {"depth": 2})
    assert (log["data"], log["step"]) == ({"step": 3, tr.LOSS: 1.5}, 3) and finish["call"] == "finish"
