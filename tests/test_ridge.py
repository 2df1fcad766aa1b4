import numpy as np
import torch
from sklearn.linear_model import Ridge

from spp_det.boxes import BoxCoder
from spp_det.paper_stages.ridge import RidgeSettings, fit_class_regressor, ridge_solve, train_ridge
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


def test_train_ridge_uses_each_class_windows_above_the_iou_bound():
    # one image, gt of class 1 and class 2; windows shifted right by known amounts, their
    # pooled features = the shift, so a linear regressor can recover the dx target exactly
    coder = BoxCoder((10.0, 10.0, 5.0, 5.0))
    gt = torch.tensor([[0.0, 0, 100, 100], [300, 300, 400, 400]])
    shifts = torch.tensor([0.0, 5, 10, 15, 20, 30, 60])  # IoU 1, .90, .82, .74, .67, .54, .25
    win1 = torch.stack([gt[0] + torch.tensor([s, 0, s, 0]) for s in shifts])
    win2 = torch.stack([gt[1] + torch.tensor([0, s, 0, s]) for s in shifts])
    boxes = torch.cat([gt, win1, win2])
    pooled = torch.cat([torch.zeros(2, 2), torch.stack([shifts, shifts * 0], 1), torch.stack([shifts * 0, shifts], 1)])
    pooled = pooled + torch.tensor([1.0, 1.0])  # no all-zero rows
    wf = WindowFeatures(0, boxes, torch.tensor([1, 2]), torch.zeros(len(boxes)), pooled, torch.zeros(len(boxes), 1))
    weight, bias, scale, stats = train_ridge(iter([wf]), 2, coder, RidgeSettings(lam=1e-6, min_iou=0.6))
    # examples: IoU > 0.6 -> gt itself (counted once as a window) + shifts 0..20
    assert stats["examples"] == [6, 6]
    x = pooled * scale
    deltas = x @ weight.T + bias
    targets = torch.cat([coder.encode(gt[:1].expand(7, 4), win1)[:5], coder.encode(gt[1:].expand(7, 4), win2)[:5]])
    got = torch.cat([deltas[2:7, 0:4], deltas[9:14, 4:8]])
    assert torch.allclose(got, targets, atol=1e-3)
