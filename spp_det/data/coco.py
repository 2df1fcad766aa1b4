"""COCO instances format through pycocotools.

Contiguous labels 1..C map to COCO category ids (``label_to_cat``); ``iscrowd`` boxes are
kept with ``ignore=True``; images without annotations stay in the set (they hold only
negatives). ``classes`` restricts the set to some categories by name.
"""
from __future__ import annotations

import contextlib
import io
from collections import Counter
from pathlib import Path

import torch
from pycocotools.coco import COCO

from ..errors import SppDetError
from .sample import DetectionDataset, Target, check_box


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
    ``label_to_cat`` (list: contiguous label -> COCO category id, index 0 unused).

    ``image_ids`` keeps only those images, ``exclude_image_ids`` drops those: disjoint
    train/test parts of one annotation file (coco128). Annotation anomalies (an image id
    not in ``images``, a category id not in ``categories``, a malformed or negative-size
    box, a box far outside its image) are errors naming the file and the annotation id;
    zero-size boxes and objects of categories outside ``classes`` are left out, counted in
    ``skipped``.
    """

    def __init__(self, image_dir: str | Path, annotation_file: str | Path,
                 classes: list[str] | None = None, name: str = "coco",
                 image_ids: list[int] | None = None, exclude_image_ids: list[int] | None = None) -> None:
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
        cat_names = {c["id"]: c["name"] for c in cats}
        for ann in coco.dataset.get("annotations", []):
            where = f"{annotation_file}: annotation id {ann.get('id')}"
            if ann.get("image_id") not in coco.imgs:
                raise SppDetError(f"{where} refers to image id {ann.get('image_id')}, which is not in 'images'")
            if ann.get("category_id") not in cat_names:
                raise SppDetError(f"{where} has category id {ann.get('category_id')}, which is not in "
                                  f"'categories'")
        keep = set(coco.imgs)
        if image_ids is not None:
            missing = sorted(set(image_ids) - keep)
            if missing:
                raise SppDetError(f"{annotation_file}: image ids {missing[:5]} of the split are not in 'images'")
            keep = set(image_ids)
        keep -= set(exclude_image_ids or [])
        image_dir = Path(image_dir)
        skipped: Counter = Counter()
        targets = []
        for image_id in sorted(keep):
            info = coco.imgs[image_id]
            height, width = int(info["height"]), int(info["width"])
            boxes, labels, ignore = [], [], []
            for ann in coco.imgToAnns.get(image_id, []):
                label = cat_to_label.get(ann["category_id"])
                if label is None:
                    skipped[f"outside dataset.classes: {cat_names[ann['category_id']]}"] += 1
                    continue
                what = f"annotation id {ann.get('id')}"
                try:
                    x, y, w, h = (float(v) for v in ann["bbox"])
                except (KeyError, TypeError, ValueError) as exc:
                    raise SppDetError(f"{annotation_file}: {what} has no [x, y, w, h] 'bbox'") from exc
                if w < 0 or h < 0:
                    raise SppDetError(f"{annotation_file}: {what} has a negative size: bbox {ann['bbox']}")
                if w == 0 or h == 0:
                    skipped["zero-size boxes"] += 1  # cannot be detected nor matched
                    continue
                box, clipped = check_box(annotation_file, what, [x, y, x + w, y + h], height, width)
                if clipped:
                    skipped["clipped to the image (kept)"] += 1
                boxes.append(box)
                labels.append(label)
                ignore.append(bool(ann.get("iscrowd", 0)))
            targets.append(Target(
                image_id=image_id, path=image_dir / info["file_name"], height=height, width=width,
                boxes=torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                labels=torch.tensor(labels, dtype=torch.int64),
                ignore=torch.tensor(ignore, dtype=torch.bool)))
        if not targets:
            raise SppDetError(f"{annotation_file}: no images")
        super().__init__(name, list(classes), targets, list(by_name), dict(skipped))
        self.coco = coco
        self.label_to_cat = [0] + cat_ids
        self.all_cat_ids = set(cat_names)
