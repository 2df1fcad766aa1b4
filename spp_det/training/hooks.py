"""What the training loop calls besides the step itself: the run record, validation and
checkpoints (detectron2's hooks, as three small objects the loop calls by name).

All three share one :class:`Progress`: the counters a checkpoint must carry for a resume to
continue the run exactly.
"""
from __future__ import annotations

import json
import logging
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from ..data import DetectionDataset
from ..distributed import gather_lists, raise_if_any_failed
from ..errors import SppDetError
from ..evaluation.evaluate import evaluate
from ..files import write_atomic
from ..inference.predict import detect_dataset
from ..models import RCNN, SPPNet
from ..models.checkpoint import check_fits, load_checkpoint, load_weights, resume_path, save_checkpoint
from ..proposals import ProposalStore, SelectiveSearchConfig
from .batches import Batch
from .sampling import WindowSampler

log = logging.getLogger(__name__)


@dataclass
class Progress:
    """Where a run stands. ``draws`` counts sampled mini-batches (empty ones included):
    batches come from ``draw_rng(seed, rank, draw)``, so a resume needs only this count.
    ``seconds``: wall time the run's earlier processes spent from their trainer's set-up
    to the checkpoint this one resumed from (0 for a fresh run; None when that checkpoint
    predates the count), so a resumed run reports its whole training time."""
    iteration: int = 0
    draws: int = 0
    seconds: float | None = 0.0
    best: float = -float("inf")
    history: list[dict] = field(default_factory=list)


class RunLog:
    """The run record: ``metrics.jsonl`` (one JSON object per logged step or validation),
    the log line and TensorBoard scalars (when installed). Rank 0 writes; every rank keeps
    ``progress.history``, which checkpoints carry."""

    def __init__(self, out_dir: Path, rank: int, progress: Progress, max_iter: int) -> None:
        self.path, self.rank, self.progress, self.max_iter = out_dir / "metrics.jsonl", rank, progress, max_iter
        self.t0, self.start_iter = time.perf_counter(), progress.iteration
        if rank == 0:  # the record restarts from what the (resumed) checkpoint holds
            write_atomic(self.path, "".join(json.dumps(h) + "\n" for h in progress.history).encode())
        self.writer = self._tensorboard(out_dir) if rank == 0 else None

    def record(self, rec: dict, prefix: str) -> None:
        self.progress.history.append(rec)
        if self.rank == 0:
            with open(self.path, "a") as f:
                f.write(json.dumps(rec) + "\n")
        if self.writer:
            for k, x in rec.items():
                if k not in ("iteration", "seconds", "seconds_per_iter"):
                    self.writer.add_scalar(f"{prefix}/{k}", x, rec["iteration"])

    def step(self, cls: torch.Tensor, box: torch.Tensor, lr: float) -> None:
        """One training step's losses (called every ``log_every`` iterations)."""
        it = self.progress.iteration
        elapsed = time.perf_counter() - self.t0
        per_it = elapsed / max(it - self.start_iter, 1)
        rec = {"iteration": it, "loss": cls.item() + box.item(), "loss_cls": cls.item(), "loss_box": box.item(),
               "lr": lr, "seconds": elapsed, "seconds_per_iter": per_it}
        log.info("it %d/%d loss %.4f (cls %.4f box %.4f) lr %.2e  %.3f s/it  eta %s", it, self.max_iter,
                 rec["loss"], rec["loss_cls"], rec["loss_box"], lr, per_it,
                 time.strftime("%H:%M:%S", time.gmtime(per_it * (self.max_iter - it))))
        self.record(rec, "train")

    def close(self) -> None:
        if self.writer:
            self.writer.close()

    @staticmethod
    def _tensorboard(out_dir: Path):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # optional dependency (the `tensorboard` extra)
            return None
        return SummaryWriter(str(out_dir / "tensorboard"))


class Validator:
    """Validation loss on a fixed, seeded set of batches of the validation images, and
    mAP on the first ``val_map_images`` of them (0: loss only)."""

    def __init__(self, model: SPPNet, val_set: DetectionDataset, batches, sampler: WindowSampler,
                 losses: Callable[[SPPNet, Batch], tuple[torch.Tensor, torch.Tensor]],
                 note_skipped: Callable[[Batch], None], store: ProposalStore, ss: SelectiveSearchConfig,
                 tc: DictConfig, metric: str) -> None:
        self.model, self.val_set, self.batches, self.sampler = model, val_set, batches, sampler
        self.losses, self.note_skipped, self.store, self.ss = losses, note_skipped, store, ss
        self.num_batches, self.map_images = int(tc.val_batches), int(tc.val_map_images)
        self.rcnn, self.metric = bool(tc.get("rcnn")), metric

    @torch.no_grad()
    def __call__(self, iteration: int) -> dict:
        self.model.eval()
        losses = []
        for k in range(self.num_batches):
            batch = self.batches[self.sampler.sample(random.Random(f"spp_det/validation/{k}"))]
            self.note_skipped(batch)
            if len(batch):
                losses.append(float(sum(self.losses(self.model, batch))))
        out = {"iteration": iteration, "val_loss": float(np.mean(losses)) if losses else float("nan")}
        if self.map_images > 0:
            sub = self.val_set.take([0, self.map_images])
            runner = RCNN(self.model).eval() if self.rcnn else self.model
            dets, _, failures = detect_dataset(runner, sub, self.store, self.ss, progress=False)
            if failures:
                log.warning("validation: %d image(s) failed, first: %s", len(failures), failures[0])
            out["val_mAP"] = evaluate(sub, dets, self.metric)[0]["mAP"]
        self.model.train()
        log.info("validation at %d: %s", iteration, out)
        return out


class Checkpointer:
    """``last.pt`` (resumable: optimizer, scheduler, every rank's random state) and
    ``best.pt`` (weights of the best validation score) of one run; resuming from them."""

    def __init__(self, ckpt_dir: Path, model: SPPNet, optimizer, scheduler, cfg: DictConfig, classes: list[str],
                 train_images: list[str], progress: Progress, rank: int, world: int, device: torch.device) -> None:
        self.dir, self.model, self.optimizer, self.scheduler = ckpt_dir, model, optimizer, scheduler
        self.cfg, self.classes, self.train_images, self.progress = cfg, classes, train_images, progress
        self.rank, self.world, self.device = rank, world, device
        self.t0 = time.perf_counter()

    def payload(self, rng_states: list | None = None) -> dict:
        """What a checkpoint holds. ``rng_states``: every rank's random state for a
        resumable last.pt; None for weights only."""
        cfg, p = self.cfg, self.progress
        out = {"model": self.model.state_dict(), "classes": list(self.classes),
               "model_cfg": OmegaConf.to_container(cfg.model, resolve=True),
               "proposals_cfg": OmegaConf.to_container(cfg.proposals, resolve=True),
               "detect_proposals_cfg": (OmegaConf.to_container(cfg.detect_proposals, resolve=True)
                                        if cfg.get("detect_proposals") else None),
               "detect_scales": list(cfg.detect_scales) if cfg.get("detect_scales") else None,
               "dataset_cfg": OmegaConf.to_container(cfg.dataset, resolve=True),
               "config": OmegaConf.to_container(cfg, resolve=True),
               "trunk": self.model.trunk.name,
               "normalization": {"mean": self.model.trunk.mean.flatten().tolist(),
                                 "std": self.model.trunk.std.flatten().tolist()},
               "train_images": self.train_images, "rcnn": bool(cfg.train.get("rcnn")),
               "iteration": p.iteration, "draws": p.draws, "best": p.best, "history": p.history,
               "seconds": None if p.seconds is None else p.seconds + time.perf_counter() - self.t0}
        if rng_states is not None:
            out.update({"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                        "rng": rng_states})
        return out

    def start(self) -> None:
        """Resume as ``cfg.resume`` asks; a fresh run removes an earlier run's best.pt so
        that it is never reported as this run's."""
        path = resume_path(self.cfg.resume, self.dir)
        if path is not None:
            self.resume(path)
        elif self.rank == 0:
            (self.dir / "best.pt").unlink(missing_ok=True)

    def resume(self, path: Path) -> None:
        ckpt = load_checkpoint(path)
        check_fits(ckpt, path, "this run has", classes=list(self.classes))
        if "optimizer" not in ckpt:
            raise SppDetError(f"{path}: holds weights only (no optimizer state): cannot resume from it")
        if "rng" not in ckpt or "draws" not in ckpt:
            raise SppDetError(f"{path}: written by an older version of spp_det (no per-rank random state): "
                              f"start afresh, or resume with the version that wrote it")
        states = ckpt["rng"]
        if len(states) != self.world:
            raise SppDetError(f"{path}: written by {len(states)} process(es), resumed with {self.world}: "
                              f"resume with the same number of processes")
        if len(ckpt["optimizer"]["param_groups"]) != len(self.optimizer.param_groups):
            raise SppDetError(f"{path}: written by an older version of spp_det (its optimizer has "
                              f"{len(ckpt['optimizer']['param_groups'])} parameter group(s), this one "
                              f"{len(self.optimizer.param_groups)}): start afresh, or resume with the version that wrote it")
        load_weights(self.model, ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        torch.set_rng_state(states[self.rank]["torch"])
        if "cuda" in states[self.rank] and self.device.type == "cuda":
            torch.cuda.set_rng_state(states[self.rank]["cuda"], self.device)
        p = self.progress
        p.iteration, p.draws, p.best, p.history[:] = ckpt["iteration"], ckpt["draws"], ckpt["best"], ckpt["history"]
        p.seconds = ckpt.get("seconds")  # None: written before checkpoints counted it
        if p.seconds is None:
            log.warning("%s does not say how long its run trained: this run's training time will be unknown", path)
        log.info("resumed from %s at iteration %d (%s s of training before it)", path, p.iteration,
                 "?" if p.seconds is None else f"{p.seconds:.0f}")

    def offer_best(self, score: float) -> None:
        """best.pt when ``score`` (validation mAP, or minus the loss) beats the best so far."""
        if score > self.progress.best and self.rank == 0:
            self.progress.best = score
            save_checkpoint(self.dir / "best.pt", self.payload())

    def save_last(self) -> None:
        """Collective: every rank's torch (and CUDA) random state, in rank order, then
        rank 0 writes last.pt. Each rank resumes its own stream; restoring rank 0's
        everywhere would repeat its dropout."""
        mine = {"torch": torch.get_rng_state()}
        if self.device.type == "cuda":
            mine["cuda"] = torch.cuda.get_rng_state(self.device)
        states = [s for part in gather_lists([mine], self.world) for s in part]
        if self.rank == 0:
            save_checkpoint(self.dir / "last.pt", self.payload(states))

    def finish(self) -> None:
        """best.pt exists (the final weights when nothing was validated); collective, so
        every rank may read it afterwards."""
        if self.rank == 0 and not (self.dir / "best.pt").exists():
            save_checkpoint(self.dir / "best.pt", self.payload())
        raise_if_any_failed(None, self.world)


def report_skipped(skipped: dict[str, str], rank: int) -> None:
    """Name the images left out of training once, at the end (each was logged when met)."""
    if skipped and rank == 0:
        log.warning("%d image(s) left out of training: %s", len(skipped), ", ".join(skipped))
        print(f"warning: {len(skipped)} image(s) left out of training (named in the log), "
              f"first: {next(iter(skipped))}", file=sys.stderr)
