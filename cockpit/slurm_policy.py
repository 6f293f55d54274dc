"""What a registry's Slurm settings may say: the sbatch options the cockpit sets itself (never
from `extra_args`), those a setting of the registry writes, and the values an `#SBATCH` line
can carry whole (a partition, a time limit, a memory size).

Layer 0: imports nothing from the cockpit but sbatch_opts and schema.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from cockpit import sbatch_opts
from cockpit.schema import show

# The Slurm settings that are single tokens (a partition, a time limit, ...) hold no whitespace,
# quote, backslash, `#` or control character: each is written into an #SBATCH line as one word.
SBATCH_UNSAFE = re.compile(r"[\s'\"\\#\x00-\x1f\x7f]")
SLURM_TIME = re.compile(r"^(\d+-)?\d+(:\d+){0,2}$|^(UNLIMITED|INFINITE)$")  # 30, 4:00:00, 1-12, 2-00:00:00
SLURM_MEM = re.compile(r"^\d+[KMGT]?$")  # per node; a bare number is MB
# sbatch options the cockpit sets itself (by their long names: an abbreviation or a short form in
# extra_args is read as sbatch reads it, see sbatch_opts), with what each is for
COCKPIT_SBATCH = {
    **dict.fromkeys(("output", "error", "open-mode"), "the leg's log"),
    "chdir": "the legs' checkout",
    "job-name": "the name that proves a job is the leg's",
    **dict.fromkeys(("dependency", "kill-on-invalid-dep"), "the chain of legs"),
    **dict.fromkeys(("requeue", "no-requeue"), "a leg is never requeued behind your back"),
    **dict.fromkeys(("ntasks", "ntasks-per-node", "tasks-per-node"), "one torchrun per node"),
    **dict.fromkeys(("array", "wrap"), "one batch script per leg"),
    **dict.fromkeys(
        ("parsable", "test-only", "wait", "help", "usage", "version"), "how sbatch answers the cockpit"
    ),
    **dict.fromkeys(("cluster", "clusters"), "the cluster that squeue and scancel ask"),
    **dict.fromkeys(("uid", "gid"), "the user that proves a job is the leg's"),
}
# sbatch options a Slurm setting of the registry writes: extra_args names the setting instead
SLURM_KEY_OPTIONS = {
    "partition": "partition",
    "account": "account",
    "qos": "qos",
    "time": "time",
    "nodes": "nodes",
    "gpus-per-node": "gpus_per_node",
    "cpus-per-task": "cpus_per_task",
    "mem": "mem",
}
WORDS = ("partition", "account", "qos", "time", "mem")  # the settings that are one word of an #SBATCH line


def extra_args_problem(items: Sequence[str]) -> str | None:
    """Why these sbatch arguments cannot be a leg's extra_args, read as sbatch reads them (an
    abbreviation, grouped short options), or None: one the cockpit sets itself, one a setting of
    the registry writes, anything sbatch would refuse or read otherwise than written."""
    try:
        for item in items:
            sbatch_opts.word(item)  # an #SBATCH line carries it (no control character, not empty)
        options = sbatch_opts.parse(items)
    except sbatch_opts.SbatchError as e:
        return str(e)
    for opt in options:
        said = (
            opt.written
            if opt.written == f"--{opt.name}" or opt.written.startswith(f"--{opt.name}=")
            else f"{opt.written} (sbatch reads --{opt.name})"
        )
        if opt.name in COCKPIT_SBATCH:
            return f"{said} is set by the cockpit itself ({COCKPIT_SBATCH[opt.name]})"
        if opt.name in SLURM_KEY_OPTIONS:
            return f"{said} has its own key: set {SLURM_KEY_OPTIONS[opt.name]} instead"
    return None


def setting_problem(key: str, value: Any, what: str) -> str | None:
    """Why a Slurm setting's value (as the registry holds it, type and range checked) cannot be
    written into a batch script, said of `what` (`project.slurm.time`), or None."""
    if key in WORDS:
        word = str(value)
        if not word or SBATCH_UNSAFE.search(word):
            return (
                f"'{what}' {show(word)} cannot go on an #SBATCH line (empty, or holds spaces, quotes, "
                "backslashes or #)"
            )
        if key == "time" and not SLURM_TIME.match(word):
            return f"'{what}' must be a Slurm time limit (minutes, H:MM:SS, D-HH:MM:SS), not {show(value)}"
        if key == "mem" and not SLURM_MEM.match(word):
            return f"'{what}' must be a Slurm memory size (like 64G or 500M), not {show(word)}"
    elif key == "setup":
        if bad := next((v for v in value if "\n" in v or "\x00" in v), None):
            return f"an item of '{what}' must be one line: {show(bad)}"
    elif key == "extra_args" and (why := extra_args_problem(value)):
        return f"'{what}': {why}"
    return None
