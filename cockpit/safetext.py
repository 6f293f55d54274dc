"""Text that came from a log or a file, made safe to parse, to print and to put in markdown.

A log is written by whatever the trainer, torch or a user's code printed: colour codes, progress
bars, and possibly sequences that act on the terminal that shows them (`ESC ] 0 ; title BEL` sets
its title, `ESC [ 2 J` clears it, `ESC ] 52 ; c ; ... BEL` writes the clipboard). Three uses:

- `strip_escapes`: before parsing, every escape sequence goes (a step line in green is a step line);
- `printable`: before printing, escape sequences go and every other control character is shown
  as `\\xNN` (bidi overrides too, as `\\u202e`), so nothing read from disk acts on the terminal;
  a byte of a file name that is not UTF-8 is shown as `\\xNN` too (it cannot be printed as it is);
- `md_cell` / `md_code`: printable text as a markdown table cell or code span.

This module is layer 0: it imports nothing from the cockpit.
"""

from __future__ import annotations

import re
import unicodedata

# ESC [ params final (CSI) | ESC ] ... BEL or ST (OSC) | ESC P/X/^/_ ... ST (DCS, SOS, PM, APC)
# | ESC and one more char; the 8-bit C1 forms (U+009B CSI, U+009D OSC...) likewise. An
# unterminated string sequence runs to the end of the text (it would swallow it on a terminal).
_ESC = (
    r"(?:\x1b\[|\x9b)[0-?]*[ -/]*[@-~]?"
    r"|(?:\x1b[\]PX^_]|[\x9d\x90\x98\x9e\x9f])[^\x07\x1b\x9c]*(?:\x07|\x1b\\|\x9c)?"
    r"|\x1b[ -/]*[0-~]?"
)
ESCAPES = re.compile(_ESC)
ESCAPES_BYTES = re.compile(
    rb"\x1b\[[0-?]*[ -/]*[@-~]?|\x1b[\]PX^_][^\x07\x1b]*(?:\x07|\x1b\\)?|\x1b[ -/]*[0-~]?"
)
# what printable() shows as \xNN / \uNNNN: C0 but tab and newline, DEL, C1, bidi controls,
# line/paragraph separators, and lone surrogates: a byte of a path that is not UTF-8 (Python
# reads `caf\xe9` as `caf\udce9`), shown as that byte; no encoder can write it as it is
_BIDI = "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029" + _BIDI + "\ud800-\udfff]")


def strip_escapes(text: str) -> str:
    """Text without terminal escape sequences (colours, cursor moves, titles, clipboard writes)."""
    return ESCAPES.sub("", text) if ("\x1b" in text or _has_c1(text)) else text


def strip_escapes_bytes(data: bytes) -> bytes:
    """The same on raw bytes (7-bit sequences; 8-bit C1 bytes are not UTF-8 text anyway)."""
    return ESCAPES_BYTES.sub(b"", data) if b"\x1b" in data else data


def _has_c1(text: str) -> bool:
    return any("\x80" <= c <= "\x9f" for c in text) if not text.isascii() else False


def _visible(m: re.Match) -> str:
    n = ord(m.group())
    if 0xDC80 <= n <= 0xDCFF:  # the byte a non-UTF-8 name held (os.fsdecode's surrogateescape)
        n -= 0xDC00
    return f"\\x{n:02x}" if n < 0x100 else f"\\u{n:04x}"


def printable(text: str, newlines: bool = True) -> str:
    """Text safe for a terminal: escape sequences removed, other control characters shown as
    `\\xNN` (`\\r` included: it would let a line overwrite itself). Tabs stay; newlines stay
    unless `newlines=False` (then they are shown as `\\x0a`: one line stays one line)."""
    text = strip_escapes(text)
    if not newlines:
        text = text.replace("\n", "\\x0a")
    return _CONTROL.sub(_visible, text)


def oneline(text: str) -> str:
    """printable() on one line: for error messages that must stay one line."""
    return printable(text, newlines=False)


def bad_chars(text: str) -> str | None:
    """The first character that may not be in a name (control, format such as a bidi override,
    separator other than space, surrogate, private or unassigned), described; or None."""
    for c in text:
        cat = unicodedata.category(c)
        if cat[0] == "C" or cat in ("Zl", "Zp") or (cat == "Zs" and c != " "):
            name = unicodedata.name(c, "")
            return f"U+{ord(c):04X}" + (f" {name}" if name else "") + f" ({cat})"
    return None


def md_cell(text: str) -> str:
    """Printable text as one markdown table cell: pipes and backticks escaped, on one line."""
    text = printable(text).replace("\n", " ").replace("\t", " ")
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("`", "\\`")


def md_code(text: str) -> str:
    """Printable text as a markdown code span: a fence longer than any run of backticks inside."""
    text = printable(text).replace("\n", " ")
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    fence = "`" * (longest + 1)
    pad = " " if text.startswith("`") or text.endswith("`") or not text.strip() else ""
    return f"{fence}{pad}{text}{pad}{fence}"
