"""The jobs behind the scripts, taking Hydra config nodes (scripts stay thin)."""
from __future__ import annotations

import logging
from pathlib import Path

import cv2
from omegaconf import DictConfig

from ..data import DetectionDataset, build_dataset
from ..errors import SppDetError
from ..visualize import pr_grid
from .cli import run_dir
from .detections import from_results, image_results, load_results, write_json_atomic
from .evaluate import evaluate, format_table

log = logging.getLogger(__name__)


def take_subset(dataset: DetectionDataset, subset) -> DetectionDataset:
    """``subset`` = null (all) or [start, stop) image positions (python slice semantics)."""
    if subset is None:
        return dataset
    start, stop = (None if v is None else int(v) for v in subset)
    indices = list(range(len(dataset)))[start:stop]
    if not indices:
        raise SppDetError(f"dataset '{dataset.name}': subset {list(subset)} selects no image "
                          f"out of {len(dataset)}")
    return dataset.subset(indices)


def score_and_report(dataset: DetectionDataset, detections: list[dict], metric: str,
                     out_dir: Path, plot: bool = True, extra: dict | None = None) -> dict:
    """Evaluate, print the table, write metrics.json (metrics plus ``extra``) and
    pr_curves.png into ``out_dir``."""
    metrics, curves = evaluate(dataset, detections, metric)
    metrics.update(extra or {})
    table = format_table(metrics)
    print(table)
    log.info("\n%s", table)
    write_json_atomic(out_dir / "metrics.json", metrics)
    if plot and curves:
        grid = pr_grid({n: (c.recall, c.precision, metrics["AP"][n]) for n, c in curves.items()})
        cv2.imwrite(str(out_dir / "pr_curves.png"), grid)
    log.info("wrote %s", out_dir / "metrics.json")
    return metrics


def evaluate_job(cfg: DictConfig) -> dict:
    """scripts/eval.py: score ``cfg.detections`` or run ``cfg.checkpoint`` first."""
    out_dir = run_dir()
    if (cfg.detections is None) == (cfg.checkpoint is None):
        raise SppDetError("give exactly one of detections=<file> or checkpoint=<file>")
    if cfg.detections is not None:
        dataset = take_subset(build_dataset(cfg.dataset, cfg.split), cfg.subset)
        detections = from_results(dataset, load_results(cfg.detections), str(cfg.detections))
        return score_and_report(dataset, detections, cfg.metric, out_dir, cfg.plot)
    from .inference import evaluate_checkpoint  # the model is only needed on this path
    return evaluate_checkpoint(cfg, out_dir)


def propose_job(cfg: DictConfig) -> dict | None:
    """scripts/propose.py: fill the proposal cache for one split (or one shard of it),
    or import precomputed proposals; then report recall when there is ground truth."""
    import json

    import torch

    from ..proposals import build_proposals, compute_missing, proposal_recall, shard_items
    from ..visualize import plot_panels

    out_dir = run_dir()
    dataset = build_dataset(cfg.dataset, cfg.split)
    store, ss = build_proposals(cfg.proposals, dataset.name, cfg.split)
    if cfg.import_file:
        path = Path(cfg.import_file)
        n = store.import_mat(path) if path.suffix == ".mat" else store.import_pickle(path)
        print(f"imported proposals of {n} images from {path} into {store.dir}")
        return None
    items = shard_items([(t.image_id, t.path) for t in dataset.targets], cfg.shard, cfg.num_shards)
    targets = shard_items(dataset.targets, cfg.shard, cfg.num_shards)
    stats = compute_missing(store, items, ss, workers=cfg.workers)
    print(f"{dataset.name}/{cfg.split} shard {cfg.shard}/{cfg.num_shards}: {stats.computed} computed "
          f"({stats.seconds_per_image:.2f} s/image on one core), {stats.cached} already cached, "
          f"{len(stats.failed)} failed -> {store.dir}")
    if stats.failed:
        raise SppDetError(f"{len(stats.failed)} image(s) failed, first: {stats.failed[0]}")
    keep = [(torch.from_numpy(store.get(t.image_id)), t.boxes[~t.ignore]) for t in targets]
    if not any(len(g) for _, g in keep):
        return None  # no ground truth: nothing to measure
    recall = proposal_recall([p for p, _ in keep], [g for _, g in keep])
    recall.update({"seconds_per_image": stats.seconds_per_image if stats.computed else None,
                   "settings": ss.as_dict(), "dataset": dataset.name, "split": cfg.split,
                   "shard": cfg.shard, "num_shards": cfg.num_shards})
    write_json_atomic(out_dir / "recall.json", recall)
    print(json.dumps({k: v for k, v in recall.items() if k != "recall_vs_num_proposals"}, indent=1))
    if cfg.plot:
        ks = [int(k) for k in recall["recall_vs_num_proposals"]]
        series = [(ks, [v[t] for v in recall["recall_vs_num_proposals"].values()]) for t in ("0.5", "0.7")]
        cv2.imwrite(str(out_dir / "recall.png"), plot_panels(
            [{"title": "recall@0.5 (1st) / @0.7 (2nd)", "series": series, "xlim": (min(ks), max(ks)),
              "xlog": True, "xlabel": "#proposals", "ylabel": "recall"}], cell=360))
    return recall


def file_digest(path: Path) -> str:
    """Content hash of a file: the proposal cache key for loose images (a renamed or
    copied file reuses its windows, an edited one does not)."""
    import hashlib
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def detect_job(cfg: DictConfig) -> list[str]:
    """scripts/detect.py. Returns the list of failures ("path: reason")."""
    import sys

    import torch
    from omegaconf import OmegaConf
    from tqdm import tqdm

    from ..data import list_images, read_image
    from ..proposals import build_proposals, compute_missing
    from ..visualize import draw_detections
    from .checkpoint import load_checkpoint, model_from_checkpoint

    ckpt = load_checkpoint(cfg.checkpoint)
    model = model_from_checkpoint(ckpt, cfg.device)
    classes = list(ckpt["classes"])
    files = list_images(cfg.input)
    out = Path(cfg.output)
    out.mkdir(parents=True, exist_ok=True)
    prop_cfg = cfg.get("proposals") or OmegaConf.create(ckpt["proposals_cfg"])
    store, ss = build_proposals(prop_cfg, "files", "content")
    failures: list[str] = []
    keys = {}
    for f in files:
        try:
            keys[f] = file_digest(f)
        except OSError as exc:
            failures.append(f"{f}: cannot read ({exc.strerror})")
    stats = compute_missing(store, [(keys[f], f) for f in files if f in keys], ss, workers=cfg.workers)
    failures += stats.failed
    results = []
    scales = tuple(cfg.scales) if cfg.scales else None
    cats = [None] + classes
    for f in tqdm([f for f in files if f in keys], desc="detect", unit="img", file=sys.stderr):
        boxes = store.get(keys[f])
        if boxes is None:
            continue  # its search failed: already in ``failures``
        try:
            image = read_image(f)
        except SppDetError as exc:
            failures.append(str(exc))
            continue
        boxes = torch.from_numpy(boxes)
        det = model.predict(image, boxes, scales=scales, score_thresh=cfg.score_thresh,
                            nms_thresh=cfg.nms_thresh, max_per_image=cfg.max_per_image)
        cv2.imwrite(str(out / f"{f.stem}.jpg"), draw_detections(image, det["boxes"], det["labels"], det["scores"], classes))
        results += image_results(f.name, det, cats)
    write_json_atomic(out / "detections.json", results)
    for msg in failures:
        print(f"error: {msg}", file=sys.stderr)
        log.error("%s", msg)
    print(f"{len(files) - len(failures)} image(s) processed, {len(failures)} failed, "
          f"{len(results)} detections -> {out}")
    return failures
