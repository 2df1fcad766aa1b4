"""Disk cache of frozen-trunk feature maps (the released code's conv5 cache).

One file per (trunk weights, image, scale, flip): float16 (C, H', W') plus the resize
factors, written atomically. Keyed by a digest of the trunk's weights, so another trunk
or checkpoint never reads stale maps.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import torch

from ..models import FeatureMap, SPPNet


def trunk_digest(model: SPPNet) -> str:
    """12 hex digits identifying the trunk (name, normalisation and every weight)."""
    h = hashlib.sha1(model.trunk.name.encode())
    for t in (model.trunk.mean, model.trunk.std, *model.trunk.state_dict().values()):
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:12]


class FeatureCache:
    """get(key, image, scale, flip) -> FeatureMap, computed with the model's trunk on a
    miss and stored. ``computed`` counts trunk runs (tests use it)."""

    def __init__(self, root: str | Path, model: SPPNet, dtype: torch.dtype = torch.float16) -> None:
        self.dir = Path(root) / f"{model.trunk.name}-{trunk_digest(model)}"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.model = model
        self.dtype = dtype
        self.computed = 0
        self.loaded = 0

    def path(self, key: str, scale: int, flip: bool) -> Path:
        return self.dir / f"{key}_s{scale}{'_f' if flip else ''}.pt"

    @torch.no_grad()
    def get(self, key: str, image: np.ndarray, scale: int, flip: bool) -> FeatureMap:
        """image: (H, W, 3) uint8 RGB, NOT flipped (the flip is applied here)."""
        path = self.path(key, scale, flip)
        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
            self.loaded += 1
            return FeatureMap(data["features"].float(), data["fx"], data["fy"])
        except FileNotFoundError:
            pass
        except Exception:  # a damaged file (killed writer, disk error): recompute it
            path.unlink(missing_ok=True)
        img = np.ascontiguousarray(image[:, ::-1]) if flip else image
        was_training = self.model.trunk.training
        self.model.trunk.eval()
        fm = self.model.compute_features(img, (scale,))[0]
        self.model.trunk.train(was_training)
        self.computed += 1
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        torch.save({"features": fm.features.to(self.dtype).cpu(), "fx": fm.fx, "fy": fm.fy}, tmp)
        os.replace(tmp, path)
        return FeatureMap(fm.features.to(self.dtype).float(), fm.fx, fm.fy)
