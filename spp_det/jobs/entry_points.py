"""The four commands: ``scripts/<name>.py`` in the repository, ``spp-<name>`` once
installed (console entry points). Each reads its config from the package
(``spp_det/configs``), so an installed wheel runs outside the repository too."""
from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from .cli import report_errors, run_dir
from .detect import detect_job
from .eval import evaluate_job
from .propose import propose_job
from .train import train_job

CONFIGS = "pkg://spp_det.configs"


@hydra.main(config_path=CONFIGS, config_name="train", version_base="1.3")
@report_errors
def train(cfg: DictConfig) -> None:
    metrics = train_job(cfg, run_dir())
    if metrics and metrics.get("failed_images"):
        sys.exit(1)  # each failed image was named on stderr; the others' results are written


@hydra.main(config_path=CONFIGS, config_name="eval", version_base="1.3")
@report_errors
def evaluate(cfg: DictConfig) -> None:
    metrics = evaluate_job(cfg)
    if metrics and metrics.get("failed_images"):
        sys.exit(1)  # each failed image was named on stderr; the others' results are written


@hydra.main(config_path=CONFIGS, config_name="detect", version_base="1.3")
@report_errors
def detect(cfg: DictConfig) -> None:
    if detect_job(cfg):
        sys.exit(1)  # each failed image was named on stderr; the others' results are written


@hydra.main(config_path=CONFIGS, config_name="propose", version_base="1.3")
@report_errors
def propose(cfg: DictConfig) -> None:
    propose_job(cfg)
