"""TensorRT in this process: the import and its version check, the one logger, the plugin registry.

Shared by the runtime's :class:`~edgeseg.runtime.backends.tensorrt.TensorRTBackend`
and the engine builder (:mod:`converters.tensorrt`), which must hand TensorRT
the same logger and load each plugin library once per process. Importing this
module imports neither TensorRT nor pycuda; each function imports what it needs.
"""

from __future__ import annotations

import ctypes
import importlib
import logging
import os
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeseg.engines import (
    CUDA_PYTHON_HINT,
    MIN_TRT_VERSION,
    PLUGIN_LIBRARY,
    PLUGIN_OP,
    PYCUDA_HINT,
    TRT_HINT,
    parse_version,
)
from edgeseg.errors import BackendError, MissingDependencyError

if TYPE_CHECKING:  # pragma: no cover
    import tensorrt as trt

log = logging.getLogger(__name__)


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
    :data:`PLUGIN_LIBRARY` must then have registered :data:`PLUGIN_OP`; once one
    has, another copy of it (another path) is not loaded again, since
    registering the same creator twice is an error to TensorRT.

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
        if path.name == PLUGIN_LIBRARY:
            earlier = [p for p in loaded if p.name == PLUGIN_LIBRARY]
            if earlier:
                # a second copy (the bundle's, after the build loaded the build folder's) would
                # register EdgesegDeformConv again, which TensorRT logs as an ERROR: one per process
                log.info("%s is registered already (from %s); not loading %s", PLUGIN_OP, earlier[0], path)
                loaded[path] = loaded[earlier[0]]
                continue
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
