"""Training and inference pool the same vector for the same window, on a real VOC photo.

The training path (FrozenBatches: the float16 conv-map cache, the flipped map with the
mirrored windows, each window at its drawn scale) against the inference path (the trunk
run on the photo, or on the mirrored photo, in float32), window by window. A mismatch here
(a flip, a scale, a projection or a cache rounding that differs) would teach the heads on
vectors inference never shows them."""
import torch

from conftest import SHARED, need_shared
from spp_det.boxes import BoxCoder
from spp_det.data import VOC_CLASSES, load_voc
from spp_det.inference.conv_maps import FeatureCache
from spp_det.models import SPPNet, build_trunk
from spp_det.training.batches import FrozenBatches
from spp_det.training.sampling import Draw, label_windows

VOC1800 = SHARED / "voc2012-1800"


def test_training_and_inference_pool_the_same_vector_on_a_real_photo(tmp_path):
    need_shared(VOC1800)
    ds = load_voc(VOC1800, [("VOC2012", "val")], ["dog", "cat", "person", "horse", "sheep", "cow"],
                  "voc2012_1800", VOC_CLASSES).take([0, 1])
    t = ds.targets[0]
    image = ds[0][0]
    torch.manual_seed(0)
    scales = (224, 320)
    model = SPPNet(build_trunk("efficientnet_lite0", pretrained=True).freeze(), 6, hidden=16, scales=scales,
                   train_scales=scales).eval()
    g = torch.Generator().manual_seed(0)
    h, w = t.height, t.width
    xy = torch.rand(60, 2, generator=g) * torch.tensor([w - 40.0, h - 40.0])
    windows = torch.cat([t.boxes, torch.cat([xy, torch.minimum(xy + 20 + torch.rand(60, 2, generator=g) * 300,
                                                                torch.tensor([w, h]))], 1)])
    entry = label_windows(0, w, windows, t.boxes, t.labels, 0.5, (0.0, 0.5), height=h)
    cache = FeatureCache(tmp_path / "maps", model)
    for s in scales:
        for flip in (False, True):
            cache.get(t.path, s, flip, load_image=lambda: image)
    batches = FrozenBatches(ds, [entry], scales, BoxCoder(), cache.reader())
    pick = torch.arange(len(windows))
    per_window_scale = pick % 2  # every window at one of the two scales
    for flip in (False, True):
        batch = batches[[Draw(0, pick, flip, per_window_scale)]]
        inputs, boxes, index = batch.model_inputs(model, torch.device("cpu"))
        with torch.no_grad():
            trained = model.pool(inputs, boxes, index)
            seen = image[:, ::-1].copy() if flip else image
            maps = model.compute_features(seen, scales)
            mirrored = torch.stack([w - windows[:, 2], windows[:, 1], w - windows[:, 0], windows[:, 3]], 1) \
                if flip else windows
            assert torch.equal(boxes, mirrored)  # training's mirrored windows, by hand
            inferred = model.pool(maps, mirrored, per_window_scale)
        # the cache holds float16: each pooled value within float16 rounding of float32's
        err = (trained - inferred).abs() / inferred.abs().clamp(min=1.0)
        assert float(err.max()) < 2e-3, (flip, float(err.max()))
        # and the same cells: a one-cell shift would move whole bins (errors >> 1e-2)
        assert torch.equal(model.project(inputs, boxes, index), model.project(maps, mirrored, per_window_scale))
