"""Imports of build-time modules, with an error that names the extra to install."""

from __future__ import annotations

from types import ModuleType

from edgeseg.errors import MissingDependencyError


def import_build_module() -> ModuleType:
    """``converters.build``, or MissingDependencyError naming ``edgeseg[build]``."""
    try:
        import onnx  # noqa: F401
        import torch  # noqa: F401
    except ImportError as err:
        raise MissingDependencyError(
            f"building bundles needs torch and onnx ({err.name} is missing): "
            "pip install 'edgeseg[build]'"
        ) from err
    from converters import build

    return build
