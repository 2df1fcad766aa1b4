"""What every data set yields: an image and its annotations.

Image representation (one for the whole project): ``numpy.ndarray`` of shape (H, W, 3),
dtype uint8, RGB channel order, as read from disk (no resizing). Boxes follow DESIGN.md:
float32 (N, 4) xyxy in original-image pixels, 0-based continuous.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch

from ..errors import SppDetError

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


class DetectionDataset:
    """A list of :class:`Target` plus the class names; images are read on access.

    ``dataset[i]`` -> ``(image (H, W, 3) uint8 RGB, Target)``.
    """

    def __init__(self, name: str, classes: list[str], targets: list[Target]) -> None:
        self.name = name
        self.classes = list(classes)
        self.targets = targets

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
        sub = DetectionDataset.__new__(type(self))
        sub.__dict__.update(self.__dict__)
        sub.targets = [self.targets[i] for i in indices]
        return sub
