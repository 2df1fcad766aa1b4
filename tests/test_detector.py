import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from spp_det.errors import SppDetError
from spp_det.models import SPPNet, build_detector, build_trunk, postprocess_detections
from spp_det.models import detector as detector_module
from spp_det.models import heads as heads_module
from spp_det.models.resize import resize_factor


def small_net(num_classes=3, **kw):
    torch.manual_seed(0)
    trunk = build_trunk("zf5", width=0.25, norm="bn").freeze()
    return SPPNet(trunk, num_classes, hidden=64, scales=(224,), max_size=400, **kw).eval()


def image(h=300, w=400, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def random_boxes(n, h, w, seed=0):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * torch.tensor([w - 20, h - 20])
    wh = 10 + torch.rand(n, 2, generator=g) * 200
    return torch.cat([xy, torch.minimum(xy + wh, torch.tensor([w, h]))], 1)


@pytest.mark.parametrize("k", [0, 1, 2000])
def test_output_shapes(k):
    net = small_net()
    img = image()
    boxes = random_boxes(k, 300, 400)
    probs, per_class = net.detect_windows(img, boxes)
    assert probs.shape == (k, 4) and per_class.shape == (k, 3, 4)
    if k:
        assert torch.allclose(probs.sum(1), torch.ones(k))
        assert (per_class[..., 2] <= 400).all() and (per_class[..., 0] >= 0).all()
    det = net.predict(img, boxes, max_per_image=50)
    n = len(det["scores"])
    assert det["boxes"].shape == (n, 4) and det["labels"].shape == (n,) and n <= 50
    assert (det["labels"] >= 1).all() and (det["labels"] <= 3).all()
    assert (det["scores"][:-1] >= det["scores"][1:]).all()


def test_best_scale_choice_hand_computed():
    net = small_net()
    scales = (480, 576, 688, 864, 1200)
    boxes = torch.tensor([[0, 0, 100, 100], [0, 0, 300, 300], [0, 0, 50, 50], [0, 0, 130, 130.0]])
    # 208 * 375 / side: 780 -> 864; 260 -> 480; 1560 -> 1200; 600 -> 576
    assert net.select_scales(boxes, 375, 500, scales).tolist() == [3, 0, 4, 1]
    net.scale_target = 224.0  # the paper's "closest to 224x224": 224 * 375 / 130 = 646 -> 688
    assert net.select_scales(boxes[3:], 375, 500, scales).tolist() == [2]
    assert net.select_scales(boxes, 375, 500, (600,)).tolist() == [0, 0, 0, 0]


@pytest.mark.parametrize("name,target", [
    ("zf5", 13 * 16),                 # the released code's sz_conv_standard x step_standard
    ("alexnet", 13 * 16),             # conv5 of a 224 input: 13 x 13, stride 16
    ("vgg16", 14 * 16),               # conv5_3 of a 224 input: 14 x 14
    ("efficientnet_lite0", 14 * 16),  # stride-16 stage of a 224 input: 14 x 14
])
def test_scale_target_is_derived_from_the_trunk(name, target):
    trunk = build_trunk(name, pretrained=False)
    assert SPPNet(trunk, 2, hidden=8).scale_target == target
    assert SPPNet(trunk, 2, hidden=8, scale_target=200).scale_target == 200


def test_resize_factor():
    assert resize_factor(375, 500, 688, 2000) == pytest.approx(688 / 375)
    assert resize_factor(375, 500, 688, 800) == pytest.approx(800 / 500)


def test_pool_projects_each_window_on_its_scale_map():
    """Every window pooled on its own scale's map, against an independent oracle: the
    released code's box scaling and mex projection (transcribed in test_spp.py) and
    torch's adaptive_max_pool2d over the covered cells (the pyramid's bin rule), for 300
    random VOC-style windows. (The old reference scaled boxes by fx/fy, which differs from
    the released scaling on ~6% of windows: it could not see a wrong scaling.)"""
    import torch.nn.functional as F

    from test_spp import random_voc_boxes, released_mex_cells
    net = small_net()
    height, width = 200, 300
    img = image(height, width)
    scales = (224, 320)
    maps = net.compute_features(img, scales)
    voc = random_voc_boxes(300, width, height, seed=3, small=True)
    boxes = torch.tensor([[l - 1, t - 1, r, b] for l, t, r, b in voc], dtype=torch.float32)
    which = torch.tensor([k % 2 for k in range(len(voc))])
    pooled = net.pool(maps, boxes, which)
    for k, box in enumerate(voc):
        fm, scale = maps[int(which[k])], scales[int(which[k])]
        # the resized shorter side: scale, unless the longer side would pass max_size (400)
        s = round(min(scale / height, 400 / width) * height)
        map_h, map_w = fm.features.shape[-2:]
        scaled = [(v - 1) * (s - 1) / (min(height, width) - 1) + 1 for v in box]
        x1, y1, x2, y2 = [c - 1 for c in released_mex_cells(*scaled, map_w, map_h)]
        region = fm.features[None, :, y1:y2 + 1, x1:x2 + 1].float()
        ref = torch.cat([F.adaptive_max_pool2d(region, n).flatten() for n in net.spp.levels])
        assert torch.equal(pooled[k], ref), k
    # a 300 x 200 image at scale 224 is resized to 336 x 224 exactly; at 320 the cap of 400
    # on the longer side leaves 400 x 267
    assert (maps[0].fx, maps[0].fy) == (336 / 300, 224 / 200)
    assert round(maps[1].fx * width) == 400 and round(maps[1].fy * height) == 267


def test_zero_deltas_give_windows_and_postprocess():
    net = small_net()
    boxes = torch.tensor([[10.0, 10, 50, 60], [-5, 0, 30, 500]])
    out = net.decode(torch.zeros(2, 12), boxes, 300, 400)
    assert torch.equal(out[0], boxes[0].expand(3, 4))
    assert out[1, 0].tolist() == [0.0, 0.0, 30.0, 300.0]  # clipped
    probs = torch.tensor([[0.1, 0.8, 0.05, 0.05], [0.1, 0.7, 0.1, 0.1], [0.5, 0.0, 0.0, 0.5]])
    per_class = torch.tensor([[[0, 0, 10, 10.0]] * 3, [[1, 0, 11, 10.0]] * 3, [[50, 50, 60, 60.0]] * 3])
    det = postprocess_detections(probs, per_class, score_thresh=0.2, nms_thresh=0.3)
    # class 1: two overlapping boxes (IoU 0.82) -> one kept; class 3: the third window
    assert det["labels"].tolist() == [1, 3] and det["scores"].tolist() == pytest.approx([0.8, 0.5])


def test_box_voting_hand_case():
    # window 0: class 1 at [0, 0, 10, 10] (0.9); window 1: class 1 at [0, 0, 10, 12] (0.3),
    # IoU 100 / 120 = 0.833, so NMS 0.3 removes it; class 2's [0, 0, 10, 14] overlaps the
    # class-1 box but votes only for its own class
    probs = torch.tensor([[0.05, 0.9, 0.05], [0.2, 0.3, 0.5]])
    per_class = torch.tensor([[[0, 0, 10, 10.0], [0, 0, 10, 14.0]], [[0, 0, 10, 12.0], [50, 50, 60, 60.0]]])
    plain = postprocess_detections(probs, per_class, 0.01, 0.3)
    voted = postprocess_detections(probs, per_class, 0.01, 0.3, vote_thresh=0.5)
    assert voted["labels"].tolist() == plain["labels"].tolist() == [1, 2, 2]
    assert torch.equal(voted["scores"], plain["scores"])
    # (0.9 * 10 + 0.3 * 12) / 1.2 = 10.5; class 2's two boxes do not overlap: unchanged
    torch.testing.assert_close(voted["boxes"], torch.tensor([[0, 0, 10, 10.5], [50, 50, 60, 60], [0, 0, 10, 14]]))
    # at IoU 0.9 the 0.833 box no longer votes
    torch.testing.assert_close(postprocess_detections(probs, per_class, 0.01, 0.3, vote_thresh=0.9)["boxes"][0],
                               torch.tensor([0, 0, 10, 10.0]))
    # IoU exactly at the threshold votes (>=): [0, 0, 10, 20] against [0, 0, 10, 10] is 100 / 200
    per_class[1, 0] = torch.tensor([0, 0, 10, 20.0])
    torch.testing.assert_close(postprocess_detections(probs, per_class, 0.01, 0.3, vote_thresh=0.5)["boxes"][0],
                               torch.tensor([0, 0, 10, (0.9 * 10 + 0.3 * 20) / 1.2]))


def test_box_voting_matches_detectron_loop():
    """Oracle: Detectron's box_voting (utils/boxes.py), transcribed in numpy: for each
    class, NMS (torchvision's, run directly) over the candidates above the threshold,
    then each kept box = np.average of the candidates at IoU >= thresh, weights = scores.
    IoU by hand with continuous coordinates (the project's convention)."""
    from torchvision.ops import nms
    rng = np.random.default_rng(3)
    k, c, thresh = 60, 3, 0.6
    # windows jittered around 5 objects, so that many overlap at IoU >= thresh
    centre = rng.uniform(0, 80, (5, 2))[rng.integers(0, 5, (k, c))]
    xy = centre + rng.normal(0, 2.5, (k, c, 2))
    wh = 30 + rng.normal(0, 3, (k, c, 2))
    per_class = torch.tensor(np.concatenate([xy, xy + wh], 2), dtype=torch.float32)
    probs = torch.softmax(torch.tensor(rng.normal(0, 2, (k, c + 1)), dtype=torch.float32), 1)
    det = postprocess_detections(probs, per_class, 0.05, 0.3, max_per_image=1000, vote_thresh=thresh)

    def iou(a, b):
        iw = np.clip(np.minimum(a[2], b[:, 2]) - np.maximum(a[0], b[:, 0]), 0, None)
        ih = np.clip(np.minimum(a[3], b[:, 3]) - np.maximum(a[1], b[:, 1]), 0, None)
        inter = iw * ih
        return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]) - inter)

    for label in range(1, c + 1):
        s = probs[:, label].numpy().astype(np.float64)
        m = s > 0.05
        all_boxes, all_scores = per_class[:, label - 1].numpy().astype(np.float64)[m], s[m]
        top = nms(torch.tensor(all_boxes), torch.tensor(all_scores), 0.3).numpy()
        want = np.stack([np.average(all_boxes[iou(all_boxes[t], all_boxes) >= thresh], axis=0,
                                    weights=all_scores[iou(all_boxes[t], all_boxes) >= thresh]) for t in top])
        got = det["boxes"][det["labels"] == label].numpy()
        assert len(top) >= 3 and got.shape == want.shape
        assert np.abs(got - want).max() < 1e-3
        assert (np.abs(want - all_boxes[top]).max(1) > 0.1).sum() >= 2  # voting moved boxes


def test_build_detector_from_config():
    cfg = OmegaConf.load("configs/model/zf5.yaml")
    cfg.trunk.width, cfg.hidden = 0.25, 32
    net = build_detector(cfg, num_classes=20)
    assert net.head.cls_score.out_features == 21 and net.head.bbox_pred.out_features == 80
    assert net.head.fc6.in_features == 64 * 50
    assert not any(p.requires_grad for p in net.trunk.parameters())
    assert net.scales == (688,) and net.projection == "released"


FACTORIES = {torch.tensor, torch.zeros, torch.ones, torch.full, torch.empty, torch.arange, torch.eye,
             torch.linspace, torch.rand, torch.randn, torch.randint}


class RecordDeviceLessFactories(torch.overrides.TorchFunctionMode):
    """Records every tensor factory called without ``device=``: such a tensor lands on the
    CPU whatever device the model's inputs are on (the DDP-on-CUDA crash)."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in FACTORIES and kwargs.get("device") is None:
            import traceback
            self.calls.append((func.__name__, traceback.extract_stack(limit=3)[0]))
        return func(*args, **kwargs)


def test_training_forward_takes_every_device_from_its_inputs():
    """What a CPU-only suite can check of the device-agnostic rule: in the DDP entry point
    (SPPNet.forward, both regimes) no tensor is created without a device taken from an input."""
    net = small_net()
    net.train()
    img = image(120, 160)
    boxes = random_boxes(40, 120, 160)
    x, fx, fy = net.prepare(img, 224)
    with torch.no_grad():
        fmap = net.compute_features(img, (224,))[0]
    index = torch.zeros(40, dtype=torch.long)
    for inputs in ([fmap], [(x, fx, fy, img.shape[:2])]):
        with RecordDeviceLessFactories() as rec:
            logits, deltas = net(inputs, boxes, index)
        assert rec.calls == [], rec.calls
        assert logits.shape == (40, 4)


def test_min_input_size_is_what_the_trunk_accepts():
    """The padding size, checked against torch itself: the trunk runs on it, not on one less."""
    from spp_det.models.backbones import build_trunk as bt
    for name in ("zf5", "alexnet", "vgg16", "resnet50"):
        trunk = bt(name, width=0.25, norm="bn") if name == "zf5" else bt(name)
        trunk.eval()
        n = trunk.min_input
        with torch.no_grad():
            assert trunk(torch.zeros(1, 3, n, n)).shape[-1] >= 1
            with pytest.raises(RuntimeError):
                trunk(torch.zeros(1, 3, n - 1, n - 1))


def test_strip_image_too_small_for_the_trunk_is_padded():
    """A 3 x 900 image: at scale 224 the long-side cap (400) keeps it 1 px tall, far below the
    7x7 conv's reach; padding with the mean colour gives a map and valid detections."""
    net = small_net()
    strip = image(3, 900)
    x, fx, fy = net.prepare(strip, 224)
    assert (fx, fy) == (400 / 900, 1 / 3)  # the windows' coordinates are untouched by the padding
    assert x.shape[-2] == net.trunk.min_input and x.shape[-1] == 400
    assert torch.equal(x[..., 1:, :], torch.zeros_like(x[..., 1:, :]))  # normalised mean colour
    boxes = torch.tensor([[0.0, 0, 300, 3], [450, 0, 900, 3]])
    probs, per_class = net.detect_windows(strip, boxes)
    assert probs.shape == (2, 4) and torch.isfinite(probs).all()
    assert (per_class[..., 3] <= 3).all() and (per_class[..., 2] <= 900).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_forward_with_inputs_on_the_gpu_matches_cpu():
    """As DDP(device_ids=[i]) feeds it: boxes and map indices on the GPU."""
    net = small_net()
    img = image(120, 160)
    boxes = random_boxes(30, 120, 160)
    index = torch.zeros(30, dtype=torch.long)
    with torch.no_grad():
        ref = net([net.compute_features(img, (224,))[0]], boxes, index)
        gpu = net.cuda()
        out = gpu([gpu.compute_features(img, (224,))[0]], boxes.cuda(), index.cuda())
        det = gpu.predict(img, boxes)
    for a, b in zip(ref, out):
        assert b.device.type == "cuda" and torch.allclose(a, b.cpu(), atol=1e-3, rtol=1e-3)
    assert det["boxes"].shape[1] == 4


def test_test_time_flip_is_mirror_symmetric():
    """With test_flip, scoring the mirrored image and mirrored windows gives the same
    scores and the mirrored boxes: the average of the two views does not depend on which
    one the user passed."""
    from spp_det.boxes import flip_boxes
    net = small_net()
    net.test_flip = True
    img = image(120, 160)
    boxes = random_boxes(30, 120, 160)
    p1, b1 = net.detect_windows(img, boxes)
    p2, b2 = net.detect_windows(np.ascontiguousarray(img[:, ::-1]), flip_boxes(boxes, 160))
    assert torch.allclose(p1, p2, atol=1e-6)
    assert torch.allclose(b1, flip_boxes(b2.reshape(-1, 4), 160).reshape(b2.shape), atol=1e-3)
    net.test_flip = False
    p3, _ = net.detect_windows(img, boxes)
    assert not torch.allclose(p1, p3)  # the mirrored view did change the scores


def test_duplicate_windows_are_scored_once_with_the_same_result():
    """Windows that project to the same cells share one pooled vector: the deduplicated
    inference path gives every window exactly what the heads give its own vector, and
    every window's boxes are decoded from its OWN box (repeats shifted by half a pixel
    share cells and deltas but not boxes)."""
    torch.manual_seed(0)
    net = small_net().eval()
    img = image()
    boxes = random_boxes(40, 300, 400)
    boxes = torch.cat([boxes, boxes[:10], boxes[:10] + 0.5])  # exact repeats and sub-cell shifts
    with torch.no_grad():
        maps = net.compute_features(img, net.scales)
        index = net.select_scales(boxes, 300, 400, net.scales)
        logits, deltas = net.forward_windows(maps, boxes, index)
        ref_logits, ref_deltas = net.head(net.pool(maps, boxes, index))  # every window through the heads
        probs, per_class = net.detect_windows(img, boxes)
    assert torch.allclose(logits, ref_logits, atol=1e-5) and torch.allclose(deltas, ref_deltas, atol=1e-5)
    assert torch.equal(logits[40:50], logits[:10])
    shifted = net.project(maps, boxes[50:], index[50:])[:, 1:]
    same_cells = (shifted == net.project(maps, boxes[:10], index[:10])[:, 1:]).all(dim=1)
    assert same_cells.any()
    # the oracle: BoxCoder's decoding of each window's own box with the reference deltas
    own = net.box_coder.decode(ref_deltas, boxes).reshape(-1, 3, 4)
    own[..., 0::2] = own[..., 0::2].clamp(0, 400)
    own[..., 1::2] = own[..., 1::2].clamp(0, 300)
    assert torch.allclose(per_class, own, atol=1e-3)
    assert not torch.allclose(per_class[50:60][same_cells], per_class[:10][same_cells])  # own boxes, not shared


def test_bfloat16_inference_stays_close_to_float32():
    """bf16 autocast of trunk and heads: class probabilities within 0.02 and boxes within
    2 px of float32 here (bf16 keeps 8 bits of mantissa, ~0.4% per value)."""
    torch.manual_seed(0)
    net = small_net().eval()
    img, boxes = image(), random_boxes(60, 300, 400)
    p32, b32 = net.detect_windows(img, boxes)
    assert net.set_precision("bfloat16") == "bfloat16"
    p16, b16 = net.detect_windows(img, boxes)
    assert p16.dtype == torch.float32 and b16.dtype == torch.float32
    assert (p16 - p32).abs().max() < 0.02 and (b16 - b32).abs().max() < 2.0
    with pytest.raises(ValueError, match="precision 'half'"):
        net.set_precision("half")


def test_int8_heads_stay_close_to_float32_and_only_fc6_fc7_are_quantised():
    """int8 dynamic quantisation of fc6/fc7: weights rounded to 1/127 of their largest
    magnitude, activations to 1/255 of each batch's range; class probabilities within 0.05
    and boxes within 3 px of float32 here, while the outputs stay float32 layers."""
    torch.manual_seed(0)
    net = small_net().eval()
    img, boxes = image(), random_boxes(60, 300, 400)
    p32, b32 = net.detect_windows(img, boxes)
    assert net.set_precision("int8") == "int8"
    assert type(net.head.fc6).__name__ == "Linear" and net.head.fc6.__module__.startswith("torch.ao.nn.quantized")
    assert type(net.head.cls_score) is torch.nn.Linear and type(net.head.bbox_pred) is torch.nn.Linear
    p8, b8 = net.detect_windows(img, boxes)
    assert 0 < (p8 - p32).abs().max() < 0.05 and (b8 - b32).abs().max() < 3.0
    with pytest.raises(ValueError, match="int8 already"):
        net.set_precision("float32")


def test_auto_precision_takes_the_fastest_heads_timed_here(monkeypatch):
    """``auto`` on a CPU times the model's own heads (and trunk) in each precision and keeps
    the most exact one within 10% of the fastest; bfloat16 is a candidate only where the
    CPU multiplies it natively."""
    def timer_for(times):
        def timer(head, x, bf16=False):
            assert x.shape == (512, head.fc6.in_features)
            quantised = head.fc6.__module__.startswith("torch.ao.nn.quantized")
            return times["int8" if quantised else ("bfloat16" if bf16 else "float32")]
        return timer

    net = small_net().eval()
    assert heads_module.fastest_head(net.head, True, timer=timer_for({"float32": 3, "bfloat16": 1, "int8": 2})) == "bfloat16"
    assert heads_module.fastest_head(net.head, False, timer=timer_for({"float32": 3, "bfloat16": 1, "int8": 2})) == "int8"
    assert heads_module.fastest_head(net.head, True, timer=timer_for({"float32": 1, "bfloat16": 2, "int8": 3})) == "float32"
    # within 10% of the fastest the more exact one is kept (bf16 costs no accuracy, int8 some)
    assert heads_module.fastest_head(net.head, True, timer=timer_for({"float32": 3, "bfloat16": 1.09, "int8": 1})) == "bfloat16"
    assert heads_module.fastest_head(net.head, True, timer=timer_for({"float32": 3, "bfloat16": 1.11, "int8": 1})) == "int8"
    assert heads_module.fastest_head(net.head, False, timer=timer_for({"float32": 1.05, "int8": 1})) == "float32"
    assert type(net.head.fc6) is torch.nn.Linear  # timing int8 quantised a copy, not the model
    # with the trunk: int8 leaves it float32, bf16 autocasts it too, so bf16 can win overall
    def timer(module, x, bf16=False):
        if module is net.trunk:
            return 2.0 if bf16 else 5.0
        return timer_for({"float32": 3, "bfloat16": 1.5, "int8": 1})(module, x, bf16)
    assert heads_module.fastest_head(net.head, True, timer=timer) == "int8"
    assert heads_module.fastest_head(net.head, True, timer=timer, trunk=net.trunk) == "bfloat16"
    monkeypatch.setattr(detector_module, "fastest_head", lambda head, bf16, trunk=None: "int8")
    assert net.set_precision("auto") == "int8" and net.head.fc6.__module__.startswith("torch.ao.nn.quantized")
    assert net.set_precision("auto") == "int8"  # already int8: stays, not timed again


def test_truncated_svd_at_full_rank_reproduces_the_heads():
    torch.manual_seed(0)
    net = small_net().eval()
    x = torch.randn(7, net.head.fc6.in_features)
    with torch.no_grad():
        ref = net.head(x)
        hidden = net.head.fc6.out_features
        net.compress((hidden, hidden))  # full rank of fc6 (hidden x in, hidden < in) and fc7
        out = net.head(x)
    assert isinstance(net.head.fc6, torch.nn.Sequential) and net.head.fc6[0].out_features == hidden
    assert torch.allclose(out[0], ref[0], atol=1e-4) and torch.allclose(out[1], ref[1], atol=1e-4)
    # a lower rank is the best approximation of that rank: error equals the dropped singular values
    w = torch.randn(30, 50, dtype=torch.float64)
    layer = torch.nn.Linear(50, 30).double()
    with torch.no_grad():
        layer.weight.copy_(w)
    from spp_det.models.heads import truncated_linear
    low = truncated_linear(layer, 10)
    approx = low[1].weight @ low[0].weight
    s = torch.linalg.svdvals(w)
    assert torch.allclose(torch.linalg.matrix_norm(w - approx), s[10:].norm(), rtol=1e-9)


def alexnet_files(tmp_path):
    """A torchvision AlexNet with random weights saved as the two files a user has: the
    whole network (torchvision's format) and its conv body (the trunk's weights_path)."""
    import torchvision
    torch.manual_seed(0)
    tv = torchvision.models.alexnet(weights=None).eval()
    torch.save(tv.state_dict(), tmp_path / "alexnet.pth")
    torch.save(tv.features[:12].state_dict(), tmp_path / "alexnet_body.pth")
    return tv


def alexnet_cfg(tmp_path, levels, **kw):
    cfg = OmegaConf.load("configs/model/alexnet.yaml")
    cfg.trunk.pretrained = False
    cfg.trunk.weights_path = str(tmp_path / "alexnet_body.pth")
    cfg.fc_weights_path = str(tmp_path / "alexnet.pth")
    cfg.levels = levels
    cfg.dropout = 0.0
    cfg.scales = [224]
    for key, value in kw.items():
        OmegaConf.update(cfg, key, value)
    return cfg


def test_fc6_fc7_start_from_the_imagenet_classifier(tmp_path):
    tv = alexnet_files(tmp_path)
    fc6, fc7 = tv.classifier[1], tv.classifier[4]
    # {6, 3, 2, 1}: the 6x6 level is the first 256 * 36 = 9216 columns, (C, 6, 6) row-major
    # like torchvision's flatten of pool5; the 256 * 14 columns of levels 3, 2, 1 start at zero
    net = build_detector(alexnet_cfg(tmp_path, [6, 3, 2, 1]), 3)
    assert net.head.fc6.weight.shape == (4096, 256 * 50)
    assert torch.equal(net.head.fc6.weight[:, :9216], fc6.weight)
    assert not net.head.fc6.weight[:, 9216:].any()
    assert torch.equal(net.head.fc6.bias, fc6.bias) and torch.equal(net.head.fc7.weight, fc7.weight)
    assert torch.equal(net.head.fc7.bias, fc7.bias)
    # another order: the 6 level's columns follow the 1 and 2 levels' 256 * 5
    net = build_detector(alexnet_cfg(tmp_path, [1, 2, 6]), 3)
    assert torch.equal(net.head.fc6.weight[:, 1280:1280 + 9216], fc6.weight)
    # {6} alone, on a 224 x 224 image: the whole-image window's 13 cells fall into the 6
    # bins [0,3), [2,5), ..., [10,13), which are pool5's 3x3/2 windows, so fc7 equals
    # torchvision's own network on that image (its avgpool is the identity on 6 x 6)
    net = build_detector(alexnet_cfg(tmp_path, [6]), 3).eval()
    img = image(224, 224, seed=3)
    with torch.no_grad():
        x = net.trunk.normalize(torch.as_tensor(img).permute(2, 0, 1)[None])
        expected = tv.classifier[:6](torch.flatten(tv.avgpool(tv.features(x)), 1))
        maps = net.compute_features(img, (224,))
        pooled = net.pool(maps, torch.tensor([[0.0, 0.0, 224.0, 224.0]]), torch.zeros(1, dtype=torch.long))
        ours = net.head.features(pooled)
    assert torch.allclose(ours, expected, rtol=1e-4, atol=1e-4)
    # a checkpoint brings its own weights: nothing is read
    cfg = alexnet_cfg(tmp_path, [6, 3, 2, 1], fc_weights_path=str(tmp_path / "gone.pth"))
    assert build_detector(cfg, 3, pretrained=False).head.fc6.weight[:, 9216:].any()


def test_fc_init_errors_name_the_problem(tmp_path):
    alexnet_files(tmp_path)
    with pytest.raises(SppDetError, match=r"needs a 6 level \(e.g. \[6\] or \[6, 3, 2, 1\]\)"):
        build_detector(alexnet_cfg(tmp_path, [3, 2, 1]), 3)
    with pytest.raises(SppDetError, match=r"hidden must be 4096"):
        build_detector(alexnet_cfg(tmp_path, [6], hidden=512), 3)
    torch.save({"features.0.weight": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(SppDetError, match=r"other.pth: not a torchvision alexnet state dict \(no classifier.1.weight"):
        build_detector(alexnet_cfg(tmp_path, [6], fc_weights_path=str(tmp_path / "other.pth")), 3)
    # offline and not downloading the trunk: the fc weights must come from a file
    with pytest.raises(SppDetError, match=r"give the ImageNet alexnet weights as model.fc_weights_path"):
        build_detector(alexnet_cfg(tmp_path, [6], fc_weights_path=None), 3)
    cfg = OmegaConf.load("configs/model/zf5_small.yaml")
    cfg.fc_init = "imagenet"
    with pytest.raises(SppDetError, match=r"trunk 'zf5' has no ImageNet fc6/fc7"):
        build_detector(cfg, 3)
