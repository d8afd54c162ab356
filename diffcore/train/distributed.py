"""Process-group helpers for torchrun / DistributedDataParallel (no launcher of our own).

torchrun sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` (and ``MASTER_ADDR``/``MASTER_PORT``) in every process; a plain
``python`` run has none of them and is world size 1. The backend is NCCL on CUDA and gloo on CPU.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

__all__ = ["DistInfo", "dist_env", "init_distributed", "is_main_process", "barrier", "all_gather_object", "rank"]


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"environment variable {name}={raw!r} is not an integer") from None


def dist_env() -> DistInfo:
    """Rank, world size and local rank from the environment torchrun sets (1 process when absent)."""
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), _env_int("LOCAL_RANK", 0))
    return DistInfo(_env_int("RANK", 0), _env_int("WORLD_SIZE", 1), _env_int("LOCAL_RANK", 0))


def init_distributed(device_type: str) -> tuple[DistInfo, bool]:
    """Join the process group torchrun prepared (NCCL for ``cuda``, gloo otherwise) if the world size is above 1.

    Returns ``(info, created)``; ``created`` says whether this call initialised the group (and so should destroy
    it). On CUDA the process's device is set to ``cuda:LOCAL_RANK``.
    """
    info = dist_env()
    if device_type == "cuda":
        torch.cuda.set_device(info.local_rank)
    if info.world_size == 1 or dist.is_initialized():
        return info, False
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but torch.distributed is not available in this build of PyTorch")
    backend = "nccl" if device_type == "cuda" else "gloo"
    kwargs: dict[str, Any] = {}
    if device_type == "cuda":
        kwargs["device_id"] = torch.device("cuda", info.local_rank)
    dist.init_process_group(backend=backend, **kwargs)
    return DistInfo(dist.get_rank(), dist.get_world_size(), info.local_rank), True


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else dist_env().rank


def is_main_process() -> bool:
    """True on rank 0 (and in a single-process run): the process that writes files and logs."""
    return rank() == 0


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def all_gather_object(obj: Any) -> list[Any]:
    """``obj`` of every rank, in rank order (``[obj]`` without a process group)."""
    if not (dist.is_available() and dist.is_initialized()):
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out
