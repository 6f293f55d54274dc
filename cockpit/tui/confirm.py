"""The confirmation screen: the exact command(s) and the fresh dir, before anything starts or
stops. A done leg needs the explicit re-run key; a plain `y` is not enough.

A confirmation offers one or more choices, each a button that names its key (`Launch [y]`,
`Re-run [R]`), then `Cancel [n/esc]`; it answers the value of the choice taken, None when
cancelled. The buttons sit below the scrolling body, never inside it: however long the list of
commands, they stay on screen (the body gets the height the terminal has left). Labels are built
as plain Content, never parsed as markup, which would read `[y]` as a style tag and drop it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from rich.text import Text
from textual import events
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.content import Content
from textual.screen import ModalScreen
from textual.widgets import Button, Static

CANCEL_KEYS = "[n/esc]"
BOX_HEIGHT = 0.9  # of the terminal, as the stylesheet's #confirm-box max-height says


@dataclass(frozen=True)
class Choice:
    """One way to answer: a button `label [key]`, and the value the screen answers with."""

    label: str
    key: str
    value: str


class ConfirmScreen(ModalScreen[str | None]):
    BINDINGS = [
        Binding("escape,n", "answer(None)", "Cancel"),
    ]

    def __init__(
        self,
        title: str,
        body: Text | str,
        confirm_label: str = "Launch",
        confirm_key: str = "y",
        danger: bool = False,
        more: Sequence[Choice] = (),
    ) -> None:
        """The first choice is `confirm_label [confirm_key]`, answering "yes"; `more` adds others."""
        super().__init__()
        self.title_text = title
        self.body = body
        self.choices = (Choice(confirm_label, confirm_key, "yes"), *more)
        self.danger = danger

    @property
    def confirm_key(self) -> str:
        return self.choices[0].key

    @property
    def confirm_label(self) -> str:
        return self.choices[0].label

    def compose(self) -> ComposeResult:
        with Vertical(id="confirm-box", classes="danger" if self.danger else ""):
            yield Static(Text(self.title_text, style="bold"), id="confirm-title")
            with VerticalScroll(id="confirm-body"):
                yield Static(self.body)
            with Horizontal(id="confirm-buttons"):
                for i, c in enumerate(self.choices):
                    yield Button(
                        Content(f"{c.label} [{c.key}]"),
                        id="confirm-yes" if i == 0 else f"confirm-{i}",
                        variant="error" if self.danger else "primary" if i == 0 else "default",
                    )
                yield Button(Content(f"Cancel {CANCEL_KEYS}"), id="confirm-no")

    def on_mount(self) -> None:
        self.query_one("#confirm-no", Button).focus()
        self.call_after_refresh(self.fit)

    def on_resize(self, event: events.Resize) -> None:
        self.call_after_refresh(self.fit)

    def fit(self) -> None:
        """The body's height: what the box may have (its share of the terminal) less its frame, the
        title and the buttons, so the buttons are always on screen and the body scrolls."""
        box = self.query_one("#confirm-box")
        title, buttons = self.query_one("#confirm-title"), self.query_one("#confirm-buttons")
        frame = box.outer_size.height - box.content_region.height  # border and padding
        taken = sum(
            w.outer_size.height + w.styles.margin.top + w.styles.margin.bottom for w in (title, buttons)
        )
        room = int(self.size.height * BOX_HEIGHT) - frame - taken
        self.query_one("#confirm-body").styles.max_height = max(3, room)

    def on_key(self, event: events.Key) -> None:
        choice = next((c for c in self.choices if c.key == event.key), None)
        if choice is not None:
            event.stop()
            self.dismiss(choice.value)
        elif event.key == "y":  # a done leg: the reflexive `y` does not re-run it
            event.stop()
            self.notify(
                f"this needs an explicit [{self.confirm_key}] ({self.confirm_label}); [n/esc] cancels",
                severity="warning",
            )

    def on_button_pressed(self, event: Button.Pressed) -> None:
        ids = {("confirm-yes" if i == 0 else f"confirm-{i}"): c.value for i, c in enumerate(self.choices)}
        self.dismiss(ids.get(event.button.id or ""))

    def action_answer(self, value: str | None) -> None:
        self.dismiss(value)
