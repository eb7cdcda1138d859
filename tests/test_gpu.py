"""engine.hardware against a stand-in NVML: no driver, no GPU, failing fields, MIG, hidden pids."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from types import SimpleNamespace

from engine import hardware as gpu_mod
from engine.hardware import GpuProbe, format_snapshot, snapshot


class NVMLError(Exception):
    pass


class NVMLError_LibraryNotFound(NVMLError):
    pass


class NVMLError_DriverNotLoaded(NVMLError):
    pass


class NVMLError_NotSupported(NVMLError):
    def __str__(self) -> str:
        return "Not Supported"


class FakeNvml:
    """The subset of pynvml that engine.hardware calls; `fail` names calls that raise NotSupported."""

    NVML_TEMPERATURE_GPU = 0
    NVML_CLOCK_SM = 1
    NVML_CLOCK_MEM = 2

    def __init__(self, count=1, init_error=None, fail=(), mig=False, procs=None, cc=(8, 0)):
        self.count, self.init_error, self.fail, self.mig, self.cc = count, init_error, set(fail), mig, cc
        self.procs = procs if procs is not None else [SimpleNamespace(pid=os.getpid(), usedGpuMemory=2 * 2**30)]
        self.inits = 0

    def _maybe_fail(self, name):
        if name in self.fail:
            raise NVMLError_NotSupported()

    def nvmlInit(self):
        self.inits += 1
        if self.init_error:
            raise self.init_error

    def nvmlSystemGetDriverVersion(self):
        return b"550.54.15"

    def nvmlSystemGetCudaDriverVersion(self):
        return 12040

    def nvmlDeviceGetCount(self):
        return self.count

    def nvmlDeviceGetHandleByIndex(self, i):
        return ("gpu", i)

    def nvmlDeviceGetName(self, h):
        return "NVIDIA A100-SXM4-80GB" if h[0] == "gpu" else "MIG 3g.40gb"

    def nvmlDeviceGetUUID(self, h):
        return f"GPU-{h[1]}"

    def nvmlDeviceGetMemoryInfo(self, h):
        self._maybe_fail("memory")
        return SimpleNamespace(total=80 * 2**30, used=20 * 2**30, free=60 * 2**30)

    def nvmlDeviceGetUtilizationRates(self, h):
        self._maybe_fail("utilization")
        return SimpleNamespace(gpu=75, memory=30)

    def nvmlDeviceGetTemperature(self, h, sensor):
        self._maybe_fail("temperature")
        return 61

    def nvmlDeviceGetPowerUsage(self, h):
        self._maybe_fail("power")
        return 250_000

    def nvmlDeviceGetEnforcedPowerLimit(self, h):
        return 400_000

    def nvmlDeviceGetFanSpeed(self, h):
        raise NVMLError_NotSupported()  # data-centre boards have no fan reading

    def nvmlDeviceGetClockInfo(self, h, clock):
        return 1410 if clock == self.NVML_CLOCK_SM else 1593

    def nvmlDeviceGetMaxClockInfo(self, h, clock):
        return 1410

    def nvmlDeviceGetCudaComputeCapability(self, h):
        self._maybe_fail("compute_capability")
        return self.cc

    def nvmlDeviceGetMigMode(self, h):
        return (1, 1) if self.mig else (0, 0)

    def nvmlDeviceGetMaxMigDeviceCount(self, h):
        return 2

    def nvmlDeviceGetMigDeviceHandleByIndex(self, h, slot):
        if slot == 1:
            raise NVMLError("not found")  # an empty slot
        return ("mig", slot)

    def nvmlDeviceGetComputeRunningProcesses(self, h):
        self._maybe_fail("processes")
        return self.procs

    def nvmlDeviceGetGraphicsRunningProcesses(self, h):
        return []


def test_no_driver_is_a_reason_with_cpu_fallback_and_host(tmp_path):
    snap = snapshot(tmp_path, GpuProbe(FakeNvml(init_error=NVMLError_LibraryNotFound())))
    assert snap["gpus"] == []
    assert "no NVIDIA driver" in snap["reason"] and "CPU" in snap["reason"]
    assert snap["host"]["cpu_count"] >= 1 and snap["host"]["ram_total_mib"] > 0
    assert snap["host"]["disk_free_gib"] > 0
    json.dumps(snap)  # `tunedeck gpu --json` must be able to print it


def test_driver_not_loaded_and_zero_gpus_say_different_things(tmp_path):
    not_loaded = snapshot(tmp_path, GpuProbe(FakeNvml(init_error=NVMLError_DriverNotLoaded())))
    assert "not loaded" in not_loaded["reason"]
    none = snapshot(tmp_path, GpuProbe(FakeNvml(count=0)))
    assert none["gpus"] == [] and "no GPU is visible" in none["reason"]
    assert none["driver_version"] == "550.54.15"


def test_init_failure_is_remembered_not_retried_every_sample(tmp_path):
    nvml = FakeNvml(init_error=NVMLError_LibraryNotFound())
    probe = GpuProbe(nvml)
    snapshot(tmp_path, probe)
    snapshot(tmp_path, probe)
    assert nvml.inits == 1


def test_one_gpu_reads_every_field(tmp_path):
    nvml = FakeNvml()
    probe = GpuProbe(nvml)
    snap = snapshot(tmp_path, probe)
    snapshot(tmp_path, probe)
    assert nvml.inits == 1  # NVML stays open between samples
    assert "reason" not in snap and snap["cuda_version"] == "12.4"
    (g,) = snap["gpus"]
    assert g["name"] == "NVIDIA A100-SXM4-80GB"
    assert (g["memory_used_mib"], g["memory_total_mib"]) == (20480, 81920)
    assert g["utilization_pct"] == 75 and g["temperature_c"] == 61
    assert g["power_w"] == 250.0 and g["power_limit_w"] == 400.0
    assert g["compute_capability"] == "8.0" and g["bf16"] is True and g["mig"] is False
    assert g["fan_pct"] is None and g["unavailable"] == {"fan_pct": "Not Supported"}
    (proc,) = g["processes"]
    assert proc["pid"] == os.getpid() and proc["memory_mib"] == 2048
    assert proc["command"] and "python" in proc["command"].lower()
    json.dumps(snap)


def test_failing_fields_are_marked_unavailable_not_raised(tmp_path):
    nvml = FakeNvml(fail={"memory", "utilization", "temperature", "power", "compute_capability", "processes"})
    (g,) = snapshot(tmp_path, GpuProbe(nvml))["gpus"]
    for field in ("memory_used_mib", "utilization_pct", "temperature_c", "power_w", "compute_capability",
                  "bf16", "processes"):
        assert g[field] is None, field
    assert {"memory", "utilization", "temperature_c", "power_w", "compute_capability", "processes"} <= set(
        g["unavailable"])
    text = format_snapshot({"gpus": [g], "host": {}})
    assert "n/a" in text and "processes: n/a" in text


def test_old_gpu_has_no_bf16(tmp_path):
    (g,) = snapshot(tmp_path, GpuProbe(FakeNvml(cc=(7, 5))))["gpus"]
    assert g["compute_capability"] == "7.5" and g["bf16"] is False


def test_mig_lists_instances_and_skips_empty_slots(tmp_path):
    (g,) = snapshot(tmp_path, GpuProbe(FakeNvml(mig=True)))["gpus"]
    assert g["mig"] is True
    assert [i["slot"] for i in g["mig_instances"]] == [0]
    assert g["mig_instances"][0]["name"] == "MIG 3g.40gb"


def test_hidden_pids(tmp_path):
    import subprocess

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    hidden = SimpleNamespace(pid=proc.pid, usedGpuMemory=None)
    all_ones = SimpleNamespace(pid=os.getpid(), usedGpuMemory=2**64 - 1)  # NVML's "not available"
    (g,) = snapshot(tmp_path, GpuProbe(FakeNvml(procs=[hidden, all_ones])))["gpus"]
    by_pid = {p["pid"]: p for p in g["processes"]}
    assert "not visible" in by_pid[proc.pid]["hidden"] and by_pid[proc.pid]["memory_mib"] is None
    assert by_pid[os.getpid()]["memory_mib"] is None


def test_disk_is_read_from_the_nearest_existing_parent(tmp_path):
    snap = snapshot(tmp_path / "not" / "yet", GpuProbe(FakeNvml(count=0)))
    assert snap["host"]["disk_path"] == str(tmp_path)
    assert snap["host"]["workspace"] == str(tmp_path / "not" / "yet")


def test_format_snapshot_plain_text(tmp_path):
    text = format_snapshot(snapshot(tmp_path, GpuProbe(FakeNvml())))
    assert "GPU 0: NVIDIA A100-SXM4-80GB" in text and "bf16 yes" in text
    assert "20.0/80.0 GiB" in text and "util 75%" in text and "power 250W/400W" in text
    assert "unavailable: fan_pct" in text
    assert text.splitlines()[-1].startswith("Host ")


def test_this_machine_never_crashes(tmp_path):
    """The real probe: on a machine without NVIDIA it says why; with one it lists GPUs."""
    snap = snapshot(tmp_path)
    assert isinstance(snap["gpus"], list)
    assert snap["gpus"] or snap["reason"]
    lines = format_snapshot(snap).splitlines()
    if snap["gpus"]:
        for gpu in snap["gpus"]:
            assert any(line.startswith(f"GPU {gpu['index']}: {gpu['name'] or 'unknown'}") for line in lines), lines
        assert sum(line.startswith("  memory ") and " GiB " in line for line in lines) == len(snap["gpus"]), lines
    else:
        assert lines[0] == f"No usable NVIDIA GPU: {snap['reason']}"
    host = snap["host"]
    assert lines[-1].startswith(f"Host {host['hostname']}: {host['cpu_count']} CPUs at "), lines
    assert f"free at {host['disk_path']}" in lines[-1]


def test_engine_gpu_does_not_import_torch_or_ui():
    import subprocess

    code = ("import sys, engine.hardware as g; from pathlib import Path; g.snapshot(Path('.')); "
            "bad = [m for m in ('torch', 'textual', 'rich', 'tui') if m in sys.modules]; print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         cwd=Path(gpu_mod.__file__).parents[1])
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
