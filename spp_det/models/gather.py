"""Gathers whose gradient is the same on every run.

On the CPU the backward of ``torch.take`` and of ``x[index]`` accumulates with
``index_put_(accumulate=True)``, whose threads add repeated positions in whatever order
they finish: two runs from one seed drifted apart from the first step (1e-5 in fc6
after 20 iterations, enough to flip hard negatives and move an SVM by 0.3). Max pooling
sends many windows' gradients to one map element, so SPP's backward is exactly that case.
``index_add_`` sums each position in index order, so these versions backpropagate
bit-identically run after run (on a GPU index_add_ uses atomics: no change there).
"""
from __future__ import annotations

import torch


class _Take(torch.autograd.Function):
    @staticmethod
    def forward(ctx, source: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(index)
        ctx.shape = source.shape
        return torch.take(source, index)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (index,) = ctx.saved_tensors
        flat = grad.new_zeros(ctx.shape.numel()).index_add_(0, index.reshape(-1), grad.reshape(-1))
        return flat.view(ctx.shape), None


class _Rows(torch.autograd.Function):
    @staticmethod
    def forward(ctx, source: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(index)
        ctx.shape = source.shape
        return source[index]

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (index,) = ctx.saved_tensors
        return grad.new_zeros(ctx.shape).index_add_(0, index, grad), None


def take(source: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``torch.take(source, index)`` (flat row-major positions, int64); deterministic backward."""
    if not (source.requires_grad and torch.is_grad_enabled()):
        return torch.take(source, index)
    return _Take.apply(source, index)


def rows(source: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``source[index]`` for a 1-D int64 ``index`` into dim 0; deterministic backward."""
    if not (source.requires_grad and torch.is_grad_enabled()):
        return source[index]
    return _Rows.apply(source, index)
