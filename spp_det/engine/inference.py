"""Run a detector over a data set (optionally sharded over torchrun ranks)."""
from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from ..data import DetectionDataset, build_dataset
from ..errors import SppDetError
from ..models import RCNN, SPPNet
from ..proposals import ProposalStore, SelectiveSearchConfig, build_proposals, proposals_for
from .checkpoint import load_checkpoint, model_from_checkpoint
from .detections import to_results, write_json_atomic
from .distributed import gather_lists, init_distributed
from .evaluate import score_and_report

log = logging.getLogger(__name__)


def empty_detections() -> dict[str, torch.Tensor]:
    """What an image without detections (or whose detection failed) gets."""
    return {"boxes": torch.zeros((0, 4)), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.int64)}


def detect_dataset(model: SPPNet | RCNN, dataset: DetectionDataset, store: ProposalStore,
                   ss: SelectiveSearchConfig, scales: tuple[int, ...] | None = None,
                   score_thresh: float = 0.001, nms_thresh: float = 0.3, max_per_image: int = 100,
                   rank: int = 0, world: int = 1, progress: bool = True,
                   max_windows: int | None = None) -> tuple[list[dict] | None, dict, list[str]]:
    """Detections for every image (aligned with ``dataset.targets``), timing, failures.

    max_windows: score only the first N windows of each image (selective search's order),
    e.g. to compare SPP and R-CNN mode on the same, affordable set.
    With world > 1 each rank takes every world-th image; rank 0 gets the merged list,
    the others None. Proposals missing from the store are computed and saved.
    An image that fails (unreadable, or anything unexpected) gets no detections and is
    listed in the failures ("path: reason", all ranks' on every rank): one bad image
    never loses the others' results, nor leaves another rank waiting.
    """
    was_training = model.training
    model.eval()
    mine = list(range(rank, len(dataset), world))
    results, failures, seconds = [], [], 0.0
    for i in tqdm(mine, desc="detect", unit="img", disable=not progress or rank != 0, file=sys.stderr):
        path = dataset.targets[i].path
        try:
            image, target = dataset[i]
            boxes = torch.from_numpy(proposals_for(store, target.path, image, ss))[:max_windows]
            t0 = time.perf_counter()
            det = model.predict(image, boxes, scales=scales, score_thresh=score_thresh, nms_thresh=nms_thresh,
                                max_per_image=max_per_image)
            seconds += time.perf_counter() - t0
        except SppDetError as exc:
            failures.append(str(exc))
            continue
        except Exception as exc:  # a bug or an odd image: name it, keep the other images
            log.exception("%s: detection failed", path)
            failures.append(f"{path}: detection failed ({type(exc).__name__}: {exc})")
            continue
        results.append((i, {k: v.cpu() for k, v in det.items()}, len(boxes)))
    model.train(was_training)
    parts = gather_lists([(results, failures)], world)
    all_failures = [f for part in parts for _, fails in part for f in fails]
    timing = {"seconds_per_image": seconds / max(1, len(results)),
              "windows_per_image": sum(r[2] for r in results) / max(1, len(results))}
    if rank != 0:
        return None, timing, all_failures
    merged: list[dict] = [empty_detections() for _ in range(len(dataset))]
    for part in parts:
        for res, _ in part:
            for i, det, _ in res:
                merged[i] = det
    return merged, timing, all_failures


def report_failures(failures: list[str]) -> None:
    """Each failed image as one ``error:`` line on stderr (and in the log)."""
    for msg in failures:
        print(f"error: {msg}", file=sys.stderr)
        log.error("%s", msg)


def check_classes(ckpt: dict, dataset: DetectionDataset, path: str) -> None:
    if list(ckpt["classes"]) != list(dataset.classes):
        raise SppDetError(f"{path}: checkpoint classes {ckpt['classes']} differ from dataset "
                          f"'{dataset.name}' classes {dataset.classes} (wrong checkpoint or dataset?)")


def evaluate_checkpoint(cfg: DictConfig, out_dir: Path) -> dict | None:
    """scripts/eval.py with checkpoint=...: detections.json, metrics.json, pr_curves.png."""
    rank, world = init_distributed(cfg.device)
    ckpt = load_checkpoint(cfg.checkpoint)
    model = model_from_checkpoint(ckpt, cfg.device)
    dataset = build_dataset(cfg.dataset, cfg.split).take(cfg.subset)
    check_classes(ckpt, dataset, cfg.checkpoint)
    if ckpt.get("train_images"):
        dataset.check_disjoint(set(ckpt["train_images"]), f"split '{cfg.split}'")
    prop_cfg = cfg.get("proposals") or OmegaConf.create(ckpt["proposals_cfg"])
    store, ss = build_proposals(prop_cfg)
    runner = RCNN(model).eval() if cfg.get("rcnn") else model
    scales = tuple(cfg.test.scales) if cfg.test.scales else None
    detections, timing, failures = detect_dataset(runner, dataset, store, ss, scales, cfg.test.score_thresh,
                                                  cfg.test.nms_thresh, cfg.test.max_per_image, rank, world,
                                                  max_windows=cfg.test.get("max_windows"))
    if rank != 0:
        return None
    write_json_atomic(out_dir / "detections.json", to_results(dataset, detections))
    print(f"{'R-CNN' if cfg.get('rcnn') else 'SPP'} mode: {timing['seconds_per_image']:.3f} s/image "
          f"({timing['windows_per_image']:.0f} windows/image, {world} process(es))")
    metrics = score_and_report(dataset, detections, cfg.metric, out_dir, cfg.plot,
                               extra={"checkpoint": str(cfg.checkpoint), "mode": "rcnn" if cfg.get("rcnn") else "spp",
                                      "failed_images": failures, **timing})
    report_failures(failures)
    return metrics
