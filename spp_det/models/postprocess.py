"""Scored windows -> detections: per-class threshold, per-class NMS, optional box voting,
a cap per image."""
from __future__ import annotations

import torch
from torchvision.ops import batched_nms

from ..boxes import box_iou


def postprocess_detections(probs: torch.Tensor, boxes: torch.Tensor, score_thresh: float = 0.001,
                           nms_thresh: float = 0.3, max_per_image: int = 100,
                           vote_thresh: float | None = None) -> dict[str, torch.Tensor]:
    """Per-class score threshold, per-class NMS, optional box voting and a cap per image.

    probs: (K, C + 1) softmax over background + C classes; boxes: (K, C, 4) per-class
    boxes in original pixels. ``vote_thresh``: None, or the IoU at which the windows
    that NMS removed still vote on a kept box's position (:func:`vote_boxes`). Returns
    {"boxes": (D, 4), "scores": (D,), "labels": (D,) int64 in 1..C}, best score first.
    """
    k, c = boxes.shape[:2]
    scores = probs[:, 1:]
    labels = torch.arange(1, c + 1, device=probs.device).expand(k, c)
    keep = scores > score_thresh
    b, s, l = boxes[keep], scores[keep], labels[keep]
    wide = (b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])
    b, s, l = b[wide], s[wide], l[wide]
    order = batched_nms(b, s, l, nms_thresh)[:max_per_image]  # sorted by score, descending
    kept = b[order]
    if vote_thresh is not None and len(order):
        kept = vote_boxes(kept, l[order], b, s, l, vote_thresh)
    return {"boxes": kept, "scores": s[order], "labels": l[order]}


def vote_boxes(kept: torch.Tensor, kept_labels: torch.Tensor, boxes: torch.Tensor, scores: torch.Tensor,
               labels: torch.Tensor, iou_thresh: float) -> torch.Tensor:
    """Box voting (Gidaris & Komodakis, "Object detection via a multi-region & semantic
    segmentation-aware CNN model", ICCV 2015, section 5; Detectron's TEST.BBOX_VOTE):
    each kept box becomes the score-weighted mean of every candidate of its class that
    overlaps it at IoU >= ``iou_thresh``, itself included; its score is unchanged. Written
    here because torchvision has no voting op.

    kept: (D, 4) boxes NMS kept, kept_labels (D,); boxes (N, 4), scores (N,) > 0, labels
    (N,): every candidate above the score threshold, before NMS. Returns (D, 4).
    """
    votes = (box_iou(kept, boxes) >= iou_thresh) & (kept_labels[:, None] == labels[None, :])
    weights = votes * scores[None, :]
    return weights @ boxes / weights.sum(1, keepdim=True)
