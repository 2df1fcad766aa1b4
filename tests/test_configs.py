"""The configs a user types: whole recipes (+experiment=...), and one override name per
setting across train.py, eval.py and detect.py."""
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from spp_det.jobs.eval import dataset_config
from spp_det.jobs.train import describe_recipe

CONFIGS = Path(__file__).resolve().parent.parent / "configs"

# what each recipe must bundle (the README's recipe table says the same):
# data set, trunk, pyramid, fc6/fc7 init, train scales, flips, solver, iterations, device
RECIPES = {
    "shapes": ("shapes", "efficientnet_lite0", [6, 3, 2, 1], "random", [320, 400, 480], True, "adamw", 2000, "cpu"),
    "voc2012_1800_lite0": ("voc2012_1800", "efficientnet_lite0_dilated", [6, 3, 2, 1], "random", [480], True,
                           "adamw", 8000, "cpu"),
    "voc2012_1800_lite0_block16": ("voc2012_1800", "efficientnet_lite0", [6, 3, 2, 1], "random", [480], True,
                                   "adamw", 20000, "cpu"),
    "voc07_alexnet": ("voc07", "alexnet", [6, 3, 2, 1], "imagenet", [480, 576, 688, 864, 1200], True, "sgd",
                      300000, "cuda"),
    "voc07_vgg16": ("voc07", "vgg16", [7, 3, 2, 1], "imagenet", [480, 576, 688, 864, 1200], True, "sgd",
                    300000, "cuda"),
    "voc0712_alexnet": ("voc0712", "alexnet", [6, 3, 2, 1], "imagenet", [480, 576, 688, 864, 1200], True, "sgd",
                        300000, "cuda"),
    "voc0712_vgg16": ("voc0712", "vgg16", [7, 3, 2, 1], "imagenet", [480, 576, 688, 864, 1200], True, "sgd",
                      300000, "cuda"),
    "coco_vgg16": ("coco", "vgg16", [7, 3, 2, 1], "imagenet", [688], True, "sgd", 300000, "cuda"),
}


def _compose(name, *overrides):
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return compose(name, overrides=list(overrides))


def test_every_recipe_is_listed_and_composes_what_it_says():
    assert sorted(p.stem for p in (CONFIGS / "experiment").glob("*.yaml")) == sorted(RECIPES)
    for name, expected in RECIPES.items():
        cfg = _compose("train", f"+experiment={name}")
        got = (cfg.dataset.name, cfg.model.trunk.name, list(cfg.model.levels), cfg.model.fc_init,
               list(cfg.model.train_scales), cfg.train.flip, cfg.solver.name, cfg.solver.max_iter, cfg.device)
        assert (cfg.recipe, got) == (name, expected)
        # the paper's frozen-trunk recipe everywhere: conv maps cached, fc layers trained
        assert cfg.train.finetune_conv is False and cfg.train.rcnn is False
    # the ImageNet fc6/fc7 of VGG16 read a 7x7 level; the paper's SGD is for ImageNet-initialised fc
    assert _compose("train", "+experiment=voc07_vgg16").solver.lr == 1e-4
    assert _compose("train", "+experiment=voc2012_1800_lite0").solver.lr == 3e-4  # random fc: AdamW
    # the settings its 0.616 was measured with (README): half the background from IoU
    # [0.3, 0.5), trained at 480 and tested at three scales
    voc = _compose("train", "+experiment=voc2012_1800_lite0")
    assert (voc.train.hard_bg_fraction, voc.train.hard_bg_iou, list(voc.model.scales)) == (0.5, 0.3, [400, 480, 576])
    # detect.py's fast proposals where a recipe measured them (voc2012-1800: 200 px within
    # 0.01 mAP), none elsewhere (shapes loses 0.09 mAP at 200 px: it keeps its training ones)
    for name in RECIPES:
        cfg = _compose("train", f"+experiment={name}")
        fast = cfg.dataset.name.startswith("voc2012_1800")
        assert (cfg.detect_proposals.max_size if fast else cfg.detect_proposals) == (200 if fast else None), name
        # detect.py's scales: the dilated recipe detects at 480 alone (0.019 mAP below its three test
        # scales on the Xeon, twice the photos/s); every other recipe at its test scales
        assert cfg.detect_scales == ([480] if name == "voc2012_1800_lite0" else None), name
    # random fc6/fc7 on a frozen trunk underfit with the paper's dropout 0.5 (issue 16: 0.243
    # vs 0.430 on voc2012-1800); ImageNet-initialised ones keep it
    for name in RECIPES:
        cfg = _compose("train", f"+experiment={name}")
        if cfg.dataset.name.startswith("voc2012_1800"):
            assert cfg.model.dropout == 0.0, name
        elif cfg.model.fc_init == "imagenet":
            assert cfg.model.dropout == 0.5, name


def test_a_real_data_set_without_a_recipe_is_told_so():
    warned = describe_recipe(_compose("train", "dataset=voc07"))
    assert len(warned) == 2 and warned[1].startswith("warning: voc07 without a recipe")
    # the warning names every recipe there is, and only those
    named = warned[1].split("configs/experiment/: ")[1].rstrip(")").split(", ")
    assert sorted(named) == sorted(n for n in RECIPES if n != "shapes")
    assert len(describe_recipe(_compose("train", "+experiment=voc07_alexnet"))) == 1
    assert len(describe_recipe(_compose("train"))) == 1  # the demo on its own data: no warning
    assert "test scales [576]" in describe_recipe(_compose("train", "test.scales=[576]"))[0]


TEST_KEYS = ["scales", "score_thresh", "nms_thresh", "max_per_image", "max_windows", "flip", "box_vote", "precision",
             "svd_rank", "classifier", "bbox_reg"]


@pytest.mark.parametrize("script,required", [("train", []), ("eval", []),
                                             ("detect", ["checkpoint=c", "input=i", "output=o"])])
def test_one_override_name_per_setting(script, required):
    """The same dotted names in every script: test.<key> for inference settings,
    dataset.root for the data, loader_workers for the image loader."""
    overrides = [*required, "test.scales=[480,576]", "test.classifier=svm", "test.bbox_reg=ridge",
                 "test.precision=bfloat16", "test.svd_rank=[64,32]", "test.flip=true"]
    if script != "detect":
        overrides.append("dataset.root=/elsewhere")
    if script != "train":
        overrides.append("loader_workers=1")
    cfg = _compose(script, *overrides)
    assert sorted(cfg.test) == sorted(TEST_KEYS)
    assert (list(cfg.test.scales), cfg.test.classifier, cfg.test.bbox_reg, cfg.test.precision,
            list(cfg.test.svd_rank), cfg.test.flip) == ([480, 576], "svm", "ridge", "bfloat16", [64, 32], True)
    if script != "detect":
        assert cfg.dataset.root == "/elsewhere"


def test_eval_moves_the_checkpoints_data_set_with_dataset_root():
    ckpt = {"classes": ["cat", "dog"],
            "dataset_cfg": {"kind": "voc", "name": "voc07", "root": "data/VOCdevkit", "classes": None,
                            "metric": "voc07", "splits": {"test": [{"dir": "VOC2007", "split": "test"}]}}}
    node = dataset_config(_compose("eval", "checkpoint=c.pt", "dataset.root=/mnt/voc"), ckpt)
    assert (node.name, node.root, list(node.classes), node.splits.test[0].dir) == ("voc07", "/mnt/voc",
                                                                                ["cat", "dog"], "VOC2007")
    # no root given: the checkpoint's own
    assert dataset_config(_compose("eval", "checkpoint=c.pt"), ckpt).root == "data/VOCdevkit"
    # another data set by name replaces the checkpoint's whole node
    assert dataset_config(_compose("eval", "checkpoint=c.pt", "dataset=coco"), ckpt).name == "coco"


def test_own_data_on_the_command_line_keeps_the_recipe():
    """The README's own-data command: a recipe, with the data set given key by key."""
    cfg = _compose("train", "+experiment=voc2012_1800_lite0", "dataset=voc07", "dataset.name=mine",
                   "dataset.root=/data/mine", "dataset.classes=[scratch,dent]",
                   "dataset.splits.train=[{dir: part1, split: train}]", "dataset.splits.test=[{dir: part1, split: test}]")
    assert (cfg.dataset.name, cfg.dataset.root, list(cfg.dataset.classes), cfg.dataset.splits.train[0].dir) == \
        ("mine", "/data/mine", ["scratch", "dent"], "part1")
    assert (cfg.recipe, cfg.model.trunk.name) == ("voc2012_1800_lite0", "efficientnet_lite0_dilated")
