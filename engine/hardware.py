"""What hardware is here: NVIDIA GPUs through NVML, the host through psutil.

Light on purpose (no torch): the app samples this every second and
`tunedeck gpu` prints it. Every NVML call can fail on some driver, board,
MIG configuration or container; a failed field is recorded as unavailable
with the reason, never raised. No driver or no GPU is a snapshot with an
empty `gpus` list and a `reason` that says why and what it means.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from pathlib import Path
from typing import Any, Callable

import psutil

CPU_FALLBACK = "training will run on the CPU (slow: fine for the demo and tiny models)"


class GpuProbe:
    """Holds NVML open between samples: initialising it every second would cost more than reading it."""

    def __init__(self, nvml: Any = None):
        self._nvml = nvml  # the pynvml module, or a stand-in in tests
        self._ready = False
        self._failure: str | None = None
        self._lock = threading.Lock()
        self._cpu_primed = False
        self._cpu_model: str | None = None

    # ---- NVML ----------------------------------------------------------
    def _init(self) -> str | None:
        """None when NVML is usable, else the reason it is not."""
        if self._ready:
            return None
        if self._failure is not None:
            return self._failure
        try:
            if self._nvml is None:
                import pynvml

                self._nvml = pynvml
            self._nvml.nvmlInit()
        except ImportError:
            self._failure = "the nvidia-ml-py package is not installed, so GPUs cannot be read"
        except Exception as exc:  # NVMLError subclasses differ between driver versions
            self._failure = _init_failure_reason(exc)
        else:
            self._ready = True
        return self._failure

    def gpus(self) -> tuple[list[dict], str | None, dict]:
        with self._lock:
            failure = self._init()
            if failure:
                return [], failure, {}
            nv = self._nvml
            driver: dict[str, Any] = {}
            driver["driver_version"] = _call(lambda: _text(nv.nvmlSystemGetDriverVersion()), "driver_version", driver)
            cuda = _call(nv.nvmlSystemGetCudaDriverVersion, "cuda_version", driver)
            driver["cuda_version"] = f"{cuda // 1000}.{cuda % 1000 // 10}" if isinstance(cuda, int) else None
            try:
                count = nv.nvmlDeviceGetCount()
            except Exception as exc:
                return [], f"NVML could not count the GPUs ({_err(exc)}); {CPU_FALLBACK}", driver
            if count == 0:
                return [], ("the NVIDIA driver is loaded but no GPU is visible (in a container, "
                            f"start it with --gpus); {CPU_FALLBACK}"), driver
            return [self._device(i) for i in range(count)], None, driver

    def _device(self, index: int) -> dict:
        nv = self._nvml
        gpu: dict[str, Any] = {"index": index, "unavailable": {}}
        missing = gpu["unavailable"]
        try:
            handle = nv.nvmlDeviceGetHandleByIndex(index)
        except Exception as exc:
            missing["device"] = _err(exc)
            gpu["name"] = f"GPU {index} (cannot be opened: {_err(exc)})"
            return gpu

        def get(name: str, fn: Callable[[], Any]) -> Any:
            value = _call(fn, name, missing)
            gpu[name] = value
            return value

        get("name", lambda: _text(nv.nvmlDeviceGetName(handle)))
        get("uuid", lambda: _text(nv.nvmlDeviceGetUUID(handle)))
        mem = _call(lambda: nv.nvmlDeviceGetMemoryInfo(handle), "memory", missing)
        gpu["memory_total_mib"] = round(mem.total / 2**20) if mem else None
        gpu["memory_used_mib"] = round(mem.used / 2**20) if mem else None
        util = _call(lambda: nv.nvmlDeviceGetUtilizationRates(handle), "utilization", missing)
        gpu["utilization_pct"] = util.gpu if util else None
        gpu["memory_utilization_pct"] = util.memory if util else None
        get("temperature_c", lambda: nv.nvmlDeviceGetTemperature(handle, nv.NVML_TEMPERATURE_GPU))
        get("power_w", lambda: nv.nvmlDeviceGetPowerUsage(handle) / 1000)
        get("power_limit_w", lambda: nv.nvmlDeviceGetEnforcedPowerLimit(handle) / 1000)
        get("fan_pct", lambda: nv.nvmlDeviceGetFanSpeed(handle))
        get("sm_clock_mhz", lambda: nv.nvmlDeviceGetClockInfo(handle, nv.NVML_CLOCK_SM))
        get("sm_clock_max_mhz", lambda: nv.nvmlDeviceGetMaxClockInfo(handle, nv.NVML_CLOCK_SM))
        get("mem_clock_mhz", lambda: nv.nvmlDeviceGetClockInfo(handle, nv.NVML_CLOCK_MEM))
        cc = get("compute_capability", lambda: "%d.%d" % tuple(nv.nvmlDeviceGetCudaComputeCapability(handle)))
        # bf16 needs Ampere (sm_80) or newer; below that torch emulates it slowly or refuses.
        gpu["bf16"] = None if cc is None else float(cc) >= 8.0
        mig = _call(lambda: nv.nvmlDeviceGetMigMode(handle), "mig", {})
        gpu["mig"] = bool(mig and mig[0])
        if gpu["mig"]:
            gpu["mig_instances"] = self._mig_instances(handle)
        gpu["processes"] = self._processes(handle, missing)
        return gpu

    def _mig_instances(self, handle: Any) -> list[dict]:
        nv = self._nvml
        found = []
        try:
            slots = nv.nvmlDeviceGetMaxMigDeviceCount(handle)
        except Exception:
            return found
        for slot in range(slots):
            try:
                mig = nv.nvmlDeviceGetMigDeviceHandleByIndex(handle, slot)
            except Exception:
                continue  # an empty slot
            info: dict[str, Any] = {"slot": slot, "unavailable": {}}
            info["name"] = _call(lambda: _text(nv.nvmlDeviceGetName(mig)), "name", info["unavailable"])
            mem = _call(lambda: nv.nvmlDeviceGetMemoryInfo(mig), "memory", info["unavailable"])
            info["memory_total_mib"] = round(mem.total / 2**20) if mem else None
            info["memory_used_mib"] = round(mem.used / 2**20) if mem else None
            found.append(info)
        return found

    def _processes(self, handle: Any, missing: dict) -> list[dict] | None:
        nv = self._nvml
        procs = _call(lambda: list(nv.nvmlDeviceGetComputeRunningProcesses(handle)), "processes", missing)
        if procs is None:
            return None
        graphics = _call(lambda: list(nv.nvmlDeviceGetGraphicsRunningProcesses(handle)), "graphics", {}) or []
        seen: dict[int, dict] = {}
        for proc in procs + graphics:
            if proc.pid in seen:
                continue
            used = getattr(proc, "usedGpuMemory", None)
            # NVML reports "not available" as None or as an all-ones integer (hidden by MIG or the driver).
            used_mib = round(used / 2**20) if isinstance(used, int) and 0 <= used < 2**63 else None
            entry = {"pid": proc.pid, "memory_mib": used_mib, "user": None, "command": None}
            try:
                p = psutil.Process(proc.pid)
                with p.oneshot():
                    entry["user"] = _safe(p.username)
                    cmd = _safe(p.cmdline)
                    entry["command"] = " ".join(cmd) if cmd else _safe(p.name)
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                # A container with its own pid namespace sees the host's pid, not its own process.
                entry["hidden"] = "pid not visible here (another container or user)"
            seen[proc.pid] = entry
        return list(seen.values())

    # ---- host ----------------------------------------------------------
    def host(self, workspace: Path) -> dict:
        if not self._cpu_primed:
            # psutil measures CPU between calls; the first call needs a short window of its own.
            cpu = psutil.cpu_percent(interval=0.1)
            self._cpu_primed = True
        else:
            cpu = psutil.cpu_percent(interval=None)
        vm = psutil.virtual_memory()
        host: dict[str, Any] = {
            "hostname": socket.gethostname(),
            "cpu_model": self._cpu_name(),
            "cpu_count": psutil.cpu_count(logical=True),
            "cpu_pct": cpu,
            "load_avg": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None,
            "ram_total_mib": round(vm.total / 2**20),
            "ram_used_mib": round((vm.total - vm.available) / 2**20),
            "ram_available_mib": round(vm.available / 2**20),
            "workspace": str(workspace),
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        }
        disk_path = _existing_parent(workspace)
        try:
            du = psutil.disk_usage(str(disk_path))
            host.update(disk_path=str(disk_path), disk_total_gib=round(du.total / 2**30, 1),
                        disk_free_gib=round(du.free / 2**30, 1))
        except OSError as exc:
            host.update(disk_path=str(disk_path), disk_total_gib=None, disk_free_gib=None, disk_error=str(exc))
        return host

    def _cpu_name(self) -> str | None:
        if self._cpu_model is None:
            self._cpu_model = ""
            try:
                with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
                    for line in f:
                        if line.startswith("model name"):
                            self._cpu_model = line.split(":", 1)[1].strip()
                            break
            except OSError:
                pass
        return self._cpu_model or None

    def snapshot(self, workspace: Path) -> dict:
        gpus, reason, driver = self.gpus()
        snap: dict[str, Any] = {"time": time.time(), "gpus": gpus, "host": self.host(workspace), **driver}
        if not gpus:
            snap["reason"] = reason or f"no NVIDIA GPU found; {CPU_FALLBACK}"
        return snap


_default_probe = GpuProbe()


def snapshot(workspace: Path, probe: GpuProbe | None = None) -> dict:
    """GPUs and host as plain data: {"gpus": [...], "reason": str when empty, "host": {...}}; a GPU process
    that is a rank of one of the workspace's active runs carries its `run_id` and `rank`."""
    snap = (probe or _default_probe).snapshot(Path(workspace))
    label_run_processes(snap, Path(workspace))
    return snap


def label_run_processes(snap: dict, workspace: Path) -> None:
    """Mark each GPU process that is a rank of an active run of this workspace with `run_id` and `rank`,
    matching NVML's pids against the pids the runs' status records for the ranks on this host."""
    procs = [p for gpu in snap.get("gpus") or [] for p in gpu.get("processes") or []]
    if not procs:
        return  # nothing to label: the run directories are not read at all
    owners = run_processes(workspace)
    for proc in procs:
        if proc.get("pid") in owners:
            proc["run_id"], proc["rank"] = owners[proc["pid"]]


def run_processes(workspace: Path) -> dict[int, tuple[str, int]]:
    """pid -> (run id, rank) for the ranks on this host of the workspace's active runs. Finished runs are
    left out: their pids may belong to other processes by now."""
    from engine.runs.protocol import ACTIVE_STATES, status_ranks
    from engine.runs.workspace import list_runs

    here = socket.gethostname()
    owners: dict[int, tuple[str, int]] = {}
    for run in list_runs(workspace):
        status = run.status()
        if status.get("state") not in ACTIVE_STATES:
            continue
        for entry in status_ranks(status):
            if entry.get("host") == here and entry.get("pid"):
                owners[int(entry["pid"])] = (run.id, entry["rank"])
    return owners


def format_snapshot(snap: dict) -> str:
    """The snapshot as the plain text `tunedeck gpu` prints."""
    lines = []
    host = snap.get("host", {})
    if not snap.get("gpus"):
        lines.append(f"No usable NVIDIA GPU: {snap.get('reason', 'unknown reason')}")
    else:
        if snap.get("driver_version"):
            lines.append(f"NVIDIA driver {snap['driver_version']}, CUDA {snap.get('cuda_version') or '?'}")
        for gpu in snap["gpus"]:
            lines.extend(format_gpu(gpu))
    lines.append(
        f"Host {host.get('hostname', '?')}: {host.get('cpu_count', '?')} CPUs at {_fmt(host.get('cpu_pct'), '%')}, "
        f"RAM {_gib(host.get('ram_used_mib'))}/{_gib(host.get('ram_total_mib'))} GiB used, "
        f"disk {_fmt(host.get('disk_free_gib'), ' GiB')} free at {host.get('disk_path', '?')}"
    )
    return "\n".join(lines)


def format_gpu(gpu: dict) -> list[str]:
    lines = [
        f"GPU {gpu['index']}: {gpu.get('name') or 'unknown'}  "
        f"cc {gpu.get('compute_capability') or 'n/a'}  bf16 {_yes(gpu.get('bf16'))}"
        + ("  MIG on" if gpu.get("mig") else ""),
        f"  memory {_gib(gpu.get('memory_used_mib'))}/{_gib(gpu.get('memory_total_mib'))} GiB  "
        f"util {_fmt(gpu.get('utilization_pct'), '%')}  temp {_fmt(gpu.get('temperature_c'), 'C')}  "
        f"power {_fmt(gpu.get('power_w'), 'W', 0)}/{_fmt(gpu.get('power_limit_w'), 'W', 0)}  "
        f"SM {_fmt(gpu.get('sm_clock_mhz'), ' MHz')}",
    ]
    procs = gpu.get("processes")
    if procs is None:
        lines.append("  processes: n/a (" + gpu.get("unavailable", {}).get("processes", "unknown") + ")")
    for proc in procs or []:
        lines.append(f"  pid {proc['pid']:>7}  {_fmt(proc.get('memory_mib'), ' MiB'):>10}  "
                     f"{proc.get('user') or '?':<10} {process_label(proc)}")
    if gpu.get("unavailable"):
        lines.append("  unavailable: " + ", ".join(sorted(gpu["unavailable"])))
    return lines


def process_label(proc: dict) -> str:
    """What a GPU process is: the run and rank it belongs to, else its command line."""
    if proc.get("run_id"):
        return f"rank {proc.get('rank')} · run {proc['run_id']}"
    return proc.get("command") or proc.get("hidden") or "?"


# ---- helpers ------------------------------------------------------------------

def _init_failure_reason(exc: Exception) -> str:
    name = type(exc).__name__
    if "LibraryNotFound" in name:
        why = "no NVIDIA driver found (libnvidia-ml.so.1 is missing)"
    elif "DriverNotLoaded" in name:
        why = "the NVIDIA driver is installed but not loaded (try nvidia-smi, or reboot after a driver update)"
    elif "NoPermission" in name:
        why = "no permission to open the NVIDIA devices (check the /dev/nvidia* permissions)"
    elif "LibRmVersionMismatch" in name or "Mismatch" in name:
        why = "the NVIDIA driver and its library versions differ (reboot after a driver update)"
    else:
        why = f"NVML failed to start: {_err(exc)}"
    return f"{why}; {CPU_FALLBACK}"


def _call(fn: Callable[[], Any], name: str, missing: dict) -> Any:
    try:
        return fn()
    except Exception as exc:  # NotSupported, NoPermission, GpuIsLost, old driver without the symbol...
        missing[name] = _err(exc)
        return None


def _err(exc: Exception) -> str:
    text = str(exc).strip()
    return text or type(exc).__name__


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _safe(fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except (psutil.Error, OSError):
        return None


def _existing_parent(path: Path) -> Path:
    path = Path(path).expanduser().absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _fmt(value: Any, unit: str = "", digits: int = 0) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}{unit}"
    return f"{value}{unit}"


def _gib(mib: Any) -> str:
    return "n/a" if mib is None else f"{mib / 1024:.1f}"


def _yes(value: Any) -> str:
    return "n/a" if value is None else ("yes" if value else "no")
