"""Pure ONNX graph passes: a ModelProto in, a new ModelProto out (the input is never modified)."""

from converters.passes.graph import (
    prune_unused,
    select_outputs,
    shapes_after_cast,
    simplify,
    strip_metadata,
    topological_sort,
    with_metadata,
)

__all__ = [
    "prune_unused",
    "select_outputs",
    "shapes_after_cast",
    "simplify",
    "strip_metadata",
    "topological_sort",
    "with_metadata",
]
