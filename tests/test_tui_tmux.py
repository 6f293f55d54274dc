"""The real `cockpit` console script in a real terminal: tmux (send-keys, capture-pane).

The cockpit opens on a temp registry (exp_root in tmp_path) with one leg "running" (its
supervisor is this test process), shows the experiments, the GPU panel and the resume panel;
`/` searches the leg's log (the status line counts the matches), `c` copies the next command to
the clipboard (OSC 52, which tmux with set-clipboard on keeps as a paste buffer); it quits on `q`
and says that the running leg goes on.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import log_lines, registry_file, write_dir

COCKPIT = Path(sys.executable).parent / "cockpit"

pytestmark = pytest.mark.skipif(
    shutil.which("tmux") is None or not COCKPIT.exists(),
    reason="needs tmux and the installed `cockpit` console script",
)


@pytest.mark.slow
def test_cockpit_in_tmux(tmp_path):
    registry = registry_file(tmp_path)
    d = write_dir(
        tmp_path / "exp",
        "20260224_175412_cpu-smoke",
        "cpu-smoke",
        {"dense": ("running", log_lines(12, 40, finished=False))},
        supervisor_alive=True,
    )
    sock = f"cockpit-test-{os.getpid()}"  # a private tmux server, killed at the end
    tmux = ["tmux", "-L", sock]
    env = {k: v for k, v in os.environ.items() if not k.startswith("TMUX")}
    env["TERM"] = "xterm-256color"

    def capture() -> str:
        return subprocess.run(
            [*tmux, "capture-pane", "-p", "-t", "t"], capture_output=True, text=True, env=env
        ).stdout

    def wait_for(pred, timeout: float, what: str) -> str:
        deadline = time.monotonic() + timeout
        screen = ""
        while time.monotonic() < deadline:
            screen = capture()
            if pred(screen):
                return screen
            time.sleep(0.2)
        raise AssertionError(f"timed out waiting for {what}; screen:\n{screen}")

    subprocess.run(
        [*tmux, "new-session", "-d", "-s", "t", "-x", "160", "-y", "48", "-c", str(tmp_path)],
        check=True,
        env=env,
    )
    subprocess.run([*tmux, "set-option", "-g", "set-clipboard", "on"], check=True, env=env)
    try:
        cmd = f'{COCKPIT} --registry {registry}; echo "COCKPIT""-EXIT=$?"'  # typed text != the output
        subprocess.run([*tmux, "send-keys", "-t", "t", cmd, "Enter"], check=True, env=env)
        # the whole first view painted (a capture may catch a frame half drawn)
        screen = wait_for(
            lambda s: "Completed (do not re-run)" in s and "host cpu" in s and "│  1 leg running" in s,
            30,
            "the cockpit",
        )
        for what in (
            "Experiments",
            "moe-fp8-capacity-ablation-v1",
            "cpu-smoke",
            "GPUs",
            "no GPU view",
            "Resume",
            "Remaining",
            "│  1 leg running",
        ):
            assert what in screen, what

        # `/` in the running leg's log, once its lines are in
        wait_for(lambda s: "step 00011/00040" in s, 10, "the log's lines")
        subprocess.run([*tmux, "send-keys", "-t", "t", "/"], check=True, env=env)
        wait_for(lambda s: "search: text to highlight" in s, 10, "the find bar")
        subprocess.run([*tmux, "send-keys", "-t", "t", "-l", "loss: 5.7"], check=True, env=env)
        subprocess.run([*tmux, "send-keys", "-t", "t", "Enter"], check=True, env=env)
        # steps 9 (5.75) and 10 (5.70) hold it; the newer one is the current match
        screen = wait_for(lambda s: "'loss: 5.7': 2/2 lines" in s, 10, "the search's count")
        assert "step 00010/00040" in screen
        subprocess.run([*tmux, "send-keys", "-t", "t", "N"], check=True, env=env)  # the older match
        wait_for(lambda s: "'loss: 5.7': 1/2 lines" in s, 10, "the previous match")

        # `c`: the next command, through the terminal's clipboard, into tmux's paste buffer
        subprocess.run([*tmux, "send-keys", "-t", "t", "c"], check=True, env=env)
        wait_for(lambda s: "next command copied [c]" in s, 10, "the copy's notification")
        pasted = subprocess.run([*tmux, "show-buffer"], capture_output=True, text=True, env=env).stdout
        assert pasted.startswith("source ") and "torchrun --standalone" in pasted and 'EXP_DIR="' in pasted, (
            pasted
        )
        subprocess.run([*tmux, "send-keys", "-t", "t", "q"], check=True, env=env)
        screen = wait_for(lambda s: "COCKPIT-EXIT=" in s, 20, "the cockpit to exit")
        assert "COCKPIT-EXIT=0" in screen, screen
        assert "1 running leg goes on" in screen
        assert '"running"' in (d / "state" / "dense.json").read_text()  # quitting touched no leg
    finally:
        subprocess.run([*tmux, "kill-server"], env=env, capture_output=True)
