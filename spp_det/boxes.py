"""Box math on (N, 4) float tensors.

Convention (DESIGN.md): ``x1, y1, x2, y2`` in pixels of the ORIGINAL image, 0-based and
continuous (pixel i spans [i, i + 1)). Conversions from the file formats live here so that
there is exactly one place that knows about VOC's 1-based inclusive integers and COCO's
``[x, y, w, h]``.
"""
from __future__ import annotations

import math

import torch
from torchvision import ops

# exp() of a larger log-ratio would make a box ~ 60x its window: clamp as Fast R-CNN does.
DEFAULT_SCALE_CLAMP = math.log(1000.0 / 16)


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU of every pair. a: (N, 4), b: (M, 4) xyxy continuous -> (N, M)."""
    return ops.box_iou(a.float(), b.float())


def voc_to_xyxy(boxes: torch.Tensor) -> torch.Tensor:
    """VOC XML (xmin, ymin, xmax, ymax), 1-based inclusive -> 0-based continuous xyxy."""
    boxes = boxes.float()
    return torch.stack([boxes[:, 0] - 1, boxes[:, 1] - 1, boxes[:, 2], boxes[:, 3]], dim=1)


def xyxy_to_voc(boxes: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`voc_to_xyxy` (floats; the VOC evaluator works on these)."""
    boxes = boxes.float()
    return torch.stack([boxes[:, 0] + 1, boxes[:, 1] + 1, boxes[:, 2], boxes[:, 3]], dim=1)


def xywh_to_xyxy(boxes: torch.Tensor) -> torch.Tensor:
    """COCO ``[x, y, w, h]`` -> xyxy."""
    return ops.box_convert(boxes.float(), "xywh", "xyxy")


def xyxy_to_xywh(boxes: torch.Tensor) -> torch.Tensor:
    """xyxy -> COCO ``[x, y, w, h]``."""
    return ops.box_convert(boxes.float(), "xyxy", "xywh")


def clip_boxes(boxes: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Clip (N, 4) xyxy boxes into an image of ``size = (height, width)`` pixels."""
    return ops.clip_boxes_to_image(boxes, size)


def keep_min_size(boxes: torch.Tensor, min_size: float) -> torch.Tensor:
    """Indices (K,) of the boxes whose width and height are both >= min_size pixels."""
    return ops.remove_small_boxes(boxes, min_size)


def flip_boxes(boxes: torch.Tensor, width: int) -> torch.Tensor:
    """Mirror xyxy boxes horizontally in an image ``width`` pixels wide."""
    return torch.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], dim=1)


def vflip_boxes(boxes: torch.Tensor, height: int) -> torch.Tensor:
    """Turn xyxy boxes upside down in an image ``height`` pixels tall."""
    return torch.stack([boxes[:, 0], height - boxes[:, 3], boxes[:, 2], height - boxes[:, 1]], dim=1)


class BoxCoder:
    """R-CNN box parametrization (dx, dy, dw, dh), scaled by ``weights``.

    dx = wx * (gx - px) / pw, dy = wy * (gy - py) / ph, dw = ww * log(gw / pw),
    dh = wh * log(gh / ph), with centres and sizes of continuous boxes (w = x2 - x1).
    ``weights=(10, 10, 5, 5)`` is Fast R-CNN's normalisation of the targets;
    ``(1, 1, 1, 1)`` gives R-CNN's raw deltas.
    """

    def __init__(self, weights: tuple[float, float, float, float] = (10.0, 10.0, 5.0, 5.0),
                 scale_clamp: float = DEFAULT_SCALE_CLAMP) -> None:
        self.weights = tuple(float(w) for w in weights)
        self.scale_clamp = scale_clamp

    @staticmethod
    def _centre_size(boxes: torch.Tensor) -> tuple[torch.Tensor, ...]:
        w = boxes[:, 2] - boxes[:, 0]
        h = boxes[:, 3] - boxes[:, 1]
        return boxes[:, 0] + 0.5 * w, boxes[:, 1] + 0.5 * h, w, h

    def encode(self, gt: torch.Tensor, windows: torch.Tensor) -> torch.Tensor:
        """Targets (N, 4) that take ``windows`` (N, 4) onto ``gt`` (N, 4)."""
        wx, wy, ww, wh = self.weights
        px, py, pw, ph = self._centre_size(windows.float())
        gx, gy, gw, gh = self._centre_size(gt.float())
        return torch.stack([wx * (gx - px) / pw, wy * (gy - py) / ph,
                            ww * torch.log(gw / pw), wh * torch.log(gh / ph)], dim=1)

    def decode(self, deltas: torch.Tensor, windows: torch.Tensor) -> torch.Tensor:
        """Apply deltas (N, 4k) to windows (N, 4) -> boxes (N, 4k), k boxes per window."""
        wx, wy, ww, wh = self.weights
        px, py, pw, ph = (t[:, None] for t in self._centre_size(windows.to(deltas.dtype)))
        dx, dy = deltas[:, 0::4] / wx, deltas[:, 1::4] / wy
        dw = (deltas[:, 2::4] / ww).clamp(max=self.scale_clamp)
        dh = (deltas[:, 3::4] / wh).clamp(max=self.scale_clamp)
        cx, cy = px + dx * pw, py + dy * ph
        w, h = pw * torch.exp(dw), ph * torch.exp(dh)
        out = torch.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], dim=2)
        return out.reshape(deltas.shape)
