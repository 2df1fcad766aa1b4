"""What selective search costs and finds as its settings change, and what each setting
does to one trained model's mAP (issue 18: the paper trains with its usual proposals and
tests with fast ones).

    python benchmarks/proposal_settings.py --checkpoint outputs/voc1800/b16_drop0/checkpoints/best.pt
    python benchmarks/proposal_settings.py --checkpoint ... --rows fast_500 fast_300   # some rows

For each row, on the checkpoint's test split (voc2012-1800 val: 360 photos): selective
search from a cold store (``--out/cache``, emptied first) with ``--workers`` processes
(wall photos/s, and seconds per photo on one core), boxes per photo, recall at IoU 0.5 /
0.7 and average recall (0.5:0.95) of the ground truth, then eval.py's job with those
windows (float32, the checkpoint's test scales): VOC07 mAP and its change from the
training proposals (the first row). Prints the table and writes ``proposal_settings.json``
and ``proposal_settings.md`` in ``--out`` with the CPU.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from machine import describe, machine_info, write_report  # noqa: E402

from spp_det.data import build_dataset  # noqa: E402
from spp_det.jobs.eval import dataset_config, evaluate_checkpoint  # noqa: E402
from spp_det.models.checkpoint import load_checkpoint  # noqa: E402
from spp_det.proposals import build_proposals, compute_missing, proposal_recall  # noqa: E402

CONFIGS = ROOT / "spp_det" / "configs"
# row -> overrides of configs/proposals/ss_fast.yaml (fast mode, 500 px, 2000 boxes: the
# training proposals of the voc2012-1800 recipes; the first row is the reference)
ROWS: dict[str, dict] = {
    "fast_500": {},
    "fast_400": {"max_size": 400},
    "fast_300": {"max_size": 300},
    "fast_200": {"max_size": 200},
    "single_500": {"mode": "single"},
    "single_300": {"mode": "single", "max_size": 300},
    "fast_300_k300": {"max_size": 300, "base_k": 300, "inc_k": 300},
    "fast_300_min20": {"max_size": 300, "min_size": 20},
    "fast_300_1000": {"max_size": 300, "max_boxes": 1000},
    "quality_500": {"mode": "quality"},
}


def eval_config(checkpoint: str, proposals: dict, cache: Path):
    overrides = [f"checkpoint={checkpoint}", "proposals=ss_fast", f"proposals.cache_dir={cache}", "plot=false",
                 "loader_workers=0"] + [f"proposals.{k}={v}" for k, v in proposals.items()]
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return compose("eval", overrides=overrides)


def run_row(name: str, checkpoint: str, out: Path, workers: int) -> dict:
    cache = out / "cache"
    shutil.rmtree(cache, ignore_errors=True)  # cold: every row searches every photo
    cfg = eval_config(checkpoint, ROWS[name], cache)
    ckpt = load_checkpoint(checkpoint)
    dataset = build_dataset(dataset_config(cfg, ckpt), cfg.split)
    store, ss = build_proposals(cfg.proposals)
    t0 = time.perf_counter()
    stats = compute_missing(store, [t.path for t in dataset.targets], ss, workers=workers, progress=False)
    wall = time.perf_counter() - t0
    recall = proposal_recall([torch.from_numpy(store.get(t.path)) for t in dataset.targets],
                             [t.boxes[~t.ignore] for t in dataset.targets])
    metrics = evaluate_checkpoint(cfg, out / name)
    return {"row": name, "settings": ss.as_dict(), "photos": len(dataset), "workers": workers,
            "photos_per_s": len(dataset) / wall, "s_per_photo_one_core": stats.seconds_per_image,
            "boxes_per_photo": recall["mean_boxes_per_image"], "recall@0.5": recall["recall@0.5"],
            "recall@0.7": recall["recall@0.7"], "average_recall": recall["average_recall"],
            "mAP": metrics["mAP"], "AP": metrics["AP"], "test_s_per_photo": metrics.get("seconds_per_image")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--rows", nargs="*", default=list(ROWS), choices=list(ROWS))
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("outputs/proposal_settings"))
    args = ap.parse_args()
    info = machine_info()
    rows = [run_row(name, args.checkpoint, args.out, args.workers) for name in args.rows]
    ref = rows[0]["mAP"]
    lines = [f"voc2012-1800 val ({rows[0]['photos']} photos), {args.checkpoint}, {args.workers} search processes; "
             f"{describe(info)}", "",
             "| row | settings | photos/s | s/photo, one core | boxes/photo | recall@0.5 | recall@0.7 | AR | "
             f"mAP | vs {rows[0]['row']} |", "|---" * 10 + "|"]
    for r in rows:
        settings = ", ".join(f"{k} {v}" for k, v in r["settings"].items())
        lines.append(f"| {r['row']} | {settings} | {r['photos_per_s']:.2f} | {r['s_per_photo_one_core']:.2f} | "
                     f"{r['boxes_per_photo']:.0f} | {r['recall@0.5']:.3f} | {r['recall@0.7']:.3f} | "
                     f"{r['average_recall']:.3f} | {r['mAP']:.3f} | {r['mAP'] - ref:+.3f} |")
    write_report(args.out, "proposal_settings", lines, {"checkpoint": args.checkpoint, "rows": rows})


if __name__ == "__main__":
    main()
