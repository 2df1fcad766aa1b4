"""On-disk cache of proposal windows, one small file per image.

Layout: ``<cache_dir>/<hash>/<kk>/<key>.boxes`` where ``hash`` is a short digest of the
search settings (a change of settings never reuses stale boxes), ``key`` the digest of the
image file's bytes (``data.image_digest``) and ``kk`` its first two digits (keeps folders
small for COCO's 118k images). Keyed by content, not by data set, split or image id: a
split whose images change under the same ids never gets stale windows, two data sets with
overlapping ids never share an entry, and an image reached through two data set configs
(VOC2007 trainval in voc07 and voc0712) is searched once. ``settings.json`` beside the
files says what they are.

File format (written by hand because it is the project's own contract): 8-byte magic,
uint32 count N, uint32 CRC32 of the payload, then N*4 float32 xyxy. A truncated or
damaged file fails the length or CRC check and is recomputed, never read as valid; the
bytes are a pure function of the boxes, so an interrupted-then-resumed run leaves the
same store as an uninterrupted one. Writes go through ``files.write_atomic``.
"""
from __future__ import annotations

import hashlib
import json
import logging
import pickle
import struct
import zlib
from pathlib import Path

import numpy as np

from ..data import image_digest
from ..errors import SppDetError
from ..files import write_atomic

log = logging.getLogger(__name__)

MAGIC = b"SPPBOX01"
HEADER = struct.Struct("<8sII")


def settings_hash(settings: dict) -> str:
    """8 hex digits identifying the settings (order-independent)."""
    return hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:8]


def encode_boxes(boxes: np.ndarray) -> bytes:
    payload = np.ascontiguousarray(boxes, dtype="<f4").reshape(-1, 4).tobytes()
    return HEADER.pack(MAGIC, len(payload) // 16, zlib.crc32(payload)) + payload


def decode_boxes(data: bytes) -> np.ndarray | None:
    """Boxes (N, 4) float32, or None for a file that is not a complete, intact entry."""
    if len(data) < HEADER.size:
        return None
    magic, n, crc = HEADER.unpack_from(data)
    payload = data[HEADER.size:]
    if magic != MAGIC or len(payload) != 16 * n or zlib.crc32(payload) != crc:
        return None
    return np.frombuffer(payload, dtype="<f4").reshape(n, 4).astype(np.float32)


class ProposalStore:
    """Proposal boxes of one search setting on disk, keyed by image content.

    ``get(image_path)`` -> (N, 4) float32 xyxy original pixels, or None when missing or
    corrupt; ``put(image_path, boxes)``. ``key(image_path)`` is the content digest (an
    unreadable file raises SppDetError naming it); the ``*_key`` variants take it directly.
    """

    def __init__(self, cache_dir: str | Path, settings: dict) -> None:
        self.settings = dict(settings)
        self.dir = Path(cache_dir) / settings_hash(self.settings)
        self.dir.mkdir(parents=True, exist_ok=True)
        meta = self.dir / "settings.json"
        if not meta.is_file():
            write_atomic(meta, json.dumps(self.settings, indent=2, sort_keys=True).encode())
        self.corrupt_found = 0

    @staticmethod
    def key(image_path: str | Path) -> str:
        return image_digest(image_path)

    @staticmethod
    def path_for(store_dir: Path, key: str) -> Path:
        return store_dir / key[:2] / f"{key}.boxes"

    def path(self, image_path: str | Path) -> Path:
        return self.path_for(self.dir, self.key(image_path))

    def has(self, image_path: str | Path) -> bool:
        """Whether an entry exists (it may still prove corrupt when read)."""
        try:
            return self.path(image_path).is_file()
        except SppDetError:
            return False

    def get(self, image_path: str | Path) -> np.ndarray | None:
        return self.get_key(self.key(image_path))

    def get_key(self, key: str) -> np.ndarray | None:
        path = self.path_for(self.dir, key)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        boxes = decode_boxes(data)
        if boxes is None:
            self.corrupt_found += 1
            log.warning("%s: corrupt proposal file, it will be recomputed", path)
        return boxes

    def put(self, image_path: str | Path, boxes: np.ndarray) -> None:
        self.put_key(self.dir, self.key(image_path), boxes)

    @classmethod
    def put_key(cls, store_dir: Path, key: str, boxes: np.ndarray) -> None:
        """Write one entry into ``store_dir`` (also what worker processes call: no store
        object, no settings I/O)."""
        path = cls.path_for(Path(store_dir), key)
        write_atomic(path, encode_boxes(np.asarray(boxes, dtype=np.float32).reshape(-1, 4)))

    def _image_path(self, paths: dict, image_id, source: Path) -> Path:
        if image_id not in paths and str(image_id) in paths:
            image_id = str(image_id)
        try:
            return paths[image_id]
        except KeyError:
            raise SppDetError(f"{source}: image id {image_id!r} is not in the data set") from None

    def import_mat(self, path: str | Path, paths: dict, keys: list[str | int] | None = None) -> int:
        """Import R-CNN / Fast R-CNN ``selective_search_data/*.mat`` files: ``boxes`` is a
        cell array (one (N, 4) array per image, y1, x1, y2, x2, 1-based inclusive) and
        ``images`` the image ids (or pass ``keys`` in the same order). ``paths`` maps an
        image id to its file (the store is keyed by content). Returns the count."""
        try:
            from scipy.io import loadmat
        except ImportError as exc:  # optional: only this import path needs scipy
            raise SppDetError("importing .mat proposals needs scipy (pip install scipy)") from exc
        try:
            mat = loadmat(str(path))
        except Exception as exc:  # scipy raises several types for bad files
            raise SppDetError(f"{path}: cannot read as a MATLAB file ({exc})") from exc
        if "boxes" not in mat:
            raise SppDetError(f"{path}: no 'boxes' variable")
        cells = mat["boxes"].ravel()
        if keys is None:
            if "images" not in mat:
                raise SppDetError(f"{path}: no 'images' variable; pass the image ids")
            keys = [str(np.asarray(k).ravel()[0]) for k in mat["images"].ravel()]
        if len(keys) != len(cells):
            raise SppDetError(f"{path}: {len(cells)} box arrays for {len(keys)} image ids")
        for key, b in zip(keys, cells):
            b = np.asarray(b, dtype=np.float32).reshape(-1, 4)
            # (y1, x1, y2, x2) 1-based inclusive -> xyxy 0-based continuous
            self.put(self._image_path(paths, key, Path(path)),
                     np.stack([b[:, 1] - 1, b[:, 0] - 1, b[:, 3], b[:, 2]], axis=1))
        return len(keys)

    def import_pickle(self, path: str | Path, paths: dict) -> int:
        """Import a detectron2/mmdetection-style pickle ``{"ids": [...], "boxes": [(N, 4)
        xyxy, ...]}`` (detectron2 also names them "indexes"); ``paths`` maps an image id to
        its file. Returns the count."""
        try:
            with open(path, "rb") as f:
                data = pickle.load(f)
        except (OSError, pickle.UnpicklingError, EOFError) as exc:
            raise SppDetError(f"{path}: cannot read proposals pickle ({exc})") from exc
        ids = data.get("ids", data.get("indexes")) if isinstance(data, dict) else None
        if ids is None or "boxes" not in data or len(ids) != len(data["boxes"]):
            raise SppDetError(f"{path}: expected a dict with equally long 'ids' and 'boxes'")
        for key, b in zip(ids, data["boxes"]):
            self.put(self._image_path(paths, key, Path(path)), np.asarray(b, dtype=np.float32).reshape(-1, 4))
        return len(ids)
