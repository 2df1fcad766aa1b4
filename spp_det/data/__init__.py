"""Data sets: VOC layout, COCO json, image folders and the synthetic ``shapes`` set."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import SppDetError
from .coco import CocoDetection
from .folder import check_output, list_images, output_names
from .sample import DetectionDataset, Target, check_box, image_digest, read_image
from .shapes import SHAPES_CLASSES, generate_shapes
from .voc import VOC_CLASSES, load_voc

__all__ = ["check_output", "CocoDetection", "DetectionDataset", "Target", "build_dataset", "list_images", "output_names",
           "read_image", "image_digest", "check_box", "generate_shapes", "load_voc", "VOC_CLASSES", "SHAPES_CLASSES"]


def build_dataset(cfg: Any, split: str) -> DetectionDataset:
    """Data set from a ``configs/dataset/*.yaml`` node and a split name (a key of
    ``cfg.splits``, e.g. ``train`` or ``test``). Paths are relative to the current
    directory (the project root), never to Hydra's run directory."""
    if split not in cfg.splits:
        raise SppDetError(f"dataset '{cfg.name}': unknown split '{split}' "
                          f"(known: {', '.join(cfg.splits)})")
    part = cfg.splits[split]
    root = Path(cfg.root)
    classes = list(cfg.classes) if cfg.get("classes") else None
    parts = [(p.dir, p.split, p.get("annotated", True)) for p in part] if cfg.kind in ("shapes", "voc") else None
    if cfg.kind == "shapes":
        generate_shapes(root, **cfg.generate)
        dataset = load_voc(root, parts, classes, cfg.name, SHAPES_CLASSES)
    elif cfg.kind == "voc":
        dataset = load_voc(root, parts, classes, cfg.name, VOC_CLASSES)
    elif cfg.kind == "coco":
        if not part.get("annotated", True):
            raise SppDetError(f"dataset '{cfg.name}' split '{split}': annotated: false is for VOC-layout folders; "
                              f"a COCO image-info file without annotations is not supported")
        ids, exclude = part.get("image_ids"), part.get("exclude_image_ids")
        dataset = CocoDetection(root / part.images, root / part.annotations, classes, cfg.name,
                                image_ids=None if ids is None else [int(i) for i in ids],
                                exclude_image_ids=None if exclude is None else [int(i) for i in exclude])
    else:
        raise SppDetError(f"dataset '{cfg.name}': unknown kind '{cfg.kind}' (voc, coco, shapes)")
    dataset.report_skipped(f"split {split}")
    return dataset
