"""Checkpoints: written atomically, self-describing (classes, model config, normalisation),
loadable without the training config."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from ..errors import SppDetError
from ..files import load_torch_file, save_torch_atomic
from . import SPPNet, build_detector

FORMAT = "spp_det/1"
log = logging.getLogger(__name__)


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> None:
    """torch.save through a temp file + rename: a crash never leaves half a checkpoint."""
    save_torch_atomic(path, {"format": FORMAT, **payload})


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`, with a clear error otherwise."""
    ckpt = load_torch_file(path, "checkpoint")
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise SppDetError(f"{path}: not an spp_det checkpoint (no '{FORMAT}' format tag)")
    return ckpt


def model_from_checkpoint(ckpt: dict[str, Any], device: str | torch.device = "cpu",
                          path: str | Path | None = None) -> SPPNet:
    """Rebuild the detector a checkpoint describes and load its weights (no download)."""
    cfg = OmegaConf.create(ckpt["model_cfg"])
    cfg.trunk.weights_path = None  # the checkpoint holds every weight: no file from the training machine
    model = build_detector(cfg, num_classes=len(ckpt["classes"]), pretrained=False)
    # the input normalisation is not a weight: a code change of a trunk's default would
    # silently feed the learned weights other numbers, so the checkpoint's is checked
    built = {"mean": model.trunk.mean.flatten().tolist(), "std": model.trunk.std.flatten().tolist()}
    check_fits(ckpt, path or "checkpoint", "its model config now builds", optional=("trunk", "normalization"),
               hint=" this version of the code", trunk=model.trunk.name, normalization=built)
    load_weights(model, ckpt["model"])
    warn_unlearned(model, list(ckpt["classes"]), str(path or "checkpoint"))
    return model.to(device).eval()


def check_fits(ckpt: dict[str, Any], path: str | Path, context: str, optional: tuple[str, ...] = (),
               hint: str = "", **expected: Any) -> None:
    """One SppDetError naming the file when a checkpoint's recorded ``classes``, ``trunk`` or
    ``normalization`` are not what this run or this code expects, or when it does not
    record one of them, unless that key is ``optional`` (files from versions before it)."""
    for key, value in expected.items():
        if key not in ckpt:
            if key in optional:
                continue
            raise SppDetError(f"{path}: the checkpoint does not record its {key}, so it cannot be checked "
                              f"against {context} {value}")
        if ckpt[key] != value:
            raise SppDetError(f"{path}: trained with {key} {ckpt[key]}, but {context} {value}: this checkpoint "
                              f"does not fit{hint}")


def warn_unlearned(model: SPPNet, classes: list[str], where: str) -> list[str]:
    """Warn once, naming them, about classes the active classifier never learned (they
    are never detected). Returns their names."""
    head = model.head
    names = [c for c, ok in zip(classes, head.scored_classes().tolist()) if not ok]
    if names:
        what = "SVM (no positives or no negatives)" if head.classifier == "svm" else "training window"
        log.warning("%s: class(es) %s had no %s: never detected", where, ", ".join(names), what)
    return names


def load_weights(model: SPPNet, state: dict[str, torch.Tensor]) -> None:
    """Load a checkpoint's state dict, SVMs and ridge regressors included (they exist only
    in models that were given them: the layers are made first), and make them the
    inference choice, as training did."""
    head = model.head
    if "head.svm.weight" in state:
        # without "head.svm_learned" (written before unlearned classes were marked),
        # set_svm reads an all-zero SVM row as never trained (it scored 0.5 everywhere)
        head.set_svm(state["head.svm.weight"], state["head.svm.bias"], float(state["head.svm_scale"]))
    if "head.ridge.weight" in state:
        head.set_ridge(state["head.ridge.weight"], state["head.ridge.bias"], float(state["head.ridge_scale"]))
    # checkpoints from before the paper's stages existed lack their scales
    own = model.state_dict()
    defaults = {k: own[k] for k in ("head.svm_scale", "head.ridge_scale", "head.learned", "head.svm_learned")}
    state = {**defaults, **state}
    model.load_state_dict(state)
    head.use("svm" if head.svm is not None else "softmax", "ridge" if head.ridge is not None else "learned")


def resume_path(resume, ckpt_dir: Path) -> Path | None:
    """The checkpoint ``resume`` asks for: false/None -> none; true -> the run directory's
    last.pt, which must exist; "auto" -> last.pt if it exists; otherwise a path."""
    if resume is None or resume is False:
        return None
    last = ckpt_dir / "last.pt"
    if resume is True or resume == "true":
        if not last.is_file():
            raise SppDetError(f"resume=true: {last} does not exist (no checkpoint in this run directory; pass "
                              f"hydra.run.dir=<the run's directory>, or resume=auto to start afresh when there is none)")
        return last
    if resume == "auto":
        return last if last.is_file() else None
    return Path(resume)
