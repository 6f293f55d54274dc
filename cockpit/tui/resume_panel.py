"""The resume panel: completed work (do not re-run), what remains, the exact next command and
the safety rules; the live form of the resume guide that `cockpit resume` writes.

Prose wraps at the panel's width; the next command never does. It is laid out as the guide writes
it (a line per flag, ` \\` continuations between tokens) and each of its lines is shown whole: a
line wider than the panel (the fresh dir's `EXP_DIR="...$(date +%Y%m%d_%H%M%S)_..."`) scrolls
sideways in its own strip, so what is copied from the screen pastes and runs. `c` copies it.
"""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import ScrollableContainer, VerticalScroll
from textual.reactive import reactive
from textual.widgets import Static

from cockpit.tui.state import ResumeView


class ResumePanel(Static):
    """One part of the panel: `state` (problems, running, completed, remaining, the next leg) or
    `rules` (GPUs, safety). It renders a ResumeView and the problems found computing it; or, while
    the registry cannot be loaded, its file:line message. Its height follows the text."""

    resume: reactive[ResumeView | None] = reactive(None, layout=True)
    problems: reactive[tuple[str, ...]] = reactive((), layout=True)
    registry_error: reactive[str | None] = reactive(None, layout=True)

    def __init__(self, part: str = "state", **kwargs) -> None:
        super().__init__(**kwargs)
        self.part = part

    def render(self) -> Text:
        if self.registry_error:
            if self.part != "state":
                return Text()
            return Text(
                f"⚠ {self.registry_error}\n\nFix the registry: the cockpit reloads it as soon as the "
                "file changes.",
                style="bold red",
            )
        resume = self.resume
        if resume is None:
            return Text()
        return self.render_state(resume) if self.part == "state" else self.render_rules(resume)

    def render_state(self, resume: ResumeView) -> Text:
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
            # its fresh dir is the command's EXP_DIR line, shown whole below: folded in this
            # prose it would split `$(date` from `+%Y...` and no longer paste
            out.append(
                "  one key: select it, press l; or run the first line (cockpit), or the command under it\n"
                "  (c copies the command; ←→ scrolls a long line):",
                style="dim",
            )
        else:
            out.append("  no pending leg", style="dim")
        return out

    def render_rules(self, resume: ResumeView) -> Text:
        out = Text()
        if resume.gpus:
            out.append("GPUs: ", style="bold")
            out.append(resume.gpus + "\n")
        out.append("Safety\n", style="bold red")
        for rule in resume.rules:
            out.append(f"  • {rule}\n")
        out.rstrip()
        return out


class NextCommand(Static):
    """The next leg's command, every line whole (never folded): the strip around it scrolls."""

    command: reactive[str | None] = reactive(None, layout=True)
    cockpit: reactive[str | None] = reactive(None, layout=True)  # the same leg through `cockpit launch`

    def render(self) -> Text:
        out = Text(no_wrap=True, overflow="ignore")
        if self.command and self.cockpit:
            out.append(self.cockpit + "\n\n")
        out.append(self.command or "", style="cyan")
        return out


class CommandStrip(ScrollableContainer):
    """Scrolls the command sideways (a focusable strip: ← → from the keyboard)."""


class ResumeBox(VerticalScroll):
    """The resume panel's frame: the state, the next command, the rules, scrolling as one.
    Unlike a plain VerticalScroll, `m` maximizes it (to read the whole next command)."""

    ALLOW_MAXIMIZE = True

    def compose(self) -> ComposeResult:
        yield ResumePanel("state", id="resume")
        with CommandStrip(id="next-strip"):
            yield NextCommand(id="next-command")
        yield ResumePanel("rules", id="resume-rules")

    def show(self, resume: ResumeView | None, problems: tuple[str, ...], registry_error: str | None) -> None:
        for panel in self.query(ResumePanel):
            panel.registry_error = registry_error
            if resume is not None:
                panel.resume = resume
                panel.problems = problems
        if resume is not None or registry_error:
            command = None if registry_error or resume is None else resume.next_command
            strip = self.query_one(NextCommand)
            strip.command = command
            strip.cockpit = resume.next_cockpit if command and resume is not None else None
            self.query_one(CommandStrip).display = bool(command)
