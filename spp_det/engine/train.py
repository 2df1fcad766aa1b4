"""Training: window sampling, the two-head loss, the solver loop, checkpoints, resume, DDP.

Two regimes (DESIGN.md):
- frozen trunk (the paper): conv maps computed once per image, scale and flip, cached on
  disk; mini-batches of windows drawn from many images, each window at a random scale;
- ``finetune_conv``: end-to-end through SPP into the trunk, few images per batch, one
  random scale per image (Fast R-CNN style).
"""
from __future__ import annotations

import logging
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from ..boxes import box_iou, flip_boxes
from ..data import DetectionDataset, build_dataset
from ..errors import SppDetError
from ..models import SPPNet, build_detector
from ..proposals import build_proposals, compute_missing
from .checkpoint import load_checkpoint, save_checkpoint
from .detections import to_results, write_json_atomic
from .distributed import any_rank, gather_lists, init_distributed, raise_if_any_failed
from .evaluate import evaluate, score_and_report
from .features import FeatureCache
from .inference import detect_dataset, report_failures

log = logging.getLogger(__name__)


@dataclass
class ImageWindows:
    """Training windows of one image. windows: (N, 4) original pixels (proposals, plus the
    ground truth when asked); labels: (N,) class of a foreground window, 0 background,
    -1 neither; gt_index: (N,) the matched ground-truth box; gt: (G, 4)."""

    index: int
    width: int
    windows: torch.Tensor
    labels: torch.Tensor
    gt_index: torch.Tensor
    gt: torch.Tensor

    @property
    def fg(self) -> torch.Tensor:
        return (self.labels > 0).nonzero().squeeze(1)

    @property
    def bg(self) -> torch.Tensor:
        return (self.labels == 0).nonzero().squeeze(1)


def label_windows(index: int, width: int, windows: torch.Tensor, gt: torch.Tensor, gt_labels: torch.Tensor,
                  fg_iou: float = 0.5, bg_iou: tuple[float, float] = (0.1, 0.5)) -> ImageWindows:
    """Match windows (N, 4) to ground truth (G, 4): foreground at IoU >= fg_iou (class of
    the best-overlapping box), background at IoU in [bg_iou[0], bg_iou[1])."""
    labels = torch.full((len(windows),), -1, dtype=torch.long)
    gt_index = torch.zeros(len(windows), dtype=torch.long)
    if len(gt):
        iou, gt_index = box_iou(windows, gt).max(dim=1)
        labels[(iou >= bg_iou[0]) & (iou < bg_iou[1])] = 0
        fg = iou >= fg_iou
        labels[fg] = gt_labels[gt_index[fg]]
    elif bg_iou[0] <= 0:
        labels[:] = 0
    return ImageWindows(index, width, windows, labels, gt_index, gt)


class WindowSampler:
    """Draws mini-batches: ``images_per_batch`` images (only images that have windows of
    either kind), ``batch_windows / images_per_batch`` windows each, up to ``fg_fraction``
    of them foreground, sampled without replacement within an image."""

    def __init__(self, entries: list[ImageWindows], batch_windows: int, images_per_batch: int,
                 fg_fraction: float, rng: random.Random) -> None:
        self.entries = [e for e in entries if len(e.fg) or len(e.bg)]
        if not self.entries:
            raise SppDetError("no training image has a foreground or background window")
        self.per_image = max(1, batch_windows // images_per_batch)
        self.images_per_batch = images_per_batch
        self.fg_fraction = fg_fraction
        self.rng = rng

    def _pick(self, pool: torch.Tensor, n: int) -> list[int]:
        items = pool.tolist()
        return self.rng.sample(items, min(n, len(items)))

    def sample(self) -> list[tuple[ImageWindows, torch.Tensor]]:
        out = []
        for _ in range(self.images_per_batch):
            e = self.entries[self.rng.randrange(len(self.entries))]
            fg = self._pick(e.fg, round(self.fg_fraction * self.per_image))
            bg = self._pick(e.bg, self.per_image - len(fg))
            out.append((e, torch.tensor(fg + bg, dtype=torch.long)))
        return out


def detection_loss(logits: torch.Tensor, deltas: torch.Tensor, labels: torch.Tensor,
                   targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax cross-entropy over all windows + smooth-L1 on the true class's deltas of
    foreground windows, summed and divided by the number of windows (Fast R-CNN).
    logits (K, C+1), deltas (K, 4C), labels (K,), targets (K, 4) (only fg rows used)."""
    cls = F.cross_entropy(logits, labels)
    fg = (labels > 0).nonzero().squeeze(1)
    if len(fg) == 0:
        return cls, deltas.sum() * 0.0
    pred = deltas[fg].view(len(fg), -1, 4)[torch.arange(len(fg), device=fg.device), labels[fg] - 1]
    box = F.smooth_l1_loss(pred, targets[fg], beta=1.0, reduction="sum") / max(1, len(labels))
    return cls, box


def build_solver(params, cfg: DictConfig) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """SGD with momentum (the paper's; ``cfg.name`` "adamw" for from-scratch trunks, which
    it trains much faster); linear warm-up, then a step schedule (lr * gamma^k after each
    of ``steps``), as the released code's 1e-3 -> 1e-4 -> 1e-5."""
    name = cfg.get("name", "sgd")
    if name == "sgd":
        opt = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    elif name == "adamw":
        opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    else:
        raise SppDetError(f"solver.name '{name}': use sgd or adamw")
    steps = sorted(int(s) for s in cfg.steps)
    warmup = int(cfg.get("warmup_iters", 0))

    def factor(it: int) -> float:
        f = cfg.gamma ** sum(it >= s for s in steps)
        if it < warmup:
            f *= 0.1 + 0.9 * it / warmup
        return f

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, factor)


def split_train_val(dataset: DetectionDataset, val_fraction: float, seed: int) -> tuple[DetectionDataset, DetectionDataset | None]:
    """A validation split carved from the training data (seeded), never the test split."""
    n_val = int(round(len(dataset) * val_fraction))
    if n_val == 0:
        return dataset, None
    order = list(range(len(dataset)))
    random.Random(seed).shuffle(order)
    return dataset.subset(sorted(order[n_val:])), dataset.subset(sorted(order[:n_val]))


def check_frozen_trunk(cfg: DictConfig) -> None:
    """A frozen trunk must bring learned weights: frozen random conv features train
    without complaint and give a weak detector nobody asked for."""
    t, tc = cfg.model.trunk, cfg.train
    if tc.finetune_conv or t.get("pretrained") or t.get("weights_path") or tc.get("allow_random_frozen_trunk"):
        return
    raise SppDetError(
        f"model.trunk '{t.name}' has no learned weights (pretrained=false, weights_path=null) but "
        f"train.finetune_conv=false keeps it frozen: the heads would learn on random conv features. "
        f"Give model.trunk.weights_path=<file> (or pretrained=true), train end to end (train=finetune), "
        f"or set train.allow_random_frozen_trunk=true if that is what you want")


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
        check_frozen_trunk(cfg)
        full = build_dataset(cfg.dataset, "train").take(tc.get("subset"))
        self.train_set, self.val_set = split_train_val(full, tc.val_fraction, cfg.seed)
        self.classes = full.classes
        self.train_images = sorted(full.digests())  # checked against test splits, here and in eval
        self.model: SPPNet = build_detector(cfg.model, len(self.classes)).to(self.device)
        if self.finetune:
            for p in self.model.trunk.parameters():
                p.requires_grad_(True)
        else:
            self.model.trunk.freeze(freeze_bn=True)  # maps come from the cache, computed once
        self.store, self.ss = build_proposals(cfg.proposals)
        self.features = None if self.finetune else FeatureCache(tc.feature_cache, self.model,
                                                                memory_mb=tc.get("feature_memory_mb", 1024))
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer, self.scheduler = build_solver(params, cfg.solver)
        self.ddp = (DistributedDataParallel(self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
                    if torch.distributed.is_initialized() else None)
        # Each rank draws its own streams (window sampling, flips, scales; dropout), saved
        # and restored per rank. The model above was initialised from the same seed on
        # every rank; rank 0's torch stream simply continues (a single process is rank 0).
        self.rng = random.Random(cfg.seed * 1000 + self.rank)
        if self.rank > 0:
            torch.manual_seed(cfg.seed * 1000 + self.rank)
        self.skipped: dict[str, str] = {}  # image path -> why it was left out of training
        self.iteration = 0
        self.best = -float("inf")
        self.history: list[dict] = []

    # ---- data ---------------------------------------------------------------------------
    def prepare_windows(self, dataset: DetectionDataset) -> list[ImageWindows]:
        """Proposals for every image (computed in parallel if missing), labelled. An image
        whose proposals cannot be had (unreadable file) is named, skipped and counted."""
        error = None
        if self.rank == 0:
            try:
                compute_missing(self.store, [t.path for t in dataset.targets], self.ss,
                                workers=self.cfg.get("workers"))
            except Exception as exc:  # shared below, so no rank waits for rank 0 forever
                error = exc
        raise_if_any_failed(error, self.world)
        tc = self.cfg.train
        entries = []
        for i, t in enumerate(dataset.targets):
            try:
                boxes = self.store.get(t.path)
            except SppDetError as exc:
                self.skip_image(t.path, str(exc))
                continue
            if boxes is None:
                self.skip_image(t.path, "no proposals (its selective search failed, see above)")
                continue
            keep = torch.ones(len(t.boxes), dtype=torch.bool) if tc.use_difficult else ~t.ignore
            gt, gt_labels = t.boxes[keep], t.labels[keep]
            windows = torch.from_numpy(boxes)
            if tc.include_gt:
                windows = torch.cat([gt, windows])
            entries.append(label_windows(i, t.width, windows, gt, gt_labels, tc.fg_iou, tuple(tc.bg_iou)))
        if not entries:
            raise SppDetError(f"dataset '{dataset.name}': no usable training image "
                              f"({len(self.skipped)} skipped, first: {next(iter(self.skipped.items()), '')})")
        return entries

    def skip_image(self, path, reason: str) -> None:
        """Leave one image out of training, named once in the log (counted at the end)."""
        if str(path) not in self.skipped:
            self.skipped[str(path)] = reason
            log.warning("training without %s: %s", path, reason)

    def batch(self, dataset: DetectionDataset, samples: list[tuple[ImageWindows, torch.Tensor]]):
        """Model inputs, boxes, map indices, labels and regression targets of a batch."""
        inputs, boxes, index, labels, targets = [], [], [], [], []
        scales = self.model.train_scales
        for e, sel in samples:
            if str(dataset.targets[e.index].path) in self.skipped:
                continue
            flip = bool(self.cfg.train.flip) and self.rng.random() < 0.5
            win, gt = e.windows[sel], e.gt
            if flip:
                win, gt = flip_boxes(win, e.width), flip_boxes(gt, e.width)
            lab = e.labels[sel]
            tgt = torch.zeros((len(sel), 4))
            fg = lab > 0
            if fg.any():
                tgt[fg] = self.model.box_coder.encode(gt[e.gt_index[sel][fg]], win[fg])
            target = dataset.targets[e.index]
            try:
                if self.finetune:  # one random scale per image, trunk runs with gradients
                    image = dataset[e.index][0]
                    s = scales[self.rng.randrange(len(scales))]
                    img = np.ascontiguousarray(image[:, ::-1]) if flip else image
                    x, fx, fy = self.model.prepare(img, s)
                    new_inputs = [(x, fx, fy)]
                    idx = torch.full((len(sel),), len(inputs), dtype=torch.long)
                else:  # each window at its own random scale, maps from the disk cache
                    choice = torch.tensor([self.rng.randrange(len(scales)) for _ in range(len(sel))])
                    idx = torch.empty(len(sel), dtype=torch.long)
                    new_inputs = []
                    for c in choice.unique().tolist():
                        fm = self.features.get(target.path, lambda i=e.index: dataset[i][0], scales[c], flip)
                        fm.features = fm.features.to(self.device)
                        new_inputs.append(fm)
                        idx[choice == c] = len(inputs) + len(new_inputs) - 1
            except SppDetError as exc:  # e.g. an image that became unreadable: skip it, go on
                self.skip_image(target.path, str(exc))
                continue
            inputs += new_inputs
            index.append(idx)
            boxes.append(win)
            labels.append(lab)
            targets.append(tgt)
        if not boxes:
            return None  # every image of this draw was skipped: the caller draws again
        return (inputs, torch.cat(boxes), torch.cat(index), torch.cat(labels).to(self.device),
                torch.cat(targets).to(self.device))

    def next_batch(self, dataset: DetectionDataset, sampler: "WindowSampler"):
        for _ in range(100):
            batch = self.batch(dataset, sampler.sample())
            if batch is not None:
                return batch
        raise SppDetError(f"dataset '{dataset.name}': 100 draws in a row found only skipped images "
                          f"({len(self.skipped)} skipped)")

    # ---- checkpoints ----------------------------------------------------------------------
    def payload(self, rng_states: list | None = None) -> dict:
        """What a checkpoint holds. ``rng_states``: every rank's random state (from
        :meth:`gather_rng_states`) for a resumable last.pt; None for weights only."""
        p = {"model": self.model.state_dict(), "classes": list(self.classes),
             "model_cfg": OmegaConf.to_container(self.cfg.model, resolve=True),
             "proposals_cfg": OmegaConf.to_container(self.cfg.proposals, resolve=True),
             "config": OmegaConf.to_container(self.cfg, resolve=True),
             "trunk": self.model.trunk.name,
             "normalization": {"mean": self.model.trunk.mean.flatten().tolist(),
                               "std": self.model.trunk.std.flatten().tolist()},
             "train_images": self.train_images,
             "iteration": self.iteration, "best": self.best, "history": self.history}
        if rng_states is not None:
            p.update({"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                      "rng": rng_states})
        return p

    def gather_rng_states(self) -> list[dict]:
        """Collective: every rank's python, torch (and CUDA) random state, in rank order.
        Each rank resumes its own stream; restoring rank 0's on every rank would make all
        ranks draw the same batches."""
        version, state, gauss = self.rng.getstate()
        mine = {"python": [version, list(state), gauss], "torch": torch.get_rng_state()}
        if self.device.type == "cuda":
            mine["cuda"] = torch.cuda.get_rng_state(self.device)
        return [s for part in gather_lists([mine], self.world) for s in part]

    def resume(self, path: Path) -> None:
        ckpt = load_checkpoint(path)
        if list(ckpt["classes"]) != list(self.classes):
            raise SppDetError(f"{path}: checkpoint classes {ckpt['classes']} differ from {self.classes}")
        if "optimizer" not in ckpt:
            raise SppDetError(f"{path}: holds weights only (no optimizer state): cannot resume from it")
        states = ckpt["rng"]
        if len(states) != self.world:
            raise SppDetError(f"{path}: written by {len(states)} process(es), resumed with {self.world}: "
                              f"resume with the same number of processes")
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        mine = states[self.rank]
        version, state, gauss = mine["python"]
        self.rng.setstate((version, tuple(state), gauss))
        torch.set_rng_state(mine["torch"])
        if "cuda" in mine and self.device.type == "cuda":
            torch.cuda.set_rng_state(mine["cuda"], self.device)
        self.iteration, self.best, self.history = ckpt["iteration"], ckpt["best"], list(ckpt["history"])
        log.info("resumed from %s at iteration %d", path, self.iteration)

    # ---- validation -----------------------------------------------------------------------
    @torch.no_grad()
    def validate(self, val_entries: list[ImageWindows]) -> dict:
        """Loss on a fixed, seeded set of validation windows; mAP on the first
        ``val_map_images`` validation images (0: skip)."""
        self.model.eval()
        state = self.rng.getstate()
        self.rng.seed(12345)  # the same validation batches every time, training order untouched
        sampler = WindowSampler(val_entries, self.cfg.train.batch_windows, self.cfg.train.images_per_batch,
                                self.cfg.train.fg_fraction, self.rng)
        losses = []
        for _ in range(int(self.cfg.train.val_batches)):
            inputs, boxes, index, labels, targets = self.next_batch(self.val_set, sampler)
            cls, box = detection_loss(*self.model(inputs, boxes, index), labels, targets)
            losses.append(float(cls + box))
        self.rng.setstate(state)
        out = {"iteration": self.iteration, "val_loss": float(np.mean(losses))}
        n = int(self.cfg.train.val_map_images)
        if n > 0:
            sub = self.val_set.take([0, n])
            dets, _, failures = detect_dataset(self.model, sub, self.store, self.ss, progress=False)
            if failures:
                log.warning("validation: %d image(s) failed, first: %s", len(failures), failures[0])
            out["val_mAP"] = evaluate(sub, dets, self.cfg.dataset.metric)[0]["mAP"]
        self.model.train()
        return out

    # ---- the loop -------------------------------------------------------------------------
    def fit(self) -> SPPNet:
        cfg, tc = self.cfg, self.cfg.train
        ckpt_dir = self.out_dir / "checkpoints"
        if cfg.resume:
            path = ckpt_dir / "last.pt" if cfg.resume is True else Path(cfg.resume)
            self.resume(path)
        entries = self.prepare_windows(self.train_set)
        val_entries = self.prepare_windows(self.val_set) if self.val_set is not None else None
        sampler = WindowSampler(entries, tc.batch_windows, tc.images_per_batch, tc.fg_fraction, self.rng)
        writer = self._tensorboard()
        net = self.ddp or self.model
        self.model.train()
        max_iter = int(cfg.solver.max_iter)
        bar = tqdm(total=max_iter, initial=self.iteration, desc="train", unit="it",
                   disable=self.rank != 0, file=sys.stderr)
        t0, smooth = time.perf_counter(), None
        while self.iteration < max_iter:
            inputs, boxes, index, labels, targets = self.next_batch(self.train_set, sampler)
            cls, box = detection_loss(*net(inputs, boxes, index), labels, targets)
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
                rec = {"iteration": self.iteration, "loss": loss.item(), "loss_cls": cls.item(),
                       "loss_box": box.item(), "lr": self.scheduler.get_last_lr()[0],
                       "seconds": time.perf_counter() - t0}
                log.info("it %d loss %.4f (cls %.4f box %.4f) lr %.2e", self.iteration, rec["loss"], rec["loss_cls"],
                         rec["loss_box"], rec["lr"])
                self.history.append(rec)
                if writer:
                    for k in ("loss", "loss_cls", "loss_box", "lr"):
                        writer.add_scalar(f"train/{k}", rec[k], self.iteration)
            if val_entries and (self.iteration % tc.val_every == 0 or self.iteration == max_iter):
                v = self.validate(val_entries)
                self.history.append(v)
                log.info("validation at %d: %s", self.iteration, v)
                if writer:
                    for k, val in v.items():
                        writer.add_scalar(f"val/{k}", val, self.iteration)
                score = v.get("val_mAP", -v["val_loss"])
                if score > self.best and self.rank == 0:
                    self.best = score
                    save_checkpoint(ckpt_dir / "best.pt", self.payload())
            if self.iteration % tc.checkpoint_every == 0 or self.iteration == max_iter:
                states = self.gather_rng_states()  # every rank takes part
                if self.rank == 0:
                    save_checkpoint(ckpt_dir / "last.pt", self.payload(states))
        bar.close()
        if writer:
            writer.close()
        if self.rank == 0 and not (ckpt_dir / "best.pt").exists():
            save_checkpoint(ckpt_dir / "best.pt", self.payload())
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
    if test_set is None:
        return None
    # the README tells users to use best.pt: report those weights, named as such
    best = load_checkpoint(out_dir / "checkpoints" / "best.pt")
    model = trainer.model
    model.load_state_dict(best["model"])
    weights = f"best.pt, iteration {best['iteration']}"
    store, ss = trainer.store, trainer.ss
    error = None
    if trainer.rank == 0:
        try:
            compute_missing(store, [t.path for t in test_set.targets], ss, workers=cfg.get("workers"))
        except Exception as exc:
            error = exc
    raise_if_any_failed(error, trainer.world)
    dets, timing, failures = detect_dataset(model, test_set, store, ss, rank=trainer.rank, world=trainer.world)
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


__all__ = ["ImageWindows", "Trainer", "WindowSampler", "build_solver", "detection_loss", "label_windows",
           "split_train_val", "train_job"]
