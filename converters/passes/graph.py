"""Structural passes over ONNX graphs."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import onnx

from edgeseg.errors import ExportError

log = logging.getLogger(__name__)


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out


def select_outputs(model: onnx.ModelProto, names: Sequence[str]) -> onnx.ModelProto:
    """Keeps only the graph outputs ``names`` (in that order) and prunes what no longer feeds them.

    Raises:
        ExportError: a name is not an output of the graph.
    """
    available = [o.name for o in model.graph.output]
    missing = [n for n in names if n not in available]
    if missing:
        raise ExportError(f"graph has no output {', '.join(missing)}; outputs: {', '.join(available)}")
    out = _copy(model)
    by_name = {o.name: o for o in model.graph.output}
    del out.graph.output[:]
    out.graph.output.extend(by_name[n] for n in names)
    return prune_unused(out)


def prune_unused(model: onnx.ModelProto) -> onnx.ModelProto:
    """Removes nodes, initializers and value_info that no graph output depends on."""
    out = _copy(model)
    graph = out.graph
    needed = {o.name for o in graph.output}
    keep = []
    for node in reversed(graph.node):
        if any(o in needed for o in node.output):
            keep.append(node)
            needed.update(i for i in node.input if i)
            needed.update(_subgraph_inputs(node))
    keep.reverse()
    removed = len(graph.node) - len(keep)
    del graph.node[:]
    graph.node.extend(keep)
    inits = [i for i in graph.initializer if i.name in needed]
    del graph.initializer[:]
    graph.initializer.extend(inits)
    infos = [v for v in graph.value_info if v.name in needed]
    del graph.value_info[:]
    graph.value_info.extend(infos)
    if removed:
        log.debug("pruned %d unused nodes", removed)
    return out


def topological_sort(model: onnx.ModelProto) -> onnx.ModelProto:
    """Orders the nodes so that each follows the producers of its inputs (stable otherwise).

    ONNX requires this order and TensorRT's parser imports nodes in it; tools
    that append nodes (ONNX Runtime's FP16 converter adds its casts at the end)
    break it.

    Raises:
        ExportError: the graph has a cycle or reads a tensor nothing produces.
    """
    out = _copy(model)
    graph = out.graph
    available = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    pending = list(graph.node)
    ordered: list[onnx.NodeProto] = []
    while pending:
        rest = []
        for node in pending:
            needs = set(node.input) | _subgraph_inputs(node)
            if needs <= available:
                ordered.append(node)
                available.update(node.output)
            else:
                rest.append(node)
        if len(rest) == len(pending):
            missing = sorted(set().union(*(set(n.input) for n in rest)) - available)
            raise ExportError(
                f"cannot order the graph: {rest[0].name or rest[0].op_type} and {len(rest) - 1} more "
                f"nodes wait for {', '.join(missing[:5])} (a cycle, or a tensor nothing produces)"
            )
        pending = rest
    del graph.node[:]
    graph.node.extend(ordered)
    return out


def _subgraph_inputs(node: onnx.NodeProto) -> set[str]:
    """Names a node's subgraphs (If/Loop/Scan bodies) read from the outer scope."""
    names: set[str] = set()
    for attr in node.attribute:
        graphs = list(attr.graphs) + ([attr.g] if attr.HasField("g") else [])
        for g in graphs:
            local = {i.name for i in g.input} | {i.name for i in g.initializer}
            local |= {o for n in g.node for o in n.output}
            for n in g.node:
                names.update(i for i in n.input if i and i not in local)
                names |= _subgraph_inputs(n) - local
            names.update(o.name for o in g.output if o.name not in local)
    return names


def shapes_after_cast(model: onnx.ModelProto, name: str = "image") -> onnx.ModelProto:
    """A copy whose ``Shape`` nodes read graph input ``name`` through its Cast to float.

    The exporter reads a dynamic graph's symbolic height and width with
    ``Shape`` straight from the uint8 ``image`` input; TensorRT takes a uint8
    network input only as the input of a Cast (onnx-tensorrt's operator table
    lists no UINT8 for ``Shape``). A Cast keeps the shape, so ``Shape`` of the
    cast tensor gives the same dimensions. Graphs with no such Cast are returned
    as they are (the uint8 rule check then names what reads the input).
    """
    out = _copy(model)
    floats = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)
    cast = next(
        (
            n for n in out.graph.node
            if n.op_type == "Cast" and n.input and n.input[0] == name
            and any(a.name == "to" and a.i in floats for a in n.attribute)
        ),
        None,
    )
    if cast is None:
        return out
    for node in out.graph.node:
        if node.op_type == "Shape" and node.input and node.input[0] == name:
            node.input[0] = cast.output[0]
    return topological_sort(out)


def with_metadata(model: onnx.ModelProto, props: dict[str, str]) -> onnx.ModelProto:
    """A copy with model-level metadata properties set (replacing ones of the same key)."""
    out = _copy(model)
    kept = [(p.key, p.value) for p in out.metadata_props if p.key not in props]
    del out.metadata_props[:]
    for key, value in [*kept, *props.items()]:
        entry = out.metadata_props.add()
        entry.key, entry.value = key, value
    return out


def strip_metadata(model: onnx.ModelProto) -> onnx.ModelProto:
    """Drops exporter bookkeeping (per-node/-value metadata, doc strings) that only bloats the file."""
    out = _copy(model)
    for node in out.graph.node:
        del node.metadata_props[:]
        node.doc_string = ""
    for values in (out.graph.input, out.graph.output, out.graph.value_info):
        for v in values:
            del v.metadata_props[:]
            v.doc_string = ""
    for init in out.graph.initializer:
        del init.metadata_props[:]
    del out.graph.metadata_props[:]
    out.doc_string = ""
    return out


def simplify(model: onnx.ModelProto) -> onnx.ModelProto:
    """Constant folding and graph simplification with onnxslim.

    Raises:
        ExportError: onnxslim failed or changed the graph's inputs/outputs.
    """
    try:
        import onnxslim
    except ImportError as err:
        raise ExportError("simplification needs onnxslim: pip install 'edgeseg[build]'") from err
    before_in = [i.name for i in model.graph.input]
    before_out = [o.name for o in model.graph.output]
    try:
        slim = onnxslim.slim(_copy(model))
    except Exception as err:  # noqa: BLE001 - onnxslim raises anything
        raise ExportError(f"onnxslim failed to simplify the graph: {err}") from err
    if not isinstance(slim, onnx.ModelProto):
        raise ExportError(f"onnxslim returned {type(slim).__name__}, not a ModelProto")
    after_in = [i.name for i in slim.graph.input]
    after_out = [o.name for o in slim.graph.output]
    if after_in != before_in or after_out != before_out:
        raise ExportError(
            f"onnxslim changed the graph's interface: inputs {before_in} -> {after_in}, "
            f"outputs {before_out} -> {after_out}"
        )
    log.debug("onnxslim: %d -> %d nodes", len(model.graph.node), len(slim.graph.node))
    return slim
