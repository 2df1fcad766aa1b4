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
