"""INT8 and FP16 graphs on tiny exported models: regions, calibration, Q/DQ placements,
mixed precision, FP16 conversion and the topological sort they rely on."""

from __future__ import annotations

import importlib
import json
from typing import Any, cast

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from calibration.fp16 import to_fp16
from calibration.mixed import (
    Evaluator,
    Figures,
    Target,
    layer_sensitivity,
    search_float_layers,
)
from calibration.qdq_rules import check_tensorrt_qdq
from calibration.quantize import (
    COMPUTE_OPS,
    CalibrationStats,
    collect_statistics,
    name_nodes,
    quantizable_nodes,
    quantize,
    quantized_nodes,
    split_regions,
)
from converters.export import ExportSpec, onnx_from_module
from converters.passes import select_outputs, topological_sort
from converters.samples import synthetic_images
from edgeseg.errors import ConfigError, ExportError
from tests.conftest import tiny_module

SIZE = (32, 48)
QDQ = ("QuantizeLinear", "DequantizeLinear")


# ---------------------------------------------------------------- models and fixtures


class UpNet(nn.Module):
    """Stride-2 conv, ConvTranspose2d back up, 1x1 head: the ConvTranspose weight axis case."""

    def __init__(self) -> None:
        super().__init__()
        self.down = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.up = nn.ConvTranspose2d(8, 6, 2, stride=2)
        self.head = nn.Conv2d(6, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.up(torch.relu(self.down(x)))))


class DeepNet(nn.Module):
    """Five convs and a residual Add: enough layers for a real mixed-precision search."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.c2 = nn.Conv2d(8, 8, 3, padding=1)
        self.c3 = nn.Conv2d(8, 8, 3, padding=1)
        self.c4 = nn.Conv2d(8, 8, 3, padding=1)
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.c1(x))
        y = torch.relu(self.c3(torch.relu(self.c2(y))) + y)
        y = self.head(torch.relu(self.c4(y)))
        return nn.functional.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=False)


def _export(module: nn.Module) -> onnx.ModelProto:
    torch.manual_seed(0)
    return onnx_from_module(module.eval(), ExportSpec(input_size=SIZE))


@pytest.fixture(scope="session")
def graph() -> onnx.ModelProto:
    """The tiny model's bundle graph with all three outputs (mask, probs, logits)."""
    return _export(tiny_module())


@pytest.fixture(scope="session")
def up_graph() -> onnx.ModelProto:
    torch.manual_seed(0)
    return _export(UpNet())


@pytest.fixture(scope="session")
def deep_graph() -> onnx.ModelProto:
    torch.manual_seed(0)
    return _export(DeepNet())


@pytest.fixture(scope="session")
def calib_images() -> np.ndarray:
    return synthetic_images(12, SIZE, seed=1)


@pytest.fixture(scope="session")
def eval_images() -> np.ndarray:
    return synthetic_images(8, SIZE, seed=2)


@pytest.fixture(scope="session")
def stats(graph: onnx.ModelProto, calib_images: np.ndarray) -> CalibrationStats:
    return collect_statistics(graph, calib_images, method="minmax")


@pytest.fixture(scope="session")
def deep_stats(deep_graph: onnx.ModelProto, calib_images: np.ndarray) -> CalibrationStats:
    return collect_statistics(deep_graph, calib_images, method="minmax")


@pytest.fixture(scope="session")
def evaluator(graph: onnx.ModelProto, eval_images: np.ndarray) -> Evaluator:
    return Evaluator.from_graph(graph, eval_images)


@pytest.fixture(scope="session")
def deep_evaluator(deep_graph: onnx.ModelProto, eval_images: np.ndarray) -> Evaluator:
    return Evaluator.from_graph(deep_graph, eval_images)


# ---------------------------------------------------------------- helpers


def _node(model: onnx.ModelProto, name: str) -> onnx.NodeProto:
    return next(n for n in model.graph.node if n.name == name)


def _initializers(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}


def _producers(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    return {o: n for n in model.graph.node for o in n.output if o}


def _consumers(model: onnx.ModelProto) -> dict[str, list[onnx.NodeProto]]:
    out: dict[str, list[onnx.NodeProto]] = {}
    for n in model.graph.node:
        for i in n.input:
            out.setdefault(i, []).append(n)
    return out


def _axis(node: onnx.NodeProto) -> int | None:
    for attr in node.attribute:
        if attr.name == "axis":
            return int(helper.get_attribute_value(attr))
    return None


def _assert_topologically_sorted(model: onnx.ModelProto) -> None:
    available = (
        {i.name for i in model.graph.input} | {i.name for i in model.graph.initializer} | {""}
    )
    for node in model.graph.node:
        missing = [i for i in node.input if i not in available]
        assert not missing, f"{node.name} ({node.op_type}) reads {missing} before they are produced"
        available.update(node.output)


def _run(model: onnx.ModelProto, images: np.ndarray, outputs: list[str]) -> list[np.ndarray]:
    """Runs ``model`` image by image; each output stacked over the images."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    runs = [session.run(outputs, {"image": np.ascontiguousarray(im[None])}) for im in images]
    return [np.concatenate([r[k] for r in runs]) for k in range(len(outputs))]


def _expose(model: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    out.graph.output.extend(
        helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in names
    )
    return out


def _body_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    named = name_nodes(model)
    body = set(split_regions(named).body)
    return [n for n in named.graph.node if n.name in body]


# ---------------------------------------------------------------- split_regions


def test_split_regions_of_a_bundle_graph(graph: onnx.ModelProto) -> None:
    named = name_nodes(graph)
    regions = split_regions(named)
    op = {n.name: n.op_type for n in named.graph.node}
    # a partition of the graph's nodes
    assert not set(regions.pre) & set(regions.body)
    assert not set(regions.body) & set(regions.post)
    assert not set(regions.pre) & set(regions.post)
    assert set(regions.pre) | set(regions.body) | set(regions.post) == set(op)
    assert regions.float_nodes == regions.pre + regions.post
    # pre: the uint8 cast and the normalisation, nothing of the network
    pre_ops = [op[n] for n in regions.pre]
    assert {"Cast", "Mul", "Add"} <= set(pre_ops) and "Conv" not in pre_ops
    image_reader = next(n for n in named.graph.node if "image" in n.input)
    assert image_reader.name in regions.pre
    # body: every Conv
    assert {n for n, t in op.items() if t == "Conv"} <= set(regions.body)
    assert {op[n] for n in regions.body} <= {"Conv", "Relu"}
    # post: argmax, and softmax because probs is an output
    post_ops = [op[n] for n in regions.post]
    assert "ArgMax" in post_ops and "Softmax" in post_ops and "Conv" not in post_ops
    producers = _producers(named)
    assert producers["probs"].name in regions.post and producers["logits"].name in regions.post


def test_split_regions_without_probs_has_no_softmax(graph: onnx.ModelProto) -> None:
    named = name_nodes(select_outputs(graph, ["mask"]))
    regions = split_regions(named)
    ops = {n.name: n.op_type for n in named.graph.node}
    assert "ArgMax" in [ops[n] for n in regions.post]
    assert "Softmax" not in ops.values()
    assert sorted(ops[n] for n in regions.body).count("Conv") == 2


def _plain_graph(
    nodes: list[onnx.NodeProto], inits: list[onnx.TensorProto] | None = None
) -> onnx.ModelProto:
    g = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
        [helper.make_tensor_value_info(nodes[-1].output[0], TensorProto.FLOAT, [1, 2])],
        inits or [],
    )
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 19)], ir_version=9)


def test_split_regions_errors() -> None:
    no_conv = _plain_graph(
        [
            helper.make_node("Relu", ["x"], ["a"], name="r"),
            helper.make_node("Neg", ["a"], ["y"], name="n"),
        ]
    )
    with pytest.raises(ExportError, match="no Conv, ConvTranspose, Gemm or MatMul"):
        split_regions(no_conv)
    unnamed = _plain_graph([helper.make_node("Relu", ["x"], ["y"])])
    with pytest.raises(ExportError, match="needs a name"):
        split_regions(unnamed)
    assert [n.name for n in name_nodes(unnamed).graph.node] == ["Relu_0"]


# ---------------------------------------------------------------- collect_statistics


@pytest.mark.parametrize("method", ["minmax", "percentile", "entropy"])
def test_statistics_cover_body_tensors_only(
    graph: onnx.ModelProto, calib_images: np.ndarray, method: str
) -> None:
    seen: list[tuple[int, int]] = []
    result = collect_statistics(
        graph, calib_images, method=method, chunk=5, progress=lambda d, t: seen.append((d, t))
    )
    assert result.method == method and result.images == 12
    assert result.percentile == (99.999 if method == "percentile" else None)
    assert seen == [(5, 12), (10, 12), (12, 12)]
    body = _body_nodes(graph)
    inits = {i.name for i in graph.graph.initializer}
    body_tensors = {t for n in body for t in (*n.input, *n.output) if t and t not in inits}
    assert result.ranges and set(result.ranges) <= body_tensors
    # every activation a compute node reads or writes has a range
    compute = [n for n in body if n.op_type in COMPUTE_OPS]
    assert {n.input[0] for n in compute} | {n.output[0] for n in compute} <= set(result.ranges)
    for name in ("image", "mask", "probs", "logits"):
        assert name not in result.ranges
    for name, (lo, hi) in result.ranges.items():
        assert np.isfinite(lo) and np.isfinite(hi) and lo <= hi, (name, lo, hi)
    assert result.amax() == {k: max(abs(lo), abs(hi)) for k, (lo, hi) in result.ranges.items()}


def test_minmax_range_contains_the_true_range(
    graph: onnx.ModelProto, calib_images: np.ndarray, stats: CalibrationStats
) -> None:
    body = _body_nodes(graph)
    relu = next(n.output[0] for n in body if n.op_type == "Relu")
    last_conv = [n.output[0] for n in body if n.op_type == "Conv"][-1]
    values = _run(_expose(graph, [relu, last_conv]), calib_images, [relu, last_conv])
    for name, value in zip((relu, last_conv), values, strict=True):
        lo, hi = stats.ranges[name]
        true_lo, true_hi = float(value.min()), float(value.max())
        assert lo <= true_lo + 1e-5 and hi >= true_hi - 1e-5, (name, (lo, hi), (true_lo, true_hi))
        # minmax is the observed extremes, not a loose bound
        assert lo == pytest.approx(true_lo, abs=1e-5) and hi == pytest.approx(true_hi, abs=1e-5)
    # chunking the images does not change the extremes
    one_chunk = collect_statistics(graph, calib_images, method="minmax", chunk=100)
    assert one_chunk.ranges.keys() == stats.ranges.keys()
    for name, (lo, hi) in stats.ranges.items():
        assert one_chunk.ranges[name] == pytest.approx((lo, hi), abs=1e-6)


def test_percentile_range_is_within_minmax(
    graph: onnx.ModelProto, calib_images: np.ndarray, stats: CalibrationStats
) -> None:
    pct = collect_statistics(graph, calib_images, method="percentile", percentile=99.0)
    assert pct.percentile == 99.0 and pct.ranges.keys() == stats.ranges.keys()
    narrower = 0
    for name, (lo, hi) in pct.ranges.items():
        mlo, mhi = stats.ranges[name]
        assert mlo - 1e-6 <= lo <= hi <= mhi + 1e-6, (name, (lo, hi), (mlo, mhi))
        narrower += (hi - lo) < (mhi - mlo) - 1e-6
    assert narrower > 0  # the 99th percentile clips something


@pytest.mark.parametrize(
    ("kwargs", "images", "message"),
    [
        ({"method": "kl"}, None, "method must be one of minmax, percentile, entropy"),
        ({"method": "percentile", "percentile": 0.0}, None, r"percentile must be in \(0, 100\]"),
        ({"percentile": 100.5}, None, r"percentile must be in \(0, 100\]"),
        ({}, np.zeros((0, 32, 48, 3), np.uint8), "non-empty"),
        ({}, np.zeros((2, 32, 48, 3), np.float32), "uint8 array, got float32"),
        ({}, np.zeros((32, 48, 3), np.uint8), r"\(N, H, W, C\) uint8"),
    ],
)
def test_statistics_bad_arguments(
    graph: onnx.ModelProto,
    calib_images: np.ndarray,
    kwargs: dict[str, Any],
    images: np.ndarray | None,
    message: str,
) -> None:
    with pytest.raises(ConfigError, match=message):
        collect_statistics(graph, calib_images if images is None else images, **kwargs)


def test_stats_json_round_trip(stats: CalibrationStats) -> None:
    text = json.dumps(stats.to_json())
    back = CalibrationStats.from_json(json.loads(text))
    assert back.method == stats.method and back.images == stats.images
    assert back.percentile == stats.percentile and back.ranges == stats.ranges
    pct = CalibrationStats("percentile", {"t": (-1.0, 2.0)}, 3, 99.9)
    again = CalibrationStats.from_json(json.loads(json.dumps(pct.to_json())))
    assert (again.method, again.ranges, again.images, again.percentile) == (
        "percentile",
        {"t": (-1.0, 2.0)},
        3,
        99.9,
    )


@pytest.mark.parametrize(
    "data",
    [
        {},
        {"method": "minmax", "images": 3},
        {"method": "histogram", "ranges": {}, "images": 3},
        {"method": "minmax", "ranges": {"t": [1.0]}, "images": 3},
        {"method": "minmax", "ranges": {"t": ["low", 1.0]}, "images": 3},
        {"method": "minmax", "ranges": {"t": [0.0, 1.0]}, "images": "many"},
        {"method": "minmax", "ranges": {"t": None}, "images": 3},
        [1, 2],
        None,
    ],
)
def test_stats_from_malformed_json(data: Any) -> None:
    with pytest.raises(ConfigError, match="calibration statistics are malformed"):
        CalibrationStats.from_json(data)


@pytest.mark.parametrize("ranges", [[["t", [0.0, 1.0]]], "t"])
def test_stats_from_json_with_ranges_not_a_mapping(ranges: Any) -> None:
    with pytest.raises(ConfigError, match="calibration statistics are malformed"):
        CalibrationStats.from_json({"method": "minmax", "ranges": ranges, "images": 3})


# ---------------------------------------------------------------- quantize: cpu placement


def test_cpu_placement(
    graph: onnx.ModelProto, stats: CalibrationStats, evaluator: Evaluator
) -> None:
    model = quantize(graph, stats, placement="cpu")
    ops = [n.op_type for n in model.graph.node]
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    assert model.ir_version <= 9 and "cpu placement" in model.doc_string
    assert [o.name for o in model.graph.output] == ["mask", "probs", "logits"]
    inits = _initializers(model)
    zero_points = {
        inits[n.input[2]].dtype for n in model.graph.node if n.op_type == "QuantizeLinear"
    }
    assert np.dtype(np.uint8) in zero_points  # uint8 activations
    # per-channel int8 weights
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    producers = _producers(model)
    for conv in convs:
        weight_dq = producers[conv.input[1]]
        assert weight_dq.op_type == "DequantizeLinear"
        assert inits[weight_dq.input[0]].dtype == np.int8
        assert inits[weight_dq.input[1]].size == inits[weight_dq.input[0]].shape[0]
    # the pre- and post-processing stay float
    regions = split_regions(name_nodes(graph))
    for name in regions.pre:
        assert all(
            producers.get(i) is None or producers[i].op_type not in QDQ
            for i in _node(model, name).input
        )
    argmax = next(n for n in model.graph.node if n.op_type == "ArgMax")
    assert producers[argmax.input[0]].op_type not in QDQ
    # it runs, and agrees with the float graph (measured: 0.9996 on these images)
    figures = evaluator.evaluate(model)
    assert figures.agreement >= 0.99 and 0 < figures.logit_error < 1e-2


def test_cpu_activation_scales_come_from_the_stats(
    graph: onnx.ModelProto, stats: CalibrationStats
) -> None:
    model = quantize(graph, stats, placement="cpu")
    inits = _initializers(model)
    checked = 0
    for q in (n for n in model.graph.node if n.op_type == "QuantizeLinear"):
        lo, hi = stats.ranges[q.input[0]]
        lo, hi = min(lo, 0.0), max(hi, 0.0)
        scale, zero = float(inits[q.input[1]]), int(inits[q.input[2]])
        assert scale == pytest.approx((hi - lo) / 255.0, rel=1e-4)
        assert zero == pytest.approx(-lo / scale, abs=1.0)
        checked += 1
    assert checked >= 2


# ---------------------------------------------------------------- quantize: tensorrt placement


def _check_tensorrt_graph(model: onnx.ModelProto) -> None:
    report = check_tensorrt_qdq(model)
    assert report.ok, report.violations
    inits = _initializers(model)
    consumers = _consumers(model)
    for n in model.graph.node:
        if n.op_type not in QDQ:
            continue
        assert len(n.input) == 3, f"{n.name} has no explicit zero point"
        zero = inits[n.input[2]]
        assert zero.dtype == np.int8 and not zero.any(), f"{n.name}: zero point {zero}"
        if n.op_type == "DequantizeLinear":
            # Q/DQ only in front of the compute operators, never on their outputs
            assert {c.op_type for c in consumers.get(n.output[0], [])} <= set(COMPUTE_OPS), n.name
    producers = _producers(model)
    for n in model.graph.node:
        if n.op_type in COMPUTE_OPS:
            assert all(c.op_type != "QuantizeLinear" for c in consumers.get(n.output[0], []))
            if len(n.input) > 2 and n.input[2]:
                bias = producers.get(n.input[2])
                assert bias is None or bias.op_type != "DequantizeLinear", (
                    f"{n.name} has a quantized bias"
                )


def test_tensorrt_placement(
    graph: onnx.ModelProto, stats: CalibrationStats, evaluator: Evaluator
) -> None:
    model = quantize(graph, stats, placement="tensorrt")
    _check_tensorrt_graph(model)
    report = check_tensorrt_qdq(model)
    assert report.quantized_ops == {"Conv": 2} and report.float_ops == []
    assert "tensorrt placement" in model.doc_string and model.ir_version <= 9
    inits = _initializers(model)
    producers = _producers(model)
    for q in (n for n in model.graph.node if n.op_type == "QuantizeLinear"):
        if q.input[0] in stats.ranges:  # activations: symmetric, per tensor, from the stats
            assert float(inits[q.input[1]]) == pytest.approx(
                stats.amax()[q.input[0]] / 127.0, rel=1e-5
            )
        else:  # weights: per output channel (axis 0 of a Conv weight)
            weight = inits[q.input[0]]
            assert _axis(q) == 0 and inits[q.input[1]].shape == (weight.shape[0],)
    for conv in (n for n in model.graph.node if n.op_type == "Conv"):
        assert producers[conv.input[0]].op_type == "DequantizeLinear"
        assert producers[conv.input[1]].op_type == "DequantizeLinear"
    figures = evaluator.evaluate(model)  # runs in ONNX Runtime (measured: 0.9998)
    assert figures.agreement >= 0.99


def test_tensorrt_placement_of_conv_transpose(
    up_graph: onnx.ModelProto, calib_images: np.ndarray
) -> None:
    up_stats = collect_statistics(up_graph, calib_images, method="entropy")
    model = quantize(up_graph, up_stats, placement="tensorrt")
    _check_tensorrt_graph(model)
    assert check_tensorrt_qdq(model).quantized_ops == {"Conv": 2, "ConvTranspose": 1}
    producers = _producers(model)
    inits = _initializers(model)
    deconv = next(n for n in model.graph.node if n.op_type == "ConvTranspose")
    dq = producers[deconv.input[1]]
    q = producers[dq.input[0]]
    assert dq.op_type == "DequantizeLinear" and q.op_type == "QuantizeLinear"
    weight = inits[q.input[0]]  # (in, out, kh, kw): the output channels are axis 1
    assert weight.shape[:2] == (8, 6)
    assert _axis(q) == 1 and _axis(dq) == 1
    assert inits[q.input[1]].shape == (6,) and inits[dq.input[1]].shape == (6,)
    for conv in (n for n in model.graph.node if n.op_type == "Conv"):
        assert _axis(producers[conv.input[1]]) == 0
    assert (
        Evaluator.from_graph(up_graph, synthetic_images(4, SIZE, seed=3)).evaluate(model).agreement
        >= 0.99
    )


def test_one_calibration_serves_both_placements(
    graph: onnx.ModelProto, stats: CalibrationStats, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_calibration(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("quantize() must not calibrate again")

    for module in ("onnxruntime.quantization.calibrate", "onnxruntime.quantization.quantize"):
        monkeypatch.setattr(importlib.import_module(module), "create_calibrator", no_calibration)
    monkeypatch.setattr("calibration.quantize.collect_statistics", no_calibration)
    cpu = quantize(graph, stats, placement="cpu")
    trt = quantize(graph, stats, placement="tensorrt")
    assert cpu.SerializeToString() != trt.SerializeToString()
    inits_cpu, inits_trt = _initializers(cpu), _initializers(trt)
    relu = next(n.output[0] for n in _body_nodes(graph) if n.op_type == "Relu")
    scale = {
        m: next(
            float(i[n.input[1]])
            for n in g.graph.node
            if n.op_type == "QuantizeLinear" and n.input[0] == relu
        )
        for m, g, i in (("cpu", cpu, inits_cpu), ("trt", trt, inits_trt))
    }
    lo, hi = stats.ranges[relu]
    assert scale["cpu"] == pytest.approx((hi - min(lo, 0.0)) / 255.0, rel=1e-4)
    assert scale["trt"] == pytest.approx(max(abs(lo), abs(hi)) / 127.0, rel=1e-4)


@pytest.mark.parametrize("placement", ["cpu", "tensorrt"])
def test_keep_float_and_only(
    deep_graph: onnx.ModelProto, deep_stats: CalibrationStats, placement: str
) -> None:
    candidates = quantizable_nodes(deep_graph, placement)
    convs = [n for n in candidates if _node(deep_graph, n).op_type == "Conv"]
    assert len(convs) == 5
    first, middle = convs[0], convs[2]
    for name in (first, middle):
        kept = quantize(deep_graph, deep_stats, placement=placement, keep_float=[name])
        producers = _producers(kept)
        weight = _node(kept, name).input[1]
        assert weight not in producers, f"{name}'s weight is quantized although kept in float"
        if placement == "tensorrt" or name == first:
            assert name not in quantized_nodes(kept)  # none of its inputs is dequantized
        others = set(convs) - {name}
        assert others <= set(quantized_nodes(kept))
        if placement == "tensorrt":
            assert check_tensorrt_qdq(kept).float_ops == [name]
    alone = quantize(deep_graph, deep_stats, placement=placement, only=[middle])
    assert set(quantized_nodes(alone)) & set(convs) == {middle}
    producers = _producers(alone)
    assert producers[_node(alone, middle).input[1]].op_type == "DequantizeLinear"


def test_quantize_bad_arguments(graph: onnx.ModelProto, stats: CalibrationStats) -> None:
    with pytest.raises(ConfigError, match="no node named 'nope'"):
        quantize(graph, stats, placement="cpu", keep_float=["nope"])
    with pytest.raises(ConfigError, match="no node named 'ghost'"):
        quantize(graph, stats, placement="tensorrt", only=["ghost"])
    with pytest.raises(ConfigError, match="placement must be one of cpu, tensorrt, got 'gpu'"):
        quantize(graph, stats, placement="gpu")
    with pytest.raises(ConfigError, match="placement must be one of"):
        quantizable_nodes(graph, "dla")


# ---------------------------------------------------------------- mixed precision


def test_target_validation_and_failures() -> None:
    for bad in ({"min_agreement": 1.5}, {"min_agreement": -0.1}, {"max_miou_drop": -1.0}):
        with pytest.raises(ConfigError):
            Target(**bad)
    target = Target(0.99, 1.0)
    assert target.failures(Figures(0.995, 0.0, 0.5, 0.5)) == []
    misses = target.failures(Figures(0.98, 0.0, 0.5, 2.0))
    assert len(misses) == 2 and "agreement" in misses[0] and "mIoU drop" in misses[1]
    assert Target().to_json() == {"min_agreement": 0.99, "max_miou_drop": None, "confidence": None}


def test_evaluator_on_the_float_graph(graph: onnx.ModelProto, eval_images: np.ndarray) -> None:
    labels = np.random.default_rng(0).integers(0, 4, (len(eval_images), *SIZE)).astype(np.uint8)
    evaluator = Evaluator.from_graph(graph, eval_images, labels=labels, ignore_index=3)
    figures = evaluator.evaluate(graph)
    assert figures.agreement == 1.0 and figures.logit_error == 0.0
    assert figures.miou_drop == 0.0 and figures.miou == evaluator.ref_miou
    assert figures.miou is not None and 0.0 <= figures.miou <= 1.0 and len(figures.iou or []) == 4
    limited = evaluator.evaluate(graph, limit=2)
    assert limited.agreement == 1.0 and limited.miou is None  # mIoU only over every image
    with pytest.raises(ConfigError, match="one entry per image"):
        Evaluator(eval_images, evaluator.ref_logits[:3])


def test_a_search_with_confidence_is_judged_on_the_bound(
    graph: onnx.ModelProto, stats: CalibrationStats, eval_images: np.ndarray
) -> None:
    labels = np.random.default_rng(0).integers(0, 4, (len(eval_images), *SIZE)).astype(np.uint8)
    plain = Evaluator.from_graph(graph, eval_images, labels=labels)
    bounded = Evaluator.from_graph(graph, eval_images, labels=labels, confidence=0.95)
    same = bounded.evaluate(graph)
    assert same.agreement_low == 1.0 and same.miou_drop_high == 0.0 and same.frames == len(eval_images)
    assert plain.evaluate(graph).agreement_low is None
    assert bounded.evaluate(graph, limit=2).agreement_low is None  # the sensitivity's quick look
    full = bounded.evaluate(quantize(graph, stats, placement="cpu"))
    assert full.agreement_low is not None and full.agreement_low < full.agreement < 1.0
    # a target between the bound and the figure: met on the figures, missed on the bound
    between = (full.agreement_low + full.agreement) / 2
    assert Target(between).failures(full) == []
    result = search_float_layers(graph, stats, bounded, Target(between, confidence=0.95), placement="cpu")
    assert result.steps[0]["kept_float"] == 0 and not result.steps[0]["met"]
    assert result.steps[0]["agreement_low"] == full.agreement_low
    if result.met:
        assert result.figures.agreement_low is not None and result.figures.agreement_low >= between


def test_easy_target_keeps_nothing_in_float(
    graph: onnx.ModelProto, stats: CalibrationStats, evaluator: Evaluator
) -> None:
    messages: list[str] = []
    result = search_float_layers(
        graph, stats, evaluator, Target(0.9), placement="cpu", say=messages.append
    )
    assert result.met and result.kept_float == [] and result.sensitivity == []
    assert len(result.steps) == 1 and result.steps[0]["kept_float"] == 0 and result.steps[0]["met"]
    assert result.figures.agreement >= 0.9 and quantized_nodes(result.model)
    assert len(messages) == 1 and "int8 (cpu)" in messages[0]
    data = json.loads(json.dumps(result.to_json()))
    assert data["met"] is True and data["kept_float"] == [] and data["layers_analysed"] == 0


@pytest.mark.parametrize(
    ("name", "placement"), [("graph", "cpu"), ("deep_graph", "cpu"), ("deep_graph", "tensorrt")]
)
def test_hard_target_keeps_the_most_sensitive_layers(
    request: pytest.FixtureRequest,
    calib_images: np.ndarray,
    eval_images: np.ndarray,
    name: str,
    placement: str,
) -> None:
    model = request.getfixturevalue(name)
    model_stats = collect_statistics(model, calib_images, method="minmax")
    evaluator = Evaluator.from_graph(model, eval_images)
    target = Target(0.99999)
    full = evaluator.evaluate(quantize(model, model_stats, placement=placement))
    assert target.failures(full), (
        f"full int8 meets {target} ({full.agreement}); the test needs a harder one"
    )
    result = search_float_layers(model, model_stats, evaluator, target, placement=placement)
    candidates = quantizable_nodes(model, placement)
    # the sensitivity analysis ranks every candidate, most damaging first
    assert sorted(s.node for s in result.sensitivity) == sorted(candidates)
    errors = [s.logit_error for s in result.sensitivity]
    assert errors == sorted(errors, reverse=True)
    # layers are kept in float in that order
    k = len(result.kept_float)
    assert 1 <= k <= len(candidates)
    assert result.kept_float == result.sensitivity[:k]
    kept = [s["kept_float"] for s in result.steps]
    assert kept[0] == 0 and result.steps[0]["agreement"] == full.agreement
    growing = kept[: kept.index(k) + 1] if k in kept else kept
    assert growing == sorted(set(growing)), kept  # 0, 1, 2, 4, ... until the target holds
    assert all(b <= max(2 * a, 1) for a, b in zip(growing, growing[1:], strict=False))
    # with every candidate in float the graph computes the float graph, so the target is met
    all_float = quantize(model, model_stats, placement=placement, keep_float=candidates)
    assert evaluator.evaluate(all_float).agreement == 1.0
    assert result.met and not target.failures(result.figures)
    final = next(s for s in result.steps if s["kept_float"] == k)
    assert final["met"] and final["agreement"] == result.figures.agreement
    # the fewest tried: one layer fewer was tried and missed, and so did every smaller count
    assert any(s["kept_float"] == k - 1 and not s["met"] for s in result.steps)
    assert all(not s["met"] for s in result.steps if s["kept_float"] < k)


def test_layer_sensitivity(
    deep_graph: onnx.ModelProto, deep_stats: CalibrationStats, deep_evaluator: Evaluator
) -> None:
    done: list[tuple[int, int]] = []
    ranked = layer_sensitivity(
        deep_graph,
        deep_stats,
        deep_evaluator,
        placement="tensorrt",
        images=2,
        progress=lambda d, t: done.append((d, t)),
    )
    candidates = quantizable_nodes(deep_graph, "tensorrt")
    assert len(ranked) == len(candidates) == 5 and {s.node for s in ranked} == set(candidates)
    assert [s.logit_error for s in ranked] == sorted((s.logit_error for s in ranked), reverse=True)
    assert all(
        s.op_type == "Conv" and s.logit_error > 0 and 0.5 < s.agreement <= 1.0 for s in ranked
    )
    assert done == [(i, 5) for i in range(1, 6)]
    some = layer_sensitivity(
        deep_graph, deep_stats, deep_evaluator, placement="cpu", images=2, candidates=candidates[:2]
    )
    assert {s.node for s in some} == set(candidates[:2])


class _FakeEvaluator:
    """Figures from which candidate layers a graph quantizes (tensorrt placement)."""

    def __init__(self, weights: dict[str, float], needed: set[str] | None) -> None:
        self.weights = weights
        self.needed = needed

    def evaluate(self, model: onnx.ModelProto, *, limit: int | None = None) -> Figures:
        quantized = set(quantized_nodes(model)) & set(self.weights)
        error = sum(self.weights[n] for n in quantized)
        if self.needed is None:  # never good enough; more float is better
            return Figures(0.5 + 0.01 * (len(self.weights) - len(quantized)), error)
        return Figures(0.9 if quantized & self.needed else 1.0, error)


def test_search_bisects_to_the_fewest_float_layers(
    deep_graph: onnx.ModelProto, deep_stats: CalibrationStats
) -> None:
    candidates = quantizable_nodes(deep_graph, "tensorrt")
    weights = {n: float(i + 1) for i, n in enumerate(candidates)}  # the last is the most sensitive
    ranking = sorted(candidates, key=lambda n: -weights[n])
    fake = cast(Evaluator, _FakeEvaluator(weights, needed=set(ranking[:3])))
    result = search_float_layers(deep_graph, deep_stats, fake, Target(0.99), placement="tensorrt")
    assert result.met and [s.node for s in result.kept_float] == ranking[:3]
    assert [(s["kept_float"], s["met"]) for s in result.steps] == [
        (0, False),
        (1, False),
        (2, False),
        (4, True),
        (3, True),
    ]
    assert set(quantized_nodes(result.model)) & set(candidates) == set(ranking[3:])
    reasons = [k["reason"] for k in result.to_json()["kept_float"]]
    assert reasons[0].startswith("sensitivity rank 1:") and len(reasons) == 3


def test_search_that_never_meets_the_target_returns_the_best(
    deep_graph: onnx.ModelProto, deep_stats: CalibrationStats
) -> None:
    candidates = quantizable_nodes(deep_graph, "tensorrt")
    fake = cast(
        Evaluator, _FakeEvaluator({n: float(i + 1) for i, n in enumerate(candidates)}, None)
    )
    result = search_float_layers(deep_graph, deep_stats, fake, Target(0.99), placement="tensorrt")
    assert not result.met
    assert [s["kept_float"] for s in result.steps] == [0, 1, 2, 4, 5]
    assert not any(s["met"] for s in result.steps)
    assert len(result.kept_float) == 5 and result.figures.agreement == max(
        s["agreement"] for s in result.steps
    )
    assert not set(quantized_nodes(result.model)) & set(candidates)
    assert result.to_json()["met"] is False


# ---------------------------------------------------------------- fp16


@pytest.fixture(scope="session")
def fp16_pair(graph: onnx.ModelProto) -> tuple[onnx.ModelProto, onnx.ModelProto, dict[str, Any]]:
    """The graph with mask and logits outputs, and its fp16 version."""
    source = select_outputs(graph, ["mask", "logits"])
    half, info = to_fp16(source)
    return source, half, info


def test_fp16_graph_structure(
    fp16_pair: tuple[onnx.ModelProto, onnx.ModelProto, dict[str, Any]],
) -> None:
    source, half, info = fp16_pair
    onnx.checker.check_model(half, full_check=True)
    _assert_topologically_sorted(half)
    assert half.ir_version <= 9 and half.producer_name == "edgeseg"
    assert [(i.name, i.type.tensor_type.elem_type) for i in half.graph.input] == [
        ("image", TensorProto.UINT8)
    ]
    assert [(o.name, o.type.tensor_type.elem_type) for o in half.graph.output] == [
        ("mask", TensorProto.UINT8),
        ("logits", TensorProto.FLOAT),
    ]
    named = name_nodes(source)
    regions = split_regions(named)
    kept = info["kept_fp32"]
    assert set(regions.pre) | set(regions.post) <= set(kept)
    argmax = next(n.name for n in named.graph.node if n.op_type == "ArgMax")
    assert argmax in kept and kept[argmax] == "post-processing"
    assert not set(regions.body) & set(kept)  # Conv/Relu have no reason to stay fp32
    assert info["fp16_nodes"] == len(regions.body) == 3
    assert sum(info["kept_by_op"].values()) == len(kept) and info["casts_added"] > 0
    inits = {i.name: i.data_type for i in half.graph.initializer}
    convs = [n for n in half.graph.node if n.op_type == "Conv"]
    assert len(convs) == 2
    for conv in convs:
        assert (
            inits[conv.input[1]] == TensorProto.FLOAT16
            and inits[conv.input[2]] == TensorProto.FLOAT16
        )


def test_fp16_masks_agree_with_fp32(
    fp16_pair: tuple[onnx.ModelProto, onnx.ModelProto, dict[str, Any]],
) -> None:
    source, half, _ = fp16_pair
    images = synthetic_images(8, SIZE, seed=4)
    ref_mask, ref_logits = _run(source, images, ["mask", "logits"])
    mask, logits = _run(half, images, ["mask", "logits"])
    assert mask.dtype == np.uint8 and logits.dtype == np.float32 and mask.shape == (8, *SIZE)
    assert float(np.mean(mask == ref_mask)) >= 0.99  # measured: 1.0
    assert np.abs(logits - ref_logits).max() < 0.05
    assert not np.array_equal(logits, ref_logits)  # it does compute in fp16


def test_fp16_of_the_full_bundle_graph(graph: onnx.ModelProto) -> None:
    half, info = to_fp16(graph)
    onnx.checker.check_model(half)
    assert [o.name for o in half.graph.output] == ["mask", "probs", "logits"]
    assert "Softmax" in info["kept_by_op"]


def test_fp16_kept_nodes_exchange_fp32_tensors(
    fp16_pair: tuple[onnx.ModelProto, onnx.ModelProto, dict[str, Any]],
) -> None:
    _, half, info = fp16_pair
    kept = set(info["kept_fp32"])
    producers = _producers(half)
    rounded = []
    for node in half.graph.node:
        if node.name not in kept:
            continue
        for tensor in node.input:
            path, source = [], producers.get(tensor)
            while source is not None and source.op_type == "Cast" and source.name not in kept:
                path += [helper.get_attribute_value(a) for a in source.attribute if a.name == "to"]
                source = producers.get(source.input[0])
            if source is not None and source.name in kept and TensorProto.FLOAT16 in path:
                rounded.append(f"{source.name} -> {node.name}")
    assert rounded == []


# ---------------------------------------------------------------- topological_sort


def test_topological_sort_restores_a_shuffled_graph(graph: onnx.ModelProto) -> None:
    assert [n.name for n in topological_sort(graph).graph.node] == [
        n.name for n in graph.graph.node
    ]
    shuffled = onnx.ModelProto()
    shuffled.CopyFrom(graph)
    nodes = list(shuffled.graph.node)
    order = np.random.default_rng(3).permutation(len(nodes))
    del shuffled.graph.node[:]
    shuffled.graph.node.extend(nodes[i] for i in order)
    with pytest.raises(onnx.checker.ValidationError, match="topologically sorted"):
        onnx.checker.check_model(shuffled)
    restored = topological_sort(shuffled)
    _assert_topologically_sorted(restored)
    assert sorted(n.name for n in restored.graph.node) == sorted(n.name for n in graph.graph.node)
    onnx.checker.check_model(restored, full_check=True)
    images = synthetic_images(2, SIZE, seed=5)
    for got, want in zip(
        _run(restored, images, ["mask", "logits"]),
        _run(graph, images, ["mask", "logits"]),
        strict=True,
    ):
        np.testing.assert_array_equal(got, want)


def test_topological_sort_refuses_a_cycle() -> None:
    cyclic = _plain_graph(
        [
            helper.make_node("Add", ["x", "b"], ["a"], name="first"),
            helper.make_node("Relu", ["a"], ["b"], name="second"),
            helper.make_node("Neg", ["b"], ["y"], name="third"),
        ]
    )
    with pytest.raises(ExportError, match="cannot order the graph: .*a cycle"):
        topological_sort(cyclic)
    dangling = _plain_graph([helper.make_node("Add", ["x", "ghost"], ["y"], name="lonely")])
    with pytest.raises(ExportError, match="lonely .*ghost"):
        topological_sort(dangling)


def test_topological_sort_with_a_subgraph() -> None:
    then = helper.make_graph(
        [helper.make_node("Add", ["x", "x"], ["t"]), helper.make_node("Neg", ["t"], ["y_then"])],
        "then",
        [],
        [helper.make_tensor_value_info("y_then", TensorProto.FLOAT, [1, 2])],
    )
    other = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y_else"])],
        "else",
        [],
        [helper.make_tensor_value_info("y_else", TensorProto.FLOAT, [1, 2])],
    )
    model = _plain_graph(
        [
            helper.make_node("ReduceSum", ["x"], ["s"], keepdims=0, name="sum"),
            helper.make_node("Greater", ["s", "zero"], ["c"], name="positive"),
            helper.make_node(
                "If", ["c"], ["y"], then_branch=then, else_branch=other, name="branch"
            ),
        ],
        [helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0])],
    )
    onnx.checker.check_model(model, full_check=True)
    assert [n.name for n in topological_sort(model).graph.node] == ["sum", "positive", "branch"]
