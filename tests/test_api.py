"""spp_det.Detector: the Python entry point gives detect.py's detections."""
import json
import shutil

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from conftest import ROOT
from spp_det import Detector
from spp_det.data import read_image


def test_detector_gives_detect_pys_boxes(tmp_path, shapes_root, tiny_checkpoint):
    from spp_det.jobs.detect import detect_job
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(shapes_root / "SHAPES" / "JPEGImages" / "000009.jpg", folder / "a.jpg")
    props = {"cache_dir": str(tmp_path / "props"), "mode": "fast", "max_size": 200, "min_size": 4, "max_boxes": 100}
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = compose("detect", overrides=[f"checkpoint={tiny_checkpoint}", f"input={folder}",
                                           f"output={tmp_path / 'out'}", "test.score_thresh=0.0", "test.max_per_image=7",
                                           "test.precision=float32", "loader_workers=0",
                                           *[f"++proposals.{k}={v}" for k, v in props.items()]])
    assert detect_job(cfg) == []
    written = json.loads((tmp_path / "out" / "detections.json").read_text())
    assert len(written) == 7

    detector = Detector.from_checkpoint(tiny_checkpoint, proposals=props, score_thresh=0.0, max_per_image=7)
    result = detector(folder / "a.jpg")
    assert len(result["boxes"]) == 7 and result["names"] == [detector.classes[int(i) - 1] for i in result["labels"]]
    xywh = [[x1, y1, x2 - x1, y2 - y1] for x1, y1, x2, y2 in result["boxes"].tolist()]
    for r, box, score, name in zip(written, xywh, result["scores"].tolist(), result["names"]):
        assert r["category_id"] == name and r["score"] == pytest.approx(score, abs=1e-7)
        assert r["bbox"] == pytest.approx(box, abs=0.006)  # the file rounds to 0.01 px
    # an array and a list: the same; windows passed in are the ones scored
    image = read_image(folder / "a.jpg")
    again = detector([image, folder / "a.jpg"])
    assert torch.equal(again[0]["boxes"], result["boxes"]) and torch.equal(again[1]["scores"], result["scores"])
    window = np.array([[10.0, 10, 60, 60]], np.float32)
    one = detector(image, boxes=window)
    # exactly what the model gives for that one window (score_thresh 0: one box per class)
    ref = detector.runner.predict(image, torch.from_numpy(window), score_thresh=0.0, max_per_image=7)
    assert len(one["boxes"]) == 3 and torch.equal(one["boxes"], ref["boxes"]) and torch.equal(one["scores"], ref["scores"])
    with pytest.raises(ValueError, match=r"\(H, W, 3\) uint8 RGB"):
        detector(np.zeros((5, 5), np.uint8))
    # test.max_windows (eval's and detect's key): only the first N windows are scored
    node = OmegaConf.create({"score_thresh": 0.0, "nms_thresh": 0.3, "max_per_image": 50, "max_windows": 5,
                             "precision": "float32"})
    first5 = Detector.from_test_config(tiny_checkpoint, node, proposals=props)(folder / "a.jpg")
    windows = detector.windows(image, folder / "a.jpg")
    ref = detector.runner.predict(image, windows[:5], score_thresh=0.0, max_per_image=50)
    assert len(windows) > 5 and torch.equal(first5["boxes"], ref["boxes"]) and torch.equal(first5["scores"], ref["scores"])
