"""R-CNN mode: the same trunk and heads run on every window cropped and warped to a fixed
size. It exists to measure SPP-net's speed-up honestly (same images, windows, weights)."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torchvision.ops import roi_align

from .detector import SPPNet
from .postprocess import postprocess_detections


def context_boxes(boxes: torch.Tensor, crop_size: int = 224, context: int = 16) -> torch.Tensor:
    """R-CNN's dilation: grow each (K, 4) box about its centre so that, once warped to
    crop_size x crop_size, the original box is surrounded by ``context`` pixels."""
    f = crop_size / (crop_size - 2 * context)
    c = (boxes[:, :2] + boxes[:, 2:]) / 2
    half = (boxes[:, 2:] - boxes[:, :2]) / 2 * f
    return torch.cat([c - half, c + half], dim=1)


class RCNN(nn.Module):
    """Per-window baseline that shares an SPPNet's trunk, pyramid and heads.

    Each window (plus 16 px context) is warped to crop_size x crop_size by bilinear
    sampling (``roi_align``, one sample per output pixel) of the normalised image, so
    context beyond the image border is 0, i.e. the mean colour, as in R-CNN. The trunk
    then runs on every crop and the pyramid pools each crop's WHOLE feature map, which
    keeps the fc6 input size of the SPP model.
    """

    def __init__(self, detector: SPPNet, crop_size: int = 224, context: int = 16, batch_size: int = 32) -> None:
        super().__init__()
        self.detector = detector
        self.crop_size = crop_size
        self.context = context
        self.batch_size = batch_size

    def warp(self, image: np.ndarray, boxes: torch.Tensor) -> torch.Tensor:
        """(K, 3, crop, crop) normalised crops. image: (H, W, 3) uint8 RGB; boxes (K, 4)."""
        trunk = self.detector.trunk
        x = trunk.normalize(torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].to(trunk.mean.device))
        rois = torch.cat([torch.zeros(len(boxes), 1), context_boxes(boxes.float(), self.crop_size, self.context)], 1)
        return roi_align(x, rois.to(x.device), self.crop_size, spatial_scale=1.0, sampling_ratio=1, aligned=True)

    def pooled(self, crops: torch.Tensor) -> torch.Tensor:
        """Trunk + whole-map pyramid on (B, 3, crop, crop) crops -> (B, C * bins): a
        window's R-CNN feature (what R-CNN mode's heads see, and train on)."""
        fmap = self.detector.trunk(crops)
        b, _, h, w = fmap.shape
        whole = torch.tensor([[i, 0, 0, w - 1, h - 1] for i in range(b)], dtype=torch.long, device=fmap.device)
        return self.detector.spp(fmap, whole)

    def window_logits(self, crops: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Trunk + whole-map pyramid + heads on (B, 3, crop, crop) crops."""
        return self.detector.head(self.pooled(crops))

    @torch.no_grad()
    def detect_windows(self, image: np.ndarray, boxes: torch.Tensor, **_unused) -> tuple[torch.Tensor, torch.Tensor]:
        """Same contract as SPPNet.detect_windows: (probs (K, C+1), boxes (K, C, 4))."""
        h, w = image.shape[:2]
        boxes = torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4)
        logits, deltas = [], []
        for start in range(0, len(boxes), self.batch_size):
            with self.detector.autocast():  # the SPP model's inference precision, for a fair comparison
                lg, dl = self.window_logits(self.warp(image, boxes[start:start + self.batch_size]))
            logits.append(lg.float().cpu())
            deltas.append(dl.float().cpu())
        c = self.detector.num_classes
        logits_t = torch.cat(logits) if logits else torch.zeros((0, c + (self.detector.head.classifier != "svm")))
        deltas_t = torch.cat(deltas) if deltas else torch.zeros((0, 4 * c))
        return self.detector.class_probs(logits_t), self.detector.decode(deltas_t, boxes, h, w)

    @torch.no_grad()
    def predict(self, image: np.ndarray, boxes: torch.Tensor, score_thresh: float = 0.001,
                nms_thresh: float = 0.3, max_per_image: int = 100, **_unused) -> dict[str, torch.Tensor]:
        probs, per_class = self.detect_windows(image, boxes)
        return postprocess_detections(probs, per_class, score_thresh, nms_thresh, max_per_image,
                                      self.detector.box_vote)
