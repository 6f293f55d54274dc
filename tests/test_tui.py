"""The cockpit app through Pilot: every key, the confirmations, follow/pause, notifications.

Launches here run `tests/fake_trainer.py` under the real torchrun and the real detached
supervisor (seconds, no torch import): the keys reach the runner exactly as they would with the
trainer. The real trainer runs in test_tui_e2e.py.
"""

from __future__ import annotations

import io
import json
import os
import re
import threading
import time
from pathlib import Path

import psutil
import pytest
from helpers import (
    REPO,
    FakeSampler,
    fixed_clock,
    log_lines,
    make_app,
    notes,
    ready,
    registry_file,
    screen_text,
    select,
    two_running_dirs,
    until,
    write_dir,
    write_registry,
)
from rich.text import Text
from textual.content import Content
from textual.widgets import Button, HelpPanel, Static
from textual.widgets._key_panel import BindingsTable

from cockpit import expdir
from cockpit.stats import fmt_pct
from cockpit.tui import fmt
from cockpit.tui.app import CockpitApp
from cockpit.tui.collector import Collector, Request
from cockpit.tui.commands import BindingCommands
from cockpit.tui.confirm import ConfirmScreen
from cockpit.tui.diff_screen import DiffScreen
from cockpit.tui.experiments import ExperimentTree, Selection
from cockpit.tui.final_table import FinalTable
from cockpit.tui.live_table import COLUMNS
from cockpit.tui.log_panes import LogPanes
from cockpit.tui.log_text import LogText
from cockpit.tui.log_view import LogView
from cockpit.tui.main_screen import MainScreen
from cockpit.tui.messages import LogLines, Notice, ViewPublished
from cockpit.tui.path_prompt import PathPrompt
from cockpit.tui.resume_panel import NextCommand, ResumePanel

SIZE = (160, 48)


@pytest.fixture
def fake_env(monkeypatch):
    """Legs run `-m tests.fake_trainer`: the supervisor's children must import it from the checkout."""
    monkeypatch.setenv("PYTHONPATH", str(REPO))


def fake_registry(tmp_path: Path, **kw) -> Path:
    legs = kw.pop("legs", {"a": 'model-tag = "a"', "b": 'model-tag = "b"'})
    kw.setdefault("common", 'num-iterations = 6\nstep-sleep = 0.02\ncheckpoint-root = "{exp_dir}/ckpt_root"')
    return write_registry(tmp_path, legs, nproc=1, **kw)


def exp_dirs(tmp_path: Path) -> list[Path]:
    root = tmp_path / "exp"
    return (
        sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        if root.exists()
        else []
    )


# ----------------------------------------------------------------------------------------------
# opening


async def test_opens_registry_file(tmp_path):
    app = make_app(registry_file(tmp_path))
    async with app.run_test(size=SIZE) as pilot:
        main = await ready(pilot, app)
        text = screen_text(app)
        for what in (
            "Experiments",
            "moe-fp8-capacity-ablation-v1",
            "static_cap1p0",
            "cpu-smoke",
            "GPUs",
            "NVML Shared Library Not Found",
            "host cpu",
            "Resume",
            "Completed (do not re-run)",
            "expected yxb/moe-add-sft-claude",
            "nothing running, 4 legs to run",
            "no NVML",
        ):
            assert what in text, what
        marks = {leg.key: leg.mark for e in main.view.experiments for leg in e.legs}
        assert marks["moe-fp8-capacity-ablation-v1/static_cap1p0"] == "recorded"
        assert marks["cpu-smoke/dense"] == "pending"


@pytest.mark.slow
async def test_broken_registry_is_shown_in_the_app_then_reloaded(tmp_path):
    bad = tmp_path / "reg.toml"
    bad.write_text('[project]\nname = "x"\nexp_root = 3\n')
    app = make_app(bad)
    async with app.run_test(size=SIZE) as pilot:
        main = app.main_screen
        await until(pilot, lambda: main.error, what="the registry error")
        await pilot.pause(0.6)
        assert main.error.startswith(f"{bad}:3:"), main.error
        assert f"{bad.name}:3:" in screen_text(app)
        assert main.view is None
        await pilot.press("l")  # keys with no registry: a notification, never a crash
        bad.write_text(f'[project]\nname = "fixed"\nexp_root = "{tmp_path / "exp"}"\n')
        await until(pilot, lambda: main.view is not None, what="the reload")
        assert main.error is None
        await pilot.pause(0.6)
        assert "Completed (do not re-run)" in screen_text(app) and "⚠" not in screen_text(app)


@pytest.mark.slow
async def test_reopening_finds_running_legs_and_follows_them(tmp_path):
    reg_path = registry_file(tmp_path)
    d = write_dir(
        tmp_path / "exp",
        "20260224_175412_cpu-smoke",
        "cpu-smoke",
        {
            "dense": ("done", log_lines(40, 40)),
            "moe_dropless": ("running", log_lines(23, 40, finished=False)),
            "moe_cap1p0": ("queued", []),
        },
        supervisor_alive=True,
    )
    app = make_app(reg_path)
    async with app.run_test(size=SIZE) as pilot:
        main = await ready(pilot, app)
        assert main.view.training == "1 leg running, 1 queued"
        (live,) = main.view.live
        assert (live.leg, live.step, live.total) == ("moe_dropless", 22, 40)
        key = f"{d}/moe_dropless"
        panes = app.query_one(LogPanes)
        await until(pilot, lambda: panes.view(key) and panes.view(key).written >= 25, what="the log pane")
        with open(d / "moe_dropless.log", "a") as f:  # the leg goes on writing
            f.write("".join(x + "\n" for x in log_lines(30, 40, finished=False)[25:]))
        await until(pilot, lambda: main.view.live and main.view.live[0].step == 29, what="live step 29")
        assert "moe_dropless" in screen_text(app)


# ----------------------------------------------------------------------------------------------
# keys


KEYS = (
    "l",
    "L",
    "s",
    "r",
    "g",
    "f",
    "m",
    "left_square_bracket",
    "right_square_bracket",
    "tab",
    "shift+tab",
    "question_mark",
    "q",
)  # every key of the main screen (the README's table)


def bindings_text(app: CockpitApp) -> str:
    """The keys panel's table as plain text, wide enough that no tooltip wraps."""
    from rich.console import Console

    console = Console(width=300, file=io.StringIO())
    console.print(app.screen.query_one(BindingsTable).render_bindings_table())
    return console.file.getvalue()


@pytest.mark.slow
async def test_keys_panel_lists_every_binding(tmp_path):
    """`?` opens Textual's keys panel: every binding with its key, description and tooltip, from
    the one list (MainScreen.BINDINGS); `?` again closes it."""
    app = make_app(registry_file(tmp_path))
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot, app)
        bindings = {b.key: b for b in MainScreen.BINDINGS}
        assert set(KEYS) <= set(bindings), set(KEYS) - set(bindings)
        await pilot.press("question_mark")
        await until(pilot, lambda: app.screen.query(BindingsTable), what="the keys panel")
        await pilot.pause(0.2)
        text = bindings_text(app)
        for key in KEYS:
            b = bindings[key]
            assert b.description and b.description in text, key
            assert app.get_key_display(b) in text, key
            assert b.tooltip and b.tooltip in text, key
        assert "Launch remaining" in screen_text(app)  # the panel is on screen, beside the panes
        await pilot.press("question_mark")
        await until(pilot, lambda: not app.screen.query(HelpPanel), what="the panel to close")


@pytest.mark.slow
async def test_command_palette_offers_every_binding(tmp_path):
    """The palette offers each binding and runs its action, as the key does. Textual's own list
    already has Keys, Quit and Maximize (with a pane focused): those are not offered twice."""
    app = make_app(registry_file(tmp_path))
    async with app.run_test(size=SIZE) as pilot:
        main = await ready(pilot, app)
        # the help as the palette shows it (it reads markup): every `[y]` of a tooltip kept
        offered = [
            f"{hit.text} {Content.from_markup(hit.help).plain}"
            async for hit in BindingCommands(main).discover()
        ]
        offered += [c.title for c in app.get_system_commands(main)]
        for b in MainScreen.BINDINGS:
            assert any(b.description in o for o in offered), b.description
        for want in (
            "Launch the selected leg",
            "Launch all remaining legs of the selected experiment",
            "Stop the selected running leg, or the queue of the selected dir",
            "Write the report of the selected experiment dir",
            "Write the resume guide",
            "Follow the current log on/off",
            "Maximize",
            "Next log tab",
            "Previous log tab",
            "Next pane",
            "Previous pane",
            "Keys",
            "Quit",
            "key: g",
            "key: [",
            "(confirm [y]; a done leg asks for an explicit re-run with [R])",
            "(confirm [R])",
        ):
            assert any(want in o for o in offered), (want, offered)
        await pilot.press("ctrl+p")
        await pilot.press(*"launch leg")
        await pilot.pause(0.3)
        assert "confirm [y]; a done leg asks for an explicit re-run with [R]" in screen_text(app)
        for _ in "launch leg":
            await pilot.press("backspace")
        await pilot.press(*"resume guide")
        await pilot.pause(0.3)
        assert "Write the resume guide: asks where" in screen_text(app) and "(key: g)" in screen_text(app)
        await pilot.press("enter")  # runs `g`: it asks where, prefilled with exp_root/resume-guide.md
        await until(pilot, lambda: isinstance(app.screen, PathPrompt), what="the path prompt")
        await pilot.press("enter")
        guide = await until(pilot, lambda: sorted((tmp_path / "exp").glob("*resume*.md")), what="the guide")
        assert "moe_cap1p0" in guide[0].read_text()


@pytest.mark.slow
async def test_tab_moves_between_panes_and_m_maximizes(tmp_path):
    app = make_app(registry_file(tmp_path))
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot, app)
        seen = {app.focused.id if app.focused else None}
        for _ in range(6):
            await pilot.press("tab")
            seen.add(app.focused.id if app.focused else None)
        assert {"experiments", "next-strip", "gpus", "live", "final-table"} <= seen
        await pilot.press("shift+tab")

        app.query_one("#resume-box").focus()  # `m` maximizes the focused pane, `m` again restores
        await pilot.pause(0.1)
        await pilot.press("m")
        assert app.screen.maximized is app.query_one("#resume-box")
        await pilot.press("m")
        assert app.screen.maximized is None


@pytest.mark.slow
async def test_header_says_what_is_true_and_the_fresh_dir_is_never_folded(tmp_path):
    """Nothing running with legs to run: the header says so, in the words `cockpit status` uses
    (never "paused"); at 120 columns no screen line splits the fresh dir's `$(date +%Y...)`."""
    app = make_app(registry_file(tmp_path))
    async with app.run_test(size=(120, 40)) as pilot:
        await ready(pilot, app)
        text = await until(
            pilot, lambda: (t := screen_text(app)) and "nothing running" in t and t, what="the header's words"
        )
        header = text.splitlines()[0]
        assert "nothing running, 4 legs to run" in header and "paused" not in header, header
        assert not any(line.rstrip(" │┃").endswith("$(date") for line in text.splitlines()), text


@pytest.mark.slow
async def test_focused_pane_shows_and_m_on_an_empty_pane_fills_the_screen(tmp_path):
    """The focused pane's border turns heavy (its title reversed); `m` on a pane with nothing in it
    (no leg running: the live table is empty) fills the screen from the top, with no hatching."""
    app = make_app(registry_file(tmp_path))
    async with app.run_test(size=(120, 40)) as pilot:
        await ready(pilot, app)
        live, tree = app.query_one("#live"), app.query_one("#experiments")
        tree.focus()
        await pilot.pause(0.1)
        assert tree.styles.border_top[0] == "heavy" and live.styles.border_top[0] == "round"
        live.focus()
        await pilot.pause(0.1)
        assert live.styles.border_top[0] == "heavy" and tree.styles.border_top[0] == "round"
        assert "reverse" in str(live.styles.border_title_style)
        await pilot.press("m")
        await pilot.pause(0.1)
        assert app.screen.maximized is live
        assert live.region.y <= 1 and live.region.height >= 36  # the whole screen under the header
        assert app.screen.styles.hatch in (None, "none") or not app.screen.styles.has_rule("hatch")
        assert "╱" not in screen_text(app)  # Textual's hatch character
        await pilot.press("m")


@pytest.mark.slow
async def test_c_copies_the_next_command(tmp_path):
    app = make_app(registry_file(tmp_path), sampler=FakeSampler(8))
    async with app.run_test(size=SIZE) as pilot:
        main = await ready(pilot, app)
        command = await until(pilot, lambda: main.view.resume.next_command, what="a next command")
        await pilot.press("c")
        assert app.clipboard == command and "--moe-capacity-factor 1.0" in app.clipboard
        assert any(t == "next command copied [c]" for t, _ in app.notes)


@pytest.mark.slow
async def test_d_shows_the_flags_that_differ_from_the_baseline_or_another_leg(tmp_path):
    from textual.widgets import DataTable

    from cockpit.tui.diff_screen import DiffScreen

    app = make_app(registry_file(tmp_path))
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot, app)
        await pilot.press("d")  # nothing selected yet: says what to do
        assert any("select a leg first" in m and "[d]" in m for m in notes(app))
        await select(pilot, app, Selection("leg", "moe-fp8-capacity-ablation-v1", "dynamic_cap1p0"))
        await pilot.press("d")
        screen = await until(
            pilot, lambda: isinstance(app.screen, DiffScreen) and app.screen, what="the diff"
        )
        await pilot.pause(0.2)
        title = str(screen.query_one("#diff-title").render())
        assert "differ from moe-fp8-capacity-ablation-v1/static_cap0p0_baseline (its baseline)" in title
        table = screen.query_one("#diff-table", DataTable)
        rows = {
            str(table.get_row_at(i)[0]): (str(table.get_row_at(i)[1]), str(table.get_row_at(i)[2]))
            for i in range(table.row_count)
        }
        assert rows["--compile-mode"] == ("dynamic", "static") and rows["--moe-capacity-factor"] == (
            "1.0",
            "0.0",
        )
        await pilot.press("down")  # the next leg: static_cap1p0 differs only in its tag and compile mode
        await pilot.pause(0.2)
        title = str(screen.query_one("#diff-title").render())
        assert "differ from moe-fp8-capacity-ablation-v1/static_cap1p0:" in title
        rows = {str(table.get_row_at(i)[0]) for i in range(table.row_count)}
        assert "--compile-mode" in rows and "--moe-capacity-factor" not in rows
        await pilot.press("escape")
        await until(pilot, lambda: not isinstance(app.screen, DiffScreen), what="the diff to close")


@pytest.mark.slow
async def test_g_writes_the_guide_where_the_user_says(tmp_path):
    app = make_app(registry_file(tmp_path))
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot, app)
        await pilot.press("g")
        prompt = await until(
            pilot, lambda: isinstance(app.screen, PathPrompt) and app.screen, what="the prompt"
        )
        field = prompt.query_one("#prompt-input")
        assert field.value == str(tmp_path / "exp" / "resume-guide.md")
        assert "Write [enter]" in screen_text(app) and "Cancel [esc]" in screen_text(app)
        field.value = str(tmp_path / "ro" / "base_data" / "guide.md")  # a read-only path of the registry
        await pilot.press("enter")
        await until(
            pilot, lambda: any("read-only; nothing written" in m for m in notes(app)), what="the refusal"
        )
        assert not (tmp_path / "ro" / "base_data" / "guide.md").exists()
        await pilot.press("g")
        prompt = await until(
            pilot, lambda: isinstance(app.screen, PathPrompt) and app.screen, what="the prompt"
        )
        prompt.query_one("#prompt-input").value = str(tmp_path / "notes" / "guide.md")
        await pilot.press("enter")
        await until(pilot, lambda: (tmp_path / "notes" / "guide.md").exists(), what="the guide where asked")
        assert "moe_cap1p0" in (tmp_path / "notes" / "guide.md").read_text()
        await pilot.press("g")
        await until(pilot, lambda: isinstance(app.screen, PathPrompt), what="the prompt")
        await pilot.press("escape")
        await until(pilot, lambda: "resume guide not written" in notes(app), what="the cancel")


@pytest.mark.slow
async def test_quit_says_running_legs_go_on(tmp_path):
    write_dir(
        tmp_path / "exp",
        "20260224_175412_cpu-smoke",
        "cpu-smoke",
        {"dense": ("running", log_lines(3, 40, finished=False))},
        supervisor_alive=True,
    )
    app = make_app(registry_file(tmp_path))
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot, app)
        await pilot.press("q")
    assert app.quit_message.startswith("cockpit closed; 1 running leg goes on (detached")
    state = json.loads((tmp_path / "exp/20260224_175412_cpu-smoke/state/dense.json").read_text())
    assert state["status"] == "running"  # closing never touches a leg


@pytest.mark.slow
async def test_launch_leg_confirm_cancel_then_launch(tmp_path, fake_env):
    reg_path = fake_registry(tmp_path)
    app = make_app(reg_path)
    async with app.run_test(size=SIZE) as pilot:
        main = await ready(pilot, app)
        await select(pilot, app, Selection("leg", "fake", "a"))
        await pilot.press("l")
        screen = await until(
            pilot, lambda: isinstance(app.screen, ConfirmScreen) and app.screen, what="confirm"
        )
        body = str(screen.body)
        assert "fresh dir: " + str(tmp_path / "exp") in body
        assert "-m tests.fake_trainer --" in body and "--num-iterations 6" in body and "--model-tag a" in body
        assert "--model-tag b" not in body
        await pilot.press("n")
        await pilot.pause(0.2)
        assert not isinstance(app.screen, ConfirmScreen) and exp_dirs(tmp_path) == []

        bells = []
        app.bell = lambda: bells.append(1)
        await pilot.press("l")
        screen = await until(
            pilot, lambda: isinstance(app.screen, ConfirmScreen) and app.screen, what="confirm"
        )
        shown = str(screen.body).split("fresh dir: ", 1)[1].split("\n", 1)[0]
        await pilot.press("y")
        (d,) = await until(pilot, lambda: exp_dirs(tmp_path), what="the fresh dir")
        assert str(d) == shown  # the dir the confirmation showed is the one launched
        await until(
            pilot, lambda: any(f"a in {d}" in m for m in notes(app)), timeout=30, what="the launched note"
        )
        await until(pilot, lambda: main.finished, timeout=30, what="the leg to finish")
        assert main.finished == [f"{d}/a:done"] and bells
        assert json.loads((d / "plan.json").read_text())["legs"][0]["name"] == "a"
        assert main.view.experiment("fake").leg("a").mark == "done"


@pytest.mark.slow
async def test_launch_all_remaining_then_done_leg_needs_explicit_rerun(tmp_path, fake_env):
    reg_path = fake_registry(tmp_path)
    app = make_app(reg_path)
    async with app.run_test(size=SIZE) as pilot:
        main = await ready(pilot, app)
        await select(pilot, app, Selection("experiment", "fake"))
        await pilot.press("L")
        screen = await until(
            pilot, lambda: isinstance(app.screen, ConfirmScreen) and app.screen, what="confirm"
        )
        assert "Launch 2 legs of fake?" == screen.title_text
        assert "1. a" in str(screen.body) and "2. b" in str(screen.body)
        await pilot.press("y")
        await until(pilot, lambda: len(main.finished) == 2, timeout=40, what="both legs")
        (d,) = exp_dirs(tmp_path)
        panes = app.query_one(LogPanes)
        assert {f"{d}/a", f"{d}/b"} <= set(panes.opened)  # each leg's log had a tab while it ran

        # a done leg: `l` asks for an explicit re-run; `y` is not enough
        await pilot.pause(0.6)
        await select(pilot, app, Selection("leg", "fake", "a"))
        await pilot.press("l")
        screen = await until(
            pilot, lambda: isinstance(app.screen, ConfirmScreen) and app.screen, what="rerun"
        )
        assert screen.danger and screen.confirm_key == "R" and "is DONE" in str(screen.body)
        await pilot.press("y")
        await pilot.pause(0.3)
        assert isinstance(app.screen, ConfirmScreen) and len(exp_dirs(tmp_path)) == 1
        await pilot.press("R")
        await until(pilot, lambda: len(exp_dirs(tmp_path)) == 2, what="the re-run's fresh dir")

        # nothing remains: `L` offers a re-run of the whole experiment, in a fresh dir, with `R`
        await until(pilot, lambda: len(main.finished) == 3, timeout=30, what="the re-run")
        await select(pilot, app, Selection("experiment", "fake"))
        await pilot.press("L")
        screen = await until(
            pilot, lambda: isinstance(app.screen, ConfirmScreen) and app.screen, what="re-run all"
        )
        assert screen.title_text == "Re-run the whole experiment fake (2 done legs) in a fresh dir?"
        assert screen.danger and screen.confirm_key == "R"
        body = str(screen.body)
        assert "a is DONE" in body and "b is DONE" in body and "1. a" in body and "2. b" in body
        assert "fresh dir: " + str(tmp_path / "exp") in body
        assert "Re-run [R]" in screen_text(app) and "Cancel [n/esc]" in screen_text(app)
        await pilot.press("n")
        await pilot.pause(0.3)
        assert not isinstance(app.screen, ConfirmScreen) and len(exp_dirs(tmp_path)) == 2


@pytest.mark.slow
async def test_stop_running_leg(tmp_path, fake_env):
    reg_path = fake_registry(tmp_path, legs={"slow": 'model-tag = "slow", num-iterations = 2000'})
    app = make_app(reg_path)
    async with app.run_test(size=SIZE) as pilot:
        main = await ready(pilot, app)
        await select(pilot, app, Selection("leg", "fake", "slow"))
        await pilot.press("s")  # nothing runs yet
        await pilot.pause(0.2)
        assert not isinstance(app.screen, ConfirmScreen)
        await pilot.press("l")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen), what="confirm")
        await pilot.press("y")
        await until(pilot, lambda: main.view.live, timeout=30, what="the leg running")
        await pilot.press("s")
        screen = await until(pilot, lambda: isinstance(app.screen, ConfirmScreen) and app.screen, what="stop")
        assert screen.title_text == "Stop slow?" and screen.danger
        await pilot.press("escape")  # cancelled: nothing stops
        await pilot.pause(0.6)
        assert (
            not isinstance(app.screen, ConfirmScreen)
            and main.view.experiment("fake").leg("slow").mark == "running"
        )
        await pilot.press("s")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen), what="stop again")
        await pilot.press("y")
        await until(
            pilot,
            lambda: main.view.experiment("fake").leg("slow").mark == "stopped",
            timeout=30,
            what="stopped",
        )
        assert any(f.endswith("/slow:stopped") for f in main.finished)


@pytest.mark.slow
async def test_write_report_and_guide(tmp_path):
    d = write_dir(
        tmp_path / "exp",
        "20260224_175412_cpu-smoke",
        "cpu-smoke",
        {"dense": ("done", log_lines(40, 40)), "moe_dropless": ("done", log_lines(40, 40, tok=1200))},
    )
    reg_path = registry_file(tmp_path)
    reg_path.write_text(reg_path.read_text().replace("\ntail = 50 ", "\ntail = 20 ", 1))
    app = make_app(reg_path)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot, app)
        await select(pilot, app, Selection("dir", "cpu-smoke", exp_dir=str(d)))
        await pilot.press("r")
        await until(pilot, lambda: (d / "report.md").exists(), what="report.md")
        text = (d / "report.md").read_text()
        assert "| dense |" in text and "tail20 tok/sec" in text  # the registry's tail, as on screen
        await pilot.press("g")
        await until(pilot, lambda: isinstance(app.screen, PathPrompt), what="the path prompt")
        await pilot.press("enter")
        guide = await until(pilot, lambda: sorted((tmp_path / "exp").glob("*resume*.md")), what="the guide")
        assert "moe_cap1p0" in guide[0].read_text()


@pytest.mark.slow
async def test_follow_pause_and_resume(tmp_path):
    d = write_dir(
        tmp_path / "exp",
        "20260224_175412_cpu-smoke",
        "cpu-smoke",
        {"dense": ("running", log_lines(60, 400, finished=False))},
        supervisor_alive=True,
    )
    app = make_app(registry_file(tmp_path))
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot, app)
        panes = app.query_one(LogPanes)
        key = f"{d}/dense"
        view: LogView = await until(
            pilot, lambda: panes.view(key) and panes.view(key).written and panes.view(key), what="the pane"
        )
        log = view.query_one(LogText)
        await until(pilot, lambda: log.is_vertical_scroll_end and log.max_scroll_y > 0, what="the bottom")
        assert not view.paused

        log.scroll_home(animate=False)  # the reader scrolls up: following pauses
        await pilot.pause(0.1)
        assert view.paused
        with open(d / "dense.log", "a") as f:
            f.write("".join(x + "\n" for x in log_lines(80, 400, finished=False)[62:]))
        await until(pilot, lambda: view.waiting_count == 20, what="20 lines waiting")
        assert "paused, 20 new" in screen_text(app)
        written = view.written

        await pilot.press("f")  # follow off ...
        assert not view.following
        await pilot.press("f")  # ... and on: to the bottom, the waiting lines written
        await until(pilot, lambda: view.written == written + 20 and not view.paused, what="flush")
        assert "following" in screen_text(app)


@pytest.mark.slow
async def test_log_pane_memory_is_bounded(tmp_path):
    d = write_dir(
        tmp_path / "exp",
        "20260224_175412_cpu-smoke",
        "cpu-smoke",
        {"dense": ("running", log_lines(5000, 5000, finished=False))},
        supervisor_alive=True,
    )
    app = make_app(registry_file(tmp_path), max_log_lines=300)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot, app)
        panes = app.query_one(LogPanes)
        view = await until(pilot, lambda: panes.view(f"{d}/dense"), what="the pane")
        await until(pilot, lambda: view.written, what="lines")
        await pilot.pause(0.5)
        assert view.query_one(LogText).line_count <= 301
        assert "step 04999/05000" in view.query_one(LogText).lines[-1]


@pytest.mark.slow
async def test_tabs_cycle_and_finish_notifies(tmp_path):
    a, b = two_running_dirs(tmp_path / "exp")
    app = make_app(registry_file(tmp_path))
    async with app.run_test(size=SIZE) as pilot:
        main = await ready(pilot, app)
        panes = app.query_one(LogPanes)
        await until(pilot, lambda: len(panes.keys) == 2, what="two tabs")
        await pilot.pause(0.2)
        first = panes.active
        await pilot.press("right_square_bracket")
        assert panes.active != first
        await pilot.press("left_square_bracket")
        assert panes.active == first
        live = app.query_one("#live")  # moving along the live rows brings each leg's tab forward
        live.focus()
        await pilot.pause(0.1)
        keys = [k.value for k in live.rows]
        await pilot.press("down")
        await until(pilot, lambda: panes.current_key() == keys[1], what="the next leg's tab in front")
        await pilot.press("up")
        await until(pilot, lambda: panes.current_key() == keys[0], what="the first leg's tab in front again")

        bells = []
        app.bell = lambda: bells.append(1)
        st = expdir.read_state(a, "dense")
        st.status = "failed"
        expdir.write_state(a, st)
        await until(pilot, lambda: main.finished, what="the notification")
        assert main.finished == [f"{a}/dense:failed"] and bells == [1]
        assert main.view.experiment("cpu-smoke").leg("dense").mark == "failed"
        assert f"{b}/moe_fp8_experts_static_cap1p0_v3" in panes.keys


async def test_resume_panel_shows_next_command(tmp_path):
    app = make_app(registry_file(tmp_path), sampler=FakeSampler(8))  # 8 GPUs: the 8-GPU leg can run here
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot, app)
        text = str(
            await until(
                pilot,
                lambda: (
                    "moe-fp8-capacity-opt-v3" in str(app.query_one(ResumePanel).render())
                    and app.query_one(ResumePanel).render()
                ),
                what="the 8-GPU leg next",
            )
        )
        assert "moe-fp8-capacity-opt-v3/moe_fp8_experts_static_cap1p0_v3" in text
        command = str(app.query_one(NextCommand).render())
        # the fresh dir: the command's EXP_DIR line, whole (the prose above never shows it folded)
        assert (
            f'EXP_DIR="{tmp_path / "exp"}/$(date +%Y%m%d_%H%M%S)_moe-fp8-capacity-opt-v3"'
            in command.splitlines()
        )
        assert "--moe-capacity-factor 1.0" in command and "--compile-mode static" in command
        # never folded: the cockpit one-liner first, then the command a line per flag (` \` between tokens)
        assert command.splitlines()[0].startswith("cockpit launch moe-fp8-capacity-opt-v3 --legs ")
        lines = command.splitlines()
        flags = lines[next(i for i, x in enumerate(lines) if x.startswith("torchrun ")) :]
        assert len(flags) > 10 and all(x.endswith(" \\") for x in flags[:-1])


@pytest.mark.slow
async def test_gpu_panel_with_the_real_sampler_over_fake_nvml(tmp_path):
    """The real GpuSampler (over a stand-in NVML module): a row per GPU, the owning leg by pid."""

    import pynvml
    from fake_nvml import FakeNVML

    from cockpit.gpus import GpuSampler
    from cockpit.tui.gpu_panel import GpuPanel

    d = write_dir(
        tmp_path / "exp",
        "20260224_175412_cpu-smoke",
        "cpu-smoke",
        {"dense": ("running", log_lines(5, 40, finished=False))},
        supervisor_alive=True,
    )
    nv = FakeNVML(8)
    leg_pid = json.loads((d / "state" / "dense.json").read_text())["pid"]  # the leg's stand-in torchrun
    for i in (0, 1):  # its GPUs are the leg's
        nv.util[i], nv.mem_used_mib[i], nv.pids[i] = 97.0, 18987.0, [leg_pid]
    app = make_app(registry_file(tmp_path), sampler=GpuSampler(nvml=nv))
    async with app.run_test(size=SIZE) as pilot:
        main = await ready(pilot, app)
        gpu = await until(
            pilot, lambda: main.view.gpu if main.view.gpu and main.view.gpu.gpus else None, what="GPUs"
        )
        assert len(gpu.gpus) == 8 and [g.leg for g in gpu.gpus[:3]] == ["dense", "dense", None]
        assert gpu.summary == "2/8 GPUs busy"
        text = str(app.query_one(GpuPanel).render())
        assert (
            text.count("dense 1.0G") == 2 and "97%" in text and "18.5G/79.6G" in text
        )  # its processes' memory
        assert all(h in text.splitlines()[0] for h in ("util", "mem", "temp", "power"))  # the history columns
        g0 = gpu.gpus[0]
        assert g0.util_hist and g0.mem_hist and g0.temp_hist and g0.power_hist and g0.leg_mem_mib == 1024.0
        assert "2/8 GPUs busy" in screen_text(app)
    assert d.exists()

    (tmp_path / "b").mkdir()
    broken = make_app(
        registry_file(tmp_path / "b"),
        sampler=GpuSampler(nvml=FakeNVML(init_error=pynvml.NVML_ERROR_DRIVER_NOT_LOADED)),
    )
    async with broken.run_test(size=SIZE) as pilot:
        main = await ready(pilot, broken)
        assert not main.view.gpu.available and "Driver Not Loaded" in screen_text(broken)
        assert "host cpu" in screen_text(broken)


@pytest.mark.slow
async def test_a_refused_launch_is_a_notification(tmp_path):
    """A 64-GPU leg (no machine here has them): the runner refuses; the app says why and goes on."""
    reg_path = fake_registry(tmp_path, legs={"big": 'model-tag = "big"'}, device="cuda")
    reg_path.write_text(reg_path.read_text().replace("nproc_per_node = 1", "nproc_per_node = 64"))
    app = make_app(reg_path)
    async with app.run_test(size=SIZE) as pilot:
        main = await ready(pilot, app)
        await select(pilot, app, Selection("leg", "fake", "big"))
        await pilot.press("l")
        screen = await until(
            pilot, lambda: isinstance(app.screen, ConfirmScreen) and app.screen, what="confirm"
        )
        assert "--nproc_per_node=64" in str(screen.body)
        await pilot.press("y")
        await until(
            pilot, lambda: any(title == "launch failed" for title, _ in app.notes), what="the refusal"
        )
        assert exp_dirs(tmp_path) == []  # nothing written
        assert main.view is not None and app.is_running


@pytest.mark.slow
async def test_names_with_brackets_are_shown_as_written(tmp_path):
    """Leg names and messages are text, never markup: `x[red]y` shows as `x[red]y`."""
    reg_path = fake_registry(tmp_path, legs={"x[red]y": 'model-tag = "x"'})
    write_dir(
        tmp_path / "exp",
        "20260224_175412_fake",
        "fake",
        {"x[red]y": ("running", log_lines(5, 40, finished=False))},
        supervisor_alive=True,
    )
    app = make_app(reg_path)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot, app)
        panes = app.query_one(LogPanes)
        await until(pilot, lambda: panes.keys, what="the tab")
        await pilot.pause(0.6)
        assert screen_text(app).count("x[red]y") >= 3  # tree, live row, tab


@pytest.mark.slow
async def test_stop_acts_only_under_exp_root(tmp_path):
    """The screen's stop, as `cockpit stop`: a dir outside the registry's exp_root is refused,
    with one line, and nothing in it is read or written."""
    reg_path = fake_registry(tmp_path)
    outside = write_dir(
        tmp_path / "elsewhere", "20260224_175412_fake", "fake", {"a": ("done", log_lines(3, 3))}
    )
    before = sorted((p.name, p.stat().st_mtime_ns) for p in outside.rglob("*"))
    app = make_app(reg_path)
    async with app.run_test(size=SIZE) as pilot:
        main = await ready(pilot, app)
        main._stop(str(outside), "a")
        await until(pilot, lambda: any(title == "stop" for title, _ in app.notes), what="the refusal")
        message = next(m for title, m in app.notes if title == "stop")
        assert "is not an experiment dir under exp_root" in message and "\n" not in message
    assert sorted((p.name, p.stat().st_mtime_ns) for p in outside.rglob("*")) == before


@pytest.mark.slow
async def test_a_dirs_problem_and_an_unknown_leg_show_in_the_tree(tmp_path):
    """A dir that cannot be read shows its problem, on one line, and no legs; a leg whose process
    cannot be proven the leg's is marked unknown, with why."""
    reg_path = fake_registry(tmp_path)
    root = tmp_path / "exp"
    broken = root / "20260224_170000_fake"
    (broken / "state").mkdir(parents=True)
    os.mkfifo(broken / "plan.json")  # reading it would block: it is not a regular file
    d = write_dir(root, "20260224_175412_fake", "fake", {"a": ("done", log_lines(3, 3))})
    me = psutil.Process()  # a live process that is not the leg's torchrun: another command line
    (d / "state" / "b.json").write_text(
        json.dumps(
            {
                "leg": "b",
                "status": "running",
                "pid": me.pid,
                "create_time": me.create_time(),
                "log": str(d / "b.log"),
            }
        )
    )
    plan = json.loads((d / "plan.json").read_text())
    plan["legs"].append({"name": "b", "argv": ["torchrun", "--standalone", "-m", "nanochat.base_train"]})
    (d / "plan.json").write_text(json.dumps(plan))
    (d / "b.log").write_text("\n".join(log_lines(2, 10, finished=False)) + "\n")
    app = make_app(reg_path)
    async with app.run_test(size=SIZE) as pilot:
        main = await ready(pilot, app)
        exp = main.view.experiment("fake")
        leg = exp.leg("b")
        assert leg.mark == "unknown" and leg.note.startswith("unknown: process identity not proven")
        tree = app.query_one(ExperimentTree)
        label = tree.node_for(Selection("leg", "fake", "b")).label.plain
        assert label.startswith("? b") and "unknown: process identity not proven" in label
        bad = next(x for x in exp.dirs if x.path == str(broken))
        assert bad.legs == () and bad.problem.startswith("plan.json unreadable")
        dir_label = tree.node_for(Selection("dir", "fake", exp_dir=str(broken))).label.plain
        assert "no legs" in dir_label and f"⚠ {bad.problem}" in dir_label and "\n" not in dir_label
        await pilot.press("s")  # an unknown leg is not stopped: nothing may signal it
        await select(pilot, app, Selection("leg", "fake", "b"))
        await pilot.press("s")
        await pilot.pause(0.2)
        assert not isinstance(app.screen, ConfirmScreen)
        assert "nothing running or queued in the selection" in notes(app)


@pytest.mark.slow
async def test_notifications_show_text_from_files_printable(tmp_path):
    """A note, an error line or a dir's name reaches a notification without its control characters."""
    app = make_app(fake_registry(tmp_path))
    async with app.run_test(size=SIZE) as pilot:
        main = await ready(pilot, app)
        main.post_message(
            Notice("leg a failed: boom \x1b]0;pwned\x07\x1b[2J in 2026\x1b[31m_x\u202e", "leg \x1b[1mfailed")
        )
        await until(pilot, lambda: len(app.notes) > 0 and "boom" in app.notes[-1][1], what="the notification")
        title, message = app.notes[-1]
        assert "\x1b" not in message + title and "\x07" not in message and "\u202e" not in message
        assert message.startswith("leg a failed: boom") and title == "leg failed"


def moe_log(steps: int, tok: float, drop: float | None = None) -> list[str]:
    """A MoE leg's log: `| bal:` after loss, `| drop:` last with a fixed capacity, validation lines."""
    out = []
    for ln in log_lines(steps, steps, tok=tok):
        if ln.startswith("step "):
            i = int(ln[5:10])
            head, _, rest = ln.partition(" | lrm:")
            out.append(
                f"{head} | bal: {1.02 + i % 3 / 100:.4f} | lrm:{rest}"
                + (f" | drop: {drop + i % 4 / 10:.2f}%" if drop is not None else "")
            )
            if i % 10 == 9:
                out.append(f"Step {i + 1:05d} | Validation bpb: {2.1 - i / 100:.6f}")
        else:
            out.append(ln)
    return out


@pytest.mark.slow
async def test_final_table_is_the_report(tmp_path):
    """The dir's final table says what its report says: a row per run named so (the baseline from
    another dir is `dense [baseline]`, not a second `dense`; a leg's repeats and their mean), the
    quality and routing columns, under each delta its interval, the verdict as a word and what the
    interval rests on (`(n=2 repeats)`), only a significant one coloured; the note on the
    baseline's launch whole, wrapped, and under the table the repeats that would resolve each
    `within noise` verdict. A dir whose pinned baseline is gone says so, with the command that
    compares with another run, whole."""
    from cockpit import baseline, report_md
    from cockpit import registry as reg
    from cockpit import report as report_data

    root = tmp_path / "exp"
    write_dir(root, "20260224_160000_cpu-smoke", "cpu-smoke", {"dense": ("done", log_lines(40, 40))})
    gone = write_dir(
        root, "20260224_180000_cpu-smoke", "cpu-smoke", {"moe_dropless": ("done", moe_log(40, tok=1250))}
    )
    plan = json.loads((gone / "plan.json").read_text())  # pinned at launch to a dir removed since
    pin = {
        "leg": "dense",
        "experiment": "cpu-smoke",
        "source": "dir",
        "dir": str(root / "20260224_150000_cpu-smoke"),
        "runs": ["dense"],
    }
    (gone / "plan.json").write_text(json.dumps(plan | {"baseline": pin}))
    d = write_dir(
        root,
        "20260224_170000_cpu-smoke",
        "cpu-smoke",
        {
            "dense": ("failed", log_lines(12, 40, crash=True)),
            "moe_dropless": ("done", moe_log(40, tok=1250)),
            "moe_cap1p0.r0": ("done", moe_log(40, tok=1300, drop=2.0)),
            "moe_cap1p0.r1": ("done", moe_log(40, tok=1320, drop=2.2)),
        },
    )
    plan = json.loads((d / "plan.json").read_text())  # each repeat names its leg, as a launch writes it
    for spec in plan["legs"]:
        spec["leg"] = spec["name"].partition(".")[0]
    (d / "plan.json").write_text(json.dumps(plan))
    app = make_app(registry_file(tmp_path))
    async with app.run_test(size=(80, 24)) as pilot:
        main = await ready(pilot, app)
        await select(pilot, app, Selection("dir", "cpu-smoke", exp_dir=str(d)))
        report = await until(
            pilot,
            lambda: main.report if main.report and main.report.exp_dir == str(d) else None,
            what="the dir's final table",
        )
        rows = {r.name: r for r in report.rows}
        assert list(rows) == [
            "dense [baseline]",
            "dense",
            "moe_dropless",
            "moe_cap1p0.r0",
            "moe_cap1p0.r1",
            "moe_cap1p0",
        ]
        assert (
            rows["dense [baseline]"].sub == "from 16:00:00 (other dir)"
            and rows["moe_cap1p0"].sub == "mean of 2 repeats"
        )
        assert not rows["moe_cap1p0.r0"].deltas  # a repeat's delta is its leg's, on the mean's row
        assert (
            rows["moe_cap1p0"].figures.drop_pct is not None
            and rows["moe_dropless"].figures.min_val_bpb == 1.71
        )

        table = app.query_one(FinalTable)
        await until(pilot, lambda: table.row_count == 6, what="six rows")
        heads = [str(c.label) for c in table.columns.values()]
        assert heads[-5:] == ["min val bpb", "last val bpb", "final loss", "tail50 drop %", "tail50 bal"]
        cells = dict(zip(heads, table.get_row_at(2), strict=True))  # moe_dropless
        tok, dt, mem = cells["tail50 tok/sec"], cells["tail50 dt (ms)"], cells["peak mem (MiB)"]
        assert tok.plain.splitlines()[2] == "significant" and dt.plain.splitlines()[2] == "within noise"
        assert mem.plain.splitlines()[1:] == ["+0.00%", "-"]  # one sample: no interval, no verdict
        styles = {span.style for span in tok.spans}
        assert "green" in styles and "bold green" in styles  # faster and significant
        assert {span.style for span in dt.spans} == {"dim"}  # within noise: dim
        assert {span.style for span in mem.spans} <= {"", "dim"}  # no interval: never green or red

        warning = report.warnings[0]
        assert warning.startswith("Note: the baseline ran in another launch, 20260224_160000_cpu-smoke")
        app.query_one(FinalTable).focus()
        await pilot.press("m")  # the pane maximized: every word of the note on screen, wrapped
        await pilot.pause(0.3)
        head = app.query_one("#final-head", Static)
        assert warning in head.render().plain and head.size.height >= 3  # whole, over several lines
        assert "baseline's args) is the same as this dir's." in screen_text(app)

        # the report's words: the interval with what it rests on, and how to resolve `within noise`
        read = report_data.read_dir(d)
        md = report_md.render(
            read, report_data.rows(read), baseline.choose(reg.load(registry_file(tmp_path)), "cpu-smoke", d)
        )
        agg = table.get_row_at(5)  # moe_cap1p0, the mean of its repeats
        tok = agg[heads.index("tail50 tok/sec")]
        pct, ci, verdict, basis = (*tok.plain.splitlines()[1].split(" "), *tok.plain.splitlines()[2:])
        assert basis == "(n=2 repeats)" and f"| {pct} | {ci} {basis} | {verdict} |" in md
        resolves, run = {}, None
        for line in md.splitlines():
            run = line.split()[1] if line.startswith("### ") else run
            if line.startswith("To resolve `within noise`"):
                resolves[run] = line.replace("`", "")
        assert resolves and all(f"{r}: {line}" in main.report.notes for r, line in resolves.items())
        assert f"dense: {resolves['dense']}" in app.query_one("#final-notes", Static).render().plain

        await select(pilot, app, Selection("dir", "cpu-smoke", exp_dir=str(gone)))
        pinned = await until(
            pilot,
            lambda: main.report if main.report and main.report.exp_dir == str(gone) else None,
            what="the final table of the dir whose pinned baseline is gone",
        )
        why = (
            f"No deltas: the dir pinned at launch, 20260224_150000_cpu-smoke, is gone. The baseline was pinned when "
            f"this dir was launched and is never replaced by another. To compare with another run: cockpit report "
            f"--exp-dir {gone} --baseline 20260224_160000_cpu-smoke/dense."
        )
        assert pinned.warnings == (why,) and pinned.head is None
        assert why == report_md.no_delta_text(
            baseline.choose(reg.load(registry_file(tmp_path)), "cpu-smoke", gone)
        ).replace("`", "")
        await pilot.pause(0.3)
        assert why in head.render().plain and head.size.height >= 3  # whole, wrapped
        assert "--baseline 20260224_160000_cpu-smoke/dense." in screen_text(app)


@pytest.mark.slow
async def test_a_delta_without_an_interval_is_never_coloured(tmp_path):
    """Recorded figures have one sample each: their deltas are plain, with `-` for the verdict."""
    app = make_app(registry_file(tmp_path))
    async with app.run_test(size=SIZE) as pilot:
        main = await ready(pilot, app)
        await select(pilot, app, Selection("experiment", "moe-fp8-capacity-ablation-v1"))
        await until(pilot, lambda: main.report and len(main.report.rows) == 5, what="the recorded rows")
        table = app.query_one(FinalTable)
        await until(pilot, lambda: table.row_count == 5, what="the table")
        for r in range(1, 5):
            for cell in table.get_row_at(r)[2:7]:
                lines = cell.plain.splitlines()
                assert lines[2] == "-" and {span.style for span in cell.spans} <= {"", "dim"}, cell


@pytest.mark.slow
async def test_a_stop_after_the_leg_ended_says_so(tmp_path):
    """The leg ended between the confirmation and the stop: the notification says it was done."""
    d = write_dir(
        tmp_path / "exp", "20260224_175412_cpu-smoke", "cpu-smoke", {"dense": ("done", log_lines(40, 40))}
    )
    app = make_app(registry_file(tmp_path))
    async with app.run_test(size=SIZE) as pilot:
        main = await ready(pilot, app)
        main._stop(str(d), "dense")
        await until(
            pilot,
            lambda: any(
                t == "stop" and m == f"dense: done (stop came after it ended) in {d.name}"
                for t, m in app.notes
            ),
            what="the notice",
        )
        assert not expdir.stop_request_path(d, "dense").exists()


@pytest.mark.slow
@pytest.mark.parametrize("size", [(80, 24), (120, 40)])
async def test_the_dialogs_keys_are_always_on_screen(tmp_path, size):
    """However long the list of commands, `Launch [y]` / `Re-run [R]` and `Cancel [n/esc]` stay on
    screen, below the scrolling body."""
    write_dir(
        tmp_path / "exp", "20260224_170000_cpu-smoke", "cpu-smoke", {"dense": ("done", log_lines(40, 40))}
    )
    app = make_app(registry_file(tmp_path))
    async with app.run_test(size=size) as pilot:
        await ready(pilot, app)
        for sel, key, label in (
            (Selection("experiment", "cpu-smoke"), "L", "Launch [y]"),
            (Selection("leg", "cpu-smoke", "dense"), "l", "Re-run [R]"),
        ):
            await select(pilot, app, sel)
            await pilot.press(key)
            screen = await until(
                pilot, lambda: isinstance(app.screen, ConfirmScreen) and app.screen, what="the dialog"
            )
            await pilot.pause(0.3)
            body = screen.query_one("#confirm-body")
            assert body.max_scroll_y > 0 or key == "l" and size[1] > 30  # the commands scroll
            for button in screen.query(Button):
                assert screen.region.contains_region(button.region), (str(button.label), button.region)
            text = screen_text(app)
            assert label in text and "Cancel [n/esc]" in text
            await pilot.press("escape")
            await until(pilot, lambda: not isinstance(app.screen, ConfirmScreen), what="cancelled")


@pytest.mark.slow
async def test_the_diff_shows_whole_flag_names_at_120_columns(tmp_path):
    app = make_app(registry_file(tmp_path))
    async with app.run_test(size=(120, 40)) as pilot:
        await ready(pilot, app)
        await select(pilot, app, Selection("leg", "moe-fp8-capacity-ablation-v1", "nocompile_cap1p0"))
        await pilot.press("d")
        await until(pilot, lambda: isinstance(app.screen, DiffScreen), what="the diff")
        await pilot.pause(0.3)
        text = screen_text(app)
        for flag in ("--model-tag", "--compile-mode", "--moe-capacity-factor"):
            assert f"│{flag} " in text.replace("▌", "│") or f" {flag} " in text, flag


@pytest.mark.slow
async def test_deltas_that_are_no_number_show_a_dash(tmp_path):
    """A baseline whose figures are 0: the live and final delta cells say `-`, never inf or nan."""
    reg_path = fake_registry(tmp_path, legs={"base": 'model-tag = "base"', "a": 'model-tag = "a"'})
    text = reg_path.read_text().replace(
        '[[experiment.leg]]\nname = "base"',
        '[[experiment.leg]]\nname = "base"\nrecorded = { tok_per_sec = 0.0, dt_ms = 0.0 }',
    )
    reg_path.write_text(text.replace('id = "fake"', 'id = "fake"\nbaseline = "base"'))
    write_dir(
        tmp_path / "exp",
        "20260224_175412_fake",
        "fake",
        {"a": ("running", log_lines(12, 40, finished=False))},
        supervisor_alive=True,
    )
    app = make_app(reg_path)
    async with app.run_test(size=SIZE) as pilot:
        main = await ready(pilot, app)
        await until(pilot, lambda: main.view.live, what="the live row")
        assert main.view.live[0].delta_tok_pct is None
        live = app.query_one("#live")
        assert live.get_row_at(0)[COLUMNS.index("Δ base")].plain == "-"
        await select(
            pilot, app, Selection("dir", "fake", exp_dir=str(tmp_path / "exp" / "20260224_175412_fake"))
        )
        await until(pilot, lambda: main.report is not None and main.report.rows, what="the final table")
        row = next(r for r in main.report.rows if r.run == "a")
        assert row.deltas["tok_per_sec"] is None and row.deltas["dt_ms"] is None
        final = app.query_one("#final-table")
        cells = [c.plain for c in final.get_row_at(final.row_count - 1)]
        assert cells[2].splitlines()[1] == "-" and cells[3].splitlines()[1] == "-"


def test_power_history_reads_against_the_gpus_power_limit():
    """A steady draw reads as its level on the 0..limit scale NVML gives; without a limit, the
    history is scaled to its own range (a flat line then sits at mid height, whatever the draw)."""
    from cockpit.tui.gpu_panel import GpuPanel
    from cockpit.tui.state import GpuRow

    def power_spark(hist: tuple[float, ...], limit: float | None) -> str:
        row = GpuRow(
            0,
            "NVIDIA H100 80GB HBM3",
            97.0,
            18987.0,
            81559.0,
            64.0,
            hist[-1],
            None,
            power_hist=hist,
            power_limit_w=limit,
        )
        return GpuPanel().render_gpus((row,)).plain.splitlines()[1].split()[-1]

    assert power_spark((612.0,) * 6, 700.0) == "▇" * 6 and power_spark((71.0,) * 6, 700.0) == "▂" * 6
    assert power_spark((612.0,) * 6, None) == "▅" * 6 == power_spark((71.0,) * 6, None)
    assert power_spark((71.0, 700.0), 700.0) == "▂█"


def test_the_top_line_cuts_the_training_state_first():
    """The GPU state and the problem count stay in view: the problem hint shortens to its count,
    then the training state drops its trailing clauses; its state and count are never cut."""
    from cockpit.tui.header import headline_text
    from cockpit.tui.state import Headline

    h = Headline(
        "nanochat-moe",
        "main",
        None,
        "nothing running, 4 legs to run, 1 of them not here",
        "GPUs unknown (no NVML)",
        2,
    )
    whole = headline_text(h).plain
    assert whole.endswith(
        "1 of them not here  │  GPUs unknown (no NVML)  │  ⚠ 2 problem(s): see the resume panel"
    )
    assert headline_text(h, 200).plain == whole
    assert headline_text(h, 140).plain.endswith(
        "1 of them not here  │  GPUs unknown (no NVML)  │  ⚠ 2 problem(s)"
    )
    line = headline_text(h, 120)
    assert line.cell_len <= 120
    assert line.plain.endswith(
        "│  nothing running, 4 legs to run…  │  GPUs unknown (no NVML)  │  ⚠ 2 problem(s)"
    )
    assert "nothing running, 4 legs to run…  │  GPUs" in headline_text(h, 60).plain  # then cropped at the end
    calm = Headline("nanochat-moe", "main", None, "all done", "8 GPUs idle")
    assert headline_text(calm, 60).plain == " nanochat-moe   branch main  │  all done  │  8 GPUs idle"


def test_the_top_line_is_green_while_legs_run_by_their_count():
    """The colour comes from the count of running legs, not from reading the words."""
    from cockpit.tui.header import headline_text
    from cockpit.tui.state import Headline

    def style_of(h: Headline) -> str:
        text = headline_text(h)
        start = text.plain.index(h.training)
        return next(str(span.style) for span in text.spans if span.start == start)

    assert (
        style_of(Headline("p", "main", None, "2 legs running, 1 queued", "GPUs idle", running=2))
        == "bold green"
    )
    assert style_of(Headline("p", "main", None, "2 legs training", "GPUs idle", running=2)) == "bold green"
    assert style_of(Headline("p", "main", None, "nothing running, 1 queued", "GPUs idle")) == "bold"
    assert style_of(Headline("p", "main", None, "running: none", "GPUs idle")) == "bold"


def test_text_shapes():
    assert fmt_pct(2.7) == "+2.70%" and fmt_pct(-2.93) == "-2.93%" and fmt_pct(None) == "-"
    assert fmt.spark([1, 2, 3, 4, 5, 6, 7, 8]) == "▁▂▃▄▅▆▇█" and fmt.spark([]) == ""
    assert (
        fmt.spark([5, 5, 5]) == "▅▅▅" and fmt.spark([0, 0]) == "▁▁" and len(fmt.spark(range(100), 16)) == 16
    )
    assert (
        fmt.bar(100, 4) == "████"
        and fmt.bar(0, 4) == "    "
        and fmt.bar(50, 4) == "██  "
        and fmt.bar(None, 3) == "···"
    )
    assert fmt.bar(5, 4) == "▎   " and len(fmt.bar(250, 6)) == 6
    assert fmt.mib(18987.0) == "18.5G" and fmt.mib(512) == "512M" and fmt.minutes(75) == "1h15m"
    assert fmt.num(806400.06, 0, comma=True) == "806,400" and fmt.pct(57.5) == "57.5%"


@pytest.mark.slow
def test_collector_posts_at_most_twice_a_second_and_loses_no_line(tmp_path):
    """The worker side alone: the first view is posted at once; after that views and log lines
    go out at most every 0.5 s (however fast the log grows), and every line arrives, in order."""
    d = write_dir(
        tmp_path / "exp",
        "20260224_175412_cpu-smoke",
        "cpu-smoke",
        {"dense": ("running", log_lines(5, 400, finished=False))},
        supervisor_alive=True,
    )
    c = Collector(registry_file(tmp_path), sampler=FakeSampler(), branch="main", clock=fixed_clock)
    key = f"{d}/dense"
    c.request = Request(tabs=((key, str(d / "dense.log")),))
    posted: list[tuple[float, object]] = []
    worker = threading.Thread(
        target=c.run,
        args=(lambda m: posted.append((time.monotonic(), m)), lambda: False),
        kwargs={"period": 0.02},
    )
    t0 = time.monotonic()
    worker.start()
    more = log_lines(150, 400, finished=False)[7:]  # the steps after the 5 already there
    with open(d / "dense.log", "a") as f:
        for line in more:  # a line every 20 ms: 50 lines/s, for about 3 s
            f.write(line + "\n")
            f.flush()
            time.sleep(0.02)
    time.sleep(0.8)  # the last lines' post
    c.stop()
    worker.join(timeout=10)
    assert not worker.is_alive()

    views = [(t, m) for t, m in posted if isinstance(m, ViewPublished)]
    batches = [(t, m) for t, m in posted if isinstance(m, LogLines)]
    assert views[0][0] - t0 < 3.0 and views[0][1].view is not None  # the first view: no waiting for a period
    for kind in (views, batches):
        gaps = [b[0] - a[0] for a, b in zip(kind, kind[1:], strict=False)]
        assert gaps and min(gaps) >= 0.45, gaps
    assert len(batches) >= 4  # lines kept coming: several posts, not one at the end
    got = [line for _, m in batches for line in m.lines[key]]
    assert got == log_lines(150, 400, finished=False)  # the whole file, in order: nothing lost or doubled
    assert views[-1][1].view.live[0].step == 149  # the live row follows the log to its last step


def test_live_row_routing_and_a_verdict_once_the_tail_window_is_full(tmp_path):
    """A running MoE leg beside its dir's finished baseline: the live row shows the last step's drop %
    and bal; `Δ base` has no verdict while the tail window fills (`12/50 steps`), then an interval and
    a verdict from the same tail statistics the final table uses."""
    from cockpit import registry as reg
    from cockpit import resume
    from cockpit.tui import build
    from cockpit.tui.live_table import LiveTable
    from cockpit.vocab import Verdict

    reg_path = fake_registry(tmp_path, legs={"base": 'model-tag = "base"', "moe": 'model-tag = "moe"'})
    reg_path.write_text(reg_path.read_text().replace('id = "fake"', 'id = "fake"\nbaseline = "base"'))
    registry = reg.load(reg_path)

    def moe_lines(
        steps: int, tok: float, total: int = 80
    ) -> list[str]:  # the trainer's MoE fields: bal after loss, drop last
        out = [ln for ln in log_lines(steps, total, tok=tok, finished=False) if not ln.startswith("step ")]
        for i, ln in enumerate(
            ln for ln in log_lines(steps, total, tok=tok, finished=False) if ln.startswith("step ")
        ):
            head, _, rest = ln.partition(" | lrm:")
            out.append(f"{head} | bal: {1 + i / 1000:.4f} | lrm:{rest} | drop: {1 + i / 100:.2f}%")
        return out

    def row_of(steps: int, tok: float, name: str, total: int = 80):
        write_dir(
            tmp_path / "exp",
            name,
            "fake",
            {"base": ("done", log_lines(80, 80)), "moe": ("running", moe_lines(steps, tok, total))},
            supervisor_alive=True,
        )
        state = resume.build_state(registry, FakeSampler(nvml=False))
        m = next(m for m in state.running if m.dir and Path(m.dir).name == name)
        return build.live_view(state, m, None)

    def cells(v) -> dict[str, Text]:
        return {
            c: x if isinstance(x, Text) else Text(x) for c, x in zip(COLUMNS, LiveTable.row(v), strict=True)
        }

    filling = row_of(12, 1300.0, "20260224_175412_fake")  # steps 0-11: step 0 is never in the tail
    assert filling.verdict == "11/50 steps" and filling.delta_ci_pct is None
    assert filling.delta_tok_pct is not None and filling.delta_tok_pct > 25
    assert (filling.figures.drop_pct, filling.figures.bal) == (1.11, 1.011)  # the last step's
    assert filling.baseline_label == "base"  # the dir's own baseline: no source named
    row = cells(filling)  # no verdict yet: +30% is not coloured; progress as the log's own line
    assert row["Δ base"].style == "" and row["verdict"].plain == "11/50 steps"
    assert (row["step"].plain, row["%"].plain) == ("11/80", "13.75%")
    assert row["tail tok/sec"].plain == f"{filling.tail_tok_per_sec:,.0f} (11 of 50)"
    full = row_of(60, 1300.0, "20260224_175413_fake")
    assert full.verdict == Verdict.SIGNIFICANT and full.delta_ci_pct is not None and 0 < full.delta_ci_pct < 5
    row = cells(full)
    assert (
        row["drop %"].plain == "1.59"
        and row["bal"].plain == "1.0590"
        and row["verdict"].plain == "significant"
    )
    assert row["Δ base"].plain == f"{fmt_pct(full.delta_tok_pct)} ±{full.delta_ci_pct:.2f}%"
    assert (
        row["Δ base"].style == "green" and "(" not in row["tail tok/sec"].plain
    )  # faster, significant: green
    same = row_of(60, 1000.0, "20260224_175414_fake")  # the baseline's own config: inside the noise
    assert same.verdict == Verdict.WITHIN_NOISE and cells(same)["Δ base"].style == "dim"
    # a run shorter than the tail window, at its last step: its verdict over every step it has
    short = row_of(30, 1300.0, "20260224_175415_fake", total=30)
    assert short.tail_n == 29 and short.verdict == Verdict.SIGNIFICANT and short.delta_ci_pct is not None
    assert short.pct < 100 and cells(short)["%"].plain == "96.67%"


def test_live_row_says_what_its_interval_rests_on_how_to_resolve_it_and_why_there_is_no_delta(tmp_path):
    """Against a baseline run with repeats, `Δ base` says what its interval rests on, and a `within
    noise` verdict how many repeats would resolve it (the core's words, as `cockpit status` and the
    report have them); a pinned baseline without figures (its run failed) gives no delta, and the
    baseline cell says why, in the words of `cockpit status`."""
    from cockpit import registry as reg
    from cockpit import resume
    from cockpit.tui import build
    from cockpit.tui.live_table import LiveTable
    from cockpit.vocab import Verdict

    reg_path = fake_registry(tmp_path, legs={"base": 'model-tag = "base"', "moe": 'model-tag = "moe"'})
    text = reg_path.read_text().replace('id = "fake"', 'id = "fake"\nbaseline = "base"')
    reg_path.write_text(text.replace('name = "base"\n', 'name = "base"\nrepeats = 2\n'))
    registry = reg.load(reg_path)

    def live(name: str, base: dict[str, tuple[str, list[str]]], pin: dict | None = None):
        d = write_dir(
            tmp_path / "exp",
            name,
            "fake",
            {**base, "moe": ("running", log_lines(60, 80, tok=1015.0, finished=False))},
            supervisor_alive=True,
        )
        plan = json.loads((d / "plan.json").read_text())
        for spec in plan["legs"]:  # each repeat names its leg, as a launch writes it
            spec["leg"] = spec["name"].partition(".")[0]
        (d / "plan.json").write_text(json.dumps(plan | ({"baseline": pin} if pin else {})))
        state = resume.build_state(registry, FakeSampler(nvml=False))
        m = next(m for m in state.running if m.dir and Path(m.dir).name == name)
        v = build.live_view(state, m, None)
        return v, {
            c: x if isinstance(x, Text) else Text(x) for c, x in zip(COLUMNS, LiveTable.row(v), strict=True)
        }

    v, row = live(
        "20260224_175412_fake",
        {
            "base.r0": ("done", log_lines(80, 80, tok=1000.0)),
            "base.r1": ("done", log_lines(80, 80, tok=1010.0)),
        },
    )
    assert v.verdict == Verdict.WITHIN_NOISE and v.delta_basis == "n=1 run vs the baseline's 2 repeats"
    assert (
        row["Δ base"].plain
        == f"{fmt_pct(v.delta_tok_pct)} ±{v.delta_ci_pct:.2f}% (n=1 run vs the baseline's 2 repeats)"
    )
    assert re.fullmatch(
        r"at least (\d+) repeats of each leg \(\d+ more\)", v.resolve
    )  # a single run: a floor
    assert row["verdict"].plain == f"within noise; to resolve: {v.resolve}" and v.baseline_problem is None

    pin = {"leg": "base", "experiment": "fake", "source": "own", "runs": ["base.r0", "base.r1"]}
    v, row = live(
        "20260224_175413_fake",
        {
            "base.r0": ("failed", log_lines(12, 80, crash=True)),
            "base.r1": ("stopped", log_lines(3, 80, finished=False)),
        },
        pin,
    )
    assert v.baseline_problem == "base: this dir's own run of base (the launch ran it) failed"
    assert v.delta_tok_pct is None and v.verdict == "" and v.resolve == ""
    assert (row["Δ base"].plain, row["verdict"].plain) == ("-", "-")
    assert row["baseline"].plain == v.baseline_problem and row["baseline"].style == "yellow"
