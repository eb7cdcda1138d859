"""Several processes under torchrun: rank, world size, and a process group that opens no port."""

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
