"""Bytes -> lines: `LineSplitter` for any chunking, `LogFollower` for a growing file, `read_lines`.

`\\r` and `\\n` both end a line (a progress bar redraws with `\\r`), terminal escape sequences
such as colour codes are dropped (a green step line is a step line), and a line longer than
MAX_LINE_BYTES is cut there: memory stays bounded whatever the file holds (a 5 GB log, one line
without a newline, a sparse file of zeros).

Layer 0: imports nothing from the cockpit but fsutil and safetext.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from cockpit import fsutil, safetext

MAX_LINE_BYTES = 64 * 1024  # a longer line is cut here: memory stays bounded whatever the file holds
READ_CHUNK = 1 << 20


class LineSplitter:
    """Bytes in any chunking -> the same complete lines.

    `\\r` and `\\n` both end a line (progress bars redraw with `\\r`); empty lines are dropped;
    invalid UTF-8 becomes U+FFFD; a line longer than MAX_LINE_BYTES is cut there, so a file
    with no newline at all costs bounded memory.
    """

    def __init__(self, max_line: int = MAX_LINE_BYTES):
        self.max_line = max_line
        self.partial = b""
        self.overflow = False  # the partial line hit max_line: drop bytes until its end

    def feed(self, data: bytes) -> list[str]:
        # one decode for the whole chunk: a line holds no b"\n", so none is split or merged
        lines = self.feed_bytes(data)
        return b"\n".join(lines).decode("utf-8", "replace").split("\n") if lines else []

    def feed_bytes(self, data: bytes) -> list[bytes]:
        """The complete lines in `data`, still bytes: the full parse decodes only the lines it
        does not parse in bulk; feed() decodes them all."""
        if b"\r" in data:
            data = data.replace(b"\r", b"\n")
        cut = data.rfind(b"\n")
        if cut < 0:
            self._hold(data)
            return []
        head, rest = data[: cut + 1], data[cut + 1 :]
        out: list[bytes] = []
        if self.partial or self.overflow:
            first = head.find(b"\n")
            if not self.overflow:
                self.partial += head[:first][: self.max_line - len(self.partial)]
            if self.partial:
                out.append(self.partial)
            self.partial, self.overflow = b"", False
            head = head[first + 1 :]
        blines = head.split(b"\n")
        if len(head) > self.max_line and max(map(len, blines)) > self.max_line:
            blines = [b[: self.max_line] for b in blines]
        out += filter(None, blines)
        self._hold(rest)
        if b"\x1b" in head or (out and b"\x1b" in out[0]):
            out = [x for b in out if (x := safetext.strip_escapes_bytes(b))]
        return out

    def feed_block(self, data: bytes) -> bytes:
        """The complete lines in `data` as one block of bytes, joined by newlines, without making a
        list of lines when the text is plain (no escape sequence, no line longer than max_line:
        the usual log). The block may hold empty lines, which a reader drops, as feed_bytes does:
        `[x for x in block.split(b"\\n") if x]` is feed_bytes(data)."""
        if b"\r" in data:
            data = data.replace(b"\r", b"\n")
        cut = data.rfind(b"\n")
        if cut < 0 or self.overflow or b"\x1b" in data or b"\x1b" in self.partial:
            return b"\n".join(self.feed_bytes(data))
        block = self.partial + data[:cut] if self.partial else data[:cut]
        if self._has_long_line(block):
            return b"\n".join(self.feed_bytes(data))
        self.partial = b""
        self._hold(data[cut + 1 :])
        return block

    def _has_long_line(self, block: bytes) -> bool:
        """Does a line of the block run longer than max_line? Such a line holds a position that is
        a multiple of max_line, so only the lines at those positions are measured."""
        m = self.max_line
        for pos in range(m, len(block), m):
            end = block.find(b"\n", pos)
            if (len(block) if end < 0 else end) - (block.rfind(b"\n", 0, pos) + 1) > m:
                return True
        return False

    def flush(self) -> list[str]:
        """The held partial line as a line (end of file, or the writer is gone)."""
        line, self.partial, self.overflow = safetext.strip_escapes_bytes(self.partial), b"", False
        return [line.decode("utf-8", "replace")] if line else []

    def _hold(self, data: bytes) -> None:
        if self.overflow or not data:
            return
        room = self.max_line - len(self.partial)
        if len(data) >= room:
            self.partial += data[:room]
            self.overflow = True
        else:
            self.partial += data


class LogFollower:
    """Reads only the new bytes of a growing log at each `poll()`.

    Holds a partial last line until its newline; starts over when the file is truncated or
    replaced (another inode at the path); returns at most `max_bytes` worth of lines per poll
    (the next poll goes on), so memory is bounded whatever the file size.
    """

    def __init__(self, path: str | os.PathLike[str], offset: int = 0, max_bytes: int = 8 << 20):
        self.path = Path(path)
        self.offset = offset
        self.max_bytes = max_bytes
        self.splitter = LineSplitter()
        self._file = None
        self._ino: tuple[int, int] | None = None
        self.resets = 0  # how many times truncation or replacement made it start over

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __del__(self) -> None:
        self.close()

    def _reset(self) -> None:
        self.close()
        self.offset = 0
        self.splitter = LineSplitter()
        self.resets += 1

    def poll(self) -> list[str]:
        """Complete new lines since the last poll ([] when nothing new or no file yet)."""
        try:
            st = os.stat(self.path)
        except OSError:
            return []
        ino = (st.st_dev, st.st_ino)
        if self._ino is not None and ino != self._ino:
            self._reset()  # replaced: a new file at the path
        elif st.st_size < self.offset:
            self._reset()  # truncated
        if self._file is None:
            try:
                self._file = fsutil.open_read(self.path)  # kept open between polls; a FIFO is refused
            except OSError:
                return []
            self._ino = ino
        if st.st_size <= self.offset:
            return []
        self._file.seek(self.offset)
        data = self._file.read(min(self.max_bytes, st.st_size - self.offset))
        self.offset += len(data)
        return self.splitter.feed(data)

    def flush(self) -> list[str]:
        return self.splitter.flush()


def chunks(f: BinaryIO, chunk: int | None = None) -> Iterator[bytes]:
    """The file's bytes in chunks, from where it is; a hole of a sparse file (zeros, no line end
    in it) is given as just enough zeros to make the line it falls in as long as a line gets."""
    chunk = chunk or READ_CHUNK
    fd = f.fileno()
    size = os.fstat(fd).st_size
    pos = f.tell()
    while True:
        data_at = fsutil.next_data(fd, pos, size)
        if data_at - pos > 2 * chunk:
            yield bytes(MAX_LINE_BYTES + 1)
            pos = data_at
            f.seek(pos)
        data = f.read(chunk)
        if not data:
            return
        pos += len(data)
        yield data


def read_lines(path: str | os.PathLike[str], start: int = 0, chunk: int = READ_CHUNK) -> Iterator[str]:
    """Every line of a file from byte `start`, in chunks (a full parse); partial last line included."""
    splitter = LineSplitter()
    with fsutil.open_read(path) as f:
        f.seek(start)
        while data := f.read(chunk):
            yield from splitter.feed(data)
    yield from splitter.flush()
