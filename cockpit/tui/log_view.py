"""One leg's log pane: its lines, following live, and a status line.

Lines are handed in by the screen (the collector follows the file off the UI thread). Scrolling up
pauses following: new lines wait (bounded), and the status line says how many; back at the
bottom, or `f`, writes them and follows again. Memory stays bounded for any log size: the pane
keeps `max_lines` lines, and the waiting buffer as many.
"""

from __future__ import annotations

from collections import deque

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import Static

from cockpit.tui.follow_log import FollowLog

MAX_LINES = 2000


class LogView(Vertical):
    def __init__(self, key: str, path: str, max_lines: int = MAX_LINES, **kwargs) -> None:
        super().__init__(**kwargs)
        self.key = key
        self.path = path
        self.max_lines = max_lines
        self.following = True
        self.waiting: deque[str] = deque(maxlen=max_lines)
        self.waiting_count = 0  # lines that arrived while paused (some may have left `waiting`)
        self.written = 0
        self.received = 0  # every line handed to this pane
        self.visible = True  # the active tab; a hidden one keeps its lines (bounded) until shown

    def compose(self) -> ComposeResult:
        yield FollowLog(max_lines=self.max_lines, auto_scroll=False, highlight=False, classes="log-lines")
        yield Static(classes="log-status")

    @property
    def log(self) -> FollowLog:
        return self.query_one(FollowLog)

    def on_mount(self) -> None:
        # Back at the bottom (the reader scrolled down): the waiting lines are written at once.
        self.watch(self.log, "pinned", lambda _: self.flush(), init=False)
        self.flush()

    def on_resize(self) -> None:
        """A pane that grew or shrank keeps its last line in view while following (after the
        log inside it has its new size)."""
        self.call_after_refresh(self.flush)

    def show_tab(self, visible: bool) -> None:
        """Hidden panes do no rendering work: their lines wait (bounded) and are written on show."""
        self.visible = visible
        if visible:
            self.flush()

    @property
    def paused(self) -> bool:
        """Not following: switched off, or the reader scrolled away from the bottom."""
        if not self.following:
            return True
        if not self.is_mounted:
            return False
        return not self.log.pinned

    def append(self, lines: list[str]) -> None:
        if not lines:
            return
        self.received += len(lines)
        if not self.is_mounted or self.paused or not self.visible:
            self.waiting.extend(lines)
            self.waiting_count += len(lines)
        else:
            self._write(lines)
        self.show_status()

    def flush(self) -> None:
        """Write the waiting lines if following, and keep to the bottom."""
        if not self.visible or not self.is_mounted:
            return
        if not self.paused and not self.log.is_vertical_scroll_end:
            self.log.scroll_end(animate=False)  # the pane grew or was resized since the last write
        if self.waiting_count and not self.paused:
            skipped = self.waiting_count - len(self.waiting)
            lines = list(self.waiting)
            if skipped > 0:
                lines.insert(0, f"... {skipped} lines not shown (pane keeps the last {self.max_lines}) ...")
            self.waiting.clear()
            self.waiting_count = 0
            self._write(lines)
        self.show_status()

    def _write(self, lines: list[str]) -> None:
        log = self.log
        if log.size.height:  # laid out: scroll in the same frame as the write
            log.write_lines(lines, scroll_end=True)
        else:  # not sized yet: scroll after the first layout
            log.write_lines(lines, scroll_end=False)
            log.scroll_end(animate=False)
        self.written += len(lines)

    def set_following(self, on: bool) -> None:
        self.following = on
        if on and self.is_mounted:
            self.log.pinned = True
            self.log.scroll_end(animate=False)
        self.flush()

    def show_status(self) -> None:
        if not self.is_mounted or not self.visible:
            return
        status = self.query_one(".log-status", Static)
        text = Text(no_wrap=True, overflow="ellipsis")
        if self.paused:
            text.append(f"⏸ paused: {self.waiting_count} new lines waiting", style="bold yellow")
            text.append("  (f or End: follow)", style="dim")
        else:
            text.append("● following", style="green")
        text.append(f"  {self.path}", style="dim")
        status.update(text, layout=False)  # one line, always
