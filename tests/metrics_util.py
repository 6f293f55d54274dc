"""Helpers of the metrics tests (report, resume, status): temp registries, dirs in the
RUNNER's format built from fixture logs, a fake GPU sampler."""

import json
import os
import re
import shutil
from pathlib import Path

from conftest import hold_supervisor_lock, live_leg

from cockpit import gpus
from cockpit import registry as reg

REPO = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).parent / "fixtures"
GOLDEN = Path(__file__).parent / "golden"
NOW = 1_800_000_000.0  # a fixed "now", long after every fixture log was written


def bundled_registry(tmp_path: Path, text: str | None = None) -> reg.Registry:
    """The bundled experiments.toml (or `text`) with exp_root and read-only paths under tmp_path."""
    text = (REPO / "experiments.toml").read_text() if text is None else text
    text = re.sub(r'(?m)^exp_root = .*$', f'exp_root = "{tmp_path}/exp"', text)
    text = text.replace('"~/.cache/nanochat/', f'"{tmp_path}/cache/')
    path = tmp_path / "experiments.toml"
    path.write_text(text)
    return reg.load(path)


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
    A "running" state names a live stand-in torchrun (conftest.live_leg); a live supervisor is
    this test process, holding the dir's lock.
    """
    d = exp_root / name
    (d / "state").mkdir(parents=True)
    experiment = name.split("_", 2)[2]
    plan = {"experiment": experiment, "dir": str(d),
            "legs": [{"name": leg, "log": str(d / f"{leg}.log")} for leg in legs]}
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


class FakeSampler:
    """A GPU sampler that returns a fixed snapshot."""

    def __init__(self, available: bool = True, reason: str | None = None, gpus_: list | None = None):
        self.snap = gpus.Snapshot(available, reason, gpus_ or [], gpus.HostInfo(1.0, 1000.0, 16000.0, 0.1), NOW)

    def sample(self) -> gpus.Snapshot:
        return self.snap


def gpu(index: int, util: float = 0.0, mem: float = 0.0) -> gpus.GpuInfo:
    return gpus.GpuInfo(index, "NVIDIA H100 80GB HBM3", util, mem, 81559.0, 30.0, 70.0, [])


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
