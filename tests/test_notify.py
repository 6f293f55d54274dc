"""`[project] notify`: an argv the supervisor runs when a leg ends done or failed, with a timeout;
validated at load; its failure is noted in the supervisor's log and the leg's state, never fatal."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from helpers import REPO, cockpit, wait_for, write_registry

from cockpit import expdir, resume, resume_text, supervisor
from cockpit import registry as reg

# a notify command: appends its arguments to a file, and fails (exit 1, a last line) for a failed leg
RECORDER = (
    "import sys; open(sys.argv[1], 'a').write(' '.join(sys.argv[2:]) + '\\n'); "
    "sys.exit('no pager for failures' if sys.argv[2] == 'failed' else 0)"
)


def notify_toml(argv: list[str], timeout: float | None = None) -> str:
    text = "notify = " + json.dumps(argv)
    return text + (f"\nnotify_timeout_s = {timeout}" if timeout is not None else "")


def test_notify_loads_with_its_placeholders(tmp_path):
    argv = ["notify-send", "{experiment}/{leg}: {event}", "{dir}", "{log}"]
    r = reg.load(write_registry(tmp_path, {"a": 'model-tag = "a"'}, extra_project=notify_toml(argv, 2.5)))
    assert r.settings.notify == tuple(argv) and r.settings.notify_timeout_s == 2.5
    fields = {"event": "done", "experiment": "fake", "leg": "a", "dir": "/d", "log": "/d/a.log"}
    assert reg.fill_notify(r.settings.notify, fields) == ["notify-send", "fake/a: done", "/d", "/d/a.log"]
    assert reg.load(write_registry(tmp_path, {"a": 'model-tag = "a"'})).settings.notify is None
    # a program given as a path is the registry dir's
    script = tmp_path / "bin" / "ping.sh"
    script.parent.mkdir()
    script.write_text("#!/bin/sh\n")
    script.chmod(0o755)
    r = reg.load(
        write_registry(
            tmp_path, {"a": 'model-tag = "a"'}, extra_project=notify_toml(["bin/ping.sh", "{leg}"])
        )
    )
    assert r.settings.notify == (str(script), "{leg}")


@pytest.mark.slow
@pytest.mark.parametrize(
    "extra, words",
    [
        (notify_toml([]), "'project.notify' must be a non-empty array of strings"),
        ('notify = "notify-send {leg}"', "'project.notify' must be an array"),
        ("notify = [1, 2]", "'project.notify' must be a non-empty array of strings"),
        (notify_toml([" ", "x"]), "names no program"),
        (
            notify_toml(["notify-send", "{leg} {status}"]),
            "'project.notify' names {status}; it knows {event}, {experiment}",
        ),
        (notify_toml(["./nope.sh"]), "program"),
        (notify_toml(["x"], 0), "'project.notify_timeout_s' must be between 0.1 and 600, not 0"),
        (notify_toml(["x"], 1e9), "'project.notify_timeout_s' must be between 0.1 and 600"),
    ],
)
def test_bad_notify_is_one_located_line(tmp_path, extra, words):
    path = write_registry(tmp_path, {"a": 'model-tag = "a"'}, extra_project=extra)
    with pytest.raises(reg.RegistryError) as e:
        reg.load(path)
    assert words in str(e.value) and e.value.line in (6, 7), str(e.value)  # the notify lines of the registry
    r = cockpit("--registry", str(path), "status")
    assert r.returncode == 2 and r.stderr.count("\n") == 1


@pytest.mark.slow
def test_run_notify_says_why_it_failed(tmp_path):
    py = sys.executable
    assert supervisor.run_notify([py, "-c", "pass"], 5, tmp_path) is None
    assert (
        supervisor.run_notify([py, "-c", "import sys; print('x'); sys.exit('boom\\n')"], 5, tmp_path)
        == "exited 1: boom"
    )
    assert supervisor.run_notify([py, "-c", "import sys; sys.exit(3)"], 5, tmp_path) == "exited 3"
    assert supervisor.run_notify(["no-such-notifier-xyz"], 5, tmp_path) == (
        "could not run: no-such-notifier-xyz: No such file or directory"
    )
    # a command that hangs, with a child of its own: stopped with everything it started, in time
    marker = str(tmp_path / "hang")
    hang = f"import subprocess, time; subprocess.Popen(['sleep', '60', {marker!r}][:2]); time.sleep(60)  # {marker}"
    t0 = time.monotonic()
    assert supervisor.run_notify([py, "-c", hang], 0.5, tmp_path) == "timed out after 0.5s (stopped)"
    assert time.monotonic() - t0 < 4
    left = [p for p in psutil.process_iter(["cmdline"]) if marker in " ".join(p.info["cmdline"] or [])]
    assert not left


@pytest.mark.slow
def test_supervisor_notifies_each_leg_and_a_failing_notify_is_only_noted(tmp_path, monkeypatch):
    """Two legs under the real supervisor and torchrun (~8 s): one done, one failed; the notify
    command records both and fails for the failed one, which is noted and changes nothing else."""
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    out = tmp_path / "notified.txt"
    argv = [sys.executable, "-c", RECORDER, str(out), "{event}", "{experiment}", "{leg}", "{dir}"]
    path = write_registry(
        tmp_path,
        {"a": 'model-tag = "a"', "b": 'model-tag = "b", fail-at-step = 2'},
        on_failure="continue",
        nproc=1,
        extra_project=notify_toml(argv),
    )
    dry = cockpit("--registry", str(path), "launch", "fake", "--dry-run")
    assert (
        "# when a leg ends (done or failed): " in dry.stdout
        and "'{event}' '{experiment}' '{leg}' '{dir}'" in dry.stdout
    )
    r = cockpit("--registry", str(path), "launch", "fake", "--foreground", timeout=120)
    assert r.returncode == 1, r.stdout + r.stderr  # b failed: the queue ends with a leg not done
    exp_dir = Path(r.stdout.strip().splitlines()[-1])
    assert out.read_text().splitlines() == [f"done fake a {exp_dir}", f"failed fake b {exp_dir}"]
    d = expdir.open_dir(exp_dir)
    assert (d.states["a"].status, d.states["a"].notify_error) == ("done", None)
    assert (d.states["b"].status, d.states["b"].notify_error) == ("failed", "exited 1: no pager for failures")
    plan = json.loads((exp_dir / "plan.json").read_text())
    assert plan["notify"] == {"argv": argv, "timeout_s": 10.0}
    assert (
        "a: notified (done)" in r.stdout and "b: notify failed: exited 1: no pager for failures" in r.stdout
    )
    status = resume_text.render_status(resume.build_state(reg.load(path)))
    assert "[notify failed: exited 1: no pager for failures]" in status


@pytest.mark.slow
def test_a_notifier_that_prints_without_end_costs_a_bounded_buffer(tmp_path):
    """300 MB of output, then a last line and exit 1: the last line is said, and the process that
    ran it never held more than a small buffer of it (its peak RSS, read in a subprocess)."""
    flood = (
        "import sys\nfor _ in range(300):\n    sys.stdout.buffer.write(b'x' * (1 << 20))\n"
        "print('\\nthe pager is down')\nsys.exit(1)\n"
    )
    code = (
        "import sys\nfrom pathlib import Path\nfrom cockpit import supervisor\n"
        f"print(supervisor.run_notify([sys.executable, '-c', {flood!r}], 60, Path('.')))\n"
        "print(next(ln for ln in open('/proc/self/status') if ln.startswith('VmHWM:')).split()[1])\n"
    )
    r = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    said, peak_kib = r.stdout.splitlines()
    assert said == "exited 1: the pager is down", r.stderr
    assert int(peak_kib) < 150 * 1024  # the 300 MB went through a 64 KB tail


def test_a_notifier_that_exits_0_while_its_child_holds_stdout_succeeds_at_once(tmp_path):
    """A notifier that leaves a detached child holding its stdout (one sleeping, one writing
    without end) succeeds when it exits 0, without waiting for the child; the writing child is
    not kept blocked on a pipe nobody reads: it ends (SIGPIPE) once the supervisor lets go."""
    marker = str(tmp_path / "notify-child")
    child = (
        "import subprocess, sys\n"
        f"subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(30)  # {marker}-sleeper'])\n"
        f"subprocess.Popen([sys.executable, '-c', 'import sys\\nwhile True: sys.stdout.write(\"y\" * 4096)  "
        f"# {marker}-writer'])\n"
        "print('sent')\n"
    )
    t0 = time.monotonic()
    try:
        assert supervisor.run_notify([sys.executable, "-c", child], 20, tmp_path) is None
        assert time.monotonic() - t0 < 10  # not the 20 s timeout, nor the sleeper's 30 s

        def left(tag: str) -> list:
            return [
                p
                for p in psutil.process_iter(["cmdline"])
                if f"{marker}-{tag}" in " ".join(p.info["cmdline"] or [])
            ]

        wait_for(lambda: not left("writer"), 10, what="the writing child to end")
        assert left("sleeper")  # its own business: not the cockpit's to stop
    finally:
        for p in psutil.process_iter(["cmdline"]):
            if marker in " ".join(p.info["cmdline"] or []):
                p.kill()
