"""Learning-rate schedules, against values computed by hand."""
import math

import pytest
import torch
from omegaconf import OmegaConf

from spp_det.training.solver import build_solver
from spp_det.errors import SppDetError


def _lrs(**cfg):
    base = {"name": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 0.0, "gamma": 0.1, "steps": [4],
            "max_iter": 8, "warmup_iters": 2}
    opt, sched = build_solver([torch.nn.Parameter(torch.zeros(1))], OmegaConf.create({**base, **cfg}))
    out = []
    for _ in range(8):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_step_schedule_with_warmup():
    # warm-up factor 0.1 + 0.9 * it / 2 for it < 2, then 1, then gamma after step 4
    assert _lrs() == pytest.approx([0.01, 0.055, 0.1, 0.1, 0.01, 0.01, 0.01, 0.01])


def test_cosine_schedule_with_warmup():
    expected = [0.1 * 0.5 * (1 + math.cos(math.pi * it / 8)) * (0.1 + 0.9 * it / 2 if it < 2 else 1.0)
                for it in range(8)]
    assert _lrs(schedule="cosine") == pytest.approx(expected)
    with pytest.raises(SppDetError, match="solver.schedule 'linear': use step or cosine"):
        _lrs(schedule="linear")


def _schedule(solver: str, train: str = "paper"):
    from hydra import compose, initialize_config_dir

    from conftest import ROOT
    from spp_det.training.solver import param_groups
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = compose("train", overrides=[f"solver={solver}", f"train={train}"])
    net = torch.nn.Linear(3, 2)
    groups = param_groups(net.named_parameters(), cfg.solver.lr, cfg.solver.weight_decay,
                          cfg.train.get("bias_lr_mult", 1.0), cfg.train.get("bias_decay_mult", 1.0))
    opt, sched = build_solver(groups, cfg.solver)
    return cfg, opt, lambda it: [g["initial_lr"] * sched.lr_lambdas[k](it) for k, g in enumerate(opt.param_groups)]


def test_solver_paper_is_the_papers_schedule():
    # Sec. 4: 1e-4 for 250k mini-batches, then 1e-5 for 50k; momentum 0.9, weight decay 5e-4
    cfg, opt, lr = _schedule("paper")
    assert cfg.solver.max_iter == 300_000 and cfg.solver.name == "sgd"
    assert opt.param_groups[0]["momentum"] == 0.9 and opt.param_groups[0]["weight_decay"] == 5e-4
    for it, want in ((0, 1e-4), (249_999, 1e-4), (250_000, 1e-5), (299_999, 1e-5)):
        assert lr(it)[0] == pytest.approx(want, rel=1e-12), it


def test_solver_released_is_the_prototxt_with_its_bias_rules():
    # pascal_finetune_fc_spm_solver.prototxt: vstep 1e-3, 1e-4, 1e-5 for 30k each; the net's
    # biases: blobs_lr 2, weight_decay 0; its loss: softmax only
    cfg, opt, lr = _schedule("released", "released")
    assert cfg.solver.max_iter == 90_000 and cfg.train.box_loss_weight == 0.0
    weights, biases = opt.param_groups
    assert weights["weight_decay"] == 5e-4 and biases["weight_decay"] == 0.0
    for it, want in ((0, 1e-3), (29_999, 1e-3), (30_000, 1e-4), (59_999, 1e-4), (60_000, 1e-5), (89_999, 1e-5)):
        w, b = lr(it)
        assert w == pytest.approx(want, rel=1e-12) and b == pytest.approx(2 * want, rel=1e-12), it


def test_trunk_layers_learn_at_their_own_rate():
    """solver.trunk_lr_mult: the trunk's weights and biases at lr x mult (biases also x
    bias_lr_mult, weight decay x bias_decay_mult); the heads' at lr; frozen ones nowhere."""
    from spp_det.training.solver import param_groups
    net = torch.nn.ModuleDict({"trunk": torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Linear(2, 2)),
                               "head": torch.nn.Linear(2, 2)})
    net.trunk[0].requires_grad_(False)
    groups = param_groups(net.named_parameters(), 1e-3, 1e-4, bias_lr_mult=2.0, bias_decay_mult=0.0, trunk_lr_mult=0.1)
    got = [([id(p) for p in g["params"]], g["lr"], g["weight_decay"]) for g in groups]
    assert got == [([id(net.head.weight)], 1e-3, 1e-4), ([id(net.head.bias)], 2e-3, 0.0),
                   ([id(net.trunk[1].weight)], pytest.approx(1e-4), 1e-4),
                   ([id(net.trunk[1].bias)], pytest.approx(2e-4), 0.0)]
    # without the multiplier, the two groups of before (checkpoints resume with them)
    assert len(param_groups(net.named_parameters(), 1e-3, 1e-4)) == 2
