"""SVG snapshots of the cockpit (pytest-textual-snapshot): the screens a researcher sees.

Each case builds its dirs under a fixed temp path, with a fixed clock, branch and GPU figures,
so the same screen comes out every run. `pytest --snapshot-update` rewrites the SVGs in
tests/__snapshots__/ after a deliberate change; review them by eye before committing.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from helpers import SNAP_ROOT, FakeSampler, case_dir, fixed_clock, log_lines, registry_file, write_dir

from cockpit.tui.app import CockpitApp
from cockpit.tui.confirm import ConfirmScreen
from cockpit.tui.diff_screen import DiffScreen
from cockpit.tui.experiments import ExperimentTree, Selection
from cockpit.tui.log_panes import LogPanes
from cockpit.tui.log_text import LogText

# the cases' fixed dirs, one test run at a time; a Pilot app and an SVG each: seconds
pytestmark = [pytest.mark.usefixtures("snapshot_lock"), pytest.mark.slow]
SIZE = (160, 48)
# A laptop's 80x24, a half screen's 120x40, a wide 200x50: every screen at each, where every column
# stays reachable (tables and panels scroll sideways; the next command is never folded inside a token).
SIZES = pytest.mark.parametrize("size", [(80, 24), (120, 40), (200, 50)], ids=["80x24", "120x40", "200x50"])


@pytest.fixture(autouse=True)
def utc(monkeypatch):
    """The GPU line of the resume panel prints a local time: make it the same everywhere."""
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def app_for(case: str, sampler: FakeSampler, dirs=None) -> CockpitApp:
    base = case_dir(case)
    registry = registry_file(base)
    if dirs:
        dirs(base / "exp")
    return CockpitApp(registry, sampler=sampler, branch="main", clock=fixed_clock)


def settled(
    select: Selection | None = None,
    maximize_resume: bool = False,
    search: str | None = None,
    maximize: str | None = None,
    keys: str = "",
    until_screen: type | None = None,
):
    """run_before: wait for the first view, the selection, the log panes at their bottom; then
    `maximize` a pane (by a selector of what to focus in it), press `keys`, wait for a screen."""

    async def run_before(pilot) -> None:
        app: CockpitApp = pilot.app
        main = app.main_screen
        deadline = time.monotonic() + 20
        while main.view is None and time.monotonic() < deadline:
            await pilot.pause(0.05)
        tree = app.query_one(ExperimentTree)
        while tree.cursor_line < 0 and time.monotonic() < deadline:
            await pilot.pause(0.05)
        if select is not None:
            node = tree.node_for(select)
            if node.parent is not None:
                node.parent.expand()  # a dir's legs are folded
            await pilot.pause(0.1)
            tree.move_cursor(node)
            while main.selection != select and time.monotonic() < deadline:
                await pilot.pause(0.05)
        await pilot.pause(
            1.2
        )  # two posts of the collector (0.5 s apart): the selection's report, the log tabs
        panes = app.query_one(LogPanes)
        for v in panes.views():
            while (
                not v.written or not v.query_one(LogText).is_vertical_scroll_end
            ) and time.monotonic() < deadline:
                await pilot.pause(0.05)
        if maximize_resume:
            app.query_one("#resume-box").focus()
            await pilot.pause(0.1)
            await pilot.press("m")
        if search is not None:  # `/` in the log in front: the matches highlighted, the newest current
            await pilot.press("slash", *search, "enter")
        if maximize is not None:
            app.query_one(maximize).focus()
            await pilot.pause(0.1)
            await pilot.press("m")
        if keys:
            await pilot.press(*keys)
        while (
            until_screen is not None
            and not isinstance(app.screen, until_screen)
            and time.monotonic() < deadline
        ):
            await pilot.pause(0.05)
        await pilot.pause(0.2)

    return run_before


def running_dirs(root):
    write_dir(
        root,
        "20260224_175412_cpu-smoke",
        "cpu-smoke",
        {
            "dense": ("done", log_lines(40, 40)),
            "moe_dropless": ("running", log_lines(23, 40, tok=900, finished=False)),
            "moe_cap1p0": ("queued", []),
        },
        supervisor_alive=True,
    )


def failed_dirs(root):
    write_dir(
        root,
        "20260224_170000_cpu-smoke",
        "cpu-smoke",
        {
            "dense": ("done", log_lines(40, 40)),
            "moe_dropless": ("failed", log_lines(12, 40, tok=1100, crash=True)),
        },
    )


@SIZES
def test_snapshot_nothing_run(snap_compare, size):
    """The bundled registry, nothing run here: recorded legs, pending legs, 8 idle GPUs."""
    app = app_for("nothing-run", FakeSampler())
    assert snap_compare(app, terminal_size=size, run_before=settled())


@SIZES
def test_snapshot_legs_running(snap_compare, size):
    """cpu-smoke: dense done, moe_dropless running (live table, log tab), moe_cap1p0 queued; 8 busy
    GPUs with their histories and the leg's GPU memory."""
    app = app_for("legs-running", FakeSampler(busy=tuple(range(8))), running_dirs)
    assert snap_compare(app, terminal_size=size, run_before=settled(Selection("experiment", "cpu-smoke")))


@SIZES
def test_snapshot_failed_leg(snap_compare, size):
    """A failed leg selected: its traceback in the log tab, its dir's final table, the failed mark."""
    app = app_for("failed-leg", FakeSampler(), failed_dirs)
    sel = Selection("dirleg", "cpu-smoke", "moe_dropless", str(case_dir_path("failed-leg")))
    assert snap_compare(app, terminal_size=size, run_before=settled(sel))


def test_snapshot_no_nvml(snap_compare):
    """No NVML on the machine: the GPU panel says why and shows the host's CPU and RAM."""
    app = app_for("no-nvml", FakeSampler(nvml=False))
    assert snap_compare(app, terminal_size=SIZE, run_before=settled())


@SIZES
def test_snapshot_resume_panel(snap_compare, size):
    """The resume panel maximized (`m`): completed, remaining, the next leg's exact command (a line
    per flag, never folded inside a token), safety."""
    app = app_for("resume-panel", FakeSampler(), failed_dirs)
    assert snap_compare(app, terminal_size=size, run_before=settled(maximize_resume=True))


@SIZES
def test_snapshot_log_search(snap_compare, size):
    """A search in the running leg's log (`/loss: 5.9`): both matches highlighted, the newer current,
    the status line counting them."""
    app = app_for("log-search", FakeSampler(busy=(0,)), running_dirs)
    sel = Selection("leg", "cpu-smoke", "moe_dropless")
    assert snap_compare(app, terminal_size=size, run_before=settled(sel, search="loss: 5.9"))


def moe_lines(steps: int, total: int, tok: float, drop: float | None = None, seed: int = 0) -> list[str]:
    """A MoE leg's log: `| bal:` after loss (and `| drop:` last with a fixed capacity), a
    validation line every 10 steps, the trainer's minimum at the end."""
    out = []
    for ln in log_lines(steps, total, tok=tok):
        if ln.startswith("step "):
            i = int(ln[5:10])
            head, _, rest = ln.partition(" | lrm:")
            ln = f"{head} | bal: {1.02 + (i + seed) % 3 / 100:.4f} | lrm:{rest}"
            ln += f" | drop: {drop + (i + seed) % 4 / 10:.2f}%" if drop is not None else ""
            out.append(ln)
            if i % 10 == 9:
                out.append(f"Step {i + 1:05d} | Validation bpb: {2.1 - i / 100 - seed / 1000:.6f}")
        else:
            out.append(ln)
    return out + [f"Minimum validation bpb: {2.1 - (steps - 1) / 100 - seed / 1000:.6f}"]


def baseline_elsewhere_dirs(root):
    """cpu-smoke's baseline done in an older dir; in the newer one dense failed, so its deltas are
    against the older dir's dense (named, with what differs); moe_cap1p0 ran with 2 repeats."""
    write_dir(root, "20260224_160000_cpu-smoke", "cpu-smoke", {"dense": ("done", log_lines(40, 40))})
    d = write_dir(
        root,
        "20260224_170000_cpu-smoke",
        "cpu-smoke",
        {
            "dense": ("failed", log_lines(12, 40, crash=True)),
            "moe_dropless": ("done", moe_lines(40, 40, tok=1250)),
            "moe_cap1p0.r0": ("done", moe_lines(40, 40, tok=1300, drop=2.0)),
            "moe_cap1p0.r1": ("done", moe_lines(40, 40, tok=1320, drop=2.2, seed=1)),
        },
    )
    plan = json.loads((d / "plan.json").read_text())  # each repeat names its leg, as a launch writes it
    for spec in plan["legs"]:
        spec["leg"] = spec["name"].partition(".")[0]
    (d / "plan.json").write_text(json.dumps(plan))


BASELINE_ELSEWHERE = SNAP_ROOT / "baseline-elsewhere" / "exp" / "20260224_170000_cpu-smoke"


@SIZES
def test_snapshot_final_table_as_the_report(snap_compare, size):
    """The final table maximized, as the report has it: the verdict as a word under each delta
    (coloured only when significant), the baseline from another dir as its own named row with the
    note on what differs whole, the quality and routing columns, a row per repeat and their mean."""
    app = app_for("baseline-elsewhere", FakeSampler(), baseline_elsewhere_dirs)
    sel = Selection("dir", "cpu-smoke", exp_dir=str(BASELINE_ELSEWHERE))
    assert snap_compare(app, terminal_size=size, run_before=settled(sel, maximize="#final-table"))


def fixed_launch(monkeypatch):
    """The launch dialog's fresh dir and torchrun as the same text on every machine."""
    from cockpit import launch

    monkeypatch.setattr(launch, "fresh_dir_name", lambda root, exp: Path(root) / f"20260224_191200_{exp}")
    monkeypatch.setattr(launch, "torchrun_for", lambda runtime: "torchrun")


@pytest.mark.parametrize("size", [(80, 24), (120, 40)], ids=["80x24", "120x40"])
def test_snapshot_launch_dialog(snap_compare, size, monkeypatch):
    """`L` on cpu-smoke: the commands scroll, `Launch [y]` and `Cancel [n/esc]` stay on screen."""
    fixed_launch(monkeypatch)
    app = app_for("launch-dialog", FakeSampler())
    assert snap_compare(
        app,
        terminal_size=size,
        run_before=settled(Selection("experiment", "cpu-smoke"), keys="L", until_screen=ConfirmScreen),
    )


@pytest.mark.parametrize("size", [(80, 24), (120, 40)], ids=["80x24", "120x40"])
def test_snapshot_rerun_dialog(snap_compare, size, monkeypatch):
    """`l` on a done leg: it says DONE, and the only way on is `Re-run [R]` (or `Cancel`)."""
    fixed_launch(monkeypatch)
    app = app_for("rerun-dialog", FakeSampler(), failed_dirs)
    assert snap_compare(
        app,
        terminal_size=size,
        run_before=settled(Selection("leg", "cpu-smoke", "dense"), keys="l", until_screen=ConfirmScreen),
    )


def test_snapshot_diff_dialog(snap_compare):
    """`d` at 120 columns: every flag name whole beside both legs' values."""
    app = app_for("diff-dialog", FakeSampler())
    sel = Selection("leg", "moe-fp8-capacity-ablation-v1", "nocompile_cap1p0")
    assert snap_compare(
        app, terminal_size=(120, 40), run_before=settled(sel, keys="d", until_screen=DiffScreen)
    )


def case_dir_path(case: str):

    return SNAP_ROOT / case / "exp" / "20260224_170000_cpu-smoke"
