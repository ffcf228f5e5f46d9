"""TensorRT's acceptance of an ONNX graph, decided offline: which nodes its ONNX parser would refuse.

No TensorRT and no GPU are needed: the graph is read with ``onnx`` and held to a
table of what each TensorRT version's ONNX parser imports (operator, the data
types of its data inputs, attribute and input restrictions), to TensorRT's rule
for uint8 network I/O, to its explicit-quantization rules
(:mod:`calibration.qdq_rules`), and, with ``dla=True``, to the DLA layer rules
of Jetson Orin. :func:`check_model` checks one graph, :func:`check_bundle` every
graph of a bundle (``edgeseg check BUNDLE --tensorrt 10.3 [--dla]``), and
``build`` runs it on every graph it writes.

Where the table comes from (facts, written here in our own form):

- **10.3** (JetPack 6): onnx-tensorrt's ``docs/operators.md`` and importers
  (``onnxOpImporters.cpp``, ``onnxOpCheckers.cpp``, ``ModelImporter.cpp``) of the
  ``release/10.1-GA`` branch, the newest 10.x source tree we hold, plus the
  parser changes its ``docs/Changelog.md`` lists for 10.2 (GRU and Squeeze
  importer changes) and 10.3 (``Slice`` takes tensor ``axes``). Its table
  documents opsets 9 to 20.
- **10.13** (JetPack 7): the 10.3 table plus the Changelog's 10.4 (``Pad``
  takes tensor ``axes``; ``BlackmanWindow``, ``HammingWindow``, ``HannWindow``)
  and 10.5 (real-valued ``STFT``) additions. Operators that the newest table we
  hold lists but whose first release we could not place at or before 10.13
  (``Attention``, added in 10.14; ``RMSNormalization``, ``RotaryEmbedding``,
  ``TensorScatter``) count as refused there, which errs towards refusing.
- **11** (11.x): onnx-tensorrt's ``docs/operators.md`` for TensorRT 10.15,
  the newest table we hold (opsets 9 to 24); the 11.x parser imports the same
  operators (its own table, read in review, lists the op set our graphs use).
  TensorRT 11 builds strongly typed networks only: precision comes from the
  graph (FP16 tensors, Q/DQ), which is how every bundle graph carries it.
- **uint8**: "UINT8 is only supported as network input or output tensor types"
  (operators.md, every 10.x and the 10.15 table); a uint8 network input may feed
  only a Cast to FP32/FP16 (``DataType::kUINT8`` in NvInferRuntimeBase.h), and no
  other layer takes uint8, "even just data-movement ops like reshape /
  transpose" (NVIDIA on NVIDIA/TensorRT#3985). ``Shape`` lists no UINT8.
- **DeformConv**: imported since 10.1 through the built-in
  ``ModulatedDeformConv2d`` plugin, FP32/FP16, 1-D or 2-D spatial input, equal
  begin and end pads. The importer (10.1 and the newest) builds the default mask
  of a mask-less node with the offset's shape, twice the channels the mask
  needs, so a node without a mask input is refused here (export DCNv1 with an
  explicit mask, as edgeseg's exporter does, or use edgeseg's plugin).
- **DLA** (Orin, TensorRT 10.3; :func:`converters.tensorrt.dla_mode` decides
  which versions build for DLA at all): TensorRT's "DLA Supported Layers and
  Restrictions": static shapes only; non-batch dimensions up to 8192;
  activations ReLU, Sigmoid, TanH, clipped ReLU, leaky ReLU; convolution 2-D,
  kernel 1..32, stride 1..8, channels 1..8192; deconvolution 2-D, no groups,
  no dilation, padding 0, kernel and stride 1..32; element-wise Sum, Sub,
  Product, Max, Min, Div, Pow; concatenation on the channel axis of two or more
  inputs; parametric ReLU with a build-time slope; pooling 2-D max/average,
  window 1..8, stride 1..16, padding 0..7; Resize with scales (no sizes), the
  first two 1 and integer height/width scales (1..32 nearest, 1..4 linear with
  half-pixel coordinates); softmax over a non-batch axis (Orin). Batch
  normalisation becomes a Scale layer. With GPU fallback (how edgeseg builds
  for DLA) any other node runs on the GPU, so DLA findings are reported as
  ``gpu-fallback``, not as refusals.

The check is static: it does not run the parser, so a graph it accepts can
still fail on the device for a reason no table states (a shape TensorRT cannot
infer, a tactic without memory). The gpu test suite (``edgeseg selftest
--device``) builds every zoo graph for real.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from calibration.qdq_rules import check_tensorrt_qdq, constant_node_tensor
from edgeseg.bundle import Bundle
from edgeseg.engines import PLUGIN_OP, parse_version
from edgeseg.errors import ConfigError

__all__ = [
    "DLA_VERSIONS",
    "REFUSED",
    "FALLBACK",
    "WARNING",
    "VERSIONS",
    "BundleReport",
    "Finding",
    "GraphReport",
    "check_bundle",
    "check_model",
    "check_versions",
    "resolve_version",
    "uint8_findings",
]

# the versions edgeseg holds a table for, and what each stands for
VERSIONS: dict[str, str] = {
    "10.3": "TensorRT 10.3 (JetPack 6.1/6.2, Orin)",
    "10.13": "TensorRT 10.13 (JetPack 7, Thor)",
    "11": "TensorRT 11.x",
}
DLA_VERSIONS = ("10.3",)  # of those, the ones that build for DLA (converters.tensorrt.dla_mode)

REFUSED = "refused"  # the parser (or builder) refuses the node: no engine
FALLBACK = "gpu-fallback"  # DLA cannot run it; with GPU fallback it runs on the GPU
WARNING = "warning"  # accepted, but outside what the table documents

Version = tuple[int, int]

# ONNX element types by TensorRT's names
_TYPE_NAMES: dict[int, str] = {
    TensorProto.FLOAT: "FP32",
    TensorProto.FLOAT16: "FP16",
    TensorProto.BFLOAT16: "BF16",
    TensorProto.DOUBLE: "DOUBLE",
    TensorProto.INT32: "INT32",
    TensorProto.INT64: "INT64",
    TensorProto.INT8: "INT8",
    TensorProto.UINT8: "UINT8",
    TensorProto.BOOL: "BOOL",
    TensorProto.INT4: "INT4",
    TensorProto.FLOAT8E4M3FN: "FP8",
    TensorProto.INT16: "INT16",
    TensorProto.UINT16: "UINT16",
    TensorProto.UINT32: "UINT32",
    TensorProto.UINT64: "UINT64",
    TensorProto.STRING: "STRING",
}
# what a network input or output may be (operators.md: "TensorRT supports the following ONNX
# data types"); DOUBLE is cast down to FLOAT ("limited support"), the quantized types come only
# from Q/DQ
_IO_TYPES = frozenset({"FP32", "FP16", "BF16", "INT32", "INT64", "UINT8", "BOOL"})
_F = frozenset({"FP32", "FP16", "BF16"})
_FI = _F | {"INT32", "INT64"}
_FIB = _FI | {"BOOL"}
_FH = frozenset({"FP32", "FP16"})
_ALL = None  # every input is a data input


# --------------------------------------------------------------------------- findings


@dataclass(frozen=True)
class Finding:
    """One node (or graph input/output) TensorRT would refuse, run elsewhere, or take with a caveat.

    Attributes:
        node: the node's name (``"<first output> (unnamed OpType)"`` when it has none), or
            ``input 'x'`` / ``output 'y'`` for the graph's own tensors.
        op_type: the node's op type (``""`` for graph inputs/outputs).
        rule: short rule id, e.g. ``operator``, ``dtype``, ``uint8``, ``attribute``,
            ``constant-input``, ``qdq-zero-point``, ``dla-...``.
        message: what was found and what TensorRT needs.
        severity: :data:`REFUSED`, :data:`FALLBACK` or :data:`WARNING`.
    """

    node: str
    op_type: str
    rule: str
    message: str
    severity: str = REFUSED

    def __str__(self) -> str:
        where = f"{self.node} ({self.op_type})" if self.op_type else self.node
        return f"{where}: {self.severity}: {self.message}"

    def to_json(self) -> dict[str, str]:
        """The finding as a JSON-ready dict."""
        return {
            "node": self.node,
            "op_type": self.op_type,
            "rule": self.rule,
            "severity": self.severity,
            "message": self.message,
        }


@dataclass(frozen=True)
class GraphReport:
    """What one graph's check found.

    Attributes:
        graph: the graph's file name (or a label for a model given in memory).
        version: the table's key in :data:`VERSIONS` (``"10.3"``, ``"10.13"``, ``"11"``).
        dla: whether the DLA layer rules were applied.
        nodes: nodes checked (the main graph's, and those of If/Loop/Scan bodies and local functions).
        findings: every finding, in graph order.
        precision: the bundle precision this graph is built for, when known.
    """

    graph: str
    version: str
    dla: bool
    nodes: int
    findings: tuple[Finding, ...]
    precision: str | None = None

    @property
    def refused(self) -> tuple[Finding, ...]:
        """The findings that stop TensorRT from building the graph."""
        return tuple(f for f in self.findings if f.severity == REFUSED)

    @property
    def fallback(self) -> tuple[Finding, ...]:
        """With ``dla``: the nodes that would run on the GPU instead of the DLA."""
        return tuple(f for f in self.findings if f.severity == FALLBACK)

    @property
    def ok(self) -> bool:
        """True when TensorRT would take the graph (DLA fallbacks and warnings allowed)."""
        return not self.refused

    def to_json(self) -> dict[str, Any]:
        """The report as a JSON-ready dict."""
        return {
            "graph": self.graph,
            "precision": self.precision,
            "tensorrt": self.version,
            "dla": self.dla,
            "ok": self.ok,
            "nodes": self.nodes,
            "refused": len(self.refused),
            "gpu_fallback": len(self.fallback),
            "findings": [f.to_json() for f in self.findings],
        }


@dataclass(frozen=True)
class BundleReport:
    """:func:`check_bundle`'s answer: one :class:`GraphReport` per graph, plus bundle-level findings.

    Attributes:
        bundle: the bundle's path.
        version: the table's key in :data:`VERSIONS`.
        dla: whether the DLA rules were applied.
        graphs: one report per graph TensorRT would build.
        findings: findings about the bundle as a whole (e.g. DLA needs static shapes).
    """

    bundle: str
    version: str
    dla: bool
    graphs: tuple[GraphReport, ...]
    findings: tuple[Finding, ...] = ()

    @property
    def ok(self) -> bool:
        """True when TensorRT would build every graph (DLA fallbacks allowed)."""
        return all(g.ok for g in self.graphs) and not any(
            f.severity == REFUSED for f in self.findings
        )

    def to_json(self) -> dict[str, Any]:
        """The report as a JSON-ready dict."""
        return {
            "bundle": self.bundle,
            "tensorrt": self.version,
            "dla": self.dla,
            "ok": self.ok,
            "findings": [f.to_json() for f in self.findings],
            "graphs": [g.to_json() for g in self.graphs],
        }

    def format(self, *, limit: int = 20) -> str:
        """A table of the graphs, then each refused node (the first ``limit`` per graph) and why."""
        target = VERSIONS[self.version] + (" on DLA (Orin)" if self.dla else "")
        lines = [f"{self.bundle}: {target}"]
        rows = [
            (
                "graph",
                "precision",
                "nodes",
                "refused",
                "gpu-fallback" if self.dla else "warnings",
                "verdict",
            )
        ]
        for g in self.graphs:
            other = len(g.fallback) if self.dla else sum(f.severity == WARNING for f in g.findings)
            rows.append(
                (
                    g.graph,
                    g.precision or "-",
                    str(g.nodes),
                    str(len(g.refused)),
                    str(other),
                    "accepted" if g.ok else "REFUSED",
                )
            )
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        for row in rows:
            lines.append(
                "  "
                + "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
            )
        for f in self.findings:
            lines.append(f"  {f}")
        for g in self.graphs:
            shown = [f for f in g.findings if f.severity != FALLBACK or self.dla]
            for f in shown[:limit]:
                lines.append(f"  {g.graph}: {f}")
            if len(shown) > limit:
                lines.append(f"  {g.graph}: ... and {len(shown) - limit} more (--json lists all)")
        lines.append(
            "verdict: "
            + (
                "TensorRT would take every graph"
                if self.ok
                else "TensorRT would refuse the graphs marked REFUSED"
            )
        )
        return "\n".join(lines)


# --------------------------------------------------------------------------- versions


def resolve_version(version: str) -> str:
    """The table for a TensorRT version: ``"10.3"``, ``"10.13"`` or ``"11"``.

    A full version picks the newest table at or below it (``10.3.0.30`` -> 10.3,
    ``10.8`` -> 10.3, ``10.14`` -> 10.13, ``11.4`` -> 11), so a version between
    two tables is held to the older, stricter one.

    Raises:
        ConfigError: not a version, or older than 10.3 (edgeseg's oldest TensorRT).
    """
    if not isinstance(version, str) or not version.strip():
        raise ConfigError(f"TensorRT version must be one of {', '.join(VERSIONS)}, got {version!r}")
    text = version.strip()
    if text in VERSIONS:
        return text
    try:
        parsed = parse_version(text)
    except ConfigError:
        parsed = ()
    if len(parsed) < 1:
        raise ConfigError(
            f"TensorRT version must be one of {', '.join(VERSIONS)} (or e.g. 10.3.0), got {version!r}"
        )
    key = (parsed + (0,))[:2]
    if key >= (11, 0):
        return "11"
    if key >= (10, 13):
        return "10.13"
    if key >= (10, 3):
        return "10.3"
    raise ConfigError(f"TensorRT {version} is older than 10.3, the oldest edgeseg supports")


def _key(version: str) -> Version:
    return {"10.3": (10, 3), "10.13": (10, 13), "11": (11, 0)}[version]


# --------------------------------------------------------------------------- the graph


def _name(node: onnx.NodeProto) -> str:
    if node.name:
        return node.name
    first = next((o for o in node.output if o), "?")
    return f"{first} (unnamed {node.op_type})"


def _attr(node: onnx.NodeProto, name: str, default: Any = None) -> Any:
    for a in node.attribute:
        if a.name == name:
            value = helper.get_attribute_value(a)
            return value.decode() if isinstance(value, bytes) else value
    return default


def _input(node: onnx.NodeProto, index: int) -> str:
    return node.input[index] if len(node.input) > index else ""


class _Graph:
    """Types, shapes and constants of a model's tensors, for the rules to look up."""

    def __init__(self, model: onnx.ModelProto) -> None:
        try:
            inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
        except (
            onnx.shape_inference.InferenceError,
            RuntimeError,
            ValueError,
        ):  # check what is declared
            inferred = model
        self.model = model
        self.types: dict[str, int] = {}
        self.shapes: dict[str, tuple[int | None, ...]] = {}
        for graph in _graphs(inferred.graph):
            for value in (*graph.input, *graph.output, *graph.value_info):
                tensor = value.type.tensor_type
                if tensor.elem_type:
                    self.types[value.name] = tensor.elem_type
                if tensor.HasField("shape"):
                    self.shapes[value.name] = tuple(
                        d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim
                    )
            for init in graph.initializer:
                self.types[init.name] = init.data_type
                self.shapes[init.name] = tuple(init.dims)
        self.constants: dict[str, onnx.TensorProto] = {}
        for graph in _graphs(model.graph):
            for init in graph.initializer:
                self.constants[init.name] = init
            for node in graph.node:
                if node.op_type == "Constant" and node.output:
                    tensor = constant_node_tensor(node)
                    if tensor is not None:
                        self.constants[node.output[0]] = tensor
                        self.types.setdefault(node.output[0], tensor.data_type)
        for _ in range(8):  # Identity of a constant is a constant
            added = False
            for graph in _graphs(model.graph):
                for node in graph.node:
                    if (
                        node.op_type == "Identity"
                        and node.input
                        and node.input[0] in self.constants
                    ):
                        if node.output[0] not in self.constants:
                            self.constants[node.output[0]] = self.constants[node.input[0]]
                            added = True
            if not added:
                break

    def dtype(self, name: str) -> str | None:
        elem = self.types.get(name)
        if elem is None:
            return None
        return _TYPE_NAMES.get(elem, TensorProto.DataType.Name(elem))

    def constant(self, name: str) -> np.ndarray | None:
        tensor = self.constants.get(name)
        return None if tensor is None else np.asarray(numpy_helper.to_array(tensor))

    def is_constant(self, name: str) -> bool:
        return name in self.constants


def _graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    """The graph and every If/Loop/Scan body in it, depth first."""
    yield graph
    for node in graph.node:
        for a in node.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                yield from _graphs(a.g)
            elif a.type == onnx.AttributeProto.GRAPHS:
                for g in a.graphs:
                    yield from _graphs(g)


def _nodes(model: onnx.ModelProto) -> Iterator[onnx.NodeProto]:
    for graph in _graphs(model.graph):
        yield from graph.node
    for function in model.functions:
        yield from function.node


# --------------------------------------------------------------------------- the table

Check = Callable[[onnx.NodeProto, _Graph], "str | None"]


@dataclass(frozen=True)
class OpRule:
    """What one TensorRT version's ONNX parser takes of one operator.

    Attributes:
        types: the types its data inputs may have (operators.md's "Supported Types").
        inputs: the indices of its data inputs (None: every input).
        checks: restrictions; each returns why the node is refused, or None.
    """

    types: frozenset[str]
    inputs: tuple[int, ...] | None = (0,)
    checks: tuple[Check, ...] = ()


def _const_input(index: int, what: str) -> Check:
    def check(node: onnx.NodeProto, g: _Graph) -> str | None:
        name = _input(node, index)
        if name and not g.is_constant(name):
            return (
                f"`{what}` must be a build-time constant (an initializer), but {name!r} is computed"
            )
        return None

    return check


def _attr_in(name: str, allowed: Iterable[Any], default: Any) -> Check:
    allowed = tuple(allowed)

    def check(node: onnx.NodeProto, g: _Graph) -> str | None:
        value = _attr(node, name, default)
        if value not in allowed:
            return f"{name}={value!r} is not supported (supported: {', '.join(map(str, allowed))})"
        return None

    return check


def _dilations_one(node: onnx.NodeProto, g: _Graph) -> str | None:
    dilations = _attr(node, "dilations")
    if dilations and any(d != 1 for d in dilations):
        return f"dilations {list(dilations)} must be empty or all ones"
    return None


def _pool_2d_3d(node: onnx.NodeProto, g: _Graph) -> str | None:
    kernel = _attr(node, "kernel_shape")
    if kernel is not None and len(kernel) not in (2, 3):
        return f"{len(kernel)}-D pooling: TensorRT pools in 2-D or 3-D only"
    return None


def _no_indices(node: onnx.NodeProto, g: _Graph) -> str | None:
    if len(node.output) > 1 and node.output[1]:
        return "the `Indices` output is not supported"
    return None


def _resize(node: onnx.NodeProto, g: _Graph) -> str | None:
    problems = []
    mode = _attr(node, "mode", "nearest")
    if mode not in ("nearest", "linear"):
        problems.append(f"mode={mode!r} (supported: nearest, linear)")
    ctm = _attr(node, "coordinate_transformation_mode", "half_pixel")
    if ctm not in (
        "half_pixel",
        "pytorch_half_pixel",
        "tf_half_pixel_for_nn",
        "asymmetric",
        "align_corners",
    ):
        problems.append(
            f"coordinate_transformation_mode={ctm!r} (supported: half_pixel, pytorch_half_pixel, "
            "tf_half_pixel_for_nn, asymmetric, align_corners)"
        )
    nearest = _attr(node, "nearest_mode", "round_prefer_floor")
    if mode == "nearest" and nearest not in (
        "floor",
        "ceil",
        "round_prefer_floor",
        "round_prefer_ceil",
    ):
        problems.append(f"nearest_mode={nearest!r}")
    policy = _attr(node, "keep_aspect_ratio_policy", "stretch")
    if policy != "stretch":
        problems.append(f"keep_aspect_ratio_policy={policy!r} (only stretch)")
    if _attr(node, "antialias", 0):
        problems.append("antialias=1 (antialiasing is not supported)")
    scales = _input(node, 2)
    axes = _attr(node, "axes")
    if scales and not g.is_constant(scales) and axes is not None:
        rank = len(g.shapes.get(node.input[0], ())) or len(axes)
        if list(axes) != list(range(rank)):
            problems.append(f"axes {list(axes)} with tensor scales must be 0..rank-1")
    return "; ".join(problems) or None


def _deform_conv(node: onnx.NodeProto, g: _Graph) -> str | None:
    problems = []
    weight = g.shapes.get(_input(node, 1))
    if weight is not None and len(weight) not in (3, 4):
        problems.append(f"{len(weight) - 2}-D spatial input (1-D or 2-D only)")
    pads = _attr(node, "pads")
    if pads:
        half = len(pads) // 2
        if list(pads[:half]) != list(pads[half:]):
            problems.append(f"pads {list(pads)}: begin and end must be the same on each axis")
    if not _input(node, 4):
        problems.append(
            "no mask input: the parser makes the default mask with the offset's shape (twice the "
            "channels), so the plugin rejects it; export DCNv1 with an explicit ones mask"
        )
    return "; ".join(problems) or None


def _top_k(node: onnx.NodeProto, g: _Graph) -> str | None:
    if _attr(node, "sorted", 1) != 1:
        return "sorted must be 1"
    k = g.constant(_input(node, 1))
    if k is not None and int(np.max(k)) >= 3840:
        return f"K={int(np.max(k))} must be less than 3840"
    return None


def _dropout(node: onnx.NodeProto, g: _Graph) -> str | None:
    name = _input(node, 2)
    if not name:
        return None
    value = g.constant(name)
    if value is None or bool(np.any(value)):
        return "`training_mode` must be an initializer that is False"
    return None


def _single_output(node: onnx.NodeProto, g: _Graph) -> str | None:
    if sum(1 for o in node.output if o) > 1:
        return "only the first output `Y` is supported"
    return None


def _constant(node: onnx.NodeProto, g: _Graph) -> str | None:
    for a in node.attribute:
        if a.name in ("sparse_value", "value_string", "value_strings"):
            return f"the `{a.name}` attribute is not supported"
    return None


_CAST_TO = frozenset({"FP32", "FP16", "BF16", "INT32", "INT64", "UINT8", "BOOL"})


def _cast(node: onnx.NodeProto, g: _Graph) -> str | None:
    to = _attr(node, "to")
    name = _TYPE_NAMES.get(to, str(to)) if to is not None else None
    if node.op_type == "CastLike":
        name = g.dtype(_input(node, 1))
    if name is not None and name not in _CAST_TO:
        return f"cast to {name} (supported: {', '.join(sorted(_CAST_TO))})"
    return None


def _scatter_nd(node: onnx.NodeProto, g: _Graph) -> str | None:
    reduction = _attr(node, "reduction", "none")
    if reduction != "none":
        return f"reduction={reduction!r} (only none)"
    return None


def _lstm(node: onnx.NodeProto, g: _Graph) -> str | None:
    if _attr(node, "input_forget", 0) != 0 or _attr(node, "layout", 0) != 0:
        return "`input_forget` and `layout` must be 0"
    return None


_REDUCE = ("L1", "L2", "LogSum", "LogSumExp", "Max", "Mean", "Min", "Prod", "Sum", "SumSquare")

# TensorRT 10.3: onnx-tensorrt release/10.1-GA's docs/operators.md, with 10.2/10.3's Changelog
# (Slice takes tensor axes from 10.3). Operators it marks "N" are absent: refused.
# fmt: off
_TABLE_10_3: dict[str, OpRule] = {
    **{op: OpRule(_FI) for op in ("Abs", "Neg", "Relu", "Sign")},
    **{
        op: OpRule(_F)
        for op in (
            "Acos", "Acosh", "Asin", "Asinh", "Atan", "Atanh", "BatchNormalization", "Ceil",
            "Celu", "Clip", "Conv", "ConvTranspose", "Cos", "Cosh", "Einsum", "Elu", "Erf", "Exp",
            "Floor", "Gemm", "GlobalAveragePool", "GlobalLpPool", "GlobalMaxPool",
            "GroupNormalization", "HardSigmoid", "HardSwish", "ImageScaler",
            "InstanceNormalization", "IsInf", "LeakyRelu", "Log", "LogSoftmax", "LRN",
            "LpNormalization", "MatMul", "MeanVarianceNormalization", "ParametricSoftplus", "Pow",
            "PRelu", "Reciprocal", "Round", "ScaledTanh", "Scan", "Selu", "Sigmoid", "Sin", "Sinh",
            "Softmax", "Softplus", "Softsign", "Sqrt", "Tan", "Tanh", "ThresholdedRelu", "Upsample",
            "GRU", "RNN", "RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike",
            "Hardmax",
        )
    },
    **{
        op: OpRule(_FI, (0, 1))
        for op in (
            "Add", "Sub", "Mul", "Div", "Mod", "Equal", "Greater", "GreaterOrEqual", "Less",
            "LessOrEqual",
        )
    },
    **{op: OpRule(_FI, _ALL) for op in ("Max", "Min", "Sum")},
    "Mean": OpRule(_FI | {"FP8"}, _ALL),
    **{op: OpRule(frozenset({"BOOL"}), _ALL) for op in ("And", "Or", "Xor", "Not")},
    **{
        op: OpRule(_FI)
        for op in ("ArgMax", "ArgMin", "DepthToSpace", "SpaceToDepth", "Range", "Shrink", "IsNaN")
    },
    "AveragePool": OpRule(_F, checks=(_pool_2d_3d, _dilations_one)),
    "MaxPool": OpRule(_F, checks=(_pool_2d_3d, _dilations_one, _no_indices)),
    "LpPool": OpRule(_F, checks=(_dilations_one,)),
    "Cast": OpRule(_FIB | {"UINT8"}, checks=(_cast,)),
    "CastLike": OpRule(_FIB | {"UINT8"}, checks=(_cast,)),
    "Concat": OpRule(_FIB, _ALL),
    "Constant": OpRule(_FIB, (), checks=(_constant,)),
    "ConstantOfShape": OpRule(_FIB, ()),
    "CumSum": OpRule(_F, checks=(_const_input(1, "axis"),)),
    "DeformConv": OpRule(_FH, (0, 1, 2), checks=(_deform_conv,)),
    "DequantizeLinear": OpRule(frozenset({"INT8", "FP8", "INT4"})),
    "QuantizeLinear": OpRule(_F),
    "Dropout": OpRule(_F, checks=(_dropout,)),
    "Expand": OpRule(_FIB),
    "EyeLike": OpRule(_FIB),
    "Flatten": OpRule(_FIB),
    "Gather": OpRule(_FIB),
    "GatherElements": OpRule(_FIB),
    "GatherND": OpRule(_FIB),
    "Gelu": OpRule(_FI | {"INT8"}),
    "GridSample": OpRule(_FH),
    "Identity": OpRule(_FIB),
    "If": OpRule(_FIB, ()),
    "LayerNormalization": OpRule(_F, checks=(_single_output,)),
    "Loop": OpRule(_FIB, ()),
    "LSTM": OpRule(_F, checks=(_lstm,)),
    "Mish": OpRule(_FH),
    "NonMaxSuppression": OpRule(_FH),
    "NonZero": OpRule(_FH),
    "OneHot": OpRule(_FIB, (0,), checks=(_const_input(1, "depth"),)),
    "Pad": OpRule(_FI, checks=(_const_input(3, "axes"),)),
    **{f"Reduce{op}": OpRule(_FI, checks=(_const_input(1, "axes"),)) for op in _REDUCE},
    "Reshape": OpRule(_FIB),
    "Resize": OpRule(_F, checks=(_resize,)),
    "ReverseSequence": OpRule(_FIB),
    "RoiAlign": OpRule(_FH),
    "Scatter": OpRule(_FI, (0, 2)),
    "ScatterElements": OpRule(_FI, (0, 2)),
    "ScatterND": OpRule(_FI, (0, 2), checks=(_scatter_nd,)),
    "Shape": OpRule(_FIB),
    "Size": OpRule(_FIB),
    "Slice": OpRule(_FIB),
    "Split": OpRule(_FIB),
    "Squeeze": OpRule(_FIB, checks=(_const_input(1, "axes"),)),
    "Unsqueeze": OpRule(_FIB, checks=(_const_input(1, "axes"),)),
    "Tile": OpRule(_FIB),
    "TopK": OpRule(_FI, checks=(_top_k,)),
    "Transpose": OpRule(_FIB),
    "Trilu": OpRule(_FIB),
    "Where": OpRule(_FIB, (1, 2)),
}
# fmt: on

# what later parsers add, in release order (Changelog 10.4, 10.5; the 10.15 table for the rest)
_LATER: tuple[tuple[Version, dict[str, OpRule]], ...] = (
    (
        (10, 4),
        {
            "Pad": OpRule(_FI),  # tensor `axes`
            **{op: OpRule(_FH, ()) for op in ("BlackmanWindow", "HammingWindow", "HannWindow")},
        },
    ),
    ((10, 5), {"STFT": OpRule(frozenset({"FP32"}), checks=(_const_input(2, "window"),))}),
    ((10, 14), {"Attention": OpRule(_F | {"INT8", "FP8"}, (0, 1, 2))}),
    (
        (10, 15),
        {
            "RMSNormalization": OpRule(_F),
            "RotaryEmbedding": OpRule(_F),
            "TensorScatter": OpRule(_F | {"INT32"}, (0, 1)),
            "Pow": OpRule(_FI, (0, 1)),
            # "axes must be resolvable to a constant": computed from shapes counts
            "Squeeze": OpRule(_FIB),
            "Unsqueeze": OpRule(_FIB),
        },
    ),
)
_QDQ = ("QuantizeLinear", "DequantizeLinear")
_DOCUMENTED_OPSETS = {"10.3": (9, 20), "10.13": (9, 20), "11": (9, 24)}


def table(version: str) -> dict[str, OpRule]:
    """The operator table of a version key (:func:`resolve_version`)."""
    key = _key(version)
    rules = dict(_TABLE_10_3)
    for since, changes in _LATER:
        if since <= key:
            rules.update(changes)
    return rules


# --------------------------------------------------------------------------- the rules


def uint8_findings(model: onnx.ModelProto, graph: _Graph | None = None) -> list[Finding]:
    """TensorRT's uint8 rule: a uint8 tensor only as a network input feeding Casts to float, or
    as a network output made by a Cast of a float tensor."""
    g = graph or _Graph(model)
    inputs = {v.name for v in model.graph.input}
    outputs = {v.name for v in model.graph.output}
    findings = []
    for node in model.graph.node:
        if node.op_type in _QDQ:
            continue  # a uint8 Q/DQ is named by the explicit-quantization rules (qdq-dtype)
        for name in node.input:
            if not name or g.dtype(name) != "UINT8":
                continue
            if (
                node.op_type == "Cast"
                and _TYPE_NAMES.get(_attr(node, "to")) in ("FP32", "FP16")
                and name in inputs
            ):
                continue
            where = f"network input {name!r}" if name in inputs else f"uint8 tensor {name!r}"
            findings.append(
                Finding(
                    _name(node),
                    node.op_type,
                    "uint8",
                    f"reads {where}: TensorRT takes uint8 only as network I/O, and a uint8 input "
                    "only into a Cast to FP32/FP16",
                )
            )
        for name in node.output:
            if not name or g.dtype(name) != "UINT8":
                continue
            if (
                name in outputs
                and node.op_type == "Cast"
                and g.dtype(node.input[0]) in ("FP32", "FP16")
            ):
                continue
            what = "network output" if name in outputs else "tensor"
            findings.append(
                Finding(
                    _name(node),
                    node.op_type,
                    "uint8",
                    f"makes uint8 {what} {name!r}: TensorRT makes a uint8 network output only by a "
                    "Cast of an FP32/FP16 tensor, and no other uint8 tensor",
                )
            )
    return findings


def _io_findings(model: onnx.ModelProto, g: _Graph) -> list[Finding]:
    findings = []
    for kind, values in (("input", model.graph.input), ("output", model.graph.output)):
        for value in values:
            dtype = g.dtype(value.name)
            if dtype is None or dtype in _IO_TYPES:
                continue
            if dtype == "DOUBLE":
                findings.append(
                    Finding(
                        f"{kind} {value.name!r}",
                        "",
                        "io-dtype",
                        "DOUBLE is cast down to FP32",
                        WARNING,
                    )
                )
                continue
            findings.append(
                Finding(
                    f"{kind} {value.name!r}",
                    "",
                    "io-dtype",
                    f"network {kind} of type {dtype} (TensorRT takes {', '.join(sorted(_IO_TYPES))})",
                )
            )
    return findings


def _node_findings(
    node: onnx.NodeProto,
    g: _Graph,
    rules: Mapping[str, OpRule],
    version: str,
    plugins: frozenset[str],
) -> list[Finding]:
    name = _name(node)
    if node.domain not in ("", "ai.onnx") or node.op_type not in rules:
        if node.op_type in plugins:
            return []
        domain = f" (domain {node.domain!r})" if node.domain not in ("", "ai.onnx") else ""
        return [
            Finding(
                name,
                node.op_type,
                "operator",
                f"{node.op_type}{domain} is not imported by {VERSIONS[version]}'s ONNX parser; it would "
                f"look for a plugin named {node.op_type!r} in the registry",
            )
        ]
    rule = rules[node.op_type]
    findings = []
    indices = range(len(node.input)) if rule.inputs is None else rule.inputs
    for index in indices:
        tensor = _input(node, index)
        dtype = g.dtype(tensor) if tensor else None
        if dtype is None or dtype in rule.types:
            continue
        if dtype == "UINT8" and node.op_type not in _QDQ:
            continue  # the uint8 rule names it
        findings.append(
            Finding(
                name,
                node.op_type,
                "dtype",
                f"input {index} ({tensor!r}) is {dtype}; {node.op_type} takes {', '.join(sorted(rule.types))}",
            )
        )
    for check in rule.checks:
        problem = check(node, g)
        if problem:
            findings.append(Finding(name, node.op_type, "attribute", problem))
    return findings


def _qdq_findings(model: onnx.ModelProto) -> list[Finding]:
    report = check_tensorrt_qdq(model)
    return [Finding(v.node, v.op_type, f"qdq-{v.rule}", v.message) for v in report.violations]


# --------------------------------------------------------------------------- DLA


_DLA_MAX_DIM = 8192


def _dla_reason(node: onnx.NodeProto, g: _Graph) -> str | None:
    """Why DLA cannot run this node (None: it can)."""
    op = node.op_type
    shape = g.shapes.get(_input(node, 0))
    if shape is not None:
        if any(d is None for d in shape):
            return "dynamic dimensions (DLA needs static shapes)"
        if any(d is not None and d > _DLA_MAX_DIM for d in shape[1:]):
            return f"a dimension above {_DLA_MAX_DIM} in {list(shape)}"
    four_d = shape is None or len(shape) == 4
    if op in ("Relu", "Sigmoid", "Tanh", "Clip", "LeakyRelu"):
        return None if four_d else "activations run on DLA for 4-D tensors only"
    if op in ("Add", "Sub", "Mul", "Div", "Max", "Min", "Pow"):
        return None if four_d else "element-wise layers run on DLA for 4-D tensors only"
    if op == "BatchNormalization":
        return None
    if op == "PRelu":
        return None if g.is_constant(_input(node, 1)) else "the slope must be a build-time constant"
    if op == "Concat":
        if _attr(node, "axis") not in (1, -3):
            return f"concatenation on axis {_attr(node, 'axis')} (DLA: the channel axis only)"
        return (
            None
            if len([i for i in node.input if i]) >= 2
            else "DLA concatenates two or more inputs"
        )
    if op == "Conv":
        weight = g.shapes.get(_input(node, 1))
        if weight is None or len(weight) != 4:
            return "DLA convolves in 2-D only"
        kernel = weight[2:]
        strides = _attr(node, "strides") or [1, 1]
        if any(k is None or not 1 <= k <= 32 for k in kernel):
            return f"kernel {list(kernel)} (DLA: 1..32)"
        if any(not 1 <= s <= 8 for s in strides):
            return f"stride {list(strides)} (DLA: 1..8)"
        if any(c is None or not 1 <= c <= _DLA_MAX_DIM for c in weight[:2]):
            return f"channels {list(weight[:2])} (DLA: 1..8192)"
        return None
    if op == "ConvTranspose":
        weight = g.shapes.get(_input(node, 1))
        if weight is None or len(weight) != 4:
            return "DLA deconvolves in 2-D only"
        if _attr(node, "group", 1) != 1:
            return "grouped deconvolution"
        if any(d != 1 for d in _attr(node, "dilations") or [1, 1]):
            return "dilated deconvolution"
        if any(p != 0 for p in _attr(node, "pads") or [0]):
            return f"padding {list(_attr(node, 'pads'))} (DLA deconvolution needs 0)"
        strides = _attr(node, "strides") or [1, 1]
        if any(k is None or not 1 <= k <= 32 for k in weight[2:]) or any(
            not 1 <= s <= 32 for s in strides
        ):
            return f"kernel {list(weight[2:])} / stride {list(strides)} (DLA: 1..32)"
        return None
    if op in ("MaxPool", "AveragePool"):
        window: list[int] = list(_attr(node, "kernel_shape") or [])
        steps: list[int] = list(_attr(node, "strides") or [1] * len(window))
        padding: list[int] = list(_attr(node, "pads") or [0])
        if len(window) != 2:
            return "DLA pools in 2-D only"
        if any(not 1 <= k <= 8 for k in window):
            return f"window {window} (DLA: 1..8)"
        if any(not 1 <= s <= 16 for s in steps):
            return f"stride {steps} (DLA: 1..16)"
        if any(not 0 <= p <= 7 for p in padding):
            return f"padding {padding} (DLA: 0..7)"
        return None
    if op in ("GlobalAveragePool", "GlobalMaxPool"):
        if shape is None or len(shape) != 4:
            return "DLA pools 4-D tensors only"
        window = [d for d in shape[2:] if d is not None]
        if any(d > 8 for d in window):
            return f"a global pool is a {window[0]}x{window[-1]} window (DLA: 1..8)"
        return None
    if op == "Resize":
        if _input(node, 3):
            return "Resize with output sizes (DLA takes scales only)"
        scales = g.constant(_input(node, 2))
        if scales is None or scales.size != 4 or list(scales[:2]) != [1, 1]:
            return "DLA resizes by four constant scales whose first two are 1"
        hw = [float(s) for s in scales[2:]]
        mode = _attr(node, "mode", "nearest")
        top = 32 if mode == "nearest" else 4
        if any(s != int(s) or not 1 <= s <= top for s in hw):
            return f"scales {hw} (DLA: integers 1..{top} for {mode})"
        if (
            mode == "linear"
            and _attr(node, "coordinate_transformation_mode", "half_pixel") != "half_pixel"
        ):
            return "linear resize on DLA needs half_pixel coordinates"
        return None
    if op == "Softmax":
        axis = _attr(node, "axis", -1)
        rank = len(shape) if shape is not None else 4
        return None if axis % rank != 0 else "softmax over the batch axis"
    return f"DLA has no layer for {op}"


def _dla_findings(model: onnx.ModelProto, g: _Graph) -> list[Finding]:
    findings = []
    for node in model.graph.node:
        if node.op_type in ("Constant", "Identity"):
            continue
        reason = _dla_reason(node, g)
        if reason:
            findings.append(
                Finding(_name(node), node.op_type, "dla", reason + ": runs on the GPU", FALLBACK)
            )
    return findings


# --------------------------------------------------------------------------- entry points


def check_model(
    model: onnx.ModelProto | str | os.PathLike[str],
    version: str,
    *,
    dla: bool = False,
    plugins: Iterable[str] = (PLUGIN_OP,),
    label: str | None = None,
    precision: str | None = None,
) -> GraphReport:
    """Checks one ONNX graph against a TensorRT version's parser (and DLA's layers), offline.

    Args:
        model: the model, or the path of an ``.onnx`` file.
        version: ``10.3``, ``10.13``, ``11`` or a full version (:func:`resolve_version`).
        dla: also apply Orin's DLA layer rules (fallbacks, not refusals).
        plugins: op types a plugin library registers (default: edgeseg's deformable-conv plugin).
        label: the name the report gives the graph (default: the file name, or ``"model"``).
        precision: the bundle precision the graph is built for, recorded in the report.

    Returns:
        The report: ``report.ok`` is False when TensorRT would refuse any node.

    Raises:
        ConfigError: an unknown version.
    """
    key = resolve_version(version)
    if not isinstance(model, onnx.ModelProto):
        path = Path(model)
        label = label or path.name
        model = onnx.load(str(path))
    return check_versions(
        model, (key,), dla=dla, plugins=plugins, label=label, precision=precision
    )[key]


def check_versions(
    model: onnx.ModelProto,
    versions: Iterable[str] = VERSIONS,
    *,
    dla: bool = False,
    plugins: Iterable[str] = (PLUGIN_OP,),
    label: str | None = None,
    precision: str | None = None,
) -> dict[str, GraphReport]:
    """:func:`check_model` for several versions, reading the graph (shape inference) once.

    Returns:
        version key -> report, in the order given.
    """
    g = _Graph(model)
    qdq = _qdq_findings(model) if any(n.op_type in _QDQ for n in model.graph.node) else []
    dla_findings = _dla_findings(model, g) if dla else []
    return {
        key: _check(model, g, key, qdq, dla_findings, dla, frozenset(plugins), label, precision)
        for key in dict.fromkeys(resolve_version(v) for v in versions)
    }


def _check(
    model: onnx.ModelProto,
    g: _Graph,
    key: str,
    qdq: list[Finding],
    dla_findings: list[Finding],
    dla: bool,
    plugin_ops: frozenset[str],
    label: str | None,
    precision: str | None,
) -> GraphReport:
    rules = table(key)
    findings: list[Finding] = []
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    low, high = _DOCUMENTED_OPSETS[key]
    if opset is not None and not low <= opset <= high:
        findings.append(
            Finding(
                "model",
                "",
                "opset",
                f"opset {opset} is outside the opsets {low}..{high} the {VERSIONS[key]} table documents; "
                "the parser reads it, but newer operator versions may not import",
                WARNING,
            )
        )
    findings += _io_findings(model, g)
    findings += uint8_findings(model, g)
    count = 0
    for node in _nodes(model):
        count += 1
        findings += _node_findings(node, g, rules, key, plugin_ops)
    findings += qdq
    findings += dla_findings
    return GraphReport(
        graph=label or "model",
        version=key,
        dla=dla,
        nodes=count,
        findings=tuple(_dedupe(findings)),
        precision=precision,
    )


def _dedupe(findings: Sequence[Finding]) -> Iterator[Finding]:
    seen = set()
    for f in findings:
        if f not in seen:
            seen.add(f)
            yield f


def check_bundle(
    bundle: Bundle | str | os.PathLike[str],
    version: str,
    *,
    dla: bool = False,
) -> BundleReport:
    """Checks every graph of a bundle TensorRT would build: each precision's, and a separate CRF's.

    With ``dla``, the graph TensorRT 10.x builds for DLA is the FP32 one with
    builder precision flags (:func:`converters.tensorrt.dla_mode`), once per
    DLA precision the bundle carries (FP16, INT8); a version without DLA, a
    dynamic bundle, or INT8 without the implicit calibrator's cache is a
    bundle-level refusal.

    Raises:
        ConfigError: an unknown version.
        BundleError: the bundle cannot be read.
    """
    key = resolve_version(version)
    loaded = bundle if isinstance(bundle, Bundle) else Bundle.load(bundle)
    manifest = loaded.manifest
    findings: list[Finding] = []
    graphs: list[GraphReport] = []
    if dla:
        findings += _dla_bundle_findings(loaded, key)
        on_dla = [p for p in ("fp16", "int8") if p in manifest.graphs]
        if "fp32" in manifest.graphs and on_dla:
            fp32 = loaded.graph("fp32")
            for dla_precision in on_dla:
                graphs.append(check_model(fp32, key, dla=True, precision=dla_precision))
    else:
        for precision, name in sorted(
            manifest.graphs.items(), key=lambda kv: _PRECISION_ORDER.get(kv[0], 9)
        ):
            report = check_model(loaded.file(name), key, precision=precision)
            graphs.append(report)
            record = manifest.precisions.get(precision)
            quant = record.quantization if record is not None else None
            if not report.ok and quant is not None and quant.placement == "cpu":
                findings.append(
                    Finding(
                        "bundle",
                        "",
                        "placement",
                        f"{name} has ONNX Runtime's Q/DQ placement (uint8, asymmetric activations), which "
                        "TensorRT's parser refuses; give it TensorRT's: `edgeseg calibrate BUNDLE --calib ... "
                        "--placement tensorrt`",
                    )
                )
    crf = manifest.crf
    if crf is not None and crf.mode == "separate" and crf.graph is not None:
        graphs.append(check_model(loaded.file(crf.graph), key, dla=dla, precision="crf"))
    return BundleReport(str(loaded.path), key, dla, tuple(graphs), tuple(findings))


_PRECISION_ORDER = {"fp32": 0, "fp16": 1, "int8": 2}


def _dla_bundle_findings(loaded: Bundle, version: str) -> list[Finding]:
    from converters.tensorrt import CALIBRATION_CACHE

    manifest = loaded.manifest
    findings = []
    if version not in DLA_VERSIONS:
        findings.append(
            Finding(
                "bundle",
                "",
                "dla",
                f"{VERSIONS[version]} builds no DLA engines: TensorRT 10.7 was the last 10.x release with "
                "DLA, and it returned in 11.4.1 for strongly typed networks on AGX Orin (JetPack >= 7.2.2)",
            )
        )
    if not any(p in manifest.graphs for p in ("fp16", "int8")):
        findings.append(
            Finding(
                "bundle",
                "",
                "dla",
                "DLA runs FP16 and INT8 only; the bundle carries only FP32 (fp16 is "
                "the FP32 graph built with FP16 on DLA: `edgeseg build --precision fp16`)",
            )
        )
    if manifest.input.dynamic:
        findings.append(
            Finding("bundle", "", "dla", "DLA needs static shapes; the bundle's input is dynamic")
        )
    if "int8" in manifest.graphs and CALIBRATION_CACHE not in manifest.files:
        findings.append(
            Finding(
                "bundle",
                "",
                "dla",
                f"INT8 on DLA with TensorRT 10.x needs the implicit calibrator's cache ({CALIBRATION_CACHE}); "
                "run `edgeseg calibrate BUNDLE --calib ...`",
            )
        )
    return findings
