"""What every data set yields: an image and its annotations.

Image representation (one for the whole project): ``numpy.ndarray`` of shape (H, W, 3),
dtype uint8, RGB channel order, as read from disk (no resizing). Boxes follow DESIGN.md:
float32 (N, 4) xyxy in original-image pixels, 0-based continuous.
"""
from __future__ import annotations

import copy
import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch

from ..errors import SppDetError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


@dataclass
class Target:
    """Annotations of one image.

    boxes: (N, 4) float32 xyxy, original-image pixels.
    labels: (N,) int64 in 1..C (0 is background and never appears here).
    ignore: (N,) bool, VOC ``difficult`` or COCO ``iscrowd``: evaluation counts such a
        box neither as a hit nor as a miss; training leaves it out by default.
    """

    image_id: str | int
    path: Path
    height: int
    width: int
    boxes: torch.Tensor = field(default_factory=lambda: torch.zeros((0, 4)))
    labels: torch.Tensor = field(default_factory=lambda: torch.zeros((0,), dtype=torch.int64))
    ignore: torch.Tensor = field(default_factory=lambda: torch.zeros((0,), dtype=torch.bool))

    @property
    def size(self) -> tuple[int, int]:
        """(height, width) in pixels."""
        return self.height, self.width


def read_image(path: str | Path) -> np.ndarray:
    """Read an image file -> (H, W, 3) uint8 RGB. Raises SppDetError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise SppDetError(f"{path}: image file not found")
    data = np.fromfile(str(path), dtype=np.uint8)
    image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if image is None:
        raise SppDetError(f"{path}: not a readable image (corrupt or unknown format)")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


_DIGESTS: dict[tuple[str, int, int], str] = {}


def image_digest(path: str | Path) -> str:
    """16 hex digits of the SHA-1 of a file's bytes: the key of everything cached per image
    (proposals, conv maps). Content, not name: two data sets whose ids overlap never share
    an entry, a regenerated or edited image never reads a stale one, and the same file
    reached through two data set configs (voc07 / voc0712) is computed once. Remembered
    per (path, size, mtime) within the process, so each file is read once per run."""
    path = Path(path)
    try:
        st = path.stat()
        memo = (str(path.resolve()), st.st_size, st.st_mtime_ns)
        if memo not in _DIGESTS:
            h = hashlib.sha1()
            with open(path, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
            _DIGESTS[memo] = h.hexdigest()[:16]
    except OSError as exc:
        raise SppDetError(f"{path}: cannot read image file ({exc.strerror or exc})") from exc
    return _DIGESTS[memo]


def check_box(path: Path | str, what: str, box: list[float], height: int, width: int,
              tolerance: float = 2.0) -> tuple[list[float], bool]:
    """A ground-truth box (xyxy, 0-based continuous) checked against its image: a negative
    size, or a box more than ``tolerance`` pixels outside the image, is an error naming
    the file and the annotation; a smaller overshoot is clipped. Returns (box, clipped)."""
    x1, y1, x2, y2 = box
    if x2 < x1 or y2 < y1:
        raise SppDetError(f"{path}: {what} has a negative size: xyxy {box}")
    if x1 < -tolerance or y1 < -tolerance or x2 > width + tolerance or y2 > height + tolerance:
        raise SppDetError(f"{path}: {what} xyxy {[round(v, 2) for v in box]} lies outside its "
                          f"{width}x{height} image")
    clipped = [min(max(x1, 0.0), width), min(max(y1, 0.0), height), min(max(x2, 0.0), width),
               min(max(y2, 0.0), height)]
    return clipped, clipped != [float(v) for v in box]


class DetectionDataset:
    """A list of :class:`Target` plus the class names; images are read on access.

    ``dataset[i]`` -> ``(image (H, W, 3) uint8 RGB, Target)``.
    ``known_classes``: every class name the annotations could carry (the data set's own
    list plus any name met in its files); ``dataset.classes`` picks some of them.
    ``skipped``: objects left out on load, by reason (e.g. "outside dataset.classes: dog"),
    reported once by :meth:`report_skipped`. ``annotated``: False for a split without
    boxes (e.g. VOC2012 test): detected and written out, never scored or trained on.
    """

    def __init__(self, name: str, classes: list[str], targets: list[Target],
                 known_classes: list[str] | None = None, skipped: dict[str, int] | None = None,
                 annotated: bool = True) -> None:
        self.name = name
        self.annotated = annotated
        self.classes = list(classes)
        self.targets = targets
        self.known_classes = sorted(set(known_classes or []) | set(self.classes))
        self.skipped = dict(skipped or {})

    def report_skipped(self, source: str) -> None:
        """One warning listing what was left out on load (nothing is skipped silently):
        per reason the count, and the most frequent names where the reason has them."""
        if not self.skipped:
            return
        groups: dict[str, list[tuple[int, str]]] = {}
        for key, n in self.skipped.items():
            reason, _, name = key.partition(": ")
            groups.setdefault(reason, []).append((n, name))
        parts = []
        for reason, items in groups.items():
            total = sum(n for n, _ in items)
            named = sorted((item for item in items if item[1]), reverse=True)
            top = ", ".join(f"{name} {n}" for n, name in named[:6]) + (", ..." if len(named) > 6 else "")
            parts.append(f"{total} {reason}" + (f" ({top})" if top else ""))
        log.warning("dataset '%s' (%s): object(s) left out on load: %s", self.name, source, "; ".join(parts))

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[np.ndarray, Target]:
        target = self.targets[index]
        image = read_image(target.path)
        if image.shape[:2] != target.size:
            raise SppDetError(f"{target.path}: image is {image.shape[1]}x{image.shape[0]} but its "
                              f"annotation says {target.width}x{target.height}")
        return image, target

    def subset(self, indices: list[int]) -> "DetectionDataset":
        """A view on some of the images (same classes), e.g. a validation split."""
        sub = copy.copy(self)  # keeps the attributes of subclasses (COCO's api, label map)
        sub.targets = [self.targets[i] for i in indices]
        return sub

    def digests(self) -> dict[str, Path]:
        """Content digest -> file of every readable image (see :func:`image_digest`);
        unreadable files are left out here and reported where they are used."""
        out = {}
        for t in self.targets:
            try:
                out.setdefault(image_digest(t.path), t.path)
            except SppDetError:
                pass
        return out

    def check_disjoint(self, train_digests: set[str] | dict, what: str) -> None:
        """An error when any image of this data set is also a training image (same
        content): a score on images the model was trained on is not a test score."""
        shared = [path for d, path in self.digests().items() if d in train_digests]
        if shared:
            raise SppDetError(f"dataset '{self.name}': {len(shared)} image(s) of {what} are also training "
                              f"images (first: {shared[0]}); test on images the model never saw "
                              f"(disjoint splits, or disjoint subset/test_subset)")

    def take(self, subset: list | tuple | None) -> "DetectionDataset":
        """``subset`` = None (all) or [start, stop) image positions (slice semantics)."""
        if subset is None:
            return self
        start, stop = (None if v is None else int(v) for v in subset)
        indices = list(range(len(self)))[start:stop]
        if not indices:
            raise SppDetError(f"dataset '{self.name}': subset {list(subset)} selects no image "
                              f"out of {len(self)}")
        return self.subset(indices)
