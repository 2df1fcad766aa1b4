"""PASCAL VOC average precision, reproducing the official devkit (VOCevaldet.m).

This is written out rather than imported because no maintained package reproduces the
devkit: it works on VOC's own 1-based inclusive integer boxes (IoU with the +1 pixel
convention), difficult objects count neither as hit nor miss, a second detection of an
already found object is a false positive, and ties in score keep the detections' input
order (MATLAB's ``sort`` is stable).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def matlab_colon(a: float, step: float, b: float) -> np.ndarray:
    """MATLAB's ``a:step:b`` value for value: the first half is a + k*step, the second
    half b - k*step counted from the end, the middle element (odd count) (a + b) / 2.
    ``np.linspace(0, 1, 11)`` differs from ``0:0.1:1`` at 0.6 and 0.7 (0.6000000000000001,
    0.7000000000000001), which loses a recall that lands exactly on 0.6 or 0.7."""
    n = int(np.floor((b - a) / step + 1e-10))
    out = np.empty(n + 1)
    half = n // 2
    for k in range(half + 1):
        out[k] = a + k * step
        out[n - k] = b - k * step
    if n % 2 == 0:
        out[half] = (a + b) / 2
    return out


# the devkit's VOCevaldet.m loops ``for t=0:0.1:1``
VOC07_RECALL_THRESHOLDS = matlab_colon(0.0, 0.1, 1.0)


def voc_ap(recall: np.ndarray, precision: np.ndarray, use_07_metric: bool) -> float:
    """AP from a PR curve. VOC2007: mean of the max precision at recall >= t for the 11
    t of MATLAB's 0:0.1:1. VOC2010+: area under the monotone (max-to-the-right) curve."""
    if use_07_metric:
        ap = 0.0
        for t in VOC07_RECALL_THRESHOLDS:
            p = precision[recall >= t]
            ap += (p.max() if p.size else 0.0) / 11.0
        return float(ap)
    mrec = np.concatenate([[0.0], recall, [1.0]])
    mpre = np.concatenate([[0.0], precision, [0.0]])
    for i in range(mpre.size - 2, -1, -1):
        mpre[i] = max(mpre[i], mpre[i + 1])
    idx = np.where(mrec[1:] != mrec[:-1])[0] + 1
    return float(np.sum((mrec[idx] - mrec[idx - 1]) * mpre[idx]))


def devkit_iou(box: np.ndarray, gts: np.ndarray) -> np.ndarray:
    """IoU of one (4,) box with (G, 4) boxes, VOC 1-based inclusive pixels (+1 widths)."""
    iw = np.minimum(box[2], gts[:, 2]) - np.maximum(box[0], gts[:, 0]) + 1
    ih = np.minimum(box[3], gts[:, 3]) - np.maximum(box[1], gts[:, 1]) + 1
    inter = iw * ih
    union = ((box[2] - box[0] + 1) * (box[3] - box[1] + 1)
             + (gts[:, 2] - gts[:, 0] + 1) * (gts[:, 3] - gts[:, 1] + 1) - inter)
    return np.where((iw > 0) & (ih > 0), inter / union, 0.0)


@dataclass
class ClassResult:
    ap: float              # nan when the class has no non-difficult ground truth
    recall: np.ndarray     # (D,) after each detection, best score first
    precision: np.ndarray  # (D,)
    num_gt: int            # non-difficult ground-truth objects


def voc_eval_class(det_image: np.ndarray, det_score: np.ndarray, det_box: np.ndarray,
                   gt_boxes: list[np.ndarray], gt_difficult: list[np.ndarray],
                   iou_thresh: float = 0.5, use_07_metric: bool = True) -> ClassResult:
    """Devkit AP of one class.

    det_image: (D,) int index into the gt lists; det_score: (D,); det_box: (D, 4) VOC
    1-based pixels. gt_boxes[i]: (G_i, 4) VOC pixels of image i; gt_difficult[i]: (G_i,) bool.
    """
    npos = int(sum((~d).sum() for d in gt_difficult))
    order = np.argsort(-det_score, kind="stable")
    found = [np.zeros(len(g), dtype=bool) for g in gt_boxes]
    tp = np.zeros(len(order))
    fp = np.zeros(len(order))
    for k, d in enumerate(order):
        i = int(det_image[d])
        gts = gt_boxes[i]
        ovmax, jmax = -np.inf, -1
        if len(gts):
            ov = devkit_iou(det_box[d], gts)
            jmax = int(np.argmax(ov))  # first maximum, as the devkit's strict '>' scan
            ovmax = ov[jmax]
        if ovmax >= iou_thresh:
            if gt_difficult[i][jmax]:
                continue  # neither true nor false positive
            if not found[i][jmax]:
                tp[k] = 1
                found[i][jmax] = True
            else:
                fp[k] = 1
        else:
            fp[k] = 1
    tp, fp = np.cumsum(tp), np.cumsum(fp)
    if npos == 0:
        return ClassResult(float("nan"), np.zeros(0), np.zeros(0), 0)
    recall = tp / npos
    precision = tp / np.maximum(tp + fp, np.finfo(np.float64).tiny)
    return ClassResult(voc_ap(recall, precision, use_07_metric), recall, precision, npos)
