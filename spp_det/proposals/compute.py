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
        return path, 0, 0.0, str(exc)
    except Exception as exc:  # an unexpected failure on one image never loses the others
        return path, 0, 0.0, f"{path}: selective search failed ({type(exc).__name__}: {exc})"
    ProposalStore.put_key(store_dir, key, boxes)
    return path, len(boxes), seconds, None


def shard_items(items: list, shard: int, num_shards: int) -> list:
    """Every num_shards-th item starting at ``shard`` (interleaved: shards stay balanced
    when image sizes drift along the list)."""
    if not 0 <= shard < num_shards:
        raise SppDetError(f"shard={shard} must be in [0, num_shards={num_shards})")
    return items[shard::num_shards]


def estimate_minutes(images: int, ss: SelectiveSearchConfig, workers: int) -> float:
    """Rough wall time of selective search at the "fast" mode's pace: 2.7 s per photo per
    core on 500-pixel VOC photos (measured on an AMD EPYC), growing with the pixels searched
    (other modes run more strategies: longer)."""
    return images * 2.7 * (ss.max_size / 500) ** 2 / max(1, workers) / 60


def compute_missing(store: ProposalStore, paths: list[str | Path],
                    ss: SelectiveSearchConfig | None, workers: int | None = None,
                    progress: bool = True,
                    on_done: Callable[[str], None] | None = None) -> ComputeStats:
    """Compute proposals for every image file not yet valid in ``store``.

    Workers write their results atomically; an interrupted call leaves only complete
    files, and the next call picks up the rest. Unreadable images are counted and
    reported in ``stats.failed`` ("path: reason"), not fatal. ``on_done(path)`` runs
    after each image. Two paths with the same content are searched once. ``ss`` None
    (imported proposals): a missing image is a failure, never searched.
    """
    stats = ComputeStats()
    todo, queued = [], set()
    for path in paths:
        try:
            key = store.key(path)
        except SppDetError as exc:
            stats.failed.append(str(exc))
            continue
        if key in queued or store.get_key(key) is not None:
            stats.cached += 1
        elif ss is None:  # imported proposals: nothing to compute, and nothing substituted
            stats.failed.append(f"{path}: not in the imported proposals ({store.dir})")
        else:
            queued.add(key)
            todo.append((key, str(path), store.dir, ss.as_dict()))
    workers = max(1, min(workers or os.cpu_count() or 1, len(todo) or 1))
    if progress and len(todo) > 50:  # said before a long job starts, not after
        print(f"selective search: {len(todo)} images to search ({stats.cached} cached) in {workers} process(es), "
              f"about {estimate_minutes(len(todo), ss, workers):.0f} min at the fast mode's pace", file=sys.stderr)
    bar = tqdm(total=len(todo), desc="selective search", unit="img", disable=not progress or not todo,
               file=sys.stderr)

    def handle(result):
        path, _n, seconds, error = result
        if error:
            stats.failed.append(error)
            log.error("%s", error)
        else:
            stats.computed += 1
            stats.seconds += seconds
        bar.update(1)
        if on_done is not None:
            on_done(path)

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


def proposals_for(store: ProposalStore, path: str | Path, image: np.ndarray,
                  ss: SelectiveSearchConfig | None) -> np.ndarray:
    """Boxes from the store, or computed now (and saved) when missing: never a crash for a
    cache miss. path: the image file (the key); image: its pixels, (H, W, 3) uint8 RGB.
    Returns (N, 4) float32 xyxy original pixels."""
    boxes = store.get(path)
    if boxes is None:
        if ss is None:
            raise SppDetError(f"{path}: not in the imported proposals ({store.dir})")
        boxes = selective_search(image, ss)
        store.put(path, boxes)
    return boxes
