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
