"""The lines of one log, as a scrolling view: follow, search, filter, wrap, sideways scroll.

The view keeps the last `max_lines` lines (memory stays bounded for any log) and draws only the
rows on screen. A row is a whole line, or with `wrap` on a piece of one as wide as the view.
Lines are numbered from the start of the pane (`first` is the number of the oldest kept one), so
dropping old lines never renumbers what the reader is looking at, and a cached row stays valid.

- **Follow.** The cockpit only ever scrolls a log down, so any upward move is the reader's (wheel,
  keys, scrollbar): that unpins; reaching the bottom again pins. `pinned` is a reactive the pane
  around it watches (log_view.py).
- **Search.** Every occurrence of the text (any case) is highlighted; the current match's line is
  shown reversed; `next_match(+1/-1)` moves to the next newer or older line that has it.
- **Filter.** Only the lines that hold the text are rows; the others are kept, and come back when
  the filter is cleared.
- **Wrap.** Off (the default), a row is a whole line and the view scrolls sideways: a step line is
  ~130 columns, its `total time` and `eta` at the right. On, long lines fold at the view's width.

Text comes from a log: it is made printable (safetext) once, when it arrives.
"""

from __future__ import annotations

import bisect
from collections import deque
from collections.abc import Iterable

from rich.cells import cell_len, chop_cells
from rich.style import Style
from rich.text import Text
from textual.cache import LRUCache
from textual.geometry import Size
from textual.reactive import var
from textual.scroll_view import ScrollView
from textual.selection import Selection
from textual.strip import Strip

from cockpit import safetext

MATCH = Style(bgcolor="yellow", color="black")
CURRENT = Style(bgcolor="dark_orange", color="black", bold=True)
CURRENT_LINE = Style(reverse=True)

Row = tuple[int, int, int]  # (line number, start, end): characters of the line this row shows


class LogText(ScrollView, can_focus=True):
    ALLOW_SELECT = True
    DEFAULT_CSS = """
    LogText {
        background: $surface;
        color: $text;
        overflow: scroll;
        &:focus { background-tint: $foreground 5%; }
    }
    """

    pinned: var[bool] = var(True)

    def __init__(self, max_lines: int = 2000, **kwargs) -> None:
        super().__init__(**kwargs)
        self.max_lines = max_lines
        self._lines: deque[str] = deque(maxlen=max_lines)
        self._widths: deque[int] = deque(maxlen=max_lines)
        self.first = 0  # the number of the oldest kept line
        self.wrap = False
        self.filter: str | None = None  # shown lines hold this (lower case)
        self.search: str | None = None  # highlighted (lower case)
        self.matches: list[int] = []  # numbers of the kept lines that hold `search`, ascending
        self.current: int | None = None  # the current match's line number
        # None: every kept line is one row (no filter, no wrap), the cheap common case
        self._rows: list[Row] | None = None
        self._wrap_width = 0  # the width the rows were folded at
        self._max_width = 0
        self._cache: LRUCache[tuple[int, int], Strip] = LRUCache(1024)
        self._adjusting = False  # a scroll the view makes itself (a filter, a wrap): no unpinning

    # ------------------------------------------------------------------------------------------
    # what the pane calls

    @property
    def lines(self) -> list[str]:
        """The kept lines (printable), oldest first."""
        return list(self._lines)

    @property
    def line_count(self) -> int:
        return len(self._lines)

    @property
    def row_count(self) -> int:
        return len(self._lines) if self._rows is None else len(self._rows)

    def write_lines(self, lines: Iterable[str], scroll_end: bool = True) -> None:
        new = [safetext.printable(x, newlines=False).expandtabs() for x in lines]
        if not new:
            return
        start = self.first + len(self._lines)  # the number of new[0]
        if len(new) > self.max_lines:  # more than the view keeps: the oldest are never kept
            start += len(new) - self.max_lines
            new = new[-self.max_lines :]
        self._lines.extend(new)
        widths = [cell_len(x) for x in new]
        self._widths.extend(widths)
        self._max_width = max(self._max_width, *widths)
        first = start + len(new) - len(self._lines)
        if first != self.first:  # old lines went
            self.first = first
            self._drop_before(first)
        if self.search:
            self.matches += [start + i for i, x in enumerate(new) if self.search in x.lower()]
        if self._rows is not None:
            for i, x in enumerate(new):
                self._rows += self._rows_of(start + i, x)
        self._resize()
        if scroll_end and self.pinned:
            self.scroll_end(animate=False, immediate=True, x_axis=False)
        else:
            self.refresh()

    def clear(self) -> None:
        self.first += len(self._lines)
        self._lines.clear()
        self._widths.clear()
        self.matches, self.current = [], None
        self._max_width = 0
        self._rebuild()

    def set_wrap(self, on: bool) -> None:
        self.wrap = on
        self._rebuild(keep=self.top_line())

    def set_filter(self, text: str | None) -> None:
        self.filter = text.lower() if text else None
        self._rebuild(keep=self.current if self.current is not None else self.top_line())

    def set_search(self, text: str | None) -> None:
        """Highlight `text`; the current match becomes the newest line that has it."""
        self.search = text.lower() if text else None
        self.matches = (
            [self.first + i for i, x in enumerate(self._lines) if self.search in x.lower()]
            if self.search
            else []
        )
        self.current = None
        self._cache.clear()
        self.refresh()
        if self.matches:
            self.next_match(-1, start=self.first + len(self._lines))

    def shown_count(self) -> int:
        """How many kept lines the filter lets through (all without one)."""
        if self.filter is None:
            return len(self._lines)
        return sum(self.filter in x.lower() for x in self._lines)

    def shown(self, number: int) -> bool:
        """Is this line a row (not filtered out)?"""
        return self.filter is None or self.filter in self._lines[number - self.first].lower()

    def next_match(self, step: int, start: int | None = None) -> int | None:
        """Move to the next (+1: newer) or previous (-1: older) shown line holding the search text,
        from `start` (default: the current match); scroll it into view. Its number, or None."""
        candidates = [n for n in self.matches if self.shown(n)]
        if not candidates:
            return None
        at = self.current if start is None else start
        if at is None:
            at = self.first + len(self._lines)
        if step > 0:
            i = bisect.bisect_right(candidates, at)
            found = candidates[i] if i < len(candidates) else candidates[0]  # wraps around
        else:
            i = bisect.bisect_left(candidates, at) - 1
            found = candidates[i] if i >= 0 else candidates[-1]
        self.current = found
        self._cache.clear()
        self.scroll_to_line(found)
        self.refresh()
        return found

    def match_index(self) -> tuple[int, int]:
        """(1-based position of the current match, number of matching shown lines)."""
        candidates = [n for n in self.matches if self.shown(n)]
        if self.current is None or self.current not in candidates:
            return 0, len(candidates)
        return candidates.index(self.current) + 1, len(candidates)

    def scroll_to_line(self, number: int) -> None:
        """Bring a line into view: a third down the view, and sideways to its first match."""
        y = self.row_of(number)
        if y is None:
            return
        height = max(1, self.scrollable_content_region.height)
        self.scroll_to(y=max(0, y - height // 3), animate=False, immediate=True)
        if not self.wrap and self.search:
            col = self._lines[number - self.first].lower().find(self.search)
            width = max(1, self.scrollable_content_region.width)
            if col >= 0 and not (self.scroll_x <= col and col + len(self.search) <= self.scroll_x + width):
                self.scroll_to(x=max(0, col - width // 3), animate=False, immediate=True)

    def row_of(self, number: int) -> int | None:
        """The first row of a line, or None when it is not shown."""
        if not self.first <= number < self.first + len(self._lines):
            return None
        if self._rows is None:
            return number - self.first
        i = bisect.bisect_left(self._rows, (number, -1, -1))
        return i if i < len(self._rows) and self._rows[i][0] == number else None

    def top_line(self) -> int | None:
        """The number of the line at the top of the view."""
        row = self._row(int(self.scroll_y))
        return row[0] if row is not None else None

    # ------------------------------------------------------------------------------------------
    # rows

    def _rows_of(self, number: int, line: str) -> list[Row]:
        if self.filter is not None and self.filter not in line.lower():
            return []
        if not self.wrap or self._wrap_width <= 0 or self._widths[number - self.first] <= self._wrap_width:
            return [(number, 0, len(line))]
        out, pos = [], 0
        for piece in chop_cells(line, self._wrap_width):
            out.append((number, pos, pos + len(piece)))
            pos += len(piece)
        return out

    def _rebuild(self, keep: int | None = None) -> None:
        """Rows anew (a filter, wrap, a width); `keep` the line at the top of the view there."""
        self._cache.clear()
        if self.filter is None and not self.wrap:
            self._rows = None
        else:
            self._wrap_width = self.scrollable_content_region.width
            self._rows = [r for i, x in enumerate(self._lines) for r in self._rows_of(self.first + i, x)]
        self._adjusting = True
        try:
            self._resize()
            if self.pinned:
                self.scroll_end(animate=False, immediate=True, x_axis=False)
            elif keep is not None and (y := self.row_of(keep)) is not None:
                self.scroll_to(y=y, animate=False, immediate=True)
        finally:
            self._adjusting = False
        self.refresh()

    def _drop_before(self, first: int) -> None:
        if self._rows is not None:
            del self._rows[: bisect.bisect_left(self._rows, (first, -1, -1))]
        if self.matches and self.matches[0] < first:
            del self.matches[: bisect.bisect_left(self.matches, first)]
        if self.current is not None and self.current < first:
            self.current = None

    def _resize(self) -> None:
        width = self._wrap_width if self.wrap else self._max_width
        self.virtual_size = Size(width, self.row_count)

    def _row(self, y: int) -> Row | None:
        if y < 0:
            return None
        if self._rows is None:
            if y >= len(self._lines):
                return None
            return (self.first + y, 0, len(self._lines[y]))
        return self._rows[y] if y < len(self._rows) else None

    def on_resize(self) -> None:
        if self.wrap and self.scrollable_content_region.width != self._wrap_width:
            self._rebuild(keep=self.top_line())

    # ------------------------------------------------------------------------------------------
    # following

    def watch_scroll_y(self, old_value: float, new_value: float) -> None:
        super().watch_scroll_y(old_value, new_value)
        if self._adjusting:
            return
        if new_value < old_value:
            self.pinned = False
        if new_value >= self.max_scroll_y:
            self.pinned = True

    # ------------------------------------------------------------------------------------------
    # drawing

    def render_line(self, y: int) -> Strip:
        scroll_x, scroll_y = self.scroll_offset
        width = self.size.width
        style = self.rich_style
        row_y = scroll_y + y
        row = self._row(row_y)
        if row is None:
            return Strip.blank(width, style)
        strip = self._row_strip(row, row_y, style)
        return strip.crop_extend(scroll_x, scroll_x + width, style).apply_offsets(scroll_x, row_y)

    def _row_strip(self, row: Row, row_y: int, style: Style) -> Strip:
        selection = self.text_selection
        key = (row[0], row[1])
        if selection is None and key in self._cache:
            return self._cache[key]
        number, start, end = row
        line = self._lines[number - self.first]
        piece = line[start:end]
        text = Text(piece, no_wrap=True)
        text.stylize(style)
        if self.search:
            if number == self.current:
                text.stylize(CURRENT_LINE)
            low, n, at = line.lower(), len(self.search), 0
            while (at := low.find(self.search, at)) >= 0:
                a, b = max(at, start), min(at + n, end)
                if a < b:
                    text.stylize(CURRENT if number == self.current else MATCH, a - start, b - start)
                at += max(1, n)
        if selection is not None and (span := selection.get_span(row_y)) is not None:
            a, b = span
            text.stylize(
                self.screen.get_component_rich_style("screen--selection"), a, len(piece) if b == -1 else b
            )
        strip = Strip(text.render(self.app.console), cell_len(piece))
        if selection is None:
            self._cache[key] = strip
        return strip

    def get_selection(self, selection: Selection) -> tuple[str, str] | None:
        rows = (self._row(y) for y in range(self.row_count))
        text = "\n".join(self._lines[n - self.first][a:b] for n, a, b in filter(None, rows))
        return selection.extract(text), "\n"

    def selection_updated(self, selection: Selection | None) -> None:
        self._cache.clear()
        self.refresh()
