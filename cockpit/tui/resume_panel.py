"""The resume panel: completed work (do not re-run), what remains, the exact next command and
the safety rules; the live form of the resume guide that `cockpit resume` writes."""

from __future__ import annotations

from rich.text import Text
from textual.reactive import reactive
from textual.widgets import Static

from cockpit.tui.state import ResumeView


class ResumePanel(Static):
    """Renders a ResumeView and the problems found computing it; or, while the registry cannot
    be loaded, its file:line message. Its height follows the text (the frame around it scrolls)."""

    resume: reactive[ResumeView | None] = reactive(None, layout=True)
    problems: reactive[tuple[str, ...]] = reactive((), layout=True)
    registry_error: reactive[str | None] = reactive(None, layout=True)

    def render(self) -> Text:
        if self.registry_error:
            return Text(f"⚠ {self.registry_error}\n\nFix the registry: the cockpit reloads it as soon as the "
                        "file changes.", style="bold red")
        resume = self.resume
        if resume is None:
            return Text()
        out = Text()
        for e in self.problems:
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
        return out
