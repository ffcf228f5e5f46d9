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

With ``crf=True`` and a bundle whose CRF is a separate graph, the TensorRT
choice also carries the CRF engine's decision (for the same device and
TensorRT), and :func:`open_backend` returns the model and CRF engines chained
on the GPU (:class:`~edgeseg.runtime.backends.tensorrt.TensorRTCrfChain`); on
ONNX Runtime the caller runs the CRF graph itself.
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
    choose_engines,
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
        crf_engine: for ``tensorrt`` with a separate CRF asked for: the CRF engine's
            decision, made with the model's for the same device and TensorRT.
    """

    name: str
    why: str
    engine: EngineChoice | None = None
    crf_engine: EngineChoice | None = None

    @property
    def builds(self) -> bool:
        """Whether opening it builds an engine (the model's or the CRF's) first."""
        return any(c is not None and c.action == "build" for c in (self.engine, self.crf_engine))


def _check_name(name: str) -> None:
    if name not in ("auto", *BACKENDS):
        raise BackendError(f"unknown backend {name!r}; valid: auto, {', '.join(BACKENDS)}")


def _engine_choice(
    bundle: Bundle, precision: str, options: Mapping[str, Any], crf: bool
) -> BackendChoice:
    device = probe_device(int(options.get("device", 0)))
    engine, crf_engine = choose_engines(
        bundle.manifest,
        device,
        precision,
        dla_core=options.get("dla_core"),
        where=str(bundle.path),
        crf=crf,
    )
    why = engine.reason + (f"; CRF: {crf_engine.reason}" if crf_engine is not None else "")
    return BackendChoice("tensorrt", why, engine, crf_engine)


def choose_backend(
    name: str,
    bundle: Bundle,
    precision: str | None = None,
    options: Mapping[str, Any] | None = None,
    *,
    crf: bool = False,
) -> BackendChoice:
    """Decides, once, which backend runs ``bundle``'s graph of ``precision`` here.

    Args:
        name: ``auto`` or a backend name.
        bundle: the loaded bundle.
        precision: the graph's precision (default: the bundle's).
        options: the backend options the caller will pass (``auto`` keeps to a
            backend that takes them all).
        crf: the caller runs the bundle's separate CRF stage: with TensorRT its
            engine is chosen too (``crf_engine``), and ``auto`` picks TensorRT only
            when both engines exist or can be built.

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
        return _engine_choice(bundle, precision, options, crf)
    if name == "onnxruntime":
        return _onnxruntime("asked for")
    unknown = sorted(set(options) - TENSORRT_OPTIONS)
    if unknown:
        return _onnxruntime(f"options {', '.join(unknown)} are for onnxruntime")
    try:
        choice = _engine_choice(bundle, precision, options, crf)
    except (BackendError, ConfigError) as err:
        return _onnxruntime(str(err))
    if choice.builds and not bundle_writable(bundle):
        missing = [c.found for c in (choice.engine, choice.crf_engine) if c and c.action == "build"]
        return _onnxruntime(f"{'; '.join(missing)}, but {bundle.path} cannot be written to add one")
    log.info("backend auto: tensorrt (%s)", choice.why)
    return choice


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
    ``build`` (which rewrites the bundle). When the choice carries a CRF
    engine (``choose_backend(..., crf=True)``), that engine is resolved the same
    way (built through the same ``engine_builder``, after the model's) and the
    result is a :class:`~edgeseg.runtime.backends.tensorrt.TensorRTCrfChain`:
    the model engine and the CRF engine chained on the GPU (``cuda_graph``
    then captures both in one graph).

    A plugin library that the bundle carries is native code that its author
    (or anyone who recomputed its checksums) chose: it is loaded only with
    ``allow_plugins=True``. Libraries named in ``plugins=[...]`` are the
    caller's own choice and always load.

    Returns:
        The backend, and the bundle (rewritten when an engine was added).

    Raises:
        EngineMismatchError: an engine (the model's or the CRF's) must be built and
            ``engine_builder`` is None.
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
        if choice.crf_engine is None:
            backend = TensorRTBackend(resolved.path, plugins=chosen, **options)
            return backend, resolved.bundle
        from edgeseg.runtime.backends.tensorrt import TensorRTCrfChain

        if choice.crf_engine.action == "build":
            log.warning("CRF: %s (this takes a while)", choice.crf_engine.reason)
        crf = resolve_engine(resolved.bundle, choice.crf_engine, engine_builder)
        cuda_graph = bool(options.pop("cuda_graph", False))  # the chain captures both engines
        model = TensorRTBackend(crf.bundle.file(resolved.record.file), plugins=chosen, **options)
        return TensorRTCrfChain(model, crf.path, cuda_graph=cuda_graph), crf.bundle
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
