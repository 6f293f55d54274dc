"""Hostile input and faults, one section per class of failure, each with several instances:
writes that escape a dir, outputs that land in the wrong place, signals to the wrong process,
one bad thing breaking everything, tracebacks, supervisor faults and zombies, terminal escapes,
coloured logs, unbounded memory, unbounded numbers, unclear messages.

Legs here run `python -c ...` straight from a hand-made plan (the supervisor runs any argv): no
torchrun, so each supervisor run costs a fraction of a second.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from helpers import REPO, child_env, fake_torchrun, write_registry

from cockpit import (
    cli,
    expdir,
    fsutil,
    launch,
    logs,
    procs,
    report,
    report_files,
    report_md,
    resume_text,
    safetext,
    stats,
    supervisor,
)
from cockpit import registry as reg
from cockpit.executors import local
from cockpit.figures import Figures
from cockpit.logs import summary

STEP = "step {i:05d}/00010 ({p:.2f}%) | loss: {loss:.6f} | dt: 10.00ms | tok/sec: 1,000 | bf16_mfu: 1.00"
FINAL = "Peak memory usage: 1.00MiB\nTotal training time: 0.01m\n"
ESCAPES = "\x1b]0;PWNED\x07\x1b[2J\x1b]52;c;ZXZpbA==\x07"  # title, clear screen, clipboard write


def trainer_code(steps: int = 3, fail: str | None = None, kill: bool = False) -> str:
    """A leg's program: step lines, then the final lines, or a failure."""
    lines = [STEP.format(i=i, p=i * 10.0, loss=5 - i / 10) for i in range(steps)]
    code = f"import os, sys\nfor ln in {lines!r}:\n    print(ln, flush=True)\n"
    if kill:
        code += "os.kill(os.getpid(), 9)\n"
    elif fail:
        code += f"sys.stderr.write({fail!r} + '\\n')\nsys.exit(1)\n"
    else:
        code += f"sys.stdout.write({FINAL!r})\n"
    return code


def plan_dir(
    root: Path, legs: dict[str, str], on_failure: str = "continue", name: str = "20260101_000000_x"
) -> Path:
    """An experiment dir under root whose plan runs `python -c CODE` per leg."""
    d = root / name
    (d / "state").mkdir(parents=True)
    plan = {
        "experiment": "x",
        "on_failure": on_failure,
        "cwd": str(d),
        "stop_grace_s": 2,
        "legs": [
            {"name": n, "device": "cpu", "argv": [sys.executable, "-c", code]} for n, code in legs.items()
        ],
    }
    (d / "plan.json").write_text(json.dumps(plan))
    return d


def registry_for(tmp_path: Path, legs: tuple[str, ...] = ("a", "b", "c"), exp_id: str = "x") -> Path:
    text = f'[project]\nexp_root = "exp"\n[defaults]\ndevice = "cpu"\n[[experiment]]\nid = "{exp_id}"\n'
    text += "".join(f'[[experiment.leg]]\nname = "{n}"\n' for n in legs)
    (tmp_path / "reg.toml").write_text(text)
    return tmp_path / "reg.toml"


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def listing(*dirs: Path) -> dict[str, tuple]:
    """Every entry under the dirs with its kind, size and mtime: what 'nothing written' compares."""
    out = {}
    for top in dirs:
        for base, subdirs, files in os.walk(top):
            for n in subdirs + files:
                p = os.path.join(base, n)
                st = os.lstat(p)
                out[p] = (stat.S_IFMT(st.st_mode), st.st_size, st.st_mtime_ns)
    return out


def one_line_exit_2(code: int, out: str, err: str) -> str:
    assert code == 2 and out == "" and err.count("\n") == 1 and err.startswith("cockpit: "), (code, out, err)
    assert "Traceback" not in err
    return err


# ----------------------------------------------------------------------------------------------
# 1. writes that escape: every file is created new inside its dir, never through a planted link


@pytest.mark.slow
def test_a_symlink_planted_at_a_legs_log_fails_that_leg_before_it_starts(tmp_path, capsys):
    root = tmp_path / "exp"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    target = elsewhere / "victim.txt"
    target.write_text("keep me\n")
    d = plan_dir(root, {"a": trainer_code(), "b": trainer_code(), "c": trainer_code()})
    os.symlink(target, d / "b.log")  # to an existing file
    os.symlink(elsewhere / "new.txt", d / "c.log")  # to a file that does not exist yet
    assert supervisor.Supervisor(d, echo=False).run() == 1
    assert target.read_text() == "keep me\n" and not (elsewhere / "new.txt").exists()
    states = {n: expdir.read_state(d, n) for n in "abc"}
    assert states["a"].status == "done"
    for n in "bc":
        assert states[n].status == "failed" and states[n].pid is None
        assert states[n].note.startswith(
            f"log path taken: {d}/{n}.log exists and was not created by the supervisor"
        )
        assert "a symlink to" in states[n].note and "nothing started" in states[n].note
    code, out, _ = run_cli(capsys, "--registry", str(registry_for(tmp_path)), "status")
    assert code == 0 and "b  failed    (log path taken:" in out and "c  failed    (log path taken:" in out


@pytest.mark.slow
def test_a_log_replaced_by_a_hard_link_or_a_fifo_is_not_written(tmp_path):
    root = tmp_path / "exp"
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me\n")
    d = plan_dir(root, {"a": trainer_code(), "b": trainer_code()})
    os.link(victim, d / "a.log")  # a hard link: same inode as someone else's file
    os.mkfifo(d / "b.log")  # a FIFO: opening it for writing would block forever
    t0 = time.monotonic()
    assert supervisor.Supervisor(d, echo=False).run() == 1
    assert time.monotonic() - t0 < 30 and victim.read_text() == "keep me\n"
    assert all("log path taken" in expdir.read_state(d, n).note for n in "ab")
    # a leg run again in its dir appends to its own log only: by its recorded (device, inode)
    d2 = plan_dir(root, {"a": trainer_code(steps=2)}, name="20260101_000001_x")
    assert supervisor.Supervisor(d2, echo=False).run() == 0
    first = (d2 / "a.log").read_text()
    st = expdir.read_state(d2, "a")
    st.status = "failed"
    expdir.write_state(d2, st)
    assert supervisor.Supervisor(d2, echo=False).run() == 0
    assert (d2 / "a.log").read_text() == first * 2
    (d2 / "a.log").unlink()
    os.link(victim, d2 / "a.log")  # swapped for another file since: refused
    st = expdir.read_state(d2, "a")
    st.status = "failed"
    expdir.write_state(d2, st)
    assert supervisor.Supervisor(d2, echo=False).run() == 1
    assert "log path taken" in expdir.read_state(d2, "a").note and victim.read_text() == "keep me\n"


def test_planted_links_for_state_report_lock_stop_and_guide_are_never_followed(tmp_path, capsys):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    victim = elsewhere / "victim.txt"
    victim.write_text("keep me\n")
    root = tmp_path / "exp"
    # a symlinked state dir: the supervisor refuses to start, writes nothing through it
    d = plan_dir(root, {"a": trainer_code()})
    os.rmdir(d / "state")
    os.symlink(elsewhere, d / "state")
    with pytest.raises(expdir.RunError, match="is a symlink"):
        supervisor.Supervisor(d, echo=False).run()
    with pytest.raises(fsutil.UnsafePath, match="is a symlink"):
        expdir.write_state(d, expdir.LegState("a", "queued"))
    assert sorted(os.listdir(elsewhere)) == ["victim.txt"]
    # report.md, a state file, a stop request: the link is replaced, its target untouched
    d2 = plan_dir(root, {"a": trainer_code()}, name="20260101_000001_x")
    for rel in ("report.md", "report_summary.csv", "state/a.json", "state/a.stop"):
        os.symlink(victim, d2 / rel)
    expdir.write_state(d2, expdir.LegState("a", "done"))
    fsutil.atomic_write_json(d2 / "state" / "a.stop", {"requested_at": "now"}, root=d2)
    (d2 / "a.log").write_text(STEP.format(i=0, p=0.0, loss=1.0) + "\n" + FINAL)
    report_files.write_report(d2, plots=False)
    assert victim.read_text() == "keep me\n"
    for rel in ("report.md", "report_summary.csv", "state/a.json", "state/a.stop"):
        assert not (d2 / rel).is_symlink() and (d2 / rel).is_file()
    # a state file that names another leg ("../../x") is not that leg's, and is never written back
    (d2 / "state" / "b.json").write_text(
        json.dumps({"leg": "../../../victim", "status": "running", "pid": 1})
    )
    assert expdir.read_state(d2, "b") is None
    with pytest.raises(fsutil.UnsafePath, match="lies outside"):
        expdir.write_state(d2, expdir.LegState("../../../x", "done"))
    # a lock file that is a symlink: refused
    os.symlink(victim, d2 / "state" / "a.lock")
    with pytest.raises(expdir.RunError, match="is a symlink"):
        expdir.try_lock(d2 / "state" / "a.lock", "held", root=d2)
    # the resume guide in exp_root, planted as a link: replaced, not written through
    os.symlink(victim, root / resume_text.GUIDE_NAME)
    code, out, _ = run_cli(
        capsys,
        "--registry",
        str(registry_for(tmp_path)),
        "resume",
        "--out-md",
        str(root / resume_text.GUIDE_NAME),
    )
    assert (
        code == 0 and victim.read_text() == "keep me\n" and not (root / resume_text.GUIDE_NAME).is_symlink()
    )


# ----------------------------------------------------------------------------------------------
# 2. every output path is checked before anything is written


def _report_dir(tmp_path: Path) -> Path:
    d = tmp_path / "exp" / "20260101_000000_x"
    d.mkdir(parents=True)
    (d / "a.log").write_text("".join(STEP.format(i=i, p=i * 10.0, loss=5.0) + "\n" for i in range(5)) + FINAL)
    return d


@pytest.mark.parametrize(
    "where, words",
    [
        ("{tmp}/out", "is a directory (give a file name)"),
        ("{tmp}/out/", "is a directory"),
        ("{tmp}/afile/x.md", "is a file, not a directory"),
        ("{tmp}/afile/deeper/x.md", "is a file, not a directory"),
        ("{tmp}/clash.md", "clash_steps.csv is a directory"),  # a sibling output is a directory
        ("{tmp}/" + "n" * 250 + ".md", "file name longer than 255 bytes"),
        ("/proc/cockpit-hostile/x.md", ""),  # a place nobody can write
    ],
)
def test_out_md_that_cannot_be_written_is_one_line_and_nothing_is_written(tmp_path, capsys, where, words):
    d = _report_dir(tmp_path)
    (tmp_path / "out").mkdir()
    (tmp_path / "afile").write_text("a file\n")
    (tmp_path / "clash_steps.csv").mkdir()
    before = listing(tmp_path)
    out_md = where.replace("{tmp}", str(tmp_path))
    err = one_line_exit_2(
        *run_cli(
            capsys,
            "report",
            "--registry",
            str(tmp_path / "none.toml"),
            "--exp-dir",
            str(d),
            "--out-md",
            out_md,
        )
    )
    assert words in err
    assert listing(tmp_path) == before
    assert not os.path.exists("/proc/cockpit-hostile")


def test_resume_out_md_is_checked_the_same_way(tmp_path, capsys):
    reg_path = registry_for(tmp_path)
    (tmp_path / "afile").write_text("x")
    before = listing(tmp_path)
    for bad, words in (
        (str(tmp_path), "is a directory"),
        (f"{tmp_path}/afile/g.md", "is a file, not a directory"),
    ):
        err = one_line_exit_2(*run_cli(capsys, "--registry", str(reg_path), "resume", "--out-md", bad))
        assert words in err
    assert listing(tmp_path) == before


# ----------------------------------------------------------------------------------------------
# 3. signals only to processes proven to be the leg's; stop stays inside exp_root


def _victim() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])


def test_stop_never_signals_an_unproven_supervisor_or_leg(tmp_path, capsys):
    reg_path = registry_for(tmp_path, ("a",))
    d = plan_dir(tmp_path / "exp", {"a": trainer_code()})
    victim = _victim()
    try:
        ct = psutil.Process(victim.pid).create_time()
        cases = [  # (supervisor record, leg state)
            ({"pid": victim.pid}, {"leg": "a", "status": "running", "pid": victim.pid}),
            ({"pid": victim.pid, "create_time": ct}, {"leg": "a", "status": "queued"}),
            (None, {"leg": "a", "status": "running", "pid": victim.pid, "create_time": ct}),
        ]
        for sup, st in cases:
            if sup is None:
                (d / "state" / "supervisor.json").unlink(missing_ok=True)
            else:
                (d / "state" / "supervisor.json").write_text(json.dumps(sup))
            (d / "state" / "a.json").write_text(json.dumps(st))
            before = listing(d)
            err = one_line_exit_2(*run_cli(capsys, "--registry", str(reg_path), "stop", str(d)))
            assert "process identity not proven" in err and "nothing" in err, err
            assert victim.poll() is None, (sup, st)
            assert listing(d) == before
        assert (
            "unknown: process identity not proven"
            in run_cli(capsys, "--registry", str(reg_path), "status")[1]
        )
    finally:
        victim.kill()
        victim.wait()


def test_stop_refuses_dirs_outside_exp_root_and_writes_nothing_there(tmp_path, capsys):
    reg_path = registry_for(tmp_path, ("a",))
    outside = plan_dir(tmp_path / "elsewhere", {"a": trainer_code()})
    victim = _victim()
    try:
        rec = {"pid": victim.pid, "create_time": psutil.Process(victim.pid).create_time()}
        (outside / "state" / "supervisor.json").write_text(json.dumps(rec))
        (outside / "state" / "a.json").write_text(json.dumps({"leg": "a", "status": "running", **rec}))
        (tmp_path / "exp").mkdir(exist_ok=True)
        os.symlink(outside, tmp_path / "exp" / "20260101_000009_x")  # a link in exp_root to it
        before = listing(tmp_path / "elsewhere")
        for target in (
            str(outside),
            str(tmp_path / "exp" / "20260101_000009_x"),
            "20260101_000009_x",
            str(tmp_path / "exp"),
            "/",
        ):
            for leg in ([], ["a"]):
                err = one_line_exit_2(*run_cli(capsys, "--registry", str(reg_path), "stop", target, *leg))
                assert "is not an experiment dir under exp_root" in err or "no experiment dir" in err, err
        assert victim.poll() is None and listing(tmp_path / "elsewhere") == before
        with pytest.raises(expdir.RunError, match="not an experiment dir under exp_root"):
            launch.stop(outside, exp_root=tmp_path / "exp")
    finally:
        victim.kill()
        victim.wait()


def test_stop_of_a_proven_orphan_leg_kills_its_tree(tmp_path, leg_process):

    torchrun = str(fake_torchrun(tmp_path / "bin"))
    argv = [torchrun, "--standalone", "-m", "tests.fake_trainer", "--", "--x", "1"]
    d = tmp_path / "exp" / "20260101_000000_x"
    (d / "state").mkdir(parents=True)
    (d / "plan.json").write_text(json.dumps({"experiment": "x", "legs": [{"name": "a", "argv": argv}]}))
    p = leg_process(d, "a", argv)
    rec = {"leg": "a", "status": "running", "pid": p.pid, "create_time": psutil.Process(p.pid).create_time()}
    (d / "state" / "a.json").write_text(json.dumps(rec))
    after = launch.stop(d, grace_s=2, exp_root=tmp_path / "exp")
    assert after.states["a"].status == "stopped" and p.wait(10) is not None


# ----------------------------------------------------------------------------------------------
# 4. names the filesystem cannot take are refused at load; one bad dir stays that dir's problem


@pytest.mark.parametrize(
    "leg, exp_id, words",
    [
        ("x" * 300, "e", "is too long for a file name: 300 bytes, at most 250"),
        ("é" * 126, "e", "252 bytes, at most 250"),  # 126 characters, but 252 bytes
        ("a", "x" * 250, "experiment id 'xxxx"),
        ("a", "ü" * 120, "240 bytes, at most 239"),
    ],
)
def test_names_too_long_for_the_filesystem_are_refused_at_load(tmp_path, leg, exp_id, words):
    path = tmp_path / "r.toml"
    path.write_text(
        f'[project]\nexp_root = "exp"\n\n[[experiment]]\nid = "{exp_id}"\n[[experiment.leg]]\nname = "{leg}"\n'
    )
    with pytest.raises(reg.RegistryError) as info:
        reg.load(path)
    msg = str(info.value)
    assert msg.startswith(f"{path}:") and words in msg and "\n" not in msg
    deep = str(tmp_path)
    while len(deep) < 3582:  # an exp_root of 3,582 bytes: fine alone, too long with these names
        deep += "/" + "d" * max(1, min(200, 3582 - len(deep) - 1))
    path.write_text(
        f'[project]\nexp_root = "{deep}"\n[[experiment]]\nid = "{"i" * 239}"\n'
        f'[[experiment.leg]]\nname = "{"l" * 250}"\n'
    )
    with pytest.raises(reg.RegistryError, match="more than the 4095 a path may have"):
        reg.load(path)


def _bad_dirs(root: Path) -> dict[str, Path]:
    """Dirs under exp_root that each break in their own way."""
    root.mkdir(parents=True, exist_ok=True)
    out = {}
    d = out["fifo plan"] = root / "20260101_000001_x"
    (d / "state").mkdir(parents=True)
    os.mkfifo(d / "plan.json")
    d = out["endless plan"] = root / "20260101_000002_x"
    (d / "state").mkdir(parents=True)
    os.symlink("/dev/zero", d / "plan.json")
    d = out["long names"] = root / "20260101_000003_x"
    (d / "state").mkdir(parents=True)
    (d / "plan.json").write_text(
        json.dumps({"experiment": "x", "legs": [{"name": "y" * 300}, {"name": "a"}]})
    )
    d = out["state is a file"] = root / "20260101_000004_x"
    d.mkdir()
    (d / "state").write_text("not a dir")
    (d / "a.log").write_text("step 00001/00010 | loss: 1.0\n")
    os.utime(d / "a.log", (1e9, 1e9))  # long ago: not a run in progress
    d = out["fifo log"] = root / "20260101_000005_x"
    (d / "state").mkdir(parents=True)
    (d / "plan.json").write_text(json.dumps({"experiment": "x", "legs": [{"name": "a"}]}))
    os.mkfifo(d / "a.log")
    d = out["nested json"] = root / "20260101_000006_x"
    (d / "state").mkdir(parents=True)
    (d / "plan.json").write_text("[" * 100_000 + "]" * 100_000)
    (d / "state" / "supervisor.json").write_text('{"pid": 1, "create_time": "x"}')
    return out


@pytest.mark.slow
def test_bad_dirs_under_exp_root_are_their_own_problem_never_the_views(tmp_path, capsys):
    reg_path = registry_for(tmp_path, ("a",))
    good = plan_dir(tmp_path / "exp", {"a": trainer_code()}, name="20260101_000000_x")
    assert supervisor.Supervisor(good, echo=False).run() == 0
    bad = _bad_dirs(tmp_path / "exp")
    t0 = time.monotonic()
    found = {d.path: d for d in expdir.discover(tmp_path / "exp")}
    assert time.monotonic() - t0 < 20  # nothing blocked on a FIFO, nothing read /dev/zero to its end
    assert found[good].states["a"].status == "done" and found[good].problem is None
    for what in ("fifo plan", "endless plan", "long names", "nested json"):
        assert found[bad[what]].problem, what
    for argv in (["status"], ["resume"]):
        code, out, err = run_cli(capsys, "--registry", str(reg_path), *argv)
        assert code == 0 and "Traceback" not in err
        assert out.count("problem: ") + out.count("Unreadable: ") >= 4
    code, out, _ = run_cli(capsys, "--registry", str(reg_path), "status")
    assert "a  done" in out  # the good dir's leg


# ----------------------------------------------------------------------------------------------
# 5. one line and exit 2 instead of a traceback


@pytest.mark.parametrize(
    "project, words",
    [
        ('exp_root = "/etc/passwd"', "is a file, not a directory"),
        ('exp_root = "/etc/passwd/exp"', "which is a file"),
        ('exp_root = "~nosuchuser-cockpit/x"', "user 'nosuchuser-cockpit', who does not exist"),
        ('exp_root = ""', "is empty"),
        ('exp_root = "exp"\ntail = 99999999999999999999', "'project.tail' must be between 1 and"),
    ],
)
def test_bad_exp_root_and_huge_tail_in_the_registry(tmp_path, capsys, project, words):
    (tmp_path / "r.toml").write_text(f"[project]\n{project}\n")
    for argv in (["status"], ["launch", "x", "--dry-run"], ["resume"], ["stop", "x"]):
        err = one_line_exit_2(*run_cli(capsys, "--registry", str(tmp_path / "r.toml"), *argv))
        assert words in err and f"{tmp_path / 'r.toml'}:{2 + project.count(chr(10))}:" in err


@pytest.mark.parametrize(
    "argv, words",
    [
        (["report", "--exp-dir", "{d}", "--tail", "99999999999999999999999"], "--tail must be at most"),
        (["report", "--exp-dir", "{d}", "--tail", "-3"], "--tail must be at least 1"),
        (["stop", "x", "--grace", "nan"], "--grace must be between 0 and"),
        (["stop", "x", "--grace", "-1"], "--grace must be between 0 and"),
    ],
)
def test_huge_or_odd_numbers_on_the_command_line(tmp_path, capsys, argv, words):
    d = _report_dir(tmp_path)
    registry_for(tmp_path)
    argv = [a.replace("{d}", str(d)) for a in argv]
    err = one_line_exit_2(*run_cli(capsys, "--registry", str(tmp_path / "reg.toml"), *argv))
    assert words in err


def test_launch_into_a_read_only_exp_root_is_refused_and_the_dry_run_says_so(tmp_path, capsys, readonly_dir):
    path = write_registry(tmp_path, {"a": 'model-tag = "a"'})
    path.write_text(path.read_text().replace('exp_root = "exp"', f'exp_root = "{readonly_dir}/exp"'))
    code, out, _ = run_cli(capsys, "--registry", str(path), "launch", "fake", "--dry-run")
    assert (
        code == 0
        and f"# a real launch would be refused here: exp_root {readonly_dir}/exp cannot be created: "
        f"{readonly_dir} is on a read-only filesystem"
        in out
    )
    err = one_line_exit_2(*run_cli(capsys, "--registry", str(path), "launch", "fake"))
    assert "is on a read-only filesystem" in err
    err = one_line_exit_2(
        *run_cli(
            capsys,
            "report",
            "--registry",
            str(path),
            "--exp-dir",
            str(_report_dir(tmp_path)),
            "--out-md",
            f"{readonly_dir}/r.md",
        )
    )
    assert "is on a read-only filesystem" in err


def test_launch_refusals_are_one_line_and_the_dry_run_says_them(tmp_path, capsys, monkeypatch):
    path = write_registry(tmp_path, {"a": 'model-tag = "a"'})
    text = path.read_text()
    # an exp_root no dir can be made in: under /proc (root may write almost anywhere, not there)
    path.write_text(text.replace('exp_root = "exp"', 'exp_root = "/proc/cockpit-hostile-exp"'))
    err = one_line_exit_2(*run_cli(capsys, "--registry", str(path), "launch", "fake"))
    assert "/proc/cockpit-hostile-exp" in err and not os.path.exists("/proc/cockpit-hostile-exp")
    # no torchrun, and the experiment held by another cockpit: both said by the dry run
    path.write_text(text)
    monkeypatch.setattr(launch, "find_torchrun", lambda: None)
    fd = launch.experiment_lock(tmp_path / "exp", "fake")
    try:
        code, out, _ = run_cli(capsys, "--registry", str(path), "launch", "fake", "--dry-run")
        assert "refused here: torchrun not found" in out and "refused here: 'fake' is being launched" in out
        err = one_line_exit_2(*run_cli(capsys, "--registry", str(path), "launch", "fake"))
        assert "torchrun not found" in err
    finally:
        os.close(fd)
    assert sorted(os.listdir(tmp_path / "exp")) == [".cockpit-locks"]


# ----------------------------------------------------------------------------------------------
# 6. the supervisor survives its own OSErrors, and is reaped when it ends


class Faults:
    """Make fsutil's writes fail with `code` from some point on (optionally only for some paths)."""

    def __init__(self, monkeypatch, code: int, when=lambda path: True):
        self.on, self.code, self.when, self.hits = False, code, when, []
        for name in ("atomic_write_json", "create_new", "create_or_append"):
            real = getattr(fsutil, name)
            monkeypatch.setattr(fsutil, name, self._wrap(real))
        real_open = fsutil.StagedFiles.open
        monkeypatch.setattr(
            fsutil.StagedFiles,
            "open",
            lambda s, path, mode="w": self._check(path) or real_open(s, path, mode),
        )

    def _check(self, path) -> None:
        if self.on and self.when(str(path)):
            self.hits.append(str(path))
            raise OSError(self.code, os.strerror(self.code), str(path))

    def _wrap(self, real):
        def call(path, *a, **kw):
            self._check(path)
            return real(path, *a, **kw)

        return call


@pytest.mark.parametrize("code", [errno.EROFS, errno.ENOSPC, errno.EIO])
@pytest.mark.parametrize("policy, rest", [("continue", "failed"), ("stop", "stopped")])
def test_supervisor_faults_fail_the_leg_follow_the_policy_and_end_cleanly(
    tmp_path, capsys, monkeypatch, code, policy, rest
):
    """The dir turns read-only (full, failing) while leg a runs: a fails as its trainer says (its
    checkpoint could not be saved), then nothing more can be written. One line per fault."""
    ckpt = "OSError: [Errno 30] Read-only file system: 'ckpt_root/model.pt'"
    d = plan_dir(
        tmp_path / "exp",
        {"a": trainer_code(fail=ckpt), "b": trainer_code(), "c": trainer_code()},
        on_failure=policy,
    )
    faults = Faults(monkeypatch, code)
    sup = supervisor.Supervisor(d, echo=True)
    real_put = sup.put

    def put(st):
        real_put(st)
        if st.leg == "a" and st.status == "running":
            faults.on = True  # from here on the dir cannot be written

    sup.put = put
    assert sup.run() == 1  # no exception: the queue ran to its end
    assert faults.hits and sup.faults
    states = sup.states
    assert states["a"].status == "failed" and states["a"].error_tail[-1] == ckpt
    if policy == "continue":
        for n in "bc":
            assert states[n].status == "failed" and states[n].note.startswith("supervisor fault: ")
            assert os.strerror(code) in states[n].note
    else:
        assert [states[n].status for n in "bc"] == ["stopped", "stopped"]
    out = capsys.readouterr().out
    faults_said = [ln for ln in out.splitlines() if "fault: " in ln]
    assert faults_said and all(os.strerror(code) in ln for ln in faults_said)
    assert expdir.read_state(d, "a").status == "running"  # what the disk held when it stopped taking writes
    faults.on = False
    assert expdir.open_dir(d).states["a"].status == "failed"  # its process is gone: judged from its log


@pytest.mark.slow
def test_supervisor_of_a_broken_plan_is_one_line(tmp_path):
    for plan, words in (
        (["not", "a", "dict"], "not a JSON object"),
        ({"experiment": "x", "legs": [{"name": "../a", "argv": ["x"]}]}, "not a leg name"),
        ({"experiment": "x", "legs": [{"name": "a", "argv": "rm -rf /"}]}, "argv is not a list"),
        ({"experiment": "x", "legs": [{"name": "y" * 300, "argv": ["x"]}]}, "not a leg name"),
    ):
        d = tmp_path / f"d{len(os.listdir(tmp_path))}"
        d.mkdir()
        (d / "plan.json").write_text(json.dumps(plan))
        r = subprocess.run(
            [sys.executable, "-m", "cockpit.supervisor", str(d)],
            capture_output=True,
            text=True,
            env=child_env(),
            cwd=REPO,
            timeout=60,
        )
        assert r.returncode == 2 and words in r.stderr and r.stderr.count("\n") == 1, r.stderr


@pytest.mark.slow
def test_a_supervisor_started_by_a_long_lived_process_is_reaped(tmp_path):
    """The TUI launches (launch.start -> _spawn_supervisor) and lives on: no <defunct> child."""
    assert procs.zombie_children() == []
    pids = []
    for i in range(2):
        d = plan_dir(tmp_path / "exp", {"a": trainer_code(steps=1)}, name=f"20260101_00000{i}_x")
        fd = launch.experiment_lock(tmp_path / "exp", f"x{i}")
        try:
            local.spawn(d, fd)
        finally:
            os.close(fd)
        pids.append(json.loads((d / "state" / "supervisor.json").read_text())["pid"])
    # once they end they are gone: not left as zombies of this process (which never waits itself)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and set(pids) & {c.pid for c in psutil.Process().children()}:
        time.sleep(0.05)
    assert not set(pids) & {c.pid for c in psutil.Process().children()}, procs.zombie_children()
    assert all(
        expdir.open_dir(p).states["a"].status == "done"
        for p in (tmp_path / "exp").iterdir()
        if p.name[0] != "."
    )


# ----------------------------------------------------------------------------------------------
# 7. nothing from a log or a file reaches the terminal with a control character


def _hostile_log_dir(tmp_path: Path) -> Path:
    d = tmp_path / "exp" / "20260101_000000_x"
    d.mkdir(parents=True)
    steps = "".join(STEP.format(i=i, p=i * 10.0, loss=5.0) + "\n" for i in range(3))
    (d / "a.log").write_text(
        steps + f"Traceback (most recent call last):\nRuntimeError: boom {ESCAPES}\x07\x08\r\n"
    )
    (d / f"evil{ESCAPES[:9]}name.log").write_text(steps + FINAL)
    (d / "we`ird|name.log").write_text(steps + FINAL)
    return d


def test_escapes_in_logs_never_reach_stdout_and_markdown_is_escaped(tmp_path, capsys):
    d = _hostile_log_dir(tmp_path)
    code, out, err = run_cli(capsys, "report", "--registry", str(tmp_path / "none.toml"), "--exp-dir", str(d))
    assert code == 0 and "\x1b" not in out and "\x07" not in out and "\x08" not in out and "\r" not in out
    assert "RuntimeError: boom" in out and "\\x1b" not in out  # sequences removed, not shown
    assert "| we\\`ird\\|name |" in out and "``we`ird|name``" in out  # a cell, a code span
    out_md = tmp_path / "r.md"
    assert (
        run_cli(
            capsys,
            "report",
            "--registry",
            str(tmp_path / "none.toml"),
            "--exp-dir",
            str(d),
            "--out-md",
            str(out_md),
            "--no-plots",
        )[0]
        == 0
    )
    for p in (out_md, tmp_path / "r_summary.csv", tmp_path / "r_steps.csv"):
        assert "\x1b" not in p.read_text()


@pytest.mark.slow
def test_escapes_in_states_notes_and_names_never_reach_stdout(tmp_path, capsys):
    reg_path = registry_for(tmp_path, ("a",))
    d = plan_dir(tmp_path / "exp", {"a": trainer_code(fail=f"ValueError: bad {ESCAPES}")})
    assert supervisor.Supervisor(d, echo=False).run() == 1
    st = expdir.read_state(d, "a")
    st.note = f"note {ESCAPES}"
    expdir.write_state(d, st)
    evil = tmp_path / "exp" / f"20260101_000001_{ESCAPES[:9]}"
    evil.mkdir()
    (evil / "z.log").write_text(f"hello {ESCAPES}\n")
    for argv in (["status"], ["resume"], ["stop", str(d)], ["stop", str(d), "a"], ["stop", f"x{ESCAPES}"]):
        code, out, err = run_cli(capsys, "--registry", str(reg_path), *argv)
        assert "\x1b" not in out + err and "\x07" not in out + err, argv
        assert err.count("\n") <= 1
    assert safetext.printable("a\x1b[31mred\x1b[0m\x9b2J\u202etxt\r\x07") == "ared\\u202etxt\\x0d\\x07"


# ----------------------------------------------------------------------------------------------
# 8. coloured logs read as they are


def _coloured(lines: list[str]) -> str:
    """Lines in SGR colours, two styles in turn, as a logger with colours writes them."""
    return "".join(
        f"\x1b[32m{ln}\x1b[0m\n" if i % 2 else f"\x1b[38;5;82m{ln}\x1b[0m\x1b[K\n"
        for i, ln in enumerate(lines)
    )


@pytest.mark.slow
def test_a_non_utf8_exp_root_is_reported_written_and_printed(tmp_path):
    """exp_root under a dir whose name is not UTF-8 (`caf\\xe9`): the supervisor regenerates
    report.md, `resume --out-md`, `report --out-md` and `status` work in a strict UTF-8 terminal,
    and the byte is shown as `\\xe9` wherever text is printed."""
    base = os.fsdecode(os.fsencode(str(tmp_path)) + b"/caf\xe9")
    os.mkdir(base)
    reg_path = registry_for(Path(base), ("a",))
    d = plan_dir(Path(base) / "exp", {"a": trainer_code()})
    r = subprocess.run(
        [sys.executable, "-m", "cockpit.supervisor", str(d)], env=child_env(), capture_output=True, timeout=60
    )
    assert r.returncode == 0 and b"not regenerated" not in r.stdout, r.stdout + r.stderr
    assert f"`{tmp_path}/caf\\xe9/exp/20260101_000000_x`".encode() in (d / "report.md").read_bytes()
    env = {
        **child_env(),
        "LC_ALL": "C.UTF-8",
        "PYTHONIOENCODING": "utf-8:strict",
    }  # printing a raw byte would fail
    for argv in (
        ["--registry", str(reg_path), "resume", "--out-md", str(Path(base) / "exp" / "guide.md")],
        [
            "report",
            "--exp-dir",
            str(d),
            "--out-md",
            os.fsdecode(os.fsencode(base) + b"/r\xff.md"),
            "--no-plots",
        ],
        ["--registry", str(reg_path), "status"],
    ):
        r = subprocess.run(
            [sys.executable, "-m", "cockpit.cli", *argv], env=env, capture_output=True, text=True, timeout=60
        )
        assert r.returncode == 0 and "Traceback" not in r.stderr, (argv, r.stderr[-500:])
        assert "caf\\xe9" in r.stdout
    assert (Path(base) / "exp" / "guide.md").is_file() and os.path.isfile(
        os.fsencode(base) + b"/r\xff_steps.csv"
    )
    assert safetext.printable("caf\udce9 \ud800") == "caf\\xe9 \\ud800"


def test_sgr_coloured_step_lines_parse_in_every_path(tmp_path, monkeypatch):
    lines = [STEP.format(i=i, p=i * 10.0, loss=5 - i / 10) for i in range(10)]
    plain = tmp_path / "plain.log"
    plain.write_text("\n".join(lines) + "\n" + FINAL)
    col = tmp_path / "col.log"
    col.write_text(
        _coloured(lines)
        + "\x1b[1mPeak memory usage: 1.00MiB\x1b[0m\n\x1b[1mTotal training time: 0.01m\x1b[0m\n"
    )
    want = logs.summarize(plain)
    for path_kind in ("small", "big"):
        if path_kind == "big":  # the backward tail reader
            monkeypatch.setattr(summary, "SMALL_LOG_BYTES", 16)
        s = logs.summarize(col)
        assert (s.steps_observed, s.tail_n, s.tok_per_sec, s.status, s.last_loss) == (
            want.steps_observed,
            want.tail_n,
            want.tok_per_sec,
            "completed",
            want.last_loss,
        ), path_kind
    full = logs.parse_file(col)
    assert len(full.table) == 10 and full.finished
    st = logs.LogState()
    for ln in _coloured(lines).splitlines():  # lines fed one by one (a follower's path)
        st.feed(ln)
    assert st.steps_observed == 10
    assert report.rows(tmp_path)[0].note != "no step lines in the log"


# ----------------------------------------------------------------------------------------------
# 9. memory bounded by the window, whatever the file


# The peak resident memory of this process image, in KiB: VmHWM (reset at exec; ru_maxrss is not,
# and would count the forking parent's pages), else ru_maxrss.
PEAK_RSS = """def peak():
    try:
        return int(next(ln for ln in open('/proc/self/status') if ln.startswith('VmHWM:')).split()[1])
    except (OSError, StopIteration):
        import resource
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
"""


def _sparse_log(path: Path, size: int) -> None:
    with open(path, "wb") as f:
        f.write(("".join(STEP.format(i=i, p=i * 10.0, loss=5.0) + "\n" for i in range(3))).encode())
        f.truncate(size // 2)
        f.seek(0, 2)
        f.write(b"\n\x1b[32m" + STEP.format(i=5, p=50.0, loss=4.0).encode() + b"\x1b[0m\n")
        f.truncate(size)
        f.seek(0, 2)
        f.write(b"\n" + STEP.format(i=9, p=90.0, loss=3.0).encode() + b"\n" + FINAL.encode())


@pytest.mark.slow
def test_report_of_a_5gb_sparse_log_stays_small_with_and_without_out_md(tmp_path):
    d = tmp_path / "exp" / "20260101_000000_x"
    d.mkdir(parents=True)
    _sparse_log(d / "big.log", 5 << 30)
    code = f"import sys\nfrom cockpit import cli\nrc = cli.main(sys.argv[1:])\n{PEAK_RSS}print('MAXRSS', peak(), file=sys.stderr)\nsys.exit(rc)\n"
    for extra in ([], ["--out-md", str(tmp_path / "r.md")]):
        t0 = time.monotonic()
        r = subprocess.run(
            [
                sys.executable,
                "-c",
                code,
                "report",
                "--registry",
                str(tmp_path / "none.toml"),
                "--exp-dir",
                str(d),
                *extra,
            ],
            capture_output=True,
            text=True,
            env=child_env(),
            timeout=300,
        )
        assert r.returncode == 0, r.stderr
        rss_mib = int(r.stderr.split("MAXRSS")[1]) / 1024
        assert rss_mib < 250, (extra, rss_mib)  # the interpreter, numpy and matplotlib are most of it
        assert time.monotonic() - t0 < 120
    steps = (tmp_path / "r_steps.csv").read_text().splitlines()
    assert [ln.split(",")[1] for ln in steps[1:]] == ["0", "1", "2", "5", "9"]


@pytest.mark.slow
def test_summary_and_streamed_parse_of_a_dense_log_hold_a_bounded_window(tmp_path):
    """About 60 MB of step lines (600k of them): as Python lists they would take some 250 MB; the
    summary holds its window and the streamed parse one chunk, so the process stays small."""
    p = tmp_path / "dense.log"
    line = STEP.format(i=1, p=10.0, loss=4.0) + "\n"
    n = 60_000_000 // len(line)
    with open(p, "w") as f:
        for _ in range(10):
            f.write(line * (n // 10))
    code = (
        "import sys\nfrom cockpit import logs\n"
        "s = logs.summarize(sys.argv[1])\nseen = []\n"
        "st = logs.parse_file(sys.argv[1], on_steps=lambda t: seen.append(len(t)))\n"
        f"{PEAK_RSS}print(s.tail_n, sum(seen), st.steps_observed, peak())\n"
    )
    r = subprocess.run(
        [sys.executable, "-c", code, str(p)], capture_output=True, text=True, env=child_env(), timeout=300
    )
    tail_n, streamed, observed, rss_kib = map(int, r.stdout.split())
    assert (tail_n, streamed, observed) == (50, n // 10 * 10, n // 10 * 10), r.stderr
    assert rss_kib / 1024 < 120, rss_kib / 1024


# ----------------------------------------------------------------------------------------------
# 10. numbers and shapes checked with a range, one line with file:line


@pytest.mark.parametrize(
    "text, line, words",
    [
        ("[defaults]\nnproc_per_node = 100000\n", 4, "nproc_per_node must be a positive integer up to 128"),
        ("[project.gpu_idle]\nwait_s = -5\n", 4, "'project.gpu_idle.wait_s' must be between 0 and"),
        ("[project.gpu_idle]\nmax_util_pct = nan\n", 4, "must be a finite number, not nan"),
        ("[project.gpu_idle]\nmax_util_pct = 250\n", 4, "between 0 and 100"),
        ('[defaults]\nmodule = "--help"\n', 4, "must be a Python module name"),
        ('[defaults]\nmodule = "os; import os"\n', 4, "must be a Python module name"),
        (
            '[[experiment]]\nid = "e"\n[[experiment.leg]]\nname = "l"\n[experiment.leg.recorded]\ntok_per_sec = inf\n',
            8,
            "must be a finite number, not inf",
        ),
        (
            '[[experiment]]\nid = "e"\n[[experiment.leg]]\nname = "l"\n[experiment.leg.recorded]\nmfu = -1.0\n',
            8,
            "between 0 and",
        ),
        (
            '[[experiment]]\nid = "e"\n[[experiment.leg]]\nname = "ab\u202ecd"\n',
            6,
            "U+202E RIGHT-TO-LEFT OVERRIDE",
        ),
        ('[[experiment]]\nid = "e\u2066x"\n', 4, "U+2066"),
        ('[[experiment]]\nid = "e"\ntitle = "t\\u001b[2J"\n', 5, "U+001B"),
        ("[defaults.args]\nlr = nan\n", 4, "trainer arg 'lr' must be a finite number"),
    ],
)
def test_numbers_and_names_are_checked_with_file_and_line(tmp_path, text, line, words):
    path = tmp_path / "r.toml"
    path.write_text('[project]\nexp_root = "exp"\n' + text)
    with pytest.raises(reg.RegistryError) as info:
        reg.load(path)
    assert str(info.value).startswith(f"{path}:{line}: ") and words in str(info.value), str(info.value)


def test_a_registry_with_a_byte_order_mark_loads(tmp_path, capsys):
    path = tmp_path / "r.toml"
    path.write_bytes(b"\xef\xbb\xbf" + b'[project]\nexp_root = "exp"\n[[experiment]]\nid = "e"\n')
    assert reg.load(path).experiment("e") is not None
    assert run_cli(capsys, "--registry", str(path), "status")[0] == 0


@pytest.mark.parametrize(
    "base, run_, why",
    [
        (0.0, 5.0, "the baseline's figure is 0"),
        (float("nan"), 5.0, "the baseline's figure is nan"),
        (5.0, float("inf"), "the run's figure is inf"),
        (1e-320, 1e300, "the change overflows"),
    ],
)
def test_deltas_are_never_nan_or_inf_and_say_why(base, run_, why):
    b = report.ReportRow("b", Figures(tok_per_sec=base, dt_ms=1.0))
    r = report.ReportRow("r", Figures(tok_per_sec=run_, dt_ms=2.0))
    text = report_md.render_delta(b, r)
    assert "nan%" not in text and "inf%" not in text
    assert "| tail50 tok/sec |" in text and text.split("| tail50 tok/sec |")[1].split("\n")[0].endswith(
        "| - |"
    )
    assert f"tail50 tok/sec: {why}" in text and "| +100.00% |" in text
    assert stats.pct_change(base, run_) == (None, why) and stats.fmt_pct(float("nan")) == "-"


# ----------------------------------------------------------------------------------------------
# 11. every refusal says what is wrong and what to do


def test_clear_messages(tmp_path, capsys):
    d = _report_dir(tmp_path)
    none = str(tmp_path / "none.toml")
    err = one_line_exit_2(
        *run_cli(capsys, "report", "--registry", none, "--exp-dir", str(d), "--out-md", "/etc/passwd/x.md")
    )
    assert "/etc/passwd is a file, not a directory" in err and "File exists" not in err
    err = one_line_exit_2(
        *run_cli(capsys, "report", "--registry", none, "--exp-dir", str(d), "--baseline", "/nonexist/run")
    )
    assert err.count("/nonexist/run.log") == 1 and "is not a dir" in err
    err = one_line_exit_2(
        *run_cli(capsys, "report", "--registry", none, "--exp-dir", str(d), "--baseline", "")
    )
    assert "--baseline is empty" in err
    reg_path = registry_for(tmp_path)
    err = one_line_exit_2(*run_cli(capsys, "--registry", str(reg_path), "stop", ""))
    assert "no experiment dir given" in err
    empty = tmp_path / "exp" / "20260101_000001_x"
    empty.mkdir()
    err = one_line_exit_2(*run_cli(capsys, "report", "--registry", none, "--exp-dir", str(empty)))
    assert "no *.log file" in err
    planned = plan_dir(tmp_path / "exp", {"a": trainer_code()}, name="20260101_000002_x")
    err = one_line_exit_2(*run_cli(capsys, "report", "--registry", none, "--exp-dir", str(planned)))
    assert "no leg has a log yet" in err


@pytest.mark.slow
def test_a_killed_torchrun_is_said_as_the_cause(tmp_path):
    d = plan_dir(tmp_path / "exp", {"a": trainer_code(kill=True), "b": trainer_code()})
    assert supervisor.Supervisor(d, echo=False).run() == 1
    a = expdir.read_state(d, "a")
    assert a.status == "failed" and a.exit_code == -signal.SIGKILL
    assert (
        a.error_tail[-1].startswith("torchrun was killed by SIGKILL (signal 9)")
        and a.note == a.error_tail[-1]
    )
    assert a.error_tail[:-1] == [STEP.format(i=i, p=i * 10.0, loss=5 - i / 10) for i in range(3)]
    assert (
        supervisor.signal_cause(-15).startswith("torchrun was killed by SIGTERM")
        and supervisor.signal_cause(1) is None
    )


@pytest.mark.slow
def test_workers_left_behind_by_a_killed_torchrun_are_stopped(tmp_path):
    """torchrun killed, its workers (own sessions) live on: they carry the leg's marker, and the
    supervisor stops them when the leg ends; nothing else is touched."""
    code = (
        "import os, subprocess, sys, time\n"
        "w = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'], start_new_session=True)\n"
        "open(os.path.join(os.getcwd(), 'worker.pid'), 'w').write(str(w.pid))\n"
        "time.sleep(0.2)\nos.kill(os.getpid(), 9)\n"
    )
    d = plan_dir(tmp_path / "exp", {"a": code})
    bystander = _victim()  # not of this leg: no marker
    try:
        assert supervisor.Supervisor(d, echo=False).run() == 1
        worker = int((d / "worker.pid").read_text())
        assert not psutil.pid_exists(worker) or psutil.Process(worker).status() == psutil.STATUS_ZOMBIE
        assert bystander.poll() is None
        assert expdir.read_state(d, "a").error_tail[-1].startswith("torchrun was killed by SIGKILL")
    finally:
        bystander.kill()
        bystander.wait()


def test_the_safety_primitives_are_layer_0():
    """fsutil, procs and safetext import nothing from the cockpit (everything else builds on them)."""
    import ast

    for name in ("fsutil", "procs", "safetext"):
        tree = ast.parse((REPO / "cockpit" / f"{name}.py").read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                assert not (node.module or "").startswith("cockpit"), (name, node.module)
            if isinstance(node, ast.Import):
                assert not any(a.name.startswith("cockpit") for a in node.names), name
