import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import COCO128, need_shared
from spp_det.data import CocoDetection, load_voc, read_image
from spp_det.errors import SppDetError
from spp_det.proposals import (ProposalStore, SelectiveSearchConfig, compute_missing, proposal_recall,
                               proposals_for, selective_search, shard_items)

SMALL = SelectiveSearchConfig(mode="fast", max_size=200, min_size=4, max_boxes=300)


def _shapes(shapes_root):
    return load_voc(shapes_root, [("SHAPES", "trainval")], ["ellipse", "rectangle", "triangle"])


def test_boxes_valid_in_original_pixels_and_deterministic(shapes_root):
    image, target = _shapes(shapes_root)[0]
    h, w = image.shape[:2]
    boxes = selective_search(image, SMALL)  # searched at 200 px, image is 300-500 px
    assert boxes.dtype == np.float32 and boxes.ndim == 2 and 0 < len(boxes) <= 300
    assert (boxes[:, 0] < boxes[:, 2]).all() and (boxes[:, 1] < boxes[:, 3]).all()
    assert (boxes >= 0).all() and (boxes[:, 2] <= w).all() and (boxes[:, 3] <= h).all()
    assert boxes[:, 2].max() > 0.9 * w  # scaled back: windows reach the far side
    assert len(np.unique(boxes, axis=0)) == len(boxes)
    assert ((boxes[:, 2:] - boxes[:, :2]) >= 4).all()
    np.testing.assert_array_equal(boxes, selective_search(image, SMALL))
    # the windows find the shapes: every object at IoU >= 0.5 on this clean image
    r = proposal_recall([torch.from_numpy(boxes)], [target.boxes])
    assert r["recall@0.5"] == 1.0


def test_recall_on_hand_made_boxes():
    gt = [torch.tensor([[0.0, 0, 10, 10], [0, 0, 100, 100]]), torch.tensor([[0.0, 0, 40, 40]])]
    props = [torch.tensor([[0.0, 0, 10, 5],      # IoU .5 with gt0
                           [0, 0, 100, 80]]),    # IoU .8 with gt1
             torch.tensor([[50.0, 50, 60, 60]])]  # misses gt2
    r = proposal_recall(props, gt, top_k=(1, 2))
    assert r["num_gt"] == 3
    assert r["recall@0.5"] == pytest.approx(2 / 3)
    assert r["recall@0.7"] == pytest.approx(1 / 3)
    # AR over .5:.05:.95: gt0 counts at t=.5 only, gt1 at .5...8 (7 of 10), gt2 never
    assert r["average_recall"] == pytest.approx((1 + 7) / 10 / 3)
    # gt0 (100 px^2) small, hit; gt2 (1600 px^2) medium, missed; gt1 (10^4 px^2) large, hit
    assert r["recall@0.5_by_size"] == {"small": 1.0, "medium": 0.0, "large": 1.0}
    assert r["recall_vs_num_proposals"]["1"]["0.5"] == pytest.approx(1 / 3)
    assert r["mean_boxes_per_image"] == 1.5


def _items(ds):
    return [t.path for t in ds.targets]


def test_interrupted_run_resumes_to_same_store(tmp_path, shapes_root):
    ds = _shapes(shapes_root)
    ref = ProposalStore(tmp_path / "ref", SMALL.as_dict())
    compute_missing(ref, _items(ds), SMALL, workers=1, progress=False)
    store = ProposalStore(tmp_path / "cache", SMALL.as_dict())

    class Killed(Exception):
        pass

    done = []

    def stop_after_three(key):
        done.append(key)
        if len(done) == 3:
            raise Killed  # the pool is torn down mid-way (terminate on leaving the with-block)

    with pytest.raises(Killed):
        compute_missing(store, _items(ds), SMALL, workers=2, progress=False, on_done=stop_after_three)
    files = list(store.dir.rglob("*.boxes"))
    assert 3 <= len(files) < len(ds)
    # a write that died half-way: a truncated entry and a stray temp file
    victim = store.path(ds.targets[-1].path)
    victim.parent.mkdir(exist_ok=True)
    victim.write_bytes(ref.path(ds.targets[-1].path).read_bytes()[:40])
    (store.dir / ".stray.boxes.tmp123").write_bytes(b"xx")
    stats = compute_missing(store, _items(ds), SMALL, workers=2, progress=False)
    assert stats.cached + stats.computed == len(ds) and stats.cached >= 3
    assert store.corrupt_found == 1
    for t in ds.targets:
        assert store.path(t.path).read_bytes() == ref.path(t.path).read_bytes()


def test_corrupt_file_detected_and_recomputed(tmp_path, shapes_root):
    ds = _shapes(shapes_root)
    image, t = ds[1]
    store = ProposalStore(tmp_path, SMALL.as_dict())
    good = proposals_for(store, t.path, image, SMALL)
    data = bytearray(store.path(t.path).read_bytes())
    data[-3] ^= 0xFF  # flip bits in the payload: the CRC catches it
    store.path(t.path).write_bytes(bytes(data))
    assert store.get(t.path) is None
    np.testing.assert_array_equal(proposals_for(store, t.path, image, SMALL), good)
    np.testing.assert_array_equal(store.get(t.path), good)


def test_settings_change_uses_another_directory(tmp_path):
    a = ProposalStore(tmp_path, SMALL.as_dict())
    b = ProposalStore(tmp_path, {**SMALL.as_dict(), "max_size": 201})
    assert a.dir != b.dir and a.dir.parent == b.dir.parent
    (tmp_path / "x.jpg").write_bytes(b"some bytes")
    a.put(tmp_path / "x.jpg", np.ones((2, 4), np.float32))
    assert b.get(tmp_path / "x.jpg") is None


def test_store_is_keyed_by_image_content_not_by_id(tmp_path):
    """A split whose images change under the same ids gets new windows; one image reached
    through two data set configs (voc07 / voc0712 share VOC2007 trainval) is searched once."""
    from spp_det.data import generate_shapes
    from spp_det.data.shapes import SHAPES_CLASSES
    store = ProposalStore(tmp_path / "cache", SMALL.as_dict())
    root = tmp_path / "set"
    generate_shapes(root, num_trainval=3, num_test=1, seed=0)
    old = load_voc(root, [("SHAPES", "trainval")], default_classes=SHAPES_CLASSES)
    assert compute_missing(store, _items(old), SMALL, workers=1, progress=False).computed == 3
    before = [store.get(t.path) for t in old.targets]
    # the same folder regenerated with another seed: same ids, other pictures
    generate_shapes(root, num_trainval=3, num_test=1, seed=5)
    new = load_voc(root, [("SHAPES", "trainval")], default_classes=SHAPES_CLASSES)
    assert [t.image_id for t in new.targets] == [t.image_id for t in old.targets]
    assert all(store.get(t.path) is None for t in new.targets)  # nothing stale is served
    assert not any(store.has(t.path) for t in new.targets) and not store.has(tmp_path / "no such file.jpg")
    stats = compute_missing(store, _items(new), SMALL, workers=1, progress=False)
    assert (stats.computed, stats.cached) == (3, 0)
    assert all(store.has(t.path) for t in new.targets)
    for t, b in zip(new.targets, before):
        fresh = selective_search(read_image(t.path), SMALL)
        np.testing.assert_array_equal(store.get(t.path), fresh)
        assert not np.array_equal(fresh, b)
    # two configs over the same files (and a copy elsewhere): every entry is a hit
    copy = tmp_path / "copy.jpg"
    copy.write_bytes(new.targets[0].path.read_bytes())
    again = compute_missing(store, _items(new) + [copy], SMALL, workers=1, progress=False)
    assert (again.computed, again.cached) == (0, 4)


def test_mat_import_round_trips_known_boxes(tmp_path):
    scipy_io = pytest.importorskip("scipy.io")
    cells = np.empty((2,), dtype=object)
    cells[0] = np.array([[1, 2, 10, 20], [5, 5, 5, 5]], dtype=np.float64)  # y1, x1, y2, x2, 1-based
    cells[1] = np.zeros((0, 4))
    images = np.empty((2,), dtype=object)
    images[0], images[1] = "000005", "000007"
    scipy_io.savemat(tmp_path / "voc_2007_test.mat", {"boxes": cells, "images": images})
    store = ProposalStore(tmp_path / "c", {"imported": "rcnn"})
    paths = {}
    for i, name in enumerate(["000005", "000007", 3, 4]):
        paths[name] = tmp_path / f"{name}.jpg"
        paths[name].write_bytes(f"image {i}".encode())  # distinct contents, distinct keys
    assert store.import_mat(tmp_path / "voc_2007_test.mat", paths) == 2
    assert store.get(paths["000005"]).tolist() == [[1, 0, 20, 10], [4, 4, 5, 5]]
    assert store.get(paths["000007"]).shape == (0, 4)
    with open(tmp_path / "p.pkl", "wb") as f:
        pickle.dump({"ids": [3, 4], "boxes": [np.array([[1, 2, 3, 4]]), np.zeros((0, 4))]}, f)
    assert store.import_pickle(tmp_path / "p.pkl", paths) == 2
    assert store.get(paths[3]).tolist() == [[1, 2, 3, 4]]
    with pytest.raises(SppDetError, match=r"p.pkl: image id 9 is not in the data set"):
        with open(tmp_path / "p.pkl", "wb") as f:
            pickle.dump({"ids": [9], "boxes": [np.zeros((0, 4))]}, f)
        store.import_pickle(tmp_path / "p.pkl", paths)
    with pytest.raises(SppDetError, match="p.pkl"):
        (tmp_path / "p.pkl").write_bytes(b"garbage")
        store.import_pickle(tmp_path / "p.pkl", paths)


def test_shards_partition_the_items():
    items = list(range(10))
    parts = [shard_items(items, i, 3) for i in range(3)]
    assert sorted(sum(parts, [])) == items and parts[1] == [1, 4, 7]
    with pytest.raises(SppDetError):
        shard_items(items, 3, 3)


def test_unreadable_image_is_counted_not_fatal(tmp_path):
    (tmp_path / "bad.jpg").write_bytes(b"nope")
    store = ProposalStore(tmp_path / "c", SMALL.as_dict())
    stats = compute_missing(store, [tmp_path / "bad.jpg", tmp_path / "missing.jpg"], SMALL, workers=1,
                            progress=False)
    assert stats.computed == 0 and len(stats.failed) == 2
    assert sorted(f.split(": ")[1] for f in stats.failed) == ["cannot read image file (No such file or directory)",
                                                              "not a readable image (corrupt or unknown format)"]
    assert {Path(f.split(": ")[0]).name for f in stats.failed} == {"bad.jpg", "missing.jpg"}


def test_fast_mode_finds_large_objects_on_real_photos():
    need_shared(COCO128)
    ds = CocoDetection(COCO128 / "train2017", COCO128 / "annotations" / "instances_train2017.json")
    ss = SelectiveSearchConfig(mode="fast", max_size=500)
    props, gts = [], []
    for t in ds.targets[:6]:
        props.append(torch.from_numpy(selective_search(read_image(t.path), ss)))
        gts.append(t.boxes[~t.ignore])
    r = proposal_recall(props, gts)
    assert r["num_gt_by_size"]["large"] >= 8
    assert r["recall@0.5_by_size"]["large"] >= 0.95


def test_propose_script_writes_recall(tmp_path, shapes_root):
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run(
        [sys.executable, "scripts/propose.py", f"dataset.root={shapes_root}", "dataset.generate.num_trainval=8",
         "dataset.generate.num_test=6", "split=test", "proposals.max_size=200", "workers=2",
         f"proposals.cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={tmp_path / 'run'}"],
        cwd=root, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr
    import json
    r = json.loads((tmp_path / "run" / "recall.json").read_text())
    assert r["num_images"] == 6 and r["recall@0.5"] >= 0.8
    assert (tmp_path / "run" / "recall.png").is_file()
    assert len(list((tmp_path / "cache").glob("*/*/*.boxes"))) == 6


def test_imported_proposals_are_their_own_source(tmp_path, shapes_root):
    """propose.py import_file= used to file R-CNN/pickle boxes under the selective-search
    settings' folder (checkpoints then described boxes that were not used) and images
    missing from the import silently got OpenCV boxes. Now: a store keyed by the imported
    file's SHA-1, and a missing image is a failure, never searched."""
    import hashlib
    import json
    import pickle

    import pytest
    from omegaconf import OmegaConf

    from spp_det.data import build_dataset
    from spp_det.errors import SppDetError
    from spp_det.proposals import build_proposals, compute_missing, proposals_for

    root = Path(__file__).resolve().parents[1]
    cfg = OmegaConf.load(root / "configs" / "dataset" / "shapes.yaml")
    cfg.root, cfg.generate.num_trainval, cfg.generate.num_test = str(shapes_root), 8, 6
    test = build_dataset(cfg, "test")
    pkl = tmp_path / "props.pkl"
    boxes = [np.array([[1.0, 2, 30, 40], [5, 5, 50, 60]], np.float32), np.array([[0.0, 0, 10, 10]], np.float32)]
    pkl.write_bytes(pickle.dumps({"ids": [test.targets[0].image_id, test.targets[1].image_id], "boxes": boxes}))
    proc = subprocess.run(
        [sys.executable, "scripts/propose.py", f"dataset.root={shapes_root}", "dataset.generate.num_trainval=8",
         "dataset.generate.num_test=6", "split=test", f"import_file={pkl}",
         f"proposals.cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={tmp_path / 'run'}"],
        cwd=root, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr
    sha1 = hashlib.sha1(pkl.read_bytes()).hexdigest()
    assert "4 image(s) of shapes/test are not in it" in proc.stdout and f"proposals.sha1={sha1}" in proc.stdout
    node = OmegaConf.create({"source": "imported", "sha1": sha1, "cache_dir": str(tmp_path / "cache")})
    store, ss = build_proposals(node)
    assert ss is None
    assert json.loads((store.dir / "settings.json").read_text()) == {"source": "imported", "sha1": sha1}
    assert np.array_equal(store.get(test.targets[0].path), boxes[0])
    # exactly one store exists: nothing was filed under selective search's settings
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [store.dir.name]
    stats = compute_missing(store, [t.path for t in test.targets], ss, workers=1, progress=False)
    assert (stats.computed, stats.cached, len(stats.failed)) == (0, 2, 4)
    assert "not in the imported proposals" in stats.failed[0]
    assert not store.has(test.targets[2].path)
    with pytest.raises(SppDetError, match="not in the imported proposals"):
        proposals_for(store, test.targets[2].path, np.zeros((8, 8, 3), np.uint8), ss)


def test_segmentation_settings_reach_opencv_and_leave_old_cache_names(shapes_root):
    import cv2

    from spp_det.proposals.store import settings_hash
    image = _shapes(shapes_root)[0][0]
    h, w = image.shape[:2]
    cfg = SelectiveSearchConfig(mode="fast", max_size=200, min_size=0, max_boxes=100000, base_k=300, inc_k=300,
                                sigma=0.5)
    # the oracle: OpenCV run directly with those settings on the same 200-px image
    scale = 200 / max(h, w)
    small = cv2.resize(cv2.cvtColor(image, cv2.COLOR_RGB2BGR), (round(w * scale), round(h * scale)),
                       interpolation=cv2.INTER_AREA)
    ss = cv2.ximgproc.segmentation.createSelectiveSearchSegmentation()
    ss.setBaseImage(small)
    ss.switchToSelectiveSearchFast(300, 300, 0.5)
    rects = {tuple(r) for r in ss.process().tolist()}
    boxes = selective_search(image, cfg)
    sx, sy = small.shape[1] / w, small.shape[0] / h
    back = {(round(b[0] * sx), round(b[1] * sy), round((b[2] - b[0]) * sx), round((b[3] - b[1]) * sy))
            for b in boxes.tolist()}
    assert back == rects
    default = selective_search(image, SelectiveSearchConfig(mode="fast", max_size=200, min_size=0, max_boxes=100000))
    assert len(default) != len(boxes)  # the settings changed the segmentation
    # unset, they are not part of a cache's name: the ss_fast cache made before they existed
    assert SelectiveSearchConfig().as_dict() == {"mode": "fast", "max_size": 500, "min_size": 4.0, "max_boxes": 2000}
    assert settings_hash(SelectiveSearchConfig().as_dict()) == "b3a545d3"
    assert settings_hash(cfg.as_dict()) != settings_hash(SelectiveSearchConfig(max_size=200, min_size=0,
                                                                               max_boxes=100000).as_dict())
    with pytest.raises(ValueError, match="inc_k"):
        SelectiveSearchConfig(mode="single", inc_k=100)
    # from a config node (configs/proposals/ss_fast.yaml leaves them null)
    from omegaconf import OmegaConf

    from spp_det.proposals import build_proposals
    node = OmegaConf.load(Path(__file__).resolve().parents[1] / "spp_det/configs/proposals/ss_fast.yaml")
    assert build_proposals(node)[1] == SelectiveSearchConfig()
    node.base_k, node.sigma = 300, 0.5
    assert build_proposals(node)[1] == SelectiveSearchConfig(base_k=300, sigma=0.5)
