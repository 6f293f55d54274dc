"""Where each key of a TOML file sits: tomllib gives the values, this gives their line numbers.

The registry reports every problem as `path:line: message`; tomllib parses the file but keeps no
positions, so this module reads the text once more, line by line, and maps each table and key
path to the line that defines it. It knows enough of TOML for a hand-written file: headers,
arrays of tables, dotted and quoted keys. A key inside an inline table or a multi-line value is
located at its parent's line.

Layer 0: imports nothing from the cockpit.
"""

from __future__ import annotations

import re

_HEADER = re.compile(r"^\s*(\[\[?)\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")
_KEY = re.compile(
    r'^\s*((?:[A-Za-z0-9_-]+|"[^"]*"|\'[^\']*\')(?:\s*\.\s*(?:[A-Za-z0-9_-]+|"[^"]*"|\'[^\']*\'))*)\s*='
)


def _split_dotted(text: str) -> list[str]:
    parts = re.findall(r'"([^"]*)"|\'([^\']*)\'|([A-Za-z0-9_-]+)', text)
    return [a or b or c for a, b, c in parts]


def locate_keys(text: str) -> dict[tuple, int]:
    """Map each table and key path (array items by index) to its 1-based line number."""
    lines: dict[tuple, int] = {}
    counts: dict[tuple, int] = {}
    table: tuple = ()
    depth = 0  # open brackets of a multi-line value: its lines hold no keys of the table
    for no, raw in enumerate(text.splitlines(), start=1):
        line = _strip_comment(raw)
        if depth > 0:
            depth += _bracket_balance(line)
            continue
        m = _HEADER.match(line)
        if m:
            path = tuple(_split_dotted(m.group(2)))
            resolved: tuple = ()
            for i, part in enumerate(path):
                resolved += (part,)
                # a header inside an array of tables refers to its latest item
                if i < len(path) - 1 and resolved in counts:
                    resolved += (counts[resolved] - 1,)
            if m.group(1) == "[[":
                idx = counts.get(resolved, 0)
                counts[resolved] = idx + 1
                lines.setdefault(resolved, no)
                resolved += (idx,)
            table = resolved
            lines[table] = no
            continue
        k = _KEY.match(line)
        if k:
            path = table + tuple(_split_dotted(k.group(1)))
            lines.setdefault(path, no)
            depth = max(0, _bracket_balance(line[k.end() :]))
    return lines


def _strip_comment(line: str) -> str:
    out, quote = [], None
    for ch in line:
        if quote:
            if ch == quote:
                quote = None
        elif ch in "\"'":
            quote = ch
        elif ch == "#":
            break
        out.append(ch)
    return "".join(out)


def _bracket_balance(text: str) -> int:
    text = re.sub(r'"[^"]*"|\'[^\']*\'', "", text)
    return text.count("[") + text.count("{") - text.count("]") - text.count("}")
