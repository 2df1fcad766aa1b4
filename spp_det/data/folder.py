"""Every image file in a folder (sorted by name), one image file, or a ``.txt`` list of
image paths (one per line, relative to the list's folder): input for detection.

Each image gets a name that identifies it: its path relative to the input (the folder, or
the list's folder), in POSIX form. Names are unique, so ``a.jpg`` and ``a.png``, or
``x/a.jpg`` and ``y/a.jpg``, never share a result id or an output picture. Sizes are read
lazily: a corrupt file must not stop the other images from being processed, so nothing is
decoded here.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path, PurePosixPath

from ..errors import SppDetError
from .sample import IMAGE_SUFFIXES

log = logging.getLogger(__name__)


def _name(file: Path, base: Path) -> str:
    """``file`` relative to ``base`` in POSIX form (``..`` where it lies outside)."""
    return PurePosixPath(*Path(os.path.relpath(os.path.abspath(file), os.path.abspath(base))).parts).as_posix()


def list_images(path: str | Path) -> list[tuple[Path, str]]:
    """(file, name) of the images in ``path``: a folder (by suffix, sorted), a .txt list,
    or one file. A file listed twice is kept once (counted in the log)."""
    path = Path(path)
    if path.is_file() and path.suffix.lower() == ".txt":
        lines = [ln.strip() for ln in path.read_text().splitlines() if ln.strip()]
        if not lines:
            raise SppDetError(f"{path}: image list is empty")
        entries, seen, repeated = [], set(), 0
        for line in lines:
            file = Path(line) if Path(line).is_absolute() else path.parent / line
            key = os.path.normpath(os.path.abspath(file))
            if key in seen:
                repeated += 1
                continue
            seen.add(key)
            entries.append((file, _name(file, path.parent)))
        if repeated:
            log.warning("%s: %d repeated entr%s kept once", path, repeated, "y" if repeated == 1 else "ies")
        return entries
    if path.is_file():
        return [(path, path.name)]
    if not path.is_dir():
        raise SppDetError(f"{path}: no such file or folder")
    files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise SppDetError(f"{path}: folder holds no image files ({', '.join(IMAGE_SUFFIXES)})")
    return [(f, f.name) for f in files]


def output_names(names: list[str]) -> list[str]:
    """Relative output picture path for each image name: the name itself (the picture
    keeps the input's folder structure and format), with ``..`` and a leading ``/`` made
    harmless, ``.pgm`` (grey only for OpenCV's writer) written as ``.pgm.png``, and a
    ``~N`` suffix in the rare case two results would still coincide."""
    out, taken = [], set()
    for name in names:
        parts = [("__" if p == ".." else p) for p in PurePosixPath(name).parts if p not in ("/", ".")]
        rel = PurePosixPath(*parts)
        if rel.suffix.lower() == ".pgm":
            rel = rel.with_name(rel.name + ".png")
        candidate, n = rel, 1
        while candidate.as_posix().lower() in taken:
            n += 1
            candidate = rel.with_name(f"{rel.stem}~{n}{rel.suffix}")
        taken.add(candidate.as_posix().lower())
        out.append(candidate.as_posix())
    return out


def check_output(input_path: str | Path, output: str | Path, files: list[Path], pictures: list[str]) -> None:
    """Refuse an output that could write over an input, before anything is written: a
    picture path that is an input file (output = the input folder, or a list file's
    folder), or, for a folder input, an output folder equal to it or inside it (the next
    run over that folder would take the drawn pictures as photos). ``pictures``: each
    file's output path relative to ``output``."""
    out = Path(os.path.realpath(output))
    inputs = {os.path.realpath(f): f for f in files}
    for rel, f in zip(pictures, files):
        target = os.path.realpath(out / rel)
        if target in inputs:
            raise SppDetError(f"output={output}: the picture of {f} would overwrite the input {inputs[target]}; "
                              f"choose an output folder outside the input")
    src = Path(os.path.realpath(input_path))
    if src.is_dir() and (out == src or src in out.parents):
        raise SppDetError(f"output={output}: inside the input folder {input_path} (a later run over that folder "
                          f"would detect on the drawn pictures); choose an output folder outside it")
