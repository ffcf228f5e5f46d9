"""Static check of a Q/DQ ONNX graph against TensorRT's explicit-quantization rules.

TensorRT >= 10 builds INT8 engines from explicit ``QuantizeLinear`` /
``DequantizeLinear`` (Q/DQ) pairs only, and its ONNX parser accepts a narrower
set of Q/DQ graphs than ONNX (and ONNX Runtime, where we measure accuracy)
does: symmetric INT8 only, constant positive scales, per-channel scales only
on constant weights along the output-channel axis, every Q followed by DQ.
A graph outside that set either fails to parse, or parses into something that
does not compute what ONNX Runtime measured (a uint8 Q that ONNX Runtime clips
at 0 becomes int8 in TensorRT; an absent ``axis`` means axis 1 to ONNX and
axis 0 to the parser), or silently runs a layer in float.

:func:`check_tensorrt_qdq` reads the graph (no ONNX Runtime, no TensorRT) and
returns a :class:`QdqReport` whose :class:`Violation` entries each name the
offending node. Rule ids:

- ``domain``: a Q/DQ outside the default ONNX domain (e.g. ``com.microsoft``).
- ``operator``: an integer-operator op the parser does not import
  (``QLinearConv``, ``ConvInteger``, ``DynamicQuantizeLinear``, ...).
- ``dtype``: a quantized type other than INT8 (a uint8 or absent zero point on
  a Q, a DQ of uint8 or int32, an ``output_dtype`` that is not int8).
- ``zero-point``: a zero point that is not a constant, not all zeros, or not
  the size of the scale.
- ``scale``: a scale that is missing, not a constant, not float32/float16,
  not finite and > 0 everywhere, or of the wrong length for its axis.
- ``block``: block quantization (``block_size`` or a scale of rank >= 2).
- ``axis``: a per-channel scale without an explicit ``axis``, with an axis out
  of range, or on another axis than the consumer's output channels (Conv 0,
  ConvTranspose 1, Gemm 0 with transB=1 else 1, MatMul the last).
- ``activations``: per-channel quantization of a non-constant tensor, or a
  Conv/ConvTranspose/Gemm/MatMul with quantized weights but a float input.
- ``weights``: a Conv/ConvTranspose/Gemm/MatMul with a quantized input but
  float weights.
- ``bias``: a Conv/ConvTranspose/Gemm bias that comes from a DequantizeLinear.
- ``pair``: a Q whose output feeds anything but DequantizeLinear nodes with the
  same scale, zero point and axis (or is a graph output, or is unused).
- ``orphan-dq``: a DQ of a non-constant tensor that no Q produces.

Constants are resolved through initializers, ``Constant`` nodes and
``Identity`` of a constant. Only the main graph is inspected (not the bodies
of If/Loop/Scan). The rules are stated for opset >= 19; older opsets are held
to the same rules.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgeseg.errors import ExportError

log = logging.getLogger(__name__)

QUANTIZE = "QuantizeLinear"
DEQUANTIZE = "DequantizeLinear"
#: Ops that TensorRT runs in INT8 when both their data and weight inputs come from DQ.
COMPUTE_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
#: Integer-operator ("QOperator") ops that onnx-tensorrt does not import.
UNSUPPORTED_QUANT_OPS = frozenset(
    {
        "QLinearConv",
        "QLinearMatMul",
        "ConvInteger",
        "MatMulInteger",
        "DynamicQuantizeLinear",
        "QLinearAdd",
        "QLinearMul",
        "QLinearConcat",
        "QLinearAveragePool",
        "QLinearGlobalAveragePool",
        "QLinearLeakyRelu",
        "QLinearSigmoid",
        "QGemm",
    }
)
#: How many violations :meth:`QdqReport.raise_for_violations` lists before summarising.
MAX_LISTED = 50

_DEFAULT_DOMAINS = ("", "ai.onnx")
_SCALE_TYPES = (TensorProto.FLOAT, TensorProto.FLOAT16)
_FLOAT_TYPES = (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16, TensorProto.DOUBLE)
_BIAS_INPUT = {"Conv": 2, "ConvTranspose": 2, "Gemm": 2}
_MAX_IDENTITY_DEPTH = 64


@dataclass(frozen=True)
class Violation:
    """One place where the graph breaks a TensorRT explicit-quantization rule.

    Attributes:
        node: The node's name, or ``"<first output> (unnamed OpType)"`` when it has none.
        op_type: The node's op type.
        rule: Short rule id (see the module docstring), e.g. ``"zero-point"``.
        message: What was found and what TensorRT needs.
    """

    node: str
    op_type: str
    rule: str
    message: str

    def __str__(self) -> str:
        return f"{self.node} ({self.op_type}): {self.message}"

    def to_json(self) -> dict[str, str]:
        """The violation as a JSON-ready dict."""
        return {
            "node": self.node,
            "op_type": self.op_type,
            "rule": self.rule,
            "message": self.message,
        }


@dataclass(frozen=True)
class QdqReport:
    """What :func:`check_tensorrt_qdq` found.

    Attributes:
        violations: Every rule violation, in graph order.
        quantize_nodes: Number of QuantizeLinear nodes (any domain).
        dequantize_nodes: Number of DequantizeLinear nodes (any domain).
        quantized_ops: op type -> number of nodes whose float inputs (data and weights for
            Conv/ConvTranspose/Gemm/MatMul; every non-constant input for other ops) all come
            from DequantizeLinear.
        float_ops: Names of Conv/ConvTranspose/Gemm/MatMul nodes with no quantized input,
            left in float on purpose (mixed precision, not a violation).
    """

    violations: list[Violation]
    quantize_nodes: int
    dequantize_nodes: int
    quantized_ops: dict[str, int]
    float_ops: list[str]

    @property
    def ok(self) -> bool:
        """True when no rule is broken."""
        return not self.violations

    def raise_for_violations(self) -> None:
        """Raises if any rule is broken.

        Raises:
            ExportError: listing every violation, one per line (the first
                :data:`MAX_LISTED`, then how many more).
        """
        if self.ok:
            return
        count = len(self.violations)
        lines = [
            f"the Q/DQ graph breaks TensorRT's explicit-quantization rules in {count} "
            f"place{'s' if count != 1 else ''}:"
        ]
        lines.extend(f"  {v}" for v in self.violations[:MAX_LISTED])
        if count > MAX_LISTED:
            lines.append(f"  ... and {count - MAX_LISTED} more")
        raise ExportError("\n".join(lines))

    def to_json(self) -> dict[str, Any]:
        """The report as a JSON-ready dict."""
        return {
            "ok": self.ok,
            "quantize_nodes": self.quantize_nodes,
            "dequantize_nodes": self.dequantize_nodes,
            "quantized_ops": dict(self.quantized_ops),
            "float_ops": list(self.float_ops),
            "violations": [v.to_json() for v in self.violations],
        }


def check_tensorrt_qdq(model: onnx.ModelProto) -> QdqReport:
    """Checks a Q/DQ model against TensorRT's explicit-quantization rules, statically.

    Args:
        model: The quantized model (opset >= 19). It is not modified.

    Returns:
        The report; ``report.ok`` is False when any node breaks a rule, and
        ``report.raise_for_violations()`` turns that into an :class:`ExportError`.
    """
    return _Checker(model.graph).run()


# --------------------------------------------------------------------------- internals


def _type_name(elem_type: int) -> str:
    try:
        return TensorProto.DataType.Name(elem_type).lower()
    except ValueError:
        return f"type {elem_type}"


def _attr(node: onnx.NodeProto, name: str) -> Any | None:
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return None


def _input(node: onnx.NodeProto, index: int) -> str:
    """The name of input ``index``, or "" when it is absent (optional inputs may be empty)."""
    return node.input[index] if len(node.input) > index else ""


def constant_node_tensor(node: onnx.NodeProto) -> onnx.TensorProto | None:
    """The tensor a ``Constant`` node produces, for its numeric value attributes."""
    for a in node.attribute:
        if a.name == "value":
            return a.t
        if a.name == "value_float":
            return numpy_helper.from_array(np.array(a.f, dtype=np.float32))
        if a.name == "value_floats":
            return numpy_helper.from_array(np.array(list(a.floats), dtype=np.float32))
        if a.name == "value_int":
            return numpy_helper.from_array(np.array(a.i, dtype=np.int64))
        if a.name == "value_ints":
            return numpy_helper.from_array(np.array(list(a.ints), dtype=np.int64))
    return None


@dataclass(frozen=True)
class _Const:
    """A constant tensor: shape and type without loading data, values on demand."""

    name: str
    tensor: onnx.TensorProto

    @property
    def dtype(self) -> int:
        return int(self.tensor.data_type)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.tensor.dims)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    def values(self) -> np.ndarray:
        return np.asarray(numpy_helper.to_array(self.tensor))


@dataclass(frozen=True)
class _QdqInfo:
    """What a Q/DQ node's scale, zero point and axis resolve to."""

    scale: _Const | None
    zero_point: _Const | None
    has_zero_point: bool
    axis: int | None  # the attribute as written; None when absent (ONNX default 1)
    weight: _Const | None  # the constant being (de)quantized, if any

    @property
    def per_channel(self) -> bool:
        return self.scale is not None and len(self.scale.shape) == 1 and self.scale.size > 1

    @property
    def onnx_axis(self) -> int:
        return 1 if self.axis is None else self.axis


class _Checker:
    """One pass over one graph; collects violations and statistics."""

    def __init__(self, graph: onnx.GraphProto) -> None:
        self.graph = graph
        self.nodes = list(graph.node)
        self.index = {id(n): i for i, n in enumerate(self.nodes)}
        self.initializers = {t.name: t for t in graph.initializer}
        self.producer: dict[str, onnx.NodeProto] = {}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for node in self.nodes:
            for out in node.output:
                if out:
                    self.producer[out] = node
            for name in node.input:
                if name:
                    self.consumers.setdefault(name, []).append(node)
        self.graph_outputs = {o.name for o in graph.output}
        self.elem_types: dict[str, int] = {}
        for vi in (*graph.input, *graph.value_info, *graph.output):
            if vi.type.HasField("tensor_type") and vi.type.tensor_type.elem_type:
                self.elem_types[vi.name] = vi.type.tensor_type.elem_type
        self.found: list[tuple[int, Violation]] = []
        self.seen: set[tuple[int, str, str]] = set()
        self.info: dict[int, _QdqInfo] = {}

    # ----------------------------------------------------------------- helpers

    def label(self, node: onnx.NodeProto) -> str:
        if node.name:
            return node.name
        first = next((o for o in node.output if o), f"#{self.index[id(node)]}")
        return f"{first} (unnamed {node.op_type})"

    def flag(self, node: onnx.NodeProto, rule: str, message: str) -> None:
        i = self.index[id(node)]
        if (i, rule, message) in self.seen:
            return
        self.seen.add((i, rule, message))
        self.found.append((i, Violation(self.label(node), node.op_type, rule, message)))

    def const(self, name: str) -> _Const | None:
        """The constant behind ``name`` (initializer, Constant, Identity of either), else None."""
        for _ in range(_MAX_IDENTITY_DEPTH):
            if not name:
                return None
            if name in self.initializers:
                return _Const(name, self.initializers[name])
            node = self.producer.get(name)
            if node is None:
                return None
            if node.op_type == "Constant" and node.domain in _DEFAULT_DOMAINS:
                tensor = constant_node_tensor(node)
                return None if tensor is None else _Const(name, tensor)
            if node.op_type != "Identity":
                return None
            name = _input(node, 0)
        return None

    def source(self, name: str) -> onnx.NodeProto | None:
        """The node producing ``name``, looking through Identity nodes."""
        node = self.producer.get(name)
        for _ in range(_MAX_IDENTITY_DEPTH):
            if node is None or node.op_type != "Identity":
                return node
            node = self.producer.get(_input(node, 0))
        return node

    def dq_source(self, name: str) -> onnx.NodeProto | None:
        """The DequantizeLinear that produces ``name`` (through Identity), else None."""
        node = self.source(name) if name else None
        return node if node is not None and node.op_type == DEQUANTIZE else None

    def elem_type(self, name: str) -> int | None:
        c = self.const(name)
        if c is not None:
            return c.dtype
        return self.elem_types.get(name)

    # ----------------------------------------------------------------- main

    def run(self) -> QdqReport:
        quantize = dequantize = 0
        for node in self.nodes:
            if node.op_type == QUANTIZE:
                quantize += 1
                self.check_qdq(node, is_dq=False)
            elif node.op_type == DEQUANTIZE:
                dequantize += 1
                self.check_qdq(node, is_dq=True)
            elif node.op_type in UNSUPPORTED_QUANT_OPS:
                self.flag(
                    node,
                    "operator",
                    f"{node.op_type} is an integer-operator (QOperator) op that TensorRT's ONNX "
                    "parser does not import; TensorRT needs the QDQ format (QuantizeLinear/"
                    "DequantizeLinear around float ops)",
                )
        for node in self.nodes:
            if node.op_type == QUANTIZE:
                self.check_pairing(node)
            elif node.op_type == DEQUANTIZE:
                self.check_orphan(node)
        quantized_ops: dict[str, int] = {}
        float_ops: list[str] = []
        for node in self.nodes:
            if node.op_type in COMPUTE_OPS and node.domain in _DEFAULT_DOMAINS:
                state = self.check_compute(node)
            else:
                state = self.other_op_state(node)
            if state == "quantized":
                quantized_ops[node.op_type] = quantized_ops.get(node.op_type, 0) + 1
            elif state == "float" and node.op_type in COMPUTE_OPS:
                float_ops.append(self.label(node))
        self.found.sort(key=lambda item: item[0])
        report = QdqReport(
            violations=[v for _, v in self.found],
            quantize_nodes=quantize,
            dequantize_nodes=dequantize,
            quantized_ops=dict(sorted(quantized_ops.items())),
            float_ops=float_ops,
        )
        log.debug(
            "Q/DQ check: %d Q, %d DQ, quantized %s, %d float compute ops, %d violations",
            quantize,
            dequantize,
            report.quantized_ops,
            len(float_ops),
            len(report.violations),
        )
        return report

    # ----------------------------------------------------------------- Q/DQ nodes

    def check_qdq(self, node: onnx.NodeProto, *, is_dq: bool) -> None:
        if node.domain not in _DEFAULT_DOMAINS:
            self.flag(
                node,
                "domain",
                f"{node.op_type} is in domain {node.domain!r}; TensorRT's parser takes Q/DQ from "
                "the default ONNX domain only (com.microsoft Q/DQ carry 16-bit and other types it "
                "does not support)",
            )
        scale_name = _input(node, 1)
        zp_name = _input(node, 2)
        data_name = _input(node, 0)
        weight = self.const(data_name)
        if weight is None and is_dq:
            producer = self.producer.get(data_name)
            if producer is not None and producer.op_type == QUANTIZE:
                weight = self.const(_input(producer, 0))
        axis = _attr(node, "axis")
        info = _QdqInfo(
            scale=self.const(scale_name),
            zero_point=self.const(zp_name),
            has_zero_point=bool(zp_name),
            axis=None if axis is None else int(axis),
            weight=weight,
        )
        self.info[id(node)] = info
        self.check_dtype(node, info, is_dq=is_dq)
        self.check_zero_point(node, info)
        self.check_scale(node, info)
        self.check_granularity(node, info)

    def quantized_type(self, node: onnx.NodeProto) -> tuple[int | None, str]:
        """The integer type a QuantizeLinear produces, and why (ONNX's rules)."""
        zp_name = _input(node, 2)
        output_dtype = _attr(node, "output_dtype")
        if zp_name:
            zp_type = self.elem_type(zp_name)
            return zp_type, f"the type of its zero point '{zp_name}'"
        if output_dtype:
            return int(output_dtype), "its output_dtype attribute"
        return TensorProto.UINT8, "no zero point, so by ONNX's default"

    def check_dtype(self, node: onnx.NodeProto, info: _QdqInfo, *, is_dq: bool) -> None:
        problems: list[str] = []
        output_dtype = _attr(node, "output_dtype")
        zp_type = self.elem_type(_input(node, 2)) if info.has_zero_point else None
        if not is_dq:
            qtype, why = self.quantized_type(node)
            if output_dtype and zp_type is not None and int(output_dtype) != zp_type:
                problems.append(
                    f"its output_dtype {_type_name(int(output_dtype))} disagrees with its "
                    f"{_type_name(zp_type)} zero point"
                )
            if qtype is not None and qtype != TensorProto.INT8:
                if qtype == TensorProto.UINT8 and not info.has_zero_point:
                    problems.append(
                        "it has no zero point, so ONNX makes its output uint8 (ONNX Runtime "
                        "quantizes to [0, 255] and clips negatives) while TensorRT would quantize "
                        "to int8; add an int8 zero point of 0"
                    )
                else:
                    problems.append(f"it quantizes to {_type_name(qtype)} ({why})")
        else:
            data_name = _input(node, 0)
            producer = self.producer.get(data_name)
            from_q = producer is not None and producer.op_type == QUANTIZE
            data_type = None if from_q else self.elem_type(data_name)
            if data_type == TensorProto.INT32:
                problems.append(
                    "it dequantizes int32 (a quantized bias, ONNX Runtime's QuantizeBias=True); "
                    "TensorRT has no int32 Q/DQ: keep biases in float (QuantizeBias=False)"
                )
            elif data_type is not None and data_type != TensorProto.INT8:
                problems.append(f"it dequantizes {_type_name(data_type)}")
            if (
                zp_type is not None
                and zp_type != TensorProto.INT8
                and not (data_type is not None and data_type == zp_type)
            ):
                problems.append(f"its zero point is {_type_name(zp_type)}")
            if output_dtype and int(output_dtype) not in _SCALE_TYPES:
                problems.append(f"its output_dtype is {_type_name(int(output_dtype))}")
        if problems:
            message = "; ".join(problems)
            if "QuantizeBias=False" not in message:
                message += "; TensorRT quantizes to INT8 only (an int8 zero point of 0)"
            self.flag(node, "dtype", message)

    def check_zero_point(self, node: onnx.NodeProto, info: _QdqInfo) -> None:
        if not info.has_zero_point:
            return
        zp = info.zero_point
        if zp is None:
            self.flag(
                node,
                "zero-point",
                f"zero point '{_input(node, 2)}' is not a constant; TensorRT needs a constant "
                "all-zero int8 zero point",
            )
            return
        if zp.dtype not in (TensorProto.STRING, TensorProto.UNDEFINED):
            values = zp.values()
            nonzero = values[values != 0]
            if nonzero.size:
                self.flag(
                    node,
                    "zero-point",
                    f"zero point '{zp.name}' has {nonzero.size} non-zero value(s) (e.g. "
                    f"{nonzero.flat[0]}): asymmetric quantization; TensorRT supports symmetric "
                    "quantization only (zero point 0)",
                )
        scale = info.scale
        if scale is not None and scale.size != zp.size:
            self.flag(
                node,
                "zero-point",
                f"zero point '{zp.name}' has {zp.size} value(s) but the scale has {scale.size}; "
                "TensorRT needs them the same shape",
            )

    def check_scale(self, node: onnx.NodeProto, info: _QdqInfo) -> None:
        scale_name = _input(node, 1)
        if not scale_name:
            self.flag(node, "scale", "has no scale input; TensorRT needs a constant scale")
            return
        scale = info.scale
        if scale is None:
            self.flag(
                node,
                "scale",
                f"scale '{scale_name}' is not a constant (computed at run time); TensorRT needs "
                "a build-time constant scale (an initializer or Constant)",
            )
            return
        if scale.dtype not in _SCALE_TYPES:
            self.flag(
                node,
                "scale",
                f"scale '{scale.name}' is {_type_name(scale.dtype)}; TensorRT needs float32 "
                "(or float16 in an FP16 graph)",
            )
        if scale.size == 0:
            self.flag(node, "scale", f"scale '{scale.name}' is empty; TensorRT needs values > 0")
            return
        if scale.dtype in _FLOAT_TYPES:
            values = scale.values().astype(np.float64)
            parts = []
            for count, what in (
                (int(np.isnan(values).sum()), "NaN"),
                (int(np.isinf(values).sum()), "infinite"),
                (int((values == 0).sum()), "zero"),
                (int((values < 0).sum()), "negative"),
            ):
                if count:
                    parts.append(f"{count} {what}")
            if parts:
                self.flag(
                    node,
                    "scale",
                    f"scale '{scale.name}' has {', '.join(parts)} value(s); TensorRT needs every "
                    "scale finite and > 0",
                )
        if len(scale.shape) >= 2:
            self.flag(
                node,
                "block",
                f"scale '{scale.name}' has shape {list(scale.shape)} (block quantization); "
                "TensorRT needs a scalar (per tensor) or a 1-D (per channel) scale for INT8",
            )

    def check_granularity(self, node: onnx.NodeProto, info: _QdqInfo) -> None:
        block_size = _attr(node, "block_size")
        if block_size:
            self.flag(
                node,
                "block",
                f"block_size={block_size} (block quantization); TensorRT quantizes INT8 per "
                "tensor or per channel only",
            )
        if not info.per_channel or info.scale is None:
            return
        channels = info.scale.size
        weight = info.weight
        if weight is None:
            self.flag(
                node,
                "activations",
                f"per-channel scale ({channels} values) on activation '{_input(node, 0)}'; "
                "TensorRT quantizes activations per tensor only: use a scalar scale",
            )
            return
        if info.axis is None:
            self.flag(
                node,
                "axis",
                "per-channel scale without an axis attribute: ONNX (and ONNX Runtime) then "
                "quantize along axis 1, TensorRT's parser along axis 0; set axis explicitly "
                "(Conv weights 0, ConvTranspose weights 1)",
            )
            return
        rank = len(weight.shape)
        axis = info.onnx_axis
        if not -rank <= axis < rank:
            self.flag(
                node,
                "axis",
                f"axis {axis} is out of range for the rank-{rank} weight '{weight.name}'",
            )
            return
        if weight.shape[axis] != channels:
            self.flag(
                node,
                "scale",
                f"per-channel scale has {channels} values but weight '{weight.name}' "
                f"{list(weight.shape)} has {weight.shape[axis]} along axis {axis}; TensorRT needs "
                "one scale per channel of the axis",
            )

    def check_pairing(self, node: onnx.NodeProto) -> None:
        out = node.output[0] if node.output else ""
        consumers = self.consumers.get(out, [])
        if out in self.graph_outputs:
            self.flag(
                node,
                "pair",
                f"its quantized output '{out}' is a graph output; TensorRT needs every "
                "QuantizeLinear followed by DequantizeLinear",
            )
        elif not consumers:
            self.flag(
                node,
                "pair",
                "its output is unused; TensorRT needs it followed by a DequantizeLinear",
            )
        q_info = self.info[id(node)]
        for consumer in consumers:
            if consumer.op_type != DEQUANTIZE:
                self.flag(
                    node,
                    "pair",
                    f"its output feeds {self.label(consumer)} ({consumer.op_type}) instead of a "
                    "DequantizeLinear; TensorRT needs every QuantizeLinear followed by "
                    "DequantizeLinear only",
                )
                continue
            if _input(consumer, 0) != out:
                continue  # fed to the scale or zero point: its own checks report it
            dq_info = self.info[id(consumer)]
            mismatch = _pair_mismatch(q_info, dq_info)
            if mismatch:
                self.flag(
                    node,
                    "pair",
                    f"DequantizeLinear {self.label(consumer)} uses {mismatch}; TensorRT needs a Q "
                    "and its DQ to share scale, zero point and axis",
                )

    def check_orphan(self, node: onnx.NodeProto) -> None:
        data_name = _input(node, 0)
        if not data_name or self.const(data_name) is not None:
            return  # a DQ of stored quantized weights; its dtype check covers the type
        producer = self.producer.get(data_name)
        if producer is not None and producer.op_type == QUANTIZE:
            return
        where = (
            f"{self.label(producer)} ({producer.op_type})"
            if producer is not None
            else "a graph input"
        )
        self.flag(
            node,
            "orphan-dq",
            f"dequantizes '{data_name}' from {where}, not from a QuantizeLinear; TensorRT needs "
            "int8 data to come from a QuantizeLinear (or an int8 constant)",
        )

    # ----------------------------------------------------------------- consumers

    def check_compute(self, node: onnx.NodeProto) -> str:
        """Rules for Conv/ConvTranspose/Gemm/MatMul; returns "quantized", "float" or "mixed"."""
        data_name, weight_name = _input(node, 0), _input(node, 1)
        data_dq, weight_dq = self.dq_source(data_name), self.dq_source(weight_name)
        bias_index = _BIAS_INPUT.get(node.op_type)
        if bias_index is not None:
            bias_name = _input(node, bias_index)
            bias_dq = self.dq_source(bias_name)
            if bias_dq is not None:
                self.flag(
                    node,
                    "bias",
                    f"its bias '{bias_name}' comes from DequantizeLinear {self.label(bias_dq)}; "
                    "TensorRT takes no quantized bias: keep the bias float (QuantizeBias=False)",
                )
        if data_dq is not None and weight_dq is None:
            self.flag(
                node,
                "weights",
                f"has a quantized input '{data_name}' (from DequantizeLinear "
                f"{self.label(data_dq)}) but float weights '{weight_name}'; TensorRT would run "
                "it in float: quantize the weights too (per channel)",
            )
            return "mixed"
        if data_dq is None and weight_dq is not None:
            self.flag(
                node,
                "activations",
                f"has quantized weights '{weight_name}' (from DequantizeLinear "
                f"{self.label(weight_dq)}) but a float input '{data_name}'; TensorRT would run "
                "it in float: quantize the input too (per tensor)",
            )
            return "mixed"
        if data_dq is None or weight_dq is None:
            return "float"
        self.check_weight_axis(node, weight_dq)
        return "quantized"

    def check_weight_axis(self, node: onnx.NodeProto, weight_dq: onnx.NodeProto) -> None:
        """Per-channel weights must be quantized along the consumer's output channels."""
        dq_info = self.info.get(id(weight_dq))
        if dq_info is None or dq_info.weight is None:
            return
        rank = len(dq_info.weight.shape)
        expected, why = _expected_weight_axis(node, rank)
        targets = [weight_dq]
        producer = self.producer.get(_input(weight_dq, 0))
        if producer is not None and producer.op_type == QUANTIZE:
            targets.append(producer)
        for target in targets:
            info = self.info.get(id(target))
            if info is None or not info.per_channel or info.axis is None:
                continue  # per tensor is allowed; a missing axis is reported on its own
            if not -rank <= info.axis < rank:
                continue  # reported on its own
            if info.axis % rank != expected:
                self.flag(
                    target,
                    "axis",
                    f"per-channel scale on axis {info.axis}, but {node.op_type} "
                    f"{self.label(node)} needs its weights quantized on axis {expected} ({why})",
                )

    def other_op_state(self, node: onnx.NodeProto) -> str:
        """ "quantized" when every non-constant input of a non-Q/DQ node comes from a DQ."""
        if node.op_type in (QUANTIZE, DEQUANTIZE, "Identity", "Constant"):
            return "skip"
        inputs = [name for name in node.input if name and self.const(name) is None]
        if inputs and all(self.dq_source(name) is not None for name in inputs):
            return "quantized"
        return "float"


def _expected_weight_axis(node: onnx.NodeProto, rank: int) -> tuple[int, str]:
    if node.op_type == "ConvTranspose":
        return 1, "output channels of its (C_in, C_out/group, kH, kW) weight"
    if node.op_type == "Gemm":
        if _attr(node, "transB"):
            return 0, "N of its (N, K) B with transB=1"
        return 1, "N of its (K, N) B"
    if node.op_type == "MatMul":
        return max(rank - 1, 0), "the last (output) dimension of B"
    return 0, "output channels of its (C_out, C_in/group, kH, kW) weight"


def _pair_mismatch(q: _QdqInfo, dq: _QdqInfo) -> str:
    """How a DQ's quantization parameters differ from its Q's; "" when they match."""
    if q.scale is not None and dq.scale is not None and q.scale.name != dq.scale.name:
        if not _same_values(q.scale, dq.scale):
            return f"scale '{dq.scale.name}' while the QuantizeLinear uses '{q.scale.name}'"
    if (q.zero_point is not None or not q.has_zero_point) and (
        dq.zero_point is not None or not dq.has_zero_point
    ):
        if not np.array_equal(_zero_values(q), _zero_values(dq)):
            return "another zero point than the QuantizeLinear"
    if (q.per_channel or dq.per_channel) and q.onnx_axis != dq.onnx_axis:
        return f"axis {dq.onnx_axis} while the QuantizeLinear uses axis {q.onnx_axis}"
    return ""


def _same_values(a: _Const, b: _Const) -> bool:
    if a.dtype not in _FLOAT_TYPES or b.dtype not in _FLOAT_TYPES:
        return a.tensor.SerializeToString() == b.tensor.SerializeToString()
    av, bv = a.values(), b.values()
    return av.size == bv.size and bool(np.array_equal(av.ravel(), bv.ravel()))


def _zero_values(info: _QdqInfo) -> np.ndarray:
    """The zero point's values, flattened (ONNX's default 0 when absent)."""
    if info.zero_point is None:
        size = info.scale.size if info.scale is not None else 1
        return np.zeros(size, dtype=np.int64)
    if info.zero_point.dtype in (TensorProto.STRING, TensorProto.UNDEFINED):
        return np.zeros(0, dtype=np.int64)
    return info.zero_point.values().astype(np.float64).ravel()
