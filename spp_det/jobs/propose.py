"""scripts/propose.py's job: fill the proposal cache for a split (or one shard of it), or
import precomputed proposals; then measure recall where there is ground truth."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from ..data import build_dataset
from ..errors import SppDetError
from ..files import write_json_atomic
from ..proposals import build_proposals, compute_missing, proposal_recall, shard_items
from ..visualize import plot_recall
from .cli import run_dir


def propose_job(cfg: DictConfig) -> dict | None:
    """scripts/propose.py: fill the proposal cache for one split (or one shard of it),
    or import precomputed proposals; then report recall when there is ground truth."""
    out_dir = run_dir()
    dataset = build_dataset(cfg.dataset, cfg.split)
    if cfg.import_file:
        # imported boxes are their own source, keyed by the file's digest: never filed under
        # (or mixed with) selective search's settings
        path = Path(cfg.import_file)
        node = OmegaConf.create({"source": "imported", "file": str(path), "cache_dir": cfg.proposals.cache_dir})
        store, _ = build_proposals(node)
        paths = {t.image_id: t.path for t in dataset.targets}
        n = store.import_mat(path, paths) if path.suffix == ".mat" else store.import_pickle(path, paths)
        missing = sum(not store.has(t.path) for t in dataset.targets)
        print(f"imported proposals of {n} images from {path} into {store.dir}; {missing} image(s) of "
              f"{dataset.name}/{cfg.split} are not in it. Use them with: proposals=imported "
              f"proposals.sha1={store.settings['sha1']}")
        return None
    store, ss = build_proposals(cfg.proposals)
    targets = shard_items(dataset.targets, cfg.shard, cfg.num_shards)
    items = [t.path for t in targets]
    stats = compute_missing(store, items, ss, workers=cfg.workers)
    print(f"{dataset.name}/{cfg.split} shard {cfg.shard}/{cfg.num_shards}: {stats.computed} computed "
          f"({stats.seconds_per_image:.2f} s/image on one core), {stats.cached} already cached, "
          f"{len(stats.failed)} failed -> {store.dir}")
    if stats.failed:
        raise SppDetError(f"{len(stats.failed)} image(s) failed, first: {stats.failed[0]}")
    keep = [(torch.from_numpy(store.get(t.path)), t.boxes[~t.ignore]) for t in targets]
    if not any(len(g) for _, g in keep):
        return None  # no ground truth: nothing to measure
    recall = proposal_recall([p for p, _ in keep], [g for _, g in keep])
    recall.update({"seconds_per_image": stats.seconds_per_image if stats.computed else None,
                   "settings": store.settings, "dataset": dataset.name, "split": cfg.split,
                   "shard": cfg.shard, "num_shards": cfg.num_shards})
    write_json_atomic(out_dir / "recall.json", recall)
    print(json.dumps({k: v for k, v in recall.items() if k != "recall_vs_num_proposals"}, indent=1))
    if cfg.plot:
        plot_recall(recall["recall_vs_num_proposals"], out_dir / "recall.png",
                    f"{dataset.name}/{cfg.split}: " + (f"selective search ({ss.mode}, {ss.max_size} px)" if ss is not None
                                                        else "imported proposals"))
    return recall
