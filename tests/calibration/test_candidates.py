"""Candidates of the mixed-precision search: only the nodes quantization changes.

A hand-made bundle graph plants every operator either placement is told to
quantize (MaxPool, AveragePool, Resize, Concat, Add, Mul, Sigmoid, LeakyRelu,
Relu, Clip, GlobalAveragePool and the four compute operators). Each is
quantized alone; the candidates must be exactly those that then read a
dequantized input. Before, the cpu placement's candidates included MaxPool,
AveragePool and Resize: quantized alone they add no Q/DQ, measure a logit
error of exactly 0, rank least sensitive and stayed "quantized" while every
Conv went back to float (issue 14: int8 bundles with no quantized node).
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from calibration.mixed import Evaluator, Target, layer_sensitivity, search_float_layers
from calibration.quantize import (
    CANDIDATE_OPS,
    COMPUTE_OPS,
    CPU_OPS,
    TENSORRT_OPS,
    CalibrationStats,
    collect_statistics,
    name_nodes,
    quantizable_nodes,
    quantize,
    quantized_nodes,
    split_regions,
)
from converters.samples import synthetic_images

SIDE = 16
# The candidates before issue 14: every cpu-placement op but the activations.
OLD_CPU_CANDIDATES = tuple(op for op in CPU_OPS if op not in ("Relu", "Clip", "LeakyRelu"))
PASS_THROUGH = ("MaxPool", "AveragePool", "Resize")

# Node name -> FLOPs (2 x multiply-accumulates) at SIDE x SIDE, worked out by hand.
PLANTED_FLOPS = {
    "c1": 2 * (8 * 16 * 16) * (3 * 3 * 3),  # 3 -> 8, 3x3, 16x16 out
    "c2": 2 * (8 * 8 * 8) * (8 * 3 * 3),  # 8 -> 8, 3x3, 8x8 out (after the 2x2 pool)
    "up": 2 * (8 * 8 * 8) * (8 * 2 * 2),  # ConvTranspose 8 -> 8, 2x2 stride 2: per input element
    "c3": 2 * (8 * 16 * 16) * 16,  # 16 -> 8, 1x1
    "fc": 2 * 1 * 8 * 8,  # Gemm (1, 8) x (8, 8)
    "mm": 2 * (8 * 16 * 16) * 16,  # MatMul (1, 8, 16, 16) x (16, 16)
    "head": 2 * (4 * 16 * 16) * 8,  # 8 -> 4, 1x1
}


def _weight(name: str, shape: tuple[int, ...], rng: np.random.Generator) -> onnx.TensorProto:
    fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else shape[0]
    value = rng.normal(0.0, np.sqrt(2.0 / fan_in), shape).astype(np.float32)
    return numpy_helper.from_array(value, name)


def _const(name: str, value: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(value, name)


def planted_graph(side: int = SIDE) -> onnx.ModelProto:
    """A bundle-like graph (uint8 NHWC ``image`` in; ``mask`` and ``logits`` out) with every
    operator the placements quantize in its body."""
    rng = np.random.default_rng(0)
    inits = [
        _weight("w1", (8, 3, 3, 3), rng),
        _weight("w2", (8, 8, 3, 3), rng),
        _weight("wup", (8, 8, 2, 2), rng),
        _weight("w3", (8, 16, 1, 1), rng),
        _weight("wfc", (8, 8), rng),
        _weight("wmm", (side, side), rng),
        _weight("whead", (4, 8, 1, 1), rng),
        _const("b1", np.zeros(8, np.float32)),
        _const("scale", np.array(1 / 255.0, np.float32)),
        _const("mean", np.array(0.5, np.float32)),
        _const("lo", np.array(0.0, np.float32)),
        _const("hi", np.array(6.0, np.float32)),
        _const("scales", np.array([1.0, 1.0, 2.0, 2.0], np.float32)),
        _const("shape4", np.array([1, 8, 1, 1], np.int64)),
    ]
    n = helper.make_node
    nodes = [
        # pre-processing
        n("Cast", ["image"], ["f"], name="cast", to=TensorProto.FLOAT),
        n("Transpose", ["f"], ["nchw"], name="nchw", perm=[0, 3, 1, 2]),
        n("Mul", ["nchw", "scale"], ["unit"], name="norm_scale"),
        n("Sub", ["unit", "mean"], ["x"], name="norm_mean"),
        # body
        n("Conv", ["x", "w1", "b1"], ["y1"], name="c1", pads=[1, 1, 1, 1]),
        n("Relu", ["y1"], ["r1"], name="relu"),
        n("MaxPool", ["r1"], ["p1"], name="maxpool", kernel_shape=[2, 2], strides=[2, 2]),
        n("AveragePool", ["p1"], ["a1"], name="avgpool", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        n("Conv", ["a1", "w2"], ["y2"], name="c2", pads=[1, 1, 1, 1]),
        n("LeakyRelu", ["y2"], ["l2"], name="leaky", alpha=0.1),
        n("Clip", ["l2", "lo", "hi"], ["k2"], name="clip"),
        n("ConvTranspose", ["k2", "wup"], ["u"], name="up", strides=[2, 2]),
        n("Resize", ["k2", "", "scales"], ["rs"], name="resize", mode="linear"),
        n("Concat", ["u", "rs"], ["cat"], name="concat", axis=1),
        n("Conv", ["cat", "w3"], ["y3"], name="c3"),
        n("GlobalAveragePool", ["y3"], ["g"], name="gap"),
        n("Flatten", ["g"], ["gf"], name="flatten"),
        n("Gemm", ["gf", "wfc"], ["fc"], name="fc", transB=1),
        n("Sigmoid", ["fc"], ["sg"], name="sigmoid"),
        n("Reshape", ["sg", "shape4"], ["att"], name="reshape"),
        n("Mul", ["y3", "att"], ["ya"], name="mul"),
        n("Add", ["ya", "y3"], ["yr"], name="add"),
        n("MatMul", ["yr", "wmm"], ["ym"], name="mm"),
        n("Conv", ["ym", "whead"], ["logits"], name="head"),
        # post-processing
        n("ArgMax", ["logits"], ["idx"], name="argmax", axis=1, keepdims=0),
        n("Cast", ["idx"], ["mask"], name="mask_cast", to=TensorProto.UINT8),
    ]
    graph = helper.make_graph(
        nodes,
        "planted",
        [helper.make_tensor_value_info("image", TensorProto.UINT8, [1, side, side, 3])],
        [
            helper.make_tensor_value_info("mask", TensorProto.UINT8, [1, side, side]),
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 4, side, side]),
        ],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)], ir_version=9)
    onnx.checker.check_model(model, full_check=True)
    return model


@pytest.fixture(scope="module")
def planted() -> onnx.ModelProto:
    return planted_graph()


@pytest.fixture(scope="module")
def planted_stats(planted: onnx.ModelProto) -> CalibrationStats:
    return collect_statistics(planted, synthetic_images(8, (SIDE, SIDE), seed=1), method="minmax")


@pytest.fixture(scope="module")
def planted_evaluator(planted: onnx.ModelProto) -> Evaluator:
    return Evaluator.from_graph(planted, synthetic_images(4, (SIDE, SIDE), seed=2))


def _ops(model: onnx.ModelProto) -> dict[str, str]:
    return {node.name: node.op_type for node in model.graph.node}


def test_the_planted_graph_has_every_operator_in_its_body(planted: onnx.ModelProto) -> None:
    body = split_regions(name_nodes(planted)).body
    ops = _ops(planted)
    assert set(CPU_OPS) <= {ops[name] for name in body}
    # the old rule would have offered the pass-through operators to the search
    old = [name for name in body if ops[name] in OLD_CPU_CANDIDATES]
    assert {ops[name] for name in old} >= set(PASS_THROUGH)


@pytest.mark.parametrize("placement", ["cpu", "tensorrt"])
def test_candidates_are_the_nodes_quantization_changes(
    planted: onnx.ModelProto, planted_stats: CalibrationStats, placement: str
) -> None:
    """Each node the placement may quantize, quantized alone: the candidates are exactly the
    ones that then read a dequantized input (Q/DQ on their inputs)."""
    ops = _ops(planted)
    told = CPU_OPS if placement == "cpu" else TENSORRT_OPS
    body = [name for name in split_regions(name_nodes(planted)).body if ops[name] in told]
    changed = []
    for name in body:
        alone = quantize(planted, stats=planted_stats, placement=placement, only=[name])
        qdq = sum(node.op_type in ("QuantizeLinear", "DequantizeLinear") for node in alone.graph.node)
        if name in quantized_nodes(alone):
            changed.append(name)
            assert qdq > 0
        else:  # quantized alone it gets nothing: the graph is the float graph
            assert qdq == 0, f"{name} ({ops[name]}) got Q/DQ that its inputs do not read"
    candidates = quantizable_nodes(planted, placement)
    assert candidates == changed
    assert {ops[name] for name in candidates} == set(CANDIDATE_OPS[placement])
    for op in (*PASS_THROUGH, "Relu", "Clip"):
        assert op not in {ops[name] for name in candidates}
    assert set(COMPUTE_OPS) <= {ops[name] for name in candidates}


def test_pass_through_nodes_alone_measure_nothing(
    planted: onnx.ModelProto, planted_stats: CalibrationStats, planted_evaluator: Evaluator
) -> None:
    """Why they must not be candidates: alone they leave the graph float, so their measured
    sensitivity is exactly 0, below any real layer's; the search ranked them last and never
    kept them in float. layer_sensitivity leaves such a node out even when asked for it."""
    ops = _ops(planted)
    passing = [name for name, op in ops.items() if op in PASS_THROUGH]
    assert len(passing) == 3
    for name in passing:
        figures = planted_evaluator.evaluate(quantize(planted, planted_stats, placement="cpu", only=[name]))
        assert figures.logit_error == 0.0 and figures.agreement == 1.0
    ranked = layer_sensitivity(
        planted, planted_stats, planted_evaluator, placement="cpu", images=2,
        candidates=[*passing, "c2", "add"],
    )
    assert sorted(s.node for s in ranked) == ["add", "c2"]
    assert all(s.logit_error > 0 for s in ranked)


def test_an_impossible_target_keeps_compute_in_float_and_the_share_shows_it(
    planted: onnx.ModelProto, planted_stats: CalibrationStats, planted_evaluator: Evaluator
) -> None:
    """What the issue saw, now visible: with a target out of reach the search keeps layers in
    float until the graph is (nearly) the float graph; only real layers were ranked, and the
    INT8 share counts exactly the compute nodes the search left quantized."""
    from calibration.flops import int8_share

    result = search_float_layers(
        planted, planted_stats, planted_evaluator, Target(1.0), placement="cpu"
    )
    candidates = quantizable_nodes(planted, "cpu")
    assert sorted(s.node for s in result.sensitivity) == sorted(candidates)
    assert not {_ops(planted)[s.node] for s in result.sensitivity} & set(PASS_THROUGH)
    kept = {s.node for s in result.kept_float}
    assert result.met and len(kept) >= len(candidates) // 2
    share = int8_share(result.model)
    assert {n.name: n.flops for n in share.nodes} == PLANTED_FLOPS
    assert {n.name for n in share.nodes if n.int8} == set(PLANTED_FLOPS) - kept
    assert share.int8_flops == sum(f for name, f in PLANTED_FLOPS.items() if name not in kept)
    # measured: 11 of 13 kept, 0.035 % in INT8 (only the 128-FLOP Gemm): a float graph labelled
    # int8, which the build's floor (min_int8_share) refuses
    assert share.share < 0.05
