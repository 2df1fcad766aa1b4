"""SPPNet: one conv feature map per image and scale, every window pooled from it."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..boxes import BoxCoder, clip_boxes, flip_boxes
from .backbones import Trunk
from .heads import SPPHead, bf16_supported, compress_head, fastest_head, quantize_head
from .postprocess import postprocess_detections
from .maps import FeatureMap, channels_last, distinct_cells
from .resize import resize_image
from .spp import SpatialPyramidPooling, project_windows, released_scaling

PRECISIONS = ("auto", "float32", "bfloat16", "int8")
INFERENCE_CHUNK = 512  # windows pooled and scored together at inference


class SPPNet(nn.Module):
    """SPP-net detector.

    trunk: conv body with stride/centre geometry; num_classes C (without background).
    scales: test scales (shorter side, pixels); one -> single-scale testing, several ->
    each window pooled at the one scale where it is closest to ``scale_target`` pixels
    across; None derives it from the trunk as the released code does (sz_conv_standard x
    step_standard: the conv extent of a 224-pixel input, 13 cells x 16 = 208 for ZF-5 and
    AlexNet, 14 x 16 = 224 for VGG16, ResNet-50's C4 and Lite0; the paper says 224).
    train_scales: scales a training window is pooled at, one picked at random per window.
    max_size: cap on the longer side after resizing (pixels).
    projection: "released" or "paper" (see spp.project_windows).
    """

    def __init__(self, trunk: Trunk, num_classes: int, levels: tuple[int, ...] = (6, 3, 2, 1),
                 hidden: int = 4096, dropout: float = 0.5, scales: tuple[int, ...] = (688,),
                 train_scales: tuple[int, ...] = (480, 576, 688, 864, 1200), max_size: int = 2000,
                 projection: str = "released", margin: float = 6.5, scale_target: float | None = None,
                 box_weights: tuple[float, ...] = (10.0, 10.0, 5.0, 5.0), test_flip: bool = False) -> None:
        super().__init__()
        self.trunk = trunk
        self.num_classes = num_classes
        self.spp = SpatialPyramidPooling(levels)
        self.head = SPPHead(self.spp.output_size(trunk.out_channels), num_classes, hidden, dropout)
        self.scales = tuple(int(s) for s in scales)
        self.train_scales = tuple(int(s) for s in train_scales)
        self.max_size = int(max_size)
        self.projection, self.margin = projection, margin
        self.scale_target = float(scale_target if scale_target is not None
                                  else trunk.output_size(224, 224)[0] * trunk.stride)
        self.box_coder = BoxCoder(tuple(box_weights))
        self.test_flip = test_flip
        self.box_vote: float | None = None  # inference only: IoU of box voting (postprocess.vote_boxes)
        self.precision = "float32"  # inference only: see set_precision
        self._workspace: torch.Tensor | None = None  # pooled vectors of one chunk, see workspace()

    def set_precision(self, precision: str) -> str:
        """Inference arithmetic: "float32"; "bfloat16" (autocast of trunk and heads); "int8"
        (fc6/fc7 dynamically quantised, CPU only); or "auto": bfloat16 on a GPU that has it,
        on a CPU heads.fastest_head on this model's heads and trunk (which precision is fastest
        depends on the CPU). Pooling, softmax and decoding stay float32. Returns it."""
        if precision not in PRECISIONS:
            raise ValueError(f"precision '{precision}': use one of {PRECISIONS}")
        device = self.trunk.mean.device
        if precision == "auto" and self.precision == "int8":
            precision = "int8"  # quantised heads cannot go back, nor be timed as float32
        if precision == "auto":
            if device.type == "cpu":
                precision = fastest_head(self.head, bf16=bf16_supported(device), trunk=self.trunk)
            else:
                precision = "bfloat16" if bf16_supported(device) else "float32"
        if precision == "int8":
            if device.type != "cpu":
                raise ValueError(f"precision 'int8' runs on the CPU only, not {device}")
            if self.precision != "int8":
                quantize_head(self.head)
        elif self.precision == "int8":
            raise ValueError(f"precision '{precision}': the heads are int8 already (load the model again)")
        self.precision = precision
        return precision

    def autocast(self) -> torch.autocast:
        """The inference precision as a context (a no-op in float32)."""
        return torch.autocast(self.trunk.mean.device.type, dtype=torch.bfloat16,
                              enabled=self.precision == "bfloat16")

    def compress(self, ranks: tuple[int, int]) -> None:
        """Truncated SVD of fc6 and fc7 (Fast R-CNN), for inference: see heads.compress_head."""
        compress_head(self.head, ranks)

    # ---- images -> feature maps -------------------------------------------------------
    def resize(self, image: np.ndarray, scale: int) -> tuple[np.ndarray, float, float]:
        """:func:`resize_image` with this model's ``max_size``."""
        return resize_image(image, scale, self.max_size)

    def to_input(self, resized: np.ndarray | torch.Tensor) -> torch.Tensor:
        """A resized (h, w, 3) uint8 RGB image -> (1, 3, h', w') normalised float tensor on
        the trunk's device. A side shorter than the trunk's smallest input (a 3x900 strip
        capped by ``max_size``) is padded at the bottom/right with the mean colour (0 once
        normalised): windows keep their coordinates, and the trunk always has a map."""
        x = torch.as_tensor(resized).permute(2, 0, 1)[None]
        x = self.trunk.normalize(x.to(self.trunk.mean.device))
        nh, nw = x.shape[-2:]
        need = self.trunk.min_input
        if nh < need or nw < need:
            x = F.pad(x, (0, max(0, need - nw), 0, max(0, need - nh)))
        return x

    def prepare(self, image: np.ndarray, scale: int) -> tuple[torch.Tensor, float, float]:
        """Resize and normalise one (H, W, 3) uint8 RGB image: ((1, 3, h, w) on the trunk's
        device, fx, fy)."""
        resized, fx, fy = self.resize(image, scale)
        return self.to_input(resized), fx, fy

    def compute_features(self, image: np.ndarray, scales: tuple[int, ...]) -> list[FeatureMap]:
        """Run the trunk once per scale. image: (H, W, 3) uint8 RGB."""
        maps = []
        for s in scales:
            x, fx, fy = self.prepare(image, s)
            maps.append(FeatureMap(self.trunk(x)[0], fx, fy, image.shape[:2]))
        return maps

    # ---- windows -> pooled vectors --------------------------------------------------------
    def select_scales(self, boxes: torch.Tensor, height: int, width: int, scales: tuple[int, ...]) -> torch.Tensor:
        """(K,) index into ``scales`` of each window's test scale: the scale nearest to
        scale_target * min(H, W) / sqrt(window area) (the window then spans about
        scale_target pixels, i.e. the 13x13 conv5 extent of a 224-pixel input)."""
        if len(scales) == 1 or len(boxes) == 0:
            return torch.zeros(len(boxes), dtype=torch.long, device=boxes.device)
        area = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).clamp(min=1.0).double()
        expected = self.scale_target * min(height, width) / area.sqrt()
        s = torch.tensor(scales, dtype=torch.float64, device=boxes.device)
        return (expected[:, None] - s[None, :]).abs().argmin(dim=1)

    def project(self, maps: list[FeatureMap], boxes: torch.Tensor, map_index: torch.Tensor) -> torch.Tensor:
        """(K, 5) int64 [map, x1', y1', x2', y2']: each window's inclusive cells on its map.
        boxes: (K, 4) xyxy ORIGINAL pixels of the image of its map; map_index: (K,)."""
        cells = torch.zeros((len(boxes), 5), dtype=torch.long, device=boxes.device)
        for m in map_index.unique().tolist():
            # every tensor made here takes its device from the inputs: under DDP on CUDA the
            # boxes arrive on the GPU while a cached map may still be on the CPU
            sel = (map_index == m).nonzero().squeeze(1).to(boxes.device)
            fm = maps[m]
            if self.projection == "released":
                scaled = released_scaling(boxes[sel], fm.released_factor())
            else:
                scaled = boxes[sel].double() * torch.tensor([fm.fx, fm.fy, fm.fx, fm.fy], dtype=torch.float64,
                                                            device=boxes.device)
            cells[sel, 0] = m
            cells[sel, 1:] = project_windows(scaled, self.trunk.stride, self.trunk.centre0, fm.features.shape[-2:],
                                             self.projection, self.margin)
        return cells

    def pool_cells(self, maps: list[FeatureMap], cells: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """(K, C * bins) pyramid vectors of windows given as :meth:`project` cells.
        ``out``: a tensor to write them into; with rows grouped by map (as
        :meth:`forward_windows` sorts them) each map's rows are written in place."""
        for m in cells[:, 0].unique().tolist():
            sel = (cells[:, 0] == m).nonzero().squeeze(1)
            fm = maps[m]
            win = cells[sel].clone()
            win[:, 0] = 0
            features = fm.features[None].float()
            dest = None
            if out is not None and sel[-1] - sel[0] + 1 == len(sel):  # a contiguous block of rows
                dest = out[int(sel[0]):int(sel[-1]) + 1]
            pooled = self.spp(features, win.to(fm.features.device), out=dest)
            if out is None:
                out = pooled.new_zeros((len(cells), pooled.shape[1]))
            if dest is None:
                out = out.index_copy(0, sel.to(pooled.device), pooled)
        if out is None:
            c = maps[0].features.shape[0] if maps else self.trunk.out_channels
            out = torch.zeros((0, self.spp.output_size(c)), device=self.trunk.mean.device)
        return out

    def pool(self, maps: list[FeatureMap], boxes: torch.Tensor, map_index: torch.Tensor) -> torch.Tensor:
        """Pool each window from its feature map.

        maps: feature maps (any images/scales); boxes: (K, 4) xyxy ORIGINAL pixels of the
        image of its map; map_index: (K,) which map. Returns (K, C * bins), in box order.
        """
        return self.pool_cells(maps, self.project(maps, boxes, map_index))

    def forward(self, inputs: list, boxes: torch.Tensor, map_index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Training entry point (what DistributedDataParallel wraps).

        inputs: per map, either a precomputed FeatureMap (frozen trunk, cached) or a
        prepared image ``(x (1, 3, h, w), fx, fy, (H, W) original size)`` that the trunk runs
        on now (end-to-end); or, for R-CNN mode training, every input a (K_i, C * bins)
        tensor of already pooled crop features, the windows' in box order.
        boxes: (K, 4) original pixels; map_index: (K,). Returns (logits, deltas).
        """
        if inputs and all(isinstance(m, torch.Tensor) for m in inputs):
            return self.head(torch.cat(inputs))  # R-CNN mode's pooled crop features, in box order
        maps = [m if isinstance(m, FeatureMap) else FeatureMap(self.trunk(m[0])[0], *m[1:]) for m in inputs]
        return self.forward_windows(maps, boxes, map_index)

    def forward_windows(self, maps: list[FeatureMap], boxes: torch.Tensor,
                        map_index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Heads on pooled windows -> (logits (K, C + 1), deltas (K, 4C)). At inference
        windows that project to the same cells of the same map, whose pooled vectors are
        therefore equal, go through pooling and heads once (in training each keeps its own
        dropout mask)."""
        cells = self.project(maps, boxes, map_index)
        if self.training:
            return self.head(self.pool_cells(maps, cells))
        unique, inverse = distinct_cells(cells)
        if len(unique) == 0:
            return self.head(self.pool_cells(maps, unique))
        maps = channels_last(maps)
        # in chunks written into one workspace kept between images: fresh memory costs
        # page faults (on this CPU as much as the pooling itself), and peak memory stays
        # flat however many windows an image has
        parts = []
        for i in range(0, len(unique), INFERENCE_CHUNK):
            chunk = unique[i:i + INFERENCE_CHUNK]
            parts.append(self.head(self.pool_cells(maps, chunk, out=self.workspace(len(chunk), maps))))
        logits, deltas = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
        return logits[inverse], deltas[inverse]

    def workspace(self, rows: int, maps: list[FeatureMap]) -> torch.Tensor:
        """(rows, C * bins) float32 buffer for pooled vectors, reused between calls."""
        device = maps[0].features.device
        width = self.spp.output_size(maps[0].features.shape[0])
        buf = self._workspace
        if buf is None or buf.device != device or buf.shape[1] != width or buf.shape[0] < rows:
            buf = torch.empty((max(rows, INFERENCE_CHUNK), width), device=device)
            self._workspace = buf
        return buf[:rows]

    # ---- inference -------------------------------------------------------------------------
    def decode(self, deltas: torch.Tensor, boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """Per-class boxes (K, C, 4) in original pixels, clipped to the image."""
        decoded = self.box_coder.decode(deltas, boxes.to(deltas))
        return clip_boxes(decoded.reshape(-1, 4), (height, width)).reshape(len(boxes), deltas.shape[1] // 4, 4)

    @torch.no_grad()
    def detect_windows(self, image: np.ndarray, boxes: torch.Tensor, scales: tuple[int, ...] | None = None,
                       maps: list[FeatureMap] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Score every window of one image.

        image: (H, W, 3) uint8 RGB; boxes: (K, 4) xyxy original pixels.
        Returns (probs (K, C + 1), per-class boxes (K, C, 4) original pixels). With
        ``test_flip`` the mirrored image is scored too, and the two results averaged (boxes
        mirrored back first).
        """
        scales = tuple(scales or self.scales)
        boxes = torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4)
        probs, per_class = self._score(image, boxes, scales, maps)
        if self.test_flip:
            p2, b2 = self.score_mirrored(image, boxes, scales)
            probs, per_class = (probs + p2) / 2, (per_class + b2) / 2
        return probs, per_class

    @torch.no_grad()
    def score_mirrored(self, image: np.ndarray, boxes: torch.Tensor,
                       scales: tuple[int, ...] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The windows scored on the mirrored image, as ``detect_windows`` without flip
        returns them: (probs (K, C + 1), per-class boxes (K, C, 4) mirrored back into the
        original image's pixels)."""
        w, scales = image.shape[1], tuple(scales or self.scales)
        boxes = torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4)
        probs, per_class = self._score(np.ascontiguousarray(image[:, ::-1]), flip_boxes(boxes, w), scales, None)
        return probs, flip_boxes(per_class.reshape(-1, 4), w).reshape(per_class.shape)

    def _score(self, image: np.ndarray, boxes: torch.Tensor, scales: tuple[int, ...],
               maps: list[FeatureMap] | None) -> tuple[torch.Tensor, torch.Tensor]:
        h, w = image.shape[:2]
        with self.autocast():
            if maps is None:
                maps = self.compute_features(image, scales)
            logits, deltas = self.forward_windows(maps, boxes, self.select_scales(boxes, h, w, scales))
        return self.class_probs(logits.float()).cpu(), self.decode(deltas.float().cpu(), boxes, h, w)

    def class_probs(self, scores: torch.Tensor) -> torch.Tensor:
        """(K, C + 1) scores in [0, 1] from the head's output: the softmax, or for SVMs
        each class's margin through a logistic (a monotone map shared by every class, so
        rankings, hence NMS and AP, are the margins'; the background column is 0). A class
        the classifier never learned scores 0 (below any score threshold)."""
        if self.head.classifier == "svm":
            probs = torch.cat([scores.new_zeros((len(scores), 1)), torch.sigmoid(scores)], dim=1)
        else:
            probs = torch.softmax(scores, dim=1)
        learned = self.head.scored_classes().to(probs.device)
        if not bool(learned.all()):  # a class never learned is never detected (heads.SPPHead)
            probs[:, 1:][:, ~learned] = 0.0
        return probs

    @torch.no_grad()
    def predict(self, image: np.ndarray, boxes: torch.Tensor, scales: tuple[int, ...] | None = None,
                score_thresh: float = 0.001, nms_thresh: float = 0.3,
                max_per_image: int = 100) -> dict[str, torch.Tensor]:
        """Detections of one image: {"boxes" (D, 4) original pixels, "scores" (D,),
        "labels" (D,) in 1..C}."""
        probs, per_class = self.detect_windows(image, boxes, scales)
        return postprocess_detections(probs, per_class, score_thresh, nms_thresh, max_per_image, self.box_vote)
