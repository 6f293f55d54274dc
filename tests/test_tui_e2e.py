"""End to end: keys launch the real cpu-smoke legs (torchrun, the real trainer, the detached
supervisor), the log panes fill while they run, the legs finish, the final table shows them.

The smallest run that proves it: the bundled registry with two of cpu-smoke's legs at 12 steps
(about 12 s a leg on 2 cores).
"""

from __future__ import annotations

import re

import pytest
from helpers import registry_file, until
from textual.widgets import DataTable

from cockpit.tui.app import CockpitApp
from cockpit.tui.confirm import ConfirmScreen
from cockpit.tui.experiments import ExperimentTree, Selection
from cockpit.tui.final_table import FinalTable
from cockpit.tui.log_panes import LogPanes


@pytest.mark.slow
async def test_keys_launch_cpu_smoke_and_the_tables_fill(tmp_path, smoke_corpus):
    path = registry_file(tmp_path, iterations=12, corpus=smoke_corpus)
    text = re.sub(r'\[\[experiment\.leg\]\]\nname = "moe_dropless"\n[^\n]*\n', "", path.read_text())
    path.write_text(text)
    app = CockpitApp(path, branch="main")  # the real GPU sampler: no NVML here, shown as such
    async with app.run_test(size=(160, 48)) as pilot:
        main = app.main_screen
        await until(pilot, lambda: main.view is not None, 20, "the first view")
        tree = app.query_one(ExperimentTree)
        await until(pilot, lambda: tree.cursor_line >= 0, 10, "the tree")
        sel = Selection("experiment", "cpu-smoke")
        tree.move_cursor(tree.node_for(sel))
        await until(pilot, lambda: main.selection == sel, 10, "the selection")

        await pilot.press("L")
        screen = await until(
            pilot, lambda: isinstance(app.screen, ConfirmScreen) and app.screen, 20, "confirm"
        )
        assert screen.title_text == "Launch 2 legs of cpu-smoke?"
        assert "-m nanochat.base_train" in str(screen.body) and "--model-tag smoke_moe_cap1p0" in str(
            screen.body
        )
        await pilot.press("y")

        # while they run: a log tab per leg, filling with the trainer's step lines; live rows
        panes = app.query_one(LogPanes)
        seen_live: set[str] = set()
        filled: set[str] = set()

        def progress() -> bool:
            for v in main.view.live if main.view else ():
                if v.step is not None:
                    seen_live.add(v.leg)
            for view in panes.views():  # the active tab shows its lines; a hidden one keeps them
                # a pane is composed after its tab is added: read its lines once it is live
                shown = view.live and any(line.startswith("step ") for line in view.log.lines)
                if view.received and (shown or not view.visible):
                    filled.add(view.key.rpartition("/")[2])
            return len([f for f in main.finished if f.endswith(":done")]) == 2

        await until(pilot, progress, 120, "both legs to finish")
        assert filled == {"dense", "moe_cap1p0"}, filled
        assert seen_live, "the live table never showed a running leg"
        assert [m.mark for m in main.view.experiment("cpu-smoke").legs] == ["done", "done"]

        # the final table of the new dir: one completed row per leg, with figures
        table = app.query_one(FinalTable)

        def rows() -> dict[str, list[str]]:
            out = {}
            for key in table.rows:
                cells = [str(c).split("\n")[0] for c in table.get_row(key)]
                out[cells[0]] = cells
            return out

        await until(pilot, lambda: {"dense", "moe_cap1p0"} <= set(rows()), 10, "the final table")
        got = rows()
        for leg in ("dense", "moe_cap1p0"):
            assert got[leg][1] == "completed", got[leg]
            assert float(got[leg][2]) > 0  # tail tok/sec measured from the log
        assert isinstance(table, DataTable) and "cpu-smoke" in str(app.query_one("#final").border_title)
