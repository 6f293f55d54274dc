"""What the cockpit's workers tell the main screen.

Workers run off the UI thread: the collector's loop (files, processes, NVML) and the actions
(plan a launch, launch, stop, write a report or the guide). They never touch a widget. They post
one of these messages to the main screen and go on; the screen's handlers apply it on the UI
thread. Posting never blocks either side: the UI thread never waits on a file or a process, and a
worker never waits for a frame to be drawn.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from textual.message import Message
from textual.notifications import SeverityLevel

from cockpit import continuation, launch
from cockpit import registry as reg
from cockpit.tui.state import CockpitView, ReportView


@dataclass
class ViewPublished(Message, bubble=False):
    """A new immutable view of everything, with the final table of the selected dir."""

    view: CockpitView | None  # None: the registry could not be loaded
    error: str | None  # the registry's file:line message, or an internal error of the collector
    report: ReportView | None

    def can_replace(self, message: Message) -> bool:
        # A newer view waiting behind this one makes it stale: the screen applies the newer only.
        return isinstance(message, ViewPublished)


@dataclass
class LogLines(Message, bubble=False):
    """Lines the followed logs gained since the last LogLines, by pane key (`exp_dir/leg`)."""

    lines: dict[str, list[str]]


@dataclass
class LaunchPlanned(Message, bubble=False):
    """A launch planned off the UI thread, ready for the user's confirmation."""

    registry: reg.Registry
    plan: launch.LaunchPlan
    fresh: Path  # the dir it would create
    rerun: bool  # the one leg asked for is done: confirming re-runs it in a new dir
    into: continuation.Continuation | None = (
        None  # `L`: the dir it may continue instead (its remaining legs there)
    )


@dataclass
class Notice(Message, bubble=False):
    """One line for the user from a worker: what an action did, or why it did not."""

    message: str
    title: str = ""
    severity: SeverityLevel = "information"
    timeout: float | None = None  # seconds on screen; None: Textual's default
