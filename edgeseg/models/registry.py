"""Model registry, factory, option parsing, weight loading and complexity.

Every model of the zoo is described by a :class:`ModelSpec`; its ``options``
mapping holds the default value of every option (the only place defaults are
defined) and ``choices`` the allowed values of enumerated options.
:func:`create_model` validates names, types and choices before it calls the
model's factory.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import torch
from torch import nn

from edgeseg.errors import ConfigError, UnknownModelError, WeightsError

logger = logging.getLogger(__name__)

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


@dataclass(frozen=True)
class ModelSpec:
    """Description of one model of the zoo.

    Attributes:
        name: Registry name, e.g. ``"fcn8s"``.
        description: One line describing the model.
        factory: ``factory(*, num_classes, in_channels, **options)`` building
            the module; it receives every option (defaults filled in).
        options: Option name -> default value.
        choices: Option name -> allowed values, for enumerated options.
        multiple_of: Input height and width must be multiples of this.
        default_input_size: ``(height, width)`` used when none is given.
        multiple_by_option: Option name -> {value: multiple} for options whose
            value needs a larger multiple (FRRN-B's /32 stream); see :meth:`multiple_for`.
    """

    name: str
    description: str
    factory: Callable[..., nn.Module] = field(hash=False, repr=False)
    options: Mapping[str, Any] = field(hash=False)
    choices: Mapping[str, tuple] = field(hash=False)
    multiple_of: int
    default_input_size: tuple[int, int]
    multiple_by_option: Mapping[str, Mapping[Any, int]] = field(default_factory=dict, hash=False)

    def multiple_for(self, options: Mapping[str, Any] | None = None) -> int:
        """The multiple input sides need with these options (defaults filled in)."""
        multiple = self.multiple_of
        for key, table in self.multiple_by_option.items():
            value = (options or {}).get(key, self.options[key])
            multiple = math.lcm(multiple, int(table.get(value, self.multiple_of)))
        return multiple

    def __post_init__(self) -> None:
        object.__setattr__(self, "options", MappingProxyType(dict(self.options)))
        object.__setattr__(self, "choices", MappingProxyType(dict(self.choices)))
        unknown = set(self.choices) - set(self.options)
        if unknown:
            raise ConfigError(f"{self.name}: choices for unknown option(s) {sorted(unknown)}")
        for key, allowed in self.choices.items():
            if not _in_choices(self.options[key], allowed):
                raise ConfigError(
                    f"{self.name}: default {key}={self.options[key]!r} not in {allowed}"
                )


@dataclass(frozen=True)
class LoadReport:
    """What :func:`load_weights` did.

    Attributes:
        path: The weights file.
        loaded: Number of tensors copied into the model.
        missing: Model keys the file did not provide (left as initialised).
        unexpected: File keys the model does not have (ignored).
    """

    path: str
    loaded: int
    missing: tuple[str, ...]
    unexpected: tuple[str, ...]


_REGISTRY: dict[str, ModelSpec] = {}


def _registry() -> dict[str, ModelSpec]:
    """The registry, filled on first use from the model modules."""
    if not _REGISTRY:
        from edgeseg.models import deconvnet, deeplab, fcn, frrn, hypercolumn, unet

        for module in (fcn, unet, deeplab, deconvnet, hypercolumn, frrn):
            for spec in module.SPECS:
                if spec.name in _REGISTRY:
                    raise ConfigError(f"model {spec.name!r} registered twice")
                _REGISTRY[spec.name] = spec
    return _REGISTRY


def list_models() -> list[ModelSpec]:
    """All model specs, sorted by name."""
    return sorted(_registry().values(), key=lambda spec: spec.name)


def get_spec(name: str) -> ModelSpec:
    """The spec of model ``name``.

    Raises:
        UnknownModelError: No model has this name; the message lists the valid names.
    """
    registry = _registry()
    if not isinstance(name, str) or name not in registry:
        raise UnknownModelError(f"unknown model {name!r}; valid: {', '.join(sorted(registry))}")
    return registry[name]


def _same(a: Any, b: Any) -> bool:
    """Equality that does not confuse ``True`` with ``1`` or ``16`` with ``16.0``."""
    return type(a) is type(b) and a == b


def _in_choices(value: Any, allowed: tuple) -> bool:
    return any(_same(value, choice) for choice in allowed)


def _type_name(value: Any) -> str:
    return type(value).__name__


def _validate_option(spec: ModelSpec, key: str, value: Any) -> Any:
    """Check one option value against the spec; returns the (normalised) value."""
    default = spec.options[key]
    if key in spec.choices:
        allowed = spec.choices[key]
        if not _in_choices(value, allowed):
            raise ConfigError(
                f"{spec.name}: option {key}={value!r} is not one of "
                f"{', '.join(repr(c) for c in allowed)}"
            )
        return value
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, float):
        # an int is an acceptable float (PEP 484 numeric tower); a bool is not
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if ok:
            value = float(value)
    elif isinstance(default, str):
        ok = isinstance(value, str)
    else:
        ok = isinstance(value, type(default))
    if not ok:
        raise ConfigError(
            f"{spec.name}: option {key} must be {_type_name(default)}, "
            f"got {_type_name(value)} {value!r}"
        )
    return value


def _check_count(what: str, value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"{what} must be a positive int, got {value!r}")
    return value


def create_model(name: str, *, num_classes: int, in_channels: int = 3, **options: Any) -> nn.Module:
    """Build model ``name`` in eval mode.

    Args:
        name: Registry name.
        num_classes: Number of output channels (logits per class).
        in_channels: Channels of the input images.
        **options: Model options; see ``get_spec(name).options`` for names and
            defaults.

    Returns:
        The model, in eval mode. ``forward(x)`` maps a float ``(N, C, H, W)``
        tensor to logits ``(N, num_classes, H, W)``.

    Raises:
        UnknownModelError: Unknown model name.
        ConfigError: Unknown option, wrong type or value, or a combination the
            model does not support.
    """
    spec = get_spec(name)
    _check_count("num_classes", num_classes)
    _check_count("in_channels", in_channels)
    unknown = sorted(set(options) - set(spec.options))
    if unknown:
        raise ConfigError(
            f"{spec.name}: unknown option(s) {', '.join(unknown)}; "
            f"valid options: {', '.join(spec.options)}"
        )
    resolved = dict(spec.options)
    for key, value in options.items():
        resolved[key] = _validate_option(spec, key, value)
    logger.debug(
        "creating %s num_classes=%d in_channels=%d %s", name, num_classes, in_channels, resolved
    )
    model = spec.factory(num_classes=num_classes, in_channels=in_channels, **resolved)
    return model.eval()


_TRUE = ("true", "1")
_FALSE = ("false", "0")


def _parse_typed(template: Any, text: str) -> Any:
    """Parse ``text`` as a value of the type of ``template``; ValueError on failure."""
    if isinstance(template, bool):
        low = text.strip().lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
        raise ValueError(text)
    if isinstance(template, int):
        return int(text.strip())
    if isinstance(template, float):
        return float(text.strip())
    if isinstance(template, str):
        return text
    raise ValueError(text)


def parse_option(name: str, spec: ModelSpec, text: str) -> Any:
    """Turn the command-line text of option ``name`` into its value.

    Booleans accept ``true/false/1/0`` (any case); ints and floats use
    ``int()`` / ``float()``; enumerated options accept the text of one of
    their choices (an option whose choices mix bools and strings, like
    ``deformable``, accepts both spellings).

    Args:
        name: Option name.
        spec: The model's spec.
        text: The text given on the command line.

    Returns:
        The value, validated like :func:`create_model` does.

    Raises:
        ConfigError: Unknown option or text that is not a valid value.
    """
    if name not in spec.options:
        raise ConfigError(
            f"{spec.name}: unknown option {name}; valid options: {', '.join(spec.options)}"
        )
    if name in spec.choices:
        allowed = spec.choices[name]
        for choice in allowed:
            try:
                value = _parse_typed(choice, text)
            except ValueError:
                continue
            if _same(value, choice):
                return value
        raise ConfigError(
            f"{spec.name}: option {name}={text!r} is not one of "
            f"{', '.join(str(c).lower() if isinstance(c, bool) else str(c) for c in allowed)}"
        )
    default = spec.options[name]
    try:
        value = _parse_typed(default, text)
    except ValueError as err:
        hint = "true/false/1/0" if isinstance(default, bool) else _type_name(default)
        raise ConfigError(f"{spec.name}: option {name} expects {hint}, got {text!r}") from err
    return _validate_option(spec, name, value)


def check_input_size(
    spec_or_name: ModelSpec | str, size: tuple[int, int], options: Mapping[str, Any] | None = None
) -> None:
    """Check that ``size = (height, width)`` suits the model (with these options).

    Raises:
        UnknownModelError: ``spec_or_name`` is an unknown name.
        ConfigError: A side is not a positive int or not a multiple of
            ``spec.multiple_for(options)``; the message suggests the padded size.
    """
    spec = spec_or_name if isinstance(spec_or_name, ModelSpec) else get_spec(spec_or_name)
    try:
        height, width = size
    except (TypeError, ValueError) as err:
        raise ConfigError(f"input size must be (height, width), got {size!r}") from err
    for side in (height, width):
        if not isinstance(side, int) or isinstance(side, bool) or side < 1:
            raise ConfigError(
                f"{spec.name}: input sides must be positive ints, got {height!r}x{width!r}"
            )
    m = spec.multiple_for(options)
    if height % m or width % m:
        from edgeseg.models.layers import input_size_message

        raise ConfigError(input_size_message(spec.name, m, height, width))


# --------------------------------------------------------------------------- weights

_NESTED_KEYS = ("state_dict", "model", "model_state_dict")
_PREFIXES = ("module.", "_orig_mod.")


def _find_state_dict(obj: Any, path: str) -> Mapping[str, Any]:
    if not isinstance(obj, Mapping):
        raise WeightsError(
            f"{path} is not a checkpoint: it holds a {type(obj).__name__}, not a state dict"
        )
    for key in _NESTED_KEYS:
        nested = obj.get(key)
        if isinstance(nested, Mapping):
            obj = nested
            break
    tensors = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    if not tensors:
        keys = ", ".join(repr(k) for k in list(obj)[:8])
        raise WeightsError(
            f"{path} is not a checkpoint: no tensors found (top-level keys: {keys or 'none'}; "
            f"expected a state dict or one under {'/'.join(_NESTED_KEYS)})"
        )
    skipped = len(obj) - len(tensors)
    if skipped:
        logger.warning("%s: ignoring %d non-tensor entries of the state dict", path, skipped)
    return tensors


def _strip_prefixes(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        changed = True
        while changed:
            changed = False
            for prefix in _PREFIXES:
                if key.startswith(prefix):
                    key = key[len(prefix) :]
                    changed = True
        out[key] = value
    return out


def load_weights(model: nn.Module, path: str | os.PathLike) -> LoadReport:
    """Load a weights file into ``model`` (non-strict, shape-checked).

    Accepts a plain state dict or a checkpoint dict holding one under
    ``state_dict``, ``model`` or ``model_state_dict``; leading ``module.``
    (DataParallel) and ``_orig_mod.`` (torch.compile) prefixes are stripped.
    The file is read with ``weights_only=True``.

    Args:
        model: The model to load into (in place).
        path: The weights file.

    Returns:
        A :class:`LoadReport`; missing and unexpected keys are reported, not
        raised (the caller decides whether to warn).

    Raises:
        WeightsError: The file cannot be read or is not a checkpoint, no key
            matches the model, or a tensor's shape differs from the model's.
    """
    path_str = os.fspath(path)
    try:
        obj = torch.load(path_str, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - a corrupt file makes the unpickler raise anything
        raise WeightsError(f"cannot read weights from {path_str}: {err}") from err
    state = _strip_prefixes(_find_state_dict(obj, path_str))
    own = model.state_dict()
    common = [k for k in state if k in own]
    if not common:
        raise WeightsError(
            f"no key of {path_str} matches the model; file keys: "
            f"{', '.join(list(state)[:5])}; model keys: {', '.join(list(own)[:5])}"
        )
    mismatched = [k for k in common if tuple(state[k].shape) != tuple(own[k].shape)]
    if mismatched:
        details = "; ".join(
            f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
            for k in mismatched[:5]
        )
        more = f" (and {len(mismatched) - 5} more)" if len(mismatched) > 5 else ""
        raise WeightsError(f"shape mismatch loading {path_str}: {details}{more}")
    result = model.load_state_dict(state, strict=False)
    report = LoadReport(
        path=path_str,
        loaded=len(common),
        missing=tuple(result.missing_keys),
        unexpected=tuple(result.unexpected_keys),
    )
    logger.debug(
        "loaded %d tensors from %s (%d missing, %d unexpected)",
        report.loaded,
        path_str,
        len(report.missing),
        len(report.unexpected),
    )
    return report


# --------------------------------------------------------------------------- complexity


def _count_flops(
    model: nn.Module, x: torch.Tensor, tensors: Mapping[str, torch.Tensor] | None
) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        if tensors is None:
            model(x)
        else:
            torch.func.functional_call(model, dict(tensors), (x,), strict=False)
    return int(counter.get_total_flops())


def complexity(
    model: nn.Module, input_size: tuple[int, int], in_channels: int = 3
) -> tuple[int, float]:
    """Parameter count and GFLOPs of one forward pass at batch 1.

    FLOPs are counted by ``torch.utils.flop_counter.FlopCounterMode`` (2 FLOPs
    per multiply-add, convolutions and matmuls; elementwise ops, pooling and
    interpolation are not counted; deformable convolutions are counted by a
    formula registered in :mod:`edgeseg.models.layers`). The forward runs on
    the meta device (no memory, no compute); if that fails it runs on the
    model's own device under ``no_grad``. The model is run in eval mode and
    its mode is restored afterwards.

    Args:
        model: The model.
        input_size: ``(height, width)``.
        in_channels: Input channels.

    Returns:
        ``(parameters, gflops)``.

    Raises:
        ConfigError: ``input_size`` or ``in_channels`` is not positive.
    """
    height, width = input_size
    for v in (height, width, in_channels):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ConfigError(
                f"complexity needs positive int sizes, got {input_size!r}, {in_channels!r}"
            )
    params = sum(p.numel() for p in model.parameters())
    was_training = model.training
    model.eval()
    try:
        meta = {
            name: torch.empty_like(t, device="meta")
            for name, t in [*model.named_parameters(), *model.named_buffers()]
        }
        x_meta = torch.empty(1, in_channels, height, width, device="meta")
        try:
            flops = _count_flops(model, x_meta, meta)
        except (RuntimeError, NotImplementedError, TypeError) as err:
            logger.debug("meta-device FLOP count failed (%s); counting on the model's device", err)
            first = next(model.parameters(), None)
            device = first.device if first is not None else torch.device("cpu")
            x = torch.zeros(1, in_channels, height, width, device=device)
            flops = _count_flops(model, x, None)
    finally:
        model.train(was_training)
    return params, flops / 1e9
