"""Log panes: a tab per running or selected leg, each following its log live.

Lines arrive from a worker (the app polls `logs.LogFollower` off the UI thread) and are written
here. Scrolling up pauses following: new lines wait (bounded), and the pane says how many; back
at the bottom, or `f`, writes them and follows again. Memory stays bounded for any log size: the
pane keeps `max_lines` lines, and the waiting buffer as many.
"""

from __future__ import annotations

from collections import deque

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.content import Content
from textual.widgets import Log, Static, TabbedContent, TabPane

MAX_LINES = 2000


class FollowLog(Log):
    """A Log that knows whether its reader is at the bottom.

    The app only ever scrolls down, so any upward move of scroll_y is the reader's (wheel, keys,
    scrollbar): that unpins. Reaching the bottom again pins."""

    pinned = True

    def watch_scroll_y(self, old_value: float, new_value: float) -> None:
        super().watch_scroll_y(old_value, new_value)
        if new_value < old_value:
            self.pinned = False
        if new_value >= self.max_scroll_y:
            self.pinned = True


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
        self.flush()

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
        """Write the waiting lines if following, and keep to the bottom (called on each UI tick)."""
        if not self.visible:
            return
        if self.is_mounted and not self.paused and not self.log.is_vertical_scroll_end:
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


class LogPanes(TabbedContent):
    """A TabbedContent whose panes are LogViews keyed by `exp_dir/leg`."""

    ALLOW_MAXIMIZE = True  # `m` on a log maximizes the panes with their tabs and status line

    def __init__(self, max_lines: int = MAX_LINES, **kwargs) -> None:
        super().__init__(**kwargs)
        self.max_lines = max_lines
        self._ids: dict[str, str] = {}  # key -> pane id
        self._seq = 0
        self.opened: list[str] = []  # every key that had a tab (tests and the benchmark read it)

    def sync(self, tabs: list[tuple[str, str, str]]) -> None:
        """Show exactly these tabs: (key, title, log path), in order; keep the ones that stay."""
        wanted = {key for key, _, _ in tabs}
        for key in [k for k in self._ids if k not in wanted]:
            self.remove_pane(self._ids.pop(key))
        for key, title, path in tabs:
            if key not in self._ids:
                self._seq += 1
                pane_id = f"log-{self._seq}"
                self._ids[key] = pane_id
                self.opened.append(key)
                # Content(...): a leg name is shown as written, never parsed as markup
                self.add_pane(TabPane(Content(title), LogView(key, path, self.max_lines), id=pane_id))

    def view(self, key: str) -> LogView | None:
        pane_id = self._ids.get(key)
        if pane_id is None:
            return None
        try:
            return self.get_pane(pane_id).query_one(LogView)
        except Exception:  # a pane being mounted or removed this tick
            return None

    def views(self) -> list[LogView]:
        return [v for v in (self.view(k) for k in self._ids) if v is not None]

    def mark_visible(self) -> None:
        """Tell each pane whether it is the active tab (only that one renders)."""
        for key, pane_id in self._ids.items():
            v = self.view(key)
            if v is not None:
                visible = pane_id == self.active
                if visible != v.visible:
                    v.show_tab(visible)

    def on_tabbed_content_tab_activated(self, event: TabbedContent.TabActivated) -> None:
        self.mark_visible()

    @property
    def keys(self) -> list[str]:
        return list(self._ids)

    def current(self) -> LogView | None:
        pane = self.active_pane
        if pane is None:
            return None
        found = pane.query(LogView)
        return found.first() if found else None

    def select(self, key: str) -> None:
        if key in self._ids:
            self.active = self._ids[key]

    def cycle(self, step: int) -> None:
        ids = list(self._ids.values())
        if not ids:
            return
        i = ids.index(self.active) if self.active in ids else -1
        self.active = ids[(i + step) % len(ids)]
