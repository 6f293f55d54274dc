"""A stand-in for the `pynvml` module (nvidia-ml-py) for tests and the sampling benchmark.

It answers the calls cockpit.gpus makes, with the real library's error classes, so per-field
failures (a card without power readings, no permission for the process list) and a missing
driver can be staged without a GPU.
"""

from __future__ import annotations

from types import SimpleNamespace

import pynvml

MIB = 1024 * 1024
NVML_TEMPERATURE_GPU = pynvml.NVML_TEMPERATURE_GPU
NVMLError = pynvml.NVMLError


class FakeNVML:
    NVML_TEMPERATURE_GPU = NVML_TEMPERATURE_GPU
    NVMLError = NVMLError

    def __init__(self, n: int = 8, broken: set[tuple[int, str]] | None = None, init_error: int | None = None):
        self.n = n
        self.broken = broken or set()  # (gpu index, field) pairs that raise NVMLError_NotSupported
        self.init_error = init_error  # an NVML_ERROR_* code that nvmlInit raises
        self.util = [0.0] * n
        self.mem_used_mib = [0.0] * n
        self.pids: list[list[int]] = [[] for _ in range(n)]
        self.calls = 0

    def _check(self, h: int, field: str) -> None:
        self.calls += 1
        if (h, field) in self.broken:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)

    def nvmlInit(self) -> None:
        if self.init_error is not None:
            raise pynvml.NVMLError(self.init_error)

    def nvmlSystemGetDriverVersion(self) -> str:
        return "550.54.15"

    def nvmlSystemGetCudaDriverVersion(self) -> int:
        return 12040

    def nvmlDeviceGetCount(self) -> int:
        return self.n

    def nvmlDeviceGetHandleByIndex(self, i: int) -> int:
        return i

    def nvmlDeviceGetName(self, h: int) -> str:
        self._check(h, "name")
        return "NVIDIA H100 80GB HBM3"

    def nvmlDeviceGetUtilizationRates(self, h: int):
        self._check(h, "util")
        return SimpleNamespace(gpu=self.util[h], memory=0)

    def nvmlDeviceGetMemoryInfo(self, h: int):
        self._check(h, "mem")
        total = 81559 * MIB
        used = int(self.mem_used_mib[h] * MIB)
        return SimpleNamespace(total=total, used=used, free=total - used)

    def nvmlDeviceGetTemperature(self, h: int, sensor: int) -> int:
        self._check(h, "temp")
        return 30 + h

    def nvmlDeviceGetPowerUsage(self, h: int) -> int:
        self._check(h, "power")
        return 70_000 + 1000 * h  # milliwatts

    def nvmlDeviceGetEnforcedPowerLimit(self, h: int) -> int:
        self._check(h, "limit")
        return 700_000  # milliwatts, an H100 SXM's

    def nvmlDeviceGetComputeRunningProcesses(self, h: int):
        self._check(h, "procs")
        return [SimpleNamespace(pid=p, usedGpuMemory=1024 * MIB) for p in self.pids[h]]
