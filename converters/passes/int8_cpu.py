"""Float-exact rewrites that give ONNX Runtime's CPU provider an integer path (issue 14).

ONNX Runtime fuses a Q/DQ graph into integer kernels only for the operators its
QDQ selectors know (``QLinearConv``, ``QLinearAdd``, ``QLinearMul``,
``QLinearGlobalAveragePool``, ``QLinearSigmoid``, ``QLinearLeakyRelu``,
``QLinearConcat``, ...; Q/DQ dropped around Reshape, Transpose, Resize, MaxPool,
Gather). Anything else between quantized neighbours runs in float behind a
DequantizeLinear and a QuantizeLinear. Profiled on DeepLabV3-MobileNetV3 (256x256,
2 cores), three graph shapes cost the INT8 graph its speed:

* **HardSwish and HardSigmoid** have no integer kernel (the quantization
  tooling's registry has neither): every one ran as DQ -> HardSigmoid -> Mul -> Q
  in float. :func:`decompose_hard_activations` writes them with operators that do
  have one: ``HardSigmoid(x) = Clip(x * alpha + beta, 0, 1)`` (QLinearMul,
  QLinearAdd, and a Clip that the QuantizeLinear's saturation replaces) and
  ``HardSwish(x) = x * HardSigmoid(x)`` (QLinearMul).
* **ReduceMean over H and W** (how the exporter writes the SE blocks' and the
  ASPP's ``adaptive_avg_pool2d(1)``) has no integer kernel either;
  :func:`reduce_mean_to_global_pool` makes it the GlobalAveragePool it is.
* **ConvTranspose** has no integer kernel; :func:`stride1_deconv_to_conv` makes the
  stride-1 ones (DeconvNet's decoder, whose INT8 graph ran at 1.04x FP32) Convs.
* **Dilated convolutions whose outer taps only ever read padding** (the ASPP's
  rates 12/24/36 on a 16x16 or 32x32 feature map): ONNX Runtime's float NCHWc
  kernels skip padded taps, its QLinearConv (im2col + GEMM) computes all nine.
  :func:`trim_dead_taps` drops the kernel rows and columns that never meet the
  image (a 3x3 at rate 24 on 16x16 is a 1x1), which is exact: those taps multiply zeros.

Every pass keeps the names of the tensors it does not remove, so calibration
ranges (keyed by tensor name) still apply; :func:`derived_ranges` gives the
tensors a pass adds the ranges they take from their source's.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper, shape_inference

log = logging.getLogger(__name__)

# Suffixes of the tensors decompose_hard_activations adds, read by derived_ranges.
_SCALED, _SHIFTED, _GATE = "/hsig_scaled", "/hsig_shifted", "/hsig_gate"


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out


def _attr(node: onnx.NodeProto, name: str, default: Any) -> Any:
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _unique(taken: set[str], name: str) -> str:
    out, i = name, 1
    while out in taken:
        out, i = f"{name}_{i}", i + 1
    taken.add(out)
    return out


def decompose_hard_activations(model: onnx.ModelProto) -> onnx.ModelProto:
    """HardSigmoid and HardSwish rewritten with Mul, Add and Clip (same outputs, same names).

    ``HardSigmoid(x; alpha, beta)`` becomes ``Clip(Add(Mul(x, alpha), beta), 0, 1)``;
    ``HardSwish(x)`` becomes ``Mul(x, <that with alpha 1/6, beta 1/2>)``. The
    node producing the original output keeps the original node's name and
    output; the new tensors are named ``<output>/hsig_scaled``, ``/hsig_shifted``
    and ``/hsig_gate``.
    """
    out = _copy(model)
    if _opset(out) < 11:  # Clip's bounds became inputs in opset 11
        return out
    graph = out.graph
    names = {n.name for n in graph.node} | {i.name for i in graph.initializer}
    tensors = {t for n in graph.node for t in (*n.input, *n.output)} | {i.name for i in graph.input}
    nodes: list[onnx.NodeProto] = []
    changed = 0
    for node in graph.node:
        if node.domain not in ("", "ai.onnx") or node.op_type not in ("HardSigmoid", "HardSwish"):
            nodes.append(node)
            continue
        changed += 1
        swish = node.op_type == "HardSwish"
        alpha = 1.0 / 6.0 if swish else float(_attr(node, "alpha", 0.2))
        beta = 0.5 if swish else float(_attr(node, "beta", 0.5))
        x, y = node.input[0], node.output[0]
        base = node.name or y
        consts = {}
        for key, value in (("alpha", alpha), ("beta", beta), ("zero", 0.0), ("one", 1.0)):
            consts[key] = _unique(names, f"{base}/hsig_{key}")
            graph.initializer.append(numpy_helper.from_array(np.array(value, np.float32), consts[key]))
        scaled, shifted = _unique(tensors, y + _SCALED), _unique(tensors, y + _SHIFTED)
        gate = _unique(tensors, y + _GATE) if swish else y
        nodes += [
            helper.make_node("Mul", [x, consts["alpha"]], [scaled], name=_unique(names, f"{base}/hsig_mul")),
            helper.make_node("Add", [scaled, consts["beta"]], [shifted], name=_unique(names, f"{base}/hsig_add")),
            helper.make_node(
                "Clip", [shifted, consts["zero"], consts["one"]], [gate],
                name=base if not swish else _unique(names, f"{base}/hsig_clip"),
            ),
        ]
        if swish:
            nodes.append(helper.make_node("Mul", [x, gate], [y], name=base))
    if changed:
        del graph.node[:]
        graph.node.extend(nodes)
        log.debug("decomposed %d HardSigmoid/HardSwish nodes", changed)
    return out


def reduce_mean_to_global_pool(model: onnx.ModelProto) -> onnx.ModelProto:
    """ReduceMean over the last two axes of a 4-D tensor, keeping them, as GlobalAveragePool.

    Axes may be an attribute (opset < 18) or a constant input; the node keeps its
    name and output. Ranks come from shape inference; a node of unknown rank is left.
    """
    out = _copy(model)
    ranks = _ranks(out)
    consts = {i.name: numpy_helper.to_array(i) for i in out.graph.initializer if int(np.prod(i.dims)) <= 8}
    for node in out.graph.node:
        if node.op_type != "ReduceMean" or node.domain not in ("", "ai.onnx"):
            continue
        if int(_attr(node, "keepdims", 1)) != 1 or ranks.get(node.input[0]) != 4:
            continue
        axes = _attr(node, "axes", None)
        if axes is None and len(node.input) > 1 and node.input[1] in consts:
            axes = consts[node.input[1]].reshape(-1).tolist()
        if axes is None or sorted(int(a) % 4 for a in axes) != [2, 3]:
            continue
        x = node.input[0]
        node.op_type = "GlobalAveragePool"
        del node.input[:]
        node.input.append(x)
        del node.attribute[:]
    return out


def trim_dead_taps(model: onnx.ModelProto) -> onnx.ModelProto:
    """2-D Convs lose the kernel rows and columns that, for every output pixel, read padding.

    Needs static spatial sizes (from shape inference); a Conv whose input size is
    unknown, whose padding is ``auto_pad``, or whose trimmed form would need negative
    padding is left. A kernel trimmed to 1x1 loses its dilation and padding. The
    weights become a new initializer ``<weights>/trimmed``; the node keeps its name
    and output, so it computes exactly what it did.
    """
    out = _copy(model)
    graph = out.graph
    shapes = _shapes(out)
    inits = {i.name: i for i in graph.initializer}
    names = {i.name for i in graph.initializer}
    trimmed = 0
    for node in graph.node:
        if node.op_type != "Conv" or node.domain not in ("", "ai.onnx") or node.input[1] not in inits:
            continue
        shape = shapes.get(node.input[0])
        weight = numpy_helper.to_array(inits[node.input[1]])
        if shape is None or len(shape) != 4 or weight.ndim != 4 or any(d <= 0 for d in shape[2:]):
            continue
        if str(_attr(node, "auto_pad", b"NOTSET")) not in ("NOTSET", "b'NOTSET'"):
            continue
        kernel = list(weight.shape[2:])
        dilations = list(_attr(node, "dilations", [1, 1]))
        strides = list(_attr(node, "strides", [1, 1]))
        pads = list(_attr(node, "pads", [0, 0, 0, 0]))
        keep: list[tuple[int, int, int, int]] = []
        for axis in range(2):
            size, k, d, s = shape[2 + axis], kernel[axis], dilations[axis], strides[axis]
            begin, end = pads[axis], pads[axis + 2]
            n_out = (size + begin + end - d * (k - 1) - 1) // s + 1
            alive = [
                i for i in range(k)
                if any(0 <= o * s - begin + i * d < size for o in range(n_out))
            ]
            if not alive:
                keep = []
                break
            first, last = alive[0], alive[-1]
            new_begin, new_end = begin - first * d, end - (k - 1 - last) * d
            new_k = last - first + 1
            if new_begin < 0 or new_end < 0 or (size + new_begin + new_end - d * (new_k - 1) - 1) // s + 1 != n_out:
                keep = []
                break
            keep.append((first, last, new_begin, new_end))
        if len(keep) != 2 or all(first == 0 and last == k - 1 for (first, last, _, _), k in zip(keep, kernel, strict=True)):
            continue
        (r0, r1, pt, pb), (c0, c1, pl, pr) = keep
        new_weight = np.ascontiguousarray(weight[:, :, r0 : r1 + 1, c0 : c1 + 1])
        name = _unique(names, f"{node.input[1]}/trimmed")  # new: the original may feed other nodes
        graph.initializer.append(numpy_helper.from_array(new_weight, name))
        node.input[1] = name
        new_dil = [1 if new_weight.shape[2] == 1 else dilations[0], 1 if new_weight.shape[3] == 1 else dilations[1]]
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        attrs.update(kernel_shape=list(new_weight.shape[2:]), dilations=new_dil, pads=[pt, pl, pb, pr])
        del node.attribute[:]
        node.attribute.extend(helper.make_attribute(k, v) for k, v in attrs.items())
        trimmed += 1
    if trimmed:
        live = {t for n in graph.node for t in n.input}
        kept = [i for i in graph.initializer if i.name in live or i.name in {o.name for o in graph.output}]
        del graph.initializer[:]
        graph.initializer.extend(kept)
        log.debug("trimmed the dead taps of %d convolutions", trimmed)
    return out


def widen_channel_constants(model: onnx.ModelProto) -> onnx.ModelProto:
    """The per-channel constants of the normalisation after the image's NHWC -> NCHW Transpose,
    repeated along the width: (1, C, 1, 1) becomes (1, C, 1, W).

    ONNX Runtime's QLinearConv runs channels-last, so its graph optimiser cancels
    the image's Transpose and runs the normalisation's Mul and Add on the NHWC
    image with (1, 1, 1, C) constants, a broadcast whose inner run is C = 3 values:
    3.9 ms of a 50 ms frame at 256x256 (against 0.2 ms in NCHW). Repeated along
    the width, the run is W * C values. The values are the same, so the outputs are
    too; a graph whose width is not static is left.
    """
    out = _copy(model)
    graph = out.graph
    shapes = _shapes(out)
    inits = {i.name: i for i in graph.initializer}
    names = set(inits)
    layout: set[str] = set()  # tensors that are the image transposed to NCHW, or elementwise of it
    widened = 0
    for node in graph.node:
        if node.op_type == "Transpose" and list(_attr(node, "perm", [])) == [0, 3, 1, 2]:
            layout.add(node.output[0])
            continue
        if node.op_type not in ("Mul", "Add", "Sub", "Div") or len(node.input) != 2:
            continue
        data = [i for i in node.input if i in layout]
        const = [i for i in node.input if i in inits]
        shape = shapes.get(node.output[0])
        if len(data) != 1 or len(const) != 1 or shape is None or len(shape) != 4 or shape[3] <= 0:
            continue
        layout.add(node.output[0])
        value = numpy_helper.to_array(inits[const[0]])
        if value.shape != (1, shape[1], 1, 1) or shape[1] <= 1:
            continue
        name = _unique(names, f"{const[0]}/widened")
        wide = np.ascontiguousarray(np.broadcast_to(value, (1, shape[1], 1, shape[3])))
        graph.initializer.append(numpy_helper.from_array(wide, name))
        node.input[list(node.input).index(const[0])] = name
        widened += 1
    if widened:
        log.debug("widened %d per-channel constants", widened)
        out = _prune(out)
    return out


def stride1_deconv_to_conv(model: onnx.ModelProto) -> onnx.ModelProto:
    """ConvTransposes with stride 1 (DeconvNet's decoder) as the Convs they are.

    ONNX Runtime's CPU provider has no integer ConvTranspose (its QDQ fusions
    cover Conv, not ConvTranspose): a quantized one runs in float behind
    DequantizeLinears, weights included, on every frame. With stride 1 and no
    dilation, output padding or ``output_shape``, a ConvTranspose is a Conv
    with the kernel flipped, its input and output channels swapped (per group)
    and padding ``k - 1 - p``; it keeps its name, output and bias. Others are left.
    """
    out = _copy(model)
    graph = out.graph
    inits = {i.name: i for i in graph.initializer}
    names = set(inits)
    converted = 0
    for node in graph.node:
        if node.op_type != "ConvTranspose" or node.domain not in ("", "ai.onnx") or node.input[1] not in inits:
            continue
        weight = numpy_helper.to_array(inits[node.input[1]])
        if weight.ndim != 4:
            continue
        k = list(weight.shape[2:])
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        pads = list(attrs.get("pads", [0, 0, 0, 0]))
        if (
            any(v != 1 for v in attrs.get("strides", [1, 1]))
            or any(v != 1 for v in attrs.get("dilations", [1, 1]))
            or any(v != 0 for v in attrs.get("output_padding", [0, 0]))
            or "output_shape" in attrs
            or str(attrs.get("auto_pad", b"NOTSET")) not in ("NOTSET", "b'NOTSET'")
            or any(p > k[i % 2] - 1 for i, p in enumerate(pads))
        ):
            continue
        group = int(attrs.get("group", 1))
        cin, cout_g = weight.shape[:2]
        w = weight.reshape(group, cin // group, cout_g, *k).transpose(0, 2, 1, 3, 4)
        w = np.ascontiguousarray(w.reshape(group * cout_g, cin // group, *k)[:, :, ::-1, ::-1])
        name = _unique(names, f"{node.input[1]}/as_conv")
        graph.initializer.append(numpy_helper.from_array(w, name))
        node.input[1] = name
        node.op_type = "Conv"
        conv = {"kernel_shape": k, "pads": [k[i % 2] - 1 - p for i, p in enumerate(pads)], "group": group}
        del node.attribute[:]
        node.attribute.extend(helper.make_attribute(key, v) for key, v in conv.items())
        converted += 1
    if converted:
        log.debug("%d stride-1 ConvTransposes became Convs", converted)
        out = _prune(out)
    return out


def for_cpu_int8(model: onnx.ModelProto) -> onnx.ModelProto:
    """All of this module's float rewrites, in the order the cpu placement applies them."""
    model = stride1_deconv_to_conv(decompose_hard_activations(model))
    model = reduce_mean_to_global_pool(model)
    return widen_channel_constants(trim_dead_taps(model))


def derived_ranges(
    model: onnx.ModelProto, ranges: Mapping[str, tuple[float, float]]
) -> dict[str, tuple[float, float]]:
    """Ranges for the tensors the passes added or made quantizable, from their input's.

    For statistics collected on the graph before the rewrites. Each tensor
    :func:`decompose_hard_activations` adds is a monotone function of the
    activation's input ``x`` (``alpha * x``, ``alpha * x + beta``, its clip to
    [0, 1]), so its range is that function of ``x``'s range; a GlobalAveragePool
    (:func:`reduce_mean_to_global_pool`) takes its input's range. Tensors already
    in ``ranges``, and those whose input has no range, are left out.
    """
    consts = {i.name: float(numpy_helper.to_array(i).reshape(-1)[0]) for i in model.graph.initializer
              if int(np.prod(i.dims)) == 1}
    out: dict[str, tuple[float, float]] = {}
    known = dict(ranges)
    for node in model.graph.node:
        y = node.output[0] if node.output else ""
        if y in known:
            continue
        if node.op_type == "Mul" and y.endswith(_SCALED) and node.input[0] in known and node.input[1] in consts:
            lo, hi = known[node.input[0]]
            a = consts[node.input[1]]
            value = (min(a * lo, a * hi), max(a * lo, a * hi))
        elif node.op_type == "Add" and y.endswith(_SHIFTED) and node.input[0] in known and node.input[1] in consts:
            lo, hi = known[node.input[0]]
            b = consts[node.input[1]]
            value = (lo + b, hi + b)
        elif node.op_type == "Clip" and y.endswith(_GATE) and node.input[0] in known:
            lo, hi = known[node.input[0]]
            value = (min(max(lo, 0.0), 1.0), min(max(hi, 0.0), 1.0))
        elif node.op_type == "GlobalAveragePool" and node.input[0] in known:
            value = known[node.input[0]]  # a mean lies within its inputs' range
        else:
            continue
        known[y] = out[y] = value
    return out


def _shapes(model: onnx.ModelProto) -> dict[str, list[int]]:
    """Static shapes of the graph's tensors (-1 where unknown), inferred on a copy without the
    weights' data (large initializers become typed inputs: a VGG's are 0.5 GB)."""
    small = [i for i in model.graph.initializer if int(np.prod(i.dims)) <= 1024]
    names = {i.name for i in small} | {i.name for i in model.graph.input}
    inputs = list(model.graph.input) + [
        helper.make_tensor_value_info(i.name, i.data_type, list(i.dims))
        for i in model.graph.initializer
        if i.name not in names
    ]
    light = helper.make_model(
        helper.make_graph(list(model.graph.node), "shapes", inputs, list(model.graph.output), small),
        opset_imports=list(model.opset_import),
        ir_version=model.ir_version,
    )
    try:
        inferred = shape_inference.infer_shapes(light)
    except (onnx.shape_inference.InferenceError, ValueError) as err:  # unknown custom ops
        log.debug("shape inference failed (%s): no shapes", err)
        return {}
    shapes = {}
    for v in (*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output):
        if v.type.HasField("tensor_type") and v.type.tensor_type.HasField("shape"):
            shapes[v.name] = [d.dim_value if d.HasField("dim_value") else -1 for d in v.type.tensor_type.shape.dim]
    return shapes


def _opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def _ranks(model: onnx.ModelProto) -> dict[str, int]:
    return {k: len(v) for k, v in _shapes(model).items()}


def fold_scalar_muls(model: onnx.ModelProto) -> onnx.ModelProto:
    """In a Q/DQ graph, a multiplication by a positive scalar constant becomes a scale.

    ``DQ(xq; s, z) -> Mul(., c) -> Q(.; s2, z2) -> DQ(.; s2, z2)`` computes ``c * s * (xq - z)``
    rounded once more to the step ``s2``; ``DQ(xq; c * s, z)`` computes it without that
    rounding and without a QLinearMul (what the ``x * alpha`` of
    :func:`decompose_hard_activations` costs on a CPU). Only per-tensor scales are
    folded, only when the Mul's output feeds nothing but that Q and the Q's output
    nothing but DequantizeLinears, and only when no graph output is removed.
    """
    out = _copy(model)
    graph = out.graph
    inits = {i.name: i for i in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for t in node.input:
            consumers.setdefault(t, []).append(node)
    outputs = {o.name for o in graph.output}
    names = set(inits) | {n.name for n in graph.node}

    def scalar(name: str) -> float | None:
        if name in inits:
            value = numpy_helper.to_array(inits[name])
            return float(value.reshape(-1)[0]) if value.size == 1 and value.dtype == np.float32 else None
        dq = producer.get(name)
        if dq is None or dq.op_type != "DequantizeLinear" or any(i not in inits for i in dq.input if i):
            return None
        q, s = numpy_helper.to_array(inits[dq.input[0]]), numpy_helper.to_array(inits[dq.input[1]])
        z = numpy_helper.to_array(inits[dq.input[2]]) if len(dq.input) > 2 and dq.input[2] else np.zeros(1)
        if q.size != 1 or s.size != 1:
            return None
        return float(s.reshape(-1)[0]) * (float(q.reshape(-1)[0]) - float(z.reshape(-1)[0]))

    removed: set[int] = set()
    folded = 0
    for mul in graph.node:
        if mul.op_type != "Mul" or mul.domain not in ("", "ai.onnx") or mul.output[0] in outputs:
            continue
        for k in (0, 1):
            dq_x, c = producer.get(mul.input[k]), scalar(mul.input[1 - k])
            if dq_x is not None and dq_x.op_type == "DequantizeLinear" and c is not None and c > 0:
                break
        else:
            continue
        if dq_x.input[1] not in inits or numpy_helper.to_array(inits[dq_x.input[1]]).size != 1:
            continue
        after = consumers.get(mul.output[0], [])
        if len(after) != 1 or after[0].op_type != "QuantizeLinear" or after[0].output[0] in outputs:
            continue
        q = after[0]
        readers = consumers.get(q.output[0], [])
        if not readers or any(r.op_type != "DequantizeLinear" for r in readers):
            continue
        scale = numpy_helper.to_array(inits[dq_x.input[1]]) * np.float32(c)
        scale_name = _unique(names, f"{mul.output[0]}_folded_scale")
        graph.initializer.append(numpy_helper.from_array(scale.astype(np.float32), scale_name))
        inits[scale_name] = graph.initializer[-1]
        for r in readers:
            del r.input[:]
            r.input.extend([dq_x.input[0], scale_name, *dq_x.input[2:3]])
        removed.update({id(mul), id(q)})
        folded += 1
    if folded:
        keep = [n for n in graph.node if id(n) not in removed]
        del graph.node[:]
        graph.node.extend(keep)
        out = _prune(out)
        log.debug("folded %d scalar multiplications into Q/DQ scales", folded)
    return out


def _prune(model: onnx.ModelProto) -> onnx.ModelProto:
    from converters.passes.graph import prune_unused

    return prune_unused(model)
