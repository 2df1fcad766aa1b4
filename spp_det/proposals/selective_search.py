"""Selective search windows (Uijlings et al.) from OpenCV contrib's ximgproc.

Numpy in, numpy out (no torch) so that proposal worker processes stay light.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import ctypes
import ctypes.util
import functools

import cv2
import numpy as np

MODES = ("fast", "quality", "single")


@functools.lru_cache(maxsize=1)
def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c") or ctypes.util.find_library("msvcrt")
    return ctypes.CDLL(name) if name else None


def _seed_c_rand(seed: int) -> None:
    """OpenCV's selective search ranks regions by ``level * rand()`` (C's rand, not
    cv::RNG, so cv2.setRNGSeed has no effect): the same image gives the same set of
    windows in a different order on every call. Seeding C's generator right before the
    search makes the order, and therefore the top-``max_boxes`` cut, reproducible."""
    libc = _libc()
    if libc is not None:
        libc.srand(ctypes.c_uint(seed))


@dataclass(frozen=True)
class SelectiveSearchConfig:
    """mode: fast (the paper's), quality or single strategy. max_size: the longer side
    (pixels) the image is shrunk to before the search. min_size: windows narrower or
    shorter (original pixels) are dropped. max_boxes: kept in the search's own order.
    base_k, inc_k, sigma: the graph segmentation's (Felzenszwalb) first threshold k, its
    step between the strategies' segmentations, and its Gaussian smoothing; None keeps
    OpenCV's defaults (fast/quality: 150, 150, 0.8; single: k 200, sigma 0.8, no inc_k)."""

    mode: str = "fast"
    max_size: int = 500
    min_size: float = 4.0
    max_boxes: int = 2000
    base_k: int | None = None
    inc_k: int | None = None
    sigma: float | None = None

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"selective search mode '{self.mode}': use one of {MODES}")
        if self.mode == "single" and self.inc_k is not None:
            raise ValueError("selective search mode 'single' runs one segmentation: it takes no inc_k")

    def as_dict(self) -> dict:
        """The settings that name a cache: the segmentation's keys only when set, so the
        caches made before they existed keep their names."""
        return {k: v for k, v in asdict(self).items() if v is not None}

    def switch(self, ss) -> None:
        """Put OpenCV's SelectiveSearchSegmentation ``ss`` in this mode and segmentation."""
        if self.mode == "single":
            ss.switchToSingleStrategy(*([] if self.base_k is None and self.sigma is None else
                                        [200 if self.base_k is None else self.base_k,
                                         0.8 if self.sigma is None else self.sigma]))
            return
        switch = ss.switchToSelectiveSearchFast if self.mode == "fast" else ss.switchToSelectiveSearchQuality
        switch(150 if self.base_k is None else self.base_k, 150 if self.inc_k is None else self.inc_k,
               0.8 if self.sigma is None else self.sigma)


def selective_search(image_rgb: np.ndarray, cfg: SelectiveSearchConfig = SelectiveSearchConfig()) -> np.ndarray:
    """Windows of one image.

    image_rgb: (H, W, 3) uint8 RGB. Returns (N, 4) float32 xyxy in ORIGINAL-image pixels,
    0-based continuous, clipped to the image, without exact duplicates, N <= max_boxes.
    """
    h, w = image_rgb.shape[:2]
    scale = min(1.0, cfg.max_size / max(h, w))
    bgr = cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR)
    if scale < 1.0:
        bgr = cv2.resize(bgr, (max(1, round(w * scale)), max(1, round(h * scale))),
                         interpolation=cv2.INTER_AREA)
    sh, sw = bgr.shape[:2]
    ss = cv2.ximgproc.segmentation.createSelectiveSearchSegmentation()
    ss.setBaseImage(bgr)
    _seed_c_rand(0)
    cfg.switch(ss)
    rects = np.asarray(ss.process(), dtype=np.float64).reshape(-1, 4)  # x, y, w, h (resized px)
    boxes = np.concatenate([rects[:, :2], rects[:, :2] + rects[:, 2:]], axis=1)
    # back to original pixels: the resized image spans the original's full extent
    boxes *= np.array([w / sw, h / sh, w / sw, h / sh])
    boxes = np.clip(boxes, 0, [w, h, w, h]).astype(np.float32)
    keep = ((boxes[:, 2] - boxes[:, 0]) >= cfg.min_size) & ((boxes[:, 3] - boxes[:, 1]) >= cfg.min_size)
    boxes = boxes[keep]
    # exact duplicates (the strategies overlap): keep the first occurrence, in order
    _, first = np.unique(boxes, axis=0, return_index=True)
    boxes = boxes[np.sort(first)]
    return np.ascontiguousarray(boxes[: cfg.max_boxes])
