"""Models: trunks, window projection + spatial pyramid pooling, heads, SPPNet, R-CNN mode."""
from __future__ import annotations

from typing import Any

from .backbones import TRUNKS, Trunk, build_trunk, receptive_geometry
from .detector import FeatureMap, SPPNet, postprocess_detections
from .heads import SPPHead
from .rcnn import RCNN
from .spp import SpatialPyramidPooling, project_windows

__all__ = ["TRUNKS", "Trunk", "build_trunk", "receptive_geometry", "FeatureMap", "SPPNet",
           "postprocess_detections", "SPPHead", "RCNN", "SpatialPyramidPooling", "project_windows",
           "build_detector"]


def build_detector(cfg: Any, num_classes: int, pretrained: bool | None = None) -> SPPNet:
    """SPPNet from a ``configs/model/*.yaml`` node (plain constructor arguments).
    ``pretrained`` overrides cfg.trunk.pretrained (a checkpoint brings its own weights)."""
    t = cfg.trunk
    trunk = build_trunk(t.name, pretrained=t.pretrained if pretrained is None else pretrained,
                        weights_path=t.get("weights_path"), width=t.get("width", 1.0), norm=t.get("norm", "lrn"),
                        mean=tuple(t.mean) if t.get("mean") else None, std=tuple(t.std) if t.get("std") else None)
    if t.get("freeze", True):
        trunk.freeze(freeze_bn=t.get("freeze_bn", True))
    elif t.get("freeze_bn", False):
        trunk.set_bn_frozen(True)
    return SPPNet(trunk, num_classes, levels=tuple(cfg.levels), hidden=cfg.hidden, dropout=cfg.dropout,
                  scales=tuple(cfg.scales), train_scales=tuple(cfg.train_scales), max_size=cfg.max_size,
                  projection=cfg.projection, margin=cfg.margin, scale_target=cfg.scale_target,
                  box_weights=tuple(cfg.box_weights))
