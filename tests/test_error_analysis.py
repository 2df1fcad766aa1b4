"""False positives by cause (Hoiem et al. 2012) on a hand-made case: every type once."""
import json

import cv2
import numpy as np
import pytest
import torch

from spp_det.data import DetectionDataset, Target
from spp_det.evaluation.error_analysis import false_positives, summarise, write_analysis

CLASSES = ["cat", "dog", "person", "chair"]  # cat ~ dog ~ person (Hoiem: animals with person)


def _dataset(tmp_path):
    images = []
    for k in range(2):
        path = tmp_path / f"im{k}.png"
        cv2.imwrite(str(path), np.full((500, 500, 3), 40 * (k + 1), np.uint8))
        images.append(path)
    return DetectionDataset("hand", CLASSES, [
        Target("im0", images[0], 500, 500,
               torch.tensor([[0.0, 0, 100, 100], [200, 0, 300, 100], [0, 200, 100, 300]]),
               torch.tensor([1, 2, 3]), torch.tensor([False, False, False])),
        Target("im1", images[1], 500, 500, torch.tensor([[0.0, 0, 50, 50], [100, 100, 150, 150]]),
               torch.tensor([1, 4]), torch.tensor([False, True])),  # a difficult chair
    ])


def _det(rows):
    return {"boxes": torch.tensor([r[2] for r in rows], dtype=torch.float32).reshape(-1, 4),
            "scores": torch.tensor([r[1] for r in rows]), "labels": torch.tensor([r[0] for r in rows])}


DETECTIONS = [
    _det([(1, 0.95, [0, 0, 100, 100]),      # cat: true positive
          (1, 0.90, [0, 0, 100, 100]),      # the same cat again: duplicate -> loc
          (1, 0.85, [0, 0, 100, 40]),       # IoU 0.40 with the cat -> loc
          (1, 0.80, [200, 0, 300, 100]),    # on the dog, a similar class -> sim
          (1, 0.70, [0, 200, 100, 300]),    # on the person -> sim (animals with person)
          (1, 0.60, [400, 400, 450, 450]),  # nothing there -> bg
          (2, 0.90, [0, 0, 100, 100]),      # a dog box on the cat -> sim
          (3, 0.40, [0, 0, 100, 100]),      # a person box on the cat -> sim (animals with person)
          (4, 0.30, [0, 0, 100, 100])]),    # a chair box on the cat -> oth (furniture)
    _det([(1, 0.50, [0, 0, 50, 50]),        # the second cat: true positive
          (4, 0.99, [100, 100, 150, 150])]),  # the difficult chair: neither
]


def test_each_false_positive_gets_its_type_in_score_order(tmp_path):
    fps = false_positives(_dataset(tmp_path), DETECTIONS)
    assert [f.kind for f in fps["cat"]] == ["loc", "loc", "sim", "sim", "bg"]
    assert [f.score for f in fps["cat"]] == pytest.approx([0.90, 0.85, 0.80, 0.70, 0.60])
    assert [f.kind for f in fps["dog"]] == ["sim"] and [f.kind for f in fps["person"]] == ["sim"]
    # the chair box on the cat is 'oth'; the one on the difficult chair is neither true nor false
    assert [(f.kind, f.image) for f in fps["chair"]] == [("oth", 0)]


def test_summary_counts_the_top_false_positives_per_object_and_writes_pictures(tmp_path):
    ds = _dataset(tmp_path)
    summary = summarise(false_positives(ds, DETECTIONS), ds)
    # cat has 2 objects: its top 2 false positives, both localisation errors
    assert summary["cat"] == {"top": 2, "loc": 1.0, "sim": 0.0, "oth": 0.0, "bg": 0.0}
    assert summary["dog"]["top"] == 1 and summary["dog"]["sim"] == 1.0
    assert summary["chair"] == {"top": 0, "loc": None, "sim": None, "oth": None, "bg": None}
    # pooled over classes: 2 loc (cat) + 1 sim (dog) + 1 sim (person); chair has no object to count
    assert summary["all"]["top"] == 4 and summary["all"]["loc"] == pytest.approx(0.5)
    assert (summary["all"]["sim"], summary["all"]["oth"], summary["all"]["bg"]) == (0.5, 0.0, 0.0)

    out = tmp_path / "run"
    assert write_analysis(ds, DETECTIONS, out, draw=2) == summary
    drawn = sorted(p.name for p in (out / "false_positives").iterdir())
    assert drawn == ["cat_1_loc_im0.jpg", "cat_2_loc_im0.jpg", "chair_1_oth_im0.jpg", "dog_1_sim_im0.jpg",
                     "person_1_sim_im0.jpg"]
    assert (out / "false_positives.png").stat().st_size > 0
    json.dumps(summary)  # goes into metrics.json as is
