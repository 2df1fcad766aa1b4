"""Results files: every entry checked, errors name the file, the entry and the problem."""
import math

import pytest
import torch

from conftest import COCO128, need_shared
from spp_det.data import CocoDetection, load_voc
from spp_det.data.shapes import SHAPES_CLASSES
from spp_det.evaluation.detections import from_results
from spp_det.errors import SppDetError


def _entry(**kw):
    e = {"image_id": "000003", "category_id": "ellipse", "bbox": [1.0, 2.0, 10.0, 20.0], "score": 0.5}
    e.update(kw)
    return e


@pytest.mark.parametrize("bad, message", [
    (_entry(score=float("nan")), "d.json: entry 1: 'score' is nan"),
    (_entry(score=float("inf")), "d.json: entry 1: 'score' is inf"),
    (_entry(category_id="elipse"), "d.json: entry 1: unknown category_id 'elipse'"),
    (_entry(bbox=[1, 2, -3, 4]), "d.json: entry 1: 'bbox' [1, 2, -3, 4] has a negative width or height"),
    (_entry(bbox=[1, 2, 3, float("nan")]), "d.json: entry 1: 'bbox' [1, 2, 3, nan] is not finite"),
    (_entry(bbox=[1, 2, 3]), "d.json: entry 1: 'bbox' must be [x, y, w, h], got 3 numbers"),
    ({k: v for k, v in _entry().items() if k != "score"}, "d.json: entry 1 has no 'score'"),
    ({k: v for k, v in _entry().items() if k != "bbox"}, "d.json: entry 1 has no 'bbox'"),
    (_entry(image_id="999999"), "d.json: entry 1: image_id '999999' is not an image of the evaluated split"),
])
def test_malformed_entries_are_errors(shapes_root, bad, message):
    ds = load_voc(shapes_root, [("SHAPES", "trainval")], default_classes=SHAPES_CLASSES)
    with pytest.raises(SppDetError) as err:
        from_results(ds, [_entry(), bad], "d.json")
    assert str(err.value) == message


def test_known_classes_outside_the_selection_are_dropped_and_counted(shapes_root, caplog):
    ds = load_voc(shapes_root, [("SHAPES", "trainval")], ["rectangle"], default_classes=SHAPES_CLASSES)
    dets = from_results(ds, [_entry(), _entry(category_id="rectangle", score=0.25)], "d.json")
    assert sum(len(d["scores"]) for d in dets) == 1
    i = [t.image_id for t in ds.targets].index("000003")
    assert dets[i]["labels"].tolist() == [1] and dets[i]["scores"].tolist() == [0.25]
    assert dets[i]["boxes"].tolist() == [[1.0, 2.0, 11.0, 22.0]]
    assert "d.json: 1 detection(s) of categories outside dataset.classes left out" in caplog.text


def test_coco_unknown_category_id_is_an_error_known_one_is_dropped():
    need_shared(COCO128)
    ds = CocoDetection(COCO128 / "train2017", COCO128 / "annotations" / "instances_train2017.json", ["dog", "person"])
    img = ds.targets[0].image_id
    ok = {"image_id": img, "category_id": 18, "bbox": [0, 0, 5, 5], "score": 0.9}
    dets = from_results(ds, [ok, {**ok, "category_id": 3}], "r.json")  # 3 = car: known, not selected
    assert dets[0]["labels"].tolist() == [1]  # dog is label 1 in the user's order
    with pytest.raises(SppDetError, match=r"^r.json: entry 1: unknown category_id 12$"):
        from_results(ds, [ok, {**ok, "category_id": 12}], "r.json")  # 12: no such COCO category
    assert math.isfinite(float(dets[0]["scores"][0])) and torch.equal(dets[0]["boxes"], torch.tensor([[0.0, 0, 5, 5]]))
