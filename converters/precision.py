"""FP16 and INT8 graphs of a bundle, measured on the CPU before any device sees them.

Shared by ``edgeseg.build(precision=...)`` (from a fresh FP32 graph) and
``edgeseg calibrate`` (from an existing bundle's graph). The float graph is
the reference: a lower-precision graph is judged by how well its masks agree
with the float graph's, and by its mIoU when labels are given.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from calibration.flops import Int8Share, gflops, int8_share
from calibration.mixed import Evaluator, Figures, MixedPrecision, Target, search_float_layers
from calibration.quantize import collect_statistics, quantize, quantized_nodes
from converters.options import (
    CALIBRATE_CHECK,
    DEFAULT_CONFIDENCE,
    DEFAULT_EVAL_IMAGES,
    CheckOptions,
    QuantOptions,
)
from converters.passes import with_metadata
from converters.tensorrt import op_types_of
from edgeseg.bundle import InputSpec
from edgeseg.errors import ConfigError, ParityError
from edgeseg.metrics import DEFAULT_MIN_AGREEMENT
from edgeseg.progress import Count, Say, say_or_log
from edgeseg.runtime.contract import NUM_CLASSES_KEY
from edgeseg.runtime.frames import load_frames

log = logging.getLogger(__name__)

MIN_CALIBRATION_IMAGES = 8
GRAPH_FILES = {"fp32": "model.onnx", "fp16": "model.fp16.onnx", "int8": "model.int8.onnx"}
TRT_CACHE_FILE = "calibration.cache"


@dataclass(frozen=True, eq=False)
class EvalSet:
    """Held-out images (and labels) a lower-precision graph is judged on.

    Attributes:
        images: (N, H, W, C) uint8, as the graph's ``image`` input takes them.
        source: where they come from, for reports.
        names: their names in the source (may be empty).
        labels: (N, H, W) uint8 class ids at the images' size, or None.
        ignore_index: the label id left out of mIoU, or None.
    """

    images: np.ndarray
    source: str
    names: list[str] = field(default_factory=list)
    labels: np.ndarray | None = None
    ignore_index: int | None = None


@dataclass
class Lowered:
    """A lower-precision graph (every output of the float graph) and what the manifest records."""

    precision: str
    graph: onnx.ModelProto
    info: dict[str, Any]
    figures: Figures
    eval_set: EvalSet
    extra_files: dict[str, bytes] = field(default_factory=dict)

    def parity(self) -> dict[str, Any]:
        """The figures against the float graph, as the manifest records them."""
        return {
            **self.figures.to_json(),
            "reference": "fp32 graph (onnxruntime-cpu)",
            "backend": "onnxruntime-cpu",
            "samples": int(len(self.eval_set.images)),
            "sample_source": self.eval_set.source,
            "labelled": self.eval_set.labels is not None,
        }


def load_eval_set(
    folder: str | os.PathLike[str],
    spec: InputSpec,
    *,
    limit: int,
    labels: str | os.PathLike[str] | None = None,
    label_format: str = "auto",
    ignore_index: int | None = None,
    seed: int = 0,
) -> EvalSet:
    """Up to ``limit`` frames of ``folder``, prepared as the runtime does, and their labels.

    Read by :func:`edgeseg.runtime.frames.load_frames`: the frames are spread over
    the whole source (the same ``seed`` giving the same frames); with ``labels``,
    only images that have a label are candidates, and each label is resized
    (nearest) to its prepared image.

    Args:
        folder: a folder of images (searched recursively), a video or an ``.npz`` file.
        spec: the graph's ``image`` input.
        limit: how many frames to use at most.
        labels: a folder of label images, paired with the images by name.
        label_format: how labels are read (:func:`edgeseg.labels.read_label`).
        ignore_index: the label id left out of mIoU (default: the format's convention).
        seed: seed of the picks.

    Raises:
        ConfigError: the folder is missing or has no usable image, or no label matches.
    """
    from edgeseg.labels import default_ignore_index

    frames = load_frames(
        folder, spec, limit=limit, seed=seed, labels=labels, label_format=label_format,
        what="samples folder",
    )
    if ignore_index is None and labels is not None:
        ignore_index = default_ignore_index(label_format)
    return EvalSet(frames.images, frames.source, list(frames.names), frames.labels, ignore_index)


def lower_precision(
    graph: onnx.ModelProto,
    spec: InputSpec,
    precision: str,
    *,
    eval_set: EvalSet | None,
    options: QuantOptions | None = None,
    min_agreement: float | None = None,
    max_miou_drop: float | None = None,
    confidence: float | None = DEFAULT_CONFIDENCE,
    say: Say | None = None,
) -> Lowered:
    """Makes the FP16 or INT8 graph of a float bundle graph and checks it against the target.

    Args:
        graph: the float graph (uint8 ``image`` in; mask, and logits exposed or not).
        spec: the bundle's input, for the calibration set's pre-processing.
        precision: ``fp16`` or ``int8``.
        eval_set: held-out images to judge on. For INT8 without one, frames of
            the calibration source that calibration does not use are held out.
        options: INT8 options (calibration set, method, placement, mixed precision).
        min_agreement: pixel agreement with the float graph the result must reach
            (default 0.995 for fp16, 0.99 for int8).
        max_miou_drop: mIoU points the result may lose (needs labels in ``eval_set``).
        confidence: judge the graph on the frame-level bootstrap bounds at this
            confidence, so that the target holds for frames it was not judged on
            (None: on the figures; see :mod:`calibration.mixed`).

    Raises:
        ConfigError: a bad option or calibration set.
        ParityError: the graph misses the target (with mixed precision too), or an INT8 graph
            runs less of the compute in INT8 than ``options.min_int8_share``; nothing is kept.
    """
    tell = say_or_log(say)
    if precision not in ("fp16", "int8"):
        raise ConfigError(f"lower precision must be 'fp16' or 'int8', got {precision!r}")
    target = Target(
        min_agreement if min_agreement is not None else DEFAULT_MIN_AGREEMENT[precision], max_miou_drop,
        confidence,
    )
    if max_miou_drop is not None and (eval_set is None or eval_set.labels is None):
        raise ConfigError("max_miou_drop needs labelled evaluation images: samples=DIR and labels=DIR")
    if precision == "fp16":
        return _fp16(graph, eval_set, target, tell)
    opts = (options or QuantOptions()).for_target("auto")  # not given: TensorRT's, which both run
    opts.require_calib()
    return _int8(graph, spec, eval_set, opts, target, tell)


def _fp16(graph: onnx.ModelProto, eval_set: EvalSet | None, target: Target, tell: Say) -> Lowered:
    from calibration.fp16 import to_fp16

    if eval_set is None:
        raise ConfigError("fp16 needs evaluation images")
    tell("converting to fp16 (inputs, outputs and sensitive operators stay fp32)")
    half, info = to_fp16(graph)
    evaluator = _evaluator(graph, eval_set, target)
    figures = evaluator.evaluate(half)
    tell(f"fp16 vs fp32 in ONNX Runtime: agreement {figures.agreement:.4%}")
    _enforce("fp16", figures, target, eval_set)
    record = {
        "fp16": {k: info[k] for k in ("kept_by_op", "fp16_nodes", "casts_added")}
        | {"kept_fp32": sorted(info["kept_fp32"].items())},
        "target": target.to_json(),
    }
    return Lowered("fp16", half, record, figures, eval_set)


def _int8(
    graph: onnx.ModelProto, spec: InputSpec, eval_set: EvalSet | None, opts: QuantOptions,
    target: Target, tell: Say,
) -> Lowered:
    from calibration.sets import load_calibration_set
    from calibration.tensorrt_cache import cache_from_ranges

    source = opts.require_calib()
    placement = opts.placement
    assert placement is not None, "lower_precision settles the placement (QuantOptions.for_target)"
    held_out = eval_set is None
    extra = DEFAULT_EVAL_IMAGES if held_out else 0
    tell(f"reading the calibration set {source}")
    calib = load_calibration_set(
        source, spec, size=opts.calib_size + extra, seed=opts.seed,
        progress=_every("calibration images", tell),
    )
    images = calib.images
    if held_out:
        keep = min(MIN_CALIBRATION_IMAGES, opts.calib_size)
        if len(images) - extra < keep:
            raise ConfigError(
                f"calibration set {source}: {len(images)} usable images are too few to hold "
                f"{extra} out for evaluation and calibrate on at least {keep}; give samples=DIR "
                "(--samples) to evaluate on, or a source with more images"
            )
        picks = set(np.linspace(0, len(images) - 1, extra).round().astype(int).tolist())
        eval_set = EvalSet(
            images[sorted(picks)], f"{source} (held out from calibration)",
            [calib.picked[i] for i in sorted(picks)] if len(calib.picked) == len(images) else [],
        )
        images = images[[i for i in range(len(images)) if i not in picks]]
    assert eval_set is not None
    tell(f"calibrating ({opts.method}) on {len(images)} images")
    stats = collect_statistics(graph, images, method=opts.method, progress=_every("calibrated", tell))
    evaluator = _evaluator(graph, eval_set, target)
    if opts.mixed_precision:
        result = search_float_layers(graph, stats, evaluator, target, placement=placement, say=tell)
        model, figures, mixed = result.model, result.figures, result
    else:
        model = quantize(graph, stats, placement=placement)
        figures, mixed = evaluator.evaluate(model), None
    _enforce("int8", figures, target, eval_set, mixed)
    share = int8_share(model, spec.size)
    tell(
        f"int8 ({placement}): INT8 on {share.share:.1%} of the compute "
        f"({gflops(share.int8_flops)} of {gflops(share.flops)} GFLOPs)"
    )
    _enforce_share(share, opts, target, len(images), mixed)

    qdq: dict[str, Any] | None = None
    if opts.placement == "tensorrt":
        from calibration.qdq_rules import check_tensorrt_qdq

        report = check_tensorrt_qdq(model)
        report.raise_for_violations()
        qdq = {k: v for k, v in report.to_json().items() if k != "violations"}
    cache = cache_from_ranges(stats.ranges, opts.trt_cache_version)
    summary = calib.summary()
    if held_out:
        summary["held_out_for_evaluation"] = len(eval_set.images)
        summary["used"] = len(images)
    record: dict[str, Any] = {
        "quantization": {
            "method": opts.method,
            "placement": opts.placement,
            "percentile": stats.percentile,
            "calibration": summary,
            "quantized_nodes": len(quantized_nodes(model)),
            "mixed_precision": mixed.to_json() if mixed is not None else {"enabled": False},
            "kept_float": [s.node for s in mixed.kept_float] if mixed is not None else [],
            "int8_share": share.to_json(opts.min_int8_share),
            "tensorrt_rules": qdq,
            "trt_cache": {"file": TRT_CACHE_FILE, "header": cache.header(), "tensors": len(cache.scales)},
        },
        "target": target.to_json(),
    }
    return Lowered("int8", model, record, figures, eval_set, {TRT_CACHE_FILE: cache.to_bytes()})


def _evaluator(graph: onnx.ModelProto, eval_set: EvalSet, target: Target) -> Evaluator:
    return Evaluator.from_graph(
        graph, eval_set.images, labels=eval_set.labels, ignore_index=eval_set.ignore_index,
        confidence=target.confidence,
    )


def _enforce(
    precision: str, figures: Figures, target: Target, eval_set: EvalSet,
    mixed: MixedPrecision | None = None,
) -> None:
    failures = target.failures(figures)
    if not failures:
        return
    how = ""
    if mixed is not None:
        how = f" even with {len(mixed.kept_float)} of {len(mixed.sensitivity)} layers kept in float"
    elif precision == "int8":
        how = " (mixed precision was off: turn it on to keep sensitive layers in float)"
    raise ParityError(
        f"the {precision} graph misses the target{how}: {'; '.join(failures)} against the float graph "
        f"over {len(eval_set.images)} images of {eval_set.source}; nothing was written"
    )


def _enforce_share(
    share: Int8Share, opts: QuantOptions, target: Target, calib_images: int,
    mixed: MixedPrecision | None = None,
) -> None:
    """Refuses an INT8 graph that runs less than ``opts.min_int8_share`` of the compute in INT8."""
    floor = opts.min_int8_share
    if floor <= 0 or share.share >= floor:
        return
    floats = share.float_nodes()
    largest = ", ".join(
        f"{n.name} ({n.op_type}, {n.flops / max(share.flops, 1):.1%} of the FLOPs)" for n in floats[:3]
    )
    if mixed is not None and mixed.kept_float:
        why = (
            f"mixed precision kept {len(mixed.kept_float)} of {len(mixed.sensitivity)} layers in float "
            f"to meet the target ({_describe_target(target)})"
        )
    elif mixed is None:
        why = "mixed precision was off: the placement itself left that compute in float"
    else:
        why = "no layer was kept in float for accuracy: the placement itself left that compute in float"
    looser = f"--min-agreement, now {target.min_agreement:.2%}"
    if target.max_miou_drop is not None:
        looser += f"; --max-miou-drop, now {target.max_miou_drop:g} points"
    if target.confidence is not None:
        looser += f"; --confidence, now {target.confidence:g}"
    raise ParityError(
        f"the int8 graph runs {share.share:.1%} of the model's compute in INT8 "
        f"({gflops(share.int8_flops)} of {gflops(share.flops)} GFLOPs), below the floor of {floor:.1%} "
        f"(min_int8_share): {why}; {len(floats)} of {len(share.nodes)} compute "
        f"nodes run in float, the largest: {largest}. Nothing was written. Ways out: ship fp16 or fp32 "
        f"instead (--precision fp16 / fp32), calibrate on a larger set (--calib-size, now {calib_images} "
        f"images), loosen the target ({looser}), or accept less INT8 "
        f"(--min-int8-share, now {floor:g}; 0 turns this check off)"
    )


def _describe_target(target: Target) -> str:
    text = f"agreement >= {target.min_agreement:.2%}"
    if target.confidence is not None:
        text += f" on {target.confidence:.0%} of the frames"
    if target.max_miou_drop is not None:
        text += f", mIoU drop <= {target.max_miou_drop:g} points"
    return text


def _every(what: str, tell: Say, step: int = 25) -> Count:
    def progress(done: int, total: int | None) -> None:
        if done == total or done % step == 0:
            tell(f"{what}: {done}/{total}")

    return progress


def graph_files(precisions: Sequence[str]) -> dict[str, str]:
    """Bundle file names of the graphs of ``precisions``."""
    return {p: GRAPH_FILES[p] for p in precisions}


def calibrate_bundle(
    bundle: str | os.PathLike[str],
    calib: str | os.PathLike[str] | None = None,
    *,
    quant: QuantOptions | None = None,
    check: CheckOptions | None = None,
    make_default: bool = True,
    progress: Say | None = None,
    **kwargs: Any,
) -> Any:
    """Adds (or replaces) the INT8 graph of an existing bundle, calibrated on ``calib``.

    The bundle's FP32 graph is quantized and judged against itself in ONNX
    Runtime (on ``check.samples``, or on frames of ``calib`` held out from
    calibration). The bundle is rewritten atomically with ``model.int8.onnx``
    and ``calibration.cache`` added; with ``make_default`` it runs INT8 by default.

    Args:
        bundle: the bundle to add the INT8 graph to.
        calib: the calibration set (or give it as ``quant.calib``).
        quant: how the INT8 graph is made (default: :class:`QuantOptions`'s defaults).
        check: the images it is judged on and its targets (default:
            :data:`converters.options.CALIBRATE_CHECK`, 16 images).
        make_default: the bundle runs INT8 by default afterwards.
        progress: called with a short message as each step starts.
        **kwargs: instead of ``quant``/``check``, their fields by name (``calib_size``,
            ``seed``, ``method``, ``placement``, ``mixed_precision``, ``trt_cache_version``,
            ``min_int8_share``;
            ``samples``, ``labels``, ``label_format``, ``ignore_index``, ``num_samples``,
            ``min_agreement``, ``max_miou_drop``).

    Returns:
        The rewritten, verified :class:`edgeseg.bundle.Bundle`.

    Raises:
        BundleError: the bundle is missing, altered or has no FP32 graph.
        ConfigError: a bad option or calibration set, an unknown keyword, or ``quant``
            or ``check`` together with their fields as keywords.
        ParityError: the INT8 graph misses the target, or runs less of the compute in INT8
            than ``min_int8_share``; the bundle is left as it was.
    """
    from edgeseg.bundle import Bundle, write_bundle

    say = say_or_log(progress)
    quant, check = _calibrate_options(calib, quant, check, kwargs)
    samples = check.samples
    loaded = Bundle.load(bundle)
    manifest = loaded.manifest
    graph = onnx.load(str(loaded.graph("fp32")))
    eval_set = None
    if samples is not None:
        eval_set = load_eval_set(
            samples, manifest.input, limit=check.num_samples, labels=check.labels,
            label_format=check.label_format, ignore_index=check.ignore_index,
        )
    lowered = lower_precision(
        graph, manifest.input, "int8", eval_set=eval_set, options=quant,
        min_agreement=check.min_agreement, max_miou_drop=check.max_miou_drop,
        confidence=check.target_confidence(), say=say,
    )
    lowered.info["parity"] = lowered.parity()
    name = GRAPH_FILES["int8"]
    files: dict[str, bytes | Path] = {
        n: loaded.path / n for n in manifest.files if n not in (name, TRT_CACHE_FILE)
    }
    stamp = {NUM_CLASSES_KEY: str(manifest.num_classes)}  # checked against the manifest on load
    files[name] = with_metadata(lowered.graph, stamp).SerializeToString()
    files.update(lowered.extra_files)
    updated = manifest.replace(
        precision="int8" if make_default else manifest.precision,
        graphs={**manifest.graphs, "int8": name},
        precisions={**manifest.precisions, "int8": {"graph": name, **lowered.info}},
        op_types={**manifest.op_types, name: sorted(op_types_of(lowered.graph))},
        files={},  # write_bundle records the files it writes
    )
    say(f"writing {loaded.path}")
    return write_bundle(loaded.path, updated, files, overwrite=True, base=loaded)


def _calibrate_options(
    calib: str | os.PathLike[str] | None,
    quant: QuantOptions | None,
    check: CheckOptions | None,
    kwargs: dict[str, Any],
) -> tuple[QuantOptions, CheckOptions]:
    """``calibrate_bundle``'s options objects, from the objects or from their fields as keywords."""
    groups: dict[str, tuple[type[QuantOptions] | type[CheckOptions], Any]] = {
        "quant": (QuantOptions, quant),
        "check": (CheckOptions, check),
    }
    owner = {f: name for name, (cls, _) in groups.items() for f in cls.__dataclass_fields__}
    unknown = sorted(set(kwargs) - set(owner))
    if unknown:
        raise ConfigError(f"unknown calibrate options {unknown}; valid: {', '.join(owner)}")
    for name, (_, given) in groups.items():
        mixed = sorted(k for k in kwargs if owner[k] == name)
        if given is not None and mixed:
            raise ConfigError(f"give {name}= or its fields {mixed} as keywords, not both")
    quant = quant or QuantOptions.from_mapping({k: v for k, v in kwargs.items() if owner[k] == "quant"})
    check = check or CheckOptions.from_mapping(
        {k: v for k, v in kwargs.items() if owner[k] == "check"}, base=CALIBRATE_CHECK
    )
    if calib is not None:
        if quant.calib is not None and quant.calib != calib:
            raise ConfigError(f"calib {calib} and quant.calib {quant.calib} differ; give one")
        quant = QuantOptions.from_mapping({"calib": calib}, base=quant)
    quant.require_calib()
    return quant, check
