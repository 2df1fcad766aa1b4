"""The paper's comparisons on one data set, as one Markdown table (mAP and time per image).

    python scripts/experiments.py --preset shapes     # the synthetic set (~25 min on 2 cores)
    python scripts/experiments.py --preset coco128    # ../shared/data/coco128, person, Lite0
    python scripts/experiments.py --preset voc2012-1800   # the real VOC photos (~7 h on 2 cores)

Trains the models the comparisons need with scripts/train.py's own job (Hydra's compose
API builds each configuration from ``configs/``): the preset's recipe with SVMs and ridge
box regression fitted after fine-tuning; the same with a {6x6} pyramid; the same with
fc6/fc7 left as initialised (0 fine-tuning iterations, SVMs on their fc7); and R-CNN
mode with its heads trained on warped-crop features (same trunk and schedule). The SVMs
and ridge regressors are fitted on features of the scales each row tests with, as the
released code does: at the one test scale during training (``model.scales``), and refitted
on the same fine-tuned weights at the five scales for the five-scale rows. Every row is
then one run of eval.py's job on the test split. Writes ``table.md`` and
``results.json`` into ``--out``; models trained and rows evaluated there by an earlier
run are reused.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from hydra import compose, initialize_config_dir

from spp_det.data import build_dataset
from spp_det.files import write_atomic
from spp_det.inference.conv_maps import FeatureCache
from spp_det.jobs.eval import evaluate_checkpoint
from spp_det.jobs.train import train_job
from spp_det.models.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from spp_det.paper_stages.fit import fit_paper_stages
from spp_det.proposals import build_proposals, compute_missing
from spp_det.training.sampling import split_train_val

CONFIGS = Path(__file__).resolve().parent.parent / "configs"

PRESETS = {
    # the embedded default (frozen Lite0 on shapes; images 300-500 px), fine-tuned at the
    # five scales the multi-scale rows test with (the paper fine-tunes at all five)
    "shapes": {"train": ["model.train_scales=[240,320,400,480,576]", "model.scales=[400]"], "one": [400],
               "five": [240, 320, 400, 480, 576]},
    # the README's coco128 person recipe, fine-tuned at the paper's five scales
    "coco128": {"train": ["dataset=coco128", "model=efficientnet_lite0", "proposals=ss_fast", "train=paper",
                          "solver=frozen_short", "model.scales=[576]", "model.train_scales=[480,576,688,864,1200]",
                          "model.hidden=1024"],
                "one": [576], "five": [480, 576, 688, 864, 1200]},
    # the real photos (issue 16): the voc2012_1800_lite0 recipe (dilated Lite0, 8000 AdamW
    # iterations, flips), fine-tuned at five scales around its 480. Not yet run: its conv
    # maps at five scales hold ~36 GB and take ~50 min per trunk pass on a 2-core CPU, and
    # each of the four models trains ~95 min (fc6 is 64,000 x 1024): about 7 hours in all.
    # Its ridge keeps 2,604 examples per class (train.ridge.memory_gb: all 54,566 would
    # take 14 GB)
    "voc2012-1800": {"train": ["+experiment=voc2012_1800_lite0", "model.scales=[480]",
                               "model.train_scales=[320,400,480,576,688]"],
                     "one": [480], "five": [320, 400, 480, 576, 688]},
}
STAGES = ["train.classifier=svm", "train.bbox_reg=ridge"]


def train(name: str, overrides: list[str], out: Path) -> Path:
    """Train one model (unless ``out/name`` already holds its best.pt); returns best.pt."""
    run = out / name
    best = run / "checkpoints" / "best.pt"
    if not best.is_file():
        with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
            cfg = compose("train", overrides=overrides + ["test_at_end=false"])
        t0 = time.perf_counter()
        train_job(cfg, run)
        print(f"[{name}] trained in {time.perf_counter() - t0:.0f} s")
    return best


def refit_stages(best: Path, overrides: list[str], scales: list[int], out: Path, name: str) -> Path:
    """best.pt's fine-tuned weights with the SVMs and ridge refitted on features of
    ``scales`` (the training images of the run that wrote it), as ``out/name``'s best.pt."""
    target = out / name / "checkpoints" / "best.pt"
    if target.is_file():
        return target
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    t0 = time.perf_counter()
    ckpt = load_checkpoint(best)
    model = model_from_checkpoint(ckpt, cfg.device)
    model.scales = tuple(scales)
    full = build_dataset(cfg.dataset, "train").take(cfg.train.get("subset"))
    train_set, _ = split_train_val(full, cfg.train.val_fraction, cfg.seed)
    store, _ = build_proposals(cfg.proposals)
    cache = None if cfg.train.finetune_conv else FeatureCache(cfg.train.feature_cache, model)
    stats = fit_paper_stages(model, train_set, store, cache, cfg.train, cfg.seed, progress=True)
    ckpt["model"] = model.state_dict()
    ckpt["model_cfg"]["scales"] = list(scales)
    ckpt["stages"] = {"name": f"SVMs + ridge box regression at {scales}", "scales": list(scales), **stats}
    save_checkpoint(target, ckpt)
    print(f"[{name}] stages refitted at {scales} in {time.perf_counter() - t0:.0f} s")
    return target


def search_test_split(overrides: list[str]) -> None:
    """Selective search on the test split (cached), so that every row times only the model."""
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    store, ss = build_proposals(cfg.proposals)
    if ss is not None:
        compute_missing(store, [t.path for t in build_dataset(cfg.dataset, "test").targets], ss)


def evaluate(checkpoint: Path, out: Path, name: str, scales: list[int], classifier: str, bbox_reg: str,
             rcnn: bool = False, max_windows: int | None = None) -> dict:
    overrides = [f"checkpoint={checkpoint}", f"test.scales=[{','.join(map(str, scales))}]",
                 f"test.classifier={classifier}", f"test.bbox_reg={bbox_reg}", f"rcnn={rcnn}", "plot=false",
                 "test.precision=float32"]
    if max_windows:
        overrides.append(f"test.max_windows={max_windows}")
    run = out / "eval" / name
    if (run / "metrics.json").is_file():  # evaluated by an earlier run of this script
        m = json.loads((run / "metrics.json").read_text())
    else:
        with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
            cfg = compose("eval", overrides=overrides)
        run.mkdir(parents=True, exist_ok=True)
        m = evaluate_checkpoint(cfg, run)
    return {"mAP": m["mAP"], "AP50": m.get("stats", {}).get("AP50"), "metric": m["metric"],
            "seconds_per_image": m["seconds_per_image"], "windows_per_image": m["windows_per_image"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="shapes")
    parser.add_argument("--out", type=Path, default=None, help="default: outputs/experiments/<preset>")
    parser.add_argument("--rcnn-windows", type=int, default=200,
                        help="windows per image for the SPP vs R-CNN rows (R-CNN mode is slow)")
    args = parser.parse_args()
    p = PRESETS[args.preset]
    out = (args.out or Path("outputs/experiments") / args.preset).resolve()
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    full = train("spp_6321", p["train"] + STAGES, out)
    only6 = train("spp_6", p["train"] + ["model.levels=[6]"], out)
    no_ft = train("spp_6321_no_ft", p["train"] + ["train.classifier=svm", "solver.max_iter=0",
                                                  "train.val_every=1", "train.checkpoint_every=1"], out)
    rcnn = train("rcnn", p["train"] + ["train.rcnn=true", "train.flip=false"], out)
    one, five = p["one"], p["five"]
    full5 = refit_stages(full, p["train"] + STAGES, five, out, "spp_6321_stages5")
    search_test_split(p["train"])  # before any row: no row's s/image pays for selective search
    rows = [  # (comparison, row label, checkpoint, scales, classifier, box regression, extra)
        ("pyramid", "{6x6}, softmax, learned bb", only6, one, "softmax", "learned", {}),
        ("pyramid", "{6x6, 3x3, 2x2, 1x1}, softmax, learned bb", full, one, "softmax", "learned", {}),
        ("fc fine-tuning", "fc7 not fine-tuned, SVM", no_ft, one, "svm", "none", {}),
        ("fc fine-tuning", "ftfc7, SVM", full, one, "svm", "none", {}),
        ("classifier", "ftfc7, softmax", full, one, "softmax", "none", {}),
        ("classifier", "ftfc7, SVM", full, one, "svm", "none", {}),
        ("box regression", "ftfc7, SVM, no bb", full, one, "svm", "none", {}),
        ("box regression", "ftfc7, SVM + ridge bb (paper)", full, one, "svm", "ridge", {}),
        ("box regression", "ftfc7, SVM + learned bb", full, one, "svm", "learned", {}),
        ("box regression", "ftfc7, softmax + learned bb", full, one, "softmax", "learned", {}),
        ("scales", "1 scale, SVM", full, one, "svm", "none", {}),
        ("scales", "5 scales, SVM (fitted at 5 scales)", full5, five, "svm", "none", {}),
        ("scales", "1 scale, SVM + ridge bb", full, one, "svm", "ridge", {}),
        ("scales", "5 scales, SVM + ridge bb (fitted at 5 scales)", full5, five, "svm", "ridge", {}),
        ("SPP vs R-CNN", f"SPP-net, {args.rcnn_windows} windows/image, softmax + learned bb", full, one, "softmax",
         "learned", {"max_windows": args.rcnn_windows}),
        ("SPP vs R-CNN", f"R-CNN, heads trained on warped crops, {args.rcnn_windows} windows/image", rcnn, one,
         "softmax", "learned", {"max_windows": args.rcnn_windows, "rcnn": True}),
    ]
    results, lines = [], []
    done: dict[tuple, dict] = {}
    for comparison, label, ckpt, scales, classifier, bbox_reg, extra in rows:
        key = (str(ckpt), tuple(scales), classifier, bbox_reg, tuple(sorted(extra.items())))
        if key not in done:
            name = f"{ckpt.parent.parent.name}_{len(scales)}s_{classifier}_{bbox_reg}" + \
                "".join(f"_{k}{v}" for k, v in sorted(extra.items()))
            done[key] = evaluate(ckpt, out, name, scales, classifier, bbox_reg, **extra)
        r = done[key]
        results.append({"comparison": comparison, "row": label, "checkpoint": str(ckpt), "scales": scales,
                        "classifier": classifier, "bbox_reg": bbox_reg, **extra, **r})
        ap50 = f" | {r['AP50']:.3f}" if r.get("AP50") is not None else ""
        lines.append(f"| {comparison} | {label} | {scales} | {r['mAP']:.4f}{ap50} | {r['seconds_per_image']:.3f} |")
    coco = results[0]["metric"] == "coco"
    head = "| comparison | setting | test scales | mAP" + (" (COCO AP) | AP50" if coco else " (VOC07)") + " | s/image |"
    sep = "|---|---|---|---|" + ("---|" if coco else "") + "---|"
    table = "\n".join([head, sep] + lines) + "\n"
    write_atomic(out / "table.md", table.encode())
    write_atomic(out / "results.json", json.dumps(results, indent=1).encode())
    print(table)
    print(f"wrote {out / 'table.md'} ({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
