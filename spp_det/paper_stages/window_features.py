"""Features of every training window after fine-tuning, one image at a time: what the
paper's per-class SVMs (fc7) and ridge box regressors (pool5, the pyramid's output) are
fitted on. As the released code's feature cache, each window is pooled at its best test
scale (``SPPNet.select_scales``), the ground-truth boxes first, then the image's proposals.
"""
from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
from tqdm import tqdm

from ..boxes import box_iou
from ..data import DetectionDataset
from ..errors import SppDetError
from ..files import WriteError
from ..models import FeatureMap, SPPNet

log = logging.getLogger(__name__)


@dataclass
class WindowFeatures:
    """One image. boxes: (N, 4) original pixels, its G ground-truth boxes first;
    gt_labels: (G,) 1..C; ignore_iou: (N,) best IoU with a left-out (crowd/difficult)
    box, 0 when none; pooled: (N, D) pyramid vectors; fc7: (N, hidden), or (N, 0) when not
    computed (``training_features(with_fc7=False)``); both float32;
    unique: (N,) bool, the first window of each set with the same cells on the same map
    (the released code's ``dedup``: those share one feature; None: all distinct)."""

    index: int
    boxes: torch.Tensor
    gt_labels: torch.Tensor
    ignore_iou: torch.Tensor
    pooled: torch.Tensor
    fc7: torch.Tensor
    unique: torch.Tensor | None = None

    @property
    def num_gt(self) -> int:
        return len(self.gt_labels)

    def distinct(self) -> torch.Tensor:
        """(N,) bool: :attr:`unique`, or all True."""
        return torch.ones(len(self.boxes), dtype=torch.bool) if self.unique is None else self.unique

    def iou(self) -> torch.Tensor:
        """(N, G) IoU of every window with every ground-truth box."""
        return box_iou(self.boxes, self.boxes[:self.num_gt])


@torch.no_grad()
def training_features(model: SPPNet, dataset: DetectionDataset, indices: list[int],
                      proposals: Callable[[int], torch.Tensor],
                      maps_of: Callable[[int], list[FeatureMap]], chunk: int = 1024,
                      skipped: dict[str, str] | None = None, with_fc7: bool = True,
                      desc: str | None = None) -> Iterator[WindowFeatures]:
    """Yield :class:`WindowFeatures` of the images ``indices`` in that order. proposals(i):
    (P, 4) windows of image i; maps_of(i): its feature maps at ``model.scales`` (cached
    conv maps for a frozen trunk). The model is used in eval mode (no dropout). An image
    whose maps cannot be had (unreadable) is left out and recorded in ``skipped``
    (path -> reason), as training leaves it out: the stages run after all of fine-tuning,
    and one bad image must not lose them. ``with_fc7=False`` leaves fc7 out ((N, 0)):
    ridge alone needs pool5 only, and fc6 is most of the cost (64,000 x 1024 on the
    dilated Lite0). ``desc``: a progress bar with that label (a pass over VOC's training
    photos takes half an hour on a CPU); None: none."""
    was_training = model.training
    model.eval()
    try:
        for i in tqdm(indices, desc=desc, unit="img", disable=desc is None, file=sys.stderr):
            t = dataset.targets[i]
            keep = ~t.ignore
            gt = t.boxes[keep].float()
            boxes = torch.cat([gt, proposals(i).float()])
            ignored = t.boxes[t.ignore].float()
            ignore_iou = box_iou(boxes, ignored).max(dim=1).values if len(ignored) and len(boxes) \
                else torch.zeros(len(boxes))
            try:
                maps = maps_of(i)
            except WriteError:  # a full disk is the run's problem, not this image's
                raise
            except SppDetError as exc:
                if skipped is not None and str(t.path) not in skipped:
                    skipped[str(t.path)] = str(exc)
                    log.warning("SVM/ridge features without %s: %s", t.path, exc)
                continue
            scale_index = model.select_scales(boxes, t.height, t.width, model.scales)
            pooled, fc7 = [], []
            for s in range(0, len(boxes), chunk):
                # cached maps stay on the CPU; the heads may be on a GPU
                p = model.pool(maps, boxes[s:s + chunk], scale_index[s:s + chunk]).float()
                pooled.append(p.cpu())
                if with_fc7:
                    fc7.append(model.head.features(p.to(model.head.fc6.weight.device)).float().cpu())
            if not with_fc7:
                fc7_rows = torch.zeros((len(boxes), 0))
            else:
                fc7_rows = torch.cat(fc7) if fc7 else torch.zeros((0, model.head.fc7.out_features))
            yield WindowFeatures(i, boxes, t.labels[keep], ignore_iou,
                                 torch.cat(pooled) if pooled else torch.zeros((0, model.head.fc6.in_features)),
                                 fc7_rows,
                                 first_of_each(model.project(maps, boxes, scale_index)) if len(boxes) else None)
    finally:
        model.train(was_training)


def first_of_each(rows: torch.Tensor) -> torch.Tensor:
    """(K,) bool: True at the first occurrence of each distinct row of (K, D) ``rows``."""
    _, inverse = torch.unique(rows, dim=0, return_inverse=True)
    first = torch.full((int(inverse.max()) + 1,), len(rows), dtype=torch.long)
    first = first.scatter_reduce(0, inverse, torch.arange(len(rows)), reduce="amin")
    out = torch.zeros(len(rows), dtype=torch.bool)
    out[first] = True
    return out


def mean_norm(features: torch.Tensor) -> float:
    """Mean L2 norm of (N, D) rows (the released code's feat_norm_mean)."""
    return float(features.norm(dim=1).mean()) if len(features) else 0.0
