"""How sbatch reads its options: the words of an `#SBATCH` line, and getopt's rules over them.

An `#SBATCH` line is not read by a shell. sbatch splits what follows `#SBATCH` into words itself
(Slurm's `get_argument`): whitespace ends a word, a `'` or `"` quotes a stretch (whitespace and
`#` inside it are kept, the quotes dropped), a backslash keeps the next character (but never a
whitespace one outside quotes), and an unquoted, unescaped `#` ends the line: the rest is a
comment. A word that starts with `:` is an error, and a bare `hetjob` or `packjob` word starts the
next component of a heterogeneous job. The words of every `#SBATCH` line, in order, then go
through getopt_long, as a command line would; a later option overrides an earlier one, and the
first word that is not an option ends the directives with "Invalid directive".

getopt_long takes an unambiguous abbreviation of a long option (`--outp=x` is `--output=x`) and
grouped short options (`-Qo x` is `-Q -o x`, `-Qox` too). So what a list of sbatch arguments does
is known only by reading it by those rules, against sbatch's own table of options: `parse` does.
The table is sbatch's (Slurm 22.05 and the newer options of later releases, together): an
abbreviation counts as one of the options it could stand for in any of them.

Layer 0: imports nothing from the cockpit.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

# sbatch's options: `name` takes no value, `name=` a required one (`--name=v` or `--name v`),
# `name?` an optional one (only `--name=v`); `/x` is its short form.
_TABLE = """
account=/A acctg-freq= array=/a autocomplete= batch= bb= bbf= begin=/b chdir=/D cluster= cluster-constraint=
clusters=/M comment= consolidate-segments constraint=/C container= container-id= context= contiguous core-spec=/S
cores-per-socket= cpu-freq= cpus-per-gpu= cpus-per-task=/c deadline= delay-boot= dependency=/d distribution=/m
error=/e exclude=/x exclusive? export= export-file= external extra= extra-node-info=/B get-user-env? gid=
gpu-bind= gpu-freq= gpus=/G gpus-per-node= gpus-per-socket= gpus-per-task= gres= gres-flags= help/h hint=
hold/H ignore-pbs input=/i job-name=/J kill-on-invalid-dep= licenses=/L mail-type= mail-user= mcs-label= mem=
mem-bind= mem-per-cpu= mem-per-gpu= mem-update= mincpus= network= nice? no-kill?/k no-requeue nodefile=/F
nodelist=/w nodes=/N ntasks=/n ntasks-per-core= ntasks-per-gpu= ntasks-per-node= ntasks-per-socket=
ntasks-per-tres= oom-kill-step? open-mode= output=/o overcommit/O oversubscribe/s parsable partition=/p power=
prefer= priority= profile= propagate? qos=/q quiet/Q reboot requeue? reservation= resources= resv-ports? runtime=
segment= signal= sockets-per-node= spread-job spread-segments stepmgr switches= tasks-per-node= test-only
thread-spec= threads-per-core= time=/t time-min= tmp= tres-bind= tres-per-task= uid= usage use-min-nodes
verbose/v version/V wait/W wait-all-nodes= wckey= wrap=
"""
NONE, REQUIRED, OPTIONAL = "none", "required", "optional"


def _read_table() -> tuple[dict[str, str], dict[str, str]]:
    longs, shorts = {}, {}
    for word in _TABLE.split():
        spec, _, short = word.partition("/")
        kind = REQUIRED if spec.endswith("=") else OPTIONAL if spec.endswith("?") else NONE
        name = spec.rstrip("=?")
        longs[name] = kind
        if short:
            shorts[short] = name
    return longs, shorts


LONG, SHORT = _read_table()  # long name -> what value it takes; short letter -> long name

# What a word needs no quoting for on an #SBATCH line; anything else is written in double quotes.
_PLAIN = re.compile(r"[A-Za-z0-9_./@%+=,:-]+")
_HET_SEPARATOR = re.compile(r"(?i)(hetjob|packjob)")
_HET_WORD = re.compile(r"(?i)(hetjob|packjob)(?=[ \t\n\v\f\r]|$)")  # unquoted, a word of its own
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_SPACE = " \t\n\v\f\r"  # C's isspace, as sbatch splits


class SbatchError(ValueError):
    """A value an #SBATCH line cannot carry, or arguments sbatch would read otherwise than
    written; the message is one line."""


@dataclass(frozen=True)
class Option:
    """One option as sbatch reads it: its long name, its value (None: none given), as written."""

    name: str
    value: str | None
    written: str


# ----------------------------------------------------------------------------------------------
# the words of an #SBATCH line


def word(text: str) -> str:
    """`text` as one word of an #SBATCH line, read back by sbatch exactly as given: plain when
    nothing in it is special, else in double quotes with `"` and `\\` escaped. Empty text (an
    empty word ends sbatch's reading of the line) and control characters (a newline ends the
    line) cannot be carried: SbatchError."""
    if not text:
        raise SbatchError("an empty value cannot go on an #SBATCH line")
    if m := _CONTROL.search(text):
        raise SbatchError(
            f"{text!r} holds a control character ({m.group()!r}): it cannot go on an #SBATCH line"
        )
    if _PLAIN.fullmatch(text) and not text.startswith(":") and not _HET_SEPARATOR.fullmatch(text):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def option_word(option: str, value: object) -> str:
    """`--option=value` as one word of an #SBATCH line (the value quoted when it needs it)."""
    text = word(str(value))
    return f"{option}={text}"


def split_line(rest: str) -> list[str]:
    """The words sbatch reads from what follows `#SBATCH` on a line (see the module's docstring).
    SbatchError for an unmatched quote or a word that starts with `:`, as sbatch stops there."""
    words: list[str] = []
    i, n = 0, len(rest)
    while True:
        while i < n and rest[i] in _SPACE:
            i += 1
        if i == n:
            return words
        if rest[i] == ":":
            raise SbatchError(f"unexpected ':' in {rest!r}")
        out: list[str] = []
        quote, escaped = "", False
        if m := _HET_WORD.match(rest, i):
            raise SbatchError(f"a bare {m.group()!r} starts another component of a heterogeneous job")
        while i < n and (quote or rest[i] not in _SPACE):
            c = rest[i]
            i += 1
            if escaped:
                escaped = False
            elif c == "\\":
                escaped = True
                continue
            elif quote:
                if c == quote:
                    quote = ""
                    continue
            elif c in "'\"":
                quote = c
                continue
            elif c == "#":
                i = n  # a comment: the rest of the line is not read
                break
            out.append(c)
        if quote:
            raise SbatchError(f"unmatched {quote} in {rest!r}")
        if not out:
            return words  # sbatch reads nothing more from this line
        words.append("".join(out))


def directives(script: str) -> list[str]:
    """The words of a batch script's `#SBATCH` lines, in order, as sbatch collects them: from the
    top, skipping blank lines and comments, up to the first line of commands."""
    words: list[str] = []
    for line in script.split("\n"):
        if line.startswith("#SBATCH"):
            words += split_line(line[len("#SBATCH") :])
        elif line.strip() and not line.strip().startswith("#"):
            break
    return words


# ----------------------------------------------------------------------------------------------
# getopt_long over the words


def _long(item: str) -> tuple[str, str | None]:
    """The long option an item `--name[=value]` names, by getopt_long's rules: the exact name, else
    the one option it abbreviates (SbatchError when it could be several). A name that is none of
    sbatch's and abbreviates none is taken as written: a site's plugin may add options (SPANK,
    e.g. pyxis's --container-image), and sbatch refuses it where none does."""
    name, eq, value = item[2:].partition("=")
    if name in LONG:
        return name, (value if eq else None)
    candidates = sorted(o for o in LONG if o.startswith(name)) if name else []
    if len(candidates) == 1:
        return candidates[0], (value if eq else None)
    if candidates:
        shown = ", ".join(f"--{c}" for c in candidates[:6]) + (", ..." if len(candidates) > 6 else "")
        raise SbatchError(f"--{name} is ambiguous to sbatch (it could be {shown}): spell the option out")
    if not name:
        raise SbatchError(f"{item!r} is not an option")
    return name, (value if eq else None)  # none of sbatch's: a site's plugin may add it (SPANK)


def parse(items: Sequence[str]) -> list[Option]:
    """sbatch's arguments as getopt_long reads them: each option by its long name with its value,
    abbreviations and grouped short options resolved. SbatchError (one line) for what sbatch
    would refuse or read otherwise than a reader would: an ambiguous abbreviation, an unknown
    short option, a word that is not an option, a value missing or not allowed."""
    out: list[Option] = []
    i = 0
    while i < len(items):
        item = items[i]
        i += 1
        if item == "--" or not item.startswith("-") or item == "-":
            raise SbatchError(
                f"{item!r} is not an option (sbatch reads no more directives after it): give a value "
                "as --option=value, or right after an option that takes one"
            )
        if item.startswith("--"):
            name, value = _long(item)
            kind = LONG.get(name, OPTIONAL)  # a plugin's option: its value only after `=`
            if kind == NONE and value is not None:
                raise SbatchError(f"{item}: --{name} takes no value")
            if kind == REQUIRED and value is None:
                if i == len(items):
                    raise SbatchError(f"{item}: --{name} needs a value")
                value, i = items[i], i + 1
            out.append(Option(name, value, item))
            continue
        j = 1
        while j < len(item):  # grouped short options: -Qo x, -Qox
            letter = item[j]
            j += 1
            if letter not in SHORT:
                raise SbatchError(f"{item}: -{letter} is not an option sbatch knows")
            name = SHORT[letter]
            kind, value = LONG[name], None
            if kind != NONE and j < len(item):
                value, j = item[j:], len(item)
            elif kind == REQUIRED:
                if i == len(items):
                    raise SbatchError(f"{item}: -{letter} (--{name}) needs a value")
                value, i = items[i], i + 1
            out.append(Option(name, value, item))
    return out
