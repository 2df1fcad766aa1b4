"""scripts/detect.py end to end on a folder with one corrupt file."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from spp_det.jobs.detect import detect_job
from spp_det.proposals import build_proposals

ROOT = Path(__file__).resolve().parents[1]


def test_detect_folder_with_a_corrupt_file(tmp_path, shapes_root, tiny_checkpoint):
    folder = tmp_path / "in"
    folder.mkdir()
    for stem in ("000008", "000009"):
        shutil.copy(shapes_root / "SHAPES" / "JPEGImages" / f"{stem}.jpg", folder / f"{stem}.jpg")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    # same stem, other format: its own picture and its own image_id
    cv2.imwrite(str(folder / "000008.png"), cv2.imread(str(folder / "000009.jpg")))
    # a 3x900 strip: smaller than the trunk's reach once resized; padded, not a crash
    strip = (np.arange(900 * 3 * 3) % 251).astype(np.uint8).reshape(3, 900, 3)
    cv2.imwrite(str(folder / "strip.png"), strip)
    out = tmp_path / "out"
    cmd = [sys.executable, "scripts/detect.py", f"checkpoint={tiny_checkpoint}", f"input={folder}",
           f"output={out}", "test.score_thresh=0.0", "test.max_per_image=5", "loader_workers=1",
           f"++proposals.cache_dir={tmp_path / 'props'}", "++proposals.mode=fast", "++proposals.max_size=200",
           "++proposals.min_size=1", "++proposals.max_boxes=100",  # min_size 1: the 3 px strip keeps windows
           f"hydra.run.dir={tmp_path / 'run'}"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 1
    assert "broken.jpg" in proc.stderr and "not a readable image" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.count("error: ") == 1  # only the corrupt file failed
    names = ["000008.jpg", "000008.png", "000009.jpg", "strip.png"]
    assert sorted(p.name for p in out.iterdir() if p.suffix != ".json") == names
    drawn = cv2.imread(str(out / "000008.jpg"))
    original = cv2.imread(str(folder / "000008.jpg"))
    assert drawn.shape == original.shape and (drawn != original).any()  # boxes were drawn
    assert cv2.imread(str(out / "000008.png")).shape == cv2.imread(str(folder / "000009.jpg")).shape
    assert cv2.imread(str(out / "strip.png")).shape == (3, 900, 3)
    dets = json.loads((out / "detections.json").read_text())
    assert {d["image_id"] for d in dets} == set(names)
    assert all(len([d for d in dets if d["image_id"] == n]) <= 5 for n in names)
    strip_boxes = [d["bbox"] for d in dets if d["image_id"] == "strip.png"]
    assert strip_boxes and all(0 <= y and y + h <= 3 + 1e-3 for _, y, _, h in strip_boxes)
    # proposals were cached by content: a second run computes none and succeeds on the good file
    (folder / "broken.jpg").unlink()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr
    assert "selective search" not in proc.stderr  # no progress bar: nothing left to compute


def test_detect_list_names_by_relative_path_and_survives_a_failing_image(tmp_path, shapes_root, tiny_checkpoint,
                                                                          monkeypatch, capsys):
    """Two list entries with the same file name in different folders keep apart; an
    unexpected failure on one image is named and the other images' results are written."""
    from spp_det.jobs.detect import detect_job
    from spp_det.models import SPPNet
    src = shapes_root / "SHAPES" / "JPEGImages"
    for sub, stem in (("x", "000008"), ("y", "000009"), ("z", "000010")):
        (tmp_path / "in" / sub).mkdir(parents=True)
        shutil.copy(src / f"{stem}.jpg", tmp_path / "in" / sub / "a.jpg")
    listing = tmp_path / "in" / "list.txt"
    listing.write_text("x/a.jpg\ny/a.jpg\nz/a.jpg\nx/a.jpg\n")  # x/a.jpg listed twice: kept once
    bad_shape = cv2.imread(str(src / "000010.jpg")).shape[:2]
    original = SPPNet.predict

    def predict(self, image, *args, **kwargs):
        if image.shape[:2] == bad_shape:
            raise RuntimeError("simulated kernel failure")
        return original(self, image, *args, **kwargs)
    monkeypatch.setattr(SPPNet, "predict", predict)
    out = tmp_path / "out"
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = compose("detect", overrides=[f"checkpoint={tiny_checkpoint}", f"input={listing}", f"output={out}",
                                           "test.score_thresh=0.0", "test.max_per_image=3", "loader_workers=1",
                                           f"++proposals.cache_dir={tmp_path / 'props'}", "++proposals.mode=fast",
                                           "++proposals.max_size=200", "++proposals.min_size=4",
                                           "++proposals.max_boxes=100"])
    failures = detect_job(cfg)
    z = tmp_path / "in" / "z" / "a.jpg"
    assert failures == [f"{z}: detection failed (RuntimeError: simulated kernel failure)"]
    assert f"error: {z}: detection failed" in capsys.readouterr().err
    dets = json.loads((out / "detections.json").read_text())
    assert {d["image_id"] for d in dets} == {"x/a.jpg", "y/a.jpg"}
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.jpg")) == ["x/a.jpg", "y/a.jpg"]
    assert not cv2.imread(str(out / "x" / "a.jpg")).shape == cv2.imread(str(out / "y" / "a.jpg")).shape or \
        (cv2.imread(str(out / "x" / "a.jpg")) != cv2.imread(str(out / "y" / "a.jpg"))).any()


def test_detect_never_writes_over_an_input(tmp_path, shapes_root, tiny_checkpoint):
    """output= the input folder overwrote the photos with their drawn copies. Every way the
    output can meet the input is refused before anything is written."""
    from spp_det.data import check_output, list_images, output_names
    from spp_det.errors import SppDetError
    import pytest

    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    for stem in ("000008", "000009"):
        shutil.copy(shapes_root / "SHAPES" / "JPEGImages" / f"{stem}.jpg", folder / f"{stem}.jpg")
    before = {p.name: p.read_bytes() for p in folder.glob("*.jpg")}
    proc = subprocess.run([sys.executable, "scripts/detect.py", f"checkpoint={tiny_checkpoint}", f"input={folder}",
                           f"output={folder}", f"hydra.run.dir={tmp_path / 'run'}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert f"error: output={folder}: the picture of" in proc.stderr and "would overwrite the input" in proc.stderr
    assert {p.name: p.read_bytes() for p in folder.glob("*.jpg")} == before
    assert sorted(p.name for p in folder.iterdir()) == ["000008.jpg", "000009.jpg", "sub"]  # nothing written

    def check(inp, out):
        entries = list_images(inp)
        check_output(inp, out, [f for f, _ in entries], output_names([n for _, n in entries]))

    with pytest.raises(SppDetError, match="inside the input folder"):
        check(folder, folder / "sub")                      # would be read back as photos next time
    with pytest.raises(SppDetError, match="would overwrite the input"):
        check(folder, tmp_path / "in" / ".." / "in")      # the same folder spelled otherwise
    listing = folder / "list.txt"
    listing.write_text("000008.jpg\n000009.jpg\n")
    with pytest.raises(SppDetError, match="would overwrite the input"):
        check(listing, folder)                             # a list's names are relative to its folder
    with pytest.raises(SppDetError, match="would overwrite the input"):
        check(folder / "000008.jpg", folder)               # one file, output = its folder
    check(listing, folder / "sub")                         # a list's folder may hold the output elsewhere
    check(folder, tmp_path / "out")


def test_detect_defaults_to_the_fast_proposals_its_recipe_measured(tmp_path, shapes_root, tiny_checkpoint):
    """A checkpoint whose recipe names detection proposals (``detect_proposals``) is run
    with them by default; without them, with its training proposals; ``proposals=`` wins."""
    ckpt = torch.load(tiny_checkpoint, map_location="cpu", weights_only=False)
    training = dict(ckpt["proposals_cfg"], cache_dir=str(tmp_path / "props"))
    fast = dict(training, max_size=120)
    photo = tmp_path / "in" / "a.jpg"
    photo.parent.mkdir()
    shutil.copy(shapes_root / "SHAPES" / "JPEGImages" / "000009.jpg", photo)

    def searched(checkpoint, *extra):
        """Which of the two settings' caches holds the photo after one detect.py run."""
        shutil.rmtree(tmp_path / "props", ignore_errors=True)
        with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
            cfg = compose("detect", overrides=[f"checkpoint={checkpoint}", f"input={photo}",
                                               f"output={tmp_path / 'out'}", "loader_workers=0", *extra])
        assert detect_job(cfg) == []
        return [name for name, node in (("training", training), ("fast", fast))
                if build_proposals(OmegaConf.create(node))[0].has(photo)]

    ckpt["proposals_cfg"], ckpt["detect_proposals_cfg"] = training, fast
    with_fast = tmp_path / "with_fast.pt"
    torch.save(ckpt, with_fast)
    ckpt["detect_proposals_cfg"] = None
    without = tmp_path / "without.pt"
    torch.save(ckpt, without)
    assert searched(with_fast) == ["fast"]
    assert searched(without) == ["training"]
    assert searched(with_fast, "proposals=ss_fast_small", f"proposals.cache_dir={tmp_path / 'props'}",
                    "proposals.max_size=200") == ["training"]  # the tiny run's own settings, asked for


def test_detect_defaults_to_the_scales_its_recipe_measured(tmp_path, shapes_root, tiny_checkpoint, monkeypatch):
    """A checkpoint whose recipe names detection scales (``detect_scales``: the
    voc2012_1800_lite0 recipe tests at three, detects at 480) runs the trunk at them by
    default; without them at its test scales (``model.scales``); ``test.scales=`` wins."""
    from spp_det.models.detector import SPPNet

    ckpt = torch.load(tiny_checkpoint, map_location="cpu", weights_only=False)
    ckpt["proposals_cfg"] = dict(ckpt["proposals_cfg"], cache_dir=str(tmp_path / "props"))
    assert ckpt["model_cfg"]["scales"] == [160] and ckpt["detect_scales"] is None  # written, unset by the run
    photo = tmp_path / "in" / "a.jpg"
    photo.parent.mkdir()
    shutil.copy(shapes_root / "SHAPES" / "JPEGImages" / "000009.jpg", photo)
    seen: list[tuple[int, ...]] = []
    real = SPPNet.compute_features
    monkeypatch.setattr(SPPNet, "compute_features", lambda self, image, scales: seen.append(tuple(scales))
                        or real(self, image, scales))

    def scales_run(checkpoint, *extra):
        seen.clear()
        with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
            cfg = compose("detect", overrides=[f"checkpoint={checkpoint}", f"input={photo}",
                                               f"output={tmp_path / 'out'}", "loader_workers=0", *extra])
        assert detect_job(cfg) == []
        return set(seen)

    ckpt["detect_scales"] = [128, 192]
    with_scales = tmp_path / "with_scales.pt"
    torch.save(ckpt, with_scales)
    del ckpt["detect_scales"]  # a checkpoint from before the key
    without = tmp_path / "without.pt"
    torch.save(ckpt, without)
    assert scales_run(with_scales) == {(128, 192)}
    assert scales_run(without) == {(160,)}
    assert scales_run(with_scales, "test.scales=[144]") == {(144,)}
