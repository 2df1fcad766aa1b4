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
from .detections import from_results, load_results, write_json_atomic
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
                     out_dir: Path, plot: bool = True) -> dict:
    """Evaluate, print the table, write metrics.json (+ pr_curves.png) into ``out_dir``."""
    metrics, curves = evaluate(dataset, detections, metric)
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
