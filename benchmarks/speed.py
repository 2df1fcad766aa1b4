"""Per-image time of each stage, SPP-net at 1 and 5 scales against R-CNN mode, on real
photos with their cached selective-search windows. Writes benchmarks/results/speed.json.

    python benchmarks/speed.py [--images 8] [--rcnn-images 2] [--windows 2000] [--trunk alexnet]

Everything runs in one process on the same images, windows, weights (random, 20
classes: speed does not depend on what the weights learned), heads and numeric settings.
Each image gets exactly --windows windows: its stored selective-search windows
(configs/proposals/ss_fast.yaml, computed first where missing), repeated when fewer, as
R-CNN and SPP-net were compared in the paper. Repeats project onto the same cells and are
pooled and scored once (the detector's dedup), so the JSON also gives the distinct count.

Stages (SPP): trunk (conv maps at every scale), projection (cells of each window),
pooling, heads (best scale per window, dedup, fc6, fc7, outputs), decode + NMS. R-CNN mode runs warping + trunk +
whole-map pyramid + heads per window, in batches, for --rcnn-images images (it is slow).
Variants: float32; auto (detect.py's default: the fastest heads here); int8 fc6/fc7
(dynamic quantisation), alone and with truncated SVD of fc6/fc7 (--svd-rank); bfloat16
autocast (where the CPU multiplies it natively), alone and with SVD. Detections are kept
above --score-thresh (detect.py's 0.5) on both sides.
"""
from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

from machine import describe, machine_info  # benchmarks/ is the script's own directory
from model_speed import timed

from spp_det.data import read_image
from torchvision.ops import roi_pool

from spp_det.models import RCNN, SpatialPyramidPooling, build_detector, postprocess_detections
from spp_det.models.detector import INFERENCE_CHUNK
from spp_det.models.heads import bf16_supported
from spp_det.models.spp import unique_rows
from spp_det.proposals import build_proposals, compute_missing

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "coco128" / "train2017"


class Stopwatch:
    """Wraps a bound method of a model so that each call's seconds add up in ``seconds``:
    the stages are timed inside the real ``forward_windows``, not a copy of it."""

    def __init__(self, model, name: str) -> None:
        self.model, self.name, self.seconds = model, name, 0.0
        self.method = getattr(model, name)

    def __call__(self, *args, **kwargs):
        t0 = time.perf_counter()
        try:
            return self.method(*args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - t0

    def __enter__(self) -> "Stopwatch":
        setattr(self.model, self.name, self)  # an instance attribute shadows the method
        return self

    def __exit__(self, *exc) -> None:
        delattr(self.model, self.name)


def stage_times(model, image: np.ndarray, boxes: torch.Tensor, scales: tuple[int, ...],
                score_thresh: float = 0.5) -> dict[str, float]:
    """Seconds of each stage of ``SPPNet.predict`` on one image: the trunk, then
    ``forward_windows`` (projection, pooling, heads with the dedup: the two inner steps timed
    where the real code calls them), then softmax, decoding and NMS."""
    h, w = image.shape[:2]
    with torch.no_grad(), model.autocast(), Stopwatch(model, "project") as project, \
            Stopwatch(model, "pool_cells") as pool:
        t0 = time.perf_counter()
        maps = model.compute_features(image, scales)
        t1 = time.perf_counter()
        logits, deltas = model.forward_windows(maps, boxes, model.select_scales(boxes, h, w, scales))
        t2 = time.perf_counter()
    # unique_rows keeps the distinct windows; the heads see exactly these
    distinct = len(unique_rows(model.project(maps, boxes, model.select_scales(boxes, h, w, scales)))[0])
    t3 = time.perf_counter()
    postprocess_detections(torch.softmax(logits.float(), 1), model.decode(deltas.float(), boxes, h, w), score_thresh)
    t4 = time.perf_counter()
    return {"trunk": t1 - t0, "projection": project.seconds, "pooling": pool.seconds,
            "heads": t2 - t1 - project.seconds - pool.seconds, "decode_nms": t4 - t3,
            "total": (t2 - t0) + (t4 - t3), "distinct_windows": distinct}


def rcnn_time(rcnn: RCNN, image: np.ndarray, boxes: torch.Tensor, score_thresh: float = 0.5) -> float:
    t0 = time.perf_counter()
    rcnn.predict(image, boxes, score_thresh=score_thresh)
    return time.perf_counter() - t0


def pooling_times(repeats: int = 5) -> dict[str, float]:
    """The pyramid alone: 2000 windows (corners uniform over the map, so 19 x 15 cells on
    average, larger than most selective-search windows) on a 256 x 42 x 56 map (AlexNet's
    conv5 of a 688 x 917 image), levels {6, 3, 2, 1}: the compiled kernel in the chunks
    inference uses, the pure-torch tables, and torchvision's roi_pool at the 4 levels."""
    gen = torch.Generator().manual_seed(0)
    fmap = torch.relu(torch.randn(1, 256, 42, 56, generator=gen))
    x = torch.randint(0, 56, (2000, 2), generator=gen).sort(1).values
    y = torch.randint(0, 42, (2000, 2), generator=gen).sort(1).values
    wins = torch.cat([torch.zeros(2000, 1, dtype=torch.long), x[:, :1], y[:, :1], x[:, 1:], y[:, 1:]], 1)
    rois = torch.cat([wins[:, :3].float(), wins[:, 3:].float() + 1], 1)  # roi_pool: box edges in cells

    kernel, tables = SpatialPyramidPooling((6, 3, 2, 1)), SpatialPyramidPooling((6, 3, 2, 1), use_kernel=False)
    fmap_cl = fmap.contiguous(memory_format=torch.channels_last)  # as forward_windows hands it over
    work = torch.empty((INFERENCE_CHUNK, kernel.output_size(256)))
    res = {"kernel_chunked": timed(lambda: [kernel(fmap_cl, wins[i:i + INFERENCE_CHUNK], out=work[:len(wins[i:i + INFERENCE_CHUNK])])
                                          for i in range(0, 2000, INFERENCE_CHUNK)], repeats),
           "kernel_one_call": timed(lambda: kernel(fmap, wins), repeats),
           "torch_tables": timed(lambda: tables(fmap, wins), repeats),
           "roi_pool_4_levels": timed(lambda: [roi_pool(fmap, rois, n, 1.0) for n in (6, 3, 2, 1)], repeats)}
    res = {k: round(v, 4) for k, v in res.items()}
    res["roi_pool_over_kernel"] = round(res["roi_pool_4_levels"] / res["kernel_chunked"], 1)
    return res


def mean(rows: list[dict], key: str) -> float:
    return float(np.mean([r[key] for r in rows]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--rcnn-images", type=int, default=2)
    ap.add_argument("--windows", type=int, default=2000)
    ap.add_argument("--trunk", default="alexnet")
    ap.add_argument("--scale", type=int, default=688)
    ap.add_argument("--scales5", type=int, nargs=5, default=[480, 576, 688, 864, 1200])
    ap.add_argument("--svd-rank", type=int, nargs=2, default=[1024, 256])
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--score-thresh", type=float, default=0.5, help="detect.py's default")
    ap.add_argument("--image-dir", default=str(SHARED))
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "speed.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    files = sorted(Path(args.image_dir).glob("*.jpg"))[: args.images]
    store, ss = build_proposals(OmegaConf.load(ROOT / "configs" / "proposals" / "ss_fast.yaml"))
    compute_missing(store, files, ss)
    images, windows = [], []
    for f in files:
        boxes = store.get(f)
        reps = int(np.ceil(args.windows / len(boxes)))
        windows.append(torch.from_numpy(np.tile(boxes, (reps, 1))[: args.windows]))
        images.append(read_image(f))

    cfg = OmegaConf.load(ROOT / "configs" / "model" / f"{args.trunk}.yaml")
    torch.manual_seed(0)
    model = build_detector(cfg, num_classes=20, pretrained=False).eval()
    # "auto" is detect.py's default: whichever of the others' heads is fastest here
    variants = [("float32", None), ("auto", None), ("int8", None), ("int8", tuple(args.svd_rank))]
    if bf16_supported("cpu"):
        variants += [("bfloat16", None), ("bfloat16", tuple(args.svd_rank))]
    result = {"images": [f.name for f in files], "windows_per_image": args.windows, "trunk": args.trunk,
              "threads": args.threads, "score_thresh": args.score_thresh, "machine": machine_info(), "cpu_bf16": bf16_supported("cpu"), "variants": []}
    print(f"measured on: {describe(result['machine'])}")
    for precision, ranks in variants:
        m = build_detector(cfg, num_classes=20, pretrained=False).eval()
        m.load_state_dict(model.state_dict())
        if ranks:  # before the precision, as configure_inference does
            m.compress(ranks)
        chosen = m.set_precision(precision)
        name = (precision if chosen == precision else f"{precision} ({chosen})") + \
            (f" + SVD {ranks[0]}/{ranks[1]}" if ranks else "")
        row = {"variant": name}
        for label, scales in (("spp_1_scale", (args.scale,)), ("spp_5_scales", tuple(args.scales5))):
            stage_times(m, images[0], windows[0], scales, args.score_thresh)  # warm-up (kernels, allocator)
            rows = [stage_times(m, im, win, scales, args.score_thresh) for im, win in zip(images, windows)]
            t0 = time.perf_counter()
            for im, win in zip(images, windows):
                m.predict(im, win, scales=scales, score_thresh=args.score_thresh)
            whole = (time.perf_counter() - t0) / len(images)
            row[label] = {k: round(mean(rows, k), 4) for k in rows[0]}
            row[label]["predict_call"] = round(whole, 4)
            row[label]["first_images_total"] = round(float(np.mean([r["total"] for r in rows[: args.rcnn_images]])), 4)
        # R-CNN mode with the same weights, heads and numeric settings
        rcnn = RCNN(m, batch_size=256).eval()  # large batches: fc6's weights read once per 256 crops
        rcnn_time(rcnn, images[0], windows[0][:32], args.score_thresh)  # warm-up
        secs = [rcnn_time(rcnn, im, win, args.score_thresh) for im, win in zip(images[: args.rcnn_images], windows)]
        row["rcnn"] = {"total": round(float(np.mean(secs)), 3)}
        row["rcnn_over_spp_1_scale"] = round(row["rcnn"]["total"] / row["spp_1_scale"]["first_images_total"], 1)
        row["rcnn_over_spp_5_scales"] = round(row["rcnn"]["total"] / row["spp_5_scales"]["first_images_total"], 1)
        result["variants"].append(row)
        print(json.dumps(row))
    result["pooling_2000_windows_256x42x56"] = pooling_times()
    print("pooling alone:", json.dumps(result["pooling_2000_windows_256x42x56"]))
    result["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    print_table(result)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


def print_table(result: dict) -> None:
    stages = ("trunk", "projection", "pooling", "heads", "decode_nms", "total")
    print(f"\nmeasured on: {describe(result['machine'])}")
    print(f"{result['trunk']}, {len(result['images'])} coco128 photos, {result['windows_per_image']} windows "
          f"per image, {result['threads']} threads, score threshold {result['score_thresh']}; seconds per image")
    print("| variant | mode | " + " | ".join(stages) + " | R-CNN / SPP |")
    print("|---" * (len(stages) + 3) + "|")
    for row in result["variants"]:
        for label in ("spp_1_scale", "spp_5_scales"):
            r = row[label]
            ratio = row.get(f"rcnn_over_{label}")
            print(f"| {row['variant']} | {label.replace('_', ' ')} | " + " | ".join(f"{r[s]:.3f}" for s in stages)
                  + f" | {f'{ratio:.0f}x' if ratio else '-'} |")
        if "rcnn" in row:
            print(f"| {row['variant']} | R-CNN | " + " | ".join("" for _ in stages[:-1])
                  + f" | {row['rcnn']['total']:.2f} | 1x |")


if __name__ == "__main__":
    main()
