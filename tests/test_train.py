import math
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from hydra import compose, initialize_config_dir

from spp_det.engine.train import Trainer, WindowSampler, detection_loss, label_windows

ROOT = Path(__file__).resolve().parents[1]


def make_cfg(tmp_path, shapes_root, *extra):
    overrides = [
        f"dataset.root={shapes_root}", "dataset.generate.num_trainval=8", "dataset.generate.num_test=6",
        "model.scales=[160]", "model.train_scales=[128,160]", "model.hidden=64", "model.max_size=300",
        "proposals.max_size=200", f"proposals.cache_dir={tmp_path.parent / 'proposals'}",
        f"train.feature_cache={tmp_path / 'features'}", "train.val_fraction=0.25", "train.val_map_images=2",
        "train.val_batches=1", "train.batch_windows=32", "train.images_per_batch=2", "train.log_every=1",
        "train.checkpoint_every=3", "train.val_every=1000", "workers=1", "test_at_end=false",
        "solver.lr=0.001", "solver.warmup_iters=0", "solver.steps=[1000]", *extra]
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        return compose("train", overrides=overrides)


def test_label_windows_hand_case():
    gt = torch.tensor([[0.0, 0, 10, 10], [20, 20, 40, 40]])
    windows = torch.tensor([[0.0, 0, 10, 10],    # IoU 1 with gt0 -> class 2
                            [0, 0, 10, 5],       # IoU .5 -> fg
                            [0, 0, 10, 4],       # IoU .4 -> bg
                            [20, 20, 30, 22],    # IoU 20/400 = .05 -> neither
                            [100, 100, 110, 110]])  # IoU 0 -> neither
    e = label_windows(0, 200, windows, gt, torch.tensor([2, 1]))
    assert e.labels.tolist() == [2, 2, 0, -1, -1]
    assert e.fg.tolist() == [0, 1] and e.bg.tolist() == [2]


def test_sampler_fraction():
    import random
    e = label_windows(0, 100, torch.tensor([[0.0, 0, 10, 10]] * 10 + [[0.0, 0, 10, 4]] * 50),
                      torch.tensor([[0.0, 0, 10, 10]]), torch.tensor([1]))
    s = WindowSampler([e], batch_windows=32, images_per_batch=2, fg_fraction=0.25, rng=random.Random(0))
    batch = s.sample()
    assert len(batch) == 2
    for entry, sel in batch:
        assert len(sel) == 16 and int((entry.labels[sel] > 0).sum()) == 4  # 25% of 16
        assert len(set(sel.tolist())) == 16  # without replacement


def test_detection_loss_hand_values():
    logits = torch.zeros(4, 3)
    deltas = torch.zeros(4, 8)
    deltas[0, 4:8] = torch.tensor([1.0, 0, 0, 3])  # class 2's deltas of window 0
    labels = torch.tensor([2, 0, 0, 1])
    targets = torch.zeros(4, 4)
    cls, box = detection_loss(logits, deltas, labels, targets)
    assert cls.item() == pytest.approx(math.log(3))
    # smooth-L1 (beta 1): 0.5 * 1^2 + (3 - 0.5) = 3.0, summed over fg, divided by 4 windows
    assert box.item() == pytest.approx(3.0 / 4)


def fixed_batch_loss(trainer):
    import random
    trainer.rng = random.Random(7)
    entries = trainer.prepare_windows(trainer.train_set)
    sampler = WindowSampler(entries, 64, 4, 0.25, random.Random(3))
    total = 0.0
    trainer.model.eval()
    with torch.no_grad():
        for _ in range(3):
            inputs, boxes, index, labels, targets = trainer.batch(trainer.train_set, sampler.sample())
            cls, box = detection_loss(*trainer.model(inputs, boxes, index), labels, targets)
            total += float(cls + box)
    trainer.model.train()
    return total


def test_training_lowers_the_loss(tmp_path, shapes_root):
    cfg = make_cfg(tmp_path, shapes_root, "solver.max_iter=30")
    trainer = Trainer(cfg, tmp_path / "run")
    before = fixed_batch_loss(trainer)
    trainer.fit()
    after = fixed_batch_loss(trainer)
    assert after < 0.8 * before, (before, after)
    assert (tmp_path / "run" / "checkpoints" / "last.pt").is_file()
    assert (tmp_path / "run" / "checkpoints" / "best.pt").is_file()


def test_resume_gives_identical_weights_and_features_are_reused(tmp_path, shapes_root):
    full = Trainer(make_cfg(tmp_path / "a", shapes_root, "train=paper", "train.allow_random_frozen_trunk=true", "solver.max_iter=6"), tmp_path / "a")
    full.fit()
    assert full.features.computed > 0
    first = Trainer(make_cfg(tmp_path / "b", shapes_root, "train=paper", "train.allow_random_frozen_trunk=true", "solver.max_iter=3"), tmp_path / "b")
    first.fit()
    resumed = Trainer(make_cfg(tmp_path / "b", shapes_root, "train=paper", "train.allow_random_frozen_trunk=true", "solver.max_iter=6", "resume=true"),
                      tmp_path / "b")
    resumed.fit()
    assert resumed.iteration == 6
    for (k, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), k
    # the second run over the same images reads every conv map from the disk cache
    again = Trainer(make_cfg(tmp_path / "a", shapes_root, "train=paper", "train.allow_random_frozen_trunk=true", "solver.max_iter=6"), tmp_path / "c")
    again.fit()
    assert again.features.computed == 0 and again.features.loaded > 0


def _ddp_worker(rank, world, port, tmp_path, shapes_root, out):
    os.environ.update({"RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    torch.set_num_threads(1)
    cfg = make_cfg(tmp_path, shapes_root, "train=paper", "train.allow_random_frozen_trunk=true", "solver.max_iter=4", "train.val_fraction=0")
    trainer = Trainer(cfg, tmp_path / "run")
    trainer.fit()
    torch.save(trainer.model.state_dict(), out / f"rank{rank}.pt")
    torch.distributed.destroy_process_group()


def test_two_process_gloo_training_agrees(tmp_path, shapes_root):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_ddp_worker, args=(2, port, tmp_path, shapes_root, tmp_path), nprocs=2, join=True)
    a = torch.load(tmp_path / "rank0.pt")
    b = torch.load(tmp_path / "rank1.pt")
    init = Trainer(make_cfg(tmp_path, shapes_root, "train=paper", "train.allow_random_frozen_trunk=true", "solver.max_iter=4", "train.val_fraction=0"),
                   tmp_path / "x").model.state_dict()
    moved = False
    for k in a:
        assert torch.equal(a[k], b[k]), k
        moved |= not torch.equal(a[k], init[k])
    assert moved  # they agree on trained weights, not merely on the initial ones
