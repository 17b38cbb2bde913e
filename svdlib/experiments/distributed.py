"""Process-group setup for ``torchrun --nproc_per_node=K`` (DistributedDataParallel).

``torchrun`` exports ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and
``MASTER_PORT``; when ``WORLD_SIZE > 1`` the training entry point joins the group with NCCL on
CUDA or gloo on CPU (the CPU path is what the tests run). Without those variables everything
here degrades to a single process, so the same code serves notebooks, the CLI and torchrun.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any

import torch
import torch.distributed as dist

__all__ = ["DistInfo", "setup", "cleanup", "all_reduce_sum", "all_gather_object", "barrier",
           "broadcast_object"]


@dataclasses.dataclass
class DistInfo:
    """Where this process sits: ``rank`` of ``world_size`` (``local_rank`` on its node);
    ``owns_group`` is True when :func:`setup` created the process group (and must destroy it)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _select_device(preference: str, local_rank: int) -> torch.device:
    if preference == "cpu":
        return torch.device("cpu")
    if preference == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("device='cuda' was requested but CUDA is not available; "
                               "use device='auto' or 'cpu'")
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    if torch.cuda.is_available():
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    return torch.device("cpu")


def setup(device_preference: str = "auto") -> tuple[DistInfo, torch.device]:
    """Join (or reuse) the process group described by the torchrun environment.

    Returns the :class:`DistInfo` and the device this rank trains on (``cuda:LOCAL_RANK`` or
    CPU). Backend: NCCL on CUDA, gloo on CPU.
    """
    if dist.is_available() and dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
        local = int(os.environ.get("LOCAL_RANK", rank))
        info = DistInfo(rank, world, local, owns_group=False)
        return info, _select_device(device_preference, local)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo(), _select_device(device_preference, 0)
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but torch.distributed is not available in this build")
    rank = int(os.environ["RANK"])
    local = int(os.environ.get("LOCAL_RANK", rank))
    device = _select_device(device_preference, local)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo",
                            rank=rank, world_size=world)
    return DistInfo(rank, world, local, owns_group=True), device


def cleanup(info: DistInfo) -> None:
    """Destroy the process group if :func:`setup` created it."""
    if info.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Sum ``t`` over ranks in place (no-op for a single process); returns ``t``.

    NCCL only reduces CUDA tensors: a CPU tensor (the loop's small counters) makes a round trip
    through the current CUDA device.
    """
    if not info.distributed:
        return t
    if t.device.type == "cpu" and dist.get_backend() == "nccl":
        on_gpu = t.to(torch.device("cuda", torch.cuda.current_device()))
        dist.all_reduce(on_gpu, op=dist.ReduceOp.SUM)
        t.copy_(on_gpu.cpu())
    else:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_gather_object(obj: Any, info: DistInfo) -> list:
    """``[obj of rank 0, obj of rank 1, ...]`` (``[obj]`` for a single process)."""
    if not info.distributed:
        return [obj]
    out = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, info: DistInfo, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank."""
    if not info.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def barrier(info: DistInfo) -> None:
    if info.distributed:
        dist.barrier()
