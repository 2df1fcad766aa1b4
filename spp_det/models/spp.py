"""Window projection onto a feature map and spatial pyramid pooling (He et al. 2014).

Both are the project's own idea, written out here because no library op has the exact
semantics: torchvision's ``roi_pool`` computes bin edges in float32 (so a bin edge that
should be an integer, e.g. 3 * 10 / 6, can land one cell early) and rounds box
coordinates itself, while SPP-net's bins are exact integer cells of a window that was
already projected with the released code's margin rule.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from . import spp_kernel

PROJECTIONS = ("released", "paper")


def released_scaling(boxes: torch.Tensor, factor: float) -> torch.Tensor:
    """Boxes scaled as the released code scales them (``spp_features_convX_to_poolX.m``).

    It works on 1-based pixel indices b and maps them as (b - 1)(s - 1)/(min(H, W) - 1) + 1,
    i.e. first pixel onto first pixel and last onto last, with ``factor`` = (s - 1)/(min(H, W) - 1)
    for both axes. In continuous coordinates (the first pixel of [x1, x2) is x1 + 1, the
    last is x2) that is x1 -> x1 * k and x2 -> (x2 - 1) * k + 1.
    boxes: (N, 4) float xyxy original pixels -> (N, 4) float64 continuous pixels of the resized image.
    """
    b = boxes.double()
    return torch.cat([b[:, :2] * factor, (b[:, 2:] - 1) * factor + 1], dim=1)


def project_windows(boxes: torch.Tensor, stride: int, centre0: float, map_size: tuple[int, int],
                    mode: str = "released", margin: float = 6.5) -> torch.Tensor:
    """Feature-map cells covered by each window.

    boxes: (N, 4) float xyxy continuous pixels of the image the trunk saw (already resized;
    for "released", by :func:`released_scaling`). stride S, centre0 c0: cell j (0-based) is
    centred at continuous image position c0 + S * j. map_size: (H', W') of the feature map.

    mode "released": ``spm_pool_caffe_mex.cpp`` line by line. It works on 1-based pixel
    indices (pixel p spans [p - 1, p), so a box's first pixel is l = x1 + 1, its last
    r = x2, and cell 1 is centred on pixel offset0 = c0 + 0.5) with margin ``offset``:
    left = floor((l - offset0 + offset)/S + 0.5) + 1, right = ceil((r - offset0 - offset)/S - 0.5) + 1;
    if left > right both become (left + right) / 2 in C integer division (truncation);
    then clamp to [1, W'].
    mode "paper": x1' = floor(x1 / S), x2' = ceil(x2 / S) - 2 (the paper's floor(x/S) + 1
    and ceil(x/S) - 1 written for 1-based cells, here 0-based); an empty result becomes
    the cell at the (floored) midpoint; clamped into the map.
    Returns (N, 4) int64 inclusive 0-based cells [x1', y1', x2', y2'].
    """
    b = boxes.double()
    if mode == "released":
        offset0 = centre0 + 0.5
        lo = torch.floor((b[:, :2] + 1 - offset0 + margin) / stride + 0.5) + 1
        hi = torch.ceil((b[:, 2:] - offset0 - margin) / stride - 0.5) + 1
        mid = torch.div(lo + hi, 2, rounding_mode="trunc")
        lo, hi = lo - 1, hi - 1  # 1-based -> 0-based (clamping to [1, W'] = to [0, W' - 1])
        mid = mid - 1
    elif mode == "paper":
        lo = torch.floor(b[:, :2] / stride)
        hi = torch.ceil(b[:, 2:] / stride) - 2
        mid = torch.floor((lo + hi) / 2)
    else:
        raise ValueError(f"projection mode '{mode}': use one of {PROJECTIONS}")
    empty = lo > hi
    lo = torch.where(empty, mid, lo)
    hi = torch.where(empty, mid, hi)
    limit = torch.tensor([map_size[1] - 1, map_size[0] - 1], dtype=b.dtype, device=b.device)
    lo = torch.minimum(lo.clamp(min=0), limit)
    hi = torch.minimum(hi.clamp(min=0), limit)
    return torch.cat([lo, hi], dim=1).long()


def _pairwise_max(a: tuple, b: tuple) -> tuple:
    """Elementwise max of two (values, indices) pairs; indices None when not tracked.
    On a tie the first (a) is kept."""
    if a[1] is None:
        return torch.maximum(a[0], b[0]), None
    take = b[0] > a[0]
    return torch.where(take, b[0], a[0]), torch.where(take, b[1], a[1])


def _range_max_tables(fmap: torch.Tensor, index: torch.Tensor | None,
                      needed: list[tuple[int, int]]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """2-D sparse tables of (B, H, W, C) channels-last maps, stacked: slot s of the result
    (S, B, H, W, C) is table ``needed[s]`` = (a, b), holding at (y, x) the max over rows
    [y, y + 2^a) and columns [x, x + 2^b); with ``index`` (the flat position of every
    element, same shape as ``fmap``) also where that max is. Positions past the last
    full block are padding, never read. Only two row tables and two column tables are
    alive at a time besides the result. Channels last, so that gathering one cell reads C
    contiguous values."""
    bsz, h, w, c = fmap.shape
    values = fmap.new_empty((len(needed), bsz, h, w, c))
    where = None if index is None else index.new_empty((len(needed), bsz, h, w, c))

    def halve(t: tuple, dim: int, step: int) -> tuple:  # max of each block and its neighbour step away
        return _pairwise_max(tuple(x.narrow(dim, 0, x.shape[dim] - step) if x is not None else None for x in t),
                             tuple(x.narrow(dim, step, x.shape[dim] - step) if x is not None else None for x in t))
    row = (fmap, index)
    for a in range(max(a for a, _ in needed) + 1):
        if a > 0:
            row = halve(row, 1, 1 << (a - 1))
        wanted = {b: slot for slot, (aa, b) in enumerate(needed) if aa == a}
        col = row
        for b in range(max(wanted, default=-1) + 1):
            if b > 0:
                col = halve(col, 2, 1 << (b - 1))
            if b in wanted:
                v, i = col
                values[wanted[b], :, :v.shape[1], :v.shape[2]] = v
                if where is not None:
                    where[wanted[b], :, :v.shape[1], :v.shape[2]] = i
    return values, where


def unique_rows(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Distinct rows of small non-negative int64 ``rows`` in order of first occurrence, and
    the index of each row's copy (None when every row is distinct: nothing to gather).
    One scalar key per row: ``unique(dim=0)`` compares rows one by one (7 ms for a few
    thousand on a CPU)."""
    base = int(rows.max()) + 1 if len(rows) else 1
    if base ** rows.shape[1] >= 2 ** 62:
        unique, inverse = torch.unique(rows, dim=0, return_inverse=True)
        return unique, inverse
    key = torch.zeros(len(rows), dtype=torch.int64, device=rows.device)
    for col in rows.unbind(1):
        key = key * base + col
    keys, inverse = torch.unique(key, return_inverse=True)
    if len(keys) == len(rows):
        return rows, None
    first = torch.full((len(keys),), len(rows), dtype=torch.int64, device=rows.device)
    first = first.scatter_reduce(0, inverse, torch.arange(len(rows), device=rows.device), "amin")
    order = torch.argsort(first)
    rank = torch.empty_like(order)
    rank[order] = torch.arange(len(order), device=rows.device)
    return rows[first[order]], rank[inverse]


def _floor_log2(v: torch.Tensor) -> torch.Tensor:
    return torch.floor(torch.log2(v.double())).long()


class SpatialPyramidPooling(nn.Module):
    """Max pooling of each window into n x n bins for every level n.

    forward(features: (B, C, H, W), windows: (K, 5) int64 [batch_index, x1', y1', x2', y2']
    inclusive cells) -> (K, C * sum(n * n)). Bin i of n over a window w cells wide spans
    cells [floor(i * w / n), ceil((i + 1) * w / n)) of the window: the released kernel,
    identical to ``adaptive_max_pool2d`` of the window's crop. Output per window: the
    levels in order, each flattened as (C, n, n) row-major. Differentiable.

    Only the finest level reads the feature map. With these bin edges, a level n that
    divides the finest N is exact unions of the finest bins: for m = N / n, finest bins
    j = i*m .. i*m + m - 1 start at floor(i*m*w/N) = floor(i*w/n), end at
    ceil((i*m + m)*w/N) = ceil((i + 1)*w/n), and consecutive ones touch or overlap
    (floor((j + 1)*w/N) <= ceil((j + 1)*w/N)), so their union is bin i of level n and its
    max is the max of their maxima ({3, 2, 1} from 6: 14 of 50 bins pooled from the map).
    Windows that project to the same cells are pooled once (as the released code did).

    On the CPU one level is pooled by a compiled loop (``spp_kernel``, numba) that maxes
    every bin straight from a channels-last copy of the map. Elsewhere (a GPU, no numba,
    or ``use_kernel=False``) all bins of all windows are pooled at once with 2-D
    range-maximum (sparse) tables: the max over any rectangle is the max of four
    overlapping power-of-two blocks, so no Python loop runs over windows. When a gradient
    is needed either path also returns the argmax positions and the output is one gather
    from the map (its backward a single scatter-add). Bin edges are integer arithmetic,
    so every path equals the crop-wise reference.
    """

    def __init__(self, levels: tuple[int, ...] = (6, 3, 2, 1), use_kernel: bool = True, loop_below: int = 64) -> None:
        super().__init__()
        self.levels = tuple(int(n) for n in levels)
        self.finest = max(self.levels)
        self.use_kernel = use_kernel
        self.loop_below = loop_below  # a CPU's differentiable pooling of fewer windows: a per-window loop

    @property
    def bins(self) -> int:
        return sum(n * n for n in self.levels)

    def output_size(self, channels: int) -> int:
        return channels * self.bins

    @staticmethod
    def bin_edges(windows: torch.Tensor, n: int) -> tuple[torch.Tensor, ...]:
        """Per bin (K, n * n) of every window, bins row-major: ys, ye, xs, xe (cell
        rows/columns, end exclusive) of level n."""
        x1, y1, x2, y2 = (windows[:, i:i + 1] for i in range(1, 5))
        h, w = y2 - y1 + 1, x2 - x1 + 1
        i = torch.arange(n, device=windows.device)[None]
        ys, ye = y1 + (i * h) // n, y1 + ((i + 1) * h + n - 1) // n  # (K, n)
        xs, xe = x1 + (i * w) // n, x1 + ((i + 1) * w + n - 1) // n
        k = len(windows)
        return (ys[:, :, None].expand(-1, n, n).reshape(k, -1), ye[:, :, None].expand(-1, n, n).reshape(k, -1),
                xs[:, None, :].expand(-1, n, n).reshape(k, -1), xe[:, None, :].expand(-1, n, n).reshape(k, -1))

    def forward(self, features: torch.Tensor, windows: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """``out``: optional (K, C * bins) tensor to write the result into (the compiled
        path uses it as is; the others copy into it)."""
        k, c = windows.shape[0], features.shape[1]
        if k == 0:
            return features.new_zeros((0, self.output_size(c)))
        windows = windows.to(features.device)
        unique, inverse = unique_rows(windows)
        grad = features.requires_grad and torch.is_grad_enabled()
        if self.use_kernel and spp_kernel.AVAILABLE and features.device.type == "cpu" \
                and features.dtype in spp_kernel.DTYPES:
            if grad:
                pooled = spp_kernel.take(features, spp_kernel.pool_pyramid(features, unique, self.levels, True)[1])
            elif out is not None and inverse is None and out.is_contiguous() and out.dtype == features.dtype:
                return spp_kernel.pool_pyramid(features, unique, self.levels, out=out)
            else:
                pooled = spp_kernel.pool_pyramid(features, unique, self.levels)
            pooled = pooled if inverse is None else spp_kernel.take_rows(pooled, inverse)
            return pooled if out is None else out.copy_(pooled)
        pool = self._pool_grad if grad else self._pool_tables
        # levels are (U, n, n, C), channels last: the reductions below then run over
        # contiguous channels, and only the final layout change copies the values
        fine = pool(features, unique, self.finest)
        u, big = len(unique), self.finest
        levels = []
        for n in self.levels:
            if n == big:
                level = fine
            elif big % n == 0:
                # max over each m x m group of finest bins; where bins overlap they share
                # their argmax element, so the gradient (split by amax between equal
                # maxima) still reaches that element whole
                m = big // n
                level = fine.reshape(u, n, m, n, m, c).amax(dim=(2, 4))
            else:
                level = pool(features, unique, n)
            levels.append(level.permute(0, 3, 1, 2).reshape(u, -1))  # (C, n, n) row-major per window
        pooled = torch.cat(levels, dim=1)
        pooled = pooled if inverse is None else spp_kernel.take_rows(pooled, inverse)
        return pooled if out is None else out.copy_(pooled)

    def _pool_grad(self, features: torch.Tensor, windows: torch.Tensor, n: int) -> torch.Tensor:
        """Differentiable pooling of level n. Many windows: the table path run for the
        argmax positions, then one gather whose backward is a single scatter-add onto the
        argmax elements (what a max pool's backward is). Few windows: a per-window crop +
        ``adaptive_max_pool2d`` loop, whose fixed cost is lower. Forward + backward on a
        64 x 25 x 33 map, 2 CPU threads: 16 windows 1.8 vs 3.5 ms, 64: 7.2 vs 6.7 ms,
        512: 60 vs 29 ms (loop vs tables; benchmarks in the closing note of issue 9). On a
        GPU always the tables: each loop step there is a few kernel launches
        (``loop_below=0`` gives a CPU the GPU's choice, for benchmarks/spp_table_path.py)."""
        if len(windows) < self.loop_below and not features.is_cuda:
            return torch.stack([F.adaptive_max_pool2d(features[b, :, y1:y2 + 1, x1:x2 + 1], n)
                                for b, x1, y1, x2, y2 in windows.tolist()]).permute(0, 2, 3, 1)
        with torch.no_grad():
            _, index = self._pool_tables(features.detach(), windows, n, with_index=True)
        return spp_kernel.take(features, index)

    def _pool_tables(self, features: torch.Tensor, windows: torch.Tensor, n: int,
                     with_index: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """(K, n, n, C) maxima of level n; with ``with_index`` also (values, flat positions
        of the maxima in ``features``). The tables of every image and every block size the
        bins need are built at once and stacked, so the lookup is four gathers whatever the
        windows: no loop over images or block sizes, whose steps each cost kernel launches
        and a synchronisation on a GPU (one remains: which block sizes are needed)."""
        k, (bsz, c, h, w), nb = windows.shape[0], features.shape, n * n
        ys, ye, xs, xe = (t.reshape(-1) for t in self.bin_edges(windows, n))
        batch = windows[:, 0].repeat_interleave(nb)
        a, b = _floor_log2(ye - ys), _floor_log2(xe - xs)
        keys = (a * 64 + b).unique()
        needed = [divmod(key, 64) for key in keys.tolist()]
        index = None
        if with_index:  # flat position in features (B, C, H, W) of each element, arranged (B, H, W, C)
            # int32 halves the bytes the tables move; torch.take wants int64, converted once at the end
            dev, dt = features.device, torch.int32 if features.numel() < 2 ** 31 else torch.int64
            index = (torch.arange(bsz, device=dev, dtype=dt) * (c * h * w)).view(bsz, 1, 1, 1) + \
                torch.arange(h * w, device=dev, dtype=dt).view(1, h, w, 1) + \
                (torch.arange(c, device=dev, dtype=dt) * (h * w)).view(1, 1, 1, c)
        vt, it = _range_max_tables(features.permute(0, 2, 3, 1).contiguous(), index, needed)
        slot = torch.searchsorted(keys, a * 64 + b)  # keys are sorted: each bin's table
        y0, y1 = ys, ye - (1 << a)
        x0, x1 = xs, xe - (1 << b)

        def corner(y: torch.Tensor, x: torch.Tensor) -> tuple:
            return vt[slot, batch, y, x], (it[slot, batch, y, x] if it is not None else None)
        m = _pairwise_max(_pairwise_max(corner(y0, x0), corner(y1, x0)),
                          _pairwise_max(corner(y0, x1), corner(y1, x1)))  # (K * n * n, C)
        values = m[0].view(k, n, n, c)
        if not with_index:
            return values
        return values, m[1].long().view(k, n, n, c)

    def extra_repr(self) -> str:
        return f"levels={self.levels}"
