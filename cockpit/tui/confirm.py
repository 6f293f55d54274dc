"""The confirmation screen: the exact command(s) and the fresh dir, before anything starts or
stops. A done leg needs the explicit re-run key; a plain `y` is not enough. A second choice
(`Continue in dir [c]`) may stand beside the first: it answers ALT.

Every button names its key (`Launch [y]`, `Re-run [R]`, `Cancel [n/esc]`). Labels are built as
plain Content, never parsed as markup, which would read `[y]` as a style tag and drop it."""

from __future__ import annotations

from rich.text import Text
from textual import events
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.content import Content
from textual.screen import ModalScreen
from textual.widgets import Button, Static

CANCEL_KEYS = "[n/esc]"
ALT = "alt"  # the answer of the second choice


class ConfirmScreen(ModalScreen[bool | str]):
    BINDINGS = [
        Binding("escape,n", "answer(False)", "Cancel"),
    ]

    def __init__(self, title: str, body: Text | str, confirm_label: str = "Launch", confirm_key: str = "y",
                 danger: bool = False, alt_label: str | None = None, alt_key: str | None = None) -> None:
        super().__init__()
        self.alt_label = alt_label
        self.alt_key = alt_key
        self.title_text = title
        self.body = body
        self.confirm_label = confirm_label
        self.confirm_key = confirm_key
        self.danger = danger

    def compose(self) -> ComposeResult:
        with Vertical(id="confirm-box", classes="danger" if self.danger else ""):
            yield Static(Text(self.title_text, style="bold"), id="confirm-title")
            with VerticalScroll(id="confirm-body"):
                yield Static(self.body)
            with Horizontal(id="confirm-buttons"):
                yield Button(Content(f"{self.confirm_label} [{self.confirm_key}]"), id="confirm-yes",
                             variant="error" if self.danger else "primary")
                if self.alt_label and self.alt_key:
                    yield Button(Content(f"{self.alt_label} [{self.alt_key}]"), id="confirm-alt")
                yield Button(Content(f"Cancel {CANCEL_KEYS}"), id="confirm-no")

    def on_mount(self) -> None:
        self.query_one("#confirm-no", Button).focus()

    def on_key(self, event: events.Key) -> None:
        if event.key == self.confirm_key:
            event.stop()
            self.dismiss(True)
        elif self.alt_key and event.key == self.alt_key:
            event.stop()
            self.dismiss(ALT)
        elif event.key == "y":  # a done leg: the reflexive `y` does not re-run it
            event.stop()
            self.notify(f"this needs an explicit [{self.confirm_key}] ({self.confirm_label}); [n/esc] cancels",
                        severity="warning")

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(ALT if event.button.id == "confirm-alt" else event.button.id == "confirm-yes")

    def action_answer(self, yes: bool) -> None:
        self.dismiss(yes)
