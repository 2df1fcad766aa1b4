"""After fine-tuning, the paper's two further stages on the training images: per-class
SVMs on fc7 (``train.classifier=svm``) and ridge box regressors on pool5
(``train.bbox_reg=ridge``). Both are fitted on features of the fine-tuned model and
stored in its head, so checkpoints carry them."""
from __future__ import annotations

import logging
import random
from typing import Iterator

import torch
from omegaconf import DictConfig

from ..data import DetectionDataset
from ..inference.conv_maps import FeatureCache
from ..models import SPPNet
from ..proposals import ProposalStore
from .ridge import RidgeExamples, RidgeSettings
from .svm import SVMSettings, train_svms
from .window_features import WindowFeatures, training_features

log = logging.getLogger(__name__)


def feature_passes(model: SPPNet, dataset: DetectionDataset, store: ProposalStore,
                   cache: FeatureCache | None, seed: int, skipped: dict[str, str] | None = None,
                   with_fc7: bool = True, progress: bool = False):
    """passes(epoch) -> an iterator of the images' WindowFeatures: epoch 0 in data set
    order, later epochs shuffled (seeded), as R-CNN mines images in random order.
    Conv maps come from the cache (frozen trunk) or are computed (end to end). Images in
    ``skipped`` (path -> reason: what training left out) are left out, and images found
    unreadable now are added to it. ``with_fc7``: see :func:`training_features`;
    ``progress``: a progress bar per pass."""
    skipped = {} if skipped is None else skipped
    def proposals(i: int) -> torch.Tensor:
        boxes = store.get(dataset.targets[i].path)
        return torch.zeros((0, 4)) if boxes is None else torch.from_numpy(boxes)

    def maps_of(i: int):
        path = dataset.targets[i].path
        if cache is None:
            return model.compute_features(dataset[i][0], model.scales)
        return [cache.get(path, s, False, load_image=lambda: dataset[i][0]) for s in model.scales]

    def passes(epoch: int) -> Iterator[WindowFeatures]:
        order = list(range(len(dataset)))
        if epoch > 0:
            random.Random(f"spp_det/svm/{seed}/{epoch}").shuffle(order)
        order = [i for i in order if str(dataset.targets[i].path) not in skipped]
        return training_features(model, dataset, order, proposals, maps_of, skipped=skipped, with_fc7=with_fc7,
                                 desc=f"SVM/ridge features, pass {epoch + 1}" if progress else None)
    return passes


def fit_paper_stages(model: SPPNet, dataset: DetectionDataset, store: ProposalStore,
                     cache: FeatureCache | None, tc: DictConfig, seed: int,
                     skipped: dict[str, str] | None = None, progress: bool = False) -> dict:
    """Fit what ``tc.classifier`` / ``tc.bbox_reg`` ask for into ``model.head`` and make
    it the inference choice. Returns the stages' statistics (``skipped_images``: the
    images left out, training's ``skipped`` and any found unreadable now). With both,
    the ridge examples are gathered during the SVMs' first pass: one feature pass.
    ``progress``: a progress bar per feature pass."""
    skipped = dict(skipped or {})
    svm = tc.get("classifier") == "svm"
    passes = feature_passes(model, dataset, store, cache, seed, skipped, with_fc7=svm, progress=progress)
    ridge = RidgeExamples(model.num_classes, model.box_coder, RidgeSettings(**tc.ridge), seed) \
        if tc.get("bbox_reg") == "ridge" else None

    def passes_feeding_ridge(epoch: int) -> Iterator[WindowFeatures]:
        for wf in passes(epoch):
            if epoch == 0 and ridge is not None:
                ridge.add(wf)
            yield wf

    stats = {}
    with torch.no_grad():
        if svm:
            s = SVMSettings(**tc.svm)
            weight, bias, scale, stats["svm"] = train_svms(passes_feeding_ridge, model.num_classes,
                                                           model.head.fc7.out_features, s)
            model.head.set_svm(weight, bias, scale, torch.tensor(stats["svm"]["learned"]))
            missed = [c for c, ok in zip(dataset.classes, stats["svm"]["learned"]) if not ok]
            if missed:
                log.warning("SVMs: no positives or no negatives for %s: never detected with test.classifier=svm",
                            ", ".join(missed))
        elif ridge is not None:
            for wf in passes(0):
                ridge.add(wf)
        if ridge is not None:
            weight, bias, scale, stats["ridge"] = ridge.fit()
            few = [c for c, n in zip(dataset.classes, stats["ridge"]["examples"]) if n < 2]
            if few:
                log.warning("ridge: fewer than 2 examples for %s: their windows keep their own boxes", ", ".join(few))
            model.head.set_ridge(weight, bias, scale)
    model.head.use("svm" if model.head.svm is not None else "softmax",
                   "ridge" if model.head.ridge is not None else "learned")
    stats["skipped_images"] = sorted(skipped)
    return stats
