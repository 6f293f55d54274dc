"""A full parse: every line of a log from its start, through the line parser, the step lines
handed over a chunk of the file at a time (`parse_file`).

The step lines go through the line parser one by one, as every other reader's do
(`LogState.feed`): about 16 us a line on one core, 0.3 s for a 20,000-step log and 1.6 s for
100,000. A reader of whole blocks of step lines as numpy columns (with its own number
formatting for the per-step CSV, some 750 lines) was measured against it, `cockpit report
--out-md` on 10 logs of each size, side by side in one run on 2 shared cores, CPU seconds:

    steps per log     280    20,000   100,000   400,000 (a stress case)
    numpy blocks      3.1       3.9       5.1      10.3
    line parser       2.7       7.1      18.9      67.5

The same CSV bytes, the same peak memory (105-118 MiB). At the sizes runs have (the seed's
legs: 280 steps; a long pretrain: 20,000 to 100,000) it saved 0.3 to 1.4 s a log; not worth its
weight, it went. `python -m bench.logs --only artifacts` gives the current figures.

Layer 0: imports nothing from the cockpit but fsutil and the log modules.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from cockpit import fsutil
from cockpit.logs.follow import LineSplitter, chunks
from cockpit.logs.lines import parse_step
from cockpit.logs.state import LogState, StepTable
from cockpit.vocab import DEFAULT_TAIL


def parse_file(
    path: str | os.PathLike[str],
    tail: int = DEFAULT_TAIL,
    keep_steps: int | None = None,
    on_steps: Callable[[StepTable], object] | None = None,
    chunk: int | None = None,
) -> LogState:
    """A full parse of a log: with keep_steps=None every step line is kept, in `state.table`.

    `on_steps(table)`: called with the step lines of each chunk of the file read (a StepTable),
    which is emptied afterwards, so the memory a parse holds is one chunk's, whatever the file's
    size (a line longer than MAX_LINE_BYTES is cut, a sparse file's hole skipped)."""
    if on_steps is not None:
        keep_steps = None
    state = LogState(tail=tail, keep_steps=keep_steps)
    splitter = LineSplitter()
    table = state.table

    def hand_over() -> None:
        if on_steps is not None and table is not None and len(table):
            on_steps(table)
            table.clear()

    with fsutil.open_read(path) as f:
        for data in chunks(f, chunk):
            state.feed_many(splitter.feed(data))
            hand_over()
    for line in splitter.flush():
        if parse_step(line) is None:  # a cut step line waits for its newline (see summary._state_of)
            state.feed(line)
    hand_over()
    return state
