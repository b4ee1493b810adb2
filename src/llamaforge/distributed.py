"""One process or many: torchrun initialisation, FSDP2 sharding and the few collectives the
training core needs.

The same command runs alone or under `torchrun --nproc_per_node N` (multi-node too): torchrun
sets RANK / WORLD_SIZE / LOCAL_RANK, `init_distributed` joins the process group (NCCL on
GPUs, gloo on CPUs), and `shard_model` applies FSDP2's `fully_shard` to every transformer
block and then to the root, so parameters, gradients and optimizer state are all sharded.
Every helper here is a no-op (or the identity) in a single process.
"""

from __future__ import annotations

import gc
import os
import sys
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(device_type: str | None = None) -> DistInfo:
    """Join the torchrun process group (once); a single process gets DistInfo() and no group."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistInfo()
    if not dist.is_initialized():
        device_type = device_type or ("cuda" if torch.cuda.is_available() else "cpu")
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if device_type == "cuda":
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
    return info()


def info() -> DistInfo:
    if not (dist.is_available() and dist.is_initialized()):
        return DistInfo()
    return DistInfo(dist.get_rank(), int(os.environ.get("LOCAL_RANK", "0")), dist.get_world_size())


def destroy(*, wait: bool = True) -> None:
    """Leave the process group. wait (after a run that finished on every rank): first wait for
    all ranks, since a rank that tore gloo's group down while another still finished its run
    aborted ("terminate called without an active exception"), once in a CI run of the two-rank
    pretraining test. Not after an error: the other ranks may never arrive.

    Call it with no reference left to the sharded model and optimizer: their device mesh and
    pending work hold gloo's group, which is then freed only at interpreter exit, where freeing
    it can abort the same way (pytorch/pytorch#179291; a second time in our CI, 2026-12-07,
    with the barrier in place). Garbage is collected first for the same reason."""
    if dist.is_available() and dist.is_initialized():
        gc.collect()
        if wait:
            dist.barrier()
        dist.destroy_process_group()


def print0(*args: Any, **kwargs: Any) -> None:
    """print on rank 0 only (to stderr unless `file=` says otherwise)."""
    if info().is_main:
        kwargs.setdefault("file", sys.stderr)
        print(*args, **kwargs, flush=True)


# --------------------------------------------------------------------------- collectives


def barrier() -> None:
    if info().is_distributed:
        dist.barrier()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum over ranks, in place (identity in one process)."""
    if info().is_distributed:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def any_rank(flag: bool, device: torch.device | str = "cpu") -> bool:
    """True on every rank when `flag` is true on any rank (so all ranks take the same branch)."""
    if not info().is_distributed:
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def broadcast_object(obj: Any) -> Any:
    """Rank 0's `obj` on every rank."""
    if not info().is_distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's `obj`, in rank order, on every rank (small objects only: RNG and data state)."""
    if not info().is_distributed:
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


# --------------------------------------------------------------------------- FSDP2


def shard_model(model: nn.Module, *, param_dtype: torch.dtype | None = None) -> nn.Module:
    """FSDP2: `fully_shard` each transformer block, then the root (embedding, norm, output).

    Gradients are reduce-scattered as sums (divide factor 1): the training core divides by
    the global number of loss tokens itself, so the result equals one process's gradient
    on the whole global batch. `param_dtype` (bf16 on GPUs) all-gathers parameters in that
    dtype while gradients are reduced, and the sharded master weights kept, in fp32.
    """
    from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard

    from .model import TransformerBlock

    policy = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32 if param_dtype else None)
    for module in model.modules():
        if isinstance(module, TransformerBlock):
            fully_shard(module, mp_policy=policy)
    # The root's parameters are needed again right at the start of backward: keep them.
    fully_shard(model, mp_policy=policy, reshard_after_forward=False)
    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.set_gradient_divide_factor(1.0)
            module.set_force_sum_reduction_for_comms(True)  # plain SUM: gloo has no pre-multiplied sum
    return model


def is_sharded(tensor: torch.Tensor) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(tensor, DTensor)


def full_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """The whole tensor of a (possibly sharded) tensor; a collective when sharded, so every
    rank must call it for the same tensors in the same order."""
    return tensor.full_tensor() if is_sharded(tensor) else tensor


@torch.no_grad()
def copy_full_into(target: torch.Tensor, full: torch.Tensor) -> None:
    """Fill `target` (a plain tensor or this rank's shard of a DTensor) from the whole tensor
    `full`, which every rank holds (e.g. memory-mapped from a checkpoint): each rank cuts
    its own shard out, so nothing is sent between ranks."""
    if tuple(full.shape) != tuple(target.shape):
        raise ValueError(f"shape mismatch: checkpoint tensor {list(full.shape)}, model tensor {list(target.shape)}")
    if is_sharded(target):
        from torch.distributed.tensor import distribute_tensor

        local = target.to_local()
        piece = distribute_tensor(
            full.to(device=local.device, dtype=local.dtype), target.device_mesh, target.placements, src_data_rank=None
        ).to_local()
        local.copy_(piece)
    else:
        target.copy_(full.to(device=target.device, dtype=target.dtype))


def shard_like(full: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """`full` distributed the way `like` is (a new tensor); `full` itself when `like` is plain."""
    if not is_sharded(like):
        return full.to(like.device)
    from torch.distributed.tensor import distribute_tensor

    local = like.to_local()
    return distribute_tensor(full.to(local.device), like.device_mesh, like.placements, src_data_rank=None)
