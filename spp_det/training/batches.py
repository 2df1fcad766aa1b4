"""Mini-batch plans -> tensors, one builder per training regime.

Both are ``torch.utils.data.Dataset``s indexed by a plan (a list of
:class:`~spp_det.training.sampling.Draw`), so a DataLoader's worker processes load the next
batches while the main process trains on this one:

- :class:`FrozenBatches` (the paper's frozen trunk): each window's conv map at its scale,
  read from the conv-map cache;
- :class:`EndToEndBatches` (``finetune_conv``): each image decoded, flipped and resized to
  its scale; the trunk runs on it in the main process, with gradients;
- :class:`CropBatches` (``train.rcnn``, R-CNN mode trained): each window's cached
  warped-crop feature (``crop_features.py``).

An image that cannot be loaded is left out of the batch and reported in
``Batch.skipped``; the trainer names it once and draws again if nothing is left.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import Dataset

from ..boxes import BoxCoder, flip_boxes, vflip_boxes
from ..data import DetectionDataset
from ..errors import SppDetError
from ..inference.conv_maps import FeatureReader
from ..models import FeatureMap, SPPNet, resize_image
from .sampling import Draw, ImageWindows


@dataclass
class Batch:
    """inputs: per map, a FeatureMap (frozen) or (resized (h, w, 3) uint8 RGB array, fx,
    fy, (H, W) original size) (end to end); boxes: (K, 4) original pixels (flipped with their image);
    map_index: (K,) which input; labels: (K,) 0..C; targets: (K, 4) encoded regression
    targets (foreground rows only meaningful); skipped: (path, reason) of images left out."""

    inputs: list
    boxes: torch.Tensor
    map_index: torch.Tensor
    labels: torch.Tensor
    targets: torch.Tensor
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.labels)

    def model_inputs(self, model: SPPNet, device: torch.device) -> tuple[list, torch.Tensor, torch.Tensor]:
        """What ``model(...)`` takes, on ``device``: (inputs, boxes, map_index); resized
        images are normalised (and padded) by the model here, in the main process."""
        inputs = []
        for item in self.inputs:
            if isinstance(item, FeatureMap):
                inputs.append(FeatureMap(item.features.to(device), item.fx, item.fy, item.size))
            elif isinstance(item, torch.Tensor):  # pooled vectors (CropBatches)
                inputs.append(item.to(device).float())
            else:
                resized, fx, fy, size = item
                inputs.append((model.to_input(resized), fx, fy, size))
        return inputs, self.boxes, self.map_index


def draw_targets(entry: ImageWindows, draw: Draw, coder: BoxCoder) -> tuple[torch.Tensor, ...]:
    """(windows (K, 4) flipped with the image, labels (K,), regression targets (K, 4))."""
    win, gt = entry.windows[draw.windows], entry.gt
    if draw.flip:
        win, gt = flip_boxes(win, entry.width), flip_boxes(gt, entry.width)
    if draw.vflip:
        win, gt = vflip_boxes(win, entry.height), vflip_boxes(gt, entry.height)
    labels = entry.labels[draw.windows]
    targets = torch.zeros((len(win), 4))
    fg = labels > 0
    if fg.any():
        targets[fg] = coder.encode(gt[entry.gt_index[draw.windows][fg]], win[fg])
    return win, labels, targets


class _Batches(Dataset):
    """What both regimes share: the images' windows and the assembly of a Batch."""

    def __init__(self, dataset: DetectionDataset, entries: list[ImageWindows], scales: tuple[int, ...],
                 coder: BoxCoder) -> None:
        self.dataset = dataset
        self.entries = {e.index: e for e in entries}
        self.scales = tuple(scales)
        self.coder = coder

    def load(self, draw: Draw) -> tuple[list, torch.Tensor]:
        """The inputs of one draw and each window's index into them."""
        raise NotImplementedError

    def __getitem__(self, plan: list[Draw]) -> Batch:
        inputs, boxes, index, labels, targets, skipped = [], [], [], [], [], []
        for draw in plan:
            try:
                new, idx = self.load(draw)
            except SppDetError as exc:  # e.g. an image that became unreadable: leave it out
                skipped.append((str(self.dataset.targets[draw.image].path), str(exc)))
                continue
            win, lab, tgt = draw_targets(self.entries[draw.image], draw, self.coder)
            index.append(idx + len(inputs))
            inputs += new
            boxes.append(win)
            labels.append(lab)
            targets.append(tgt)
        if not boxes:
            empty = torch.zeros((0, 4))
            return Batch([], empty, torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long), empty, skipped)
        return Batch(inputs, torch.cat(boxes), torch.cat(index), torch.cat(labels), torch.cat(targets), skipped)


class FrozenBatches(_Batches):
    """Each window pooled from the cached conv map of its image at its own scale."""

    def __init__(self, dataset: DetectionDataset, entries: list[ImageWindows], scales: tuple[int, ...],
                 coder: BoxCoder, reader: FeatureReader) -> None:
        super().__init__(dataset, entries, scales, coder)
        self.reader = reader

    def load(self, draw: Draw) -> tuple[list, torch.Tensor]:
        path = self.dataset.targets[draw.image].path
        idx = torch.empty(len(draw.windows), dtype=torch.long)
        maps: list[FeatureMap] = []
        for c in draw.scales.unique().tolist():
            maps.append(self.reader.get(path, self.scales[c], draw.flip))
            idx[draw.scales == c] = len(maps) - 1
        return maps, idx


class EndToEndBatches(_Batches):
    """Each image decoded, flipped and resized to its scale (one per image)."""

    def __init__(self, dataset: DetectionDataset, entries: list[ImageWindows], scales: tuple[int, ...],
                 coder: BoxCoder, max_size: int) -> None:
        super().__init__(dataset, entries, scales, coder)
        self.max_size = max_size

    def load(self, draw: Draw) -> tuple[list, torch.Tensor]:
        image = self.dataset[draw.image][0]
        if draw.flip:
            image = np.ascontiguousarray(image[:, ::-1])
        if draw.vflip:
            image = np.ascontiguousarray(image[::-1])
        resized, fx, fy = resize_image(image, self.scales[int(draw.scales[0])], self.max_size)
        return [(resized, fx, fy, image.shape[:2])], torch.zeros(len(draw.windows), dtype=torch.long)


class PlanStream(torch.utils.data.Sampler):
    """Mini-batch plans for draws start, start + 1, ... (endless): what the DataLoader
    hands its workers, in order. ``make_plan(draw)`` must be a pure function of draw."""

    def __init__(self, make_plan, start: int) -> None:
        self.make_plan = make_plan
        self.start = start

    def __iter__(self):
        draw = self.start
        while True:
            yield self.make_plan(draw)
            draw += 1


class CropBatches(_Batches):
    """Each window's cached R-CNN feature: inputs are (K, D) pooled vectors (see
    ``SPPNet.forward``)."""

    def __init__(self, dataset: DetectionDataset, entries: list[ImageWindows], coder: BoxCoder,
                 features: dict[int, tuple[torch.Tensor, torch.Tensor]]) -> None:
        super().__init__(dataset, entries, (0,), coder)
        self.features = features

    def load(self, draw: Draw) -> tuple[list, torch.Tensor]:
        if draw.flip or draw.vflip:
            raise SppDetError("R-CNN mode training has no flipped crops (set train.flip=false)")
        position, vectors = self.features[draw.image]
        rows = position[draw.windows]
        if (rows < 0).any():
            raise SppDetError(f"{self.dataset.targets[draw.image].path}: a drawn window has no crop feature")
        return [vectors[rows]], torch.zeros(len(rows), dtype=torch.long)
