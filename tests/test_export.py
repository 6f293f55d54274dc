"""`cockpit export DIR --tensorboard OUT`: a dir's step series as TensorBoard event files, read back with
TensorBoard's own reader."""

import json
import os
import sys
from pathlib import Path

import pytest
from helpers import log_lines
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.backend.event_processing.event_multiplexer import EventMultiplexer

from cockpit import cli, export
from cockpit.vocab import TRACKER_SERIES, TRACKER_VAL_BPB


def run(capsys, *argv):
    code = cli.main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def moe_lines() -> list[str]:
    """A MoE leg's log: balance and drop % on every step line, a validation every 4 steps."""
    out = []
    for line in log_lines(10, 10, finished=True):
        if line.startswith("step "):
            step = int(line[5:10])
            if step % 4 == 0:
                out.append(f"Step {step:05d} | Validation bpb: {1.5 - step / 100:.6f}")
            line = (
                line.replace(" | lrm:", f" | bal: {1.0 + step / 1000:.4f} | lrm:")
                + f" | drop: {step / 10:.1f}%"
            )
        out.append(line)
    return out


@pytest.fixture
def exp_dir(tmp_path) -> Path:
    """A launched dir: two planned legs (one run twice: its first attempt kept under attempts/), the
    prepare step's log, and a log put there by hand."""
    d = tmp_path / "20260224_190000_cpu-smoke"
    (d / "attempts").mkdir(parents=True)
    (d / "state").mkdir()
    (d / "plan.json").write_text(
        json.dumps(
            {
                "experiment": "cpu-smoke",
                "prepare": {"argv": ["true"]},
                "legs": [{"name": "dense"}, {"name": "moe"}],
            }
        )
    )
    (d / "dense.log").write_text("\n".join(log_lines(12, 12)) + "\n")
    (d / "moe.log").write_text("\n".join(moe_lines()) + "\n")
    (d / "prepare.log").write_text("making the corpus\n")
    (d / "manual.log").write_text("\n".join(log_lines(3, 3, finished=False)) + "\n")
    (d / "attempts" / "dense.1.log").write_text("\n".join(log_lines(4, 12, crash=True)) + "\n")
    (d / "attempts" / "dense.1.json").write_text("{}")
    return d


def scalars(run_dir: Path) -> dict[str, list]:
    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})  # 0: every event, no sampling
    acc.Reload()
    return {tag: acc.Scalars(tag) for tag in acc.Tags()["scalars"]}


def test_each_run_reads_back_as_the_log_says(exp_dir, tmp_path, capsys):
    out = tmp_path / "tb" / "new"
    code, text, err = run(capsys, "export", str(exp_dir), "--tensorboard", str(out))
    assert (code, err) == (0, "")
    assert text.splitlines() == [
        "dense             12 steps, 0 validations",
        "moe               10 steps, 3 validations",
        "manual            3 steps, 0 validations",
        "attempts/dense.1  4 steps, 0 validations",
        str(out),
    ]
    # TensorBoard's own idea of the runs: one per leg's log and per kept attempt, not the prepare step
    mux = EventMultiplexer().AddRunsFromDirectory(str(out))
    mux.Reload()
    assert set(mux.Runs()) == {"dense", "moe", "manual", "attempts/dense.1"}

    moe = scalars(out / "moe")
    assert set(moe) == {tag for tag, _ in TRACKER_SERIES.values()} | {TRACKER_VAL_BPB}
    table = export.logs.parse_file(exp_dir / "moe.log", keep_steps=None).table
    for field, (tag, factor) in TRACKER_SERIES.items():
        want = [v * factor for v in table.as_lists()[field]]
        assert [e.step for e in moe[tag]] == list(range(10)), tag
        assert [e.value for e in moe[tag]] == pytest.approx(want, rel=1e-6), tag  # float32 in the file
    assert [(e.step, round(e.value, 6)) for e in moe[TRACKER_VAL_BPB]] == [(0, 1.5), (4, 1.46), (8, 1.42)]
    # wall times: the log's last write less the dt of the steps after; a validation at its step's
    walls = [e.wall_time for e in moe["train/loss"]]
    dts = table.as_lists()["dt_ms"]
    assert walls == sorted(walls) and walls[-1] == pytest.approx(os.stat(exp_dir / "moe.log").st_mtime)
    assert walls[-1] - walls[0] == pytest.approx(sum(dts[1:]) / 1000.0)
    assert [e.wall_time for e in moe[TRACKER_VAL_BPB]] == [walls[0], walls[4], walls[8]]

    dense = scalars(out / "dense")
    assert "train/bal" not in dense and TRACKER_VAL_BPB not in dense and len(dense["train/tok_per_sec"]) == 12
    attempt = scalars(out / "attempts" / "dense.1")
    assert [e.step for e in attempt["train/loss"]] == [0, 1, 2, 3]
    assert [p.name[:20] for p in (out / "dense").iterdir()] == ["events.out.tfevents."]


def test_a_dir_of_plain_logs_exports_too(tmp_path, capsys):
    logs_dir = Path(__file__).parent / "fixtures" / "cpu-smoke"
    code, text, _ = run(capsys, "export", str(logs_dir), "--tensorboard", str(tmp_path / "o"))
    assert code == 0 and [ln.split()[0] for ln in text.splitlines()[:-1]] == [
        "dense",
        "moe_cap1p0",
        "moe_dropless",
    ]
    assert len(scalars(tmp_path / "o" / "moe_dropless")["train/bal"]) == 40
    (tmp_path / "empty").mkdir()  # an existing empty dir is fine
    assert run(capsys, "export", str(logs_dir), "--tensorboard", str(tmp_path / "empty"))[0] == 0


def test_out_must_be_new_or_empty_and_never_a_link(exp_dir, tmp_path, capsys):
    full = tmp_path / "full"
    full.mkdir()
    (full / "keep.txt").write_text("mine")
    target = tmp_path / "target"
    target.mkdir()
    link = tmp_path / "link"
    link.symlink_to(target)  # planted: an empty dir behind a link
    afile = tmp_path / "afile"
    afile.write_text("x")
    for out, says in (
        (full, "is not empty: export writes into a new or empty dir"),
        (link, "is a symlink (refused: the cockpit never writes through a link)"),
        (afile, "exists and is not a dir"),
        (afile / "sub", "Not a directory"),
        ("  ", "--tensorboard: empty path"),
    ):
        code, text, err = run(capsys, "export", str(exp_dir), "--tensorboard", str(out))
        assert (code, text) == (2, "") and err.count("\n") == 1 and says in err, (out, err)
    assert [p.name for p in full.iterdir()] == ["keep.txt"] and list(target.iterdir()) == []
    assert afile.read_text() == "x"


@pytest.mark.parametrize("what", ["no dir", "no logs", "empty name"])
def test_bad_dir_is_one_line_and_nothing_is_made(tmp_path, capsys, what):
    d = {"no dir": tmp_path / "nope", "no logs": tmp_path, "empty name": " "}[what]
    code, text, err = run(capsys, "export", str(d), "--tensorboard", str(tmp_path / "out"))
    assert (code, text) == (2, "") and err.count("\n") == 1 and err.startswith("cockpit: ")
    assert not (tmp_path / "out").exists()


def test_without_tensorboard_one_line_says_how_to_get_it(exp_dir, tmp_path, capsys, monkeypatch):
    for name in [m for m in sys.modules if m == "tensorboard" or m.startswith("tensorboard.")]:
        monkeypatch.setitem(sys.modules, name, None)  # as if it were not installed
    code, text, err = run(capsys, "export", str(exp_dir), "--tensorboard", str(tmp_path / "out"))
    assert (code, text) == (2, "") and err == f"cockpit: {export.MISSING}\n"
    assert "pip install -e '.[export]'" in err and not (tmp_path / "out").exists()
