"""Scored windows -> detections: per-class threshold, per-class NMS, a cap per image."""
from __future__ import annotations

import torch
from torchvision.ops import batched_nms


def postprocess_detections(probs: torch.Tensor, boxes: torch.Tensor, score_thresh: float = 0.001,
                           nms_thresh: float = 0.3, max_per_image: int = 100) -> dict[str, torch.Tensor]:
    """Per-class score threshold, per-class NMS and a cap per image.

    probs: (K, C + 1) softmax over background + C classes; boxes: (K, C, 4) per-class
    boxes in original pixels. Returns {"boxes": (D, 4), "scores": (D,), "labels": (D,)
    int64 in 1..C}, best score first.
    """
    k, c = boxes.shape[:2]
    scores = probs[:, 1:]
    labels = torch.arange(1, c + 1, device=probs.device).expand(k, c)
    keep = scores > score_thresh
    b, s, l = boxes[keep], scores[keep], labels[keep]
    wide = (b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])
    b, s, l = b[wide], s[wide], l[wide]
    order = batched_nms(b, s, l, nms_thresh)[:max_per_image]  # sorted by score, descending
    return {"boxes": b[order], "scores": s[order], "labels": l[order]}
