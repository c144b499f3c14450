"""DDP runtime: the same training code under plain ``python`` and ``torchrun``.

SageMaker's ``torch_distributed`` launcher and ``torchrun`` both set RANK, WORLD_SIZE and
LOCAL_RANK; without them this is a single process and every collective is a no-op.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Runtime:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def start(device_preference: str = "auto") -> Runtime:
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and device_preference in ("auto", "cuda")
    if use_cuda:
        device = torch.device("cuda", local_rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return Runtime(rank=rank, world_size=world_size, local_rank=local_rank, device=device)


def stop() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier(runtime: Runtime) -> None:
    if runtime.distributed:
        dist.barrier()


def sum_across(runtime: Runtime, *values: torch.Tensor | float) -> list[float]:
    """Sum scalars over all processes (one collective for all of them)."""
    packed = torch.tensor([float(v) for v in values], dtype=torch.float64)
    if runtime.distributed:
        if runtime.device.type == "cuda":
            packed = packed.to(runtime.device)
        dist.all_reduce(packed, op=dist.ReduceOp.SUM)
    return packed.cpu().tolist()


def shard(items: list, runtime: Runtime) -> list:
    """This process's disjoint share, for evaluation without the padding a sampler adds."""
    return items[runtime.rank :: runtime.world_size]


def gather(runtime: Runtime, value) -> list:
    """Every process's ``value`` (any picklable object), in rank order, on every process."""
    if not runtime.distributed:
        return [value]
    gathered: list = [None] * runtime.world_size
    dist.all_gather_object(gathered, value)
    return gathered
