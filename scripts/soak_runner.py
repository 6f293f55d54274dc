"""Soak the leg runner: launch and stop legs N times through the real CLI; count what leaks.

    python scripts/soak_runner.py [-n 12] [--keep]

Each round launches a detached two-leg queue of tests/fake_trainer.py (2 processes per leg, a
real torchrun) into a fresh temp exp_root, waits until leg `a` logs steps, then ends it one of
four ways, in turn:

  stop-leg    `cockpit stop DIR a`: the supervisor stops leg a, the queue goes on with b
  stop-queue  `cockpit stop DIR`: SIGTERM to the supervisor, both legs end stopped
  kill9       kill -9 of the supervisor, then `cockpit stop DIR`: the orphaned leg is stopped
              by the client (no supervisor left)
  finish      nothing: both legs run to their end

Every other round the workers ignore SIGTERM and each holds a grandchild in its own session, so
only the SIGKILL of the tree collected before the first signal can leave nothing behind.

Figures, per round and in total:
  orphans   processes of the round still alive when it is over (must be 0): the torchrun tree
            collected while the leg ran, plus any process whose command line names the dir
  lost log bytes  bytes the trainer had written (its rank 0 records `<step> <bytes>` in a side
            file after each flushed line) that are missing from `<leg>.log` (must be 0)
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from cockpit import expdir, procs  # noqa: E402

MODES = ("stop-leg", "stop-queue", "kill9", "finish")

REGISTRY = """[project]
name = "soak"
exp_root = "exp"
read_only = ["ro"]
on_failure = "continue"
[defaults]
module = "tests.fake_trainer"
device = "cpu"
nproc_per_node = 2
[defaults.args]
step-sleep = 0.02
checkpoint-root = "{{exp_dir}}/ckpt_root"
[[experiment]]
id = "soak"
[[experiment.leg]]
name = "a"
args = {{ model-tag = "a", num-iterations = {a_steps}, progress-file = "{{exp_dir}}/ckpt_root/a.progress"{deaf} }}
[[experiment.leg]]
name = "b"
args = {{ model-tag = "b", num-iterations = 30, progress-file = "{{exp_dir}}/ckpt_root/b.progress" }}
"""


def cockpit(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "cockpit.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )


def wait_for(pred, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := pred():
            return value
        time.sleep(0.05)
    raise SystemExit(f"soak: timed out waiting for {what}")


def lost_bytes(exp_dir: Path, leg: str) -> tuple[int, int]:
    """(bytes the trainer said it wrote, bytes of those missing from the log)."""
    progress = exp_dir / "ckpt_root" / f"{leg}.progress"
    if not progress.exists():
        return 0, 0
    last_step, written = map(int, progress.read_text().split())
    have = 0
    with open(exp_dir / f"{leg}.log", "rb") as f:
        for raw in f:
            if raw.startswith(b"step ") and int(raw[5:10]) <= last_step:
                have += len(raw)
    return written, max(0, written - have)


def _alive(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def leftovers(exp_dir: Path, tree: list[psutil.Process]) -> list[int]:
    pids = {p.pid for p in tree if _alive(p)}
    for p in psutil.process_iter(["cmdline", "status"]):
        if str(exp_dir) in " ".join(p.info["cmdline"] or []) and p.info["status"] != psutil.STATUS_ZOMBIE:
            pids.add(p.pid)
    return sorted(pids)


def one_round(i: int, mode: str, deaf: bool, base: Path) -> dict:
    work = base / f"round{i:02d}"
    work.mkdir()
    a_steps = 40 if mode == "finish" else 100000
    flags = ", ignore-sigterm = true, spawn-child = true" if deaf else ""
    (work / "reg.toml").write_text(REGISTRY.format(a_steps=a_steps, deaf=flags))
    t0 = time.monotonic()
    r = cockpit("--registry", "reg.toml", "launch", "soak", cwd=work)
    if r.returncode != 0:
        raise SystemExit(f"soak: launch failed: {r.stderr.strip()}")
    exp_dir = Path(r.stdout.strip().splitlines()[-1])

    def running_a():
        st = expdir.read_state(exp_dir, "a")
        log = exp_dir / "a.log"
        if st and st.status == "running" and log.exists() and log.read_bytes().count(b"\nstep ") >= 5:
            return st
        return None

    st = wait_for(running_a, 60, "leg a running")
    want = 5 if deaf else 3  # torchrun, 2 workers (+ 2 grandchildren)
    tree = wait_for(lambda: (t := procs.tree_of(st.pid, st.create_time)) and len(t) >= want and t, 30, "tree")
    t_stop = time.monotonic()
    if mode == "stop-leg":
        r = cockpit("--registry", "reg.toml", "stop", str(exp_dir), "a", cwd=work)
    elif mode == "stop-queue":
        r = cockpit("--registry", "reg.toml", "stop", str(exp_dir), cwd=work)
    elif mode == "kill9":
        os.kill(expdir.open_dir(exp_dir).supervisor["pid"], signal.SIGKILL)
        wait_for(lambda: not expdir.open_dir(exp_dir).supervisor_alive, 10, "supervisor gone")
        r = cockpit("--registry", "reg.toml", "stop", str(exp_dir), cwd=work)
    if mode != "finish" and r.returncode != 0:
        raise SystemExit(f"soak: stop failed: {r.stderr.strip()}")
    # `cockpit stop` returns once the leg is recorded stopped: an upper bound on its processes' end
    stop_s = time.monotonic() - t_stop if mode != "finish" else None
    late = [p.pid for p in tree if _alive(p)] if stop_s is not None else []
    if late:
        print(
            f"  round {i}: leg a's processes {late} still alive when `cockpit stop` returned", file=sys.stderr
        )
    wait_for(lambda: not (d := expdir.open_dir(exp_dir)).supervisor_alive and not d.active, 120, "queue end")
    d = expdir.open_dir(exp_dir)
    sup = d.supervisor or {}
    # the supervisor records its end just before it exits: give it a moment to be gone
    deadline = time.monotonic() + 10
    while procs.alive(sup.get("pid"), sup.get("create_time")) and time.monotonic() < deadline:
        time.sleep(0.05)
    orphans = leftovers(exp_dir, tree)
    for pid in orphans:
        try:
            print(f"  orphan {pid}: {' '.join(psutil.Process(pid).cmdline())[:160]}", file=sys.stderr)
        except psutil.NoSuchProcess:
            pass
    written = lost = 0
    for leg in ("a", "b"):
        w, missing = lost_bytes(exp_dir, leg)
        written, lost = written + w, lost + missing
    for pid in orphans:  # leave the machine clean whatever we found
        try:
            psutil.Process(pid).kill()
        except psutil.NoSuchProcess:
            pass
    return {
        "round": i,
        "mode": mode,
        "deaf": deaf,
        "a": d.states["a"].status,
        "b": d.states["b"].status if "b" in d.states else "-",
        "secs": time.monotonic() - t0,
        "stop_s": stop_s,
        "orphans": len(orphans),
        "written": written,
        "lost": lost,
    }


def _s(x: float | None) -> str:
    return "-" if x is None else f"{x:.1f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-n", type=int, default=12, help="rounds (default 12: each mode 3 times)")
    ap.add_argument("--keep", action="store_true", help="keep the temp dirs")
    args = ap.parse_args()
    base = Path(tempfile.mkdtemp(prefix="cockpit-soak-"))
    rows = []
    print(
        f"{'round':>5}  {'mode':<10} {'deaf':<5} {'a':<8} {'b':<8} {'secs':>5} {'stop s':>6} {'orphans':>7} "
        f"{'log bytes':>9} {'lost':>4}"
    )
    try:
        for i in range(args.n):
            row = one_round(i, MODES[i % len(MODES)], deaf=bool((i // len(MODES)) % 2 == 0), base=base)
            rows.append(row)
            print(
                f"{row['round']:>5}  {row['mode']:<10} {'yes' if row['deaf'] else 'no':<5} {row['a']:<8} "
                f"{row['b']:<8} {row['secs']:>5.1f} {_s(row['stop_s']):>6} {row['orphans']:>7} {row['written']:>9} {row['lost']:>4}",
                flush=True,
            )
    finally:
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)
    orphans = sum(r["orphans"] for r in rows)
    lost = sum(r["lost"] for r in rows)
    written = sum(r["written"] for r in rows)
    print(
        f"soak: {len(rows)} launches, orphan processes {orphans} (must be 0), "
        f"lost log bytes {lost} of {written} (must be 0)"
    )
    sys.exit(0 if orphans == 0 and lost == 0 else 1)


if __name__ == "__main__":
    main()
