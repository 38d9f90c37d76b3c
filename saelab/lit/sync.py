"""The one channel through which training state stays identical across data-parallel ranks:
objectives (saelab/sae/objective.py) and the trainer's dead-latent counts ask it for means and
gathers. Backed by torch.distributed's default group, which is the group Lightning's DDP and
FSDP strategies train in; sharded (FSDP2) parameters are written through ``sharding.assign``."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

from saelab.sae.objective import Sync

from . import sharding


class DistributedSync(Sync):
    def __init__(self) -> None:
        self.world_size = dist.get_world_size()

    def mean(self, t: Tensor) -> Tensor:
        t = t.clone()
        dist.all_reduce(t)
        return t / self.world_size

    def all_gather(self, t: Tensor) -> Tensor:
        parts = [torch.empty_like(t) for _ in range(self.world_size)]
        dist.all_gather(parts, t.contiguous())
        return torch.stack(parts)

    def any(self, t: Tensor) -> Tensor:
        """Element-wise OR of a boolean tensor over ranks."""
        t = t.to(torch.uint8)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return t.bool()

    def assign(self, target: Tensor, value: Tensor) -> None:
        sharding.assign(target, value)


class LocalSync(Sync):
    """One process; ``assign`` still handles a sharded parameter."""

    def assign(self, target: Tensor, value: Tensor) -> None:
        sharding.assign(target, value)


def sync_for_run() -> Sync:
    """The collectives for this process: distributed when a process group is up."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return DistributedSync()
    return LocalSync()
