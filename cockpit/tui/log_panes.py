"""Log panes: a tab per running or selected leg, each a LogView following its log live."""

from __future__ import annotations

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
        self.opened: list[str] = []  # every key that had a tab (tests and the benchmark read it)

    def sync(self, tabs: list[tuple[str, str, str]]) -> None:
        """Show exactly these tabs: (key, title, log path), in order; keep the ones that stay."""
        wanted = {key for key, _, _ in tabs}
        for key in [k for k in self._ids if k not in wanted]:
            self._views.pop(key)
            self.remove_pane(self._ids.pop(key))
        for key, title, path in tabs:
            if key not in self._ids:
                self._seq += 1
                pane_id = f"log-{self._seq}"
                self._ids[key] = pane_id
                self.opened.append(key)
                view = self._views[key] = LogView(key, path, self.max_lines)
                # Content(...): a leg name is shown as written, never parsed as markup
                self.add_pane(TabPane(Content(title), view, id=pane_id))

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

    def select(self, key: str) -> None:
        if key in self._ids:
            self.active = self._ids[key]

    def cycle(self, step: int) -> None:
        ids = list(self._ids.values())
        if not ids:
            return
        i = ids.index(self.active) if self.active in ids else -1
        self.active = ids[(i + step) % len(ids)]
