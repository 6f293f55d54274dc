"""A Log that knows whether its reader is at the bottom."""

from __future__ import annotations

from textual.reactive import var
from textual.widgets import Log


class FollowLog(Log):
    """The cockpit only ever scrolls a log down, so any upward move of scroll_y is the reader's
    (wheel, keys, scrollbar): that unpins. Reaching the bottom again pins. `pinned` is a reactive:
    the pane around it watches it to write the lines that waited meanwhile."""

    pinned: var[bool] = var(True)

    def watch_scroll_y(self, old_value: float, new_value: float) -> None:
        super().watch_scroll_y(old_value, new_value)
        if new_value < old_value:
            self.pinned = False
        if new_value >= self.max_scroll_y:
            self.pinned = True
