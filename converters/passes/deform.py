"""ONNX ``DeformConv`` <-> edgeseg's TensorRT plugin op ``edgeseg::EdgesegDeformConv``.

TensorRT's ONNX parser imports ``DeformConv`` itself (TensorRT >= 10.1, a
built-in plugin with symmetric pads only); ``--deform-conv plugin`` rewrites the
nodes to edgeseg's own plugin instead, which the parser resolves through the
plugin registry once ``libedgeseg_plugins.so`` is loaded (its fallback importer
looks plugins up by op_type, ``plugin_version`` and ``plugin_namespace``, and
hands the node's INT/INTS attributes to the creator as INT32 fields).

The plugin takes exactly five inputs (X, W, offset, B, mask). Where the
DeformConv omits B or mask, :func:`to_plugin` supplies them: a zero bias
initializer (or ``ConstantOfShape`` of W's first dim when W is computed) and a
ones mask shaped from the offset (``ConstantOfShape(Shape(offset) / [1, 2, 1,
1])``, per image as the mask must be). The node records what it added, so
:func:`to_native` restores the original node exactly and removes the helpers.

Both passes are pure: a ModelProto in, a new ModelProto out.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from converters.plugins import PLUGIN_DOMAIN, PLUGIN_NAMESPACE, PLUGIN_OP, PLUGIN_VERSION
from edgeseg.errors import ConfigError, ExportError

log = logging.getLogger(__name__)

__all__ = [
    "DEFORM_CONV_MODES",
    "PLUGIN_FIELDS",
    "apply_deform_conv_mode",
    "explicit_masks",
    "to_native",
    "to_plugin",
]

DEFORM_CONV_MODES = ("plugin", "native")
"""Values of ``--deform-conv``."""
PLUGIN_FIELDS = ("strides", "pads", "dilations", "group", "offset_group")
"""The plugin creator's fields (dcn_plugin.cpp), named like DeformConv's attributes."""

SYNTHESIZED_ATTR = "edgeseg_synthesized_inputs"
"""ints: plugin inputs (3 = B, 4 = mask) that to_plugin added; to_native drops them again."""
DEFAULTED_ATTR = "edgeseg_defaulted_fields"
"""strings: plugin fields the DeformConv left at their defaults; to_native omits them again."""
HELPER_PREFIX = "edgeseg_dcn/"
"""Prefix of the nodes, tensors and initializers to_plugin adds."""

_NATIVE_ATTRS = ("strides", "pads", "dilations", "group", "offset_group", "kernel_shape")
_PLUGIN_ONLY_ATTRS = ("plugin_namespace", "plugin_version", SYNTHESIZED_ATTR, DEFAULTED_ATTR)
_FLOAT_TYPES: dict[int, type[np.floating[Any]]] = {
    TensorProto.FLOAT: np.float32,
    TensorProto.FLOAT16: np.float16,
}
_BIAS, _MASK = 3, 4


@dataclass(frozen=True)
class _Attributes:
    """A DeformConv's attributes, defaults filled in and checked."""

    strides: tuple[int, int]
    pads: tuple[int, int, int, int]
    dilations: tuple[int, int]
    group: int
    offset_group: int
    kernel_shape: tuple[int, int] | None

    def field(self, name: str) -> int | list[int]:
        value = getattr(self, name)
        return list(value) if isinstance(value, tuple) else int(value)


def apply_deform_conv_mode(model: onnx.ModelProto, mode: str) -> onnx.ModelProto:
    """``--deform-conv plugin|native``: :func:`to_plugin` or :func:`to_native`.

    Raises:
        ConfigError: ``mode`` is neither ``plugin`` nor ``native``.
    """
    if mode == "plugin":
        return to_plugin(model)
    if mode == "native":
        return to_native(model)
    raise ConfigError(
        f"deform-conv mode must be one of {', '.join(DEFORM_CONV_MODES)}; got {mode!r}"
    )


def to_plugin(model: onnx.ModelProto) -> onnx.ModelProto:
    """Rewrites every ONNX ``DeformConv`` of the main graph into ``edgeseg::EdgesegDeformConv``.

    The plugin nodes keep the DeformConv's name, inputs and outputs, carry
    ``strides``, ``pads``, ``dilations``, ``group``, ``offset_group`` (defaults
    written out), ``plugin_namespace`` and ``plugin_version``, and always have
    five inputs. The opset import ``edgeseg`` version 1 is added.

    Raises:
        ExportError: a DeformConv the plugin cannot run (not 2-D, not FP32/FP16,
            malformed attributes or inputs); the message names the node.
    """
    out = _copy(model)
    graph = out.graph
    if not any(_is_native(n) for n in graph.node):
        return out
    types = _TypeTable(out)
    initializers = {i.name: i for i in graph.initializer}
    nodes: list[onnx.NodeProto] = []
    added_initializers: list[onnx.TensorProto] = []
    rewritten = 0
    for node in graph.node:
        if not _is_native(node):
            nodes.append(node)
            continue
        label = _label(node)
        attrs = _native_attributes(node, label)
        if not 3 <= len(node.input) <= 5 or not all(node.input[:3]):
            raise ExportError(
                f"DeformConv node {label}: needs inputs X, W, offset (and optional B, mask), "
                f"got {list(node.input)}"
            )
        if len(node.output) != 1:
            raise ExportError(
                f"DeformConv node {label}: expected one output, got {len(node.output)}"
            )
        inputs = list(node.input) + [""] * (5 - len(node.input))
        elem_type = _check_tensors(node, label, attrs, types, initializers)
        prefix = f"{HELPER_PREFIX}{node.name or node.output[0]}/"
        synthesized = _fill_optional_inputs(
            inputs, prefix, elem_type, initializers, nodes, added_initializers
        )
        nodes.append(_plugin_node(node, inputs, attrs, synthesized))
        rewritten += 1
    del graph.node[:]
    graph.node.extend(nodes)
    graph.initializer.extend(added_initializers)
    if not any(o.domain == PLUGIN_DOMAIN for o in out.opset_import):
        out.opset_import.append(helper.make_opsetid(PLUGIN_DOMAIN, 1))
    log.debug("rewrote %d DeformConv nodes into %s", rewritten, PLUGIN_OP)
    return out


def to_native(model: onnx.ModelProto) -> onnx.ModelProto:
    """Rewrites every ``edgeseg::EdgesegDeformConv`` back into an ONNX ``DeformConv``.

    Inputs and attributes that :func:`to_plugin` added are dropped with the
    helper nodes and initializers nothing else reads, and the ``edgeseg``
    opset import goes once no node uses it: ``to_native(to_plugin(m))`` equals
    ``m``.

    Raises:
        ExportError: a plugin node of another plugin version or namespace, or
            with malformed attributes or inputs; the message names the node.
    """
    out = _copy(model)
    graph = out.graph
    if not any(_is_plugin(n) for n in graph.node):
        return out
    nodes = [_native_node(n) if _is_plugin(n) else n for n in graph.node]
    del graph.node[:]
    graph.node.extend(nodes)
    _drop_unused_helpers(graph)
    if not any(n.domain == PLUGIN_DOMAIN for n in graph.node):
        kept = [o for o in out.opset_import if o.domain != PLUGIN_DOMAIN]
        del out.opset_import[:]
        out.opset_import.extend(kept)
    return out


# ---------------------------------------------------------------- nodes


def _plugin_node(
    node: onnx.NodeProto, inputs: list[str], attrs: _Attributes, synthesized: list[int]
) -> onnx.NodeProto:
    plugin = onnx.NodeProto()
    plugin.CopyFrom(node)  # name, outputs, doc string, metadata
    plugin.op_type = PLUGIN_OP
    plugin.domain = PLUGIN_DOMAIN
    del plugin.input[:]
    plugin.input.extend(inputs)
    given = {a.name for a in node.attribute}
    defaulted = [name for name in PLUGIN_FIELDS if name not in given]
    # the DeformConv's own attributes first, in their order, then the defaults written out
    plugin.attribute.extend(helper.make_attribute(name, attrs.field(name)) for name in defaulted)
    plugin.attribute.append(helper.make_attribute("plugin_namespace", PLUGIN_NAMESPACE))
    plugin.attribute.append(helper.make_attribute("plugin_version", PLUGIN_VERSION))
    if defaulted:
        plugin.attribute.append(helper.make_attribute(DEFAULTED_ATTR, defaulted))
    if synthesized:
        plugin.attribute.append(helper.make_attribute(SYNTHESIZED_ATTR, synthesized))
    return plugin


def explicit_masks(model: onnx.ModelProto) -> onnx.ModelProto:
    """Gives every mask-less ``DeformConv`` (DCNv1) an explicit all-ones mask (and a zero bias
    where it has none), which compute the same output.

    TensorRT's ONNX importer builds the default mask of a mask-less DeformConv
    with the offset's shape, which has twice the channels a mask has; an
    explicit mask of the right shape (``ConstantOfShape(Shape(offset) / [1, 2, 1,
    1])``) sidesteps that on every TensorRT version, and ONNX Runtime runs it as
    before. Nodes that already have a mask are left as they are.

    Raises:
        ExportError: a DeformConv with malformed attributes or inputs; the message names it.
    """
    out = _copy(model)
    graph = out.graph
    if not any(_is_native(n) and _maskless(n) for n in graph.node):
        return out
    types = _TypeTable(out)
    initializers = {i.name: i for i in graph.initializer}
    nodes: list[onnx.NodeProto] = []
    added_initializers: list[onnx.TensorProto] = []
    for node in graph.node:
        if not (_is_native(node) and _maskless(node)):
            nodes.append(node)
            continue
        label = _label(node)
        attrs = _native_attributes(node, label)
        elem_type = _check_tensors(node, label, attrs, types, initializers)
        inputs = list(node.input) + [""] * (5 - len(node.input))
        prefix = f"{HELPER_PREFIX}{node.name or node.output[0]}/"
        _fill_optional_inputs(inputs, prefix, elem_type, initializers, nodes, added_initializers)
        masked = onnx.NodeProto()
        masked.CopyFrom(node)
        del masked.input[:]
        masked.input.extend(inputs)
        nodes.append(masked)
    del graph.node[:]
    graph.node.extend(nodes)
    graph.initializer.extend(added_initializers)
    return out


def _maskless(node: onnx.NodeProto) -> bool:
    return len(node.input) <= _MASK or not node.input[_MASK]


def _fill_optional_inputs(
    inputs: list[str],
    prefix: str,
    elem_type: int,
    initializers: dict[str, onnx.TensorProto],
    nodes: list[onnx.NodeProto],
    added_initializers: list[onnx.TensorProto],
) -> list[int]:
    """Supplies a missing bias (zeros) and mask (ones) of a DeformConv's five inputs, in place.

    Returns:
        The input indexes it supplied (3 = B, 4 = mask).
    """
    synthesized: list[int] = []
    if not inputs[_BIAS]:
        inputs[_BIAS] = prefix + "zero_bias"
        weight = initializers.get(inputs[1])
        if weight is not None:
            zeros = np.zeros(weight.dims[0], _FLOAT_TYPES[elem_type])
            added_initializers.append(numpy_helper.from_array(zeros, inputs[_BIAS]))
        else:
            nodes += _zero_bias_nodes(inputs[1], inputs[_BIAS], prefix, elem_type)
        synthesized.append(_BIAS)
    if not inputs[_MASK]:
        inputs[_MASK] = prefix + "ones_mask"
        halve = numpy_helper.from_array(np.array([1, 2, 1, 1], np.int64), prefix + "halve_c")
        added_initializers.append(halve)
        nodes += _ones_mask_nodes(inputs[2], halve.name, inputs[_MASK], prefix, elem_type)
        synthesized.append(_MASK)
    return synthesized


def _zero_bias_nodes(weight: str, bias: str, prefix: str, elem_type: int) -> list[onnx.NodeProto]:
    """B = zeros(W.shape[0]) for a computed W."""
    channels = prefix + "out_channels"
    return [
        helper.make_node("Shape", [weight], [channels], name=channels, start=0, end=1),
        helper.make_node(
            "ConstantOfShape", [channels], [bias], name=bias, value=_scalar(0.0, elem_type)
        ),
    ]


def _ones_mask_nodes(
    offset: str, halve: str, mask: str, prefix: str, elem_type: int
) -> list[onnx.NodeProto]:
    """mask = ones(N, og*K, oH, oW) from offset (N, og*2*K, oH, oW): per image, like the mask."""
    shape, mask_shape = prefix + "offset_shape", prefix + "mask_shape"
    return [
        helper.make_node("Shape", [offset], [shape], name=shape),
        helper.make_node("Div", [shape, halve], [mask_shape], name=mask_shape),
        helper.make_node(
            "ConstantOfShape", [mask_shape], [mask], name=mask, value=_scalar(1.0, elem_type)
        ),
    ]


def _native_node(node: onnx.NodeProto) -> onnx.NodeProto:
    label = _label(node)
    given = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    version = _text(given.get("plugin_version", PLUGIN_VERSION))
    namespace = _text(given.get("plugin_namespace", PLUGIN_NAMESPACE))
    if version != PLUGIN_VERSION or namespace != PLUGIN_NAMESPACE:
        raise ExportError(
            f"{PLUGIN_OP} node {label}: plugin {namespace}::{PLUGIN_OP} version {version} "
            "is not the "
            f"one this edgeseg knows ({PLUGIN_NAMESPACE}, version {PLUGIN_VERSION})"
        )
    unknown = sorted(set(given) - set(_NATIVE_ATTRS) - set(_PLUGIN_ONLY_ATTRS))
    if unknown:
        raise ExportError(f"{PLUGIN_OP} node {label}: unknown attribute(s) {', '.join(unknown)}")
    if not 3 <= len(node.input) <= 5 or not all(node.input[:3]):
        raise ExportError(
            f"{PLUGIN_OP} node {label}: needs inputs X, W, offset, B, mask; got {list(node.input)}"
        )
    synthesized = [int(i) for i in given.get(SYNTHESIZED_ATTR, [])]
    if any(i not in (_BIAS, _MASK) or i >= len(node.input) for i in synthesized):
        raise ExportError(
            f"{PLUGIN_OP} node {label}: {SYNTHESIZED_ATTR}={synthesized} names no optional input"
        )
    defaulted = {_text(v) for v in given.get(DEFAULTED_ATTR, [])}
    native = onnx.NodeProto()
    native.CopyFrom(node)
    native.op_type = "DeformConv"
    native.ClearField("domain")  # the default ONNX domain, left unset as exporters write it
    inputs = ["" if i in synthesized else name for i, name in enumerate(node.input)]
    while inputs and not inputs[-1]:
        inputs.pop()
    del native.input[:]
    native.input.extend(inputs)
    keep = [a for a in node.attribute if a.name in _NATIVE_ATTRS and a.name not in defaulted]
    del native.attribute[:]
    native.attribute.extend(keep)
    _native_attributes(native, label)  # the restored node must be a valid DeformConv
    return native


def _drop_unused_helpers(graph: onnx.GraphProto) -> None:
    """Removes to_plugin's helper nodes and initializers that nothing reads any more."""
    while True:
        used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
        dead = [
            n
            for n in graph.node
            if n.name.startswith(HELPER_PREFIX) and not any(o in used for o in n.output)
        ]
        if not dead:
            break
        for n in dead:
            graph.node.remove(n)
    used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    keep = [i for i in graph.initializer if not i.name.startswith(HELPER_PREFIX) or i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)


# ---------------------------------------------------------------- checks


def _native_attributes(node: onnx.NodeProto, label: str) -> _Attributes:
    """A DeformConv's attributes, ONNX defaults filled; ExportError where the plugin cannot run."""
    given = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    unknown = sorted(set(given) - set(_NATIVE_ATTRS))
    if unknown:
        raise ExportError(f"DeformConv node {label}: unknown attribute(s) {', '.join(unknown)}")

    def ints(name: str, length: int, default: list[int]) -> list[int]:
        value = [int(v) for v in given.get(name, default)]
        if len(value) != length:
            raise ExportError(
                f"DeformConv node {label}: {name}={value} is not 2-D ({length} values); "
                f"the plugin runs 2-D deformable convolutions only"
            )
        return value

    strides = ints("strides", 2, [1, 1])
    pads = ints("pads", 4, [0, 0, 0, 0])
    dilations = ints("dilations", 2, [1, 1])
    kernel = ints("kernel_shape", 2, []) if "kernel_shape" in given else None
    group = int(given.get("group", 1))
    offset_group = int(given.get("offset_group", 1))
    problems = []
    if min(strides) < 1:
        problems.append(f"strides={strides} (must be >= 1)")
    if min(dilations) < 1:
        problems.append(f"dilations={dilations} (must be >= 1)")
    if min(pads) < 0:
        problems.append(f"pads={pads} (must be >= 0)")
    if kernel is not None and min(kernel) < 1:
        problems.append(f"kernel_shape={kernel} (must be >= 1)")
    if group < 1 or offset_group < 1:
        problems.append(f"group={group}, offset_group={offset_group} (must be >= 1)")
    if problems:
        raise ExportError(f"DeformConv node {label}: unsupported " + "; ".join(problems))
    return _Attributes(
        strides=(strides[0], strides[1]),
        pads=(pads[0], pads[1], pads[2], pads[3]),
        dilations=(dilations[0], dilations[1]),
        group=group,
        offset_group=offset_group,
        kernel_shape=None if kernel is None else (kernel[0], kernel[1]),
    )


def _check_tensors(
    node: onnx.NodeProto,
    label: str,
    attrs: _Attributes,
    types: _TypeTable,
    initializers: dict[str, onnx.TensorProto],
) -> int:
    """Checks ranks, kernel and channel counts where they are known; returns the element type."""
    x, w = node.input[0], node.input[1]
    elem_type = types.elem_type(x) or types.elem_type(w)
    if elem_type not in _FLOAT_TYPES:
        name = TensorProto.DataType.Name(elem_type) if elem_type else "of an unknown type"
        raise ExportError(
            f"DeformConv node {label}: input {x} is {name}; the plugin runs FLOAT and FLOAT16 only"
        )
    x_shape = types.shape(x)
    w_dims = list(initializers[w].dims) if w in initializers else types.shape(w)
    for tensor, dims in ((x, x_shape), (w, w_dims)):
        if dims is not None and len(dims) != 4:
            raise ExportError(
                f"DeformConv node {label}: {tensor} has rank {len(dims)}; the plugin runs 2-D "
                f"deformable convolutions only (rank-4 X and W)"
            )
    if w_dims is not None and all(isinstance(d, int) for d in w_dims):
        if attrs.kernel_shape is not None and tuple(w_dims[2:]) != attrs.kernel_shape:
            raise ExportError(
                f"DeformConv node {label}: kernel_shape={list(attrs.kernel_shape)} "
                f"but W {w} has shape {w_dims}"
            )
        if int(w_dims[0]) % attrs.group:
            raise ExportError(
                f"DeformConv node {label}: {w_dims[0]} output channels are not a multiple "
                f"of group={attrs.group}"
            )
    if x_shape is not None and isinstance(x_shape[1], int):
        channels = x_shape[1]
        if channels % attrs.group or channels % attrs.offset_group:
            raise ExportError(
                f"DeformConv node {label}: {channels} input channels are not a multiple of "
                f"group={attrs.group} and offset_group={attrs.offset_group}"
            )
    return elem_type


class _TypeTable:
    """Element types and shapes of a graph's tensors (shape inference once, when one is missing)."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self._model = model
        self._values: dict[str, onnx.TypeProto] = {}
        self._inferred = False
        self._collect(model.graph)
        self._initializers = {i.name: i for i in model.graph.initializer}

    def _collect(self, graph: onnx.GraphProto) -> None:
        for value in (*graph.input, *graph.value_info, *graph.output):
            if value.type.HasField("tensor_type") and value.type.tensor_type.elem_type:
                self._values.setdefault(value.name, value.type)

    def _lookup(self, name: str) -> onnx.TypeProto | None:
        if name not in self._values and not self._inferred:
            self._inferred = True
            try:
                inferred = onnx.shape_inference.infer_shapes(self._model)
            except (onnx.shape_inference.InferenceError, onnx.checker.ValidationError) as err:
                log.debug("shape inference failed: %s", err)
            else:
                self._collect(inferred.graph)
        return self._values.get(name)

    def elem_type(self, name: str) -> int:
        if name in self._initializers:
            return int(self._initializers[name].data_type)
        value = self._lookup(name)
        return int(value.tensor_type.elem_type) if value is not None else 0

    def shape(self, name: str) -> list[int | str] | None:
        if name in self._initializers:
            return [int(d) for d in self._initializers[name].dims]
        value = self._lookup(name)
        if value is None or not value.tensor_type.HasField("shape"):
            return None
        return [
            d.dim_value if d.HasField("dim_value") else d.dim_param
            for d in value.tensor_type.shape.dim
        ]


# ---------------------------------------------------------------- helpers


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out


def _is_native(node: onnx.NodeProto) -> bool:
    return node.op_type == "DeformConv" and node.domain in ("", "ai.onnx")


def _is_plugin(node: onnx.NodeProto) -> bool:
    return node.op_type == PLUGIN_OP and node.domain == PLUGIN_DOMAIN


def _label(node: onnx.NodeProto) -> str:
    return node.name or f"<unnamed, output {node.output[0] if node.output else '?'}>"


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _scalar(value: float, elem_type: int) -> onnx.TensorProto:
    return numpy_helper.from_array(np.array([value], dtype=_FLOAT_TYPES[elem_type]), "value")
