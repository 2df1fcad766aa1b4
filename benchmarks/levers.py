"""Issue 16's levers on the real photos, one at a time: each row is one training run of
scripts/train.py's job (``+experiment=voc2012_1800_lite0``, pinned to the baseline the
levers were measured against, ``BASELINE``, plus the row's overrides) tested at its end on
the 360 val photos, and one line of the table.

    python benchmarks/levers.py                     # every row of LEVERS (hours: the dilated rows)
    python benchmarks/levers.py --rows b16_drop0 dilated_drop0   # some rows
    python benchmarks/levers.py --rows dilated_recipe_svm_c35e4  # a STAGE_ROWS row (named only)

A row of ``STAGE_ROWS`` changes only the stages fitted after fine-tuning (SVMs): it copies
its base row's checkpoints (the base row is trained first if it has not been) and resumes
from them, so it fits and tests without fine-tuning again.

Runs live in ``--out/<row>`` (default ``outputs/voc1800``); a row whose run already holds
a ``metrics.json`` from the same configuration is reused, one stopped before its end resumes
at its last checkpoint (the configuration saved with
the run is compared with the row's; a different one is an error, never a silent mix).
Writes the rows asked for into ``levers.md`` and ``levers.json`` in ``--out``, with the CPU.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from machine import describe, machine_info, write_report  # noqa: E402

from spp_det.errors import SppDetError  # noqa: E402
from spp_det.files import write_atomic  # noqa: E402
from spp_det.jobs.train import train_job  # noqa: E402

CONFIGS = ROOT / "spp_det" / "configs"
BASE = ["+experiment=voc2012_1800_lite0"]
# every row starts from the baseline the levers were measured against (the recipe before
# the last levers went into it): tested at 480 alone, no flips, 2000 iterations,
# background drawn uniformly; a row's own overrides replace these
BASELINE = ["model.scales=[480]", "train.flip=false", "solver.max_iter=2000", "solver.steps=[1600]", "train.hard_bg_fraction=0.0",
            "train.hard_bg_iou=0.1", "test.flip=null"]
# the stride-16 block of Lite0 (112 linear channels): cheap enough to sweep
BLOCK = ["model=efficientnet_lite0", "model.hidden=1024", "model.scales=[480]", "model.train_scales=[480]",
         "model.max_size=1000"]
# the voc2012_1800_lite0 recipe's training as first measured, with 4000 iterations (tested at
# 480 alone, as every row); the recipe now trains 8000, the row dilated_recipe_8k
RECIPE = ["model.dropout=0", "train.flip=true", "solver.max_iter=4000", "solver.steps=[3200]",
          "train.hard_bg_fraction=0.5", "train.hard_bg_iou=0.3"]
# the two levers measured alone on the recipe (rows dilated_recipe_8k and
# dilated_recipe_train3scales) and together (dilated_recipe_8k_train3scales)
LONG = ["solver.max_iter=8000", "solver.steps=[6400]"]
THREE_SCALES = ["model.train_scales=[400,480,576]", "model.scales=[400,480,576]"]
# the voc2012_1800_lite0_block16 recipe's training (row b16_drop0_flip_20k)
BLOCK_RECIPE = BLOCK + ["model.dropout=0", "train.flip=true", "solver.max_iter=20000", "solver.steps=[16000]"]
# the paper's solver in place of AdamW: SGD with momentum 0.9 and weight decay 5e-4; lr
# 0.01, the rate torchvision's detection references give heads that start random (the
# paper's 1e-4 fine-tunes ImageNet fc layers), stepped to 1e-3 at 80% as every row
SGD = ["solver.name=sgd", "solver.lr=0.01", "solver.weight_decay=0.0005"]
# row -> (what it changes, overrides on top of BASE + BASELINE; the recipe's own dropout is 0)
LEVERS: dict[str, tuple[str, list[str]]] = {
    "lite0_block16_2k": ("block16, dropout 0.5, AdamW lr 3e-4, 2k its", BLOCK + ["model.dropout=0.5"]),
    "lite0_block16_6k": ("block16, dropout 0.5, 6k its", BLOCK + ["model.dropout=0.5", "solver.max_iter=6000",
                                                                "solver.steps=[4800]"]),
    "b16_lr1e3": ("block16, dropout 0.5, lr 1e-3", BLOCK + ["model.dropout=0.5", "solver.lr=0.001"]),
    "b16_drop0": ("block16, dropout 0", BLOCK + ["model.dropout=0"]),
    "b16_drop0_lr1e4": ("block16, dropout 0, lr 1e-4", BLOCK + ["model.dropout=0", "solver.lr=0.0001"]),
    "b16_drop0_6k": ("block16, dropout 0, 6k its", BLOCK + ["model.dropout=0", "solver.max_iter=6000",
                                                            "solver.steps=[4800]"]),
    "b16_drop0_flip": ("block16, dropout 0, flips", BLOCK + ["model.dropout=0", "train.flip=true"]),
    "b16_drop0_flip_20k": ("block16, dropout 0, flips, 20k its (the voc2012_1800_lite0_block16 recipe)",
                           BLOCK_RECIPE),
    # the paper's baseline on the same block and schedule: R-CNN mode, its heads trained on
    # warped-crop features (every foreground window + train.rcnn_bg_per_image background ones a photo,
    # no flips: R-CNN fine-tuned without them), tested in R-CNN mode on each photo's first 200
    # windows (a crop through the trunk each: ~60 crops/s on 2 cores, all ~1,200 would take 2 h);
    # the SPP-net row's model is scored on the same 200 with eval.py test.max_windows=200
    "b16_rcnn_20k": ("R-CNN mode on the block: heads trained on warped crops, dropout 0, no flips, 20k its, "
                     "tested on the first 200 windows",
                     BLOCK_RECIPE + ["train.rcnn=true", "train.flip=false", "test.max_windows=200"]),
    "lite0_dilated_2k": ("dilated Lite0 (1280 ch), dropout 0.5, 2k its", ["model.dropout=0.5"]),
    "dilated_drop0": ("dilated Lite0, dropout 0, 2k its (the voc2012_1800_lite0 recipe)", ["model.dropout=0"]),
    "dilated_drop0_flip_4k": ("dilated Lite0, dropout 0, flips, 4k its", ["model.dropout=0", "train.flip=true",
                                                                         "solver.max_iter=4000",
                                                                         "solver.steps=[3200]"]),
    "b16_drop0_hardbg50": ("block16, dropout 0, half the background from IoU [0.1, 0.5)",
                           BLOCK + ["model.dropout=0", "train.hard_bg_fraction=0.5"]),
    "b16_drop0_hardbg25": ("block16, dropout 0, a quarter of the background from IoU [0.1, 0.5)",
                           BLOCK + ["model.dropout=0", "train.hard_bg_fraction=0.25"]),
    "b16_drop0_hardbg75": ("block16, dropout 0, three quarters of the background from IoU [0.1, 0.5)",
                           BLOCK + ["model.dropout=0", "train.hard_bg_fraction=0.75"]),
    "b16_drop0_hardbg50_iou3": ("block16, dropout 0, half the background from IoU [0.3, 0.5)",
                                BLOCK + ["model.dropout=0", "train.hard_bg_fraction=0.5", "train.hard_bg_iou=0.3"]),
    "b16_drop0_seed1": ("block16, dropout 0, seed 1 (the noise of one run)", BLOCK + ["model.dropout=0", "seed=1"]),
    "b16_drop0_hardbg50_seed1": ("block16, dropout 0, half the background from IoU [0.1, 0.5), seed 1",
                                 BLOCK + ["model.dropout=0", "train.hard_bg_fraction=0.5", "seed=1"]),
    "dilated_drop0_hardbg50_iou3": ("dilated Lite0, dropout 0, 2k its, half the background from IoU [0.3, 0.5)",
                                    ["model.dropout=0", "train.hard_bg_fraction=0.5", "train.hard_bg_iou=0.3"]),
    "dilated_drop0_flip_4k_hardbg50_iou3": ("dilated Lite0, dropout 0, flips, 4k its, half the background from "
                                            "IoU [0.3, 0.5)",
                                            ["model.dropout=0", "train.flip=true", "solver.max_iter=4000",
                                             "solver.steps=[3200]", "train.hard_bg_fraction=0.5",
                                             "train.hard_bg_iou=0.3"]),
    "dilated_drop0_flip_4k_hardbg50": ("dilated Lite0, dropout 0, flips, 4k its, half the background from "
                                       "IoU [0.1, 0.5)",
                                       ["model.dropout=0", "train.flip=true", "solver.max_iter=4000",
                                        "solver.steps=[3200]", "train.hard_bg_fraction=0.5"]),
    "lite1_dilated_recipe": ("the same with the dilated ImageNet Lite1 (top-1 76.7 vs Lite0's 75.1)",
                             RECIPE + ["model=efficientnet_lite1_dilated"]),
    "dilated_recipe_8k": ("dilated Lite0, dropout 0, flips, half the background from IoU [0.3, 0.5), 8k its",
                          RECIPE + LONG),
    "dilated_recipe_fc2048": ("dilated Lite0, dropout 0, flips, 4k its, half the background from IoU [0.3, 0.5), "
                              "fc6/fc7 2048 wide", RECIPE + ["model.hidden=2048"]),
    "dilated_recipe_train3scales": ("dilated Lite0, dropout 0, flips, 4k its, half the background from IoU [0.3, 0.5), "
                                    "each training window pooled at one of 400/480/576 drawn at random; tested at the three "
                                    "(each window at its best)",
                                    RECIPE + THREE_SCALES),
    "dilated_recipe_8k_train3scales": ("dilated Lite0, dropout 0, flips, half the background from IoU [0.3, 0.5), "
                                       "8k its, each training window pooled at one of 400/480/576 drawn at random; "
                                       "tested at the three (the two levers of rows dilated_recipe_8k and "
                                       "dilated_recipe_train3scales together)",
                                       RECIPE + LONG + THREE_SCALES),
    "dilated_recipe_sgd": ("dilated Lite0, dropout 0, flips, 4k its, half the background from IoU [0.3, 0.5), "
                           "SGD momentum 0.9, lr 0.01, weight decay 5e-4 in place of AdamW lr 3e-4",
                           RECIPE + SGD),
    "dilated_recipe_seed1": ("dilated Lite0, dropout 0, flips, 4k its, half the background from IoU [0.3, 0.5), "
                             "seed 1 (the noise of one run on this trunk)", RECIPE + ["seed=1"]),
    "b16_recipe_sgd": ("block16, dropout 0, flips, 20k its, SGD momentum 0.9, lr 0.01, weight decay 5e-4 in place "
                       "of AdamW lr 3e-4", BLOCK_RECIPE + SGD),
    "b16_recipe_fc4096": ("block16, dropout 0, flips, 20k its, fc6/fc7 4096 wide (the paper's)",
                          BLOCK_RECIPE + ["model.hidden=4096"]),
    "lite2_dilated_flip_4k_hardbg50_iou3": ("dilated Lite2 (ImageNet top-1 77.6 vs Lite0's 75.1), dropout 0, flips, "
                                            "4k its, half the background from IoU [0.3, 0.5)",
                                            ["model=efficientnet_lite2_dilated", "model.dropout=0", "train.flip=true",
                                             "solver.max_iter=4000", "solver.steps=[3200]",
                                             "train.hard_bg_fraction=0.5", "train.hard_bg_iou=0.3"]),
}
# rows that change only the paper's stages fitted after fine-tuning (SVMs, ridge): each
# starts from the fine-tuned model of the row it names (that row trained first if it has
# not been), its checkpoints copied, so the hour of fine-tuning is not run again; the copy
# resumes at its last iteration, fits the stages on best.pt and tests. Its "training s"
# count the base row's fine-tuning too.
# row -> (what it changes, the row it starts from, overrides on top of that row's)
STAGE_ROWS: dict[str, tuple[str, str, list[str]]] = {
    # liblinear minimises C x (sum of hinge losses) + |w|^2 / 2: the loss term grows with the
    # number of training windows, so the released C = 1e-3, sized for VOC07's 5,011
    # trainval images, regularises 1,440 photos 3.5x harder; 1e-3 x 5,011 / 1,440 = 3.5e-3
    # keeps the released balance between the two terms
    "dilated_recipe_svm_c35e4": ("the recipe's model (row dilated_drop0_flip_4k_hardbg50_iou3) scored by SVMs on "
                                 "fc7, C 3.5e-3 (the released 1e-3 x 5,011 / 1,440 images)",
                                 "dilated_drop0_flip_4k_hardbg50_iou3", ["train.classifier=svm", "train.svm.C=0.0035"]),
    "dilated_recipe_svm_c1e3": ("the recipe's model (row dilated_drop0_flip_4k_hardbg50_iou3) scored by SVMs on "
                                "fc7, the released C 1e-3", "dilated_drop0_flip_4k_hardbg50_iou3",
                                ["train.classifier=svm", "train.svm.C=0.001"]),
    # the same pair on the block16 recipe's model (cheap: fc7 of 112-channel pool5 windows)
    "b16_recipe_svm_c35e4": ("the block16 recipe's model (row b16_drop0_flip_20k) scored by SVMs on fc7, C 3.5e-3 "
                             "(the released 1e-3 x 5,011 / 1,440 images)", "b16_drop0_flip_20k",
                             ["train.classifier=svm", "train.svm.C=0.0035"]),
    "b16_recipe_svm_c1e3": ("the block16 recipe's model (row b16_drop0_flip_20k) scored by SVMs on fc7, the "
                            "released C 1e-3", "b16_drop0_flip_20k", ["train.classifier=svm", "train.svm.C=0.001"]),
}

# rows that fine-tune further a row's trained model (train.init_weights = its best.pt; the
# base row trained first if it has not been): the heads already fit the frozen features, so
# the trunk's last layers can be tuned with them for a few thousand iterations, end to end
# on 2 photos per mini-batch (Fast R-CNN's regime). "training s" count this stage only.
# row -> (what it changes, the row it starts from, overrides on top of that row's)
TAIL = ["train.finetune_conv=true", "train.images_per_batch=2", "train.pooled_batches=false",
        "model.trunk.trainable_layers=4", "solver.warmup_iters=100"]
INIT_ROWS: dict[str, tuple[str, str, list[str]]] = {
    "dilated_recipe_tail2k": ("the recipe's model (row dilated_drop0_flip_4k_hardbg50_iou3), then Lite0's dilated "
                              "stages 5-6 + head conv fine-tuned with fc6/fc7 and the heads end to end, 2 photos x 64 "
                              "windows, AdamW lr 1e-4 (trunk 3e-5), 2k its",
                              "dilated_drop0_flip_4k_hardbg50_iou3",
                              TAIL + ["solver.lr=0.0001", "solver.trunk_lr_mult=0.3", "solver.max_iter=2000",
                                      "solver.steps=[1600]"]),
    "dilated_recipe_tail2k_trunk3e4": ("the same with the trunk's layers at lr 3e-4 (the row above moved them by "
                                       "0.4-1.4% of their norm, the heads by 20-38%)",
                                       "dilated_drop0_flip_4k_hardbg50_iou3",
                                       TAIL + ["solver.lr=0.0001", "solver.trunk_lr_mult=3.0", "solver.max_iter=2000",
                                               "solver.steps=[1600]"]),
}


def init_row_overrides(name: str, out: Path) -> list[str]:
    """An INIT_ROWS row's overrides: its base row's, its own, and the base row's best.pt."""
    _, base, own = INIT_ROWS[name]
    return LEVERS[base][1] + own + [f"train.init_weights={out / base / 'checkpoints' / 'best.pt'}"]


def stage_row_overrides(name: str) -> list[str]:
    """A STAGE_ROWS row's overrides: its base row's, then its own."""
    _, base, own = STAGE_ROWS[name]
    return LEVERS[base][1] + own


def row_overrides(overrides: list[str]) -> list[str]:
    """BASE, then BASELINE with the row's own values in place of its keys."""
    merged = dict(o.split("=", 1) for o in BASELINE)
    merged.update(o.split("=", 1) for o in overrides)
    return BASE + [f"{k}={v}" for k, v in merged.items()]


def row_config(overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return compose("train", overrides=row_overrides(overrides))


def saved_config(run: Path):
    """The configuration a run was made with: Hydra's record (scripts/train.py), or this
    script's (the composed config, beside the overrides)."""
    for path in (run / ".hydra" / "config.yaml", run / "levers_config.yaml"):
        if path.is_file():
            return OmegaConf.load(path)
    return None


def known_keys(now: dict, before: dict, default: dict | None) -> dict:
    """``now`` without the keys ``before`` lacks where ``now`` holds their ``default``, at
    any depth: an option added after a run was made (e.g. ``train.ridge.memory_gb``) keeps
    the behaviour before it at its default, so the run still is its row; a row that sets it
    to anything else is another configuration."""
    out = {}
    for k, v in now.items():
        d = default.get(k) if isinstance(default, dict) else None
        if k not in before:
            if not (isinstance(default, dict) and k in default and d == v):
                out[k] = v
        elif isinstance(v, dict) and isinstance(before[k], dict):
            out[k] = known_keys(v, before[k], d)
        else:
            out[k] = v
    return out


def run_row(name: str, overrides: list[str], out: Path, start_from: str | None = None,
            init_from: str | None = None) -> dict:
    """The row's metrics: read from its run when it has them, else trained (resuming at the
    run's last checkpoint when an earlier run of the same row was stopped) and tested.
    ``start_from``: a row whose checkpoints the run starts from (STAGE_ROWS); ``init_from``:
    a row whose best.pt weights it starts from (INIT_ROWS), trained first if need be."""
    run = out / name
    cfg = row_config(overrides)
    # a dilated row trains for an hour or more on 2 cores: a stopped one picks up at its
    # last checkpoint (train.checkpoint_every) instead of starting over
    cfg.resume = "auto"
    metrics = run / "metrics.json"
    before = saved_config(run)
    if metrics.is_file() and before is None:
        raise SppDetError(f"{run}: metrics.json without the configuration it was made with")
    # the recipe's name and the test node (older runs predate both; no row changes the test
    # settings, which metrics.json records anyway) and whether it resumed are not the
    # model's configuration
    strip = lambda c: {k: v for k, v in OmegaConf.to_container(c).items()  # noqa: E731
                       if k not in ("recipe", "test", "resume")}
    if before is None and (run / "checkpoints" / "last.pt").is_file():
        raise SppDetError(f"{run}: a checkpoint without the configuration it was made with: it cannot be resumed as "
                          f"row '{name}'; remove it or choose another --out")
    if before is not None and strip(before) != known_keys(strip(cfg), strip(before), strip(row_config([]))):
        raise SppDetError(f"{run}: made with another configuration than row '{name}' ({row_overrides(overrides)}); "
                          f"remove it or choose another --out")
    if metrics.is_file():
        return json.loads(metrics.read_text())
    run.mkdir(parents=True, exist_ok=True)
    write_atomic(run / "levers_overrides.json", json.dumps(row_overrides(overrides)).encode())
    write_atomic(run / "levers_config.yaml", OmegaConf.to_yaml(cfg).encode())
    if init_from is not None and not (out / init_from / "metrics.json").is_file():
        run_row(init_from, LEVERS[init_from][1], out)
    if start_from is not None and not (run / "checkpoints" / "last.pt").is_file():
        run_row(start_from, LEVERS[start_from][1], out)
        missing = [f for f in ("best.pt", "last.pt") if not (out / start_from / "checkpoints" / f).is_file()]
        if missing:
            raise SppDetError(f"{out / start_from}: row '{name}' starts from this run's checkpoints, but it has no "
                              f"{' or '.join(missing)}: remove its metrics.json to train it again, or choose another --out")
        (run / "checkpoints").mkdir(exist_ok=True)
        for f in ("best.pt", "last.pt"):  # best.pt before last.pt: last.pt is what marks the copy done
            write_atomic(run / "checkpoints" / f, (out / start_from / "checkpoints" / f).read_bytes())
    train_job(cfg, run)
    return json.loads(metrics.read_text())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", nargs="*", default=list(LEVERS), choices=[*LEVERS, *STAGE_ROWS, *INIT_ROWS])
    ap.add_argument("--out", type=Path, default=Path("outputs/voc1800"))
    args = ap.parse_args()
    info = machine_info()
    rows = []
    for name in args.rows:
        if name in STAGE_ROWS:
            what, base, _ = STAGE_ROWS[name]
            overrides = stage_row_overrides(name)
            m = run_row(name, overrides, args.out, start_from=base)
        elif name in INIT_ROWS:
            what, base, _ = INIT_ROWS[name]
            overrides = init_row_overrides(name, args.out)
            m = run_row(name, overrides, args.out, init_from=base)
        else:
            what, overrides = LEVERS[name]
            m = run_row(name, overrides, args.out)
        rows.append({"row": name, "setting": what, "overrides": overrides, "mAP": m["mAP"], "AP": m["AP"],
                     "train_s": m.get("train_seconds"), "test_s_per_image": m.get("seconds_per_image")})
    classes = list(rows[0]["AP"])
    lines = [f"VOC07 mAP on voc2012-1800 val (360 photos); {describe(info)}", "",
             "| row | setting | " + " | ".join(classes) + " | mAP | training s | test s/photo |",
             "|---" * (len(classes) + 5) + "|"]
    for r in rows:
        aps = " | ".join(f"{r['AP'][c]:.3f}" for c in classes)
        train_s = "-" if r["train_s"] is None else f"{r['train_s']:.0f}"  # None: resumed from an old checkpoint
        lines.append(f"| {r['row']} | {r['setting']} | {aps} | {r['mAP']:.3f} | {train_s} | "
                     f"{r['test_s_per_image']:.2f} |")
    write_report(args.out, "levers", lines, {"rows": rows})


if __name__ == "__main__":
    main()
