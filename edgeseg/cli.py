"""The ``edgeseg`` command line (click).

Errors edgeseg raises on purpose become one line on stderr and exit code 1;
bad usage exits 2 (click's convention); log records never carry a traceback
unless ``-vv`` asks for debug output. Every command checks its output paths
(:func:`check_output`) and its cheap arguments before it imports torch or
starts work, so a typo costs no export and no profiling run. Build-time
commands import torch only when they run; TensorRT is imported only by the
commands that use it (``build --target tensorrt``, ``engine``,
``run``/``profile`` with ``--backend tensorrt`` or ``auto`` on a GPU).
``doctor`` exits 0 when the TensorRT path is ready and 1 when it is not.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
import numpy as np

from converters.options import (
    CALIBRATE_CHECK,
    DEFAULT_NUM_CLASSES,
    METHODS,
    PLACEMENTS,
    BuildOptions,
    CheckOptions,
    ModelOptions,
    QuantOptions,
    group_kwargs,
)
from converters.tensorrt import DEFORM_MODES, TARGETS, EngineConfig
from edgeseg import __version__
from edgeseg.bundle import CRF_MODES, PRECISIONS, bundle_path
from edgeseg.errors import (
    BackendError,
    BundleExistsError,
    ConfigError,
    EdgesegError,
    MissingDependencyError,
    SourceError,
    UnknownModelError,
)
from edgeseg.labels import LABEL_FORMATS
from edgeseg.metrics import DEFAULT_MIN_AGREEMENT

if TYPE_CHECKING:  # pragma: no cover
    from edgeseg.manifest import Manifest

log = logging.getLogger("edgeseg")

# The zoo's model names, so that `build --model` is checked before torch is imported:
# edgeseg.models.registry imports torch at its top. tests/test_cli.py holds this equal to the
# registry's names.
ZOO_MODELS = ("deconvnet", "deeplabv3", "deeplabv3p", "fcn16s", "fcn32s", "fcn8s", "frrn", "hypercolumn", "unet")


class _Group(click.Group):
    """Turns edgeseg's own errors into one line and a non-zero exit, no traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except EdgesegError as err:
            raise click.ClickException(str(err)) from err
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            ctx.exit(130)


def _size(value: str | None) -> tuple[int, int] | None:
    if value is None:
        return None
    text = value.lower().replace(" ", "")
    parts = text.split("x")
    try:
        if len(parts) == 1:
            side = int(parts[0])
            size = (side, side)
        elif len(parts) == 2:
            size = (int(parts[0]), int(parts[1]))
        else:
            raise ValueError(value)
    except ValueError as err:
        raise click.BadParameter(f"{value!r} is not HxW (e.g. 512x512)") from err
    if size[0] <= 0 or size[1] <= 0:
        raise click.BadParameter(f"{value!r}: sides must be positive")
    return size


def _size_callback(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[int, int] | None:
    return _size(value)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="edgeseg")
@click.option("-v", "--verbose", count=True, help="More logging (-vv for debug).")
def cli(verbose: int) -> None:
    """edgeseg: segmentation models to deployable bundles, and a runtime for them."""
    level = logging.WARNING - 10 * min(verbose, 2)
    handler = logging.StreamHandler()
    handler.setFormatter(_LogFormatter(tracebacks=verbose >= 2))
    logging.basicConfig(level=level, handlers=[handler])
    warnings.simplefilter("default")
    warnings.showwarning = _show_warning


def _show_warning(message: Warning | str, category: type[Warning], *args: Any, **kwargs: Any) -> None:
    """Warnings as one line on stderr, without the source line that Python would print."""
    click.echo(f"warning: {message}", err=True)


class _LogFormatter(logging.Formatter):
    """``LEVEL name: message``, one line: a record's traceback is shown only with -vv.

    A stage of the stream pipeline logs the exception that stopped it; the command then
    reports the same failure as its one-line error.
    """

    def __init__(self, *, tracebacks: bool) -> None:
        super().__init__("%(levelname)s %(name)s: %(message)s")
        self.tracebacks = tracebacks

    def format(self, record: logging.LogRecord) -> str:
        if self.tracebacks:
            return super().format(record)
        saved = record.exc_info, record.exc_text, record.stack_info
        record.exc_info, record.exc_text, record.stack_info = None, None, None
        try:
            return super().format(record)
        finally:
            record.exc_info, record.exc_text, record.stack_info = saved


def check_output(path: Path, option: str, *, folder: bool, replaced: bool = False) -> Path:
    """Refuses an output path the command could not write, before any work starts.

    A file output must not be an existing folder, a folder output not an existing
    file; the nearest folder that exists on the way (the output folder itself, the
    parent, or further up: missing folders are created) must take a new file, which
    is tried, as permission bits say nothing for root or for /proc.

    Args:
        path: the output, as the user gave it.
        option: the flag it came from, for the message (``--json``).
        folder: the command writes a folder there (else one file).
        replaced: the folder is made beside ``path`` and renamed into place (a bundle), so
            the new file is tried in its parent, never inside an existing one.

    Returns:
        ``path``.

    Raises:
        ConfigError: naming the option, the path and what was expected.
    """
    if folder and path.exists() and not path.is_dir():
        raise ConfigError(f"{option} {path} is an existing file; {option} takes a folder")
    if not folder and path.is_dir():
        raise ConfigError(f"{option} {path} is an existing folder; {option} takes a file name")
    where = path if folder and path.is_dir() and not replaced else path.parent
    while not where.exists() and where != where.parent:
        where = where.parent
    if not where.is_dir():
        raise ConfigError(f"{option} {path}: {where} is a file, not a folder")
    try:
        handle, probe = tempfile.mkstemp(prefix=".edgeseg-write-check-", dir=where)
    except OSError as err:
        raise ConfigError(f"{option} {path}: cannot create files in {where} ({err.strerror or err})") from err
    os.close(handle)
    os.unlink(probe)
    if not folder and path.exists():
        try:
            with open(path, "ab"):
                pass
        except OSError as err:
            raise ConfigError(f"{option} {path}: cannot write it ({err.strerror or err})") from err
    return path


def _check_input(path: Path | None, option: str) -> None:
    """Refuses an input path that does not exist, before any work starts.

    Raises:
        ConfigError: naming the option and the path.
    """
    if path is not None and not path.exists():
        raise ConfigError(f"{option} {path} does not exist")


def check_model_name(name: str) -> None:
    """Refuses a name that is not a zoo model's, without importing the zoo (torch).

    Raises:
        UnknownModelError: listing the valid names, as the registry's own lookup does.
    """
    if name not in ZOO_MODELS:
        raise UnknownModelError(f"unknown model {name!r}; valid: {', '.join(sorted(ZOO_MODELS))}")


# Options that change a zoo model's architecture: `edgeseg models` gives a row to each of their choices.
_ARCHITECTURE_OPTIONS = ("backbone", "variant")


@cli.command("models")
@click.option("--input-size", "input_size", default="512x512", show_default=True, callback=_size_callback,
              help="HxW at which GFLOPs are counted.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def models_cmd(input_size: tuple[int, int], as_json: bool) -> None:
    """List the zoo's models with their options, parameters and GFLOPs."""
    import torch

    from edgeseg import models as zoo

    rows: list[dict[str, Any]] = []
    for spec in zoo.list_models():
        # the defaults, then each other choice of the architecture's options (backbone, variant)
        variants: list[dict[str, Any]] = [{}] + [
            {key: value}
            for key in _ARCHITECTURE_OPTIONS if key in spec.choices
            for value in spec.choices[key] if value != spec.options[key]
        ]
        for variant in variants:
            with torch.device("meta"):  # shapes only: no memory, no weight init work
                module = zoo.create_model(spec.name, num_classes=21, **variant)
            size = input_size
            multiple = spec.multiple_for(variant)
            try:
                zoo.check_input_size(spec, size, variant)
            except ConfigError:
                size = tuple(-(-s // multiple) * multiple for s in input_size)  # type: ignore[assignment]
            params, gflops = zoo.complexity(module, size)
            rows.append(
                {
                    "name": spec.name,
                    "variant": ", ".join(f"{k}={v}" for k, v in variant.items()) or None,
                    "description": spec.description,
                    "options": {**spec.options, **variant},
                    "choices": {k: list(v) for k, v in spec.choices.items()},
                    "multiple_of": multiple,
                    "params": params,
                    "gflops": gflops,
                    "input_size": list(size),
                }
            )
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    click.echo(f"{'model':<12} {'params':>9} {'GFLOPs':>9}  {'size':>9}  options (defaults)")
    for i, r in enumerate(rows):
        shown = "x".join(str(s) for s in r["input_size"])
        default = r["variant"] is None
        opts = ", ".join(f"{k}={v}" for k, v in r["options"].items()) if default else r["variant"]
        name = r["name"] if default else ""
        click.echo(f"{name:<12} {r['params'] / 1e6:>8.2f}M {r['gflops']:>9.2f}  {shown:>9}  {opts}")
        if i + 1 == len(rows) or rows[i + 1]["variant"] is None:  # the model's last row
            click.echo(f"{'':<12} {r['description']}")
    click.echo("GFLOPs for 21 classes, one RGB frame; deformable convs count as their plain convs.")


def _option_group(*options: Any) -> Callable[[Any], Any]:
    """One decorator applying several click options, in the order given (as --help lists them)."""

    def apply(command: Any) -> Any:
        for option in reversed(options):
            command = option(command)
        return command

    return apply


# Each option's name (click's parameter name) is its keyword of edgeseg.build(), so the commands
# hand what the user set to converters.options as it is; unset ones take the API's defaults. The
# defaults the help shows are read from the options' definitions in converters.options.
_MODEL, _CHECK, _QUANT, _ENGINE, _BUILD = ModelOptions(), CheckOptions(), QuantOptions(), EngineConfig(), BuildOptions()

# build() options that `edgeseg build` has no flag for (tests/test_cli.py holds every other
# BuildOptions field, and every EngineConfig field, to a flag).
API_ONLY = ("palette", "multiple_of", "timing_cache", "align_corners")  # align_corners: modules only


def _on(flag: bool) -> str:
    return "on" if flag else "off"


# The INT8 options shared by ``build`` and ``calibrate``.
_int8_options = _option_group(
    click.option("--calib", type=click.Path(path_type=Path), default=None,
                 help="INT8 calibration set: a folder of images (recursive), a video or an .npz."),
    click.option("--calib-size", type=int, default=None,
                 help=f"Frames of --calib to use [{_QUANT.calib_size}], spread evenly."),
    click.option("--seed", "calib_seed", type=int, default=None,
                 help=f"Seed of the calibration frame pick [{_QUANT.seed}]."),
    click.option("--method", type=click.Choice(METHODS), default=None,
                 help=f"Calibration method [{_QUANT.method}]."),
    click.option("--placement", type=click.Choice(PLACEMENTS), default=None,
                 help="Q/DQ placement: what ONNX Runtime fuses on a CPU (uint8, which TensorRT refuses), or "
                 "TensorRT's rules, which ONNX Runtime runs too [cpu with --target cpu, else tensorrt]."),
    click.option("--mixed-precision/--no-mixed-precision", default=None,
                 help=f"Keep the most sensitive layers in float until the target holds [{_on(_QUANT.mixed_precision)}]."),
    click.option("--trt-cache-version", default=None,
                 help=f"TensorRT version in the legacy calibration cache's header [{_QUANT.trt_cache_version}]."),
    click.option("--min-int8-share", type=float, default=None,
                 help="Fail when less of the model's compute (Conv/Gemm/MatMul/DeformConv FLOPs) runs in INT8 "
                      f"[{_QUANT.min_int8_share}]."),
)


# How sure ``build`` and ``calibrate`` must be that an fp16/int8 graph meets its target on new frames.
_confidence_option = click.option(
    "--confidence", type=float, default=None,
    help="fp16/int8: this share of the judged frames must each meet --min-agreement (and the "
         f"bootstrap bound of the mIoU drop --max-miou-drop); 0 judges the figures [{_CHECK.confidence}].",
)


# Labels for the evaluation images of ``build`` and ``calibrate``.
_label_options = _option_group(
    click.option("--labels", type=click.Path(path_type=Path), default=None,
                 help="Labels of --samples (matched by name): enables --max-miou-drop."),
    click.option("--label-format", type=click.Choice(LABEL_FORMATS),
                 default=_CHECK.label_format, show_default=True),
    click.option("--ignore-index", type=int, default=None,
                 help="Label id left out of the mIoU (CamVid: 11)."),
)


# TensorRT engine options shared by ``build`` and ``engine``: each named as its EngineConfig field.
_engine_options = _option_group(
    click.option("--workspace-mb", type=int, default=None,
                 help="TensorRT workspace memory limit in MiB [TensorRT's default: the GPU's memory]."),
    click.option("--opt-level", type=click.IntRange(0, 5), default=None,
                 help=f"Builder optimisation level 0..5 [{_ENGINE.opt_level}]; higher builds longer, may run faster."),
    click.option("--dla-core", type=int, default=None,
                 help="Build for this DLA core with GPU fallback (Jetson Orin; fp16/int8, static shapes)."),
    click.option("--min-shape", default=None, callback=_size_callback,
                 help="Smallest HxW of the engine's profile (dynamic bundles) [half the input size]."),
    click.option("--opt-shape", default=None, callback=_size_callback,
                 help="HxW TensorRT tunes for [the input size]."),
    click.option("--max-shape", default=None, callback=_size_callback,
                 help="Largest HxW of the engine's profile [twice the input size]."),
    click.option("--deform-conv", type=click.Choice(DEFORM_MODES), default=None,
                 help="Deformable convs: TensorRT's built-in DeformConv, or edgeseg's plugin "
                      f"(libedgeseg_plugins.so) [{_ENGINE.deform_conv}]."),
    click.option("--plugin-library", type=click.Path(path_type=Path), default=None,
                 help="The plugin library for --deform-conv plugin [the bundle's own]."),
)


def _engine_config(values: dict[str, Any]) -> EngineConfig:
    """The engine options among ``values`` (taken out of it; their names are EngineConfig's fields)."""
    names = [f.name for f in fields(EngineConfig)]
    return EngineConfig.from_mapping({k: values.pop(k) for k in names if k in values})


def _given(**values: Any) -> dict[str, Any]:
    """The options the user set (the API supplies the defaults of the others)."""
    return {k: v for k, v in values.items() if v is not None and v != ()}


def _say(message: str) -> None:
    """Progress of a long command, on stderr."""
    click.echo(f"[edgeseg] {message}", err=True)


_AGREEMENT = DEFAULT_MIN_AGREEMENT


@cli.command("build")
@click.option("--model", "model_name", required=True, help="Zoo model name (see `edgeseg models`).")
@click.option("--out", "out", type=click.Path(path_type=Path), default=None,
              help="Bundle directory [default: MODEL.edgeseg].")
@click.option("--weights", type=click.Path(path_type=Path), default=None,
              help="State dict or checkpoint (.pth), loaded with weights_only=True.")
@click.option("--num-classes", type=int, default=None, help=f"Number of classes [default: {DEFAULT_NUM_CLASSES}].")
@click.option("--classes", "classes", type=click.Path(path_type=Path), default=None,
              help="Text file with one class name per line.")
@click.option("--input-size", default=None, callback=_size_callback, help="HxW [default: the model's].")
@click.option("--in-channels", type=click.Choice(["1", "3"]), default=str(_MODEL.in_channels), show_default=True)
@click.option("--mean", default=None, help="Comma-separated per-channel mean, 0..1 [ImageNet].")
@click.option("--std", default=None, help="Comma-separated per-channel std, 0..1 [ImageNet].")
@click.option("-o", "--option", "options", multiple=True, metavar="KEY=VALUE",
              help="Model option, repeatable (e.g. -o backbone=resnet50).")
@click.option("--precision", type=click.Choice(PRECISIONS), default=_BUILD.precision, show_default=True,
              help="fp16: FP16 graph, I/O and sensitive ops FP32; int8: explicit Q/DQ from --calib.")
@click.option("--outputs", default=",".join(_MODEL.outputs), show_default=True,
              help="Comma-separated graph outputs: mask plus probs and/or logits.")
@click.option("--samples", type=click.Path(path_type=Path), default=None,
              help="Folder of images for the parity checks [default: generated images; for int8, "
                   "frames held out of --calib].")
@_label_options
@click.option("--num-samples", type=int, default=_CHECK.num_samples, show_default=True)
@click.option("--min-agreement", type=float, default=None,
              help=f"Fail when masks agree on fewer pixels: fp32 vs PyTorch [{_AGREEMENT['fp32']}], fp16/int8 vs fp32 "
                   f"[{_AGREEMENT['fp16']}/{_AGREEMENT['int8']}].")
@click.option("--max-miou-drop", type=float, default=None,
              help="fp16/int8: mIoU points the graph may lose against fp32 (needs --labels).")
@_confidence_option
@_int8_options
@click.option("--dynamic", is_flag=True, help="Symbolic height and width.")
@click.option("--opset", type=int, default=_MODEL.opset, show_default=True)
@click.option("--force", "overwrite", is_flag=True, help="Replace an existing bundle.")
@click.option("--crf", "crf", type=click.Choice(["none", *CRF_MODES]), default="none",
              show_default=True, help="Add the dense CRF: its own graph (switchable at run time) or fused.")
@click.option("--crf-param", "crf_params", multiple=True, metavar="KEY=VALUE",
              help="CRF setting, repeatable: iterations, window, downsample, w_bilateral, theta_alpha, "
                   "theta_beta, w_gaussian, theta_gamma, dilation.")
@click.option("--target", type=click.Choice(TARGETS), default=_BUILD.target, show_default=True,
              help="tensorrt: also build a TensorRT engine for this GPU; cpu: ONNX graphs only; auto: "
                   "an engine when this machine has a GPU and TensorRT.")
@_engine_options
def build_cmd(model_name: str, out: Path | None, **given: Any) -> None:
    """Build a bundle from a zoo model: export, check parity, write NAME.edgeseg/ (and an engine)."""
    # Everything that needs no torch is checked first: the import alone takes seconds.
    check_model_name(model_name)
    destination = bundle_path(out if out is not None else Path(f"{model_name}.edgeseg"))
    if destination.exists() and not destination.is_dir():
        raise ConfigError(f"--out {destination} is an existing file; a bundle is a folder")
    if destination.exists() and not given["overwrite"]:
        raise BundleExistsError(f"--out {destination} already exists; pass --force to replace it")
    check_output(destination, "--out", folder=True, replaced=True)

    def option_texts(items: tuple[str, ...]) -> dict[str, str]:
        texts: dict[str, str] = {}
        for item in items:
            key, sep, value = item.partition("=")
            if not sep:
                raise ConfigError(f"--option {item!r} is not KEY=VALUE")
            texts[key.strip()] = value.strip()
        return texts

    # the flags whose text build() takes in another form; the others pass as they are
    parse: dict[str, Callable[[Any], Any]] = {
        "classes": _read_classes,
        "in_channels": int,
        "mean": lambda text: _floats(text, "--mean"),
        "std": lambda text: _floats(text, "--std"),
        "outputs": lambda text: [o.strip() for o in text.split(",") if o.strip()],
        "crf": lambda mode: None if mode == "none" else mode,
        "crf_params": _crf_settings,
    }
    values = {k: parse[k](v) if k in parse else v for k, v in _given(**given).items()}
    texts = option_texts(values.pop("options", ()))
    engine = _engine_config(values)
    config = BuildOptions.from_kwargs(**values, engine=engine)  # the zoo options come below
    for flag, path in (("--weights", config.model.weights), ("--samples", config.check.samples),
                       ("--labels", config.check.labels), ("--calib", config.quant.calib),
                       ("--plugin-library", engine.plugin_library)):
        _check_input(None if path is None else Path(path), flag)

    from edgeseg._lazy import import_build_module

    builder = import_build_module()
    from edgeseg import models as zoo

    spec = zoo.get_spec(model_name)
    if texts:
        parsed = {key: zoo.parse_option(key, spec, text) for key, text in texts.items()}
        config = replace(config, model=replace(config.model, options=parsed))
    start = time.perf_counter()
    bundle = builder.build(model_name, destination, config=config, progress=_say)
    parity = bundle.manifest.parity
    size = bundle.path.joinpath("model.onnx").stat().st_size
    summary = (
        f"built {bundle.path} in {time.perf_counter() - start:.1f}s: {model_name}, "
        f"{len(bundle.manifest.classes)} classes, {'x'.join(map(str, bundle.manifest.input.size))}, "
        f"{size / 1e6:.1f} MB"
    )
    if parity is not None:  # a build always measures it
        summary += (
            f"; parity: agreement {parity.agreement:.4%}, max abs logit error {parity.max_abs_error:.2e} "
            f"(logits up to {parity.max_abs_logit:.3g})"
        )
    click.echo(summary)
    for line in _precision_lines(bundle.manifest):
        click.echo(line)
    for line in _engine_lines(bundle.manifest):
        click.echo(line)


def _engine_lines(manifest: Manifest) -> list[str]:
    """One line per TensorRT engine of the bundle."""
    return [f"engine      {record.describe()}" for record in manifest.engines]


@cli.command("engine")
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--precision", type=click.Choice(PRECISIONS), default=None,
              help="Which of the bundle's graphs [the bundle's precision].")
@_engine_options
def engine_cmd(bundle: Path, precision: str | None, **options: Any) -> None:
    """Build a TensorRT engine for this GPU from a bundle's graph and add it to the bundle."""
    from edgeseg import engines

    config = _engine_config(_given(**options))
    _check_input(config.plugin_library, "--plugin-library")
    try:  # before TensorRT: without a GPU there is nothing to build for, installed or not
        device = engines.probe_device(with_tensorrt=False)
    except BackendError as err:
        raise BackendError(f"no NVIDIA GPU here to build an engine for: {err}") from err
    from converters.tensorrt import add_engine

    start = time.perf_counter()
    updated = add_engine(bundle, precision, config, device=device, progress=_say)
    click.echo(f"added engine(s) to {updated.path} in {time.perf_counter() - start:.1f}s")
    for line in _engine_lines(updated.manifest):
        click.echo(line)


@cli.command("doctor")
@click.option("--json", "as_json", is_flag=True, help="Print the checks as JSON.")
@click.option("--bundle", type=click.Path(path_type=Path), default=None,
              help="Also say which engine this bundle would use here (and check its plugin library).")
@click.option("--plugin", type=click.Path(path_type=Path), default=None,
              help="Check this plugin library (libedgeseg_plugins.so).")
@click.option("--allow-plugins", is_flag=True,
              help="Also load the bundle's own plugin library (it runs that library's code).")
@click.pass_context
def doctor_cmd(
    ctx: click.Context, as_json: bool, bundle: Path | None, plugin: Path | None, allow_plugins: bool
) -> None:
    """Check GPU, driver, CUDA, TensorRT, pycuda, DLA and plugins; say what to install.

    Exit status: 0 when the TensorRT path is ready (GPU, TensorRT >= 10.3 and
    pycuda found, no check failed), 1 when it is not (bundles then run on the
    CPU with onnxruntime), 2 for bad usage.
    """
    from edgeseg import doctor

    report = doctor.run(bundle=bundle, plugin=plugin, allow_plugins=allow_plugins)
    click.echo(json.dumps(report.to_json(), indent=2) if as_json else report.table())
    ctx.exit(report.exit_code)


@cli.group("plugins")
def plugins_group() -> None:
    """edgeseg's TensorRT plugins (the deformable convolution)."""


@plugins_group.command("build")
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=Path("."), show_default=True,
              help="Folder for libedgeseg_plugins.so.")
@click.option("--bundle", type=click.Path(path_type=Path), default=None,
              help="Also copy the library into this bundle (engines built with --deform-conv plugin load it).")
@click.option("--tensorrt-root", type=click.Path(path_type=Path), default=None,
              help="TensorRT's install folder (include/, lib/) [found automatically].")
@click.option("--cuda-arch", "cuda_archs", multiple=True,
              help="CUDA architecture to compile for, repeatable (e.g. 87) [this GPU's: native].")
@click.option("-j", "--jobs", type=int, default=None, help="Parallel compile jobs [CPU count].")
def plugins_build_cmd(
    out_dir: Path, bundle: Path | None, tensorrt_root: Path | None, cuda_archs: tuple[str, ...],
    jobs: int | None,
) -> None:
    """Compile libedgeseg_plugins.so on this machine (needs nvcc, cmake and TensorRT's headers)."""
    check_output(out_dir, "--out", folder=True)
    _check_input(bundle, "--bundle")
    from converters.plugins import build_plugins

    library = build_plugins(
        out_dir, tensorrt_root=str(tensorrt_root) if tensorrt_root else None,
        cuda_archs=";".join(cuda_archs) or None, jobs=jobs,
        progress=lambda message: click.echo(f"[edgeseg] {message}", err=True),
    )
    click.echo(f"built {library}")
    if bundle is not None:
        from converters.tensorrt import add_plugin_library

        updated = add_plugin_library(bundle, library)
        click.echo(f"added {library.name} to {updated.path}")


def _fmt(value: float | None, form: str) -> str:
    """A recorded figure, or ``n/a`` when the bundle does not record it."""
    return "n/a" if value is None else format(value, form)


def _precision_lines(manifest: Manifest) -> list[str]:
    """One line per lower-precision graph: its figures and what stayed in float."""
    lines = []
    for precision, info in manifest.precisions.items():
        text = f"{precision:<11} {info.graph}"
        par = info.parity
        if par is not None:
            confidence = info.target.confidence if info.target is not None else None
            text += f": agreement with fp32 {par.agreement:.4%}"
            if par.agreement_low is not None and confidence is not None:
                text += f" (>= {par.agreement_low:.4%} on {confidence:.0%} of the frames)"
            if par.miou_drop is not None and par.miou is not None:
                text += f", mIoU {100 * par.miou:.2f} (drop {par.miou_drop:.2f} points"
                if par.miou_drop_high is not None and confidence is not None:
                    text += f", <= {par.miou_drop_high:.2f} on unseen frames"
                text += ")"
            text += f" over {par.samples} images of {par.sample_source}"
        quant = info.quantization
        if quant is not None:
            kept = list(quant.kept_float)
            text += (
                f"; {quant.method} calibration on {quant.calibration.used} images, "
                f"{quant.placement} placement, {quant.quantized_nodes} nodes quantized, "
                f"{len(kept)} kept in float" + (f" ({', '.join(kept[:4])}{', ...' if len(kept) > 4 else ''})" if kept else "")
            )
            share = quant.int8_share
            if share is not None:
                text += (
                    f"; INT8 on {share.share:.1%} of the compute "
                    f"({_gflops(share.int8_flops)} of {_gflops(share.flops)} GFLOPs)"
                )
        half = info.fp16
        if half is not None:
            text += f"; {half.fp16_nodes} nodes in fp16, kept fp32: " + ", ".join(
                f"{op} x{n}" for op, n in half.kept_by_op.items()
            )
        lines.append(text)
    return lines


def _gflops(flops: int) -> str:
    """As calibration.flops.gflops (not imported: ``info`` loads no build-time code)."""
    value = flops / 1e9
    return f"{value:.2f}" if value >= 0.1 or value == 0 else f"{value:.3g}"


def _crf_settings(items: tuple[str, ...]) -> dict[str, float | int]:
    settings: dict[str, float | int] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        try:
            if not sep:
                raise ValueError(item)
            settings[key] = int(value) if key in ("iterations", "window", "downsample", "dilation") else float(value)
        except ValueError as err:
            raise ConfigError(f"--crf-param {item!r} is not KEY=NUMBER") from err
    return settings


def _read_classes(path: Path) -> list[str]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as err:
        raise ConfigError(f"--classes {path}: cannot read ({err.strerror})") from err
    names = [line.strip() for line in lines if line.strip()]
    if not names:
        raise ConfigError(f"--classes {path}: no class names in the file")
    return names


def _floats(text: str | None, flag: str) -> tuple[float, ...] | None:
    if text is None:
        return None
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError as err:
        raise ConfigError(f"{flag} {text!r} is not comma-separated numbers") from err


@cli.command("calibrate")
@click.argument("bundle", type=click.Path(path_type=Path))
@_int8_options
@click.option("--samples", type=click.Path(path_type=Path), default=None,
              help="Images to judge the INT8 graph on [default: frames held out of --calib].")
@_label_options
@click.option("--num-samples", type=int, default=CALIBRATE_CHECK.num_samples, show_default=True)
@click.option("--min-agreement", type=float, default=None,
              help=f"Pixel agreement with the fp32 graph the INT8 graph must reach [{_AGREEMENT['int8']}].")
@click.option("--max-miou-drop", type=float, default=None, help="mIoU points INT8 may lose (needs --labels).")
@_confidence_option
@click.option("--keep-precision", is_flag=True,
              help="Keep the bundle's default precision (otherwise it runs int8 by default).")
def calibrate_cmd(bundle: Path, keep_precision: bool, **given: Any) -> None:
    """Add an INT8 graph (explicit Q/DQ) to a bundle, calibrated on --calib."""
    values = _given(**given)
    if "calib" not in values:
        raise click.UsageError("--calib is required: a folder of images, a video or an .npz")
    from converters.precision import calibrate_bundle

    _, groups = group_kwargs(values)  # the flags are build()'s keywords: quant and check options
    start = time.perf_counter()
    updated = calibrate_bundle(
        bundle,
        quant=QuantOptions.from_mapping(groups.get("quant", {})),
        check=CheckOptions.from_mapping(groups.get("check", {}), base=CALIBRATE_CHECK),
        make_default=not keep_precision,
        progress=_say,
    )
    click.echo(f"calibrated {updated.path} in {time.perf_counter() - start:.1f}s; default precision "
               f"{updated.manifest.precision}")
    for line in _precision_lines(updated.manifest):
        click.echo(line)


@cli.command("crf-tune")
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--images", type=click.Path(path_type=Path), required=True,
              help="Folder of frames to tune on (each with a label of the same name and size).")
@click.option("--labels", type=click.Path(path_type=Path), required=True, help="Folder of their label images.")
@click.option("--label-format", type=click.Choice(LABEL_FORMATS), default="auto", show_default=True)
@click.option("--ignore-index", type=int, default=None, help="Label id left out of the mIoU (CamVid: 11).")
@click.option("--limit", type=click.IntRange(min=1), default=32, show_default=True,
              help="Tune on at most this many frames, spread over the folder.")
@click.option("--trials", "--budget", "budget", type=click.IntRange(min=1), default=40, show_default=True,
              help="CRF evaluations at most (each runs the CRF on every frame).")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="Which frames --limit picks.")
@click.option("--dry-run", is_flag=True, help="Search and report; leave the bundle as it is.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def crf_tune_cmd(bundle: Path, images: Path, labels: Path, label_format: str, ignore_index: int | None,
                 limit: int, budget: int, seed: int, dry_run: bool, as_json: bool) -> None:
    """Tune a bundle's CRF kernel weights and widths on labelled frames and write them in.

    A bounded coordinate search from the current settings over w_bilateral, theta_alpha,
    theta_beta, w_gaussian and theta_gamma; iterations, window, dilation and downsample
    (the CRF's cost and reach) stay as built.
    """
    _check_input(images, "--images")
    _check_input(labels, "--labels")
    from converters.crf_tune import tune_bundle

    start = time.perf_counter()
    result = tune_bundle(
        bundle, images, labels, ignore_index=ignore_index, label_format=label_format, limit=limit,
        budget=budget, seed=seed, dry_run=dry_run, progress=_say,
    )
    if as_json:
        click.echo(json.dumps(result.to_json(), indent=2))
        return
    r = result.record
    settings = ", ".join(f"{k}={v:g}" for k, v in result.search.best.to_json().items())
    click.echo(
        f"{'tuned (dry run, not written)' if dry_run else 'tuned'} {result.bundle.path} in "
        f"{time.perf_counter() - start:.1f}s on {r.frames} frames, {r.evaluations} evaluations: mIoU "
        f"{100 * r.miou_model:.2f} (model) -> {100 * r.miou_before:.2f} (CRF as it was) -> "
        f"{100 * r.miou_after:.2f} (tuned), on the tuning frames"
    )
    click.echo(f"crf         {settings}")


@cli.command("info")
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the whole manifest as JSON.")
@click.option("--no-verify", is_flag=True, help="Skip verification (checksums, and each graph against the manifest).")
def info_cmd(bundle: Path, as_json: bool, no_verify: bool) -> None:
    """Show a bundle's manifest (checksums verified first)."""
    from edgeseg.bundle import Bundle

    loaded = Bundle.load(bundle, verify=not no_verify)
    if not no_verify:  # the graphs, too: another valid graph with recomputed checksums is refused
        from edgeseg.runtime.contract import check_bundle_graphs

        check_bundle_graphs(loaded)
    m = loaded.manifest
    if as_json:
        click.echo(json.dumps(m.to_json(), indent=2))
        return
    spec = m.input
    opts = ", ".join(f"{k}={v}" for k, v in m.model.options.items())
    parity = m.parity
    lines = [
        f"bundle      {loaded.path}  (schema {m.schema_version}, verified: {'no' if no_verify else 'yes'})",
        f"model       {m.model.name} [{m.model.source}] {opts}",
        f"trained     {m.model.trained}" + (f"  weights {m.model.weights.file}" if m.model.weights else ""),
        *(
            [
                f"output      logits from {m.model.output.kind}"
                + (
                    f", upsampled x{m.model.output.scale[0]}x{m.model.output.scale[1]} in the graph "
                    f"(bilinear, align_corners={m.model.output.align_corners})"
                    if tuple(m.model.output.scale) != (1, 1)
                    else ""
                )
            ]
            if m.model.output is not None
            else []
        ),
        f"classes     {len(m.classes)}: {', '.join(m.classes)}",
        f"input       image {spec.dtype} {spec.layout} {spec.color} "
        f"{'dynamic, nominal ' if spec.dynamic else ''}{spec.size[0]}x{spec.size[1]}"
        + (f" (multiples of {spec.multiple_of})" if spec.dynamic else ""),
        f"normalise   mean {list(spec.mean)} std {list(spec.std)}",
        f"precision   {m.precision}   opset {m.opset}   outputs {', '.join(m.outputs)}",
        "files       " + ", ".join(f"{k} ({v.bytes / 1e6:.1f} MB)" for k, v in m.files.items()),
        "versions    " + ", ".join(f"{k} {v}" for k, v in m.versions.items()),
    ]
    lines += [f"graphs      {', '.join(f'{p}: {g}' for p, g in m.graphs.items())}"]
    lines += _precision_lines(m)
    lines += _engine_lines(m)
    if m.crf is not None:
        settings = ", ".join(f"{k}={v}" for k, v in m.crf.params.to_json().items())
        lines.append(f"crf         {m.crf.mode}: {settings}")
    if parity is not None:
        lines.append(
            f"fp32        parity with PyTorch: agreement {parity.agreement:.4%} "
            f"(worst image {_fmt(parity.worst_image_agreement, '.4%')}), "
            f"max abs logit error {_fmt(parity.max_abs_error, '.2e')} "
            f"(logits up to {_fmt(parity.max_abs_logit, '.3g')}), "
            f"{parity.samples} {parity.sample_source} images, {parity.backend}"
        )
    click.echo("\n".join(lines))


@cli.command("check")
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option(
    "--tensorrt",
    "versions",
    multiple=True,
    default=("10.3", "11"),
    show_default=True,
    help="TensorRT version to hold the graphs to: 10.3 (JetPack 6), 10.13 (JetPack 7), 11, or a full "
    "version such as 10.3.0 (the newest table at or below it); repeat for several.",
)
@click.option(
    "--dla", is_flag=True, help="Also apply Orin's DLA layer rules to the graphs built for DLA."
)
@click.option("--json", "as_json", is_flag=True, help="Print the reports as JSON (every finding).")
def check_cmd(bundle: Path, versions: tuple[str, ...], dla: bool, as_json: bool) -> None:
    """Would TensorRT take this bundle? Offline: no TensorRT, no GPU.

    Every graph TensorRT would build (each precision's, and a separate CRF's) is
    held to what that TensorRT's ONNX parser imports (operator, data types,
    attributes), its uint8 and explicit-quantization rules, and with --dla the
    DLA layer rules; every node it would refuse is named, with the reason.
    Exits 1 when any graph would be refused.
    """
    try:
        from converters import acceptance
    except ModuleNotFoundError as err:
        raise MissingDependencyError(
            f"edgeseg check reads graphs with onnx ({err.name} is missing): pip install 'edgeseg[build]'"
        ) from err
    keys = [
        acceptance.resolve_version(v) for v in versions
    ]  # a bad version fails before any reading
    reports = [acceptance.check_bundle(bundle, key, dla=dla) for key in dict.fromkeys(keys)]
    if as_json:
        click.echo(json.dumps([r.to_json() for r in reports], indent=2))
    else:
        click.echo("\n\n".join(r.format() for r in reports))
    if not all(r.ok for r in reports):
        sys.exit(1)


@cli.command("selftest")
@click.option("--device", "device", is_flag=True, help="Run the gpu test suite (pytest -m gpu) on this machine.")
@click.option("--kernels/--no-kernels", default=True, show_default=True,
              help="Run the DCNv2 kernel check (CUDA and torch, no TensorRT).")
@click.option("--out", type=click.Path(path_type=Path), default=Path("selftest-report"), show_default=True,
              help="Folder for selftest.json, selftest.md and the runs' logs.")
@click.option("--timeout", "timeout_s", type=float, default=None,
              help="Stop the gpu suite after this many seconds (tests not reached are 'not run').")
def selftest_cmd(device: bool, kernels: bool, out: Path, timeout_s: float | None) -> None:
    """The device acceptance run: answers each claim edgeseg makes about GPUs.

    Runs the kernel check and, with --device, the gpu suite, and writes one
    report (JSON and markdown) in which each claim is verified, failed (naming
    the test) or not run (with the reason, e.g. no NVIDIA GPU). Exits 0 only
    when every claim is verified.
    """
    check_output(out, "--out", folder=True)
    if timeout_s is not None and timeout_s <= 0:
        raise ConfigError(f"--timeout must be > 0 seconds, got {timeout_s}")
    from converters.selftest import run_selftest

    report = run_selftest(out, device=device, kernels=kernels, timeout_s=timeout_s, say=_say)
    for claim in report.claims:
        click.echo(f"{claim.status:9s} {claim.id}: {claim.reason}" if claim.reason else f"{claim.status:9s} {claim.id}")
    click.echo(f"{report.summary()}; report: {out / 'selftest.md'}")
    if not report.ok:
        sys.exit(1)


@cli.command("run")
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--source", required=True, type=click.Path(path_type=Path),
              help="Image file, folder of images, video file, or a bag (.mcap, .bag, .db3, rosbag2 folder).")
@click.option("--topic", default=None,
              help="The image topic of a bag source (sensor_msgs/Image or CompressedImage) "
                   "[default: its only image topic].")
@click.option("--masks", type=click.Path(path_type=Path), default=None,
              help="Folder for mask PNGs (class ids as pixel values).")
@click.option("--out-bag", type=click.Path(path_type=Path), default=None,
              help="Bag sources: write the masks into this new .mcap file as mono8 sensor_msgs/Image "
                   "on <topic>/mask, with each source message's header and log time.")
@click.option("--out-bag-overlay", is_flag=True,
              help="With --out-bag: also write the colour overlay (rgb8) on <topic>/overlay.")
@click.option("--overlay", type=click.Path(path_type=Path), default=None,
              help="Overlay output: an image file (single-image source), a video file "
                   "(.mp4/.avi), or a folder of PNGs.")
@click.option("--alpha", type=float, default=0.5, show_default=True, help="Overlay opacity.")
@click.option("--backend", default="auto", show_default=True)
@click.option("--crf/--no-crf", "crf", default=None, help="Switch the bundle's CRF stage [default: on if it has one].")
@click.option("--allow-plugins", is_flag=True,
              help="Load a TensorRT plugin library the bundle carries (it runs that library's code).")
def run_cmd(
    bundle: Path, source: Path, topic: str | None, masks: Path | None, out_bag: Path | None,
    out_bag_overlay: bool, overlay: Path | None, alpha: float, backend: str, crf: bool | None,
    allow_plugins: bool,
) -> None:
    """Segment an image, a folder of images, a video or a bag's image topic with a bundle."""
    from edgeseg.runtime.sources import count_frames, source_kind

    if not 0.0 <= alpha <= 1.0:
        raise ConfigError(f"--alpha must be from 0 to 1, got {alpha}")
    kind = source_kind(source)
    if kind != "bag" and (topic is not None or out_bag is not None):
        flag = "--topic" if topic is not None else "--out-bag"
        raise ConfigError(f"{flag} is for bag sources (.mcap, .bag, .db3, a rosbag2 folder); {source} is a {kind}")
    if out_bag_overlay and out_bag is None:
        raise ConfigError("--out-bag-overlay needs --out-bag FILE.mcap")
    if masks is not None:
        check_output(masks, "--masks", folder=True)
    if out_bag is not None:
        check_output(out_bag, "--out-bag", folder=False)
    writer = _OverlayWriter(overlay, kind, alpha) if overlay is not None else None
    total = count_frames(source, topic=topic) if kind == "bag" else count_frames(source)
    bag_writer = None
    if out_bag is not None:
        from edgeseg.runtime.bags import MaskBagWriter

        bag_writer = MaskBagWriter(out_bag, source=source, overlay=out_bag_overlay)
    from edgeseg.runtime import Segmenter

    done, bad = 0, []
    infer_ms: list[float] = []
    total_ms: list[float] = []
    completed = False
    try:
        with Segmenter(bundle, backend=backend, crf=crf, allow_plugins=allow_plugins) as seg:
            if masks is not None:
                masks.mkdir(parents=True, exist_ok=True)
            try:
                with click.progressbar(length=total or 0, label="segmenting", file=sys.stderr,
                                       show_pos=True) as bar, \
                        seg.stream(source, drop="none", keep_frames=True, topic=topic) as stream:
                    for result in stream:
                        bar.update(1)
                        if result.error is not None or result.mask is None or result.frame is None:
                            bad.append(f"{result.name}: {result.error}")
                            continue
                        infer_ms.append(result.timings["infer"])
                        total_ms.append(result.latency_ms)
                        if masks is not None:
                            _write_png(masks / f"{result.name}.png", result.mask)
                        if writer is not None:
                            writer.write(result.name, result.frame, result.mask, seg.palette, seg.classes)
                        if bag_writer is not None:
                            _write_bag(bag_writer, result, seg.palette, alpha)
                        done += 1
            finally:
                if writer is not None:
                    writer.close()
            profile = seg.profile()
        completed = True
    finally:
        if bag_writer is not None:  # what was segmented is kept, also when the source broke
            if completed:
                bag_writer.close()
            else:
                bag_writer.abort()
    if done == 0:  # one line: the reason, not a list of skips followed by a verdict
        if stream.failed:
            raise SourceError(f"source {source}: no frame could be segmented: {stream.end_reason}")
        first = f": {bad[0]}" + (f" (and {len(bad) - 1} more)" if len(bad) > 1 else "") if bad else ""
        raise SourceError(f"source {source}: no frame could be segmented ({len(bad)} unreadable){first}")
    for line in bad:
        click.echo(f"skipped {line}", err=True)
    summary = (
        f"segmented {done} frame(s) from {source}"
        + (f", skipped {len(bad)} unreadable" if bad else "")
        + f"; end-to-end (capture to result, including queueing) median {np.median(total_ms):.1f} ms "
        f"(inference {np.median(infer_ms):.1f} ms)"
    )
    if masks is not None:
        summary += f"; masks in {masks}"
    if overlay is not None:
        summary += f"; overlay {overlay}"
    if bag_writer is not None:
        summary += f"; {bag_writer.written} mask message(s) in {out_bag}"
    click.echo(summary)
    click.echo(profile.table())
    if stream.failed:  # what was segmented is written; the exit code says the source broke
        raise SourceError(f"source {source} ended early: {stream.end_reason}")


def _write_bag(writer: Any, result: Any, palette: np.ndarray, alpha: float) -> None:
    """One bag frame's mask (and overlay) into the mask bag, with the source message's header."""
    if result.meta is None:  # only bag sources reach here (checked up front)
        raise SourceError(f"{result.name}: the source gave no message header to write the mask with")
    blended = None
    if writer.overlay:
        from edgeseg.runtime.overlay import overlay

        blended = overlay(result.frame, result.mask, palette, alpha)  # gray frames come out RGB
    writer.write(result.meta, result.mask, blended)


def _write_png(path: Path, array: np.ndarray) -> None:
    from PIL import Image

    try:
        Image.fromarray(array).save(path)
    except OSError as err:
        raise ConfigError(f"cannot write {path}: {err}") from err


class _OverlayWriter:
    """Writes overlays as one image, a folder of PNGs, or a video.

    What ``target`` is follows from its suffix alone: an image suffix is one image
    (a single-image source only), a video suffix a video, no suffix a folder (as is
    an existing folder, whatever its name); any other suffix is refused, as a folder
    silently named ``x.gif`` would be.
    """

    VIDEO = {".mp4": "mp4v", ".avi": "MJPG", ".mkv": "mp4v", ".mov": "mp4v"}

    def __init__(self, target: Path, kind: str, alpha: float) -> None:
        from edgeseg.runtime.sources import IMAGE_SUFFIXES, import_cv2

        self.target, self.alpha = target, alpha
        suffix = target.suffix.lower()
        if target.is_dir() or not suffix:
            self.mode = "folder"
            check_output(target, "--overlay", folder=True)
        elif suffix in self.VIDEO:
            self.mode = "video"
            check_output(target, "--overlay", folder=False)
            import_cv2()  # the video extra: missing, it fails now rather than after the first frame
        elif suffix in IMAGE_SUFFIXES:
            if kind != "image":
                raise ConfigError(
                    f"--overlay {target} is one image but the source has many frames; "
                    f"give a folder or a video file ({', '.join(self.VIDEO)})"
                )
            self.mode = "image"
            check_output(target, "--overlay", folder=False)
        else:
            raise ConfigError(
                f"--overlay {target}: unknown suffix {suffix!r}; give an image "
                f"({', '.join(sorted(IMAGE_SUFFIXES))}), a video ({', '.join(self.VIDEO)}) "
                "or a folder (a name without a suffix)"
            )
        self._video: Any = None

    def write(
        self, name: str, frame: np.ndarray, mask: np.ndarray, palette: np.ndarray, classes: tuple[str, ...]
    ) -> None:
        from edgeseg.runtime.overlay import draw_legend, overlay

        blended = draw_legend(overlay(frame, mask, palette, self.alpha), mask, classes, palette)
        # missing folders are made at the first frame (check_output found where they can go)
        (self.target if self.mode == "folder" else self.target.parent).mkdir(parents=True, exist_ok=True)
        if self.mode == "image":
            _write_png(self.target, blended)
        elif self.mode == "folder":
            _write_png(self.target / f"{name}.png", blended)
        else:
            self._write_video(blended)

    def _write_video(self, rgb: np.ndarray) -> None:
        from edgeseg.runtime.sources import import_cv2

        cv2 = import_cv2()
        if self._video is None:
            fourcc = cv2.VideoWriter_fourcc(*self.VIDEO[self.target.suffix.lower()])
            self._size = (rgb.shape[1], rgb.shape[0])
            self._video = cv2.VideoWriter(str(self.target), fourcc, 10.0, self._size)
            if not self._video.isOpened():
                raise ConfigError(f"--overlay {self.target}: OpenCV cannot write this video")
        if (rgb.shape[1], rgb.shape[0]) != self._size:
            rgb = cv2.resize(rgb, self._size, interpolation=cv2.INTER_NEAREST)
        self._video.write(np.ascontiguousarray(rgb[:, :, ::-1]))

    def close(self) -> None:
        if self._video is not None:
            self._video.release()
            self._video = None


@cli.command("profile")
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--source", default=None,
              help="Image, folder, video, bag, camera index or GStreamer pipeline [default: generated frames].")
@click.option("--topic", default=None, help="The image topic of a bag source [default: its only one].")
@click.option("--frames", type=int, default=100, show_default=True, help="Frames to measure.")
@click.option("--warmup", type=int, default=5, show_default=True, help="Frames run first and not counted.")
@click.option("--layers/--no-layers", default=False, show_default=True,
              help="Also time every layer (ONNX Runtime's profiler; adds a little overhead).")
@click.option("--top", type=int, default=10, show_default=True, help="Slowest layers to list.")
@click.option("--json", "json_path", type=click.Path(path_type=Path), default=None, help="Write the summary as JSON.")
@click.option("--trace", type=click.Path(path_type=Path), default=None,
              help="Write a Chrome/Perfetto trace of every frame's stages.")
@click.option("--plot", type=click.Path(path_type=Path), default=None,
              help="Write a PNG: latency histogram and per-frame timeline (needs matplotlib).")
@click.option("--backend", default="auto", show_default=True)
@click.option("--crf/--no-crf", "crf", default=None, help="Switch the bundle's CRF stage [default: on if it has one].")
@click.option("--allow-plugins", is_flag=True,
              help="Load a TensorRT plugin library the bundle carries (it runs that library's code).")
def profile_cmd(
    bundle: Path, source: str | None, topic: str | None, frames: int, warmup: int, layers: bool, top: int,
    json_path: Path | None, trace: Path | None, plot: Path | None, backend: str, crf: bool | None,
    allow_plugins: bool,
) -> None:
    """Measure latency per stage through the streaming pipeline (p50/p90/p99, fps, jitter)."""
    if frames < 1 or warmup < 0:
        raise ConfigError(f"--frames must be >= 1 and --warmup >= 0, got {frames} and {warmup}")
    for flag, target in (("--json", json_path), ("--trace", trace), ("--plot", plot)):
        if target is not None:  # written after the whole run: refused before it
            check_output(target, flag, folder=False)
    if plot is not None and importlib.util.find_spec("matplotlib") is None:
        raise MissingDependencyError(f"--plot {plot} needs matplotlib: pip install matplotlib")
    if topic is not None:
        from edgeseg.runtime.bags import is_bag

        if source is None or not is_bag(source):
            raise ConfigError(f"--topic is for bag sources (.mcap, .bag, .db3, a rosbag2 folder), got --source {source}")
    from edgeseg.runtime import Segmenter
    from edgeseg.runtime.profiling import (
        layer_timings_from_onnxruntime,
        layers_table,
        write_chrome_trace,
        write_json,
    )
    from edgeseg.runtime.profiling import plot as plot_timings

    with tempfile.TemporaryDirectory(prefix="edgeseg-profile-") as tmp:
        options: dict[str, Any] = {"profile_dir": tmp} if layers else {}
        with Segmenter(bundle, backend=backend, crf=crf, allow_plugins=allow_plugins, **options) as seg:
            feed = _profile_source(source, seg, frames + warmup)
            with click.progressbar(length=frames + warmup, label="profiling", file=sys.stderr, show_pos=True) as bar:
                with seg.stream(feed, drop="none", max_frames=frames + warmup, topic=topic) as stream:
                    for result in stream:
                        bar.update(1)
                        if result.frame_index == warmup - 1:
                            seg.profiler.reset()  # warm-up frames are not measured
                        if result.error:
                            click.echo(f"skipped: {result.error}", err=True)
            if stream.failed:
                raise SourceError(f"profiling stopped: {stream.end_reason}")
            summary = seg.profile()
            timings = seg.profiler.timings()
            layer_list = None
            if layers:
                path = seg._require_open().end_profiling()
                layer_list = layer_timings_from_onnxruntime(path) if path else None
    click.echo(f"{bundle} on {seg.backend_name}: {summary.frames} frames after {warmup} warm-up")
    click.echo(summary.table())
    if layer_list:
        click.echo("")
        click.echo(layers_table(layer_list, top))
    if json_path is not None:
        write_json(summary, json_path, layers=layer_list)
    if trace is not None:
        write_chrome_trace(timings, trace)
    if plot is not None:
        plot_timings(timings, plot, title=f"{bundle.name}: {summary.frames} frames")


def _profile_source(source: str | None, seg: Any, n: int) -> Any:
    """The stream's source: what the user named, repeated if it is a single image; else generated frames."""
    from edgeseg.runtime.sources import IMAGE_SUFFIXES, read_image

    if source is None:
        h, w = seg.input_size
        rng = np.random.default_rng(0)
        frames = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for _ in range(4)]
        return (frames[i % 4] for i in range(n))
    path = Path(source)
    if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
        image = read_image(path)
        return (image for _ in range(n))
    return source


@cli.command("parity")
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--images", required=True, type=click.Path(path_type=Path),
              help="Folder of images, a video, an .npz of frames, or a bag (.mcap, .bag, .db3, rosbag2 folder).")
@click.option("--topic", default=None, help="The image topic of a bag given as --images [default: its only one].")
@click.option("--labels", type=click.Path(path_type=Path), default=None,
              help="Folder of label images, matched to the images by name.")
@click.option("--label-format", type=click.Choice(["auto", "ids", "voc", "cityscapes"]), default="auto",
              show_default=True)
@click.option("--ignore-index", type=int, default=None, help="Label value left out of mIoU (e.g. 11 for CamVid void).")
@click.option("--weights", type=click.Path(path_type=Path), default=None,
              help="Weights of the PyTorch reference (zoo bundles).")
@click.option("--factory", default=None, metavar="MODULE:CALLABLE",
              help="Builds the PyTorch reference of a bundle made from your own module.")
@click.option("--precision", "precisions", multiple=True, help="Graph(s) to compare [default: all].")
@click.option("--limit", type=int, default=None, help="Compare at most this many images.")
@click.option("--report", "report_dir", type=click.Path(path_type=Path), default=None,
              help="Write an HTML report (index.html + PNGs) here.")
@click.option("--json", "json_path", type=click.Path(path_type=Path), default=None, help="Write the figures as JSON.")
@click.option("--min-agreement", type=float, default=None, help="Fail under this pixel agreement (fraction).")
@click.option("--max-miou-drop", type=float, default=None, help="Fail over this mIoU drop, in points (needs --labels).")
@click.option("--max-abs-error", type=float, default=None, help="Fail over this max absolute logit error.")
def parity_cmd(
    bundle: Path,
    images: Path,
    topic: str | None,
    labels: Path | None,
    label_format: str,
    ignore_index: int | None,
    weights: Path | None,
    factory: str | None,
    precisions: tuple[str, ...],
    limit: int | None,
    report_dir: Path | None,
    json_path: Path | None,
    min_agreement: float | None,
    max_miou_drop: float | None,
    max_abs_error: float | None,
) -> None:
    """Compare a bundle's graphs with the PyTorch model on real images; exit 1 when they drift."""
    if max_miou_drop is not None and labels is None:
        raise ConfigError("--max-miou-drop needs --labels")
    if min_agreement is not None and not 0.0 <= min_agreement <= 1.0:
        raise ConfigError(f"--min-agreement must be a fraction from 0 to 1, got {min_agreement}")
    if limit is not None and limit < 1:
        raise ConfigError(f"--limit must be >= 1, got {limit}")
    for flag, path in (("--images", images), ("--labels", labels), ("--weights", weights)):
        _check_input(path, flag)
    source: Any = images
    if topic is not None:  # listed now: a bad topic fails before torch is imported
        from edgeseg.runtime.frames import frame_source

        source = frame_source(images, what="images", topic=topic)
    if report_dir is not None:
        check_output(report_dir, "--report", folder=True)
    if json_path is not None:
        check_output(json_path, "--json", folder=False)
    from edgeseg.bundle import Bundle

    loaded = Bundle.load(bundle)
    from edgeseg._lazy import import_build_module

    import_build_module()  # torch is needed for the reference: name the extra if it is missing
    from edgeseg.parity import compare, reference_model

    model, described, notes = reference_model(loaded.manifest, weights=weights, factory=factory)
    with click.progressbar(length=0, label="comparing", file=sys.stderr, show_pos=True) as bar:
        def progress(done: int, total: int | None) -> None:
            if total and not bar.length:
                bar.length = total
            bar.update(1)

        report = compare(
            loaded, model, source, labels=labels, label_format=label_format, ignore_index=ignore_index,
            precisions=list(precisions) or None, reference=described, limit=limit, progress=progress,
        )
    report.notes[:0] = notes
    report.check(min_agreement=min_agreement, max_miou_drop=max_miou_drop, max_abs_error=max_abs_error)
    click.echo(report.table())
    for note in report.notes:
        click.echo(f"note: {note}", err=True)
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(report.to_json(), indent=2) + "\n", encoding="utf-8")
    if report_dir is not None:
        from edgeseg.report import write_report

        page = write_report(report, report_dir, np.asarray(loaded.manifest.palette, dtype=np.uint8))
        click.echo(f"report: {page}")
    if not report.passed:
        for failure in report.failures:
            click.echo(f"parity failed: {failure}", err=True)
        sys.exit(1)


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="edgeseg")


if __name__ == "__main__":  # pragma: no cover
    main()
