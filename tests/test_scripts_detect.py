"""scripts/detect.py end to end on a folder with one corrupt file."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import cv2

ROOT = Path(__file__).resolve().parents[1]


def test_detect_folder_with_a_corrupt_file(tmp_path, shapes_root, tiny_checkpoint):
    folder = tmp_path / "in"
    folder.mkdir()
    for stem in ("000008", "000009"):
        shutil.copy(shapes_root / "SHAPES" / "JPEGImages" / f"{stem}.jpg", folder / f"{stem}.jpg")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    out = tmp_path / "out"
    cmd = [sys.executable, "scripts/detect.py", f"checkpoint={tiny_checkpoint}", f"input={folder}",
           f"output={out}", "score_thresh=0.0", "max_per_image=5", "workers=1",
           f"+proposals.cache_dir={tmp_path / 'props'}", "+proposals.mode=fast", "+proposals.max_size=200",
           "+proposals.min_size=4", "+proposals.max_boxes=100", f"hydra.run.dir={tmp_path / 'run'}"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 1
    assert "broken.jpg" in proc.stderr and "not a readable image" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert sorted(p.name for p in out.glob("*.jpg")) == ["000008.jpg", "000009.jpg"]
    drawn = cv2.imread(str(out / "000008.jpg"))
    original = cv2.imread(str(folder / "000008.jpg"))
    assert drawn.shape == original.shape and (drawn != original).any()  # boxes were drawn
    dets = json.loads((out / "detections.json").read_text())
    assert {d["image_id"] for d in dets} == {"000008.jpg", "000009.jpg"}
    assert all(len([d for d in dets if d["image_id"] == n]) <= 5 for n in ("000008.jpg", "000009.jpg"))
    # proposals were cached by content: a second run computes none and succeeds on the good file
    (folder / "broken.jpg").unlink()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr
    assert "selective search" not in proc.stderr  # no progress bar: nothing left to compute
