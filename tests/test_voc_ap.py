import numpy as np
import pytest
import torch

from spp_det.data import DetectionDataset, Target
from spp_det.evaluation.evaluate import evaluate
from spp_det.evaluation.voc_ap import devkit_iou, voc_ap, voc_eval_class


def test_devkit_iou_uses_inclusive_pixels():
    # VOC [1,1,10,10] and [6,1,15,10]: 5x10 of 10x10 pixels shared -> 50 / 150
    assert devkit_iou(np.array([1, 1, 10, 10.0]), np.array([[6, 1, 15, 10.0]]))[0] == pytest.approx(1 / 3)
    # one shared pixel column: iw = 1 (with +1), not 0
    assert devkit_iou(np.array([1, 1, 10, 10.0]), np.array([[10, 1, 19, 10.0]]))[0] == pytest.approx(10 / 190)


def _case():
    # one image; 2 normal gt + 1 difficult gt
    gt = [np.array([[1, 1, 10, 10], [31, 31, 50, 50], [61, 1, 80, 20]], float)]
    diff = [np.array([False, False, True])]
    boxes = np.array([[1, 1, 10, 10],      # .9 TP on gt0
                      [1, 1, 10, 11],      # .8 duplicate of gt0 -> FP
                      [61, 1, 80, 20],     # .7 on the difficult one -> ignored
                      [100, 100, 120, 120],  # .6 FP
                      [31, 31, 50, 50]], float)  # .5 TP on gt1
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5])
    return np.zeros(5, int), scores, boxes, gt, diff


def test_hand_computed_ap_07_and_area():
    # tp cum [1,1,1,1,2], fp cum [0,1,1,2,2] -> recall [.5,.5,.5,.5,1], prec [1,.5,.5,1/3,.5]
    r07 = voc_eval_class(*_case(), use_07_metric=True)
    assert r07.num_gt == 2
    assert r07.recall.tolist() == [0.5, 0.5, 0.5, 0.5, 1.0]
    assert r07.ap == pytest.approx(8.5 / 11)  # t<=.5: 1.0 (6 points); t>=.6: .5 (5 points)
    r10 = voc_eval_class(*_case(), use_07_metric=False)
    assert r10.ap == pytest.approx(0.5 * 1.0 + 0.5 * 0.5)


def test_ties_keep_input_order():
    gt = [np.array([[1, 1, 10, 10]], float)]
    diff = [np.array([False])]
    boxes = np.array([[50, 50, 60, 60], [1, 1, 10, 10]], float)
    fp_first = voc_eval_class(np.zeros(2, int), np.array([0.5, 0.5]), boxes, gt, diff, use_07_metric=False)
    tp_first = voc_eval_class(np.zeros(2, int), np.array([0.5, 0.5]), boxes[::-1].copy(), gt, diff,
                              use_07_metric=False)
    assert fp_first.ap == pytest.approx(0.5)
    assert tp_first.ap == pytest.approx(1.0)


def test_voc_ap_11_point_vs_area_differ():
    rec, prec = np.array([0.25, 0.5]), np.array([1.0, 0.5])
    assert voc_ap(rec, prec, True) == pytest.approx((3 * 1.0 + 3 * 0.5) / 11)
    assert voc_ap(rec, prec, False) == pytest.approx(0.25 + 0.25 * 0.5)


def test_dataset_level_evaluation_with_missing_class():
    t = Target("img", "img.jpg", 100, 100, boxes=torch.tensor([[0.0, 0, 10, 10], [20, 20, 40, 40]]),
               labels=torch.tensor([1, 2]), ignore=torch.tensor([False, False]))
    ds = DetectionDataset("toy", ["a", "b", "c"], [t])
    dets = [{"boxes": torch.tensor([[0.0, 0, 10, 10]]), "scores": torch.tensor([0.9]),
             "labels": torch.tensor([1])}]
    m, _ = evaluate(ds, dets, "voc07")
    # b: no detections; c: no ground truth (left out of the mAP)
    assert m["AP"]["a"] == pytest.approx(1.0) and m["AP"]["b"] == 0.0 and m["AP"]["c"] is None
    assert m["mAP"] == pytest.approx(0.5)
    # IoU exactly 0.5 in continuous pixels is a hit (devkit: >=)
    dets[0]["boxes"] = torch.tensor([[0.0, 0, 10, 5]])
    assert evaluate(ds, dets, "voc10")[0]["AP"]["a"] == 1.0
    dets[0]["boxes"] = torch.tensor([[0.0, 0, 10, 4.9]])
    assert evaluate(ds, dets, "voc10")[0]["AP"]["a"] == 0.0


def test_voc07_thresholds_are_matlabs_colon():
    # VOCevaldet.m: for t=0:0.1:1. MATLAB computes the upper half of a colon range from its
    # end point, so 0.6, 0.7, 0.8, 0.9 are exact; the lower half is 0 + k*0.1 (0.3 is not).
    from spp_det.evaluation.voc_ap import VOC07_RECALL_THRESHOLDS
    assert VOC07_RECALL_THRESHOLDS.tolist() == [0.0, 0.1, 0.2, 0.30000000000000004, 0.4, 0.5,
                                                0.6, 0.7, 0.8, 0.9, 1.0]


def test_recall_exactly_on_a_threshold_counts_as_the_devkit():
    # 5 positives, detections TP TP FP TP FP TP: recall .2 .4 .4 .6 .6 .8 (3/5 == 0.6 exactly),
    # precision 1 1 2/3 3/4 3/5 2/3. Devkit: t = 0..0.4 -> 1 (5 points), t = .5 -> 3/4,
    # t = .6 -> 3/4 (recall 0.6 >= 0.6), t = .7, .8 -> 2/3, t = .9, 1 -> 0.
    gt = [np.array([[1, 1, 10, 10], [21, 1, 30, 10], [41, 1, 50, 10], [61, 1, 70, 10], [81, 1, 90, 10]], float)]
    boxes = np.array([[1, 1, 10, 10], [21, 1, 30, 10], [200, 200, 210, 210], [41, 1, 50, 10],
                      [300, 300, 310, 310], [61, 1, 70, 10]], float)
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4])
    r = voc_eval_class(np.zeros(6, int), scores, boxes, gt, [np.zeros(5, bool)], use_07_metric=True)
    assert r.ap == pytest.approx((5 * 1.0 + 0.75 + 0.75 + 2 * (2 / 3)) / 11, abs=1e-12)  # 0.71212
