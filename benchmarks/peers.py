"""SPP-net beside the detector a user would pick instead, on the same photos and trunk.

    python benchmarks/peers.py --name voc2012_1800 --budget-s 2700 \
        --spp outputs/voc1800/recipe/metrics.json -- +experiment=voc2012_1800_lite0

Trains torchvision's ``FasterRCNN`` (RPN + RoIAlign 7x7 + two 1024-wide fc layers, its
own losses and samplers) on the frozen ImageNet trunk that the training config names
(``model.trunk``), on the config's training split, at its training scale and
``max_size``, with horizontal flips, SGD (lr 0.01, momentum 0.9, weight decay 1e-4, 2
photos per iteration, x0.1 after 80% of the budget) for ``--budget-s`` seconds of wall
clock -- give it what the SPP-net recipe spent on conv maps and training. It is then run
on the config's test split with the same test thresholds (``test.score_thresh``,
``test.nms_thresh``, ``test.max_per_image``) and scored by this project's evaluator.
Each ``--spp`` metrics.json (a run of this project, from train.py or eval.py: SPP-net, or
R-CNN mode trained on warped crops with ``train.rcnn=true``) adds a row.
``--budget-s 0`` trains no Faster R-CNN: the table of the given runs alone (e.g. SPP-net
against R-CNN mode). Prints the table and writes ``benchmarks/results/peers_<name>.json``
with the CPU.
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from torch import nn
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.ops import MultiScaleRoIAlign
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from machine import describe, machine_info  # noqa: E402

from spp_det.data import build_dataset  # noqa: E402
from spp_det.evaluation.evaluate import evaluate  # noqa: E402
from spp_det.files import write_atomic  # noqa: E402
from spp_det.models.backbones import build_trunk  # noqa: E402


class FrozenBody(nn.Module):
    """The project's trunk as a torchvision detection backbone: a single feature map
    (stride 16) with ``out_channels``; frozen, so run without autograd."""

    def __init__(self, trunk: nn.Module) -> None:
        super().__init__()
        self.trunk = trunk.freeze(freeze_bn=True).eval()
        self.out_channels = trunk.out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.trunk(x)


def faster_rcnn(cfg, num_classes: int) -> FasterRCNN:
    """Faster R-CNN on the config's frozen trunk; input normalisation is the trunk's own."""
    trunk = build_trunk(cfg.model.trunk.name, pretrained=cfg.model.trunk.pretrained,
                        weights_path=cfg.model.trunk.weights_path)
    anchors = AnchorGenerator(sizes=((32, 64, 128, 256, 512),), aspect_ratios=((0.5, 1.0, 2.0),))
    return FasterRCNN(FrozenBody(trunk), num_classes=num_classes + 1,
                      min_size=max(cfg.model.train_scales), max_size=cfg.model.max_size,
                      image_mean=trunk.mean.flatten().tolist(), image_std=trunk.std.flatten().tolist(),
                      rpn_anchor_generator=anchors,
                      box_roi_pool=MultiScaleRoIAlign(["0"], output_size=7, sampling_ratio=2),
                      box_score_thresh=cfg.test.score_thresh, box_nms_thresh=cfg.test.nms_thresh,
                      box_detections_per_img=cfg.test.max_per_image)


def to_input(image, target, flip: bool) -> tuple[torch.Tensor, dict]:
    """(H, W, 3) uint8 RGB + Target -> float (3, H, W) in [0, 1] and torchvision's target
    dict (ignored boxes left out, as SPP-net's training leaves them out)."""
    x = torch.from_numpy(image).permute(2, 0, 1).float() / 255.0
    keep = ~target.ignore
    boxes, labels = target.boxes[keep].clone(), target.labels[keep]
    if flip:
        x = x.flip(-1)
        boxes[:, [0, 2]] = target.width - boxes[:, [2, 0]]
    return x, {"boxes": boxes.reshape(-1, 4), "labels": labels}


def train(model: FasterRCNN, dataset, budget_s: float, seed: int) -> dict:
    """SGD for ``budget_s`` seconds of wall clock, 2 photos per iteration."""
    torch.manual_seed(seed)
    rng = random.Random(seed)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=0.01, momentum=0.9, weight_decay=1e-4)
    model.train()
    order: list[int] = []
    t0 = time.perf_counter()
    it, dropped = 0, False
    bar = tqdm(desc="faster r-cnn", unit="it")
    while (elapsed := time.perf_counter() - t0) < budget_s:
        if not dropped and elapsed > 0.8 * budget_s:
            for g in opt.param_groups:
                g["lr"] *= 0.1
            dropped = True
        warm = min(1.0, (it + 1) / 100)  # linear warm-up over 100 iterations
        for g in opt.param_groups:
            g["lr"] = (0.001 if dropped else 0.01) * warm
        if len(order) < 2:
            order = list(range(len(dataset)))
            rng.shuffle(order)
        batch = [to_input(*dataset[order.pop()], flip=rng.random() < 0.5) for _ in range(2)]
        losses = model([b[0] for b in batch], [b[1] for b in batch])
        loss = sum(losses.values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        it += 1
        bar.update()
        bar.set_postfix(loss=f"{loss.item():.3f}")
    bar.close()
    return {"iterations": it, "train_s": time.perf_counter() - t0}


@torch.no_grad()
def test(model: FasterRCNN, dataset) -> tuple[list[dict], float]:
    """Detections aligned with ``dataset.targets`` and the seconds per photo (decode included)."""
    model.eval()
    out = []
    t0 = time.perf_counter()
    for i in tqdm(range(len(dataset)), desc="test"):
        image, target = dataset[i]
        det = model([to_input(image, target, flip=False)[0]])[0]
        out.append({"boxes": det["boxes"], "scores": det["scores"], "labels": det["labels"]})
    return out, (time.perf_counter() - t0) / len(dataset)


def spp_row(path: Path) -> dict:
    """A row from one of this project's runs' metrics.json (train.py or eval.py): SPP-net,
    or R-CNN mode (``train.rcnn=true`` or ``eval.py rcnn=true``: warped crops, the paper's
    baseline), named by the mode its metrics record."""
    m = json.loads(path.read_text())
    mode = "R-CNN mode" if m.get("mode") == "rcnn" else "SPP-net"
    windows = f", first {m['max_windows']} windows" if m.get("max_windows") else ""
    return {"detector": f"{mode} ({path.parent.name}{windows})", "mAP": m["mAP"], "AP": m["AP"],
            "train_s": m.get("train_seconds"), "test_s_per_image": m.get("seconds_per_image"),
            "source": str(path)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--name", required=True)
    ap.add_argument("--budget-s", type=float, required=True, help="Faster R-CNN's training wall clock (0: no Faster R-CNN row)")
    ap.add_argument("--spp", type=Path, nargs="*", default=[], help="metrics.json files of this project's runs (rows)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("overrides", nargs="*", help="train.py overrides: the data set and trunk")
    args = ap.parse_args()
    with initialize_config_dir(config_dir=str(ROOT / "spp_det" / "configs"), version_base="1.3"):
        cfg = compose("train", overrides=args.overrides)
    info = machine_info()
    rows = []
    if args.budget_s > 0:  # 0: only the runs given (no Faster R-CNN trained)
        train_set, test_set = build_dataset(cfg.dataset, "train"), build_dataset(cfg.dataset, "test")
        model = faster_rcnn(cfg, len(train_set.classes))
        fit = train(model, train_set, args.budget_s, args.seed)
        detections, s_per_image = test(model, test_set)
        metrics, _ = evaluate(test_set, detections, cfg.dataset.metric)
        rows.append({"detector": f"Faster R-CNN (torchvision), frozen {cfg.model.trunk.name}", "mAP": metrics["mAP"],
                     "AP": metrics["AP"], "train_s": fit["train_s"], "iterations": fit["iterations"],
                     "test_s_per_image": s_per_image})
    rows += [spp_row(p) for p in args.spp]
    if not rows:
        raise SystemExit("error: nothing to compare: give --budget-s > 0 (Faster R-CNN) or --spp metrics.json files")
    result = {"name": args.name, "machine": info, "overrides": args.overrides, "metric": cfg.dataset.metric,
              "budget_s": args.budget_s, "rows": rows}
    classes = list(rows[0]["AP"])
    print(f"\n{describe(info)}\n")
    print("| detector | " + " | ".join(classes) + " | mAP | training s | test s/photo |")
    print("|---" * (len(classes) + 4) + "|")
    for r in rows:
        aps = " | ".join("-" if r["AP"].get(c) is None else f"{r['AP'][c]:.3f}" for c in classes)
        train_s = "-" if r["train_s"] is None else f"{r['train_s']:.0f}"
        test_s = "-" if r["test_s_per_image"] is None else f"{r['test_s_per_image']:.2f}"
        print(f"| {r['detector']} | {aps} | {r['mAP']:.3f} | {train_s} | {test_s} |")
    path = ROOT / "benchmarks" / "results" / f"peers_{args.name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps(result, indent=2).encode())


if __name__ == "__main__":
    main()
