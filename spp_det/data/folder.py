"""Every image file in a folder (sorted by name), one image file, or a ``.txt`` list of
image paths (one per line, relative to the list's folder): input for detection.

Image ids are the file names. Sizes are read lazily: a corrupt file must not stop the
other images from being processed, so nothing is decoded here.
"""
from __future__ import annotations

from pathlib import Path

from ..errors import SppDetError
from .sample import IMAGE_SUFFIXES


def list_images(path: str | Path) -> list[Path]:
    """Image files in ``path``: a folder (by suffix, sorted), a .txt list, or one file."""
    path = Path(path)
    if path.is_file() and path.suffix.lower() == ".txt":
        lines = [ln.strip() for ln in path.read_text().splitlines() if ln.strip()]
        if not lines:
            raise SppDetError(f"{path}: image list is empty")
        return [p if p.is_absolute() else path.parent / p for p in map(Path, lines)]
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise SppDetError(f"{path}: no such file or folder")
    files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise SppDetError(f"{path}: folder holds no image files ({', '.join(IMAGE_SUFFIXES)})")
    return files
