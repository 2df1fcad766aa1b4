"""Training windows: labelling against the ground truth, and drawing mini-batches of them.

A mini-batch is drawn as a *plan* (which images, which of their windows, flips and scales)
from a random stream that is a pure function of (seed, rank, draw number). Loading the
plan (decoding images, reading cached conv maps) then happens wherever convenient, in
DataLoader worker processes included, and a resumed run draws exactly what an
uninterrupted one draws, on every rank, without saving any sampler state but the count.
"""
from __future__ import annotations

import bisect
import itertools
import random
from dataclasses import dataclass

import torch

from ..boxes import box_iou
from ..data import DetectionDataset
from ..errors import SppDetError


@dataclass
class ImageWindows:
    """Training windows of one image. windows: (N, 4) original pixels (proposals, plus the
    ground truth when asked); labels: (N,) class of a foreground window, 0 background,
    -1 neither; gt_index: (N,) the matched ground-truth box; gt: (G, 4); height: the
    image's, needed only to turn its boxes upside down (``vflip``); iou: (N,) each window's
    best IoU with the ground truth (0 without any), which tells hard background apart."""

    index: int
    width: int
    windows: torch.Tensor
    labels: torch.Tensor
    gt_index: torch.Tensor
    gt: torch.Tensor
    height: int | None = None
    iou: torch.Tensor | None = None

    @property
    def fg(self) -> torch.Tensor:
        return (self.labels > 0).nonzero().squeeze(1)

    @property
    def bg(self) -> torch.Tensor:
        return (self.labels == 0).nonzero().squeeze(1)

    def bg_split(self, hard_iou: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Background windows (indices) overlapping an object at IoU >= hard_iou (parts of
        it, loose boxes round it), and the others."""
        if self.iou is None:
            raise ValueError("hard background needs each window's IoU: label the windows with label_windows")
        bg = self.labels == 0
        hard = bg & (self.iou >= hard_iou)
        return hard.nonzero().squeeze(1), (bg & ~hard).nonzero().squeeze(1)


def label_windows(index: int, width: int, windows: torch.Tensor, gt: torch.Tensor, gt_labels: torch.Tensor,
                  fg_iou: float = 0.5, bg_iou: tuple[float, float] = (0.1, 0.5),
                  height: int | None = None, ignore: torch.Tensor | None = None,
                  ignore_iou: float = 0.5) -> ImageWindows:
    """Match windows (N, 4) to ground truth (G, 4): foreground at IoU >= fg_iou (class of
    the best-overlapping box), background at IoU in [bg_iou[0], bg_iou[1]). A window that
    is not foreground but overlaps an ``ignore`` box (M, 4: COCO crowd regions, VOC
    difficult objects) at IoU >= ignore_iou is neither: a crowd of people is not
    background, but it is no one person either."""
    labels = torch.full((len(windows),), -1, dtype=torch.long)
    gt_index = torch.zeros(len(windows), dtype=torch.long)
    iou = torch.zeros(len(windows))
    if len(gt):
        iou, gt_index = box_iou(windows, gt).max(dim=1)
        labels[(iou >= bg_iou[0]) & (iou < bg_iou[1])] = 0
        fg = iou >= fg_iou
        labels[fg] = gt_labels[gt_index[fg]]
    elif bg_iou[0] <= 0:
        labels[:] = 0
    if ignore is not None and len(ignore) and len(windows):
        labels[(labels == 0) & (box_iou(windows, ignore).max(dim=1).values >= ignore_iou)] = -1
    return ImageWindows(index, width, windows, labels, gt_index, gt, height, iou)


@dataclass
class Draw:
    """One image's share of a mini-batch (small: it travels to loader workers). image: the
    data set position (``ImageWindows.index``); windows: (K,) indices into that image's
    windows; flip: mirror the image; scales: (K,) index into the training scales per
    window (one value repeated when the whole image has one scale); vflip: turn the image
    upside down too (an augmentation for data sets whose classes are up-down symmetric)."""

    image: int
    windows: torch.Tensor
    flip: bool
    scales: torch.Tensor
    vflip: bool = False


def draw_rng(seed: int, rank: int, draw: int) -> random.Random:
    """The random stream of one mini-batch draw: a pure function of its arguments."""
    return random.Random(f"spp_det/{seed}/{rank}/{draw}")


class WindowSampler:
    """Draws mini-batches of ``batch_windows`` windows, ``fg_fraction`` of them foreground.

    ``pooled`` (the released code's frozen-trunk fine-tuning): distinct images are drawn
    until their windows hold enough of both kinds (at least ``images_per_batch`` images,
    at most ``MAX_IMAGES_FACTOR`` times that), and exactly round(fg_fraction x
    batch_windows) foreground windows (32 of 128) are drawn from all of theirs together,
    the rest background; fewer only when that many do not exist in those images.
    Otherwise (end to end, Fast R-CNN style: every image is a trunk pass)
    ``images_per_batch`` images with ``batch_windows / images_per_batch`` windows each, up
    to that fraction foreground. Windows are drawn without replacement; a random flip per
    image (``flip``; ``vflip`` for a vertical one too) and a random scale out of
    ``num_scales`` per window (``scale_per_window``, the released code's frozen-trunk
    training) or per image.

    ``hard_bg_fraction`` of the background windows (0 by default: all alike) are drawn
    from those at IoU in [``hard_bg_iou``, fg_iou) with an object, the rest from the
    others: windows on a part of an object or loosely round it are rare among the ~2000
    of an image, and a uniform draw shows the classifier too few of them to learn that
    a part of a dog is not a dog (the box-per-part error of issue 16's pictures)."""

    MAX_IMAGES_FACTOR = 4  # bounds the maps one pooled batch reads

    def __init__(self, entries: list[ImageWindows], batch_windows: int, images_per_batch: int,
                 fg_fraction: float, flip: bool = False, num_scales: int = 1,
                 scale_per_window: bool = True, vflip: bool = False, pooled: bool = False,
                 hard_bg_fraction: float = 0.0, hard_bg_iou: float = 0.1) -> None:
        self.entries = [e for e in entries if len(e.fg) or len(e.bg)]
        if not self.entries:
            raise SppDetError("no training image has a foreground or background window")
        self.per_image = max(1, batch_windows // images_per_batch)
        self.batch_windows = batch_windows
        self.pooled = pooled
        self.images_per_batch = images_per_batch
        self.fg_fraction = fg_fraction
        self.flip = flip
        self.vflip = vflip
        self.num_scales = num_scales
        self.scale_per_window = scale_per_window
        self.hard_bg_fraction = hard_bg_fraction
        self.hard_bg_iou = hard_bg_iou

    @staticmethod
    def _pick(rng: random.Random, pool: torch.Tensor, n: int) -> list[int]:
        items = pool.tolist()
        return rng.sample(items, min(n, len(items)))

    def _pooled_picks(self, rng: random.Random) -> list[tuple[ImageWindows, list[int]]]:
        """(image, its chosen windows) of one pooled batch, images with none left out."""
        n_fg = round(self.fg_fraction * self.batch_windows)
        n_bg = self.batch_windows - n_fg
        order = rng.sample(range(len(self.entries)), min(len(self.entries),
                                                         self.MAX_IMAGES_FACTOR * self.images_per_batch))
        images, fg, bg = [], [], []  # fg/bg: per image its windows of that kind
        for i in order:
            e = self.entries[i]
            images.append(e)
            fg.append(e.fg.tolist())
            bg.append(e.bg.tolist())
            if len(images) >= self.images_per_batch and sum(map(len, fg)) >= n_fg and sum(map(len, bg)) >= n_bg:
                break
        kinds = [(fg, n_fg), (bg, None)]
        if self.hard_bg_fraction > 0:
            hard, easy = zip(*[[t.tolist() for t in e.bg_split(self.hard_bg_iou)] for e in images])
            kinds = [(fg, n_fg), (list(hard), round(self.hard_bg_fraction * n_bg)), (list(easy), None)]
        picks: list[list[int]] = [[] for _ in images]
        taken = 0
        for pools, want in kinds:
            # positions in the concatenation of all images' windows of this kind, so every
            # window of the pool is equally likely whichever image holds it
            ends = list(itertools.accumulate(len(p) for p in pools))
            want = self.batch_windows - taken if want is None else want
            if not ends[-1]:
                continue
            for flat in sorted(rng.sample(range(ends[-1]), min(want, ends[-1]))):
                k = bisect.bisect_right(ends, flat)
                picks[k].append(pools[k][flat - (ends[k - 1] if k else 0)])
                taken += 1
        return [(e, p) for e, p in zip(images, picks) if p]

    def sample(self, rng: random.Random) -> list[Draw]:
        if self.pooled:
            return [self._draw(rng, e, chosen) for e, chosen in self._pooled_picks(rng)]
        out = []
        for _ in range(self.images_per_batch):
            e = self.entries[rng.randrange(len(self.entries))]
            fg = self._pick(rng, e.fg, round(self.fg_fraction * self.per_image))
            if self.hard_bg_fraction > 0:
                hard, easy = e.bg_split(self.hard_bg_iou)
                chosen = fg + self._pick(rng, hard, round(self.hard_bg_fraction * (self.per_image - len(fg))))
                chosen += self._pick(rng, easy, self.per_image - len(chosen))
            else:
                chosen = fg + self._pick(rng, e.bg, self.per_image - len(fg))
            out.append(self._draw(rng, e, chosen))
        return out

    def _draw(self, rng: random.Random, e: ImageWindows, chosen: list[int]) -> Draw:
        """The image's flips and scales for its chosen windows."""
        sel = torch.tensor(chosen, dtype=torch.long)
        flip = self.flip and rng.random() < 0.5
        if self.scale_per_window:
            scales = torch.tensor([rng.randrange(self.num_scales) for _ in range(len(sel))], dtype=torch.long)
        else:
            scales = torch.full((len(sel),), rng.randrange(self.num_scales), dtype=torch.long)
        # drawn last and only when asked for, so the streams without it stay as they were
        vflip = self.vflip and rng.random() < 0.5
        return Draw(e.index, sel, flip, scales, vflip)


def split_train_val(dataset: DetectionDataset, val_fraction: float, seed: int) -> tuple[DetectionDataset, DetectionDataset | None]:
    """A validation split carved from the training data (seeded), never the test split."""
    n_val = int(round(len(dataset) * val_fraction))
    if n_val == 0:
        return dataset, None
    order = list(range(len(dataset)))
    random.Random(seed).shuffle(order)
    return dataset.subset(sorted(order[n_val:])), dataset.subset(sorted(order[:n_val]))
