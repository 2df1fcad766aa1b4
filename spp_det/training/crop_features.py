"""R-CNN mode trained (``train.rcnn=true``): the baseline's heads learn on warped-crop
features, so that the paper's accuracy comparison (SPP-net against R-CNN, same trunk,
same schedule) compares two trained detectors.

With the trunk frozen, a window's R-CNN feature (its crop warped to 224 x 224 with 16 px
of context, through the trunk, the pyramid over the whole crop map: ``RCNN.pooled``) never
changes, so it is computed once, as the SPP regime caches conv maps. One trunk pass per
window is R-CNN's whole cost, so each image keeps a fixed, seeded subset of its windows:
every foreground window and ``bg_per_image`` background ones (R-CNN's fine-tuning drew
from all of them); the rest are marked neither (label -1) and never drawn. Crops are not
flipped (R-CNN fine-tuned without flips). The features live in memory (float16).
"""
from __future__ import annotations

import random
import sys

import torch
from tqdm import tqdm

from ..data import DetectionDataset
from ..models import RCNN, SPPNet
from .sampling import ImageWindows


def keep_rcnn_windows(entries: list[ImageWindows], bg_per_image: int, seed: int) -> list[ImageWindows]:
    """Each image's foreground windows and a seeded sample of ``bg_per_image`` background
    ones; the other windows' labels become -1 (in place). Returns the entries."""
    for e in entries:
        bg = e.bg.tolist()
        drop = sorted(set(bg) - set(random.Random(f"spp_det/rcnn/{seed}/{e.index}").sample(bg, min(len(bg), bg_per_image))))
        e.labels[torch.tensor(drop, dtype=torch.long)] = -1
    return entries


@torch.no_grad()
def crop_features(model: SPPNet, dataset: DetectionDataset, entries: list[ImageWindows],
                  batch_size: int = 64, progress: bool = True) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """Per image index: (position (N,) of each window's row, -1 for windows never drawn;
    vectors (M, D) float16) of the windows labelled foreground or background."""
    was_training = model.training
    rcnn = RCNN(model, batch_size=batch_size).eval()
    out = {}
    try:
        for e in tqdm(entries, desc="R-CNN crop features", unit="img", disable=not progress, file=sys.stderr):
            used = (e.labels >= 0).nonzero().squeeze(1)
            image = dataset[e.index][0]
            parts = [rcnn.pooled(rcnn.warp(image, e.windows[used[s:s + batch_size]])).to(torch.float16).cpu()
                     for s in range(0, len(used), batch_size)]
            position = torch.full((len(e.windows),), -1, dtype=torch.long)
            position[used] = torch.arange(len(used))
            width = model.spp.output_size(model.trunk.out_channels)
            out[e.index] = (position, torch.cat(parts) if parts else torch.zeros((0, width), dtype=torch.float16))
    finally:
        model.train(was_training)
    return out
