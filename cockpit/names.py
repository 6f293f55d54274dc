"""What an experiment id or a leg name may be: the cockpit names files after both, so each must
be a file name that fits the filesystem's limits with the longest of those files around it; and
the run names of a leg's repeats.

Layer 0: imports nothing from the cockpit but fsutil and safetext.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from cockpit import fsutil, safetext

# The files the cockpit names after an experiment id or a leg name (see expdir.py):
#   <exp_root>/<YYYYmmdd_HHMMSS>_<id>/state/<leg>.json, .../<leg>.log, .lock, .stop
#   <exp_root>/.cockpit-locks/<id>.lock
DIR_STAMP = "YYYYmmdd_HHMMSS_"
LEG_SUFFIXES = (".log", ".json", ".lock", ".stop")
EXPERIMENT_FILES = (f"{DIR_STAMP}{{}}", "{}.lock")  # its dirs, its queue lock
LEG_FILES = tuple(f"{{}}{s}" for s in LEG_SUFFIXES)
# Repeats: a leg with `repeats = N` (N >= 2) runs N times in one launch, run i named `<leg>.r<i>`
# (its log `<leg>.r<i>.log`, its state `state/<leg>.r<i>.json`).
REPEAT_NAME = re.compile(r"^(.+)\.r(0|[1-9][0-9]*)$")


def repeat_name(leg: str, i: int) -> str:
    """The run name of repeat i of a leg: `dense.r0`."""
    return f"{leg}.r{i}"


def split_repeat(name: str) -> tuple[str, int | None]:
    """A run name -> (its leg, its repeat index), or (name, None) for a run that is no repeat."""
    m = REPEAT_NAME.match(name)
    return (m.group(1), int(m.group(2))) if m else (name, None)


def bad_name(name: str, files: tuple[str, ...] = ()) -> str | None:
    """Why a leg name or experiment id cannot be a file name, or None when it can.

    `files`: the names the cockpit makes of it (`"{}.json"`); each must fit in one path
    component (NAME_MAX bytes).
    """
    if not name.strip():
        return "is empty"
    if name in (".", "..") or "/" in name or "\\" in name:
        return "cannot be a file name (no '/', '\\', '.' or '..')"
    if (bad := safetext.bad_chars(name)) is not None:
        kind = "a control character" if bad.endswith("(Cc)") else "a character that hides or reorders text"
        return f"holds {kind}: {bad}"
    if name.startswith("-"):
        return "cannot start with '-'"
    if name.startswith("."):
        return "cannot start with '.' (hidden files are not listed)"
    if name != name.strip():
        return "cannot start or end with a space"
    longest = max(files, key=len, default="{}")
    if not fsutil.name_fits(longest.format(name)):
        n = len(os.fsencode(name))
        room = fsutil.NAME_MAX - len(os.fsencode(longest.format("")))
        return (
            f"is too long for a file name: {n} bytes, at most {room} (the cockpit names a file "
            f"'{longest.format('<name>')}', and a file name has at most {fsutil.NAME_MAX} bytes)"
        )
    return None


def path_too_long(exp_root: Path, exp_id: str, leg: str) -> str | None:
    """Why the longest path the cockpit writes for this leg would exceed PATH_MAX, or None."""
    longest = max(LEG_SUFFIXES, key=len)
    path = f"{exp_root}/{DIR_STAMP}{exp_id}/state/{leg}{longest}"
    n = len(os.fsencode(path))
    if n >= fsutil.PATH_MAX:
        return (
            f"leg '{exp_id}/{leg}': its files under exp_root would have paths of {n} bytes, "
            f"more than the {fsutil.PATH_MAX - 1} a path may have"
        )
    return None
