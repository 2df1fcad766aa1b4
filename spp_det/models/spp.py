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

PROJECTIONS = ("released", "paper")


def project_windows(boxes: torch.Tensor, stride: int, centre0: float, map_size: tuple[int, int],
                    mode: str = "released", margin: float = 6.5) -> torch.Tensor:
    """Feature-map cells covered by each window.

    boxes: (N, 4) float xyxy in pixels of the image the trunk saw (already resized).
    stride S, centre0 c0: cell j is centred at image position c0 + S * j.
    map_size: (H', W') of the feature map.
    mode "released" (the authors' code): the left/top edge goes to the cell whose centre
    is nearest to x1 + margin, the right/bottom edge to the one nearest to x2 - margin.
    mode "paper": x1' = floor(x1 / S), x2' = ceil(x2 / S) - 2 (the paper's
    floor(x/S) + 1 and ceil(x/S) - 1 written for 1-based cells, here 0-based).
    An empty result (x1' > x2') becomes the single cell at the midpoint; then all indices
    are clamped into the map. Returns (N, 4) int64 inclusive cells [x1', y1', x2', y2'].
    """
    b = boxes.double()
    if mode == "released":
        lo = torch.floor((b[:, :2] + margin - centre0) / stride + 0.5)
        hi = torch.floor((b[:, 2:] - margin - centre0) / stride + 0.5)
    elif mode == "paper":
        lo = torch.floor(b[:, :2] / stride)
        hi = torch.ceil(b[:, 2:] / stride) - 2
    else:
        raise ValueError(f"projection mode '{mode}': use one of {PROJECTIONS}")
    empty = lo > hi
    mid = torch.floor((lo + hi) / 2)
    lo = torch.where(empty, mid, lo)
    hi = torch.where(empty, mid, hi)
    limit = torch.tensor([map_size[1] - 1, map_size[0] - 1], dtype=b.dtype, device=b.device)
    lo = torch.minimum(lo.clamp(min=0), limit)
    hi = torch.minimum(hi.clamp(min=0), limit)
    return torch.cat([lo, hi], dim=1).long()


class SpatialPyramidPooling(nn.Module):
    """Max pooling of each window into n x n bins for every level n.

    forward(features: (B, C, H, W), windows: (K, 5) int64 [batch_index, x1', y1', x2', y2']
    inclusive cells) -> (K, C * sum(n * n)). Bin i of n over a window w cells wide spans
    cells [floor(i * w / n), ceil((i + 1) * w / n)) of the window: the released kernel,
    identical to ``adaptive_max_pool2d`` of the window's crop. Output per window: the
    levels in order, each flattened as (C, n, n) row-major. Differentiable.

    This first version pools window by window (simple and exact); the contract is what
    the rest of the code relies on, so a faster kernel can replace the body.
    """

    def __init__(self, levels: tuple[int, ...] = (6, 3, 2, 1)) -> None:
        super().__init__()
        self.levels = tuple(int(n) for n in levels)

    @property
    def bins(self) -> int:
        return sum(n * n for n in self.levels)

    def output_size(self, channels: int) -> int:
        return channels * self.bins

    def forward(self, features: torch.Tensor, windows: torch.Tensor) -> torch.Tensor:
        k = windows.shape[0]
        c = features.shape[1]
        if k == 0:
            return features.new_zeros((0, self.output_size(c)))
        out = []
        for b, x1, y1, x2, y2 in windows.tolist():
            crop = features[b, :, y1:y2 + 1, x1:x2 + 1]
            out.append(torch.cat([F.adaptive_max_pool2d(crop, n).reshape(-1) for n in self.levels]))
        return torch.stack(out)

    def extra_repr(self) -> str:
        return f"levels={self.levels}"
