"""The paper's classifier stage: one linear SVM per class on fc7 features, trained with
hard-negative mining (R-CNN's ``rcnn_train.m``, which SPP-net reuses).

Positives are the ground-truth boxes of the class, negatives windows whose IoU with every
box of that class is below ``neg_iou`` (0.3). Mining starts from w = 0, so every negative
is hard at first; an image's negatives scoring above ``hard_margin`` (-1) and not yet in
the class's cache join it (one per set of windows with the same cells: ``dedup``). As
``spp_train.m``: the SVMs are retrained after the first image, then once more than
``retrain_limit`` new negatives have gathered, and negatives scoring below
``evict_margin`` (-1.2) leave the cache after each retrain. An epoch (one pass over the
training images) ends with a retrain; mining stops after ``rounds`` epochs (the released
code: 1) or as soon as an epoch adds nothing.

The solver is liblinear through scikit-learn's ``LinearSVC``: the released code's own
solver (L2-regularised hinge loss, dual), with its options mapped one to one: C, the
positive-class loss weight (``-w1``) and the bias feature's value (``-B``, regularised
like any weight) as ``intercept_scaling``.
"""
from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
import torch

from .window_features import WindowFeatures, mean_norm

log = logging.getLogger(__name__)

LIBLINEAR_EPS = 0.1        # liblinear 1.93 train.c: default eps for L2R_L1LOSS_SVC_DUAL (-s 3)
LIBLINEAR_MAX_ITER = 1000  # liblinear 1.93 linear.cpp: solve_l2r_l1l2_svc's max_iter


@dataclass
class SVMSettings:
    """The released code's settings by default."""

    C: float = 1e-3
    bias_multiplier: float = 10.0
    pos_weight: float = 2.0
    neg_iou: float = 0.3
    hard_margin: float = -1.0001
    evict_margin: float = -1.2
    retrain_limit: int = 2000
    rounds: int = 1
    target_norm: float = 20.0


def fit_linear_svm(pos: np.ndarray, neg: np.ndarray, C: float, pos_weight: float,
                   bias_multiplier: float, tol: float = LIBLINEAR_EPS,
                   max_iter: int = LIBLINEAR_MAX_ITER) -> tuple[np.ndarray, float]:
    """(w (D,), b) minimising 1/2 |[w, b/B]|^2 + C sum_i c_i max(0, 1 - y_i (w.x_i + b)),
    c_i = pos_weight for positives, 1 for negatives, B = bias_multiplier. pos: (P, D),
    neg: (M, D) float32. ``tol`` / ``max_iter``: liblinear 1.93's defaults, as released."""
    from sklearn.svm import LinearSVC

    x = np.concatenate([pos, neg]).astype(np.float64)
    y = np.concatenate([np.ones(len(pos)), -np.ones(len(neg))])
    # liblinear's dual solver visits examples in a random order: seeded, so that the same
    # features give the same SVM (unseeded, refits differed by ~1e-4)
    # liblinear 1.93 (the released code's) with its defaults for -s 3: stopping tolerance
    # eps 0.1 and at most 1000 iterations of the dual coordinate descent
    clf = LinearSVC(C=C, loss="hinge", dual=True, class_weight={1: pos_weight, -1: 1.0},
                    intercept_scaling=bias_multiplier, tol=tol, max_iter=max_iter,
                    random_state=0)
    with warnings.catch_warnings():  # hitting the iteration cap is the released behaviour too
        warnings.simplefilter("ignore", category=UserWarning)
        warnings.filterwarnings("ignore", message=".*converge.*")
        clf.fit(x, y)
    return clf.coef_[0].astype(np.float32), float(clf.intercept_[0])


class ClassSVM:
    """One class's SVM, its positives and its cache of negatives (keys: (image, window))."""

    def __init__(self, dim: int) -> None:
        self.w = np.zeros(dim, dtype=np.float32)
        self.b = 0.0
        self.pos: list[np.ndarray] = []
        self.neg = np.zeros((0, dim), dtype=np.float32)
        self.keys: list[tuple[int, int]] = []
        self.cached: set[tuple[int, int]] = set()
        self.new_since_retrain = 0
        self.trained = False  # an SVM was fitted (it had positives and negatives)
        self.retrains = 0
        self.updated_now = False  # retrained at the image just mined

    def scores(self, x: np.ndarray) -> np.ndarray:
        return x @ self.w + self.b

    def add_hard(self, image: int, x: np.ndarray, windows: np.ndarray, margin: float) -> int:
        """Add the negatives ``x`` (rows of windows ``windows`` of ``image``) that score
        above ``margin`` and are not cached yet. Returns how many were added."""
        hard = np.nonzero(self.scores(x) > margin)[0]
        new = [(k, (image, int(windows[k]))) for k in hard if (image, int(windows[k])) not in self.cached]
        if new:
            self.neg = np.concatenate([self.neg, x[[k for k, _ in new]]])
            self.keys += [key for _, key in new]
            self.cached.update(key for _, key in new)
            self.new_since_retrain += len(new)
        return len(new)

    def retrain(self, s: SVMSettings) -> None:
        pos = np.concatenate(self.pos) if self.pos else np.zeros((0, len(self.w)), dtype=np.float32)
        if len(pos) == 0 or len(self.neg) == 0:
            return  # a class without positives (or negatives) stays untrained: never detected
        self.w, self.b = fit_linear_svm(pos, self.neg, s.C, s.pos_weight, s.bias_multiplier)
        self.trained = True
        self.retrains += 1
        easy = self.scores(self.neg) < s.evict_margin
        if easy.any():
            self.neg = self.neg[~easy]
            self.keys = [k for k, e in zip(self.keys, easy) if not e]
            self.cached = set(self.keys)
        self.new_since_retrain = 0


def negatives(wf: WindowFeatures, label: int, neg_iou: float, ignore_iou: float = 0.5) -> np.ndarray:
    """Indices of the windows of ``wf`` whose IoU with every ground-truth box of class
    ``label`` is below neg_iou (ground-truth boxes of other classes included), leaving out
    windows on a crowd/difficult box (IoU >= ignore_iou), as fine-tuning does."""
    iou = wf.iou()[:, wf.gt_labels == label]
    best = iou.max(dim=1).values if iou.shape[1] else torch.zeros(len(wf.boxes))
    return ((best < neg_iou) & (wf.ignore_iou < ignore_iou)).nonzero().squeeze(1).numpy()


def train_svms(passes: Callable[[int], Iterator[WindowFeatures]], num_classes: int, dim: int,
               s: SVMSettings) -> tuple[torch.Tensor, torch.Tensor, float, dict]:
    """SVMs for classes 1..C. ``passes(epoch)`` yields the training images' features, a
    fresh pass each call (epoch 0 collects the positives and the feature norm; mining
    epochs 1, 2, ... may order the images differently). Returns (weight (C, dim), bias (C,),
    feature scale, stats); ``stats["learned"]``: which classes had an SVM fitted."""
    svms = [ClassSVM(dim) for _ in range(num_classes)]
    norms, count = 0.0, 0
    for wf in passes(0):
        for c in range(num_classes):
            rows = (wf.gt_labels == c + 1).nonzero().squeeze(1)
            if len(rows):
                svms[c].pos.append(wf.fc7[rows].numpy())
        norms += mean_norm(wf.fc7) * len(wf.fc7)
        count += len(wf.fc7)
    scale = s.target_norm / (norms / count) if norms > 0 else 1.0
    for svm in svms:
        svm.pos = [p * scale for p in svm.pos]
    added_per_epoch = []
    first_time = True
    for epoch in range(1, s.rounds + 1):
        added = 0
        for wf in passes(epoch):
            x = wf.fc7.numpy() * scale
            distinct = wf.distinct().numpy()
            for c, svm in enumerate(svms):
                idx = negatives(wf, c + 1, s.neg_iou)
                idx = idx[distinct[idx]]  # windows sharing cells share a feature: once (dedup)
                added += svm.add_hard(wf.index, x[idx], idx, s.hard_margin)
                # spp_train.m: update after the first image, then once MORE than
                # retrain_limit new negatives have gathered (and after the last image)
                svm.updated_now = first_time or svm.new_since_retrain > s.retrain_limit
                if svm.updated_now:
                    svm.retrain(s)
            first_time = False
        for svm in svms:  # the update at the last image (once, if that image did not update it)
            if not svm.updated_now:
                svm.retrain(s)
        added_per_epoch.append(added)
        log.info("SVM hard-negative epoch %d: %d negatives added", epoch, added)
        if added == 0:
            break
    weight = torch.from_numpy(np.stack([svm.w for svm in svms]))
    bias = torch.tensor([svm.b for svm in svms], dtype=torch.float32)
    learned = torch.tensor([svm.trained for svm in svms])
    stats = {"learned": learned.tolist(), "positives": [int(sum(len(p) for p in svm.pos)) for svm in svms],
             "negatives_cached": [len(svm.neg) for svm in svms], "added_per_epoch": added_per_epoch,
             "retrains": [svm.retrains for svm in svms],
             "feature_scale": scale}
    return weight, bias, scale, stats
