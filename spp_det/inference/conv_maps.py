"""Disk cache of frozen-trunk feature maps (the released code's conv5 cache).

One file per (trunk weights, image content, resize rule, flip): float16 (C, H', W') plus
the resize factors, written atomically. Keyed by what determines the map and nothing
else: a digest of the trunk's weights and normalisation (another trunk or checkpoint
never reads stale maps), the digest of the image file's bytes (two data sets whose ids
overlap, or a regenerated set, never share a map), the scale and the long-side cap.

:class:`FeatureReader` only reads (picklable: what DataLoader workers get);
:class:`FeatureCache` also computes, one map on a miss (``get``) or every missing map of
a data set before training (``fill``), after checking that they fit on the disk.
"""
from __future__ import annotations

import hashlib
import logging
import pickle
import shutil
import sys
from collections import OrderedDict
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from ..data import DetectionDataset, image_digest
from ..errors import SppDetError
from ..files import save_torch_atomic
from ..models import FeatureMap, SPPNet, resized_size
from .loader import Images, loader_kwargs

log = logging.getLogger(__name__)


def trunk_digest(model: SPPNet) -> str:
    """12 hex digits identifying the trunk (name, normalisation and every weight)."""
    h = hashlib.sha1(model.trunk.name.encode())
    for t in (model.trunk.mean, model.trunk.std, *model.trunk.state_dict().values()):
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:12]


class FeatureReader:
    """Reads cached maps: ``load(image_path, scale, flip)`` -> FeatureMap (features in the
    cache's dtype, float16: half the bytes to move; the pooling computes in float32) or
    None (missing or damaged). Recently used maps stay in memory (LRU, ``memory_mb``); ``loaded`` counts
    disk reads."""

    def __init__(self, directory: Path, max_size: int, memory_mb: float = 1024) -> None:
        self.dir = Path(directory)
        self.max_size = int(max_size)
        self.loaded = 0
        self.memory_bytes = int(memory_mb * 2 ** 20)
        self._memory: OrderedDict[str, FeatureMap] = OrderedDict()
        self._held = 0

    def _remember(self, name: str, fm: FeatureMap) -> None:
        self._memory[name] = fm
        self._held += fm.features.numel() * fm.features.element_size()
        while self._held > self.memory_bytes and self._memory:
            old = self._memory.popitem(last=False)[1].features
            self._held -= old.numel() * old.element_size()

    def path(self, image_path: str | Path, scale: int, flip: bool) -> Path:
        key = image_digest(image_path)
        # "v2": maps carry their image's size since the released projection needs it
        return self.dir / key[:2] / f"{key}_s{scale}_m{self.max_size}{'_f' if flip else ''}.v2.pt"

    def load(self, image_path: str | Path, scale: int, flip: bool) -> FeatureMap | None:
        path = self.path(image_path, scale, flip)
        if path.name in self._memory:
            self._memory.move_to_end(path.name)
            return self._memory[path.name]
        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
            fm = FeatureMap(data["features"], data["fx"], data["fy"], tuple(data["size"]))
        except FileNotFoundError:
            return None
        except OSError as exc:  # too many open files, a flaky network disk, no permission: the
            # file may be fine, so it is kept and the run stops naming it
            raise SppDetError(f"{path}: cannot read the cached conv map ({exc.strerror or exc})") from exc
        except (RuntimeError, EOFError, KeyError, TypeError, ValueError, pickle.UnpicklingError) as exc:
            # provably damaged (not a torch zip, truncated, wrong content): removed, so the
            # next conv-map pass (FeatureCache.fill, at the start of every frozen-trunk run)
            # recomputes it; on a read-only cache it stays and counts as missing
            log.warning("%s: damaged conv map (%s): %s", path, type(exc).__name__, exc)
            try:
                path.unlink(missing_ok=True)
            except OSError as gone:
                log.warning("%s: cannot remove the damaged map (%s)", path, gone.strerror or gone)
            return None
        self.loaded += 1
        self._remember(path.name, fm)
        return fm

    def get(self, image_path: str | Path, scale: int, flip: bool) -> FeatureMap:
        """Like ``load``, but a missing map is an error naming the image."""
        fm = self.load(image_path, scale, flip)
        if fm is None:
            raise SppDetError(f"{image_path}: conv map (scale {scale}{', flipped' if flip else ''}) missing or "
                              f"damaged in the cache {self.dir} (the next run's conv-map pass recomputes it)")
        return fm


class FeatureCache(FeatureReader):
    """The reader plus the model that computes maps. ``computed`` counts trunk runs."""

    def __init__(self, root: str | Path, model: SPPNet, dtype: torch.dtype = torch.float16,
                 memory_mb: float = 1024) -> None:
        super().__init__(Path(root) / f"{model.trunk.name}-{trunk_digest(model)}", model.max_size, memory_mb)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.model = model
        self.dtype = dtype
        self.computed = 0

    def reader(self, memory_mb: float | None = None) -> FeatureReader:
        """A read-only view for worker processes (no model to pickle)."""
        return FeatureReader(self.dir, self.max_size, self.memory_bytes / 2 ** 20 if memory_mb is None else memory_mb)

    @torch.no_grad()
    def compute(self, image_path: str | Path, image: np.ndarray, scale: int, flip: bool) -> FeatureMap:
        """Run the trunk (eval mode) on image (H, W, 3) uint8 RGB, NOT flipped, and store."""
        img = np.ascontiguousarray(image[:, ::-1]) if flip else image
        was_training = self.model.trunk.training
        self.model.trunk.eval()
        fm = self.model.compute_features(img, (scale,))[0]
        self.model.trunk.train(was_training)
        self.computed += 1
        stored = fm.features.to(self.dtype).cpu()
        path = self.path(image_path, scale, flip)
        save_torch_atomic(path, {"features": stored, "fx": fm.fx, "fy": fm.fy, "size": list(fm.size)})
        fm = FeatureMap(stored, fm.fx, fm.fy, fm.size)
        self._remember(path.name, fm)
        return fm

    def get(self, image_path: str | Path, scale: int, flip: bool,  # type: ignore[override]
            load_image: Callable[[], np.ndarray] | None = None) -> FeatureMap:
        """The cached map, computed on a miss (the image is decoded only then)."""
        fm = self.load(image_path, scale, flip)
        if fm is None:
            if load_image is None:
                return super().get(image_path, scale, flip)
            fm = self.compute(image_path, load_image(), scale, flip)
        return fm

    def map_bytes(self, height: int, width: int, scale: int) -> int:
        """Bytes of one stored map of an image of height x width at ``scale``."""
        h, w = self.model.trunk.output_size(*resized_size(height, width, scale, self.max_size))
        return self.model.trunk.out_channels * h * w * torch.finfo(self.dtype).bits // 8

    def fill(self, dataset: DetectionDataset, scales: tuple[int, ...], flips: tuple[bool, ...],
             workers: int = 0, progress: bool = True) -> list[tuple[str, str]]:
        """Compute every missing map of ``dataset`` at ``scales`` x ``flips`` (the released
        code's feature pass before fine-tuning), images decoded by ``workers`` processes.
        First prints the cache's expected size and the free space on its disk, and refuses
        to start when the missing maps cannot fit. Returns the failures as (path, "path: reason")."""
        todo, total, missing = {}, 0, 0
        for i, t in enumerate(dataset.targets):
            for s in scales:
                size = self.map_bytes(t.height, t.width, s)
                for f in flips:
                    total += size
                    try:
                        present = self.path(t.path, s, f).is_file()
                    except SppDetError:
                        present = False  # unreadable: reported by the pass below
                    if not present:
                        missing += size
                        todo.setdefault(i, []).append((s, f))
        n_maps = len(dataset) * len(scales) * len(flips)
        free = shutil.disk_usage(self.dir).free
        print(f"conv-map cache {self.dir}: {n_maps} maps, about {total / 2 ** 30:.2f} GiB "
              f"({total / max(1, n_maps) / 2 ** 20:.2f} MiB per map), {missing / 2 ** 30:.2f} GiB still to "
              f"compute; {free / 2 ** 30:.1f} GiB free on that disk", file=sys.stderr)
        if missing > free:
            raise SppDetError(f"{self.dir}: the conv-map cache needs {missing / 2 ** 30:.1f} GiB more but the disk "
                              f"has {free / 2 ** 30:.1f} GiB free: set train.feature_cache to a bigger disk, or use "
                              f"fewer model.train_scales")
        failures = []
        if not todo:
            return failures
        images = DataLoader(Images(dataset, sorted(todo)), batch_size=None, **loader_kwargs(workers))
        for i, image, _, error in tqdm(images, total=len(todo), desc="conv maps", unit="img",
                                       disable=not progress, file=sys.stderr):
            t = dataset.targets[i]
            if error is not None:
                failures.append((str(t.path), error))
                continue
            for s, f in todo[i]:
                self.compute(t.path, image, s, f)
        return failures
