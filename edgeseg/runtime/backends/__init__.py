"""Runtime backends behind one small interface (see ``base.Backend``).

Backends are imported on demand so that only the chosen one's dependencies load:
``onnxruntime`` (any CPU, the default) and ``tensorrt`` (an engine on an
NVIDIA GPU, with pycuda).

For a bundle, the choice is made once (:func:`choose_backend`): ``"auto"``
picks TensorRT only when tensorrt and pycuda are installed, a GPU is present,
every option given is one TensorRT takes, and the bundle has an engine for
this device or can have one built (its folder is writable); otherwise ONNX
Runtime. The choice carries the engine decision
(:class:`edgeseg.engines.EngineChoice`), which :func:`open_backend` acts on
without deciding again: it uses the engine, or has the injected
:class:`~edgeseg.engines.EngineBuilder` build it first.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from edgeseg.engines import (
    PYCUDA_HINT,
    TRT_HINT,
    EngineBuilder,
    EngineChoice,
    bundle_writable,
    choose_engine,
    probe_device,
    resolve_engine,
    tensorrt_available,
)
from edgeseg.errors import BackendError, ConfigError, MissingDependencyError
from edgeseg.runtime.backends.base import Backend

if TYPE_CHECKING:  # pragma: no cover
    from edgeseg.bundle import Bundle

log = logging.getLogger(__name__)

BACKENDS = ("onnxruntime", "tensorrt")
# what TensorRTBackend takes besides the engine; backend="auto" only picks TensorRT when every
# option it was given is one of these
TENSORRT_OPTIONS = frozenset({"plugins", "cuda_graph", "device", "dla_core"})


def available_backends() -> list[str]:
    """Names of the backends whose dependencies are installed (found, not imported)."""
    from edgeseg.runtime.backends import onnxruntime as ort_backend

    names = ["onnxruntime"] if ort_backend.available() else []
    return names + (["tensorrt"] if tensorrt_available() else [])


@dataclass(frozen=True)
class BackendChoice:
    """Which backend runs a bundle here, why, and (TensorRT) which engine.

    Attributes:
        name: ``onnxruntime`` or ``tensorrt``.
        why: one sentence for logs.
        engine: for ``tensorrt``: the engine decision, made once.
    """

    name: str
    why: str
    engine: EngineChoice | None = None


def _check_name(name: str) -> None:
    if name not in ("auto", *BACKENDS):
        raise BackendError(f"unknown backend {name!r}; valid: auto, {', '.join(BACKENDS)}")


def _engine_choice(bundle: Bundle, precision: str, options: Mapping[str, Any]) -> EngineChoice:
    device = probe_device(int(options.get("device", 0)))
    return choose_engine(
        bundle.manifest, device, precision, dla_core=options.get("dla_core"), where=str(bundle.path)
    )


def choose_backend(
    name: str,
    bundle: Bundle,
    precision: str | None = None,
    options: Mapping[str, Any] | None = None,
) -> BackendChoice:
    """Decides, once, which backend runs ``bundle``'s graph of ``precision`` here.

    Args:
        name: ``auto`` or a backend name.
        bundle: the loaded bundle.
        precision: the graph's precision (default: the bundle's).
        options: the backend options the caller will pass (``auto`` keeps to a
            backend that takes them all).

    Raises:
        BackendError: an unknown name; ``tensorrt`` with no GPU, or TensorRT older than 10.3.
        MissingDependencyError: ``tensorrt`` asked for but tensorrt or pycuda is not
            installed, or no backend at all (the message says how to install them).
        EngineMismatchError: ``tensorrt`` asked for, no usable engine and no TensorRT to build one.
    """
    _check_name(name)
    precision = precision or bundle.manifest.precision
    options = options or {}
    if name in ("auto", "tensorrt") and not tensorrt_available():
        if name == "tensorrt":
            raise MissingDependencyError(
                f"the tensorrt backend needs TensorRT and pycuda. TensorRT: {TRT_HINT}. pycuda: "
                f"{PYCUDA_HINT}"
            )
        return _onnxruntime("tensorrt or pycuda is not installed")
    if name == "tensorrt":
        from edgeseg.runtime.backends.tensorrt_lib import require_tensorrt

        require_tensorrt()
        engine = _engine_choice(bundle, precision, options)
        return BackendChoice("tensorrt", engine.reason, engine)
    if name == "onnxruntime":
        return _onnxruntime("asked for")
    unknown = sorted(set(options) - TENSORRT_OPTIONS)
    if unknown:
        return _onnxruntime(f"options {', '.join(unknown)} are for onnxruntime")
    try:
        engine = _engine_choice(bundle, precision, options)
    except (BackendError, ConfigError) as err:
        return _onnxruntime(str(err))
    if engine.action == "build" and not bundle_writable(bundle):
        return _onnxruntime(f"{engine.found}, but {bundle.path} cannot be written to add one")
    log.info("backend auto: tensorrt (%s)", engine.reason)
    return BackendChoice("tensorrt", engine.reason, engine)


def _onnxruntime(why: str) -> BackendChoice:
    if "onnxruntime" not in available_backends():
        raise MissingDependencyError("no runtime backend is available: pip install 'edgeseg[cpu]'")
    log.info("backend: onnxruntime (%s)", why)
    return BackendChoice("onnxruntime", why)


def open_backend(
    choice: BackendChoice,
    bundle: Bundle,
    precision: str | None = None,
    *,
    engine_builder: EngineBuilder | None = None,
    allow_plugins: bool = False,
    **options: Any,
) -> tuple[Backend, Bundle]:
    """Opens the backend a :class:`BackendChoice` names for the bundle's graph of ``precision``.

    ``onnxruntime`` runs the ONNX graph; ``tensorrt`` runs the engine the
    choice names, built first with ``engine_builder`` when the choice says
    ``build`` (which rewrites the bundle).

    A plugin library that the bundle carries is native code that its author
    (or anyone who recomputed its checksums) chose: it is loaded only with
    ``allow_plugins=True``. Libraries named in ``plugins=[...]`` are the
    caller's own choice and always load.

    Returns:
        The backend, and the bundle (rewritten when an engine was added).

    Raises:
        EngineMismatchError: an engine must be built and ``engine_builder`` is None.
        BackendError: the engine needs the bundle's plugin library and ``allow_plugins``
            is False; or from the backend.
        MissingDependencyError: from the backend.
    """
    precision = precision or bundle.manifest.precision
    if choice.name == "tensorrt":
        assert choice.engine is not None  # choose_backend always decides the engine for tensorrt
        from edgeseg.runtime.backends.tensorrt import TensorRTBackend

        if choice.engine.action == "build":
            log.warning("%s (this takes a while)", choice.engine.reason)
        extra = list(options.pop("plugins", ()))
        record = choice.engine.record  # the engine used, or the one a build replaces
        if record is not None and record.plugins and not allow_plugins and not extra:
            raise BackendError(
                f"{record.file} needs the plugin library {', '.join(record.plugins)} that "
                f"{bundle.path} carries; loading it runs that library's code, so it is not loaded "
                "unasked: pass allow_plugins=True (--allow-plugins) if you trust this bundle, or "
                "plugins=[PATH] to a library you built (edgeseg plugins build)"
            )
        resolved = resolve_engine(bundle, choice.engine, engine_builder)
        chosen = extra if extra else list(resolved.plugins)
        backend = TensorRTBackend(resolved.path, plugins=chosen, **options)
        return backend, resolved.bundle
    graph = bundle.graph(precision)
    from edgeseg.runtime.backends.onnxruntime import check_operators

    check_operators(bundle.manifest.op_types.get(graph.name, ()), str(graph))
    return create_backend("onnxruntime", graph, **options), bundle


def create_backend(name: str, model_path: str | os.PathLike[str], **options: Any) -> Backend:
    """Creates backend ``name`` for one file: an ONNX graph (``onnxruntime``) or an engine
    (``tensorrt``, a serialized ``.plan``).

    Raises:
        BackendError: an unknown name (``auto`` needs a bundle: :func:`choose_backend`).
    """
    if name == "onnxruntime":
        from edgeseg.runtime.backends.onnxruntime import OnnxRuntimeBackend

        return OnnxRuntimeBackend(model_path, **options)
    if name == "tensorrt":
        from edgeseg.runtime.backends.tensorrt import TensorRTBackend

        return TensorRTBackend(model_path, **options)
    raise BackendError(f"unknown backend {name!r} for a file; valid: {', '.join(BACKENDS)}")


__all__ = [
    "BACKENDS",
    "TENSORRT_OPTIONS",
    "Backend",
    "BackendChoice",
    "available_backends",
    "choose_backend",
    "create_backend",
    "open_backend",
]
