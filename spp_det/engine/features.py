"""Disk cache of frozen-trunk feature maps (the released code's conv5 cache).

One file per (trunk weights, image content, resize rule, flip): float16 (C, H', W') plus
the resize factors, written atomically. Keyed by what determines the map and nothing
else: a digest of the trunk's weights and normalisation (another trunk or checkpoint
never reads stale maps), the digest of the image file's bytes (two data sets whose ids
overlap, or a regenerated set, never share a map), the scale and the long-side cap.
"""
from __future__ import annotations

import hashlib
import os
from collections import OrderedDict
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..data import image_digest
from ..models import FeatureMap, SPPNet


def trunk_digest(model: SPPNet) -> str:
    """12 hex digits identifying the trunk (name, normalisation and every weight)."""
    h = hashlib.sha1(model.trunk.name.encode())
    for t in (model.trunk.mean, model.trunk.std, *model.trunk.state_dict().values()):
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:12]


class FeatureCache:
    """get(image_path, load_image, scale, flip) -> FeatureMap, computed with the model's
    trunk on a miss and stored; the image is only decoded on a miss. Recently used maps also stay
    in memory (LRU, ``memory_mb``), so a small data set is read from disk once.
    ``computed`` counts trunk runs, ``loaded`` disk reads (tests use them)."""

    def __init__(self, root: str | Path, model: SPPNet, dtype: torch.dtype = torch.float16,
                 memory_mb: float = 1024) -> None:
        self.dir = Path(root) / f"{model.trunk.name}-{trunk_digest(model)}"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.model = model
        self.dtype = dtype
        self.computed = 0
        self.loaded = 0
        self.memory_bytes = int(memory_mb * 2 ** 20)
        self._memory: OrderedDict[str, tuple[torch.Tensor, float, float]] = OrderedDict()
        self._held = 0

    def _remember(self, name: str, feats: torch.Tensor, fx: float, fy: float) -> None:
        self._memory[name] = (feats, fx, fy)
        self._held += feats.numel() * feats.element_size()
        while self._held > self.memory_bytes and self._memory:
            old = self._memory.popitem(last=False)[1][0]
            self._held -= old.numel() * old.element_size()

    def path(self, image_path: str | Path, scale: int, flip: bool) -> Path:
        key = image_digest(image_path)
        return self.dir / key[:2] / f"{key}_s{scale}_m{self.model.max_size}{'_f' if flip else ''}.pt"

    @torch.no_grad()
    def get(self, image_path: str | Path, load_image: Callable[[], np.ndarray], scale: int,
            flip: bool) -> FeatureMap:
        """image_path: the image's file (its content is the key); load_image() -> its
        pixels, (H, W, 3) uint8 RGB, NOT flipped (the flip is applied here)."""
        path = self.path(image_path, scale, flip)
        if path.name in self._memory:
            self._memory.move_to_end(path.name)
            feats, fx, fy = self._memory[path.name]
            return FeatureMap(feats.float(), fx, fy)
        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
            self.loaded += 1
            self._remember(path.name, data["features"], data["fx"], data["fy"])
            return FeatureMap(data["features"].float(), data["fx"], data["fy"])
        except FileNotFoundError:
            pass
        except Exception:  # a damaged file (killed writer, disk error): recompute it
            path.unlink(missing_ok=True)
        image = load_image()
        img = np.ascontiguousarray(image[:, ::-1]) if flip else image
        was_training = self.model.trunk.training
        self.model.trunk.eval()
        fm = self.model.compute_features(img, (scale,))[0]
        self.model.trunk.train(was_training)
        self.computed += 1
        path.parent.mkdir(exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        torch.save({"features": fm.features.to(self.dtype).cpu(), "fx": fm.fx, "fy": fm.fy}, tmp)
        os.replace(tmp, path)
        stored = fm.features.to(self.dtype).cpu()
        self._remember(path.name, stored, fm.fx, fm.fy)
        return FeatureMap(stored.float(), fm.fx, fm.fy)
