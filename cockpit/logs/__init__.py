"""Trainer logs: parse their lines, follow a growing file, summarize a leg, parse a log in full.

A leg's log is the combined stdout+stderr of `torchrun ... -m nanochat.base_train`: the trainer's
step, moe, validation and final lines, among whatever else torch, torchrun and Python print,
including a traceback and torchrun's failure summary when a leg crashes. Each module here does
one job and is usable alone:

- `lines`: one line -> a typed record (`parse_step`, `parse_line`), numbers with their units;
- `failure`: the failure evidence (a traceback, an argparse error, torchrun's summary);
- `state`: `LogState`, an accumulator fed with lines, and `StepTable`, step lines with numpy columns;
- `follow`: bytes in any chunking -> lines (`LineSplitter`), a growing file (`LogFollower`);
- `summary`: a leg's summary from the end of its log, in bounded memory (`summarize`), its last lines;
- `full`: a full parse, every line from the start, step lines handed over a chunk at a time (`parse_file`);
- `progress`: a leg's progress in words (step, percent, ETA as h:mm:ss, the tail's steps).

The names below are the ones the rest of the cockpit uses.

Layer 0: these modules import nothing from the cockpit but fsutil, safetext, vocab and lazy.
"""

from cockpit.logs.failure import FailureTracker
from cockpit.logs.follow import LineSplitter, LogFollower, read_lines
from cockpit.logs.full import parse_file
from cockpit.logs.lines import (
    FinalLine,
    MoeLine,
    StepLine,
    ValLine,
    parse_final,
    parse_line,
    parse_moe,
    parse_step,
    parse_val,
)
from cockpit.logs.state import INT_FIELDS, STEP_FIELDS, Column, LogState, StepTable
from cockpit.logs.summary import LegSummary, last_lines, summarize, summary_of

__all__ = [
    "INT_FIELDS",
    "STEP_FIELDS",
    "Column",
    "FailureTracker",
    "FinalLine",
    "LegSummary",
    "LineSplitter",
    "LogFollower",
    "LogState",
    "MoeLine",
    "StepLine",
    "StepTable",
    "ValLine",
    "last_lines",
    "parse_file",
    "parse_final",
    "parse_line",
    "parse_moe",
    "parse_step",
    "parse_val",
    "read_lines",
    "summarize",
    "summary_of",
]
