"""Selective-search throughput (images/second) with 1 and 2 worker processes on the real
coco128 photographs. Writes benchmarks/results/proposals.json.

    python benchmarks/proposals.py [--images 32] [--mode fast] [--max-size 500]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

from spp_det.data import CocoDetection
from spp_det.proposals import ProposalStore, SelectiveSearchConfig, compute_missing

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--coco128", default=str(ROOT.parent / "shared" / "data" / "coco128"))
    ap.add_argument("--images", type=int, default=32)
    ap.add_argument("--mode", default="fast")
    ap.add_argument("--max-size", type=int, default=500)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "proposals.json"))
    args = ap.parse_args()
    root = Path(args.coco128)
    ds = CocoDetection(root / "train2017", root / "annotations" / "instances_train2017.json")
    items = [t.path for t in ds.targets[: args.images]]
    ss = SelectiveSearchConfig(mode=args.mode, max_size=args.max_size)
    result = {"images": len(items), "settings": ss.as_dict(), "cpu_count": os.cpu_count(),
              "machine": platform.processor() or platform.machine(), "runs": {}}
    for workers in args.workers:
        with tempfile.TemporaryDirectory() as tmp:
            store = ProposalStore(tmp, ss.as_dict())
            t0 = time.perf_counter()
            stats = compute_missing(store, items, ss, workers=workers, progress=False)
            wall = time.perf_counter() - t0
        result["runs"][str(workers)] = {"wall_s": round(wall, 2), "images_per_s": round(len(items) / wall, 3),
                                        "search_s_per_image": round(stats.seconds_per_image, 3)}
        print(f"workers={workers}: {len(items) / wall:.2f} images/s ({wall:.1f} s for {len(items)} images, "
              f"{stats.seconds_per_image:.2f} s per image per core)")
    if "1" in result["runs"] and "2" in result["runs"]:
        result["speedup_2_vs_1"] = round(result["runs"]["2"]["images_per_s"] / result["runs"]["1"]["images_per_s"], 2)
        print(f"speed-up 2 vs 1 workers: {result['speedup_2_vs_1']}x")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
