"""Models: trunks, window projection + spatial pyramid pooling, heads, SPPNet, R-CNN mode."""
from __future__ import annotations

from typing import Any

from ..errors import SppDetError

from .backbones import IMAGENET_FC, TRUNKS, Trunk, build_trunk, imagenet_fc, receptive_geometry
from .detector import SPPNet
from .maps import FeatureMap
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
    ``cfg.trunk.freeze_bn`` says (only the last ``cfg.trunk.trainable_layers`` modules
    when that is set); otherwise the trunk is frozen, statistics included.
    ``cfg.fc_init`` "imagenet" starts fc6/fc7 from the trunk's ImageNet classifier
    (``cfg.fc_weights_path`` or a download; skipped when ``pretrained`` is False)."""
    t = cfg.trunk
    trunk = build_trunk(t.name, pretrained=t.pretrained if pretrained is None else pretrained,
                        weights_path=t.get("weights_path"), width=t.get("width", 1.0), norm=t.get("norm", "lrn"),
                        mean=tuple(t.mean) if t.get("mean") else None, std=tuple(t.std) if t.get("std") else None,
                        cudnn=t.get("cudnn"))
    if train_trunk:
        trunk.set_bn_frozen(bool(t.get("freeze_bn", True)))
        if t.get("trainable_layers") is not None:
            trunk.train_last(int(t.trainable_layers))
    else:
        trunk.freeze(freeze_bn=True)
    net = SPPNet(trunk, num_classes, levels=tuple(cfg.levels), hidden=cfg.hidden, dropout=cfg.dropout,
                 scales=tuple(cfg.scales), train_scales=tuple(cfg.train_scales), max_size=cfg.max_size,
                 projection=cfg.projection, margin=cfg.margin, scale_target=cfg.scale_target,
                 box_weights=tuple(cfg.box_weights))
    # a checkpoint (pretrained=False) brings its own fc weights; otherwise a local file, or
    # the download when the trunk's own weights are downloaded too
    if cfg.get("fc_init", "random") == "imagenet" and pretrained is not False:
        if t.name in IMAGENET_FC and not cfg.get("fc_weights_path") and not t.pretrained:
            raise SppDetError(f"model.fc_init=imagenet with model.trunk.pretrained=false: give the ImageNet "
                              f"{t.name} weights as model.fc_weights_path=<torchvision state dict>, or "
                              f"model.fc_init=random")
        grid, fc = imagenet_fc(t.name, cfg.get("fc_weights_path"))
        if grid not in net.spp.levels:
            raise SppDetError(f"model.fc_init=imagenet: the {t.name} fc6 was trained on a {grid}x{grid} pool5, "
                              f"so model.levels needs a {grid} level (e.g. [{grid}] or [{grid}, 3, 2, 1])")
        i = net.spp.levels.index(grid)
        start = trunk.out_channels * sum(n * n for n in net.spp.levels[:i])
        try:
            net.head.load_fc(fc, start)
        except ValueError as exc:
            raise SppDetError(f"model.fc_init=imagenet: {exc}") from exc
    elif cfg.get("fc_init", "random") not in ("random", "imagenet"):
        raise SppDetError(f"model.fc_init '{cfg.fc_init}': use random or imagenet")
    return net
