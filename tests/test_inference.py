"""Running a detector over a data set: loader workers change nothing but the speed."""
import torch

from spp_det.data import load_voc
from spp_det.data.shapes import SHAPES_CLASSES
from spp_det.models.checkpoint import load_checkpoint, model_from_checkpoint
from spp_det.inference.predict import detect_dataset
from spp_det.proposals import ProposalStore, SelectiveSearchConfig


def test_workers_give_the_same_detections(tmp_path, shapes_root, tiny_checkpoint):
    model = model_from_checkpoint(load_checkpoint(tiny_checkpoint))
    ds = load_voc(shapes_root, [("SHAPES", "test")], default_classes=SHAPES_CLASSES)
    ss = SelectiveSearchConfig(mode="fast", max_size=200, max_boxes=100)
    store = ProposalStore(tmp_path / "props", ss.as_dict())
    a, timing, failures = detect_dataset(model, ds, store, ss, progress=False, workers=0)
    b, _, _ = detect_dataset(model, ds, store, ss, progress=False, workers=2)
    assert failures == [] and timing["windows_per_image"] <= 100
    assert sum(len(d["scores"]) for d in a) > 0
    for da, db in zip(a, b):
        for k in ("boxes", "scores", "labels"):
            assert torch.equal(da[k], db[k])


def test_inference_workers_search_in_parallel_only_when_windows_are_missing(monkeypatch):
    from spp_det.inference.loader import inference_workers
    monkeypatch.setattr("os.cpu_count", lambda: 6)
    assert inference_workers("auto", "cpu", missing=3) == 6     # cold cache: one search per core
    assert inference_workers("auto", "cpu", missing=0) == 0     # warm on a CPU: the network has the cores
    assert inference_workers("auto", "cuda", missing=0) == 4    # warm on a GPU: up to 4 loaders
    assert inference_workers(2, "cpu", missing=3) == 2          # a number is taken as given


def test_box_vote_option_is_checked_and_reaches_both_modes():
    """test.box_vote sets the model's voting IoU (an IoU in (0, 1] or null) and both SPP and
    R-CNN mode post-process with it; the arithmetic is tested in test_detector.py."""
    import numpy as np
    import pytest
    from omegaconf import OmegaConf

    from spp_det.errors import SppDetError
    from spp_det.inference.predict import configure_inference
    from spp_det.models import RCNN, SPPNet, build_trunk, postprocess_detections
    torch.manual_seed(0)
    net = SPPNet(build_trunk("zf5", width=0.25, norm="bn").freeze(), 2, hidden=32, scales=(224,)).eval()
    for bad in (0, 1.5, True, "half"):
        with pytest.raises(SppDetError, match=f"test.box_vote={bad}: give an IoU in"):
            configure_inference(net, OmegaConf.create({"box_vote": bad}))
    configure_inference(net, OmegaConf.create({"box_vote": 0.5}))
    assert net.box_vote == 0.5
    img = np.random.default_rng(0).integers(0, 256, (200, 240, 3), dtype=np.uint8)
    boxes = torch.tensor([[40.0, 30, 140, 130], [44, 34, 150, 136], [50, 40, 160, 140], [0, 0, 100, 90]])
    for runner in (net, RCNN(net, batch_size=4).eval()):
        probs, per_class = runner.detect_windows(img, boxes)
        want = postprocess_detections(probs, per_class, 0.001, 0.3, 100, vote_thresh=0.5)
        plain = postprocess_detections(probs, per_class, 0.001, 0.3, 100)
        got = runner.predict(img, boxes, score_thresh=0.001, nms_thresh=0.3)
        torch.testing.assert_close(got["boxes"], want["boxes"])
        assert (got["boxes"] - plain["boxes"]).abs().max() > 0.5  # voting moved a box
    configure_inference(net, OmegaConf.create({"box_vote": None}))
    assert net.box_vote is None
