"""How much of a graph's compute runs in INT8.

The compute of a segmentation network is its Conv, ConvTranspose, Gemm and
MatMul nodes (what quantization turns into integer kernels) and its DeformConv
nodes (which stay in float: neither ONNX Runtime nor TensorRT has an INT8
DeformConv), :data:`FLOP_OPS`; the rest (activations, pooling, resizing,
element-wise arithmetic) is a rounding error next to them. Each counts 2 FLOPs per multiply-accumulate, at
batch 1 and the bundle's input size (the nominal size of a dynamic graph), as
``torch.utils.flop_counter`` counts them (biases are not counted):

* Conv and DeformConv: ``2 * prod(output shape) * prod(weight.shape[1:])`` (in
  channels per group x kernel, per output element; DeformConv's bilinear
  sampling of the input, about 4 reads per kernel tap, is not counted, as
  torch's counter does not count it);
* ConvTranspose: ``2 * prod(input shape) * prod(weight.shape[1:])`` (out
  channels per group x kernel, per input element);
* Gemm: ``2 * M * N * K``; MatMul: ``2 * prod(output shape) * K`` (K: the
  first input's inner dimension).

Shapes come from ONNX shape inference with the input's symbolic dimensions
fixed to that size; where it cannot tell a shape, one inference of the graph
on a blank image in ONNX Runtime does.

A node runs in INT8 when its data input and its weights (the first two
inputs) both come from a ``DequantizeLinear``: that is the pattern TensorRT
and ONNX Runtime fuse into an integer kernel. A node kept in float has float
weights, so it does not count even if its data input is dequantized.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper

from calibration.quantize import COMPUTE_OPS
from edgeseg.errors import ExportError

FLOP_OPS = (*COMPUTE_OPS, "DeformConv")


@dataclass(frozen=True)
class NodeFlops:
    """One compute node: its FLOPs and whether it runs in INT8."""

    name: str
    op_type: str
    flops: int
    int8: bool


@dataclass(frozen=True)
class Int8Share:
    """The compute nodes of a graph, and the share of their FLOPs that runs in INT8."""

    nodes: tuple[NodeFlops, ...]

    @property
    def flops(self) -> int:
        return sum(n.flops for n in self.nodes)

    @property
    def int8_flops(self) -> int:
        return sum(n.flops for n in self.nodes if n.int8)

    @property
    def share(self) -> float:
        """``int8_flops / flops`` (0 for a graph without compute)."""
        total = self.flops
        return self.int8_flops / total if total else 0.0

    def float_nodes(self) -> list[NodeFlops]:
        """The compute nodes that run in float, the largest first."""
        return sorted((n for n in self.nodes if not n.int8), key=lambda n: (-n.flops, n.name))

    def to_json(self, floor: float | None = None) -> dict[str, Any]:
        """The manifest's ``int8_share`` record (:class:`edgeseg.manifest.Int8ShareRecord`)."""
        return {"flops": self.flops, "int8_flops": self.int8_flops, "share": self.share, "floor": floor}


def gflops(flops: int | float) -> str:
    """FLOPs as GFLOPs, two decimals, or three significant digits below 0.1."""
    value = flops / 1e9
    return f"{value:.2f}" if value >= 0.1 or value == 0 else f"{value:.3g}"


def node_flops(model: onnx.ModelProto, input_size: tuple[int, int] | None = None) -> dict[str, int]:
    """FLOPs of each Conv, DeformConv, ConvTranspose, Gemm and MatMul node, by node name (batch 1).

    Args:
        model: any graph (float or Q/DQ); nodes without a name are named ``<op>_<index>``.
        input_size: (height, width) given to the symbolic height and width of a
            4-D NHWC input (the bundle's ``image``); other symbolic dimensions are 1.

    Raises:
        ExportError: a compute node's shapes cannot be told, even by running the graph.
    """
    nodes = _compute_nodes(model)
    shapes = _shapes(model, input_size, nodes)
    return {name: _flops(node, shapes) for name, node in nodes}


def int8_share(model: onnx.ModelProto, input_size: tuple[int, int] | None = None) -> Int8Share:
    """The compute nodes of ``model``, their FLOPs, and which run in INT8 (see the module's docstring)."""
    flops = node_flops(model, input_size)
    dequantized = {o for n in model.graph.node if n.op_type == "DequantizeLinear" for o in n.output if o}
    nodes = []
    for name, node in _compute_nodes(model):
        int8 = len(node.input) >= 2 and all(t in dequantized for t in node.input[:2])
        nodes.append(NodeFlops(name, node.op_type, flops[name], int8))
    return Int8Share(tuple(nodes))


def _compute_nodes(model: onnx.ModelProto) -> list[tuple[str, onnx.NodeProto]]:
    return [
        (node.name or f"{node.op_type}_{i}", node)
        for i, node in enumerate(model.graph.node)
        if node.op_type in FLOP_OPS and node.domain in ("", "ai.onnx")
    ]


def _needed(node: onnx.NodeProto) -> list[str]:
    """The tensors whose shapes a node's FLOPs need."""
    if node.op_type in ("Conv", "DeformConv"):
        return [node.output[0], node.input[1]]
    if node.op_type == "ConvTranspose":
        return [node.input[0], node.input[1]]
    return [node.input[0], node.output[0]]  # Gemm, MatMul


def _flops(node: onnx.NodeProto, shapes: dict[str, tuple[int, ...]]) -> int:
    first, second = (shapes[t] for t in _needed(node))
    if node.op_type in ("Conv", "DeformConv", "ConvTranspose"):  # per output (Conv) or input (ConvTranspose) element
        return 2 * _prod(first) * _prod(second[1:])
    a, y = first, second
    if node.op_type == "Gemm":
        trans_a = next((int(helper.get_attribute_value(x)) for x in node.attribute if x.name == "transA"), 0)
        k = a[0] if trans_a else a[1]
    else:  # MatMul: numpy's rules, a 1-D first input is a row vector
        k = a[-1]
    return 2 * _prod(y) * int(k)


def _prod(dims: Sequence[int]) -> int:
    return int(np.prod(dims, dtype=np.int64)) if dims else 1


def _shapes(
    model: onnx.ModelProto, input_size: tuple[int, int] | None, nodes: list[tuple[str, onnx.NodeProto]]
) -> dict[str, tuple[int, ...]]:
    """Static shapes of the tensors the compute nodes need: inferred, else measured."""
    fixed = _fix_inputs(model, input_size)
    try:
        inferred = onnx.shape_inference.infer_shapes(fixed, data_prop=True)
    except (onnx.shape_inference.InferenceError, onnx.checker.ValidationError):
        inferred = fixed  # inference gave up: every shape is measured below
    shapes: dict[str, tuple[int, ...]] = {i.name: tuple(i.dims) for i in inferred.graph.initializer}
    for value in (*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output):
        dims = _static(value)
        if dims is not None:
            shapes.setdefault(value.name, dims)
    missing = sorted({t for _, node in nodes for t in _needed(node) if t not in shapes})
    if missing:
        types = {
            v.name: v.type.tensor_type.elem_type
            for v in (*inferred.graph.value_info, *inferred.graph.output)
            if v.type.HasField("tensor_type") and v.type.tensor_type.elem_type
        }
        shapes.update(_measure(fixed, {t: types.get(t, TensorProto.FLOAT) for t in missing}))
    return shapes


def _static(value: onnx.ValueInfoProto) -> tuple[int, ...] | None:
    if not value.type.HasField("tensor_type") or not value.type.tensor_type.HasField("shape"):
        return None
    dims = value.type.tensor_type.shape.dim
    if not all(d.HasField("dim_value") and d.dim_value >= 0 for d in dims):
        return None
    return tuple(int(d.dim_value) for d in dims)


def _fix_inputs(model: onnx.ModelProto, input_size: tuple[int, int] | None) -> onnx.ModelProto:
    """A copy whose graph inputs have static shapes: batch 1, the size's height and width."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    inits = {i.name for i in out.graph.initializer}
    for value in out.graph.input:
        if value.name in inits or not value.type.HasField("tensor_type"):
            continue
        dims = value.type.tensor_type.shape.dim
        for axis, dim in enumerate(dims):
            if dim.HasField("dim_value") and dim.dim_value > 0:
                continue
            size = 1
            if input_size is not None and len(dims) == 4 and axis in (1, 2):  # NHWC: (N, H, W, C)
                size = int(input_size[axis - 1])
            dim.Clear()
            dim.dim_value = size
    return out


def _measure(model: onnx.ModelProto, names: dict[str, int]) -> dict[str, tuple[int, ...]]:
    """The shapes of tensors (name -> element type) from one inference on zeros (inputs as
    ``_fix_inputs`` sets them)."""
    import onnxruntime as ort

    graph = onnx.ModelProto()
    graph.CopyFrom(model)
    exposed = {o.name for o in graph.graph.output}
    inits = {i.name for i in graph.graph.initializer}
    wanted = [n for n in names if n not in inits]
    graph.graph.output.extend(
        helper.make_tensor_value_info(n, names[n], None) for n in wanted if n not in exposed
    )
    feeds = {}
    for value in graph.graph.input:
        if value.name in inits:
            continue
        tensor = value.type.tensor_type
        dtype = helper.tensor_dtype_to_np_dtype(tensor.elem_type)
        feeds[value.name] = np.zeros([d.dim_value for d in tensor.shape.dim], dtype=dtype)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        session = ort.InferenceSession(graph.SerializeToString(), options, providers=["CPUExecutionProvider"])
        values = session.run(wanted, feeds)
    except Exception as err:  # ONNX Runtime raises its own exception types
        raise ExportError(
            f"cannot tell the shapes of {', '.join(wanted[:3])}{', ...' if len(wanted) > 3 else ''} to count "
            f"the graph's FLOPs: shape inference left them open and running the graph failed ({err})"
        ) from err
    return {n: tuple(int(d) for d in np.shape(v)) for n, v in zip(wanted, values, strict=True)}
