"""Log panes: a tab per leg log the screen keeps open, each a LogView following its log live.

Which tabs are open is the screen's choice (main_screen.py: the running legs, the ended ones
until closed, the selection's, grouped by dir); this widget shows exactly those, in order, and
keeps the panes (their lines, scroll, search) of the tabs that stay. Its title names the dir of
the tab in front, its subtitle which tab of how many, and how many are out of sight beyond the
tab bar's edges (`[` `]` reach them)."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path

from textual.await_complete import AwaitComplete
from textual.content import Content
from textual.widgets import TabbedContent, TabPane, Tabs
from textual.widgets._tabbed_content import ContentTab

from cockpit.tui.log_view import MAX_LINES, LogView


class LogPanes(TabbedContent):
    """A TabbedContent whose panes are LogViews keyed by `exp_dir/leg`."""

    ALLOW_MAXIMIZE = True  # `m` on a log maximizes the panes with their tabs and status line

    def __init__(self, max_lines: int = MAX_LINES, **kwargs) -> None:
        super().__init__(**kwargs)
        self.max_lines = max_lines
        self._ids: dict[str, str] = {}  # key -> pane id
        self._views: dict[str, LogView] = {}  # key -> its pane's LogView (mounted or on its way)
        self._seq = 0
        self._titles: dict[str, str] = {}  # key -> its tab's title
        # Tabs are added and removed one after another, never overlapping: Textual's tabs go
        # wrong when they do (removing the active tab activates the neighbour it saw at the
        # call, which may be gone by the time the removal runs; a tab still being added has
        # no tab to remove yet).
        self._last: AwaitComplete | None = None  # the newest addition or removal: done, all are
        self.opened: list[str] = []  # every key that had a tab (tests and the benchmark read it)

    def sync(self, tabs: list[tuple[str, str, str]]) -> None:
        """Show exactly these tabs: (key, title, log path), in this order (a new tab goes in its
        place, before the next one that is there); keep the ones that stay."""
        order = [key for key, _, _ in tabs]
        wanted = set(order)
        for key in [k for k in self._ids if k not in wanted]:
            self._views.pop(key)
            self._titles.pop(key, None)
            self._then(partial(self.remove_pane, self._ids.pop(key)))
        for i, (key, title, path) in enumerate(tabs):
            if key not in self._ids:
                self._seq += 1
                pane_id = f"log-{self._seq}"
                before = next((self._ids[k] for k in order[i + 1 :] if k in self._ids), None)
                self._ids[key] = pane_id
                self.opened.append(key)
                view = self._views[key] = LogView(key, path, self.max_lines)
                # Content(...): a leg name is shown as written, never parsed as markup
                self._then(partial(self.add_pane, TabPane(Content(title), view, id=pane_id), before=before))
            elif self._titles.get(key) != title and self.is_mounted:
                try:
                    self.get_tab(self._ids[key]).label = Content(title)
                except Exception:  # the tab is still being added: it keeps its first title
                    continue
            self._titles[key] = title
        self._ids = {k: self._ids[k] for k in order}  # `[` `]` go in the order shown
        self.call_after_refresh(self.show_place)

    def _then(self, change: Callable[[], AwaitComplete]) -> None:
        """Add or remove a tab once the changes asked before it are done."""
        before = self._last

        async def run() -> None:
            if before is not None:
                await before
            await change()

        self._last = AwaitComplete(run())

    @property
    def settled(self) -> bool:
        """No tab is being added or removed."""
        return self._last is None or self._last.is_done

    def append(self, lines: dict[str, list[str]]) -> None:
        """New lines by key: each pane writes them, or keeps them (bounded) while hidden or paused."""
        self.mark_visible()
        for key, new in lines.items():
            v = self._views.get(key)
            if v is not None:
                v.append(new)

    def view(self, key: str) -> LogView | None:
        return self._views.get(key)

    def views(self) -> list[LogView]:
        return list(self._views.values())

    def mark_visible(self) -> None:
        """Tell each pane whether it is the active tab (only that one renders)."""
        for key, pane_id in self._ids.items():
            v = self._views[key]
            visible = pane_id == self.active
            if visible != v.visible:
                v.show_tab(visible)

    def _on_tabs_tab_activated(self, event: Tabs.TabActivated) -> None:
        """A tab closed before its activation message was handled (opened and closed at once):
        the stale message is dropped; TabbedContent would make the gone tab active and fail."""
        if not event.tab.is_attached:
            event.prevent_default()
            event.stop()

    def on_tabbed_content_tab_activated(self, event: TabbedContent.TabActivated) -> None:
        self.mark_visible()
        self.call_after_refresh(self.show_place)

    def show_place(self) -> None:
        """The pane's title names the dir of the tab in front; its subtitle says which tab of how
        many, how many are out of sight on either side of the tab bar, and the keys that reach them."""
        key = self.current_key()
        self.border_title = f"Logs: {Path(key).parent.name}" if key else "Logs"
        n = len(self._ids)
        if n == 0:
            self.border_subtitle = ""
            return
        left = right = 0
        bars = self.query("#tabs-scroll")
        if bars and self.is_mounted:
            bar = bars.first().region
            for tab in self.query(ContentTab):
                if tab.region.right > bar.right:
                    right += 1
                elif tab.region.x < bar.x:
                    left += 1
        at = list(self._ids).index(key) + 1 if key in self._ids else 0
        where = f"tab {at} of {n}" if at else f"{n} tabs"
        hidden = " ".join(x for x in (f"◂{left}" if left else "", f"{right}▸" if right else "") if x)
        self.border_subtitle = (
            f"{where}" + (f" ({hidden} out of sight)" if hidden else "") + "  [ ] switch" if n > 1 else ""
        )

    @property
    def keys(self) -> list[str]:
        return list(self._ids)

    def current_key(self) -> str | None:
        """The key of the active tab (None while none is, or the active one is being removed)."""
        return next((key for key, pane_id in self._ids.items() if pane_id == self.active), None)

    def current(self) -> LogView | None:
        key = self.current_key()
        return self._views[key] if key is not None else None

    def title(self, key: str) -> str | None:
        return self._titles.get(key)

    def select(self, key: str) -> None:
        """Bring a key's tab to the front; while tabs are being added or removed (removing one
        activates a neighbour), once they all are."""
        if key not in self._ids:
            return
        # a selection still waiting for its tab would come after this one and undo it
        self.workers.cancel_group(self, "select-tab")
        if self.settled:
            self.active = self._ids[key]
            return

        async def when_settled() -> None:
            while self._last is not None and not self._last.is_done:  # changes asked meanwhile too
                await self._last
            if key in self._ids:  # the id it has now: closed and opened again, it is a new tab
                self.active = self._ids[key]

        self.run_worker(when_settled, group="select-tab", exclusive=True)

    def cycle(self, step: int) -> None:
        ids = list(self._ids.values())
        if not ids:
            return
        i = ids.index(self.active) if self.active in ids else -1
        self.active = ids[(i + step) % len(ids)]
