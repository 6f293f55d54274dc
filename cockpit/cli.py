"""`cockpit`: the terminal app (no subcommand) and its plain-text subcommands.

Every subcommand takes `--registry PATH` (default ./experiments.toml). Bad input of any kind
(a broken registry, a wrong name, a missing dir) is one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from cockpit import registry as reg

EXIT_BAD_INPUT = 2


class UsageError(Exception):
    """Bad input found after parsing (a name that is not in the registry, a missing dir...)."""


def _add_registry(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--registry",
        default=argparse.SUPPRESS,
        metavar="PATH",
        help=f"experiment registry (default: ./{reg.DEFAULT_REGISTRY})",
    )


def cmd_status(args: argparse.Namespace) -> int:
    registry = reg.load(args.registry)
    print(render_status(registry))
    return 0


def render_status(registry: reg.Registry) -> str:
    """The registry at a glance: experiments, their legs with state, baseline and decision."""
    s = registry.settings
    out = [f"{s.name}  ({registry.path})", f"exp_root: {s.exp_root}"]
    for exp in registry.experiments:
        where = "cpu" if exp.device == "cpu" else f"{exp.nproc_per_node} GPUs"
        out += ["", f"{exp.id}  [{where}]" + (f"  {exp.title}" if exp.title else "")]
        width = max((len(leg.name) for leg in exp.legs), default=0)
        for leg in exp.legs:
            state = "recorded-done" if leg.is_recorded else "pending"
            figures = ""
            if leg.recorded and leg.recorded.tok_per_sec is not None:
                figures = f"  {leg.recorded.tok_per_sec:,.0f} tok/s, mfu {leg.recorded.mfu}"
            mark = "  (baseline)" if exp.baseline == leg.name else ""
            out.append(f"  {leg.name:<{width}}  {state}{figures}{mark}")
        if exp.baseline and exp.leg(exp.baseline) is None:
            out.append(f"  baseline: {exp.baseline}")
        if exp.hypothesis:
            out.append(f"  hypothesis: {exp.hypothesis}")
        if exp.decision:
            out.append(f"  decision: {exp.decision}")
    return "\n".join(out)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cockpit",
        description="Run, watch and resume nanochat MoE/FP8 experiments. "
        "With no subcommand: the status view.",
    )
    parser.add_argument(
        "--registry",
        default=reg.DEFAULT_REGISTRY,
        metavar="PATH",
        help=f"experiment registry (default: ./{reg.DEFAULT_REGISTRY})",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    p = sub.add_parser("status", help="experiments and legs at a glance")
    _add_registry(p)
    p.set_defaults(func=cmd_status)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] = getattr(args, "func", cmd_status)
    try:
        return func(args)
    except (reg.RegistryError, UsageError) as e:
        print(f"cockpit: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
