"""Multi-process training with torchrun (DDP): process-group setup, the sampler shard of each rank, and the
few collective operations the trainer needs. With one process every helper is a no-op, so the trainer has
a single code path.

Meaning of the config does not change with the world size: `data.batch_size` is the global batch (each of
W ranks takes batch_size / W of it), the data order and crops are those of a single process, and the
learning-rate schedule is stepped per epoch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Iterator

import torch
import torch.distributed as dist
from torch.utils.data import Sampler


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def env_from_torchrun() -> DistEnv:
    """The rank layout torchrun exports (RANK, LOCAL_RANK, WORLD_SIZE), or a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistEnv()
    return DistEnv(int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", os.environ["RANK"])), world)


def init_process_group(env: DistEnv, device: torch.device, timeout_minutes: float = 30.0) -> None:
    if not env.enabled or dist.is_initialized():
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend, timeout=timedelta(minutes=timeout_minutes), device_id=device
                            if device.type == "cuda" else None)


def shutdown(env: DistEnv) -> None:
    if env.enabled and dist.is_initialized():
        dist.destroy_process_group()


def barrier(env: DistEnv) -> None:
    if env.enabled:
        dist.barrier()


def all_gather_objects(obj: Any, env: DistEnv) -> list[Any]:
    if not env.enabled:
        return [obj]
    gathered: list[Any] = [None] * env.world_size
    dist.all_gather_object(gathered, obj)
    return gathered


def broadcast_object(obj: Any, env: DistEnv, src: int = 0) -> Any:
    if not env.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def broadcast_buffers(module: torch.nn.Module, env: DistEnv) -> None:
    """Rank 0's buffers (BatchNorm running statistics) everywhere: DDP averages gradients, not these."""
    if env.enabled:
        for buffer in module.buffers():
            dist.broadcast(buffer, src=0)


def any_rank(flag: bool, env: DistEnv, device: torch.device) -> bool:
    """True when the flag is set on any rank (e.g. a stop signal that reached only some ranks)."""
    if not env.enabled:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def mean_over_ranks(values: list[float], env: DistEnv, device: torch.device) -> list[float]:
    if not env.enabled:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return (t / env.world_size).tolist()


class ShardedSampler(Sampler):
    """Rank r's part of a single-process order: of every global batch of `global_batch` items (in the
    order of `base`), the r-th slice of `global_batch / world_size`. Together the ranks see exactly the
    batches one process would, at every step; `set_epoch(epoch, start)` takes the global position."""

    def __init__(self, base, global_batch: int, env: DistEnv):
        if global_batch % env.world_size:
            raise ValueError(f"data.batch_size={global_batch} (the global batch) must be divisible by the number "
                             f"of processes, {env.world_size}")
        self.base = base
        self.global_batch = global_batch
        self.per_rank = global_batch // env.world_size
        self.env = env

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        if start % self.global_batch:
            raise ValueError(f"resume position {start} is not a multiple of the global batch {self.global_batch}")
        self.base.set_epoch(epoch, start)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        usable = (self.base.num_items // self.global_batch) * self.global_batch  # whole global batches only
        lo = self.env.rank * self.per_rank
        for position, item in enumerate(self.base, start=self.base.start):
            if position >= usable:
                break
            if lo <= position % self.global_batch < lo + self.per_rank:
                yield item

    def __len__(self) -> int:
        usable = (self.base.num_items // self.global_batch) * self.global_batch
        return max(0, usable - self.base.start) // self.env.world_size
