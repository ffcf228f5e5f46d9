"""ONNX -> TensorRT engine: strongly typed networks, profiles, timing cache, engines in bundles.

Precision lives in the graph: the engine of a precision is built from that
precision's graph (``model.onnx``, ``model.fp16.onnx``, ``model.int8.onnx``
with Q/DQ) as a strongly typed network, the only kind TensorRT 11 builds
(``NetworkDefinitionCreationFlag.STRONGLY_TYPED`` on 10.x). The one
exception is DLA on TensorRT 10.x (JetPack 6), whose DLA compiler needs the
legacy weakly typed path: the FP32 graph with ``BuilderFlag.FP16``, or with
``BuilderFlag.INT8`` and the bundle's calibration cache
(:mod:`calibration.tensorrt_calibrator`).

The steps read like Polygraphy's loaders: :func:`profile_shapes` (what the
optimisation profile covers), :func:`engine_from_onnx` (parse, configure,
build, inspect), :func:`add_engine` (a bundle gains an engine for this
device, and its separate CRF graph's engine, rewritten atomically). The pure parts (profiles, DLA rules, file
names, the timing-cache path, the target) are tested on the CPU; the
TensorRT calls are type-checked against ``tensorrt-stubs``
(``tools/typecheck_tensorrt.py``) and run only on a GPU (``pytest -m gpu``).

This module imports no torch, and onnx only to rewrite deformable
convolutions for edgeseg's plugin, so an engine can be (re)built on a robot
that has TensorRT but no build extra.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeseg.bundle import Bundle, InputSpec, write_bundle
from edgeseg.engines import (
    CRF_PRECISION,
    PLUGIN_LIBRARY,
    PLUGIN_OP,
    DeviceInfo,
    EngineChoice,
    choose_engine,
    engine_file_name,
    inspector_file_name,
    parse_version,
    probe_device,
    tensorrt_version,
    trt_short_version,
)
from edgeseg.errors import (
    BackendError,
    ConfigError,
    EdgesegError,
    ExportError,
    MissingDependencyError,
)
from edgeseg.manifest import EngineRecord, Manifest, ProfileRecord
from edgeseg.progress import Say, say_or_log
from edgeseg.runtime.backends.tensorrt_lib import (
    load_plugin_libraries,
    logged_errors,
    make_logger,
    require_tensorrt,
)

if TYPE_CHECKING:  # pragma: no cover
    import tensorrt as trt

log = logging.getLogger(__name__)

TARGETS = ("auto", "tensorrt", "cpu")
DEFORM_MODES = ("native", "plugin")
DEFAULT_OPT_LEVEL = 3  # TensorRT's own default
CACHE_ENV = "EDGESEG_CACHE_DIR"
STRONGLY_TYPED = "strongly-typed"
LEGACY_DLA = "legacy-dla"  # TensorRT 10.x DLA: weakly typed, builder precision flags
CALIBRATION_CACHE = "calibration.cache"  # == converters.precision.TRT_CACHE_FILE
NATIVE_DEFORM_OP = "DeformConv"


# -- configuration --------------------------------------------------------------------------------


@dataclass(frozen=True)
class EngineConfig:
    """How an engine is built (defaults defined here once; unknown keys are rejected).

    Attributes:
        workspace_mb: TensorRT's workspace memory pool limit in MiB (None: TensorRT's
            default, the device's memory).
        opt_level: builder optimisation level 0..5 (higher: longer builds, maybe faster engines).
        dla_core: build for this DLA core with GPU fallback (Jetson AGX/NX Orin), None: the GPU.
        min_shape: smallest (height, width) of the optimisation profile (dynamic bundles).
        opt_shape: the (height, width) TensorRT tunes for.
        max_shape: largest (height, width).
        deform_conv: ``native`` (TensorRT's built-in DeformConv, FP32/FP16) or ``plugin``
            (edgeseg's ``EdgesegDeformConv`` from ``libedgeseg_plugins.so``).
        plugin_library: the plugin library to use (default: the bundle's own).
        timing_cache: load and save the per-device timing cache (faster rebuilds).
    """

    workspace_mb: int | None = None
    opt_level: int = DEFAULT_OPT_LEVEL
    dla_core: int | None = None
    min_shape: tuple[int, int] | None = None
    opt_shape: tuple[int, int] | None = None
    max_shape: tuple[int, int] | None = None
    deform_conv: str = "native"
    plugin_library: Path | None = None
    timing_cache: bool = True

    def __post_init__(self) -> None:
        if self.workspace_mb is not None and (
            isinstance(self.workspace_mb, bool)
            or not isinstance(self.workspace_mb, int)
            or self.workspace_mb < 1
        ):
            raise ConfigError(
                f"workspace_mb must be a positive integer (MiB), got {self.workspace_mb!r}"
            )
        if (
            isinstance(self.opt_level, bool)
            or not isinstance(self.opt_level, int)
            or not (0 <= self.opt_level <= 5)
        ):
            raise ConfigError(f"opt_level must be an integer 0..5, got {self.opt_level!r}")
        if self.dla_core is not None and (
            isinstance(self.dla_core, bool)
            or not isinstance(self.dla_core, int)
            or self.dla_core < 0
        ):
            raise ConfigError(f"dla_core must be a DLA core index (0, 1), got {self.dla_core!r}")
        for label in ("min_shape", "opt_shape", "max_shape"):
            value = getattr(self, label)
            if value is None:
                continue
            try:
                h, w = (int(v) for v in value)
            except (TypeError, ValueError) as err:
                raise ConfigError(f"{label} must be (height, width), got {value!r}") from err
            if h < 1 or w < 1:
                raise ConfigError(f"{label} must be positive (height, width), got {value!r}")
            object.__setattr__(self, label, (h, w))
        if self.deform_conv not in DEFORM_MODES:
            raise ConfigError(
                f"deform_conv must be one of {', '.join(DEFORM_MODES)}, got {self.deform_conv!r}"
            )
        if self.plugin_library is not None:
            object.__setattr__(self, "plugin_library", Path(self.plugin_library))

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> EngineConfig:
        """An EngineConfig from a dict; unknown keys are a ConfigError naming the valid ones."""
        names = [f.name for f in fields(cls)]
        unknown = sorted(set(values) - set(names))
        if unknown:
            raise ConfigError(f"unknown engine options {unknown}; valid: {', '.join(names)}")
        return cls(**dict(values))

    @classmethod
    def from_record(cls, record: EngineRecord) -> EngineConfig:
        """The settings an engine of the manifest was built with (to rebuild it elsewhere)."""
        return cls(
            workspace_mb=record.workspace_mb,
            opt_level=record.opt_level,
            dla_core=record.dla_core,
            min_shape=record.profile.min,
            opt_shape=record.profile.opt,
            max_shape=record.profile.max,
            deform_conv=record.deform_conv or "native",
        )


def coerce_config(engine: EngineConfig | Mapping[str, Any] | None) -> EngineConfig:
    """``engine`` as an EngineConfig (None: the defaults)."""
    if engine is None:
        return EngineConfig()
    if isinstance(engine, EngineConfig):
        return engine
    if isinstance(engine, Mapping):
        return EngineConfig.from_mapping(engine)
    raise ConfigError(
        f"engine must be an EngineConfig or a dict of its fields, got {type(engine).__name__}"
    )


def image_shapes(
    profile: ProfileRecord, channels: int
) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    """(min, opt, max) shapes of the (1, H, W, C) uint8 ``image`` tensor of a profile."""
    low, opt, high = ((1, h, w, channels) for h, w in (profile.min, profile.opt, profile.max))
    return low, opt, high


def round_up(value: int, multiple: int) -> int:
    """The smallest multiple of ``multiple`` that is >= ``value`` (and >= ``multiple``)."""
    return max(multiple, -(-value // multiple) * multiple)


def profile_shapes(spec: InputSpec, config: EngineConfig | None = None) -> ProfileRecord:
    """The optimisation profile of a bundle's ``image`` input.

    A static graph: min = opt = max = its size. A dynamic graph by default:
    min = half the nominal size, opt = the nominal size, max = twice the
    nominal size, each side rounded up to the graph's ``multiple_of``; given
    sides override these (a default bound widens to take a given opt).

    Raises:
        ConfigError: a shape for a static graph that is not its size; a side that
            is not a multiple of ``multiple_of`` (the message suggests the next one);
            min <= opt <= max not holding on each side.
    """
    config = config or EngineConfig()
    given = {"min": config.min_shape, "opt": config.opt_shape, "max": config.max_shape}
    h, w = spec.size
    if not spec.dynamic:
        for label, value in given.items():
            if value is not None and value != spec.size:
                raise ConfigError(
                    f"{label} shape {value[0]}x{value[1]}: the bundle's graph is static "
                    f"({h}x{w}); build the bundle with --dynamic to run other sizes"
                )
        return ProfileRecord(spec.size, spec.size, spec.size)
    step = max(1, spec.multiple_of)
    for label, value in given.items():
        if value is not None and (value[0] % step or value[1] % step):
            raise ConfigError(
                f"{label} shape {value[0]}x{value[1]}: the graph takes sides that are multiples of "
                f"{step}; use {round_up(value[0], step)}x{round_up(value[1], step)}"
            )
    opt = given["opt"] or spec.size
    low = given["min"] or (min(round_up(h // 2, step), opt[0]), min(round_up(w // 2, step), opt[1]))
    high = given["max"] or (max(round_up(2 * h, step), opt[0]), max(round_up(2 * w, step), opt[1]))
    if not (low[0] <= opt[0] <= high[0] and low[1] <= opt[1] <= high[1]):
        raise ConfigError(
            f"the profile must keep min <= opt <= max on each side, got min {low[0]}x{low[1]}, "
            f"opt {opt[0]}x{opt[1]}, max {high[0]}x{high[1]}"
        )
    return ProfileRecord(low, opt, high)


def dla_mode(
    trt_version: str,
    precision: str,
    profile: ProfileRecord,
    dla_core: int,
    dla_cores: int | None = None,
) -> str:
    """How an engine for DLA core ``dla_core`` is built here, or why it cannot be.

    Returns:
        ``legacy-dla`` on TensorRT 10.0..10.7 (weakly typed: the FP32 graph with
        builder precision flags); ``strongly-typed`` on TensorRT >= 11.4.1.

    Raises:
        ConfigError: no such core; FP32 (DLA runs FP16 and INT8 only); a dynamic
            profile (DLA needs static shapes); a TensorRT without DLA (10.8..11.4.0).
    """
    if isinstance(dla_core, bool) or not isinstance(dla_core, int) or dla_core < 0:
        raise ConfigError(f"dla_core must be a DLA core index (0, 1), got {dla_core!r}")
    if dla_cores is not None and dla_core >= dla_cores:
        raise ConfigError(
            f"DLA core {dla_core} does not exist: this device has {dla_cores} DLA core(s)"
            + (
                f" (0..{dla_cores - 1})"
                if dla_cores
                else "; DLA exists on Jetson AGX Orin and Orin NX"
            )
        )
    if precision not in ("fp16", "int8"):
        raise ConfigError(
            f"DLA runs FP16 and INT8 only, not {precision}: build with --precision fp16 or int8"
        )
    if not profile.static:
        raise ConfigError(
            f"DLA needs static shapes, but the profile is {profile.describe()}: give "
            "--min-shape, --opt-shape and --max-shape the same size (or build the bundle without "
            "--dynamic)"
        )
    version = parse_version(trt_version)
    if version[0] == 10 and version[1] <= 7:
        return LEGACY_DLA
    if version[:3] >= (11, 4, 1):
        return STRONGLY_TYPED
    raise ConfigError(
        f"TensorRT {trt_version} cannot build for DLA: TensorRT 10.7 was the last 10.x release "
        "with DLA (JetPack 6 ships 10.3), and DLA returned in 11.4.1 (AGX Orin, JetPack >= 7.2.2); "
        "build without --dla-core to run on the GPU"
    )


def cache_dir() -> Path:
    """edgeseg's cache folder: ``$EDGESEG_CACHE_DIR``, else ``~/.cache/edgeseg``."""
    configured = os.environ.get(CACHE_ENV)
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "edgeseg"


def timing_cache_path(device: DeviceInfo, folder: str | os.PathLike[str] | None = None) -> Path:
    """``<cache>/timing-<gpu>-<sm>-trt<version>.cache``: one timing cache per device and TensorRT.

    Raises:
        ConfigError: the device has no TensorRT version.
    """
    if not device.trt_version:
        raise ConfigError(f"a timing cache needs a TensorRT version; {device.name} has none")
    root = Path(folder) if folder is not None else cache_dir()
    return (
        root / f"timing-{device.gpu}-{device.sm}-trt{trt_short_version(device.trt_version)}.cache"
    )


def resolve_target(target: str) -> tuple[str, str]:
    """``auto`` / ``tensorrt`` / ``cpu`` -> (``tensorrt`` or ``cpu``, why).

    ``auto`` means TensorRT when it is installed and a GPU is present.

    Raises:
        ConfigError: an unknown target.
    """
    if target not in TARGETS:
        raise ConfigError(f"target must be one of {', '.join(TARGETS)}, got {target!r}")
    if target != "auto":
        return target, f"--target {target}"
    version = tensorrt_version()
    if version is None:
        return "cpu", "TensorRT is not installed: the bundle runs on ONNX Runtime"
    try:
        device = probe_device(with_tensorrt=False)
    except BackendError as err:
        return "cpu", f"no GPU ({err}): the bundle runs on ONNX Runtime"
    return "tensorrt", f"{device.name} with TensorRT {version}"


# -- graphs ---------------------------------------------------------------------------------------


def graph_op_types(bundle: Bundle, graph: str) -> set[str]:
    """The operator types of one of the bundle's graphs.

    Read from the manifest's ``op_types``, which builds record (schema 2); a
    bundle written before that is read with onnx.

    Raises:
        MissingDependencyError: an older bundle and no onnx to read its graph with.
    """
    recorded = bundle.manifest.op_types.get(graph)
    if recorded is not None:
        return set(recorded)
    try:
        import onnx
    except ImportError as err:
        raise MissingDependencyError(
            f"{bundle.path} was built before bundles recorded their operator types, and reading "
            f"{graph} needs onnx: pip install onnx (or rebuild the bundle with this edgeseg)"
        ) from err
    return op_types_of(onnx.load(str(bundle.file(graph)), load_external_data=False))


def op_types_of(model: Any) -> set[str]:
    """The operator types of an ONNX ``ModelProto``'s graph and its local functions."""
    return {n.op_type for n in (*model.graph.node, *(n for f in model.functions for n in f.node))}


def _deform_graph(source: Path, folder: Path, mode: str) -> Path:
    """``source`` with its deformable convs in ``mode`` (``plugin``: EdgesegDeformConv,
    ``native``: ONNX DeformConv), saved in ``folder`` (the bundle's graph stays as it is)."""
    try:
        import onnx

        from converters.passes.deform import apply_deform_conv_mode as apply
    except ImportError as err:
        raise MissingDependencyError(
            f"rewriting deformable convolutions ({mode}) needs onnx: pip install onnx"
        ) from err
    model = onnx.load(str(source))
    out = folder / f"{source.stem}.{mode}.onnx"
    onnx.save(apply(model, mode), str(out))
    return out


# -- building -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BuiltEngine:
    """A serialized engine and what describes it."""

    plan: bytes
    layers: str  # EngineInspector JSON ("" when the engine could not be inspected)
    seconds: float
    trt_version: str


def _timing_cache(builder_config: trt.IBuilderConfig, path: Path | None) -> trt.ITimingCache | None:
    """Gives ``builder_config`` the timing cache at ``path`` (a fresh one if absent or bad)."""
    if path is None:
        return None
    data = b""
    if path.is_file():
        try:
            data = path.read_bytes()
        except OSError as err:
            log.warning("cannot read timing cache %s (%s); starting a new one", path, err)
    cache = builder_config.create_timing_cache(data)
    if cache is None and data:
        log.warning("timing cache %s is unreadable; starting a new one", path)
        cache = builder_config.create_timing_cache(b"")
    if cache is None:
        return None
    if not builder_config.set_timing_cache(cache, ignore_mismatch=False):
        log.warning(
            "TensorRT did not take timing cache %s (another device?); building without", path
        )
        return None
    log.info("timing cache %s (%d bytes)", path, len(data))
    return cache


def _save_timing_cache(builder_config: trt.IBuilderConfig, path: Path) -> None:
    """Writes the config's timing cache to ``path`` atomically (a failure is only logged)."""
    try:
        data = bytes(builder_config.get_timing_cache().serialize())
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except OSError as err:
        log.warning("cannot save timing cache %s: %s", path, err)


def engine_from_onnx(
    onnx_path: str | os.PathLike[str],
    *,
    profile: ProfileRecord,
    channels: int,
    config: EngineConfig | None = None,
    device: DeviceInfo | None = None,
    mode: str = STRONGLY_TYPED,
    precision: str = "fp32",
    plugins: Sequence[str | os.PathLike[str]] = (),
    calibration_cache: Path | None = None,
    say: Say | None = None,
) -> BuiltEngine:
    """Builds a serialized engine from an ONNX graph with TensorRT.

    Args:
        onnx_path: the graph. Its input ``image`` is (1, H, W, C) uint8; other
            inputs must be static.
        profile: the optimisation profile of ``image`` (used when the graph is dynamic).
        channels: C of ``image``.
        config: workspace, optimisation level, DLA core, timing cache.
        device: the device (for the timing cache's name); probed when None.
        mode: ``strongly-typed`` (precision from the graph) or ``legacy-dla``
            (TensorRT 10.x DLA: the FP32 graph, ``BuilderFlag.FP16``/``INT8``).
        precision: with ``legacy-dla``: ``fp16`` or ``int8``.
        plugins: plugin libraries to load before parsing.
        calibration_cache: with ``legacy-dla`` and INT8: TensorRT's calibration cache.
        say: progress messages.

    Raises:
        BackendError: TensorRT cannot create a builder (no GPU), parse the graph
            (the message quotes the parser) or build the engine.
        ConfigError: a DLA core the device lacks.
    """
    config = config or EngineConfig()
    say = say_or_log(say)
    path = Path(onnx_path)
    require_tensorrt()
    import tensorrt as trt

    version = str(trt.__version__)
    device = device or probe_device()
    logger = make_logger()
    load_plugin_libraries(logger, plugins)
    try:
        builder = trt.Builder(logger)
    except (RuntimeError, TypeError) as err:  # pybind11: "factory function returned nullptr"
        raise BackendError(
            f"TensorRT {version} cannot create a builder (no usable GPU?): {err}"
            f"{logged_errors(logger)}"
        ) from err
    flags = 0
    if mode == STRONGLY_TYPED:
        # ignored (always on) in TensorRT 11; required on 10.x
        strongly_typed = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
        if strongly_typed is not None:
            flags |= 1 << int(strongly_typed)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    say(f"parsing {path.name} ({mode.replace('-', ' ')} network)")
    if not parser.parse_from_file(str(path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise BackendError(
            f"TensorRT {version} cannot parse {path.name}: "
            + " | ".join(errors[:5] or ["(no detail)"])
        )
    builder_config = builder.create_builder_config()
    low, opt, high = image_shapes(profile, channels)
    dynamic = False
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        dims = tuple(int(tensor.shape[d]) for d in range(len(tensor.shape)))
        if tensor.name == "image":
            if len(dims) != len(opt) or any(
                d >= 0 and d != o for d, o in zip(dims, opt, strict=True)
            ):
                raise BackendError(
                    f"{path.name}: input 'image' has shape {dims}, which does not fit the profile "
                    f"{profile.describe()} (expected (1, H, W, {channels}))"
                )
            dynamic = any(d < 0 for d in dims)
        elif any(d < 0 for d in dims):
            raise BackendError(
                f"{path.name}: input {tensor.name!r} has dynamic shape {dims}; edgeseg builds "
                "optimisation profiles for 'image' only"
            )
    if dynamic:
        shapes = builder.create_optimization_profile()
        shapes.set_shape("image", trt.Dims(list(low)), trt.Dims(list(opt)), trt.Dims(list(high)))
        builder_config.add_optimization_profile(shapes)
    if config.workspace_mb is not None:
        builder_config.set_memory_pool_limit(
            trt.MemoryPoolType.WORKSPACE, config.workspace_mb << 20
        )
    builder_config.builder_optimization_level = config.opt_level
    # DETAILED: EngineInspector's JSON then names each layer's tactic, formats and parameters
    builder_config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
    calibrator: Any = None
    if config.dla_core is not None:
        cores = int(builder.num_DLA_cores)
        if config.dla_core >= cores:
            raise ConfigError(
                f"DLA core {config.dla_core} does not exist: this device has {cores} DLA core(s)"
            )
        calibrator = _configure_dla(
            builder,
            builder_config,
            config.dla_core,
            mode,
            precision,
            channels,
            profile,
            calibration_cache,
        )
    cache_path = (
        timing_cache_path(DeviceInfo(device.name, device.compute_capability, version))
        if config.timing_cache
        else None
    )
    cache = _timing_cache(builder_config, cache_path)
    say(
        f"building the engine with TensorRT {version} (optimisation level {config.opt_level}"
        + (f", DLA core {config.dla_core}" if config.dla_core is not None else "")
        + "); this takes a while"
    )
    started = time.perf_counter()
    try:
        plan = builder.build_serialized_network(network, builder_config)
    finally:
        if calibrator is not None:
            calibrator.close()
    if calibrator is not None:
        calibrator.raise_if_failed()
    if plan is None:
        raise BackendError(
            f"TensorRT {version} failed to build an engine from {path.name}{logged_errors(logger)}"
        )
    seconds = time.perf_counter() - started
    data = bytes(plan)
    if cache is not None and cache_path is not None:
        _save_timing_cache(builder_config, cache_path)
    return BuiltEngine(data, _layer_information(data, logger, config.dla_core), seconds, version)


def _configure_dla(
    builder: trt.Builder,
    builder_config: trt.IBuilderConfig,
    core: int,
    mode: str,
    precision: str,
    channels: int,
    profile: ProfileRecord,
    calibration_cache: Path | None,
) -> Any:
    """DLA by default with GPU fallback; on the legacy path also the precision flags.

    Returns:
        The legacy INT8 calibrator (to close after the build), or None.
    """
    import tensorrt as trt

    if mode == LEGACY_DLA and precision == "int8":
        if calibration_cache is None:
            raise ConfigError("INT8 on DLA with TensorRT 10.x needs the bundle's calibration.cache")
        import numpy as np

        from calibration.tensorrt_calibrator import EntropyCalibrator, legacy_int8_config

        h, w = profile.opt
        # the cache holds every scale, so TensorRT asks for no batches: no images needed
        calibrator = EntropyCalibrator(
            np.zeros((0, h, w, channels), np.uint8), cache_path=calibration_cache
        )
        legacy_int8_config(builder, builder_config, calibrator, dla_core=core)
        return calibrator
    if mode == LEGACY_DLA:
        builder_config.set_flag(trt.BuilderFlag.FP16)  # exists on 10.x only; LEGACY_DLA is 10.x
    builder_config.default_device_type = trt.DeviceType.DLA
    builder_config.DLA_core = core
    builder_config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
    return None


def _layer_information(plan: bytes, logger: trt.ILogger, dla_core: int | None) -> str:
    """EngineInspector's JSON of every layer (empty when the engine cannot be inspected here)."""
    import tensorrt as trt

    runtime = trt.Runtime(logger)
    if dla_core is not None:
        runtime.DLA_core = dla_core
    engine = runtime.deserialize_cuda_engine(plan)
    if engine is None:
        log.warning("cannot deserialize the new engine to inspect it%s", logged_errors(logger))
        return ""
    inspector = engine.create_engine_inspector()
    return str(inspector.get_engine_information(trt.LayerInformationFormat.JSON))


# -- bundles --------------------------------------------------------------------------------------


def _probe_with_tensorrt(device: DeviceInfo | None) -> DeviceInfo:
    require_tensorrt()
    import tensorrt as trt

    info = device or probe_device(with_tensorrt=False)
    version = str(trt.__version__)
    if info.trt_version != version:
        info = replace(info, trt_version=version)
    return info


def _plugin_library(loaded: Bundle, config: EngineConfig) -> Path:
    if config.plugin_library is not None:
        if not config.plugin_library.is_file():
            raise ConfigError(f"plugin library {config.plugin_library} does not exist")
        return config.plugin_library
    if PLUGIN_LIBRARY in loaded.manifest.files:
        return loaded.file(PLUGIN_LIBRARY)
    raise ConfigError(
        f"the engine needs edgeseg's {PLUGIN_OP} plugin but {loaded.path} has no {PLUGIN_LIBRARY}: "
        f"build it on this device with `edgeseg plugins build --bundle {loaded.path}` (needs nvcc "
        "and TensorRT's headers), pass plugin_library=PATH (--plugin-library), or build with "
        "--deform-conv native"
    )


def add_engine(
    bundle: str | os.PathLike[str] | Bundle,
    precision: str | None = None,
    config: EngineConfig | Mapping[str, Any] | None = None,
    *,
    device: DeviceInfo | None = None,
    progress: Say | None = None,
) -> Bundle:
    """Builds the engine of one of the bundle's graphs for this device and adds it to the bundle.

    The bundle is rewritten atomically (:func:`edgeseg.bundle.write_bundle`)
    with every file it had, plus ``engine-<gpu>-<sm>-trt<version>-<precision>.plan``
    and its layer information (``.json``, EngineInspector), and an entry in
    the manifest's ``engines``; an engine of the same name is replaced. With
    ``deform_conv="plugin"`` the plugin library is copied into the bundle.

    A bundle whose CRF is a separate graph (``crf.onnx``) also gets that
    graph's engine for this device (``...-fp32-crf.plan``, a record with
    ``stage="crf"``) in the same rewrite, unless it has a usable one already:
    with the TensorRT backend the CRF runs chained to the model's engine. The
    CRF engine is FP32 on the GPU (the CRF graph's precision), built with
    ``config``'s workspace, optimisation level and timing cache.

    Args:
        bundle: the bundle (path or loaded).
        precision: the graph to build from (default: the bundle's precision).
        config: :class:`EngineConfig` or a dict of its fields.
        device: the device (probed when None); its TensorRT version is the one imported.
        progress: called with a short message as each step starts.

    Returns:
        The rewritten, verified bundle.

    Raises:
        BundleError: the bundle is missing or altered, or has no graph of ``precision``.
        ConfigError: a bad engine option, profile or DLA request; a plugin library missing.
        MissingDependencyError: TensorRT (or, to rewrite DeformConv, onnx) is not installed.
        BackendError: no GPU; TensorRT cannot parse or build the graph.
    """
    return _add_engine(bundle, precision, config, device=device, progress=progress)[0]


def _add_engine(
    bundle: str | os.PathLike[str] | Bundle,
    precision: str | None,
    config: EngineConfig | Mapping[str, Any] | None,
    *,
    device: DeviceInfo | None,
    progress: Say | None,
    with_crf: bool = True,
) -> tuple[Bundle, EngineRecord]:
    """The work of :func:`add_engine`; also returns the new (model) engine's record.

    ``with_crf``: also build the separate CRF graph's engine when the bundle has
    no usable one for this device (False: the model's engine only, as
    :func:`rebuild_engine` builds one engine per choice).
    """
    say = say_or_log(progress)
    config = coerce_config(config)
    loaded = bundle if isinstance(bundle, Bundle) else Bundle.load(bundle)
    manifest = loaded.manifest
    precision = precision or manifest.precision
    graph = loaded.graph(precision)  # BundleError when the bundle lacks it
    info = _probe_with_tensorrt(device)
    assert info.trt_version is not None
    profile = profile_shapes(manifest.input, config)
    mode = STRONGLY_TYPED
    calibration: Path | None = None
    if config.dla_core is not None:
        mode = dla_mode(info.trt_version, precision, profile, config.dla_core, info.dla_cores)
        if mode == LEGACY_DLA:
            graph = loaded.graph("fp32")  # TensorRT 10.x DLA picks precisions from builder flags
            if precision == "int8":
                if CALIBRATION_CACHE not in manifest.files:
                    raise ConfigError(
                        f"INT8 on DLA with TensorRT {info.trt_version} needs the implicit "
                        f"calibrator's cache, and {loaded.path} has no {CALIBRATION_CACHE}: "
                        "calibrate it with `edgeseg calibrate BUNDLE --calib ... "
                        "--trt-cache-version "
                        f"{trt_short_version(info.trt_version)}`"
                    )
                calibration = loaded.file(CALIBRATION_CACHE)
    ops = graph_op_types(loaded, graph.name)
    plugins: list[Path] = []
    deform: str | None = None
    with tempfile.TemporaryDirectory(prefix="edgeseg-engine-") as tmp:
        source = graph
        if calibration is not None:  # the calibrator may rewrite its cache: never the bundle's
            calibration = Path(shutil.copyfile(calibration, Path(tmp) / CALIBRATION_CACHE))
        if {NATIVE_DEFORM_OP, PLUGIN_OP} & ops:
            deform = config.deform_conv
            theirs = PLUGIN_OP if deform == "native" else NATIVE_DEFORM_OP
            if theirs in ops:
                say(f"rewriting {graph.name}'s {theirs} nodes for --deform-conv {deform}")
                source = _deform_graph(graph, Path(tmp), deform)
            if deform == "plugin":
                plugins = [_plugin_library(loaded, config)]
            # native: TensorRT's built-in plugin, registered by init_libnvinfer_plugins
        refuse_unacceptable(loaded, source, precision, info.trt_version, label=graph.name)
        built = engine_from_onnx(
            source,
            profile=profile,
            channels=manifest.input.channels,
            config=config,
            device=info,
            mode=mode,
            precision=precision,
            plugins=plugins,
            calibration_cache=calibration,
            say=say,
        )
        name = engine_file_name(info, precision, config.dla_core)
        inspector = inspector_file_name(name)
        crf = (
            _crf_engine(loaded, info, config, say)
            if with_crf and _needs_crf_engine(loaded, info)
            else None
        )
        entry = _engine_record(
            name,
            info,
            built,
            manifest,
            graph.name,
            config,
            precision=precision,
            mode=mode,
            profile=profile,
            dla_core=config.dla_core,
            deform_conv=deform,
            plugins=(PLUGIN_LIBRARY,) if plugins else (),
        )
        files: dict[str, bytes | Path] = {
            n: loaded.path / n for n in manifest.files if n not in (name, inspector)
        }
        files[name] = built.plan
        files[inspector] = built.layers.encode("utf-8")
        if plugins:
            files[PLUGIN_LIBRARY] = plugins[0]
        new = [entry]
        if crf is not None:
            new.append(crf.record)
            files.update(crf.files)
        replaced = {e.file for e in new}
        engines = (*(e for e in manifest.engines if e.file not in replaced), *new)
        say(
            f"writing {name} ({len(built.plan) / 1e6:.1f} MB, built in {built.seconds:.0f} s)"
            + (f" and {crf.record.file}" if crf is not None else "")
            + f" into {loaded.path}"
        )
        updated = write_bundle(
            loaded.path, replace(manifest, engines=engines), files, overwrite=True, base=loaded
        )
        return updated, entry


def _engine_record(
    name: str,
    device: DeviceInfo,
    built: BuiltEngine,
    manifest: Manifest,
    graph: str,
    config: EngineConfig,
    **specific: Any,
) -> EngineRecord:
    """An engine's record: what every engine records (file, device, TensorRT, the graph and its
    checksum, build settings and time) and what is ``specific`` to it (precision, mode, profile...)."""
    return EngineRecord(
        file=name,
        inspector=inspector_file_name(name),
        gpu=device.gpu,
        gpu_name=device.name,
        sm=device.sm,
        trt_version=built.trt_version,
        graph=graph,
        graph_sha256=manifest.files[graph].sha256,
        workspace_mb=config.workspace_mb,
        opt_level=config.opt_level,
        build_seconds=round(built.seconds, 2),
        built_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        **specific,
    )


def refuse_unacceptable(
    loaded: Bundle, graph: Path, precision: str, trt_version: str, *, label: str | None = None
) -> None:
    """Refuses, before TensorRT is asked, a graph its ONNX parser would refuse
    (:mod:`converters.acceptance`), naming the nodes; the parser itself would stop at the
    first with a less direct message, after the builder has started. ``graph`` is the file
    TensorRT would parse (after a DeformConv rewrite); ``label`` the bundle graph it came from.

    Raises:
        ExportError: the first refused nodes, and for ONNX Runtime's Q/DQ placement the way out.
    """
    from converters.acceptance import check_model

    name = label or graph.name
    report = check_model(graph, trt_version, precision=precision, label=name)
    if report.ok:
        return
    refused = report.refused
    lines = "; ".join(str(f) for f in refused[:3]) + (f"; and {len(refused) - 3} more" if len(refused) > 3 else "")
    record = loaded.manifest.precisions.get(precision)
    quant = record.quantization if record is not None else None
    hint = (
        "; it has ONNX Runtime's Q/DQ placement (uint8 activations): give it TensorRT's with "
        f"`edgeseg calibrate {loaded.path} --calib ... --placement tensorrt`"
        if quant is not None and quant.placement == "cpu"
        else f"; `edgeseg check {loaded.path} --tensorrt {trt_version}` lists every node"
    )
    raise ExportError(
        f"TensorRT {trt_version} would refuse {name} ({len(refused)} node(s)): {lines}{hint}"
    )


@dataclass(frozen=True)
class _CrfEngine:
    """A separate CRF graph's engine, built: its record and the files it adds to the bundle."""

    record: EngineRecord
    files: dict[str, bytes | Path]


def _needs_crf_engine(loaded: Bundle, device: DeviceInfo) -> bool:
    """Whether the bundle has a separate CRF graph and no usable engine of it for ``device``."""
    crf = loaded.manifest.crf
    if crf is None or crf.mode != "separate" or crf.graph is None:
        return False
    choice = choose_engine(
        loaded.manifest, device, CRF_PRECISION, where=str(loaded.path), stage="crf"
    )
    if choice.action == "use":
        log.info("%s: the CRF engine %s is kept", loaded.path, choice.found)
    return choice.action == "build"


def _crf_engine(loaded: Bundle, device: DeviceInfo, config: EngineConfig, say: Say) -> _CrfEngine:
    """Builds the engine of the bundle's separate CRF graph (FP32, on the GPU) for ``device``.

    The CRF graph is static (a separate CRF needs a static bundle), so its
    profile is the bundle's input size; workspace, optimisation level and the
    timing cache come from ``config``, a DLA core does not (FP32 runs on the GPU).

    Raises:
        ConfigError: the bundle has no separate CRF graph.
        BackendError: TensorRT cannot parse or build it.
    """
    manifest = loaded.manifest
    crf = manifest.crf
    if crf is None or crf.mode != "separate" or crf.graph is None:
        raise ConfigError(f"{loaded.path} has no separate CRF graph to build an engine of")
    assert device.trt_version is not None
    graph = loaded.file(crf.graph)
    size = manifest.input.size
    profile = ProfileRecord(size, size, size)
    crf_config = replace(
        config, dla_core=None, min_shape=None, opt_shape=None, max_shape=None, deform_conv="native"
    )
    refuse_unacceptable(loaded, graph, CRF_PRECISION, device.trt_version)
    say(f"building the CRF engine from {crf.graph} (FP32, on the GPU)")
    built = engine_from_onnx(
        graph,
        profile=profile,
        channels=manifest.input.channels,
        config=crf_config,
        device=device,
        precision=CRF_PRECISION,
        say=say,
    )
    name = engine_file_name(device, CRF_PRECISION, stage="crf")
    inspector = inspector_file_name(name)
    record = _engine_record(
        name,
        device,
        built,
        manifest,
        crf.graph,
        crf_config,
        precision=CRF_PRECISION,
        mode=STRONGLY_TYPED,
        profile=profile,
        stage="crf",
    )
    return _CrfEngine(record, {name: built.plan, inspector: built.layers.encode("utf-8")})


def _add_crf_engine(
    bundle: Bundle, config: EngineConfig, *, device: DeviceInfo | None, progress: Say | None
) -> tuple[Bundle, EngineRecord]:
    """Builds the separate CRF graph's engine for this device and adds it to the bundle (atomic)."""
    say = say_or_log(progress)
    info = _probe_with_tensorrt(device)
    crf = _crf_engine(bundle, info, config, say)
    manifest = bundle.manifest
    files: dict[str, bytes | Path] = {
        n: bundle.path / n for n in manifest.files if n not in crf.files
    }
    files.update(crf.files)
    engines = (*(e for e in manifest.engines if e.file != crf.record.file), crf.record)
    say(f"writing {crf.record.file} into {bundle.path}")
    updated = write_bundle(
        bundle.path, replace(manifest, engines=engines), files, overwrite=True, base=bundle
    )
    return updated, crf.record


def rebuild_engine(bundle: Bundle, choice: EngineChoice) -> tuple[Bundle, EngineRecord]:
    """edgeseg's :class:`~edgeseg.engines.EngineBuilder`: builds the one engine a choice asks for.

    A ``model`` choice builds the engine of the bundle's graph of its precision,
    a ``crf`` choice the engine of the separate CRF graph (the runtime asks for
    each it lacks). The settings (profile, optimisation level, workspace,
    DeformConv mode) are those of the engine the choice replaces, when there is one.
    """
    if choice.stage == "crf":
        config = (
            EngineConfig(workspace_mb=choice.record.workspace_mb, opt_level=choice.record.opt_level)
            if choice.record is not None
            else EngineConfig()
        )
        return _add_crf_engine(bundle, config, device=choice.device, progress=None)
    config = (
        EngineConfig.from_record(choice.record)
        if choice.record is not None
        else EngineConfig(dla_core=choice.dla_core)
    )
    return _add_engine(
        bundle, choice.precision, config, device=choice.device, progress=None, with_crf=False
    )


def add_plugin_library(
    bundle: str | os.PathLike[str] | Bundle, library: str | os.PathLike[str]
) -> Bundle:
    """Copies a plugin library into the bundle as ``libedgeseg_plugins.so`` (atomic rewrite).

    Raises:
        ConfigError: ``library`` does not exist.
        BundleError: the bundle is missing or altered.
    """
    source = Path(library)
    if not source.is_file():
        raise ConfigError(f"plugin library {source} does not exist")
    loaded = bundle if isinstance(bundle, Bundle) else Bundle.load(bundle)
    files: dict[str, bytes | Path] = {n: loaded.path / n for n in loaded.manifest.files}
    files[PLUGIN_LIBRARY] = source
    return write_bundle(loaded.path, loaded.manifest, files, overwrite=True, base=loaded)


def engine_for_build(
    bundle: Bundle,
    target: str,
    engine: EngineConfig | Mapping[str, Any] | None = None,
    *,
    say: Say | None = None,
) -> Bundle:
    """What :func:`converters.build.build` does after writing the ONNX bundle: maybe add an engine.

    Args:
        bundle: the bundle just written.
        target: ``cpu`` (ONNX only), ``tensorrt`` (an engine for this device, or an
            error), ``auto`` (an engine when TensorRT and a GPU are here).
        engine: engine options; with ``cpu`` they are an error.
        say: progress messages.

    Raises:
        ConfigError: an unknown target, or engine options with ``target="cpu"``.
        EdgesegError: from :func:`add_engine`; the message adds that the ONNX bundle
            was written and how to add the engine later.
    """
    say = say_or_log(say)
    resolved, why = resolve_target(target)
    config = coerce_config(engine)
    if resolved == "cpu":
        if target == "cpu" and config != EngineConfig():
            raise ConfigError(
                "engine options were given with target='cpu' (--target cpu builds no engine)"
            )
        if target == "auto":
            say(f"no TensorRT engine: {why}")
        return bundle
    say(f"adding a TensorRT engine ({why})")
    try:
        return add_engine(bundle, None, config, progress=say)
    except EdgesegError as err:
        raise type(err)(
            f"{err} (the ONNX bundle {bundle.path} was written; add the engine later on the "
            f"device with `edgeseg engine {bundle.path}`)"
        ) from err


__all__ = [
    "DEFORM_MODES",
    "TARGETS",
    "BuiltEngine",
    "EngineConfig",
    "ProfileRecord",
    "add_engine",
    "add_plugin_library",
    "cache_dir",
    "dla_mode",
    "engine_for_build",
    "engine_from_onnx",
    "graph_op_types",
    "profile_shapes",
    "resolve_target",
    "timing_cache_path",
]
