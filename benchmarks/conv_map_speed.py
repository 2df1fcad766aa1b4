"""Seconds per image of the conv-map pass (the frozen trunk at every training scale, the
image and its mirror), on the CPU or a GPU. On a GPU, cuDNN makes a plan for each new input
shape, and a data set's images come in many shapes (the shapes set: 356 sizes among 360
images), so on a GPU compare ``--cudnn on`` with ``off`` (PyTorch's own CUDA kernels);
``auto`` is the trunk's own choice (``model.trunk.cudnn: null``: off for the Lite trunks).

    python benchmarks/conv_map_speed.py [--device cuda] [--images 12] [--cudnn auto|on|off]

Writes benchmarks/results/conv_map_speed_<device>_cudnn_<choice>.json (or --out).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

from machine import machine_info  # benchmarks/ is the script's own directory
from spp_det.data import read_image
from spp_det.models import build_detector

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--images", type=int, default=12)
    ap.add_argument("--model", default="efficientnet_lite0_shapes", help="a configs/model/<name>.yaml")
    ap.add_argument("--scales", type=int, nargs="+", default=None, help="default: the model's train_scales")
    ap.add_argument("--image-dir", default=str(ROOT / "data" / "shapes"))
    ap.add_argument("--cudnn", choices=["auto", "on", "off"], default="auto")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    cfg = OmegaConf.load(ROOT / "configs" / "model" / f"{args.model}.yaml")
    cfg.trunk.cudnn = {"auto": None, "on": True, "off": False}[args.cudnn]
    scales = tuple(args.scales or cfg.train_scales)
    model = build_detector(cfg, num_classes=20, pretrained=False).to(args.device).eval()
    paths = sorted(Path(args.image_dir).rglob("*.jpg"))[: args.images]
    images = [read_image(p) for p in paths]
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    seconds = []
    with torch.no_grad():
        for image in images:
            t0 = time.perf_counter()
            for flip in (False, True):
                img = np.ascontiguousarray(image[:, ::-1]) if flip else image
                for fm in model.compute_features(img, scales):
                    fm.features.to(torch.float16).cpu()  # as the cache stores it
            sync()
            seconds.append(time.perf_counter() - t0)
    half = len(seconds) // 2
    result = {"device": args.device, "cudnn": args.cudnn, "trunk_cudnn": model.trunk.cudnn, "model": args.model,
              "scales": list(scales),
              "images": len(images), "distinct_sizes": len({im.shape for im in images}),
              "first_image_s": round(seconds[0], 3),
              "mean_s_per_image_after_first": round(float(np.mean(seconds[1:])), 3),
              "mean_s_second_half": round(float(np.mean(seconds[half:])), 3),
              "gpu": torch.cuda.get_device_name() if args.device.startswith("cuda") else None,
              "machine": machine_info()}
    print(json.dumps({k: v for k, v in result.items() if k != "machine"}))
    tag = f"{args.device.split(':')[0]}_cudnn_{args.cudnn}"
    out = Path(args.out or ROOT / "benchmarks" / "results" / f"conv_map_speed_{tag}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
