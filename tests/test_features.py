import cv2
import numpy as np
import torch

from spp_det.data import SHAPES_CLASSES, generate_shapes, load_voc, read_image
from spp_det.inference.conv_maps import FeatureCache
from spp_det.models import SPPNet, build_trunk


def _model():
    torch.manual_seed(0)
    return SPPNet(build_trunk("zf5", width=0.25, norm="bn").freeze(), 2, hidden=16).eval()


def test_cache_computes_once_and_decodes_only_on_a_miss(tmp_path):
    model = _model()
    image = np.random.default_rng(0).integers(0, 256, (120, 160, 3), dtype=np.uint8)
    path = tmp_path / "img.png"
    cv2.imwrite(str(path), image[:, :, ::-1])
    calls = []

    def load():
        calls.append(1)
        return image

    cache = FeatureCache(tmp_path / "cache", model)
    a = cache.get(path, 160, False, load)
    b = cache.get(path, 160, False, load)  # memory hit
    assert (cache.computed, cache.loaded, len(calls)) == (1, 0, 1)
    assert torch.equal(a.features, b.features)
    # float16 on disk; the map equals the trunk's output rounded to float16
    ref = model.compute_features(image, (160,))[0].features.half().float()
    # 120 x 160 at scale 160: shorter side 120 -> 160, width round(213.3) = 213
    assert torch.equal(a.features.float(), ref) and (a.fx, a.fy) == (213 / 160, 160 / 120)
    flipped = cache.get(path, 160, True, load)
    assert cache.computed == 2 and not torch.equal(flipped.features, a.features)
    # no memory: the second process-level read comes from disk, without decoding the image
    disk = FeatureCache(tmp_path / "cache", model, memory_mb=0)
    c = disk.get(path, 160, False, load)
    assert (disk.computed, disk.loaded, len(calls)) == (0, 1, 2) and torch.equal(c.features, a.features)
    # a damaged file is recomputed
    disk.path(path, 160, False).write_bytes(b"garbage")
    disk.get(path, 160, False, load)
    assert disk.computed == 1 and len(calls) == 3
    # another long-side cap is another resize rule: its own entry
    model.max_size = 150
    capped = FeatureCache(tmp_path / "cache", model, memory_mb=0)
    d = capped.get(path, 160, False, load)
    assert capped.computed == 1 and d.features.shape != a.features.shape and (d.fx, d.fy) == (150 / 160, 112 / 120)


def test_two_shapes_sets_with_overlapping_ids_never_share_a_map(tmp_path):
    """Both sets name their images 000000, 000001, ...: one cache must keep them apart."""
    model = _model()
    sets = []
    for seed in (0, 1):
        generate_shapes(tmp_path / f"s{seed}", num_trainval=2, num_test=1, seed=seed)
        sets.append(load_voc(tmp_path / f"s{seed}", [("SHAPES", "trainval")], default_classes=SHAPES_CLASSES))
    assert [t.image_id for t in sets[0].targets] == [t.image_id for t in sets[1].targets]
    cache = FeatureCache(tmp_path / "cache", model)
    for ds in sets:
        for t in ds.targets:
            fm = cache.get(t.path, 128, False, lambda p=t.path: read_image(p))
            ref = model.compute_features(read_image(t.path), (128,))[0]
            assert torch.equal(fm.features.float(), ref.features.half().float()) and (fm.fx, fm.fy) == (ref.fx, ref.fy)
    assert cache.computed == 4 and len(list(cache.dir.rglob("*.pt"))) == 4


def test_fill_states_the_size_and_refuses_a_disk_too_small(tmp_path, shapes_root, monkeypatch, capsys):
    import shutil as real_shutil

    import pytest

    import spp_det.inference.conv_maps as features
    from spp_det.errors import SppDetError
    model = _model()
    ds = load_voc(shapes_root, [("SHAPES", "trainval")], default_classes=SHAPES_CLASSES).take([0, 2])
    cache = FeatureCache(tmp_path / "cache", model)
    t = ds.targets[0]
    # the estimate is the size of the map the trunk really makes
    real = model.compute_features(read_image(t.path), (160,))[0].features
    assert cache.map_bytes(t.height, t.width, 160) == real.numel() * 2
    usage = real_shutil.disk_usage(tmp_path)
    monkeypatch.setattr(features.shutil, "disk_usage", lambda p: usage._replace(free=1000))
    with pytest.raises(SppDetError, match=r"the conv-map cache needs 0.0 GiB more but the disk has 0.0 GiB free"):
        cache.fill(ds, (160, 128), (False, True))
    assert "conv-map cache" in capsys.readouterr().err and cache.computed == 0
    monkeypatch.setattr(features.shutil, "disk_usage", lambda p: usage)
    assert cache.fill(ds, (160, 128), (False, True), progress=False) == [] and cache.computed == 8
    total = sum(cache.map_bytes(x.height, x.width, s) for x in ds.targets for s in (160, 128)) * 2
    assert f"8 maps, about {total / 2 ** 30:.2f} GiB" in capsys.readouterr().err


def test_a_good_map_is_kept_when_reading_it_fails_for_another_reason(tmp_path, monkeypatch):
    """Only a provably damaged file is deleted: an OSError on load (too many open files, a
    flaky disk) used to delete a good map; now it is an error naming the file, the file kept."""
    import errno

    import pytest

    import spp_det.inference.conv_maps as conv_maps
    from spp_det.errors import SppDetError
    model = _model()
    image = np.random.default_rng(1).integers(0, 256, (64, 80, 3), dtype=np.uint8)
    path = tmp_path / "img.png"
    cv2.imwrite(str(path), image[:, :, ::-1])
    FeatureCache(tmp_path / "cache", model).get(path, 96, False, lambda: image)
    reader = FeatureCache(tmp_path / "cache", model, memory_mb=0)
    stored = reader.path(path, 96, False)
    good = stored.read_bytes()

    def emfile(*args, **kwargs):
        raise OSError(errno.EMFILE, "Too many open files")
    monkeypatch.setattr(conv_maps.torch, "load", emfile)
    with pytest.raises(SppDetError, match=rf"{stored}: cannot read the cached conv map \(Too many open files\)"):
        reader.load(path, 96, False)
    assert stored.read_bytes() == good
    monkeypatch.undo()
    # a read-only cache with a damaged file: counted as missing, no crash on the unlink
    stored.write_bytes(b"garbage")
    monkeypatch.setattr(type(stored), "unlink", lambda self, missing_ok=False: (_ for _ in ()).throw(
        PermissionError(errno.EROFS, "Read-only file system")))
    assert reader.load(path, 96, False) is None and stored.read_bytes() == b"garbage"


def test_a_full_disk_is_one_clear_error_for_maps_and_proposals(tmp_path, monkeypatch):
    """A real OSError(ENOSPC) while writing a conv map or proposals: one SppDetError naming
    the file (the scripts print it as one line), no temp file left."""
    import errno
    import os

    import pytest

    from spp_det.errors import SppDetError
    from spp_det.proposals import ProposalStore, SelectiveSearchConfig, compute_missing
    model = _model()
    image = np.random.default_rng(2).integers(0, 256, (64, 80, 3), dtype=np.uint8)
    path = tmp_path / "img.png"
    cv2.imwrite(str(path), image[:, :, ::-1])

    ss = SelectiveSearchConfig(mode="fast", max_size=100, min_size=4, max_boxes=50)
    store = ProposalStore(tmp_path / "props", ss.as_dict())
    cache = FeatureCache(tmp_path / "cache", model)

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(SppDetError, match=r"_s96_m\d+\.v2\.pt: cannot write \(No space left on device\)"):
        cache.get(path, 96, False, lambda: image)
    with pytest.raises(SppDetError, match=r"cannot write \(No space left on device\)"):
        compute_missing(store, [path], ss, workers=1, progress=False)
    left = [p for p in tmp_path.rglob("*") if p.is_file() and p.suffix == ".tmp"]
    assert left == []
