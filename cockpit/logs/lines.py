"""One line of a trainer log -> a typed record: step, moe, validation and final lines.

The lines that matter, as nanochat prints them (and upstream nanochat, and the user's fork):

    step 00042/00280 (15.00%) | loss: 6.123456 | bal: 1.0123 | lrm: 1.00 | dt: 650.67ms | ...
    moe step 00042 | drop: 1.20% | load: 0.131,0.122,... | bal: 1.0023
    Step 00250 | Validation bpb: 0.8123
    Total batch size 524,288 => gradient accumulation steps: 4
    Peak memory usage: 18987.83MiB
    Total training time: 2.97m
    Minimum validation bpb: 0.801234

Fields are ` | `-separated `name: value` pairs, read by name in any order: a field the parser does
not know, or a value it cannot read, is kept aside in `extra`, never fatal. The same code reads
this trainer, upstream nanochat (`bf16_mfu:`, older `mfu:`) and the fork (`| bal: 24.0000` after
`loss`). Every parser returns None for a line that is not its kind, and never raises.

Layer 0: imports nothing from the cockpit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

# ----------------------------------------------------------------------------------------------
# records


@dataclass(slots=True)
class StepLine:
    """One `step ...` line. Fields the line does not carry stay None; unknown ones go to extra."""

    step: int
    total: int | None = None
    pct: float | None = None
    loss: float | None = None
    bal: float | None = None
    lrm: float | None = None
    dt_ms: float | None = None
    tok_per_sec: float | None = None
    mfu: float | None = None
    epoch: int | None = None
    total_time_min: float | None = None
    eta_min: float | None = None
    drop_pct: float | None = None
    extra: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class MoeLine:
    """The trainer's routing line: `moe step 00042 | drop: 1.20% | load: a,b,... | bal: 1.0023`."""

    step: int
    drop_pct: float | None = None
    load: tuple[float, ...] = ()
    bal: float | None = None
    extra: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class ValLine:
    """An evaluation line: `Step 00250 | Validation bpb: 0.8123` (also CORE metric, val loss)."""

    step: int | None
    name: str
    value: float


@dataclass(slots=True)
class FinalLine:
    """A line after training: `Peak memory usage: ...MiB` (kind "peak_mem_mib"), `Total training
    time: ...m` ("total_time_min") or `Minimum validation bpb: ...` ("min_val_bpb")."""

    kind: str
    value: float


@dataclass(slots=True)
class SetupLine:
    """A fact of the run's setup: `Total batch size 524,288 => ...` (name "batch_tokens", the
    tokens of one optimizer step: what turns a step into tokens seen)."""

    name: str
    value: int


# ----------------------------------------------------------------------------------------------
# numbers with units


def to_float(text: str) -> float | None:
    """A number as the trainer prints it: `806,400`, `9.76`, `1.20%`, `650.67ms`, `nan`."""
    try:
        return float(text.replace(",", "") if "," in text else text)  # tok/sec has commas on every line
    except ValueError:
        pass
    t = text.strip().replace(",", "").replace("_", "")
    end = len(t)
    while end and not (t[end - 1].isdigit() or t[end - 1] == "."):
        end -= 1
    if " " in t[:end]:
        return None  # words, not a number (upstream's `epoch: 0 pq: 1 rg: 2`): float() takes no inner blank
    try:
        return float(t[:end] if end else t)
    except ValueError:
        return None


def to_ms(text: str) -> float | None:
    """A duration in milliseconds: `650.67ms`, `0.65s`."""
    t = text.strip()
    if t.endswith("ms"):
        return to_float(t[:-2])
    if t.endswith("s"):
        v = to_float(t[:-1])
        return None if v is None else v * 1000.0
    return to_float(t)


def to_minutes(text: str) -> float | None:
    """A duration in minutes: `2.97m`, `45s`, `1.5h`."""
    t = text.strip()
    scale = 1.0
    if t.endswith("h"):
        scale, t = 60.0, t[:-1]
    elif t.endswith("s") and not t.endswith("ms"):
        scale, t = 1 / 60.0, t[:-1]
    elif t.endswith("m"):
        t = t[:-1]
    v = to_float(t)
    return None if v is None else v * scale


def to_int(text: str) -> int | None:
    try:
        return int(text)
    except ValueError:
        v = to_float(text)
        return None if v is None or not math.isfinite(v) else int(v)  # nan, inf: not an int


# field name in the log -> (StepLine attribute, converter)
FIELD_PARSERS = {
    "loss": ("loss", to_float),
    "bal": ("bal", to_float),
    "lrm": ("lrm", to_float),
    "dt": ("dt_ms", to_ms),
    "tok/sec": ("tok_per_sec", to_float),
    "bf16_mfu": ("mfu", to_float),
    "mfu": ("mfu", to_float),
    "epoch": ("epoch", to_int),
    "total time": ("total_time_min", to_minutes),
    "eta": ("eta_min", to_minutes),
    "drop": ("drop_pct", to_float),
}


# ----------------------------------------------------------------------------------------------
# line parsers


def strip_rank_prefix(line: str) -> str:
    """torchrun may prefix worker output (`[rank0]: `, `[default0]:`); the parser looks past it."""
    if line[:1] == "[":
        close = line.find("]:")
        if 0 < close < 32:
            rest = line[close + 2 :]
            return rest[1:] if rest[:1] == " " else rest  # one space after the prefix; indentation stays
    return line


def parse_step(line: str) -> StepLine | None:
    """A `step NNNNN/TTTTT (P%) | name: value | ...` line, or None for any other line."""
    if not line.startswith("step "):
        if line[:1] != "[":
            return None
        line = strip_rank_prefix(line)
        if not line.startswith("step "):
            return None
    parts = line.rstrip().split(" | ")
    head = parts[0][5:].split()
    if not head:
        return None
    num, _, tot = head[0].partition("/")
    try:
        rec = StepLine(step=int(num))
    except ValueError:
        return None  # "step function ..." or other prose that starts with "step "
    if tot:
        try:
            rec.total = int(tot)
        except ValueError:
            pass
    if len(head) > 1 and head[1].startswith("(") and head[1].endswith("%)"):
        rec.pct = to_float(head[1][1:-2])
    fields = FIELD_PARSERS
    for part in parts[1:]:
        name, sep, value = part.partition(": ")
        if not sep:
            continue
        known = fields.get(name)
        if known is None:
            rec.extra[name.strip()] = value.strip()
            continue
        v = known[1](value)
        if v is None:
            rec.extra[name] = value.strip()
        else:
            setattr(rec, known[0], v)
    return rec


def parse_moe(line: str) -> MoeLine | None:
    """`moe step 00042 | drop: 1.20% | load: 0.131,0.122 | bal: 1.0023`, or None."""
    if not line.startswith("moe step "):
        return None
    parts = line.rstrip().split(" | ")
    step = to_int(parts[0][9:].strip())
    if step is None:
        return None
    rec = MoeLine(step=step)
    for part in parts[1:]:
        name, sep, value = part.partition(": ")
        if not sep:
            continue
        if name == "drop":
            rec.drop_pct = to_float(value)
        elif name == "bal":
            rec.bal = to_float(value)
        elif name == "load":
            try:
                rec.load = tuple(map(float, value.split(",")))
                continue
            except ValueError:
                loads = [to_float(x) for x in value.split(",")]
            if all(x is not None for x in loads):
                rec.load = tuple(loads)  # type: ignore[arg-type]
            else:
                rec.extra[name] = value.strip()
        else:
            rec.extra[name.strip()] = value.strip()
    return rec


_VAL_NAMES = ("Validation bpb", "Validation loss", "val bpb", "val loss", "CORE metric")


def parse_val(line: str) -> ValLine | None:
    """`Step 00250 | Validation bpb: 0.8123` (upstream nanochat), also CORE metric and val loss."""
    step = None
    body = line
    if line.startswith("Step "):
        head, sep, body = line.partition(" | ")
        if not sep:
            return None
        step = to_int(head[5:].strip())
    for name in _VAL_NAMES:
        if body.startswith(name + ":"):
            v = to_float(body[len(name) + 1 :].strip())
            return None if v is None else ValLine(step=step, name=name, value=v)
    return None


def parse_final(line: str) -> FinalLine | None:
    """`Peak memory usage: 18987.83MiB` or `Total training time: 2.97m`, or None."""
    if line.startswith("Peak memory usage:"):
        text = line[18:].strip()
        scale = 1024.0 if text.endswith("GiB") else 1.0
        v = to_float(text)
        return None if v is None else FinalLine("peak_mem_mib", v * scale)
    if line.startswith("Total training time:"):
        v = to_minutes(line[20:].strip())
        return None if v is None else FinalLine("total_time_min", v)
    if line.startswith("Minimum validation bpb:"):
        v = to_float(line[23:].strip())
        return None if v is None else FinalLine("min_val_bpb", v)
    return None


def parse_setup(line: str) -> SetupLine | None:
    """`Total batch size 524,288 => gradient accumulation steps: 4`, or None."""
    if not line.startswith("Total batch size "):
        return None
    v = to_int(line[17:].partition(" ")[0])
    return None if v is None or v <= 0 else SetupLine("batch_tokens", v)


def parse_line(line: str) -> StepLine | MoeLine | ValLine | FinalLine | SetupLine | None:
    """Any line the cockpit knows, typed; None for everything else (never raises)."""
    c = line[:1]
    if c == "s":
        return parse_step(line)
    if c == "[":
        inner = strip_rank_prefix(line)
        return parse_line(inner) if inner is not line and inner[:1] != "[" else None
    if c == "m":
        return parse_moe(line)
    if c in "SVC":
        return parse_val(line)
    if c in "PTM":
        return parse_final(line) or (parse_setup(line) if c == "T" else None)
    return None
