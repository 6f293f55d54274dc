"""The top line: project, git branch (warned when not the registry's), training state, GPUs."""

from __future__ import annotations

from rich.text import Text
from textual.reactive import reactive
from textual.widgets import Static

from cockpit.tui.state import Headline


class CockpitHeader(Static):
    """Renders a Headline, or the registry's error while there is none; one line, always."""

    headline: reactive[Headline | None] = reactive(None)
    error: reactive[str | None] = reactive(None)

    def render(self) -> Text:
        h = self.headline
        text = Text(no_wrap=True, overflow="ellipsis")
        if h is None:
            text.append(" cockpit ", style="bold reverse")
            text.append("  " + (self.error or "loading the registry..."), style="bold red" if self.error else "dim")
            return text
        text.append(f" {h.project} ", style="bold reverse")
        text.append("  branch ")
        if h.branch is None:
            text.append("(not a git checkout)", style="dim")
        else:
            ok = h.expected_branch is None or h.branch == h.expected_branch
            text.append(h.branch, style="bold" if ok else "bold yellow")
            if not ok:
                text.append(f" ⚠ expected {h.expected_branch}", style="bold yellow")
        text.append("  │  ")
        busy = "running" in h.training and not h.training.startswith("nothing")
        text.append(h.training, style="bold green" if busy else "bold")
        text.append("  │  ")
        text.append(h.gpus or "GPUs: sampling...", style="bold")
        if h.problems:
            text.append(f"  │  ⚠ {h.problems} problem(s): see the resume panel", style="bold red")
        return text
