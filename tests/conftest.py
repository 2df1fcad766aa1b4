"""Shared fixtures: paths to the real photos in ../shared/data and a tiny shapes set."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SPP_DET_SHARED_DATA", ROOT.parent / "shared" / "data"))
COCO128 = SHARED / "coco128"
COCO128_VOC = SHARED / "coco128-voc" / "VOC2007"

torch.set_num_threads(2)


def need_shared(path: Path) -> None:
    if not path.exists():
        pytest.skip(f"{path} is absent: the real photos live beside the project only on the "
                    f"developers' machines and CI (set SPP_DET_SHARED_DATA to point elsewhere)")


@pytest.fixture(scope="session")
def shapes_root(tmp_path_factory) -> Path:
    """A small shapes set (8 trainval, 6 test images) generated once per test session."""
    from spp_det.data import generate_shapes
    root = tmp_path_factory.mktemp("shapes")
    generate_shapes(root, num_trainval=8, num_test=6, seed=0)
    return root


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory, shapes_root) -> Path:
    """A checkpoint from a few training iterations on the tiny shapes set."""
    from hydra import compose, initialize_config_dir

    from spp_det.training.trainer import Trainer
    tmp = tmp_path_factory.mktemp("tiny_run")
    overrides = ["model=zf5_small", "train=shapes_e2e", "solver=shapes_e2e", "train.vflip=false",
                 f"dataset.root={shapes_root}", "dataset.generate.num_trainval=8", "dataset.generate.num_test=6",
                 "model.scales=[160]", "model.train_scales=[160]", "model.hidden=32", "model.max_size=300",
                 "proposals.max_size=200", f"proposals.cache_dir={tmp / 'proposals'}", "train.val_fraction=0",
                 "train.batch_windows=32", "workers=1", "test_at_end=false", "solver.max_iter=5",
                 "solver.warmup_iters=0", "train.loader_workers=0"]
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    Trainer(cfg, tmp).fit()
    return tmp / "checkpoints" / "last.pt"
