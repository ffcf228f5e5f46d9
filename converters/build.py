"""``build``: a zoo model or any ``nn.Module`` -> a verified bundle.

:func:`build` reads its options into one :class:`converters.options.BuildOptions`
(checked before any work), then runs named steps, each a small function:

1. :func:`resolve_step`: the module (zoo model or the user's), its weights and classes;
2. :func:`export_step`: ONNX with fused pre- and post-processing, simplified and checked;
3. :func:`check_step`: parity with PyTorch in ONNX Runtime (a ParityError below the target);
4. :func:`precision_step`: the FP16 or INT8 graph, judged against the FP32 graph;
5. :func:`crf_step`: the dense CRF graph, checked against its NumPy reference;
6. :func:`write_step`: the graphs, each held to TensorRT's acceptance offline
   (:func:`acceptance_step`), and the manifest, written atomically;
7. :func:`engine_step`: a TensorRT engine, where the target asks for one.
"""

from __future__ import annotations

import logging
import os
import platform
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

import edgeseg
from converters.acceptance import VERSIONS, GraphReport, check_versions, resolve_version
from converters.crf import CRFParams, crf_graph, crf_reference
from converters.export import (
    GRAPH_OUTPUTS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    DeployWrapper,
    ExportSpec,
    check_graph,
    onnx_from_module,
    probe_module,
)
from converters.options import (
    DEFAULT_EVAL_IMAGES,
    DEFAULT_NUM_CLASSES,
    BuildOptions,
    ModelOptions,
)
from converters.passes import select_outputs, with_metadata
from converters.precision import GRAPH_FILES, EvalSet, Lowered, load_eval_set, lower_precision
from converters.samples import load_samples, synthetic_images
from converters.tensorrt import engine_for_build, op_types_of, resolve_target, tensorrt_version
from edgeseg.bundle import (
    Bundle,
    InputSpec,
    Manifest,
    bundle_path,
    class_names,
    default_palette,
    sha256_file,
    write_bundle,
)
from edgeseg.errors import BundleExistsError, ConfigError, ExportError, ParityError
from edgeseg.manifest import OutputRecord, encode
from edgeseg.parity import Accumulator
from edgeseg.progress import Say, say_or_log
from edgeseg.runtime.backends.onnxruntime import OnnxRuntimeBackend
from edgeseg.runtime.contract import NUM_CLASSES_KEY

log = logging.getLogger(__name__)

GRAY_MEAN = (0.449,)  # ImageNet's channel means and stds, averaged
GRAY_STD = (0.226,)
CRF_FILE = "crf.onnx"


@dataclass(frozen=True)
class ResolvedModel:
    """A module ready for export, and what the manifest says about it.

    ``output``: where the module's logits are and their scale to the input
    (the probe's; ``info["output"]`` holds its JSON unless it is the default,
    a tensor at the input size).
    """

    module: nn.Module
    info: dict[str, Any]
    input_size: tuple[int, int]
    in_channels: int
    multiple_of: int
    classes: list[str]
    palette: list[tuple[int, int, int]]
    output: OutputRecord = OutputRecord()


@dataclass(frozen=True)
class Exported:
    """The FP32 graph (every output) and the input it was exported for."""

    spec: ExportSpec
    input: InputSpec
    graph: onnx.ModelProto


@dataclass(frozen=True)
class Checked:
    """The FP32 graph's parity with PyTorch, and the images it was measured on."""

    parity: dict[str, Any]
    images: np.ndarray


@dataclass(frozen=True)
class CRFStage:
    """The dense CRF graph and its agreement with the NumPy reference."""

    mode: str
    params: CRFParams
    graph: onnx.ModelProto
    agreement: float


def build(
    model: str | nn.Module,
    out: str | os.PathLike[str],
    *,
    config: BuildOptions | None = None,
    progress: Say | None = None,
    **kwargs: Any,
) -> Bundle:
    """Builds a bundle from a zoo model name or a ``torch.nn.Module``.

    Args:
        model: a zoo name (``edgeseg models`` lists them) or a module whose
            forward takes an NCHW float image and returns logits (N, C, h, w): a
            tensor, a dict with ``"out"`` (torchvision) or ``"logits"`` (a Hugging
            Face ``ModelOutput``), an object with ``.logits``, or a tuple starting
            with one of these (:func:`converters.export.locate_logits`). Logits
            smaller than the input by an integer factor per axis (1/4, 1/8) are
            upsampled to the input size in the graph (bilinear, ``align_corners``:
            the option, or :func:`converters.export.family_align_corners`); the
            manifest's ``model.output`` records where they were and the upsampling.
        out: bundle directory to write (``.edgeseg`` is appended if missing).
        config: every option as one :class:`converters.options.BuildOptions`
            (instead of keywords).
        progress: called with a short message as each step starts.
        **kwargs: the options as keywords, each a field of a BuildOptions group
            (:func:`converters.options.flat_names`): ``precision``, ``target``,
            ``overwrite``, ``engine`` (an EngineConfig or a dict of its fields);
            :class:`~converters.options.ModelOptions`' ``classes``, ``num_classes``,
            ``input_size``, ``in_channels``, ``mean``, ``std``, ``weights``, ``options``,
            ``outputs``, ``palette``, ``dynamic``, ``multiple_of``, ``opset``, ``align_corners``;
            :class:`~converters.options.CheckOptions`' ``samples``, ``num_samples``,
            ``labels``, ``label_format``, ``ignore_index``, ``min_agreement``,
            ``max_miou_drop``; :class:`~converters.options.QuantOptions`' ``calib``,
            ``calib_size``, ``calib_seed``, ``method``, ``placement``,
            ``mixed_precision``, ``trt_cache_version``; and
            :class:`~converters.options.CRFOptions`' ``crf``, ``crf_params``.
            Their defaults and meaning are documented there.

    Returns:
        The written, verified bundle.

    Raises:
        ConfigError: an argument is wrong or unknown (the message names it), or
            ``config`` was given together with keywords.
        WeightsError: the weights cannot be read or do not fit.
        ExportError: export or the graph checks failed.
        ParityError: ONNX Runtime disagrees with PyTorch beyond ``min_agreement``
            (or an FP16/INT8 graph misses its target); nothing is written.
        BundleExistsError: ``out`` exists and ``overwrite`` is false.
    """
    if config is not None and kwargs:
        raise ConfigError(
            f"give config=BuildOptions(...) or keyword options, not both (got config and "
            f"{', '.join(sorted(kwargs))})"
        )
    if config is not None and not isinstance(config, BuildOptions):
        raise ConfigError(f"config must be a BuildOptions, got {type(config).__name__}")
    options = config if config is not None else BuildOptions.from_kwargs(**kwargs)
    say = say_or_log(progress)
    destination = bundle_path(out)
    if destination.exists() and not options.overwrite:
        raise BundleExistsError(f"{destination} already exists; pass overwrite=True (--force) to replace it")

    resolved = resolve_step(model, options, say)
    exported = export_step(resolved, options, say)
    checked = check_step(resolved, exported, options, say)
    lowered = precision_step(resolved, exported, checked, options, say)
    crf = crf_step(resolved, exported, checked, options, say)
    bundle = write_step(destination, resolved, exported, checked, lowered, crf, options, say)
    return engine_step(bundle, options, say)


def resolve_step(model: str | nn.Module, options: BuildOptions, say: Say) -> ResolvedModel:
    """Step 1: the module to export, with its weights, classes and palette."""
    say("preparing the model")
    return resolve_model(model, options.model)


def export_step(resolved: ResolvedModel, options: BuildOptions, say: Say) -> Exported:
    """Step 2: the FP32 graph with pre- and post-processing (every output kept for now)."""
    given = options.model
    default_mean, default_std = (IMAGENET_MEAN, IMAGENET_STD) if resolved.in_channels == 3 else (GRAY_MEAN, GRAY_STD)
    spec = ExportSpec(
        input_size=resolved.input_size,
        in_channels=resolved.in_channels,
        mean=given.mean if given.mean is not None else default_mean,
        std=given.std if given.std is not None else default_std,
        dynamic=given.dynamic,
        multiple_of=resolved.multiple_of if given.dynamic else 1,
        opset=given.opset,
        logits_scale=resolved.output.scale,
        align_corners=bool(resolved.output.align_corners),
    )
    say(f"exporting to ONNX (opset {spec.opset}{', dynamic height/width' if spec.dynamic else ''})")
    if spec.logits_scale != (1, 1):
        sh, sw = spec.logits_scale
        say(f"the model's logits are 1/{sh} x 1/{sw} of the input: upsampling them in the graph "
            f"(bilinear, align_corners={spec.align_corners})")
    graph = onnx_from_module(resolved.module, spec)
    input_spec = InputSpec(
        size=spec.input_size,
        channels=spec.in_channels,
        mean=spec.mean,
        std=spec.std,
        dynamic=spec.dynamic,
        multiple_of=spec.multiple_of,
    )
    return Exported(spec, input_spec, graph)


def check_step(resolved: ResolvedModel, exported: Exported, options: BuildOptions, say: Say) -> Checked:
    """Step 3: the FP32 graph against PyTorch in ONNX Runtime.

    Raises:
        ParityError: the masks agree on fewer pixels than the target; nothing is written.
    """
    say("checking parity with PyTorch in ONNX Runtime")
    check = options.check
    target = options.parity_target()
    images, sample_source, skipped = _parity_images(check.samples, exported.spec, check.num_samples)
    parity = measure_parity(resolved.module, exported.graph, exported.spec, images)
    parity.update(
        {
            "precision": "fp32",
            "backend": "onnxruntime-cpu",
            "samples": int(len(images)),
            "sample_source": sample_source,
            "samples_skipped": skipped,
            "min_agreement": target,
            "trained": resolved.info.get("trained"),
        }
    )
    if parity["agreement"] < target:
        raise ParityError(
            f"ONNX Runtime agrees with PyTorch on {parity['agreement']:.4%} of pixels, under "
            f"min_agreement {target:.4%} (max abs logit error {parity['max_abs_error']:.3g}, "
            f"mean {parity['mean_abs_error']:.3g}, over {len(images)} {sample_source} images); "
            "nothing was written"
        )
    return Checked(parity, images)


def precision_step(
    resolved: ResolvedModel, exported: Exported, checked: Checked, options: BuildOptions, say: Say
) -> Lowered | None:
    """Step 4: the FP16 or INT8 graph (None for FP32), judged against the FP32 graph and PyTorch.

    Raises:
        ParityError: the graph misses its target, even with layers kept in float.
    """
    precision, check = options.precision, options.check
    if precision == "fp32":
        return None
    if check.samples is not None:
        eval_set: EvalSet | None = load_eval_set(
            check.samples, exported.input, limit=max(check.num_samples, DEFAULT_EVAL_IMAGES),
            labels=check.labels, label_format=check.label_format, ignore_index=check.ignore_index,
        )
    elif precision == "fp16":
        eval_set = EvalSet(checked.images, "generated")
    else:
        eval_set = None  # held out from the calibration set
    lowered = lower_precision(
        exported.graph, exported.input, precision, eval_set=eval_set,
        options=options.quant.for_target(options.target),
        min_agreement=check.min_agreement, max_miou_drop=check.max_miou_drop,
        confidence=check.target_confidence(), say=say,
    )
    say(f"checking the {precision} graph against PyTorch")
    versus_torch = measure_parity(resolved.module, lowered.graph, exported.spec, lowered.eval_set.images)
    lowered.info["parity"] = {**lowered.parity(), "pytorch": versus_torch}
    return lowered


def crf_step(
    resolved: ResolvedModel, exported: Exported, checked: Checked, options: BuildOptions, say: Say
) -> CRFStage | None:
    """Step 5: the dense CRF graph (None without one), checked against the NumPy reference."""
    params = options.crf.crf_params()
    mode = options.crf.mode
    if params is None or mode is None:
        return None
    say(f"adding the dense CRF ({mode}, {params.iterations} iterations, window {params.window}, "
        f"downsample {params.downsample})")
    h, w = exported.spec.input_size
    graph = crf_graph(params, len(resolved.classes), height=h, width=w, channels=exported.spec.in_channels)
    agreement = _crf_parity(graph, resolved.module, exported.spec, checked.images[:2], params)
    return CRFStage(mode, params, graph, agreement)


def write_step(
    destination: Path,
    resolved: ResolvedModel,
    exported: Exported,
    checked: Checked,
    lowered: Lowered | None,
    crf: CRFStage | None,
    options: BuildOptions,
    say: Say,
) -> Bundle:
    """Step 6: the graphs (CRF fused where asked, only the wanted outputs) and the manifest."""
    say(f"writing {destination}")
    wanted = list(options.model.outputs)
    if crf is not None and crf.mode == "separate" and "logits" not in wanted:
        wanted.append("logits")  # the CRF stage reads the model's logits
    graphs = {"fp32": exported.graph}
    if lowered is not None:
        graphs[lowered.precision] = lowered.graph
    if crf is not None and crf.mode == "fused":
        graphs = {precision: fuse_crf(graph, crf.graph) for precision, graph in graphs.items()}
    stamp = {NUM_CLASSES_KEY: str(len(resolved.classes))}  # checked against the manifest on load
    final = {
        GRAPH_FILES[p]: with_metadata(select_outputs(graph, wanted), stamp) for p, graph in graphs.items()
    }
    if crf is not None and crf.mode == "separate":
        final[CRF_FILE] = crf.graph
    files: dict[str, bytes] = {name: graph.SerializeToString() for name, graph in final.items()}
    if lowered is not None:
        files.update(lowered.extra_files)
    acceptance_step(final, lowered, options, say)
    op_types = {name: sorted(op_types_of(graph)) for name, graph in final.items()}
    manifest = build_manifest(resolved, exported, checked, lowered, crf, options, wanted, op_types)
    return write_bundle(destination, manifest, files, overwrite=options.overwrite)


def build_manifest(
    resolved: ResolvedModel,
    exported: Exported,
    checked: Checked,
    lowered: Lowered | None,
    crf: CRFStage | None,
    options: BuildOptions,
    outputs: list[str],
    op_types: dict[str, list[str]],
) -> Manifest:
    """The manifest of a new bundle: what was built, from what, and how well it matches.

    The records are given as the JSON the build steps measured and checked on
    the way in (:meth:`Manifest.create`): a figure out of range fails here,
    before anything is written.
    """
    parity = dict(checked.parity)
    crf_info: dict[str, Any] | None = None
    if crf is not None:
        parity["crf_agreement"] = crf.agreement
        crf_info = {"mode": crf.mode, "params": crf.params.to_json()}
        if crf.mode == "separate":
            crf_info["graph"] = CRF_FILE
    graphs = {"fp32": GRAPH_FILES["fp32"]}
    precisions: dict[str, dict[str, Any]] = {}
    if lowered is not None:
        name = GRAPH_FILES[lowered.precision]
        graphs[lowered.precision] = name
        precisions[lowered.precision] = {"graph": name, **lowered.info}
    return Manifest.create(
        model=resolved.info,
        classes=tuple(resolved.classes),
        palette=tuple(resolved.palette),
        input=exported.input,
        precision=options.precision,
        opset=exported.spec.opset,
        outputs=tuple(outputs),
        graphs=graphs,
        versions=_versions(),
        parity=parity,
        crf=crf_info,
        precisions=precisions,
        op_types=op_types,
    )


def acceptance_step(
    final: Mapping[str, onnx.ModelProto], lowered: Lowered | None, options: BuildOptions, say: Say
) -> dict[str, dict[str, GraphReport]]:
    """Part of step 6: every graph about to be written, held to TensorRT's acceptance
    (:mod:`converters.acceptance`) for each version edgeseg has a table for.

    When this build makes an engine (``target="tensorrt"``, or ``auto`` with
    TensorRT here), a graph the installed TensorRT would refuse fails the build
    before anything is written. Otherwise a refusal is a warning that names the
    graphs, the versions and the first nodes: the bundle still runs on ONNX
    Runtime, and ``edgeseg check`` lists every node.

    With ``target="cpu"`` (a CPU-only bundle) a refusal is a progress line, not a warning.

    Returns:
        graph file -> version -> report.

    Raises:
        ExportError: a graph the TensorRT that will build the engine refuses.
    """
    reports = {name: check_versions(graph, VERSIONS, label=name) for name, graph in final.items()}
    placement = (
        lowered.info.get("quantization", {}).get("placement") if lowered is not None else None
    )
    hint = (
        "; the INT8 graph has ONNX Runtime's Q/DQ placement (uint8 activations), which TensorRT refuses: "
        "build with --placement tensorrt (placement='tensorrt'), the default unless --target cpu"
        if placement == "cpu"
        else ""
    )
    enforced = None
    if options.target != "cpu" and resolve_target(options.target)[0] == "tensorrt":
        installed = tensorrt_version()
        enforced = resolve_version(installed) if installed is not None else None
    refused = {
        name: [key for key, report in by_version.items() if not report.ok]
        for name, by_version in reports.items()
    }
    if enforced is not None:
        blocked = [
            (name, by_version[enforced])
            for name, by_version in reports.items()
            if not by_version[enforced].ok
        ]
        if blocked:
            lines = [
                f"{name}: {len(report.refused)} node(s) {VERSIONS[enforced]} would refuse, e.g. {report.refused[0]}"
                for name, report in blocked
            ]
            raise ExportError("TensorRT would refuse the graphs: " + "; ".join(lines) + hint)
    for name, keys in refused.items():
        if keys:
            first = reports[name][keys[0]].refused[0]
            if options.target == "cpu":
                say(f"{name} is for ONNX Runtime only: TensorRT {', '.join(keys)} would refuse it ({first})")
                continue
            warnings.warn(
                f"{name} would be refused by TensorRT {', '.join(keys)} "
                f"({len(reports[name][keys[0]].refused)} node(s), e.g. {first}); it runs on ONNX Runtime, and "
                f"`edgeseg check BUNDLE` lists every node{hint}",
                UserWarning,
                stacklevel=4,
            )
    accepted = [name for name, keys in refused.items() if not keys]
    if accepted:
        say(f"TensorRT {', '.join(VERSIONS)} would take {', '.join(accepted)} (checked offline)")
    return reports


def engine_step(bundle: Bundle, options: BuildOptions, say: Say) -> Bundle:
    """Step 7: a TensorRT engine for this GPU when the target asks for one (see
    :func:`converters.tensorrt.engine_for_build`)."""
    return engine_for_build(bundle, options.target, options.engine, say=say)


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


def resolve_model(model: str | nn.Module, options: ModelOptions) -> ResolvedModel:
    """Instantiates a zoo model (or takes a module), loads weights, probes classes, checks the palette.

    Raises:
        ConfigError: the options do not fit the model (the message names the option).
        WeightsError: the weights cannot be read or do not fit.
    """
    from edgeseg import models as zoo

    channels = options.in_channels
    size = options.input_size
    classes, num_classes = options.classes, options.num_classes
    multiple_of, weights = options.multiple_of, options.weights

    if isinstance(model, str):
        spec = zoo.get_spec(model)
        if size is None:
            size = (int(spec.default_input_size[0]), int(spec.default_input_size[1]))
        opts = dict(options.options or {})
        zoo.check_input_size(spec, size, opts)
        if classes is None and num_classes is None:
            num_classes = DEFAULT_NUM_CLASSES
            log.info("no classes given: %s gets %d classes", model, num_classes)
        names = class_names(classes, num_classes)
        module = zoo.create_model(model, num_classes=len(names), in_channels=channels, **opts)
        resolved_opts = {**spec.options, **opts}
        info: dict[str, Any] = {"name": spec.name, "source": "zoo", "options": _jsonable(resolved_opts)}
        needed = spec.multiple_for(resolved_opts)
        if multiple_of is not None and options.dynamic and multiple_of % needed:
            raise ConfigError(
                f"multiple_of={multiple_of}: {spec.name} with these options needs sides that are "
                f"multiples of {needed}; give a multiple of {needed} or leave multiple_of out"
            )
        step = needed if multiple_of is None else multiple_of
    elif isinstance(model, nn.Module):
        if options.options:
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
    if options.dynamic and (size[0] % step or size[1] % step):
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
                stacklevel=4,
            )
    elif info["source"] == "zoo":
        info["trained"] = False
        warnings.warn(
            f"{info['name']} has no weights: the network is untrained (fine for latency, "
            "not for accuracy); pass weights=PATH (--weights)",
            stacklevel=4,
        )
    else:
        info["trained"] = None  # the user's module: we cannot tell

    module.eval()
    probe_spec = ExportSpec(input_size=size, in_channels=channels, mean=(0.5,) * channels, std=(0.5,) * channels)
    probe = probe_module(module, probe_spec, align_corners=options.align_corners)
    found = probe.num_classes
    if probe.output != OutputRecord():  # a tensor at the input size is the default, left out
        info["output"] = encode(probe.output)
        if probe.align_reason is not None:
            log.info("align_corners=%s for the logits' upsampling: %s", probe.output.align_corners, probe.align_reason)
    if info["source"] == "module":
        names = class_names(classes, num_classes if num_classes is not None else (None if classes else found))
    if found != len(names):
        raise ConfigError(
            f"the model outputs {found} classes but {len(names)} class names were given"
        )
    if len(names) > 256:
        raise ConfigError(f"{len(names)} classes do not fit the uint8 mask (at most 256)")
    return ResolvedModel(
        module, info, size, channels, step, names, _palette(options.palette, len(names)), probe.output
    )


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


def _palette(palette: tuple[tuple[int, int, int], ...] | None, n: int) -> list[tuple[int, int, int]]:
    """The palette for ``n`` classes (its entries were checked by ModelOptions)."""
    if palette is None:
        return default_palette(n)
    if len(palette) != n:
        raise ConfigError(f"palette has {len(palette)} colours for {n} classes")
    return list(palette)


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
