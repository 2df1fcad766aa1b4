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


def plot_panels(panels: list[dict], cell: int = 240) -> np.ndarray:
    """Line plots in a grid, drawn with OpenCV (no plotting dependency). Each panel:
    ``{"title": str, "series": [(x (K,), y (K,)), ...], "xlim": (lo, hi), "xlog": bool,
    "xlabel": str, "ylabel": str}``; y is drawn on [0, 1]. Returns a BGR image."""
    cols = max(1, min(5, len(panels)))
    rows = max(1, (len(panels) + cols - 1) // cols)
    grid = np.full((rows * cell, cols * cell, 3), 255, np.uint8)
    pad = 32
    for k, panel in enumerate(panels):
        ox, oy = (k % cols) * cell, (k // cols) * cell
        x0, y0, x1, y1 = ox + pad, oy + cell - pad, ox + cell - 12, oy + 26
        lo, hi = panel.get("xlim", (0.0, 1.0))
        fx = (lambda v: np.log10(v)) if panel.get("xlog") else (lambda v: v)
        cv2.rectangle(grid, (x0, y1), (x1, y0), (0, 0, 0), 1)
        for t in (0.25, 0.5, 0.75):
            yy = int(y0 + t * (y1 - y0))
            cv2.line(grid, (x0 + 1, yy), (x1 - 1, yy), (225, 225, 225), 1)
        for s, (x, y) in enumerate(panel["series"]):
            x, y = np.asarray(x, float), np.asarray(y, float)
            if len(x) == 0:
                continue
            px = x0 + (fx(x) - fx(lo)) / max(1e-9, fx(hi) - fx(lo)) * (x1 - x0)
            pts = np.stack([px, y0 + y * (y1 - y0)], 1)
            cv2.polylines(grid, [np.round(pts).astype(np.int32)], False, class_colour(s + 3), 2, cv2.LINE_AA)
        cv2.putText(grid, panel["title"], (x0 - 20, oy + 17), cv2.FONT_HERSHEY_SIMPLEX, 0.42, (0, 0, 0), 1,
                    cv2.LINE_AA)
        cv2.putText(grid, f"{panel.get('xlabel', '')} {lo:g}..{hi:g}", (x0, y0 + 20), cv2.FONT_HERSHEY_SIMPLEX,
                    0.35, (80, 80, 80), 1, cv2.LINE_AA)
        cv2.putText(grid, panel.get("ylabel", ""), (ox + 2, y1 + 10), cv2.FONT_HERSHEY_SIMPLEX, 0.35,
                    (80, 80, 80), 1, cv2.LINE_AA)
    return grid


def pr_grid(curves: dict[str, tuple[np.ndarray, np.ndarray, float | None]]) -> np.ndarray:
    """One precision-recall plot per class; curves: name -> (recall, precision, AP)."""
    return plot_panels([{"title": f"{n}  AP={'n/a' if ap is None else f'{ap:.3f}'}",
                         "series": [(r, p)], "xlabel": "recall", "ylabel": "prec"}
                        for n, (r, p, ap) in curves.items()])
