"""The training loop: model, solver, data loader, validation, checkpoints, resume, DDP.

Two regimes (DESIGN.md), one switch: ``train.finetune_conv``.
- false (the paper): the trunk is frozen; every conv map of the training images is
  computed once per scale and flip before training (``FeatureCache.fill``) and read back
  by loader workers; windows of many images per mini-batch, each at a random scale;
- true: end to end through SPP into the trunk, few images per batch, one random scale per
  image (Fast R-CNN style); workers decode and resize the images.
"""
from __future__ import annotations

import json
import logging
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from ..data import DetectionDataset, build_dataset
from ..errors import SppDetError
from ..files import write_atomic
from ..models import RCNN, SPPNet, build_detector
from ..proposals import build_proposals
from .batches import Batch, EndToEndBatches, FrozenBatches, PlanStream
from .checkpoint import load_checkpoint, load_weights, resume_path, save_checkpoint
from .distributed import any_rank, gather_lists, init_distributed, raise_if_any_failed
from .evaluate import evaluate
from .features import FeatureCache
from .inference import detect_dataset
from .loader import loader_kwargs, resolve_workers
from .loss import detection_loss
from .sampling import ImageWindows, WindowSampler, draw_rng, split_train_val
from .training_data import build_batches, check_frozen_trunk, prepare_windows
from .solver import build_solver

log = logging.getLogger(__name__)


class Trainer:
    """Owns the model, solver, sampler and caches of one training run."""

    def __init__(self, cfg: DictConfig, out_dir: Path) -> None:
        self.cfg = cfg
        self.out_dir = out_dir
        self.rank, self.world = init_distributed(cfg.device)
        self.device = torch.device(f"cuda:{torch.cuda.current_device()}" if cfg.device.startswith("cuda")
                                   and torch.distributed.is_initialized() else cfg.device)
        tc = cfg.train
        torch.manual_seed(cfg.seed)
        self.finetune = bool(tc.finetune_conv)
        self.loader_workers = resolve_workers(tc.get("loader_workers"), cfg.device)
        check_frozen_trunk(cfg)
        full = build_dataset(cfg.dataset, "train").take(tc.get("subset"))
        self.train_set, self.val_set = split_train_val(full, tc.val_fraction, cfg.seed)
        self.classes = full.classes
        self.train_images = sorted(full.digests())  # checked against test splits, here and in eval
        self.model: SPPNet = build_detector(cfg.model, len(self.classes), train_trunk=self.finetune).to(self.device)
        self.store, self.ss = build_proposals(cfg.proposals)
        self.features = None if self.finetune else FeatureCache(tc.feature_cache, self.model,
                                                                memory_mb=tc.get("feature_memory_mb", 1024))
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer, self.scheduler = build_solver(params, cfg.solver)
        self.ddp = (DistributedDataParallel(self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
                    if torch.distributed.is_initialized() else None)
        # The model above was initialised from the same seed on every rank; from here each
        # rank has its own torch stream (dropout), saved and restored per rank. Batches come
        # from draw_rng(seed, rank, draw): resuming needs only the draw count.
        if self.rank > 0:
            torch.manual_seed(cfg.seed * 1000 + self.rank)
        self.skipped: dict[str, str] = {}  # image path -> why it was left out of training
        self.iteration = 0
        self.draws = 0
        self.best = -float("inf")
        self.history: list[dict] = []

    # ---- data (the work itself lives in training_data.py) --------------------------------
    def prepare_windows(self, dataset: DetectionDataset) -> list[ImageWindows]:
        return prepare_windows(dataset, self.store, self.ss, self.cfg.train, self.rank, self.world,
                               self.cfg.get("workers"), self.skip_image)

    def skip_image(self, path, reason: str) -> None:
        """Leave one image out of training, named once in the log (counted at the end)."""
        if str(path) not in self.skipped:
            self.skipped[str(path)] = reason
            log.warning("training without %s: %s", path, reason)

    def sampler(self, entries: list[ImageWindows]) -> WindowSampler:
        tc = self.cfg.train
        return WindowSampler(entries, tc.batch_windows, tc.images_per_batch, tc.fg_fraction, flip=bool(tc.flip),
                             num_scales=len(self.model.train_scales), scale_per_window=not self.finetune,
                             vflip=bool(tc.get("vflip")), pooled=bool(tc.get("pooled_batches", False)))

    def batches(self, dataset: DetectionDataset, entries: list[ImageWindows]) -> FrozenBatches | EndToEndBatches:
        return build_batches(dataset, entries, self.model, self.cfg.train, self.features, self.loader_workers,
                             self.rank, self.world, self.skip_image)

    def losses(self, net, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        logits, deltas = net(*batch.model_inputs(self.model, self.device))
        return detection_loss(logits, deltas, batch.labels.to(self.device), batch.targets.to(self.device))

    def note_skipped(self, batch: Batch) -> None:
        for path, reason in batch.skipped:
            self.skip_image(path, reason)

    # ---- checkpoints ----------------------------------------------------------------------
    def payload(self, rng_states: list | None = None) -> dict:
        """What a checkpoint holds. ``rng_states``: every rank's random state (from
        :meth:`gather_rng_states`) for a resumable last.pt; None for weights only."""
        p = {"model": self.model.state_dict(), "classes": list(self.classes),
             "model_cfg": OmegaConf.to_container(self.cfg.model, resolve=True),
             "proposals_cfg": OmegaConf.to_container(self.cfg.proposals, resolve=True),
             "dataset_cfg": OmegaConf.to_container(self.cfg.dataset, resolve=True),
             "config": OmegaConf.to_container(self.cfg, resolve=True),
             "trunk": self.model.trunk.name,
             "normalization": {"mean": self.model.trunk.mean.flatten().tolist(),
                               "std": self.model.trunk.std.flatten().tolist()},
             "train_images": self.train_images, "rcnn": bool(self.cfg.train.get("rcnn")),
             "iteration": self.iteration, "draws": self.draws, "best": self.best, "history": self.history}
        if rng_states is not None:
            p.update({"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                      "rng": rng_states})
        return p

    def gather_rng_states(self) -> list[dict]:
        """Collective: every rank's torch (and CUDA) random state, in rank order. Each rank
        resumes its own stream; restoring rank 0's everywhere would repeat its dropout."""
        mine = {"torch": torch.get_rng_state()}
        if self.device.type == "cuda":
            mine["cuda"] = torch.cuda.get_rng_state(self.device)
        return [s for part in gather_lists([mine], self.world) for s in part]

    def resume(self, path: Path) -> None:
        ckpt = load_checkpoint(path)
        if list(ckpt["classes"]) != list(self.classes):
            raise SppDetError(f"{path}: checkpoint classes {ckpt['classes']} differ from {self.classes}")
        if "optimizer" not in ckpt:
            raise SppDetError(f"{path}: holds weights only (no optimizer state): cannot resume from it")
        if "rng" not in ckpt or "draws" not in ckpt:
            raise SppDetError(f"{path}: written by an older version of spp_det (no per-rank random state): "
                              f"start afresh, or resume with the version that wrote it")
        states = ckpt["rng"]
        if len(states) != self.world:
            raise SppDetError(f"{path}: written by {len(states)} process(es), resumed with {self.world}: "
                              f"resume with the same number of processes")
        load_weights(self.model, ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        torch.set_rng_state(states[self.rank]["torch"])
        if "cuda" in states[self.rank] and self.device.type == "cuda":
            torch.cuda.set_rng_state(states[self.rank]["cuda"], self.device)
        self.iteration, self.draws = ckpt["iteration"], ckpt["draws"]
        self.best, self.history = ckpt["best"], list(ckpt["history"])
        log.info("resumed from %s at iteration %d", path, self.iteration)

    def record(self, rec: dict) -> None:
        """One line of the run record (``metrics.jsonl``: every logged step and validation)."""
        self.history.append(rec)
        if self.rank == 0:
            with open(self.out_dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps(rec) + "\n")

    # ---- validation -----------------------------------------------------------------------
    @torch.no_grad()
    def validate(self, val_batches: FrozenBatches | EndToEndBatches, val_sampler: WindowSampler) -> dict:
        """Loss on a fixed, seeded set of validation batches; mAP on the first
        ``val_map_images`` validation images (0: skip)."""
        self.model.eval()
        losses = []
        for k in range(int(self.cfg.train.val_batches)):
            batch = val_batches[val_sampler.sample(random.Random(f"spp_det/validation/{k}"))]
            self.note_skipped(batch)
            if len(batch):
                losses.append(float(sum(self.losses(self.model, batch))))
        out = {"iteration": self.iteration, "val_loss": float(np.mean(losses)) if losses else float("nan")}
        n = int(self.cfg.train.val_map_images)
        if n > 0:
            sub = self.val_set.take([0, n])
            runner = RCNN(self.model).eval() if self.cfg.train.get("rcnn") else self.model
            dets, _, failures = detect_dataset(runner, sub, self.store, self.ss, progress=False)
            if failures:
                log.warning("validation: %d image(s) failed, first: %s", len(failures), failures[0])
            out["val_mAP"] = evaluate(sub, dets, self.cfg.dataset.metric)[0]["mAP"]
        self.model.train()
        return out

    # ---- the loop -------------------------------------------------------------------------
    def fit(self) -> SPPNet:
        cfg, tc = self.cfg, self.cfg.train
        ckpt_dir = self.out_dir / "checkpoints"
        path = resume_path(cfg.resume, ckpt_dir)
        if path is not None:
            self.resume(path)
        elif self.rank == 0:  # a fresh run never reports an earlier run's best.pt
            (ckpt_dir / "best.pt").unlink(missing_ok=True)
        if self.rank == 0:  # the run record restarts from what the checkpoint holds
            write_atomic(self.out_dir / "metrics.jsonl", "".join(json.dumps(h) + "\n" for h in self.history).encode())
        entries = self.prepare_windows(self.train_set)
        sampler = self.sampler(entries)
        batches = self.train_batches = self.batches(self.train_set, sampler.entries)
        val = None
        if self.val_set is not None:
            val_sampler = self.sampler(self.prepare_windows(self.val_set))
            val = (self.batches(self.val_set, val_sampler.entries), val_sampler)
        seed = int(cfg.seed)
        loader = DataLoader(batches, sampler=PlanStream(lambda d: sampler.sample(draw_rng(seed, self.rank, d)),
                                                        self.draws),
                            batch_size=None, **loader_kwargs(self.loader_workers))
        stream = iter(loader)
        writer = self._tensorboard()
        net = self.ddp or self.model
        self.model.train()
        max_iter = int(cfg.solver.max_iter)
        bar = tqdm(total=max_iter, initial=self.iteration, desc="train", unit="it",
                   disable=self.rank != 0, file=sys.stderr)
        t0, start_iter, smooth = time.perf_counter(), self.iteration, None
        while self.iteration < max_iter:
            batch = next(stream)
            self.draws += 1
            self.note_skipped(batch)
            if not len(batch):  # every image of this draw was left out: draw again
                continue
            cls, box = self.losses(net, batch)
            loss = cls + box
            # decided by all ranks together: a rank that stopped alone would leave the
            # others waiting in the gradient all-reduce
            if any_rank(not bool(torch.isfinite(loss)), self.world, self.device):
                raise SppDetError(f"loss became non-finite at iteration {self.iteration} (this rank: "
                                  f"{float(loss)}): lower solver.lr")
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            self.scheduler.step()
            self.iteration += 1
            value = loss.item()
            smooth = value if smooth is None else 0.95 * smooth + 0.05 * value
            bar.update(1)
            bar.set_postfix(loss=f"{smooth:.3f}", lr=f"{self.scheduler.get_last_lr()[0]:.1e}")
            if self.iteration % tc.log_every == 0 or self.iteration == max_iter:
                elapsed = time.perf_counter() - t0
                per_it = elapsed / (self.iteration - start_iter)
                rec = {"iteration": self.iteration, "loss": value, "loss_cls": cls.item(), "loss_box": box.item(),
                       "lr": self.scheduler.get_last_lr()[0], "seconds": elapsed, "seconds_per_iter": per_it}
                log.info("it %d/%d loss %.4f (cls %.4f box %.4f) lr %.2e  %.3f s/it  eta %s", self.iteration,
                         max_iter, rec["loss"], rec["loss_cls"], rec["loss_box"], rec["lr"], per_it,
                         time.strftime("%H:%M:%S", time.gmtime(per_it * (max_iter - self.iteration))))
                self.record(rec)
                if writer:
                    for k in ("loss", "loss_cls", "loss_box", "lr"):
                        writer.add_scalar(f"train/{k}", rec[k], self.iteration)
            if val and (self.iteration % tc.val_every == 0 or self.iteration == max_iter):
                v = self.validate(*val)
                self.record(v)
                log.info("validation at %d: %s", self.iteration, v)
                if writer:
                    for k, x in v.items():
                        writer.add_scalar(f"val/{k}", x, self.iteration)
                score = v.get("val_mAP", -v["val_loss"])
                if score > self.best and self.rank == 0:
                    self.best = score
                    save_checkpoint(ckpt_dir / "best.pt", self.payload())
            if self.iteration % tc.checkpoint_every == 0 or self.iteration == max_iter:
                states = self.gather_rng_states()  # every rank takes part
                if self.rank == 0:
                    save_checkpoint(ckpt_dir / "last.pt", self.payload(states))
        del stream  # stops the loader's workers
        bar.close()
        if writer:
            writer.close()
        if self.rank == 0 and not (ckpt_dir / "best.pt").exists():
            save_checkpoint(ckpt_dir / "best.pt", self.payload())
        raise_if_any_failed(None, self.world)  # every rank may read best.pt from here on
        if self.skipped and self.rank == 0:
            log.warning("%d image(s) left out of training: %s", len(self.skipped), ", ".join(self.skipped))
            print(f"warning: {len(self.skipped)} image(s) left out of training (named in the log), "
                  f"first: {next(iter(self.skipped))}", file=sys.stderr)
        return self.model

    def _tensorboard(self):
        if self.rank != 0:
            return None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # optional
            return None
        return SummaryWriter(str(self.out_dir / "tensorboard"))
