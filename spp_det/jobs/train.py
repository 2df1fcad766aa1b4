"""scripts/train.py's job: train, then score the weights the user is told to use."""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from ..data import build_dataset, image_digest
from ..distributed import on_rank0
from ..errors import SppDetError
from ..evaluation.detections import to_results
from ..evaluation.evaluate import score_and_report
from ..files import write_json_atomic
from ..inference.predict import configure_inference, detect_dataset, inference_settings, report_failures
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
    for line in describe_recipe(cfg) if os.environ.get("RANK", "0") == "0" else []:  # once under torchrun
        log.info("%s", line)
        print(line)
    trainer = Trainer(cfg, out_dir)
    test_set = None
    if cfg.test_at_end:  # checked before hours of training, not after
        test_set = build_dataset(cfg.dataset, "test").take(cfg.get("test_subset"))
        if not test_set.annotated:
            raise SppDetError(f"dataset '{cfg.dataset.name}': the test split has no annotations, so the test at "
                              f"the end cannot score it: test_at_end=false, then eval.py writes its results")
        test_set.check_disjoint(set(trainer.train_images), "the test split")
    trainer.fit()
    # a resumed run counts what its earlier processes spent up to the checkpoint (None:
    # a checkpoint that did not say; metrics.json then records the times as unknown)
    before = trainer.progress.seconds

    def run_seconds() -> float:
        return time.perf_counter() - t0 + (before or 0.0)

    train_s = run_seconds()
    if trainer.rank == 0:
        if before is None:
            log.info("training took %.1f s in this process; the run's earlier time is unknown", train_s)
        elif before:
            log.info("training took %.1f s (%.1f s of them before a resume)", train_s, before)
        else:
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
    test = cfg.test  # eval.py's keys; precision float32 by default: the model's number, not the machine's
    configure_inference(model, test)
    scales = tuple(test.scales) if test.get("scales") else None
    weights = f"best.pt, iteration {best['iteration']}" + (f", {best['stages']['name']}" if "stages" in best else "")
    store, ss = trainer.store, trainer.ss
    on_rank0(lambda: compute_missing(store, [t.path for t in test_set.targets], ss, workers=cfg.get("workers")),
             trainer.rank, trainer.world, None)
    runner = RCNN(model).eval() if cfg.train.get("rcnn") else model
    dets, timing, failures = detect_dataset(runner, test_set, store, ss, scales, test.score_thresh, test.nms_thresh,
                                            test.max_per_image, trainer.rank, trainer.world,
                                            max_windows=test.get("max_windows"), workers=trainer.loader_workers)
    if trainer.rank != 0:
        return None
    write_json_atomic(out_dir / "detections.json", to_results(test_set, dets))
    metrics = score_and_report(test_set, dets, cfg.dataset.metric, out_dir,
                               extra={"weights": weights, "checkpoint_sha1": image_digest(best_path),
                                      "iteration": best["iteration"], "stages": best.get("stages", {}).get("name"),
                                      **inference_settings(runner, scales, test.score_thresh, test.nms_thresh,
                                                           test.max_per_image, test.get("max_windows"),
                                                           test.get("svd_rank")),
                                      "proposals": store.settings,
                                      "train_seconds": None if before is None else train_s,
                                      "total_seconds": None if before is None else run_seconds(),
                                      "failed_images": failures,
                                      **timing})
    print(f"test {metrics['metric']} mAP = {metrics['mAP']:.4f} ({weights})  "
          f"(total {run_seconds():.0f} s)")
    report_failures(failures)
    return metrics


def recipe_names() -> list[str]:
    """The recipes in configs/experiment/ (the shapes demo, the default, left out)."""
    return sorted(p.stem for p in (Path(__file__).resolve().parents[1] / "configs" / "experiment").glob("*.yaml") if p.stem != "shapes")


def describe_recipe(cfg: DictConfig) -> list[str]:
    """What this run trains with, in one line; and a warning when a real data set is
    trained with no recipe, whose defaults (configs/train.yaml) are the shapes demo's."""
    m, s, t = cfg.model, cfg.solver, cfg.train
    lines = [f"recipe {cfg.get('recipe') or '(none: configs/train.yaml defaults + command line)'}: "
             f"{cfg.dataset.name}, {m.trunk.name} ({'fine-tuned' if t.finetune_conv else 'frozen'}), "
             f"levels {list(m.levels)}, fc {m.hidden} ({m.fc_init}), train scales {list(m.train_scales)}"
             f"{' + flips' if t.flip else ''}, test scales {list(cfg.test.scales or m.scales)}, "
             f"proposals {cfg.proposals.get('mode', cfg.proposals.get('source'))} "
             f"(max_size {cfg.proposals.get('max_size')}), {s.name} lr {s.lr} for {s.max_iter} iterations"]
    if not cfg.get("recipe") and cfg.dataset.name != "shapes":
        lines.append(f"warning: {cfg.dataset.name} without a recipe: every setting not on the command line is the "
                     f"shapes demo's (configs/train.yaml). For a whole recipe pass +experiment=<name> "
                     f"(configs/experiment/: {', '.join(recipe_names())})")
    return lines


def add_paper_stages(trainer: Trainer, best_path: Path) -> None:
    """Fit the SVMs / ridge regressors on best.pt's fine-tuned weights and write them into
    best.pt (the weights the user is told to use)."""
    cfg = trainer.cfg
    t0 = time.perf_counter()
    best = load_checkpoint(best_path)
    load_weights(trainer.model, best["model"])
    stats = fit_paper_stages(trainer.model, trainer.train_set, trainer.store, trainer.features, cfg.train, cfg.seed,
                             skipped=trainer.skipped, progress=True)
    fitted = [(n, key) for n, on, key in (("SVMs", cfg.train.get("classifier") == "svm", "svm"),
                                          ("ridge box regression", cfg.train.get("bbox_reg") == "ridge", "ridge")) if on]
    name = " + ".join(n for n, _ in fitted)
    best["model"] = trainer.model.state_dict()
    # the settings they were fitted with: a checkpoint's "config" is that of the run that
    # fine-tuned it, which may have named other stages (a run resumed from a copy)
    settings = {key: OmegaConf.to_container(cfg.train[key]) for _, key in fitted}
    best["stages"] = {"name": name, "seconds": time.perf_counter() - t0, "settings": settings, **stats}
    save_checkpoint(best_path, best)
    log.info("%s fitted in %.0f s: %s", name, time.perf_counter() - t0, stats)
    print(f"{name} fitted on the training images in {time.perf_counter() - t0:.0f} s -> {best_path}")
