import math
import random

import pytest
import torch
import torch.nn.functional as F

from spp_det.models import SpatialPyramidPooling, project_windows


def brute_force_spp(features, windows, levels):
    """Explicit loops over bins with the released kernel's integer bin edges."""
    out = []
    for b, x1, y1, x2, y2 in windows.tolist():
        h, w = y2 - y1 + 1, x2 - x1 + 1
        vec = []
        for n in levels:
            level = torch.empty(features.shape[1], n, n)
            for i in range(n):
                ys, ye = y1 + math.floor(i * h / n), y1 + math.ceil((i + 1) * h / n)
                for j in range(n):
                    xs, xe = x1 + math.floor(j * w / n), x1 + math.ceil((j + 1) * w / n)
                    level[:, i, j] = features[b, :, ys:ye, xs:xe].amax(dim=(1, 2))
            vec.append(level.reshape(-1))
        out.append(torch.cat(vec))
    return torch.stack(out)


def random_windows(gen, n, b, h, w):
    x = torch.randint(0, w, (n, 2), generator=gen).sort(dim=1).values
    y = torch.randint(0, h, (n, 2), generator=gen).sort(dim=1).values
    bi = torch.randint(0, b, (n, 1), generator=gen)
    return torch.cat([bi, x[:, :1], y[:, :1], x[:, 1:], y[:, 1:]], dim=1)


@pytest.mark.parametrize("use_kernel", [True, False])  # the compiled CPU loop and the torch tables
def test_spp_equals_brute_force_and_adaptive_pool(use_kernel):
    gen = torch.Generator().manual_seed(0)
    feats = torch.randn(2, 5, 11, 17, generator=gen)
    wins = random_windows(gen, 40, 2, 11, 17)
    extra = torch.tensor([[0, 3, 4, 3, 4],      # a single cell
                          [1, 0, 0, 16, 10],    # the whole map
                          [1, 16, 0, 16, 10],   # a one-column strip at the right border
                          [0, 0, 10, 16, 10],   # a one-row strip at the bottom border
                          [0, 5, 2, 6, 9]])     # narrower than the 6x6 level
    wins = torch.cat([wins, extra])
    spp = SpatialPyramidPooling((6, 3, 2, 1), use_kernel=use_kernel)
    out = spp(feats, wins)  # no gradient needed
    assert out.shape == (45, 5 * 50)
    assert torch.equal(out, brute_force_spp(feats, wins, (6, 3, 2, 1)))
    with_grad = spp(feats.clone().requires_grad_(True), wins)  # the differentiable path
    assert torch.equal(with_grad.detach(), out)
    assert torch.equal(SpatialPyramidPooling((5, 4), use_kernel=use_kernel)(feats, wins),
                       brute_force_spp(feats, wins, (5, 4)))
    assert torch.equal(spp(feats.double(), wins), brute_force_spp(feats.double(), wins, (6, 3, 2, 1)))
    for k, (b, x1, y1, x2, y2) in enumerate(wins.tolist()):
        crop = feats[b, :, y1:y2 + 1, x1:x2 + 1]
        ref = torch.cat([F.adaptive_max_pool2d(crop, n).reshape(-1) for n in (6, 3, 2, 1)])
        assert torch.equal(out[k], ref)


def test_spp_hand_computed_values():
    f = torch.arange(16.0).reshape(1, 1, 4, 4)  # row r holds 4r .. 4r+3
    spp = SpatialPyramidPooling((2, 1))
    out = spp(f, torch.tensor([[0, 1, 0, 3, 2]]))  # cols 1..3, rows 0..2: a 3x3 window
    # 2 bins over 3 cells: [0, 2) and [1, 3), overlapping (released kernel):
    # rows {0,1} x cols {1,2} -> 6; rows {0,1} x cols {2,3} -> 7; rows {1,2} x ... -> 10, 11
    assert out.tolist() == [[6.0, 7.0, 10.0, 11.0, 11.0]]


def test_spp_empty_and_gradients():
    spp = SpatialPyramidPooling()
    f = torch.randn(1, 3, 6, 6, requires_grad=True)
    assert spp(f, torch.zeros((0, 5), dtype=torch.long)).shape == (0, 150)
    out = spp(f, torch.tensor([[0, 0, 0, 5, 5], [0, 2, 2, 2, 2]]))
    out.sum().backward()
    assert f.grad is not None and f.grad.abs().sum() > 0
    # the 1x1 level of the whole map routes its gradient to each channel's maximum
    g = torch.zeros_like(f)
    f2 = f.detach().clone().requires_grad_(True)
    SpatialPyramidPooling((1,))(f2, torch.tensor([[0, 0, 0, 5, 5]])).sum().backward()
    for c in range(3):
        idx = f.detach()[0, c].argmax()
        g[0, c].view(-1)[idx] = 1
    assert torch.equal(f2.grad, g)


ZF_STRIDE, ZF_C0 = 16, 20.5  # ZF-5: cell 0 centred on pixel 21 (1-based) = 20.5 continuous


@pytest.mark.parametrize("box,expected", [
    ([0, 0, 224, 224], [0, 0, 12, 12]),          # the whole 224 image covers the 13x13 map
    ([100, 100, 150, 150], [5, 5, 8, 8]),        # (106.5-20.5)/16=5.375 -> 5; (143.5-20.5)/16=7.69 -> 8
    ([90, 90, 92, 92], [4, 4, 4, 4]),            # empty (5 > 4) -> midpoint floor(4.5) = 4
    ([-50, -50, 1000, 1000], [0, 0, 12, 12]),    # larger than the map: clamped
    ([220, 0, 224, 30], [12, 0, 12, 0]),         # at the border: clamped, never empty
])
def test_project_released(box, expected):
    cells = project_windows(torch.tensor([box], dtype=torch.float32), ZF_STRIDE, ZF_C0, (13, 13), "released")
    assert cells.dtype == torch.int64 and cells.tolist() == [expected]


@pytest.mark.parametrize("box,expected", [
    ([0, 0, 224, 224], [0, 0, 12, 12]),          # floor(0)=0; ceil(14)-2 = 12
    ([100, 100, 150, 150], [6, 6, 8, 8]),        # floor(6.25)=6; ceil(9.375)-2 = 8
    ([100, 100, 104, 104], [5, 5, 5, 5]),        # 6 > 5: midpoint floor(5.5) = 5
])
def test_project_paper(box, expected):
    cells = project_windows(torch.tensor([box], dtype=torch.float32), ZF_STRIDE, ZF_C0, (13, 13), "paper")
    assert cells.tolist() == [expected]


def released_mex_cells(l, t, r, b, width, height, offset0=21.0, offset=6.5, min_times=16.0):
    """Transcription of ``spm_pool_caffe_mex.cpp`` (box normalisation), one box in 1-based
    pixel indices (l, t, r, b) -> 1-based inclusive cells (left, top, right, bottom): the
    independent oracle for project_windows(mode="released")."""
    x0n = int(math.floor((l - offset0 + offset) / min_times + 0.5) + 1)
    y0n = int(math.floor((t - offset0 + offset) / min_times + 0.5) + 1)
    x1n = int(math.ceil((r - offset0 - offset) / min_times - 0.5) + 1)
    y1n = int(math.ceil((b - offset0 - offset) / min_times - 0.5) + 1)
    if x0n > x1n:
        x0n = int((x0n + x1n) / 2)  # C integer division truncates towards zero
        x1n = x0n
    if y0n > y1n:
        y0n = int((y0n + y1n) / 2)
        y1n = y0n
    return (min(width, max(1, x0n)), min(height, max(1, y0n)),
            min(width, max(1, x1n)), min(height, max(1, y1n)))


def random_voc_boxes(n, width, height, seed, small=False):
    """VOC-style integer boxes (xmin, ymin, xmax, ymax), 1-based inclusive, some tiny."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        w = rng.randint(1, 40 if small and rng.random() < 0.5 else width)
        h = rng.randint(1, 40 if small and rng.random() < 0.5 else height)
        x, y = rng.randint(1, width - w + 1), rng.randint(1, height - h + 1)
        out.append((x, y, x + w - 1, y + h - 1))
    return out


def test_released_projection_equals_the_mex_transcription():
    # a 688 x 917 input to ZF-5 (cell 1 centred on pixel 21, stride 16, margin 6.5)
    height, width = 688, 917
    map_h, map_w = 43, 57
    voc = random_voc_boxes(5000, width, height, seed=0, small=True)
    # VOC pixel indices -> continuous: the first pixel l spans [l - 1, l), the last r ends at r
    boxes = torch.tensor([[l - 1, t - 1, r, b] for l, t, r, b in voc], dtype=torch.float32)
    cells = project_windows(boxes, ZF_STRIDE, ZF_C0, (map_h, map_w), "released")
    expected = [[c - 1 for c in released_mex_cells(*box, map_w, map_h)] for box in voc]  # 0-based
    assert cells.tolist() == expected
    # the old rule (nearest cell centre to x1 + m and x2 - m) differs on about one box in ten
    b = boxes.double()
    old = torch.cat([torch.floor((b[:, :2] + 6.5 - ZF_C0) / 16 + 0.5),
                     torch.floor((b[:, 2:] - 6.5 - ZF_C0) / 16 + 0.5)], 1).long()
    non_empty = (old[:, 0] <= old[:, 2]) & (old[:, 1] <= old[:, 3]) & (old >= 0).all(1) \
        & (old[:, [0, 2]] < map_w).all(1) & (old[:, [1, 3]] < map_h).all(1)
    differ = (old[non_empty] != cells[non_empty]).any(1).float().mean()
    assert 0.05 < differ < 0.3


def test_released_box_scaling_equals_the_transcription():
    # spp_features_convX_to_poolX.m: scaled = (boxes - 1) * (s - 1) / (min(H, W) - 1) + 1
    from spp_det.models import FeatureMap, SPPNet, build_trunk
    trunk = build_trunk("zf5", width=0.25, norm="bn")
    assert (trunk.stride, trunk.centre0) == (16, 20.5)
    net = SPPNet(trunk, 2, hidden=8, scales=(688,), max_size=2000)
    height, width, s = 375, 500, 688
    map_h, map_w = trunk.output_size(688, 917)
    fm = FeatureMap(torch.zeros(1, map_h, map_w), 917 / 500, 688 / 375, (height, width))
    voc = random_voc_boxes(3000, width, height, seed=1, small=True)
    boxes = torch.tensor([[l - 1, t - 1, r, b] for l, t, r, b in voc], dtype=torch.float32)
    cells = net.project([fm], boxes, torch.zeros(len(boxes), dtype=torch.long))
    expected = []
    for box in voc:
        scaled = [(v - 1) * (s - 1) / (min(height, width) - 1) + 1 for v in box]
        expected.append([0] + [c - 1 for c in released_mex_cells(*scaled, map_w, map_h)])
    assert cells.tolist() == expected


def test_projection_never_empty_and_inside():
    gen = torch.Generator().manual_seed(1)
    xy = torch.rand(500, 2, generator=gen) * 400 - 50
    wh = torch.rand(500, 2, generator=gen) * 300
    boxes = torch.cat([xy, xy + wh], 1)
    for mode in ("released", "paper"):
        c = project_windows(boxes, 16, 20.5, (20, 25), mode)
        assert (c[:, 0] <= c[:, 2]).all() and (c[:, 1] <= c[:, 3]).all()
        assert (c >= 0).all() and (c[:, [0, 2]] <= 24).all() and (c[:, [1, 3]] <= 19).all()


def test_coarse_bins_are_unions_of_finest_bins_for_every_width():
    """The arithmetic the pooling relies on, checked directly on the bin edges for widths
    1..300: bin i of level n (n dividing 6) starts where finest bin i*6/n starts, ends where
    finest bin (i+1)*6/n - 1 ends, and the finest bins in between leave no gap."""
    def edges(w, n):
        return [(math.floor(i * w / n), math.ceil((i + 1) * w / n)) for i in range(n)]
    for w in range(1, 301):
        fine = edges(w, 6)
        for n in (3, 2, 1):
            m = 6 // n
            for i, (s, e) in enumerate(edges(w, n)):
                group = fine[i * m:(i + 1) * m]
                assert group[0][0] == s and group[-1][1] == e
                assert all(a[1] >= b[0] for a, b in zip(group, group[1:]))  # touching or overlapping
                covered = set().union(*(range(a, b) for a, b in group))
                assert covered == set(range(s, e))


@pytest.mark.parametrize("n_windows,use_kernel", [(30, True), (200, True),  # the compiled loop
                                                  (30, False), (200, False)])  # per-window loop, tables
def test_gradients_equal_the_crop_wise_reference_and_duplicates_count_twice(n_windows, use_kernel):
    gen = torch.Generator().manual_seed(3)
    # float64: the gradient sums many weights, in another order on each path (and, with
    # threads, from run to run), so float32 would only agree to a few 1e-5
    feats = torch.randn(2, 4, 13, 19, generator=gen, dtype=torch.float64)  # continuous values: no ties
    wins = random_windows(gen, n_windows, 2, 13, 19)
    wins = torch.cat([wins, wins[:5]])  # windows that project to the same cells
    weights = torch.randn(n_windows + 5, 4 * 50, generator=gen, dtype=torch.float64)
    a = feats.clone().requires_grad_(True)
    (SpatialPyramidPooling((6, 3, 2, 1), use_kernel=use_kernel)(a, wins) * weights).sum().backward()
    b = feats.clone().requires_grad_(True)
    ref = torch.stack([torch.cat([F.adaptive_max_pool2d(b[bi, :, y1:y2 + 1, x1:x2 + 1], n).reshape(-1)
                                  for n in (6, 3, 2, 1)]) for bi, x1, y1, x2, y2 in wins.tolist()])
    (ref * weights).sum().backward()
    assert torch.allclose(a.grad, b.grad, atol=1e-9, rtol=0)
    assert a.grad.abs().sum() > 0


def test_table_path_with_ties_an_image_without_windows_and_channels_first_maps():
    """The table path (a GPU's, or no numba) on three maps, the middle one without any
    window, stored channels first (as cached maps arrive): values with ties everywhere
    equal the brute force; with continuous values the gradient equals the crop-wise
    reference's and the middle map gets none."""
    gen = torch.Generator().manual_seed(5)
    spp = SpatialPyramidPooling((6, 3, 2, 1), use_kernel=False)
    wins = random_windows(gen, 150, 3, 14, 21)
    wins[:, 0] = torch.where(wins[:, 0] == 1, 2, wins[:, 0])  # no window on map 1
    ties = torch.randint(0, 3, (3, 6, 14, 21), generator=gen).float()
    assert torch.equal(spp(ties, wins), brute_force_spp(ties, wins, (6, 3, 2, 1)))
    feats = torch.randn(3, 6, 14, 21, generator=gen, dtype=torch.float64)
    weights = torch.randn(len(wins), 6 * 50, generator=gen, dtype=torch.float64)
    a, b = feats.clone().requires_grad_(True), feats.clone().requires_grad_(True)
    (spp(a, wins) * weights).sum().backward()
    ref = torch.stack([torch.cat([F.adaptive_max_pool2d(b[bi, :, y1:y2 + 1, x1:x2 + 1], n).reshape(-1)
                                  for n in (6, 3, 2, 1)]) for bi, x1, y1, x2, y2 in wins.tolist()])
    (ref * weights).sum().backward()
    assert torch.allclose(a.grad, b.grad, atol=1e-9, rtol=0)
    assert a.grad[1].abs().sum() == 0 and a.grad[0].abs().sum() > 0 and a.grad[2].abs().sum() > 0
    # a GPU's choice (tables however few the windows; a CPU loops below 64): the same gradient
    few, c = wins[:10], feats.clone().requires_grad_(True)
    (SpatialPyramidPooling((6, 3, 2, 1), use_kernel=False, loop_below=0)(c, few) * weights[:10]).sum().backward()
    d = feats.clone().requires_grad_(True)
    (SpatialPyramidPooling((6, 3, 2, 1), use_kernel=False)(d, few) * weights[:10]).sum().backward()
    assert torch.allclose(c.grad, d.grad, atol=1e-9, rtol=0) and c.grad.abs().sum() > 0


def test_kernel_breaks_ties_like_adaptive_max_pool():
    """On equal maxima the gradient goes to the first in (row, column) order, the element
    ``adaptive_max_pool2d`` picks, so even maps with many ties train identically."""
    from spp_det.models import spp_kernel
    if not spp_kernel.AVAILABLE:
        pytest.skip("numba not installed")
    gen = torch.Generator().manual_seed(4)
    feats = torch.randint(0, 3, (1, 3, 9, 12), generator=gen).float()  # values 0, 1, 2: ties everywhere
    wins = random_windows(gen, 50, 1, 9, 12)
    a = feats.clone().requires_grad_(True)
    weights = torch.randn(50, 3 * 36, generator=gen)
    (SpatialPyramidPooling((6,))(a, wins) * weights).sum().backward()
    b = feats.clone().requires_grad_(True)
    ref = torch.stack([F.adaptive_max_pool2d(b[0, :, y1:y2 + 1, x1:x2 + 1], 6).reshape(-1)
                       for _, x1, y1, x2, y2 in wins.tolist()])
    (ref * weights).sum().backward()
    assert torch.allclose(a.grad, b.grad, atol=1e-5, rtol=0)
