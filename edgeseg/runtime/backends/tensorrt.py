"""TensorRT backend: a serialized engine run with pycuda memory, streams and events.

Importing this module loads NumPy only; TensorRT and pycuda are imported when
a backend is created (``import edgeseg`` stays thin). The module also holds
the deploy-time logic around engines that needs neither (tested on the CPU):

- :class:`DeviceInfo` and :func:`probe_device`: the GPU this process would
  run on, read through the CUDA driver library with ``ctypes`` (no CUDA
  context is created, nothing is imported);
- :func:`engine_file_name`: ``engine-<gpu>-<sm>-trt<version>-<precision>.plan``;
- :func:`choose_engine`: whether a bundle's engine can be used on a device,
  or must be rebuilt from the bundle's ONNX graph (:class:`EngineChoice`), or
  cannot be (:class:`EngineMismatchError`, naming both versions).

Runtime design (after TensorRT's ``samples/python/common_runtime.py``):
tensors are addressed by name; device buffers and page-locked host buffers
are allocated once (and again only when a dynamic input grows past them),
bound with ``set_tensor_address``, and every inference is
host-to-device copies, ``execute_async_v3`` and device-to-host copies on one
stream, timed with CUDA events. The engine runs in the device's *primary*
CUDA context, pushed for each call and popped after it, so a backend made in
one thread can run in another (the streaming pipeline does that) and the
CUDA runtime that TensorRT uses sees the same context.

CUDA graphs: pycuda (2025.1) has no stream capture, so ``cuda_graph=True``
captures ``execute_async_v3`` with cuda-python's runtime API
(``cuda.bindings.runtime``, or ``cuda.cudart`` in cuda-python < 12.6),
imported only then: ``pip install cuda-python``.
"""

from __future__ import annotations

import ctypes
import importlib
import importlib.util
import logging
import os
import re
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgeseg.errors import BackendError, ConfigError, MissingDependencyError
from edgeseg.runtime.backends.base import Backend

if TYPE_CHECKING:  # pragma: no cover
    import tensorrt as trt

    from edgeseg.bundle import Bundle, Manifest

log = logging.getLogger(__name__)

PLUGIN_OP = "EdgesegDeformConv"  # == converters.plugins.PLUGIN_OP (a test checks)
PLUGIN_LIBRARY = "libedgeseg_plugins.so"  # == converters.plugins.LIBRARY_NAME
MIN_TRT_VERSION = (10, 3)
# what TensorRTBackend takes besides the engine path; Segmenter(backend="auto") only picks
# TensorRT when every option it was given is one of these
BACKEND_OPTIONS = frozenset({"plugins", "cuda_graph", "device", "dla_core"})

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

# TensorRT DataType names -> NumPy dtypes (names, not enum objects: stable across versions)
_NUMPY_DTYPES: dict[str, np.dtype[Any]] = {
    "FLOAT": np.dtype(np.float32),
    "HALF": np.dtype(np.float16),
    "INT8": np.dtype(np.int8),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
}


class EngineMismatchError(BackendError):
    """A bundle's engine was built for another GPU or TensorRT and cannot be rebuilt here."""


# -- device -------------------------------------------------------------------------------------


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
    parts = version.split(".")
    return ".".join(parts[:3])


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


def engine_file_name(device: DeviceInfo, precision: str, dla_core: int | None = None) -> str:
    """``engine-<gpu>-<sm>-trt<major.minor.patch>-<precision>[-dla<N>].plan``.

    The precision is part of the name because a bundle holds up to three
    graphs (FP32, FP16, INT8), each of which may get its engine on the same device.

    Raises:
        ConfigError: the device has no TensorRT version.
    """
    if not device.trt_version:
        raise ConfigError(f"an engine name needs a TensorRT version; {device.name} has none")
    name = f"engine-{device.gpu}-{device.sm}-trt{trt_short_version(device.trt_version)}-{precision}"
    if dla_core is not None:
        name += f"-dla{dla_core}"
    return name + ".plan"


def inspector_file_name(engine_file: str) -> str:
    """The layer-information JSON beside an engine: ``engine-....json``."""
    return (
        engine_file[: -len(".plan")] + ".json"
        if engine_file.endswith(".plan")
        else engine_file + ".json"
    )


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
        self.call(
            "cuDeviceGetAttribute",
            ctypes.byref(major),
            _CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR,
            handle,
        )
        self.call(
            "cuDeviceGetAttribute",
            ctypes.byref(minor),
            _CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR,
            handle,
        )
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
    if not 0 <= index < count:
        raise BackendError(f"CUDA device {index} does not exist: this machine has {count} GPU(s)")
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


# -- which engine ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class EngineChoice:
    """What to do about a bundle's engine on one device (see :func:`choose_engine`).

    Attributes:
        action: ``"use"`` the engine ``entry``, or ``"build"`` one from the bundle's ONNX graph.
        entry: the manifest's engine entry used, or (for ``build``) the one it replaces, if any.
        reason: one sentence for logs and ``edgeseg doctor``.
    """

    action: str
    entry: dict[str, Any] | None
    reason: str


def _engine_mismatch(entry: Mapping[str, Any], device: DeviceInfo, manifest: Manifest) -> list[str]:
    """What makes ``entry`` unusable on ``device`` (empty: usable)."""
    problems = []
    if entry.get("gpu") != device.gpu:
        problems.append(f"GPU {entry.get('gpu')} (this one is {device.gpu})")
    if entry.get("sm") != device.sm:
        problems.append(f"compute capability {entry.get('sm')} (this one is {device.sm})")
    if entry.get("trt_version") != device.trt_version:
        problems.append(
            f"TensorRT {entry.get('trt_version')} (this one has "
            f"{device.trt_version or 'no TensorRT'})"
        )
    graph = entry.get("graph")
    info = manifest.files.get(str(graph)) if graph is not None else None
    if graph is not None and (info is None or info.get("sha256") != entry.get("graph_sha256")):
        problems.append(f"graph {graph} as it was before it changed (stale)")
    return problems


def choose_engine(
    manifest: Manifest,
    device: DeviceInfo,
    precision: str,
    *,
    dla_core: int | None = None,
    where: str = "the bundle",
) -> EngineChoice:
    """Decides whether the bundle's engine for ``precision`` can run on ``device``.

    A pure function of the manifest and the device (tested on the CPU). An
    engine is used only when it was built for the same GPU (sanitized name),
    compute capability and exact TensorRT version, from the graph the bundle
    holds now, for the same DLA core (None: the GPU). Anything else is rebuilt
    from the bundle's ONNX graph when TensorRT is present (``device.trt_version``);
    an engine is never silently used on another device.

    Args:
        manifest: the bundle's manifest (its ``engines`` list).
        device: where the engine would run.
        precision: the graph precision wanted (``fp32``, ``fp16``, ``int8``).
        dla_core: the DLA core wanted, None for the GPU.
        where: the bundle, for messages.

    Returns:
        ``use`` with the matching entry, or ``build`` (with the entry it replaces, if any).

    Raises:
        EngineMismatchError: nothing usable and no TensorRT here to build with; the
            message names the engine's and this machine's GPU and TensorRT versions.
    """
    entries = [
        e
        for e in manifest.engines
        if e.get("precision") == precision and e.get("dla_core") == dla_core
    ]
    target = f"{precision} engine" + (f" for DLA core {dla_core}" if dla_core is not None else "")
    closest: dict[str, Any] | None = None
    closest_problems: list[str] = []
    for entry in entries:
        problems = _engine_mismatch(entry, device, manifest)
        if not problems:
            return EngineChoice(
                "use",
                entry,
                f"{entry.get('file')} was built for this {device.describe()}",
            )
        if closest is None or len(problems) < len(closest_problems):
            closest, closest_problems = entry, problems
    if closest is not None:
        what = (
            f"{where}'s {target} {closest.get('file')} was built for {closest.get('gpu')} "
            f"{closest.get('sm')} with TensorRT {closest.get('trt_version')}, not for this "
            f"{device.describe()}: other " + "; ".join(closest_problems)
        )
    else:
        what = f"{where} has no {target}"
    if not device.trt_version:
        raise EngineMismatchError(
            f"{what}; TensorRT is not installed here to build one ({TRT_HINT})"
        )
    graph = manifest.graphs.get(precision)
    return EngineChoice(
        "build", closest, f"{what}; building one from {graph} with TensorRT {device.trt_version}"
    )


def describe_engine(entry: Mapping[str, Any]) -> str:
    """One line about a manifest's engine entry (for ``edgeseg info`` and ``build``)."""
    profile = entry.get("profile") or {}
    sides = [profile.get(k) for k in ("min", "opt", "max")]
    shapes = (
        f"{sides[1][0]}x{sides[1][1]}"
        if sides[0] == sides[1] == sides[2] and sides[1]
        else " / ".join(f"{s[0]}x{s[1]}" for s in sides if s) + " (min/opt/max)"
    )
    where = f"DLA core {entry['dla_core']}" if entry.get("dla_core") is not None else "GPU"
    return (
        f"{entry.get('file')}: {entry.get('precision')} on "
        f"{entry.get('gpu_name', entry.get('gpu'))} "
        f"{entry.get('sm')} ({where}), TensorRT {entry.get('trt_version')}, {shapes}"
        + (f", DeformConv {entry['deform_conv']}" if entry.get("deform_conv") else "")
        + f", built {entry.get('built_at')}"
    )


# -- imports --------------------------------------------------------------------------------------


def available() -> bool:
    """True when tensorrt and pycuda are installed (found without importing them)."""
    return (
        importlib.util.find_spec("tensorrt") is not None
        and importlib.util.find_spec("pycuda") is not None
    )


def require_tensorrt() -> None:
    """Imports tensorrt and checks its version.

    Raises:
        MissingDependencyError: tensorrt is not installed (the message says how to get it).
        BackendError: it is older than 10.3.
    """
    try:
        import tensorrt as trt
    except (ImportError, OSError) as err:  # OSError: libnvinfer fails to load
        raise MissingDependencyError(
            f"TensorRT's Python package is not installed (import tensorrt: {err}); {TRT_HINT}"
        ) from err
    version = str(trt.__version__)
    if parse_version(version)[:2] < MIN_TRT_VERSION:
        raise BackendError(
            f"edgeseg needs TensorRT >= {'.'.join(map(str, MIN_TRT_VERSION))}, this is TensorRT "
            f"{version}"
        )


def import_pycuda() -> Any:
    """``pycuda.driver`` (pycuda ships no types: Any).

    Raises:
        MissingDependencyError: pycuda is not installed.
    """
    try:
        import pycuda.driver as cuda
    except (ImportError, OSError) as err:  # OSError: libcuda fails to load
        raise MissingDependencyError(f"the tensorrt backend needs pycuda: {PYCUDA_HINT}") from err
    return cuda


def import_cudart() -> Any:
    """cuda-python's runtime module (``cuda.bindings.runtime``; ``cuda.cudart`` before 12.6).

    Raises:
        MissingDependencyError: cuda-python is not installed.
    """
    for name in ("cuda.bindings.runtime", "cuda.cudart"):
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    raise MissingDependencyError(
        f"CUDA graphs (cuda_graph=True) need cuda-python: {CUDA_PYTHON_HINT}"
    )


_SHARED: dict[str, Any] = {}  # the process's TensorRT logger, registries initialised, libraries


def make_logger() -> trt.ILogger:
    """The process's TensorRT logger: it writes to Python logging and keeps the last errors.

    TensorRT's messages go to the ``edgeseg.tensorrt`` logger: errors as
    errors, warnings as warnings, info as debug. One logger serves every
    builder and runtime (TensorRT warns when they get different ones); its
    kept errors (a deque of 20, see :func:`logged_errors`) are cleared on each call
    so that a failure names its own.
    """
    require_tensorrt()
    import tensorrt as trt

    logger: trt.ILogger | None = _SHARED.get("logger")
    if logger is None:
        target = logging.getLogger("edgeseg.tensorrt")

        class _Logger(trt.ILogger):
            def __init__(self) -> None:
                trt.ILogger.__init__(self)
                self.errors: deque[str] = deque(maxlen=20)

            def log(self, severity: trt.ILogger.Severity, msg: str) -> None:
                level = int(severity)  # INTERNAL_ERROR 0, ERROR 1, WARNING 2, INFO 3, VERBOSE 4
                if level <= 1:
                    self.errors.append(msg)
                    target.error("TensorRT: %s", msg)
                elif level == 2:
                    target.warning("TensorRT: %s", msg)
                elif level == 3:
                    target.debug("TensorRT: %s", msg)

        logger = _Logger()
        _SHARED["logger"] = logger
    errors = getattr(logger, "errors", None)
    if errors is not None:
        errors.clear()
    return logger


def logged_errors(logger: trt.ILogger) -> str:
    """The errors a :func:`make_logger` logger kept, as one clause (empty when none)."""
    errors = list(getattr(logger, "errors", ()))
    return ("; TensorRT said: " + " | ".join(errors[-3:])) if errors else ""


def load_plugin_libraries(
    logger: trt.ILogger,
    libraries: Sequence[str | os.PathLike[str]] = (),
) -> None:
    """Registers TensorRT's built-in plugins and loads plugin libraries into the registry.

    ``init_libnvinfer_plugins`` (once per process) registers the built-in
    ``ModulatedDeformConv2d`` that the ONNX parser maps ``DeformConv`` to.
    Each library is loaded once per process with
    ``IPluginRegistry.load_library`` (libraries exporting ``getCreators``, as
    edgeseg's does); when that fails it is opened with ``ctypes`` (libraries
    that register themselves when loaded). A library named
    :data:`PLUGIN_LIBRARY` must then have registered :data:`PLUGIN_OP`.

    Raises:
        BackendError: a library is missing or cannot be loaded, or registers no
            ``EdgesegDeformConv``; the message names the file.
    """
    require_tensorrt()
    import tensorrt as trt

    if not _SHARED.get("builtin_plugins"):
        trt.init_libnvinfer_plugins(logger, "")
        _SHARED["builtin_plugins"] = True
    registry = trt.get_plugin_registry()
    loaded: dict[Path, Any] = _SHARED.setdefault("libraries", {})
    for library in libraries:
        path = Path(library).resolve()
        if path in loaded:
            continue
        if not path.is_file():
            raise BackendError(f"plugin library {path} does not exist")
        handle = None
        try:
            handle = registry.load_library(str(path))
        except (RuntimeError, TypeError) as err:
            log.debug("load_library(%s) failed (%s); opening it with ctypes", path, err)
        if handle is None:
            try:
                handle = ctypes.CDLL(str(path), mode=ctypes.RTLD_GLOBAL)
            except OSError as err:
                raise BackendError(f"cannot load plugin library {path}: {err}") from err
        if path.name == PLUGIN_LIBRARY:
            names = {str(getattr(c, "name", "")) for c in registry.all_creators}
            if PLUGIN_OP not in names:
                raise BackendError(
                    f"plugin library {path} loaded but registered no {PLUGIN_OP} plugin "
                    f"(TensorRT {trt.__version__}); rebuild it against this TensorRT with "
                    f"`edgeseg plugins build`{logged_errors(logger)}"
                )
        loaded[path] = handle  # keeps the library loaded for the process's lifetime
        log.info("loaded TensorRT plugin library %s", path)


# -- the backend ----------------------------------------------------------------------------------


@dataclass
class _Tensor:
    """One I/O tensor of the engine and the buffers bound to it."""

    name: str
    is_input: bool
    dtype: np.dtype[Any]
    engine_shape: tuple[int, ...]
    shape: tuple[int, ...] = ()
    capacity: int = 0  # bytes of the buffers below
    device: Any = None  # pycuda DeviceAllocation
    host: np.ndarray | None = None  # page-locked, flat uint8 of `capacity` bytes

    @property
    def dynamic(self) -> bool:
        return any(d < 0 for d in self.engine_shape)

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize

    def host_bytes(self) -> np.ndarray:
        """The page-locked bytes of the current shape (the buffers are allocated first)."""
        if self.host is None:
            raise BackendError(f"tensor {self.name!r} has no buffers yet")
        return self.host[: self.nbytes]

    def host_view(self) -> np.ndarray:
        return self.host_bytes().view(self.dtype).reshape(self.shape)


@dataclass
class _CudaGraph:
    """A captured ``execute_async_v3`` (cuda-python handles)."""

    cudart: Any
    graph: Any
    exec: Any
    destroyed: bool = field(default=False)

    def destroy(self) -> None:
        if not self.destroyed:
            self.destroyed = True
            self.cudart.cudaGraphExecDestroy(self.exec)
            self.cudart.cudaGraphDestroy(self.graph)


def _cudart_check(cudart: Any, result: Any, what: str) -> Any:
    """Raises BackendError unless a cuda-python call's status is cudaSuccess; returns its value."""
    status, *values = result if isinstance(result, tuple) else (result,)
    if int(status) != 0:
        _, name = cudart.cudaGetErrorName(status)
        raise BackendError(f"{what} failed: {name.decode() if isinstance(name, bytes) else name}")
    return values[0] if values else None


class TensorRTBackend(Backend):
    """Runs a serialized TensorRT engine (``.plan``) on one GPU.

    Args:
        engine_path: the engine file (in a bundle:
            ``engine-<gpu>-<sm>-trt<version>-<precision>.plan``).
        plugins: plugin libraries to load before deserialising (only from the
            bundle or a path the user names).
        cuda_graph: capture the engine's launch in a CUDA graph after the first
            inference and replay it (lower launch overhead). Needs an engine with
            static shapes and cuda-python; if capture fails, the backend logs a
            warning and runs without.
        device: the CUDA device ordinal.
        dla_core: the DLA core an engine built for DLA runs on (TensorRT's
            ``Runtime.DLA_core``, set before deserialising); None for GPU engines.

    Raises:
        MissingDependencyError: tensorrt, pycuda (or, for ``cuda_graph``, cuda-python) missing.
        BackendError: the file cannot be read or deserialised (e.g. built by
            another TensorRT version), a plugin library cannot be loaded, no such device.
        ConfigError: ``cuda_graph`` with an engine whose shapes are dynamic.
    """

    name = "tensorrt"

    def __init__(
        self,
        engine_path: str | os.PathLike[str],
        *,
        plugins: Sequence[str | os.PathLike[str]] = (),
        cuda_graph: bool = False,
        device: int = 0,
        dla_core: int | None = None,
    ) -> None:
        self._closed = True  # until everything below exists; close() then frees what does
        self._path = Path(engine_path)
        require_tensorrt()
        import tensorrt as trt

        cuda = import_pycuda()
        self._cuda = cuda
        self._cudart: Any = import_cudart() if cuda_graph else None
        try:
            data = self._path.read_bytes()
        except OSError as err:
            raise BackendError(f"cannot read engine {self._path}: {err.strerror or err}") from err
        cuda.init()
        count = int(cuda.Device.count())
        if isinstance(device, bool) or not isinstance(device, int) or not 0 <= device < count:
            raise BackendError(
                f"CUDA device {device!r} does not exist: this machine has {count} GPU(s)"
            )
        gpu = cuda.Device(device)
        self._device_name = str(gpu.name())
        self._ctx: Any = gpu.retain_primary_context()
        self._trt_version = str(trt.__version__)
        self._tensors: dict[str, _Tensor] = {}
        self._graph: _CudaGraph | None = None
        self._graph_wanted = bool(cuda_graph)
        self._graph_error: str | None = None
        self._timings: dict[str, float] = {}
        self._runs = 0
        self._ctx.push()
        try:
            self._logger = make_logger()
            load_plugin_libraries(self._logger, plugins)
            self._runtime = trt.Runtime(self._logger)
            if dla_core is not None:
                self._runtime.DLA_core = int(dla_core)
            engine = self._runtime.deserialize_cuda_engine(data)
            if engine is None:
                raise BackendError(
                    f"TensorRT {self._trt_version} cannot deserialize {self._path} (built by "
                    "another TensorRT version or for another GPU, or a plugin it needs is not "
                    f"loaded){logged_errors(self._logger)}"
                )
            self._engine: trt.ICudaEngine = engine
            self._context: trt.IExecutionContext = engine.create_execution_context()
            self._stream: Any = cuda.Stream()
            self._events: list[Any] = [cuda.Event() for _ in range(4)]
            for i in range(engine.num_io_tensors):
                name = engine.get_tensor_name(i)
                dtype_name = engine.get_tensor_dtype(name).name
                if dtype_name not in _NUMPY_DTYPES:
                    raise BackendError(
                        f"{self._path.name}: tensor {name!r} has TensorRT type {dtype_name}, which "
                        "has no NumPy equivalent here"
                    )
                dims = engine.get_tensor_shape(name)
                shape = tuple(int(dims[d]) for d in range(len(dims)))
                tensor = _Tensor(
                    name=name,
                    is_input=engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT,
                    dtype=_NUMPY_DTYPES[dtype_name],
                    engine_shape=shape,
                )
                self._tensors[name] = tensor
                if not tensor.dynamic:  # static: allocate and bind once
                    tensor.shape = shape
                    self._reserve(tensor)
            self._inputs = [t.name for t in self._tensors.values() if t.is_input]
            self._outputs = [t.name for t in self._tensors.values() if not t.is_input]
            if cuda_graph and any(t.dynamic for t in self._tensors.values()):
                raise ConfigError(
                    f"cuda_graph=True needs an engine with static shapes; {self._path.name} has "
                    "dynamic ones (build the bundle without --dynamic, or run without CUDA graphs)"
                )
        except BaseException:
            self._release()
            self._ctx.pop()
            self._ctx.detach()
            raise
        self._ctx.pop()
        self._closed = False

    # -- properties --------------------------------------------------------------------------

    @property
    def input_names(self) -> Sequence[str]:
        return self._inputs

    @property
    def output_names(self) -> Sequence[str]:
        return self._outputs

    @property
    def description(self) -> str:
        graph = ", CUDA graph" if self._graph is not None else ""
        return f"tensorrt {self._trt_version} on {self._device_name}{graph}"

    @property
    def engine_path(self) -> Path:
        return self._path

    @property
    def last_gpu_ms(self) -> float | None:
        """GPU ms of the last inference's engine execution (CUDA events), None before the first."""
        return self._timings.get("compute")

    @property
    def last_timings(self) -> dict[str, float]:
        """GPU milliseconds of the last inference: ``h2d`` copies, ``compute``, ``d2h`` copies."""
        return dict(self._timings)

    @property
    def cuda_graph_active(self) -> bool:
        """True when inferences replay a captured CUDA graph."""
        return self._graph is not None

    @property
    def cuda_graph_error(self) -> str | None:
        """Why CUDA-graph capture was given up, if it was."""
        return self._graph_error

    def input_shape(self, name: str) -> list[int | None]:
        """The engine's shape of input ``name``; None for dynamic dimensions."""
        tensor = self._tensors.get(name)
        if tensor is None or not tensor.is_input:
            raise BackendError(f"{self._path} has no input {name!r}")
        return [d if d >= 0 else None for d in tensor.engine_shape]

    def profile_shapes(self, name: str) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
        """(min, opt, max) shapes of input ``name`` in the engine's optimisation profile 0."""
        self._require_open()
        shapes = self._engine.get_tensor_profile_shape(name, 0)
        out = [tuple(int(s[d]) for d in range(len(s))) for s in shapes]
        return out[0], out[1], out[2]

    def memory_info(self) -> tuple[int, int]:
        """(free, total) bytes of device memory (``pycuda.driver.mem_get_info``)."""
        self._require_open()
        self._ctx.push()
        try:
            free, total = self._cuda.mem_get_info()
        finally:
            self._ctx.pop()
        return int(free), int(total)

    # -- inference ---------------------------------------------------------------------------

    def infer(
        self, feeds: Mapping[str, np.ndarray], outputs: Sequence[str] | None = None
    ) -> dict[str, np.ndarray]:
        self._require_open()
        names = list(outputs) if outputs is not None else list(self._outputs)
        unknown = [n for n in names if n not in self._outputs]
        if unknown:
            raise BackendError(
                f"{self._path.name} has no output {', '.join(map(repr, unknown))}; it has "
                f"{', '.join(self._outputs)}"
            )
        missing = [n for n in self._inputs if n not in feeds]
        extra = [n for n in feeds if n not in self._inputs]
        if missing or extra:
            raise BackendError(
                f"{self._path.name} takes inputs {', '.join(self._inputs)}; "
                + (f"missing {', '.join(missing)}" if missing else f"unknown {', '.join(extra)}")
            )
        self._ctx.push()
        try:
            arrays = self._prepare(feeds)
            return self._run(arrays, names)
        finally:
            self._ctx.pop()

    def _prepare(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Checks the feeds, sets input shapes, (re)allocates and binds buffers."""
        arrays: dict[str, np.ndarray] = {}
        reshaped = False
        for name in self._inputs:
            tensor = self._tensors[name]
            array = np.ascontiguousarray(feeds[name])
            if array.dtype != tensor.dtype:
                raise BackendError(
                    f"input {name!r} of {self._path.name} is {tensor.dtype}, got {array.dtype}"
                )
            if array.ndim != len(tensor.engine_shape) or any(
                e >= 0 and e != s for e, s in zip(tensor.engine_shape, array.shape, strict=True)
            ):
                raise BackendError(
                    f"input {name!r} of {self._path.name} has shape {tensor.engine_shape} "
                    f"(-1: any size in the profile), got {array.shape}"
                )
            if tensor.dynamic and array.shape != tensor.shape:
                if not self._context.set_input_shape(name, array.shape):
                    low, _, high = self.profile_shapes(name)
                    raise BackendError(
                        f"input {name!r} shape {array.shape} is outside {self._path.name}'s "
                        f"optimisation profile {low}..{high}; rebuild the engine with a larger "
                        "--max-shape (or a smaller --min-shape)"
                    )
                tensor.shape = tuple(array.shape)
                self._reserve(tensor)
                reshaped = True
            arrays[name] = array
        if reshaped:
            for name in self._outputs:
                tensor = self._tensors[name]
                if not tensor.dynamic:
                    continue
                dims = self._context.get_tensor_shape(name)
                shape = tuple(int(dims[d]) for d in range(len(dims)))
                if any(d < 0 for d in shape):
                    raise BackendError(
                        f"output {name!r} of {self._path.name} has a data-dependent shape {shape}, "
                        "which this backend does not support"
                    )
                tensor.shape = shape
                self._reserve(tensor)
        return arrays

    def _reserve(self, tensor: _Tensor) -> None:
        """Makes the tensor's buffers hold its current shape (growing only) and binds them."""
        needed = max(tensor.nbytes, 1)
        if needed > tensor.capacity:
            if tensor.device is not None:
                tensor.device.free()
            tensor.device = None
            tensor.host = None
            tensor.device = self._cuda.mem_alloc(needed)
            tensor.host = self._cuda.pagelocked_empty(needed, np.uint8)
            tensor.capacity = needed
            if self._graph is not None:  # addresses changed: a captured graph is stale
                self._graph.destroy()
                self._graph = None
        if not self._context.set_tensor_address(tensor.name, int(tensor.device)):
            raise BackendError(f"TensorRT refused the buffer of tensor {tensor.name!r}")

    def _run(self, arrays: Mapping[str, np.ndarray], names: Sequence[str]) -> dict[str, np.ndarray]:
        cuda, stream = self._cuda, self._stream
        start, copied, computed, done = self._events
        start.record(stream)
        for name, array in arrays.items():
            tensor = self._tensors[name]
            np.copyto(tensor.host_view(), array)
            cuda.memcpy_htod_async(tensor.device, tensor.host_bytes(), stream)
        copied.record(stream)
        if self._graph is not None:
            _cudart_check(
                self._graph.cudart,
                self._graph.cudart.cudaGraphLaunch(self._graph.exec, stream.handle),
                f"launching the CUDA graph of {self._path.name}",
            )
        elif not self._context.execute_async_v3(stream.handle):
            raise BackendError(
                f"TensorRT failed to run {self._path.name}{logged_errors(self._logger)}"
            )
        computed.record(stream)
        for name in names:
            tensor = self._tensors[name]
            cuda.memcpy_dtoh_async(tensor.host_bytes(), tensor.device, stream)
        done.record(stream)
        stream.synchronize()
        self._timings = {
            "h2d": float(start.time_till(copied)),
            "compute": float(copied.time_till(computed)),
            "d2h": float(computed.time_till(done)),
        }
        # copies: the page-locked buffers are reused by the next inference
        results = {name: np.array(self._tensors[name].host_view(), copy=True) for name in names}
        self._runs += 1
        if self._graph_wanted and self._graph is None and self._graph_error is None:
            self._capture()  # after one ordinary run, which did TensorRT's lazy set-up
        return results

    def _capture(self) -> None:
        """Captures ``execute_async_v3`` into a CUDA graph; on failure, logs and runs without."""
        cudart, handle = self._cudart, self._stream.handle
        mode = cudart.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal
        graph: Any = None
        try:
            _cudart_check(
                cudart, cudart.cudaStreamBeginCapture(handle, mode), "cudaStreamBeginCapture"
            )
            try:
                launched = self._context.execute_async_v3(handle)
            finally:
                graph = _cudart_check(
                    cudart, cudart.cudaStreamEndCapture(handle), "cudaStreamEndCapture"
                )
            if not launched:
                raise BackendError(
                    f"execute_async_v3 failed during capture{logged_errors(self._logger)}"
                )
            graph_exec = _cudart_check(
                cudart, cudart.cudaGraphInstantiate(graph, 0), "cudaGraphInstantiate"
            )
        except BackendError as err:
            if graph is not None:
                cudart.cudaGraphDestroy(graph)
            self._graph_error = str(err)
            log.warning(
                "CUDA graph capture of %s failed, running without: %s", self._path.name, err
            )
            return
        self._graph = _CudaGraph(cudart, graph, graph_exec)
        log.info("captured %s in a CUDA graph", self._path.name)

    # -- lifetime ----------------------------------------------------------------------------

    def _require_open(self) -> None:
        if self._closed:
            raise BackendError(f"the tensorrt backend for {self._path} is closed")

    def _release(self) -> None:
        """Frees what exists, in the backend's context (pushed by the caller)."""
        if getattr(self, "_graph", None) is not None:
            assert self._graph is not None
            self._graph.destroy()
            self._graph = None
        for tensor in getattr(self, "_tensors", {}).values():
            if tensor.device is not None:
                tensor.device.free()
            tensor.device = None
            tensor.host = None
        for attribute in ("_context", "_engine", "_runtime", "_stream", "_events"):
            if hasattr(self, attribute):
                delattr(self, attribute)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._ctx.push()
        try:
            self._release()
        finally:
            self._ctx.pop()
            self._ctx.detach()  # gives back this backend's retain of the primary context


# -- bundles --------------------------------------------------------------------------------------


def bundle_plugins(bundle: Bundle, entry: Mapping[str, Any]) -> list[Path]:
    """The plugin libraries an engine entry needs, from the bundle."""
    return [bundle.file(str(name)) for name in entry.get("plugins", ())]


def auto_choice(
    bundle: Bundle, precision: str, options: Mapping[str, Any] | None = None
) -> tuple[bool, str]:
    """Whether ``backend="auto"`` should pick TensorRT for ``bundle`` here, and why (not).

    TensorRT is picked when tensorrt and pycuda are installed, a GPU is
    present, every backend option given is one TensorRT takes, and the bundle
    has an engine for this device or can build one.
    """
    if not available():
        return False, "tensorrt or pycuda is not installed"
    unknown = sorted(set(options or {}) - BACKEND_OPTIONS)
    if unknown:
        return False, f"options {', '.join(unknown)} are for onnxruntime"
    index = int((options or {}).get("device", 0))
    dla_core = (options or {}).get("dla_core")
    try:
        device = probe_device(index)
        choice = choose_engine(
            bundle.manifest, device, precision, dla_core=dla_core, where=str(bundle.path)
        )
    except (BackendError, ConfigError) as err:
        return False, str(err)
    if choice.action == "build" and not (
        os.access(bundle.path, os.W_OK) and os.access(bundle.path.parent, os.W_OK)
    ):
        return False, f"{choice.reason}, but {bundle.path} cannot be written"
    return True, choice.reason


def backend_for_bundle(
    bundle: Bundle,
    precision: str | None = None,
    *,
    plugins: Sequence[str | os.PathLike[str]] = (),
    cuda_graph: bool = False,
    device: int = 0,
    dla_core: int | None = None,
    rebuild: bool = True,
) -> TensorRTBackend:
    """A TensorRT backend for the bundle's engine of ``precision`` on this device.

    When the bundle has no usable engine (none, another GPU or TensorRT
    version, a changed graph), one is built from the bundle's ONNX graph with
    :func:`converters.tensorrt.add_engine` (same settings as the engine it
    replaces) and written into the bundle (atomically), which takes a while.

    Args:
        bundle: the loaded bundle.
        precision: the graph precision (default: the bundle's).
        plugins: extra plugin libraries (the bundle's own are loaded anyway).
        cuda_graph: see :class:`TensorRTBackend`.
        device: CUDA device ordinal.
        dla_core: run the bundle's engine for this DLA core (None: the GPU engine).
        rebuild: build a missing or mismatched engine (False: EngineMismatchError).

    Raises:
        EngineMismatchError: no usable engine and ``rebuild`` is False (or no TensorRT).
        BackendError: as :class:`TensorRTBackend`; or the bundle's folder cannot be
            written to add a new engine.
        MissingDependencyError: as :class:`TensorRTBackend`.
    """
    precision = precision or bundle.manifest.precision
    require_tensorrt()
    info = probe_device(device)
    choice = choose_engine(
        bundle.manifest, info, precision, dla_core=dla_core, where=str(bundle.path)
    )
    engine: Path
    needed: list[Path]
    if choice.action == "use":
        assert choice.entry is not None
        engine = bundle.file(str(choice.entry["file"]))
        needed = bundle_plugins(bundle, choice.entry)
    else:
        if not rebuild:
            raise EngineMismatchError(choice.reason.split("; building")[0] + "; rebuild=False")
        log.warning("%s (this takes a while)", choice.reason)
        engine, needed = _build_for(bundle, precision, info, choice, dla_core)
    started = time.perf_counter()
    backend = TensorRTBackend(
        engine, plugins=[*needed, *plugins], cuda_graph=cuda_graph, device=device, dla_core=dla_core
    )
    log.info("loaded %s in %.1f s", engine.name, time.perf_counter() - started)
    return backend


def _build_for(
    bundle: Bundle, precision: str, info: DeviceInfo, choice: EngineChoice, dla_core: int | None
) -> tuple[Path, list[Path]]:
    """Builds the engine a :class:`EngineChoice` asks for; returns its file and plugin libraries."""
    from converters.tensorrt import EngineConfig, add_engine

    config = (
        EngineConfig.from_entry(choice.entry) if choice.entry else EngineConfig(dla_core=dla_core)
    )
    try:
        updated = add_engine(bundle.path, precision, config, device=info)
    except OSError as err:
        raise BackendError(
            f"cannot write a new engine into {bundle.path} ({err.strerror or err}); build it "
            f"where the bundle is writable: edgeseg engine {bundle.path}"
        ) from err
    choice = choose_engine(
        updated.manifest, info, precision, dla_core=dla_core, where=str(updated.path)
    )
    assert choice.action == "use" and choice.entry is not None
    return updated.file(str(choice.entry["file"])), bundle_plugins(updated, choice.entry)
