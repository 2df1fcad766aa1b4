"""scripts/eval.py's job: score a detections file, or run a checkpoint over a split first.

With a checkpoint, the data set, its classes and the proposal settings are the ones the
checkpoint was trained with unless the command line says otherwise: ``dataset=<name>``
picks another data set, ``dataset.root=...`` (or any ``+dataset.<key>``) changes a key
of the checkpoint's own.
"""
from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from ..boxes import xyxy_to_voc
from ..data import CocoDetection, DetectionDataset, build_dataset, image_digest
from ..distributed import init_distributed
from ..errors import SppDetError
from ..evaluation.detections import from_results, load_results, to_results
from ..evaluation.error_analysis import write_analysis
from ..evaluation.evaluate import score_and_report
from ..files import write_atomic, write_json_atomic
from ..inference.loader import inference_workers
from ..inference.api import Detector
from ..inference.predict import detect_dataset, inference_settings, report_failures
from ..models import RCNN
from ..models.checkpoint import check_fits, load_checkpoint
from .cli import run_dir

log = logging.getLogger(__name__)


def dataset_config(cfg: DictConfig, ckpt: dict | None) -> DictConfig:
    """The data set node to evaluate on: the user's choice (``dataset=<name>``), else the
    checkpoint's, with the keys the user gave (``dataset.root=``, ``+dataset.<key>=``) merged over it; classes left
    unset (null) are the checkpoint's."""
    given = cfg.dataset if "dataset" in cfg else None
    if given is not None and "kind" not in given:  # keys over the checkpoint's (dataset.root=...)
        given = OmegaConf.create({k: v for k, v in given.items() if v is not None}) or None
    if ckpt is None:
        if given is None or "kind" not in given:
            raise SppDetError("scoring a detections file needs the data set: give dataset=<name>")
        return given
    if given is not None and "kind" in given:
        node = given
    elif "dataset_cfg" in ckpt:
        node = OmegaConf.merge(OmegaConf.create(ckpt["dataset_cfg"]), given or {})
    else:
        raise SppDetError(f"{cfg.checkpoint}: the checkpoint does not say its data set: give dataset=<name>")
    if not node.get("classes"):
        node = OmegaConf.merge(node, {"classes": list(ckpt["classes"])})
    return node


def check_classes(ckpt: dict, dataset: DetectionDataset, path: str) -> None:
    check_fits(ckpt, path, f"data set '{dataset.name}' has", hint=" (wrong checkpoint or dataset?)",
               classes=list(dataset.classes))


def write_voc_submission(dataset: DetectionDataset, detections: list[dict], split: str, out_dir: Path,
                         year_dir: str) -> Path:
    """The devkit's result files, ``results/<year_dir>/Main/comp4_det_<split>_<class>.txt``
    (``year_dir``: VOC2007, VOC2012, ... where the devkit and the evaluation server look):
    one line ``<image id> <score> <xmin> <ymin> <xmax> <ymax>`` per detection, in VOC's
    1-based pixel coordinates. Returns the folder."""
    folder = out_dir / "results" / year_dir / "Main"
    lines: dict[int, list[str]] = {label: [] for label in range(1, len(dataset.classes) + 1)}
    for target, det in zip(dataset.targets, detections):
        for box, score, label in zip(xyxy_to_voc(det["boxes"]).tolist(), det["scores"].tolist(),
                                     det["labels"].tolist()):
            # 10 decimals keep every float32 score distinct (rounded scores would tie)
            lines[label].append(f"{target.image_id} {score:.10f} " + " ".join(f"{v:.1f}" for v in box))
    for label, rows in lines.items():
        write_atomic(folder / f"comp4_det_{split}_{dataset.classes[label - 1]}.txt",
                     "".join(r + "\n" for r in rows).encode())
    return folder


def evaluate_checkpoint(cfg: DictConfig, out_dir: Path) -> dict | None:
    """Run ``cfg.checkpoint`` over the split: detections.json, metrics.json, pr_curves.png
    and, for VOC-layout data, the devkit's submission files."""
    rank, world = init_distributed(cfg.device)
    ckpt = load_checkpoint(cfg.checkpoint)
    test = cfg.test
    scales = tuple(test.scales) if test.scales else None
    detector = Detector.from_test_config(cfg.checkpoint, test, cfg.device, cfg.get("proposals"), cfg.get("rcnn"),
                                         loaded=ckpt)
    runner, store, ss = detector.runner, detector.store, detector.ss
    node = dataset_config(cfg, ckpt)
    dataset = build_dataset(node, cfg.split).take(cfg.subset)
    check_classes(ckpt, dataset, cfg.checkpoint)
    if ckpt.get("train_images"):
        dataset.check_disjoint(set(ckpt["train_images"]), f"split '{cfg.split}'")
    rcnn = isinstance(runner, RCNN)
    detections, timing, failures = detect_dataset(runner, dataset, store, ss, scales, test.score_thresh,
                                                  test.nms_thresh, test.max_per_image, rank, world,
                                                  max_windows=test.get("max_windows"),
                                                  workers=inference_workers(cfg.get("loader_workers"), cfg.device,
                                                                            sum(not store.has(t.path) for t in dataset.targets)))
    if rank != 0:
        return None
    write_json_atomic(out_dir / "detections.json", to_results(dataset, detections))
    if not isinstance(dataset, CocoDetection):
        # the split's first devkit folder and image set (e.g. VOC2012, test): the names the
        # devkit and the evaluation server expect, whatever the config calls the split
        part = node.splits[cfg.split][0]
        print(f"VOC devkit result files -> {write_voc_submission(dataset, detections, part.split, out_dir, part.dir)}")
    print(f"{'R-CNN' if rcnn else 'SPP'} mode: {timing['seconds_per_image']:.3f} s/image "
          f"({timing['windows_per_image']:.0f} windows/image, {world} process(es))")
    extra = {"checkpoint": str(cfg.checkpoint), "checkpoint_sha1": image_digest(cfg.checkpoint),
             "iteration": ckpt.get("iteration"), "stages": ckpt.get("stages", {}).get("name"),
             "proposals": store.settings,
             **inference_settings(runner, scales, test.score_thresh, test.nms_thresh, test.max_per_image,
                                  test.get("max_windows"), test.get("svd_rank")),
             "failed_images": failures, **timing}
    if dataset.annotated:
        if cfg.get("error_analysis"):
            extra["false_positives"] = analyse(dataset, detections, out_dir)
        metrics = score_and_report(dataset, detections, cfg.metric or node.metric, out_dir, cfg.plot, extra=extra)
    else:  # e.g. VOC2012 test: the files above go to the evaluation server
        metrics = {"scored": False, "num_images": len(dataset), **extra}
        write_json_atomic(out_dir / "metrics.json", metrics)
        print(f"split '{cfg.split}' has no annotations: {len(dataset)} images detected and written, not scored")
    report_failures(failures)
    return metrics


def evaluate_job(cfg: DictConfig) -> dict:
    """scripts/eval.py: score ``cfg.detections`` or run ``cfg.checkpoint`` first."""
    out_dir = run_dir()
    if (cfg.detections is None) == (cfg.checkpoint is None):
        raise SppDetError("give exactly one of detections=<file> or checkpoint=<file>")
    if cfg.detections is not None:
        node = dataset_config(cfg, None)
        dataset = build_dataset(node, cfg.split).take(cfg.subset)
        if not dataset.annotated:
            raise SppDetError(f"dataset '{dataset.name}' split '{cfg.split}' has no annotations: nothing to score "
                              f"{cfg.detections} against")
        detections = from_results(dataset, load_results(cfg.detections), str(cfg.detections))
        extra = {"false_positives": analyse(dataset, detections, out_dir)} if cfg.get("error_analysis") else None
        return score_and_report(dataset, detections, cfg.metric or node.metric, out_dir, cfg.plot, extra=extra)
    return evaluate_checkpoint(cfg, out_dir)


def analyse(dataset: DetectionDataset, detections: list[dict], out_dir: Path) -> dict:
    """``error_analysis=true``: false positives by cause (evaluation/error_analysis.py)."""
    summary = write_analysis(dataset, detections, out_dir)
    shares = "  ".join(f"{k} {v:.0%}" for k, v in summary["all"].items() if k != "top" and v is not None)
    print(f"top-ranked false positives ({summary['all']['top']}): {shares} -> {out_dir / 'false_positives.png'}")
    return summary
