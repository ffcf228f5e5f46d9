"""Accuracy-driven mixed precision: keep the most sensitive layers in float.

1. :class:`Evaluator` runs a candidate graph in ONNX Runtime over held-out
   images and measures it against the float reference: pixel agreement of the
   masks, relative logit error and, when labels are given, the mIoU drop.
2. :func:`layer_sensitivity` quantizes one layer at a time (every other layer
   in float) and measures the damage each does alone: the relative logit error
   on a few images. That is the per-layer sensitivity. The layers are the
   nodes quantization changes on their own (Q/DQ on their inputs, an integer
   kernel): ``calibration.quantize.CANDIDATE_OPS``. A MaxPool or a Resize,
   which only passes int8 through, would rank least sensitive and stay
   "quantized" while the Convs around it went back to float.
3. :func:`search_float_layers` quantizes everything, then keeps the most
   sensitive layers in float, 1, 2, 4, ... of them, until the target holds, and
   bisects back to the fewest that meet it. Every step is recorded, so the
   manifest can say which layers stayed in float and why.

A graph that meets the target on the frames it was judged on can still miss it
on frames the decision never saw. Two things move the figure. The judged frames
are a sample. And INT8 flips only pixels where the float graph's top two classes
are close, so the agreement falls with the share of such uncertain pixels, which
is a property of the frames: lower on frames the model was trained on than on
new ones (measured on CamVid: the disagreement is 0.09-0.10 x the share of pixels
whose top-two logit gap is under 0.5, on train and val frames alike, and that
share is 8-13 % by sequence). A new set of frames is usually one stretch of
driving whose frames are alike, so it behaves like one new frame more than like
a fresh sample of many. So a :class:`Target` with a ``confidence`` is judged on
bounds (:func:`unseen_bounds`): for the agreement, the share of judged frames
that must each meet the target (the ``1 - confidence`` quantile of the per-frame
agreement); for the mIoU, which is not a per-frame figure, the upper bound of
the drop from a frame-level bootstrap.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx

from calibration.quantize import CalibrationStats, quantizable_nodes, quantize, quantized_nodes
from edgeseg.errors import ConfigError
from edgeseg.metrics import confusion_matrix, iou_per_class
from edgeseg.progress import Count, Say

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Target:
    """What a quantized graph must meet against the float reference.

    Attributes:
        min_agreement: fraction of pixels whose class must match the reference.
        max_miou_drop: mIoU points the graph may lose (needs labels).
    """

    min_agreement: float = 0.99
    max_miou_drop: float | None = None
    confidence: float | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.min_agreement <= 1.0:
            raise ConfigError(f"min_agreement must be a fraction in [0, 1], got {self.min_agreement}")
        if self.max_miou_drop is not None and self.max_miou_drop < 0:
            raise ConfigError(f"max_miou_drop must be >= 0 points, got {self.max_miou_drop}")
        if self.confidence is not None and not 0.5 <= self.confidence < 1.0:
            raise ConfigError(f"confidence must be in [0.5, 1) (or None: no margin), got {self.confidence}")

    def failures(self, figures: Figures) -> list[str]:
        """What ``figures`` miss, one phrase each (empty when the target holds).

        With a ``confidence`` and figures that carry bounds (see :class:`Evaluator`),
        the bounds are judged: the agreement's lower bound and the mIoU drop's upper one.
        """
        out = []
        confidence = self.confidence if figures.agreement_low is not None else None
        bounded = confidence is not None
        agreement = figures.agreement_low if figures.agreement_low is not None and bounded else figures.agreement
        if agreement < self.min_agreement:
            if confidence is not None:
                out.append(
                    f"agreement {figures.agreement:.4%}, but {1 - confidence:.0%} of the {figures.frames} "
                    f"frames agree on less than {agreement:.4%} (the target: {confidence:.0%} of the frames "
                    f">= {self.min_agreement:.4%})"
                )
            else:
                out.append(f"agreement {figures.agreement:.4%} < {self.min_agreement:.4%}")
        if self.max_miou_drop is not None and figures.miou_drop is not None:
            drop = figures.miou_drop_high if bounded and figures.miou_drop_high is not None else figures.miou_drop
            if drop > self.max_miou_drop:
                if confidence is not None and figures.miou_drop_high is not None:
                    out.append(
                        f"mIoU drop {figures.miou_drop:.2f}, whose upper {confidence:.0%} bound is "
                        f"{drop:.2f}, > {self.max_miou_drop:.2f} points"
                    )
                else:
                    out.append(f"mIoU drop {figures.miou_drop:.2f} > {self.max_miou_drop:.2f} points")
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "min_agreement": self.min_agreement,
            "max_miou_drop": self.max_miou_drop,
            "confidence": self.confidence,
        }


@dataclass(frozen=True)
class Figures:
    """A graph measured against the reference over the evaluation images."""

    agreement: float
    logit_error: float  # sum |x - ref|^2 / sum |ref|^2 over the logits
    miou: float | None = None
    miou_drop: float | None = None  # points: reference mIoU - this mIoU, x100
    iou: list[float] | None = None
    frames: int | None = None
    agreement_low: float | None = None  # lower confidence bound over unseen frames (bootstrap)
    miou_drop_high: float | None = None  # upper confidence bound, points

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "agreement": self.agreement,
            "logit_error": self.logit_error,
            "miou": self.miou,
            "miou_drop": self.miou_drop,
        }
        if self.agreement_low is not None:
            out["agreement_low"] = self.agreement_low
            out["miou_drop_high"] = self.miou_drop_high
        return out


class Evaluator:
    """Measures graphs against reference logits on fixed images.

    Args:
        images: (N, H, W, C) uint8 graph inputs.
        ref_logits: (N, classes, H, W) float reference logits (the float graph's or PyTorch's).
        labels: optional (N, H, W) class ids for the mIoU.
        ignore_index: a label value left out of the mIoU.
        threads: ONNX Runtime intra-op threads (default: all cores).
        confidence: when given, every full evaluation also carries the bootstrap
            bounds at this confidence (:func:`unseen_bounds`), which a
            :class:`Target` with a ``confidence`` judges.
    """

    def __init__(
        self,
        images: np.ndarray,
        ref_logits: np.ndarray,
        *,
        labels: np.ndarray | None = None,
        ignore_index: int | None = None,
        threads: int | None = None,
        confidence: float | None = None,
    ) -> None:
        if len(images) != len(ref_logits) or (labels is not None and len(labels) != len(images)):
            raise ConfigError("images, reference logits and labels must have one entry per image")
        if confidence is not None and not 0.5 <= confidence < 1.0:
            raise ConfigError(f"confidence must be in [0.5, 1), got {confidence}")
        self.confidence = confidence
        self.images = images
        self.ref_logits = ref_logits.astype(np.float32)
        self.ref_masks = ref_logits.argmax(axis=1)
        self.labels = labels
        self.ignore_index = ignore_index
        self.threads = threads
        self.num_classes = int(ref_logits.shape[1])
        self.ref_miou: float | None = None
        self.ref_iou: list[float] | None = None
        self.ref_cms: np.ndarray | None = None  # (N, classes, classes): one confusion matrix per frame
        if labels is not None:
            self.ref_cms = self._frame_cms(self.ref_masks)
            self.ref_miou, self.ref_iou = _miou_of(self.ref_cms.sum(axis=0))

    def __len__(self) -> int:
        return len(self.images)

    @classmethod
    def from_graph(
        cls,
        model: onnx.ModelProto,
        images: np.ndarray,
        **kwargs: Any,
    ) -> Evaluator:
        """Uses ``model`` (the float graph) run in ONNX Runtime as the reference."""
        logits = run_logits(model, images, threads=kwargs.get("threads"))
        return cls(images, logits, **kwargs)

    def evaluate(self, model: onnx.ModelProto, *, limit: int | None = None) -> Figures:
        """Runs ``model`` over the images (or the first ``limit``) and measures it."""
        n = len(self.images) if limit is None else min(limit, len(self.images))
        logits = run_logits(model, self.images[:n], threads=self.threads)
        ref = self.ref_logits[:n]
        masks = logits.argmax(axis=1)
        per_frame = np.mean(masks == self.ref_masks[:n], axis=(1, 2))
        agreement = float(np.mean(per_frame))  # frames are all one size: the pixel mean
        err = float(np.sum((logits - ref) ** 2) / max(float(np.sum(ref**2)), 1e-12))
        if n < len(self.images):  # a quick look (the sensitivity analysis): no mIoU, no bounds
            return Figures(agreement, err, frames=n)
        cms = self._frame_cms(masks) if self.labels is not None else None
        low = high = None
        if self.confidence is not None:
            low, high = unseen_bounds(per_frame, self.confidence, cms=cms, ref_cms=self.ref_cms)
        if cms is None:
            return Figures(agreement, err, frames=n, agreement_low=low)
        miou, iou = _miou_of(cms.sum(axis=0))
        assert self.ref_miou is not None
        return Figures(agreement, err, miou, 100.0 * (self.ref_miou - miou), iou, n, low, high)

    def _frame_cms(self, masks: np.ndarray) -> np.ndarray:
        assert self.labels is not None
        return np.stack([
            confusion_matrix(mask, label, self.num_classes, ignore_index=self.ignore_index)
            for mask, label in zip(masks, self.labels, strict=True)
        ])


BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 0


def unseen_bounds(
    agreement: np.ndarray,
    confidence: float,
    *,
    cms: np.ndarray | None = None,
    ref_cms: np.ndarray | None = None,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> tuple[float, float | None]:
    """Bounds that a graph's figures on frames it was not judged on should keep.

    Args:
        agreement: (N,) each judged frame's pixel agreement with the reference.
        confidence: e.g. 0.95: the agreement bound is the 5th percentile of the
            per-frame agreement (linear interpolation), which a new frame exceeds
            with about that probability; the mIoU drop bound is the 95th
            percentile of the drop over ``resamples`` bootstrap resamples of the
            frames (a fixed ``seed``, so a build is reproducible).
        cms: (N, C, C) each frame's confusion matrix of the graph against the labels.
        ref_cms: the same for the reference.

    Returns:
        (agreement lower bound, mIoU drop upper bound in points or None without ``cms``).
    """
    low = float(np.quantile(np.asarray(agreement, np.float64), 1.0 - confidence))
    if cms is None or ref_cms is None:
        return low, None
    n, c = cms.shape[0], cms.shape[1]
    rng = np.random.default_rng(seed)
    weights = rng.multinomial(n, np.full(n, 1.0 / n), size=resamples).astype(np.float64)  # (B, N)
    drops = _miou_rows(weights @ ref_cms.reshape(n, c * c).astype(np.float64), c) - _miou_rows(
        weights @ cms.reshape(n, c * c).astype(np.float64), c
    )
    return low, float(np.quantile(100.0 * drops, confidence))


def _miou_rows(flat_cms: np.ndarray, c: int) -> np.ndarray:
    """The mIoU of each row of (B, C*C) confusion matrices (absent classes left out, as iou_per_class)."""
    cm = flat_cms.reshape(-1, c, c)
    tp = np.diagonal(cm, axis1=1, axis2=2)
    union = cm.sum(axis=1) + cm.sum(axis=2) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, tp / union, np.nan)
    return np.nanmean(iou, axis=1)


def _miou_of(cm: np.ndarray) -> tuple[float, list[float]]:
    iou = iou_per_class(cm)
    return float(np.nanmean(iou)), [float(v) for v in iou]


def run_logits(model: onnx.ModelProto, images: np.ndarray, *, threads: int | None = None) -> np.ndarray:
    """The graph's ``logits`` output for each image, (N, classes, H, W) float32."""
    import onnxruntime as ort

    from edgeseg.parity import expose_logits

    names = [o.name for o in model.graph.output]
    graph = model if "logits" in names else expose_logits(model)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
    session = ort.InferenceSession(graph.SerializeToString(), options, providers=["CPUExecutionProvider"])
    out = [session.run(["logits"], {"image": np.ascontiguousarray(im[None])})[0][0] for im in images]
    return np.stack(out).astype(np.float32)


@dataclass(frozen=True)
class LayerSensitivity:
    """How much one layer, quantized alone, changes the output."""

    node: str
    op_type: str
    logit_error: float
    agreement: float

    def to_json(self) -> dict[str, Any]:
        return {
            "node": self.node,
            "op_type": self.op_type,
            "logit_error": self.logit_error,
            "agreement": self.agreement,
        }


def layer_sensitivity(
    model: onnx.ModelProto,
    stats: CalibrationStats,
    evaluator: Evaluator,
    *,
    placement: str,
    images: int = 4,
    candidates: Sequence[str] | None = None,
    progress: Count | None = None,
) -> list[LayerSensitivity]:
    """Quantizes each candidate layer alone and measures it on ``images`` images.

    Candidates default to :func:`~calibration.quantize.quantizable_nodes`. One that,
    quantized alone, reads no dequantized input is left out: quantization does not
    change it, so it has no sensitivity to rank (and keeping it in float would keep
    nothing in float).

    Returns:
        One entry per candidate that quantization changes, most sensitive (largest
        logit error) first.
    """
    names = list(candidates) if candidates is not None else quantizable_nodes(model, placement)
    op_of = {n.name: n.op_type for n in model.graph.node}
    out = []
    for i, name in enumerate(names):
        alone = quantize(model, stats, placement=placement, only=[name])
        if name in quantized_nodes(alone):
            figures = evaluator.evaluate(alone, limit=images)
            out.append(LayerSensitivity(name, op_of.get(name, "?"), figures.logit_error, figures.agreement))
        else:
            log.info("%s (%s): quantized alone it reads no dequantized input; not a candidate", name, op_of.get(name, "?"))
        if progress is not None:
            progress(i + 1, len(names))
    out.sort(key=lambda s: (-s.logit_error, s.agreement))
    return out


@dataclass
class MixedPrecision:
    """The outcome of :func:`search_float_layers`."""

    placement: str
    target: Target
    met: bool
    model: onnx.ModelProto
    figures: Figures
    kept_float: list[LayerSensitivity] = field(default_factory=list)
    steps: list[dict[str, Any]] = field(default_factory=list)
    sensitivity: list[LayerSensitivity] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "placement": self.placement,
            "target": self.target.to_json(),
            "met": self.met,
            "figures": self.figures.to_json(),
            "kept_float": [
                {**s.to_json(), "reason": _reason(s, rank + 1)} for rank, s in enumerate(self.kept_float)
            ],
            "steps": self.steps,
            "layers_analysed": len(self.sensitivity),
        }


def search_float_layers(
    model: onnx.ModelProto,
    stats: CalibrationStats,
    evaluator: Evaluator,
    target: Target,
    *,
    placement: str,
    sensitivity_images: int = 4,
    say: Say | None = None,
) -> MixedPrecision:
    """Quantizes ``model``; while ``target`` fails, keeps the most sensitive layers in float.

    The full INT8 graph is tried first; the sensitivity analysis runs only when
    it misses the target. Then 1, 2, 4, ... of the most sensitive layers stay
    in float until the target holds, and a bisection finds the fewest that meet
    it. If even every candidate layer in float misses it, ``met`` is false and
    the graph returned is the best one tried.
    """
    tell = say or (lambda message: log.info("%s", message))
    full = quantize(model, stats, placement=placement)
    figures = evaluator.evaluate(full)
    steps = [_step(0, figures, target)]
    tell(f"int8 ({placement}): {_describe(figures)}")
    if not target.failures(figures):
        return MixedPrecision(placement, target, True, full, figures, steps=steps)

    tell(f"int8 ({placement}) misses the target ({'; '.join(target.failures(figures))}): "
         "measuring each layer's sensitivity")
    ranked = layer_sensitivity(
        model, stats, evaluator, placement=placement, images=sensitivity_images,
        progress=lambda done, total: tell(f"sensitivity: {done}/{total} layers") if done % 10 == 0 or done == total else None,
    )
    tried: dict[int, tuple[onnx.ModelProto, Figures]] = {0: (full, figures)}

    def attempt(k: int) -> bool:
        if k not in tried:
            keep = [s.node for s in ranked[:k]]
            candidate = quantize(model, stats, placement=placement, keep_float=keep)
            result = evaluator.evaluate(candidate)
            tried[k] = (candidate, result)
            steps.append(_step(k, result, target))
            tell(f"{k} layer(s) in float: {_describe(result)}")
        return not target.failures(tried[k][1])

    lo, hi, k = 0, None, 1
    while k <= len(ranked):
        if attempt(k):
            hi = k
            break
        lo = k
        k = min(2 * k, len(ranked)) if k < len(ranked) else len(ranked) + 1
    if hi is None:
        best = max(tried, key=lambda j: (tried[j][1].agreement, -j))
        candidate, result = tried[best]
        return MixedPrecision(placement, target, False, candidate, result, ranked[:best], steps, ranked)
    while hi - lo > 1:  # the fewest layers in float that meet the target
        mid = (lo + hi) // 2
        if attempt(mid):
            hi = mid
        else:
            lo = mid
    candidate, result = tried[hi]
    return MixedPrecision(placement, target, True, candidate, result, ranked[:hi], steps, ranked)


def _step(k: int, figures: Figures, target: Target) -> dict[str, Any]:
    return {"kept_float": k, **figures.to_json(), "met": not target.failures(figures)}


def _describe(figures: Figures) -> str:
    text = f"agreement {figures.agreement:.4%}, logit error {figures.logit_error:.2e}"
    if figures.miou_drop is not None:
        text += f", mIoU drop {figures.miou_drop:.2f} points"
    return text


def _reason(s: LayerSensitivity, rank: int) -> str:
    return (
        f"sensitivity rank {rank}: quantized alone it moves the logits by {s.logit_error:.2e} "
        f"(relative squared error) and leaves {s.agreement:.3%} agreement"
    )
