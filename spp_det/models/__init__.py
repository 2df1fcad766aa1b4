"""Models: trunks, window projection + spatial pyramid pooling, heads, SPPNet, R-CNN mode."""
from __future__ import annotations

from typing import Any

from .backbones import TRUNKS, Trunk, build_trunk, receptive_geometry
from .detector import FeatureMap, SPPNet
from .postprocess import postprocess_detections
from .heads import SPPHead
from .rcnn import RCNN
from .resize import resize_image, resized_size
from .spp import SpatialPyramidPooling, project_windows

__all__ = ["TRUNKS", "Trunk", "build_trunk", "receptive_geometry", "FeatureMap", "SPPNet",
           "postprocess_detections", "resize_image", "resized_size", "SPPHead", "RCNN", "SpatialPyramidPooling", "project_windows",
           "build_detector"]


def build_detector(cfg: Any, num_classes: int, pretrained: bool | None = None,
                   train_trunk: bool = False) -> SPPNet:
    """SPPNet from a ``configs/model/*.yaml`` node (plain constructor arguments).
    ``pretrained`` overrides cfg.trunk.pretrained (a checkpoint brings its own weights).
    ``train_trunk`` (the trainer passes ``train.finetune_conv``, the one switch for it)
    leaves the conv weights trainable, with batch-norm statistics fixed or not as
    ``cfg.trunk.freeze_bn`` says; otherwise the trunk is frozen, statistics included."""
    t = cfg.trunk
    trunk = build_trunk(t.name, pretrained=t.pretrained if pretrained is None else pretrained,
                        weights_path=t.get("weights_path"), width=t.get("width", 1.0), norm=t.get("norm", "lrn"),
                        mean=tuple(t.mean) if t.get("mean") else None, std=tuple(t.std) if t.get("std") else None)
    if train_trunk:
        trunk.set_bn_frozen(bool(t.get("freeze_bn", True)))
    else:
        trunk.freeze(freeze_bn=True)
    return SPPNet(trunk, num_classes, levels=tuple(cfg.levels), hidden=cfg.hidden, dropout=cfg.dropout,
                  scales=tuple(cfg.scales), train_scales=tuple(cfg.train_scales), max_size=cfg.max_size,
                  projection=cfg.projection, margin=cfg.margin, scale_target=cfg.scale_target,
                  box_weights=tuple(cfg.box_weights))
