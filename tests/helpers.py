"""Plain functions and classes the test modules share (`from helpers import ...`); the fixtures
and hooks are in conftest.py.

- paths and a fixed time: REPO, FIXTURES, GOLDEN, NOW; golden files (`check_golden`, `normalized`)
- registries: `write_registry` (legs that run tests/fake_trainer.py), the bundled experiments.toml
  with its paths moved under a temp dir (`registry_file`, `bundled_registry`)
- experiment dirs as the cockpit writes them: `make_dir` (from fixture logs), `write_dir` (from
  generated lines, `log_lines`); stand-ins for a live leg (`live_leg`) and a live supervisor
  (`hold_supervisor_lock`), provably the dir's, killed and released when the test ends
  (`end_live_legs_and_locks`, called by conftest.py after every test)
- the real `cockpit` CLI as a subprocess (`cockpit`), `wait_for`, process trees, leftovers
- a GPU sampler with fixed figures (`FakeSampler`, `gpu`); the TUI's fixed clock and snapshot dirs;
  for Pilot tests `make_app`, `ready`, `select`, `notes`, `screen_text`, `until`
- a tmpfs mount (`mount_tmpfs`); the local Slurm's script, nodes and their states
"""

from __future__ import annotations

import atexit
import datetime as dt
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import deque
from pathlib import Path

import psutil

from cockpit import expdir, fsutil, procs
from cockpit import registry as reg
from cockpit.gpus import GpuInfo, HostInfo, Snapshot

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).parent / "fixtures"
GOLDEN = Path(__file__).parent / "golden"
NOW = 1_800_000_000.0  # a fixed "now", long after every fixture log was written: no log counts as running
SNAP_ROOT = Path("/tmp/cockpit-tui-snap")  # not $TMPDIR: the SVGs show these paths
CLOCK = dt.datetime(2026, 2, 24, 19, 12, 0)  # the TUI's clock in snapshots and Pilot tests

_spawned: list[subprocess.Popen] = []  # live legs of the running test (killed when it ends)
_locks: list[int] = []  # supervisor locks this test process holds (released when it ends)
_bin: list[Path] = []


# ----------------------------------------------------------------------------------------------
# live legs and supervisors: stand-ins the cockpit can prove are the dir's


def fake_torchrun(bin_dir: Path) -> Path:
    """An executable named `torchrun` that only sleeps: a stand-in whose command line and
    environment can be made exactly those of a leg's torchrun."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    path = bin_dir / "torchrun"
    path.write_text(f"#!{sys.executable}\nimport time\ntime.sleep(600)\n")
    path.chmod(0o755)
    return path


def spawn_leg_process(exp_dir: Path, leg: str, argv: list[str], marker: bool = True) -> subprocess.Popen:
    """Start `argv` (argv[0] a fake_torchrun) as the leg's torchrun would run: with this dir's
    marker in its environment (`marker=False`: without it, as a process of somewhere else)."""
    env = dict(os.environ)
    if marker:
        env.update(expdir.leg_env(exp_dir, leg))
    else:
        env.pop(procs.ENV_EXP_DIR, None)
    p = subprocess.Popen(argv, env=env, start_new_session=True)
    # Returned once the child has exec'd: until then its command line is this test process's, and
    # the cockpit rightly finds it not proven the leg's.
    deadline = time.monotonic() + 10.0
    while time.monotonic() < deadline:
        try:
            cmdline = psutil.Process(p.pid).cmdline()
            if argv[0] in cmdline[:2] and cmdline[len(cmdline) - len(argv) + 1 :] == argv[1:]:
                break
        except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
            break
        time.sleep(0.01)
    return p


def _shared_torchrun() -> Path:
    if not _bin:
        d = Path(tempfile.mkdtemp(prefix="cockpit-test-bin-"))
        atexit.register(shutil.rmtree, d, True)
        _bin.append(fake_torchrun(d))
    return _bin[0]


def live_leg(exp_dir: Path, leg: str) -> tuple[int, float, list[str]]:
    """A process that is provably the leg's torchrun until the test ends: (pid, create time, the
    argv its plan must record). Put both in the dir's plan and the leg's state."""
    argv = [
        str(_shared_torchrun()),
        "--standalone",
        "--nproc_per_node=1",
        "-m",
        "tests.fake_trainer",
        "--",
        "--model-tag",
        leg,
    ]
    p = spawn_leg_process(Path(exp_dir), leg, argv)
    _spawned.append(p)
    return p.pid, psutil.Process(p.pid).create_time(), argv


def live_leg_pids() -> list[int]:
    """Pids of the live legs the running test started, oldest first."""
    return [p.pid for p in _spawned]


def hold_supervisor_lock(exp_dir: Path) -> dict:
    """Make this test process the dir's live supervisor, provably (it holds state/supervisor.lock
    until the test ends): returns the record to write as state/supervisor.json."""
    fd = fsutil.try_lock(Path(exp_dir) / expdir.STATE_DIR / f"{expdir.SUPERVISOR}.lock")
    assert fd is not None
    _locks.append(fd)
    me = psutil.Process()
    return {"pid": me.pid, "create_time": me.create_time(), "ended_at": None}


def end_live_legs_and_locks() -> None:
    """Kill and reap the live legs the test started; release the supervisor locks it holds."""
    while _spawned:
        p = _spawned.pop()
        p.kill()
        p.wait()
    while _locks:
        os.close(_locks.pop())


# ----------------------------------------------------------------------------------------------
# registries, dirs and golden files


def write_registry(
    tmp_path: Path,
    legs: dict[str, str],
    *,
    exp_id: str = "fake",
    on_failure: str = "stop",
    module: str = "tests.fake_trainer",
    device: str = "cpu",
    nproc: int = 2,
    common: str = 'num-iterations = 20\nstep-sleep = 0.05\ncheckpoint-root = "{exp_dir}/ckpt_root"',
    extra_project: str = "",
    name: str = "reg.toml",
) -> Path:
    """A registry in tmp_path: exp_root tmp_path/exp, read-only tmp_path/ro; one experiment whose
    legs are `name -> inline args` (TOML inline-table body)."""
    leg_text = "".join(f'[[experiment.leg]]\nname = "{n}"\nargs = {{ {a} }}\n' for n, a in legs.items())
    text = f"""[project]
name = "test"
exp_root = "exp"
read_only = ["ro"]
on_failure = "{on_failure}"
{extra_project}
[defaults]
module = "{module}"
device = "{device}"
nproc_per_node = {nproc}
[defaults.args]
{common}

[[experiment]]
id = "{exp_id}"
{leg_text}"""
    path = tmp_path / name
    path.write_text(text)
    return path


def registry_file(
    dest: Path,
    text: str | None = None,
    read_only: str = "ro",
    iterations: int | None = None,
    corpus: Path | None = None,
) -> Path:
    """The bundled experiments.toml (or `text`) written in `dest`: exp_root `dest/exp`, the
    read-only paths under `dest/<read_only>/`; `iterations`: every leg's num-iterations (saves off);
    `corpus` (the `smoke_corpus` fixture): copied where cpu-smoke's prepare step would make it, so
    a launch skips the step."""
    if corpus is not None:
        place_corpus(dest / "exp", corpus)
    text = (REPO / "experiments.toml").read_text() if text is None else text
    text = re.sub(r"(?m)^exp_root = .*$", 'exp_root = "exp"', text, count=1)
    text = text.replace('"~/.cache/nanochat/', f'"{read_only}/')
    if iterations is not None:
        text = re.sub(r"^num-iterations = 40$", f"num-iterations = {iterations}", text, flags=re.M)
        text = re.sub(r"^save-every = 40$", "save-every = -1", text, flags=re.M)
    path = dest / "experiments.toml"
    path.write_text(text)
    return path


SMOKE_DATA = Path("_data") / "smoke"  # where cpu-smoke's prepare step makes its corpus, under exp_root


def place_corpus(exp_root: Path, corpus: Path) -> Path:
    """A copy of the session's smoke corpus where cpu-smoke's prepare step would make it (a copy,
    not a link: a leg's inputs must lie under exp_root, links resolved)."""
    target = exp_root / SMOKE_DATA
    if not target.exists():
        shutil.copytree(corpus, target)
    return target


def bundled_registry(tmp_path: Path, text: str | None = None) -> reg.Registry:
    """The bundled registry (or `text`) loaded, its paths under tmp_path (read-only: tmp_path/cache)."""
    return reg.load(registry_file(tmp_path, text, read_only="cache"))


def make_dir(
    exp_root: Path,
    name: str,
    legs: dict[str, tuple[str | None, str | None]],
    supervisor: bool = False,
    mtime: float = NOW - 5000,
    registry: reg.Registry | None = None,
) -> Path:
    """An experiment dir in the RUNNER's format: plan.json, state/<leg>.json, <leg>.log.

    legs: name -> (state status or None, fixture log path relative to tests/fixtures or None).
    A "running" state names a live stand-in torchrun (live_leg); a live supervisor is
    this test process, holding the dir's lock.
    """
    d = exp_root / name
    (d / "state").mkdir(parents=True)
    experiment = name.split("_", 2)[2]
    plan = {
        "experiment": experiment,
        "dir": str(d),
        "legs": [{"name": leg, "log": str(d / f"{leg}.log")} for leg in legs],
    }
    if registry is not None:
        plan["registry"] = {"path": str(registry.path), "raw": registry.raw}  # as launch.write_plan writes it
    if supervisor:
        (d / "state" / "supervisor.json").write_text(json.dumps(hold_supervisor_lock(d)))
    for i, (leg, (status, fixture)) in enumerate(legs.items()):
        if fixture is not None:
            shutil.copy(FIXTURES / fixture, d / f"{leg}.log")
            os.utime(d / f"{leg}.log", (mtime + i, mtime + i))
        if status is not None:
            st = {"leg": leg, "status": status, "log": str(d / f"{leg}.log"), "exit_code": None}
            if status == "running":  # a live process, provably this leg's torchrun
                pid, created, argv = live_leg(d, leg)
                st.update(pid=pid, create_time=created)
                plan["legs"][i]["argv"] = argv
            if status == "done":
                st["exit_code"] = 0
            if status == "failed":
                st["exit_code"] = 1
                st["error_tail"] = ["torch.OutOfMemoryError: CUDA out of memory."]
            if status == "waiting":
                st["waiting_reason"] = "GPU 0 busy: util 97% > 5%"
            (d / "state" / f"{leg}.json").write_text(json.dumps(st))
    (d / "plan.json").write_text(json.dumps(plan, indent=2))
    return d


def normalized(text: str, tmp_path: Path) -> str:
    """Paths under tmp_path become $TMP; the time line goes (it depends on the time zone)."""
    text = re.sub(r"at \d\d:\d\d [+-]\d{4}", "at HH:MM", text.replace(str(tmp_path), "$TMP"))
    lines = [ln for ln in text.splitlines() if not ln.startswith(("Last updated: ", "Generated: "))]
    return "\n".join(lines) + "\n"


def check_golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("UPDATE_GOLDEN"):
        path.write_text(text)
    assert text == path.read_text()


def step_line(
    step: int,
    total: int,
    loss: float,
    dt_ms: float,
    tok: float,
    mfu: float,
    t_min: float,
    eta: float | None = None,
) -> str:
    line = (
        f"step {step:05d}/{total:05d} ({100 * step / total:.2f}%) | loss: {loss:.6f} | lrm: 1.00 | "
        f"dt: {dt_ms:.2f}ms | tok/sec: {int(tok):,} | bf16_mfu: {mfu:.2f} | epoch: 0 | total time: {t_min:.2f}m"
    )
    return line + (f" | eta: {eta:.1f}m" if eta is not None else "")


def log_lines(
    steps: int,
    total: int,
    tok: float = 1000.0,
    dt_ms: float = 1024.0,
    finished: bool = True,
    crash: bool = False,
) -> list[str]:
    out = ["Autodetected device type: cpu", "Estimated FLOPs per token: 1.0e+06"]
    for i in range(steps):
        wobble = (i % 5 - 2) * 0.01
        out.append(
            step_line(
                i,
                total,
                6.2 - 0.05 * i,
                dt_ms * (1 - wobble),
                tok * (1 + wobble),
                0.5 + wobble,
                i * dt_ms / 60000,
                (total - i) * dt_ms / 60000 if i > 10 else None,
            )
        )
    if crash:
        out += [
            "Traceback (most recent call last):",
            '  File "nanochat/base_train.py", line 1, in <module>',
            "RuntimeError: CUDA out of memory (fake)",
        ]
    elif finished:
        out += ["Peak memory usage: 812.50MiB", f"Total training time: {steps * dt_ms / 60000:.2f}m"]
    return out


def write_dir(
    exp_root: Path,
    name: str,
    experiment: str,
    legs: dict[str, tuple[str, list[str]]],
    supervisor_alive: bool = False,
) -> Path:
    """An experiment dir: plan.json, `<leg>.log` and state/<leg>.json per leg (status, log lines).

    A live supervisor (this test process, holding the dir's lock) keeps "running"/"queued" states
    as they are written; a "running" leg is a live stand-in torchrun (live_leg)."""
    d = exp_root / name
    (d / "state").mkdir(parents=True)
    plan = {"experiment": experiment, "legs": [{"name": n} for n in legs]}
    for leg, (status, lines) in legs.items():
        if lines or status != "queued":
            (d / f"{leg}.log").write_text("".join(x + "\n" for x in lines))
        state = {
            "leg": leg,
            "status": status,
            "log": str(d / f"{leg}.log"),
            "started_at": "2026-02-24T19:00:00+08:00",
        }
        if status == "running":  # a live process, provably this leg's torchrun
            pid, created, argv = live_leg(d, leg)
            state |= {"pid": pid, "create_time": created}
            next(x for x in plan["legs"] if x["name"] == leg)["argv"] = argv
        if status in ("done", "failed", "stopped"):
            state |= {"ended_at": "2026-02-24T19:05:00+08:00", "exit_code": 0 if status == "done" else 1}
        (d / "state" / f"{leg}.json").write_text(json.dumps(state))
    (d / "plan.json").write_text(json.dumps(plan))
    if supervisor_alive:
        (d / "state" / "supervisor.json").write_text(json.dumps(hold_supervisor_lock(d)))
    return d


def two_running_dirs(exp_root: Path) -> tuple[Path, Path]:
    """Two dirs, each with one leg running and its supervisor alive: cpu-smoke's `dense` (the
    older dir) and moe-fp8-capacity-opt-v3's `moe_fp8_experts_static_cap1p0_v3`."""
    a = write_dir(
        exp_root,
        "20260224_170000_cpu-smoke",
        "cpu-smoke",
        {"dense": ("running", log_lines(5, 40, finished=False))},
        supervisor_alive=True,
    )
    b = write_dir(
        exp_root,
        "20260224_180000_moe-fp8-capacity-opt-v3",
        "moe-fp8-capacity-opt-v3",
        {"moe_fp8_experts_static_cap1p0_v3": ("running", log_lines(5, 40, finished=False))},
        supervisor_alive=True,
    )
    return a, b


# ----------------------------------------------------------------------------------------------
# the CLI, waiting, processes


def child_env() -> dict[str, str]:
    """The test process's env with the checkout importable (for `-m tests.fake_trainer`)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    return env


def cockpit(*args: str, cwd: Path | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cockpit.cli", *args],
        cwd=cwd or REPO,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def wait_for(pred, timeout: float = 30.0, every: float = 0.05, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def tree_of(pid: int, n: int) -> list[psutil.Process] | None:
    """The process tree of pid once it holds at least n processes, else None."""
    t = tree(pid)
    return t if len(t) >= n else None


def kill_leftovers(marker: str) -> list[int]:
    """Kill any process whose command line mentions marker (a test's tmp_path); return their pids."""
    me = os.getpid()
    found = []
    for p in psutil.process_iter(["cmdline"]):
        if p.pid != me and marker in " ".join(p.info["cmdline"] or []):
            found.append(p)
    for p in found:
        for c in [*p.children(recursive=True), p] if p.is_running() else []:
            try:
                c.kill()
            except psutil.NoSuchProcess:
                pass
    return [p.pid for p in found]


def tree(pid: int) -> list[psutil.Process]:
    try:
        p = psutil.Process(pid)
        return [p, *p.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def alive(processes: list[psutil.Process]) -> list[psutil.Process]:
    out = []
    for p in processes:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except psutil.NoSuchProcess:
            pass
    return out


# ----------------------------------------------------------------------------------------------
# GPUs, the TUI's clock and snapshot dirs, Pilot


class FakeSampler:
    """Fixed GPU figures: `gpus_` as given, else `n` H100s (those in `busy` at 97%, with the newest
    live leg's torchrun on them, else this process); `nvml=False`: no NVML, for `reason`."""

    def __init__(
        self,
        n: int = 8,
        busy: tuple[int, ...] = (),
        nvml: bool = True,
        reason: str = "NVML Shared Library Not Found",
        gpus_: list[GpuInfo] | None = None,
    ):
        self.n, self.busy, self.nvml, self.reason, self.gpus = n, busy, nvml, reason, gpus_
        self.history: dict[str, deque] = {}
        self.calls = 0

    def sample(self) -> Snapshot:
        self.calls += 1
        host = HostInfo(cpu_pct=12.5, ram_used_mib=6144.0, ram_total_mib=24576.0, load1=0.42)
        self.history["host.cpu_pct"] = deque([10.0, 12.0, 15.0, 11.0, 12.5] * 3)
        if not self.nvml:
            return Snapshot(False, self.reason, [], host, CLOCK.timestamp())
        if self.gpus is not None:
            return Snapshot(True, None, list(self.gpus), host, CLOCK.timestamp())
        gpus = []
        for i in range(self.n):
            on = i in self.busy
            pids = (live_leg_pids()[-1:] or [os.getpid()]) if on else []
            gpus.append(
                GpuInfo(
                    i,
                    "NVIDIA H100 80GB HBM3",
                    97.0 if on else 0.0,
                    18987.0 if on else 0.0,
                    81559.0,
                    64.0 if on else 31.0,
                    612.0 if on else 71.0,
                    pids,
                    {p: 18432.0 for p in pids},
                    power_limit_w=700.0,
                )
            )
            ramp = [0.0, 0.4, 0.95, 0.97, 0.96, 0.97] if on else [0.0] * 6
            for key, idle, busy in (
                ("util_pct", 0.0, 100.0),
                ("mem_used_mib", 0.0, 19573.0),
                ("temp_c", 31.0, 66.0),
                ("power_w", 71.0, 631.0),
            ):
                self.history[f"gpu{i}.{key}"] = deque([idle + r * (busy - idle) for r in ramp])
        return Snapshot(True, None, gpus, host, CLOCK.timestamp())


def gpu(index: int, util: float | None = 0.0, mem: float | None = 0.0) -> GpuInfo:
    return GpuInfo(index, "NVIDIA H100 80GB HBM3", util, mem, 81559.0, 30.0, 70.0, [])


def fixed_clock() -> dt.datetime:
    return CLOCK


def case_dir(name: str) -> Path:
    """A fixed, empty dir for one snapshot case (same path every run: the SVG shows paths)."""
    path = SNAP_ROOT / name
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def make_app(registry: Path, **kw):
    """The cockpit app on `registry` with a fixed clock and branch; no NVML unless a sampler is given."""
    from cockpit.tui.app import CockpitApp

    kw.setdefault("sampler", FakeSampler(nvml=False))
    kw.setdefault("branch", "main")
    kw.setdefault("clock", fixed_clock)
    return CockpitApp(registry, **kw)


async def ready(pilot, app):
    """The main screen once it shows its first view."""
    main = app.main_screen
    await until(pilot, lambda: main.view is not None, what="the first view")
    await pilot.pause(0.1)
    return main


async def select(pilot, app, sel) -> None:
    """Move the experiments tree's cursor to the node of `sel` (a tui Selection) and wait for it."""
    from cockpit.tui.experiments import ExperimentTree

    tree = app.query_one(ExperimentTree)
    await until(pilot, lambda: tree.cursor_line >= 0, what="the tree's cursor")
    node = tree.node_for(sel)
    if node.parent is not None and not node.parent.is_expanded:
        node.parent.expand()
        await pilot.pause(0.1)
    tree.move_cursor(node)
    await until(pilot, lambda: app.main_screen.selection == sel, what=f"selection {sel}")


def notes(app) -> list[str]:
    """The messages of every notification shown so far."""
    return [message for _, message in app.notes]


def screen_text(app) -> str:
    """What the app's screen shows, as plain text, a line per row."""
    return "\n".join(s.text for s in app.screen._compositor.render_strips())


async def until(pilot, cond, timeout: float = 15.0, what: str = "condition", step: float = 0.05):
    """Let the app run until cond() is truthy; return its value, or fail naming what was awaited."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        await pilot.pause(step)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


# ----------------------------------------------------------------------------------------------
# mounts, the local Slurm


def mount_tmpfs(where: Path, options: str) -> bool:
    """Mount a small tmpfs at `where` (root with mount rights only); False when it cannot be done."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    where.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True)
    return r.returncode == 0


# A real local Slurm cluster (two nodes, n1 and n2, on this host), started once a session by
# scripts/slurm_local.sh (conftest.py's `slurm_cluster`).
SCRIPT = REPO / "scripts" / "slurm_local.sh"
NODES = ("n1", "n2")


def slurm_required() -> bool:
    """In CI (`CI` set) or with COCKPIT_REQUIRE_SLURM=1, a local Slurm that cannot start is an error, not a skip."""
    return bool(os.environ.get("CI")) or os.environ.get("COCKPIT_REQUIRE_SLURM") == "1"


def node_state(node: str) -> str:
    return subprocess.run(
        ["sinfo", "--noheader", "--Node", "--nodes", node, "--format=%t"], capture_output=True, text=True
    ).stdout.strip()


def resume_node(node: str, timeout_s: float = 60.0) -> None:
    """Bring a node a test set down back to idle (it may already be back: ReturnToService=2)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        state = node_state(node)
        if state in ("idle", "mix", "alloc"):
            return
        if state.startswith(("down", "drain", "drng", "fail")):
            subprocess.run(["scontrol", "update", f"nodename={node}", "state=resume"], capture_output=True)
        time.sleep(0.5)
    raise AssertionError(f"node {node} not back to idle after {timeout_s:.0f}s: {node_state(node)!r}")
