"""Replay the hostile user's list against the real CLI and supervisor; one line per case.

    python scripts/hostile.py [-k WORD] [--keep]

Each case plants what a hostile user (or a failing disk) would, runs the real `cockpit` CLI (a
subprocess) or the real supervisor (`python -m cockpit.supervisor`, torchrun and
tests/fake_trainer.py where a live leg matters), and prints `held` or `broken` with what it saw.
Everything happens under a fresh temp dir with its own HOME and exp_root; nothing outside it is
written. Cases that need a read-only filesystem mount a small tmpfs there when this user may
(root), and say "(simulated)" when they fall back to injected OSErrors instead.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import psutil  # noqa: E402

from cockpit import expdir, fsutil, launch, procs, supervisor  # noqa: E402
from cockpit import registry as reg  # noqa: E402

STEP = "step {i:05d}/00010 ({p:.2f}%) | loss: 3.000000 | dt: 10.00ms | tok/sec: 1,000 | bf16_mfu: 1.00"
FINAL = "Peak memory usage: 1.00MiB\nTotal training time: 0.01m\n"
ESC = "\x1b]0;PWNED\x07\x1b[2J\x1b]52;c;ZXZpbA==\x07"


class Broken(Exception):
    """A case saw what must not happen."""


def check(cond: bool, what: str) -> None:
    if not cond:
        raise Broken(what)


class Env:
    """A temp world: HOME, a checkout-like work dir, exp_root under it."""

    def __init__(self, base: Path):
        self.base = base
        self.home = base / "home"
        self.home.mkdir()
        self.env = {**os.environ, "HOME": str(self.home), "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
        self.n = 0

    def work(self) -> Path:
        self.n += 1
        w = self.base / f"case{self.n:02d}"
        w.mkdir()
        return w

    def cockpit(self, *args: str, cwd: Path, timeout: float = 180) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "cockpit.cli", *args],
            cwd=cwd,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def registry(
        self,
        w: Path,
        legs: dict[str, str],
        project: str = "",
        exp_id: str = "x",
        trainer: bool = False,
        on_failure: str = "continue",
    ) -> Path:
        module = "tests.fake_trainer" if trainer else "nanochat.base_train"
        text = (
            f'[project]\nexp_root = "exp"\non_failure = "{on_failure}"\n{project}\n[defaults]\nmodule = "{module}"\n'
            f'device = "cpu"\nnproc_per_node = 1\n[defaults.args]\nstep-sleep = 0.05\n'
            f'checkpoint-root = "{{exp_dir}}/ckpt_root"\n[[experiment]]\nid = "{exp_id}"\n'
        )
        text += "".join(f'[[experiment.leg]]\nname = "{n}"\nargs = {{ {a} }}\n' for n, a in legs.items())
        (w / "reg.toml").write_text(text)
        return w / "reg.toml"


def one_line_2(r: subprocess.CompletedProcess, *words: str) -> str:
    err = r.stderr
    check(r.returncode == 2, f"exit {r.returncode}, not 2: {err.strip()[:160]}")
    check(err.count("\n") == 1 and "Traceback" not in err, f"not one line: {err[:200]!r}")
    for w in words:
        check(w in err, f"{w!r} not in {err.strip()[:200]!r}")
    return err.strip()


def listing(*dirs: Path) -> dict:
    out = {}
    for top in dirs:
        for b, ds, fs in os.walk(top):
            for n in ds + fs:
                p = os.path.join(b, n)
                st = os.lstat(p)
                out[p] = (st.st_mode, st.st_size, st.st_mtime_ns)
    return out


def wait_for(pred, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if v := pred():
            return v
        time.sleep(0.05)
    raise Broken(f"timed out waiting for {what}")


def quick_plan(d: Path, legs: dict[str, str], on_failure: str = "continue") -> Path:
    """A dir whose plan runs `python -c CODE` per leg (the supervisor runs any planned argv)."""
    (d / "state").mkdir(parents=True)
    plan = {
        "experiment": "x",
        "on_failure": on_failure,
        "cwd": str(d),
        "stop_grace_s": 2,
        "legs": [{"name": n, "device": "cpu", "argv": [sys.executable, "-c", c]} for n, c in legs.items()],
    }
    (d / "plan.json").write_text(json.dumps(plan))
    return d


def leg_code(fail: str | None = None, steps: int = 3) -> str:
    lines = [STEP.format(i=i, p=i * 10.0) for i in range(steps)]
    code = f"import sys\nfor ln in {lines!r}:\n    print(ln, flush=True)\n"
    return code + (
        f"sys.stderr.write({fail!r} + '\\n')\nsys.exit(1)\n" if fail else f"sys.stdout.write({FINAL!r})\n"
    )


def run_supervisor(d: Path, env: Env, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cockpit.supervisor", str(d)],
        env=env.env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def mount(where: Path, options: str) -> bool:
    if os.geteuid() != 0 or not shutil.which("mount"):
        return False
    where.mkdir(parents=True, exist_ok=True)
    return (
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True
        ).returncode
        == 0
    )


def umount(where: Path) -> None:
    subprocess.run(["umount", "-l", str(where)], capture_output=True)


# ----------------------------------------------------------------------------------------------
# 1. writes that escape


def case_symlink_leg_log(env: Env) -> str:
    """A symlink planted at a not-yet-started leg's log (real launch, torchrun): that leg fails before
    starting, with the reason in its state and in status; the link's target is untouched."""
    w = env.work()
    victim = w / "elsewhere" / "victim.txt"
    victim.parent.mkdir()
    victim.write_text("keep me\n")
    path = env.registry(
        w,
        {"a": 'model-tag = "a", num-iterations = 60', "b": 'model-tag = "b", num-iterations = 3'},
        trainer=True,
    )
    r = env.cockpit("--registry", str(path), "launch", "x", cwd=w)
    check(r.returncode == 0, f"launch failed: {r.stderr.strip()}")
    d = Path(r.stdout.strip().splitlines()[-1])
    os.symlink(victim, d / "b.log")
    wait_for(
        lambda: (st := expdir.read_state(d, "b")) and st.status in ("failed", "done"), 120, "leg b to end"
    )
    b = expdir.read_state(d, "b")
    check(victim.read_text() == "keep me\n", "the symlink's target was written")
    check(b.status == "failed" and "log path taken" in (b.note or ""), f"leg b: {b.status} {b.note}")
    s = env.cockpit("--registry", str(path), "status", cwd=w)
    check("log path taken" in s.stdout, "status does not say why b failed")
    return "b failed before starting: " + b.note.split(" (")[0]


def case_planted_links_in_dir(env: Env) -> str:
    """Symlinks planted for the state dir, report.md, a state file and the resume guide: never written through."""
    w = env.work()
    victim = w / "victim.txt"
    victim.write_text("keep me\n")
    d = quick_plan(w / "exp" / "20260101_000000_x", {"a": leg_code()})
    os.symlink(victim, d / "report.md")
    os.symlink(victim, d / "state" / "a.json")
    r = run_supervisor(d, env)
    check(r.returncode == 0, f"supervisor exit {r.returncode}: {r.stderr.strip()[:200]}")
    check(victim.read_text() == "keep me\n" and not (d / "report.md").is_symlink(), "written through a link")
    d2 = quick_plan(w / "exp" / "20260101_000001_x", {"a": leg_code()})
    shutil.rmtree(d2 / "state")
    os.symlink(w, d2 / "state")
    r = run_supervisor(d2, env)
    check(
        r.returncode == 2 and "is a symlink" in r.stderr and r.stderr.count("\n") == 1,
        f"state link: {r.stderr[:200]}",
    )
    path = env.registry(w, {"a": 'model-tag = "a"'})
    os.symlink(victim, w / "exp" / "resume-guide.md")
    r = env.cockpit("--registry", str(path), "resume", "--out-md", str(w / "exp" / "resume-guide.md"), cwd=w)
    check(r.returncode == 0 and victim.read_text() == "keep me\n", "guide written through a link")
    return "state dir link refused; report.md, state file, guide links replaced; target untouched"


# ----------------------------------------------------------------------------------------------
# 2. outputs


def _logs_dir(w: Path) -> Path:
    d = w / "exp" / "20260101_000000_x"
    d.mkdir(parents=True)
    (d / "a.log").write_text("".join(STEP.format(i=i, p=i * 10.0) + "\n" for i in range(5)) + FINAL)
    return d


def case_out_md_directory(env: Env) -> str:
    """--out-md naming a directory, a path under a file, a read-only place: one line, exit 2, nothing written."""
    w = env.work()
    d = _logs_dir(w)
    outdir = w / "out"
    outdir.mkdir()
    (w / "afile").write_text("x")
    ro = w / "ro"
    mounted = mount(ro, "size=1m,ro")
    try:
        before = listing(w)
        seen = []
        bad = [str(outdir), str(outdir) + "/", str(w / "afile" / "x.md")] + (
            [str(ro / "r.md")] if mounted else []
        )
        for out in bad:
            r = env.cockpit("report", "--exp-dir", str(d), "--out-md", out, cwd=w)
            seen.append(one_line_2(r).split(": ", 2)[-1][:60])
        check(listing(w) == before, "something was written")
        check(not (w / "out_steps.csv").exists(), "wrote beside the directory")
    finally:
        if mounted:
            umount(ro)
    return f"{len(bad)} refused, nothing written" + ("" if mounted else " (no read-only mount here)")


# ----------------------------------------------------------------------------------------------
# 3. signals


def case_stop_unproven(env: Env) -> str:
    """A state saying running with an unrelated process's pid (no create_time), and a dir outside
    exp_root holding such a file: nothing signalled, nothing written there."""
    w = env.work()
    path = env.registry(w, {"a": 'model-tag = "a"'})
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        d = quick_plan(w / "exp" / "20260101_000000_x", {"a": leg_code()})
        (d / "state" / "a.json").write_text(json.dumps({"leg": "a", "status": "running", "pid": sleeper.pid}))
        (d / "state" / "supervisor.json").write_text(json.dumps({"pid": sleeper.pid}))
        r = env.cockpit("--registry", str(path), "stop", str(d), cwd=w)
        one_line_2(r, "process identity not proven")
        s = env.cockpit("--registry", str(path), "status", cwd=w)
        check("unknown: process identity not proven" in s.stdout, "status does not say unknown")
        out = quick_plan(w / "outside" / "20260101_000000_x", {"a": leg_code()})
        ct = psutil.Process(sleeper.pid).create_time()
        (out / "state" / "a.json").write_text(
            json.dumps({"leg": "a", "status": "running", "pid": sleeper.pid, "create_time": ct})
        )
        before = listing(out)
        r = env.cockpit("--registry", str(path), "stop", str(out), cwd=w)
        one_line_2(r, "not an experiment dir under exp_root")
        r = env.cockpit("--registry", str(path), "stop", str(out), "a", cwd=w)
        one_line_2(r, "not an experiment dir under exp_root")
        check(listing(out) == before, "wrote into a dir outside exp_root")
        check(sleeper.poll() is None, "the unrelated process was signalled")
    finally:
        sleeper.kill()
        sleeper.wait()
    return "unknown: process identity not proven; outside exp_root refused; the process lives"


# ----------------------------------------------------------------------------------------------
# 4. one bad thing


def case_long_leg_name(env: Env) -> str:
    """A 300-character leg name: refused at load with file:line; other registries on the same
    exp_root, and a bad dir there, never crash status."""
    w = env.work()
    path = env.registry(w, {"y" * 300: 'model-tag = "a"'})
    r = env.cockpit("--registry", str(path), "launch", "x", cwd=w)
    one_line_2(r, f"{path}:", "too long for a file name")
    ok = env.registry(w, {"a": 'model-tag = "a"'}, exp_id="other")
    (w / "exp").mkdir(exist_ok=True)
    bad = w / "exp" / "20260101_000000_x"
    (bad / "state").mkdir(parents=True)
    (bad / "plan.json").write_text(json.dumps({"experiment": "x", "legs": [{"name": "y" * 300}]}))
    fifo = w / "exp" / "20260101_000001_x"
    (fifo / "state").mkdir(parents=True)
    os.mkfifo(fifo / "plan.json")
    os.symlink("/dev/zero", fifo / "a.log")
    r = env.cockpit("--registry", str(ok), "status", timeout=60, cwd=w)
    check(r.returncode == 0 and "Traceback" not in r.stderr, f"status: {r.returncode} {r.stderr[:200]}")
    check(r.stdout.count("[problem: ") >= 2, "the bad dirs are not shown as their own problem")
    r = env.cockpit("--registry", str(ok), "resume", timeout=60, cwd=w)
    check(r.returncode == 0 and "Unreadable: " in r.stdout, "resume does not show the bad dirs")
    return "refused at load; status and resume show 2 bad dirs as their problem"


# ----------------------------------------------------------------------------------------------
# 5. tracebacks


def case_one_line_not_traceback(env: Env) -> str:
    """A 250-character id; exp_root a file, read-only, ~nosuchuser; --tail and tail overflowing."""
    w = env.work()
    seen = 0
    for exp_id, project in (("i" * 250, ""),):
        one_line_2(
            env.cockpit(
                "--registry",
                str(env.registry(w, {"a": ""}, exp_id=exp_id, project=project)),
                "launch",
                exp_id,
                "--dry-run",
                cwd=w,
            ),
            "too long",
        )
        seen += 1
    for root in ("/etc/passwd", "~nosuchuser-hostile/x"):
        (w / "r.toml").write_text(f'[project]\nexp_root = "{root}"\n')
        for cmd in (["status"], ["launch", "x"]):
            one_line_2(env.cockpit("--registry", str(w / "r.toml"), *cmd, cwd=w), f"{w / 'r.toml'}:2:")
            seen += 1
    (w / "r.toml").write_text('[project]\nexp_root = "exp"\ntail = 99999999999999999999\n')
    one_line_2(
        env.cockpit("--registry", str(w / "r.toml"), "status", cwd=w), ":3:", "'project.tail' must be between"
    )
    d = _logs_dir(w)
    one_line_2(
        env.cockpit("report", "--exp-dir", str(d), "--tail", "99999999999999999999999", cwd=w), "--tail"
    )
    seen += 2
    ro = w / "ro"
    if mount(ro, "size=1m,ro"):
        try:
            path = env.registry(w, {"a": 'model-tag = "a"'}, trainer=True)
            path.write_text(path.read_text().replace('exp_root = "exp"', f'exp_root = "{ro}/exp"'))
            dry = env.cockpit("--registry", str(path), "launch", "x", "--dry-run", cwd=w)
            check(
                "a real launch would be refused here" in dry.stdout and "read-only" in dry.stdout,
                "dry run does not say the read-only refusal",
            )
            one_line_2(env.cockpit("--registry", str(path), "launch", "x", cwd=w), "read-only filesystem")
            seen += 2
        finally:
            umount(ro)
    return f"{seen} one-line refusals, no traceback"


# ----------------------------------------------------------------------------------------------
# 6. supervisor faults, reaping


def case_supervisor_erofs(env: Env) -> str:
    """The dir turns read-only while a leg runs (it was saving a checkpoint): the supervisor
    records what it can, logs one line per fault, goes on or stops per policy, exits cleanly."""
    return _supervisor_faults_simulated(env, env.work())


def case_supervisor_enospc(env: Env) -> str:
    """A real full filesystem (a 4 MB tmpfs) under a real queue (torchrun): the supervisor ends
    cleanly, every leg accounted for, no traceback. Skipped where no tmpfs can be mounted."""
    w = env.work()
    fs = w / "fs"
    if not mount(fs, "size=4m"):
        return "(skipped: no tmpfs can be mounted here)"
    try:
        path = env.registry(
            w,
            {
                "a": 'model-tag = "a", num-iterations = 2000, line-bytes = 20000',
                "b": 'model-tag = "b", num-iterations = 3',
            },
            trainer=True,
        )
        registry = reg.load(path)
        plan = launch.plan_launch(registry, "x")
        d = launch.new_exp_dir(fs, "x")
        launch.write_plan(registry, plan, d)
        (d / "state").mkdir()
        sup = subprocess.run(
            [sys.executable, "-m", "cockpit.supervisor", str(d)],
            env=env.env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        out, err = sup.stdout, sup.stderr
        check("Traceback" not in err + out, f"traceback: {(err + out)[-300:]}")
        check(sup.returncode == 1, f"exit {sup.returncode}: {err.strip()[-200:]}")
        states = {n: expdir.read_state(d, n) for n in "ab"}
        faults = [ln for ln in out.splitlines() if "fault: " in ln]
        said = ", ".join(f"{n} {st.status if st else '(state not written)'}" for n, st in states.items())
        return f"exit 1, {said}, {len(faults)} fault lines" + (
            f", e.g. {faults[0].split('] ', 1)[1][:60]}" if faults else ""
        )
    finally:
        umount(fs)


def _supervisor_faults_simulated(env: Env, w: Path) -> str:
    d = quick_plan(
        w / "exp" / "20260101_000000_x",
        {"a": leg_code(fail="OSError: [Errno 30] Read-only file system"), "b": leg_code(), "c": leg_code()},
    )
    real = {n: getattr(fsutil, n) for n in ("atomic_write_json", "create_new", "create_or_append")}
    on = {"x": False}

    def failing(real_fn):
        def call(path, *a, **kw):
            if on["x"]:
                raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
            return real_fn(path, *a, **kw)

        return call

    for n, f in real.items():
        setattr(fsutil, n, failing(f))
    try:
        s = supervisor.Supervisor(d, echo=False)
        put = s.put
        s.put = lambda st: (put(st), on.update(x=on["x"] or (st.leg == "a" and st.status == "running")))
        rc = s.run()
    finally:
        for n, f in real.items():
            setattr(fsutil, n, f)
    check(rc == 1 and s.faults, f"rc {rc}, faults {s.faults}")
    check(all(s.states[n].status == "failed" for n in "bc"), "policy not followed")
    return f"(simulated) exit 1, {len(s.faults)} faults recorded, b and c failed per policy"


def case_supervisor_reaped(env: Env) -> str:
    """A supervisor launched from a long-lived process (as the TUI does, launch.start) is reaped."""
    w = env.work()
    path = env.registry(w, {"a": 'model-tag = "a", num-iterations = 3'}, trainer=True)
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = str(REPO)
    try:
        d = launch.start(reg.load(path), "x")
    finally:
        if old is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = old
    pid = json.loads((d / "state" / "supervisor.json").read_text())["pid"]
    wait_for(
        lambda: pid not in {c.pid for c in psutil.Process().children()},
        120,
        "the supervisor to end and be reaped",
    )
    check(procs.zombie_children() == [], f"zombies: {procs.zombie_children()}")
    return f"supervisor {pid} ended and was reaped; no <defunct> child"


# ----------------------------------------------------------------------------------------------
# 7, 8. escapes and colours


def case_terminal_escapes(env: Env) -> str:
    """OSC/CSI in an error line, a note and a file name never reach stdout; a backtick or pipe in a name is escaped."""
    w = env.work()
    d = w / "exp" / "20260101_000000_x"
    d.mkdir(parents=True)
    steps = "".join(STEP.format(i=i, p=i * 10.0) + "\n" for i in range(3))
    (d / "a.log").write_text(steps + f"Traceback (most recent call last):\nRuntimeError: boom {ESC}\n")
    (d / "we`ird|name.log").write_text(steps + FINAL)
    (d / f"t{ESC[:9]}.log").write_text(steps + FINAL)
    path = env.registry(w, {"a": 'model-tag = "a"'})
    outs = [
        env.cockpit("report", "--exp-dir", str(d), cwd=w),
        env.cockpit("--registry", str(path), "status", cwd=w),
        env.cockpit("--registry", str(path), "resume", cwd=w),
        env.cockpit("--registry", str(path), "stop", f"x{ESC}", cwd=w),
    ]
    for r in outs:
        check(
            "\x1b" not in r.stdout + r.stderr and "\x07" not in r.stdout + r.stderr,
            f"escape reached: {r.args[3:]}",
        )
    check(
        "| we\\`ird\\|name |" in outs[0].stdout and "``we`ird|name``" in outs[0].stdout,
        "markdown not escaped",
    )
    return (
        "report, status, resume, stop: no ESC/BEL on the terminal; `|` and ` escaped in cells and code spans"
    )


def case_coloured_log(env: Env) -> str:
    """Step lines wrapped in SGR colour codes read as step lines (small and big logs)."""
    w = env.work()
    d = w / "exp" / "20260101_000000_x"
    d.mkdir(parents=True)
    body = "".join(f"\x1b[32m{STEP.format(i=i, p=i * 10.0)}\x1b[0m\n" for i in range(10)) + FINAL
    (d / "small.log").write_text(body)
    (d / "big.log").write_text("noise\n" * 60_000 + body)  # over 256 KB: read from its end
    r = env.cockpit("report", "--exp-dir", str(d), cwd=w)
    check(r.returncode == 0 and "no step lines" not in r.stdout, r.stdout[-300:])
    check("| small | 1000.00 |" in r.stdout and "| big | 1000.00 |" in r.stdout, "figures missing")
    return "both logs give tok/sec 1000.00"


# ----------------------------------------------------------------------------------------------
# 9. memory


PEAK = (
    "import sys\nfrom cockpit import cli\nrc = cli.main(sys.argv[1:])\n"
    "hwm = next(ln for ln in open('/proc/self/status') if ln.startswith('VmHWM:')).split()[1]\n"
    "print('PEAK', hwm, file=sys.stderr)\nsys.exit(rc)\n"
)


def case_sparse_5gb(env: Env) -> str:
    """A 5 GB sparse log: `cockpit report` with and without --out-md keeps its memory small."""
    w = env.work()
    d = w / "exp" / "20260101_000000_x"
    d.mkdir(parents=True)
    with open(d / "big.log", "wb") as f:
        f.write(STEP.format(i=0, p=0.0).encode() + b"\n")
        f.truncate(5 << 30)
        f.seek(0, 2)
        f.write(b"\n" + STEP.format(i=9, p=90.0).encode() + b"\n" + FINAL.encode())
    figures = []
    for extra in ([], ["--out-md", str(w / "r.md")]):
        t0 = time.monotonic()
        r = subprocess.run(
            [sys.executable, "-c", PEAK, "report", "--exp-dir", str(d), *extra],
            env=env.env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        check(r.returncode == 0, r.stderr[-200:])
        mib = int(r.stderr.split("PEAK")[1].split()[0]) / 1024
        check(mib < 250, f"peak {mib:.0f} MiB")
        figures.append(f"{'--out-md' if extra else 'stdout'} {mib:.0f} MiB in {time.monotonic() - t0:.1f}s")
    return "peak RSS " + ", ".join(figures)


# ----------------------------------------------------------------------------------------------
# 10, 11. numbers and messages


def case_numbers(env: Env) -> str:
    """nproc 100000, wait_s -5, max_util nan, recorded inf, module --help / 'os; import os', exp_root "",
    U+202E in a name: one line with file:line each; a BOM is accepted; no +nan% delta."""
    w = env.work()
    bad = [
        ("[defaults]\nnproc_per_node = 100000\n", "nproc_per_node"),
        ("[project.gpu_idle]\nwait_s = -5\n", "wait_s"),
        ("[project.gpu_idle]\nmax_util_pct = nan\n", "finite"),
        ('[defaults]\nmodule = "--help"\n', "module name"),
        ('[defaults]\nmodule = "os; import os"\n', "module name"),
        ('[[experiment]]\nid = "e"\n[[experiment.leg]]\nname = "a\u202eb"\n', "U+202E"),
        (
            '[[experiment]]\nid = "e"\n[[experiment.leg]]\nname = "l"\n[experiment.leg.recorded]\nmfu = inf\n',
            "finite",
        ),
    ]
    for text, word in bad:
        (w / "r.toml").write_text('[project]\nexp_root = "exp"\n' + text)
        one_line_2(env.cockpit("--registry", str(w / "r.toml"), "status", cwd=w), f"{w / 'r.toml'}:", word)
    (w / "r.toml").write_text('[project]\nexp_root = ""\n')
    one_line_2(env.cockpit("--registry", str(w / "r.toml"), "status", cwd=w), ":2:", "empty")
    (w / "r.toml").write_bytes(b'\xef\xbb\xbf[project]\nexp_root = "exp"\n')
    check(env.cockpit("--registry", str(w / "r.toml"), "status", cwd=w).returncode == 0, "BOM refused")
    d = w / "exp" / "20260101_000000_x"
    d.mkdir(parents=True)
    for name, tok in (("base", "0"), ("run", "1,000"), ("nanrun", "nan")):
        (d / f"{name}.log").write_text(STEP.replace("1,000", tok).format(i=1, p=10.0) + "\n" + FINAL)
    r = env.cockpit("report", "--exp-dir", str(d), "--baseline", "base", cwd=w)
    check(
        r.returncode == 0 and "nan%" not in r.stdout and "inf%" not in r.stdout, "a nan or inf delta printed"
    )
    check("the baseline's figure is 0" in r.stdout, "no reason given for '-'")
    return f"{len(bad) + 1} refused with file:line; BOM accepted; deltas '-' with the reason"


def case_messages(env: Env) -> str:
    """--out-md /etc/passwd/x.md, --baseline /nonexist/run, stop "", --baseline '', report of a dir with no log,
    and kill -9 of torchrun (real launch): each a line that says what is wrong."""
    w = env.work()
    d = _logs_dir(w)
    one_line_2(
        env.cockpit("report", "--exp-dir", str(d), "--out-md", "/etc/passwd/x.md", cwd=w),
        "/etc/passwd is a file, not a directory",
    )
    err = one_line_2(env.cockpit("report", "--exp-dir", str(d), "--baseline", "/nonexist/run", cwd=w))
    check(err.count("/nonexist/run.log") == 1, f"path listed more than once: {err}")
    one_line_2(env.cockpit("report", "--exp-dir", str(d), "--baseline", "", cwd=w), "--baseline is empty")
    path = env.registry(w, {"a": 'model-tag = "a", num-iterations = 400'}, exp_id="k9", trainer=True)
    one_line_2(env.cockpit("--registry", str(path), "stop", "", cwd=w), "no experiment dir given")
    empty = w / "exp" / "20260101_000009_x"
    empty.mkdir()
    one_line_2(env.cockpit("report", "--exp-dir", str(empty), cwd=w), "no *.log file")
    r = env.cockpit("--registry", str(path), "launch", "k9", cwd=w)
    check(r.returncode == 0 and "nothing to run" not in r.stdout, r.stdout + r.stderr)
    x = Path(r.stdout.strip().splitlines()[-1])
    st = wait_for(
        lambda: (s := expdir.read_state(x, "a")) and s.status == "running" and s.pid and s,
        90,
        "leg a running",
    )
    wait_for(lambda: (x / "a.log").exists() and b"step " in (x / "a.log").read_bytes(), 60, "steps")
    os.kill(st.pid, signal.SIGKILL)
    a = wait_for(lambda: (s := expdir.read_state(x, "a")) and s.status == "failed" and s, 60, "leg a failed")
    check(a.error_tail and "killed by SIGKILL" in a.error_tail[-1], f"error tail: {a.error_tail[-2:]}")
    wait_for(lambda: not expdir.open_dir(x).supervisor_alive, 60, "queue end")
    time.sleep(1.0)  # the supervisor records its end, then exits
    leftovers = [p for p in psutil.process_iter(["cmdline"]) if str(x) in " ".join(p.info["cmdline"] or [])]
    leftovers += procs.marked({procs.ENV_EXP_DIR: str(x.resolve())})
    for p in leftovers:
        try:
            p.kill()
        except psutil.Error:
            pass
    check(not leftovers, f"processes left after torchrun was killed: {[p.pid for p in leftovers]}")
    return f"6 messages clear, no worker left; error tail ends: {a.error_tail[-1][:60]}"


# ----------------------------------------------------------------------------------------------
# Second round, items 1-6: the Slurm executor: #SBATCH lines, sbatch's option parsing, job ids in state files,
# a scheduler's wrong answer, resubmission, the prepare step. The scheduler's commands are small
# fakes on PATH (no cluster needed): each says what the real one would, and records its calls.


def slurm_world(
    env: Env, w: Path, legs: dict[str, str], slurm: str = "", on_failure: str = "stop", prepare: bool = False
) -> tuple[Path, dict, Path]:
    """A Slurm registry in `w`, an env whose PATH starts with `w/bin` (the fakes), the calls file."""
    # The fake trainer: the launch asks the legs' module for its flags, and step-sleep is its.
    path = env.registry(
        w,
        legs,
        project=f'executor = "slurm"\n[project.slurm]\n{slurm}\n',
        trainer=True,
        on_failure=on_failure,
    )
    if prepare:
        path.write_text(
            path.read_text().replace(
                'id = "x"\n',
                'id = "x"\n[experiment.prepare]\nargv = ["{python}", '
                '"-c", "pass", "{exp_root}/_data/c"]\ncreates = "{exp_root}/_data/c"\n',
            )
        )
    (w / "bin").mkdir(exist_ok=True)
    calls = w / "calls"
    return path, {**env.env, "PATH": f"{w / 'bin'}:{env.env['PATH']}"}, calls


def fake(w: Path, name: str, body: str) -> None:
    tool = w / "bin" / name
    tool.write_text(f'#!/bin/bash\necho "{name} $*" >> {w / "calls"}\n{body}\n')
    tool.chmod(0o755)


def run_env(env: dict, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cockpit.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def slurm_dir(w: Path, legs: list[str], states: dict[str, dict]) -> Path:
    d = w / "exp" / "20260101_000000_x"
    (d / "state").mkdir(parents=True)
    (d / "plan.json").write_text(
        json.dumps(
            {
                "experiment": "x",
                "executor": "slurm",
                "on_failure": "stop",
                "legs": [{"name": n} for n in legs],
            }
        )
    )
    for leg, st in states.items():
        (d / "state" / f"{leg}.json").write_text(json.dumps({"leg": leg, **st}))
    return d


def scontrol_line(job: str, name: str, log: Path, uid: int | None = None, state: str = "RUNNING") -> str:
    return (
        f"JobId={job} JobName={name} UserId=u({os.getuid() if uid is None else uid}) JobState={state} "
        f"Reason=None NodeList=n1 RunTime=00:01:00 StartTime=2026-01-01T00:00:00 StdOut={log}"
    )


def case_sbatch_comment(env: Env) -> str:
    """A `#` (and a space) in exp_root, in the workdir, in a leg name: each #SBATCH value is read
    back whole by sbatch's own rules, never cut at the `#`."""
    from cockpit import sbatch_opts

    w = env.work()
    work = w / "check#out x"
    work.mkdir()
    path, _, _ = slurm_world(env, w, {"a#1 b": 'model-tag = "a"'})
    text = path.read_text().replace('exp_root = "exp"', 'exp_root = "e#p x"')
    path.write_text(text.replace("[defaults]\n", f'[defaults]\nworkdir = "{work}"\n'))
    r = env.cockpit("--registry", str(path), "launch", "x", "--dry-run", cwd=w)
    check(r.returncode == 0, f"dry run: {r.stderr.strip()[:200]}")
    exp_dir = r.stdout.split("EXP_DIR=")[1].split("\n")[0].strip("'")
    script = r.stdout.split(".sbatch ----\n")[1].split("# ---- end ----")[0]
    got = {o.name: o.value for o in sbatch_opts.parse(sbatch_opts.directives(script))}
    check(got.get("chdir") == str(work), f"--chdir read back as {got.get('chdir')!r}")
    check(got.get("output") == f"{exp_dir}/a#1 b.log", f"--output read back as {got.get('output')!r}")
    check(got.get("job-name", "").endswith("/a_1_b"), f"--job-name read back as {got.get('job-name')!r}")
    return "3 values with # and spaces read back whole (chdir, output, job name)"


def case_sbatch_abbreviations(env: Env) -> str:
    """extra_args that sbatch reads as options the cockpit sets: abbreviations and grouped shorts."""
    w = env.work()
    seen = []
    for item in ("--outp=/tmp/x", "--chd=/tmp", "--depend=afterok:1", "--arr=1-3", "-Qo/tmp/x", "--jo=x"):
        path, _, _ = slurm_world(env, w, {"a": ""}, slurm=f'extra_args = ["{item}"]')
        err = one_line_2(
            env.cockpit("--registry", str(path), "launch", "x", "--dry-run", cwd=w),
            f"{path}:6:",
            "is set by the cockpit itself",
        )
        seen.append(err.split("(sbatch reads ")[1].split(")")[0] if "(sbatch reads" in err else item)
    return f"{len(seen)} refused with file:line: {', '.join(seen)}"


def case_foreign_job(env: Env) -> str:
    """State files naming a foreign job (another name; the leg's name but another user; another
    output): status says unknown, stop cancels nothing."""
    w = env.work()
    path, senv, calls = slurm_world(env, w, {"a": "", "b": "", "c": ""})
    d = slurm_dir(
        w, ["a", "b", "c"], {n: {"status": "running", "job_id": j} for n, j in zip("abc", "123", strict=True)}
    )
    lines = {
        "1": scontrol_line("1", "someone/else", d / "a.log"),
        "2": scontrol_line("2", f"{d.name}/b", d / "b.log", uid=os.getuid() + 1),
        "3": scontrol_line("3", f"{d.name}/c", w / "elsewhere.log"),
    }
    fake(
        w,
        "scontrol",
        "case $4 in " + " ".join(f"{j}) echo '{line}';;" for j, line in lines.items()) + " esac",
    )
    fake(w, "scancel", "exit 0")
    s = run_env(senv, "--registry", str(path), "status", cwd=w)
    check(s.stdout.count("is not proven the leg's") == 3, f"status: {s.stdout[-400:]}")
    one_line_2(run_env(senv, "--registry", str(path), "stop", str(d), cwd=w), "nothing stopped", "not proven")
    check("scancel" not in calls.read_text(), "a foreign job was cancelled")
    return "3 foreign jobs: unknown, not proven; stop cancelled none"


def case_wrong_invalid_job_id(env: Env) -> str:
    """scontrol wrongly says "Invalid job id": a running leg stays running (squeue knows it); a
    leg recorded failed by such an answer is revived, and a second launch is refused."""
    w = env.work()
    path, senv, calls = slurm_world(env, w, {"a": "", "b": ""})
    d = slurm_dir(
        w,
        ["a", "b"],
        {
            "a": {"status": "running", "job_id": "5"},
            "b": {"status": "failed", "job_id": "6", "forgotten_at": expdir.now_iso()},
        },
    )
    fake(w, "scontrol", 'echo "slurm_load_jobs error: Invalid job id specified" >&2; exit 1')
    fake(
        w,
        "squeue",
        f'case $4 in 5) echo "5|{d.name}/a|{os.getuid()}|RUNNING|None|n1|1:00|N/A|N/A|{d}/a.log";; '
        f'6) echo "6|{d.name}/b|{os.getuid()}|RUNNING|None|n2|1:00|N/A|N/A|{d}/b.log";; esac',
    )
    s = run_env(senv, "--registry", str(path), "status", cwd=w)
    check("a  running" in s.stdout and "b  running" in s.stdout, f"status: {s.stdout[-500:]}")
    check(json.loads((d / "state" / "b.json").read_text())["status"] == "running", "b not revived on disk")
    one_line_2(run_env(senv, "--registry", str(path), "launch", "x", cwd=w), "is running in")
    return "running leg kept, failed leg revived, second launch refused"


def case_resubmit_fresh_log(env: Env) -> str:
    """A failed leg resubmitted twice: each attempt's log is kept whole under attempts/, the
    leg's log holds the new attempt alone, its state the new job."""
    from cockpit.executors import slurm as slurm_exec

    w = env.work()
    path, senv, calls = slurm_world(env, w, {"a": ""})
    d = slurm_dir(w, ["a"], {"a": {"status": "failed", "job_id": "7"}})
    chain = slurm_exec.plan_chain(
        [slurm_exec.LegCommand("a", "torchrun", 1, "m", ())], reg.SlurmSettings(), d, w, d.name
    )
    slurm_exec.write_script(d, "a", chain.scripts[0][1])
    fake(w, "sbatch", "echo $((RANDOM + 100))")
    for n in (1, 2):
        (d / "a.log").write_text(f"attempt {n}\n")
        if n == 2:
            st = json.loads((d / "state" / "a.json").read_text())
            (d / "state" / "a.json").write_text(json.dumps({**st, "status": "failed"}))
        r = run_env(senv, "--registry", str(path), "resubmit", str(d), "a", cwd=w)
        check(r.returncode == 0, f"resubmit {n}: {r.stderr.strip()[:200]}")
        check((d / "attempts" / f"a.{n}.log").read_text() == f"attempt {n}\n", f"attempt {n}'s log not kept")
        check((d / "a.log").read_bytes() == b"", "the new attempt's log is not fresh")
    job = json.loads((d / "state" / "a.json").read_text())["job_id"]
    check(
        job not in ("7",) and f"sbatch --parsable {d}/slurm/a.sbatch" in calls.read_text(),
        "new job not recorded",
    )
    return f"2 resubmissions: attempts 1 and 2 kept, job {job} recorded, fresh log"


def case_prepare_on_slurm(env: Env) -> str:
    """A missing corpus under Slurm: the launch submits the prepare step first and every leg
    waits for it (stop and continue alike)."""
    seen = []
    for on_failure in ("stop", "continue"):
        w = env.work()
        path, senv, calls = slurm_world(env, w, {"a": "", "b": ""}, on_failure=on_failure, prepare=True)
        fake(w, "sbatch", 'case "$*" in *--test-only*) cat > /dev/null;; *) echo $((RANDOM + 100));; esac')
        fake(w, "scontrol", 'echo "slurm_load_jobs error: Invalid job id specified" >&2; exit 1')
        fake(w, "squeue", "exit 0")
        r = run_env(senv, "--registry", str(path), "launch", "x", cwd=w)
        check(r.returncode == 0, f"launch ({on_failure}): {r.stderr.strip()[:200]}")
        subs = [line for line in calls.read_text().splitlines() if line.startswith("sbatch --parsable")]
        check(len(subs) == 3 and subs[0].endswith("/slurm/prepare.sbatch"), f"not prepare first: {subs}")
        prep = r.stdout.splitlines()[0].split("Slurm job ")[1].split()[0]
        check(
            all(f"--dependency=afterok:{prep}" in x for x in subs[1:]), f"a leg does not wait for it: {subs}"
        )
        seen.append(on_failure)
    return f"prepare first, every leg afterok on it ({', '.join(seen)})"


# Second round, items 7-16: git config, non-git workdirs, notifiers, huge grids, failed prepares,
# non-UTF-8 paths, dir order, the trainer's bad input, huge diffs, tokenizer pickles.


def _git(cwd: Path, *args: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    return subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True).stdout


def _repo(d: Path) -> Path:
    d.mkdir(parents=True)
    _git(d, "init", "-q", "-b", "main")
    _git(d, "config", "user.email", "h@example.com")
    _git(d, "config", "user.name", "h")
    (d / "a.py").write_text("x = 1\n")
    _git(d, "add", "a.py")
    _git(d, "commit", "-qm", "one")
    return d


def _launched(env: Env, path: Path, cwd: Path, *extra: str, timeout: float = 180) -> Path:
    """`cockpit launch x --foreground`: the dir it made (its last line)."""
    r = env.cockpit("--registry", str(path), "launch", "x", "--foreground", *extra, cwd=cwd, timeout=timeout)
    check(
        r.returncode in (0, 1) and "Traceback" not in r.stderr,
        f"launch: {r.returncode} {r.stderr.strip()[-200:]}",
    )
    return Path(r.stdout.strip().splitlines()[-1])


def case_git_config_runs_nothing(env: Env) -> str:
    """A checkout whose git config names programs (fsmonitor, a filter's clean and process, textconv,
    an external diff, hooks): a launch records its provenance and status checks its branch, and
    none of them runs; the patch is the raw diff."""
    w = env.work()
    repo = _repo(w / "repo")
    marks = w / "marks"
    marks.mkdir()
    (repo / ".gitattributes").write_text("*.py filter=evil diff=evil\n")
    _git(repo, "add", ".gitattributes")
    _git(repo, "commit", "-qm", "attributes")
    planted = {
        "core.fsmonitor": "fsmonitor",
        "filter.evil.clean": "clean",
        "filter.evil.process": "process",
        "diff.evil.textconv": "textconv",
        "diff.evil.command": "diff-command",
        "diff.external": "external",
    }
    for key, name in planted.items():  # planted last: from here on, only the cockpit runs git here
        prog = w / f"{name}.sh"
        prog.write_text(f"#!/bin/sh\ntouch {marks}/{name}\ncat\n")
        prog.chmod(0o755)
        _git(repo, "config", key, str(prog))
    for hook in ("post-index-change", "reference-transaction", "post-checkout"):
        (repo / ".git" / "hooks" / hook).write_text(f"#!/bin/sh\ntouch {marks}/{hook}\n")
        (repo / ".git" / "hooks" / hook).chmod(0o755)
    time.sleep(1.1)  # past the index's stat times: git must read the file (and would filter it)
    (repo / "a.py").write_text("x = 2\n")
    path = env.registry(repo, {"a": 'model-tag = "a", num-iterations = 3'}, trainer=True)
    d = _launched(env, path, repo)
    env.cockpit("--registry", str(path), "status", cwd=repo)
    ran = sorted(p.name for p in marks.iterdir())
    check(not ran, f"ran: {', '.join(ran)}")
    git = json.loads((d / "plan.json").read_text())["git"]
    check(git.get("dirty") is True and git.get("branch") == "main", f"recorded {git}")
    check("+x = 2" in (d / "git.patch").read_text(), "the patch is not the raw diff")
    return f"{len(planted) + 3} planted programs, none ran; dirty tree and its patch recorded"


def case_not_a_checkout(env: Env) -> str:
    """A workdir that is no checkout, and one inside a checkout that does not hold it (a scratch dir
    under a home that is a repo): each recorded "not a git checkout", never the cockpit's own git."""
    w = env.work()
    plain = w / "plain"
    plain.mkdir()
    home = _repo(w / "home")
    scratch = home / "scratch"
    scratch.mkdir()
    seen = []
    for where in (plain, scratch):
        path = env.registry(where, {"a": 'model-tag = "a", num-iterations = 3'}, trainer=True)
        git = json.loads((_launched(env, path, where) / "plan.json").read_text())["git"]
        check(git.get("error") == "not a git checkout" and git.get("commit") is None, f"{where.name}: {git}")
        seen.append(where.name)
    return f"{', '.join(seen)}: not a git checkout"


NOTIFY_PLAN_PEAK = (
    "import sys\nfrom cockpit import supervisor\nrc = supervisor.main(sys.argv[1:])\n"
    "hwm = next(ln for ln in open('/proc/self/status') if ln.startswith('VmHWM:')).split()[1]\n"
    "print('PEAK', hwm, file=sys.stderr)\nsys.exit(rc)\n"
)


def case_notifier_output(env: Env) -> str:
    """`yes` as the notify command (bounded time, bounded memory, the next leg runs); a notifier that
    exits 0 leaving a child that holds its stdout and writes (a success at once; the child ends)."""
    w = env.work()
    marker = f"hostile-notify-{os.getpid()}"
    child = (
        f"import subprocess, sys\nsubprocess.Popen([sys.executable, '-c', 'import sys\\nwhile True: "
        f'sys.stdout.write("y" * 4096)  # {marker}\'])\n'
    )
    said = []
    for name, argv, timeout_s, want in (
        ("yes", ["yes"], 3, "timed out after 3s (stopped)"),
        ("child", [sys.executable, "-c", child], 30, None),
    ):
        d = quick_plan(w / "exp" / f"20260101_00000{len(said)}_x", {"a": leg_code(), "b": leg_code()})
        plan = json.loads((d / "plan.json").read_text())
        plan["notify"] = {"argv": argv, "timeout_s": timeout_s}
        (d / "plan.json").write_text(json.dumps(plan))
        t0 = time.monotonic()
        r = subprocess.run(
            [sys.executable, "-c", NOTIFY_PLAN_PEAK, str(d)],
            env=env.env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        took = time.monotonic() - t0
        mib = int(r.stderr.split("PEAK")[1].split()[0]) / 1024
        states = [expdir.read_state(d, n) for n in "ab"]
        check(r.returncode == 0 and all(st.status == "done" for st in states), f"{name}: {r.stderr[-200:]}")
        check(all(st.notify_error == want for st in states), f"{name}: {[st.notify_error for st in states]}")
        check(mib < 200, f"{name}: supervisor peak {mib:.0f} MiB")
        if name == "child":
            check(took < 20, f"the child held the queue {took:.0f}s")
            wait_for(
                lambda: (
                    not [
                        p
                        for p in psutil.process_iter(["cmdline"])
                        if marker in " ".join(p.info["cmdline"] or [])
                    ]
                ),
                10,
                "the writing child to end",
            )
        said.append(f"{name}: peak {mib:.0f} MiB, {took:.1f}s")
    return "; ".join(said)


def case_huge_grids(env: Env) -> str:
    """A 100 x 100 x 100 grid, a 10^5 one with repeats, 11 experiments of 1,000 runs: each one line
    with file:line and exit 2, in about the time a registry takes to read."""
    w = env.work()
    head = '[project]\nexp_root = "exp"\n[defaults]\ndevice = "cpu"\n'
    hundred = ", ".join(map(str, range(100)))
    ten = ", ".join(map(str, range(10)))
    grid3 = (
        f'[experiment.grid]\nname = "{{a}}_{{b}}_{{c}}"\na = [{hundred}]\nb = [{hundred}]\nc = [{hundred}]\n'
    )
    grid5 = 'repeats = 100\n[experiment.grid]\nname = "{a}{b}{c}{d}{e}"\n' + "".join(
        f"{k} = [{ten}]\n" for k in "abcde"
    )
    small = f'[experiment.grid]\nname = "{{a}}_{{b}}_{{c}}"\na = [{ten}]\nb = [{ten}]\nc = [{ten}]\n'
    cases = [
        ('[[experiment]]\nid = "x"\n' + grid3, 7, "makes 1,000,000 legs"),
        (
            '[[experiment]]\nid = "x"\n' + grid5,
            8,
            "makes 100,000 legs (10 x 10 x 10 x 10 x 10) x 100 repeats",
        ),
        ("".join(f'[[experiment]]\nid = "e{i}"\n{small}' for i in range(11)), 5 + 7 * 10, "11,000 runs"),
    ]
    took = []
    for body, line, words in cases:
        (w / "reg.toml").write_text(head + body)
        for cmd in (["status"], ["launch", "x", "--dry-run"]):
            t0 = time.monotonic()
            one_line_2(
                env.cockpit("--registry", str(w / "reg.toml"), *cmd, cwd=w), f"reg.toml:{line}:", words
            )
            took.append(time.monotonic() - t0)
    check(not (w / "exp").exists(), "something was written")
    return f"{len(took)} refusals with file:line, slowest {max(took):.1f}s"


def case_failed_prepare(env: Env) -> str:
    """A prepare that fails after making its path, and one whose supervisor is killed while it runs:
    what either left is not trusted; the next launch runs the step again."""
    w = env.work()
    said = []
    for how in ("fails", "killed"):
        ww = w / how
        ww.mkdir()
        wait = "time.sleep(60); " if how == "killed" else ""
        code = f"import os, sys, time; os.makedirs(sys.argv[1], exist_ok=True); {wait}sys.exit(3)"
        path = env.registry(ww, {"a": 'model-tag = "a", num-iterations = 3'}, trainer=True)
        path.write_text(
            path.read_text().replace(
                'id = "x"\n',
                f'id = "x"\n[experiment.prepare]\nargv = ["{{python}}", '
                f'"-c", {json.dumps(code)}, "{{exp_root}}/_data/made"]\n'
                'creates = "{exp_root}/_data/made"\n',
            )
        )
        if how == "fails":
            _launched(env, path, ww)
        else:
            r = env.cockpit("--registry", str(path), "launch", "x", cwd=ww)
            d = Path(r.stdout.strip().splitlines()[-1])
            prep = wait_for(
                lambda d=d: (p := expdir.open_dir(d).prepare) and p.status == "running" and p, 60, "prepare"
            )
            os.kill(json.loads((d / "state" / "supervisor.json").read_text())["pid"], signal.SIGKILL)
            psutil.Process(prep.pid).kill()
        check((ww / "exp" / "_data" / "made").is_dir(), "the partial output is not there")
        dry = env.cockpit("--registry", str(path), "launch", "x", "--dry-run", cwd=ww).stdout
        check("# prepare, first (its last run did not end well" in dry, f"{how}: the dry run trusts it")
        again = expdir.open_dir(_launched(env, path, ww, "--rerun"))
        check(
            again.prepare is not None and again.prepare.status == "failed" and again.prepare.exit_code == 3,
            f"{how}: prepare not run again ({again.prepare and again.prepare.note})",
        )
        said.append(how)
    return f"{' and '.join(said)}: run again by the next launch"


def case_non_utf8_paths(env: Env) -> str:
    """exp_root under `caf\\xe9/`: a launch regenerates report.md; `resume --out-md`, `report --out-md`
    and status work in a strict UTF-8 terminal, printing the byte as \\xe9."""
    w = env.work()
    base = Path(os.fsdecode(os.fsencode(str(w)) + b"/caf\xe9"))
    base.mkdir()
    path = env.registry(base, {"a": 'model-tag = "a", num-iterations = 3'}, trainer=True)
    strict = {**env.env, "PYTHONIOENCODING": "utf-8:strict"}
    r = subprocess.run(
        [sys.executable, "-m", "cockpit.cli", "--registry", str(path), "launch", "x", "--foreground"],
        cwd=w,
        env=strict,
        capture_output=True,
        text=True,
        timeout=180,
    )
    check(r.returncode == 0 and "not regenerated" not in r.stdout, f"launch: {(r.stdout + r.stderr)[-300:]}")
    d = next(p for p in (base / "exp").iterdir() if p.name.endswith("_x"))
    check((d / "report.md").is_file(), "no report.md")
    for argv in (
        ["--registry", str(path), "resume", "--out-md", str(base / "exp" / "guide.md")],
        ["report", "--exp-dir", str(d), "--out-md", os.fsdecode(os.fsencode(str(base)) + b"/r\xff.md")],
        ["--registry", str(path), "status"],
    ):
        r = subprocess.run(
            [sys.executable, "-m", "cockpit.cli", *argv],
            cwd=w,
            env=strict,
            capture_output=True,
            text=True,
            timeout=120,
        )
        check(
            r.returncode == 0 and "Traceback" not in r.stderr and "caf\\xe9" in r.stdout,
            f"{argv[-2]}: {r.returncode} {r.stderr.strip()[-200:]}",
        )
    return "report.md regenerated; resume --out-md, report --out-md, status printed caf\\xe9"


def case_dir_order(env: Env) -> str:
    """Two launches across a timezone change (TZ=UTC-14 then UTC+12: the second dir's name says it
    is 26 hours older), and an old dir (no sequence) named in 2099: the last launch is the newest."""
    w = env.work()
    path = env.registry(w, {"a": 'model-tag = "a", num-iterations = 3'}, trainer=True)
    made = []
    for tz in ("Etc/GMT-14", "Etc/GMT+12"):
        r = subprocess.run(
            [
                sys.executable,
                "-m",
                "cockpit.cli",
                "--registry",
                str(path),
                "launch",
                "x",
                "--foreground",
                "--rerun",
            ],
            cwd=w,
            env={**env.env, "TZ": tz},
            capture_output=True,
            text=True,
            timeout=180,
        )
        made.append(Path(r.stdout.strip().splitlines()[-1]))
    check(made[1].name < made[0].name, f"the stamps did not go back: {[p.name for p in made]}")
    future = w / "exp" / "20991231_235959_x"
    future.mkdir()
    (future / "a.log").write_text(STEP.format(i=0, p=0.0) + "\n")
    order = [d.path for d in expdir.discover(w / "exp")]
    check(
        order[-1] == made[1] and order.index(future) < order.index(made[0]),
        f"order {[p.name for p in order]}",
    )
    check(expdir.find_dir(w / "exp", "x") == made[1], "stop would pick another dir as the newest")
    return "the second launch is newest despite its stamp; the 2099 dir without a sequence comes first"


def _trainer(env: Env, *args: str) -> subprocess.CompletedProcess:
    tiny = [
        "--device-type",
        "cpu",
        "--depth",
        "2",
        "--max-seq-len",
        "64",
        "--device-batch-size",
        "2",
        "--total-batch-size",
        "128",
        "--compile-mode",
        "none",
        "--num-iterations",
        "3",
    ]
    return subprocess.run(
        [sys.executable, "-m", "nanochat.base_train", *tiny, *args],
        cwd=REPO,
        env={**env.env, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )


def _trainer_line(r: subprocess.CompletedProcess, code: int, *words: str) -> str:
    lines = r.stderr.strip().splitlines()
    check(
        r.returncode == code and len(lines) == 1 and "Traceback" not in r.stderr,
        f"exit {r.returncode}: {r.stderr.strip()[-300:]}",
    )
    for word in words:
        check(word in lines[0], f"{word!r} not in {lines[0][:200]!r}")
    return lines[0]


def _smoke(env: Env) -> Path:
    out = env.base / "smoke"
    if not (out / "tokenizer").is_dir():
        subprocess.run(
            [
                sys.executable,
                "-m",
                "nanochat.smoke_data",
                "--out",
                str(out),
                "--chars",
                "200000",
                "--vocab-size",
                "300",
            ],
            env=env.env,
            capture_output=True,
            check=True,
            timeout=300,
        )
    return out


def case_trainer_input(env: Env) -> str:
    """The real trainer: a corrupt parquet page, a `text` column of numbers, a truncated checkpoint,
    a full disk at save (a tmpfs; root only): one line naming the file, exit 2 (1 for the save), no
    temporary file left."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    w = env.work()
    tok = str(_smoke(env) / "tokenizer")
    seen = []
    for kind, table in (
        ("page", pa.table({"text": [f"doc {i} " * 20 for i in range(200)]})),
        ("int", pa.table({"text": list(range(200))})),
    ):
        d = w / kind
        d.mkdir()
        for i in range(2):
            pq.write_table(table, d / f"shard_{i:05d}.parquet", row_group_size=50, compression="none")
        if kind == "page":
            raw = bytearray((d / "shard_00000.parquet").read_bytes())
            raw[4:40] = b"\xff" * 36
            (d / "shard_00000.parquet").write_bytes(bytes(raw))
        r = _trainer(env, "--data", "parquet", "--data-dir", str(d), "--tokenizer-dir", tok)
        seen.append(_trainer_line(r, 2, str(d / "shard_00000.parquet")).split(": ", 3)[-1][:40])
    ck = w / "ck" / "t"
    ck.mkdir(parents=True)
    for name in ("model_000001.pt", "optim_000001_rank0.pt", "meta_000001.json"):
        (ck / name).write_bytes(b"PK\x03\x04 cut")
    r = _trainer(
        env,
        "--vocab-size",
        "256",
        "--checkpoint-root",
        str(w / "ck"),
        "--model-tag",
        "t",
        "--resume-from-step",
        "1",
    )
    seen.append(
        _trainer_line(r, 2, str(ck / "model_000001.pt"), "not a readable checkpoint").split(": ", 3)[-1][:40]
    )
    fs = w / "fs"
    if mount(fs, "size=1m"):
        try:
            r = _trainer(
                env,
                "--vocab-size",
                "256",
                "--save-every",
                "2",
                "--checkpoint-root",
                str(fs),
                "--model-tag",
                "t",
            )
            seen.append(_trainer_line(r, 1, "No space left on device").split(": ", 3)[-1][:40])
            check(
                not [p for p in (fs / "t").iterdir() if p.name.endswith(".tmp")], "a temporary file was left"
            )
        finally:
            umount(fs)
    return f"{len(seen)} one-line errors" + (
        "" if len(seen) == 4 else " (no tmpfs here: the full disk skipped)"
    )


PATCH_PEAK = (
    "import sys\nfrom pathlib import Path\nfrom cockpit import provenance\n"
    "info = provenance.git_info(Path(sys.argv[1]), Path(sys.argv[2]))\n"
    "hwm = next(ln for ln in open('/proc/self/status') if ln.startswith('VmHWM:')).split()[1]\n"
    "print(info.get('patch_bytes'), info.get('patch_truncated'), hwm)\n"
)


def case_huge_diff(env: Env) -> str:
    """A 200 MB change to one file, and 4,000 files of 20 KB changed: git.patch is cut at 32 MB
    and the process writing it never holds the diff (its peak RSS)."""
    w = env.work()
    said = []
    for kind in ("one file", "many files"):
        repo = _repo(w / kind.replace(" ", "_"))
        if kind == "many files":
            for i in range(4000):
                (repo / f"f{i}.txt").write_text("a\n")
            _git(repo, "add", ".")
            _git(repo, "commit", "-qm", "files")
            for i in range(4000):
                (repo / f"f{i}.txt").write_text(f"line {i}\n" * 2500)
        else:
            with open(repo / "a.py", "w") as f:
                for i in range(200):
                    f.write(f"x = {i} # a line of a big change\n" * 32_000)
        out = w / f"out_{len(said)}"
        out.mkdir()
        r = subprocess.run(
            [sys.executable, "-c", PATCH_PEAK, str(repo), str(out)],
            env=env.env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        check(r.returncode == 0, r.stderr[-300:])
        size, cut, peak = r.stdout.split()
        mib = int(peak) / 1024
        check(
            int(size) == 32 << 20 and cut == "True" and (out / "git.patch").stat().st_size == 32 << 20,
            f"{kind}: patch {size} bytes, cut {cut}",
        )
        check(mib < 120, f"{kind}: peak {mib:.0f} MiB")
        said.append(f"{kind}: 32 MB patch, peak {mib:.0f} MiB")
    return "; ".join(said)


def case_tokenizer_pickle(env: Env) -> str:
    """A tokenizer.pkl that runs code when loaded, in a dir every user can write, and (root only)
    owned by another user: the trainer refuses each in one line, and the code never runs."""
    import pickle

    w = env.work()
    mark = w / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {mark}",))

    seen = []
    for how in ("world-writable", "another user's"):
        if how == "another user's" and os.geteuid() != 0:
            continue
        d = w / how.replace(" ", "_").replace("'", "")
        shutil.copytree(_smoke(env) / "tokenizer", d)
        with open(d / "tokenizer.pkl", "wb") as f:
            pickle.dump(Evil(), f)
        if how == "world-writable":
            d.chmod(0o777)
        else:
            os.chown(d / "tokenizer.pkl", 12345, 12345)
        r = _trainer(
            env, "--data", "parquet", "--data-dir", str(_smoke(env) / "base_data"), "--tokenizer-dir", str(d)
        )
        seen.append(_trainer_line(r, 2, "tokenizer.pkl is a pickle").split(": ", 2)[-1][:50])
        check(not mark.exists(), f"{how}: the pickle's code ran")
    return f"{len(seen)} refused, the code never ran" + (
        "" if len(seen) == 2 else " (not root: no chown case)"
    )


CASES = [
    ("1", "symlink at a leg's log", case_symlink_leg_log),
    ("1", "planted links in a dir", case_planted_links_in_dir),
    ("2", "--out-md a directory", case_out_md_directory),
    ("3", "stop of an unproven process", case_stop_unproven),
    ("4", "300-character leg name, bad dirs", case_long_leg_name),
    ("5", "one line, not a traceback", case_one_line_not_traceback),
    ("6", "supervisor under EROFS", case_supervisor_erofs),
    ("6", "supervisor on a full disk", case_supervisor_enospc),
    ("6", "supervisor reaped", case_supervisor_reaped),
    ("7", "terminal escapes", case_terminal_escapes),
    ("8", "ANSI-coloured log", case_coloured_log),
    ("9", "5 GB sparse log", case_sparse_5gb),
    ("10", "numbers without bounds", case_numbers),
    ("11", "unclear messages", case_messages),
    # second round
    ("2.1", "# in an #SBATCH value", case_sbatch_comment),
    ("2.2", "sbatch abbreviations in extra_args", case_sbatch_abbreviations),
    ("2.3", "a foreign Slurm job id", case_foreign_job),
    ("2.4", "a wrong 'Invalid job id'", case_wrong_invalid_job_id),
    ("2.5", "resubmit keeps each attempt", case_resubmit_fresh_log),
    ("2.6", "prepare under Slurm", case_prepare_on_slurm),
    ("2.7", "git config runs no code", case_git_config_runs_nothing),
    ("2.8", "a workdir that is no checkout", case_not_a_checkout),
    ("2.9", "a notifier's endless output", case_notifier_output),
    ("2.10", "grids without a bound", case_huge_grids),
    ("2.11", "a failed prepare's output", case_failed_prepare),
    ("2.12", "non-UTF-8 exp_root", case_non_utf8_paths),
    ("2.13", "dir order across a clock change", case_dir_order),
    ("2.14", "the trainer's bad input", case_trainer_input),
    ("2.15", "a huge git diff", case_huge_diff),
    ("2.16", "a hostile tokenizer.pkl", case_tokenizer_pickle),
]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-k", default="", help="only cases whose title holds this")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir")
    args = ap.parse_args()
    base = Path(tempfile.mkdtemp(prefix="cockpit-hostile-"))
    env = Env(base)
    broken = 0
    try:
        for item, title, fn in CASES:
            if args.k and args.k not in title:
                continue
            t0 = time.monotonic()
            try:
                detail, verdict = fn(env), "held"
            except Broken as e:
                detail, verdict = str(e), "broken"
            except Exception as e:  # noqa: BLE001 - a case that crashes is a broken case, said in one line
                detail, verdict = (
                    f"{type(e).__name__}: {e} at {traceback.extract_tb(e.__traceback__)[-1].lineno}",
                    "broken",
                )
            broken += verdict == "broken"
            print(f"{verdict:<6} {item:>2}. {title:<36} {time.monotonic() - t0:5.1f}s  {detail}", flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)
    print(f"hostile: {len(CASES) if not args.k else 'some'} cases, {broken} broken")
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
