"""`cockpit`: the terminal app (no subcommand) and its plain-text subcommands.

Every subcommand is one function `cmd_<name>(args) -> exit code`, whose docstring is its `--help`
description. Each takes `--registry PATH`, before or after the subcommand: one parent parser
declares it for all. Without it the registry is `$COCKPIT_REGISTRY`, else the nearest
`experiments.toml` in the current directory or above it (registry.find_registry). Bad input of any kind (a broken registry, a
wrong name, a missing dir) is one line on stderr and exit code 2, never a traceback. Everything
printed goes through one sanitizer (`say`, `safetext.printable`): text read from a log or a file
(names, error lines, paths) never reaches the terminal with a control character.

Layer 4: the top; it imports the core, and the TUI only when the app is opened.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TextIO

from cockpit import (
    continuation,
    expdir,
    export,
    fsutil,
    gpus,
    launch,
    leg_log,
    logs,
    report,
    report_files,
    report_md,
    resume,
    resume_text,
    safetext,
    state_json,
)
from cockpit import registry as reg
from cockpit.executors import slurm_record
from cockpit.expdir import RunError
from cockpit.plan import STOP_GRACE_S
from cockpit.vocab import DEFAULT_TAIL, RunStatus, Status

try:
    import shtab  # optional (the `completion` extra): only `cockpit completion` needs it
except ImportError:
    shtab = None

EXIT_BAD_INPUT = 2
REGISTRY_HELP = (
    f"experiment registry (default: ${reg.REGISTRY_ENV}, else the nearest {reg.DEFAULT_REGISTRY} "
    "here or in a directory above)"
)
GRACE_MAX_S = 3600.0
LOG_LINES = 10  # `cockpit logs`: the last lines shown, as tail shows them
LOG_LINES_MAX = 1_000_000
DISTRIBUTION = "nanochat-cockpit"  # the name pyproject.toml gives the package (its version is --version's)


class UsageError(Exception):
    """Bad input found after parsing (a name that is not in the registry, a missing dir...)."""


def registry_path(args: argparse.Namespace) -> Path:
    """The registry the command reads: --registry when given, else the one found
    (`$COCKPIT_REGISTRY`, or upward from the current directory); RegistryError says where it looked."""
    return Path(args.registry) if args.registry is not None else reg.find_registry()


def load_registry(args: argparse.Namespace) -> reg.Registry:
    return reg.load(registry_path(args))


def version() -> str:
    """The installed distribution's version, as pip knows it."""
    try:
        return importlib.metadata.version(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return f"unknown ({DISTRIBUTION} is not installed: pip install -e .)"


def say(text: str = "", end: str = "\n", file: TextIO | None = None) -> None:
    """Print, with control characters and escape sequences made harmless (see safetext)."""
    print(safetext.printable(text), end=end, file=file or sys.stdout)


# ----------------------------------------------------------------------------------------------
# the commands


def cmd_status(args: argparse.Namespace) -> int:
    """Where things stand, in a few lines: each experiment's legs and their marks, the running
    legs with their progress, every dir under exp_root, the GPUs, and the next pending leg.
    --json: the same state as one JSON document (its shape: cockpit/state_json.py)."""
    registry = load_registry(args)
    state = resume.build_state(registry, dirs=dirs_recorded(registry))
    say(state_json.dumps(state) if args.json else resume_text.render_status(state))
    return 0


def dirs_recorded(registry: reg.Registry) -> list[expdir.ExpDir]:
    """Every dir under exp_root, read, with what the scheduler said of its Slurm legs recorded:
    this writes (their state files, and report.md where a leg ended; executors.slurm_record), as
    `status` and `resume` do for whoever reads after them."""
    dirs = expdir.discover(registry.settings.exp_root)
    slurm_record.record_jobs(dirs)
    return dirs


def cmd_resume(args: argparse.Namespace) -> int:
    """The resume guide, generated from the registry and every experiment dir: current state,
    completed work (do not re-run), remaining work with the exact next command, safety rules.
    --json: the state the guide is written from, as `cockpit status --json` prints it."""
    if args.json and args.out_md is not None:
        raise UsageError("resume: --json prints to stdout; it does not go with --out-md")
    registry = load_registry(args)
    if args.out_md is None:
        state = resume.build_state(registry, dirs=dirs_recorded(registry))
        if args.json:
            say(state_json.dumps(state))
        else:
            say(resume_text.render_guide(state), end="")
        return 0
    try:
        say(str(resume_text.write_guide(registry, args.out_md, dirs=dirs_recorded(registry))))
    except fsutil.UnsafePath as e:
        raise UsageError(f"--out-md: {e.strerror}") from None
    except OSError as e:
        raise UsageError(f"--out-md: {fsutil.oneline(e)}") from None
    return 0


def cmd_launch(args: argparse.Namespace) -> int:
    """Run an experiment's legs in a fresh dir <exp_root>/<YYYYmmdd_HHMMSS>_<experiment>/, through a
    detached supervisor (closing the terminal never touches a leg), or with --into DIR in a dir it
    ran in before (recorded as DIR/plan.<n>.json; a run that started there is never started again
    there). Legs done here or recorded in the registry are skipped unless --rerun; whatever the
    machine or the paths refuse is one line."""
    registry = load_registry(args)
    legs = [n.strip() for n in args.legs.split(",") if n.strip()] if args.legs else None
    if args.into is not None:
        return _launch_into(args, registry, legs)
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
    d = expdir.open_dir(exp_dir)
    checked = d.plan.trainer_flags if d.plan is not None else None
    if checked is not None and not checked.checked:
        say(f"cockpit: warning: trainer flags not checked: {checked.why}", file=sys.stderr)
    want, have = registry.settings.branch, d.plan.git.get("branch") if d.plan is not None else None
    if want and have and want != have:
        say(
            f"cockpit: warning: the checkout is on branch {have}, the registry expects {want}",
            file=sys.stderr,
        )
    if not args.foreground:
        for name in [
            reg.PREPARE,
            *d.legs,
        ]:  # a Slurm chain: the job that runs each leg (the prepare step first)
            st = d.prepare if name == reg.PREPARE else d.states.get(name)
            if st is not None and st.job_id:
                say(f"{name}: Slurm job {st.job_id} ({st.status})")
        say(str(exp_dir))
        return 0
    for name in d.legs:
        st = d.states.get(name)
        failed = st is not None and st.status == Status.FAILED and st.note
        say(f"{name}: {st.status if st else 'not run'}" + (f" ({st.note})" if failed else ""))
    say(str(exp_dir))
    return 0 if all(s.status == Status.DONE for s in d.states.values()) else 1


def _launch_into(args: argparse.Namespace, registry: reg.Registry, legs: list[str] | None) -> int:
    """`cockpit launch EXP --into DIR`: the experiment's remaining legs run in DIR (see continuation)."""
    if not args.into.strip():
        raise UsageError("--into: no dir given (an empty name): give a dir of the experiment under exp_root")
    try:
        exp_dir = expdir.find_dir(registry.settings.exp_root, args.into)
        if args.dry_run:
            say(
                continuation.dry_run_text(
                    registry, continuation.plan_continue(registry, args.experiment, exp_dir, legs, args.rerun)
                )
            )
            return 0
        cont = continuation.plan_continue(registry, args.experiment, exp_dir, legs, args.rerun)
        for name, why in cont.skipped:
            say(f"skip {name}: {why}")
        out = continuation.start(
            registry, args.experiment, exp_dir, legs, args.rerun, foreground=args.foreground
        )
    except RunError as e:
        raise UsageError(str(e)) from None
    if out is None:
        say(f"nothing to run in {exp_dir}")
        return 0
    if args.foreground:
        for name, status in continuation.run_statuses(exp_dir, out.runs):
            say(f"{name}: {status}")
        say(str(exp_dir))
        return out.exit_code or 0
    say(continuation.runs_text(out))
    say(str(exp_dir))
    return 0


def cmd_stop(args: argparse.Namespace) -> int:
    """Stop a dir's whole queue, or one leg of it (the queue goes on with the next). Only dirs
    under the registry's exp_root; only processes proven to be the leg's are signalled."""
    if not args.target.strip():
        raise UsageError(
            "stop: no experiment dir given (an empty name): give a dir under exp_root or an experiment id"
        )
    if args.leg is not None and not args.leg.strip():
        raise UsageError("stop: the leg name is empty")
    if not 0 <= args.grace <= GRACE_MAX_S:  # nan fails too
        raise UsageError(f"--grace must be between 0 and {GRACE_MAX_S:g} seconds, not {args.grace}")
    exp_root = load_registry(args).settings.exp_root
    try:
        exp_dir = expdir.find_dir(exp_root, args.target)
        d = launch.stop(exp_dir, args.leg, grace_s=args.grace, exp_root=exp_root)
    except RunError as e:
        raise UsageError(str(e)) from None
    for name in [args.leg] if args.leg else d.legs:
        say(f"{name}: {launch.stop_outcome(d, name, asked=args.leg is not None)}")
    say(str(exp_dir))
    return 0


def cmd_resubmit(args: argparse.Namespace) -> int:
    """Run Slurm legs of a dir again from their saved batch scripts: each a new job, chained in the
    plan's order, with a fresh log; the attempt before (its log and state) is kept under
    DIR/attempts/. A leg must have ended (done only with --rerun) and its script name its job."""
    if not args.target.strip():
        raise UsageError(
            "resubmit: no experiment dir given (an empty name): give a dir under exp_root or an experiment id"
        )
    if any(not leg.strip() for leg in args.legs):
        raise UsageError("resubmit: a leg name is empty")
    exp_root = load_registry(args).settings.exp_root
    try:
        exp_dir = expdir.find_dir(exp_root, args.target)
        lines = launch.resubmit(exp_dir, args.legs, exp_root, rerun=args.rerun)
    except RunError as e:
        raise UsageError(str(e)) from None
    for line in lines:
        say(line)
    say(str(exp_dir))
    return 0


def cmd_logs(args: argparse.Namespace) -> int:
    """A leg's log: its last lines (-n), and with -f every line after them as it is written,
    until the leg ends (exit 0 when it is done, 1 when it failed or stopped) or ^C. The leg is
    EXP/LEG (the experiment's newest dir where LEG ran), DIR LEG, or a leg name alone (its newest
    attempt under exp_root); a leg run with repeats shows its running repeat, else its last.
    A leg not started yet is waited for. Control characters from the log are never printed."""
    if not 0 <= args.lines <= LOG_LINES_MAX:
        raise UsageError(f"-n must be between 0 and {LOG_LINES_MAX}, not {args.lines}")
    exp_root = load_registry(args).settings.exp_root
    try:
        log = leg_log.find(exp_root, args.target, args.leg)
    except RunError as e:
        raise UsageError(str(e)) from None
    path = log.path
    there = os.path.lexists(path)
    try:
        lines, end = logs.last_lines(path, args.lines, whole=args.follow) if there else ([], 0)
    except OSError as e:
        raise UsageError(f"{safetext.oneline(str(path))}: {fsutil.oneline(e)}") from None
    for line in lines:
        say(line)
    if not args.follow:
        if not there:
            say(f"cockpit: {path}: no log yet ({leg_log.status(log)[1]})", file=sys.stderr)
        return 0
    say(f"cockpit: following {path} until the leg ends (^C stops)", file=sys.stderr)
    sys.stdout.flush()

    def emit(line: str) -> None:
        say(line)
        sys.stdout.flush()  # a reader on a pipe sees each line as the leg writes it

    ended = leg_log.follow(log, end, emit)
    return 0 if ended in (Status.DONE, RunStatus.COMPLETED) else 1


def cmd_report(args: argparse.Namespace) -> int:
    """Final metrics (tail means of tok/sec, dt, MFU; peak memory, total time), quality and routing
    (validation bpb, final loss, drop %, balance), status, and deltas with their 95% intervals and
    noise verdicts against the baseline of one experiment dir (its own run of the registry's
    baseline leg, else a named one), or of any dir of *.log files: markdown to stdout, or with
    --out-md to a file with its per-step and summary CSVs and its plots (PNG and SVG, the baseline
    in each) beside it."""
    tail = _tail(args)
    # a dir of plain logs named <stamp>_<experiment> takes its baseline from this registry (a dir
    # the cockpit launched has its plan's)
    try:
        path = registry_path(args)
    except reg.RegistryError:
        path = None  # a report needs no registry
    registry = reg.load(path) if path is not None and path.exists() else None
    if not args.exp_dir.strip():
        raise UsageError("--exp-dir is empty: give an experiment dir (or any dir of *.log files)")
    if args.figures not in report_files.FIGURES:
        raise UsageError(
            f"--figures {safetext.oneline(args.figures)[:40]}: give one of {', '.join(report_files.FIGURES)}"
        )
    exp_dir = Path(args.exp_dir).expanduser()
    try:
        if not fsutil.is_dir(exp_dir):
            raise report.ReportError(f"{exp_dir}: no such experiment dir")
        d = report.read_dir(exp_dir)
        rows = report.rows(d, tail)
        if not rows:
            raise report.ReportError(
                f"{exp_dir}: no *.log file and no planned leg here: nothing to report "
                "(give the dir of an experiment, or any dir of *.log files)"
            )
        if all(r.summary is None for r in rows):
            raise report.ReportError(
                f"{exp_dir}: no leg has a log yet, nothing to report (see: cockpit status)"
            )
        if args.out_md is not None:
            say(
                str(
                    report_files.write_report(
                        exp_dir,
                        args.out_md,
                        args.baseline,
                        tail,
                        plots=not args.no_plots,
                        registry=registry,
                        figures=args.figures,
                        svg=True,
                    )
                )
            )
        else:
            base = report_md.find_baseline(d, args.baseline, registry)
            say(report_md.render(d, rows, base, tail), end="")
    except report.ReportError as e:
        raise UsageError(str(e)) from None
    except OSError as e:
        raise UsageError(f"report not written: {fsutil.oneline(e)}") from None
    return 0


def _tail(args: argparse.Namespace) -> int:
    """--tail, else the registry's tail when there is a registry file, else DEFAULT_TAIL."""
    if args.tail is not None:
        if args.tail < 1:
            raise UsageError(f"--tail must be at least 1, not {args.tail}")
        if args.tail > reg.TAIL_MAX:
            raise UsageError(
                f"--tail must be at most {reg.TAIL_MAX}, not {safetext.oneline(str(args.tail))[:40]}"
            )
        return args.tail
    try:
        path = registry_path(args)
    except reg.RegistryError:
        return DEFAULT_TAIL  # a report needs no registry
    return reg.load(path).settings.tail if path.exists() else DEFAULT_TAIL


def cmd_export(args: argparse.Namespace) -> int:
    """Write a dir's step series as TensorBoard event files under OUT (a new or empty dir): one
    run per leg's log, and one per earlier attempt kept under attempts/; per step loss, lrm, dt,
    tok/sec, MFU, balance, drop % and total time, and validation bpb, under upstream nanochat's
    names (train/loss, train/tok_per_sec, val/bpb, ...). Needs tensorboard: pip install -e
    '.[export]'. Then: tensorboard --logdir OUT."""
    if not args.dir.strip():
        raise UsageError(
            "export: no dir given (an empty name): give an experiment dir (or any dir of *.log files)"
        )
    try:
        out, written = export.tensorboard(Path(args.dir).expanduser(), args.tensorboard)
    except export.ExportError as e:
        raise UsageError(str(e)) from None
    width = max(len(w.run) for w in written)
    for w in written:
        say(f"{w.run:<{width}}  {w.steps} steps, {w.vals} validations")
    say(str(out))
    return 0


def cmd_gpus(args: argparse.Namespace) -> int:
    """The GPUs at a glance (utilization, memory, temperature, power, and the leg owning each
    process) and the host; without NVML, the reason."""
    sampler = gpus.GpuSampler(history=1)
    time.sleep(0.25)  # a CPU percentage needs an interval
    snap = sampler.sample()
    pid_legs: dict[int, str] = {}
    pids = [pid for g in snap.gpus for pid in g.pids]
    if pids:
        try:
            exp_root = load_registry(args).settings.exp_root
        except reg.RegistryError:
            exp_root = None
        if exp_root is not None:
            legs = [
                (f"{d.path.name}/{st.leg}", st.pid, st.create_time)
                for d in expdir.discover(exp_root)
                for st in d.running
            ]
            pid_legs = gpus.leg_for_pids(pids, legs)
    say(gpus.render_table(snap, pid_legs))
    return 0


def cmd_completion(args: argparse.Namespace) -> int:
    """Print the shell's completion script for cockpit: subcommands, flags, and file or dir names
    where a command takes a path. Generated from this parser by shtab (pip install -e '.[completion]').
    Bash: `eval "$(cockpit completion bash)"` in ~/.bashrc; zsh: save it as `_cockpit` in a dir of
    $fpath; tcsh: `eval "`cockpit completion tcsh`"`."""
    if shtab is None:
        raise UsageError(
            "completion needs shtab, which is not installed: pip install -e '.[completion]' "
            "(or: pip install shtab)"
        )
    say(shtab.complete(build_parser(), shell=args.shell), end="")
    return 0


def cmd_tui(args: argparse.Namespace) -> int:
    """No subcommand: the terminal app. A registry that fails to load is shown inside it."""
    from cockpit.tui.app import CockpitApp  # function-level: Textual is heavy, and loads only for the app

    app = CockpitApp(registry_path(args))
    app.run()
    return app.return_code or 0


# ----------------------------------------------------------------------------------------------
# the parser

SHELLS = ("bash", "zsh", "tcsh")  # the shells shtab writes completion for


def _path(action: argparse.Action, kind: str) -> None:
    """Completion of an argument that takes a path: `file` or `dir` names (with shtab installed)."""
    if shtab is not None:
        action.complete = shtab.FILE if kind == "file" else shtab.DIRECTORY  # type: ignore[attr-defined]


def build_parser() -> argparse.ArgumentParser:
    # --registry is taken before or after the subcommand: the parent parser declares it for every
    # subcommand (SUPPRESS: given after, it replaces the one given before, else that one stays)
    common = argparse.ArgumentParser(add_help=False)
    _path(
        common.add_argument("--registry", default=argparse.SUPPRESS, metavar="PATH", help=REGISTRY_HELP),
        "file",
    )
    parser = argparse.ArgumentParser(
        prog="cockpit",
        description="Run, watch and resume nanochat MoE/FP8 experiments. With no subcommand: the terminal app.",
    )
    _path(parser.add_argument("--registry", default=None, metavar="PATH", help=REGISTRY_HELP), "file")
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def command(
        name: str, func: Callable[[argparse.Namespace], int], summary: str
    ) -> argparse.ArgumentParser:
        p = sub.add_parser(name, parents=[common], help=summary, description=_description(func))
        p.set_defaults(func=func)
        return p

    json_help = f"the state as JSON (schema {state_json.SCHEMA}, described in cockpit/state_json.py)"
    p = command("status", cmd_status, "experiments and legs at a glance")
    p.add_argument("--json", action="store_true", help=json_help)
    p = command("resume", cmd_resume, "the resume guide: state, completed work, next command, safety")
    _path(p.add_argument("--out-md", metavar="FILE", help="write the guide here (default: stdout)"), "file")
    p.add_argument("--json", action="store_true", help=json_help)
    p = command("launch", cmd_launch, "run an experiment's legs in a fresh dir (detached supervisor)")
    p.add_argument("experiment", help="experiment id from the registry")
    p.add_argument("--legs", metavar="A,B", help="only these legs, in this order")
    p.add_argument("--rerun", action="store_true", help="run legs that are done or recorded, again")
    p.add_argument("--dry-run", action="store_true", help="print the exact commands; write nothing")
    p.add_argument("--foreground", action="store_true", help="run the supervisor in this process")
    p.add_argument(
        "--into",
        metavar="DIR",
        help="continue this dir of the experiment (its legs not run there "
        "yet; they join its queue when it runs) rather than a fresh dir",
    )
    p = command("stop", cmd_stop, "stop a running leg, or a dir's whole queue")
    _path(
        p.add_argument(
            "target", metavar="DIR|EXPERIMENT", help="an experiment dir, or an experiment id (its newest dir)"
        ),
        "dir",
    )
    p.add_argument("leg", nargs="?", help="only this leg (the queue goes on with the next)")
    p.add_argument(
        "--grace",
        type=float,
        default=STOP_GRACE_S,
        help=f"seconds between SIGTERM and SIGKILL when the supervisor is gone (default "
        f"{STOP_GRACE_S:g}; a live supervisor uses the plan's)",
    )
    p = command(
        "resubmit", cmd_resubmit, "run Slurm legs of a dir again: new jobs, fresh logs, attempts kept"
    )
    _path(
        p.add_argument(
            "target", metavar="DIR|EXPERIMENT", help="an experiment dir, or an experiment id (its newest dir)"
        ),
        "dir",
    )
    p.add_argument(
        "legs", nargs="+", metavar="LEG", help="the legs to run again (a leg with repeats: all its runs)"
    )
    p.add_argument("--rerun", action="store_true", help="resubmit a leg that is done, too")
    p = command("logs", cmd_logs, "a leg's last log lines; -f follows them until the leg ends")
    _path(
        p.add_argument(
            "target",
            metavar="EXP/LEG|DIR|LEG",
            help="EXP/LEG, a dir (with LEG after it), or a leg name alone (its newest attempt)",
        ),
        "dir",
    )
    p.add_argument("leg", nargs="?", metavar="LEG", help="the leg, after a dir or an experiment id")
    p.add_argument(
        "-f", "--follow", action="store_true", help="print new lines as they come, until the leg ends"
    )
    p.add_argument(
        "-n",
        "--lines",
        type=int,
        default=LOG_LINES,
        metavar="N",
        help=f"the last N lines first (default {LOG_LINES})",
    )
    p = command("report", cmd_report, "final metrics, status and deltas of an experiment dir (markdown)")
    _path(
        p.add_argument(
            "--exp-dir", required=True, metavar="DIR", help="an experiment dir (or any dir of *.log files)"
        ),
        "dir",
    )
    _path(
        p.add_argument(
            "--out-md", metavar="FILE", help="write here, with CSVs and plots beside it (default: stdout)"
        ),
        "file",
    )
    p.add_argument("--baseline", metavar="RUN", help="a run in the dir, or OTHER_DIR/RUN: adds delta tables")
    p.add_argument(
        "--tail",
        type=int,
        metavar="N",
        help=f"mean over the last N step lines (default: the registry's, else {DEFAULT_TAIL})",
    )
    p.add_argument("--no-plots", action="store_true", help="with --out-md: CSVs only, no plots")
    p.add_argument(
        "--figures",
        default="full",
        metavar="|".join(report_files.FIGURES),
        help="with --out-md: plot titles naming the experiment, dir and commit (full, the default), "
        "or without them (paper)",
    )
    p = command("export", cmd_export, "a dir's step series as TensorBoard event files")
    _path(p.add_argument("dir", metavar="DIR", help="an experiment dir (or any dir of *.log files)"), "dir")
    _path(
        p.add_argument(
            "--tensorboard", required=True, metavar="OUT", help="a new or empty dir for the event files"
        ),
        "dir",
    )
    command("gpus", cmd_gpus, "GPUs (NVML) and host at a glance")
    p = command("completion", cmd_completion, "the shell's completion script (bash, zsh, tcsh)")
    p.add_argument("shell", choices=SHELLS, help="the shell to complete in")
    return parser


def _description(func: Callable) -> str:
    """A command's --help description: its docstring, as one paragraph."""
    return " ".join((func.__doc__ or "").split())


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
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
