"""The top line: project, git branch (warned when not the registry's), training state, GPUs."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

from cockpit.tui.state import CockpitView


class CockpitHeader(Static):
    """Renders a CockpitView's headline; holds nothing of its own."""

    _last: tuple | None = None

    def show(self, view: CockpitView | None, error: str | None = None) -> None:
        key = (error,) if view is None else (view.project, view.branch, view.expected_branch, view.training,
                                             view.gpu.summary if view.gpu else None, view.errors)
        if key == self._last:
            return
        self._last = key
        text = Text(no_wrap=True, overflow="ellipsis")
        if view is None:
            text.append(" cockpit ", style="bold reverse")
            text.append("  " + (error or "loading the registry..."), style="bold red" if error else "dim")
            self.update(text, layout=False)  # one line, always
            return
        text.append(f" {view.project} ", style="bold reverse")
        text.append("  branch ")
        if view.branch is None:
            text.append("(not a git checkout)", style="dim")
        else:
            ok = view.expected_branch is None or view.branch == view.expected_branch
            text.append(view.branch, style="bold" if ok else "bold yellow")
            if not ok:
                text.append(f" ⚠ expected {view.expected_branch}", style="bold yellow")
        text.append("  │  training ")
        text.append(view.training, style="bold green" if "running" in view.training else "bold")
        text.append("  │  ")
        text.append(view.gpu.summary if view.gpu else "GPUs: sampling...", style="bold")
        if view.errors:
            text.append(f"  │  ⚠ {len(view.errors)} problem(s): see the resume panel", style="bold red")
        self.update(text, layout=False)  # one line, always
