"""Build-time precision: calibration sets, Q/DQ quantization, mixed precision,
FP16 graphs, and the legacy TensorRT calibrator and cache.

Everything here is build-time: it may import onnx and onnxruntime's
quantization tooling; the deploy-time package never imports it.
"""
