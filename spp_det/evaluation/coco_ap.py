"""COCO AP through pycocotools (the reference implementation, used as is)."""
from __future__ import annotations

import contextlib
import io

from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

COCO_STAT_NAMES = [
    "AP", "AP50", "AP75", "APs", "APm", "APl",
    "AR1", "AR10", "AR100", "ARs", "ARm", "ARl",
]


def coco_evaluate(coco_gt: COCO, results: list[dict], image_ids: list[int] | None = None,
                  cat_ids: list[int] | None = None) -> tuple[dict[str, float], dict[int, float], str]:
    """Score a COCO results list.

    Returns (the 12 stats by name, AP@[.5:.95] per category id, pycocotools' printed summary).
    ``image_ids``/``cat_ids`` restrict the evaluation (a subset of images or categories).
    An empty results list scores 0 everywhere (pycocotools cannot load it).
    """
    cat_ids = list(cat_ids) if cat_ids is not None else sorted(coco_gt.getCatIds())
    if not results:
        return {k: 0.0 for k in COCO_STAT_NAMES}, {c: 0.0 for c in cat_ids}, "no detections\n"
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        coco_dt = coco_gt.loadRes(results)
        ev = COCOeval(coco_gt, coco_dt, "bbox")
        if image_ids is not None:
            ev.params.imgIds = sorted(image_ids)
        ev.params.catIds = cat_ids
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    stats = {k: float(v) for k, v in zip(COCO_STAT_NAMES, ev.stats)}
    # precision: (T iou, R recall, K cat, A area, M maxdets); area 'all', 100 dets.
    # Axis K follows ev.params.catIds, which COCOeval.evaluate() re-sorts (np.unique), not
    # the order the caller gave: index it by that list, then report in the caller's order.
    prec = ev.eval["precision"][:, :, :, 0, -1]
    position = {int(cid): k for k, cid in enumerate(ev.params.catIds)}
    per_cat = {}
    for cid in cat_ids:
        k = position[int(cid)]
        p = prec[:, :, k]
        p = p[p > -1]
        per_cat[cid] = float(p.mean()) if p.size else float("nan")
    return stats, per_cat, out.getvalue()
