"""One image's conv map at one scale, and the two reshapes inference applies to maps
and their windows before pooling."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .spp import unique_rows


@dataclass
class FeatureMap:
    """The trunk's output for one image at one scale.

    features: (C, H', W'); fx, fy: resized pixels per original pixel along x and y;
    size: (H, W) of the original image (the released projection scales boxes by it).
    """

    features: torch.Tensor
    fx: float
    fy: float
    size: tuple[int, int]

    def released_factor(self) -> float:
        """(s - 1)/(min(H, W) - 1), s the resized shorter side: the released code's box
        scale (see spp.released_scaling)."""
        h, w = self.size
        short = round(self.fy * h) if h <= w else round(self.fx * w)
        return (short - 1) / (min(h, w) - 1) if min(h, w) > 1 else float(short)


def distinct_cells(cells: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(U, 5) distinct rows of (K, 5) :meth:`SPPNet.project` cells, grouped by map (so
    that each map's windows of a chunk are one block of rows), and (K,) each window's row."""
    unique, inverse = unique_rows(cells)
    order = torch.argsort(unique[:, 0], stable=True)
    back = torch.argsort(order)
    return unique[order], (back if inverse is None else back[inverse])


def channels_last(maps: list[FeatureMap]) -> list[FeatureMap]:
    """The maps as float32 in channels-last memory (the pooling kernel's layout), converted
    once per map rather than once per chunk of windows."""
    return [FeatureMap(m.features.float()[None].contiguous(memory_format=torch.channels_last)[0], m.fx, m.fy,
                       m.size)
            for m in maps]
