"""gpus.py against a fake NVML (per-field errors, busy GPUs) and the no-driver path."""

from __future__ import annotations

import subprocess
import sys
import time

import psutil
import pynvml
import pytest
from fake_nvml import FakeNVML
from helpers import cockpit, wait_for

from cockpit import cli, gpus, resume


def test_sample_eight_gpus_with_field_errors():
    nv = FakeNVML(
        8,
        broken={(2, "power"), (3, "util"), (3, "mem"), (5, "procs"), (6, "name"), (7, "temp"), (4, "limit")},
    )
    nv.util[0], nv.mem_used_mib[0], nv.pids[0] = 97.0, 18987.8, [4242, 4243]
    snap = gpus.GpuSampler(nvml=nv).sample()
    assert snap.available and snap.reason is None and len(snap.gpus) == 8
    g0, g2, g3 = snap.gpus[0], snap.gpus[2], snap.gpus[3]
    assert (g0.name, g0.util_pct, round(g0.mem_used_mib, 1), g0.mem_total_mib) == (
        "NVIDIA H100 80GB HBM3",
        97.0,
        18987.8,
        81559.0,
    )
    assert (g0.temp_c, g0.power_w, g0.pids) == (30.0, 70.0, [4242, 4243])
    assert g2.power_w is None and g2.util_pct == 0.0
    assert g0.power_limit_w == 700.0 and g2.power_limit_w == 700.0  # the limit has its own field
    assert g3.util_pct is None and g3.mem_used_mib is None and g3.mem_total_mib is None
    assert snap.gpus[5].pids == [] and snap.gpus[6].name is None and snap.gpus[7].temp_c is None
    assert snap.gpus[5].pids_error == "Not Supported" and snap.gpus[0].pids_error is None
    assert snap.gpus[4].power_limit_w is None and snap.gpus[4].power_w == 74.0
    text = gpus.render_table(snap, {4242: "20260101_000000_x/dense"})
    lines = text.splitlines()
    assert len(lines) == 10  # header, 8 GPUs, host
    assert "4242 (20260101_000000_x/dense), 4243" in lines[1] and "97%" in lines[1]
    assert lines[3].split()[-2] == "n/a"  # GPU 2's power
    assert (
        "70/700W" in lines[1] and lines[5].split()[-2] == "74W"
    )  # the draw and its limit; GPU 4 has no limit
    assert "n/a" in lines[4] and "n/a/n/a" in lines[4]  # GPU 3: util and memory
    assert lines[6].endswith("  n/a (Not Supported)") and lines[7].endswith(
        "  -"
    )  # GPU 5: not "no processes"
    assert lines[-1].startswith("host: cpu ")


def test_no_driver_is_a_normal_state():
    nv = FakeNVML(init_error=pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)
    sampler = gpus.GpuSampler(nvml=nv)
    snap = sampler.sample()
    assert not snap.available and snap.gpus == []
    assert snap.reason == "NVML Shared Library Not Found"
    assert snap.host.ram_total_mib > 0 and snap.host.cpu_pct >= 0
    assert gpus.render_table(snap).splitlines()[0] == "NVML unavailable: NVML Shared Library Not Found"
    assert gpus.visible_gpus(nv) == (None, "NVML Shared Library Not Found")
    assert gpus.preflight(snap, [0], 5, 1024) == (None, "NVML unavailable: NVML Shared Library Not Found")
    sampler.sample()
    assert sampler.history["host.cpu_pct"].maxlen == 120 and len(sampler.history["host.cpu_pct"]) == 2


@pytest.mark.slow
def test_cli_gpus_without_and_with_a_driver(monkeypatch, capsys, tmp_path):
    r = cockpit("--registry", str(tmp_path / "none.toml"), "gpus")  # the real NVML of this machine
    assert r.returncode == 0, r.stderr
    count, reason = gpus.visible_gpus()
    if count is None:
        assert r.stdout.splitlines()[0] == f"NVML unavailable: {reason}"
    assert r.stdout.splitlines()[-1].startswith("host: cpu ")
    nv = FakeNVML(2)
    nv.pids[1] = [999999]
    monkeypatch.setattr(gpus, "pynvml", nv)
    assert cli.main(["--registry", str(tmp_path / "none.toml"), "gpus"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:3] == ["gpu", "name", "util"] and out[2].endswith("999999") and len(out) == 4


def test_a_process_list_nvml_refuses_is_a_reason_not_no_processes():
    from cockpit.tui.build import gpu_view
    from cockpit.tui.gpu_panel import procs_text

    nv = FakeNVML(2, broken={(1, "procs")})
    nv.pids[0] = [4242]
    snap = gpus.GpuSampler(nvml=nv).sample()
    assert [(g.pids, g.pids_error) for g in snap.gpus] == [([4242], None), ([], "Not Supported")]
    status = resume.GpuStatus("idle", "2 GPUs are idle", 2, visible=2)
    rows = gpu_view(snap, status, {4242: "dense"}, None).gpus
    assert [procs_text(g) for g in rows] == ["dense 1.0G", "n/a (Not Supported)"]
    nv.broken.clear()  # NVML answers again: the next sample lists the processes, with no reason
    assert gpus.GpuSampler(nvml=nv).sample().gpus[1].pids_error is None


def test_history_is_bounded():
    nv = FakeNVML(2)
    sampler = gpus.GpuSampler(history=5, nvml=nv)
    for i in range(12):
        nv.util[1] = float(i)
        sampler.sample()
    assert list(sampler.history["gpu1.util_pct"]) == [7.0, 8.0, 9.0, 10.0, 11.0]
    assert all(len(q) == 5 for q in sampler.history.values())
    assert {"gpu0.mem_used_mib", "gpu0.temp_c", "gpu0.power_w", "host.ram_used_mib", "host.load1"} <= set(
        sampler.history
    )


def test_preflight_thresholds():
    nv = FakeNVML(8)
    sampler = gpus.GpuSampler(nvml=nv)
    assert gpus.preflight(sampler.sample(), list(range(8)), 5, 1024) == (True, "GPUs 0,1,2,3,4,5,6,7 idle")
    nv.util[3], nv.mem_used_mib[5], nv.pids[6] = 40.0, 30000.0, [77]
    ok, why = gpus.preflight(sampler.sample(), list(range(8)), 5, 1024)
    assert ok is False
    assert why == "GPU 3 busy: util 40% > 5%; GPU 5 busy: mem 30000 MiB > 1024 MiB; GPU 6 busy: processes 77"
    assert gpus.preflight(sampler.sample(), [0, 1], 5, 1024)[0] is True  # a 2-GPU leg uses 0 and 1
    assert gpus.preflight(sampler.sample(), [9], 5, 1024) == (False, "GPU 9 not visible")


def test_preflight_judges_a_gpu_by_what_nvml_gives_and_says_what_it_could_not_check():
    """A GPU whose processes NVML cannot list (MIG, vGPU, permissions) is judged by utilization
    and memory, so a leg can run on it; the note says the processes were not checked, and why."""
    nv = FakeNVML(4, broken={(1, "procs"), (2, "procs"), (3, "util")})
    sampler = gpus.GpuSampler(nvml=nv)
    assert gpus.preflight(sampler.sample(), [0], 5, 1024) == (
        True,
        "GPUs 0 idle",
    )  # every figure: nothing said
    assert gpus.preflight(sampler.sample(), [0, 1, 2, 3], 5, 1024) == (
        True,
        "GPUs 0,1,2,3 idle; not checked: processes on GPUs 1,2 (NVML: Not Supported), utilization of GPUs 3",
    )
    assert gpus.pick(sampler.sample(), [0, 1, 2, 3], {0}, 1, 5, 1024) == (
        [1],
        "GPUs 1 idle; not checked: processes on GPUs 1 (NVML: Not Supported)",
    )
    nv.mem_used_mib[1] = 30000.0  # what NVML does give still makes a GPU busy
    assert gpus.preflight(sampler.sample(), [1], 5, 1024) == (False, "GPU 1 busy: mem 30000 MiB > 1024 MiB")


def test_leg_gpu_indices():
    assert gpus.leg_gpu_indices(2, {}) == [0, 1]
    assert gpus.leg_gpu_indices(2, {"CUDA_VISIBLE_DEVICES": "4,5,6"}) == [4, 5]
    assert gpus.leg_gpu_indices(2, {"CUDA_VISIBLE_DEVICES": "GPU-1a2b,GPU-3c4d"}) == [0, 1]


def test_leg_for_pids_follows_the_process_tree():
    code = "import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'], start_new_session=True); time.sleep(60)"
    root = subprocess.Popen([sys.executable, "-c", code])
    try:
        grandchild = wait_for(lambda: psutil.Process(root.pid).children(), what="grandchild")[0]
        ct = psutil.Process(root.pid).create_time()
        legs = [("dir/dense", root.pid, ct), ("dir/stale", root.pid, ct - 100)]  # pid reused: not ours
        assert gpus.leg_for_pids([grandchild.pid, 1], legs) == {grandchild.pid: "dir/dense"}
    finally:
        for p in psutil.Process(root.pid).children(recursive=True):
            p.kill()
        root.kill()
        root.wait()


def test_one_sample_of_eight_gpus_is_cheap():
    # Not a benchmark (python -m bench.gpus prints the figure); a guard against an accidental
    # blocking call (cpu_percent with an interval, a re-init per sample), with a wide margin.
    sampler = gpus.GpuSampler(nvml=FakeNVML(8))
    sampler.sample()
    t0 = time.perf_counter()
    for _ in range(50):
        sampler.sample()
    assert (time.perf_counter() - t0) / 50 < 0.05
