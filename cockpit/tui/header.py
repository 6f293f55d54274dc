"""The top line: project, git branch (warned when not the registry's), training state, GPUs."""

from __future__ import annotations

from rich.cells import cell_len
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
        if h is None:
            text = Text(no_wrap=True, overflow="ellipsis")
            text.append(" cockpit ", style="bold reverse")
            text.append(
                "  " + (self.error or "loading the registry..."), style="bold red" if self.error else "dim"
            )
            return text
        return headline_text(h, self.size.width)


def headline_text(h: Headline, width: int = 0) -> Text:
    """The top line. When it is wider than `width` (0: no limit), the problem hint shortens to its
    count, then the training state drops its trailing clauses ("nothing running, 4 legs to run,
    1 of them not here" -> "nothing running, 4 legs to run…"), so the GPU state after it stays in
    view; the state and its count (the first two clauses) are never cut."""
    problems = f"  │  ⚠ {h.problems} problem(s): see the resume panel" if h.problems else ""
    training = h.training
    if width:
        rest = _line(h, "", problems).cell_len
        if rest + cell_len(training) > width and problems:
            problems = f"  │  ⚠ {h.problems} problem(s)"
            rest = _line(h, "", problems).cell_len
        clauses = training.split(", ")
        kept = len(clauses)
        while kept > 2 and rest + cell_len(", ".join(clauses[:kept])) + 1 > width:
            kept -= 1
        if kept < len(clauses):
            training = ", ".join(clauses[:kept]) + "…"
    text = _line(h, training, problems)
    text.no_wrap, text.overflow = True, "ellipsis"
    return text


def _line(h: Headline, training: str, problems: str) -> Text:
    text = Text()
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
    text.append(training, style="bold green" if h.running else "bold")
    text.append("  │  ")
    text.append(h.gpus or "GPUs: sampling...", style="bold")
    text.append(problems, style="bold red")
    return text
