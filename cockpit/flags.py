"""A trainer's flags as text: registry args rendered to an argv, an argv parsed back to flags, the
flags that differ between two runs, and an argv laid out one flag per line for a reader.

The trainer takes `--key value` and bare `--key` flags (argparse's `store_true`), after torchrun's
`--`. Registry args map onto them one to one: `true` is a bare flag, `false` is left out, anything
else is `--key value`, with `{exp_dir}` replaced by the leg's experiment dir.

Layer 0: imports nothing from the cockpit.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

EXP_DIR_PLACEHOLDER = "{exp_dir}"  # in a leg's args: its fresh experiment dir


def command_lines(argv: list[str], quote: Callable[[str], str] = shlex.quote) -> list[str]:
    """An argv laid out for a reader (the resume guide, a dry run): the launcher up to `--` on
    the first line, then one flag per line, with its value when it has one."""
    cut = argv.index("--") + 1 if "--" in argv else 0
    lines = [" ".join(quote(a) for a in argv[:cut])] if cut else []
    rest = argv[cut:]
    i = 0
    while i < len(rest):
        if i + 1 < len(rest) and not rest[i + 1].startswith("--"):
            lines.append(f"{quote(rest[i])} {quote(rest[i + 1])}")
            i += 2
        else:
            lines.append(quote(rest[i]))
            i += 1
    return lines


@dataclass(frozen=True)
class FlagDiff:
    """One trainer flag that differs between two runs: its value in each (None: not given; True:
    a bare flag)."""

    flag: str  # without its dashes
    base: str | bool | None
    run: str | bool | None

    def __str__(self) -> str:
        def show(v: str | bool | None) -> str:
            return "(not given)" if v is None else "(set)" if v is True else v

        return f"--{self.flag} {show(self.base)} -> {show(self.run)}"


def parse_flags(argv: list[str]) -> dict[str, str | bool]:
    """A trainer's flags from its argv (after `--` when there is one): `--key value` -> value, a
    bare `--key` -> True. The inverse of render_args."""
    args = argv[argv.index("--") + 1 :] if "--" in argv else list(argv)
    out: dict[str, str | bool] = {}
    i = 0
    while i < len(args):
        key = args[i]
        if not key.startswith("--"):
            i += 1
            continue
        if i + 1 < len(args) and not args[i + 1].startswith("--"):
            out[key[2:]] = args[i + 1]
            i += 2
        else:
            out[key[2:]] = True
            i += 1
    return out


def diff_flags(base: dict[str, str | bool], run: dict[str, str | bool]) -> list[FlagDiff]:
    """The flags whose values differ: the run's flags in its order, then those only the base gives."""
    out = [FlagDiff(k, base.get(k), v) for k, v in run.items() if base.get(k) != v]
    return out + [FlagDiff(k, v, None) for k, v in base.items() if k not in run]


def format_diff(diffs: list[FlagDiff] | None) -> str:
    """`--compile-mode static -> dynamic, --fp8 (set) -> (not given)`, or `none` (the same flags)."""
    if diffs is None:
        return "nothing to compare with"
    return ", ".join(str(d) for d in diffs) or "none"


def render_args(args: dict[str, Any], exp_dir: Path | str | None = None) -> list[str]:
    """`true` -> bare flag, `false` -> left out, anything else -> `--key value`."""
    out: list[str] = []
    for key, value in args.items():
        if value is True:
            out.append(f"--{key}")
        elif value is False:
            continue
        else:
            text = str(value)
            if exp_dir is not None:
                text = text.replace(EXP_DIR_PLACEHOLDER, str(exp_dir))
            out += [f"--{key}", text]
    return out
