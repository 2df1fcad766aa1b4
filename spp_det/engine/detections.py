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
import os
from pathlib import Path

import torch

from ..boxes import xywh_to_xyxy, xyxy_to_xywh
from ..data import CocoDetection, DetectionDataset
from ..errors import SppDetError


def category_ids(dataset: DetectionDataset) -> list:
    """Label -> category_id written to the results file (index 0 unused)."""
    if isinstance(dataset, CocoDetection):
        return list(dataset.label_to_cat)
    return [None] + list(dataset.classes)


def image_results(image_id: str | int, det: dict, cats: list) -> list[dict]:
    """One image's detections -> results entries; ``cats[label]`` is the category_id."""
    xywh = xyxy_to_xywh(det["boxes"]).tolist()
    return [{"image_id": image_id, "category_id": cats[label], "bbox": [round(v, 2) for v in box],
             "score": round(float(score), 5)}
            for box, score, label in zip(xywh, det["scores"].tolist(), det["labels"].tolist())]


def to_results(dataset: DetectionDataset, detections: list[dict]) -> list[dict]:
    """Per-image detections (aligned with ``dataset.targets``) -> results list."""
    cats = category_ids(dataset)
    return [r for target, det in zip(dataset.targets, detections) for r in image_results(target.image_id, det, cats)]


def from_results(dataset: DetectionDataset, results: list[dict], source: str = "detections") -> list[dict]:
    """Results list -> per-image detections aligned with ``dataset.targets``. Entries of
    categories outside the data set's classes are dropped (a class-restricted evaluation);
    an image id the data set does not know is an error."""
    cat_to_label = {c: i for i, c in enumerate(category_ids(dataset)) if i > 0}
    index = {t.image_id: i for i, t in enumerate(dataset.targets)}
    per_image: list[list] = [[] for _ in dataset.targets]
    for n, r in enumerate(results):
        try:
            i = index[r["image_id"]]
            label = cat_to_label.get(r["category_id"])
            box, score = [float(v) for v in r["bbox"]], float(r["score"])
        except KeyError as exc:
            raise SppDetError(f"{source}: entry {n} has unknown or missing {exc} "
                              f"(image ids must be those of dataset '{dataset.name}')") from exc
        except (TypeError, ValueError) as exc:
            raise SppDetError(f"{source}: entry {n} is malformed: {r}") from exc
        if label is not None:
            per_image[i].append((box, score, label))
    out = []
    for dets in per_image:
        boxes = torch.tensor([d[0] for d in dets], dtype=torch.float32).reshape(-1, 4)
        out.append({"boxes": xywh_to_xyxy(boxes),
                    "scores": torch.tensor([d[1] for d in dets], dtype=torch.float32),
                    "labels": torch.tensor([d[2] for d in dets], dtype=torch.int64)})
    return out


def write_json_atomic(path: str | Path, obj) -> None:
    """Write JSON through a temp file + rename, so a reader never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=None if isinstance(obj, list) else 2))
    os.replace(tmp, path)


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
