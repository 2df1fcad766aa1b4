import random

import pytest
import torch

from spp_det.training.crop_features import keep_rcnn_windows
from spp_det.training.sampling import WindowSampler, label_windows
from spp_det.training.trainer import Trainer
from spp_det.errors import SppDetError
from spp_det.models import RCNN

from test_train import PAPER, make_cfg

RCNN_TRAIN = (*PAPER, "train.rcnn=true", "train.flip=false", "train.rcnn_bg_per_image=6")


def test_keep_rcnn_windows_keeps_every_foreground_and_a_fixed_background_sample():
    windows = torch.tensor([[0.0, 0, 10, 10]] * 5 + [[0.0, 0, 10, 4]] * 20)
    e = label_windows(3, 100, windows, torch.tensor([[0.0, 0, 10, 10]]), torch.tensor([1]), bg_iou=(0.0, 0.5))
    a = keep_rcnn_windows([e], 6, seed=0)[0]
    assert a.fg.tolist() == [0, 1, 2, 3, 4] and len(a.bg) == 6 and int((a.labels == -1).sum()) == 14
    b = label_windows(3, 100, windows, torch.tensor([[0.0, 0, 10, 10]]), torch.tensor([1]), bg_iou=(0.0, 0.5))
    assert keep_rcnn_windows([b], 6, seed=0)[0].bg.tolist() == a.bg.tolist()  # seeded


def test_rcnn_training_learns_on_the_crop_features_inference_uses(tmp_path, shapes_root):
    trainer = Trainer(make_cfg(tmp_path, shapes_root, *RCNN_TRAIN, "solver.max_iter=25", "solver.lr=0.003"),
                      tmp_path / "run")
    entries = trainer.prepare_windows(trainer.train_set)
    assert all(len(e.bg) <= 6 for e in entries)
    sampler = WindowSampler(entries, 32, 2, 0.25, pooled=True)
    batches = trainer.batches(trainer.train_set, sampler.entries)
    # each cached vector is what R-CNN mode computes for that window at test time
    e = next(e for e in entries if len(e.fg))
    j = int(e.fg[0])
    image = trainer.train_set[e.index][0]
    rcnn = RCNN(trainer.model).eval()
    with torch.no_grad():
        direct = rcnn.pooled(rcnn.warp(image, e.windows[j:j + 1]))[0]
    position, vectors = batches.features[e.index]
    assert torch.allclose(vectors[position[j]].float(), direct, rtol=1e-2, atol=1e-2)

    def loss_on(k=4):
        trainer.model.eval()
        with torch.no_grad():
            total = sum(float(sum(trainer.losses(trainer.model, batches[sampler.sample(random.Random(i))])))
                        for i in range(k))
        trainer.model.train()
        return total

    before = loss_on()
    trainer.fit()
    assert loss_on() < 0.8 * before


def test_rcnn_training_refuses_what_it_cannot_do(tmp_path, shapes_root):
    with pytest.raises(SppDetError, match="needs a frozen trunk"):
        Trainer(make_cfg(tmp_path, shapes_root, *PAPER, "train.rcnn=true"), tmp_path / "a")  # flips on
    with pytest.raises(SppDetError, match="train.classifier=softmax"):
        Trainer(make_cfg(tmp_path, shapes_root, *RCNN_TRAIN, "train.classifier=svm"), tmp_path / "b")
