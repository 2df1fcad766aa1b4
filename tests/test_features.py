import numpy as np
import torch

from spp_det.engine.features import FeatureCache
from spp_det.models import SPPNet, build_trunk


def _model():
    torch.manual_seed(0)
    return SPPNet(build_trunk("zf5", width=0.25, norm="bn").freeze(), 2, hidden=16).eval()


def test_cache_computes_once_and_decodes_only_on_a_miss(tmp_path):
    model = _model()
    image = np.random.default_rng(0).integers(0, 256, (120, 160, 3), dtype=np.uint8)
    calls = []

    def load():
        calls.append(1)
        return image

    cache = FeatureCache(tmp_path, model)
    a = cache.get("img", load, 160, flip=False)
    b = cache.get("img", load, 160, flip=False)  # memory hit
    assert (cache.computed, cache.loaded, len(calls)) == (1, 0, 1)
    assert torch.equal(a.features, b.features)
    # float16 on disk; the map equals the trunk's output rounded to float16
    ref = model.compute_features(image, (160,))[0].features.half().float()
    # 120 x 160 at scale 160: shorter side 120 -> 160, width round(213.3) = 213
    assert torch.equal(a.features, ref) and (a.fx, a.fy) == (213 / 160, 160 / 120)
    flipped = cache.get("img", load, 160, flip=True)
    assert cache.computed == 2 and not torch.equal(flipped.features, a.features)
    # no memory: the second process-level read comes from disk, without decoding the image
    disk = FeatureCache(tmp_path, model, memory_mb=0)
    c = disk.get("img", load, 160, flip=False)
    assert (disk.computed, disk.loaded, len(calls)) == (0, 1, 2) and torch.equal(c.features, a.features)
    # a damaged file is recomputed
    disk.path("img", 160, False).write_bytes(b"garbage")
    disk.get("img", load, 160, flip=False)
    assert disk.computed == 1 and len(calls) == 3
