"""The deploy-time runtime: Segmenter, backends, sources (NumPy + one backend)."""

from edgeseg.runtime.segmenter import SegmentationResult, Segmenter

__all__ = ["SegmentationResult", "Segmenter"]
