"""The edgeseg model zoo: registry, factory, weights and complexity.

Typical use::

    from edgeseg.models import create_model, get_spec, check_input_size

    spec = get_spec("deeplabv3p")
    check_input_size(spec, (512, 512))
    model = create_model("deeplabv3p", num_classes=21, output_stride=16)
"""

from __future__ import annotations

from edgeseg.models.registry import (
    LoadReport,
    ModelSpec,
    check_input_size,
    complexity,
    create_model,
    get_spec,
    list_models,
    load_weights,
    parse_option,
)

__all__ = [
    "LoadReport",
    "ModelSpec",
    "check_input_size",
    "complexity",
    "create_model",
    "get_spec",
    "list_models",
    "load_weights",
    "parse_option",
]
