"""Selective-search proposals: computing them, caching them on disk, measuring recall."""
from __future__ import annotations

from typing import Any

from .compute import ComputeStats, compute_missing, proposals_for, shard_items
from .recall import proposal_recall
from .selective_search import SelectiveSearchConfig, selective_search
from .store import ProposalStore

__all__ = ["ComputeStats", "ProposalStore", "SelectiveSearchConfig", "compute_missing",
           "proposal_recall", "proposals_for", "selective_search", "shard_items", "build_proposals"]


def build_proposals(cfg: Any) -> tuple[ProposalStore, SelectiveSearchConfig]:
    """Store and search settings from a ``configs/proposals/*.yaml`` node (the store is
    keyed by image content, so one store serves every data set and split)."""
    ss = SelectiveSearchConfig(mode=cfg.mode, max_size=int(cfg.max_size), min_size=float(cfg.min_size),
                               max_boxes=int(cfg.max_boxes))
    return ProposalStore(cfg.cache_dir, ss.as_dict()), ss
