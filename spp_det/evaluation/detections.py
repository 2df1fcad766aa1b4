"""Detections in memory and on disk.

In memory, one entry per image: ``{"boxes": (K, 4) float xyxy original pixels,
"scores": (K,), "labels": (K,) int64 1..C}``.
On disk, a JSON list of ``{"image_id", "category_id", "bbox": [x, y, w, h], "score"}``
in original-image pixels, 0-based continuous: exactly the COCO results format for COCO
data (ids from the annotation file); for VOC-layout data ``image_id`` is the file stem
and ``category_id`` the class name.
"""
from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import torch

from ..boxes import xywh_to_xyxy, xyxy_to_xywh
from ..data import CocoDetection, DetectionDataset
from ..errors import SppDetError

log = logging.getLogger(__name__)


def category_ids(dataset: DetectionDataset) -> list:
    """Label -> category_id written to the results file (index 0 unused)."""
    if isinstance(dataset, CocoDetection):
        return list(dataset.label_to_cat)
    return [None] + list(dataset.classes)


def image_results(image_id: str | int, det: dict, cats: list, for_disk: bool = True) -> list[dict]:
    """One image's detections -> results entries; ``cats[label]`` is the category_id.
    Scores keep full precision always: rounded, near-equal scores tie (every softmax score
    above 0.999995 became 1.0) and ties are broken by image order, which changes AP.
    ``for_disk`` rounds box coordinates to 0.01 px (smaller files), never the score."""
    xywh = xyxy_to_xywh(det["boxes"]).tolist()
    return [{"image_id": image_id, "category_id": cats[label],
             "bbox": [round(v, 2) for v in box] if for_disk else box, "score": float(score)}
            for box, score, label in zip(xywh, det["scores"].tolist(), det["labels"].tolist())]


def to_results(dataset: DetectionDataset, detections: list[dict], for_disk: bool = True) -> list[dict]:
    """Per-image detections (aligned with ``dataset.targets``) -> results list
    (``for_disk=False``: unrounded boxes, for scoring in memory)."""
    cats = category_ids(dataset)
    return [r for target, det in zip(dataset.targets, detections)
            for r in image_results(target.image_id, det, cats, for_disk)]


def _known_categories(dataset: DetectionDataset) -> set:
    """Every category_id a results file may name for this data set: COCO ids of the
    annotation file, or the class names the VOC layout knows."""
    if isinstance(dataset, CocoDetection):
        return set(dataset.all_cat_ids)
    return set(dataset.known_classes)


def _check_entry(r, n: int, source: str, index: dict, known: set) -> tuple[int, object, list[float], float]:
    """One results entry -> (image position, category_id, [x, y, w, h], score); anything
    malformed is an error naming the file, the entry index and the problem."""
    where = f"{source}: entry {n}"
    if not isinstance(r, dict):
        raise SppDetError(f"{where} is not an object: {r!r}")
    for key in ("image_id", "category_id", "bbox", "score"):
        if key not in r:
            raise SppDetError(f"{where} has no '{key}'")
    if r["image_id"] not in index:
        raise SppDetError(f"{where}: image_id {r['image_id']!r} is not an image of the evaluated split")
    if r["category_id"] not in known:
        raise SppDetError(f"{where}: unknown category_id {r['category_id']!r}")
    try:
        box = [float(v) for v in r["bbox"]]
        score = float(r["score"])
    except (TypeError, ValueError):
        raise SppDetError(f"{where}: 'bbox' must be 4 numbers and 'score' a number: {r}") from None
    if len(box) != 4:
        raise SppDetError(f"{where}: 'bbox' must be [x, y, w, h], got {len(box)} numbers")
    if not all(math.isfinite(v) for v in box):
        raise SppDetError(f"{where}: 'bbox' {r['bbox']} is not finite")
    if not math.isfinite(score):
        raise SppDetError(f"{where}: 'score' is {score}")
    if box[2] < 0 or box[3] < 0:
        raise SppDetError(f"{where}: 'bbox' {r['bbox']} has a negative width or height")
    return index[r["image_id"]], r["category_id"], box, score


def from_results(dataset: DetectionDataset, results: list[dict], source: str = "detections") -> list[dict]:
    """Results list -> per-image detections aligned with ``dataset.targets``.

    Every entry is checked (``_check_entry``). Entries of categories the data set knows
    but its ``classes`` leave out are dropped, counted and reported once (a class-restricted
    evaluation); an unknown image or category id is an error."""
    cat_to_label = {c: i for i, c in enumerate(category_ids(dataset)) if i > 0}
    index = {t.image_id: i for i, t in enumerate(dataset.targets)}
    known = _known_categories(dataset)
    per_image: list[list] = [[] for _ in dataset.targets]
    dropped = 0
    for n, r in enumerate(results):
        i, cat, box, score = _check_entry(r, n, source, index, known)
        if cat in cat_to_label:
            per_image[i].append((box, score, cat_to_label[cat]))
        else:
            dropped += 1
    if dropped:
        log.warning("%s: %d detection(s) of categories outside dataset.classes left out", source, dropped)
    out = []
    for dets in per_image:
        boxes = torch.tensor([d[0] for d in dets], dtype=torch.float32).reshape(-1, 4)
        out.append({"boxes": xywh_to_xyxy(boxes),
                    "scores": torch.tensor([d[1] for d in dets], dtype=torch.float32),
                    "labels": torch.tensor([d[2] for d in dets], dtype=torch.int64)})
    return out


def load_results(path: str | Path) -> list[dict]:
    """Read a detections file, with a clear error for a missing or malformed one."""
    path = Path(path)
    if not path.is_file():
        raise SppDetError(f"{path}: detections file not found")
    try:
        results = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise SppDetError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(results, list):
        raise SppDetError(f"{path}: expected a JSON list of detections")
    return results
