"""Log panes: a tab per leg log the screen keeps open, each a LogView following its log live.

Which tabs are open is the screen's choice (main_screen.py: the running legs, the ended ones
until closed, the selection's); this widget shows exactly those, in order, and keeps the panes
(their lines, scroll, search) of the tabs that stay."""

from __future__ import annotations

from textual.await_complete import AwaitComplete
from textual.content import Content
from textual.widgets import TabbedContent, TabPane

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
        self._pending: list[AwaitComplete] = []  # tabs being added or removed
        self.opened: list[str] = []  # every key that had a tab (tests and the benchmark read it)

    def sync(self, tabs: list[tuple[str, str, str]]) -> None:
        """Show exactly these tabs: (key, title, log path), in order; keep the ones that stay."""
        wanted = {key for key, _, _ in tabs}
        self._pending = [p for p in self._pending if not p.is_done]
        for key in [k for k in self._ids if k not in wanted]:
            self._views.pop(key)
            self._titles.pop(key, None)
            self._pending.append(self.remove_pane(self._ids.pop(key)))
        for key, title, path in tabs:
            if key not in self._ids:
                self._seq += 1
                pane_id = f"log-{self._seq}"
                self._ids[key] = pane_id
                self.opened.append(key)
                view = self._views[key] = LogView(key, path, self.max_lines)
                # Content(...): a leg name is shown as written, never parsed as markup
                self._pending.append(self.add_pane(TabPane(Content(title), view, id=pane_id)))
            elif self._titles.get(key) != title and self.is_mounted:
                try:
                    self.get_tab(self._ids[key]).label = Content(title)
                except Exception:  # the tab is still being added: it keeps its first title
                    continue
            self._titles[key] = title

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

    def current_key(self) -> str | None:
        v = self.current()
        return v.key if v is not None else None

    def title(self, key: str) -> str | None:
        return self._titles.get(key)

    def select(self, key: str) -> None:
        """Bring a key's tab to the front; a tab still being added (or another removed, which
        activates a neighbour) is brought there once that is done."""
        if key not in self._ids:
            return
        pending, self._pending = [p for p in self._pending if not p.is_done], []
        if not pending:
            # a selection still waiting for its tab would come after this one and undo it
            self.workers.cancel_group(self, "select-tab")
            self.active = self._ids[key]
            return

        async def when_added() -> None:
            for p in pending:
                await p
            if key in self._ids:
                self.active = self._ids[key]

        self.run_worker(when_added(), group="select-tab", exclusive=True)

    def cycle(self, step: int) -> None:
        ids = list(self._ids.values())
        if not ids:
            return
        i = ids.index(self.active) if self.active in ids else -1
        self.active = ids[(i + step) % len(ids)]
