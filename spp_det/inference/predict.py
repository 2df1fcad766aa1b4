"""Run a detector over a data set (optionally sharded over torchrun ranks)."""
from __future__ import annotations

import logging
import sys
import time

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from ..data import DetectionDataset
from ..distributed import gather_lists
from ..errors import SppDetError
from ..models import RCNN, SPPNet
from ..proposals import ProposalStore, SelectiveSearchConfig
from .loader import Images, loader_kwargs

log = logging.getLogger(__name__)


def configure_inference(model: SPPNet, node) -> None:
    """Inference options of a config node (the ``test`` node of train, eval and detect):
    ``precision``, ``svd_rank``, ``classifier`` and ``bbox_reg`` (auto: the checkpoint's),
    and those of :func:`configure_test_options`."""
    configure_test_options(model, node)
    if node.get("svd_rank"):  # before the precision: int8 quantises the SVD's layers, and auto times them
        model.compress(tuple(node.svd_rank))
    model.set_precision(node.get("precision", "float32"))
    classifier, box_head = node.get("classifier", "auto"), node.get("bbox_reg", "auto")
    if classifier != "auto" or box_head != "auto":
        try:
            model.head.use(model.head.classifier if classifier == "auto" else classifier,
                           model.head.box_head if box_head == "auto" else box_head)
        except ValueError as exc:
            raise SppDetError(f"test.classifier={classifier} test.bbox_reg={box_head}: {exc}") from exc


def configure_test_options(model: SPPNet, node) -> None:
    """``flip`` (true: score the mirrored image too; null: the model's) and ``box_vote``
    (null: none; an IoU in (0, 1], e.g. 0.5: windows that NMS removed still vote on a kept
    box's position, postprocess.vote_boxes) of a ``test`` node."""
    if node.get("flip") is not None:
        model.test_flip = bool(node.flip)
    vote = node.get("box_vote")
    if vote is not None and (isinstance(vote, bool) or not isinstance(vote, (int, float)) or not 0 < vote <= 1):
        # above 1 a kept box would not vote for itself (no weights: NaN boxes); at 0 or below
        # boxes that do not overlap would vote
        raise SppDetError(f"test.box_vote={vote}: give an IoU in (0, 1], e.g. 0.5, or null for no voting")
    model.box_vote = None if vote is None else float(vote)


def inference_settings(model: SPPNet | RCNN, scales: tuple[int, ...] | None, score_thresh: float,
                       nms_thresh: float, max_per_image: int, max_windows: int | None,
                       svd_rank: list[int] | None) -> dict:
    """Everything that changes a detector's numbers, for metrics.json: the arithmetic
    (precision, SVD ranks), test scales and flip, box voting, classifier and box regressor,
    windows scored, thresholds, and the mode."""
    net = model.detector if isinstance(model, RCNN) else model
    rcnn = isinstance(model, RCNN)  # warped crops: no scales, no flip
    return {"mode": "rcnn" if rcnn else "spp", "precision": net.precision,
            "svd_rank": list(svd_rank) if svd_rank else None,
            "test_scales": None if rcnn else list(scales or net.scales), "test_flip": not rcnn and bool(net.test_flip),
            "box_vote": net.box_vote,
            "classifier": net.head.classifier, "bbox_reg": net.head.box_head, "max_windows": max_windows,
            "score_thresh": float(score_thresh), "nms_thresh": float(nms_thresh), "max_per_image": int(max_per_image)}


def runner_for(model: SPPNet, ckpt: dict, rcnn: bool | None) -> SPPNet | RCNN:
    """What runs a checkpoint's model: R-CNN mode when ``rcnn`` says so, or (None) when
    the checkpoint was trained in it (``train.rcnn``), else SPP-net itself."""
    rcnn = ckpt.get("rcnn", False) if rcnn is None else bool(rcnn)
    return RCNN(model).eval() if rcnn else model


def empty_detections() -> dict[str, torch.Tensor]:
    """What an image without detections (or whose detection failed) gets."""
    return {"boxes": torch.zeros((0, 4)), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.int64)}


def detect_dataset(model: SPPNet | RCNN, dataset: DetectionDataset, store: ProposalStore,
                   ss: SelectiveSearchConfig, scales: tuple[int, ...] | None = None,
                   score_thresh: float = 0.001, nms_thresh: float = 0.3, max_per_image: int = 100,
                   rank: int = 0, world: int = 1, progress: bool = True,
                   max_windows: int | None = None, workers: int = 0) -> tuple[list[dict] | None, dict, list[str]]:
    """Detections for every image (aligned with ``dataset.targets``), timing, failures.

    max_windows: score only the first N windows of each image (selective search's order),
    e.g. to compare SPP and R-CNN mode on the same, affordable set.
    With world > 1 each rank takes every world-th image; rank 0 gets the merged list,
    the others None. ``workers`` loader processes decode images and fetch (or compute)
    their windows while the model runs. An image that fails (unreadable, or anything
    unexpected) gets no detections and is listed in the failures ("path: reason", all
    ranks' on every rank): one bad image never loses the others' results, nor leaves
    another rank waiting.
    """
    was_training = model.training
    model.eval()
    mine = list(range(rank, len(dataset), world))
    results, failures, seconds = [], [], 0.0
    loader = DataLoader(Images(dataset, mine, store, ss, max_windows), batch_size=None,
                        **loader_kwargs(workers))
    for i, image, boxes, error in tqdm(loader, total=len(mine), desc="detect", unit="img",
                                       disable=not progress or rank != 0, file=sys.stderr):
        if error is not None:
            failures.append(error)
            continue
        try:
            t0 = time.perf_counter()
            det = model.predict(image, boxes, scales=scales, score_thresh=score_thresh, nms_thresh=nms_thresh,
                                max_per_image=max_per_image)
            seconds += time.perf_counter() - t0
        except Exception as exc:  # a bug or an odd image: name it, keep the other images
            log.exception("%s: detection failed", dataset.targets[i].path)
            failures.append(f"{dataset.targets[i].path}: detection failed ({type(exc).__name__}: {exc})")
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
