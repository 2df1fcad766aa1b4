"""spp_det: SPP-net object detection in PyTorch.

``spp_det.Detector.from_checkpoint(path)`` is the Python entry point for detection; the
scripts in ``scripts/`` are the command-line ones."""
from .inference.api import Detector

__version__ = "0.1.0"
__all__ = ["Detector"]
