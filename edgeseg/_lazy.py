"""The deploy-time package's only doors into build-time code, each opened lazily on use.

``edgeseg`` never imports ``converters`` or ``calibration`` at import time
(tests/test_layering.py checks it). The few things a deploy-time API needs
from build time are resolved here, in one place, and only when called:

- :func:`import_build_module`: ``edgeseg.build`` (torch, onnx);
- :func:`default_engine_builder`: the engine builder ``Segmenter`` hands the
  runtime when a bundle lacks an engine for this GPU (TensorRT; onnx only to
  rewrite deformable convolutions);
- :func:`torch_reference`: the PyTorch side of ``edgeseg.parity.compare`` and
  ``edgeseg.testing.assert_parity`` (torch).
"""

from __future__ import annotations

from types import ModuleType
from typing import TYPE_CHECKING, Any

from edgeseg.errors import MissingDependencyError

if TYPE_CHECKING:  # pragma: no cover
    from edgeseg.bundle import Bundle
    from edgeseg.engines import EngineChoice
    from edgeseg.manifest import EngineRecord, Manifest
    from edgeseg.parity import Reference


def _require_torch(what: str) -> None:
    try:
        import onnx  # noqa: F401
        import torch  # noqa: F401
    except ImportError as err:
        raise MissingDependencyError(
            f"{what} needs torch and onnx ({err.name} is missing): pip install 'edgeseg[build]'"
        ) from err


def import_build_module() -> ModuleType:
    """``converters.build``, or MissingDependencyError naming ``edgeseg[build]``."""
    _require_torch("building bundles")
    from converters import build

    return build


def default_engine_builder(bundle: Bundle, choice: EngineChoice) -> tuple[Bundle, EngineRecord]:
    """edgeseg's :class:`~edgeseg.engines.EngineBuilder`: :func:`converters.tensorrt.rebuild_engine`."""
    from converters.tensorrt import rebuild_engine

    return rebuild_engine(bundle, choice)


def torch_reference(model: Any, manifest: Manifest) -> Reference:
    """A PyTorch module as a parity reference for the bundle (see :mod:`converters.reference`)."""
    _require_torch("comparing with a PyTorch model")
    from converters.reference import TorchReference

    return TorchReference(model, manifest)
