"""fc6/fc7 and the two outputs: class scores and class-specific box deltas."""
from __future__ import annotations

import copy
import time
import warnings

import torch
from torch import nn
from torch.ao.quantization import quantize_dynamic


CLASSIFIERS = ("softmax", "svm")
BOX_HEADS = ("learned", "ridge", "none")


class SPPHead(nn.Module):
    """fc6 -> ReLU -> dropout -> fc7 -> ReLU -> dropout, then a (C+1)-way classifier and
    class-specific box regression (4 deltas per foreground class).

    forward(x: (K, in_features)) -> (scores, deltas (K, 4 * C)): scores are softmax logits
    (K, C + 1), or with ``classifier`` "svm" the per-class SVM margins (K, C).
    Initialised as Fast R-CNN: classifier N(0, 0.01), regressor N(0, 0.001), zero bias.

    The paper's post-fine-tuning stages, fitted by paper_stages.svm / paper_stages.ridge and used at
    inference when chosen (``classifier``, ``box_head``): ``svm`` (hidden -> C) on fc7
    features times ``svm_scale``, ``ridge`` (in_features -> 4C) on the pooled (pool5)
    features times ``ridge_scale`` (both scales bring the mean feature norm to 20, as the
    released code). ``box_head`` "none" keeps every window's own box.
    """

    def __init__(self, in_features: int, num_classes: int, hidden: int = 4096, dropout: float = 0.5) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.fc6 = nn.Linear(in_features, hidden)
        self.fc7 = nn.Linear(hidden, hidden)
        self.drop = nn.Dropout(dropout)
        self.cls_score = nn.Linear(hidden, num_classes + 1)
        self.bbox_pred = nn.Linear(hidden, 4 * num_classes)
        nn.init.normal_(self.cls_score.weight, std=0.01)
        nn.init.normal_(self.bbox_pred.weight, std=0.001)
        nn.init.zeros_(self.cls_score.bias)
        nn.init.zeros_(self.bbox_pred.bias)
        self.svm: nn.Linear | None = None
        self.ridge: nn.Linear | None = None
        self.register_buffer("svm_scale", torch.ones(()))
        self.register_buffer("ridge_scale", torch.ones(()))
        # classes 1..C the softmax / the SVMs learned (had training windows / positives and
        # negatives): a class never learned scores 0 at inference, never e.g. an SVM's
        # margin 0 -> 0.5 for every window of every image
        self.register_buffer("learned", torch.ones(num_classes, dtype=torch.bool))
        self.register_buffer("svm_learned", torch.ones(num_classes, dtype=torch.bool))
        self.classifier = "softmax"
        self.box_head = "learned"

    def set_svm(self, weight: torch.Tensor, bias: torch.Tensor, scale: float,
                learned: torch.Tensor | None = None) -> None:
        """Per-class SVMs: weight (C, hidden), bias (C,); fc7 features are multiplied by
        scale. ``learned`` (C,) bool: the classes that had an SVM trained (None: a class
        whose weights and bias are all zero was never trained)."""
        self.svm = _linear(weight, bias).to(self.fc7.weight.device)
        self.svm_scale.fill_(float(scale))
        if learned is None:
            learned = (weight != 0).any(dim=1) | (bias != 0)
        self.svm_learned.copy_(learned)

    def scored_classes(self) -> torch.Tensor:
        """(C,) bool: the classes the active classifier learned (the others score 0)."""
        return self.svm_learned if self.classifier == "svm" else self.learned

    def set_ridge(self, weight: torch.Tensor, bias: torch.Tensor, scale: float) -> None:
        """Ridge box regressors: weight (4C, in_features), bias (4C,) in the box coder's
        delta units; pooled features are multiplied by scale."""
        self.ridge = _linear(weight, bias).to(self.fc7.weight.device)
        self.ridge_scale.fill_(float(scale))

    def use(self, classifier: str, box_head: str) -> None:
        """Choose the inference outputs (training always uses the learned heads)."""
        if classifier not in CLASSIFIERS or box_head not in BOX_HEADS:
            raise ValueError(f"classifier '{classifier}' / box regression '{box_head}': use one of "
                             f"{CLASSIFIERS} / {BOX_HEADS}")
        if (classifier == "svm" and self.svm is None) or (box_head == "ridge" and self.ridge is None):
            raise ValueError(f"this model has no {'SVMs' if classifier == 'svm' and self.svm is None else 'ridge regressors'}"
                             f" (train with train.classifier=svm / train.bbox_reg=ridge)")
        self.classifier, self.box_head = classifier, box_head

    @torch.no_grad()
    def load_fc(self, fc: dict[str, torch.Tensor], start: int) -> None:
        """fc6 and fc7 from a network trained on one pool5 grid (ImageNet AlexNet/VGG16,
        see backbones.imagenet_fc): fc6's input columns [start, start + in) (where the
        pyramid holds that grid's level, in the same (C, n, n) order) take its weights; the
        other levels' columns start at zero, so fc6 first computes exactly the ImageNet fc6
        of that level and training grows the rest (their gradients are not zero: their
        inputs are not). fc7 and both biases are copied whole."""
        w6 = fc["fc6.weight"]
        if self.fc6.out_features != w6.shape[0] or self.fc7.weight.shape != fc["fc7.weight"].shape \
                or start + w6.shape[1] > self.fc6.in_features:
            raise ValueError(f"ImageNet fc6 {tuple(w6.shape)} / fc7 {tuple(fc['fc7.weight'].shape)} do not fit fc6 "
                             f"{tuple(self.fc6.weight.shape)} at column {start} (hidden must be {w6.shape[0]})")
        self.fc6.weight.zero_()
        self.fc6.weight[:, start:start + w6.shape[1]] = w6
        self.fc6.bias.copy_(fc["fc6.bias"])
        self.fc7.weight.copy_(fc["fc7.weight"])
        self.fc7.bias.copy_(fc["fc7.bias"])

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """fc7 activations (K, hidden): what the paper's SVMs are trained on."""
        x = self.drop(torch.relu(self.fc6(x)))
        return self.drop(torch.relu(self.fc7(x)))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.features(x)
        if self.training:
            return self.cls_score(h), self.bbox_pred(h)
        # the fitted stages stay float32 under bf16 autocast: small layers, and ridge maps
        # raw pool5 (thousands of inputs) through whitening that rounding could upset
        with torch.autocast(x.device.type, enabled=False):
            svm = self.svm(h.float() * self.svm_scale) if self.classifier == "svm" else None
            ridge = self.ridge(x.float() * self.ridge_scale) if self.box_head == "ridge" else None
        scores = svm if svm is not None else self.cls_score(h)
        if ridge is not None:
            deltas = ridge
        elif self.box_head == "none":
            deltas = h.new_zeros((len(h), self.bbox_pred.out_features))
        else:
            deltas = self.bbox_pred(h)
        return scores, deltas


def bf16_supported(device: torch.device | str) -> bool:
    """Whether bfloat16 matrix products run natively here: AMX or AVX-512-BF16 on a CPU
    (elsewhere autocast would emulate them, slower than float32), bf16 units on a GPU."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        probes = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")  # private, hence getattr
        return any(getattr(torch.cpu, name, lambda: False)() for name in probes)
    return False


def _linear(weight: torch.Tensor, bias: torch.Tensor) -> nn.Linear:
    layer = nn.Linear(weight.shape[1], weight.shape[0])
    with torch.no_grad():
        layer.weight.copy_(weight)
        layer.bias.copy_(bias)
    return layer.requires_grad_(False)


def truncated_linear(layer: nn.Linear, rank: int) -> nn.Sequential:
    """Fast R-CNN's truncated SVD: W (out, in) ~ U_r diag(s_r) V_r^T becomes two layers,
    in -> rank (weight diag(s_r) V_r^T, no bias) -> out (weight U_r, the old bias), so
    one product of out x in multiply-adds per window becomes rank x (in + out). At full
    rank (min(out, in)) the output is the original one up to rounding."""
    w = layer.weight.detach().double()
    u, s, vh = torch.linalg.svd(w, full_matrices=False)
    rank = min(rank, len(s))
    first = nn.Linear(w.shape[1], rank, bias=False)
    second = nn.Linear(rank, w.shape[0], bias=layer.bias is not None)
    with torch.no_grad():
        first.weight.copy_((s[:rank, None] * vh[:rank]).to(layer.weight))
        second.weight.copy_(u[:, :rank].to(layer.weight))
        if layer.bias is not None:
            second.bias.copy_(layer.bias)
    return nn.Sequential(first, second).to(layer.weight.device)


def compress_head(head: SPPHead, ranks: tuple[int, int]) -> SPPHead:
    """Replace fc6 and fc7 of a trained head by their truncated SVDs (ranks: fc6, fc7;
    Fast R-CNN used 1024 and 256 for VGG16's 25088 -> 4096 -> 4096). For inference only:
    the head is changed in place and returned."""
    head.fc6 = truncated_linear(head.fc6, ranks[0])
    head.fc7 = truncated_linear(head.fc7, ranks[1])
    return head


def quantize_head(head: SPPHead) -> SPPHead:
    """fc6 and fc7 as int8 dynamically quantised layers (weights int8 per tensor, each
    batch's activations quantised on the fly; torch.ao's x86/fbgemm kernels, CPU only).
    The outputs, SVMs and ridge stay float32: they are small, and their rounding would
    move scores and boxes directly. For inference only: changed in place and returned."""
    with warnings.catch_warnings():  # torch 2.14 marks torch.ao's eager quantisation deprecated (torchao
        warnings.simplefilter("ignore")  # succeeds it; its CPU int8 path is not the fbgemm one timed here)
        return quantize_dynamic(head, qconfig_spec={"fc6", "fc7"}, dtype=torch.qint8, inplace=True)


def head_time(module: nn.Module, x: torch.Tensor, bf16: bool = False, repeats: int = 3, chunk: int = 512) -> float:
    """Best of ``repeats`` seconds for ``module`` (the heads, or the trunk on a (1, 3, H, W)
    image) on the rows of ``x`` in chunks of ``chunk``, after a warm-up. Each repeat opens its own autocast context, as inference does per
    image: bf16 autocast casts fc6/fc7's weights once per context, a cost a real image pays."""
    best = float("inf")
    for i in range(repeats + 1):
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            t0 = time.perf_counter()
            for j in range(0, len(x), chunk):
                module(x[j:j + chunk])
            if i:
                best = min(best, time.perf_counter() - t0)
    return best


def fastest_head(head: SPPHead, bf16: bool, rows: int = 512, slack: float = 0.1, timer=head_time,
                 trunk: nn.Module | None = None, side: int = 480) -> str:
    """The precision for ``auto``: of "float32", "bfloat16" (when ``bf16`` is native here)
    and "int8", timed on this CPU on a copy of ``head`` for ``rows`` windows (one chunk, as
    a photo with fast proposals has) plus, with ``trunk``, one ``side`` x ``side`` image
    through it (int8 leaves the trunk float32, bf16 autocasts it too); random input, as the
    time does not depend on the values. Returns the most exact one within ``slack`` of the
    fastest: on voc2012-1800 val bf16 heads moved the recipe's mAP by +0.0001, int8 ones by
    -0.007 (benchmarks/head_speed.py). ``timer`` is head_time's signature (tests pass their own)."""
    fc6 = head.fc6[0] if isinstance(head.fc6, nn.Sequential) else head.fc6
    x = torch.randn(rows, fc6.in_features, generator=torch.Generator().manual_seed(0))
    times = {"float32": timer(head, x)}
    if bf16:
        times["bfloat16"] = timer(head, x, bf16=True)
    times["int8"] = timer(quantize_head(copy.deepcopy(head)), x)
    if trunk is not None:
        image = torch.randn(1, 3, side, side, generator=torch.Generator().manual_seed(0)).to(fc6.weight.device)
        full = timer(trunk, image)
        times["float32"] += full
        times["int8"] += full
        if bf16:
            times["bfloat16"] += timer(trunk, image, bf16=True)
    fastest = min(times.values())
    return next(p for p, t in times.items() if t <= fastest * (1 + slack))  # in order of exactness
