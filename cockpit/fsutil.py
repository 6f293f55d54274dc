"""Files the cockpit writes and reads: created new inside their dir, never through a planted link.

An experiment dir is shared ground: anyone who can write under exp_root can plant a symlink
where the cockpit is about to write (`<dir>/<leg>.log -> /elsewhere`), a hard link to someone
else's file, a FIFO where a log should be, or a 5 GB file where a small JSON should be. So every
write here follows three rules:

- a file is created new (`O_CREAT|O_EXCL|O_NOFOLLOW`), or written as a temp beside it and renamed
  over it (a rename replaces a symlink, it never writes through one);
- an append opens no symlink, only a regular file with one link, and only the inode it expects;
- directories below a trusted root are walked one component at a time with `O_NOFOLLOW`, so a
  symlinked component (`<dir>/state -> /elsewhere`) is refused, not followed.

Reads open regular files only (a FIFO would block, `/dev/zero` would never end) and read at most
a stated number of bytes. Every refusal is an `UnsafePath` (an OSError) whose text is one line.

This module is layer 0: it imports nothing from the cockpit.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import secrets
import stat
from pathlib import Path
from typing import IO, Any

NAME_MAX = 255  # bytes in one path component (Linux, macOS)
PATH_MAX = 4096  # bytes in a whole path, with its terminating NUL

_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
_NEW = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK


class UnsafePath(OSError):
    """A path the cockpit refuses to write or read through. `str(e)` is one line."""

    def __init__(self, path: os.PathLike | str, why: str, code: int = errno.EPERM):
        super().__init__(code, why, str(path))

    def __str__(self) -> str:
        return f"{self.filename}: {self.strerror}"


def oneline(e: BaseException) -> str:
    """An exception as one line: `path: reason` for an OSError, `Type: text` otherwise."""
    if isinstance(e, OSError) and e.strerror:
        where = f"{e.filename}: " if e.filename else ""
        return f"{where}{e.strerror}".replace("\n", " ")
    return f"{type(e).__name__}: {e}".replace("\n", " ")


def is_inside(path: os.PathLike | str, root: os.PathLike | str) -> bool:
    """Is `path` root or below it, lexically (after making both absolute and normal)?"""
    p, r = os.path.abspath(path), os.path.abspath(root)
    return p == r or p.startswith(r.rstrip(os.sep) + os.sep)


def name_fits(name: str, suffix: str = "") -> bool:
    """Does `name + suffix` fit in one path component (NAME_MAX bytes)?"""
    return len(os.fsencode(name + suffix)) <= NAME_MAX


# ----------------------------------------------------------------------------------------------
# directories


def open_dir(path: os.PathLike | str, root: os.PathLike | str | None = None, create: bool = False) -> int:
    """An fd of directory `path`, walked from `root` without following any symlink below it.

    `root` itself (and what is above it) is the user's and is opened as it is; each component
    of `path` below `root` must be a real directory. `create` makes missing ones (0o755).
    Without a root the whole path is trusted (a path the user typed): it is opened as given.
    """
    path = os.path.abspath(path)
    if root is None:
        if create:
            os.makedirs(path, exist_ok=True)
        return os.open(path, _DIR)
    root = os.path.abspath(root)
    if not is_inside(path, root):
        raise UnsafePath(path, f"lies outside {root}")
    if create:
        os.makedirs(root, exist_ok=True)
    fd = os.open(root, _DIR)
    try:
        here = root
        for part in Path(path).relative_to(root).parts:
            here = os.path.join(here, part)
            try:
                nfd = os.open(part, _DIR | os.O_NOFOLLOW, dir_fd=fd)
            except FileNotFoundError:
                if not create:
                    raise
                try:
                    os.mkdir(part, 0o755, dir_fd=fd)
                except FileExistsError:
                    pass
                nfd = os.open(part, _DIR | os.O_NOFOLLOW, dir_fd=fd)
            except OSError as e:
                if e.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise _not_a_dir(here, fd, part) from None
                raise
            os.close(fd)
            fd = nfd
    except BaseException:
        os.close(fd)
        raise
    return fd


def _not_a_dir(here: str, dir_fd: int, name: str) -> UnsafePath:
    try:
        st = os.lstat(name, dir_fd=dir_fd)
    except OSError:
        return UnsafePath(here, "is not a directory")
    if stat.S_ISLNK(st.st_mode):
        return UnsafePath(
            here, "is a symlink (refused: the cockpit never writes through a link)", errno.ELOOP
        )
    return UnsafePath(here, "is not a directory", errno.ENOTDIR)


def make_dirs(path: os.PathLike | str, root: os.PathLike | str | None = None) -> None:
    """Create `path` (and its parents) below `root`, refusing a symlinked component."""
    os.close(open_dir(path, root, create=True))


# ----------------------------------------------------------------------------------------------
# creating and appending


def _check_regular(
    fd: int, path: os.PathLike | str, expect: tuple[int, int] | None = None, single: bool = False
) -> os.stat_result:
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        raise UnsafePath(path, "is not a regular file")
    if single and st.st_nlink != 1:
        raise UnsafePath(path, f"has {st.st_nlink} hard links (refused: it may be someone else's file)")
    if expect is not None and (st.st_dev, st.st_ino) != tuple(expect):
        raise UnsafePath(path, "is not the file the cockpit created there (replaced since)")
    return st


def file_id(fd: int) -> tuple[int, int]:
    """(device, inode) of an open file: what `open_append(expect=...)` checks."""
    st = os.fstat(fd)
    return st.st_dev, st.st_ino


def create_new(path: os.PathLike | str, root: os.PathLike | str | None = None, mode: int = 0o644) -> int:
    """Create `path` as a new regular file and return a write fd. An existing entry of any kind
    (file, symlink, FIFO) is never opened: FileExistsError."""
    path = Path(os.path.abspath(path))
    dfd = open_dir(path.parent, root, create=True)
    try:
        fd = os.open(path.name, _NEW, mode, dir_fd=dfd)
    finally:
        os.close(dfd)
    os.set_blocking(fd, True)
    return fd


def open_append(
    path: os.PathLike | str, root: os.PathLike | str | None = None, expect: tuple[int, int] | None = None
) -> int:
    """An append fd of an existing regular file with one link, never through a symlink. With
    `expect` (its (device, inode) when the cockpit created it), only that very file."""
    path = Path(os.path.abspath(path))
    dfd = open_dir(path.parent, root)
    try:
        try:
            fd = os.open(
                path.name,
                os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK,
                dir_fd=dfd,
            )
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise UnsafePath(
                    path, "is a symlink (refused: the cockpit never writes through a link)", errno.ELOOP
                ) from None
            if e.errno == errno.ENXIO:
                raise UnsafePath(path, "is not a regular file") from None
            raise
    finally:
        os.close(dfd)
    try:
        _check_regular(fd, path, expect, single=True)
    except BaseException:
        os.close(fd)
        raise
    os.set_blocking(fd, True)
    return fd


def create_or_append(path: os.PathLike | str, root: os.PathLike | str | None = None) -> int:
    """A new file, or appends to the regular single-link file already there (the cockpit's own
    logs of its own doings: the supervisor's log). Never through a symlink."""
    try:
        return create_new(path, root)
    except FileExistsError:
        return open_append(path, root)


def _temp_in(dfd: int, name: str) -> tuple[str, int]:
    for _ in range(100):
        tmp = f".{name[:64]}.{secrets.token_hex(4)}.tmp"
        try:
            return tmp, os.open(tmp, _NEW, 0o644, dir_fd=dfd)
        except FileExistsError:
            continue
    raise UnsafePath(name, "no free temp name beside it", errno.EEXIST)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def atomic_write(path: os.PathLike | str, data: str | bytes, root: os.PathLike | str | None = None) -> None:
    """Write a temp file beside `path`, then rename it over `path`: readers see the old file or
    the new one, never half; a symlink at `path` is replaced, not written through."""
    with StagedFiles(root) as staged:
        with staged.open(path, "wb") as f:
            f.write(data.encode("utf-8", "surrogateescape") if isinstance(data, str) else data)


def atomic_write_json(path: os.PathLike | str, obj: Any, root: os.PathLike | str | None = None) -> None:
    atomic_write(path, json.dumps(obj, indent=2, default=str) + "\n", root)


def publish_new(path: os.PathLike | str, data: str | bytes, root: os.PathLike | str | None = None) -> None:
    """Write `data` as the new file `path`, whole or not at all: a temp file beside it, synced,
    then linked to `path` (FileExistsError when anything is there: never over an existing
    entry), the temp removed. A reader finds no file, or the whole one."""
    path = Path(os.path.abspath(path))
    if not name_fits(path.name):
        raise UnsafePath(path, f"file name longer than {NAME_MAX} bytes", errno.ENAMETOOLONG)
    dfd = open_dir(path.parent, root, create=True)
    try:
        tmp, fd = _temp_in(dfd, path.name)
        try:
            try:
                os.set_blocking(fd, True)
                _write_all(fd, data.encode("utf-8") if isinstance(data, str) else data)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.link(tmp, path.name, src_dir_fd=dfd, dst_dir_fd=dfd, follow_symlinks=False)
        finally:
            try:
                os.unlink(tmp, dir_fd=dfd)
            except OSError:
                pass
    finally:
        os.close(dfd)


class StagedFiles:
    """Several files written as temps beside their targets, renamed into place together.

        with StagedFiles(root) as staged:
            with staged.open(out / "a.csv", "w") as f: ...
            with staged.open(out / "a.png", "wb") as f: ...
        # both renamed here; any exception before this point leaves neither, and no temp

    Every temp is created before any rename, so a place that cannot be written fails before
    anything is replaced.
    """

    def __init__(self, root: os.PathLike | str | None = None):
        self.root = root
        self._staged: list[tuple[int, str, str]] = []  # (dir fd, temp name, final name)

    def open(self, path: os.PathLike | str, mode: str = "w") -> IO:
        """A new temp file beside `path` for writing ("w" text, "wb" bytes); it becomes `path`
        at commit. Refused: a name too long, a directory or special file at `path`, a symlinked
        dir below the root."""
        path = Path(os.path.abspath(path))
        if not name_fits(path.name):
            raise UnsafePath(path, f"file name longer than {NAME_MAX} bytes", errno.ENAMETOOLONG)
        dfd = open_dir(path.parent, self.root, create=True)
        try:
            try:
                st = os.stat(path.name, dir_fd=dfd, follow_symlinks=False)
            except FileNotFoundError:
                st = None
            if st is not None and not (stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode)):
                raise UnsafePath(
                    path, "is a directory" if stat.S_ISDIR(st.st_mode) else "is not a regular file"
                )
            tmp, fd = _temp_in(dfd, path.name)
        except BaseException:
            os.close(dfd)
            raise
        os.set_blocking(fd, True)
        self._staged.append((dfd, tmp, path.name))
        if "b" in mode:
            return os.fdopen(fd, "wb")
        # newline="": csv writes its own; a path's byte that is not UTF-8 is written as that byte
        return os.fdopen(fd, "w", encoding="utf-8", errors="surrogateescape", newline="")

    def commit(self) -> None:
        try:
            for dfd, tmp, _ in self._staged:
                fd = os.open(tmp, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dfd)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
            for dfd, tmp, name in self._staged:
                os.rename(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
        except BaseException:
            self.abort()
            raise
        self._close()

    def abort(self) -> None:
        for dfd, tmp, _ in self._staged:
            try:
                os.unlink(tmp, dir_fd=dfd)
            except OSError:
                pass
        self._close()

    def _close(self) -> None:
        for dfd, _, _ in self._staged:
            os.close(dfd)
        self._staged = []

    def __enter__(self) -> StagedFiles:
        return self

    def __exit__(self, kind, value, tb) -> None:
        if kind is None:
            self.commit()
        else:
            self.abort()


# ----------------------------------------------------------------------------------------------
# reading


def open_regular(path: os.PathLike | str, follow: bool = True) -> int:
    """A read fd of a regular file; a FIFO, a device or a dir is refused without blocking.
    `follow=False` refuses a symlink too."""
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | (0 if follow else os.O_NOFOLLOW)
    try:
        fd = os.open(path, flags)
    except OSError as e:
        if e.errno == errno.ELOOP and not follow:
            raise UnsafePath(path, "is a symlink (refused)", errno.ELOOP) from None
        raise
    try:
        _check_regular(fd, path)
    except BaseException:
        os.close(fd)
        raise
    os.set_blocking(fd, True)
    return fd


def open_read(path: os.PathLike | str, follow: bool = True) -> IO[bytes]:
    """`open(path, "rb")` for regular files only (see open_regular)."""
    return os.fdopen(open_regular(path, follow), "rb")


def read_bytes(path: os.PathLike | str, limit: int, follow: bool = True) -> bytes:
    """A whole regular file of at most `limit` bytes; a bigger one is refused (EFBIG)."""
    with open_read(path, follow) as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise UnsafePath(path, f"larger than {limit} bytes (refused)", errno.EFBIG)
    return data


def read_text(path: os.PathLike | str, limit: int, follow: bool = True) -> str:
    return read_bytes(path, limit, follow).decode("utf-8")


def is_regular(path: os.PathLike | str) -> bool:
    """A regular file (through symlinks), without ever raising (too long, no permission...)."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except (OSError, ValueError):
        return False


def is_dir(path: os.PathLike | str) -> bool:
    try:
        return stat.S_ISDIR(os.stat(path).st_mode)
    except (OSError, ValueError):
        return False


# ----------------------------------------------------------------------------------------------
# locks


def try_lock(path: os.PathLike | str, root: os.PathLike | str | None = None) -> int | None:
    """Take an exclusive flock on `path` (created if missing, never through a symlink) without
    waiting. Returns its fd (the lock lasts while it is open), or None when another holds it."""
    path = Path(os.path.abspath(path))
    dfd = open_dir(path.parent, root, create=True)
    try:
        try:
            fd = os.open(
                path.name,
                os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK,
                0o644,
                dir_fd=dfd,
            )
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise UnsafePath(path, "is a symlink (refused)", errno.ELOOP) from None
            if e.errno == errno.ENXIO:
                raise UnsafePath(path, "is not a regular file") from None
            raise
    finally:
        os.close(dfd)
    try:
        _check_regular(fd, path)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise
    return fd


def lock_holders(path: os.PathLike | str) -> set[int] | None:
    """The pids holding a flock on `path` (a regular file with one link, not a symlink), from
    /proc/locks; None where the system cannot tell (no /proc/locks)."""
    try:
        st = os.lstat(path)
    except OSError:
        return set()
    if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
        return set()
    want = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    try:
        text = read_text("/proc/locks", 16 << 20)
    except (OSError, UnicodeDecodeError):
        return None
    holders = set()
    for line in text.splitlines():
        f = line.split()
        # "1: FLOCK  ADVISORY  WRITE 2316 fe:00:2146326 0 EOF"; a waiter has "->" after the number
        if len(f) >= 6 and f[1] == "FLOCK" and f[2] != "->" and f[5] == want and f[4].isdigit():
            holders.add(int(f[4]))
    return holders


# ----------------------------------------------------------------------------------------------
# where a user's output may go


def output_problem(path: os.PathLike | str) -> str | None:
    """Why a file cannot be written at `path` (one line), or None. Checks only; writes nothing.

    A directory, a path under a regular file, a name too long, a read-only filesystem, a place
    this user may not write: each refused here, before anything is written anywhere.
    """
    text = os.fspath(path)
    if not text:
        return "empty path"
    if "\x00" in text:
        return "a path cannot hold a NUL byte"
    p = Path(os.path.abspath(os.path.expanduser(text)))
    if text.endswith(os.sep) or is_dir(p):
        return f"{p} is a directory (give a file name)"
    if len(os.fsencode(str(p))) >= PATH_MAX:
        return f"{p}: path longer than {PATH_MAX - 1} bytes"
    if not name_fits(p.name):
        return f"{p.name[:40]}...: file name longer than {NAME_MAX} bytes"
    try:
        st = os.lstat(p)
    except FileNotFoundError:
        st = None
    except OSError as e:
        if e.errno == errno.ENOTDIR:
            st = None  # a parent is a file: said below
        else:
            return oneline(e)
    if st is not None and not (stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode)):
        return f"{p} exists and is not a regular file"
    anc = p.parent
    while True:
        try:
            ast = os.stat(anc)
            break
        except FileNotFoundError:
            anc = anc.parent
        except NotADirectoryError:
            anc = anc.parent
        except OSError as e:
            return oneline(e)
    if not stat.S_ISDIR(ast.st_mode):
        return f"{anc} is a file, not a directory (cannot hold {p.name})"
    try:
        if os.statvfs(anc).f_flag & os.ST_RDONLY:
            return f"{anc} is on a read-only filesystem"
    except OSError:
        pass
    if not os.access(anc, os.W_OK | os.X_OK):
        return f"{anc}: permission denied (cannot write here)"
    return None


# ----------------------------------------------------------------------------------------------
# holes: a sparse file reads as zeros where it holds no data; a reader may skip them


def next_data(fd: int, pos: int, size: int) -> int:
    """The first byte at or after `pos` that holds data (`size` when none does). Where the
    filesystem cannot tell, every byte holds data: `pos`. The fd's offset is left where it was
    (a buffered reader over the fd keeps its own idea of it)."""
    try:
        here = os.lseek(fd, 0, os.SEEK_CUR)
    except OSError:
        return pos
    try:
        return min(os.lseek(fd, pos, os.SEEK_DATA), size)
    except OSError as e:
        return size if e.errno == errno.ENXIO else pos
    except (AttributeError, ValueError):
        return pos
    finally:
        os.lseek(fd, here, os.SEEK_SET)


def hole_start(fd: int, pos: int, size: int) -> int:
    """Where the hole that ends at `pos` starts (`pos` when byte pos-1 holds data): everything in
    [hole_start, pos) reads as zeros."""
    if pos <= 0 or next_data(fd, pos - 1, size) < pos:
        return pos
    lo, step = pos, 1 << 20
    while lo > 0:  # back in growing steps while still in the hole
        probe = max(0, lo - step)
        if next_data(fd, probe, size) < pos:
            break
        lo, step = probe, step * 2
    else:
        return 0
    # the hole starts in (probe, lo]: the smallest x with no data in [x, pos)
    probe_lo, hi = probe, lo
    while hi - probe_lo > 1:
        mid = (probe_lo + hi) // 2
        if next_data(fd, mid, size) < pos:
            probe_lo = mid
        else:
            hi = mid
    return hi
