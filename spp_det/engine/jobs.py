"""The jobs behind the scripts, taking Hydra config nodes (scripts stay thin)."""
from __future__ import annotations

import logging
from pathlib import Path

import cv2
from omegaconf import DictConfig

from ..data import build_dataset
from ..errors import SppDetError
from .cli import run_dir
from .detections import from_results, image_results, load_results, write_json_atomic
from .evaluate import score_and_report

log = logging.getLogger(__name__)


def evaluate_job(cfg: DictConfig) -> dict:
    """scripts/eval.py: score ``cfg.detections`` or run ``cfg.checkpoint`` first."""
    out_dir = run_dir()
    if (cfg.detections is None) == (cfg.checkpoint is None):
        raise SppDetError("give exactly one of detections=<file> or checkpoint=<file>")
    if cfg.detections is not None:
        dataset = build_dataset(cfg.dataset, cfg.split).take(cfg.subset)
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
    store, ss = build_proposals(cfg.proposals)
    if cfg.import_file:
        path = Path(cfg.import_file)
        paths = {t.image_id: t.path for t in dataset.targets}
        n = store.import_mat(path, paths) if path.suffix == ".mat" else store.import_pickle(path, paths)
        print(f"imported proposals of {n} images from {path} into {store.dir}")
        return None
    targets = shard_items(dataset.targets, cfg.shard, cfg.num_shards)
    items = [t.path for t in targets]
    stats = compute_missing(store, items, ss, workers=cfg.workers)
    print(f"{dataset.name}/{cfg.split} shard {cfg.shard}/{cfg.num_shards}: {stats.computed} computed "
          f"({stats.seconds_per_image:.2f} s/image on one core), {stats.cached} already cached, "
          f"{len(stats.failed)} failed -> {store.dir}")
    if stats.failed:
        raise SppDetError(f"{len(stats.failed)} image(s) failed, first: {stats.failed[0]}")
    keep = [(torch.from_numpy(store.get(t.path)), t.boxes[~t.ignore]) for t in targets]
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


def detect_job(cfg: DictConfig) -> list[str]:
    """scripts/detect.py. Returns the list of failures ("path: reason").

    Results carry each image's name (its path relative to the input) as ``image_id``;
    pictures go to ``output/<name>`` (see ``data.output_names``). An image that fails,
    for whatever reason, is named and the others' results are still written."""
    import sys

    import torch
    from omegaconf import OmegaConf
    from tqdm import tqdm

    from ..data import list_images, output_names, read_image
    from ..proposals import build_proposals, compute_missing
    from ..visualize import draw_detections
    from .checkpoint import load_checkpoint, model_from_checkpoint

    ckpt = load_checkpoint(cfg.checkpoint)
    model = model_from_checkpoint(ckpt, cfg.device)
    classes = list(ckpt["classes"])
    entries = list_images(cfg.input)
    out = Path(cfg.output)
    out.mkdir(parents=True, exist_ok=True)
    prop_cfg = cfg.get("proposals") or OmegaConf.create(ckpt["proposals_cfg"])
    store, ss = build_proposals(prop_cfg)
    stats = compute_missing(store, [f for f, _ in entries], ss, workers=cfg.workers)
    failures: list[str] = list(stats.failed)
    results = []
    scales = tuple(cfg.scales) if cfg.scales else None
    cats = [None] + classes
    todo = [(f, name, pic) for (f, name), pic in zip(entries, output_names([n for _, n in entries]))]
    for f, name, pic in tqdm(todo, desc="detect", unit="img", file=sys.stderr):
        try:
            boxes = store.get(f)
            if boxes is None:
                continue  # its selective search failed: already in ``failures``
            image = read_image(f)
            det = model.predict(image, torch.from_numpy(boxes), scales=scales, score_thresh=cfg.score_thresh,
                                nms_thresh=cfg.nms_thresh, max_per_image=cfg.max_per_image)
            target = out / pic
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
    write_json_atomic(out / "detections.json", results)
    for msg in failures:
        print(f"error: {msg}", file=sys.stderr)
        log.error("%s", msg)
    print(f"{len(entries) - len(failures)} image(s) processed, {len(failures)} failed, "
          f"{len(results)} detections -> {out}")
    return failures
