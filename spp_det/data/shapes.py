"""``shapes``: a synthetic detection set written in VOCdevkit layout, the embedded default.

``<root>/SHAPES/{JPEGImages, Annotations, ImageSets/Main/{trainval,test}.txt}``. Images of
300-500 px with 1-5 filled shapes (ellipse, rectangle, triangle) of any colour, 20 px to
~80% of the shorter side (side length uniform in that range), varied aspect, partly overlapping, on textured backgrounds with
clutter (lines, small blobs, colour gradients). Class cannot be told from colour or size,
only from shape. Output is byte-identical for the same seed (numpy's PCG64 plus OpenCV's
deterministic drawing and JPEG encoder).
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from ..files import write_atomic

SHAPES_CLASSES = ["ellipse", "rectangle", "triangle"]
SHAPES_DIR = "SHAPES"
SHAPES_VERSION = 4  # bump whenever the generator's output changes (the stamp file records it)


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Colour gradient + blurred noise texture + clutter lines and small blobs."""
    c0, c1 = rng.uniform(40, 215, size=(2, 3))
    t = np.linspace(0.0, 1.0, w if rng.random() < 0.5 else h)
    grad = c0[None, :] * (1 - t[:, None]) + c1[None, :] * t[:, None]
    img = np.broadcast_to(grad[None] if len(t) == w else grad[:, None], (h, w, 3)).copy()
    noise = rng.normal(0, 1, size=(h // 4 + 1, w // 4 + 1, 3)).astype(np.float32)
    noise = cv2.resize(noise, (w, h), interpolation=cv2.INTER_LINEAR)
    img = np.clip(img + 18 * noise + rng.normal(0, 6, size=(h, w, 3)), 0, 255).astype(np.uint8)
    for _ in range(rng.integers(3, 9)):  # thin clutter lines
        p = rng.integers(0, [w, h, w, h])
        cv2.line(img, (int(p[0]), int(p[1])), (int(p[2]), int(p[3])),
                 tuple(int(v) for v in rng.integers(0, 256, 3)), int(rng.integers(1, 3)))
    for _ in range(rng.integers(3, 10)):  # small blobs (< 10 px): not objects
        x, y = int(rng.integers(0, w)), int(rng.integers(0, h))
        cv2.circle(img, (x, y), int(rng.integers(2, 5)), tuple(int(v) for v in rng.integers(0, 256, 3)), -1)
    return img


def _shape_points(rng: np.random.Generator, kind: str, x: int, y: int, bw: int, bh: int) -> np.ndarray:
    """Polygon (K, 2) int32 of a shape that exactly spans the box [x, x+bw-1] x [y, y+bh-1]."""
    x2, y2 = x + bw - 1, y + bh - 1
    if kind == "rectangle":
        return np.array([[x, y], [x2, y], [x2, y2], [x, y2]], np.int32)
    if kind == "ellipse":
        pts = cv2.ellipse2Poly((0, 0), (1000, 1000), 0, 0, 360, 4).astype(np.float64) / 1000.0
        pts = np.stack([x + (pts[:, 0] + 1) * (bw - 1) / 2, y + (pts[:, 1] + 1) * (bh - 1) / 2], 1)
        return np.round(pts).astype(np.int32)
    # triangle: apex on one edge (its middle half: no near-degenerate slivers), base opposite
    apex = x + int(round(bw * rng.uniform(0.25, 0.75)))
    if rng.random() < 0.5:
        return np.array([[apex, y], [x2, y2], [x, y2]], np.int32)
    return np.array([[apex, y2], [x, y], [x2, y]], np.int32)


def _overlap_ok(box: np.ndarray, others: list[np.ndarray], max_cover: float = 0.35) -> bool:
    """Objects may overlap, but neither may hide more than ``max_cover`` of the other's box."""
    for o in others:
        iw = min(box[2], o[2]) - max(box[0], o[0])
        ih = min(box[3], o[3]) - max(box[1], o[1])
        if iw > 0 and ih > 0:
            inter = iw * ih
            area_b = (box[2] - box[0]) * (box[3] - box[1])
            area_o = (o[2] - o[0]) * (o[3] - o[1])
            if inter > max_cover * min(area_b, area_o):
                return False
    return True


def render_image(rng: np.random.Generator) -> tuple[np.ndarray, list[tuple[str, list[int]]]]:
    """One image (H, W, 3) uint8 RGB and its objects as (class, [xmin, ymin, xmax, ymax])
    in VOC's 1-based inclusive pixels."""
    h, w = (int(v) for v in rng.integers(300, 501, size=2))
    img = _background(rng, h, w)
    objects: list[tuple[str, list[int]]] = []
    placed: list[np.ndarray] = []
    for _ in range(int(rng.integers(1, 6))):
        for _attempt in range(20):
            kind = SHAPES_CLASSES[int(rng.integers(len(SHAPES_CLASSES)))]
            side = float(rng.uniform(20, 0.8 * min(h, w)))
            aspect = float(np.exp(rng.uniform(np.log(0.5), np.log(2.0))))
            bw = int(np.clip(round(side * np.sqrt(aspect)), 20, w - 2))
            bh = int(np.clip(round(side / np.sqrt(aspect)), 20, h - 2))
            x, y = int(rng.integers(0, w - bw + 1)), int(rng.integers(0, h - bh + 1))
            box = np.array([x, y, x + bw, y + bh])
            if _overlap_ok(box, placed):
                break
        else:
            continue
        pts = _shape_points(rng, kind, x, y, bw, bh)
        colour = rng.integers(0, 256, 3)
        while np.abs(colour.astype(int) - img[y:y + bh, x:x + bw].reshape(-1, 3).mean(0)).sum() < 120:
            colour = rng.integers(0, 256, 3)  # keep the shape visible on its background
        cv2.fillPoly(img, [pts], tuple(int(v) for v in colour), lineType=cv2.LINE_8)
        xmin, ymin = pts.min(0)
        xmax, ymax = pts.max(0)
        placed.append(np.array([xmin, ymin, xmax + 1, ymax + 1]))
        objects.append((kind, [int(xmin) + 1, int(ymin) + 1, int(xmax) + 1, int(ymax) + 1]))
    return img, objects


def _voc_xml(stem: str, h: int, w: int, objects: list[tuple[str, list[int]]]) -> str:
    rows = [f"<annotation>\n  <folder>{SHAPES_DIR}</folder>\n  <filename>{stem}.jpg</filename>\n"
            f"  <size>\n    <width>{w}</width>\n    <height>{h}</height>\n    <depth>3</depth>\n  </size>\n"]
    for name, (x1, y1, x2, y2) in objects:
        rows.append(f"  <object>\n    <name>{name}</name>\n    <truncated>0</truncated>\n"
                    f"    <difficult>0</difficult>\n    <bndbox>\n      <xmin>{x1}</xmin>\n"
                    f"      <ymin>{y1}</ymin>\n      <xmax>{x2}</xmax>\n      <ymax>{y2}</ymax>\n"
                    f"    </bndbox>\n  </object>\n")
    rows.append("</annotation>\n")
    return "".join(rows)


def generate_shapes(root: str | Path, num_trainval: int = 240, num_test: int = 120,
                    seed: int = 0) -> Path:
    """Write the set under ``<root>/SHAPES`` and return that folder. Skips the work when a
    complete set made with the same settings is already there (a stamp file records them);
    the split files are written last, so an interrupted run is redone, never half-read."""
    base = Path(root) / SHAPES_DIR
    stamp = base / "settings.txt"
    settings = f"num_trainval={num_trainval} num_test={num_test} seed={seed} version={SHAPES_VERSION}\n"
    if stamp.is_file() and stamp.read_text() == settings:
        return base
    for sub in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    if stamp.exists():
        stamp.unlink()
    rng = np.random.default_rng(seed)
    splits: dict[str, list[str]] = {"trainval": [], "test": []}
    for i in range(num_trainval + num_test):
        split = "trainval" if i < num_trainval else "test"
        stem = f"{i:06d}"
        img, objects = render_image(rng)
        ok, jpg = cv2.imencode(".jpg", cv2.cvtColor(img, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])
        assert ok
        write_atomic(base / "JPEGImages" / f"{stem}.jpg", jpg.tobytes())
        write_atomic(base / "Annotations" / f"{stem}.xml",
                      _voc_xml(stem, img.shape[0], img.shape[1], objects).encode())
        splits[split].append(stem)
    for split, stems in splits.items():
        write_atomic(base / "ImageSets" / "Main" / f"{split}.txt", ("\n".join(stems) + "\n").encode())
    # the test images as a list file for scripts/detect.py (input=data/shapes/test_images.txt)
    write_atomic(Path(root) / "test_images.txt",
                  "".join(f"{SHAPES_DIR}/JPEGImages/{s}.jpg\n" for s in splits["test"]).encode())
    write_atomic(stamp, settings.encode())
    return base
