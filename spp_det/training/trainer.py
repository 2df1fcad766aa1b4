"""The training loop: model, solver, data loader and DDP; the run record, validation and
checkpoints are hooks the loop calls (hooks.py).

Two regimes (DESIGN.md), one switch: ``train.finetune_conv``.
- false (the paper): the trunk is frozen; every conv map of the training images is
  computed once per scale and flip before training (``FeatureCache.fill``) and read back
  by loader workers; windows of many images per mini-batch, each at a random scale;
- true: end to end through SPP into the trunk, few images per batch, one random scale per
  image (Fast R-CNN style); workers decode and resize the images.
"""
from __future__ import annotations

import logging
import sys
from pathlib import Path

import torch
from omegaconf import DictConfig
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from ..data import DetectionDataset, build_dataset
from ..distributed import any_rank, init_distributed
from ..errors import SppDetError
from ..inference.conv_maps import FeatureCache
from ..inference.loader import loader_kwargs, resolve_workers
from ..models import SPPNet, build_detector
from ..models.checkpoint import check_fits, load_checkpoint, load_weights
from ..proposals import build_proposals
from .batches import Batch, EndToEndBatches, FrozenBatches, PlanStream
from .hooks import Checkpointer, Progress, RunLog, Validator, report_skipped
from .loss import detection_loss
from .sampling import ImageWindows, WindowSampler, draw_rng, split_train_val
from .solver import build_solver, param_groups
from .training_data import build_batches, check_frozen_trunk, prepare_windows

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
        if not full.annotated:
            raise SppDetError(f"dataset '{cfg.dataset.name}': the train split has no annotations to train on")
        self.train_set, self.val_set = split_train_val(full, tc.val_fraction, cfg.seed)
        self.classes = full.classes
        self.train_images = sorted(full.digests())  # checked against test splits, here and in eval
        self.model: SPPNet = build_detector(cfg.model, len(self.classes), train_trunk=self.finetune).to(self.device)
        if tc.get("init_weights"):  # the checkpoints record every image their weights saw
            self.train_images = sorted(set(self.train_images) | set(self.init_weights(tc.init_weights)))
        self.store, self.ss = build_proposals(cfg.proposals)
        if self.ss is None:  # imported proposals: checkpoints name the file they came from by its digest
            cfg.proposals.sha1 = self.store.settings["sha1"]
        self.features = None if self.finetune else FeatureCache(tc.feature_cache, self.model,
                                                                memory_mb=tc.get("feature_memory_mb", 1024))
        groups = param_groups(self.model.named_parameters(), cfg.solver.lr, cfg.solver.weight_decay,
                              tc.get("bias_lr_mult", 1.0), tc.get("bias_decay_mult", 1.0),
                              cfg.solver.get("trunk_lr_mult", 1.0))
        self.optimizer, self.scheduler = build_solver(groups, cfg.solver)
        self.ddp = (DistributedDataParallel(self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
                    if torch.distributed.is_initialized() else None)
        # The model above was initialised from the same seed on every rank; from here each
        # rank has its own torch stream (dropout), saved and restored per rank. Batches come
        # from draw_rng(seed, rank, draw): resuming needs only the draw count.
        if self.rank > 0:
            torch.manual_seed(cfg.seed * 1000 + self.rank)
        self.skipped: dict[str, str] = {}  # image path -> why it was left out of training
        self.progress = Progress()
        self.checkpoints = Checkpointer(out_dir / "checkpoints", self.model, self.optimizer, self.scheduler, cfg,
                                        self.classes, self.train_images, self.progress, self.rank, self.world,
                                        self.device)

    def init_weights(self, path: str) -> list[str]:
        """Start from another run's weights (``train.init_weights``): e.g. fc6/fc7 and the
        heads trained on the frozen trunk's cached maps, then the trunk's last layers
        fine-tuned together with them (Fast R-CNN's stage that tunes conv layers, started
        from heads that already fit). Returns the images those weights were trained on."""
        ckpt = load_checkpoint(path)
        check_fits(ckpt, path, "train.init_weights: this run has", classes=list(self.classes),
                   trunk=self.model.trunk.name)
        try:
            load_weights(self.model, ckpt["model"])
        except RuntimeError as exc:  # another fc width, pyramid or number of classes
            raise SppDetError(f"{path}: train.init_weights does not fit this run's model: {exc}") from exc
        if self.rank == 0:
            log.info("weights from %s (iteration %s)", path, ckpt.get("iteration"))
        return list(ckpt.get("train_images", []))

    # ---- data (the work itself lives in training_data.py) --------------------------------
    def prepare_windows(self, dataset: DetectionDataset) -> list[ImageWindows]:
        return prepare_windows(dataset, self.store, self.ss, self.cfg.train, self.rank, self.world,
                               self.cfg.get("workers"), self.skip_image)

    def mark_learned_classes(self, entries: list[ImageWindows]) -> None:
        """The softmax never sees a class without foreground windows: it is marked
        unlearned in the head (scores 0 at inference, never outscoring a learned class) and
        named once in the log."""
        seen = torch.zeros(len(self.classes) + 1, dtype=torch.bool)
        for e in entries:
            seen[e.labels[e.labels > 0]] = True
        self.model.head.learned.copy_(seen[1:])
        missing = [c for c, ok in zip(self.classes, seen[1:].tolist()) if not ok]
        if missing and self.rank == 0:
            log.warning("no training window of class(es) %s: never detected", ", ".join(missing))

    def skip_image(self, path, reason: str) -> None:
        """Leave one image out of training, named once in the log (counted at the end)."""
        if str(path) not in self.skipped:
            self.skipped[str(path)] = reason
            log.warning("training without %s: %s", path, reason)

    def sampler(self, entries: list[ImageWindows]) -> WindowSampler:
        tc = self.cfg.train
        return WindowSampler(entries, tc.batch_windows, tc.images_per_batch, tc.fg_fraction, flip=bool(tc.flip),
                             num_scales=len(self.model.train_scales), scale_per_window=not self.finetune,
                             vflip=bool(tc.get("vflip")), pooled=bool(tc.get("pooled_batches", False)),
                             hard_bg_fraction=float(tc.get("hard_bg_fraction", 0.0)),
                             hard_bg_iou=float(tc.get("hard_bg_iou", 0.1)))

    def batches(self, dataset: DetectionDataset, entries: list[ImageWindows]) -> FrozenBatches | EndToEndBatches:
        return build_batches(dataset, entries, self.model, self.cfg.train, self.features, self.loader_workers,
                             self.rank, self.world, self.skip_image)

    def losses(self, net, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        logits, deltas = net(*batch.model_inputs(self.model, self.device))
        cls, box = detection_loss(logits, deltas, batch.labels.to(self.device), batch.targets.to(self.device))
        return cls, box * float(self.cfg.train.get("box_loss_weight", 1.0))

    def note_skipped(self, batch: Batch) -> None:
        for path, reason in batch.skipped:
            self.skip_image(path, reason)

    # ---- the loop -------------------------------------------------------------------------
    def fit(self) -> SPPNet:
        """Train to ``solver.max_iter``: one step per mini-batch; the run record, validation
        and checkpoints at their intervals (hooks.py)."""
        tc, p, max_iter = self.cfg.train, self.progress, int(self.cfg.solver.max_iter)
        checkpoints = self.checkpoints
        checkpoints.start()
        stream, validate = self._train_stream(), self._validator()
        run_log = RunLog(self.out_dir, self.rank, p, max_iter)  # its clock starts after set-up
        net = self.ddp or self.model
        self.model.train()

        def due(every) -> bool:
            return p.iteration % int(every) == 0 or p.iteration == max_iter

        bar = tqdm(total=max_iter, initial=p.iteration, desc="train", unit="it", disable=self.rank != 0, file=sys.stderr)
        while p.iteration < max_iter:
            batch = next(stream)
            p.draws += 1
            self.note_skipped(batch)
            if not len(batch):  # every image of this draw was left out: draw again
                continue
            cls, box = self.step(net, batch)
            p.iteration += 1
            bar.update(1)
            if due(tc.log_every):
                run_log.step(cls, box, self.scheduler.get_last_lr()[0])
                bar.set_postfix(loss=f"{float(cls + box):.3f}", lr=f"{self.scheduler.get_last_lr()[0]:.1e}")
            if validate and due(tc.val_every):
                v = validate(p.iteration)
                run_log.record(v, "val")
                checkpoints.offer_best(v.get("val_mAP", -v["val_loss"]))
            if due(tc.checkpoint_every):
                checkpoints.save_last()  # collective
        del stream  # stops the loader's workers
        bar.close()
        run_log.close()
        checkpoints.finish()
        report_skipped(self.skipped, self.rank)
        return self.model

    def step(self, net, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """One SGD step on one mini-batch; returns its (classification, box) losses."""
        cls, box = self.losses(net, batch)
        loss = cls + box
        # decided by all ranks together: a rank that stopped alone would leave the others
        # waiting in the gradient all-reduce
        if any_rank(not bool(torch.isfinite(loss)), self.world, self.device):
            raise SppDetError(f"loss became non-finite at iteration {self.progress.iteration} (this rank: "
                              f"{float(loss)}): lower solver.lr")
        self.optimizer.zero_grad(set_to_none=True)
        with self.model.trunk.cudnn_context():  # the trunk's backward too, when it trains
            loss.backward()
        self.optimizer.step()
        self.scheduler.step()
        return cls.detach(), box.detach()

    def _train_stream(self):
        """Mini-batches of the training images, drawn from ``draw_rng(seed, rank, draw)``
        from the current draw on (a resumed run continues the same sequence)."""
        entries = self.prepare_windows(self.train_set)
        self.mark_learned_classes(entries)
        sampler = self.sampler(entries)
        self.train_batches = self.batches(self.train_set, sampler.entries)
        seed = int(self.cfg.seed)
        plans = PlanStream(lambda d: sampler.sample(draw_rng(seed, self.rank, d)), self.progress.draws)
        loader = DataLoader(self.train_batches, sampler=plans, batch_size=None, **loader_kwargs(self.loader_workers))
        return iter(loader)

    def _validator(self) -> Validator | None:
        if self.val_set is None:
            return None
        sampler = self.sampler(self.prepare_windows(self.val_set))
        return Validator(self.model, self.val_set, self.batches(self.val_set, sampler.entries), sampler, self.losses,
                         self.note_skipped, self.store, self.ss, self.cfg.train, self.cfg.dataset.metric)

    def resume(self, path: Path) -> None:
        """Continue from a resumable last.pt (weights, solver, random state, counters)."""
        self.checkpoints.resume(path)

    # the run's counters, read by train.py's job and the tests
    @property
    def iteration(self) -> int:
        return self.progress.iteration

    @property
    def history(self) -> list[dict]:
        return self.progress.history
