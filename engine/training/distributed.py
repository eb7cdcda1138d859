"""Several processes under torchrun: rank, world size, device, a process group that opens no port, agreement."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def init_distributed() -> None:
    """Under tunedeck's torchrun the ranks join through a file store in the run directory (engine.runs.launch
    sets TUNEDECK_DDP_STORE), so no rank hosts a TCP store, whose server listens on every interface.
    Without it (torchrun started by hand) accelerate joins through MASTER_ADDR/MASTER_PORT as usual."""
    path = os.environ.get("TUNEDECK_DDP_STORE")
    if world_size() <= 1 or not path or not dist.is_available() or dist.is_initialized():
        return
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    from datetime import timedelta

    dist.init_process_group("nccl" if cuda else "gloo", store=dist.FileStore(path, world_size()),
                            rank=rank(), world_size=world_size(),
                            timeout=timedelta(seconds=1800))  # TrainingArguments' ddp_timeout default


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def local_device() -> torch.device:
    """This rank's device: its GPU under torchrun (LOCAL_RANK), else the one GPU, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def agree(flags: list[bool], device: torch.device) -> list[bool]:
    """Each flag set on any rank, for every rank: they all act on a command or signal that one of them saw."""
    if not is_distributed():
        return flags
    tensor = torch.tensor([float(v) for v in flags], device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return [bool(v) for v in tensor.tolist()]


def barrier() -> None:
    """Every rank waits here for the others: none exits while rank 0 saves, and rank 0 commits a checkpoint only
    once every rank has written its part of it."""
    if is_distributed():
        dist.barrier()


def shut_down() -> None:
    if is_distributed():
        dist.destroy_process_group()
