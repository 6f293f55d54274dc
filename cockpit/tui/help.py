"""`?`: every key of the cockpit, read from the app's own bindings so the list cannot drift."""

from __future__ import annotations

from rich.table import Table
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Static


class HelpScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape,q,question_mark", "app.pop_screen", "Close")]

    def __init__(self, bindings: list[tuple[str, str]]) -> None:
        super().__init__()
        self.keys = bindings

    def compose(self) -> ComposeResult:
        table = Table(title="cockpit keys", show_header=False, box=None, padding=(0, 2))
        table.add_column(style="bold cyan", no_wrap=True)
        table.add_column()
        for key, what in self.keys:
            table.add_row(key, what)
        table.add_row("", "")
        table.add_row("ctrl+p", "command palette: every action above by name")
        table.add_row("", "Closing the cockpit never touches a leg: running legs go on.")
        with Vertical(id="help-box"):
            yield Static(table)
            yield Static("esc / ? closes", classes="dim")
