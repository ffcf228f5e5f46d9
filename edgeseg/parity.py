"""Accuracy parity: each artefact of a bundle against the PyTorch model, on real images.

The same uint8 frame, prepared exactly as the runtime prepares it, goes into
the PyTorch model (through the same fused pre/post-processing, run eagerly)
and into every graph of the bundle. Per artefact this measures the max and
mean absolute logit error, the pixel agreement of the masks, and, with
labels, mIoU and per-class IoU next to PyTorch's, plus the images where they
disagree most.

Imports torch lazily: comparing needs the PyTorch model, so this is a
build/CI-time module, though ``import edgeseg.parity`` itself stays light.
"""

from __future__ import annotations

import abc
import heapq
import importlib
import logging
import math
import os
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgeseg.bundle import Bundle, Manifest, sha256_file
from edgeseg.errors import ConfigError, InputError
from edgeseg.metrics import confusion_matrix, iou_per_class, mean_iou
from edgeseg.progress import Count
from edgeseg.runtime.image import NearestResizer, prepare

if TYPE_CHECKING:  # pragma: no cover
    from torch import nn

log = logging.getLogger(__name__)



@dataclass
class WorstImage:
    """One image where an artefact disagrees most with PyTorch (model resolution)."""

    name: str
    agreement: float
    image: np.ndarray  # (h, w, C) uint8, as fed to the graph
    reference: np.ndarray  # (h, w) uint8 PyTorch mask
    artefact: np.ndarray  # (h, w) uint8 artefact mask
    error: np.ndarray  # (h, w) float32 max over classes of |logit difference|


class Accumulator:
    """Collects logit error and mask agreement between a reference and one artefact."""

    def __init__(self, keep_worst: int = 0) -> None:
        self.max_abs_error = 0.0
        self.max_abs_logit = 0.0
        self._err_sum = 0.0
        self._err_count = 0
        self._agree = 0
        self._pixels = 0
        self.worst_agreement = 1.0
        self.images = 0
        self._keep = keep_worst
        self._heap: list[tuple[float, int, WorstImage]] = []

    def update(
        self,
        name: str,
        image: np.ndarray,
        ref_logits: np.ndarray,
        ref_mask: np.ndarray,
        logits: np.ndarray,
        mask: np.ndarray,
    ) -> float:
        """Adds one image: (C, h, w) logits and (h, w) masks of each side. Returns its agreement."""
        if logits.shape != ref_logits.shape:
            raise InputError(
                f"{name}: artefact logits {logits.shape} and PyTorch logits {ref_logits.shape} differ in shape"
            )
        diff = np.abs(logits.astype(np.float64) - ref_logits)
        self.max_abs_error = max(self.max_abs_error, float(diff.max()))
        self.max_abs_logit = max(self.max_abs_logit, float(np.abs(ref_logits).max()))
        self._err_sum += float(diff.sum())
        self._err_count += diff.size
        same = int(np.count_nonzero(mask == ref_mask))
        self._agree += same
        self._pixels += mask.size
        agreement = same / mask.size
        self.worst_agreement = min(self.worst_agreement, agreement)
        self.images += 1
        if self._keep:
            item = WorstImage(name, agreement, image, ref_mask, mask, diff.max(axis=0).astype(np.float32))
            entry = (-agreement, self.images, item)
            if len(self._heap) < self._keep:
                heapq.heappush(self._heap, entry)
            elif -agreement > self._heap[0][0]:
                heapq.heapreplace(self._heap, entry)
        return agreement

    @property
    def mean_abs_error(self) -> float:
        return self._err_sum / max(self._err_count, 1)

    @property
    def agreement(self) -> float:
        """Fraction of all pixels (over every image) where the masks agree."""
        return self._agree / max(self._pixels, 1)

    def worst(self) -> list[WorstImage]:
        """The kept images, least agreement first."""
        return [item for _, _, item in sorted(self._heap, key=lambda e: (e[2].agreement, e[1]))]

    def figures(self) -> dict[str, float]:
        return {
            "max_abs_error": self.max_abs_error,
            "mean_abs_error": self.mean_abs_error,
            "max_abs_logit": self.max_abs_logit,
            "agreement": self.agreement,
            "worst_image_agreement": self.worst_agreement,
        }


@dataclass
class ArtefactResult:
    """Parity figures of one artefact (a graph of the bundle on one backend)."""

    name: str
    graph: str
    backend: str
    figures: dict[str, float]
    miou: float | None = None
    iou: list[float] | None = None
    worst: list[WorstImage] = field(default_factory=list)

    @property
    def agreement(self) -> float:
        return self.figures["agreement"]

    @property
    def max_abs_error(self) -> float:
        return self.figures["max_abs_error"]


@dataclass
class ParityReport:
    """Everything ``compare`` measured, and the verdict of the thresholds."""

    bundle: str
    reference: str
    classes: list[str]
    images: int
    labelled: int
    ignore_index: int | None
    reference_miou: float | None
    reference_iou: list[float] | None
    artefacts: list[ArtefactResult]
    thresholds: dict[str, float | None] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures

    def miou_drop(self, artefact: ArtefactResult) -> float | None:
        """PyTorch's mIoU minus the artefact's, in points (percent)."""
        if self.reference_miou is None or artefact.miou is None:
            return None
        return 100.0 * (self.reference_miou - artefact.miou)

    def check(
        self,
        *,
        min_agreement: float | None = None,
        max_miou_drop: float | None = None,
        max_abs_error: float | None = None,
    ) -> list[str]:
        """Applies thresholds; records and returns one message per failing figure.

        Args:
            min_agreement: lowest pixel agreement with PyTorch, a fraction.
            max_miou_drop: largest mIoU drop against PyTorch, in points (needs labels).
            max_abs_error: largest absolute logit difference.
        """
        if min_agreement is not None and not 0.0 <= min_agreement <= 1.0:
            raise ConfigError(f"min_agreement must be a fraction in [0, 1], got {min_agreement}")
        if max_miou_drop is not None and self.reference_miou is None:
            raise ConfigError("max_miou_drop needs labels: pass labels (--labels DIR)")
        self.thresholds = {
            "min_agreement": min_agreement,
            "max_miou_drop": max_miou_drop,
            "max_abs_error": max_abs_error,
        }
        failures = []
        for a in self.artefacts:
            if min_agreement is not None and a.agreement < min_agreement:
                failures.append(
                    f"{a.name}: pixel agreement {a.agreement:.4%} < min_agreement {min_agreement:.4%} "
                    f"(worst image {a.figures['worst_image_agreement']:.4%})"
                )
            drop = self.miou_drop(a)
            if max_miou_drop is not None and drop is not None and drop > max_miou_drop:
                failures.append(
                    f"{a.name}: mIoU {100 * (a.miou or 0):.2f} vs PyTorch {100 * (self.reference_miou or 0):.2f}, "
                    f"a drop of {drop:.2f} points > max_miou_drop {max_miou_drop:.2f}"
                )
            if max_abs_error is not None and a.max_abs_error > max_abs_error:
                failures.append(
                    f"{a.name}: max abs logit error {a.max_abs_error:.3g} > max_abs_error {max_abs_error:.3g} "
                    f"(logits up to {a.figures['max_abs_logit']:.3g})"
                )
        self.failures = failures
        return failures

    def to_json(self) -> dict[str, Any]:
        def opt(v: float | None) -> float | None:
            return None if v is None or (isinstance(v, float) and math.isnan(v)) else v

        def ious(values: list[float] | None) -> dict[str, float | None] | None:
            return None if values is None else {c: opt(v) for c, v in zip(self.classes, values, strict=True)}

        return {
            "bundle": self.bundle,
            "reference": self.reference,
            "images": self.images,
            "labelled_images": self.labelled,
            "ignore_index": self.ignore_index,
            "classes": self.classes,
            "pytorch": {"miou": opt(self.reference_miou), "iou": ious(self.reference_iou)},
            "artefacts": [
                {
                    "name": a.name,
                    "graph": a.graph,
                    "backend": a.backend,
                    **a.figures,
                    "miou": opt(a.miou),
                    "miou_drop_points": opt(self.miou_drop(a)),
                    "iou": ious(a.iou),
                    "iou_delta": None
                    if a.iou is None or self.reference_iou is None
                    else {
                        c: opt(x - r)
                        for c, x, r in zip(self.classes, a.iou, self.reference_iou, strict=True)
                    },
                    "worst_images": [{"name": w.name, "agreement": w.agreement} for w in a.worst],
                }
                for a in self.artefacts
            ],
            "thresholds": self.thresholds,
            "passed": self.passed,
            "failures": self.failures,
            "notes": self.notes,
        }

    def table(self) -> str:
        """A plain-text summary table."""
        head = f"{'artefact':<22} {'agreement':>10} {'worst img':>10} {'max|dlogit|':>12} {'mean|dlogit|':>13}"
        if self.reference_miou is not None:
            head += f" {'mIoU':>7} {'drop':>7}"
        lines = [head]
        if self.reference_miou is not None:
            lines.append(f"{'pytorch (reference)':<22} {'':>10} {'':>10} {'':>12} {'':>13} {100 * self.reference_miou:>7.2f} {'':>7}")
        for a in self.artefacts:
            f = a.figures
            line = (
                f"{a.name:<22} {a.agreement:>10.4%} {f['worst_image_agreement']:>10.4%} "
                f"{f['max_abs_error']:>12.3g} {f['mean_abs_error']:>13.3g}"
            )
            drop = self.miou_drop(a)
            if a.miou is not None and drop is not None:
                line += f" {100 * a.miou:>7.2f} {drop:>7.2f}"
            lines.append(line)
        lines.append(
            f"{self.images} images ({self.labelled} labelled); reference: {self.reference}; "
            + ("PASSED" if self.passed else f"FAILED ({len(self.failures)})")
        )
        return "\n".join(lines)


# ----------------------------------------------------------------------------- inputs


def iter_images(
    images: Any, *, limit: int | None = None, seed: int = 0
) -> Iterator[tuple[str, np.ndarray | None, str | None]]:
    """(name, frame or None, error or None) of the images of a source, read lazily.

    Accepts anything :func:`edgeseg.runtime.frames.frame_source` takes: a folder
    (searched recursively), a video, an ``.npz`` file, a list of image files, an
    (N, H, W[, C]) array or a list of (H, W[, C]) arrays. Names are the frames'
    names there (a folder's files by their relative paths, arrays ``image_0000``, ...).

    Args:
        images: the source.
        limit: read at most this many frames, spread over the whole source
            (:meth:`edgeseg.runtime.frames.FrameSource.pick`).
        seed: seed of the picks.
    """
    from edgeseg.runtime.frames import frame_source

    source = frame_source(images, what="images")
    yield from source.read(source.pick(limit, seed))


def _label_source(labels: Any, images: Any, label_format: str) -> Callable[[str], np.ndarray | None]:
    """A lookup image name -> label (H, W) uint8 or None.

    ``labels`` is a folder (paired by name with the images, which must be image
    files), a mapping name -> label, or a sequence aligned with the images.
    """
    from edgeseg.labels import read_label
    from edgeseg.runtime.frames import frame_source, pair_frame_labels

    frames = frame_source(images, what="images")
    if labels is None:
        return lambda name: None
    if isinstance(labels, (str, os.PathLike)):
        paired = pair_frame_labels(frames, labels)
        return lambda name: read_label(paired[name], format=label_format) if name in paired else None
    if isinstance(labels, Mapping):
        return lambda name: np.asarray(labels[name]) if name in labels else None
    seq = list(labels)
    position = {name: i for i, name in enumerate(frames.names)}  # aligned with the candidates
    return lambda name: np.asarray(seq[position[name]]) if position[name] < len(seq) else None


# ----------------------------------------------------------------------------- reference


def reference_model(
    manifest: Manifest,
    *,
    weights: str | os.PathLike[str] | None = None,
    factory: str | None = None,
) -> tuple[nn.Module, str, list[str]]:
    """Rebuilds the PyTorch reference of a bundle.

    Zoo bundles are rebuilt from the manifest (name, options, classes) and
    ``weights``; user modules come from ``factory``, ``"module:callable"``,
    called with no arguments (``weights`` are then loaded into what it returns).

    Returns:
        (the module in eval mode, a description, notes worth reporting).

    Raises:
        ConfigError: the reference cannot be rebuilt; the message says what to pass.
        WeightsError: the weights cannot be loaded.
    """
    from torch import nn

    from edgeseg import models as zoo

    notes: list[str] = []
    info = manifest.model
    if factory is not None:
        module = _call_factory(factory)
        described = f"factory {factory}"
    elif info.source == "zoo":
        if weights is None:
            if info.trained:
                raise ConfigError(
                    f"bundle was built from {info.name} with weights "
                    f"{info.weights.file if info.weights else None}; "
                    "pass the same weights (--weights) to rebuild the PyTorch reference"
                )
            raise ConfigError(
                f"bundle holds an untrained {info.name} (random weights cannot be rebuilt); "
                "build it with --weights, and pass them here too"
            )
        module = zoo.create_model(
            info.name,
            num_classes=manifest.num_classes,
            in_channels=manifest.input.channels,
            **dict(info.options),
        )
        described = f"zoo {info.name}"
    else:
        raise ConfigError(
            f"bundle was built from a user module ({info.class_name or info.name}); "
            "pass factory='module:callable' (--factory) that returns it"
        )
    if not isinstance(module, nn.Module):
        raise ConfigError(f"factory {factory} returned {type(module).__name__}, not a torch.nn.Module")
    if weights is not None:
        report = zoo.load_weights(module, weights)
        described += f" + {Path(weights).name}"
        if report.missing or report.unexpected:
            notes.append(
                f"weights {Path(weights).name}: {len(report.missing)} missing and "
                f"{len(report.unexpected)} unexpected keys"
            )
        recorded = info.weights
        if recorded is not None and recorded.sha256 != sha256_file(Path(weights)):
            notes.append(
                f"weights {Path(weights).name} differ from the ones the bundle was built with "
                f"({recorded.file})"
            )
    return module.eval(), described, notes


def _call_factory(spec: str) -> Any:
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(f"factory {spec!r} is not 'module:callable' (e.g. mypkg.models:make_net)")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as err:
        raise ConfigError(f"factory {spec!r}: cannot import {module_name} ({err})") from err
    for part in attr.split("."):
        if not hasattr(target, part):
            raise ConfigError(f"factory {spec!r}: {module_name} has no attribute {attr}")
        target = getattr(target, part)
    if not callable(target):
        return target
    try:
        return target()
    except Exception as err:  # noqa: BLE001 - the user's code may raise anything
        raise ConfigError(f"factory {spec!r} failed: {type(err).__name__}: {err}") from err


# ----------------------------------------------------------------------------- compare


class Reference(abc.ABC):
    """What a bundle's artefacts are compared with.

    Called with a prepared (1, h, w, C) uint8 batch (as the graph's ``image``
    input), it returns the reference's (h, w) uint8 mask and (C, h, w) float32
    logits. :func:`compare` wraps a PyTorch module in one
    (``converters.reference.TorchReference``: the export's own pre- and
    post-processing run eagerly, a fused CRF applied after it); any other
    reference, e.g. another runtime, can subclass this.
    """

    description: str = "reference"

    @abc.abstractmethod
    def __call__(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(mask (h, w) uint8, logits (C, h, w) float32) of one prepared batch."""


def compare(
    bundle: str | os.PathLike[str] | Bundle,
    model: nn.Module | Reference,
    images: Any,
    *,
    labels: Any = None,
    label_format: str = "auto",
    ignore_index: int | None = None,
    precisions: Sequence[str] | None = None,
    reference: str | None = None,
    keep_worst: int = 5,
    limit: int | None = None,
    progress: Count | None = None,
) -> ParityReport:
    """Compares every artefact of ``bundle`` (or ``precisions``) with ``model``.

    Args:
        bundle: a bundle path or a loaded Bundle.
        model: the PyTorch model (logits, or a dict with ``"out"``), or a :class:`Reference`.
        images: a folder, a list of image files, or arrays (see :func:`iter_images`).
        labels: a folder (paired with the image files by name), a mapping
            name -> (H, W) ids, or a sequence aligned with ``images``.
        label_format: ``auto``, ``ids``, ``voc`` or ``cityscapes`` (folders only).
        ignore_index: label value not counted in mIoU (values past the
            classes are never counted; ``voc``/``cityscapes`` default to 255).
        precisions: which graphs to compare (default: all of the bundle's).
        reference: a description of the model for the report.
        keep_worst: how many worst images to keep per artefact.
        limit: compare at most this many images, spread over the whole source
            (seeded picks, as :func:`iter_images`).
        progress: called with (images done, total or None).

    Returns:
        The report; apply thresholds with :meth:`ParityReport.check`.
    """
    from edgeseg.labels import default_ignore_index

    loaded = bundle if isinstance(bundle, Bundle) else Bundle.load(bundle)
    manifest = loaded.manifest
    wanted = list(precisions) if precisions else sorted(manifest.graphs, key=_precision_order)
    for p in wanted:
        loaded.graph(p)  # raises with the list of graphs it has
    if ignore_index is None and label_format in ("voc", "cityscapes"):
        ignore_index = default_ignore_index(label_format)
    spec = manifest.input
    if isinstance(model, Reference):
        ref = model
    else:
        from edgeseg._lazy import torch_reference

        ref = torch_reference(model, manifest)
    n_classes = manifest.num_classes
    from edgeseg.runtime.frames import frame_source

    frames = frame_source(images, what="images")  # listed once: labels, count and picks agree
    label_of = _label_source(labels, frames, label_format)
    total = len(frames.pick(limit))
    resize = NearestResizer()
    ref_cm = np.zeros((n_classes, n_classes), np.int64)
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="edgeseg-parity-") as tmp:
        runners = [_artefact_runner(loaded, p, Path(tmp)) for p in wanted]
        accs = [Accumulator(keep_worst) for _ in runners]
        cms = [np.zeros((n_classes, n_classes), np.int64) for _ in runners]
        count = labelled = 0
        try:
            for name, frame, error in iter_images(frames, limit=limit):
                if frame is None:
                    notes.append(f"skipped {name}: {error}")
                    continue
                try:
                    batch = prepare(frame, spec)
                except InputError as err:
                    notes.append(f"skipped {name}: {err}")
                    continue
                ref_mask, ref_logits = ref(batch)
                label = label_of(name)
                if label is not None and label.shape[:2] != frame.shape[:2]:
                    raise InputError(
                        f"label of {name} is {label.shape[:2]}, the image is {frame.shape[:2]}"
                    )
                if label is not None:
                    labelled += 1
                    size = (label.shape[0], label.shape[1])
                    ref_cm += confusion_matrix(resize(ref_mask, size), label, n_classes, ignore_index=ignore_index)
                for runner, acc, cm in zip(runners, accs, cms, strict=True):
                    logits, mask = runner(batch)
                    acc.update(name, batch[0], ref_logits, ref_mask, logits, mask)
                    if label is not None:
                        cm += confusion_matrix(resize(mask, size), label, n_classes, ignore_index=ignore_index)
                count += 1
                if progress is not None:
                    progress(count, total)
        finally:
            for runner in runners:
                runner.close()
    if count == 0:
        raise ConfigError(f"no image could be compared ({len(notes)} unreadable)")
    if labels is not None and labelled == 0:
        raise ConfigError("labels were given but none matched an image")
    if labels is not None and labelled < count:
        notes.append(f"{count - labelled} of {count} images had no label and count only for agreement")
    results = []
    for p, runner, acc, cm in zip(wanted, runners, accs, cms, strict=True):
        results.append(
            ArtefactResult(
                name=f"{p} ({runner.backend})",
                graph=runner.graph,
                backend=runner.backend,
                figures=acc.figures(),
                miou=mean_iou(cm) if labelled else None,
                iou=[float(v) for v in iou_per_class(cm)] if labelled else None,
                worst=acc.worst(),
            )
        )
    return ParityReport(
        bundle=str(loaded.path),
        reference=reference or ref.description,
        classes=list(manifest.classes),
        images=count,
        labelled=labelled,
        ignore_index=ignore_index,
        reference_miou=mean_iou(ref_cm) if labelled else None,
        reference_iou=[float(v) for v in iou_per_class(ref_cm)] if labelled else None,
        artefacts=results,
        notes=notes,
    )


def _precision_order(p: str) -> int:
    return {"fp32": 0, "fp16": 1, "int8": 2}.get(p, 3)


class _Runner:
    """Runs one graph of a bundle with its logits exposed, on ONNX Runtime."""

    def __init__(self, graph: Path, backend: Any) -> None:
        self.graph = graph.name
        self._backend = backend
        self.backend = "onnxruntime"

    def __call__(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        out = self._backend.infer({"image": batch}, ["mask", "logits"])
        return out["logits"][0].astype(np.float32), out["mask"][0]

    def close(self) -> None:
        self._backend.close()


def _artefact_runner(bundle: Bundle, precision: str, tmp: Path) -> _Runner:
    import onnx

    from edgeseg.runtime.backends.onnxruntime import OnnxRuntimeBackend

    graph = bundle.graph(precision)
    model = onnx.load(str(graph))
    if "logits" not in [o.name for o in model.graph.output]:
        model = expose_logits(model)
        path = tmp / f"{precision}-{graph.name}"
        onnx.save(model, str(path))
    else:
        path = graph
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        backend = OnnxRuntimeBackend(path)
    return _Runner(graph, backend)


def expose_logits(model: Any) -> Any:
    """A copy of an edgeseg graph with the tensor under its ``mask``'s ArgMax as output ``logits``.

    Raises:
        InputError: the graph has no ``mask`` output computed by ArgMax (+ Cast).
    """
    import onnx
    from onnx import helper

    producers = {out: node for node in model.graph.node for out in node.output}
    out = onnx.ModelProto()
    out.CopyFrom(model)
    if "logits" in producers:  # the exporter's tensor, kept inside a graph with a fused CRF
        out.graph.output.append(helper.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, None))
        return out
    node = producers.get("mask")
    while node is not None and node.op_type in ("Cast", "Identity"):
        node = producers.get(node.input[0])
    if node is None or node.op_type != "ArgMax":
        raise InputError("the graph's 'mask' output is not an ArgMax over logits; cannot expose logits")
    source = node.input[0]
    if source != "logits":
        # the exporter names the tensor "logits"; another name must not clash with one in use
        names = {o for n in model.graph.node for o in n.output} | {i.name for i in model.graph.input}
        if "logits" in names:
            raise InputError("the graph already has a tensor named 'logits' that is not the ArgMax input")
        out.graph.node.append(helper.make_node("Identity", [source], ["logits"], name="edgeseg_expose_logits"))
    out.graph.output.append(helper.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, None))
    return out


def parity_summary(report: ParityReport) -> Iterable[str]:
    """One line per failure, or a pass line: what a CI log should show."""
    if report.passed:
        yield f"parity passed: {len(report.artefacts)} artefact(s), {report.images} images"
    else:
        yield from (f"parity failed: {f}" for f in report.failures)
