"""Build-time converters: torch -> ONNX -> bundle (and, on a device, engine).

Everything here may import torch and onnx; the deploy-time package never imports it.
"""
