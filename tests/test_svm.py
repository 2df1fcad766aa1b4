import numpy as np
import pytest
import torch
from scipy.optimize import minimize

from spp_det.models.checkpoint import load_weights
from spp_det.paper_stages.svm import ClassSVM, SVMSettings, fit_linear_svm, negatives, train_svms
from spp_det.paper_stages.window_features import WindowFeatures
from spp_det.models import SPPNet, build_trunk


def test_separable_case_gives_the_maximum_margin_plane():
    # hard margin (C large): the closest points are x = +-1, so w = (1, 0), b = 0
    pos = np.array([[1.0, 0], [2, 1], [3, -1]], dtype=np.float32)
    neg = -pos
    w, b = fit_linear_svm(pos, neg, C=1e3, pos_weight=1.0, bias_multiplier=10.0, tol=1e-6, max_iter=20000)
    assert np.allclose(w, [1, 0], atol=1e-3) and abs(b) < 1e-3


def test_liblinear_options_minimise_the_released_objective():
    """An independent solver (scipy's SLSQP on the primal QP) for the objective the
    released code gives liblinear: 1/2 |[w, v]|^2 + C sum c_i xi_i with the bias feature
    B (b = B v), c_i = 2 for positives, xi_i >= 1 - y_i (w.x_i + B v), xi_i >= 0."""
    rng = np.random.default_rng(0)
    pos = rng.normal(1.0, 1.0, (15, 2)).astype(np.float32)
    neg = rng.normal(-1.0, 1.0, (25, 2)).astype(np.float32)
    C, weight, B = 0.5, 2.0, 10.0
    w, b = fit_linear_svm(pos, neg, C=C, pos_weight=weight, bias_multiplier=B, tol=1e-6, max_iter=20000)

    x = np.concatenate([pos, neg]).astype(np.float64)
    y = np.concatenate([np.ones(15), -np.ones(25)])
    c = np.where(y > 0, weight, 1.0)
    n = len(x)

    def objective(z):  # z = [w1, w2, v, xi_1..xi_n]
        return 0.5 * z[:3] @ z[:3] + C * c @ z[3:]

    cons = [{"type": "ineq", "fun": lambda z: y * (x @ z[:2] + B * z[2]) - 1 + z[3:]},
            {"type": "ineq", "fun": lambda z: z[3:]}]
    ref = minimize(objective, np.zeros(3 + n), constraints=cons, method="SLSQP",
                   options={"maxiter": 500, "ftol": 1e-12}).x
    assert np.allclose(w, ref[:2], atol=2e-3) and b == pytest.approx(B * ref[2], abs=2e-3)


def test_hard_negatives_are_only_those_above_the_margin_and_new():
    svm = ClassSVM(2)
    svm.w, svm.b = np.array([1.0, 0.0], dtype=np.float32), 0.0
    x = np.array([[-2.0, 0], [-0.5, 0], [0.3, 0], [-1.0, 0], [-1.2, 5]], dtype=np.float32)
    assert svm.add_hard(7, x, np.array([10, 11, 12, 13, 14]), margin=-1.0001) == 3
    assert sorted(svm.keys) == [(7, 11), (7, 12), (7, 13)]
    assert svm.add_hard(7, x, np.array([10, 11, 12, 13, 14]), margin=-1.0001) == 0  # already cached
    assert svm.add_hard(8, x[:2], np.array([10, 11]), margin=-1.0001) == 1  # another image's window 11


def toy_image(index, rng, n_neg=40):
    """One ground-truth box of class 1 (features around +3 on the first axis) and
    windows far from it (around -3): separable."""
    gt = torch.tensor([[10.0, 10, 50, 50]])
    far = torch.tensor([[200.0, 200, 240, 240]]).repeat(n_neg, 1)
    feats = np.concatenate([rng.normal([3, 0], 0.3, (1, 2)), rng.normal([-3, 0], 0.3, (n_neg, 2))])
    return WindowFeatures(index, torch.cat([gt, far]), torch.tensor([1]), torch.zeros(n_neg + 1),
                          torch.zeros(n_neg + 1, 4), torch.from_numpy(feats).float())


def test_mining_stops_when_an_epoch_adds_nothing():
    rng = np.random.default_rng(0)
    images = [toy_image(i, rng) for i in range(6)]
    s = SVMSettings(C=1.0, rounds=5, retrain_limit=50, target_norm=3.0)
    weight, bias, scale, stats = train_svms(lambda epoch: iter(images), 1, 2, s)
    # epoch 1 starts from w = 0 (every negative is hard); after the retrains the rest are
    # easy, and epoch 2 finds nothing new: mining ends there, well before the 5-round limit
    assert stats["added_per_epoch"][0] > 0 and stats["added_per_epoch"][-1] == 0
    assert len(stats["added_per_epoch"]) == 2
    assert stats["positives"] == [6]
    x = torch.cat([im.fc7 for im in images]) * scale
    margins = x @ weight[0] + bias[0]
    labels = torch.cat([torch.tensor([1] + [0] * 40) for _ in images])
    assert (margins[labels == 1] > 0).all() and (margins[labels == 0] < 0).all()


def test_negatives_are_below_the_iou_bound_with_every_box_of_the_class():
    boxes = torch.tensor([[0.0, 0, 10, 10], [20, 20, 30, 30],       # gt: class 1, class 2
                          [0, 0, 10, 3], [0, 0, 10, 2.9], [20, 20, 30, 30]])
    wf = WindowFeatures(0, boxes, torch.tensor([1, 2]), torch.zeros(5), torch.zeros(5, 1), torch.zeros(5, 1))
    # class 1: IoU 1, 0, .3, .29, 0 -> windows 1, 3, 4 (the class-2 box is a class-1 negative)
    assert negatives(wf, 1, 0.3).tolist() == [1, 3, 4]
    # a window on a crowd box (IoU .6 with it) is no negative, as in fine-tuning
    wf.ignore_iou = torch.tensor([0.0, 0, 0, 0, 0.6])
    assert negatives(wf, 1, 0.3).tolist() == [1, 3]


def test_svm_scores_replace_the_softmax_and_travel_in_checkpoints():
    torch.manual_seed(0)
    net = SPPNet(build_trunk("zf5", width=0.25, norm="bn"), 2, hidden=16, scales=(224,)).eval()
    weight, bias = torch.randn(2, 16), torch.tensor([0.5, -0.5])
    net.head.set_svm(weight, bias, 2.0)
    net.head.use("svm", "learned")
    x = torch.randn(5, net.head.fc6.in_features)
    scores, _ = net.head(x)
    expected = net.head.features(x) * 2.0 @ weight.T + bias
    assert torch.allclose(scores, expected, atol=1e-5)
    probs = net.class_probs(scores)
    assert torch.equal(probs[:, 0], torch.zeros(5)) and torch.allclose(probs[:, 1:], torch.sigmoid(expected))
    other = SPPNet(build_trunk("zf5", width=0.25, norm="bn"), 2, hidden=16, scales=(224,)).eval()
    load_weights(other, net.state_dict())
    assert other.head.classifier == "svm" and torch.allclose(other.head(x)[0], scores)
    with pytest.raises(ValueError, match="this model has no ridge regressors"):
        other.head.use("svm", "ridge")


def test_a_class_without_positives_is_never_detected():
    """Class 2 has no positive in any image: its SVM is never trained. It used to stay at
    w = 0, b = 0, i.e. probability 0.5 for every window, filling the max_per_image cap."""
    from spp_det.models.postprocess import postprocess_detections

    rng = np.random.default_rng(0)
    images = [toy_image(i, rng) for i in range(4)]
    weight, bias, scale, stats = train_svms(lambda epoch: iter(images), 2, 2, SVMSettings(C=1.0, target_norm=3.0))
    assert stats["learned"] == [True, False] and stats["positives"] == [4, 0]
    torch.manual_seed(0)
    net = SPPNet(build_trunk("zf5", width=0.25, norm="bn"), 2, hidden=2, scales=(224,)).eval()
    net.head.set_svm(weight, bias, scale, torch.tensor(stats["learned"]))
    net.head.use("svm", "learned")
    margins = torch.tensor([[4.0, 0.0], [-3.0, 0.0], [0.5, 0.0]])  # class 2's margin is 0 everywhere
    probs = net.class_probs(margins)
    assert probs[:, 2].tolist() == [0.0, 0.0, 0.0]
    assert torch.allclose(probs[:, 1], torch.sigmoid(margins[:, 0]))
    boxes = torch.tensor([[0.0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50]]).unsqueeze(1).repeat(1, 2, 1)
    det = postprocess_detections(probs, boxes, 0.001, 0.3, 100)
    assert det["labels"].tolist() == [1, 1, 1]
    # a checkpoint written before the mark: an all-zero SVM row is read as never trained
    old = {k: v for k, v in net.state_dict().items() if k != "head.svm_learned"}
    old["head.svm.weight"][1], old["head.svm.bias"][1] = 0.0, 0.0
    other = SPPNet(build_trunk("zf5", width=0.25, norm="bn"), 2, hidden=2, scales=(224,)).eval()
    load_weights(other, old)
    assert other.head.svm_learned.tolist() == [True, False]
    assert other.class_probs(margins)[:, 2].tolist() == [0.0, 0.0, 0.0]


def _hard_images(n_images, n_neg=40):
    """Images whose negatives all stay hard: with C = 1e-6 the SVM is w ~ 0, b ~ 0, so every
    new negative scores ~0 > -1.0001 and none is evicted (< -1.2)."""
    rng = np.random.default_rng(0)
    return [toy_image(i, rng, n_neg) for i in range(n_images)]


def test_mining_retrains_as_spp_train_m():
    """spp_train.m: update after the first image (first_time), then only when MORE than
    retrain_limit negatives were added (num_added > retrain_limit), and after the last image.
    40 new hard negatives per image, limit 40: retrain after images 1 and 3, then at the end."""
    s = SVMSettings(C=1e-6, retrain_limit=40, target_norm=3.0)
    *_, stats = train_svms(lambda epoch: iter(_hard_images(4)), 1, 2, s)
    assert stats["added_per_epoch"] == [160] and stats["retrains"] == [3]
    # a limit never reached: the first image's update and the final one
    s = SVMSettings(C=1e-6, retrain_limit=10 ** 6, target_norm=3.0)
    *_, stats = train_svms(lambda epoch: iter(_hard_images(4)), 1, 2, s)
    assert stats["retrains"] == [2]


def test_windows_with_the_same_cells_are_one_negative():
    """The released code's dedup: of windows that project to the same cells (one pooled
    feature), only the first is a negative."""
    images = _hard_images(1, n_neg=6)
    images[0].unique = torch.tensor([True, True, False, True, False, False, True])  # gt first
    s = SVMSettings(C=1e-6, retrain_limit=10 ** 6, target_norm=3.0)
    *_, stats = train_svms(lambda epoch: iter(images), 1, 2, s)
    assert stats["negatives_cached"] == [3]


def test_first_of_each_marks_first_occurrences():
    from spp_det.paper_stages.window_features import first_of_each
    rows = torch.tensor([[0, 1, 1, 2, 2], [0, 1, 1, 2, 2], [1, 1, 1, 2, 2], [0, 1, 1, 2, 2], [0, 0, 0, 0, 0]])
    assert first_of_each(rows).tolist() == [True, False, True, False, True]


def test_liblinear_runs_with_its_1_93_stopping_rule(monkeypatch):
    """liblinear 1.93 (released): eps 0.1 for -s 3, at most 1000 iterations."""
    import sklearn.svm
    seen = {}
    real = sklearn.svm.LinearSVC

    def spy(**kwargs):
        seen.update(kwargs)
        return real(**kwargs)
    monkeypatch.setattr(sklearn.svm, "LinearSVC", spy)
    fit_linear_svm(np.ones((2, 2), np.float32), -np.ones((2, 2), np.float32), 1e-3, 2.0, 10.0)
    assert (seen["tol"], seen["max_iter"], seen["loss"], seen["dual"]) == (0.1, 1000, "hinge", True)
    assert (seen["C"], seen["class_weight"], seen["intercept_scaling"]) == (1e-3, {1: 2.0, -1: 1.0}, 10.0)
