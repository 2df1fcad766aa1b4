"""False positives broken down by cause (Hoiem, Chodpathumwan and Dai, "Diagnosing Error
in Object Detectors", ECCV 2012; the analysis of R-CNN's Fig. 4 and SPP-net's reviewers).

Written here because no library ships it for arbitrary detections (the authors' tool is
MATLAB). Each false positive of a class, taken in score order with the devkit's matching
(IoU >= 0.5 with an unmatched object of the class is a true positive; `difficult`
objects are neither), gets the first type that fits:

- ``loc``: localisation: IoU in [0.1, 0.5) with an object of its class, or a duplicate
  (IoU >= 0.5 with an object another detection already matched);
- ``sim``: IoU >= 0.1 with an object of a similar class (same set in ``SIMILAR``; COCO:
  same supercategory);
- ``oth``: IoU >= 0.1 with an object of any other class;
- ``bg``: everything else (background).

Summaries count the class's top-ranked false positives: as many as it has objects (the
paper's choice; all of them when it has fewer).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from ..boxes import xyxy_to_voc
from ..data import CocoDetection, DetectionDataset
from ..visualize import draw_detections, plot_fp_breakdown
from .voc_ap import devkit_iou

# Hoiem et al.'s sets of similar VOC classes (all animals with person; all vehicles;
# furniture; aeroplane and bird); a class outside every set has none. COCO: the
# annotation file's supercategories (see ``similar_groups``).
SIMILAR = ({"bird", "cat", "cow", "dog", "horse", "sheep", "person"},
           {"aeroplane", "bicycle", "boat", "bus", "car", "motorbike", "train"},
           {"chair", "diningtable", "sofa"},
           {"aeroplane", "bird"})
TYPES = ("loc", "sim", "oth", "bg")


@dataclass
class FalsePositive:
    score: float
    kind: str              # one of TYPES
    image: int             # index into dataset.targets
    box: list[float]       # xyxy, original pixels


def similar_groups(dataset: DetectionDataset) -> tuple[set[str], ...]:
    """VOC: ``SIMILAR``; COCO: one set per supercategory of the annotation file."""
    if isinstance(dataset, CocoDetection):
        groups: dict[str, set[str]] = {}
        for cat in dataset.coco.cats.values():
            groups.setdefault(cat.get("supercategory", cat["name"]), set()).add(cat["name"])
        return tuple(groups.values())
    return SIMILAR


def similar(a: str, b: str, groups=SIMILAR) -> bool:
    return a != b and any(a in g and b in g for g in groups)


def false_positives(dataset: DetectionDataset, detections: list[dict], groups=SIMILAR,
                    iou_thresh: float = 0.5) -> dict[str, list[FalsePositive]]:
    """Per class, its false positives in descending score order, each with its type.
    detections: aligned with ``dataset.targets`` (boxes xyxy original pixels, labels 1..C)."""
    gt = [(xyxy_to_voc(t.boxes).double().numpy(), t.labels.numpy(), t.ignore.numpy()) for t in dataset.targets]
    out: dict[str, list[FalsePositive]] = {}
    for label, name in enumerate(dataset.classes, start=1):
        rows = [(float(s), i, b) for i, det in enumerate(detections)
                for s, b in zip(det["scores"][det["labels"] == label].tolist(),
                                det["boxes"][det["labels"] == label].tolist())]
        rows.sort(key=lambda r: -r[0])  # stable: ties keep image order, as the devkit
        found = [np.zeros(len(g[1]), dtype=bool) for g in gt]
        fps: list[FalsePositive] = []
        for score, i, box in rows:
            boxes, labels, ignore = gt[i]
            voc_box = xyxy_to_voc(torch.tensor([box], dtype=torch.float64))[0].numpy()
            ov = devkit_iou(voc_box, boxes) if len(boxes) else np.zeros(0)
            mine = np.where(labels == label, ov, -1.0)
            j = int(np.argmax(mine)) if len(mine) else -1
            if j >= 0 and mine[j] >= iou_thresh:
                if ignore[j]:
                    continue
                if not found[i][j]:
                    found[i][j] = True
                    continue
                kind = "loc"  # a duplicate
            elif j >= 0 and mine[j] >= 0.1:
                kind = "loc"
            elif any(o >= 0.1 and similar(name, dataset.classes[int(c) - 1], groups) for o, c in zip(ov, labels)):
                kind = "sim"
            elif any(o >= 0.1 for o, c in zip(ov, labels) if c != label):
                kind = "oth"
            else:
                kind = "bg"
            fps.append(FalsePositive(score, kind, i, box))
        out[name] = fps
    return out


def summarise(fps: dict[str, list[FalsePositive]], dataset: DetectionDataset) -> dict:
    """Per class and over all classes: the fraction of each type among the top-ranked
    false positives (as many as the class has non-difficult objects), and that count."""
    summary, pooled = {}, []
    for label, name in enumerate(dataset.classes, start=1):
        n_obj = int(sum(int(((t.labels == label) & ~t.ignore).sum()) for t in dataset.targets))
        top = fps[name][:n_obj]
        pooled += top
        summary[name] = {"top": len(top), **{k: (sum(f.kind == k for f in top) / len(top) if top else None)
                                             for k in TYPES}}
    summary["all"] = {"top": len(pooled), **{k: (sum(f.kind == k for f in pooled) / len(pooled) if pooled else None)
                                             for k in TYPES}}
    return summary


def write_analysis(dataset: DetectionDataset, detections: list[dict], out_dir: Path, draw: int = 3) -> dict:
    """false_positives.png (per class: the share of each type among its top k false
    positives, k = 1 .. all) and the top ``draw`` false positives of each class drawn into
    ``out_dir/false_positives/``; returns :func:`summarise`'s dict for metrics.json."""
    fps = false_positives(dataset, detections, similar_groups(dataset))
    plot_fp_breakdown({n: [f.kind for f in v] for n, v in fps.items()}, TYPES, Path(out_dir) / "false_positives.png")
    folder = Path(out_dir) / "false_positives"
    folder.mkdir(parents=True, exist_ok=True)
    for label, name in enumerate(dataset.classes, start=1):
        for rank, f in enumerate(fps[name][:draw], start=1):
            image, target = dataset[f.image]
            drawn = draw_detections(image, torch.tensor([f.box]), torch.tensor([label]), torch.tensor([f.score]),
                                    dataset.classes)
            cv2.imwrite(str(folder / f"{name}_{rank}_{f.kind}_{target.image_id}.jpg"), drawn)
    return summarise(fps, dataset)
