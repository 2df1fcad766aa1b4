"""scripts/train.py's job: train, then score the weights the user is told to use."""
from __future__ import annotations

import logging
import time
from pathlib import Path

from omegaconf import DictConfig

from ..data import build_dataset
from ..files import write_json_atomic
from ..proposals import compute_missing
from ..visualize import plot_training
from .checkpoint import load_checkpoint
from .detections import to_results
from .distributed import on_rank0
from .evaluate import score_and_report
from .inference import detect_dataset, report_failures
from .trainer import Trainer

log = logging.getLogger(__name__)


def train_job(cfg: DictConfig, out_dir: Path) -> dict | None:
    """scripts/train.py: train, then (``test_at_end``) evaluate the weights the user is
    told to use, ``best.pt``, on the test split. Returns the test metrics on rank 0."""
    t0 = time.perf_counter()
    trainer = Trainer(cfg, out_dir)
    test_set = None
    if cfg.test_at_end:  # checked before hours of training, not after
        test_set = build_dataset(cfg.dataset, "test").take(cfg.get("test_subset"))
        test_set.check_disjoint(set(trainer.train_images), "the test split")
    trainer.fit()
    train_s = time.perf_counter() - t0
    if trainer.rank == 0:
        log.info("training took %.1f s", train_s)
        print(f"trained {cfg.solver.max_iter} iterations in {train_s:.0f} s -> {out_dir / 'checkpoints'}")
        plot_training(trainer.history, out_dir / "training.png")
    if test_set is None:
        return None
    # the README tells users to use best.pt: report those weights, named as such
    best = load_checkpoint(out_dir / "checkpoints" / "best.pt")
    model = trainer.model
    model.load_state_dict(best["model"])
    weights = f"best.pt, iteration {best['iteration']}"
    store, ss = trainer.store, trainer.ss
    on_rank0(lambda: compute_missing(store, [t.path for t in test_set.targets], ss, workers=cfg.get("workers")),
             trainer.rank, trainer.world, None)
    dets, timing, failures = detect_dataset(model, test_set, store, ss, rank=trainer.rank, world=trainer.world,
                                            workers=trainer.loader_workers)
    if trainer.rank != 0:
        return None
    write_json_atomic(out_dir / "detections.json", to_results(test_set, dets))
    metrics = score_and_report(test_set, dets, cfg.dataset.metric, out_dir,
                               extra={"weights": weights, "train_seconds": train_s,
                                      "total_seconds": time.perf_counter() - t0, "failed_images": failures,
                                      **timing})
    print(f"test {metrics['metric']} mAP = {metrics['mAP']:.4f} ({weights})  "
          f"(total {metrics['total_seconds']:.0f} s)")
    report_failures(failures)
    return metrics
