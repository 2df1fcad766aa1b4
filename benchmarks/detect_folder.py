"""detect.py on a cold folder of real photos: every stage per photo, and the end-to-end
rate with each way of sharing the cores between selective search and the network
(issue 18).

    python benchmarks/detect_folder.py --checkpoint outputs/voc1800/<run>/checkpoints/best.pt
    python benchmarks/detect_folder.py --checkpoint ... --rows before after_w1_t1 --photos 120

The photos are the checkpoint's test split (voc2012-1800 val: 360). Each row runs
detect.py's job on them from an empty proposal store (``--out/<row>/cache``): pictures,
``detections.json``, everything a user gets. Rows: ``before`` is detect.py's defaults
before issue 18 (the checkpoint's training proposals, one loader process per core, every
torch thread, bfloat16 where native); the others use the fast detection proposals
(``--proposals``, default configs/proposals/ss_fast_200.yaml) with w loader processes
(selective search, one thread each) and t torch threads for the network.

The stage table runs the same stages one after another in one process on the first
``--stage-photos`` photos, each timed alone: decode, proposals (one core), resize,
trunk, projection + pooling, heads, scores + decode + NMS, drawing, JSON. Prints both
tables and writes ``detect_folder.json`` and ``detect_folder.md`` in ``--out`` with the CPU.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf, open_dict

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from machine import describe, machine_info, write_report  # noqa: E402
from speed import Stopwatch  # noqa: E402

from spp_det.data import build_dataset, read_image  # noqa: E402
from spp_det.evaluation.detections import image_results  # noqa: E402
from spp_det.files import write_atomic  # noqa: E402
from spp_det.jobs.detect import detect_job, detection_settings  # noqa: E402
from spp_det.jobs.eval import dataset_config  # noqa: E402
from spp_det.models import FeatureMap, postprocess_detections  # noqa: E402
from spp_det.models.checkpoint import load_checkpoint  # noqa: E402
from spp_det.models.heads import bf16_supported  # noqa: E402
from spp_det.inference.api import Detector  # noqa: E402
from spp_det.proposals import selective_search  # noqa: E402
from spp_det.visualize import draw_detections  # noqa: E402

CONFIGS = ROOT / "spp_det" / "configs"
# row -> (proposals config or None = the checkpoint's, loader processes, torch threads, precision)
ROWS: dict[str, tuple] = {
    "before": (None, 2, 2, "bfloat16" if bf16_supported("cpu") else "float32"),
    "after_w2_t2": ("fast", 2, 2, "auto"),
    "after_w2_t1": ("fast", 2, 1, "auto"),
    "after_w1_t1": ("fast", 1, 1, "auto"),
    "after_w1_t2": ("fast", 1, 2, "auto"),
}
STAGES = ("decode", "proposals", "resize", "trunk", "pooling", "heads", "nms", "drawing", "json")


def detect_config(checkpoint: str, ckpt: dict, listing: Path, out: Path, row: str, proposals: str,
                  scales: list[int] | None = None):
    """detect.py's config for a row; ``scales`` None: what detect.py chooses for the
    "after" rows, the checkpoint's test scales (its default before) for "before"."""
    props, workers, _, precision = ROWS[row]
    overrides = [f"checkpoint={checkpoint}", f"input={listing}", f"output={out / 'pictures'}",
                 f"loader_workers={workers}", f"test.precision={precision}"]
    if scales or props is None:
        overrides.append(f"test.scales=[{','.join(map(str, scales or ckpt['model_cfg']['scales']))}]")
    if props is not None:
        overrides.append(f"proposals={proposals}")
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose("detect", overrides=overrides)
    ckpt_props = OmegaConf.create(ckpt["proposals_cfg"]) if props is None else cfg.proposals
    node = OmegaConf.to_container(ckpt_props)
    node["cache_dir"] = str(out / "cache")  # cold: an empty store
    with open_dict(cfg):  # detect.yaml's proposals default to null: no key in the struct for "before"
        cfg.proposals = OmegaConf.create(node)
    return cfg


def row_scales(cfg, ckpt: dict) -> list[int]:
    """The scales detect.py runs ``cfg`` at (its own rule, jobs.detect.detection_settings)."""
    return list(detection_settings(cfg, ckpt)[1].scales or ckpt["model_cfg"]["scales"])


def run_row(row: str, checkpoint: str, ckpt: dict, listing: Path, out: Path, proposals: str, photos: int,
            scales: list[int] | None = None) -> dict:
    target = out / row
    shutil.rmtree(target, ignore_errors=True)
    cfg = detect_config(checkpoint, ckpt, listing, target, row, proposals, scales)
    threads = torch.get_num_threads()
    torch.set_num_threads(ROWS[row][2])
    t0 = time.perf_counter()
    try:
        failures = detect_job(cfg)
    finally:
        torch.set_num_threads(threads)
    wall = time.perf_counter() - t0
    results = json.loads((target / "pictures" / "detections.json").read_text())
    return {"row": row, "proposals": OmegaConf.to_container(cfg.proposals), "loader_workers": ROWS[row][1],
            "threads": ROWS[row][2], "precision": ROWS[row][3], "photos": photos, "failed": len(failures),
            "scales": row_scales(cfg, ckpt),
            "seconds": wall, "photos_per_s": photos / wall, "detections": len(results)}


def stage_table(checkpoint: str, files: list[Path], ss_node, precision: str, threads: int,
                scales: list[int]) -> dict[str, float]:
    """Mean seconds per photo of each stage, run one after another in this process, at ``scales``."""
    torch.set_num_threads(threads)
    detector = Detector.from_checkpoint(checkpoint, precision=precision, proposals=ss_node, score_thresh=0.5)
    model, ss = detector.model, detector.ss
    scales = tuple(scales)
    times = {s: [] for s in STAGES}
    for k, f in enumerate([files[0]] + list(files)):  # the first is a warm-up (numba's kernel, allocator)
        t = [time.perf_counter()]
        image = read_image(f)
        t.append(time.perf_counter())
        boxes = torch.from_numpy(selective_search(image, ss))
        t.append(time.perf_counter())
        h, w = image.shape[:2]
        with torch.no_grad(), model.autocast():
            inputs = [model.prepare(image, s) for s in scales]
            t.append(time.perf_counter())
            maps = [FeatureMap(model.trunk(x)[0], fx, fy, (h, w)) for x, fx, fy in inputs]
            t.append(time.perf_counter())
            with Stopwatch(model, "project") as project, Stopwatch(model, "pool_cells") as pool:
                logits, deltas = model.forward_windows(maps, boxes, model.select_scales(boxes, h, w, scales))
            t.append(time.perf_counter())
        det = postprocess_detections(model.class_probs(logits.float()), model.decode(deltas.float(), boxes, h, w),
                                     detector.score_thresh, detector.nms_thresh, detector.max_per_image)
        t.append(time.perf_counter())
        draw_detections(image, det["boxes"], det["labels"], det["scores"], detector.classes)
        t.append(time.perf_counter())
        json.dumps(image_results(f.name, det, [None] + detector.classes))
        t.append(time.perf_counter())
        if k == 0:
            continue
        d = np.diff(t)
        pooling = project.seconds + pool.seconds
        for name, sec in zip(("decode", "proposals", "resize", "trunk"), d[:4]):
            times[name].append(sec)
        times["pooling"].append(pooling)
        times["heads"].append(d[4] - pooling)
        times["nms"].append(d[5])
        times["drawing"].append(d[6])
        times["json"].append(d[7])
    out = {k: float(np.mean(v)) for k, v in times.items()}
    out["total"] = sum(out.values())
    out["precision"] = model.precision
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--rows", nargs="*", default=list(ROWS), choices=list(ROWS))
    ap.add_argument("--proposals", default="ss_fast_200", help="configs/proposals name of the 'after' rows")
    ap.add_argument("--photos", type=int, default=None, help="first N test photos (default: all)")
    ap.add_argument("--stage-photos", type=int, default=40)
    ap.add_argument("--scales", type=int, nargs="*", default=None,
                    help="test scales (detect.py's test.scales; default: the checkpoint's)")
    ap.add_argument("--out", type=Path, default=Path("outputs/detect_folder"))
    args = ap.parse_args()
    info = machine_info()
    ckpt = load_checkpoint(args.checkpoint)
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose("eval", overrides=[f"checkpoint={args.checkpoint}", f"proposals={args.proposals}"])
    dataset = build_dataset(dataset_config(cfg, ckpt), cfg.split)
    files = [Path(t.path).resolve() for t in dataset.targets][: args.photos]
    listing = args.out / "lists" / "photos.txt"
    write_atomic(listing, ("\n".join(map(str, files)) + "\n").encode())

    # each stage table at the scales its rows run at
    scales = {name: row_scales(detect_config(args.checkpoint, ckpt, listing, args.out / name, row, args.proposals,
                                             args.scales), ckpt)
              for name, row in (("before", "before"), ("after", "after_w2_t2"))}
    stage_rows = {"before": stage_table(args.checkpoint, files[: args.stage_photos],
                                        OmegaConf.create(ckpt["proposals_cfg"]), ROWS["before"][3], 2,
                                        scales["before"]),
                  "after": stage_table(args.checkpoint, files[: args.stage_photos], cfg.proposals, "auto", 2,
                                       scales["after"])}
    rows = [run_row(r, args.checkpoint, ckpt, listing, args.out, args.proposals, len(files), args.scales)
            for r in args.rows]
    lines = [f"{args.checkpoint}, scales before {scales['before']}, after {scales['after']}; {describe(info)}", "",
             f"Stages, one after another in one process, mean s per photo over {min(len(files), args.stage_photos)} "
             f"photos (before: the checkpoint's proposals; after: {args.proposals}, precision auto):", "",
             "| | " + " | ".join(STAGES) + " | total | precision |", "|---" * (len(STAGES) + 3) + "|"]
    for name, st in stage_rows.items():
        lines.append(f"| {name} | " + " | ".join(f"{st[s]:.3f}" for s in STAGES) + f" | {st['total']:.3f} | "
                     f"{st['precision']} |")
    lines += ["", f"detect.py's job end to end on {len(files)} photos from an empty proposal store:", "",
              "| row | proposals | loader processes | torch threads | precision | s | photos/s | detections |",
              "|---" * 8 + "|"]
    for r in rows:
        props = f"{r['proposals']['mode']} {r['proposals']['max_size']} px"
        lines.append(f"| {r['row']} | {props} | {r['loader_workers']} | {r['threads']} | {r['precision']} | "
                     f"{r['seconds']:.1f} | {r['photos_per_s']:.2f} | {r['detections']} |")
    write_report(args.out, "detect_folder", lines, {"checkpoint": args.checkpoint, "stages": stage_rows, "rows": rows})


if __name__ == "__main__":
    main()
