"""A PyTorch module as the reference that a bundle's artefacts are compared with.

``edgeseg.parity.compare`` and ``edgeseg.testing.assert_parity`` take a
PyTorch module and reach this class through ``edgeseg._lazy.torch_reference``
(the deploy-time package never imports build-time code at import time).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from converters.crf import crf_reference
from converters.export import DeployWrapper, ExportSpec
from edgeseg.manifest import Manifest
from edgeseg.parity import Reference


class TorchReference(Reference):
    """The module through the export's own pre- and post-processing, run eagerly.

    The same uint8 batch the graph gets goes through :class:`DeployWrapper`
    (normalisation, logits, the upsampling of logits smaller than the input
    that the manifest's ``model.output`` records, argmax), so the comparison
    measures the conversion, not a different pipeline. A bundle whose CRF is
    fused into its graph has its mask after the CRF, so the reference's mask is
    the NumPy CRF's (:func:`converters.crf.crf_reference`) on PyTorch's logits.
    """

    def __init__(self, model: Any, manifest: Manifest) -> None:
        spec = manifest.input
        output = manifest.model.output
        export = ExportSpec(
            input_size=spec.size, in_channels=spec.channels, mean=spec.mean, std=spec.std,
            simplify=False,
            # a dynamic bundle is fed other sizes: upsample to the batch's own, as its graph does
            dynamic=spec.dynamic, multiple_of=spec.multiple_of,
            logits_scale=output.scale if output is not None else (1, 1),
            align_corners=bool(output.align_corners) if output is not None else False,
        )
        self.wrapper = DeployWrapper(model, export).eval()
        self.crf = manifest.crf.params if manifest.crf is not None and manifest.crf.mode == "fused" else None
        self.description = type(model).__name__

    def __call__(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with torch.no_grad():
            mask_t, _, logits_t = self.wrapper(torch.from_numpy(np.ascontiguousarray(batch)))
        logits, mask = logits_t[0].numpy(), mask_t[0].numpy()
        if self.crf is not None:  # the graph's mask comes after its CRF: so must PyTorch's
            mask = crf_reference(batch[0], logits, self.crf).argmax(axis=0).astype(np.uint8)
        return mask, logits


__all__ = ["TorchReference"]
