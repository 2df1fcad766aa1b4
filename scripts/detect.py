"""Detect objects in a folder of images (or one image): pictures plus detections.json.

    python scripts/detect.py checkpoint=outputs/train/.../checkpoints/best.pt \
        input=data/shapes/SHAPES/JPEGImages output=outputs/shapes_detections

Unreadable files are named on stderr and skipped; the exit code is 1 if any failed.
"""
from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from spp_det.jobs.cli import report_errors
from spp_det.jobs.detect import detect_job


@hydra.main(config_path="../configs", config_name="detect", version_base="1.3")
@report_errors
def main(cfg: DictConfig) -> None:
    failed = detect_job(cfg)
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
