"""Data sets: VOC layout, COCO json, image folders and the synthetic ``shapes`` set."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import SppDetError
from .coco import CocoDetection
from .folder import list_images
from .sample import DetectionDataset, Target, read_image
from .shapes import SHAPES_CLASSES, SHAPES_VERSION, generate_shapes
from .voc import VOC_CLASSES, load_voc

__all__ = ["CocoDetection", "DetectionDataset", "Target", "build_dataset", "list_images",
           "read_image", "generate_shapes", "load_voc", "VOC_CLASSES", "SHAPES_CLASSES"]


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
    if cfg.kind == "shapes":
        generate_shapes(root, **cfg.generate)
        # the generator settings are part of the name, so caches keyed by it (proposals)
        # never serve boxes of a differently generated set
        g = cfg.generate
        name = f"{cfg.name}-v{SHAPES_VERSION}-s{g.seed}-{g.num_trainval}-{g.num_test}"
        return load_voc(root, [(p.dir, p.split) for p in part], classes or SHAPES_CLASSES, name)
    if cfg.kind == "voc":
        return load_voc(root, [(p.dir, p.split) for p in part], classes or VOC_CLASSES, cfg.name)
    if cfg.kind == "coco":
        return CocoDetection(root / part.images, root / part.annotations, classes, cfg.name)
    raise SppDetError(f"dataset '{cfg.name}': unknown kind '{cfg.kind}' (voc, coco, shapes)")
