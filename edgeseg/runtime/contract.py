"""The graph a backend loaded, checked against the manifest that describes it.

Checksums prove only that files are the ones the bundle's author listed; an
author (or a tool) can swap ``model.onnx`` for another valid graph and
recompute them. So when a :class:`~edgeseg.runtime.Segmenter` opens a bundle,
the graph as loaded must match the manifest: the ``image`` input (uint8,
(1, H, W, C) with the manifest's size and channels, or symbolic sides for a
dynamic bundle), every output the manifest names with its dtype and shape,
and the class count, read from the class dimension of ``probs``/``logits`` and
from the ``edgeseg.num_classes`` metadata that builds stamp on every graph (a
mask-only graph has no class dimension; bundles built before the stamp are
checked on what they show).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from edgeseg.errors import BundleError
from edgeseg.manifest import Manifest
from edgeseg.runtime.backends.base import Backend, TensorInfo

if TYPE_CHECKING:  # pragma: no cover
    from edgeseg.bundle import Bundle

NUM_CLASSES_KEY = "edgeseg.num_classes"  # graph metadata that builds stamp
_FLOATS = ("float32", "float16")


def check_graph(backend: Backend, manifest: Manifest, where: str) -> None:
    """Raises unless the graph ``backend`` loaded is the one ``manifest`` describes.

    Args:
        backend: the model graph's (or engine's) backend.
        manifest: the bundle's manifest.
        where: the graph or engine file, for messages.

    Raises:
        BundleError: naming the tensor, what the graph has and what the manifest says.
    """
    tensors = backend.tensors()
    if not tensors:  # a backend that cannot describe its tensors: nothing to compare
        return
    spec = manifest.input
    image = tensors.get("image")
    if image is None or not image.is_input:
        raise BundleError(
            f"{where} has no input named 'image' (inputs: "
            f"{', '.join(t.name for t in tensors.values() if t.is_input)})"
        )
    h, w = (None, None) if spec.dynamic else spec.size
    _expect(where, image, "uint8", (1, h, w, spec.channels), f"(1, H, W, {spec.channels}) uint8 image")
    outputs = {t.name: t for t in tensors.values() if not t.is_input}
    missing = [o for o in manifest.outputs if o not in outputs]
    if missing:
        raise BundleError(
            f"{where} has no output {', '.join(missing)} that the manifest lists (outputs: "
            f"{', '.join(outputs)})"
        )
    n = manifest.num_classes
    if "mask" in outputs:
        _expect(where, outputs["mask"], "uint8", (1, h, w), "(1, H, W) uint8 mask")
    for name in ("probs", "logits"):
        if name in outputs:
            _expect(where, outputs[name], _FLOATS, (1, n, h, w), f"(1, {n}, H, W) float {name}")
    stamped = backend.metadata.get(NUM_CLASSES_KEY)
    if stamped is not None and stamped != str(n):
        raise BundleError(
            f"{where} was built for {stamped} classes, but the manifest names {n} "
            f"({', '.join(manifest.classes[:4])}{', ...' if n > 4 else ''}): the graph and the "
            "manifest come from different builds"
        )


def check_bundle_graphs(bundle: Bundle) -> None:
    """Checks every graph of a bundle against its manifest, each loaded in ONNX Runtime.

    Raises:
        BundleError: a graph is not the one the manifest describes (see :func:`check_graph`).
        BackendError: ONNX Runtime cannot load a graph.
    """
    from edgeseg.runtime.backends.onnxruntime import OnnxRuntimeBackend

    for name in dict.fromkeys(bundle.manifest.graphs.values()):
        with OnnxRuntimeBackend(bundle.file(name), threads=1) as backend:
            check_graph(backend, bundle.manifest, name)


def _expect(
    where: str,
    tensor: TensorInfo,
    dtypes: str | tuple[str, ...],
    shape: tuple[int | None, ...],
    what: str,
) -> None:
    allowed = (dtypes,) if isinstance(dtypes, str) else dtypes
    fits = len(tensor.shape) == len(shape) and all(
        want is None or got is None or got == want for got, want in zip(tensor.shape, shape, strict=False)
    )
    if tensor.dtype not in allowed or not fits:
        shown = "x".join("?" if d is None else str(d) for d in tensor.shape)
        raise BundleError(
            f"{where}: {'input' if tensor.is_input else 'output'} {tensor.name!r} is {tensor.dtype} "
            f"{shown}, but the manifest describes a {what} "
            f"({'x'.join('?' if d is None else str(d) for d in shape)})"
        )


__all__ = ["NUM_CLASSES_KEY", "check_bundle_graphs", "check_graph"]
