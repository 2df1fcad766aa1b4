"""scripts/train.py's job: train, then score the weights the user is told to use."""
from __future__ import annotations

import logging
import time
from pathlib import Path

from omegaconf import DictConfig

from ..data import build_dataset, image_digest
from ..distributed import on_rank0
from ..evaluation.detections import to_results
from ..evaluation.evaluate import score_and_report
from ..files import write_json_atomic
from ..inference.predict import detect_dataset, inference_settings, report_failures
from ..models import RCNN
from ..models.checkpoint import load_checkpoint, load_weights, save_checkpoint
from ..paper_stages.fit import fit_paper_stages
from ..proposals import compute_missing
from ..training.trainer import Trainer
from ..visualize import plot_training

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
    best_path = out_dir / "checkpoints" / "best.pt"
    if cfg.train.get("classifier") == "svm" or cfg.train.get("bbox_reg") == "ridge":
        on_rank0(lambda: add_paper_stages(trainer, best_path), trainer.rank, trainer.world, None)
    if test_set is None:
        return None
    # the README tells users to use best.pt: report those weights, named as such
    best = load_checkpoint(best_path)
    model = trainer.model
    load_weights(model, best["model"])
    model.set_precision("float32")  # the model's number, not the machine's (bf16 only when asked, in eval)
    weights = f"best.pt, iteration {best['iteration']}" + (f", {best['stages']['name']}" if "stages" in best else "")
    store, ss = trainer.store, trainer.ss
    on_rank0(lambda: compute_missing(store, [t.path for t in test_set.targets], ss, workers=cfg.get("workers")),
             trainer.rank, trainer.world, None)
    runner = RCNN(model).eval() if cfg.train.get("rcnn") else model
    dets, timing, failures = detect_dataset(runner, test_set, store, ss, rank=trainer.rank, world=trainer.world,
                                            workers=trainer.loader_workers)
    if trainer.rank != 0:
        return None
    write_json_atomic(out_dir / "detections.json", to_results(test_set, dets))
    metrics = score_and_report(test_set, dets, cfg.dataset.metric, out_dir,
                               extra={"weights": weights, "checkpoint_sha1": image_digest(best_path),
                                      "iteration": best["iteration"], "stages": best.get("stages", {}).get("name"),
                                      **inference_settings(runner, None, 0.001, 0.3, 100, None, None),
                                      "proposals": store.settings,
                                      "train_seconds": train_s,
                                      "total_seconds": time.perf_counter() - t0, "failed_images": failures,
                                      **timing})
    print(f"test {metrics['metric']} mAP = {metrics['mAP']:.4f} ({weights})  "
          f"(total {metrics['total_seconds']:.0f} s)")
    report_failures(failures)
    return metrics


def add_paper_stages(trainer: Trainer, best_path: Path) -> None:
    """Fit the SVMs / ridge regressors on best.pt's fine-tuned weights and write them into
    best.pt (the weights the user is told to use)."""
    cfg = trainer.cfg
    t0 = time.perf_counter()
    best = load_checkpoint(best_path)
    load_weights(trainer.model, best["model"])
    stats = fit_paper_stages(trainer.model, trainer.train_set, trainer.store, trainer.features, cfg.train, cfg.seed,
                             skipped=trainer.skipped)
    name = " + ".join(n for n, on in (("SVMs", cfg.train.get("classifier") == "svm"),
                                      ("ridge box regression", cfg.train.get("bbox_reg") == "ridge")) if on)
    best["model"] = trainer.model.state_dict()
    best["stages"] = {"name": name, "seconds": time.perf_counter() - t0, **stats}
    save_checkpoint(best_path, best)
    log.info("%s fitted in %.0f s: %s", name, time.perf_counter() - t0, stats)
    print(f"{name} fitted on the training images in {time.perf_counter() - t0:.0f} s -> {best_path}")
