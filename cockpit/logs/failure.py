"""The failure evidence in a log: a Python traceback, an argparse error, torchrun's failure summary.

Layer 0: imports only the log's line parsers.
"""

from __future__ import annotations

import re
from collections import deque

from cockpit.logs.lines import strip_rank_prefix

FAILURE_LINES = 8  # how many lines of a traceback are kept as the failure reason


# argparse's `%(prog)s: error: %(message)s`: `base_train.py: error: unrecognized arguments: --bogus 1`
_ARGPARSE_ERROR = re.compile(r"[\w.\-]+: error: \S")


class FailureTracker:
    """Spots a Python traceback, an argparse error or torchrun's failure summary and keeps its last lines.

    An argparse error (`usage: base_train.py [-h] ...` then `base_train.py: error: ...`, exit
    code 2; this trainer prints the error line alone) has no traceback: its error line is the
    cause, kept with the usage line right above it when there is one.

    The first traceback is the root cause (a worker's; torchrun's own comes after it), so its
    last lines are kept as the reason, and `error_line` prefers a worker's exception line
    (`torch.OutOfMemoryError: ...`) over torchrun's `ChildFailedError`. The owner clears the
    evidence when training goes on after it (a non-fatal traceback, a restart).
    """

    def __init__(self) -> None:
        self.seen = False
        self.lines: deque[str] = deque(maxlen=FAILURE_LINES)
        self.exceptions: list[str] = []
        self.root_cause: list[str] = []
        self._in_tb = False
        self._captured = False  # the first traceback is complete: later ones are not kept
        self._in_root = False
        self._usage: str | None = None  # the last `usage:` line (an argparse error follows it)

    def clear(self) -> None:
        self.__init__()

    def went_on(self) -> None:
        """Training went on (a step or final line): nothing before it is the cause. Afterwards
        the tracker is always fresh, so a bulk parse may call this once after a run of steps."""
        if self.seen or self._usage is not None:
            self.clear()

    def feed(self, line: str) -> None:
        body = strip_rank_prefix(line)
        if self._in_root:
            if body.startswith("====="):
                self._in_root = False
            elif body.strip() and len(self.root_cause) < 16:
                self.root_cause.append(body.strip())
            return
        if body.startswith("Traceback (most recent call last)"):
            self.seen = True
            self._in_tb = True
            if not self._captured:
                self.lines.append(line.rstrip())
            return
        if body.startswith("Root Cause (first observed failure)"):
            self.seen = True
            self._in_root = True
            self.root_cause = []
            return
        if self._in_tb:
            if not self._captured:
                self.lines.append(line.rstrip())
            if body[:1] not in " \t" and not body.startswith(("During handling", "The above exception")):
                self._in_tb = False  # the exception line closes a traceback
                self._captured = True
                self._exception(body.strip())
            return
        if body.startswith("usage: "):
            self._usage = line.rstrip()
            return
        if _ARGPARSE_ERROR.match(body):
            self.seen = True
            if not self._captured:
                self.lines.extend([self._usage, line.rstrip()] if self._usage else [line.rstrip()])
                self._captured = True
            self._usage = None
            self._exception(body.strip())
            return
        if self._usage is not None and body[:1] not in " \t":
            self._usage = None  # not the usage block's continuation: the usage line was not an error's
        if "ChildFailedError" in body or "failed (exitcode:" in body:
            self.seen = True
            self._exception(body.strip())

    def _exception(self, text: str) -> None:
        if len(self.exceptions) < 8:
            self.exceptions.append(text)

    @property
    def error_line(self) -> str | None:
        """The line that says what went wrong: a worker's exception before torchrun's."""
        for text in self.exceptions:
            if "ChildFailedError" not in text and "failed (exitcode:" not in text:
                return text
        return self.exceptions[0] if self.exceptions else None

    @property
    def reason(self) -> list[str]:
        out = list(self.lines)
        if not out and self.error_line:
            out.append(self.error_line)
        out += [ln for ln in self.root_cause if ln.startswith(("exitcode", "rank", "host"))]
        return out
