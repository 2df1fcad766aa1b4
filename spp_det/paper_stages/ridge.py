"""The paper's box-regression stage: class-specific ridge regressors from pool5 (the
pyramid's output) to box deltas, as R-CNN and the released code
(``spp_train_bbox_regressor.m``) fit them after fine-tuning.

Per class: the windows whose best IoU is with a box of that class and above ``min_iou``
(the released code: > 0.5, lambda 4000; R-CNN: > 0.6, lambda 1000), features scaled to a
mean norm of 20, a constant 1 appended (the bias, regularised like the weights), targets
centred and whitened (T = V diag(1 / sqrt(d + 0.001)) V^T of their covariance), then
beta = (X^T X + lambda I)^-1 X^T Y. Predictions are (x beta) T^-1 + mu; the whole map is
linear, so it is stored as one (4C, D) layer (``SPPHead.set_ridge``). Targets are the
detector's own box-coder deltas: the whitening absorbs the coder's constant weights.

The examples are held in memory until the fit. ZF-5's pool5 has 12,800 columns; the
dilated Lite0's 64,000, and the 1,440 voc2012-1800 training photos give 54,566 examples
(16,515 dogs): 14 GB of features before the solve's float64 copies. Beyond
``memory_gb`` each class keeps a seeded uniform sample of its examples.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Iterator

import torch

from ..boxes import BoxCoder
from .window_features import WindowFeatures, mean_norm

log = logging.getLogger(__name__)


@dataclass
class RidgeSettings:
    """The released code's by default; R-CNN's: lam=1000, min_iou=0.6. memory_gb: the
    float32 examples kept over all classes (the project's bound, not the paper's)."""

    lam: float = 4000.0
    min_iou: float = 0.5
    target_norm: float = 20.0
    memory_gb: float = 4.0


def examples_per_class(memory_gb: float, num_classes: int, dim: int) -> int:
    """How many (dim,) float32 examples each of ``num_classes`` classes keeps in ``memory_gb``."""
    return max(2, int(memory_gb * 1e9 // (4 * num_classes * dim)))


class Reservoir:
    """A uniform sample of at most ``cap`` (x, y) rows of a stream, seeded: Vitter's
    Algorithm R (example n replaces a random slot with probability cap / (n + 1)).
    Written here because torch has no streaming sampler, and the stream (every training
    image's windows) cannot be held to sample from afterwards."""

    def __init__(self, cap: int, generator: torch.Generator) -> None:
        self.cap, self.gen, self.seen = cap, generator, 0
        self.chunks: list[tuple[torch.Tensor, torch.Tensor]] = []  # while filling
        self.full: tuple[torch.Tensor, torch.Tensor] | None = None  # (cap, D), (cap, T) once full

    def add(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """x (n, D), y (n, T): the next n rows of the stream."""
        room = max(0, self.cap - self.seen)
        if room:  # cloned: a slice would keep the caller's whole tensor alive
            self.chunks.append((x[:room].clone(), y[:room].clone()))
            if self.seen + len(x) >= self.cap:
                self.full = (torch.cat([c[0] for c in self.chunks]), torch.cat([c[1] for c in self.chunks]))
                self.chunks = []
        for k in range(min(room, len(x)), len(x)):
            j = int(torch.randint(self.seen + k + 1, (1,), generator=self.gen))
            if j < self.cap:
                kept_x, kept_y = self.full  # set once the first cap rows arrived
                kept_x[j], kept_y[j] = x[k], y[k]
        self.seen += len(x)

    def rows(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The sample: (min(seen, cap), D), (min(seen, cap), T); at least one row added."""
        if self.full is not None:
            return self.full
        return torch.cat([c[0] for c in self.chunks]), torch.cat([c[1] for c in self.chunks])


def ridge_solve(x: torch.Tensor, y: torch.Tensor, lam: float) -> torch.Tensor:
    """beta (D, T) = (x^T x + lam I)^-1 x^T y for x (N, D), y (N, T), in float64. With
    fewer rows than columns the equal form x^T (x x^T + lam I)^-1 y solves an N x N system
    instead (pool5 has 5600-12800 columns; a class may have a few hundred examples)."""
    x, y = x.double(), y.double()
    n, d = x.shape
    if n < d:
        return x.T @ torch.linalg.solve(x @ x.T + lam * torch.eye(n, dtype=x.dtype), y)
    return torch.linalg.solve(x.T @ x + lam * torch.eye(d, dtype=x.dtype), x.T @ y)


def fit_class_regressor(x: torch.Tensor, targets: torch.Tensor, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """One class: x (N, D) scaled features, targets (N, 4) -> (weight (4, D), bias (4,))
    such that x @ weight.T + bias = ([x, 1] beta) T^-1 + mu."""
    y = targets.double()
    mu = y.mean(dim=0)
    yc = y - mu
    d, v = torch.linalg.eigh(yc.T @ yc / len(yc))
    t = v @ torch.diag(1 / torch.sqrt(d + 0.001)) @ v.T
    t_inv = v @ torch.diag(torch.sqrt(d + 0.001)) @ v.T
    xa = torch.cat([x.double(), torch.ones(len(x), 1, dtype=torch.float64)], dim=1)
    full = ridge_solve(xa, yc @ t, lam) @ t_inv  # (D + 1, 4)
    return full[:-1].T.float(), (full[-1] + mu).float()


class RidgeExamples:
    """Collects the examples of every class from training images' features (``add``, one
    image at a time, so it can ride on another stage's pass), then fits (``fit``). Each
    class keeps at most ``examples_per_class(s.memory_gb, ...)`` of them (a uniform
    sample, seeded by ``seed``)."""

    def __init__(self, num_classes: int, coder: BoxCoder, s: RidgeSettings, seed: int = 0) -> None:
        self.num_classes, self.coder, self.s = num_classes, coder, s
        self.gen = torch.Generator().manual_seed(seed)
        self.kept: list[Reservoir] = []
        self.norms, self.count, self.dim = 0.0, 0, None

    def add(self, wf: WindowFeatures) -> None:
        if self.dim is None:
            self.dim = wf.pooled.shape[1]
            cap = examples_per_class(self.s.memory_gb, self.num_classes, self.dim)
            self.kept = [Reservoir(cap, self.gen) for _ in range(self.num_classes)]
        self.norms += mean_norm(wf.pooled) * len(wf.pooled)
        self.count += len(wf.pooled)
        if wf.num_gt == 0:
            return
        best, which = wf.iou().max(dim=1)
        for c in range(self.num_classes):
            sel = ((best > self.s.min_iou) & (wf.gt_labels[which] == c + 1)).nonzero().squeeze(1)
            if len(sel):
                self.kept[c].add(wf.pooled[sel], self.coder.encode(wf.boxes[which[sel]], wf.boxes[sel]))

    def fit(self) -> tuple[torch.Tensor, torch.Tensor, float, dict]:
        """(weight (4C, D), bias (4C,), feature scale, stats); a class without examples
        predicts zero deltas (keeps its windows)."""
        if self.dim is None:
            raise ValueError("no training image to fit the ridge regressors on")
        scale = self.s.target_norm / (self.norms / self.count) if self.norms > 0 else 1.0
        weight = torch.zeros(4 * self.num_classes, self.dim)
        bias = torch.zeros(4 * self.num_classes)
        examples, used = [], []
        for c, kept in enumerate(self.kept):
            examples.append(kept.seen)
            used.append(min(kept.seen, kept.cap))
            if used[-1] < 2:
                continue
            x, y = kept.rows()
            w, b = fit_class_regressor(x * scale, y, self.s.lam)
            weight[4 * c:4 * c + 4], bias[4 * c:4 * c + 4] = w, b
            log.info("ridge box regressor, class %d: %d examples, %d used", c + 1, examples[-1], used[-1])
        return weight, bias, scale, {"examples": examples, "used": used, "feature_scale": scale}


def train_ridge(images: Iterator[WindowFeatures], num_classes: int, coder: BoxCoder,
                s: RidgeSettings, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, float, dict]:
    """Regressors for classes 1..C from one pass of training-window features (see
    :class:`RidgeExamples`)."""
    examples = RidgeExamples(num_classes, coder, s, seed)
    for wf in images:
        examples.add(wf)
    return examples.fit()
