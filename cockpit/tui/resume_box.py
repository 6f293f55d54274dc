"""The resume panel's scrolling frame."""

from __future__ import annotations

from textual.containers import VerticalScroll


class ResumeBox(VerticalScroll):
    """Scrolls the resume panel; unlike a plain VerticalScroll, `m` maximizes it (to read the
    whole next command)."""

    ALLOW_MAXIMIZE = True
