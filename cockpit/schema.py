"""The registry's schema as data: each key of a registry table is a field of the dataclass the
table becomes, and the field's metadata (`key(...)`) says what the file may hold there (types,
range, choices), its default (the field's own) and what it means. `Loader` checks a table
against those fields and reads the values the file gives.

Every problem is one `RegistryError` whose text is `path:line: message`, so the CLI can print
it on one line and exit 2.

Layer 0: imports nothing from the cockpit but safetext and toml_lines.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import math
import re
from pathlib import Path
from typing import Any

from cockpit import safetext
from cockpit.toml_lines import locate_keys

ARG_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")  # a trainer flag's name, as an args key or a grid axis
_TYPE_NAMES = {dict: "table", list: "array", str: "string", int: "integer", float: "number", bool: "boolean"}


class RegistryError(Exception):
    """A problem in the registry file, located at `path:line`."""

    def __init__(self, path: Path | str, line: int | None, message: str):
        self.path = str(path)
        self.line = line
        self.message = safetext.oneline(message)  # whatever the file held: one printable line
        where = f"{self.path}:{line}" if line else self.path
        super().__init__(f"{where}: {self.message}")


@dataclasses.dataclass(frozen=True)
class Key:
    """A key of a registry table: what the file may hold there, and what it means."""

    types: tuple[type, ...]  # str, int, float, bool, list (an array) or dict (a table)
    doc: str  # what the key means, in one line
    lo: float | None = None  # a number's bounds, both inclusive
    hi: float | None = None
    choices: tuple[str, ...] = ()  # the words a string may be
    items: type | None = None  # what each item of an array must be
    toml: str | None = None  # its name in the file, when not the field's
    flat: type | None = None  # a dataclass whose keys sit in this table itself (a Runtime's)
    own: bool = False  # read by the loader's own code (a path, a table): `read` leaves it out
    message: str | None = None  # the words for a value out of its range or choices, when not the usual ones


def key(*types: type, doc: str, default: Any = dataclasses.MISSING, **spec: Any) -> Any:
    """A dataclass field that is a key of a registry table (see `Key`); `default` is what a table
    that leaves the key out gets (none: the loader always gives it)."""
    meta = {"key": Key(types, doc, **spec)}
    if isinstance(default, dict):
        return dataclasses.field(default_factory=lambda: dict(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


@functools.cache
def keys_of(cls: type) -> dict[str, tuple[str, Key]]:
    """A table's keys, in the order its dataclass declares them: name in the file -> (field, Key)."""
    out: dict[str, tuple[str, Key]] = {}
    for f in dataclasses.fields(cls):
        k = f.metadata.get("key")
        if k is not None and k.flat is not None:
            out.update(keys_of(k.flat))
        elif k is not None:
            out[k.toml or f.name] = (f.name, k)
    return out


def type_name(types: tuple[type, ...]) -> str:
    return " or ".join(_TYPE_NAMES.get(t, t.__name__) for t in types)


def a_type(types: tuple[type, ...]) -> str:
    """The type name with its article: `an integer`, `a string or array`."""
    name = type_name(types)
    return ("an " if name[0] in "aeiou" else "a ") + name


def is_a(value: Any, types: tuple[type, ...]) -> bool:
    if isinstance(value, bool):  # bool is an int in Python, never in a registry
        return bool in types
    return isinstance(value, types)


def bad_text(text: str) -> str | None:
    """Why free text (a title, a note) may not be shown as it is: a control character other
    than tab and newline, or a bidi override that reorders what the reader sees."""
    for c in text:
        if c in "\n\t":
            continue
        if (bad := safetext.bad_chars(c)) is not None and not bad.endswith("(Zs)"):
            return f"holds {bad}"
    return None


def dotted(loc: tuple) -> str:
    """A key's place as a message names it: `experiment.leg.repeats` (array indices left out)."""
    return ".".join(str(p) for p in loc if not isinstance(p, int))


class Loader:
    """One file's checks: each error located at the line of the key it is about."""

    def __init__(self, path: Path, text: str):
        self.path = path
        self.lines = locate_keys(text)

    def line(self, loc: tuple) -> int | None:
        while loc:
            if loc in self.lines:
                return self.lines[loc]
            loc = loc[:-1]
        return None

    def fail(self, loc: tuple, message: str) -> RegistryError:
        return RegistryError(self.path, self.line(loc), message)

    def check_table(self, table: dict, cls: type, loc: tuple) -> None:
        """Every key of the table is one of `cls`'s, holding a value of its types: a finite number,
        text without a control character."""
        keys = keys_of(cls)
        for name, value in table.items():
            where = dotted(loc + (name,)) or name
            if name not in keys:
                hint = difflib.get_close_matches(name, list(keys), n=1)
                more = f"; did you mean '{hint[0]}'?" if hint else f"; known: {', '.join(keys)}"
                raise self.fail(loc + (name,), f"unknown key '{where}'{more}")
            types = keys[name][1].types
            if not is_a(value, types):
                raise self.fail(
                    loc + (name,),
                    f"'{where}' must be {a_type(types)}, not {type(value).__name__} {show(value)}",
                )
            if isinstance(value, float) and not math.isfinite(value):
                raise self.fail(loc + (name,), f"'{where}' must be a finite number, not {value!r}")
            if isinstance(value, str) and (why := bad_text(value)):
                raise self.fail(loc + (name,), f"'{where}' {why}")
            if isinstance(value, list):
                for item in value:
                    if isinstance(item, str) and (why := bad_text(item)):
                        raise self.fail(loc + (name,), f"an item of '{where}' {why}")

    def read(self, table: dict, cls: type, loc: tuple, label: str) -> dict[str, Any]:
        """The values a checked table gives for `cls`'s plain keys (not `own`), each within its
        range or choices (`'<label>.<key>'` in a message), by field name: a number as a float where
        the key takes one, an array as a tuple. What the table leaves out is not in the result."""
        keys = keys_of(cls)
        out: dict[str, Any] = {}
        for name, value in table.items():
            field_name, k = keys[name]
            if k.own:
                continue
            said = {"what": f"{label}.{name}", "value": show(value)}
            if k.lo is not None and k.hi is not None and not k.lo <= value <= k.hi:
                words = k.message or "'{what}' must be between {lo} and {hi}, not {value}"
                raise self.fail(loc + (name,), words.format(lo=plain(k.lo), hi=plain(k.hi), **said))
            if k.choices and value not in k.choices:
                words = k.message or "'{what}' must be one of {choices}, not {value}"
                raise self.fail(loc + (name,), words.format(choices=k.choices, **said))
            if k.items is not None and not all(is_a(v, (k.items,)) for v in value):
                raise self.fail(
                    loc + (name,), f"'{label}.{name}' must be an array of {type_name((k.items,))}s"
                )
            if float in k.types and isinstance(value, int):
                value = float(value)
            out[field_name] = tuple(value) if isinstance(value, list) else value
        return out

    def check_args(self, args: dict, loc: tuple) -> dict:
        """Trainer args: each key a flag's name, each value a string (no NUL), a finite number or a boolean."""
        for name, value in args.items():
            if not ARG_KEY.match(name):
                raise self.fail(loc + (name,), f"trainer arg {show(name)} is not a flag name")
            if isinstance(value, dict | list) or value is None:
                raise self.fail(
                    loc + (name,),
                    f"trainer arg '{name}' must be a string, number or boolean, not {type(value).__name__}",
                )
            if isinstance(value, float) and not math.isfinite(value):
                raise self.fail(loc + (name,), f"trainer arg '{name}' must be a finite number, not {value!r}")
            if isinstance(value, str) and "\x00" in value:
                raise self.fail(loc + (name,), f"trainer arg '{name}' holds a NUL byte (no command line can)")
        return dict(args)

    def arg_lines(self, args: Any, loc: tuple) -> dict[str, int | None]:
        """The line of each trainer arg of the table at `loc` (its table's line when inline)."""
        return {name: self.line(loc + (name,)) for name in args} if isinstance(args, dict) else {}


def plain(x: float) -> str:
    """A bound as a person writes it: 1000000, 0.5."""
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def first(names: Any, n: int = 8) -> str:
    """The first `n` names, and how many there are in all when more: a message stays one line."""
    names = list(names)
    return ", ".join(names[:n]) + (f", ... ({count(len(names))} in all)" if len(names) > n else "")


def count(n: int) -> str:
    """A count as a person reads it: 1,000,000."""
    return f"{n:,}"


def cut(text: str, n: int = 100) -> str:
    """A long path or name cut in its middle, for a message that must stay readable."""
    return text if len(text) <= n else f"{text[: n // 2 - 2]}...{text[-(n // 2 - 1) :]}"


def show(value: Any) -> str:
    """A value in a message: its repr, cut to a readable length (one line: repr escapes controls)."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
