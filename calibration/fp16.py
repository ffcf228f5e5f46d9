"""FP16 graphs: the network in half precision, inputs, outputs and sensitive ops in FP32.

TensorRT 11 builds only strongly typed networks, so FP16 is a property of the
ONNX graph. Which nodes run in FP16 is decided here:

* the graph's inputs and outputs keep their types (the uint8 ``image`` is
  untouched; ``probs`` and ``logits`` stay FP32), so the runtime's interface
  does not change;
* the pre-processing (cast and normalisation of the image) and the
  post-processing (logit upsampling, argmax, softmax, a fused CRF) stay FP32,
  found as in INT8 quantization (:func:`calibration.quantize.split_regions`);
* numerically sensitive operators stay FP32 wherever they are: reductions and
  normalisations that sum many terms, exponentials and logarithms, divisions,
  powers and square roots, whose range or rounding FP16 does not hold.

Every other node of the body runs in FP16: its float initializers are stored
as FP16 and one ``Cast`` is inserted per tensor that crosses between the two
sets. Written here rather than with ``onnxruntime.transformers.float16``:
that converter routes tensors between two FP32 nodes through FP16 casts, and
emits duplicate output names when a tensor feeds several FP32 consumers.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from calibration.quantize import name_nodes, split_regions
from converters.passes import topological_sort
from edgeseg.errors import ExportError

# Operators kept in FP32 wherever they appear, and why.
SENSITIVE_OPS: dict[str, str] = {
    "Softmax": "exponentials overflow FP16",
    "LogSoftmax": "exponentials overflow FP16",
    "Exp": "overflows FP16 above 11",
    "Log": "loses precision near 0 in FP16",
    "Pow": "overflows FP16",
    "Sqrt": "loses precision in FP16",
    "Reciprocal": "overflows FP16 near 0",
    "Div": "overflows FP16 near 0",
    "ReduceMean": "sums many terms",
    "ReduceSum": "sums many terms",
    "ReduceSumSquare": "sums many squares",
    "ReduceL2": "sums many squares",
    "GlobalAveragePool": "sums many terms",
    "InstanceNormalization": "variance in FP16 is unreliable",
    "LayerNormalization": "variance in FP16 is unreliable",
    "GroupNormalization": "variance in FP16 is unreliable",
    "ArgMax": "the mask must not depend on FP16 ties",
    "TopK": "index results",
    "Range": "index arithmetic",
    "CumSum": "sums many terms",
    "Constant": "constants are cast where FP16 nodes read them",
}
# Inputs that stay FP32 on an FP16 node (the operator's schema types them apart from the data).
FLOAT_INPUTS: dict[str, tuple[int, ...]] = {"Resize": (1, 2), "Upsample": (1,)}


def to_fp16(model: onnx.ModelProto) -> tuple[onnx.ModelProto, dict[str, Any]]:
    """The FP16 version of a bundle graph, and a record of what stayed FP32.

    Returns:
        (graph, info) where info has ``kept_fp32`` (node -> reason),
        ``fp16_nodes`` (how many nodes run in FP16), ``kept_by_op`` and
        ``casts_added``.

    Raises:
        ExportError: the graph's types cannot be inferred or the result fails onnx.checker.
    """
    named = name_nodes(model)
    regions = split_regions(named)
    kept: dict[str, str] = {}
    for node in named.graph.node:
        if node.name in regions.pre:
            kept[node.name] = "pre-processing"
        elif node.name in regions.post:
            kept[node.name] = "post-processing"
        elif node.op_type in SENSITIVE_OPS:
            kept[node.name] = f"{node.op_type}: {SENSITIVE_OPS[node.op_type]}"
    half_nodes = {n.name for n in named.graph.node if n.name not in kept}

    try:
        inferred = onnx.shape_inference.infer_shapes(named)
    except onnx.shape_inference.InferenceError as err:  # pragma: no cover - exported graphs infer
        raise ExportError(f"fp16: cannot infer the graph's tensor types: {err}") from err
    elem = {v.name: v.type.tensor_type.elem_type for v in inferred.graph.value_info}
    elem.update({v.name: v.type.tensor_type.elem_type for v in inferred.graph.input})
    elem.update({v.name: v.type.tensor_type.elem_type for v in inferred.graph.output})
    elem.update({t.name: t.data_type for t in inferred.graph.initializer})

    out = onnx.ModelProto()
    out.CopyFrom(named)
    graph = out.graph
    inits = {t.name: t for t in graph.initializer}
    graph_outputs = {o.name for o in graph.output}
    fp16_tensors: set[str] = set()  # float tensors that hold FP16 values after the conversion
    for node in graph.node:
        if node.name in half_nodes:
            fp16_tensors.update(t for t in node.output if elem.get(t) == TensorProto.FLOAT)

    new_nodes: list[onnx.NodeProto] = []
    half_of: dict[str, str] = {}  # fp32 tensor -> its FP16 copy
    float_of: dict[str, str] = {}  # FP16 tensor -> its fp32 copy
    casts = 0

    def cast(source: str, to: int, table: dict[str, str], suffix: str) -> str:
        nonlocal casts
        if source not in table:
            target = f"{source}_{suffix}"
            new_nodes.append(helper.make_node("Cast", [source], [target], name=f"{target}_cast", to=to))
            table[source] = target
            casts += 1
        return table[source]

    renamed_outputs: dict[str, str] = {}
    for node in graph.node:
        if node.name in half_nodes:
            if node.op_type == "Cast":  # a cast to float in the FP16 body makes an FP16 tensor
                for attr in node.attribute:
                    if attr.name == "to" and attr.i == TensorProto.FLOAT:
                        attr.i = TensorProto.FLOAT16
            keep_float = FLOAT_INPUTS.get(node.op_type, ())
            for i, name in enumerate(node.input):
                if not name or i in keep_float or elem.get(name) != TensorProto.FLOAT:
                    continue
                if name in fp16_tensors:
                    continue
                node.input[i] = cast(name, TensorProto.FLOAT16, half_of, "fp16")
            for i, name in enumerate(node.output):
                if name in graph_outputs and name in fp16_tensors:  # an output keeps its fp32 type
                    renamed_outputs[name] = f"{name}_fp16"
                    node.output[i] = renamed_outputs[name]
        else:
            for i, name in enumerate(node.input):
                if name in fp16_tensors:
                    node.input[i] = cast(_current(name, renamed_outputs), TensorProto.FLOAT, float_of, "fp32")
        new_nodes.append(node)
    for original, renamed in renamed_outputs.items():
        new_nodes.append(helper.make_node("Cast", [renamed], [original], name=f"{original}_cast", to=TensorProto.FLOAT))
        casts += 1
    # consumers of a renamed output inside the FP16 set read the FP16 tensor
    for node in new_nodes:
        if node.name in half_nodes:
            for i, name in enumerate(node.input):
                if name in renamed_outputs:
                    node.input[i] = renamed_outputs[name]

    # Initializers read only as FP16 are stored as FP16 (the casts above read the rest).
    for name, init in inits.items():
        if init.data_type == TensorProto.FLOAT and name in half_of:
            readers = [n for n in new_nodes if name in n.input and n.op_type != "Cast"]
            if not readers:  # only the FP16 cast reads it: store it in FP16 and drop the cast
                target = half_of[name]
                array = numpy_helper.to_array(init)
                init.CopyFrom(numpy_helper.from_array(_to_half(array), target))
                new_nodes = [n for n in new_nodes if n.name != f"{target}_cast"]
                casts -= 1

    del graph.node[:]
    graph.node.extend(new_nodes)
    del graph.value_info[:]  # types changed; inference recomputes them
    out = topological_sort(out)
    out.producer_name = "edgeseg"
    out.doc_string = "edgeseg fp16 (inputs, outputs and sensitive operators in fp32)"
    if out.ir_version > 9:
        out.ir_version = 9
    try:
        onnx.checker.check_model(out, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as err:
        raise ExportError(f"fp16: the converted graph fails onnx.checker: {err}") from err
    by_op = Counter(n.op_type for n in named.graph.node if n.name in kept)
    info = {
        "kept_fp32": kept,
        "kept_by_op": dict(sorted(by_op.items())),
        "fp16_nodes": len(half_nodes),
        "casts_added": casts,
    }
    return out, info


def _current(name: str, renamed: dict[str, str]) -> str:
    return renamed.get(name, name)


def _to_half(array: np.ndarray) -> np.ndarray:
    """FP16 values, with magnitudes outside FP16's range clipped rather than made inf or 0."""
    finfo = np.finfo(np.float16)
    clipped = np.clip(array, -finfo.max, finfo.max)
    tiny = np.abs(clipped) < finfo.smallest_subnormal
    clipped = np.where(tiny & (clipped != 0), np.sign(clipped) * finfo.smallest_subnormal, clipped)
    return clipped.astype(np.float16)
