"""The resume panel: completed work (do not re-run), what remains, the exact next command and
the safety rules; the live form of the seed's resume guide."""

from __future__ import annotations

from rich.text import Text
from textual.containers import VerticalScroll
from textual.widgets import Static

from cockpit.tui.state import ResumeView


class ResumeBox(VerticalScroll):
    """The panel's scrolling frame; `m` maximizes it to read the whole next command."""

    ALLOW_MAXIMIZE = True


class ResumePanel(Static):
    _last: tuple | None = None

    def show_error(self, error: str) -> None:
        """The registry could not be loaded: its file:line message instead of the state."""
        self._last = None
        self.update(Text(f"⚠ {error}\n\nFix the registry: the cockpit reloads it as soon as the file changes.",
                         style="bold red"))

    def show(self, resume: ResumeView, errors: tuple[str, ...] = ()) -> None:
        if (resume, errors) == self._last:
            return
        self._last = (resume, errors)
        out = Text()
        for e in errors:
            out.append(f"⚠ {e}\n", style="bold red")
        if resume.active:
            out.append("Running now\n", style="bold cyan")
            for line in resume.active:
                out.append(f"  ▶ {line}\n")
        out.append("Completed (do not re-run)\n", style="bold green")
        for line in resume.completed or ("nothing yet",):
            out.append(f"  ✔ {line}\n", style="" if resume.completed else "dim")
        out.append("Remaining\n", style="bold yellow")
        for line in resume.remaining or ("nothing: every leg is done",):
            out.append(f"  ○ {line}\n", style="" if resume.remaining else "dim")
        out.append("Next\n", style="bold cyan")
        if resume.next_command:
            out.append(f"  {resume.next_label}\n", style="bold")
            if resume.next_cockpit:
                out.append("  one key: select it, press l; or: ", style="dim")
                out.append(f"{resume.next_cockpit}\n")
            if resume.next_dir:
                out.append("  fresh dir: ", style="dim")
                out.append(f"{resume.next_dir}\n")
            out.append(resume.next_command + "\n", style="cyan")
        else:
            out.append("  no pending leg\n", style="dim")
        if resume.gpus:
            out.append("GPUs: ", style="bold")
            out.append(resume.gpus + "\n")
        out.append("Safety\n", style="bold red")
        for rule in resume.rules:
            out.append(f"  • {rule}\n")
        out.rstrip()
        self.update(out)
