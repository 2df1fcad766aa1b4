"""Evaluate: score a detections file, or run a checkpoint over a split and score it.

    python scripts/eval.py dataset=voc07 detections=path/to/detections.json
    python scripts/eval.py checkpoint=outputs/train/.../checkpoints/best.pt

Writes metrics.json (and, when a model ran, detections.json and pr_curves.png) into the
Hydra run directory and prints the per-class table.
"""
from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from spp_det.jobs.cli import report_errors
from spp_det.jobs.eval import evaluate_job


@hydra.main(config_path="../configs", config_name="eval", version_base="1.3")
@report_errors
def main(cfg: DictConfig) -> None:
    metrics = evaluate_job(cfg)
    if metrics and metrics.get("failed_images"):
        sys.exit(1)  # each failed image was named on stderr; the others' results are written


if __name__ == "__main__":
    main()
