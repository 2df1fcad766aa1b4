"""Train SPP-net, then evaluate it on the test split.

    python scripts/train.py                                    # shapes, CPU, minutes
    python scripts/train.py +experiment=voc07_alexnet            # a whole recipe (configs/experiment/)
    torchrun --nproc_per_node=4 scripts/train.py device=cuda ...

Writes checkpoints/{last,best}.pt, train.log, metrics.json, detections.json into the Hydra
run directory.
"""
from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from spp_det.jobs.cli import report_errors, run_dir
from spp_det.jobs.train import train_job


@hydra.main(config_path="../configs", config_name="train", version_base="1.3")
@report_errors
def main(cfg: DictConfig) -> None:
    metrics = train_job(cfg, run_dir())
    if metrics and metrics.get("failed_images"):
        sys.exit(1)  # each failed image was named on stderr; the others' results are written


if __name__ == "__main__":
    main()
