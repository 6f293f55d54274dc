"""The log panes as a researcher reads them all day, through Pilot: search (`/`, `n`, `N`,
highlighted), filter (`&`), wrap (`w`), sideways scroll to a step line's `total time` and `eta`;
tabs of ended legs kept until closed (`x`); a leg or a dir opens its own log (the attempt just
stopped, not the newest done dir). No leg is launched here: the dirs are written as the
supervisor writes them, with stand-in processes for the running legs.
"""

from __future__ import annotations

import asyncio

import pytest
from helpers import (
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
)
from textual.app import App

from cockpit import expdir
from cockpit.tui.experiments import Selection
from cockpit.tui.log_panes import LogPanes
from cockpit.tui.log_text import CURRENT, MATCH, LogText
from cockpit.tui.log_view import FindInput

SIZE = (120, 40)


def styled(log: LogText, style) -> list[str]:
    """The text of every on-screen run drawn in `style` (a search match, the current one)."""
    out = []
    for y in range(log.scrollable_content_region.height):
        for seg in log.render_line(y):
            if seg.style is not None and seg.style.bgcolor == style.bgcolor and seg.text.strip():
                out.append(seg.text)
    return out


def log_screen(log: LogText) -> str:
    return "\n".join(
        "".join(seg.text for seg in log.render_line(y)) for y in range(log.scrollable_content_region.height)
    )


@pytest.mark.slow
async def test_search_filter_wrap_and_sideways_scroll(tmp_path):
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
        pane = await until(
            pilot,
            lambda: (
                panes.view(f"{d}/dense")
                and panes.view(f"{d}/dense").written >= 62
                and panes.view(f"{d}/dense")
            ),
            what="the pane",
        )
        log = pane.log
        await until(pilot, lambda: log.is_vertical_scroll_end and log.max_scroll_y > 0, what="the bottom")

        # `/`: the find bar; each match highlighted as typed; enter keeps it, the newest match current
        await pilot.press("slash")
        assert isinstance(app.focused, FindInput) and app.focused.display
        await pilot.press(*"LOSS: 5.9")  # any case: steps 5 (5.95) and 6 (5.90)
        await pilot.press("enter")
        assert not isinstance(app.focused, FindInput) and app.focused is log
        assert log.match_index() == (2, 2) and pane.paused  # it scrolled up to step 6: following pauses
        assert "step 00006/00400" in log_screen(log)
        assert styled(log, CURRENT) == ["loss: 5.9"] and styled(log, MATCH) == ["loss: 5.9"]
        status = str(pane.status_text())
        assert "/ 'LOSS: 5.9': 2/2 lines" in status and "n next, N previous" in status
        assert "2/2 lines" in screen_text(app)
        await pilot.press("N")  # older: step 5
        assert log.match_index() == (1, 2) and log.current == log.first + 2 + 5
        await pilot.press("N")  # wraps around to the newest
        assert log.match_index() == (2, 2)
        await pilot.press("n")  # newer than the newest: wraps to the oldest
        assert log.match_index() == (1, 2)

        # `&`: only the lines that hold the text; escape closes the bar, the filter stays
        await pilot.press("ampersand")
        await pilot.press(*"bf16_mfu: 0.50")  # steps 2, 7, 12, ... 57
        await pilot.press("escape")
        assert not isinstance(app.focused, FindInput)
        assert log.shown_count() == 12 and log.row_count == 12 and log.line_count == 62
        assert all("bf16_mfu: 0.50" in log.lines[n - log.first] for n, _, _ in log._rows)
        assert "& 'bf16_mfu: 0.50': 12 of 62 lines" in str(pane.status_text())
        assert "no match" in str(pane.status_text())  # the search's lines are filtered out
        await pilot.press("n")
        assert any("no line matches 'LOSS: 5.9' among the filtered ones" in m for m in notes(app))
        await pilot.press("ampersand", "backspace", "enter")  # an empty filter: every line again
        assert log.filter is None and log.row_count == 62
        await pilot.press("slash", "backspace", "enter")  # an empty search: no highlight
        assert log.search is None and styled(log, MATCH) == []

        # sideways: a step line is wider than the pane; its total time and eta are reachable
        assert log.virtual_size.width > log.scrollable_content_region.width
        log.focus()
        await pilot.press("end")  # back to the bottom: following again
        assert not pane.paused
        assert "eta:" not in log_screen(log)
        for _ in range(3):
            await pilot.press("ctrl+pagedown")
        assert "eta: " in log_screen(log) and log.scroll_x > 0
        await pilot.press("ctrl+pageup", "ctrl+pageup", "ctrl+pageup")
        assert log.scroll_x == 0

        # `w`: long lines fold at the pane's width; every character on screen, nothing sideways
        await pilot.press("w")
        width = log.scrollable_content_region.width
        assert log.wrap and log.row_count > log.line_count and log.virtual_size.width == width
        screen = log_screen(log)
        assert "total time:" in screen and "eta:" in screen
        assert "wrap" in str(pane.status_text())
        await pilot.press("w")
        assert not log.wrap and log.row_count == 62 and not pane.paused


@pytest.mark.slow
async def test_ended_leg_keeps_its_tab_until_closed(tmp_path):
    a, b = two_running_dirs(tmp_path / "exp")
    app = make_app(registry_file(tmp_path))
    async with app.run_test(size=SIZE) as pilot:
        main = await ready(pilot, app)
        panes = app.query_one(LogPanes)
        key_a, key_b = f"{a}/dense", f"{b}/moe_fp8_experts_static_cap1p0_v3"
        await until(pilot, lambda: {key_a, key_b} <= set(panes.keys), what="two tabs")
        assert panes.title(key_a) == "▶ dense · 17:00:00"  # two dirs' tabs: each says its dir
        st = expdir.read_state(a, "dense")
        st.status = "failed"
        expdir.write_state(a, st)
        await until(pilot, lambda: main.finished, what="the leg to end")
        await until(pilot, lambda: panes.title(key_a) == "✘ dense · 17:00:00", what="the tab's mark")
        await until(pilot, lambda: panes.view(key_a).received, what="the ended leg's lines")
        assert key_a in panes.keys  # the ended leg's log stays, with its lines
        assert any("its log tab stays until [x] closes it" in m for m in notes(app))

        panes.select(key_a)
        await until(
            pilot, lambda: panes.current_key() == key_a, what="its tab in front"
        )  # x closes the front tab
        await pilot.press("x")
        await until(pilot, lambda: key_a not in panes.keys, what="the tab to close")
        await pilot.pause(1.2)  # two more views: a closed tab is not reopened
        assert key_a not in panes.keys and key_b in panes.keys
        panes.select(key_b)
        await until(pilot, lambda: panes.current_key() == key_b, what="its tab in front")
        await pilot.press("x")  # a running leg's tab closes too, and stays closed while it runs
        await until(pilot, lambda: key_b not in panes.keys, what="the running tab to close")
        await pilot.pause(1.2)
        assert key_b not in panes.keys

        await select(pilot, app, Selection("leg", "cpu-smoke", "dense"))  # selecting the leg opens it again
        await until(pilot, lambda: panes.current_key() == key_a, what="the selected leg's log")


@pytest.mark.slow
async def test_a_leg_that_starts_comes_to_the_front_and_tabs_group_by_dir(tmp_path):
    """A leg seen running for the first time brings its tab to the front; the tabs stand grouped
    by dir, oldest dir first (a new tab goes in its place), each saying its dir; the pane's title
    names the front tab's dir and its subtitle which tab of how many."""
    root = tmp_path / "exp"
    a = write_dir(
        root,
        "20260224_170000_cpu-smoke",
        "cpu-smoke",
        {"dense": ("running", log_lines(5, 40, finished=False))},
        supervisor_alive=True,
    )
    app = make_app(registry_file(tmp_path))
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot, app)
        panes = app.query_one(LogPanes)
        key_a = f"{a}/dense"
        await until(pilot, lambda: panes.current_key() == key_a, what="the running leg's tab in front")
        assert panes.title(key_a) == "▶ dense" and panes.border_title == f"Logs: {a.name}"
        b = write_dir(
            root,
            "20260224_180000_moe-fp8-capacity-opt-v3",
            "moe-fp8-capacity-opt-v3",
            {"moe_fp8_experts_static_cap1p0_v3": ("running", log_lines(3, 40, finished=False))},
            supervisor_alive=True,
        )
        key_b = f"{b}/moe_fp8_experts_static_cap1p0_v3"
        await until(pilot, lambda: panes.current_key() == key_b, what="the leg that started, in front")
        await until(pilot, lambda: panes.border_title == f"Logs: {b.name}", what="the front tab's dir")
        c = write_dir(
            root,
            "20260224_160000_cpu-smoke",
            "cpu-smoke",  # an older dir: its tab goes first
            {"moe_dropless": ("running", log_lines(3, 40, finished=False))},
            supervisor_alive=True,
        )
        key_c = f"{c}/moe_dropless"
        await until(
            pilot, lambda: panes.current_key() == key_c and panes.settled, what="the third leg in front"
        )
        order = [str(t.label) for t in panes.query("ContentTab")]
        assert order == [
            "▶ moe_dropless · 16:00:00",
            "▶ dense · 17:00:00",
            "▶ moe_fp8_experts_static_cap1p0_v3 · 18:00:00",
        ], order
        assert panes.keys == [key_c, key_a, key_b]
        await until(pilot, lambda: panes.border_subtitle.startswith("tab 1 of 3"), what="the tab's place")
        await pilot.press("right_square_bracket")  # `]` goes in the order shown
        await until(pilot, lambda: panes.current_key() == key_a, what="the next tab, the older dir's")


@pytest.mark.slow
async def test_x_closes_the_tab_in_front_every_time(tmp_path):
    """Whatever the tab in front is (a running leg's, an ended one's, the selection's), `x` closes
    it, one tab a press, until none is left; then it says there is none."""
    a, b = two_running_dirs(tmp_path / "exp")
    old = write_dir(
        tmp_path / "exp", "20260224_150000_cpu-smoke", "cpu-smoke", {"dense": ("done", log_lines(40, 40))}
    )
    app = make_app(registry_file(tmp_path))
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot, app)
        panes = app.query_one(LogPanes)
        await select(pilot, app, Selection("dirleg", "cpu-smoke", "dense", str(old)))
        await until(
            pilot,
            lambda: len(panes.keys) == 3 and panes.current_key() == f"{old}/dense",
            what="three tabs, the selection's in front",
        )
        for left in (2, 1, 0):
            front = panes.current_key()
            await pilot.press("x")  # at once: no waiting for the tabs to settle first
            await until(
                pilot,
                lambda front=front, left=left: front not in panes.keys and len(panes.keys) == left,
                what=f"{front} closed",
            )
            if left:
                await until(pilot, lambda: panes.current_key() in panes.keys, what="another tab in front")
        await pilot.pause(1.2)  # two more views: none reopens
        assert panes.keys == []
        await pilot.press("x")
        await until(pilot, lambda: any("no log tab to close" in m for m in notes(app)), what="the warning")
        await select(pilot, app, Selection("leg", "cpu-smoke", "dense"))  # it opens again ...
        await until(pilot, lambda: panes.keys == [f"{a}/dense"], what="the selection's tab")
        await pilot.press("x", "x")  # ... and a second `x` while the first closes finds none: says so
        await until(
            pilot,
            lambda: panes.keys == [] and len([m for m in notes(app) if "no log tab" in m]) == 2,
            what="closed, then the warning",
        )


@pytest.mark.slow
async def test_a_leg_or_a_dir_opens_its_own_log(tmp_path):
    """A leg done in an older dir and stopped in a newer one: selecting the leg opens the attempt
    just stopped; selecting a dir opens its running leg, else its last started one."""
    root = tmp_path / "exp"
    old = write_dir(
        root,
        "20260224_170000_cpu-smoke",
        "cpu-smoke",
        {"dense": ("done", log_lines(40, 40)), "moe_dropless": ("done", log_lines(40, 40))},
    )
    new = write_dir(
        root,
        "20260224_180000_cpu-smoke",
        "cpu-smoke",
        {
            "dense": ("stopped", log_lines(7, 40, tok=777, finished=False)),
            "moe_dropless": ("running", log_lines(3, 40, tok=555, finished=False)),
            "moe_cap1p0": ("queued", []),
        },
        supervisor_alive=True,
    )
    app = make_app(registry_file(tmp_path))
    async with app.run_test(size=SIZE) as pilot:
        main = await ready(pilot, app)
        panes = app.query_one(LogPanes)
        assert main.view.experiment("cpu-smoke").leg("dense").mark == "done"  # the old dir counts as done

        async def opened(sel: Selection, key: str, text: str) -> None:
            await select(pilot, app, sel)
            await until(pilot, lambda: panes.current_key() == key and panes.view(key).received, what=key)
            await until(pilot, lambda: any(text in x for x in panes.view(key).log.lines), what=text)

        await opened(Selection("leg", "cpu-smoke", "dense"), f"{new}/dense", "tok/sec: 777")
        await opened(Selection("dir", "cpu-smoke", exp_dir=str(old)), f"{old}/moe_dropless", "tok/sec: 1,000")
        await opened(Selection("dir", "cpu-smoke", exp_dir=str(new)), f"{new}/moe_dropless", "tok/sec: 555")
        await opened(Selection("dirleg", "cpu-smoke", "dense", str(old)), f"{old}/dense", "tok/sec: 1,000")
        # the selection's tab follows the selection; the running leg's tab stays
        assert f"{new}/dense" not in panes.keys and f"{new}/moe_dropless" in panes.keys


class Bare(App):
    def compose(self):
        yield LogText(max_lines=100)


async def test_log_text_keeps_the_last_lines_and_their_matches():
    """Dropping old lines never renumbers the kept ones; matches and rows follow."""
    app = Bare()
    async with app.run_test(size=(60, 10)) as pilot:
        log = app.query_one(LogText)
        log.set_search("x")
        log.set_filter("keep")
        log.write_lines(
            [f"line {i} {'keep' if i % 3 == 0 else 'drop'} {'x' if i % 5 == 0 else ''}" for i in range(250)]
        )
        await pilot.pause()
        assert log.first == 150 and log.line_count == 100 and log.lines[0].startswith("line 150 ")
        assert log.matches == [n for n in range(150, 250) if n % 5 == 0]
        assert [r[0] for r in log._rows] == [n for n in range(150, 250) if n % 3 == 0]
        assert log.row_of(153) == 1 and log.row_of(151) is None and log.row_of(10) is None
        log.write_lines(
            ["\x1b]0;title\x07a \x1b[31mred\x1b[0m line\twith tab \u202e"]
        )  # from a file: printable
        assert log.lines[-1] == "a red line      with tab \\u202e" and log.first == 151
        assert log.next_match(-1) == 240  # the newest kept line with both


class BarePanes(App):
    def compose(self):
        yield LogPanes()


@pytest.mark.slow
async def test_a_tab_closed_while_it_is_being_opened_goes_cleanly():
    """The screen may open a leg's tab and close it again before Textual has added it (a leg
    that ends at once, a selection moved on): whatever the interleaving, no error, and the tabs
    left are exactly the last ones asked for, each with its lines."""
    for ticks in range(4):  # how far the first tab's addition got before it is closed
        await open_and_close(ticks)


async def open_and_close(ticks: int) -> None:
    app = BarePanes()
    async with app.run_test(size=(100, 20)) as pilot:
        panes = app.query_one(LogPanes)
        panes.sync([("d/a", "a", "d/a.log")])
        for _ in range(ticks):
            await asyncio.sleep(0)
        panes.sync([("d/b", "b", "d/b.log")])
        panes.append({"d/a": ["dropped"], "d/b": ["step 00001/00010 | loss: 9.000000"]})
        panes.select("d/b")
        panes.sync([])
        panes.sync([("d/b", "b", "d/b.log"), ("d/c", "c", "d/c.log")])
        panes.append({"d/b": ["step 00002/00010 | loss: 8.000000"], "d/c": ["c line"]})
        panes.select("d/c")
        await until(
            pilot,
            lambda: all(v.live for v in panes.views()) and panes.current_key() == "d/c",
            5,
            f"the tabs after {ticks} ticks",
        )
        await pilot.pause()
        assert panes.keys == ["d/b", "d/c"]
        assert len(panes.query("TabPane")) == 2 and len(panes.query("ContentTab")) == 2
        assert panes.view("d/c").log.lines == ["c line"]
        panes.select("d/b")
        await until(pilot, lambda: panes.view("d/b").log.line_count == 1, 5, "b's kept line")
    assert app.return_code in (0, None), ticks
