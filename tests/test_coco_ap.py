import contextlib
import io
import json

import numpy as np
import pytest
from pycocotools.cocoeval import COCOeval

from conftest import COCO128, need_shared
from spp_det.data import CocoDetection
from spp_det.evaluation.coco_ap import COCO_STAT_NAMES, coco_evaluate
from spp_det.evaluation.detections import from_results, to_results
from spp_det.evaluation.evaluate import evaluate


def _noisy_results(ds, seed=0):
    rng = np.random.default_rng(seed)
    results = []
    for ann in ds.coco.dataset["annotations"]:
        if rng.random() < 0.2:
            continue  # some misses
        x, y, w, h = ann["bbox"]
        jit = rng.normal(0, 0.08, 4) * [w, h, w, h]
        results.append({"image_id": ann["image_id"], "category_id": ann["category_id"],
                        "bbox": [x + jit[0], y + jit[1], max(1.0, w + jit[2]), max(1.0, h + jit[3])],
                        "score": float(rng.random())})
    for img_id in list(ds.coco.imgs)[:40]:  # some false positives
        results.append({"image_id": img_id, "category_id": 1, "bbox": [5, 5, 50, 60], "score": 0.3})
    return results


def test_coco_ap_equals_pycocotools_direct():
    need_shared(COCO128)
    ds = CocoDetection(COCO128 / "train2017", COCO128 / "annotations" / "instances_train2017.json")
    results = _noisy_results(ds)
    with contextlib.redirect_stdout(io.StringIO()):
        ev = COCOeval(ds.coco, ds.coco.loadRes(results), "bbox")
        ev.evaluate(); ev.accumulate(); ev.summarize()
    stats, per_cat, _ = coco_evaluate(ds.coco, results)
    assert [stats[k] for k in COCO_STAT_NAMES] == pytest.approx(list(ev.stats))
    assert 0.3 < stats["AP"] < 0.9
    # through the data set's own path: to/from the results format and back
    dets = from_results(ds, json.loads(json.dumps(results)))
    metrics, _ = evaluate(ds, dets, "coco")
    assert metrics["mAP"] == pytest.approx(ev.stats[0], abs=2e-3)  # bbox rounding to 0.01 px
    assert len(to_results(ds, dets)) == len(results)


def test_coco_category_subset_evaluation():
    need_shared(COCO128)
    ds = CocoDetection(COCO128 / "train2017", COCO128 / "annotations" / "instances_train2017.json",
                       classes=["person"])
    results = _noisy_results(ds)
    person_only = [r for r in results if r["category_id"] == 1]
    with contextlib.redirect_stdout(io.StringIO()):
        ev = COCOeval(ds.coco, ds.coco.loadRes(person_only), "bbox")
        ev.params.catIds = [1]
        ev.evaluate(); ev.accumulate(); ev.summarize()
    metrics, _ = evaluate(ds, from_results(ds, results), "coco")
    assert list(metrics["AP"]) == ["person"]
    assert metrics["mAP"] == pytest.approx(ev.stats[0], abs=2e-3)


def test_empty_results_score_zero():
    need_shared(COCO128)
    ds = CocoDetection(COCO128 / "train2017", COCO128 / "annotations" / "instances_train2017.json")
    stats, _, _ = coco_evaluate(ds.coco, [])
    assert stats["AP"] == 0.0


def test_per_class_ap_follows_the_users_class_order():
    """pycocotools sorts params.catIds; classes given out of id order must keep their APs."""
    need_shared(COCO128)
    ds = CocoDetection(COCO128 / "train2017", COCO128 / "annotations" / "instances_train2017.json",
                       classes=["dog", "person"])  # ids 18 and 1: out of id order
    results = [r for r in _noisy_results(ds) if r["category_id"] in (1, 18)]
    metrics, _ = evaluate(ds, from_results(ds, results), "coco")
    direct = {}
    for name, cid in (("dog", 18), ("person", 1)):
        with contextlib.redirect_stdout(io.StringIO()):
            ev = COCOeval(ds.coco, ds.coco.loadRes(results), "bbox")
            ev.params.catIds = [cid]
            ev.evaluate(); ev.accumulate(); ev.summarize()
        direct[name] = ev.stats[0]
    assert abs(direct["dog"] - direct["person"]) > 0.05  # a swap would show
    assert list(metrics["AP"]) == ["dog", "person"]
    assert metrics["AP"]["dog"] == pytest.approx(direct["dog"], abs=2e-3)
    assert metrics["AP"]["person"] == pytest.approx(direct["person"], abs=2e-3)


def test_scores_are_not_rounded_before_scoring():
    """Every person box found exactly at 0.999999, one false positive on the first image at
    0.999996: rounded to 5 decimals both were 1.0 and the tie went by image order, putting
    the false positive first. pycocotools on the exact scores: AP 1.0."""
    need_shared(COCO128)
    ds = CocoDetection(COCO128 / "train2017", COCO128 / "annotations" / "instances_train2017.json",
                       classes=["person"])
    anns = [a for a in ds.coco.dataset["annotations"] if a["category_id"] == 1]
    first = min(a["image_id"] for a in anns)
    results = [{"image_id": first, "category_id": 1, "bbox": [0, 0, 3, 3], "score": 0.999996}]
    results += [{"image_id": a["image_id"], "category_id": 1, "bbox": list(a["bbox"]), "score": 0.999999}
                for a in anns]
    with contextlib.redirect_stdout(io.StringIO()):
        ev = COCOeval(ds.coco, ds.coco.loadRes(results), "bbox")
        ev.params.catIds = [1]
        ev.evaluate(); ev.accumulate(); ev.summarize()
    assert ev.stats[1] == pytest.approx(1.0)  # AP50: the oracle ranks the false positive last
    metrics, _ = evaluate(ds, from_results(ds, results), "coco")
    assert metrics["stats"]["AP50"] == pytest.approx(1.0, abs=1e-9)
    assert metrics["mAP"] == pytest.approx(ev.stats[0], abs=1e-6)
    written = to_results(ds, from_results(ds, results))
    assert sorted(r["score"] for r in written)[0] == pytest.approx(0.999996, abs=1e-7)
