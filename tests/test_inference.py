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
