"""FSDP for SAEs too wide to replicate (``trainer=fsdp``): PyTorch's FSDP2 (``fully_shard``)
through Lightning's ``ModelParallelStrategy``, on GPUs (nccl) and on CPUs (gloo).

Why FSDP2 and not Lightning's ``strategy="fsdp"`` (FSDP1): FSDP1 refuses CPU devices, and it
flattens all parameters into one buffer cut at arbitrary offsets, so per-row operations on
``W_dec`` (the unit-norm constraint, docs/maths.md §0) would see fragments of rows. FSDP2 shards every
parameter on dim 0: each rank holds whole decoder ROWS (whole latents), so renormalising rows
and projecting row gradients stay local, exact operations on the shards.

Outside the SAE's forward its parameters are ``DTensor`` shards; the helpers here gather them
(``full_tensor``), and give data-dependent initialisation a plain full copy to edit, whose values
rank 0 then scatters back (``editable``).
"""

from __future__ import annotations

import copy
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.strategies import ModelParallelStrategy
from torch import Tensor, nn

from .checkpoint_files import commit, digest_of, non_finite_tensors

try:  # DTensor and FSDP2 are public from torch 2.4 (saelab's minimum); keep imports lazy-safe
    from torch.distributed.fsdp import FSDPModule, fully_shard
    from torch.distributed.tensor import DTensor, distribute_tensor
except ImportError:  # pragma: no cover - torch built without distributed support
    FSDPModule = DTensor = None  # type: ignore[assignment,misc]


class SAEShardingStrategy(ModelParallelStrategy):
    """``ModelParallelStrategy`` with every device in ONE data-parallel (sharding) group, since
    an SAE has no layers to split across a tensor-parallel group, and atomic, checksummed sharded
    checkpoints: written to ``<name>.tmp`` by all ranks, then swapped in by rank 0 (the
    current one kept as the previous)."""

    def __init__(self, save_distributed_checkpoint: bool = True, **kwargs: Any):
        super().__init__(
            data_parallel_size=1,
            tensor_parallel_size=1,
            save_distributed_checkpoint=save_distributed_checkpoint,
            **kwargs,
        )

    def setup_environment(self) -> None:
        # The world size is known only now (devices x num_nodes): shard over all of it.
        self._data_parallel_size = self.num_nodes * self.num_processes
        super().setup_environment()

    def save_checkpoint(self, checkpoint: dict[str, Any], filepath, storage_options=None) -> None:
        if not self._save_distributed_checkpoint:
            return super().save_checkpoint(checkpoint, filepath, storage_options)
        path = Path(self.broadcast(str(filepath)))
        bad = non_finite_tensors(checkpoint)  # this rank's shards; every rank must agree
        if self.reduce_boolean_decision(bool(bad), all=False):
            raise FloatingPointError(
                f"refusing to write {path}: the weights or optimiser states hold NaN/inf "
                f"({', '.join(bad[:5]) or 'on another rank'}). Training diverged; the last good "
                "checkpoint is kept (lower sae.lr, check the data)"
            )
        tmp = path.with_name(path.name + ".tmp")
        if self.global_rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
        self.barrier("saelab-ckpt-tmp")
        super().save_checkpoint(checkpoint, tmp, storage_options)
        self.barrier("saelab-ckpt-written")
        if self.global_rank == 0:
            # Hashed once complete (every rank's shard is in the folder), recorded, then
            # swapped in with the current one kept as the previous (checkpoint_files.py).
            commit(tmp, path, digest_of(tmp), checkpoint.get("global_step"))
        self.barrier("saelab-ckpt-swapped")


def is_sharded(module: nn.Module) -> bool:
    return FSDPModule is not None and isinstance(module, FSDPModule)


def shard(module: nn.Module, mesh) -> None:
    """Shard ``module``'s parameters over ``mesh`` (idempotent: Lightning calls configure_model
    again for validation after fit)."""
    if not is_sharded(module):
        fully_shard(module, mesh=mesh)


def full_tensor(t: Tensor) -> Tensor:
    """The whole tensor on every rank (a collective when ``t`` is a DTensor shard)."""
    return t.full_tensor() if DTensor is not None and isinstance(t, DTensor) else t


def plain_copy(module: nn.Module) -> nn.Module:
    """An unsharded deep copy of ``module`` on the CPU (collective when sharded)."""
    if not is_sharded(module):
        return copy.deepcopy(module).cpu()
    state = {k: full_tensor(v).detach().cpu() for k, v in module.state_dict().items()}
    with torch.device("meta"):
        plain = type(module)(module.cfg)
    plain.load_state_dict(state, assign=True)
    return plain


@contextmanager
def editable(owner: nn.Module, name: str = "sae"):
    """While inside, ``owner.<name>`` is a plain full copy to edit freely (data-dependent init);
    on exit its values replace the shards, taken from rank 0 so every rank agrees."""
    module = getattr(owner, name)
    if not is_sharded(module):
        yield module
        return
    plain = plain_copy(module)
    setattr(owner, name, plain)
    try:
        yield plain
    finally:
        setattr(owner, name, module)
    targets = dict(module.named_parameters()) | dict(module.named_buffers())
    for key, value in plain.state_dict().items():
        assign(targets[key], value)


@torch.no_grad()
def assign(target: Tensor, value: Tensor) -> None:
    """target := value, a full tensor; for a sharded target (DTensor) each rank keeps its shard of
    rank 0's value, so every rank agrees."""
    if isinstance(target, DTensor):
        value = distribute_tensor(
            value.to(target.device, target.dtype),
            target.device_mesh,
            target.placements,
            src_data_rank=0,
        )
        target.to_local().copy_(value.to_local())
    else:
        target.copy_(value.to(target.device, target.dtype))
