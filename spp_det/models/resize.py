"""Image sizing: the shorter side to a scale, the longer one capped. Pure numpy/OpenCV,
so data loader workers can run it."""
from __future__ import annotations

import cv2
import numpy as np


def resize_factor(height: int, width: int, scale: int, max_size: int) -> float:
    """Factor that makes the shorter side ``scale`` pixels, unless the longer side would
    exceed ``max_size``."""
    f = scale / min(height, width)
    return min(f, max_size / max(height, width))


def resized_size(height: int, width: int, scale: int, max_size: int) -> tuple[int, int]:
    """(height, width) in pixels of an image after :func:`resize_image`."""
    f = resize_factor(height, width, scale, max_size)
    return max(1, round(height * f)), max(1, round(width * f))


def resize_image(image: np.ndarray, scale: int, max_size: int) -> tuple[np.ndarray, float, float]:
    """(H, W, 3) uint8 RGB -> (resized uint8 image, fx, fy): the shorter side becomes
    ``scale`` unless the longer would exceed ``max_size``. Pure numpy/OpenCV, so data
    loader workers can run it."""
    h, w = image.shape[:2]
    nh, nw = resized_size(h, w, scale, max_size)
    resized = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_LINEAR) if (nh, nw) != (h, w) else image
    return np.ascontiguousarray(resized), nw / w, nh / h
