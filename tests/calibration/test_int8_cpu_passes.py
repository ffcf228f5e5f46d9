"""The cpu placement's float-exact rewrites (converters.passes.int8_cpu), issue 14.

Each rewrite must keep the float graph's outputs (ONNX Runtime, to 1e-5) and
remove the float island it targets: after quantization with the cpu placement,
ONNX Runtime's optimised graph has no HardSigmoid/HardSwish, ReduceMean or
scalar QLinearMul left, which in the profile of DeepLabV3-MobileNetV3 ran in
float between a DequantizeLinear and a QuantizeLinear.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from calibration.quantize import CalibrationStats, collect_statistics, name_nodes, quantize
from converters.passes.int8_cpu import (
    decompose_hard_activations,
    derived_ranges,
    fold_scalar_muls,
    for_cpu_int8,
    reduce_mean_to_global_pool,
    stride1_deconv_to_conv,
    trim_dead_taps,
    widen_channel_constants,
)
from converters.samples import synthetic_images

SIDE = 32


def _w(name: str, shape: tuple[int, ...], rng: np.random.Generator) -> onnx.TensorProto:
    fan_in = int(np.prod(shape[1:]))
    return numpy_helper.from_array(rng.normal(0.0, np.sqrt(2.0 / fan_in), shape).astype(np.float32), name)


def _c(name: str, value: object) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value, np.float32), name)


def mobile_graph(side: int = SIDE) -> onnx.ModelProto:
    """A bundle-like MobileNetV3 block: normalisation after the NHWC->NCHW Transpose, HardSwish,
    an SE block (ReduceMean over H, W -> 1x1 convs -> HardSigmoid -> Mul) and a 3x3 conv at a
    dilation whose outer taps read only padding at this size (an ASPP branch)."""
    rng = np.random.default_rng(0)
    n = helper.make_node
    inits = [
        _w("w1", (16, 3, 3, 3), rng), _w("w2", (16, 1, 3, 3), rng), _w("se1", (8, 16, 1, 1), rng),
        _w("se2", (16, 8, 1, 1), rng), _w("w3", (16, 16, 3, 3), rng), _w("w4", (16, 16, 3, 3), rng),
        _w("head", (4, 32, 1, 1), rng),
        _c("scale", np.array([1 / 58.0, 1 / 57.0, 1 / 57.5], np.float32).reshape(1, 3, 1, 1)),
        _c("shift", np.array([-2.1, -2.0, -1.8], np.float32).reshape(1, 3, 1, 1)),
        numpy_helper.from_array(np.array([-1, -2], np.int64), "axes"),
    ]
    half = side // 2
    nodes = [
        n("Cast", ["image"], ["f"], name="cast", to=TensorProto.FLOAT),
        n("Transpose", ["f"], ["nchw"], name="nchw", perm=[0, 3, 1, 2]),
        n("Mul", ["nchw", "scale"], ["m"], name="norm_scale"),
        n("Add", ["m", "shift"], ["x"], name="norm_shift"),
        n("Conv", ["x", "w1"], ["y1"], name="stem", pads=[1, 1, 1, 1], strides=[2, 2]),
        n("HardSwish", ["y1"], ["h1"], name="hswish"),
        n("Conv", ["h1", "w2"], ["y2"], name="dw", pads=[1, 1, 1, 1], group=16),
        n("Relu", ["y2"], ["r2"], name="relu"),
        n("ReduceMean", ["r2", "axes"], ["pooled"], name="se_pool", keepdims=1),
        n("Conv", ["pooled", "se1"], ["s1"], name="se_fc1"),
        n("Relu", ["s1"], ["s1r"], name="se_relu"),
        n("Conv", ["s1r", "se2"], ["s2"], name="se_fc2"),
        n("HardSigmoid", ["s2"], ["gate"], name="se_gate", alpha=1 / 6.0, beta=0.5),
        n("Mul", ["r2", "gate"], ["se"], name="se_mul"),
        n("Conv", ["se", "w3"], ["a1"], name="aspp_near", pads=[2, 2, 2, 2], dilations=[2, 2]),
        n("Conv", ["se", "w4"], ["a2"], name="aspp_far", pads=[half, half, half, half], dilations=[half, half]),
        n("Concat", ["a1", "a2"], ["cat"], name="concat", axis=1),
        n("Conv", ["cat", "head"], ["low"], name="head"),
        n("Resize", ["low", "", "rscales"], ["logits"], name="upsample", mode="linear"),
        n("ArgMax", ["logits"], ["idx"], name="argmax", axis=1, keepdims=0),
        n("Cast", ["idx"], ["mask"], name="mask_cast", to=TensorProto.UINT8),
    ]
    inits.append(_c("rscales", [1.0, 1.0, 2.0, 2.0]))
    graph = helper.make_graph(
        nodes, "mobile",
        [helper.make_tensor_value_info("image", TensorProto.UINT8, [1, side, side, 3])],
        [helper.make_tensor_value_info("mask", TensorProto.UINT8, [1, side, side]),
         helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 4, side, side])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)], ir_version=9)
    onnx.checker.check_model(model, full_check=True)
    return model


def _run(model: onnx.ModelProto, images: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return np.concatenate([session.run(["logits"], {"image": im[None]})[0] for im in images])


def _optimised_ops(model: onnx.ModelProto, tmp: Path) -> list[str]:
    """The op types of the graph ONNX Runtime's CPU provider runs (after its QDQ fusions)."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(tmp / "optimised.onnx")
    ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return [node.op_type for node in onnx.load(str(tmp / "optimised.onnx")).graph.node]


@pytest.fixture(scope="module")
def model() -> onnx.ModelProto:
    return mobile_graph()


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return synthetic_images(3, (SIDE, SIDE), seed=4)


def _ops(model: onnx.ModelProto) -> list[str]:
    return [node.op_type for node in model.graph.node]


@pytest.mark.parametrize(
    "rewrite",
    [decompose_hard_activations, reduce_mean_to_global_pool, trim_dead_taps, widen_channel_constants, for_cpu_int8],
)
def test_each_rewrite_keeps_the_float_outputs(model: onnx.ModelProto, images: np.ndarray, rewrite) -> None:
    before = onnx.ModelProto()
    before.CopyFrom(model)
    rewritten = rewrite(model)
    assert model == before, "the pass modified its input"
    onnx.checker.check_model(rewritten, full_check=True)
    ref, out = _run(model, images), _run(rewritten, images)
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5 * float(np.abs(ref).max()))
    # every tensor of the float graph is still there (calibration ranges are keyed by them)
    assert {t for n in model.graph.node for t in n.output} <= {t for n in rewritten.graph.node for t in n.output}


def test_what_each_rewrite_changes(model: onnx.ModelProto) -> None:
    hard = decompose_hard_activations(model)
    assert not {"HardSwish", "HardSigmoid"} & set(_ops(hard))
    assert _ops(hard).count("Clip") == 2 and _ops(hard).count("Mul") == _ops(model).count("Mul") + 3

    pooled = reduce_mean_to_global_pool(model)
    assert "ReduceMean" not in _ops(pooled) and _ops(pooled).count("GlobalAveragePool") == 1

    trimmed = {n.name: n for n in trim_dead_taps(model).graph.node}
    attrs = {a.name: helper.get_attribute_value(a) for a in trimmed["aspp_far"].attribute}
    assert attrs["kernel_shape"] == [1, 1] and attrs["pads"] == [0, 0, 0, 0] and attrs["dilations"] == [1, 1]
    near = {a.name: helper.get_attribute_value(a) for a in trimmed["aspp_near"].attribute}
    assert near["dilations"] == [2, 2] and trimmed["aspp_near"].input[1] == "w3"  # every tap meets data

    widened = {i.name: tuple(i.dims) for i in widen_channel_constants(model).graph.initializer}
    nodes = {n.name: n for n in widen_channel_constants(model).graph.node}
    assert widened[nodes["norm_scale"].input[1]] == (1, 3, 1, SIDE)
    assert widened[nodes["norm_shift"].input[1]] == (1, 3, 1, SIDE)


def test_a_conv_of_unknown_size_keeps_its_taps(model: onnx.ModelProto) -> None:
    dynamic = onnx.ModelProto()
    dynamic.CopyFrom(model)
    dims = dynamic.graph.input[0].type.tensor_type.shape.dim
    dims[1].dim_param, dims[2].dim_param = "h", "w"
    assert trim_dead_taps(dynamic).graph.node == dynamic.graph.node
    assert widen_channel_constants(dynamic).graph.initializer == dynamic.graph.initializer


def test_the_cpu_placement_leaves_no_float_island(model: onnx.ModelProto, tmp_path: Path) -> None:
    """Quantized (cpu placement), ONNX Runtime's optimised graph runs the activations, the SE
    pooling and the x * alpha of the hard activations in integer kernels; float work is left
    only in the pre- and post-processing (the normalisation, the logits' upsampling)."""
    stats = collect_statistics(model, synthetic_images(8, (SIDE, SIDE), seed=1), method="minmax")
    quantized = quantize(model, stats, placement="cpu")
    ops = _optimised_ops(quantized, tmp_path)
    assert not {"HardSwish", "HardSigmoid", "ReduceMean"} & set(ops)
    assert {"QLinearGlobalAveragePool", "QLinearMul", "QLinearAdd", "QLinearConv"} <= set(ops)
    assert ops.count("Mul") == 1 and ops.count("Add") == 1  # the normalisation's
    assert ops.count("QLinearMul") == 2  # x * HardSigmoid(x) and the SE's gate: alpha was folded
    # the graph before the rewrites, quantized as before issue 14, ran them in float
    plain = quantize(model, stats, placement="tensorrt")
    assert {"HardSwish", "HardSigmoid", "ReduceMean"} & set(_optimised_ops(plain, tmp_path))


def test_statistics_without_the_added_tensors_still_quantize(model: onnx.ModelProto, images: np.ndarray) -> None:
    """Ranges collected on the graph before the rewrites (older bundles' statistics) are enough:
    the added tensors take theirs from their source's (derived_ranges)."""
    stats = collect_statistics(model, synthetic_images(8, (SIDE, SIDE), seed=1), method="minmax")
    original = {t for n in model.graph.node for t in (*n.input, *n.output)}
    old = CalibrationStats(stats.method, {k: v for k, v in stats.ranges.items() if k in original}, stats.images)
    assert len(old.ranges) < len(stats.ranges)
    rewritten = for_cpu_int8(name_nodes(model))
    extra = derived_ranges(rewritten, old.ranges)
    assert set(extra) == set(stats.ranges) - set(old.ranges)
    for name, (lo, hi) in extra.items():  # the calibrated ranges lie within the derived ones
        assert lo <= stats.ranges[name][0] + 1e-6 and stats.ranges[name][1] <= hi + 1e-6
    ref = _run(model, images)
    agreement = (_run(quantize(model, old, placement="cpu"), images).argmax(1) == ref.argmax(1)).mean()
    assert agreement > 0.9


def _qdq_mul_graph(c: float) -> onnx.ModelProto:
    n = helper.make_node
    inits = [
        _c("s", 0.05), numpy_helper.from_array(np.array(128, np.uint8), "z"),
        _c("s2", 0.05 * c * 1.07), numpy_helper.from_array(np.array(120, np.uint8), "z2"),
        _c("c", c),
    ]
    nodes = [
        n("QuantizeLinear", ["x", "s", "z"], ["xq"], name="q"),
        n("DequantizeLinear", ["xq", "s", "z"], ["xd"], name="dq"),
        n("Mul", ["xd", "c"], ["m"], name="mul"),
        n("QuantizeLinear", ["m", "s2", "z2"], ["mq"], name="mq"),
        n("DequantizeLinear", ["mq", "s2", "z2"], ["y"], name="mdq"),
    ]
    graph = helper.make_graph(
        nodes, "qdq", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64])], inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)], ir_version=9)


def test_a_scalar_mul_between_qdq_becomes_a_scale() -> None:
    graph = _qdq_mul_graph(1 / 6.0)
    folded = fold_scalar_muls(graph)
    assert _ops(folded) == ["QuantizeLinear", "DequantizeLinear"]
    x = np.linspace(-5.0, 5.0, 64, dtype=np.float32)[None]
    ref = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    out = ort.InferenceSession(folded.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(out, x / 6.0, atol=0.05 / 6.0 / 2 + 1e-6)  # only the input's rounding
    assert np.abs(out - ref).max() <= 0.05 * 1.07 / 6.0  # within one step of the requantized graph
    # a negative constant would flip the order of the codes: left alone
    assert _ops(fold_scalar_muls(_qdq_mul_graph(-0.5))) == _ops(_qdq_mul_graph(-0.5))


def deconv_graph() -> onnx.ModelProto:
    """ConvTransposes as DeconvNet's decoder (3x3 and 7x7, stride 1, bias; one grouped) and
    as an upsampling (stride 2, left alone)."""
    rng = np.random.default_rng(3)
    n = helper.make_node
    inits = [
        _w("d1", (8, 6, 3, 3), rng), _c("b1", rng.normal(size=6)), _w("d2", (6, 4, 7, 7), rng),
        _w("d3", (4, 2, 3, 3), rng), _w("up", (4, 4, 2, 2), rng),
    ]
    nodes = [
        n("ConvTranspose", ["x", "d1", "b1"], ["y1"], name="deconv3", pads=[1, 1, 1, 1]),
        n("ConvTranspose", ["y1", "d2"], ["y2"], name="deconv7", pads=[3, 2, 3, 1]),
        n("ConvTranspose", ["y2", "d3"], ["y3"], name="grouped", pads=[1, 1, 1, 1], group=2),
        n("ConvTranspose", ["y3", "up"], ["y"], name="upsample", strides=[2, 2]),
    ]
    graph = helper.make_graph(
        nodes, "deconv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 12, 10])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)], ir_version=9)


def test_stride1_deconvolutions_become_convolutions() -> None:
    model = deconv_graph()
    converted = stride1_deconv_to_conv(model)
    assert {n.name: n.op_type for n in converted.graph.node} == {
        "deconv3": "Conv", "deconv7": "Conv", "grouped": "Conv", "upsample": "ConvTranspose",
    }
    x = np.random.default_rng(0).normal(size=(1, 8, 12, 10)).astype(np.float32)
    run = lambda m: ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]  # noqa: E731
    ref = run(model)
    np.testing.assert_allclose(run(converted), ref, rtol=1e-5, atol=1e-5 * float(np.abs(ref).max()))
