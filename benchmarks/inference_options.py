"""Test-time options of a trained checkpoint, all from one pass of the model: mirrored
test images (``test.flip``), the NMS threshold (``test.nms_thresh``) and box voting
(``test.box_vote``), scored on the checkpoint's test split.

    python benchmarks/inference_options.py --name voc1800_8k \
        --checkpoint outputs/voc1800/dilated_recipe_8k/checkpoints/best.pt \
        --scales 400 480 576 --flip --nms 0.3 0.4 0.5 --vote 0.5 0.7

Each photo's windows are scored once (and once mirrored with ``--flip``) at the
checkpoint's test scales; every row then runs only the post-processing
(``models.postprocess``) and this project's evaluator, so a grid of settings costs one
eval pass (two with ``--flip``). The row "no flip, NMS 0.3, no voting" is what eval.py
gives for the checkpoint. Prints the table and writes
``benchmarks/results/inference_options_<name>.{md,json}`` with the CPU.
"""
from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf
from torch.utils.data import DataLoader
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from machine import describe, machine_info, write_report  # noqa: E402

from spp_det.data import build_dataset  # noqa: E402
from spp_det.evaluation.evaluate import evaluate  # noqa: E402
from spp_det.inference.api import Detector  # noqa: E402
from spp_det.inference.loader import Images, loader_kwargs  # noqa: E402
from spp_det.models.checkpoint import load_checkpoint  # noqa: E402
from spp_det.models.postprocess import postprocess_detections  # noqa: E402


def score_windows(detector: Detector, dataset, flip: bool, score_thresh: float) -> tuple[list, dict]:
    """Per photo (probs (K, C + 1), per-class boxes (K, C, 4)) as eval.py's model scores
    them, and with ``flip`` the same for the mirrored photo (boxes mirrored back), kept
    only for the windows that some class scores above ``score_thresh`` in one of the views
    (no other window can reach a detection, averaged or not); the seconds per photo of each."""
    model = detector.model
    model.test_flip = False  # the two views are kept apart here, averaged per row
    scored, seconds = [], {"plain": 0.0, "mirrored": 0.0}
    loader = DataLoader(Images(dataset, list(range(len(dataset))), detector.store, detector.ss),
                        batch_size=None, **loader_kwargs(0))
    for _, image, boxes, error in tqdm(loader, total=len(dataset), desc="score windows", unit="img"):
        if error is not None:
            raise SystemExit(f"error: {error}")
        t0 = time.perf_counter()
        plain = model.detect_windows(image, boxes, detector.scales)
        t1 = time.perf_counter()
        mirrored = None
        if flip:
            mirrored = model.score_mirrored(image, boxes, detector.scales)
        seconds["plain"] += t1 - t0
        seconds["mirrored"] += time.perf_counter() - t1
        keep = plain[0][:, 1:].amax(1) > score_thresh
        if mirrored is not None:
            keep |= mirrored[0][:, 1:].amax(1) > score_thresh
            mirrored = (mirrored[0][keep], mirrored[1][keep])
        scored.append(((plain[0][keep], plain[1][keep]), mirrored))
    return scored, {k: v / max(1, len(dataset)) for k, v in seconds.items()}


def main(argv: list[str] | None = None) -> list[dict]:
    """The rows (flip, nms_thresh, box_vote, mAP, AP), as printed and written."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--name", required=True)
    ap.add_argument("--checkpoint", type=Path, required=True)
    ap.add_argument("--split", default="test")
    ap.add_argument("--scales", type=int, nargs="+", default=None, help="test scales (default: the checkpoint's)")
    ap.add_argument("--subset", type=int, default=None, help="only the first N photos")
    ap.add_argument("--flip", action="store_true", help="also score the mirrored photos")
    ap.add_argument("--nms", type=float, nargs="+", default=[0.3])
    ap.add_argument("--vote", type=float, nargs="*", default=[], help="box-voting IoU thresholds")
    ap.add_argument("--score-thresh", type=float, default=0.001)
    ap.add_argument("--max-per-image", type=int, default=100)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = ap.parse_args(argv)

    ckpt = load_checkpoint(args.checkpoint)
    if ckpt.get("rcnn"):
        raise SystemExit(f"error: {args.checkpoint}: an R-CNN-mode checkpoint (train.rcnn=true); this benchmark "
                         "scores SPP-net checkpoints (use eval.py's test.* options for R-CNN mode)")
    detector = Detector.from_checkpoint(args.checkpoint, scales=args.scales, loaded=ckpt)
    node = OmegaConf.merge(OmegaConf.create(ckpt["dataset_cfg"]), {"classes": list(ckpt["classes"])})
    dataset = build_dataset(node, args.split).take([0, args.subset] if args.subset else None)
    scored, seconds = score_windows(detector, dataset, args.flip, args.score_thresh)

    rows = []
    for flip, nms, vote in itertools.product([False, True] if args.flip else [False], args.nms, [None, *args.vote]):
        dets = []
        for plain, mirrored in scored:
            probs, boxes = plain if not flip else ((plain[0] + mirrored[0]) / 2, (plain[1] + mirrored[1]) / 2)
            dets.append(postprocess_detections(probs, boxes, args.score_thresh, nms, args.max_per_image, vote))
        metrics, _ = evaluate(dataset, dets, node.metric)
        rows.append({"flip": flip, "nms_thresh": nms, "box_vote": vote, "mAP": metrics["mAP"], "AP": metrics["AP"]})
        print(f"flip {flip!s:5}  nms {nms}  vote {vote}: mAP {metrics['mAP']:.4f}")

    info = machine_info()
    classes = list(rows[0]["AP"])
    lines = [f"{args.checkpoint} on {len(dataset)} photos of '{dataset.name}' ({args.split}), "
             f"scales {list(detector.scales or detector.model.scales)}, {node.metric}; {describe(info)}",
             f"scoring: {seconds['plain']:.2f} s/photo"
             + (f", mirrored +{seconds['mirrored']:.2f}" if args.flip else ""),
             "", "| flip | NMS | box vote | mAP | " + " | ".join(classes) + " |",
             "|---|---|---|---|" + "---|" * len(classes)]
    for r in rows:
        aps = " | ".join("-" if a is None else f"{a:.3f}" for a in r["AP"].values())
        vote = "-" if r["box_vote"] is None else r["box_vote"]
        lines.append(f"| {'yes' if r['flip'] else 'no'} | {r['nms_thresh']} | {vote} | {r['mAP']:.3f} | {aps} |")
    write_report(args.out, f"inference_options_{args.name}", lines,
                 {"checkpoint": str(args.checkpoint), "split": args.split, "num_images": len(dataset),
                  "seconds_per_image": seconds, "rows": rows})
    return rows


if __name__ == "__main__":
    with torch.no_grad():
        main()
