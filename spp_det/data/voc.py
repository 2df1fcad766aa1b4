"""PASCAL VOC layout: ``<root>/<dir>/{Annotations, JPEGImages, ImageSets/Main/<split>.txt}``.

Several (dir, split) parts combine into one data set, e.g. VOC07+12 trainval. Boxes are
converted from VOC's 1-based inclusive integers to the project convention on load; the
VOC evaluator converts back (``boxes.xyxy_to_voc``).
"""
from __future__ import annotations

import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path
from typing import Iterable

import torch

from ..boxes import voc_to_xyxy
from ..errors import SppDetError
from .sample import IMAGE_SUFFIXES, DetectionDataset, Target, check_box, read_image

VOC_CLASSES = [
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
]


def parse_voc_xml(path: Path, class_to_label: dict[str, int], image_path: Path,
                  image_id: str, skipped: Counter | None = None, names: set[str] | None = None) -> Target:
    """Parse one VOC XML file. Objects whose name is not in ``class_to_label`` are left
    out and counted in ``skipped`` (by name); every object name met is added to ``names``.
    A malformed box, a negative size or a box far outside the image is an error naming
    the file and the object."""
    try:
        root = ET.parse(path).getroot()
    except (ET.ParseError, OSError) as exc:
        raise SppDetError(f"{path}: cannot parse VOC annotation ({exc})") from exc
    size = root.find("size")
    try:
        width = int(size.findtext("width"))
        height = int(size.findtext("height"))
    except (AttributeError, TypeError, ValueError) as exc:
        raise SppDetError(f"{path}: missing or bad <size><width>/<height>") from exc
    boxes, labels, ignore = [], [], []
    for k, obj in enumerate(root.iter("object")):
        name = (obj.findtext("name") or "").strip()
        if names is not None and name:
            names.add(name)
        if name not in class_to_label:
            if skipped is not None:
                skipped[f"outside dataset.classes: {name or '<no name>'}"] += 1
            continue
        bb = obj.find("bndbox")
        try:
            xyxy = [float(bb.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax")]
        except (AttributeError, TypeError, ValueError) as exc:
            raise SppDetError(f"{path}: object {k} '{name}' has a missing or bad <bndbox>") from exc
        if xyxy[2] < xyxy[0] or xyxy[3] < xyxy[1]:
            raise SppDetError(f"{path}: object {k} '{name}' has xmax < xmin or ymax < ymin: {xyxy}")
        # checked in 0-based continuous pixels (boxes.voc_to_xyxy is the one conversion)
        box = voc_to_xyxy(torch.tensor([xyxy]))[0].tolist()
        box, clipped = check_box(path, f"object {k} '{name}'", box, height, width)
        if clipped and skipped is not None:
            skipped["clipped to the image (kept)"] += 1
        boxes.append(box)
        labels.append(class_to_label[name])
        ignore.append(int(obj.findtext("difficult") or 0) == 1)
    return Target(image_id=image_id, path=image_path, height=height, width=width,
                  boxes=torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                  labels=torch.tensor(labels, dtype=torch.int64),
                  ignore=torch.tensor(ignore, dtype=torch.bool))


def image_files(folder: Path) -> dict[str, Path]:
    """Image stem -> file in a VOC ``JPEGImages`` folder: any format OpenCV reads (a
    ``.jpg`` wins over another file of the same stem)."""
    found: dict[str, Path] = {}
    if folder.is_dir():
        for f in sorted(folder.iterdir(), key=lambda f: f.suffix.lower() != ".jpg"):
            if f.suffix.lower() in IMAGE_SUFFIXES:
                found.setdefault(f.stem, f)
    return found


def unannotated_target(xml: Path, image: Path, stem: str) -> Target:
    """An image of a split without annotations (e.g. VOC2012 test): its size from the
    XML when there is one, else from the image; no boxes."""
    if xml.is_file():
        target = parse_voc_xml(xml, {}, image, stem)
        height, width = target.height, target.width
    else:  # decoded as training and detection will decode it (EXIF orientation applied)
        height, width = read_image(image).shape[:2]
    return Target(image_id=stem, path=image, height=height, width=width, boxes=torch.zeros((0, 4)),
                  labels=torch.zeros(0, dtype=torch.int64), ignore=torch.zeros(0, dtype=torch.bool))


def load_voc(root: str | Path, parts: Iterable[tuple], classes: list[str] | None = None,
             name: str = "voc", default_classes: list[str] = VOC_CLASSES) -> DetectionDataset:
    """Load VOC-layout parts.

    root: folder that holds the year folders (e.g. ``data/VOCdevkit``).
    parts: (dir, split) pairs, e.g. ``[("VOC2007", "trainval"), ("VOC2012", "trainval")]``,
    or (dir, split, annotated) triples: ``annotated=False`` for a split without boxes
    (e.g. VOC2012 test): its images are detected and written out, never scored or trained on.
    Images: ``JPEGImages/<id>.<any format OpenCV reads>``.
    classes: class names in label order (1..C); ``default_classes`` (VOC's 20) when None.
    A name in ``classes`` that is neither a default class nor met in any annotation is an
    error listing the known names (a typo would otherwise train with no positives).
    Image ids are the file stems; they must be unique across parts.
    """
    parts = [tuple(p) for p in parts]
    classes = list(classes or default_classes)
    class_to_label = {c: i + 1 for i, c in enumerate(classes)}
    root = Path(root)
    targets: list[Target] = []
    skipped: Counter = Counter()
    met: set[str] = set()  # every object name in the files
    seen: dict[str, Path] = {}
    annotated = {bool(p[2]) if len(p) > 2 else True for p in parts}
    if len(annotated) > 1:
        raise SppDetError(f"dataset '{name}': a split cannot mix annotated and unannotated parts")
    for sub, split, *rest in parts:
        base = root / sub
        images = image_files(base / "JPEGImages")
        split_file = base / "ImageSets" / "Main" / f"{split}.txt"
        if not split_file.is_file():
            raise SppDetError(f"{split_file}: split file not found (is the VOC data set under "
                              f"{root}? set dataset.root)")
        ids = [line.split()[0] for line in split_file.read_text().splitlines() if line.strip()]
        if not ids:
            raise SppDetError(f"{split_file}: split is empty")
        for stem in ids:
            if stem in seen:
                raise SppDetError(f"{split_file}: image id '{stem}' also in {seen[stem]}")
            seen[stem] = split_file
            xml = base / "Annotations" / f"{stem}.xml"
            # a missing image is named where it is read (training leaves it out, eval reports it)
            image = images.get(stem, base / "JPEGImages" / f"{stem}.jpg")
            if rest and not rest[0]:
                targets.append(unannotated_target(xml, image, stem))
                continue
            if not xml.is_file():
                raise SppDetError(f"{xml}: annotation listed in {split_file} is missing (a split without "
                                  f"annotations: give its part annotated: false)")
            targets.append(parse_voc_xml(xml, class_to_label, image, stem, skipped, met))
    known = set(default_classes) | met
    unknown = [c for c in classes if c not in known]
    if unknown and annotated != {False}:  # a split without annotations names no class
        raise SppDetError(f"dataset '{name}': unknown class name(s) {unknown} in dataset.classes; "
                          f"known: {sorted(known)}")
    return DetectionDataset(name, classes, targets, sorted(known), dict(skipped), annotated=annotated != {False})
