"""FP16 graphs: the network in half precision, inputs, outputs and sensitive ops in FP32.

TensorRT 11 builds only strongly typed networks, so FP16 is a property of the
ONNX graph. ONNX Runtime's converter (``onnxruntime.transformers.float16``)
rewrites the tensors and inserts the casts; this module decides what stays in
FP32:

* the graph's inputs and outputs (the uint8 ``image`` is untouched; ``probs``
  and ``logits`` stay FP32, so the runtime's interface does not change);
* the pre-processing (cast and normalisation of the image) and the
  post-processing (logit upsampling, argmax, softmax, a fused CRF), found as in
  INT8 quantization (:func:`calibration.quantize.split_regions`);
* numerically sensitive operators wherever they are: reductions and
  normalisations that sum many terms, exponentials and logarithms, divisions,
  powers and square roots, whose range or rounding FP16 does not hold.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import onnx

from calibration.quantize import name_nodes, split_regions
from converters.passes import topological_sort

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
    "TopK": "the converter does not support it",
    "Range": "index arithmetic",
    "CumSum": "sums many terms",
}


def to_fp16(model: onnx.ModelProto) -> tuple[onnx.ModelProto, dict[str, Any]]:
    """The FP16 version of a bundle graph, and a record of what stayed FP32.

    Returns:
        (graph, info) where info has ``kept_fp32`` (node -> reason),
        ``fp16_nodes`` (how many nodes run in FP16) and ``kept_by_op``.
    """
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

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
    block_ops = sorted(set(DEFAULT_OP_BLOCK_LIST) | {"ArgMax", "TopK", "Range", "CumSum"})
    converted = convert_float_to_float16(
        named,
        keep_io_types=True,
        op_block_list=block_ops,
        node_block_list=sorted(kept),
    )
    converted = topological_sort(converted)
    converted.producer_name = "edgeseg"
    converted.doc_string = "edgeseg fp16 (inputs, outputs and sensitive operators in fp32)"
    if converted.ir_version > 9:
        converted.ir_version = 9
    onnx.checker.check_model(converted)
    by_op = Counter(n.op_type for n in named.graph.node if n.name in kept)
    casts = sum(1 for n in converted.graph.node if n.op_type == "Cast") - sum(
        1 for n in named.graph.node if n.op_type == "Cast"
    )
    info = {
        "kept_fp32": kept,
        "kept_by_op": dict(sorted(by_op.items())),
        "fp16_nodes": len(named.graph.node) - len(kept),
        "casts_added": casts,
    }
    return converted, info
