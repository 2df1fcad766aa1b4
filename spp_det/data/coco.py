"""COCO instances format through pycocotools.

Contiguous labels 1..C map to COCO category ids (``label_to_cat``); ``iscrowd`` boxes are
kept with ``ignore=True``; images without annotations stay in the set (they hold only
negatives). ``classes`` restricts the set to some categories by name.
"""
from __future__ import annotations

import contextlib
import io
from pathlib import Path

import torch
from pycocotools.coco import COCO

from ..boxes import xywh_to_xyxy
from .sample import DetectionDataset, Target
from ..errors import SppDetError


def load_coco_api(annotation_file: str | Path) -> COCO:
    """pycocotools' COCO object, quietly; a clear error for a missing or broken file."""
    path = Path(annotation_file)
    if not path.is_file():
        raise SppDetError(f"{path}: COCO annotation file not found (set dataset.root)")
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            return COCO(str(path))
    except (ValueError, KeyError, TypeError) as exc:
        raise SppDetError(f"{path}: not a COCO instances file ({exc})") from exc


class CocoDetection(DetectionDataset):
    """COCO images and boxes. Extra attributes: ``coco`` (the pycocotools object) and
    ``label_to_cat`` (list: contiguous label -> COCO category id, index 0 unused)."""

    def __init__(self, image_dir: str | Path, annotation_file: str | Path,
                 classes: list[str] | None = None, name: str = "coco") -> None:
        coco = load_coco_api(annotation_file)
        cats = sorted(coco.loadCats(coco.getCatIds()), key=lambda c: c["id"])
        by_name = {c["name"]: c["id"] for c in cats}
        if classes:
            unknown = [c for c in classes if c not in by_name]
            if unknown:
                raise SppDetError(f"{annotation_file}: unknown categories {unknown}; known: "
                                  f"{sorted(by_name)}")
            cat_ids = [by_name[c] for c in classes]
        else:
            classes = [c["name"] for c in cats]
            cat_ids = [c["id"] for c in cats]
        cat_to_label = {cid: i + 1 for i, cid in enumerate(cat_ids)}
        image_dir = Path(image_dir)
        targets = []
        for image_id in sorted(coco.getImgIds()):
            info = coco.imgs[image_id]
            boxes, labels, ignore = [], [], []
            for ann in coco.imgToAnns.get(image_id, []):
                label = cat_to_label.get(ann["category_id"])
                x, y, w, h = ann["bbox"]
                if label is None or w <= 0 or h <= 0:
                    continue  # other categories; zero-area boxes cannot be detected
                boxes.append([x, y, w, h])
                labels.append(label)
                ignore.append(bool(ann.get("iscrowd", 0)))
            targets.append(Target(
                image_id=image_id, path=image_dir / info["file_name"],
                height=int(info["height"]), width=int(info["width"]),
                boxes=xywh_to_xyxy(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)),
                labels=torch.tensor(labels, dtype=torch.int64),
                ignore=torch.tensor(ignore, dtype=torch.bool)))
        if not targets:
            raise SppDetError(f"{annotation_file}: no images")
        super().__init__(name, list(classes), targets)
        self.coco = coco
        self.label_to_cat = [0] + cat_ids
