"""Fill a ProposalStore: a process pool over the images still missing, resumable."""
from __future__ import annotations

import logging
import multiprocessing as mp
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
from tqdm import tqdm

from ..data.sample import read_image
from ..errors import SppDetError
from .selective_search import SelectiveSearchConfig, selective_search
from .store import ProposalStore

log = logging.getLogger(__name__)


@dataclass
class ComputeStats:
    computed: int = 0
    cached: int = 0
    failed: list[str] = field(default_factory=list)   # "path: reason"
    seconds: float = 0.0                              # search time summed over images

    @property
    def seconds_per_image(self) -> float:
        return self.seconds / max(1, self.computed)


def _init_worker() -> None:
    cv2.setNumThreads(1)  # one OpenCV thread per worker process: the pool is the parallelism


def _work(args: tuple[str, str, Path, dict]) -> tuple[str, int, float, str | None]:
    key, path, store_dir, ss = args
    try:
        t0 = time.perf_counter()
        boxes = selective_search(read_image(path), SelectiveSearchConfig(**ss))
        seconds = time.perf_counter() - t0
    except SppDetError as exc:
        return key, 0, 0.0, str(exc)
    store = ProposalStore.__new__(ProposalStore)  # no mkdir/settings I/O in the worker
    store.dir = store_dir
    store.put(key, boxes)
    return key, len(boxes), seconds, None


def shard_items(items: list, shard: int, num_shards: int) -> list:
    """Every num_shards-th item starting at ``shard`` (interleaved: shards stay balanced
    when image sizes drift along the list)."""
    if not 0 <= shard < num_shards:
        raise SppDetError(f"shard={shard} must be in [0, num_shards={num_shards})")
    return items[shard::num_shards]


def compute_missing(store: ProposalStore, items: list[tuple[str | int, str | Path]],
                    ss: SelectiveSearchConfig, workers: int | None = None,
                    progress: bool = True,
                    on_done: Callable[[str], None] | None = None) -> ComputeStats:
    """Compute proposals for every (key, image path) not yet valid in ``store``.

    Workers write their results atomically; an interrupted call leaves only complete
    files, and the next call picks up the rest. Unreadable images are counted and
    reported in ``stats.failed``, not fatal. ``on_done(key)`` runs after each image.
    """
    stats = ComputeStats()
    todo = []
    for key, path in items:
        if store.has(key):
            stats.cached += 1
        else:
            todo.append((str(key), str(path), store.dir, ss.as_dict()))
    workers = max(1, min(workers or os.cpu_count() or 1, len(todo) or 1))
    bar = tqdm(total=len(todo), desc="selective search", unit="img", disable=not progress or not todo,
               file=sys.stderr)

    def handle(result):
        key, _n, seconds, error = result
        if error:
            stats.failed.append(error)
            log.error("%s", error)
        else:
            stats.computed += 1
            stats.seconds += seconds
        bar.update(1)
        if on_done is not None:
            on_done(key)

    try:
        if workers == 1:
            _init_worker()
            for args in todo:
                handle(_work(args))
        elif todo:
            # spawn, not fork: a forked child inherits OpenCV's/OpenMP's thread pools in
            # whatever state the parent left them and can deadlock on its first cv2 call
            with mp.get_context("spawn").Pool(workers, initializer=_init_worker) as pool:
                for result in pool.imap_unordered(_work, todo, chunksize=1):
                    handle(result)
    finally:
        bar.close()
    return stats


def proposals_for(store: ProposalStore, key: str | int, image: np.ndarray,
                  ss: SelectiveSearchConfig) -> np.ndarray:
    """Boxes from the store, or computed now (and saved) when missing: never a crash for a
    cache miss. image: (H, W, 3) uint8 RGB. Returns (N, 4) float32 xyxy original pixels."""
    boxes = store.get(key)
    if boxes is None:
        boxes = selective_search(image, ss)
        store.put(key, boxes)
    return boxes
