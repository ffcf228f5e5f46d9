"""The FP16 conversion with casts inside the converted body (found building DeconvNet)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from calibration.fp16 import to_fp16


def test_a_cast_to_float_inside_the_fp16_body_makes_fp16() -> None:
    """A bool mask cast to float and multiplied with FP16 activations (DeconvNet's unpooling
    switches): the cast must produce FP16 there, or the Mul mixes FP16 and FP32 and the graph
    fails onnx.checker."""
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1], name="conv"),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("Greater", ["r", "half"], ["m"], name="greater"),
        helper.make_node("Cast", ["m"], ["mf"], to=TensorProto.FLOAT, name="mask_to_float"),
        helper.make_node("Mul", ["r", "mf"], ["masked"], name="mul"),
        helper.make_node("Conv", ["masked", "w2"], ["y"], name="conv2"),
    ]
    inits = [
        numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w"),
        numpy_helper.from_array(rng.standard_normal((2, 4, 1, 1)).astype(np.float32), "w2"),
        numpy_helper.from_array(np.array(0.5, np.float32), "half"),
    ]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 8, 8])], inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
    half, info = to_fp16(model)
    onnx.checker.check_model(half, full_check=True)
    cast = next(n for n in half.graph.node if n.name == "mask_to_float")
    assert helper.get_attribute_value(cast.attribute[0]) == TensorProto.FLOAT16
    assert info["fp16_nodes"] >= 4
    x = rng.standard_normal((1, 3, 8, 8)).astype(np.float32)
    ref = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]
    got = ort.InferenceSession(half.SerializeToString()).run(None, {"x": x})[0]
    assert got.dtype == np.float32 and np.abs(got - ref).max() < 0.05 * np.abs(ref).max()
