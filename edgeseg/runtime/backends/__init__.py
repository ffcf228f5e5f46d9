"""Runtime backends behind one small interface (see ``base.Backend``).

Backends are imported on demand so that only the chosen one's dependencies load:
``onnxruntime`` (any CPU, the default) and ``tensorrt`` (an engine on an
NVIDIA GPU, with pycuda). ``"auto"`` picks TensorRT for a bundle only when
tensorrt and pycuda are installed, a GPU is present and the bundle has an
engine for it or can build one; otherwise ONNX Runtime.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from edgeseg.errors import BackendError, MissingDependencyError
from edgeseg.runtime.backends.base import Backend

if TYPE_CHECKING:  # pragma: no cover
    from edgeseg.bundle import Bundle

log = logging.getLogger(__name__)

BACKENDS = ("onnxruntime", "tensorrt")


def available_backends() -> list[str]:
    """Names of the backends whose dependencies are installed (found, not imported)."""
    from edgeseg.runtime.backends import onnxruntime as ort_backend
    from edgeseg.runtime.backends import tensorrt as trt_backend

    names = []
    if ort_backend.available():
        names.append("onnxruntime")
    if trt_backend.available():
        names.append("tensorrt")
    return names


def resolve_backend(
    name: str,
    *,
    bundle: Bundle | None = None,
    precision: str | None = None,
    options: Mapping[str, Any] | None = None,
) -> str:
    """Maps ``"auto"`` to the best available backend and checks explicit names.

    Args:
        name: ``auto`` or a backend name.
        bundle: with ``auto``: the bundle to run; TensorRT is only considered for a bundle.
        precision: the bundle graph's precision (default: the bundle's).
        options: the backend options the caller will pass (``auto`` keeps to a
            backend that takes them all).

    Raises:
        BackendError: an unknown name, or no backend at all.
        MissingDependencyError: ``tensorrt`` asked for but tensorrt or pycuda is not
            installed (the message says how to install them).
    """
    if name == "auto":
        if bundle is not None:
            from edgeseg.runtime.backends import tensorrt as trt_backend

            ok, why = trt_backend.auto_choice(
                bundle, precision or bundle.manifest.precision, options
            )
            log.info("backend auto: %s (%s)", "tensorrt" if ok else "not tensorrt", why)
            if ok:
                return "tensorrt"
        if "onnxruntime" not in available_backends():
            raise BackendError("no runtime backend is available: pip install 'onnxruntime>=1.31'")
        return "onnxruntime"
    if name not in BACKENDS:
        raise BackendError(f"unknown backend {name!r}; valid: auto, {', '.join(BACKENDS)}")
    if name == "tensorrt":
        from edgeseg.runtime.backends import tensorrt as trt_backend

        if not trt_backend.available():
            raise MissingDependencyError(
                "the tensorrt backend needs TensorRT and pycuda. TensorRT: "
                f"{trt_backend.TRT_HINT}. pycuda: {trt_backend.PYCUDA_HINT}"
            )
    return name


def create_backend(name: str, model_path: str | os.PathLike[str], **options: Any) -> Backend:
    """Creates backend ``name`` (after :func:`resolve_backend`) for one graph or engine file.

    ``model_path`` is an ONNX graph for ``onnxruntime`` and a serialized engine
    (``.plan``) for ``tensorrt``.
    """
    name = resolve_backend(name)
    if name == "onnxruntime":
        from edgeseg.runtime.backends.onnxruntime import OnnxRuntimeBackend

        return OnnxRuntimeBackend(model_path, **options)
    if name == "tensorrt":
        from edgeseg.runtime.backends.tensorrt import TensorRTBackend

        return TensorRTBackend(model_path, **options)
    raise BackendError(f"backend {name!r} is not implemented")  # pragma: no cover


def create_bundle_backend(
    name: str, bundle: Bundle, precision: str | None = None, **options: Any
) -> Backend:
    """Creates backend ``name`` (resolved) for a bundle's graph of ``precision``.

    ``onnxruntime`` runs the ONNX graph; ``tensorrt`` runs the bundle's engine
    for this device, built first when the bundle has none that fits (see
    :func:`edgeseg.runtime.backends.tensorrt.backend_for_bundle`).
    """
    precision = precision or bundle.manifest.precision
    if name == "tensorrt":
        from edgeseg.runtime.backends.tensorrt import backend_for_bundle

        return backend_for_bundle(bundle, precision, **options)
    return create_backend(name, bundle.graph(precision), **options)


__all__ = [
    "BACKENDS",
    "Backend",
    "available_backends",
    "create_backend",
    "create_bundle_backend",
    "resolve_backend",
]
