import math

import torch

from spp_det import boxes as B


def test_iou_known_values():
    a = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    b = torch.tensor([[5.0, 0.0, 15.0, 10.0], [0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0]])
    iou = B.box_iou(a, b)
    assert torch.allclose(iou, torch.tensor([[1 / 3, 1.0, 0.0]]))


def test_voc_and_coco_conversions_roundtrip():
    voc = torch.tensor([[1.0, 1.0, 10.0, 20.0]])  # 10 x 20 pixels, 1-based inclusive
    xyxy = B.voc_to_xyxy(voc)
    assert xyxy.tolist() == [[0.0, 0.0, 10.0, 20.0]]
    assert B.xyxy_to_voc(xyxy).tolist() == voc.tolist()
    assert B.xyxy_to_xywh(xyxy).tolist() == [[0.0, 0.0, 10.0, 20.0]]
    assert B.xywh_to_xyxy(torch.tensor([[3.0, 4.0, 5.0, 6.0]])).tolist() == [[3.0, 4.0, 8.0, 10.0]]


def test_encode_known_deltas_and_decode_inverts():
    coder = B.BoxCoder(weights=(1.0, 1.0, 1.0, 1.0))
    window = torch.tensor([[0.0, 0.0, 10.0, 20.0]])
    gt = torch.tensor([[5.0, 0.0, 25.0, 20.0]])  # centre moves +10 px, width doubles
    d = coder.encode(gt, window)
    assert torch.allclose(d, torch.tensor([[1.0, 0.0, math.log(2.0), 0.0]]))
    coder10 = B.BoxCoder()
    g = torch.rand(50, 4) * 100
    g[:, 2:] += g[:, :2] + 1
    w = torch.rand(50, 4) * 100
    w[:, 2:] += w[:, :2] + 1
    assert torch.allclose(coder10.decode(coder10.encode(g, w), w), g, atol=1e-3)


def test_decode_class_specific_layout_and_clamp():
    coder = B.BoxCoder(weights=(1.0, 1.0, 1.0, 1.0))
    window = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    deltas = torch.tensor([[0.0, 0.0, 0.0, 0.0, 0.1, 0.0, 100.0, 0.0]])  # two classes
    out = coder.decode(deltas, window)
    assert out.shape == (1, 8)
    assert out[0, :4].tolist() == [0.0, 0.0, 10.0, 10.0]
    # dw clamped to log(1000/16): width 10 * 62.5 = 625 around centre 5 + 0.1 * 10 = 6
    assert torch.allclose(out[0, 4:], torch.tensor([6 - 312.5, 0.0, 6 + 312.5, 10.0]))


def test_clip_flip_and_min_size():
    b = torch.tensor([[-5.0, 2.0, 50.0, 8.0], [1.0, 1.0, 2.0, 30.0]])
    assert B.clip_boxes(b, (20, 40)).tolist() == [[0.0, 2.0, 40.0, 8.0], [1.0, 1.0, 2.0, 20.0]]
    assert B.keep_min_size(b, 2.0).tolist() == [0]
    assert B.flip_boxes(torch.tensor([[0.0, 1.0, 10.0, 2.0]]), 100).tolist() == [[90.0, 1.0, 100.0, 2.0]]
    # upside down in a 50 px tall image: rows [1, 12) become [50 - 12, 50 - 1) = [38, 49)
    assert B.vflip_boxes(torch.tensor([[3.0, 1.0, 10.0, 12.0]]), 50).tolist() == [[3.0, 38.0, 10.0, 49.0]]
