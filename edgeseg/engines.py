"""Engines as data: which TensorRT engine of a bundle fits this device, and what it is called.

Everything here is a pure function of the manifest's typed engine records
(:class:`edgeseg.manifest.EngineRecord`) and a device probe, so it is tested on
the CPU and imports neither TensorRT nor pycuda:

- :class:`DeviceInfo` and :func:`probe_device`: the GPU this process would
  run on, read through the CUDA driver library with ``ctypes`` (no CUDA
  context is created);
- :func:`engine_file_name`: ``engine-<gpu>-<sm>-trt<version>-<precision>.plan``
  (``...-<precision>-crf.plan`` for a separate CRF graph's engine);
- :func:`choose_engine`: use one of the bundle's engines, or build one
  (:class:`EngineChoice`), or refuse (:class:`EngineMismatchError`, naming both
  devices and TensorRT versions). ``Segmenter`` decides once per instance;
  :func:`choose_engines` decides the model's engine and, for a bundle whose
  CRF is a separate graph, the CRF's engine, for one device and TensorRT;
- :class:`EngineBuilder`: the one build step the runtime may need (an engine
  missing for this device). The runtime never imports the builder: it is
  handed one, as Polygraphy's runners take an engine or a callable that makes
  one. ``edgeseg._lazy.default_engine_builder`` resolves the default, which is
  :func:`converters.tensorrt.rebuild_engine`.
"""

from __future__ import annotations

import ctypes
import importlib
import importlib.util
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

from edgeseg.errors import BackendError, ConfigError

if TYPE_CHECKING:  # pragma: no cover
    from edgeseg.bundle import Bundle
    from edgeseg.manifest import EngineRecord, Manifest

PLUGIN_OP = "EdgesegDeformConv"  # == the name the plugin's creator registers (a test checks)
PLUGIN_LIBRARY = "libedgeseg_plugins.so"
MIN_TRT_VERSION = (10, 3)
# the precision of a separate CRF graph (crf.onnx is written in FP32 only): its engine is an FP32
# engine on the GPU, whichever precision (and DLA core) the model's engine runs at
CRF_PRECISION = "fp32"

TRT_HINT = (
    "on Jetson it comes with JetPack (sudo apt install python3-libnvinfer; in a venv use "
    "--system-site-packages); elsewhere pip install 'tensorrt>=10.3' on a machine with an "
    "NVIDIA GPU"
)
PYCUDA_HINT = (
    "pip install pycuda (it compiles against the CUDA toolkit: put nvcc on PATH first, on "
    "Jetson export PATH=/usr/local/cuda/bin:$PATH)"
)
CUDA_PYTHON_HINT = "pip install cuda-python (a release matching the CUDA major version)"


class EngineMismatchError(BackendError):
    """A bundle has no engine for this device and none can be built here."""


# -- device ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DeviceInfo:
    """The GPU (and TensorRT) an engine is built for or run on.

    Attributes:
        name: the device name the CUDA driver reports (``Orin``, ``NVIDIA H100 80GB HBM3``).
        compute_capability: (major, minor), e.g. (8, 7) on Orin.
        trt_version: the TensorRT Python package's version, None when it is not installed.
        index: the CUDA device ordinal.
        total_memory: bytes of device memory, when known.
        dla_cores: DLA cores TensorRT reports, when known.
    """

    name: str
    compute_capability: tuple[int, int]
    trt_version: str | None = None
    index: int = 0
    total_memory: int | None = None
    dla_cores: int | None = None

    @property
    def gpu(self) -> str:
        """The sanitized device name used in engine file names (``orin``, ``h100-80gb-hbm3``)."""
        return sanitize_gpu_name(self.name)

    @property
    def sm(self) -> str:
        """``sm87`` for compute capability 8.7."""
        return f"sm{self.compute_capability[0]}{self.compute_capability[1]}"

    def describe(self) -> str:
        trt_text = f"TensorRT {self.trt_version}" if self.trt_version else "no TensorRT"
        return f"{self.gpu} {self.sm} with {trt_text}"


def sanitize_gpu_name(name: str) -> str:
    """A device name as a file-name token: lower case, ``nvidia`` and ``(...)`` dropped.

    ``"NVIDIA H100 80GB HBM3"`` -> ``"h100-80gb-hbm3"``, ``"Orin (nvgpu)"`` -> ``"orin"``,
    ``"NVIDIA GeForce RTX 4090"`` -> ``"geforce-rtx-4090"``.
    """
    text = re.sub(r"\(.*?\)", " ", name.lower())
    words = [w for w in re.split(r"[^a-z0-9]+", text) if w and w not in ("nvidia", "corporation")]
    return "-".join(words) or "gpu"


def trt_short_version(version: str) -> str:
    """``10.3.0.30`` -> ``10.3.0`` (major.minor.patch, as in engine file names)."""
    return ".".join(version.split(".")[:3])


def parse_version(version: str) -> tuple[int, ...]:
    """``"10.3.0.30"`` -> ``(10, 3, 0, 30)``; text after the leading digits of a part is dropped.

    Raises:
        ConfigError: the version does not start with a number.
    """
    numbers = []
    for part in version.split("."):
        digits = re.match(r"\d+", part)
        if digits is None:
            break
        numbers.append(int(digits.group()))
    if not numbers:
        raise ConfigError(f"cannot read a version number from {version!r}")
    return tuple(numbers)


def engine_file_name(
    device: DeviceInfo, precision: str, dla_core: int | None = None, *, stage: str = "model"
) -> str:
    """``engine-<gpu>-<sm>-trt<major.minor.patch>-<precision>[-dla<N>][-crf].plan``.

    The precision is part of the name because a bundle holds up to three
    graphs (FP32, FP16, INT8), each of which may get its engine on the same
    device; ``-crf`` names the engine of the separate CRF graph (``stage="crf"``).

    Raises:
        ConfigError: the device has no TensorRT version.
    """
    if not device.trt_version:
        raise ConfigError(f"an engine name needs a TensorRT version; {device.name} has none")
    name = f"engine-{device.gpu}-{device.sm}-trt{trt_short_version(device.trt_version)}-{precision}"
    if dla_core is not None:
        name += f"-dla{dla_core}"
    if stage == "crf":
        name += "-crf"
    return name + ".plan"


def inspector_file_name(engine_file: str) -> str:
    """The layer-information JSON beside an engine: ``engine-....json``."""
    stem = engine_file[: -len(".plan")] if engine_file.endswith(".plan") else engine_file
    return stem + ".json"


_CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR = 75
_CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR = 76


class _CudaDriver:
    """The few CUDA driver calls a probe needs, through ctypes (no context is created)."""

    NAMES = ("libcuda.so.1", "libcuda.so", "nvcuda.dll")

    def __init__(self) -> None:
        errors = []
        for name in self.NAMES:
            try:
                self.lib = ctypes.CDLL(name)
                break
            except OSError as err:
                errors.append(str(err))
        else:
            raise BackendError(
                "the NVIDIA driver library (libcuda.so.1) is not installed: no NVIDIA GPU driver "
                f"on this machine ({errors[0]})"
            )

    def error_name(self, code: int) -> str:
        text = ctypes.c_char_p()
        try:
            self.lib.cuGetErrorName(code, ctypes.byref(text))
        except AttributeError:  # pragma: no cover - every driver has it
            return f"CUDA error {code}"
        return text.value.decode() if text.value else f"CUDA error {code}"

    def call(self, function: str, *args: Any) -> None:
        code = int(getattr(self.lib, function)(*args))
        if code != 0:
            raise BackendError(f"{function} failed: {self.error_name(code)} ({code})")

    def init(self) -> None:
        self.call("cuInit", 0)

    def driver_version(self) -> int:
        value = ctypes.c_int()
        self.call("cuDriverGetVersion", ctypes.byref(value))
        return value.value

    def device_count(self) -> int:
        value = ctypes.c_int()
        self.call("cuDeviceGetCount", ctypes.byref(value))
        return value.value

    def device(self, index: int) -> tuple[str, tuple[int, int], int]:
        handle = ctypes.c_int()
        self.call("cuDeviceGet", ctypes.byref(handle), index)
        buffer = ctypes.create_string_buffer(256)
        self.call("cuDeviceGetName", buffer, 256, handle)
        major, minor = ctypes.c_int(), ctypes.c_int()
        for value, attribute in (
            (major, _CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR),
            (minor, _CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR),
        ):
            self.call("cuDeviceGetAttribute", ctypes.byref(value), attribute, handle)
        memory = ctypes.c_size_t()
        self.call("cuDeviceTotalMem_v2", ctypes.byref(memory), handle)
        return buffer.value.decode(errors="replace"), (major.value, minor.value), memory.value


def cuda_driver() -> _CudaDriver:
    """The CUDA driver library, initialised.

    Raises:
        BackendError: no driver library, or ``cuInit`` fails (e.g.
            ``CUDA_ERROR_NO_DEVICE``); the message names the error.
    """
    driver = _CudaDriver()
    driver.init()
    return driver


def probe_device(index: int = 0, *, with_tensorrt: bool = True) -> DeviceInfo:
    """Describes CUDA device ``index`` without creating a CUDA context.

    Note that the probe initialises the CUDA driver in this process (``cuInit``),
    after which a forked child process cannot use CUDA.

    Args:
        index: the CUDA device ordinal.
        with_tensorrt: also import tensorrt for its version (None when it is absent).

    Raises:
        BackendError: no NVIDIA driver or GPU, or no device ``index``.
    """
    driver = cuda_driver()
    count = driver.device_count()
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < count:
        raise BackendError(f"CUDA device {index!r} does not exist: this machine has {count} GPU(s)")
    name, capability, memory = driver.device(index)
    return DeviceInfo(
        name=name,
        compute_capability=capability,
        trt_version=tensorrt_version() if with_tensorrt else None,
        index=index,
        total_memory=memory,
    )


def tensorrt_version() -> str | None:
    """The installed TensorRT's ``__version__``, None when it cannot be imported."""
    if importlib.util.find_spec("tensorrt") is None:
        return None
    try:
        module = importlib.import_module("tensorrt")
    except (ImportError, OSError):  # OSError: its shared libraries (libnvinfer) fail to load
        return None
    return str(getattr(module, "__version__", "")) or None


def tensorrt_available() -> bool:
    """True when tensorrt and pycuda are installed (found without importing them)."""
    return all(importlib.util.find_spec(name) is not None for name in ("tensorrt", "pycuda"))


# -- which engine ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class EngineChoice:
    """What to do about a bundle's engine on one device (see :func:`choose_engine`).

    Attributes:
        action: ``"use"`` the engine ``record``, or ``"build"`` one from the bundle's ONNX graph.
        record: the engine used, or (for ``build``) the one it replaces, if any.
        device: the device the choice was made for.
        precision: the graph precision.
        dla_core: the DLA core (None: the GPU).
        found: one sentence on what the bundle has for this device.
        plan: for ``build``: how the engine will be built (None for ``use``).
        stage: ``model`` (the engine of the bundle's graph of ``precision``) or ``crf``
            (the engine of its separate CRF graph).
    """

    action: Literal["use", "build"]
    record: EngineRecord | None
    device: DeviceInfo
    precision: str
    dla_core: int | None
    found: str
    plan: str | None = None
    stage: str = "model"

    @property
    def reason(self) -> str:
        """One sentence for logs and ``edgeseg doctor``."""
        return f"{self.found}; {self.plan}" if self.plan else self.found


def _mismatch(record: EngineRecord, device: DeviceInfo, manifest: Manifest) -> list[str]:
    """What makes ``record`` unusable on ``device`` (empty: usable)."""
    problems = []
    if record.gpu != device.gpu:
        problems.append(f"GPU {record.gpu} (this one is {device.gpu})")
    if record.sm != device.sm:
        problems.append(f"compute capability {record.sm} (this one is {device.sm})")
    if record.trt_version != device.trt_version:
        problems.append(
            f"TensorRT {record.trt_version} (this one has {device.trt_version or 'no TensorRT'})"
        )
    graph = manifest.files.get(record.graph)
    if graph is None or graph.sha256 != record.graph_sha256:
        problems.append(f"graph {record.graph} as it was before it changed (stale)")
    return problems


def choose_engine(
    manifest: Manifest,
    device: DeviceInfo,
    precision: str,
    *,
    dla_core: int | None = None,
    where: str = "the bundle",
    stage: str = "model",
) -> EngineChoice:
    """Decides whether the bundle's engine for ``precision`` can run on ``device``.

    A pure function of the manifest and the device. An engine is used only
    when it was built for the same GPU (sanitized name), compute capability
    and exact TensorRT version, from the graph the bundle holds now, for the
    same DLA core (None: the GPU). Anything else is rebuilt from the bundle's
    ONNX graph when TensorRT is present (``device.trt_version``); an engine is
    never silently used on another device.

    Args:
        manifest: the bundle's manifest (its ``engines``).
        device: where the engine would run.
        precision: the graph precision wanted (``fp32``, ``fp16``, ``int8``); for
            ``stage="crf"`` the CRF graph's, :data:`CRF_PRECISION`.
        dla_core: the DLA core wanted, None for the GPU (always None for ``crf``).
        where: the bundle, for messages.
        stage: ``model`` (an engine of the bundle's ``graphs``) or ``crf`` (the
            engine of its separate CRF graph); only records of that stage are considered.

    Returns:
        ``use`` with the matching record, or ``build`` (with the record it replaces, if any).

    Raises:
        EngineMismatchError: nothing usable and no TensorRT here to build with; the
            message names the engine's and this machine's GPU and TensorRT versions.
        ConfigError: ``stage="crf"`` for a bundle without a separate CRF graph, or with
            another precision than :data:`CRF_PRECISION` or a DLA core.
    """
    if stage == "crf":
        crf = manifest.crf
        if crf is None or crf.mode != "separate" or crf.graph is None:
            raise ConfigError(f"{where} has no separate CRF graph to build an engine of")
        if precision != CRF_PRECISION or dla_core is not None:
            raise ConfigError(
                f"the CRF graph {crf.graph} is {CRF_PRECISION} and its engine runs on the GPU; "
                f"asked for a {precision} engine"
                + (f" on DLA core {dla_core}" if dla_core is not None else "")
            )
        target, source = "CRF engine", str(crf.graph)
    elif stage == "model":
        target = f"{precision} engine" + (
            f" for DLA core {dla_core}" if dla_core is not None else ""
        )
        source = str(manifest.graphs.get(precision))
    else:
        raise ConfigError(f"an engine's stage is model or crf, got {stage!r}")
    closest: EngineRecord | None = None
    closest_problems: list[str] = []
    for record in manifest.engines:
        if record.stage != stage or record.precision != precision or record.dla_core != dla_core:
            continue
        problems = _mismatch(record, device, manifest)
        if not problems:
            found = f"{record.file} was built for this {device.describe()}"
            return EngineChoice("use", record, device, precision, dla_core, found, stage=stage)
        if closest is None or len(problems) < len(closest_problems):
            closest, closest_problems = record, problems
    if closest is not None:
        found = (
            f"{where}'s {target} {closest.file} was built for {closest.gpu} {closest.sm} with "
            f"TensorRT {closest.trt_version}, not for this {device.describe()}: other "
            + "; ".join(closest_problems)
        )
    else:
        found = f"{where} has no {target}"
    if not device.trt_version:
        raise EngineMismatchError(
            f"{found}; TensorRT is not installed here to build one ({TRT_HINT})"
        )
    plan = f"building one from {source} with TensorRT {device.trt_version}"
    return EngineChoice("build", closest, device, precision, dla_core, found, plan, stage)


def choose_engines(
    manifest: Manifest,
    device: DeviceInfo,
    precision: str,
    *,
    dla_core: int | None = None,
    where: str = "the bundle",
    crf: bool = False,
) -> tuple[EngineChoice, EngineChoice | None]:
    """The model's engine and (``crf``) the separate CRF graph's engine, for one device.

    Both choices are made with :func:`choose_engine` for the same
    :class:`DeviceInfo` (GPU, compute capability, exact TensorRT version), so a
    model engine is never paired with a CRF engine of another device or
    TensorRT. The CRF engine is the CRF graph's own (:data:`CRF_PRECISION`, on the
    GPU): one per device and TensorRT, shared by the model's FP32, FP16 and INT8
    engines and by a model engine on a DLA core.

    Args:
        crf: also choose the CRF's engine; ignored (None) when the bundle's CRF is
            not a separate graph (fused into the model's, or absent).

    Returns:
        (the model's choice, the CRF's choice or None).

    Raises:
        EngineMismatchError: either engine is unusable and there is no TensorRT to build it.
    """
    model = choose_engine(manifest, device, precision, dla_core=dla_core, where=where)
    info = manifest.crf
    if not crf or info is None or info.mode != "separate" or info.graph is None:
        return model, None
    return model, choose_engine(manifest, device, CRF_PRECISION, where=where, stage="crf")


# -- using or building the chosen engine ----------------------------------------------------------


class EngineBuilder(Protocol):
    """Builds the engine an :class:`EngineChoice` asks for and writes it into the bundle.

    Called with the loaded bundle and the choice (its device, precision, DLA
    core, stage, and the record it replaces, whose settings a rebuild keeps);
    builds that one engine (the model's, or for ``stage="crf"`` the separate CRF
    graph's) and returns the rewritten bundle and the new engine's record.
    """

    def __call__(self, bundle: Bundle, choice: EngineChoice) -> tuple[Bundle, EngineRecord]: ...


@dataclass(frozen=True)
class ResolvedEngine:
    """An engine ready to load: its file, the plugin libraries it needs, and its record."""

    bundle: Bundle
    record: EngineRecord
    path: Path
    plugins: tuple[Path, ...]
    built: bool


def bundle_writable(bundle: Bundle) -> bool:
    """Whether a new engine can be written into the bundle (its folder and the one above)."""
    return os.access(bundle.path, os.W_OK) and os.access(bundle.path.parent, os.W_OK)


def resolve_engine(
    bundle: Bundle, choice: EngineChoice, builder: EngineBuilder | None
) -> ResolvedEngine:
    """The engine file a choice names, built first (with ``builder``) when it says ``build``.

    Raises:
        EngineMismatchError: the choice is ``build`` and no builder was given.
        BackendError: the bundle cannot be written to add the engine.
    """
    built = choice.action == "build"
    if built:
        if builder is None:
            raise EngineMismatchError(
                f"{choice.found}; engine building is off (engine_builder=None)"
            )
        if not bundle_writable(bundle):
            raise BackendError(
                f"{choice.found}, but {bundle.path} cannot be written to add one; build it where the "
                f"bundle is writable: edgeseg engine {bundle.path}"
            )
        try:
            bundle, record = builder(bundle, choice)
        except OSError as err:
            raise BackendError(
                f"cannot write a new engine into {bundle.path} ({err.strerror or err}); build it "
                f"where the bundle is writable: edgeseg engine {bundle.path}"
            ) from err
    else:
        assert choice.record is not None  # "use" always names its record
        record = choice.record
    return ResolvedEngine(
        bundle=bundle,
        record=record,
        path=bundle.file(record.file),
        plugins=tuple(bundle.file(name) for name in record.plugins),
        built=built,
    )


__all__ = [
    "CRF_PRECISION",
    "CUDA_PYTHON_HINT",
    "MIN_TRT_VERSION",
    "PLUGIN_LIBRARY",
    "PLUGIN_OP",
    "PYCUDA_HINT",
    "TRT_HINT",
    "DeviceInfo",
    "EngineBuilder",
    "EngineChoice",
    "EngineMismatchError",
    "ResolvedEngine",
    "bundle_writable",
    "choose_engine",
    "choose_engines",
    "cuda_driver",
    "engine_file_name",
    "inspector_file_name",
    "parse_version",
    "probe_device",
    "resolve_engine",
    "sanitize_gpu_name",
    "tensorrt_available",
    "tensorrt_version",
    "trt_short_version",
]
