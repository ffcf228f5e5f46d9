"""The static TensorRT Q/DQ checker: valid graphs pass, each broken rule names its node."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from calibration.qdq_rules import QdqReport, Violation, check_tensorrt_qdq
from edgeseg.errors import ExportError

F32 = np.float32
Inits = dict[str, np.ndarray]


# --------------------------------------------------------------------------- graph builders


def _q(name: str, inputs: list[str], output: str, **attrs: Any) -> onnx.NodeProto:
    return helper.make_node("QuantizeLinear", inputs, [output], name=name, **attrs)


def _dq(name: str, inputs: list[str], output: str, **attrs: Any) -> onnx.NodeProto:
    return helper.make_node("DequantizeLinear", inputs, [output], name=name, **attrs)


def _model(
    nodes: list[onnx.NodeProto],
    inits: Inits,
    *,
    inputs: list[onnx.ValueInfoProto] | None = None,
    out_shape: tuple[int, ...] = (1, 8, 8, 8),
    extra_opsets: tuple[tuple[str, int], ...] = (),
) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes,
        "qdq",
        inputs or [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(out_shape))],
        [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()],
    )
    opsets = [helper.make_opsetid("", 19)] + [helper.make_opsetid(d, v) for d, v in extra_opsets]
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = 9  # onnxruntime 1.31 refuses ir_version > 10
    return model


def _conv_parts() -> tuple[list[onnx.NodeProto], Inits]:
    """x -> Q/DQ (per tensor) -> Conv <- DQ/Q (per channel, axis 0) <- w; float bias."""
    rng = np.random.default_rng(0)
    inits: Inits = {
        "x_scale": np.array(0.02, F32),
        "x_zp": np.array(0, np.int8),
        "w": (rng.normal(size=(8, 3, 3, 3)) * 0.3).astype(F32),
        "w_scale": np.linspace(0.004, 0.006, 8).astype(F32),
        "w_zp": np.zeros(8, np.int8),
        "b": np.zeros(8, F32),
    }
    nodes = [
        _q("x_q", ["x", "x_scale", "x_zp"], "x_int8"),
        _dq("x_dq", ["x_int8", "x_scale", "x_zp"], "x_deq"),
        _q("w_q", ["w", "w_scale", "w_zp"], "w_int8", axis=0),
        _dq("w_dq", ["w_int8", "w_scale", "w_zp"], "w_deq", axis=0),
        helper.make_node("Conv", ["x_deq", "w_deq", "b"], ["y"], name="conv", pads=[1, 1, 1, 1]),
    ]
    return nodes, inits


def _deconv_parts() -> tuple[list[onnx.NodeProto], Inits]:
    """Like :func:`_conv_parts` for a ConvTranspose, weights (C_in=8, C_out=4, 2, 2) on axis 1."""
    nodes, inits = _conv_parts()
    inits["w"] = np.random.default_rng(1).normal(size=(8, 4, 2, 2)).astype(F32) * 0.3
    inits["w_scale"] = np.linspace(0.004, 0.006, 4).astype(F32)
    inits["w_zp"] = np.zeros(4, np.int8)
    inits["b"] = np.zeros(4, F32)
    _set_attr(_node(nodes, "w_q"), "axis", 1)
    _set_attr(_node(nodes, "w_dq"), "axis", 1)
    nodes[-1] = helper.make_node(
        "ConvTranspose", ["x_deq", "w_deq", "b"], ["y"], name="up", strides=[2, 2]
    )
    return nodes, inits


def _deconv_model(nodes: list[onnx.NodeProto], inits: Inits) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 4, 4])
    return _model(nodes, inits, inputs=[x], out_shape=(1, 4, 8, 8))


def _node(nodes: list[onnx.NodeProto], name: str) -> onnx.NodeProto:
    return next(n for n in nodes if n.name == name)


def _set_attr(node: onnx.NodeProto, name: str, value: int | None) -> None:
    kept = [a for a in node.attribute if a.name != name]
    del node.attribute[:]
    node.attribute.extend(kept)
    if value is not None:
        node.attribute.append(helper.make_attribute(name, value))


def _expect(
    model: onnx.ModelProto, rule: str, node: str, *, only: set[str] | None = None
) -> Violation:
    """Asserts a ``rule`` violation on ``node``, named in str() and in the ExportError."""
    report = check_tensorrt_qdq(model)
    assert not report.ok
    hits = [v for v in report.violations if v.rule == rule and v.node == node]
    assert hits, f"no {rule!r} violation on {node!r}; got {[str(v) for v in report.violations]}"
    assert str(hits[0]).startswith(f"{node} (")
    if only is not None:
        assert {v.rule for v in report.violations} == only, [str(v) for v in report.violations]
    with pytest.raises(ExportError) as err:
        report.raise_for_violations()
    assert str(hits[0]) in str(err.value)
    return hits[0]


# --------------------------------------------------------------------------- valid graphs


def test_valid_conv_passes() -> None:
    nodes, inits = _conv_parts()
    model = _model(nodes, inits)
    onnx.checker.check_model(model, full_check=True)
    report = check_tensorrt_qdq(model)
    assert report.ok, [str(v) for v in report.violations]
    assert report.quantized_ops == {"Conv": 1}
    assert (report.quantize_nodes, report.dequantize_nodes) == (2, 2)
    assert report.float_ops == []
    report.raise_for_violations()  # no-op


def test_valid_conv_transpose_on_axis_1_passes() -> None:
    model = _deconv_model(*_deconv_parts())
    onnx.checker.check_model(model, full_check=True)
    report = check_tensorrt_qdq(model)
    assert report.ok, [str(v) for v in report.violations]
    assert report.quantized_ops == {"ConvTranspose": 1}


def test_int8_weights_stored_quantized_and_constants_through_constant_and_identity() -> None:
    nodes, inits = _conv_parts()
    inits["w_q8"] = np.clip(
        np.round(inits.pop("w") / inits["w_scale"][:, None, None, None]), -127, 127
    ).astype(np.int8)
    scale = inits.pop("x_scale")
    nodes = [n for n in nodes if n.name != "w_q"]
    _node(nodes, "w_dq").input[0] = "w_q8"
    nodes[:0] = [
        helper.make_node(
            "Constant", [], ["x_scale_c"], name="scale_const", value=numpy_helper.from_array(scale)
        ),
        helper.make_node("Identity", ["x_scale_c"], ["x_scale"], name="scale_id"),
    ]
    model = _model(nodes, inits)
    onnx.checker.check_model(model, full_check=True)
    report = check_tensorrt_qdq(model)
    assert report.ok, [str(v) for v in report.violations]
    assert (report.quantize_nodes, report.dequantize_nodes, report.quantized_ops) == (
        1,
        2,
        {"Conv": 1},
    )


def test_graph_without_qdq_is_ok_and_float() -> None:
    w = np.zeros((8, 3, 3, 3), F32)
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["y"]),
    ]
    report = check_tensorrt_qdq(_model(nodes, {"w": w}))
    assert report.ok
    assert (report.quantize_nodes, report.dequantize_nodes, report.quantized_ops) == (0, 0, {})
    assert report.float_ops == ["conv"]
    assert report.to_json() == {
        "ok": True,
        "quantize_nodes": 0,
        "dequantize_nodes": 0,
        "quantized_ops": {},
        "float_ops": ["conv"],
        "violations": [],
    }


@pytest.mark.parametrize(
    ("trans_b", "axis", "ok"), [(1, 0, True), (0, 1, True), (1, 1, False), (0, 0, False)]
)
def test_gemm_weight_axis_follows_trans_b(trans_b: int, axis: int, ok: bool) -> None:
    w = np.ones((4, 6) if trans_b else (6, 4), F32)  # (N, K) with transB=1, else (K, N)
    channels = w.shape[axis]
    inits: Inits = {
        "x_scale": np.array(0.02, F32),
        "x_zp": np.array(0, np.int8),
        "w": w,
        "w_scale": np.full(channels, 0.01, F32),
        "w_zp": np.zeros(channels, np.int8),
    }
    nodes = [
        _q("x_q", ["x", "x_scale", "x_zp"], "x_int8"),
        _dq("x_dq", ["x_int8", "x_scale", "x_zp"], "x_deq"),
        _q("w_q", ["w", "w_scale", "w_zp"], "w_int8", axis=axis),
        _dq("w_dq", ["w_int8", "w_scale", "w_zp"], "w_deq", axis=axis),
        helper.make_node("Gemm", ["x_deq", "w_deq"], ["y"], name="fc", transB=trans_b),
    ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 6])
    model = _model(nodes, inits, inputs=[x], out_shape=(2, 4))
    if ok:
        assert check_tensorrt_qdq(model).ok
    else:
        assert "fc" in str(_expect(model, "axis", "w_dq", only={"axis"}))


# --------------------------------------------------------------------------- one broken rule each


def test_uint8_zero_point() -> None:
    nodes, inits = _conv_parts()
    inits["x_zp"] = np.array(0, np.uint8)
    v = _expect(_model(nodes, inits), "dtype", "x_q", only={"dtype"})
    assert "uint8" in v.message
    _expect(_model(nodes, inits), "dtype", "x_dq")


def test_nonzero_zero_point() -> None:
    nodes, inits = _conv_parts()
    inits["x_zp"] = np.array(3, np.int8)
    v = _expect(_model(nodes, inits), "zero-point", "x_q", only={"zero-point"})
    assert "symmetric" in v.message


def test_missing_zero_point_on_quantize_means_uint8() -> None:
    nodes, inits = _conv_parts()
    del _node(nodes, "x_q").input[2]
    v = _expect(_model(nodes, inits), "dtype", "x_q", only={"dtype"})
    assert "no zero point" in v.message and "uint8" in v.message


def test_non_constant_zero_point() -> None:
    nodes, inits = _conv_parts()
    nodes.insert(0, helper.make_node("Neg", ["x_zp"], ["x_zp_rt"], name="zp_neg"))
    _node(nodes, "x_q").input[2] = "x_zp_rt"
    _expect(_model(nodes, inits), "zero-point", "x_q", only={"zero-point"})


@pytest.mark.parametrize(
    ("value", "word"), [(-0.02, "negative"), (0.0, "zero"), (np.nan, "NaN"), (np.inf, "infinite")]
)
def test_bad_scale_values(value: float, word: str) -> None:
    nodes, inits = _conv_parts()
    inits["x_scale"] = np.array(value, F32)
    v = _expect(_model(nodes, inits), "scale", "x_q", only={"scale"})
    assert word in v.message
    _expect(_model(nodes, inits), "scale", "x_dq")


def test_one_negative_per_channel_scale() -> None:
    nodes, inits = _conv_parts()
    inits["w_scale"][3] = -0.01
    v = _expect(_model(nodes, inits), "scale", "w_dq", only={"scale"})
    assert "1 negative" in v.message


def test_non_constant_scale() -> None:
    nodes, inits = _conv_parts()
    nodes.insert(0, helper.make_node("Abs", ["x_scale"], ["x_scale_rt"], name="scale_abs"))
    _node(nodes, "x_q").input[1] = "x_scale_rt"
    _node(nodes, "x_dq").input[1] = "x_scale_rt"
    v = _expect(_model(nodes, inits), "scale", "x_q", only={"scale"})
    assert "x_scale_rt" in v.message and "constant" in v.message


def test_float64_scale() -> None:
    nodes, inits = _conv_parts()
    inits["w_scale"] = inits["w_scale"].astype(np.float64)
    v = _expect(_model(nodes, inits), "scale", "w_q", only={"scale"})
    assert "double" in v.message


def test_per_channel_scale_of_wrong_length() -> None:
    nodes, inits = _conv_parts()
    inits["w_scale"] = np.full(4, 0.01, F32)
    inits["w_zp"] = np.zeros(4, np.int8)
    v = _expect(_model(nodes, inits), "scale", "w_dq", only={"scale"})
    assert "4 values" in v.message and "8 along axis 0" in v.message


def test_zero_point_size_differs_from_scale() -> None:
    nodes, inits = _conv_parts()
    inits["w_zp"] = np.array(0, np.int8)
    _expect(_model(nodes, inits), "zero-point", "w_dq", only={"zero-point"})


def test_per_channel_activation() -> None:
    nodes, inits = _conv_parts()
    inits["x_scale"] = np.full(3, 0.02, F32)
    inits["x_zp"] = np.zeros(3, np.int8)
    v = _expect(_model(nodes, inits), "activations", "x_q", only={"activations"})
    assert "per tensor" in v.message
    _expect(_model(nodes, inits), "activations", "x_dq")


def test_conv_transpose_weights_on_axis_0() -> None:
    nodes, inits = _deconv_parts()
    inits["w_scale"] = np.full(8, 0.01, F32)  # one per input channel
    inits["w_zp"] = np.zeros(8, np.int8)
    _set_attr(_node(nodes, "w_q"), "axis", 0)
    _set_attr(_node(nodes, "w_dq"), "axis", 0)
    v = _expect(_deconv_model(nodes, inits), "axis", "w_dq", only={"axis"})
    assert "up" in v.message and "axis 1" in v.message
    _expect(_deconv_model(nodes, inits), "axis", "w_q")


def test_conv_weights_on_axis_1() -> None:
    nodes, inits = _conv_parts()
    inits["w_scale"] = np.full(3, 0.01, F32)  # one per input channel
    inits["w_zp"] = np.zeros(3, np.int8)
    _set_attr(_node(nodes, "w_q"), "axis", 1)
    _set_attr(_node(nodes, "w_dq"), "axis", 1)
    v = _expect(_model(nodes, inits), "axis", "w_dq", only={"axis"})
    assert "conv" in v.message and "axis 0" in v.message


def test_per_channel_without_axis_attribute_means_axis_1() -> None:
    nodes, inits = _conv_parts()
    _set_attr(_node(nodes, "w_q"), "axis", None)
    _set_attr(_node(nodes, "w_dq"), "axis", None)
    v = _expect(_model(nodes, inits), "axis", "w_dq", only={"axis"})
    assert "no axis attribute" in v.message or "without an axis attribute" in v.message


def test_quantize_feeding_a_non_dequantize() -> None:
    nodes, inits = _conv_parts()
    nodes.append(helper.make_node("Relu", ["x_int8"], ["peek"], name="peek_relu"))
    v = _expect(_model(nodes, inits), "pair", "x_q", only={"pair"})
    assert "peek_relu" in v.message


def test_quantize_output_as_graph_output() -> None:
    nodes, inits = _conv_parts()
    model = _model(nodes, inits)
    model.graph.output.append(
        helper.make_tensor_value_info("x_int8", TensorProto.INT8, [1, 3, 8, 8])
    )
    _expect(model, "pair", "x_q", only={"pair"})


def test_quantize_dequantize_with_different_scale() -> None:
    nodes, inits = _conv_parts()
    inits["x_scale2"] = np.array(0.03, F32)
    _node(nodes, "x_dq").input[1] = "x_scale2"
    v = _expect(_model(nodes, inits), "pair", "x_q", only={"pair"})
    assert "x_dq" in v.message and "x_scale2" in v.message


def test_orphan_dequantize_on_activation() -> None:
    nodes, inits = _conv_parts()
    nodes = [n for n in nodes if n.name != "x_q"]
    x = helper.make_tensor_value_info("x_int8", TensorProto.INT8, [1, 3, 8, 8])
    v = _expect(_model(nodes, inits, inputs=[x]), "orphan-dq", "x_dq", only={"orphan-dq"})
    assert "graph input" in v.message


def test_conv_with_quantized_input_but_float_weights() -> None:
    nodes, inits = _conv_parts()
    nodes = [n for n in nodes if n.name not in ("w_q", "w_dq")]
    _node(nodes, "conv").input[1] = "w"
    v = _expect(_model(nodes, inits), "weights", "conv", only={"weights"})
    assert "float" in v.message
    report = check_tensorrt_qdq(_model(nodes, inits))
    assert report.quantized_ops == {} and report.float_ops == []


def test_conv_with_quantized_weights_but_float_input() -> None:
    nodes, inits = _conv_parts()
    nodes = [n for n in nodes if n.name not in ("x_q", "x_dq")]
    _node(nodes, "conv").input[0] = "x"
    _expect(_model(nodes, inits), "activations", "conv", only={"activations"})


def test_quantized_int32_bias() -> None:
    nodes, inits = _conv_parts()
    inits["b_q32"] = np.arange(8, dtype=np.int32)
    inits["b_scale"] = np.full(8, 1e-4, F32)
    nodes.insert(-1, _dq("b_dq", ["b_q32", "b_scale"], "b_deq", axis=0))
    _node(nodes, "conv").input[2] = "b_deq"
    model = _model(nodes, inits)
    v = _expect(model, "bias", "conv", only={"bias", "dtype"})
    assert "b_dq" in v.message
    assert "int32" in _expect(model, "dtype", "b_dq").message


def test_com_microsoft_domain() -> None:
    nodes, inits = _conv_parts()
    _node(nodes, "x_q").domain = "com.microsoft"
    _node(nodes, "x_dq").domain = "com.microsoft"
    model = _model(nodes, inits, extra_opsets=(("com.microsoft", 1),))
    _expect(model, "domain", "x_q", only={"domain"})
    _expect(model, "domain", "x_dq")


def test_block_quantization() -> None:
    nodes, inits = _conv_parts()
    inits["w_scale"] = np.full((8, 1, 3, 3), 0.01, F32)  # blocks of 3 along axis 1
    inits["w_zp"] = np.zeros((8, 1, 3, 3), np.int8)
    for name in ("w_q", "w_dq"):
        _set_attr(_node(nodes, name), "axis", 1)
        _set_attr(_node(nodes, name), "block_size", 3)
    v = _expect(_model(nodes, inits), "block", "w_dq", only={"block"})
    assert "block" in v.message


def test_qoperator_ops_are_refused() -> None:
    inits: Inits = {
        "xs": np.array(0.02, F32),
        "xz": np.array(0, np.int8),
        "w": np.zeros((8, 3, 1, 1), np.int8),
        "ws": np.array(0.01, F32),
        "wz": np.array(0, np.int8),
        "ys": np.array(0.05, F32),
        "yz": np.array(0, np.int8),
    }
    nodes = [
        _q("x_q", ["x", "xs", "xz"], "xq"),
        helper.make_node(
            "QLinearConv", ["xq", "xs", "xz", "w", "ws", "wz", "ys", "yz"], ["yq"], name="qconv"
        ),
        _dq("y_dq", ["yq", "ys", "yz"], "y"),
    ]
    _expect(_model(nodes, inits), "operator", "qconv")


def test_unnamed_node_is_named_by_its_output() -> None:
    nodes, inits = _conv_parts()
    inits["x_zp"] = np.array(5, np.int8)
    _node(nodes, "x_q").name = ""
    v = _expect(_model(nodes, inits), "zero-point", "x_int8 (unnamed QuantizeLinear)")
    assert str(v).startswith("x_int8 (unnamed QuantizeLinear) (QuantizeLinear): zero point")


# --------------------------------------------------------------------------- the report


def test_error_lists_fifty_then_counts_the_rest() -> None:
    violations = [Violation(f"n{i}", "DequantizeLinear", "dtype", "bad") for i in range(53)]
    report = QdqReport(violations, 0, 53, {}, [])
    with pytest.raises(ExportError) as err:
        report.raise_for_violations()
    lines = str(err.value).splitlines()
    assert "53 places" in lines[0]
    assert lines[1].strip() == "n0 (DequantizeLinear): bad"
    assert "n49 (" in lines[50] and "n50 (" not in str(err.value)
    assert lines[-1].strip() == "... and 3 more"
    payload = json.loads(json.dumps(report.to_json()))
    assert payload["ok"] is False and len(payload["violations"]) == 53
    assert payload["violations"][0] == {
        "node": "n0",
        "op_type": "DequantizeLinear",
        "rule": "dtype",
        "message": "bad",
    }


# --------------------------------------------------------------------------- end to end with ORT


def _float_net(path: Path) -> Path:
    """Conv -> BN -> ReLU -> ConvTranspose -> Conv, by hand, saved at ``path``."""
    rng = np.random.default_rng(0)
    inits: Inits = {
        "w1": rng.normal(size=(8, 3, 3, 3)) * 0.3,
        "b1": rng.normal(size=8) * 0.1,
        "bn_s": rng.uniform(0.5, 1.5, 8),
        "bn_b": rng.normal(size=8) * 0.1,
        "bn_m": rng.normal(size=8) * 0.1,
        "bn_v": rng.uniform(0.5, 2.0, 8),
        "w2": rng.normal(size=(8, 4, 2, 2)) * 0.3,
        "b2": rng.normal(size=4) * 0.1,
        "w3": rng.normal(size=(5, 4, 1, 1)) * 0.3,
        "b3": rng.normal(size=5) * 0.1,
    }
    inits = {k: v.astype(F32) for k, v in inits.items()}
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node(
            "BatchNormalization", ["c1", "bn_s", "bn_b", "bn_m", "bn_v"], ["bn"], name="bn1"
        ),
        helper.make_node("Relu", ["bn"], ["r"], name="relu1"),
        helper.make_node("ConvTranspose", ["r", "w2", "b2"], ["u"], name="up", strides=[2, 2]),
        helper.make_node("Conv", ["u", "w3", "b3"], ["y"], name="head"),
    ]
    model = _model(nodes, inits, out_shape=(1, 5, 16, 16))
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, path)
    return path


def _quantize(src: Path, dst: Path, *, symmetric_int8: bool) -> onnx.ModelProto:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            rng = np.random.default_rng(1)
            self.batches: Iterator[dict[str, np.ndarray]] = iter(
                [{"x": rng.normal(size=(1, 3, 8, 8)).astype(F32)} for _ in range(4)]
            )

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.batches, None)

    if symmetric_int8:
        activation_type = QuantType.QInt8
        extra = {
            "ActivationSymmetric": True,
            "WeightSymmetric": True,
            "QuantizeBias": False,
            "AddQDQPairToWeight": True,
            "OpTypesToExcludeOutputQuantization": ["Conv", "ConvTranspose"],
        }
    else:  # ONNX Runtime's defaults: asymmetric uint8 activations, int32 biases
        activation_type = QuantType.QUInt8
        extra = {"QuantizeBias": True}
    quantize_static(
        str(src),
        str(dst),
        Reader(),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=activation_type,
        weight_type=QuantType.QInt8,
        op_types_to_quantize=["Conv", "ConvTranspose"],
        extra_options=extra,
    )
    return onnx.load(dst)


def test_onnxruntime_symmetric_int8_tensorrt_placement_passes(tmp_path: Path) -> None:
    model = _quantize(_float_net(tmp_path / "f.onnx"), tmp_path / "q.onnx", symmetric_int8=True)
    report = check_tensorrt_qdq(model)
    assert report.ok, [str(v) for v in report.violations]
    assert report.quantized_ops == {"Conv": 2, "ConvTranspose": 1}
    assert report.quantize_nodes == report.dequantize_nodes == 6
    assert report.float_ops == []
    report.raise_for_violations()


def test_onnxruntime_default_asymmetric_uint8_fails(tmp_path: Path) -> None:
    model = _quantize(_float_net(tmp_path / "f.onnx"), tmp_path / "q.onnx", symmetric_int8=False)
    report = check_tensorrt_qdq(model)
    rules = {v.rule for v in report.violations}
    assert {"dtype", "zero-point", "bias"} <= rules, [str(v) for v in report.violations]
    dq_nodes = {n.name for n in model.graph.node if n.op_type == "DequantizeLinear"}
    assert {v.node for v in report.violations if v.rule == "bias"} == {"conv1", "up", "head"}
    assert any(
        v.rule == "dtype" and v.node in dq_nodes and "int32" in v.message for v in report.violations
    )
    with pytest.raises(ExportError) as err:
        report.raise_for_violations()
    for v in report.violations:
        assert str(v) in str(err.value)
