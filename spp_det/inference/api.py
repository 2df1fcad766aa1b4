"""``spp_det.Detector``: a trained checkpoint as one object that turns images into
detections, the one inference path ``detect.py`` and ``eval.py`` build on.

    from spp_det import Detector
    detector = Detector.from_checkpoint("outputs/train/run/checkpoints/best.pt")
    result = detector("photo.jpg")                      # or an RGB array, or a list of them
    result["boxes"], result["scores"], result["labels"], result["names"]
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from omegaconf import OmegaConf

from ..data import read_image
from ..models import RCNN, SPPNet
from ..models.checkpoint import load_checkpoint, model_from_checkpoint
from ..proposals import ProposalStore, SelectiveSearchConfig, build_proposals, proposals_for, selective_search
from .predict import configure_inference, runner_for

Image = str | Path | np.ndarray


class Detector:
    """A model, its class names, its proposal source and the settings of one inference.

    Call it on an image file, an (H, W, 3) uint8 RGB array, or a list of them; pass
    ``boxes`` ((N, 4) xyxy original pixels, or a list of those) to use your own windows.
    Otherwise windows come from the checkpoint's proposal settings: read from (and added
    to) the proposal cache for files, computed for arrays (an array has no file to key a
    cache entry by). Each image gives ``{"boxes": (D, 4) float xyxy original pixels,
    "scores": (D,), "labels": (D,) int64 1..C, "names": [D class names]}``.
    """

    def __init__(self, runner: SPPNet | RCNN, classes: list[str], store: ProposalStore | None,
                 ss: SelectiveSearchConfig | None, scales: tuple[int, ...] | None = None,
                 score_thresh: float = 0.05, nms_thresh: float = 0.3, max_per_image: int = 100) -> None:
        self.runner, self.classes, self.store, self.ss = runner, list(classes), store, ss
        self.scales = tuple(scales) if scales else None
        self.score_thresh, self.nms_thresh, self.max_per_image = score_thresh, nms_thresh, max_per_image
        self.max_windows: int | None = None  # score only the first N windows (selective search's order)

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str = "cpu", precision: str = "float32",
                        proposals: dict | Any | None = None, classifier: str = "auto", bbox_reg: str = "auto",
                        svd_rank: Sequence[int] | None = None, rcnn: bool | None = None,
                        scales: Sequence[int] | None = None, score_thresh: float = 0.05, nms_thresh: float = 0.3,
                        max_per_image: int = 100, flip: bool | None = None, box_vote: float | None = None,
                        loaded: dict | None = None) -> "Detector":
        """The model of a ``train.py`` checkpoint, ready to detect. ``proposals``: a
        ``configs/proposals`` node or dict (None: the checkpoint's training proposals; detect.py
        passes the recipe's detection proposals, ``detect_proposals_cfg``, where it has them);
        ``precision`` float32 | bfloat16 | int8 | auto; ``classifier`` softmax | svm | auto,
        ``bbox_reg`` learned | ridge | none | auto (auto: what the checkpoint carries);
        ``svd_rank`` (r6, r7) truncated SVD of fc6/fc7; ``rcnn`` R-CNN mode (None: the
        mode it was trained in); ``scales`` test scales (None: the checkpoint's); ``flip``
        also score the mirrored image; ``box_vote`` an IoU for box voting (None: none);
        ``loaded``: the checkpoint already read from ``path`` (not read twice)."""
        ckpt = loaded if loaded is not None else load_checkpoint(path)
        model = model_from_checkpoint(ckpt, device, path)
        configure_inference(model, OmegaConf.create({"precision": precision, "svd_rank": svd_rank,
                                                     "classifier": classifier, "bbox_reg": bbox_reg,
                                                     "flip": flip, "box_vote": box_vote}))
        node = OmegaConf.create(proposals if proposals is not None else ckpt["proposals_cfg"])
        store, ss = build_proposals(node)
        return cls(runner_for(model, ckpt, rcnn), ckpt["classes"], store, ss, scales, score_thresh, nms_thresh,
                   max_per_image)

    @classmethod
    def from_test_config(cls, path: str | Path, test: Any, device: str = "cpu", proposals: dict | Any | None = None,
                         rcnn: bool | None = None, loaded: dict | None = None) -> "Detector":
        """:meth:`from_checkpoint` with the settings of a config's ``test`` node (eval.py,
        detect.py and train.py share its keys: scales, score_thresh, nms_thresh,
        max_per_image, max_windows, flip, box_vote, precision, svd_rank, classifier, bbox_reg)."""
        detector = cls.from_checkpoint(path, device, test.get("precision", "float32"), proposals,
                                       test.get("classifier", "auto"), test.get("bbox_reg", "auto"),
                                       test.get("svd_rank"), rcnn, test.get("scales"), test.score_thresh,
                                       test.nms_thresh, test.max_per_image, test.get("flip"), test.get("box_vote"),
                                       loaded)
        detector.max_windows = test.get("max_windows")
        return detector

    @property
    def model(self) -> SPPNet:
        return self.runner.detector if isinstance(self.runner, RCNN) else self.runner

    def windows(self, image: np.ndarray, path: str | Path | None) -> torch.Tensor:
        """(N, 4) proposals of one image: the cache's (filled on a miss) for a file,
        computed for an array."""
        if path is not None and self.store is not None:
            return torch.from_numpy(proposals_for(self.store, path, image, self.ss))
        if self.ss is None:
            raise ValueError("imported proposals cover files only: pass boxes= for an array")
        return torch.from_numpy(selective_search(image, self.ss))

    def predict(self, image: np.ndarray, boxes: torch.Tensor) -> dict:
        """One decoded image (H, W, 3) uint8 RGB and its windows -> its detections."""
        boxes = torch.as_tensor(boxes, dtype=torch.float32)[:self.max_windows]  # [:None]: all
        det = self.runner.predict(image, boxes, scales=self.scales,
                                  score_thresh=self.score_thresh, nms_thresh=self.nms_thresh,
                                  max_per_image=self.max_per_image)
        det = {k: v.cpu() for k, v in det.items()}
        det["names"] = [self.classes[int(label) - 1] for label in det["labels"]]
        return det

    def __call__(self, images: Image | list[Image], boxes=None) -> dict | list[dict]:
        single = not isinstance(images, list)
        items = [images] if single else images
        given = [boxes] if single else (boxes if boxes is not None else [None] * len(items))
        if len(given) != len(items):
            raise ValueError(f"{len(items)} images but {len(given)} sets of boxes")
        out = []
        for item, b in zip(items, given):
            path = None if isinstance(item, np.ndarray) else Path(item)
            image = read_image(path) if path is not None else np.ascontiguousarray(item)
            if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
                raise ValueError(f"an image array must be (H, W, 3) uint8 RGB, not {image.shape} {image.dtype}")
            out.append(self.predict(image, self.windows(image, path) if b is None else b))
        return out[0] if single else out
