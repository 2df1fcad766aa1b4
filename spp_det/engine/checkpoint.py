"""Checkpoints: written atomically, self-describing (classes, model config, normalisation),
loadable without the training config."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from ..errors import SppDetError
from ..models import SPPNet, build_detector
from ..models.backbones import load_torch_file

FORMAT = "spp_det/1"


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> None:
    """torch.save through a temp file + rename: a crash never leaves half a checkpoint."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    torch.save({"format": FORMAT, **payload}, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`, with a clear error otherwise."""
    ckpt = load_torch_file(path, "checkpoint")
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise SppDetError(f"{path}: not an spp_det checkpoint (no '{FORMAT}' format tag)")
    return ckpt


def model_from_checkpoint(ckpt: dict[str, Any], device: str | torch.device = "cpu") -> SPPNet:
    """Rebuild the detector a checkpoint describes and load its weights (no download)."""
    cfg = OmegaConf.create(ckpt["model_cfg"])
    model = build_detector(cfg, num_classes=len(ckpt["classes"]), pretrained=False)
    model.load_state_dict(ckpt["model"])
    return model.to(device).eval()
