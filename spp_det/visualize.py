"""Pictures for people: detections drawn on images (OpenCV), and plots with axes, tick
values and legends (matplotlib): per-class precision-recall, proposal recall, training curve."""
from __future__ import annotations

import colorsys
import io
from pathlib import Path

import cv2
import numpy as np
import torch

from .files import write_atomic


def class_colour(label: int) -> tuple[int, int, int]:
    """A stable, distinct BGR colour per label (golden-ratio hue steps)."""
    r, g, b = colorsys.hsv_to_rgb((label * 0.618034) % 1.0, 0.85, 1.0)
    return int(b * 255), int(g * 255), int(r * 255)


def draw_detections(image_rgb: np.ndarray, boxes: torch.Tensor, labels: torch.Tensor,
                    scores: torch.Tensor, classes: list[str]) -> np.ndarray:
    """Boxes with 'class score' captions on a copy of the image; returns BGR for cv2.imwrite.
    boxes: (K, 4) xyxy original pixels; labels: (K,) 1..C; scores: (K,)."""
    out = cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR)
    thick = max(1, round(max(out.shape[:2]) / 400))
    for box, label, score in zip(boxes.tolist(), labels.tolist(), scores.tolist()):
        x1, y1, x2, y2 = (int(round(v)) for v in box)
        colour = class_colour(label)
        cv2.rectangle(out, (x1, y1), (max(x1, x2 - 1), max(y1, y2 - 1)), colour, thick)
        text = f"{classes[label - 1]} {score:.2f}"
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, 0.4 * thick, thick)
        ty = y1 - 2 if y1 - th - base - 2 >= 0 else y1 + th + 2
        cv2.rectangle(out, (x1, ty - th - 2), (x1 + tw + 2, ty + base - 2), colour, -1)
        cv2.putText(out, text, (x1 + 1, ty - 2), cv2.FONT_HERSHEY_SIMPLEX, 0.4 * thick, (0, 0, 0),
                    thick, cv2.LINE_AA)
    return out


def _figure(n: int, cell: float = 3.2):
    """A grid of n axes (matplotlib, file output only: the Agg backend)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = max(1, min(4, n))
    rows = max(1, (n + cols - 1) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(cell * cols, cell * rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, list(axes.flat[:n])


def _save(fig, path: str | Path) -> None:
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    write_atomic(path, buffer.getvalue())
    import matplotlib.pyplot as plt
    plt.close(fig)


def plot_pr_curves(curves: dict[str, tuple[np.ndarray, np.ndarray, float | None]], path: str | Path) -> None:
    """One precision-recall plot per class; curves: name -> (recall (K,), precision (K,), AP)."""
    fig, axes = _figure(len(curves))
    for ax, (name, (rec, prec, ap)) in zip(axes, curves.items()):
        ax.plot(rec, prec, lw=1.5, label=f"AP {'n/a' if ap is None else f'{ap:.3f}'}")
        ax.set(title=name, xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02))
        ax.grid(alpha=0.3)
        ax.legend(loc="lower left")
    _save(fig, path)


def plot_fp_breakdown(kinds: dict[str, list[str]], types: tuple[str, ...], path: str | Path) -> None:
    """Per class, the share of each false-positive type among its top k false positives
    (k = 1 .. all of them), stacked (R-CNN's Fig. 4); kinds: name -> types in score order."""
    fig, axes = _figure(len(kinds))
    for ax, (name, seq) in zip(axes, kinds.items()):
        if seq:
            k = np.arange(1, len(seq) + 1)
            shares = [np.cumsum([s == t for s in seq]) / k for t in types]
            ax.stackplot(k, shares, labels=types)
            ax.set_xscale("log")
            ax.legend(loc="lower left", fontsize=7)
        ax.set(title=name, xlabel="top false positives", ylabel="share", ylim=(0, 1))
    _save(fig, path)


def plot_recall(recall_vs_k: dict[str, dict[str, float]], path: str | Path, title: str = "") -> None:
    """Recall vs number of proposals kept: recall_vs_k = {k: {iou threshold: recall}}."""
    fig, (ax,) = _figure(1, cell=4.5)
    ks = [int(k) for k in recall_vs_k]
    for t in next(iter(recall_vs_k.values())):
        ax.plot(ks, [v[t] for v in recall_vs_k.values()], marker="o", ms=3, label=f"IoU >= {t}")
    ax.set_xscale("log")
    ax.set(title=title or "proposal recall", xlabel="number of proposals per image", ylabel="recall", ylim=(0, 1.02))
    ax.grid(alpha=0.3, which="both")
    ax.legend(loc="lower right")
    _save(fig, path)


def plot_training(history: list[dict], path: str | Path) -> None:
    """Training curve from the run record: loss (total, cls, box), learning rate and the
    validation loss/mAP against the iteration."""
    steps = [h for h in history if "loss" in h]
    vals = [h for h in history if "val_loss" in h]
    fig, axes = _figure(3, cell=3.6)
    it = [h["iteration"] for h in steps]
    for key in ("loss", "loss_cls", "loss_box"):
        axes[0].plot(it, [h[key] for h in steps], lw=1, label=key)
    axes[0].set(title="training loss", xlabel="iteration", ylabel="loss")
    axes[1].plot(it, [h["lr"] for h in steps], lw=1.5, color="tab:purple", label="learning rate")
    axes[1].set(title="learning rate", xlabel="iteration", ylabel="lr")
    if vals:
        vi = [h["iteration"] for h in vals]
        axes[2].plot(vi, [h["val_loss"] for h in vals], marker="o", label="val loss")
        if any("val_mAP" in h for h in vals):
            axes[2].plot(vi, [h.get("val_mAP", np.nan) for h in vals], marker="s", label="val mAP")
    axes[2].set(title="validation", xlabel="iteration")
    for ax in axes:
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:  # no validation: nothing to label
            ax.legend(loc="best")
    _save(fig, path)
