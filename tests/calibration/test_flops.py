"""FLOPs of Conv/DeformConv/ConvTranspose/Gemm/MatMul and the share that runs in INT8 (calibration/flops.py).

Exact figures on hand-made graphs worked out by hand, the same counts as
PyTorch's FlopCounterMode on exported models, dynamic graphs at the nominal
size, shapes that shape inference cannot tell, and quantized graphs with some
layers kept in float.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from calibration.flops import gflops, int8_share, node_flops
from calibration.quantize import collect_statistics, quantize
from converters.export import ExportSpec, onnx_from_module
from converters.samples import synthetic_images
from edgeseg.errors import ExportError
from edgeseg.models.registry import complexity
from tests.calibration.test_candidates import PLANTED_FLOPS, planted_graph
from tests.calibration.test_quantize import DeepNet, UpNet
from tests.conftest import tiny_module

SIZE = (32, 48)
# DeepNet at 32x48: c1 3->8 3x3 stride 2 (16x24 out), c2..c4 8->8 3x3, head 8->4 1x1.
DEEP_FLOPS = {
    "c1": 2 * (8 * 16 * 24) * (3 * 9),
    "c2": 2 * (8 * 16 * 24) * (8 * 9),
    "c3": 2 * (8 * 16 * 24) * (8 * 9),
    "c4": 2 * (8 * 16 * 24) * (8 * 9),
    "head": 2 * (4 * 16 * 24) * 8,
}


def _model(
    nodes: list[onnx.NodeProto],
    inputs: list[onnx.ValueInfoProto],
    inits: dict[str, tuple[int, ...]],
) -> onnx.ModelProto:
    tensors = [numpy_helper.from_array(np.ones(shape, np.float32), name) for name, shape in inits.items()]
    output = helper.make_tensor_value_info(nodes[-1].output[0], TensorProto.FLOAT, None)
    graph = helper.make_graph(nodes, "g", inputs, [output], tensors)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)], ir_version=9)


def _float(name: str, shape: list[int | str]) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def test_flops_of_each_compute_operator() -> None:
    n = helper.make_node
    model = _model(
        [
            n("Conv", ["a", "wa"], ["ya"], name="conv", pads=[1, 1, 1, 1]),
            n("Conv", ["b", "wb"], ["yb"], name="grouped", group=2, strides=[2, 2]),
            n("ConvTranspose", ["c", "wc"], ["yc"], name="deconv", strides=[2, 2]),
            n("Gemm", ["d", "wd"], ["yd"], name="gemm"),
            n("Gemm", ["e", "we"], ["ye"], name="gemm_t", transA=1, transB=1),
            n("MatMul", ["f", "wf"], ["yf"], name="matmul"),
            n("MatMul", ["g", "wg"], ["yg"], name="batched"),
            n("Relu", ["ya"], ["r"], name="relu"),
            n("MaxPool", ["r"], ["p"], name="pool", kernel_shape=[2, 2]),
        ],
        [
            _float("a", [1, 3, 8, 10]),
            _float("b", [1, 4, 9, 9]),
            _float("c", [1, 4, 5, 5]),
            _float("d", [2, 5]),
            _float("e", [5, 2]),
            _float("f", [1, 3, 4, 5]),
            _float("g", [2, 3, 4, 5]),
        ],
        {
            "wa": (4, 3, 3, 3),
            "wb": (6, 2, 3, 3),
            "wc": (4, 3, 2, 2),
            "wd": (5, 7),
            "we": (7, 5),
            "wf": (5, 6),
            "wg": (2, 3, 5, 6),
        },
    )
    assert node_flops(model) == {
        "conv": 2 * (4 * 8 * 10) * (3 * 3 * 3),  # 17280: 4x8x10 outputs, 27 MACs each
        "grouped": 2 * (6 * 4 * 4) * (2 * 3 * 3),  # 3456: 2 input channels per group
        "deconv": 2 * (4 * 5 * 5) * (3 * 2 * 2),  # 2400: each input element meets 3x2x2 weights
        "gemm": 2 * 2 * 7 * 5,  # 140: (2, 5) x (5, 7)
        "gemm_t": 2 * 2 * 7 * 5,  # 140: the same product, both transposed
        "matmul": 2 * (3 * 4 * 6) * 5,  # 720: (1, 3, 4, 5) x (5, 6)
        "batched": 2 * (2 * 3 * 4 * 6) * 5,  # 1440
    }
    share = int8_share(model)
    assert share.flops == 17280 + 3456 + 2400 + 140 + 140 + 720 + 1440
    assert share.int8_flops == 0 and share.share == 0.0
    assert [x.name for x in share.float_nodes()][:3] == ["conv", "grouped", "deconv"]


def test_deform_conv_counts_as_float_compute() -> None:
    """DeformConv's GEMM counts like a Conv's, and always in float (no INT8 DeformConv anywhere)."""
    n = helper.make_node
    model = _model(
        [
            n("DeformConv", ["x", "w", "off"], ["y"], name="dcn", pads=[1, 1, 1, 1], kernel_shape=[3, 3]),
            n("Relu", ["y"], ["out"], name="relu"),
        ],
        [_float("x", [1, 4, 8, 10]), _float("off", [1, 18, 8, 10])],
        {"w": (6, 4, 3, 3)},
    )
    assert node_flops(model) == {"dcn": 2 * (6 * 8 * 10) * (4 * 3 * 3)}  # 34560
    share = int8_share(model)
    assert share.flops == 34560 and share.int8_flops == 0


def test_the_planted_graph() -> None:
    """Every operator of the placements in one graph: only the compute operators count."""
    assert node_flops(planted_graph()) == PLANTED_FLOPS


@pytest.fixture(scope="module")
def deep() -> onnx.ModelProto:
    torch.manual_seed(0)
    return onnx_from_module(DeepNet().eval(), ExportSpec(input_size=SIZE))


def _dynamic_graph() -> onnx.ModelProto:
    """A bundle-like graph with symbolic height and width: uint8 NHWC image, a stride-2 3x3
    Conv (3 -> 8), a 1x1 Conv (8 -> 4), logits resized to the input's size read at run time."""
    n = helper.make_node
    nodes = [
        n("Cast", ["image"], ["f"], to=TensorProto.FLOAT),
        n("Transpose", ["f"], ["x"], perm=[0, 3, 1, 2]),
        n("Conv", ["x", "w1"], ["y1"], name="c1", strides=[2, 2], pads=[1, 1, 1, 1]),
        n("Relu", ["y1"], ["r1"]),
        n("Conv", ["r1", "w2"], ["y2"], name="head"),
        n("Shape", ["x"], ["xs"]),
        n("Slice", ["xs", "two", "four"], ["hw"]),
        n("Shape", ["y2"], ["ys"]),
        n("Slice", ["ys", "zero", "two"], ["nc"]),
        n("Concat", ["nc", "hw"], ["sizes"], axis=0),
        n("Resize", ["y2", "", "", "sizes"], ["logits"], mode="linear"),
    ]
    inits = [
        numpy_helper.from_array(np.ones((8, 3, 3, 3), np.float32), "w1"),
        numpy_helper.from_array(np.ones((4, 8, 1, 1), np.float32), "w2"),
        *(numpy_helper.from_array(np.array([v], np.int64), k) for k, v in (("zero", 0), ("two", 2), ("four", 4))),
    ]
    graph = helper.make_graph(
        nodes, "dynamic",
        [helper.make_tensor_value_info("image", TensorProto.UINT8, [1, "height", "width", 3])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 4, "height", "width"])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)], ir_version=9)


def test_dynamic_graph_counts_at_the_nominal_size(deep: onnx.ModelProto) -> None:
    dynamic = _dynamic_graph()
    at_size = {"c1": 2 * (8 * 16 * 24) * 27, "head": 2 * (4 * 16 * 24) * 8}  # 165888, 24576
    assert node_flops(dynamic, SIZE) == at_size
    assert node_flops(dynamic, (64, 96)) == {k: 4 * v for k, v in at_size.items()}  # 4x the pixels
    assert sorted(node_flops(deep).values()) == sorted(DEEP_FLOPS.values())
    assert node_flops(deep, (64, 96)) == node_flops(deep)  # a static graph keeps its size


@pytest.mark.parametrize("make", [tiny_module, DeepNet, UpNet])
def test_same_count_as_pytorch(make: type, deep: onnx.ModelProto) -> None:
    """The graph's count equals torch.utils.flop_counter's on the module (2 per MAC)."""
    torch.manual_seed(0)
    module = make().eval()
    graph = deep if make is DeepNet else onnx_from_module(module, ExportSpec(input_size=SIZE))
    _, torch_gflops = complexity(module, SIZE)
    assert sum(node_flops(graph).values()) == round(torch_gflops * 1e9)


def test_shapes_inference_cannot_tell_are_measured() -> None:
    """A Reshape whose shape is float arithmetic on Shape(): inference leaves the MatMul's
    input open; one run of the graph tells it."""
    n = helper.make_node
    model = _model(
        [
            n("Shape", ["x"], ["s"], name="shape"),
            n("Cast", ["s"], ["sf"], name="to_float", to=TensorProto.FLOAT),
            n("Mul", ["sf", "one"], ["sm"], name="times_one"),
            n("Cast", ["sm"], ["si"], name="to_int", to=TensorProto.INT64),
            n("Reshape", ["x", "si"], ["r"], name="reshape"),
            n("MatMul", ["r", "w"], ["y"], name="mm"),
        ],
        [_float("x", [4, 6])],
        {"w": (6, 5), "one": ()},
    )
    inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    r = next(v for v in inferred.graph.value_info if v.name == "r")
    assert not all(d.HasField("dim_value") for d in r.type.tensor_type.shape.dim)
    assert node_flops(model) == {"mm": 2 * 4 * 5 * 6}


def test_shapes_nothing_can_tell_are_an_error() -> None:
    n = helper.make_node
    model = _model(
        [n("Mystery", ["x"], ["m"], name="mystery", domain="example.ops"), n("MatMul", ["m", "w"], ["y"], name="mm")],
        [_float("x", [4, 6])],
        {"w": (6, 5)},
    )
    model.opset_import.append(helper.make_opsetid("example.ops", 1))
    with pytest.raises(ExportError, match="cannot tell the shapes of m, y to count the graph's FLOPs: .*Mystery"):
        node_flops(model)


@pytest.mark.parametrize("placement", ["tensorrt", "cpu"])
def test_share_of_a_graph_with_layers_kept_in_float(deep: onnx.ModelProto, placement: str) -> None:
    """Kept-float Convs leave the share. With the cpu placement a kept Conv's input is still
    dequantized (its producer is quantized) but its weights are float: not INT8."""
    graph = deep
    stats = collect_statistics(graph, synthetic_images(4, SIZE, seed=1), method="minmax")
    convs = [node.name for node in graph.graph.node if node.op_type == "Conv"]
    by_name = dict(zip(convs, DEEP_FLOPS.values(), strict=True))  # graph order: c1..c4, head
    assert node_flops(graph) == by_name
    total = sum(DEEP_FLOPS.values())  # 1517568

    full = int8_share(quantize(graph, stats, placement=placement))
    assert (full.flops, full.int8_flops, full.share) == (total, total, 1.0)
    assert full.float_nodes() == []

    kept = [convs[2], convs[3]]  # c3 and c4
    mixed = int8_share(quantize(graph, stats, placement=placement, keep_float=kept))
    assert mixed.flops == total
    assert mixed.int8_flops == total - DEEP_FLOPS["c3"] - DEEP_FLOPS["c4"] == 632832
    assert mixed.share == pytest.approx(632832 / 1517568)  # 41.7 %
    assert [x.name for x in mixed.float_nodes()] == sorted(kept)
    assert mixed.to_json(0.5) == {"flops": total, "int8_flops": 632832, "share": mixed.share, "floor": 0.5}
    if placement == "cpu":  # the kept Conv reads a dequantized tensor, and still runs in float
        model = quantize(graph, stats, placement=placement, keep_float=kept)
        dq = {o for node in model.graph.node if node.op_type == "DequantizeLinear" for o in node.output}
        c4 = next(node for node in model.graph.node if node.name == convs[3])
        assert c4.input[0] in dq and c4.input[1] not in dq

    none = int8_share(graph)
    assert (none.int8_flops, none.share) == (0, 0.0)


def test_gflops_text() -> None:
    assert gflops(1_480_000_000) == "1.48"
    assert gflops(123_456_789) == "0.12"
    assert gflops(15_456_256) == "0.0155"
    assert gflops(761_856) == "0.000762"
    assert gflops(0) == "0.00"
