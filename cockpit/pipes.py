"""A command's output, read in bounded memory.

A command the cockpit runs may print without end (`yes` as a notify command), or exit while a
process it started keeps its stdout open. So its pipes are read here as the bytes come: only the
last `keep` bytes of each are kept (or each chunk of stdout goes to a sink, which may say it has
had enough), the rest is read and dropped so the command is never blocked on a full pipe. The
read ends when the command has exited and its pipes hold nothing more for now: a process it left
behind holding a pipe does not hold up its end, and once the caller closes the pipe that
process is not kept waiting on a reader that will never come.

Layer 0: imports nothing from the cockpit.
"""

from __future__ import annotations

import os
import selectors
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass

CHUNK = 1 << 16  # bytes per read
POLL_S = 0.05  # how often a silent command is checked for its exit
DRAIN_S = 0.2  # after the exit, how long what is still coming is read before the end


@dataclass
class Output:
    """What a command printed and how it ended."""

    returncode: int | None  # None: still running (the deadline passed, or the sink had enough)
    out: bytes  # the last `keep` bytes of stdout
    err: bytes  # the last `keep` bytes of stderr (b"" when it went elsewhere)
    dropped: int = 0  # bytes read and not kept
    timed_out: bool = False


class _Tail:
    """The last `keep` bytes of a stream, in memory that never holds more than twice that."""

    def __init__(self, keep: int):
        self.keep, self.buf, self.dropped = keep, bytearray(), 0

    def add(self, data: bytes) -> None:
        self.buf += data
        if len(self.buf) > 2 * self.keep:
            cut = len(self.buf) - self.keep
            del self.buf[:cut]
            self.dropped += cut

    def bytes(self) -> bytes:
        extra = max(0, len(self.buf) - self.keep)
        self.dropped += extra
        return bytes(self.buf[extra:])


def read(
    proc: subprocess.Popen, timeout: float, keep: int = 64 * 1024, sink: Callable[[bytes], bool] | None = None
) -> Output:
    """Read `proc`'s stdout (and stderr, when it is a pipe of its own) until it has exited and
    its pipes are quiet, or `timeout` seconds pass, or `sink` returns False. `sink` (when given)
    gets every chunk of stdout instead of the tail. The caller stops a command still running
    and closes the pipes."""
    deadline = time.monotonic() + timeout
    streams = {s: _Tail(keep) for s in (proc.stdout, proc.stderr) if s is not None}
    sel = selectors.DefaultSelector()
    for s in streams:
        os.set_blocking(s.fileno(), False)
        sel.register(s, selectors.EVENT_READ)
    exited_at = None
    try:
        while sel.get_map():
            now = time.monotonic()
            if now >= deadline:
                return _output(proc, streams, timed_out=True)
            if exited_at is None and proc.poll() is not None:
                exited_at = now
            if exited_at is not None and now - exited_at > DRAIN_S:
                break  # exited, and someone it left behind still holds a pipe
            for key, _ in sel.select(min(POLL_S, deadline - now)):
                try:
                    data = os.read(key.fd, CHUNK)
                except BlockingIOError:
                    continue
                if not data:
                    sel.unregister(key.fileobj)
                elif sink is not None and key.fileobj is proc.stdout:
                    if not sink(data):
                        return _output(proc, streams)
                else:
                    streams[key.fileobj].add(data)
        try:
            proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            return _output(proc, streams, timed_out=True)
        return _output(proc, streams)
    finally:
        sel.close()


def _output(proc: subprocess.Popen, streams: dict, timed_out: bool = False) -> Output:
    tails = {s: t.bytes() for s, t in streams.items()}
    return Output(
        proc.poll(),
        tails.get(proc.stdout, b""),
        tails.get(proc.stderr, b""),
        sum(t.dropped for t in streams.values()),
        timed_out,
    )
