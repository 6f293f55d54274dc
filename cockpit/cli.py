"""`cockpit`: the terminal app (no subcommand) and its plain-text subcommands.

Every subcommand takes `--registry PATH` (default ./experiments.toml). Bad input of any kind
(a broken registry, a wrong name, a missing dir) is one line on stderr and exit code 2.
Everything printed goes through one sanitizer (`say`, `safetext.printable`): text read from a
log or a file (names, error lines, paths) never reaches the terminal with a control character.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from cockpit import expdir, fsutil, gpus, launch, report, resume, safetext
from cockpit import registry as reg
from cockpit.expdir import RunError
from cockpit.vocab import Status

EXIT_BAD_INPUT = 2
GRACE_MAX_S = 3600.0


class UsageError(Exception):
    """Bad input found after parsing (a name that is not in the registry, a missing dir...)."""


def say(text: str = "", end: str = "\n", file=None) -> None:
    """Print, with control characters and escape sequences made harmless (see safetext)."""
    print(safetext.printable(text), end=end, file=file or sys.stdout)


def _add_registry(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--registry",
        default=argparse.SUPPRESS,
        metavar="PATH",
        help=f"experiment registry (default: ./{reg.DEFAULT_REGISTRY})",
    )


def cmd_status(args: argparse.Namespace) -> int:
    """Where things stand in a few lines: the resume state (registry + experiment dirs + GPUs)."""
    registry = reg.load(args.registry)
    say(resume.render_status(resume.build_state(registry)))
    return 0


def cmd_resume(args: argparse.Namespace) -> int:
    """The resume guide (markdown) generated from the registry and every experiment dir."""
    registry = reg.load(args.registry)
    if args.out_md is None:
        say(resume.render_guide(resume.build_state(registry)), end="")
        return 0
    try:
        say(str(resume.write_guide(registry, args.out_md)))
    except fsutil.UnsafePath as e:
        raise UsageError(f"--out-md: {e.strerror}") from None
    except OSError as e:
        raise UsageError(f"--out-md: {fsutil.oneline(e)}") from None
    return 0


def cmd_launch(args: argparse.Namespace) -> int:
    registry = reg.load(args.registry)
    legs = [n.strip() for n in args.legs.split(",") if n.strip()] if args.legs else None
    try:
        plan = launch.plan_launch(registry, args.experiment, legs, args.rerun)
        if args.dry_run:
            say(launch.dry_run_text(registry, plan))
            return 0
        for name, why in plan.skipped:
            say(f"skip {name}: {why}")
        if not plan.legs:
            say(f"nothing to run in {args.experiment}")
            return 0
        exp_dir = launch.start(registry, args.experiment, foreground=args.foreground, plan=plan)
    except RunError as e:
        raise UsageError(str(e)) from None
    want, have = registry.settings.branch, ((expdir.open_dir(exp_dir).plan or {}).get("git") or {}).get("branch")
    if want and have and want != have:
        say(f"cockpit: warning: the checkout is on branch {have}, the registry expects {want}", file=sys.stderr)
    if not args.foreground:
        say(str(exp_dir))
        return 0
    d = expdir.open_dir(exp_dir)
    for name in d.legs:
        st = d.states.get(name)
        say(f"{name}: {st.status if st else 'not run'}" + (f" ({st.note})" if st and st.status == Status.FAILED and st.note else ""))
    say(str(exp_dir))
    return 0 if all(s.status == Status.DONE for s in d.states.values()) else 1


def cmd_stop(args: argparse.Namespace) -> int:
    """Stop a dir's queue or one leg. Only dirs under the registry's exp_root; only processes
    proven to be the leg's are signalled (see launch.stop)."""
    if not args.target.strip():
        raise UsageError("stop: no experiment dir given (an empty name): give a dir under exp_root or an experiment id")
    if args.leg is not None and not args.leg.strip():
        raise UsageError("stop: the leg name is empty")
    if not 0 <= args.grace <= GRACE_MAX_S:  # nan fails too
        raise UsageError(f"--grace must be between 0 and {GRACE_MAX_S:g} seconds, not {args.grace}")
    exp_root = reg.load(args.registry).settings.exp_root
    try:
        exp_dir = expdir.find_dir(exp_root, args.target)
        d = launch.stop(exp_dir, args.leg, grace_s=args.grace, exp_root=exp_root)
    except RunError as e:
        raise UsageError(str(e)) from None
    for name in [args.leg] if args.leg else d.legs:
        st = d.states.get(name)
        if st is not None and st.status == Status.QUEUED and expdir.stop_request_path(exp_dir, name).exists():
            say(f"{name}: queued, stop requested: it will not start")
        else:
            say(f"{name}: {st.status if st else 'not run'}" + (f" ({st.note})" if st and st.note else ""))
    say(str(exp_dir))
    return 0


def cmd_gpus(args: argparse.Namespace) -> int:
    import time

    sampler = gpus.GpuSampler(history=1)
    time.sleep(0.25)  # a CPU percentage needs an interval
    snap = sampler.sample()
    pid_legs: dict[int, str] = {}
    pids = [pid for g in snap.gpus for pid in g.pids]
    if pids:
        try:
            exp_root = reg.load(args.registry).settings.exp_root
        except reg.RegistryError:
            exp_root = None
        if exp_root is not None:
            legs = [(f"{d.path.name}/{st.leg}", st.pid, st.create_time) for d in expdir.discover(exp_root)
                    for st in d.running]
            pid_legs = gpus.leg_for_pids(pids, legs)
    say(gpus.render_table(snap, pid_legs))
    return 0


def _tail(args: argparse.Namespace) -> int:
    """--tail, else the registry's tail when there is a registry file, else 50."""
    from pathlib import Path

    if args.tail is not None:
        if args.tail < 1:
            raise UsageError(f"--tail must be at least 1, not {args.tail}")
        if args.tail > reg.TAIL_MAX:
            raise UsageError(f"--tail must be at most {reg.TAIL_MAX}, not {safetext.oneline(str(args.tail))[:40]}")
        return args.tail
    path = getattr(args, "registry", reg.DEFAULT_REGISTRY)
    return reg.load(path).settings.tail if Path(path).exists() else 50


def cmd_report(args: argparse.Namespace) -> int:
    """The seed's metric table (+ status, + deltas) of one dir; markdown to stdout or a file."""
    from pathlib import Path

    tail = _tail(args)
    if not args.exp_dir.strip():
        raise UsageError("--exp-dir is empty: give an experiment dir (or any dir of *.log files)")
    exp_dir = Path(args.exp_dir).expanduser()
    try:
        if not fsutil.is_dir(exp_dir):
            raise report.ReportError(f"{exp_dir}: no such experiment dir")
        rows_ = report.rows(exp_dir, tail)
        if not rows_:
            raise report.ReportError(f"{exp_dir}: no *.log file and no planned leg here: nothing to report "
                                     "(give the dir of an experiment, or any dir of *.log files)")
        if all(r.summary is None for r in rows_):
            raise report.ReportError(f"{exp_dir}: no leg has a log yet, nothing to report (see: cockpit status)")
        if args.out_md is not None:
            say(str(report.write_report(exp_dir, args.out_md, args.baseline, tail, plots=not args.no_plots)))
        else:
            say(report.render_report(exp_dir, args.baseline, tail, rows_=rows_), end="")
    except report.ReportError as e:
        raise UsageError(str(e)) from None
    except OSError as e:
        raise UsageError(f"report not written: {fsutil.oneline(e)}") from None
    return 0


def cmd_tui(args: argparse.Namespace) -> int:
    """No subcommand: the Textual app. A registry that fails to load is shown inside it."""
    from cockpit.tui.app import CockpitApp  # Textual loads only for the app

    app = CockpitApp(args.registry)
    app.run()
    if app.return_code:
        return app.return_code
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cockpit",
        description="Run, watch and resume nanochat MoE/FP8 experiments. "
        "With no subcommand: the terminal app.",
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
    p = sub.add_parser("resume", help="the resume guide: state, completed work, next command, safety")
    p.add_argument("--out-md", metavar="FILE", help="write the guide here (default: stdout)")
    _add_registry(p)
    p.set_defaults(func=cmd_resume)
    p = sub.add_parser("launch", help="run an experiment's legs in a fresh dir (detached supervisor)")
    p.add_argument("experiment", help="experiment id from the registry")
    p.add_argument("--legs", metavar="A,B", help="only these legs, in this order")
    p.add_argument("--rerun", action="store_true", help="run legs that are done or recorded, again")
    p.add_argument("--dry-run", action="store_true", help="print the exact commands; write nothing")
    p.add_argument("--foreground", action="store_true", help="run the supervisor in this process")
    _add_registry(p)
    p.set_defaults(func=cmd_launch)
    p = sub.add_parser("stop", help="stop a running leg, or a dir's whole queue")
    p.add_argument("target", metavar="DIR|EXPERIMENT", help="an experiment dir, or an experiment id (its newest dir)")
    p.add_argument("leg", nargs="?", help="only this leg (the queue goes on with the next)")
    p.add_argument("--grace", type=float, default=10.0, help="seconds between SIGTERM and SIGKILL when the supervisor is gone (default 10; "
                   "a live supervisor uses its own, 10 s)")
    _add_registry(p)
    p.set_defaults(func=cmd_stop)
    p = sub.add_parser("report", help="final metrics, status and deltas of an experiment dir (markdown)")
    p.add_argument("--exp-dir", required=True, metavar="DIR", help="an experiment dir (or any dir of *.log files)")
    p.add_argument("--out-md", metavar="FILE", help="write here, with CSVs and PNG plots beside it (default: stdout)")
    p.add_argument("--baseline", metavar="RUN", help="a run in the dir, or OTHER_DIR/RUN: adds delta tables")
    p.add_argument("--tail", type=int, metavar="N", help="mean over the last N step lines (default: registry, 50)")
    p.add_argument("--no-plots", action="store_true", help="with --out-md: CSVs only, no PNGs")
    _add_registry(p)
    p.set_defaults(func=cmd_report)
    p = sub.add_parser("gpus", help="GPUs (NVML) and host at a glance")
    _add_registry(p)
    p.set_defaults(func=cmd_gpus)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] = getattr(args, "func", cmd_tui)
    try:
        return func(args)
    except (reg.RegistryError, UsageError) as e:
        print(f"cockpit: {safetext.oneline(str(e))}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
