"""Compute (or import) selective-search windows for a data set split into the cache.

    python scripts/propose.py dataset=shapes split=test
    python scripts/propose.py dataset=voc07 split=train shard=3 num_shards=8

Prints and writes recall.json / recall.png into the Hydra run directory when the split
has ground truth.
"""
from __future__ import annotations

import hydra
from omegaconf import DictConfig

from spp_det.jobs.cli import report_errors
from spp_det.jobs.propose import propose_job


@hydra.main(config_path="../configs", config_name="propose", version_base="1.3")
@report_errors
def main(cfg: DictConfig) -> None:
    propose_job(cfg)


if __name__ == "__main__":
    main()
