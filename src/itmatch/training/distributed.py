"""torch.distributed helpers: process group set-up from torchrun's environment, sharding of the
global batch, and gathering embeddings across ranks with gradients flowing back to their owner.

A run launched with ``torchrun --nproc_per_node N -m itmatch train ...`` computes the same loss
and gradients as one process with the same global batch: every rank embeds its shard, the shards
are gathered (:func:`gather_with_grad`), every rank computes the loss over the whole global batch,
and DDP averages the gradients. The gathered tensor's backward sums the gradients all ranks
computed for each shard and hands them to its owner, so the average over ranks equals the
single-process gradient (the open_clip ``gather_with_grad`` idea).
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_distributed(device: torch.device, timeout_s: float = 1800.0) -> tuple[DistInfo, torch.device]:
    """Join the process group torchrun describes in the environment (gloo on CPU, nccl on CUDA).

    Returns the rank information and the device this rank uses (``cuda:LOCAL_RANK`` on GPUs).
    Without torchrun's environment (or with one process) nothing is initialised.
    """
    if not launched_by_torchrun():
        return DistInfo(), device
    info = DistInfo(
        rank=int(os.environ["RANK"]),
        world_size=int(os.environ["WORLD_SIZE"]),
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
    )
    if device.type == "cuda":
        # More ranks than GPUs share them round-robin (NCCL may still refuse two ranks on one GPU).
        device = torch.device("cuda", info.local_rank % max(1, torch.cuda.device_count()))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=timeout_s))
    return info, device


def shutdown_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def shard_bounds(n: int, rank: int, world_size: int) -> tuple[int, int]:
    """Contiguous shard ``[start, stop)`` of ``n`` items for ``rank``; sizes differ by at most one."""
    base, extra = divmod(n, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


class _GatherWithGrad(torch.autograd.Function):
    """All-gather of variable-size shards (padded to the largest); backward all-reduces the full
    gradient (SUM) and returns the owner's slice, which works on every backend (gloo has no
    reduce-scatter)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, sizes: tuple[int, ...], rank: int) -> torch.Tensor:  # type: ignore[override]
        ctx.sizes, ctx.rank = sizes, rank
        biggest = max(sizes)
        padded = x.new_zeros((biggest, *x.shape[1:]))
        padded[: x.shape[0]] = x
        parts = [torch.empty_like(padded) for _ in sizes]
        dist.all_gather(parts, padded.contiguous())
        return torch.cat([p[:s] for p, s in zip(parts, sizes)])

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        start = sum(ctx.sizes[: ctx.rank])
        return grad[start : start + ctx.sizes[ctx.rank]], None, None


def shard_sizes(n: int, info: DistInfo, device: torch.device) -> tuple[int, ...]:
    """Every rank's row count ``n``, in rank order: one all-gather and one host sync. A step
    calls it at most once per batch (see :func:`itmatch.training.step.train_step`), or not at all
    when the data pipeline already knows the sizes (``batch["shard_sizes"]``)."""
    if not info.enabled:
        return (n,)
    local = torch.tensor([n], dtype=torch.long, device=device)
    sizes = [torch.zeros_like(local) for _ in range(info.world_size)]
    dist.all_gather(sizes, local)
    return tuple(int(s) for s in torch.cat(sizes).tolist())


def gather_with_grad(x: torch.Tensor, info: DistInfo, sizes: tuple[int, ...] | None = None) -> torch.Tensor:
    """Rows of every rank, in rank order; gradients flow back to each rank's own rows.

    ``sizes``: every rank's row count, when known (else exchanged here, which costs a host sync)."""
    if not info.enabled:
        return x
    if sizes is None:
        sizes = shard_sizes(x.shape[0], info, x.device)
    return _GatherWithGrad.apply(x, tuple(sizes), info.rank)


def gather_no_grad(x: torch.Tensor, info: DistInfo, sizes: tuple[int, ...] | None = None) -> torch.Tensor:
    if not info.enabled:
        return x
    if sizes is None:
        sizes = shard_sizes(x.shape[0], info, x.device)
    with torch.no_grad():
        return _GatherWithGrad.apply(x.detach(), tuple(sizes), info.rank)


def global_shard_sizes(global_batch: int, world_size: int) -> tuple[int, ...]:
    """The shard sizes of every rank for a global batch of ``global_batch`` rows (see :func:`shard_bounds`)."""
    return tuple(hi - lo for lo, hi in (shard_bounds(global_batch, r, world_size) for r in range(world_size)))


def gather_objects(obj: Any, info: DistInfo) -> list[Any]:
    """``obj`` of every rank, in rank order (every rank must call it; one process: ``[obj]``)."""
    if not info.enabled:
        return [obj]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out
