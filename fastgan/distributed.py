"""Contrastive losses over the global batch of a torch.distributed process group.

Each rank computes ITS OWN rows against the GATHERED columns with the fused kernels (the self
column of local row i is global column offset + i), so no rank ever holds N_global x N_global.

Gradient semantics (`gradient=`), with L the global-batch loss and W the world size:
- "studiogan": what StudioGAN's GatherLayer gives. There every rank computes L on the gathered batch
  and keeps the gradient of its own slice: dL/d(local inputs). Here the row split gives the same:
  the local rows' loss is differentiated locally, the gathered columns' gradients are summed over
  ranks (all_reduce) and each rank keeps its slice. After DDP averages parameter gradients, the
  contrastive term's gradient is dL/dtheta / W.
- "exact": W times that on every rank, so that after DDP's averaging the parameter gradient is
  exactly dL/dtheta (as torch.distributed.nn.functional.all_gather, whose backward sums the gathered
  gradient across ranks, gives when every rank computes L).
The returned value is L on every rank (the local rows' sum plus the other ranks' sums, all-reduced).
Per-rank batch sizes may differ: sizes are gathered first and the rows padded for all_gather.
"""
from typing import Optional, Tuple

import torch
import torch.distributed as dist

GRADIENTS = ("exact", "studiogan")


def _sizes(n: int, device: torch.device, group) -> list:
    sizes = [torch.zeros(1, dtype=torch.int64, device=device) for _ in range(dist.get_world_size(group))]
    dist.all_gather(sizes, torch.tensor([n], dtype=torch.int64, device=device), group=group)
    return [int(s.item()) for s in sizes]


class _GatherRows(torch.autograd.Function):
    """all_gather along dim 0 with unequal sizes; backward: all_reduce(sum) and the local slice."""

    @staticmethod
    def forward(ctx, x, group, sizes):
        rank = dist.get_rank(group)
        top = max(sizes)
        padded = x.new_zeros((top,) + tuple(x.shape[1:]))
        padded[: x.shape[0]] = x
        parts = [torch.empty_like(padded) for _ in sizes]
        dist.all_gather(parts, padded.contiguous(), group=group)
        ctx.group, ctx.sizes, ctx.rank = group, sizes, rank
        return torch.cat([p[:s] for p, s in zip(parts, sizes)], dim=0)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM, group=ctx.group)
        start = sum(ctx.sizes[: ctx.rank])
        return grad[start: start + ctx.sizes[ctx.rank]], None, None


class Gathered:
    """Layout of a gathered batch: global size, this rank's offset, the world size."""

    def __init__(self, sizes, rank):
        self.sizes, self.rank = sizes, rank
        self.total = sum(sizes)
        self.offset = sum(sizes[:rank])
        self.world = len(sizes)


def check_group(process_group, gradient: str):
    if gradient not in GRADIENTS:
        raise ValueError(f"gradient must be one of {GRADIENTS}, got {gradient!r}")
    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError("process_group was given but torch.distributed is not initialized")
    return None if process_group is True else process_group


def gather(x: torch.Tensor, group, layout: Optional[Gathered] = None) -> Tuple[torch.Tensor, Gathered]:
    """Gather the rows of `x` from every rank (differentiable); returns (gathered, layout)."""
    if layout is None:
        layout = Gathered(_sizes(x.shape[0], x.device, group), dist.get_rank(group))
    if x.requires_grad:
        return _GatherRows.apply(x, group, layout.sizes), layout
    return _GatherRows.forward(_Ctx(), x, group, layout.sizes), layout


class _Ctx:  # forward without autograd (labels, constants)
    pass


def global_mean(local_sum: torch.Tensor, denominator, group, gradient: str, world: int) -> torch.Tensor:
    """The global-batch value on every rank, with this rank's gradient in the requested semantics."""
    total = local_sum.detach().clone()
    dist.all_reduce(total, op=dist.ReduceOp.SUM, group=group)
    weight = world if gradient == "exact" else 1
    local = local_sum * weight
    return (local + (total - local.detach())) / denominator
