"""What training reads: labelled windows per image, the regime's batch builder, and the
check that a frozen trunk has learned weights to compute features with.

Functions rather than Trainer methods so that the loop in ``trainer.py`` stays short;
``skip(path, reason)`` is how an image that cannot be used is named and left out.
"""
from __future__ import annotations

from typing import Callable

import torch
from omegaconf import DictConfig

from ..data import DetectionDataset
from ..distributed import on_rank0
from ..errors import SppDetError
from ..inference.conv_maps import FeatureCache
from ..models import SPPNet
from ..proposals import ProposalStore, SelectiveSearchConfig, compute_missing
from .batches import CropBatches, EndToEndBatches, FrozenBatches
from .crop_features import crop_features, keep_rcnn_windows
from .sampling import ImageWindows, label_windows


def check_frozen_trunk(cfg: DictConfig) -> None:
    """A frozen trunk must bring learned weights: frozen random conv features train
    without complaint and give a weak detector nobody asked for. Its maps come from the
    cache, which holds upright images only (no ``vflip``), and none of its layers trains
    (no ``trainable_layers``)."""
    t, tc = cfg.model.trunk, cfg.train
    if tc.get("rcnn") and (tc.finetune_conv or tc.flip or tc.get("classifier", "softmax") != "softmax"
                           or tc.get("bbox_reg", "learned") != "learned"):
        raise SppDetError("train.rcnn=true (R-CNN mode trained on cached warped-crop features) needs a frozen trunk "
                          "(train.finetune_conv=false), no flips (train.flip=false) and the learned heads "
                          "(train.classifier=softmax train.bbox_reg=learned)")
    if tc.get("vflip") and not tc.finetune_conv:
        raise SppDetError("train.vflip=true needs train.finetune_conv=true: the conv-map cache of a frozen "
                          "trunk holds upright images only")
    if t.get("trainable_layers") is not None and not tc.finetune_conv:
        raise SppDetError(f"model.trunk.trainable_layers={t.trainable_layers} needs train.finetune_conv=true: "
                          f"with a frozen trunk no layer of it trains")
    if tc.finetune_conv or t.get("pretrained") or t.get("weights_path") or tc.get("allow_random_frozen_trunk"):
        return
    raise SppDetError(
        f"model.trunk '{t.name}' has no learned weights (pretrained=false, weights_path=null) but "
        f"train.finetune_conv=false keeps it frozen: the heads would learn on random conv features. "
        f"Give model.trunk.weights_path=<file> (or pretrained=true), train end to end (train=finetune), "
        f"or set train.allow_random_frozen_trunk=true if that is what you want")


def prepare_windows(dataset: DetectionDataset, store: ProposalStore, ss: SelectiveSearchConfig, tc: DictConfig,
                    rank: int, world: int, workers: int | None, skip: Callable[[str, str], None]) -> list[ImageWindows]:
    """Proposals for every image (rank 0 computes the missing ones in parallel), labelled
    against the ground truth (``tc``: the train config node). An image whose proposals
    cannot be had (unreadable file) is skipped."""
    on_rank0(lambda: compute_missing(store, [t.path for t in dataset.targets], ss, workers=workers), rank, world, None)
    entries = []
    for i, t in enumerate(dataset.targets):
        try:
            boxes = store.get(t.path)
        except SppDetError as exc:
            skip(t.path, str(exc))
            continue
        if boxes is None:
            skip(t.path, "not in the imported proposals" if ss is None else
                 "no proposals (its selective search failed, see above)")
            continue
        keep = torch.ones(len(t.boxes), dtype=torch.bool) if tc.use_difficult else ~t.ignore
        gt, gt_labels = t.boxes[keep], t.labels[keep]
        windows = torch.from_numpy(boxes)
        if tc.include_gt:
            windows = torch.cat([gt, windows])
        # left-out ignore boxes (crowds, difficult objects) make the windows on them
        # neither foreground nor background
        ignore = None if tc.use_difficult else t.boxes[t.ignore]
        entries.append(label_windows(i, t.width, windows, gt, gt_labels, tc.fg_iou, tuple(tc.bg_iou),
                                     height=t.height, ignore=ignore, ignore_iou=tc.get("ignore_iou", 0.5)))
    if not entries:
        raise SppDetError(f"dataset '{dataset.name}': no usable training image")
    if tc.get("rcnn"):
        keep_rcnn_windows(entries, int(tc.rcnn_bg_per_image), 0)
    return entries


def build_batches(dataset: DetectionDataset, entries: list[ImageWindows], model: SPPNet, tc: DictConfig,
                  features: FeatureCache | None, workers: int, rank: int, world: int,
                  skip: Callable[[str, str], None]) -> FrozenBatches | EndToEndBatches | CropBatches:
    """The regime's batch builder (a Dataset indexed by plans). The frozen regime
    (``features`` given) first fills the conv-map cache for these images, every training
    scale and flip, on rank 0 while the other ranks wait."""
    scales, coder = model.train_scales, model.box_coder
    if tc.get("rcnn"):
        return CropBatches(dataset, entries, coder, crop_features(model, dataset, entries))
    if features is None:
        return EndToEndBatches(dataset, entries, scales, coder, model.max_size)
    flips = (False, True) if tc.flip else (False,)
    used = dataset.subset(sorted(e.index for e in entries))
    for path, reason in on_rank0(lambda: features.fill(used, scales, flips, workers=workers), rank, world, []):
        skip(path, reason)
    share = features.memory_bytes / 2 ** 20 / max(1, workers)  # each worker holds its own LRU
    return FrozenBatches(dataset, entries, scales, coder, features.reader(share))
