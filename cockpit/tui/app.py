"""The cockpit: a Textual app over the registry, the experiment dirs, the logs and the GPUs.

The app itself is thin: it opens the main screen (main_screen.py: the layout, the keys, the
collector worker), keeps every notification it showed, and says on quitting that running legs
go on. Closing the app never touches a leg: the supervisors are detached processes.
"""

from __future__ import annotations

import datetime as dt
from collections import deque
from collections.abc import Callable
from pathlib import Path

from textual.app import App
from textual.screen import Screen

from cockpit import registry as reg
from cockpit import safetext
from cockpit.tui.build import Sampler
from cockpit.tui.collector import Collector
from cockpit.tui.main_screen import MainScreen


class CockpitApp(App[None]):
    CSS_PATH = "cockpit.tcss"
    TITLE = "cockpit"

    def __init__(
        self,
        registry_path: Path | str = reg.DEFAULT_REGISTRY,
        *,
        sampler: Sampler | None = None,
        branch: Callable[[], str | None] | str | None = None,
        clock: Callable[[], dt.datetime] | None = None,
        refresh_s: float = 0.5,
        poll_s: float = 0.25,
        max_log_lines: int = 2000,
    ):
        """`sampler`, `branch` and `clock` stand in for NVML, git and the time (tests);
        `refresh_s`: the most often the screen gets a new view; `poll_s`: how often logs are read."""
        super().__init__()
        self.main_screen = MainScreen(
            Collector(
                registry_path, sampler=sampler, branch=branch, clock=clock, max_log_lines=max_log_lines
            ),
            poll_s=poll_s,
            refresh_s=refresh_s,
            max_log_lines=max_log_lines,
        )
        self.quit_message: str | None = None
        self.notes: deque[tuple[str, str]] = deque(maxlen=200)  # (title, message) of every notification

    def get_default_screen(self) -> Screen:
        return self.main_screen

    def notify(self, message: str, *, title: str = "", **kwargs) -> None:
        """Textual's notification, also kept in `notes` (a toast expires; the tests read them).
        Its text may come from a file (a note, an error line, a dir's name): made printable here."""
        message, title = safetext.printable(message), safetext.printable(title, newlines=False)
        self.notes.append((title, message))
        # Never markup, whoever asks (a widget's notify passes markup=True): paths, error text and
        # the keys a message names (`[R]`, `[y]`) are brackets that markup would swallow.
        kwargs["markup"] = False
        super().notify(message, title=title, **kwargs)

    def action_quit(self) -> None:
        """Quit from anywhere (q, ctrl+q, the command palette), saying what goes on running."""
        self.quit_message = self.main_screen.closing_line()
        self.exit(message=self.quit_message)
