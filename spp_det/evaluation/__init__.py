"""Scoring detections: the VOC devkit's AP, COCO AP through pycocotools, results files."""
