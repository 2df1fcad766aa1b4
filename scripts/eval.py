"""Evaluate: score a detections file, or run a checkpoint over a split and score it.

    python scripts/eval.py dataset=voc07 detections=path/to/detections.json
    python scripts/eval.py checkpoint=outputs/train/.../checkpoints/best.pt

Writes metrics.json (and, when a model ran, detections.json and pr_curves.png) into the
Hydra run directory and prints the per-class table.
"""
from spp_det.jobs.entry_points import evaluate

if __name__ == "__main__":
    evaluate()
