"""fc6/fc7 on the CPU at hand: each exact or near-exact way to make the heads faster, its
time and its accuracy cost (issue 18).

    python benchmarks/head_speed.py --checkpoint outputs/voc1800/<run>/checkpoints/best.pt
    python benchmarks/head_speed.py --checkpoint ... --rows float32 int8 --photos 60

Rows: float32 (and on one thread), bfloat16 autocast (only where the CPU multiplies it
natively: AMX or AVX-512 BF16; ``--emulated-bf16`` times them elsewhere too), int8 dynamic quantisation of fc6/fc7 (torch.ao, fbgemm),
truncated SVD of fc6/fc7 (Fast R-CNN), the inductor CPU backend (``torch.compile``) in
float32 and bfloat16, and what ``precision=auto`` picks here (detect.py's default).

Time: the whole head (fc6, fc7, class scores, box deltas) on ``--windows`` pooled vectors
in the chunks inference uses, one autocast context per repeat as per photo, best of
``--repeats``; random vectors of the checkpoint's
width (the time does not depend on the values). Accuracy: on the checkpoint's test split
(with its stored proposals, computed first where missing), each photo's conv maps are
computed once in float32 and every row scores the same windows from them, so a row's mAP
differs from float32's only by its heads. Prints the table and writes ``head_speed.json``
and ``head_speed.md`` in ``--out`` with the CPU.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from machine import describe, machine_info, write_report  # noqa: E402

from spp_det.data import build_dataset, read_image  # noqa: E402
from spp_det.evaluation.evaluate import evaluate  # noqa: E402
from spp_det.jobs.eval import dataset_config  # noqa: E402
from spp_det.models import postprocess_detections  # noqa: E402
from spp_det.models.checkpoint import load_checkpoint, model_from_checkpoint  # noqa: E402
from spp_det.models.detector import INFERENCE_CHUNK  # noqa: E402
from spp_det.models.heads import bf16_supported, head_time  # noqa: E402
from spp_det.proposals import build_proposals, compute_missing  # noqa: E402

CONFIGS = ROOT / "spp_det" / "configs"
# row -> (precision, SVD ranks of fc6/fc7 or None, torch.compile, threads or None = all)
ROWS: dict[str, tuple] = {
    "float32": ("float32", None, False, None),
    "float32_1_thread": ("float32", None, False, 1),
    "bfloat16": ("bfloat16", None, False, None),
    "int8": ("int8", None, False, None),
    "svd_256_256": ("float32", (256, 256), False, None),
    "svd_256_256_int8": ("int8", (256, 256), False, None),
    "compile_float32": ("float32", None, True, None),
    "compile_bfloat16": ("bfloat16", None, True, None),
    "auto": ("auto", None, False, None),
}


def build_row(name: str, checkpoint: str, ckpt: dict):
    """(model with this row's heads, seconds spent preparing them)."""
    precision, ranks, compiled, _ = ROWS[name]
    model = model_from_checkpoint(ckpt, "cpu", checkpoint).eval()
    t0 = time.perf_counter()
    if ranks:
        model.compress(ranks)
    model.set_precision(precision)
    if compiled:
        model.head = torch.compile(model.head, dynamic=True)
    return model, time.perf_counter() - t0


def head_seconds(model, windows: int, repeats: int, threads: int | None) -> float:
    """Best of ``repeats`` for the head on ``windows`` pooled vectors, in inference's chunks,
    one autocast context per repeat as per photo (heads.head_time)."""
    width = model.spp.output_size(model.trunk.out_channels)
    x = torch.randn(windows, width, generator=torch.Generator().manual_seed(0))
    before = torch.get_num_threads()
    torch.set_num_threads(threads or before)
    try:  # the warm-up call also compiles the compiled rows
        return head_time(model.head, x, model.precision == "bfloat16", repeats, INFERENCE_CHUNK)
    finally:
        torch.set_num_threads(before)


def test_config(checkpoint: str):
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return compose("eval", overrides=[f"checkpoint={checkpoint}"])


def accuracy(models: dict, checkpoint: str, ckpt: dict, photos: int | None) -> dict[str, dict]:
    """Each row's VOC metrics on the test split, from shared float32 conv maps."""
    cfg = test_config(checkpoint)
    dataset = build_dataset(dataset_config(cfg, ckpt), cfg.split).take(None if photos is None else [0, photos])
    store, ss = build_proposals(OmegaConf.create(ckpt["proposals_cfg"]))
    compute_missing(store, [t.path for t in dataset.targets], ss)
    base = next(iter(models.values()))
    scales = tuple(base.scales)
    test = cfg.test
    dets: dict[str, list] = {name: [] for name in models}
    seconds = {name: 0.0 for name in models}
    for t in tqdm(dataset.targets, desc="photos", file=sys.stderr):
        image = read_image(t.path)
        boxes = torch.from_numpy(store.get(t.path))
        with torch.no_grad():
            maps = base.compute_features(image, scales)  # float32 trunk, shared by every row
        for name, m in models.items():
            t0 = time.perf_counter()
            probs, per_class = m.detect_windows(image, boxes, scales, maps=maps)
            seconds[name] += time.perf_counter() - t0
            dets[name].append(postprocess_detections(probs, per_class, test.score_thresh, test.nms_thresh,
                                                     test.max_per_image))
    out = {}
    for name in models:
        metrics, _ = evaluate(dataset, dets[name], cfg.metric or dataset_config(cfg, ckpt).metric)
        out[name] = {"mAP": metrics["mAP"], "AP": metrics["AP"], "photos": len(dataset),
                     "windows_s_per_photo": seconds[name] / len(dataset)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--rows", nargs="*", default=list(ROWS), choices=list(ROWS))
    ap.add_argument("--windows", type=int, default=1100, help="distinct windows per photo (voc2012-1800: ~1,100)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--photos", type=int, default=None, help="first N test photos (default: all)")
    ap.add_argument("--no-accuracy", action="store_true")
    ap.add_argument("--emulated-bf16", action="store_true",
                    help="time the bfloat16 rows on a CPU without native bf16 too (what auto never picks there)")
    ap.add_argument("--out", type=Path, default=Path("outputs/head_speed"))
    args = ap.parse_args()
    info = machine_info()
    rows = [r for r in args.rows if ROWS[r][0] != "bfloat16" or bf16_supported("cpu") or args.emulated_bf16]
    ckpt = load_checkpoint(args.checkpoint)
    models, results = {}, {}
    for name in rows:
        model, prep = build_row(name, args.checkpoint, ckpt)
        secs = head_seconds(model, args.windows, args.repeats, ROWS[name][3])
        results[name] = {"row": name, "precision": model.precision, "svd_rank": ROWS[name][1],
                         "compiled": ROWS[name][2], "threads": ROWS[name][3] or torch.get_num_threads(),
                         "prepare_s": prep, "head_s": secs}
        print(json.dumps(results[name]))
        if ROWS[name][3] is None:  # one thread changes the time, not the numbers
            models[name] = model
    if models and not args.no_accuracy:
        for name, acc in accuracy(models, args.checkpoint, ckpt, args.photos).items():
            results[name].update(acc)
    ref = results.get("float32", {})
    width = model.spp.output_size(model.trunk.out_channels)  # the last row's: every row has the same
    lines = [f"{args.checkpoint}: heads {width} -> fc6 -> fc7 -> outputs on {args.windows} windows, "
             f"best of {args.repeats}; mAP on {results[rows[0]].get('photos', 'the')} test photos from shared float32 "
             f"conv maps; {describe(info)}"
             + ("" if bf16_supported("cpu") else "; no native bf16 here: bfloat16 rows, where present, emulated"), "",
             "| row | precision | SVD | compiled | threads | heads s | vs float32 | mAP | vs float32 |", "|---" * 9 + "|"]
    for name in rows:
        r = results[name]
        speed = f"{ref['head_s'] / r['head_s']:.2f}x" if ref else "-"
        acc = (f"{r['mAP']:.4f} | {r['mAP'] - ref['mAP']:+.4f}" if "mAP" in r and "mAP" in ref
               else (f"{r['mAP']:.4f} | -" if "mAP" in r else "- | -"))
        ranks = "/".join(map(str, r["svd_rank"])) if r["svd_rank"] else "-"
        lines.append(f"| {name} | {r['precision']} | {ranks} | {'yes' if r['compiled'] else 'no'} | {r['threads']} | "
                     f"{r['head_s']:.3f} | {speed} | {acc} |")
    write_report(args.out, "head_speed", lines, {"checkpoint": args.checkpoint, "windows": args.windows, "rows": results})


if __name__ == "__main__":
    main()
