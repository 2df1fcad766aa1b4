"""Score per-image detections against a data set: VOC (devkit) or COCO (pycocotools)."""
from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np

from ..boxes import xyxy_to_voc
from ..data import CocoDetection, DetectionDataset
from ..errors import SppDetError
from ..files import write_json_atomic
from ..visualize import plot_pr_curves
from .coco_ap import coco_evaluate
from .detections import to_results
from .voc_ap import ClassResult, voc_eval_class

log = logging.getLogger(__name__)

METRICS = ("voc07", "voc10", "coco")


def evaluate_voc(dataset: DetectionDataset, detections: list[dict], use_07_metric: bool = True,
                 iou_thresh: float = 0.5) -> tuple[dict, dict[str, ClassResult]]:
    """VOC AP per class. detections: aligned with ``dataset.targets`` (see detections.py).
    Returns (metrics dict, per-class curves). Classes without non-difficult ground truth
    get AP None and are left out of the mAP (the devkit would print NaN)."""
    gt_boxes = [xyxy_to_voc(t.boxes).double().numpy() for t in dataset.targets]
    curves: dict[str, ClassResult] = {}
    for label, name in enumerate(dataset.classes, start=1):
        g_boxes, g_diff = [], []
        for t, b in zip(dataset.targets, gt_boxes):
            m = (t.labels == label).numpy()
            g_boxes.append(b[m])
            g_diff.append(t.ignore.numpy()[m])
        d_img, d_score, d_box = [], [], []
        for i, det in enumerate(detections):
            m = det["labels"] == label
            n = int(m.sum())
            d_img.append(np.full(n, i))
            d_score.append(det["scores"][m].double().numpy())
            d_box.append(xyxy_to_voc(det["boxes"][m]).double().numpy())
        curves[name] = voc_eval_class(np.concatenate(d_img), np.concatenate(d_score),
                                      np.concatenate(d_box).reshape(-1, 4), g_boxes, g_diff,
                                      iou_thresh, use_07_metric)
    aps = {n: (None if math.isnan(c.ap) else c.ap) for n, c in curves.items()}
    valid = [a for a in aps.values() if a is not None]
    metrics = {"metric": "voc07" if use_07_metric else "voc10",
               "mAP": float(np.mean(valid)) if valid else 0.0, "AP": aps,
               "num_images": len(dataset), "num_detections": int(sum(len(d["scores"]) for d in detections))}
    return metrics, curves


def evaluate(dataset: DetectionDataset, detections: list[dict], metric: str) -> tuple[dict, dict]:
    """metrics.json content for ``metric`` in {voc07, voc10, coco}, plus PR curves (VOC
    metrics only; empty for COCO)."""
    if len(detections) != len(dataset):
        raise SppDetError(f"{len(detections)} detection lists for {len(dataset)} images")
    if metric in ("voc07", "voc10"):
        return evaluate_voc(dataset, detections, use_07_metric=metric == "voc07")
    if metric == "coco":
        if not isinstance(dataset, CocoDetection):
            raise SppDetError(f"metric 'coco' needs a COCO-format data set, '{dataset.name}' is not")
        cat_ids = dataset.label_to_cat[1:]
        stats, per_cat, summary = coco_evaluate(dataset.coco, to_results(dataset, detections, for_disk=False),
                                                [t.image_id for t in dataset.targets], cat_ids)
        names = dict(zip(cat_ids, dataset.classes))
        aps = {names[c]: (None if math.isnan(v) else v) for c, v in per_cat.items()}
        return {"metric": "coco", "mAP": stats["AP"], "AP": aps, "stats": stats,
                "num_images": len(dataset), "summary": summary}, {}
    raise SppDetError(f"unknown metric '{metric}' (one of {', '.join(METRICS)})")


def format_table(metrics: dict) -> str:
    """Per-class AP table as text."""
    width = max([len(n) for n in metrics["AP"]] + [5])
    rows = [f"{'class':<{width}}  AP ({metrics['metric']})"]
    for name, ap in metrics["AP"].items():
        rows.append(f"{name:<{width}}  {'   n/a' if ap is None else f'{ap:6.4f}'}")
    rows.append(f"{'mAP':<{width}}  {metrics['mAP']:6.4f}")
    if "stats" in metrics:
        rows.append("  ".join(f"{k}={v:.4f}" for k, v in metrics["stats"].items()))
    return "\n".join(rows)


def score_and_report(dataset: DetectionDataset, detections: list[dict], metric: str,
                     out_dir: Path, plot: bool = True, extra: dict | None = None) -> dict:
    """Evaluate, print the table, write metrics.json (metrics plus ``extra``) and
    pr_curves.png into ``out_dir``."""
    metrics, curves = evaluate(dataset, detections, metric)
    metrics.update(extra or {})
    table = format_table(metrics)
    print(table)
    log.info("\n%s", table)
    write_json_atomic(Path(out_dir) / "metrics.json", metrics)
    if plot and curves:
        plot_pr_curves({n: (c.recall, c.precision, metrics["AP"][n]) for n, c in curves.items()},
                       Path(out_dir) / "pr_curves.png")
    log.info("wrote %s", Path(out_dir) / "metrics.json")
    return metrics
