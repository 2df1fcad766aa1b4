"""scripts/eval.py end to end on a detections file (no model)."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from spp_det.data import load_voc

ROOT = Path(__file__).resolve().parents[1]


def run_eval(tmp_path, shapes_root, detections, *extra):
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "scripts/eval.py", "dataset=shapes", f"dataset.root={shapes_root}",
         "dataset.generate.num_trainval=8", "dataset.generate.num_test=6",
         f"detections={detections}", f"hydra.run.dir={out}", *extra],
        cwd=ROOT, capture_output=True, text=True, timeout=120)
    return proc, out


def test_eval_scores_a_detections_file(tmp_path, shapes_root):
    ds = load_voc(shapes_root, [("SHAPES", "test")], ["ellipse", "rectangle", "triangle"])
    results = []
    for t in ds.targets:
        for box, label in zip(t.boxes.tolist(), t.labels.tolist()):
            results.append({"image_id": t.image_id, "category_id": ds.classes[label - 1],
                            "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]], "score": 0.9})
    # one extra false positive of 'ellipse' above every true ellipse: precision drops
    first = ds.targets[0]
    results.append({"image_id": first.image_id, "category_id": "ellipse", "bbox": [0, 0, 3, 3],
                    "score": 0.95})
    path = tmp_path / "dets.json"
    path.write_text(json.dumps(results))
    proc, out = run_eval(tmp_path, shapes_root, path)
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["metric"] == "voc07"
    assert metrics["AP"]["rectangle"] == pytest.approx(1.0)
    assert metrics["AP"]["triangle"] == pytest.approx(1.0)
    n_ell = sum(int((t.labels == 1).sum()) for t in ds.targets)
    # precision n/(n+1) at every recall: 11-point AP is that value
    assert metrics["AP"]["ellipse"] == pytest.approx(n_ell / (n_ell + 1))
    assert "mAP" in proc.stdout and (out / "pr_curves.png").is_file()
    proc, out = run_eval(tmp_path, shapes_root, path, "metric=voc10")
    assert json.loads((out / "metrics.json").read_text())["metric"] == "voc10"


def test_eval_bad_file_is_one_line_error(tmp_path, shapes_root):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    proc, _ = run_eval(tmp_path, shapes_root, bad)
    assert proc.returncode == 1
    assert f"{bad}: not valid JSON" in proc.stderr
    assert "Traceback" not in proc.stderr
    bad.write_text(json.dumps([{"image_id": "nope", "category_id": "ellipse", "bbox": [0, 0, 1, 1],
                                "score": 1}]))
    proc, _ = run_eval(tmp_path, shapes_root, bad)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip() == f"error: {bad}: entry 0: image_id 'nope' is not an image of the evaluated split"


def test_eval_runs_a_checkpoint_and_writes_both_files(tmp_path, shapes_root, tiny_checkpoint):
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "scripts/eval.py", "dataset=shapes", f"dataset.root={shapes_root}",
         "dataset.generate.num_trainval=8", "dataset.generate.num_test=6", f"checkpoint={tiny_checkpoint}",
         f"+proposals.cache_dir={tmp_path / 'props'}", "+proposals.mode=fast", "+proposals.max_size=200",
         "+proposals.min_size=4", "+proposals.max_boxes=100", f"hydra.run.dir={out}"],
        cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr
    dets = json.loads((out / "detections.json").read_text())
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["metric"] == "voc07" and metrics["mode"] == "spp"
    assert metrics["mAP"] == pytest.approx(sum(metrics["AP"].values()) / 3, abs=1e-12)
    ids = {t.image_id for t in load_voc(shapes_root, [("SHAPES", "test")], ["ellipse", "rectangle", "triangle"]).targets}
    assert dets and {d["image_id"] for d in dets} <= ids
    assert all(d["category_id"] in ("ellipse", "rectangle", "triangle") and len(d["bbox"]) == 4 for d in dets)
    # at most 100 windows per image were scored (max_boxes=100)
    assert metrics["windows_per_image"] <= 100
    # the written file scores the same when evaluated on its own: scores are written at full
    # precision (rounded ones tied and reordered an untrained model's detections)
    proc2, out2 = run_eval(tmp_path, shapes_root, out / "detections.json")
    assert json.loads((out2 / "metrics.json").read_text())["mAP"] == pytest.approx(metrics["mAP"], abs=1e-6)


def test_eval_rejects_wrong_checkpoint(tmp_path, shapes_root):
    bad = tmp_path / "x.pt"
    bad.write_bytes(b"not a checkpoint")
    proc = subprocess.run(
        [sys.executable, "scripts/eval.py", "dataset=shapes", f"dataset.root={shapes_root}", f"checkpoint={bad}",
         f"hydra.run.dir={tmp_path / 'r'}"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and f"{bad}: cannot read checkpoint" in proc.stderr


def test_eval_refuses_the_checkpoints_own_training_images(tmp_path, shapes_root, tiny_checkpoint):
    from hydra import compose, initialize_config_dir

    from spp_det.jobs.eval import evaluate_checkpoint
    from spp_det.errors import SppDetError
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = compose("eval", overrides=["dataset=shapes", f"dataset.root={shapes_root}", "dataset.generate.num_trainval=8",
                                         "dataset.generate.num_test=6", f"checkpoint={tiny_checkpoint}",
                                         "split=train"])
    with pytest.raises(SppDetError, match=r"^dataset 'shapes': 8 image\(s\) of split 'train' are also training "
                                          r"images \(first: .*000000.jpg\)"):
        evaluate_checkpoint(cfg, tmp_path)


def _compose_eval(*overrides):
    from hydra import compose, initialize_config_dir
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        return compose("eval", overrides=list(overrides))


def test_eval_takes_data_set_and_proposals_from_the_checkpoint(tmp_path, shapes_root, tiny_checkpoint):
    """No dataset= on the command line: the checkpoint's own data set, classes and split
    layout; dataset.root= (as in train.py) moves it; the VOC devkit result files are written."""
    import shutil

    from spp_det.jobs.eval import evaluate_checkpoint
    cfg = _compose_eval(f"checkpoint={tiny_checkpoint}", "test.max_windows=50", "plot=false", "error_analysis=true")
    metrics = evaluate_checkpoint(cfg, tmp_path / "a")
    assert metrics["metric"] == "voc07" and metrics["num_images"] == 6
    # error_analysis=true: the breakdown in metrics.json, its plot and the drawn false positives
    fp = metrics["false_positives"]
    assert set(fp) == {"ellipse", "rectangle", "triangle", "all"} and fp["all"]["top"] > 0
    assert sum(fp["all"][k] for k in ("loc", "sim", "oth", "bg")) == pytest.approx(1.0)
    assert (tmp_path / "a" / "false_positives.png").is_file() and any((tmp_path / "a" / "false_positives").iterdir())
    assert sorted(metrics["AP"]) == ["ellipse", "rectangle", "triangle"]
    moved = tmp_path / "moved"
    shutil.copytree(shapes_root, moved)
    cfg = _compose_eval(f"checkpoint={tiny_checkpoint}", f"dataset.root={moved}", "test.max_windows=50", "plot=false")
    again = evaluate_checkpoint(cfg, tmp_path / "b")
    assert again["mAP"] == pytest.approx(metrics["mAP"], abs=1e-9)
    dets = json.loads((tmp_path / "b" / "detections.json").read_text())
    # the devkit's files hold exactly the detections, in 1-based VOC pixels
    rows = []
    for name in ("ellipse", "rectangle", "triangle"):
        for line in (tmp_path / "b" / "results" / "SHAPES" / "Main" / f"comp4_det_test_{name}.txt").read_text().splitlines():
            image_id, score, x1, y1, x2, y2 = line.split()
            rows.append((image_id, name, float(score), float(x1) - 1, float(y1) - 1, float(x2), float(y2)))
    assert len(rows) == len(dets)
    for d, r in zip(sorted(dets, key=lambda d: (d["image_id"], d["category_id"], -d["score"])),
                    sorted(rows, key=lambda r: (r[0], r[1], -r[2]))):
        x, y, w, h = d["bbox"]
        assert (d["image_id"], d["category_id"]) == r[:2] and d["score"] == pytest.approx(r[2], abs=1e-9)
        assert [x, y, x + w, y + h] == pytest.approx(list(r[3:]), abs=0.06)


def test_eval_detections_file_needs_a_data_set(tmp_path):
    from spp_det.jobs.eval import evaluate_job
    from spp_det.errors import SppDetError
    with pytest.raises(SppDetError, match="scoring a detections file needs the data set: give dataset=<name>"):
        evaluate_job(_compose_eval(f"detections={tmp_path / 'd.json'}"))


def test_eval_number_does_not_depend_on_the_cpus_bf16(tmp_path, tiny_checkpoint, monkeypatch):
    """eval.py's default is float32: the same best.pt gives the same mAP (and detections)
    on a CPU that multiplies bf16 natively and on one that does not; metrics.json says what
    was used. The old default (auto) ran bf16 on the first kind only."""
    import spp_det.models.detector as detector
    from spp_det.jobs.eval import evaluate_checkpoint
    runs = []
    for native in (True, False):
        monkeypatch.setattr(detector, "bf16_supported", lambda device, native=native: native)
        cfg = _compose_eval(f"checkpoint={tiny_checkpoint}", "test.max_windows=50", "plot=false")
        runs.append((evaluate_checkpoint(cfg, tmp_path / str(native)),
                     json.loads((tmp_path / str(native) / "detections.json").read_text())))
    (a, dets_a), (b, dets_b) = runs
    assert a["precision"] == b["precision"] == "float32"
    assert a["mAP"] == b["mAP"] and dets_a == dets_b
    assert a["classifier"] == "softmax" and a["bbox_reg"] == "learned" and a["test_flip"] is False
    assert a["nms_thresh"] == 0.3 and a["max_windows"] == 50 and a["iteration"] is not None
    assert len(a["checkpoint_sha1"]) == 16
    # bf16 is an explicit opt-in, and recorded
    monkeypatch.setattr(detector, "fastest_head", lambda head, bf16, trunk=None: "int8")  # not this CPU's timing
    cfg = _compose_eval(f"checkpoint={tiny_checkpoint}", "test.max_windows=50", "plot=false", "test.precision=auto")
    assert evaluate_checkpoint(cfg, tmp_path / "auto")["precision"] == "int8"


def test_eval_box_vote_reaches_the_model_and_metrics(tmp_path, tiny_checkpoint):
    """test.box_vote=0.5 moves kept boxes (the same detections otherwise: scores, classes,
    order) and is recorded in metrics.json; the arithmetic is tested in test_detector.py."""
    from spp_det.jobs.eval import evaluate_checkpoint
    runs = []
    for vote in ("null", "0.5"):
        cfg = _compose_eval(f"checkpoint={tiny_checkpoint}", "test.max_windows=50", "plot=false",
                            f"test.box_vote={vote}")
        runs.append((evaluate_checkpoint(cfg, tmp_path / vote),
                     json.loads((tmp_path / vote / "detections.json").read_text())))
    (plain, dets_plain), (voted, dets_voted) = runs
    assert plain["box_vote"] is None and voted["box_vote"] == 0.5
    assert [(d["image_id"], d["category_id"], d["score"]) for d in dets_plain] == \
        [(d["image_id"], d["category_id"], d["score"]) for d in dets_voted]
    moved = sum(max(abs(a - b) for a, b in zip(p["bbox"], v["bbox"])) > 0.01 for p, v in zip(dets_plain, dets_voted))
    assert moved >= len(dets_plain) // 10 > 0


def test_eval_on_an_unannotated_split_writes_results_without_scoring(tmp_path, shapes_root, tiny_checkpoint):
    """VOC2012 test has no public boxes: eval.py detects, writes detections.json and the
    devkit's comp4 files for the evaluation server (named after the devkit's image set,
    test, not the config's split key), and scores nothing."""
    import shutil

    from spp_det.jobs.eval import evaluate_checkpoint
    base = tmp_path / "VOC" / "T"
    (base / "ImageSets" / "Main").mkdir(parents=True)
    shutil.copytree(shapes_root / "SHAPES" / "JPEGImages", base / "JPEGImages")
    (base / "ImageSets" / "Main" / "test.txt").write_text("000009\n000010\n")
    cfg = _compose_eval(f"checkpoint={tiny_checkpoint}", "plot=false", "test.max_windows=50",
                        "+dataset.splits.unlabelled=[{dir: T, split: test, annotated: false}]",
                        f"dataset.root={tmp_path / 'VOC'}", "split=unlabelled")
    metrics = evaluate_checkpoint(cfg, tmp_path / "run")
    assert metrics["scored"] is False and metrics["num_images"] == 2 and "mAP" not in metrics
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["scored"] is False
    dets = json.loads((tmp_path / "run" / "detections.json").read_text())
    lines = [line for name in ("ellipse", "rectangle", "triangle")
             for line in (tmp_path / "run" / "results" / "T" / "Main" / f"comp4_det_test_{name}.txt")
             .read_text().splitlines()]
    assert len(lines) == len(dets) > 0 and {line.split()[0] for line in lines} <= {"000009", "000010"}
