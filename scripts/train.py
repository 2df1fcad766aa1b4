"""Train SPP-net, then evaluate it on the test split.

    python scripts/train.py                                    # shapes, CPU, minutes
    python scripts/train.py +experiment=voc07_alexnet            # a whole recipe (configs/experiment/)
    torchrun --nproc_per_node=4 scripts/train.py device=cuda ...

Writes checkpoints/{last,best}.pt, train.log, metrics.json, detections.json into the Hydra
run directory.
"""
from spp_det.jobs.entry_points import train

if __name__ == "__main__":
    train()
