"""A compiled CPU kernel for the whole pyramid: every bin of every window, written
straight into the output vector; and the gathers pooling backpropagates through
(``take``, ``take_rows``: bit-identical gradients run after run, see below).

Why a kernel of our own: pooling is a short loop per bin over a few cells with the
channels innermost, which no torch op expresses without materialising per-bin copies or
range-max tables, and the pyramid's layout ((C, n, n) per level) is a transpose of the
channels-last order the maxima are computed in; in torch the copies and transposes cost
5x the maxima themselves. Numba compiles this loop at first use from a wheel (no
compiler needed to install the project); without numba, for maps on a GPU, or for
dtypes numpy lacks, ``SpatialPyramidPooling`` takes its pure-torch path, and the tests
hold both to the same crop-wise reference.

Per window: the finest level N is maxed from the map (bin i of n over a window w cells
wide spans cells [floor(i * w / n), ceil((i + 1) * w / n)) of it, the released kernel's
bins); a level n dividing N is the max over m x m groups of finest bins (m = N / n, see
``SpatialPyramidPooling`` for why that is exact); any other level is maxed from the map
too. On equal maxima the position first in (row, column) order wins, as in
``adaptive_max_pool2d`` of the window's crop, for derived levels too (the smallest
position among the tied finest bins' argmaxes), so gradients equal the crop-wise ones.
"""
from __future__ import annotations

import os

import numpy as np
import torch

try:  # an optional speed-up: everything works without it
    import numba
except ImportError:  # pragma: no cover - exercised where numba is missing
    numba = None

AVAILABLE = numba is not None and os.environ.get("SPP_DET_NO_NUMBA", "") in ("", "0")
DTYPES = (torch.float32, torch.float64)

if numba is not None:
    @numba.njit(cache=True, boundscheck=False, inline="always")
    def _from_map(fmap, b, x1, y1, x2, y2, n, val, pos, track):  # pragma: no cover - compiled
        # val, pos: (n, n, C) maxima of level n and their flat positions in (B, C, H, W)
        _, h_map, w_map, c = fmap.shape
        h, w = y2 - y1 + 1, x2 - x1 + 1
        plane = h_map * w_map
        for i in range(n):
            ys, ye = y1 + (i * h) // n, y1 + ((i + 1) * h + n - 1) // n
            for j in range(n):
                xs, xe = x1 + (j * w) // n, x1 + ((j + 1) * w + n - 1) // n
                best = val[i, j]
                best[:] = fmap[b, ys, xs]
                if track:
                    at = pos[i, j]
                    first = b * c * plane + ys * w_map + xs
                    for ch in range(c):
                        at[ch] = first + ch * plane
                for y in range(ys, ye):
                    for x in range(xs, xe):
                        cell = fmap[b, y, x]
                        if track:
                            flat = b * c * plane + y * w_map + x
                            for ch in range(c):
                                if cell[ch] > best[ch]:
                                    best[ch] = cell[ch]
                                    at[ch] = flat + ch * plane
                        else:
                            for ch in range(c):
                                best[ch] = max(best[ch], cell[ch])

    @numba.njit(parallel=True, cache=True, boundscheck=False)
    def _pyramid(fmap, windows, levels, finest, out, where, track):  # pragma: no cover - compiled
        # fmap: (B, H, W, C) float; windows: (K, 5) int64 [b, x1, y1, x2, y2] inclusive
        # cells; out: (K, C * sum(n * n)), each level (C, n, n) row-major; where: the same
        # shape, int64 flat positions of the maxima in the (B, C, H, W) map (when track)
        c = fmap.shape[3]
        for k in numba.prange(windows.shape[0]):
            b, x1, y1, x2, y2 = windows[k, 0], windows[k, 1], windows[k, 2], windows[k, 3], windows[k, 4]
            fval = np.empty((finest, finest, c), fmap.dtype)
            fpos = np.empty((finest, finest, c) if track else (1, 1, 1), np.int64)
            _from_map(fmap, b, x1, y1, x2, y2, finest, fval, fpos, track)
            offset = 0
            for n in levels:
                if n == finest:
                    val, pos = fval, fpos
                elif finest % n == 0:
                    m = finest // n
                    val = np.empty((n, n, c), fmap.dtype)
                    pos = np.empty((n, n, c) if track else (1, 1, 1), np.int64)
                    for i in range(n):
                        for j in range(n):
                            best = val[i, j]
                            best[:] = fval[i * m, j * m]
                            if track:
                                at = pos[i, j]
                                at[:] = fpos[i * m, j * m]
                            for a in range(i * m, i * m + m):
                                for bb in range(j * m, j * m + m):
                                    cand = fval[a, bb]
                                    if track:
                                        cpos = fpos[a, bb]
                                        for ch in range(c):
                                            if cand[ch] > best[ch] or (cand[ch] == best[ch] and cpos[ch] < at[ch]):
                                                best[ch] = cand[ch]
                                                at[ch] = cpos[ch]
                                    else:
                                        for ch in range(c):
                                            best[ch] = max(best[ch], cand[ch])
                else:
                    val = np.empty((n, n, c), fmap.dtype)
                    pos = np.empty((n, n, c) if track else (1, 1, 1), np.int64)
                    _from_map(fmap, b, x1, y1, x2, y2, n, val, pos, track)
                nn = n * n
                for i in range(n):
                    for j in range(n):
                        col = offset + i * n + j
                        for ch in range(c):
                            out[k, col + ch * nn] = val[i, j, ch]
                        if track:
                            for ch in range(c):
                                where[k, col + ch * nn] = pos[i, j, ch]
                offset += c * nn


def pool_pyramid(features: torch.Tensor, windows: torch.Tensor, levels: tuple[int, ...],
                 with_index: bool = False, out: torch.Tensor | None = None) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """(K, C * sum(n * n)) pyramid vectors, each level (C, n, n) row-major, for windows
    (K, 5) int64 [batch, x1', y1', x2', y2'] inclusive cells of features (B, C, H, W)
    float32/float64 on the CPU; with ``with_index`` also the flat position of every value
    in ``features`` (same shape, int64), for ``torch.take``. Values only, no autograd.
    ``out``: a contiguous CPU tensor of the result's shape and dtype to write into (a
    workspace reused between calls saves the page faults of fresh memory)."""
    fmap = features.detach().permute(0, 2, 3, 1).contiguous().numpy()
    win = windows.contiguous().numpy()
    k, c = len(win), fmap.shape[3]
    width = c * sum(n * n for n in levels)
    values = features.new_empty((k, width)) if out is None else out
    where = np.empty((k, width) if with_index else (0, 0), np.int64)
    _pyramid(fmap, win, np.asarray(levels, np.int64), max(levels), values.numpy(), where, with_index)
    return (values, torch.from_numpy(where)) if with_index else values


# Gathers whose gradient is the same on every run.
#
# On the CPU the backward of ``torch.take`` and of ``x[index]`` accumulates with
# ``index_put_(accumulate=True)``, whose threads add repeated positions in whatever order
# they finish: two runs from one seed drifted apart from the first step (1e-5 in fc6
# after 20 iterations, enough to flip hard negatives and move an SVM by 0.3). Max pooling
# sends many windows' gradients to one map element, so SPP's backward is exactly that case.
# ``index_add_`` sums each position in index order, so these versions backpropagate
# bit-identically run after run (on a GPU index_add_ uses atomics: no change there).


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


def take_rows(source: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``source[index]`` for a 1-D int64 ``index`` into dim 0; deterministic backward."""
    if not (source.requires_grad and torch.is_grad_enabled()):
        return source[index]
    return _Rows.apply(source, index)
