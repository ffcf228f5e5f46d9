"""Segmentation metrics (NumPy): confusion matrix, IoU, mIoU, pixel agreement."""

from __future__ import annotations

import numpy as np

from edgeseg.errors import InputError

# Pixel agreement a graph must reach by default: FP32 with PyTorch, FP16 and INT8 with the FP32
# graph. Builds, `edgeseg calibrate`, `edgeseg parity` and edgeseg.testing all read it from here.
DEFAULT_MIN_AGREEMENT: dict[str, float] = {"fp32": 0.999, "fp16": 0.995, "int8": 0.99}


def confusion_matrix(
    pred: np.ndarray, target: np.ndarray, num_classes: int, *, ignore_index: int | None = None
) -> np.ndarray:
    """(num_classes, num_classes) int64 counts, rows = target class, columns = predicted.

    Target pixels equal to ``ignore_index``, or outside [0, num_classes), are not counted.
    """
    if pred.shape != target.shape:
        raise InputError(f"prediction {pred.shape} and target {target.shape} differ in shape")
    t = target.astype(np.int64, copy=False).ravel()
    p = pred.astype(np.int64, copy=False).ravel()
    valid = (t >= 0) & (t < num_classes)
    if ignore_index is not None:
        valid &= t != ignore_index
    p = np.clip(p[valid], 0, num_classes)  # predictions past the classes land in no column
    idx = t[valid] * (num_classes + 1) + p
    counts = np.bincount(idx, minlength=num_classes * (num_classes + 1))
    return counts.reshape(num_classes, num_classes + 1)[:, :num_classes]


def iou_per_class(cm: np.ndarray) -> np.ndarray:
    """IoU of each class; NaN where the class is in neither prediction nor target."""
    tp = np.diag(cm).astype(np.float64)
    union = cm.sum(axis=0) + cm.sum(axis=1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, tp / np.maximum(union, 1), np.nan)


def mean_iou(cm: np.ndarray) -> float:
    """Mean of the per-class IoUs over classes that occur (NaNs skipped)."""
    ious = iou_per_class(cm)
    return float(np.nanmean(ious)) if np.any(~np.isnan(ious)) else float("nan")


def agreement(a: np.ndarray, b: np.ndarray) -> float:
    """Fraction of pixels where two masks agree."""
    if a.shape != b.shape:
        raise InputError(f"masks {a.shape} and {b.shape} differ in shape")
    if a.size == 0:
        raise InputError("masks are empty")
    return float(np.count_nonzero(a == b)) / a.size
