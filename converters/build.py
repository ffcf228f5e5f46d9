"""``build``: a zoo model or any ``nn.Module`` -> a verified bundle.

Steps: resolve the model (and its weights), export to ONNX with fused pre- and
post-processing, simplify and check, measure parity against PyTorch in ONNX
Runtime, keep the requested outputs, write the bundle atomically.
"""

from __future__ import annotations

import logging
import os
import platform
import tempfile
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

import edgeseg
from calibration.quantize import DEFAULT_METHOD
from converters.crf import CRFParams, crf_graph, crf_reference
from converters.export import (
    DEFAULT_OPSET,
    GRAPH_OUTPUTS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    DeployWrapper,
    ExportSpec,
    check_graph,
    onnx_from_module,
    probe_module,
)
from converters.passes import select_outputs
from converters.precision import (
    DEFAULT_CALIB_SIZE,
    DEFAULT_EVAL_IMAGES,
    DEFAULT_PLACEMENT,
    DEFAULT_TRT_CACHE_VERSION,
    GRAPH_FILES,
    EvalSet,
    QuantOptions,
    load_eval_set,
    lower_precision,
)
from converters.samples import load_samples, synthetic_images
from edgeseg.bundle import (
    CRF_MODES,
    PRECISIONS,
    Bundle,
    InputSpec,
    Manifest,
    bundle_path,
    class_names,
    default_palette,
    sha256_file,
    write_bundle,
)
from edgeseg.errors import BundleExistsError, ConfigError, ParityError
from edgeseg.parity import Accumulator
from edgeseg.runtime.backends.onnxruntime import OnnxRuntimeBackend

log = logging.getLogger(__name__)

DEFAULT_NUM_CLASSES = 21  # Pascal VOC, torchvision's default for its segmentation models
DEFAULT_MIN_AGREEMENT = 0.999
DEFAULT_NUM_SAMPLES = 8
GRAY_MEAN = (0.449,)  # ImageNet's channel means and stds, averaged
GRAY_STD = (0.226,)

Progress = Callable[[str], None]


@dataclass(frozen=True)
class ResolvedModel:
    """A module ready for export, and what the manifest says about it."""

    module: nn.Module
    info: dict[str, Any]
    input_size: tuple[int, int]
    in_channels: int
    multiple_of: int
    classes: list[str]


def build(
    model: str | nn.Module,
    out: str | os.PathLike[str],
    *,
    classes: Sequence[str] | None = None,
    num_classes: int | None = None,
    input_size: tuple[int, int] | None = None,
    in_channels: int | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    precision: str = "fp32",
    weights: str | os.PathLike[str] | None = None,
    options: Mapping[str, Any] | None = None,
    outputs: Sequence[str] = ("mask",),
    palette: Sequence[Sequence[int]] | None = None,
    dynamic: bool = False,
    multiple_of: int | None = None,
    samples: str | os.PathLike[str] | None = None,
    num_samples: int = DEFAULT_NUM_SAMPLES,
    min_agreement: float | None = None,
    opset: int = DEFAULT_OPSET,
    overwrite: bool = False,
    progress: Progress | None = None,
    crf: str | None = None,
    crf_params: CRFParams | Mapping[str, Any] | None = None,
    calib: str | os.PathLike[str] | None = None,
    calib_size: int = DEFAULT_CALIB_SIZE,
    calib_seed: int = 0,
    method: str = DEFAULT_METHOD,
    placement: str = DEFAULT_PLACEMENT,
    mixed_precision: bool = True,
    labels: str | os.PathLike[str] | None = None,
    label_format: str = "auto",
    ignore_index: int | None = None,
    max_miou_drop: float | None = None,
    trt_cache_version: str = DEFAULT_TRT_CACHE_VERSION,
    target: str = "auto",
    engine: Any = None,
) -> Bundle:
    """Builds a bundle from a zoo model name or a ``torch.nn.Module``.

    Args:
        model: a zoo name (``edgeseg models`` lists them) or a module whose
            forward takes an NCHW float image and returns logits (N, C, H, W),
            a dict with ``"out"`` (torchvision), or a tuple starting with them.
        out: bundle directory to write (``.edgeseg`` is appended if missing).
        classes: class names; or give ``num_classes`` (names are then generated).
        num_classes: number of classes (zoo default 21; a module's is probed).
        input_size: (height, width); zoo models have a default, modules need it.
        in_channels: 3 (RGB, default) or 1 (grayscale).
        mean: per-channel mean on the 0..1 scale (default ImageNet's).
        std: per-channel std on the 0..1 scale (default ImageNet's).
        precision: ``"fp32"``, ``"fp16"`` (an FP16 graph with I/O and sensitive
            operators in FP32) or ``"int8"`` (explicit Q/DQ from ``calib``). The
            bundle keeps ``model.onnx`` (FP32) beside ``model.fp16.onnx`` /
            ``model.int8.onnx`` and runs the latter by default.
        weights: a state dict or checkpoint file, loaded with ``weights_only=True``.
        options: zoo model options (``edgeseg models`` lists them); not for modules.
        outputs: graph outputs to keep: ``mask`` plus any of ``probs``, ``logits``.
        palette: one [r, g, b] per class (default: the Pascal VOC colour map).
        dynamic: symbolic height and width in the graph.
        multiple_of: with ``dynamic``, sides must be multiples of this
            (zoo models know theirs; modules default to 32).
        samples: a folder of images for the parity check (default: generated images).
        num_samples: how many sample images the parity check runs.
        min_agreement: the build fails when the graph's masks agree with the
            reference's on fewer pixels than this fraction: the FP32 graph with
            PyTorch (default 0.999), an FP16/INT8 graph with the FP32 graph
            (default 0.995 / 0.99; INT8 keeps its most sensitive layers in float
            until it holds, see ``mixed_precision``).
        opset: ONNX opset (>= 19).
        overwrite: replace an existing bundle.
        progress: called with a short message as each step starts.
        crf: add the dense CRF stage: ``"separate"`` (its own ``crf.onnx``,
            switchable at run time; the model then also outputs ``logits``)
            or ``"fused"`` (one graph: model, then CRF). Static sizes only.
        crf_params: :class:`converters.crf.CRFParams` or a dict of its fields.
        calib: INT8 calibration set: a folder of images (recursive), a video or an ``.npz``.
        calib_size: how many frames of ``calib`` to use (spread evenly over it).
        calib_seed: seed of the deterministic pick of calibration frames.
        method: INT8 calibration: ``minmax``, ``percentile`` or ``entropy``.
        placement: where INT8 Q/DQ goes: ``cpu`` (what ONNX Runtime fuses into
            integer kernels) or ``tensorrt`` (TensorRT's explicit-quantization rules).
        mixed_precision: keep the most sensitive layers in float until the
            target (``min_agreement``, ``max_miou_drop``) holds.
        labels: label folder for ``samples``; enables ``max_miou_drop``.
        label_format: ``auto``, ``ids``, ``voc`` or ``cityscapes``.
        ignore_index: a label id left out of the mIoU (e.g. CamVid's 11).
        max_miou_drop: mIoU points an FP16/INT8 graph may lose against FP32.
        trt_cache_version: TensorRT version written in the header of the
            legacy calibration cache (``calibration.cache``) of INT8 bundles.
        target: ``cpu`` (ONNX graphs only), ``tensorrt`` (also a TensorRT
            engine for this GPU) or ``auto`` (an engine when TensorRT and a GPU are
            here, as on a Jetson; ONNX graphs only elsewhere); see :func:`converters.tensorrt.engine_for_build`.
        engine: engine options, a :class:`converters.tensorrt.EngineConfig` or a dict
            of its fields (workspace_mb, opt_level, dla_core, min/opt/max_shape,
            deform_conv, plugin_library).

    Returns:
        The written, verified bundle.

    Raises:
        ConfigError: an argument is wrong (the message names it).
        WeightsError: the weights cannot be read or do not fit.
        ExportError: export or the graph checks failed.
        ParityError: ONNX Runtime disagrees with PyTorch beyond ``min_agreement``.
        BundleExistsError: ``out`` exists and ``overwrite`` is false.
    """
    say = progress or (lambda message: log.info("%s", message))
    from converters.tensorrt import TARGETS, coerce_config

    if target not in TARGETS:
        raise ConfigError(f"target must be one of {', '.join(TARGETS)}, got {target!r}")
    coerce_config(engine)  # bad engine options fail before the export, not after
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    quant = QuantOptions(calib, calib_size, calib_seed, method, placement, mixed_precision, trt_cache_version)
    if precision == "int8":
        quant.check()
    elif calib is not None:
        raise ConfigError(f"calib is for precision='int8'; this build is {precision}")
    if labels is not None and samples is None:
        raise ConfigError("labels need samples=DIR (--samples): the images they label")
    fp32_min_agreement = min_agreement if precision == "fp32" and min_agreement is not None else DEFAULT_MIN_AGREEMENT
    if min_agreement is not None and not 0.0 <= min_agreement <= 1.0:
        raise ConfigError(f"min_agreement must be a fraction in [0, 1], got {min_agreement}")
    if num_samples < 1:
        raise ConfigError(f"num_samples must be >= 1, got {num_samples}")
    wanted = _check_outputs(outputs)
    params = _crf_params(crf, crf_params, dynamic)
    if crf == "separate" and "logits" not in wanted:
        wanted.append("logits")  # the CRF stage reads the model's logits
    destination = bundle_path(out)
    if destination.exists() and not overwrite:
        raise BundleExistsError(f"{destination} already exists; pass overwrite=True (--force) to replace it")

    say("preparing the model")
    resolved = resolve_model(
        model,
        classes=classes,
        num_classes=num_classes,
        input_size=input_size,
        in_channels=in_channels,
        weights=weights,
        options=options,
        dynamic=dynamic,
        multiple_of=multiple_of,
    )
    if len(resolved.classes) > 256:
        raise ConfigError(
            f"{len(resolved.classes)} classes do not fit the uint8 mask (at most 256)"
        )
    default_mean, default_std = (IMAGENET_MEAN, IMAGENET_STD) if resolved.in_channels == 3 else (GRAY_MEAN, GRAY_STD)
    spec = ExportSpec(
        input_size=resolved.input_size,
        in_channels=resolved.in_channels,
        mean=tuple(float(v) for v in (mean if mean is not None else default_mean)),
        std=tuple(float(v) for v in (std if std is not None else default_std)),
        dynamic=dynamic,
        multiple_of=resolved.multiple_of if dynamic else 1,
        opset=opset,
    )
    colors = _palette(palette, len(resolved.classes))

    say(f"exporting to ONNX (opset {opset}{', dynamic height/width' if dynamic else ''})")
    full = onnx_from_module(resolved.module, spec)

    say("checking parity with PyTorch in ONNX Runtime")
    images, sample_source, skipped = _parity_images(samples, spec, num_samples)
    parity = measure_parity(resolved.module, full, spec, images)
    parity.update(
        {
            "precision": "fp32",
            "backend": "onnxruntime-cpu",
            "samples": int(len(images)),
            "sample_source": sample_source,
            "samples_skipped": skipped,
            "min_agreement": fp32_min_agreement,
            "trained": resolved.info.get("trained"),
        }
    )
    if parity["agreement"] < fp32_min_agreement:
        raise ParityError(
            f"ONNX Runtime agrees with PyTorch on {parity['agreement']:.4%} of pixels, under "
            f"min_agreement {fp32_min_agreement:.4%} (max abs logit error {parity['max_abs_error']:.3g}, "
            f"mean {parity['mean_abs_error']:.3g}, over {len(images)} {sample_source} images); "
            "nothing was written"
        )

    input_spec = InputSpec(
        size=spec.input_size,
        channels=spec.in_channels,
        mean=spec.mean,
        std=spec.std,
        dynamic=spec.dynamic,
        multiple_of=spec.multiple_of,
    )
    lowered = None
    if precision != "fp32":
        if samples is not None:
            eval_set: EvalSet | None = load_eval_set(
                samples, input_spec, limit=max(num_samples, DEFAULT_EVAL_IMAGES), labels=labels,
                label_format=label_format, ignore_index=ignore_index,
            )
        elif precision == "fp16":
            eval_set = EvalSet(images, "generated")
        else:
            eval_set = None  # held out from the calibration set
        lowered = lower_precision(
            full, input_spec, precision, eval_set=eval_set, options=quant,
            min_agreement=min_agreement, max_miou_drop=max_miou_drop, say=say,
        )
        say(f"checking the {precision} graph against PyTorch")
        versus_torch = measure_parity(resolved.module, lowered.graph, spec, lowered.eval_set.images)
        lowered.info["parity"] = {**lowered.parity(), "pytorch": versus_torch}

    say(f"writing {destination}")
    files: dict[str, bytes] = {}
    crf_info: dict[str, Any] | None = None
    if params is not None:
        h, w = spec.input_size
        say(f"adding the dense CRF ({crf}, {params.iterations} iterations, window {params.window}, "
            f"downsample {params.downsample})")
        crf_model = crf_graph(params, len(resolved.classes), height=h, width=w, channels=spec.in_channels)
        crf_info = {"mode": crf, "params": params.to_json()}
        parity["crf_agreement"] = _crf_parity(crf_model, resolved.module, spec, images[:2], params)
        if crf == "separate":
            files["crf.onnx"] = crf_model.SerializeToString()
            crf_info["graph"] = "crf.onnx"
        else:
            full = fuse_crf(full, crf_model)
            if lowered is not None:
                lowered.graph = fuse_crf(lowered.graph, crf_model)
    final = select_outputs(full, wanted)
    graphs = {"fp32": "model.onnx"}
    precisions: dict[str, dict[str, Any]] = {}
    if lowered is not None:
        name = GRAPH_FILES[precision]
        graphs[precision] = name
        files[name] = select_outputs(lowered.graph, wanted).SerializeToString()
        files.update(lowered.extra_files)
        precisions[precision] = {"graph": name, **lowered.info}
    manifest = Manifest(
        model=resolved.info,
        classes=tuple(resolved.classes),
        palette=tuple(colors),
        input=input_spec,
        precision=precision,
        opset=opset,
        outputs=tuple(wanted),
        graphs=graphs,
        versions=_versions(),
        parity=parity,
        crf=crf_info,
        precisions=precisions,
    )
    files["model.onnx"] = final.SerializeToString()
    from converters.tensorrt import engine_for_build

    return engine_for_build(
        write_bundle(destination, manifest, files, overwrite=overwrite), target, engine, say=say
    )


def _crf_params(
    crf: str | None, given: CRFParams | Mapping[str, Any] | None, dynamic: bool
) -> CRFParams | None:
    if crf is None:
        if given is not None:
            raise ConfigError("crf_params were given without crf='separate' or crf='fused'")
        return None
    if crf not in CRF_MODES:
        raise ConfigError(f"crf must be one of {', '.join(CRF_MODES)} (or None), got {crf!r}")
    if dynamic:
        raise ConfigError("the CRF stage is built for one input size; it cannot be combined with dynamic=True")
    if given is None or isinstance(given, CRFParams):
        return given or CRFParams()
    unknown = sorted(set(given) - set(CRFParams.__dataclass_fields__))
    if unknown:
        raise ConfigError(
            f"unknown crf_params {unknown}; valid: {', '.join(CRFParams.__dataclass_fields__)}"
        )
    return CRFParams(**given)


def fuse_crf(model: onnx.ModelProto, crf_model: onnx.ModelProto) -> onnx.ModelProto:
    """One graph: the model's ``logits`` feed the CRF, whose ``probs``/``mask`` replace the model's.

    The CRF graph reads ``image`` and ``logits`` by name, which are the
    model's input and logits tensor, so its nodes append as they are.
    """
    base = select_outputs(model, ["logits"])  # drops the model's own mask/probs nodes
    out = onnx.ModelProto()
    out.CopyFrom(base)
    out.graph.node.extend(crf_model.graph.node)
    out.graph.initializer.extend(crf_model.graph.initializer)
    logits = out.graph.output[0]
    del out.graph.output[:]
    out.graph.output.extend([*crf_model.graph.output, logits])
    by_name = {o.name: o for o in out.graph.output}
    del out.graph.output[:]
    out.graph.output.extend(by_name[n] for n in GRAPH_OUTPUTS)  # mask, probs, logits
    check_graph(out)
    return out


def _crf_parity(
    crf_model: onnx.ModelProto, module: nn.Module, spec: ExportSpec, images: np.ndarray, params: CRFParams
) -> float:
    """Pixel agreement of the CRF graph (on PyTorch's logits) with the NumPy reference."""
    wrapper = DeployWrapper(module, spec).eval()
    agree = []
    with tempfile.TemporaryDirectory(prefix="edgeseg-crf-") as tmp:
        path = Path(tmp) / "crf.onnx"
        path.write_bytes(crf_model.SerializeToString())
        with OnnxRuntimeBackend(path) as backend, torch.no_grad():
            for image in images:
                logits = wrapper(torch.from_numpy(np.ascontiguousarray(image[None])))[2].numpy()
                got = backend.infer({"image": image[None], "logits": logits}, ["mask"])["mask"][0]
                ref = crf_reference(image, logits[0], params).argmax(axis=0)
                agree.append(float((got == ref).mean()))
    return float(np.mean(agree))


def resolve_model(
    model: str | nn.Module,
    *,
    classes: Sequence[str] | None,
    num_classes: int | None,
    input_size: tuple[int, int] | None,
    in_channels: int | None,
    weights: str | os.PathLike[str] | None,
    options: Mapping[str, Any] | None,
    dynamic: bool = False,
    multiple_of: int | None = None,
) -> ResolvedModel:
    """Instantiates a zoo model (or takes a module), loads weights, probes classes."""
    from edgeseg import models as zoo

    channels = 3 if in_channels is None else in_channels
    if channels not in (1, 3) or isinstance(channels, bool):
        raise ConfigError(f"in_channels must be 1 or 3, got {in_channels!r}")
    size = _check_size(input_size) if input_size is not None else None

    if isinstance(model, str):
        spec = zoo.get_spec(model)
        if size is None:
            size = (int(spec.default_input_size[0]), int(spec.default_input_size[1]))
        zoo.check_input_size(spec, size)
        if classes is None and num_classes is None:
            num_classes = DEFAULT_NUM_CLASSES
            log.info("no classes given: %s gets %d classes", model, num_classes)
        names = class_names(classes, num_classes)
        opts = dict(options or {})
        module = zoo.create_model(model, num_classes=len(names), in_channels=channels, **opts)
        resolved_opts = {**spec.options, **opts}
        info: dict[str, Any] = {"name": spec.name, "source": "zoo", "options": _jsonable(resolved_opts)}
        step = spec.multiple_of if multiple_of is None else multiple_of
    elif isinstance(model, nn.Module):
        if options:
            raise ConfigError("options are for zoo models; configure your own module before build()")
        if size is None:
            raise ConfigError("input_size=(height, width) is required when building from a module")
        module = model
        info = {
            "name": type(model).__name__,
            "source": "module",
            "class": f"{type(model).__module__}.{type(model).__qualname__}",
            "options": {},
        }
        names = []
        step = 32 if multiple_of is None else multiple_of
    else:
        raise ConfigError(
            f"model must be a zoo model name or a torch.nn.Module, got {type(model).__name__}"
        )
    if step < 1:
        raise ConfigError(f"multiple_of must be >= 1, got {step}")
    if dynamic and (size[0] % step or size[1] % step):
        raise ConfigError(
            f"input_size {size[0]}x{size[1]} is not a multiple of {step}, which the dynamic graph needs"
        )

    if weights is not None:
        report = zoo.load_weights(module, weights)
        info["weights"] = {"file": Path(weights).name, "sha256": sha256_file(Path(weights))}
        info["trained"] = True
        if report.missing or report.unexpected:
            warnings.warn(
                f"weights {weights}: {len(report.missing)} missing keys "
                f"{_few(report.missing)} and {len(report.unexpected)} unexpected keys "
                f"{_few(report.unexpected)}; {report.loaded} tensors loaded",
                stacklevel=3,
            )
    elif info["source"] == "zoo":
        info["trained"] = False
        warnings.warn(
            f"{info['name']} has no weights: the network is untrained (fine for latency, "
            "not for accuracy); pass weights=PATH (--weights)",
            stacklevel=3,
        )
    else:
        info["trained"] = None  # the user's module: we cannot tell

    module.eval()
    probe_spec = ExportSpec(input_size=size, in_channels=channels, mean=(0.5,) * channels, std=(0.5,) * channels)
    found = probe_module(module, probe_spec)
    if info["source"] == "module":
        names = class_names(classes, num_classes if num_classes is not None else (None if classes else found))
    if found != len(names):
        raise ConfigError(
            f"the model outputs {found} classes but {len(names)} class names were given"
        )
    return ResolvedModel(module, info, size, channels, step, names)


def measure_parity(
    module: nn.Module, graph: onnx.ModelProto, spec: ExportSpec, images: np.ndarray
) -> dict[str, Any]:
    """Runs ``graph`` in ONNX Runtime and the PyTorch module on the same uint8 images.

    The PyTorch side runs the same :class:`DeployWrapper` pre- and post-processing
    eagerly, so the figures measure the conversion, not a different pipeline.

    Returns:
        max/mean absolute logit error, the largest absolute logit, pixel agreement of the masks (overall and
        the worst image), and the images' size.
    """
    wrapper = DeployWrapper(module, spec).eval()
    acc = Accumulator()
    with tempfile.TemporaryDirectory(prefix="edgeseg-parity-") as tmp:
        path = Path(tmp) / "model.onnx"
        path.write_bytes(graph.SerializeToString())
        with OnnxRuntimeBackend(path) as backend, torch.no_grad():
            for i, image in enumerate(images):
                batch = np.ascontiguousarray(image[None])
                got = backend.infer({"image": batch}, ["mask", "logits"])
                ref_mask, _, ref_logits = wrapper(torch.from_numpy(batch))
                acc.update(
                    f"sample_{i}", image, ref_logits[0].numpy(), ref_mask[0].numpy(),
                    got["logits"][0], got["mask"][0],
                )
    return {**acc.figures(), "image_size": list(images.shape[1:3])}


def _parity_images(
    samples: str | os.PathLike[str] | None, spec: ExportSpec, n: int
) -> tuple[np.ndarray, str, int]:
    if samples is None:
        return synthetic_images(n, spec.input_size, spec.in_channels, seed=0), "generated", 0
    images, skipped = load_samples(samples, spec.input_size, spec.in_channels, limit=n)
    return images, str(samples), skipped


def _check_outputs(outputs: Sequence[str]) -> list[str]:
    if isinstance(outputs, str):
        outputs = [outputs]
    unknown = [o for o in outputs if o not in GRAPH_OUTPUTS]
    if unknown:
        raise ConfigError(f"unknown outputs {unknown}; valid: {', '.join(GRAPH_OUTPUTS)}")
    wanted = ["mask"] + [o for o in GRAPH_OUTPUTS[1:] if o in outputs]
    return wanted


def _check_size(size: Sequence[int]) -> tuple[int, int]:
    try:
        h, w = (int(s) for s in size)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"input_size must be (height, width), got {size!r}") from err
    if h <= 0 or w <= 0 or any(isinstance(s, bool) for s in size):
        raise ConfigError(f"input_size must be positive (height, width), got {size!r}")
    return (h, w)


def _palette(palette: Sequence[Sequence[int]] | None, n: int) -> list[tuple[int, int, int]]:
    if palette is None:
        return default_palette(n)
    colors = []
    for i, c in enumerate(palette):
        rgb = tuple(int(v) for v in c)
        if len(rgb) != 3 or not all(0 <= v <= 255 for v in rgb):
            raise ConfigError(f"palette entry {i} is {c!r}; expected [r, g, b] with values 0..255")
        colors.append((rgb[0], rgb[1], rgb[2]))
    if len(colors) != n:
        raise ConfigError(f"palette has {len(colors)} colours for {n} classes")
    return colors


def _versions() -> dict[str, str]:
    import onnxruntime
    import torchvision

    versions = {
        "edgeseg": edgeseg.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
    }
    try:
        import onnxslim

        versions["onnxslim"] = onnxslim.__version__
    except ImportError:  # pragma: no cover - a build dependency
        pass
    return versions


def _jsonable(options: Mapping[str, Any]) -> dict[str, Any]:
    return {k: (v if isinstance(v, (bool, int, float, str)) or v is None else str(v)) for k, v in options.items()}


def _few(names: Sequence[str], k: int = 3) -> str:
    shown = ", ".join(names[:k])
    return f"({shown}{', ...' if len(names) > k else ''})" if names else ""
