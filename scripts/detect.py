"""Detect objects in a folder of images (or one image): pictures plus detections.json.

    python scripts/detect.py checkpoint=outputs/train/.../checkpoints/best.pt \
        input=data/shapes/SHAPES/JPEGImages output=outputs/shapes_detections

Unreadable files are named on stderr and skipped; the exit code is 1 if any failed.
"""
from spp_det.jobs.entry_points import detect

if __name__ == "__main__":
    detect()
