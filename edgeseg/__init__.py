"""edgeseg: PyTorch segmentation models to deployable bundles, and a thin runtime.

``import edgeseg`` loads NumPy and the runtime only; ``edgeseg.build`` imports
torch and the converters when it is called.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from edgeseg import errors
from edgeseg.bundle import Bundle
from edgeseg.runtime import SegmentationResult, Segmenter

__version__ = "0.1.0"

if TYPE_CHECKING:  # pragma: no cover
    from pathlib import Path


def build(model: Any, out: str | Path, **kwargs: Any) -> Bundle:
    """Builds a bundle from a zoo model name or a ``torch.nn.Module``.

    A thin, lazily importing front to :func:`converters.build.build`; see it
    for every argument. Needs the ``build`` extra (torch, onnx).
    """
    from edgeseg._lazy import import_build_module

    return import_build_module().build(model, out, **kwargs)


__all__ = ["Bundle", "SegmentationResult", "Segmenter", "__version__", "build", "errors"]
