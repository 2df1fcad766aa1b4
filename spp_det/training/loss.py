"""The two-head training loss (Fast R-CNN's multi-task loss on SPP-net's heads)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def detection_loss(logits: torch.Tensor, deltas: torch.Tensor, labels: torch.Tensor,
                   targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax cross-entropy over all windows + smooth-L1 on the true class's deltas of
    foreground windows, summed and divided by the number of windows (Fast R-CNN).
    logits (K, C+1), deltas (K, 4C), labels (K,), targets (K, 4) (only fg rows used)."""
    cls = F.cross_entropy(logits, labels)
    fg = (labels > 0).nonzero().squeeze(1)
    if len(fg) == 0:
        return cls, deltas.sum() * 0.0
    pred = deltas[fg].view(len(fg), -1, 4)[torch.arange(len(fg), device=fg.device), labels[fg] - 1]
    box = F.smooth_l1_loss(pred, targets[fg], beta=1.0, reduction="sum") / max(1, len(labels))
    return cls, box
