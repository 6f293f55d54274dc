"""Ask for a path, prefilled: where `g` writes the resume guide.

Enter writes there, escape cancels; the buttons say so. The screen answers the path typed
(`~` expanded by the writer), or None when cancelled.
"""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.content import Content
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Static


class PathPrompt(ModalScreen[str | None]):
    BINDINGS = [Binding("escape", "cancel", "Cancel", show=False)]

    def __init__(self, title: str, value: str, note: str = "", ok_label: str = "Write") -> None:
        super().__init__()
        self.title_text = title
        self.value = value
        self.note = note
        self.ok_label = ok_label

    def compose(self) -> ComposeResult:
        with Vertical(id="prompt-box"):
            yield Static(Text(self.title_text, style="bold"), id="prompt-title")
            yield Input(self.value, id="prompt-input", select_on_focus=False)
            if self.note:
                yield Static(Text(self.note, style="dim"), id="prompt-note")
            with Horizontal(id="prompt-buttons"):
                # plain Content: markup would read `[enter]` as a tag and drop it
                yield Button(Content(f"{self.ok_label} [enter]"), id="prompt-ok", variant="primary")
                yield Button(Content("Cancel [esc]"), id="prompt-cancel")

    def on_mount(self) -> None:
        field = self.query_one(Input)
        field.focus()
        field.cursor_position = len(field.value)

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self.dismiss(event.value.strip() or None)

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(self.query_one(Input).value.strip() or None if event.button.id == "prompt-ok" else None)

    def action_cancel(self) -> None:
        self.dismiss(None)
