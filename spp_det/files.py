"""Writing files so that a crash never leaves half of one: the one helper every writer uses.

The bytes go to a temporary file in the target's folder, are flushed and fsynced, and the
temporary file is renamed over the target (``os.replace`` is atomic on POSIX and Windows).
A reader sees the old file or the new one, never a mixture; a killed writer leaves only a
stray ``.<name>.*.tmp`` file that nothing reads.
"""
from __future__ import annotations

import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from .errors import SppDetError


class WriteError(SppDetError, OSError):
    """A file could not be written (a full disk, a read-only folder): the one-line error
    naming it, still an ``OSError`` for code that handles those."""

    def __str__(self) -> str:
        return str(self.strerror)  # "<file>: cannot write (<reason>)", without "[Errno N]"


def _write_error(path: Path, exc: OSError) -> WriteError:
    return WriteError(exc.errno, f"{path}: cannot write ({exc.strerror or exc})")


def write_atomic(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temp file, fsync, rename); creates the folder.
    A failure (e.g. ENOSPC) leaves the old file and raises :class:`WriteError` naming ``path``."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise _write_error(path, exc) from exc
    try:
        # mkstemp makes the file 0600; give it the mode open() would (0666 less the umask),
        # or caches and checkpoints shared with a group become unreadable to it
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError) and not isinstance(exc, SppDetError):
            raise _write_error(path, exc) from exc
        raise


def write_json_atomic(path: str | Path, obj: Any) -> None:
    """JSON (lists compact, dicts indented) written with :func:`write_atomic`."""
    write_atomic(path, json.dumps(obj, indent=None if isinstance(obj, list) else 2).encode())


def save_torch_atomic(path: str | Path, obj: Any) -> None:
    """``torch.save`` written with :func:`write_atomic`."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    write_atomic(path, buffer.getvalue())


def load_torch_file(path: str | Path, what: str) -> object:
    """torch.load (tensors and plain containers only) with one clear error naming the file."""
    path = Path(path)
    if not path.is_file():
        raise SppDetError(f"{path}: {what} file not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for a damaged file
        raise SppDetError(f"{path}: cannot read {what} file ({exc})") from exc
