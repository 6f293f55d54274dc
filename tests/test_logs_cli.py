"""`cockpit logs LEG [-f] [-n N]`: which log a name means, its last lines, following it until the leg ends."""

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from helpers import REPO, bundled_registry, child_env, log_lines, wait_for, write_dir

from cockpit import cli, leg_log, logs


def run(capsys, *argv):
    code = cli.main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def lines_of(log: Path, n: int) -> list[str]:
    return log.read_text().splitlines()[-n:]


@pytest.fixture
def dirs(tmp_path):
    """cpu-smoke's dirs: an older one (dense done, moe_cap1p0 failed), a newer one (dense done,
    moe_cap1p0 queued), and the newest (dense run with two repeats: r0 done, r1 running)."""
    registry = bundled_registry(tmp_path)
    root = registry.settings.exp_root
    old = write_dir(
        root,
        "20260224_170000_cpu-smoke",
        "cpu-smoke",
        {"dense": ("done", log_lines(12, 12)), "moe_cap1p0": ("failed", log_lines(3, 12, crash=True))},
    )
    new = write_dir(
        root,
        "20260224_180000_cpu-smoke",
        "cpu-smoke",
        {"dense": ("done", log_lines(20, 20)), "moe_cap1p0": ("queued", [])},
        supervisor_alive=True,
    )
    reps = write_dir(
        root,
        "20260224_190000_cpu-smoke",
        "cpu-smoke",
        {"dense.r0": ("done", log_lines(8, 8)), "dense.r1": ("running", log_lines(4, 8, finished=False))},
        supervisor_alive=True,
    )
    plan = json.loads((reps / "plan.json").read_text())
    for i, spec in enumerate(plan["legs"]):  # as a launch writes a leg run with repeats
        spec.update(leg="dense", repeat=i)
    (reps / "plan.json").write_text(json.dumps(plan))
    return registry, old, new, reps


def test_a_leg_is_named_as_stop_names_it(dirs, capsys):
    registry, old, new, reps = dirs
    root = registry.settings.exp_root
    assert leg_log.find(root, "moe_cap1p0") == leg_log.LegLog(new, "moe_cap1p0")  # the newest attempt: queued
    assert leg_log.find(root, "cpu-smoke/moe_cap1p0") == leg_log.LegLog(new, "moe_cap1p0")
    assert leg_log.find(root, "cpu-smoke", "moe_cap1p0") == leg_log.LegLog(new, "moe_cap1p0")
    assert leg_log.find(root, old.name, "moe_cap1p0") == leg_log.LegLog(old, "moe_cap1p0")
    assert leg_log.find(root, f"{old}/moe_cap1p0") == leg_log.LegLog(old, "moe_cap1p0")
    # a leg with repeats: its running repeat; a repeat by its own name
    assert leg_log.find(root, "dense") == leg_log.LegLog(reps, "dense.r1")
    assert leg_log.find(root, "cpu-smoke/dense.r0") == leg_log.LegLog(reps, "dense.r0")
    assert leg_log.find(root, new.name, "dense") == leg_log.LegLog(new, "dense")

    code, out, err = run(capsys, "logs", "cpu-smoke/dense", "--registry", str(registry.path))
    assert (code, err) == (0, "") and out.splitlines() == lines_of(reps / "dense.r1.log", 10)
    code, out, _ = run(capsys, "logs", str(old), "moe_cap1p0", "-n", "3", "--registry", str(registry.path))
    assert code == 0 and out.splitlines() == lines_of(old / "moe_cap1p0.log", 3)
    assert out.splitlines()[-1] == "RuntimeError: CUDA out of memory (fake)"
    code, out, err = run(capsys, "logs", "cpu-smoke/moe_cap1p0", "--registry", str(registry.path))
    assert (code, out) == (0, "") and err == f"cockpit: {new}/moe_cap1p0.log: no log yet (queued)\n"


@pytest.mark.parametrize(
    "argv, says",
    [
        (["cpu-smoke/nope"], "no dir of experiment 'cpu-smoke' holds a run of leg 'nope' (3 dirs under "),
        (["nope"], "no dir under "),
        (["20260224_170000_cpu-smoke", "nope"], "has no leg 'nope' (its legs: dense, moe_cap1p0)"),
        (["/etc", "passwd"], "/etc is not an experiment dir under exp_root"),
        (["no-such-experiment", "dense"], "no experiment dir 'no-such-experiment'"),
        (["cpu-smoke", ".."], "'..' is not a leg name"),
        (["dense", "-n", "-1"], "-n must be between 0 and 1000000, not -1"),
        (["dense\x1b]0;x\x07"], "no dir under "),
    ],
)
def test_bad_input_is_one_line_and_exit_2(dirs, capsys, argv, says):
    registry = dirs[0]
    code, out, err = run(capsys, "logs", *argv, "--registry", str(registry.path))
    assert (
        (code, out) == (2, "")
        and err.count("\n") == 1
        and says in err
        and "\x1b" not in err
        and "\x07" not in err
    )


def test_what_the_log_holds_is_printed_without_control_characters(dirs, capsys):
    registry, old, *_ = dirs
    log = old / "dense.log"
    log.write_text(
        "plain\n\x1b[32mgreen\x1b[0m step\n\x1b]52;c;ZXZpbA==\x07clip \x07bell \u202eflip\rredraw\npartial"
    )
    code, out, _ = run(capsys, "logs", old.name, "dense", "--registry", str(registry.path))
    assert code == 0 and out.splitlines() == [
        "plain",
        "green step",
        "clip \\x07bell \\u202eflip",
        "redraw",
        "partial",
    ]
    os.unlink(log)
    os.mkfifo(log)  # a FIFO where the log should be: refused, never blocked on
    code, out, err = run(capsys, "logs", old.name, "dense", "--registry", str(registry.path))
    assert (code, out) == (2, "") and err.startswith(f"cockpit: {log}: ") and err.count("\n") == 1


def test_follow_of_a_leg_that_has_ended_prints_its_end_and_says_how_it_ended(dirs, capsys):
    registry, old, new, _ = dirs
    code, out, err = run(
        capsys, "logs", old.name, "moe_cap1p0", "-f", "-n", "1", "--registry", str(registry.path)
    )
    assert code == 1 and out == "RuntimeError: CUDA out of memory (fake)\n"  # failed: exit 1
    assert err == f"cockpit: following {old}/moe_cap1p0.log until the leg ends (^C stops)\n"
    code, out, _ = run(capsys, "logs", new.name, "dense", "-f", "-n", "2", "--registry", str(registry.path))
    assert code == 0 and out.splitlines() == lines_of(new / "dense.log", 2)  # done: exit 0
    # a manual run (a log, no cockpit state) ends when its log says so
    manual = registry.settings.exp_root / "20260224_200000_scratch"
    manual.mkdir()
    (manual / "probe.log").write_text("\n".join(log_lines(3, 3)) + "\n")
    assert leg_log.status(leg_log.find(registry.settings.exp_root, "scratch/probe")) == (True, "completed")
    assert run(capsys, "logs", "scratch/probe", "-f", "--registry", str(registry.path))[0] == 0


def test_last_lines_read_from_the_end():
    log = REPO / "tests" / "fixtures" / "upstream-bf16.log"
    whole = [line for line in logs.read_lines(log)]
    assert logs.last_lines(log, 5) == (whole[-5:], log.stat().st_size)
    assert logs.last_lines(log, 10**6)[0] == whole and logs.last_lines(log, 0)[0] == []


class Reader:
    """A process's stdout lines as they come, gathered by a thread (a test never blocks on a read)."""

    def __init__(self, proc: subprocess.Popen):
        self.lines: list[str] = []
        self.thread = threading.Thread(
            target=lambda: self.lines.extend(iter(proc.stdout.readline, "")), daemon=True
        )
        self.thread.start()

    def has(self, line: str) -> bool:
        return any(x.rstrip("\n") == line for x in self.lines)


def follow(registry, *argv) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "cockpit.cli", "logs", *argv, "-f", "--registry", str(registry.path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=child_env(),
        cwd=REPO,
    )


@pytest.mark.slow
def test_follow_prints_each_line_as_written_until_the_leg_ends(dirs):
    registry, _, _, reps = dirs
    log, state = reps / "dense.r1.log", reps / "state" / "dense.r1.json"
    proc = follow(registry, "cpu-smoke/dense", "-n", "2")
    try:
        out = Reader(proc)
        before = lines_of(log, 2)
        wait_for(lambda: out.has(before[-1]), what="the last lines")
        with open(log, "a") as f:  # the leg goes on: a whole line, then one written in two goes
            f.write("step 00005/00008 (62.50%) | loss: 5.9 | dt: 1000.00ms\nhalf")
        wait_for(
            lambda: out.has("step 00005/00008 (62.50%) | loss: 5.9 | dt: 1000.00ms"), what="the new line"
        )
        assert not out.has("half")  # not a line until its end is written
        with open(log, "a") as f:
            f.write(" and the rest\nPeak memory usage: 812.50MiB\nTotal training time: 0.13m\n")
        wait_for(lambda: out.has("Total training time: 0.13m"), what="the final lines")
        assert proc.poll() is None  # its state still says running: still following
        st = json.loads(state.read_text())
        state.write_text(json.dumps({**st, "status": "done", "exit_code": 0}))
        assert proc.wait(timeout=60) == 0
        out.thread.join(timeout=10)
        assert [x.rstrip("\n") for x in out.lines] == [
            *before,
            "step 00005/00008 (62.50%) | loss: 5.9 | dt: 1000.00ms",
            "half and the rest",
            "Peak memory usage: 812.50MiB",
            "Total training time: 0.13m",
        ]
        assert proc.stderr.read() == f"cockpit: following {log} until the leg ends (^C stops)\n"
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.slow
def test_interrupted_follow_exits_130_without_a_traceback(dirs):
    registry = dirs[0]
    proc = follow(registry, "dense")
    try:
        out = Reader(proc)
        wait_for(lambda: len(out.lines) >= 4, what="the last lines")
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 130
        assert "Traceback" not in proc.stderr.read()
    finally:
        proc.kill()
        proc.wait()
