"""Benchmark of the cockpit app: startup to first full paint, and its own CPU use while 8 legs log.

    python -m bench.tui [--seconds 20] [--keep DIR]    (from the repository root)

Builds a workspace in a temp dir: a registry of 20 experiments x 10 legs, and 10 experiment
dirs each holding a 100k-line log (done). Then, side by side, each in its own process on a real
pseudo-terminal (160x48, so every frame is written out as a terminal would get it):

1. startup: process start -> first full paint (the app has applied its first view and the
   screen has been refreshed). Cockpit vs a bare Textual app of the same size (the same layout
   and stylesheet, the tree and tables filled with static data, no I/O).
2. CPU: 8 more dirs each with a running leg whose log grows by 20 lines/s (written by this
   process, which also plays their supervisor); the cockpit follows all 8 (tabs, live table)
   for `--seconds`; its CPU time over that window, in % of one core. The bare app for
   comparison shows the same screen work from memory: the active log tab gets its leg's
   20 lines/s, the tables and panels refresh at the same 2 Hz.

Targets: startup < 1 s; CPU < 10% of one core. The last line gives the ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import pty
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

# Each app runs in a child process that imports this module: what the parent alone needs (psutil,
# the pty calls) and what only one app needs (Textual, the cockpit) is imported inside the function
# that uses it, so each child's startup time counts its own app's imports and no more.

N_EXP, N_LEGS, N_BIG, BIG_LINES, N_RUNNING, LINES_PER_S = 20, 10, 10, 100_000, 8, 20
SIZE = (160, 48)
REPO = Path(__file__).resolve().parents[1]


def step_line(i: int, total: int) -> str:
    return (
        f"step {i:05d}/{total:05d} ({100 * i / total:.2f}%) | loss: {6.0 - i * 1e-5:.6f} | lrm: 1.00 | "
        f"dt: {650 + i % 7:.2f}ms | tok/sec: {806_400 + (i % 13) * 100:,} | bf16_mfu: 9.76 | epoch: 0 | "
        f"total time: {i * 0.011:.2f}m | eta: 2.6m"
    )


# ----------------------------------------------------------------------------------------------
# the workspace


def build_workspace(root: Path) -> Path:
    exp_root = root / "exp"
    exp_root.mkdir(parents=True)
    out = [
        f'[project]\nname = "bench"\nexp_root = "{exp_root}"\n',
        '[defaults]\nmodule = "nanochat.base_train"\ndevice = "cpu"\nnproc_per_node = 1\n',
        '[defaults.args]\nnum-iterations = 100000\ncheckpoint-root = "{exp_dir}/ckpt_root"\n',
    ]
    for e in range(N_EXP):
        out.append(
            f'[[experiment]]\nid = "exp-{e:02d}"\ntitle = "benchmark experiment {e}"\nbaseline = "leg-0"\n'
        )
        for g in range(N_LEGS):
            out.append(f'[[experiment.leg]]\nname = "leg-{g}"\nargs = {{ model-tag = "e{e}_l{g}" }}\n')
    registry = root / "experiments.toml"
    registry.write_text("\n".join(out))
    body = "".join(step_line(i, BIG_LINES) + "\n" for i in range(BIG_LINES))
    for e in range(N_BIG):
        d = exp_root / f"20260101_{e:06d}_exp-{e:02d}"
        write_dir(d, f"exp-{e:02d}", "leg-0", "done")
        (d / "leg-0.log").write_text(body + "Peak memory usage: 18987.83MiB\nTotal training time: 2.97m\n")
    return registry


def write_dir(d: Path, exp: str, leg: str, status: str, supervisor_pid: int | None = None) -> None:
    import psutil

    (d / "state").mkdir(parents=True)
    (d / "plan.json").write_text(json.dumps({"experiment": exp, "legs": [{"name": leg}]}))
    state = {"leg": leg, "status": status, "log": str(d / f"{leg}.log")}
    if supervisor_pid is not None:
        me = psutil.Process(supervisor_pid)
        state |= {"pid": me.pid, "create_time": me.create_time()}
        (d / "state" / "supervisor.json").write_text(
            json.dumps({"pid": me.pid, "create_time": me.create_time(), "ended_at": None})
        )
    (d / "state" / f"{leg}.json").write_text(json.dumps(state))


def add_running(exp_root: Path) -> list[Path]:
    logs = []
    for e in range(N_RUNNING):
        exp = f"exp-{N_BIG + e:02d}"
        d = exp_root / f"20260102_{e:06d}_{exp}"
        write_dir(d, exp, "leg-1", "running", supervisor_pid=os.getpid())
        log = d / "leg-1.log"
        log.write_text("".join(step_line(i, BIG_LINES) + "\n" for i in range(20)))
        logs.append(log)
    return logs


class Writers:
    """Appends LINES_PER_S step lines per second to each log, one line at a time."""

    def __init__(self, logs: list[Path]):
        self.logs, self.stop, self.written = logs, threading.Event(), 0
        self.started = self.ended = 0.0

    def run(self) -> None:
        files = [open(p, "a", buffering=1) for p in self.logs]  # line-buffered: a line lands whole
        step, period = 20, 1.0 / LINES_PER_S
        t = self.started = time.monotonic()
        while not self.stop.is_set():
            for f in files:
                f.write(step_line(step, BIG_LINES) + "\n")
            self.written += len(files)
            step += 1
            t += period
            self.stop.wait(max(0.0, t - time.monotonic()))
        self.ended = time.monotonic()
        for f in files:
            f.close()


# ----------------------------------------------------------------------------------------------
# the two apps, each run as a child process on a pty


def child(kind: str, registry: str, out: str, seconds: float, t_spawn: float) -> None:
    from textual.app import App

    if kind == "cockpit":
        from cockpit.tui.app import CockpitApp
        from cockpit.tui.main_screen import MainScreen

        class BenchScreen(MainScreen):
            painted = False

            def watch_view(self, old, view) -> None:
                super().watch_view(old, view)
                if view is not None and not self.painted:  # the first view: time it once it is drawn
                    self.painted = True
                    self.call_after_refresh(self.mark)

            def mark(self) -> None:
                write_paint(out, time.time() - t_spawn)
                self.app.set_timer(seconds, self.app.exit)

        app: App = CockpitApp(registry, branch="bench")
        app.main_screen = BenchScreen(app.main_screen.collector)
    else:
        app = bare_app(out, seconds, t_spawn)
    app.run()


def write_paint(out: str, seconds: float) -> None:
    """The paint time, written whole (the parent polls for the file: never a half-written one)."""
    tmp = Path(out + ".tmp")
    tmp.write_text(json.dumps({"paint": seconds}))
    os.replace(tmp, out)


def bare_app(out: str, seconds: float, t_spawn: float):
    """A bare Textual app of the cockpit's size: the same layout, stylesheet and widget kinds,
    filled with static data; no file, process or NVML; a 2 Hz refresh and, once painted, the
    active tab's 20 lines/s into its log pane."""
    from rich.text import Text
    from textual.app import App, ComposeResult
    from textual.containers import Horizontal, Vertical, VerticalScroll
    from textual.widgets import DataTable, Footer, Log, Static, TabbedContent, TabPane, Tree

    class Bare(App):
        CSS_PATH = str(REPO / "cockpit" / "tui" / "cockpit.tcss")

        def compose(self) -> ComposeResult:
            yield Static(id="header")
            with Horizontal(id="main"):
                with Vertical(id="left"):
                    yield Tree("experiments", id="experiments")
                    with VerticalScroll(id="resume-box"):
                        yield Static("\n".join(f"resume line {i}" for i in range(60)))
                with Vertical(id="right"):
                    yield Static(id="gpus")
                    yield DataTable(id="live")
                    yield DataTable(id="final")
                    with TabbedContent(id="logs"):
                        for i in range(N_RUNNING):
                            with TabPane(f"leg-{i}"):
                                yield Log(max_lines=2000)
            yield Footer()

        def on_mount(self) -> None:
            tree = self.query_one(Tree)
            tree.show_root = False
            for e in range(N_EXP):
                node = tree.root.add(Text(f"exp-{e:02d}  [cpu]  10 pending"), expand=True)
                for g in range(N_LEGS):
                    node.add_leaf(Text(f"○ leg-{g}  pending"))
            for t in (self.query_one("#live", DataTable), self.query_one("#final", DataTable)):
                t.add_columns(*[f"col {i}" for i in range(10)])
            self.step = 0
            self.fill()
            self.call_after_refresh(self.mark)

        def fill(self) -> None:
            self.query_one("#header", Static).update(f"bench  │  step {self.step}")
            self.query_one("#gpus", Static).update(
                "\n".join(f"gpu {i} {'█' * (self.step % 8)}" for i in range(8))
            )
            for t in (self.query_one("#live", DataTable), self.query_one("#final", DataTable)):
                t.clear()
                for r in range(N_RUNNING):
                    t.add_row(*[f"{self.step + r + c}" for c in range(10)])

        def mark(self) -> None:
            write_paint(out, time.time() - t_spawn)
            self.set_interval(0.5, self.tick)
            self.set_timer(seconds, self.exit)

        def tick(self) -> None:  # what the cockpit's 2 Hz updates do, from memory
            self.step += 1
            self.fill()
            n = LINES_PER_S // 2  # the active tab's leg; hidden tabs render nothing (as the cockpit)
            self.query(Log).first().write_lines(
                [step_line(self.step * n + i, BIG_LINES) for i in range(n)], scroll_end=True
            )

    return Bare()


def run_child(kind: str, registry: Path, seconds: float, workdir: Path, measure_cpu: bool = True) -> dict:
    """Run one app on a pty; return its paint time and its CPU % over the measured window."""
    import fcntl
    import struct
    import termios

    import psutil

    out = workdir / f"{kind}.json"
    out.unlink(missing_ok=True)
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", SIZE[1], SIZE[0], 0, 0))
    env = {
        **os.environ,
        "TERM": "xterm-256color",
        "COLUMNS": str(SIZE[0]),
        "LINES": str(SIZE[1]),
        "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p),
    }
    t_spawn = time.time()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bench.tui",
            "--child",
            kind,
            str(registry),
            str(out),
            str(seconds),
            repr(t_spawn),
        ],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env=env,
        start_new_session=True,
        cwd=workdir,
    )
    os.close(slave)
    drained = [0]

    def drain() -> None:  # the terminal: read and discard what the app writes
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:
                return
            if not data:
                return
            drained[0] += len(data)

    threading.Thread(target=drain, daemon=True).start()
    p = psutil.Process(proc.pid)
    deadline = time.monotonic() + 60
    while not out.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    if not out.exists():
        proc.kill()
        raise SystemExit(f"bench: the {kind} app never painted (exit code {proc.poll()})")
    paint = json.loads(out.read_text())["paint"]
    if not measure_cpu:
        proc.wait(timeout=30)
        os.close(master)
        return {"paint_s": paint}
    time.sleep(2.0)  # warm-up: the first refreshes after the paint are not the steady state
    c0, t0, th0 = p.cpu_times(), time.monotonic(), {t.id: t.user_time + t.system_time for t in p.threads()}
    time.sleep(max(1.0, seconds - 3.0))
    c1, t1, th1 = p.cpu_times(), time.monotonic(), {t.id: t.user_time + t.system_time for t in p.threads()}
    proc.wait(timeout=30)
    os.close(master)
    cpu = (c1.user + c1.system - c0.user - c0.system) / (t1 - t0) * 100.0
    # the UI thread (the process's first, id == pid) vs every other thread (workers, Textual's writer)
    ui = (th1.get(proc.pid, 0.0) - th0.get(proc.pid, 0.0)) / (t1 - t0) * 100.0
    return {"paint_s": paint, "cpu_pct": cpu, "ui_pct": ui, "other_pct": cpu - ui, "tty_bytes": drained[0]}


# ----------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--child":
        kind, registry, out, seconds, t_spawn = argv[1:6]
        child(kind, registry, out, float(seconds), float(t_spawn))
        return 0
    ap = argparse.ArgumentParser(prog="python -m bench.tui", description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=20.0, help="how long each app runs (default 20)")
    ap.add_argument(
        "--repeat", type=int, default=5, help="startup runs of each app; the median counts (default 5)"
    )
    ap.add_argument("--keep", metavar="DIR", help="build the workspace here and keep it")
    args = ap.parse_args(argv)

    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="cockpit-bench-"))
    root.mkdir(parents=True, exist_ok=True)
    try:
        t = time.monotonic()
        registry = build_workspace(root)
        print(
            f"workspace: {N_EXP} experiments x {N_LEGS} legs, {N_BIG} dirs with a {BIG_LINES:,}-line log "
            f"({time.monotonic() - t:.1f} s to build) in {root}"
        )
        # startup: the median of --repeat runs of each, alternating (the machine's load varies)
        paints: dict[str, list[float]] = {"cockpit": [], "bare": []}
        for _ in range(args.repeat):
            for kind in paints:
                paints[kind].append(run_child(kind, registry, 0.5, root, measure_cpu=False)["paint_s"])
        startup_c = {"paint_s": statistics.median(paints["cockpit"])}
        startup_b = {"paint_s": statistics.median(paints["bare"])}
        print(
            "startup runs (s): "
            + "; ".join(f"{k} " + ", ".join(f"{v:.3f}" for v in vs) for k, vs in paints.items())
        )

        logs = add_running(root / "exp")
        writers = Writers(logs)
        th = threading.Thread(target=writers.run, daemon=True)
        th.start()
        try:
            cpu_c = run_child("cockpit", registry, args.seconds, root)
            cpu_b = run_child("bare", registry, args.seconds, root)
        finally:
            writers.stop.set()
            th.join()
        rate = writers.written / max(1e-9, writers.ended - writers.started)
        print(
            f"running legs: {N_RUNNING}, each writing {LINES_PER_S} lines/s ({rate:.0f} lines/s written "
            f"in all); {args.seconds:.0f} s per app; terminal {SIZE[0]}x{SIZE[1]} (pty)"
        )
        print()
        print(f"{'measure':<40} {'cockpit':>10} {'bare app':>10} {'ratio':>7} {'target':>10}")
        print(
            f"{'startup to first full paint (s)':<40} {startup_c['paint_s']:>10.3f} {startup_b['paint_s']:>10.3f} "
            f"{startup_c['paint_s'] / startup_b['paint_s']:>7.2f} {'< 1 s':>10}"
        )
        print(
            f"{'CPU, 8 legs x 20 lines/s (% of 1 core)':<40} {cpu_c['cpu_pct']:>10.1f} {cpu_b['cpu_pct']:>10.1f} "
            f"{cpu_c['cpu_pct'] / max(1e-9, cpu_b['cpu_pct']):>7.2f} {'< 10%':>10}"
        )
        print(f"{'  of which the UI thread':<40} {cpu_c['ui_pct']:>10.1f} {cpu_b['ui_pct']:>10.1f}")
        print(
            f"{'  of which other threads (workers, output)':<40} {cpu_c['other_pct']:>10.1f} {cpu_b['other_pct']:>10.1f}"
        )
        print(
            f"{'terminal output (KiB/s)':<40} {cpu_c['tty_bytes'] / 1024 / args.seconds:>10.1f} "
            f"{cpu_b['tty_bytes'] / 1024 / args.seconds:>10.1f}"
        )
        ok_start = startup_c["paint_s"] < 1.0
        ok_cpu = cpu_c["cpu_pct"] < 10.0
        print()
        print(
            f"startup {startup_c['paint_s']:.3f} s ({'OK' if ok_start else 'OVER'} target 1 s), "
            f"ratio to bare Textual {startup_c['paint_s'] / startup_b['paint_s']:.2f}x; "
            f"CPU {cpu_c['cpu_pct']:.1f}% of one core ({'OK' if ok_cpu else 'OVER'} target 10%), "
            f"ratio to bare Textual {cpu_c['cpu_pct'] / max(1e-9, cpu_b['cpu_pct']):.2f}x"
        )
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
