"""Drawing with OpenCV: detections on images, precision-recall curves as a PNG grid."""
from __future__ import annotations

import colorsys

import cv2
import numpy as np
import torch


def class_colour(label: int) -> tuple[int, int, int]:
    """A stable, distinct BGR colour per label (golden-ratio hue steps)."""
    r, g, b = colorsys.hsv_to_rgb((label * 0.618034) % 1.0, 0.85, 1.0)
    return int(b * 255), int(g * 255), int(r * 255)


def draw_detections(image_rgb: np.ndarray, boxes: torch.Tensor, labels: torch.Tensor,
                    scores: torch.Tensor, classes: list[str]) -> np.ndarray:
    """Boxes with 'class score' captions on a copy of the image; returns BGR for cv2.imwrite.
    boxes: (K, 4) xyxy original pixels; labels: (K,) 1..C; scores: (K,)."""
    out = cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR)
    thick = max(1, round(max(out.shape[:2]) / 400))
    for box, label, score in zip(boxes.tolist(), labels.tolist(), scores.tolist()):
        x1, y1, x2, y2 = (int(round(v)) for v in box)
        colour = class_colour(label)
        cv2.rectangle(out, (x1, y1), (max(x1, x2 - 1), max(y1, y2 - 1)), colour, thick)
        text = f"{classes[label - 1]} {score:.2f}"
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, 0.4 * thick, thick)
        ty = y1 - 2 if y1 - th - base - 2 >= 0 else y1 + th + 2
        cv2.rectangle(out, (x1, ty - th - 2), (x1 + tw + 2, ty + base - 2), colour, -1)
        cv2.putText(out, text, (x1 + 1, ty - 2), cv2.FONT_HERSHEY_SIMPLEX, 0.4 * thick, (0, 0, 0),
                    thick, cv2.LINE_AA)
    return out


def pr_grid(curves: dict[str, tuple[np.ndarray, np.ndarray, float | None]], cell: int = 220) -> np.ndarray:
    """One precision-recall plot per class in a grid; curves: name -> (recall, precision, AP).
    Returns a BGR image."""
    names = list(curves)
    cols = max(1, min(5, len(names)))
    rows = max(1, (len(names) + cols - 1) // cols)
    grid = np.full((rows * cell, cols * cell, 3), 255, np.uint8)
    pad = 30
    for k, name in enumerate(names):
        recall, precision, ap = curves[name]
        ox, oy = (k % cols) * cell, (k // cols) * cell
        x0, y0, x1, y1 = ox + pad, oy + cell - pad, ox + cell - 10, oy + 25
        cv2.rectangle(grid, (x0, y1), (x1, y0), (0, 0, 0), 1)
        for t in (0.5,):
            cv2.line(grid, (x0, int(y0 + t * (y1 - y0))), (x1, int(y0 + t * (y1 - y0))), (220, 220, 220), 1)
            cv2.line(grid, (int(x0 + t * (x1 - x0)), y0), (int(x0 + t * (x1 - x0)), y1), (220, 220, 220), 1)
        if len(recall):
            pts = np.stack([x0 + recall * (x1 - x0), y0 + precision * (y1 - y0)], 1)
            cv2.polylines(grid, [np.round(pts).astype(np.int32)], False, (200, 60, 0), 2, cv2.LINE_AA)
        title = f"{name}  AP={'n/a' if ap is None else f'{ap:.3f}'}"
        cv2.putText(grid, title, (x0, oy + 18), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
        cv2.putText(grid, "recall", (x1 - 40, y0 + 14), cv2.FONT_HERSHEY_SIMPLEX, 0.35, (80, 80, 80), 1)
        cv2.putText(grid, "prec", (ox + 2, y1 + 10), cv2.FONT_HERSHEY_SIMPLEX, 0.35, (80, 80, 80), 1)
    return grid
