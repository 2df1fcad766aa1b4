"""How well proposal windows cover the ground truth."""
from __future__ import annotations

import numpy as np
import torch

from ..boxes import box_iou

# COCO's object size ranges (area in pixels^2)
SIZE_RANGES = {"small": (0.0, 32.0 ** 2), "medium": (32.0 ** 2, 96.0 ** 2), "large": (96.0 ** 2, float("inf"))}
TOP_K = (10, 20, 50, 100, 200, 300, 500, 1000, 2000)


def best_overlaps(proposals: torch.Tensor, gt: torch.Tensor, top_k: int | None = None) -> torch.Tensor:
    """Highest IoU (G,) of each gt box (G, 4) with the first ``top_k`` proposals (N, 4)."""
    if top_k is not None:
        proposals = proposals[:top_k]
    if len(gt) == 0:
        return torch.zeros(0)
    if len(proposals) == 0:
        return torch.zeros(len(gt))
    return box_iou(gt, proposals).max(dim=1).values


def proposal_recall(proposals: list[torch.Tensor], gts: list[torch.Tensor],
                    top_k: tuple[int, ...] = TOP_K) -> dict:
    """Recall of the (non-ignored) ground truth by proposal windows.

    proposals[i]: (N_i, 4), gts[i]: (G_i, 4), xyxy original pixels. Returns recall at IoU
    0.5 and 0.7, average recall over IoU 0.5:0.05:0.95, recall at 0.5 by COCO object size,
    mean boxes per image and recall@{0.5, 0.7} against the number of proposals kept.
    """
    ov = torch.cat([best_overlaps(p, g) for p, g in zip(proposals, gts)] + [torch.zeros(0)])
    gt_all = torch.cat([g.reshape(-1, 4) for g in gts] + [torch.zeros((0, 4))])
    area = (gt_all[:, 2] - gt_all[:, 0]) * (gt_all[:, 3] - gt_all[:, 1])
    n = max(1, len(ov))
    thresholds = np.arange(0.5, 0.951, 0.05)
    out = {
        "num_images": len(gts),
        "num_gt": int(len(ov)),
        "recall@0.5": float((ov >= 0.5).sum()) / n,
        "recall@0.7": float((ov >= 0.7).sum()) / n,
        "average_recall": float(np.mean([float((ov >= t).sum()) / n for t in thresholds])),
        "mean_boxes_per_image": float(np.mean([len(p) for p in proposals])) if proposals else 0.0,
        "recall@0.5_by_size": {},
        "num_gt_by_size": {},
        "recall_vs_num_proposals": {},
    }
    for name, (lo, hi) in SIZE_RANGES.items():
        m = (area >= lo) & (area < hi)
        out["num_gt_by_size"][name] = int(m.sum())
        out["recall@0.5_by_size"][name] = float((ov[m] >= 0.5).sum()) / int(m.sum()) if m.any() else None
    for k in top_k:
        ovk = torch.cat([best_overlaps(p, g, k) for p, g in zip(proposals, gts)] + [torch.zeros(0)])
        out["recall_vs_num_proposals"][str(k)] = {"0.5": float((ovk >= 0.5).sum()) / n,
                                                  "0.7": float((ovk >= 0.7).sum()) / n}
    return out
