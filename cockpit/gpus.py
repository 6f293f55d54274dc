"""GPU and host sampling: NVML (nvidia-ml-py) per GPU, psutil for the host, with history.

No driver is a normal state (a laptop, CI): the snapshot says `available=False` with the reason,
and the host figures are still there. A field NVML cannot give (a consumer card without power
readings, a permission error) is None, shown as n/a, never a crash.

The sampler keeps handles and names from its first sample, so one sample of 8 GPUs is a few
dozen NVML calls: well under 10 ms (see tests/test_gpus.py).

Layer 1: imports procs (the process trees that own the GPUs' processes).
"""

from __future__ import annotations

import os
import time
from collections import deque
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Protocol

import psutil

from cockpit import procs

try:
    import pynvml  # from nvidia-ml-py
except ImportError:  # pragma: no cover - it is a declared dependency
    pynvml = None

MIB = 1024 * 1024


@dataclass
class GpuInfo:
    index: int
    name: str | None
    util_pct: float | None
    mem_used_mib: float | None
    mem_total_mib: float | None
    temp_c: float | None
    power_w: float | None
    pids: list[int] = field(default_factory=list)
    pid_mem_mib: dict[int, float] = field(
        default_factory=dict
    )  # GPU memory each process holds, where NVML says
    power_limit_w: float | None = None  # the enforced power limit (the scale of the power history)
    pids_error: str | None = None  # why NVML could not list the processes (then `pids` says nothing)


@dataclass
class HostInfo:
    cpu_pct: float
    ram_used_mib: float
    ram_total_mib: float
    load1: float | None


@dataclass
class Snapshot:
    available: bool
    reason: str | None  # why NVML is unavailable (None when available)
    gpus: list[GpuInfo]
    host: HostInfo
    time: float = 0.0


def _nvml_reason(e: BaseException) -> str:
    text = str(e).strip()
    return text or type(e).__name__


class Sampler(Protocol):
    """What samples the GPUs: a GpuSampler, or a stand-in with fixed figures (tests)."""

    def sample(self) -> Snapshot: ...


class GpuSampler:
    """Samples GPUs and host; keeps the last `history` values of each metric for sparklines.

    history keys: "host.cpu_pct", "host.ram_used_mib", "host.load1", and per GPU
    "gpu<i>.util_pct", "gpu<i>.mem_used_mib", "gpu<i>.temp_c", "gpu<i>.power_w" (None kept as n/a).
    """

    def __init__(self, history: int = 120, nvml: ModuleType | Any | None = None):
        self.nvml = nvml if nvml is not None else pynvml
        self.history_len = history
        self.history: dict[str, deque] = {}
        self.reason: str | None = None
        self._handles: list[Any] | None = None
        self._names: list[str | None] = []
        psutil.cpu_percent(interval=None)  # primes the counter: the next call measures since now

    def _init(self) -> bool:
        if self._handles is not None:
            return True
        if self.reason is not None:
            return False
        nv = self.nvml
        if nv is None:
            self.reason = "nvidia-ml-py is not installed"
            return False
        try:
            nv.nvmlInit()
            count = nv.nvmlDeviceGetCount()
            handles = [nv.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
        except Exception as e:  # NVMLError and its many subclasses, or a broken library
            self.reason = _nvml_reason(e)
            return False
        names = []
        for h in handles:
            try:
                name = nv.nvmlDeviceGetName(h)
                names.append(name.decode() if isinstance(name, bytes) else str(name))
            except Exception:
                names.append(None)
        self._handles, self._names = handles, names
        return True

    def _field(self, fn, *args):
        try:
            return fn(*args)
        except Exception:
            return None

    def sample_gpus(self) -> list[GpuInfo]:
        if not self._init():
            return []
        nv = self.nvml
        out = []
        for i, h in enumerate(self._handles or []):
            util = self._field(nv.nvmlDeviceGetUtilizationRates, h)
            mem = self._field(nv.nvmlDeviceGetMemoryInfo, h)
            temp = self._field(nv.nvmlDeviceGetTemperature, h, getattr(nv, "NVML_TEMPERATURE_GPU", 0))
            power = self._field(nv.nvmlDeviceGetPowerUsage, h)
            limit = self._field(nv.nvmlDeviceGetEnforcedPowerLimit, h)
            try:
                procs, pids_error = nv.nvmlDeviceGetComputeRunningProcesses(h), None
            except Exception as e:  # no permission, not supported (some MIG and vGPU setups)...
                procs, pids_error = None, _nvml_reason(e)
            out.append(
                GpuInfo(
                    index=i,
                    name=self._names[i],
                    util_pct=float(util.gpu) if util is not None else None,
                    mem_used_mib=mem.used / MIB if mem is not None else None,
                    mem_total_mib=mem.total / MIB if mem is not None else None,
                    temp_c=float(temp) if temp is not None else None,
                    power_w=power / 1000.0 if power is not None else None,
                    pids=sorted({p.pid for p in procs}) if procs else [],
                    pid_mem_mib=_pid_mem(procs),
                    power_limit_w=limit / 1000.0 if limit else None,
                    pids_error=pids_error,
                )
            )
        return out

    def sample_host(self) -> HostInfo:
        vm = psutil.virtual_memory()
        try:
            load1 = os.getloadavg()[0]
        except OSError:
            load1 = None
        return HostInfo(
            cpu_pct=psutil.cpu_percent(interval=None),
            ram_used_mib=(vm.total - vm.available) / MIB,
            ram_total_mib=vm.total / MIB,
            load1=load1,
        )

    def sample(self) -> Snapshot:
        gpus = self.sample_gpus()
        snap = Snapshot(self._handles is not None, self.reason, gpus, self.sample_host(), time.time())
        self._record(snap)
        return snap

    def _record(self, snap: Snapshot) -> None:
        def put(key: str, value: float | None) -> None:
            q = self.history.get(key)
            if q is None:
                q = self.history[key] = deque(maxlen=self.history_len)
            q.append(value)

        put("host.cpu_pct", snap.host.cpu_pct)
        put("host.ram_used_mib", snap.host.ram_used_mib)
        put("host.load1", snap.host.load1)
        for g in snap.gpus:
            put(f"gpu{g.index}.util_pct", g.util_pct)
            put(f"gpu{g.index}.mem_used_mib", g.mem_used_mib)
            put(f"gpu{g.index}.temp_c", g.temp_c)
            put(f"gpu{g.index}.power_w", g.power_w)


def _pid_mem(procs: list | None) -> dict[int, float]:
    """pid -> MiB of GPU memory, from NVML's process list. NVML leaves usedGpuMemory None where it
    cannot say (no permission, some MIG and vGPU setups): such a process has no entry."""
    out: dict[int, float] = {}
    for p in procs or ():
        used = getattr(p, "usedGpuMemory", None)
        if isinstance(used, int) and used >= 0:
            out[p.pid] = out.get(p.pid, 0.0) + used / MIB
    return out


def visible_gpus(nvml: ModuleType | Any | None = None) -> tuple[int | None, str | None]:
    """(number of GPUs NVML shows, None) or (None, why NVML is unavailable)."""
    sampler = GpuSampler(history=1, nvml=nvml)
    if not sampler._init():
        return None, sampler.reason
    return len(sampler._handles or []), None


def machine(nvml: ModuleType | Any | None = None) -> dict[str, Any]:
    """The GPUs as a run's provenance: {"gpus": [model per GPU], "driver": version, "cuda_driver":
    "12.4"}, or {"error": why NVML cannot say} (a machine without a driver is a normal state)."""
    sampler = GpuSampler(history=1, nvml=nvml)
    if not sampler._init():
        return {"error": f"NVML unavailable: {sampler.reason}"}
    nv = sampler.nvml
    driver = sampler._field(nv.nvmlSystemGetDriverVersion)
    cuda = sampler._field(nv.nvmlSystemGetCudaDriverVersion)
    return {
        "gpus": list(sampler._names),
        "driver": driver.decode() if isinstance(driver, bytes) else driver,
        "cuda_driver": f"{cuda // 1000}.{cuda % 1000 // 10}" if isinstance(cuda, int) else None,
    }


def shortfall(need: int, visible: int | None, reason: str | None = None) -> str | None:
    """Why a leg of `need` GPUs cannot run on this machine (`visible` GPUs; None: NVML cannot
    say, for `reason`), or None when it can. One wording for the launch's refusal and the next leg."""
    if need <= 0:
        return None
    if visible is None:
        return f"needs {need} GPUs, and NVML is unavailable here: {reason or 'unknown reason'}"
    if visible < need:
        return f"needs {need} GPUs, {visible} visible here"
    return None


def leg_gpu_indices(nproc: int, env: dict[str, str] | None = None) -> list[int]:
    """The GPUs a leg of `nproc` processes uses: the first nproc of CUDA_VISIBLE_DEVICES, else 0..n-1.

    NVML indexes all GPUs regardless of CUDA_VISIBLE_DEVICES; numeric entries map directly,
    anything else (UUIDs, MIG ids) falls back to 0..n-1.
    """
    env = os.environ if env is None else env
    cvd = env.get("CUDA_VISIBLE_DEVICES", "").strip()
    if cvd:
        parts = [p.strip() for p in cvd.split(",") if p.strip()]
        if all(p.isdigit() for p in parts):
            return [int(p) for p in parts[:nproc]]
    return list(range(nproc))


def preflight(
    snap: Snapshot, indices: list[int], max_util_pct: float, max_mem_mib: float
) -> tuple[bool | None, str]:
    """Are the GPUs a leg will use idle? (True, ...), (False, why busy), or (None, why unknown).

    A GPU is idle when its utilization and memory are under the thresholds and no process holds
    it. Where NVML gives a figure but not another (it cannot list a GPU's processes on some MIG,
    vGPU and permission setups), the GPU is judged by what NVML does give: a GPU whose processes
    can never be listed would otherwise never be idle. The note says what was not checked."""
    if not snap.available:
        return None, f"NVML unavailable: {snap.reason}"
    by_index = {g.index: g for g in snap.gpus}
    busy = [why for i in indices if (why := _busy(by_index.get(i), i, max_util_pct, max_mem_mib))]
    if busy:
        return False, "; ".join(busy)
    return True, f"GPUs {fmt_set(indices)} idle" + unchecked([by_index[i] for i in indices])


def unchecked(gs: list[GpuInfo]) -> str:
    """What the idle test could not see on these GPUs, as the end of its note:
    `; not checked: processes on GPUs 0,1 (NVML: Not Supported)`; "" when it saw everything."""
    missing: dict[str, list[int]] = {}
    for g in gs:
        if g.pids_error:
            missing.setdefault(f"processes on GPUs {{}} (NVML: {g.pids_error})", []).append(g.index)
        if g.util_pct is None:
            missing.setdefault("utilization of GPUs {}", []).append(g.index)
        if g.mem_used_mib is None:
            missing.setdefault("memory of GPUs {}", []).append(g.index)
    return (
        "; not checked: " + ", ".join(what.format(fmt_set(i)) for what, i in missing.items())
        if missing
        else ""
    )


def _busy(g: GpuInfo | None, index: int, max_util_pct: float, max_mem_mib: float) -> str | None:
    """Why GPU `index` is not idle (`GPU 1 busy: util 93% > 5%`), or None when it is."""
    if g is None:
        return f"GPU {index} not visible"
    why = []
    if g.util_pct is not None and g.util_pct > max_util_pct:
        why.append(f"util {g.util_pct:.0f}% > {max_util_pct:g}%")
    if g.mem_used_mib is not None and g.mem_used_mib > max_mem_mib:
        why.append(f"mem {g.mem_used_mib:.0f} MiB > {max_mem_mib:g} MiB")
    if g.pids:
        why.append(f"processes {','.join(map(str, g.pids[:4]))}")
    return f"GPU {index} busy: " + ", ".join(why) if why else None


def fmt_set(indices: list[int] | tuple[int, ...]) -> str:
    """A set of GPUs as CUDA_VISIBLE_DEVICES and the screen write it: `0,1`."""
    return ",".join(map(str, indices))


def gpu_pool(
    named: list[int] | tuple[int, ...] | None, snap: Snapshot, env: dict[str, str] | None = None
) -> tuple[list[int] | None, str]:
    """The GPUs (NVML indices) legs may be placed on side by side, and where that set comes
    from: the registry's `gpus`, else CUDA_VISIBLE_DEVICES when it names GPUs by index, else
    every GPU NVML shows. (None, why) when no such set can be known: CUDA_VISIBLE_DEVICES names
    GPUs otherwise (UUIDs, MIG), or NVML is unavailable and the registry names none."""
    if named:
        return list(named), "the registry's gpus"
    env = os.environ if env is None else env
    cvd = env.get("CUDA_VISIBLE_DEVICES", "").strip()
    if cvd:
        parts = [p.strip() for p in cvd.split(",") if p.strip()]
        if not all(p.isdigit() for p in parts):
            return None, "CUDA_VISIBLE_DEVICES names GPUs other than by index"
        return list(dict.fromkeys(int(p) for p in parts)), "the GPUs CUDA_VISIBLE_DEVICES names"
    if not snap.available:
        return None, f"NVML unavailable ({snap.reason}) and the registry names no gpus"
    return [g.index for g in snap.gpus], "every GPU NVML shows"


def pick(
    snap: Snapshot, pool: list[int], held: set[int], need: int, max_util_pct: float, max_mem_mib: float
) -> tuple[list[int] | None, str]:
    """`need` GPUs of `pool` that no leg of this queue holds (`held`) and that are idle, the
    first ones in pool order: (GPUs, what was checked), or (None, why not now). Without NVML
    (a pool the registry named) the free GPUs are taken unchecked, and the reason says so."""
    free = [i for i in pool if i not in held]
    if not snap.available:
        if len(free) < need:
            return None, f"needs {need} GPUs, {len(free)} of {fmt_set(pool)} free of this queue's legs"
        got = free[:need]
        return got, f"GPUs {fmt_set(got)} (unchecked: NVML unavailable: {snap.reason})"
    by_index = {g.index: g for g in snap.gpus}
    busy = {i: why for i in free if (why := _busy(by_index.get(i), i, max_util_pct, max_mem_mib))}
    idle = [i for i in free if i not in busy]
    if len(idle) >= need:
        return idle[:need], f"GPUs {fmt_set(idle[:need])} idle" + unchecked(
            [by_index[i] for i in idle[:need]]
        )
    said = [f"needs {need} GPUs, {len(idle)} idle"]
    if held:
        said.append(f"GPUs {fmt_set(sorted(held))} held by this queue's legs")
    said += list(busy.values())[:4]
    return None, "; ".join(said)


def leg_for_pids(pids: list[int], legs: list[tuple[str, int | None, float | None]]) -> dict[int, str]:
    """Map GPU process pids to legs: `legs` is (label, torchrun pid, create time) of running legs.

    A GPU process belongs to a leg when it is in the process tree of the leg's torchrun.
    """
    wanted = set(pids)
    out: dict[int, str] = {}
    for label, pid, create_time in legs:
        for p in procs.tree_of(pid, create_time):
            if p.pid in wanted:
                out[p.pid] = label
    return out


def fmt(value: float | None, spec: str = ".0f", unit: str = "") -> str:
    return "n/a" if value is None else f"{value:{spec}}{unit}"


def render_table(snap: Snapshot, pid_legs: dict[int, str] | None = None) -> str:
    """`cockpit gpus`: one line per GPU, or the reason there are none; then the host."""
    pid_legs = pid_legs or {}
    out = []
    if not snap.available:
        out.append(f"NVML unavailable: {snap.reason}")
    elif not snap.gpus:
        out.append("NVML: no GPUs")
    else:
        out.append(
            f"{'gpu':>3}  {'name':<22} {'util':>5} {'memory (MiB)':>17} {'temp':>5} {'power':>9}  processes"
        )
        for g in snap.gpus:
            mem = f"{fmt(g.mem_used_mib)}/{fmt(g.mem_total_mib)}"
            power = fmt(g.power_w, ".0f", "W")  # with the enforced limit where NVML gives both
            if g.power_w is not None and g.power_limit_w:
                power = f"{g.power_w:.0f}/{g.power_limit_w:.0f}W"
            procs = ", ".join(f"{p}" + (f" ({pid_legs[p]})" if p in pid_legs else "") for p in g.pids) or "-"
            if g.pids_error:
                procs = f"n/a ({g.pids_error})"
            out.append(
                f"{g.index:>3}  {(g.name or 'n/a')[:22]:<22} {fmt(g.util_pct, '.0f', '%'):>5} {mem:>17} "
                f"{fmt(g.temp_c, '.0f', 'C'):>5} {power:>9}  {procs}"
            )
    h = snap.host
    out.append(
        f"host: cpu {h.cpu_pct:.0f}%, ram {h.ram_used_mib / 1024:.1f}/{h.ram_total_mib / 1024:.1f} GiB, "
        f"load {fmt(h.load1, '.2f')}"
    )
    return "\n".join(out)
