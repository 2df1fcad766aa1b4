"""Detector forward time per image for each trunk (SPP mode), and SPP vs R-CNN mode on
the same image, windows and weights. Writes benchmarks/results/model_speed.json.

    python benchmarks/model_speed.py [--scale 688] [--windows 2000] [--rcnn-windows 64]
    python benchmarks/model_speed.py --device cuda --rcnn-windows 2000 --rcnn-batch 256   # on a GPU

SPP mode runs the trunk once and pools every window; R-CNN mode warps every window to
224x224 and runs the trunk on each, so its time grows linearly with the window count: it
is timed on --rcnn-windows windows and both modes are also compared on that same set.
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
from spp_det.models import RCNN, build_detector

ROOT = Path(__file__).resolve().parents[1]


def timed(fn, repeats: int) -> float:
    """Best wall time of fn over repeats, after one warm-up; GPU work is waited for (CUDA
    runs asynchronously: without the synchronisation the clock would stop at the launch)."""
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    fn()  # warm-up
    sync()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--trunks", nargs="+", default=["zf5", "alexnet", "vgg16", "resnet50", "efficientnet_lite0"])
    ap.add_argument("--scale", type=int, default=688)
    ap.add_argument("--windows", type=int, default=2000)
    ap.add_argument("--rcnn-windows", type=int, default=64)
    ap.add_argument("--rcnn-batch", type=int, default=16, help="crops per trunk call in R-CNN mode (256 on a GPU)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "model_speed.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    h, w = 375, 500  # a VOC-sized image
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    xy = rng.uniform(0, [w - 30, h - 30], (args.windows, 2))
    wh = rng.uniform(20, 300, (args.windows, 2))
    boxes = torch.tensor(np.concatenate([xy, np.minimum(xy + wh, [w, h])], 1), dtype=torch.float32)
    result = {"image": [h, w], "scale": args.scale, "windows": args.windows, "threads": args.threads,
              "rcnn_batch": args.rcnn_batch,
              "device": args.device, "gpu": torch.cuda.get_device_name() if args.device.startswith("cuda") else None,
              "machine": machine_info(), "trunks": {}}
    for name in args.trunks:
        cfg = OmegaConf.load(ROOT / "configs" / "model" / f"{name}.yaml")
        cfg.scales = [args.scale]
        model = build_detector(cfg, num_classes=20, pretrained=False).to(args.device).eval()
        with torch.no_grad():
            feats = lambda: model.compute_features(image, (args.scale,))  # noqa: E731
            t_trunk = timed(feats, args.repeats)
            t_all = timed(lambda: model.detect_windows(image, boxes), args.repeats)
            sub = boxes[: args.rcnn_windows]
            t_spp_sub = timed(lambda: model.detect_windows(image, sub), args.repeats)
            rcnn = RCNN(model, batch_size=args.rcnn_batch).eval()
            t_rcnn_sub = timed(lambda: rcnn.detect_windows(image, sub), 1)
        per_window = t_rcnn_sub / len(sub)
        row = {"spp_seconds_per_image": round(t_all, 3), "trunk_seconds": round(t_trunk, 3),
               "pool_and_heads_seconds": round(t_all - t_trunk, 3),
               f"spp_seconds_{len(sub)}_windows": round(t_spp_sub, 3),
               f"rcnn_seconds_{len(sub)}_windows": round(t_rcnn_sub, 3),
               f"speedup_{len(sub)}_windows": round(t_rcnn_sub / t_spp_sub, 1),
               "rcnn_seconds_per_window": round(per_window, 4),
               f"rcnn_seconds_{args.windows}_windows_extrapolated": round(per_window * args.windows, 1),
               f"speedup_{args.windows}_windows_extrapolated": round(per_window * args.windows / t_all, 1)}
        result["trunks"][name] = row
        print(f"{name:>18}: SPP {t_all:.2f} s/image ({args.windows} windows; trunk {t_trunk:.2f} s) | "
              f"{len(sub)} windows: SPP {t_spp_sub:.2f} s vs R-CNN {t_rcnn_sub:.2f} s "
              f"({t_rcnn_sub / t_spp_sub:.0f}x) | R-CNN at {args.windows} windows ~{per_window * args.windows:.0f} s "
              f"({per_window * args.windows / t_all:.0f}x)")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
