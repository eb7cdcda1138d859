"""Each rank's own device: its memory and utilisation, gathered to rank 0 for status.json's `ranks`.

Every rank measures itself (only it can read its CUDA allocator, or its own RSS on the CPU) and rank 0,
the one writer, records the list. The gather is a collective: the callback calls it at points every rank
reaches alike (train begin, each training log), never from rank 0 alone.
"""

from __future__ import annotations

import os
import resource
import socket
import sys

import psutil
import torch
import torch.distributed as dist

from engine.training.distributed import is_distributed, local_device, rank


def measure() -> dict:
    """This rank, in bytes: allocated memory now (`memory_used`), what its allocator holds (`memory_reserved`)
    and the peak allocated; on the CPU the process's resident memory and its peak. `utilization`: the GPU's
    percent busy as NVML reports it, None without NVML or on the CPU."""
    device = local_device()
    entry = {"rank": rank(), "local_rank": int(os.environ.get("LOCAL_RANK", "0")), "host": socket.gethostname(),
             "pid": os.getpid(), "device": str(device)}
    if device.type == "cuda":
        entry.update(memory_used=torch.cuda.memory_allocated(device),
                     memory_reserved=torch.cuda.memory_reserved(device),
                     memory_peak=torch.cuda.max_memory_allocated(device),
                     utilization=_utilization(device))
    else:
        # ru_maxrss is KiB on Linux, bytes on macOS
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)
        used = psutil.Process().memory_info().rss
        entry.update(memory_used=used, memory_reserved=None, memory_peak=max(peak, used), utilization=None)
    return entry


def _utilization(device: torch.device) -> int | None:
    try:
        return int(torch.cuda.utilization(device))  # maps CUDA_VISIBLE_DEVICES to NVML's index itself
    except Exception:  # no nvidia-ml-py, NVML not supported on this board or container
        return None


def gather_ranks() -> list[dict]:
    """Every rank's measure(), in rank order, on every rank (a one-process run: its own)."""
    try:
        mine = measure()
    except Exception as exc:  # a rank that cannot measure must still join the gather, or the others wait
        mine = {"rank": rank(), "pid": os.getpid(), "host": socket.gethostname(), "error": str(exc)[:200]}
    if not is_distributed():
        return [mine]
    everyone: list = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, mine)
    return sorted(everyone, key=lambda entry: entry["rank"])
