"""Runtime backends behind one small interface (see ``base.Backend``).

Backends are imported on demand so that only the chosen one's dependencies load.
"""

from __future__ import annotations

import os
from typing import Any

from edgeseg.errors import BackendError
from edgeseg.runtime.backends.base import Backend

BACKENDS = ("onnxruntime",)


def available_backends() -> list[str]:
    """Names of the backends whose dependencies import on this machine."""
    from edgeseg.runtime.backends import onnxruntime as ort_backend

    names = []
    if ort_backend.available():
        names.append("onnxruntime")
    return names


def resolve_backend(name: str) -> str:
    """Maps ``"auto"`` to the best available backend and checks explicit names."""
    if name == "auto":
        found = available_backends()
        if not found:
            raise BackendError(
                "no runtime backend is available: pip install 'onnxruntime>=1.31'"
            )
        return found[0]
    if name not in BACKENDS:
        raise BackendError(f"unknown backend {name!r}; valid: auto, {', '.join(BACKENDS)}")
    return name


def create_backend(name: str, model_path: str | os.PathLike[str], **options: Any) -> Backend:
    """Creates backend ``name`` (after :func:`resolve_backend`) for one graph."""
    name = resolve_backend(name)
    if name == "onnxruntime":
        from edgeseg.runtime.backends.onnxruntime import OnnxRuntimeBackend

        return OnnxRuntimeBackend(model_path, **options)
    raise BackendError(f"backend {name!r} is not implemented")  # pragma: no cover


__all__ = ["BACKENDS", "Backend", "available_backends", "create_backend", "resolve_backend"]
