"""scripts/detect.py's job: detect objects in a folder, one image or a list of images,
and write the pictures with their boxes plus ``detections.json``."""
from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import time

import cv2
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader
from tqdm import tqdm

from ..data import check_output, list_images, output_names
from ..errors import SppDetError
from ..evaluation.detections import image_results
from ..files import write_json_atomic
from ..inference.api import Detector
from ..inference.loader import Files, inference_workers, loader_kwargs
from ..models.checkpoint import load_checkpoint
from ..visualize import draw_detections

log = logging.getLogger(__name__)


def detection_settings(cfg: DictConfig, ckpt: dict) -> tuple[Any, DictConfig]:
    """(proposals, test node) detect.py runs checkpoint ``ckpt`` with: the proposals asked
    for, else the fast ones its recipe measured (``detect_proposals_cfg``), else None (its
    training ones); ``cfg.test`` with the scales asked for, else the recipe's detection
    scales (``detect_scales``), else null (its test scales, ``model.scales``)."""
    proposals = cfg.get("proposals") or ckpt.get("detect_proposals_cfg")
    test = cfg.test
    if test.get("scales") is None and ckpt.get("detect_scales"):
        test = OmegaConf.merge(test, {"scales": list(ckpt["detect_scales"])})
    return proposals, test


def detect_job(cfg: DictConfig) -> list[str]:
    """scripts/detect.py. Returns the list of failures ("path: reason").

    Results carry each image's name (its path relative to the input) as ``image_id``;
    pictures go to ``output/<name>`` (see ``data.output_names``). An image that fails,
    for whatever reason, is named and the others' results are still written."""
    entries = list_images(cfg.input)
    pictures = output_names([n for _, n in entries])
    check_output(cfg.input, cfg.output, [f for f, _ in entries], pictures)  # never write over a photo
    ckpt = load_checkpoint(cfg.checkpoint)
    proposals, test = detection_settings(cfg, ckpt)
    detector = Detector.from_test_config(cfg.checkpoint, test, cfg.device, proposals, cfg.get("rcnn"), loaded=ckpt)
    classes, store, ss = detector.classes, detector.store, detector.ss
    out = Path(cfg.output)
    out.mkdir(parents=True, exist_ok=True)
    files = [f for f, _ in entries]
    # a pipeline: loader processes read each image and fetch its stored windows (or run
    # selective search on a miss, one image per process) while the model runs here
    missing = sum(not store.has(f) for f in files)
    workers = inference_workers(cfg.get("loader_workers"), cfg.device, missing)
    loader = DataLoader(Files(files, store, ss), batch_size=None, **loader_kwargs(workers))
    failures: list[str] = []
    results = []
    cats = [None] + classes
    start = time.perf_counter()
    for i, image, boxes, error in tqdm(loader, total=len(files), desc="detect", unit="img", file=sys.stderr):
        f, name = entries[i]
        if error is not None:
            failures.append(error)
            continue
        try:
            det = detector.predict(image, boxes)
            target = out / pictures[i]
            target.parent.mkdir(parents=True, exist_ok=True)
            drawn = draw_detections(image, det["boxes"], det["labels"], det["scores"], classes)
            if not cv2.imwrite(str(target), drawn):
                raise SppDetError(f"{target}: could not write the picture")
        except SppDetError as exc:
            if str(exc) not in failures:
                failures.append(str(exc))
            continue
        except Exception as exc:  # a bug or an odd image: name it, keep the other images' results
            log.exception("%s: detection failed", f)
            failures.append(f"{f}: detection failed ({type(exc).__name__}: {exc})")
            continue
        results += image_results(name, det, cats)
    seconds = time.perf_counter() - start
    write_json_atomic(out / "detections.json", results)
    for msg in failures:
        print(f"error: {msg}", file=sys.stderr)
        log.error("%s", msg)
    print(f"{len(entries) - len(failures)} image(s) processed, {len(failures)} failed, "
          f"{len(results)} detections -> {out} ({len(entries) / max(seconds, 1e-9):.2f} images/s; "
          f"{missing} without stored windows, {workers} loader process(es), {detector.model.precision} heads)")
    return failures
