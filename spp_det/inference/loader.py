"""DataLoader settings shared by training, the conv-map pass and inference.

Worker processes decode images and read cached maps while the main process runs the
network. They are started with ``spawn``: a forked child inherits OpenCV's and OpenMP's
thread pools in whatever state the parent left them and can deadlock on its first cv2
call (seen with selective search). Each worker uses one thread for OpenCV and torch: the
main process keeps the cores for the network.
"""
from __future__ import annotations

import os
from typing import Any

import torch
from torch.utils.data import Dataset

from ..data import DetectionDataset, read_image
from ..errors import SppDetError
from ..proposals import ProposalStore, SelectiveSearchConfig, proposals_for


def keep(item: Any) -> Any:
    """Collate function that returns the item untouched (our items are already batches)."""
    return item


def init_worker(_worker_id: int) -> None:
    import cv2

    cv2.setNumThreads(1)
    torch.set_num_threads(1)


def resolve_workers(value: int | str | None, device: str) -> int:
    """``auto`` -> 0 on the CPU (the network already uses every core there: measured on 2
    cores, a worker process made training 12-20% slower, see benchmarks/train_speed.py),
    up to 4 when a GPU computes and the CPU cores are free to load; a number as given."""
    if value in (None, "auto"):
        if not str(device).startswith("cuda"):
            return 0
        return max(1, min(4, (os.cpu_count() or 2) - 1))
    return int(value)


def inference_workers(value: int | str | None, device: str, missing: int) -> int:
    """Loader processes for eval/detect. ``auto`` with images whose windows are not
    stored yet: one per core, so that selective search (single-threaded, the slow stage
    on a cold cache) runs in parallel and overlaps the network; otherwise as
    :func:`resolve_workers`."""
    if value in (None, "auto") and missing:
        return max(1, os.cpu_count() or 1)
    return resolve_workers(value, device)


class Images(Dataset):
    """Item k: (i, image (H, W, 3) uint8 RGB, windows (N, 4) or None, None) for image
    position i = indices[k], or (i, None, None, "path: reason") when it cannot be read.
    With a ``store`` the windows come from it, or are computed (and stored) on a miss;
    without one only the image is loaded. Loader workers run this."""

    def __init__(self, dataset: DetectionDataset, indices: list[int], store: ProposalStore | None = None,
                 ss: SelectiveSearchConfig | None = None, max_windows: int | None = None) -> None:
        self.dataset, self.indices, self.store, self.ss = dataset, indices, store, ss
        self.max_windows = max_windows

    def __len__(self) -> int:
        return len(self.indices)

    def read(self, i: int):
        """(image, its path) of image position i."""
        image, target = self.dataset[i]
        return image, target.path

    def path(self, i: int):
        return self.dataset.targets[i].path

    def __getitem__(self, k: int):
        i = self.indices[k]
        try:
            image, path = self.read(i)
            boxes = None
            if self.store is not None:
                boxes = torch.from_numpy(proposals_for(self.store, path, image, self.ss))[:self.max_windows]
            return i, image, boxes, None
        except SppDetError as exc:
            return i, None, None, str(exc)
        except Exception as exc:  # an odd file: name it, keep the other images
            return i, None, None, f"{self.path(i)}: cannot load ({type(exc).__name__}: {exc})"


class Files(Images):
    """:class:`Images` over a list of image files (scripts/detect.py's input)."""

    def __init__(self, paths: list, store: ProposalStore | None = None, ss: SelectiveSearchConfig | None = None,
                 max_windows: int | None = None) -> None:
        super().__init__(None, list(range(len(paths))), store, ss, max_windows)
        self.paths = list(paths)

    def read(self, i: int):
        return read_image(self.paths[i]), self.paths[i]

    def path(self, i: int):
        return self.paths[i]


def loader_kwargs(workers: int, prefetch: int = 2) -> dict:
    """Keyword arguments of ``torch.utils.data.DataLoader`` for ``workers`` processes (0:
    load in the main process, as a plain loop would)."""
    workers = int(workers or 0)
    # A generator of its own: creating a loader iterator draws a seed, and drawing it from
    # the global stream would shift dropout's random numbers (and break exact resume).
    common = {"collate_fn": keep, "generator": torch.Generator().manual_seed(0)}
    if workers == 0:
        return {"num_workers": 0, **common}
    return {"num_workers": workers, "multiprocessing_context": "spawn", "worker_init_fn": init_worker,
            "prefetch_factor": prefetch, **common}
