"""One leg's log pane: its lines (log_text.py), following live, a find bar and a status line.

Lines are handed in by the screen (the collector follows the file off the UI thread). Scrolling up
pauses following: new lines wait (bounded), and the status line says how many; back at the
bottom, or `f`, writes them and follows again. Memory stays bounded for any log size: the pane
keeps `max_lines` lines, and the waiting buffer as many.

`/` and `&` open the find bar under the lines: `/` highlights a text (`n` / `N`: the next newer /
older line that has it), `&` shows only the lines that hold one (as `less` does). Each applies
as it is typed; enter keeps it and goes back to the lines, an empty text clears it, escape closes
the bar and keeps what was applied.
"""

from __future__ import annotations

from collections import deque

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.widgets import Input, Static

from cockpit.tui.log_text import LogText

MAX_LINES = 2000
FIND = {  # mode -> (the bar's prompt, its placeholder)
    "search": (
        "/",
        "search: text to highlight (any case); enter keeps it, n / N next / previous, esc closes",
    ),
    "filter": ("&", "filter: only lines holding this text (any case); empty shows every line, esc closes"),
}


class FindInput(Input):
    """The find bar: escape closes it (what was applied stays)."""

    BINDINGS = [Binding("escape", "close", "Close the find bar", show=False)]

    def action_close(self) -> None:
        pane = next((a for a in self.ancestors if isinstance(a, LogView)), None)
        if pane is not None:
            pane.close_find()


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
        self.find_mode: str | None = None  # the find bar's mode while it is open
        self.patterns: dict[str, str] = {"search": "", "filter": ""}  # what each mode applied

    def compose(self) -> ComposeResult:
        yield LogText(max_lines=self.max_lines, classes="log-lines")
        yield FindInput(classes="log-find", compact=True)
        yield Static(classes="log-status")

    @property
    def log(self) -> LogText:
        return self.query_one(LogText)

    @property
    def live(self) -> bool:
        """Mounted with its children: false before mount and while the pane is being removed
        (a closed tab's children go first; a resize or refresh callback may still arrive)."""
        return self.is_mounted and bool(self.query(LogText))

    def on_mount(self) -> None:
        bar = self.query(FindInput)
        if not bar:  # removed while it was being composed (its tab closed at once)
            return
        bar.first().display = False
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
        if not self.live:
            return False
        return not self.log.pinned

    def append(self, lines: list[str]) -> None:
        if not lines:
            return
        self.received += len(lines)
        if not self.live or self.paused or not self.visible:
            self.waiting.extend(lines)
            self.waiting_count += len(lines)
        else:
            self._write(lines)
        self.show_status()

    def flush(self) -> None:
        """Write the waiting lines if following, and keep to the bottom."""
        if not self.visible or not self.live:
            return
        log = self.log
        if not self.paused and not log.is_vertical_scroll_end:
            log.scroll_end(animate=False, x_axis=False)  # the pane grew or was resized since the last write
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
        log.write_lines(lines, scroll_end=True)
        if not log.size.height:  # not laid out yet: to the bottom after the first layout
            log.call_after_refresh(log.scroll_end, animate=False, x_axis=False)
        self.written += len(lines)

    def set_following(self, on: bool) -> None:
        self.following = on
        if on and self.live:
            self.log.pinned = True
            self.log.scroll_end(animate=False, x_axis=False)
        self.flush()

    # ------------------------------------------------------------------------------------------
    # find: search and filter

    def open_find(self, mode: str) -> None:
        """Show the find bar in `mode` ("search" or "filter"), holding what that mode applied."""
        self.find_mode = mode
        bar = self.query_one(FindInput)
        bar.placeholder = FIND[mode][1]
        bar.value = self.patterns[mode]
        bar.display = True
        bar.focus()
        self.show_status()

    def close_find(self) -> None:
        self.find_mode = None
        bar = self.query_one(FindInput)
        bar.display = False
        self.log.focus()
        self.show_status()

    def apply(self, mode: str, text: str) -> None:
        """Search for / filter by `text` (empty: clear it)."""
        self.patterns[mode] = text
        if mode == "search":
            self.log.set_search(text or None)
        else:
            self.log.set_filter(text or None)
        self.show_status()

    def on_input_changed(self, event: Input.Changed) -> None:
        event.stop()
        if self.find_mode is not None:
            self.apply(self.find_mode, event.value)

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        if self.find_mode is not None:
            self.apply(self.find_mode, event.value)
        self.close_find()

    def next_match(self, step: int) -> bool:
        """The next (+1) or previous (-1) match of the search; False when there is none."""
        found = self.log.next_match(step)
        self.show_status()
        return found is not None

    def set_wrap(self, on: bool) -> None:
        self.log.set_wrap(on)
        self.show_status()

    # ------------------------------------------------------------------------------------------

    def status_text(self) -> Text:
        """One line: following or paused, the search and the filter with their keys, wrap, the path."""
        text = Text(no_wrap=True, overflow="ellipsis")
        if self.paused:
            text.append(f"⏸ paused, {self.waiting_count} new", style="bold yellow")
            text.append(" (f / End: follow)", style="dim")
        else:
            text.append("● following", style="green")
        log = self.log
        if log.search:
            at, n = log.match_index()
            text.append(f"  / {self.patterns['search']!r}: ", style="bold")
            # no current match yet (the lines came after the search): how many, and the keys reach them
            text.append(
                f"{at}/{n} lines" if at else f"{n} lines" if n else "no match",
                style="bold yellow" if n else "bold red",
            )
            text.append("  n next, N previous", style="dim")
        if log.filter:
            text.append(
                f"  & {self.patterns['filter']!r}: {log.shown_count()} of {log.line_count} lines",
                style="bold magenta",
            )
        if log.wrap:
            text.append("  wrap", style="bold")
        if not (log.search or log.filter):
            text.append("  / search  & filter  w wrap  ←→ scroll  x close", style="dim")
        text.append(f"  {self.path}", style="dim")
        return text

    def show_status(self) -> None:
        if not self.live or not self.visible:
            return
        self.query_one(".log-status", Static).update(self.status_text(), layout=False)  # one line, always
