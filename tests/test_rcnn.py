import numpy as np
import torch
import torch.nn.functional as F

from spp_det.models import RCNN, SPPNet, build_trunk
from spp_det.models.rcnn import context_boxes


def test_context_boxes():
    out = context_boxes(torch.tensor([[0.0, 0, 192, 96]]))
    # 224 / 192 larger about the centre (96, 48): 224 x 112
    assert torch.allclose(out, torch.tensor([[-16.0, -8, 208, 104]]))


def test_rcnn_window_equals_hand_pipeline():
    torch.manual_seed(0)
    trunk = build_trunk("zf5", width=0.25, norm="bn").freeze()
    net = SPPNet(trunk, 2, hidden=32).eval()
    rcnn = RCNN(net, batch_size=2).eval()
    img = np.random.default_rng(0).integers(0, 256, (300, 320, 3), dtype=np.uint8)
    boxes = torch.tensor([[100.0, 80, 180, 160], [120, 100, 200, 150], [60, 70, 240, 230]])
    probs, per_class = rcnn.detect_windows(img, boxes)
    assert probs.shape == (3, 3) and per_class.shape == (3, 2, 4)
    # by hand for window 1: context box, bilinear warp with grid_sample, trunk, whole-map SPP, heads
    x = trunk.normalize(torch.from_numpy(img).permute(2, 0, 1)[None])
    x1, y1, x2, y2 = context_boxes(boxes[1:2])[0].tolist()
    j = torch.arange(224, dtype=torch.float64) + 0.5
    px = x1 + j * (x2 - x1) / 224 - 0.5  # pixel-index coordinates of the sample points
    py = y1 + j * (y2 - y1) / 224 - 0.5
    gx = (2 * px + 1) / 320 - 1
    gy = (2 * py + 1) / 300 - 1
    grid = torch.stack(torch.meshgrid(gy, gx, indexing="ij")[::-1], dim=-1)[None].float()
    crop = F.grid_sample(x, grid, mode="bilinear", align_corners=False)
    with torch.no_grad():
        fmap = trunk(crop)
        assert fmap.shape[-2:] == (13, 13)
        vec = net.spp(fmap, torch.tensor([[0, 0, 0, 12, 12]]))
        logits, deltas = net.head(vec)
    assert torch.allclose(probs[1], torch.softmax(logits, 1)[0], atol=1e-5)
    assert torch.allclose(per_class[1], net.decode(deltas, boxes[1:2], 300, 320)[0], atol=1e-3)
    det = rcnn.predict(img, boxes, score_thresh=0.0)
    assert det["boxes"].shape[1] == 4
