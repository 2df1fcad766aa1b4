"""Compute (or import) selective-search windows for a data set split into the cache.

    python scripts/propose.py dataset=shapes split=test
    python scripts/propose.py dataset=voc07 split=train shard=3 num_shards=8

Prints and writes recall.json / recall.png into the Hydra run directory when the split
has ground truth.
"""
from spp_det.jobs.entry_points import propose

if __name__ == "__main__":
    propose()
