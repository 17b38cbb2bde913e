"""Batch statistics shared across processes: under DDP the statistics are all-reduced (count,
sum, sum of outer products, in float64) so every rank whitens the same way.

Each rank accumulates, in float64, the number of columns ``n_r``, the column sum
``s_r = X_r 1`` and the sum of outer products ``O_r = X_r X_r^T`` of its local data
``X_r`` (d, M_r). One differentiable all-reduce turns them into the totals ``n, s, O``, from
which

    mu = s / n,        Sigma = O / n - mu mu^T        (the 1/n covariance of eq. 2)

are exactly the mean and covariance of the concatenated batch. The all-reduce is an autograd
Function whose backward is again a sum all-reduce: if every rank r computes a loss L_r from the
shared statistics, the gradient reaching X_r is that of the total loss sum_r L_r, the same
convention as :class:`torch.nn.SyncBatchNorm` (so input gradients equal those of one process on
the concatenated batch with the summed loss).

Notes
-----
* Every rank must call forward and backward of the synchronised layer the same number of
  times (the all-reduce is a collective), exactly as for SyncBatchNorm.
* The one-pass formula ``O/n - mu mu^T`` loses about ``log10(|mu|^2 / lambda_min)`` digits
  to cancellation; float64 accumulation keeps it accurate to ~1e-12 relative for features
  whose mean is within ~1e3 standard deviations of zero, which batch-normalised features are.
"""
from __future__ import annotations

import torch
import torch.distributed as dist

__all__ = ["world_size", "all_reduce_sum", "global_moments"]


def world_size(process_group=None) -> int:
    """Number of processes in ``process_group`` (1 when torch.distributed is not initialised)."""
    if not (dist.is_available() and dist.is_initialized()):
        return 1
    return dist.get_world_size(process_group)


class _AllReduceSum(torch.autograd.Function):
    """y = sum over ranks of x (on every rank); backward: dL/dx = sum over ranks of dL/dy."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor, group) -> torch.Tensor:
        ctx.group = group
        out = tensor.detach().clone(memory_format=torch.contiguous_format)
        dist.all_reduce(out, op=dist.ReduceOp.SUM, group=group)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad = grad.detach().clone(memory_format=torch.contiguous_format)
        dist.all_reduce(grad, op=dist.ReduceOp.SUM, group=ctx.group)
        return grad, None


def all_reduce_sum(tensor: torch.Tensor, process_group=None) -> torch.Tensor:
    """Differentiable sum all-reduce of ``tensor`` over ``process_group`` (out of place)."""
    return _AllReduceSum.apply(tensor, process_group)


def global_moments(blocks: list[torch.Tensor], process_group=None):
    """Mean and 1/n covariance of the concatenation over ranks of local feature blocks.

    Parameters
    ----------
    blocks : list of torch.Tensor
        Local data, each of shape (G_k, g_k, M): G_k groups of g_k channels over the M local
        columns (the same M for every block, the same shapes on every rank).
    process_group : optional
        The torch.distributed group to reduce over (default: the world).

    Returns
    -------
    count : torch.Tensor
        Scalar float64 tensor, the total number of columns n over all ranks.
    means : list of torch.Tensor
        Per block, the float64 mean of shape (G_k, g_k).
    covariances : list of torch.Tensor
        Per block, the float64 covariance O/n - mu mu^T of shape (G_k, g_k, g_k).

    All outputs are differentiable with respect to ``blocks`` through the all-reduce.
    """
    if not blocks:
        raise ValueError("blocks must hold at least one tensor, got an empty list")
    ref = blocks[0]
    local_n = torch.full((1,), float(ref.shape[-1]), dtype=torch.float64, device=ref.device)
    pieces, shapes = [local_n], []
    for x in blocks:
        x64 = x.to(torch.float64)
        s = x64.sum(dim=-1)                      # (G, g)
        o = x64 @ x64.transpose(-1, -2)          # (G, g, g)
        shapes.append((s.shape, o.shape))
        pieces += [s.reshape(-1), o.reshape(-1)]
    total = all_reduce_sum(torch.cat(pieces), process_group)

    count, offset = total[0], 1
    means, covariances = [], []
    for s_shape, o_shape in shapes:
        ns, no = s_shape.numel(), o_shape.numel()
        s = total[offset:offset + ns].reshape(s_shape)
        o = total[offset + ns:offset + ns + no].reshape(o_shape)
        offset += ns + no
        mu = s / count
        cov = o / count - mu.unsqueeze(-1) * mu.unsqueeze(-2)
        means.append(mu)
        covariances.append(0.5 * (cov + cov.transpose(-1, -2)))
    return count, means, covariances
