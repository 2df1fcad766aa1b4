import numpy as np
import torch
from sklearn.linear_model import Ridge

from spp_det.boxes import BoxCoder
from spp_det.paper_stages.ridge import (Reservoir, RidgeSettings, examples_per_class, fit_class_regressor, ridge_solve,
                                        train_ridge)
from spp_det.paper_stages.window_features import WindowFeatures


def test_ridge_solve_equals_the_closed_form_both_ways():
    rng = np.random.default_rng(0)
    for n, d in ((30, 5), (4, 9)):  # more rows than columns, and fewer (the N x N form)
        x, y = rng.normal(size=(n, d)), rng.normal(size=(n, 2))
        beta = ridge_solve(torch.from_numpy(x), torch.from_numpy(y), 7.0).numpy()
        ref = Ridge(alpha=7.0, fit_intercept=False, solver="cholesky").fit(x, y).coef_.T
        assert np.allclose(beta, ref, atol=1e-10)


def test_class_regressor_is_the_released_whitened_ridge():
    """Transcription of spp_train_bbox_regressor.m in numpy: bias column, targets centred
    and whitened with T = V diag(1/sqrt(D + 0.001)) V', ridge, then back with T^-1 and mu."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(40, 6))
    y = x[:, :4] @ rng.normal(size=(4, 4)) * 0.1 + rng.normal(size=4) + rng.normal(size=(40, 4)) * 0.05
    lam = 3.0
    xa = np.concatenate([x, np.ones((40, 1))], 1)
    mu = y.mean(0)
    yc = y - mu
    dvals, v = np.linalg.eigh(yc.T @ yc / 40)
    t = v @ np.diag(1 / np.sqrt(dvals + 0.001)) @ v.T
    t_inv = v @ np.diag(np.sqrt(dvals + 0.001)) @ v.T
    beta = np.linalg.solve(xa.T @ xa + lam * np.eye(7), xa.T @ (yc @ t))
    expected = xa @ beta @ t_inv + mu
    w, b = fit_class_regressor(torch.from_numpy(x), torch.from_numpy(y), lam)
    ours = torch.from_numpy(x).float() @ w.T + b
    assert np.allclose(ours.numpy(), expected, atol=1e-4)


def one_image_two_classes():
    """One image, gt of class 1 and class 2; windows shifted by known amounts, their
    pooled features = the shift, so a linear regressor can recover the dx target exactly."""
    coder = BoxCoder((10.0, 10.0, 5.0, 5.0))
    gt = torch.tensor([[0.0, 0, 100, 100], [300, 300, 400, 400]])
    shifts = torch.tensor([0.0, 5, 10, 15, 20, 30, 60])  # IoU 1, .90, .82, .74, .67, .54, .25
    win1 = torch.stack([gt[0] + torch.tensor([s, 0, s, 0]) for s in shifts])
    win2 = torch.stack([gt[1] + torch.tensor([0, s, 0, s]) for s in shifts])
    boxes = torch.cat([gt, win1, win2])
    pooled = torch.cat([torch.zeros(2, 2), torch.stack([shifts, shifts * 0], 1), torch.stack([shifts * 0, shifts], 1)])
    pooled = pooled + torch.tensor([1.0, 1.0])  # no all-zero rows
    wf = WindowFeatures(0, boxes, torch.tensor([1, 2]), torch.zeros(len(boxes)), pooled, torch.zeros(len(boxes), 1))
    targets = torch.cat([coder.encode(gt[:1].expand(7, 4), win1)[:5], coder.encode(gt[1:].expand(7, 4), win2)[:5]])
    return coder, wf, targets


def test_train_ridge_uses_each_class_windows_above_the_iou_bound():
    coder, wf, targets = one_image_two_classes()
    weight, bias, scale, stats = train_ridge(iter([wf]), 2, coder, RidgeSettings(lam=1e-6, min_iou=0.6))
    # examples: IoU > 0.6 -> gt itself (counted once as a window) + shifts 0..20
    assert stats["examples"] == [6, 6] and stats["used"] == [6, 6]
    deltas = wf.pooled * scale @ weight.T + bias
    got = torch.cat([deltas[2:7, 0:4], deltas[9:14, 4:8]])
    assert torch.allclose(got, targets, atol=1e-3)


def test_examples_per_class_is_the_memory_bound_divided_out():
    # 4 GB of float32 rows of the dilated Lite0's pool5 (1280 x 50 = 64,000) over six
    # classes: 4e9 / (4 * 6 * 64000) = 2604.2; ZF-5's 12,800 over VOC's 20: 3906.2
    assert examples_per_class(4.0, 6, 64000) == 2604
    assert examples_per_class(4.0, 20, 12800) == 3906


def test_reservoir_below_its_cap_keeps_every_row_in_order():
    r = Reservoir(10, torch.Generator().manual_seed(0))
    x = torch.arange(14.0).reshape(7, 2)
    r.add(x[:3], x[:3, :1] * 10)
    r.add(x[3:], x[3:, :1] * 10)
    kx, ky = r.rows()
    assert torch.equal(kx, x) and torch.equal(ky, x[:, :1] * 10)


def test_reservoir_keeps_every_row_with_probability_cap_over_n():
    """Algorithm R's guarantee: each of n rows ends in the sample with probability cap / n,
    whatever its place in the stream; rows keep their own targets. (Drawing the slot from
    [0, n) instead of [0, n + 1) keeps the first rows with probability 0.143, later ones
    0.286: far outside the bound.)"""
    n, cap, runs = 8, 2, 2000
    counts = torch.zeros(n)
    x = torch.arange(float(n))[:, None]
    for seed in range(runs):
        r = Reservoir(cap, torch.Generator().manual_seed(seed))
        # a chunk ending at the cap, an empty one, one crossing nothing, one of three
        for a, b in ((0, 2), (2, 2), (2, 3), (3, 5), (5, 8)):
            r.add(x[a:b], x[a:b] * 10)
        kx, ky = r.rows()
        assert len(kx) == cap and len(set(kx[:, 0].tolist())) == cap
        assert torch.equal(ky, kx * 10)
        counts[kx[:, 0].long()] += 1
    # binomial(2000, 0.25): standard deviation 0.0097
    assert torch.allclose(counts / runs, torch.full((n,), cap / n), atol=0.035)


def test_ridge_fits_its_sample_when_examples_exceed_the_memory_bound():
    coder, wf, targets = one_image_two_classes()
    # 2-dim features, 2 classes: 48e-9 GB hold 48 bytes / (4 * 2 * 2) = 3 examples per class
    weight, bias, scale, stats = train_ridge(iter([wf]), 2, coder, RidgeSettings(lam=1e-6, min_iou=0.6,
                                                                                memory_gb=48e-9))
    assert stats["examples"] == [6, 6] and stats["used"] == [3, 3]
    # dx is linear in the features: three examples recover it on every window of the class
    deltas = wf.pooled * scale @ weight.T + bias
    got = torch.cat([deltas[2:7, 0:4], deltas[9:14, 4:8]])
    assert torch.allclose(got, targets, atol=1e-3)
