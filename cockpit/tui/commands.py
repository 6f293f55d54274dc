"""The command palette's entries for a screen's keys: its BINDINGS, the one list of keys.

Each binding is offered by its description, with its tooltip and key as help; choosing one runs
the binding's action, exactly as the key would. A binding whose description Textual's own list
already has ("Keys", "Quit") is not offered twice. The palette reads help as markup: the help is
escaped, so a tooltip's `[y]` shows as written instead of vanishing as a style tag.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial

from textual.binding import Binding
from textual.command import DiscoveryHit, Hit, Hits, Provider


def escape(text: str) -> str:
    """Text the palette shows as written: every `[` escaped (Textual's own escape leaves `[R]`,
    which its markup still takes for a tag)."""
    return text.replace("[", "\\[")


class BindingCommands(Provider):
    def _commands(self) -> Iterator[tuple[str, str, partial]]:
        screen, app = self.screen, self.app
        taken = {command.title for command in app.get_system_commands(screen)}
        for b in screen.BINDINGS:
            if not isinstance(b, Binding) or b.system or b.description in taken:
                continue
            help_text = (
                f"{b.tooltip} (key: {app.get_key_display(b)})"
                if b.tooltip
                else f"key: {app.get_key_display(b)}"
            )
            yield b.description, escape(help_text), partial(screen.run_action, b.action)

    async def discover(self) -> Hits:
        for title, help_text, run in self._commands():
            yield DiscoveryHit(title, run, help=help_text)

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for title, help_text, run in self._commands():
            score = matcher.match(title)
            if score > 0:
                yield Hit(score, matcher.highlight(title), run, help=help_text)
