"""Selective-search proposals: computing them, caching them on disk, measuring recall."""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from ..errors import SppDetError
from .compute import ComputeStats, compute_missing, proposals_for, shard_items
from .recall import proposal_recall
from .selective_search import SelectiveSearchConfig, selective_search
from .store import ProposalStore

__all__ = ["ComputeStats", "ProposalStore", "SelectiveSearchConfig", "compute_missing",
           "proposal_recall", "proposals_for", "selective_search", "shard_items", "build_proposals",
           "imported_settings", "file_sha1"]


def build_proposals(cfg: Any) -> tuple[ProposalStore, SelectiveSearchConfig | None]:
    """Store and search settings from a ``configs/proposals/*.yaml`` node (the store is
    keyed by image content, so one store serves every data set and split).

    ``cfg.source: imported`` (configs/proposals/imported.yaml): boxes imported by
    ``propose.py import_file=...`` into a store of their own, keyed by the imported file's
    digest (``cfg.sha1``, computed from ``cfg.file`` when not given; checkpoints record
    it). There is no search then (None): an image missing from the import is an error or
    a counted skip, never filled in with other boxes."""
    if cfg.get("source", "selective_search") == "imported":
        return ProposalStore(cfg.cache_dir, imported_settings(cfg)), None
    optional = {k: cfg.get(k) for k in ("base_k", "inc_k", "sigma") if cfg.get(k) is not None}
    ss = SelectiveSearchConfig(mode=cfg.mode, max_size=int(cfg.max_size), min_size=float(cfg.min_size),
                               max_boxes=int(cfg.max_boxes), **optional)
    return ProposalStore(cfg.cache_dir, ss.as_dict()), ss


def imported_settings(cfg: Any) -> dict:
    """{"source": "imported", "sha1": digest of the imported file}: the store's key."""
    sha1 = cfg.get("sha1")
    if not sha1:
        if not cfg.get("file"):
            raise SppDetError("proposals=imported needs proposals.file=<the imported .mat/.pkl> (or proposals.sha1)")
        sha1 = file_sha1(cfg.file)
    return {"source": "imported", "sha1": str(sha1)}


def file_sha1(path: str | Path) -> str:
    """SHA-1 of a file's bytes (40 hex digits), read in 1 MiB pieces."""
    h = hashlib.sha1()
    try:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    except OSError as exc:
        raise SppDetError(f"{path}: cannot read the imported proposals ({exc.strerror or exc})") from exc
    return h.hexdigest()
