"""The manifest of a bundle, typed: frozen records, read and range-checked in one pass.

Every sub-record of ``manifest.json`` is a frozen dataclass whose fields carry
their JSON type and their range (:func:`spec`). One decoder
(:func:`decode`) walks a record's fields with their type hints, so each
record is declared once and checked the same way: an unknown key, a missing
key, a value of the wrong type (``"bytes": "abc"``, ``"schema_version":
true``) or out of range (``"size": [0, 512]``, ``"channels": 5``) is a
:class:`~edgeseg.errors.BundleError` that names the key path and the value,
e.g. ``manifest.json: input.size[0] must be >= 1, got 0``. :func:`encode`
writes a record back; optional fields that are None are left out.

Schema versions: 2 added ``op_types`` (the operator types of each graph,
recorded at build time so that deploy-time code never parses a graph to find
them). Version 1 bundles load, with ``op_types`` empty. An engine record's
``stage`` (``model`` or ``crf``: which graph the engine runs) came later
within version 2; it is written only for CRF engines, so a record without it
is a model engine, and an edgeseg that predates it refuses a CRF engine's
record by name instead of taking it for a model engine.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field
from pathlib import Path
from typing import Any, Union

import numpy as np

from edgeseg.errors import BundleError, ConfigError

SCHEMA_VERSION = 2
READABLE_SCHEMAS = (1, 2)
MANIFEST_NAME = "manifest.json"
PRECISIONS = ("fp32", "fp16", "int8")
OUTPUTS = ("mask", "probs", "logits")
CRF_MODES = ("separate", "fused")
ENGINE_MODES = ("strongly-typed", "legacy-dla")
ENGINE_STAGES = ("model", "crf")  # which of a bundle's graphs an engine runs
DEFORM_MODES = ("native", "plugin")
QUANT_METHODS = ("minmax", "percentile", "entropy")  # INT8 calibration methods
QDQ_PLACEMENTS = ("cpu", "tensorrt")  # where INT8 Q/DQ goes: ONNX Runtime's layout, TensorRT's
MAX_SIDE = 16384  # a larger input side is a typo, and would allocate gigabytes per frame

_SHA256 = r"[0-9a-f]{64}"


def spec(
    default: Any = MISSING,
    *,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    choices: tuple[Any, ...] | None = None,
    pattern: str | None = None,
    key: str | None = None,
    default_factory: Any = MISSING,
    omit_default: bool = False,
) -> Any:
    """A record field with its range: ``ge``/``gt``/``le`` bounds (numbers, and each item
    of a tuple of numbers), ``choices``, a regex ``pattern`` (str), the JSON ``key``
    when it differs from the field's name; ``omit_default``: :func:`encode` leaves the
    field out while it has its default (a key added to a record without a schema bump)."""
    metadata = {
        "ge": ge,
        "gt": gt,
        "le": le,
        "choices": choices,
        "pattern": pattern,
        "key": key,
        "omit_default": omit_default,
    }
    if default_factory is not MISSING:
        return field(default_factory=default_factory, metadata=metadata)
    return field(default=default, metadata=metadata)


# -- the decoder ----------------------------------------------------------------------------------


def _fail(where: str, message: str) -> BundleError:
    """An error about a whole record: ``manifest.json: input: missing key 'size'``."""
    return BundleError(f"{where} {message}" if where.endswith(":") else f"{where}: {message}")


def _bad(path: str, message: str) -> BundleError:
    """An error about one value: ``manifest.json: input.size[0] must be >= 1, got 0``."""
    return BundleError(f"{path} {message}")


def _join(where: str, key: str) -> str:
    """``manifest.json:`` + ``input`` -> ``manifest.json: input``; ``...input`` + ``size`` -> ``...input.size``."""
    return f"{where} {key}" if where.endswith(":") else f"{where}.{key}"


def _json_key(f: dataclasses.Field[Any]) -> str:
    return f.metadata.get("key") or f.name


_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]


def decode(cls: type[Any], data: Any, where: str) -> Any:
    """``data`` (parsed JSON) as record ``cls``, every field type- and range-checked.

    Args:
        cls: a record dataclass (fields declared with :func:`spec` where they have a range).
        data: the JSON object.
        where: the key path for messages (``manifest.json: engines[0]``).

    Raises:
        BundleError: naming the key path and the value that is wrong.
    """
    if not isinstance(data, Mapping):
        raise _bad(where, f"must be a JSON object, got {_show(data)}")
    hints = _hints(cls)
    fields = [f for f in dataclasses.fields(cls) if f.init]
    known = {_json_key(f) for f in fields} | set(getattr(cls, "_DERIVED_KEYS", ()))
    unknown = sorted(str(k) for k in data if k not in known)
    if unknown:
        raise _fail(
            where, f"unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
        )
    values: dict[str, Any] = {}
    for f in fields:
        key = _json_key(f)
        path = _join(where, key)
        if key not in data:
            if f.default is MISSING and f.default_factory is MISSING:
                raise _fail(where, f"missing key {key!r}")
            continue
        value = _value(hints[f.name], data[key], path)
        _check_range(f, value, path)
        values[f.name] = value
    try:
        record = cls(**values)
    except ConfigError as err:  # a record's own cross-field checks (__post_init__)
        raise _fail(where, str(err)) from err
    check = getattr(record, "_check", None)
    if check is not None:
        check(where)
    derived = getattr(record, "_derived_json", None)
    for key, value in (derived() if derived is not None else {}).items():
        if key in data and data[key] != value:  # e.g. input.color, which channels decides
            raise _bad(
                _join(where, key), f"{_show(data[key])} does not match: expected {_show(value)}"
            )
    return record


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _value(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        if len(inner) == 1:
            return _value(inner[0], value, where)
        for candidate in inner:  # e.g. int | str: the first that fits
            try:
                return _value(candidate, value, where)
            except BundleError:
                continue
        raise _bad(where, f"must be one of {', '.join(map(_name, inner))}, got {_show(value)}")
    if dataclasses.is_dataclass(tp):
        return decode(tp, value, where)  # type: ignore[arg-type]
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise _bad(where, f"must be a list, got {_show(value)}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_value(args[0], v, f"{where}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise _bad(where, f"must be a list of {len(args)}, got {_show(value)}")
        return tuple(
            _value(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value, strict=True))
        )
    if origin is dict:
        if not isinstance(value, Mapping):
            raise _bad(where, f"must be a JSON object, got {_show(value)}")
        return {str(k): _value(args[1], v, _join(where, str(k))) for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise _bad(where, f"must be true or false, got {_show(value)}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _bad(where, f"must be an integer, got {_show(value)}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _bad(where, f"must be a number, got {_show(value)}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise _bad(where, f"must be a string, got {_show(value)}")
        return value
    raise TypeError(f"no decoder for {tp!r} at {where}")  # pragma: no cover - a record bug


def _name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _check_range(f: dataclasses.Field[Any], value: Any, where: str) -> None:
    meta = f.metadata
    if value is None:
        return
    for at, item in _leaves(value, where):
        if isinstance(item, (int, float)) and not isinstance(item, bool):
            if (
                isinstance(item, float)
                and not math.isfinite(item)
                and any(meta.get(k) is not None for k in ("ge", "gt", "le"))
            ):
                raise _bad(at, f"must be a finite number, got {item!r}")
            if meta.get("ge") is not None and item < meta["ge"]:
                raise _bad(at, f"must be >= {meta['ge']}, got {item!r}")
            if meta.get("gt") is not None and item <= meta["gt"]:
                raise _bad(at, f"must be > {meta['gt']}, got {item!r}")
            if meta.get("le") is not None and item > meta["le"]:
                raise _bad(at, f"must be <= {meta['le']}, got {item!r}")
        if (
            isinstance(item, str)
            and meta.get("pattern")
            and not re.fullmatch(meta["pattern"], item)
        ):
            raise _bad(at, f"{item!r} is not of the form {meta['pattern']}")
    if meta.get("choices") is not None and value not in meta["choices"]:
        raise _bad(
            where, f"must be one of {', '.join(map(str, meta['choices']))}, got {_show(value)}"
        )


def _leaves(value: Any, where: str) -> list[tuple[str, Any]]:
    """(key path, value) of every item of nested tuples, or of the value itself."""
    if not isinstance(value, tuple):
        return [(where, value)]
    return [leaf for i, v in enumerate(value) for leaf in _leaves(v, f"{where}[{i}]")]


def encode(record: Any) -> Any:
    """A record (or a value inside one) as JSON; optional fields that are None are left out."""
    if dataclasses.is_dataclass(record) and not isinstance(record, type):
        out: dict[str, Any] = {}
        for f in dataclasses.fields(record):
            value = getattr(record, f.name)
            if value is None and f.default is None:
                continue
            if f.metadata.get("omit_default") and value == f.default:
                continue
            out[_json_key(f)] = encode(value)
        extra = getattr(record, "_derived_json", None)
        return {**out, **extra()} if extra is not None else out
    if isinstance(record, (list, tuple)):
        return [encode(v) for v in record]
    if isinstance(record, Mapping):
        return {str(k): encode(v) for k, v in record.items()}
    return record


def _no_bool_int(value: Any) -> bool:
    return isinstance(value, bool) or not isinstance(value, int)


# -- the records ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class InputSpec:
    """What the graph's ``image`` input expects.

    Attributes:
        size: (height, width) the graph was exported for (the nominal size of a
            dynamic graph).
        channels: 3 for RGB, 1 for grayscale.
        mean: per-channel mean on the 0..1 scale, applied inside the graph.
        std: per-channel standard deviation on the 0..1 scale.
        dynamic: height and width are symbolic in the graph.
        multiple_of: a dynamic graph accepts sides that are multiples of this.
        layout: always "NHWC"; dtype always "uint8".
    """

    size: tuple[int, int] = spec(ge=1, le=MAX_SIDE)
    channels: int = spec(3, choices=(1, 3))
    mean: tuple[float, ...] = spec((0.485, 0.456, 0.406), ge=-1e6, le=1e6)
    std: tuple[float, ...] = spec((0.229, 0.224, 0.225), gt=0, le=1e6)
    dynamic: bool = False
    multiple_of: int = spec(1, ge=1, le=MAX_SIDE)
    layout: str = spec("NHWC", choices=("NHWC",))
    dtype: str = spec("uint8", choices=("uint8",))

    _DERIVED_KEYS = ("name", "color")

    @property
    def color(self) -> str:
        return "RGB" if self.channels == 3 else "GRAY"

    def _check(self, where: str) -> None:
        for label in ("mean", "std"):
            if len(getattr(self, label)) != self.channels:
                raise _bad(
                    _join(where, label),
                    f"has {len(getattr(self, label))} values for {self.channels} channel(s)",
                )

    def _derived_json(self) -> dict[str, Any]:
        return {"name": "image", "color": self.color}

    def to_json(self) -> dict[str, Any]:
        data = encode(self)
        order = (
            "name",
            "size",
            "channels",
            "color",
            "layout",
            "dtype",
            "mean",
            "std",
            "dynamic",
            "multiple_of",
        )
        return {k: data[k] for k in order}


@dataclass(frozen=True)
class FileRecord:
    """A bundle file's checksum and size."""

    sha256: str = spec(pattern=_SHA256)
    bytes: int = spec(ge=0)


@dataclass(frozen=True)
class WeightsRecord:
    """The weights file a zoo model was built with."""

    file: str
    sha256: str = spec(pattern=_SHA256)


@dataclass(frozen=True)
class OutputRecord:
    """How the model's output became the graph's logits.

    Attributes:
        kind: where the logits were: ``tensor`` (returned as is), ``out`` / ``logits`` (a
            dict's key), ``attribute`` (a Hugging Face ``ModelOutput``'s ``.logits``) or
            ``tuple`` (the first element).
        scale: input size / logits size, per axis (1, 1: full resolution).
        align_corners: with ``scale`` above 1, the bilinear upsampling fused into the graph
            uses this ``align_corners`` (the model family's rule).
    """

    kind: str = spec("tensor", choices=("tensor", "out", "logits", "attribute", "tuple"))
    scale: tuple[int, int] = spec((1, 1), ge=1)
    align_corners: bool | None = None


@dataclass(frozen=True)
class ModelRecord:
    """What was built: a zoo model and its options, or a user's module."""

    name: str
    source: str = spec(choices=("zoo", "module"))
    options: dict[str, bool | int | float | str | None] = spec(default_factory=dict)
    class_name: str | None = spec(None, key="class")
    weights: WeightsRecord | None = None
    trained: bool | None = None
    output: OutputRecord | None = spec(None, omit_default=True)


@dataclass(frozen=True)
class TorchFigures:
    """A graph's logits and masks against PyTorch's on the same frames."""

    agreement: float = spec(ge=0, le=1)
    max_abs_error: float | None = spec(None, ge=0)
    mean_abs_error: float | None = spec(None, ge=0)
    max_abs_logit: float | None = spec(None, ge=0)
    worst_image_agreement: float | None = spec(None, ge=0, le=1)
    image_size: tuple[int, int] | None = spec(None, ge=1)


@dataclass(frozen=True)
class ParityRecord(TorchFigures):
    """The FP32 graph against PyTorch at build time (ONNX Runtime on the CPU), and how it was measured."""

    precision: str | None = spec(None, choices=PRECISIONS)
    backend: str | None = None
    samples: int | None = spec(None, ge=0)
    sample_source: str | None = None
    samples_skipped: int | None = spec(None, ge=0)
    min_agreement: float | None = spec(None, ge=0, le=1)
    trained: bool | None = None
    crf_agreement: float | None = spec(None, ge=0, le=1)


@dataclass(frozen=True)
class CRFParams:
    """Mean-field CRF settings.

    The kernel defaults are DeepLab v2's published CRF settings (bi_w 4,
    bi_xy_std 67, bi_rgb_std 3, pos_w 3, pos_xy_std 1); window 5 on a 4x
    coarser grid keeps a 480x360 frame's CRF to tens of milliseconds on a CPU.

    Attributes:
        iterations: mean-field iterations.
        window: odd side of the message window, in (down-sampled) pixels.
        downsample: messages are computed on a grid this many times coarser.
        w_bilateral: weight of the bilateral (appearance) kernel.
        theta_alpha: its position width, full-resolution pixels.
        theta_beta: its colour width, 0..255 units.
        w_gaussian: weight of the Gaussian (smoothness) kernel.
        theta_gamma: its position width, full-resolution pixels.
        dilation: the window's offsets are this many (down-sampled) pixels apart, so
            the window reaches ``window // 2 * dilation * downsample`` full-resolution
            pixels at the same cost (1: adjacent, the window as it always was).
    """

    iterations: int = 5
    window: int = 5
    downsample: int = 4
    w_bilateral: float = 4.0
    theta_alpha: float = 67.0
    theta_beta: float = 3.0
    w_gaussian: float = 3.0
    theta_gamma: float = 1.0
    dilation: int = spec(1, ge=1, omit_default=True)

    def __post_init__(self) -> None:
        if _no_bool_int(self.iterations) or self.iterations < 0:
            raise ConfigError(f"crf iterations must be an integer >= 0, got {self.iterations!r}")
        if _no_bool_int(self.window) or self.window < 3 or self.window % 2 == 0:
            raise ConfigError(f"crf window must be an odd integer >= 3, got {self.window!r}")
        if _no_bool_int(self.downsample) or self.downsample < 1:
            raise ConfigError(f"crf downsample must be an integer >= 1, got {self.downsample!r}")
        if _no_bool_int(self.dilation) or self.dilation < 1:
            raise ConfigError(f"crf dilation must be an integer >= 1, got {self.dilation!r}")
        for name in ("theta_alpha", "theta_beta", "theta_gamma"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"crf {name} must be > 0, got {getattr(self, name)!r}")
        for name in ("w_bilateral", "w_gaussian"):
            if not getattr(self, name) >= 0:
                raise ConfigError(f"crf {name} must be >= 0, got {getattr(self, name)!r}")

    def offsets(self) -> list[tuple[int, int]]:
        """(dy, dx) of the window in (down-sampled) pixels, ``dilation`` apart, row-major, the centre included."""
        r, s = self.window // 2, self.dilation
        return [(dy * s, dx * s) for dy in range(-r, r + 1) for dx in range(-r, r + 1)]

    def offset_constants(self) -> tuple[np.ndarray, np.ndarray]:
        """Per offset: the bilateral kernel's position factor times its weight, and the Gaussian term.

        The centre (the pixel itself) gets 0 in both: no message to oneself.
        """
        d = float(self.downsample)
        spatial, gauss = [], []
        for dy, dx in self.offsets():
            dist2 = (dy * dy + dx * dx) * d * d
            centre = dy == 0 and dx == 0
            spatial.append(
                0.0 if centre else self.w_bilateral * np.exp(-dist2 / (2 * self.theta_alpha**2))
            )
            gauss.append(
                0.0 if centre else self.w_gaussian * np.exp(-dist2 / (2 * self.theta_gamma**2))
            )
        return np.asarray(spatial, np.float32), np.asarray(gauss, np.float32)

    def to_json(self) -> dict[str, float | int]:
        out = dict(self.__dict__)
        if out["dilation"] == 1:
            del out["dilation"]  # as the manifest writes it: absent at its default
        return out


@dataclass(frozen=True)
class CrfTuningRecord:
    """How ``edgeseg crf-tune`` chose the CRF's kernel settings: on which labelled frames, from
    which settings, with how many CRF evaluations, and the mIoU (void ignored) on those frames.

    The figures are measured on the frames the settings were tuned on, so they overstate
    what new frames gain; ``benchmarks/crf_tune.py`` scores tuned settings on held-out frames.
    """

    images: str
    labels: str
    frames: int = spec(ge=1)
    budget: int = spec(ge=1)  # CRF evaluations allowed
    evaluations: int = spec(ge=1)  # CRF evaluations made (one is a CRF run over every frame)
    miou_model: float = spec(ge=0, le=1)  # the model's masks, without the CRF
    miou_before: float = spec(ge=0, le=1)  # with the CRF at ``previous``
    miou_after: float = spec(ge=0, le=1)  # with the CRF at the tuned settings
    previous: CRFParams = spec(default_factory=CRFParams)
    tuned: tuple[str, ...] = ()  # the settings the search moved; the others stayed as they were
    ignore_index: int | None = spec(None, ge=0, le=255)
    seed: int = spec(0, ge=0)
    logits: str = spec("fp32", choices=PRECISIONS)  # which of the bundle's graphs gave the logits


@dataclass(frozen=True)
class CrfRecord:
    """The dense-CRF stage: its own graph (``separate``) or fused into the model's, and
    how its settings were tuned (``tuning``; absent unless ``edgeseg crf-tune`` ran)."""

    mode: str = spec(choices=CRF_MODES)
    params: CRFParams = spec(default_factory=CRFParams)
    graph: str | None = None
    tuning: CrfTuningRecord | None = spec(None, omit_default=True)

    def _check(self, where: str) -> None:
        if self.mode == "separate" and self.graph is None:
            raise _fail(where, "a separate crf needs its 'graph'")


@dataclass(frozen=True)
class Target:
    """What a lower-precision graph had to reach against the FP32 graph."""

    min_agreement: float | None = spec(None, ge=0, le=1)
    max_miou_drop: float | None = spec(None, ge=0)
    confidence: float | None = spec(None, ge=0.5, le=1, omit_default=True)  # judged on bounds at this confidence


@dataclass(frozen=True)
class Figures:
    """A graph's figures against the FP32 graph (and, with labels, mIoU).

    ``agreement_low`` and ``miou_drop_high`` are the frame-level bootstrap bounds
    that a target with a ``confidence`` was judged on (absent: judged on the figures).
    """

    agreement: float = spec(ge=0, le=1)
    logit_error: float | None = spec(None, ge=0)
    miou: float | None = spec(None, ge=0, le=1)
    miou_drop: float | None = None
    agreement_low: float | None = spec(None, ge=0, le=1, omit_default=True)
    miou_drop_high: float | None = spec(None, omit_default=True)


@dataclass(frozen=True)
class PrecisionParity(Figures):
    """A lower-precision graph measured against the FP32 graph, on the CPU, and how."""

    reference: str | None = None
    backend: str | None = None
    samples: int | None = spec(None, ge=0)
    sample_source: str | None = None
    labelled: bool | None = None
    pytorch: TorchFigures | None = None


@dataclass(frozen=True)
class CalibrationRecord:
    """The calibration set an INT8 graph was calibrated on."""

    source: str
    kind: str = spec(choices=("folder", "video", "npz"))
    available: int = spec(ge=0)
    used: int = spec(ge=0)
    skipped: int = spec(0, ge=0)
    skipped_names: tuple[str, ...] = ()
    seed: int = spec(0, ge=0)
    image_size: tuple[int, int] | None = spec(None, ge=1)
    channels: int | None = spec(None, choices=(1, 3))
    held_out_for_evaluation: int | None = spec(None, ge=0)


@dataclass(frozen=True)
class KeptLayer:
    """A layer the mixed-precision search kept in float, and why."""

    node: str
    op_type: str
    logit_error: float = spec(ge=0)
    agreement: float = spec(ge=0, le=1)
    reason: str | None = None


@dataclass(frozen=True)
class SearchStep:
    """One step of the mixed-precision search: this many layers kept in float, and the figures."""

    met: bool
    kept_float: int = spec(ge=0)
    agreement: float = spec(ge=0, le=1)
    logit_error: float | None = spec(None, ge=0)
    miou: float | None = spec(None, ge=0, le=1)
    miou_drop: float | None = None
    agreement_low: float | None = spec(None, ge=0, le=1, omit_default=True)
    miou_drop_high: float | None = spec(None, omit_default=True)


@dataclass(frozen=True)
class MixedPrecisionRecord:
    """The accuracy-driven search for layers to keep in float (``enabled`` false: not run)."""

    enabled: bool = True
    placement: str | None = spec(None, choices=QDQ_PLACEMENTS)
    target: Target | None = None
    met: bool | None = None
    figures: Figures | None = None
    kept_float: tuple[KeptLayer, ...] = ()
    steps: tuple[SearchStep, ...] = ()
    layers_analysed: int | None = spec(None, ge=0)


@dataclass(frozen=True)
class QdqViolation:
    node: str
    op_type: str
    rule: str
    message: str


@dataclass(frozen=True)
class QdqRulesRecord:
    """TensorRT's explicit-quantization rules checked on the INT8 graph."""

    ok: bool
    quantize_nodes: int = spec(ge=0)
    dequantize_nodes: int = spec(ge=0)
    quantized_ops: dict[str, int] = spec(default_factory=dict)
    float_ops: tuple[str, ...] = ()
    violations: tuple[QdqViolation, ...] = ()


@dataclass(frozen=True)
class TrtCacheRecord:
    """The legacy TensorRT calibration cache written beside the INT8 graph."""

    file: str
    header: str
    tensors: int = spec(ge=0)


@dataclass(frozen=True)
class Int8ShareRecord:
    """How much of the model's compute runs in INT8.

    Attributes:
        flops: multiply-accumulates x 2 of every Conv, DeformConv, ConvTranspose, Gemm and MatMul
            (the ops quantization changes, and DeformConv, which stays float), at the bundle's input size.
        int8_flops: those of them whose data input and weights both come from DequantizeLinear.
        share: ``int8_flops / flops``.
        floor: the share the build required (``min_int8_share``).
    """

    flops: int = spec(ge=0)
    int8_flops: int = spec(ge=0)
    share: float = spec(ge=0, le=1)
    floor: float | None = spec(None, ge=0, le=1)


@dataclass(frozen=True)
class QuantizationRecord:
    """How the INT8 graph was made."""

    calibration: CalibrationRecord
    method: str = spec(choices=QUANT_METHODS)
    placement: str = spec(choices=QDQ_PLACEMENTS)
    quantized_nodes: int = spec(ge=0)
    percentile: float | None = spec(None, gt=0, le=100)
    mixed_precision: MixedPrecisionRecord | None = None
    kept_float: tuple[str, ...] = ()
    tensorrt_rules: QdqRulesRecord | None = None
    trt_cache: TrtCacheRecord | None = None
    int8_share: Int8ShareRecord | None = spec(None, omit_default=True)


@dataclass(frozen=True)
class Fp16Record:
    """How the FP16 graph was made: what runs in FP16, what stayed FP32 and why."""

    fp16_nodes: int = spec(ge=0)
    kept_by_op: dict[str, int] = spec(default_factory=dict)
    casts_added: int = spec(0, ge=0)
    kept_fp32: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class PrecisionRecord:
    """A lower-precision graph of the bundle: its file, how it was made, its figures."""

    graph: str
    parity: PrecisionParity | None = None
    target: Target | None = None
    quantization: QuantizationRecord | None = None
    fp16: Fp16Record | None = None


@dataclass(frozen=True)
class ProfileRecord:
    """The (height, width) range of an engine's optimisation profile."""

    min: tuple[int, int] = spec(ge=1, le=MAX_SIDE)
    opt: tuple[int, int] = spec(ge=1, le=MAX_SIDE)
    max: tuple[int, int] = spec(ge=1, le=MAX_SIDE)
    input: str = spec("image", choices=("image",))

    @property
    def static(self) -> bool:
        return self.min == self.opt == self.max

    def describe(self) -> str:
        if self.static:
            return f"{self.opt[0]}x{self.opt[1]}"
        return " / ".join(f"{h}x{w}" for h, w in (self.min, self.opt, self.max)) + " (min/opt/max)"

    def _check(self, where: str) -> None:
        for side in (0, 1):
            if not self.min[side] <= self.opt[side] <= self.max[side]:
                raise _fail(where, f"must keep min <= opt <= max, got {self.describe()}")


@dataclass(frozen=True)
class EngineRecord:
    """A TensorRT engine in the bundle: what it was built from, for which device, and how.

    An engine is used only on the GPU (``gpu``, ``sm``) and TensorRT
    (``trt_version``) it was built for, from the graph it was built from
    (``graph_sha256``); see :func:`edgeseg.engines.choose_engine`.

    ``stage`` says which graph the engine runs: ``model`` (the default; one of
    the bundle's ``graphs``) or ``crf`` (the separate CRF graph, ``crf.onnx``,
    whose engine runs chained to a model engine on the same device and
    TensorRT). ``graph`` is that graph's file and ``precision`` its precision
    (a CRF graph is FP32 and its engine runs on the GPU).
    """

    graph: str
    profile: ProfileRecord
    file: str = spec(pattern=r"[^/\\]+\.plan")
    gpu: str = spec(pattern=r"[a-z0-9-]+")
    sm: str = spec(pattern=r"sm\d{2,3}")
    trt_version: str = spec(pattern=r"\d+(\.\d+)*")
    precision: str = spec(choices=PRECISIONS)
    graph_sha256: str = spec(pattern=_SHA256)
    mode: str = spec("strongly-typed", choices=ENGINE_MODES)
    gpu_name: str | None = None
    inspector: str | None = None
    dla_core: int | None = spec(None, ge=0)
    deform_conv: str | None = spec(None, choices=DEFORM_MODES)
    plugins: tuple[str, ...] = ()
    workspace_mb: int | None = spec(None, ge=1)
    opt_level: int = spec(3, ge=0, le=5)
    build_seconds: float | None = spec(None, ge=0)
    built_at: str | None = None
    stage: str = spec("model", choices=ENGINE_STAGES, omit_default=True)

    def describe(self) -> str:
        """One line for ``edgeseg info`` and ``build``."""
        where = f"DLA core {self.dla_core}" if self.dla_core is not None else "GPU"
        what = f"{self.precision} CRF" if self.stage == "crf" else self.precision
        return (
            f"{self.file}: {what} on {self.gpu_name or self.gpu} {self.sm} ({where}), "
            f"TensorRT {self.trt_version}, {self.profile.describe()}"
            + (f", DeformConv {self.deform_conv}" if self.deform_conv else "")
            + (f", built {self.built_at}" if self.built_at else "")
        )


def _plain_name(name: str) -> bool:
    return not (
        Path(name).is_absolute()
        or ".." in Path(name).parts
        or "/" in name
        or "\\" in name
        or name in ("", ".", MANIFEST_NAME)
    )


@dataclass(frozen=True)
class Manifest:
    """The parsed ``manifest.json`` of a bundle (see the module docstring)."""

    model: ModelRecord
    classes: tuple[str, ...]
    input: InputSpec
    palette: tuple[tuple[int, int, int], ...] = spec(ge=0, le=255)
    precision: str = spec(choices=PRECISIONS)
    opset: int = spec(ge=7, le=64)
    outputs: tuple[str, ...] = ("mask",)
    graphs: dict[str, str] = spec(default_factory=dict)
    files: dict[str, FileRecord] = spec(default_factory=dict)
    versions: dict[str, str] = spec(default_factory=dict)
    parity: ParityRecord | None = None
    crf: CrfRecord | None = None
    # per lower-precision graph ("fp16", "int8"): its parity with the float graph and how it was made
    precisions: dict[str, PrecisionRecord] = spec(default_factory=dict)
    engines: tuple[EngineRecord, ...] = ()
    # graph file -> the operator types it holds (its main graph and local functions)
    op_types: dict[str, tuple[str, ...]] = spec(default_factory=dict)
    schema_version: int = spec(SCHEMA_VERSION, choices=READABLE_SCHEMAS)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @classmethod
    def create(cls, **fields: Any) -> Manifest:
        """A manifest from its fields, each a record or its JSON (``parity={"agreement": 1.0}``),
        checked like a loaded one but for the files, which :func:`edgeseg.bundle.write_bundle`
        fills in and validates.

        Raises:
            BundleError: a field of the wrong type or out of range, naming it.
        """
        data = {"schema_version": SCHEMA_VERSION, "files": {}, "versions": {}, "parity": {}}
        data.update((k, encode(v)) for k, v in fields.items())
        return cls.from_json(data, where="manifest", validate=False)

    def replace(self, **changes: Any) -> Manifest:
        """A copy with ``changes`` (records or their JSON) applied, each type- and range-checked;
        :func:`edgeseg.bundle.write_bundle` checks the whole when it writes the files."""
        data = {**self.to_json(), **{k: encode(v) for k, v in changes.items()}}
        return Manifest.from_json(data, where="manifest", validate=False)

    def to_json(self) -> dict[str, Any]:
        data = encode(self)
        data["input"] = self.input.to_json()
        data["parity"] = encode(self.parity) if self.parity is not None else {}
        data["crf"] = encode(self.crf) if self.crf is not None else None
        order = (
            "schema_version",
            "model",
            "classes",
            "palette",
            "input",
            "precision",
            "opset",
            "outputs",
            "graphs",
            "files",
            "versions",
            "parity",
            "crf",
            "precisions",
            "engines",
            "op_types",
        )
        return {k: data.get(k) for k in order}

    @classmethod
    def from_json(cls, data: Any, *, where: str = MANIFEST_NAME, validate: bool = True) -> Manifest:
        """Reads and checks a manifest (see the module docstring).

        Args:
            data: the parsed JSON.
            where: the file, for messages.
            validate: also check that the records agree with each other (every file
                named is listed, ...); False for a manifest whose files are not written yet.

        Raises:
            BundleError: naming the key and the value that is wrong.
        """
        if not isinstance(data, Mapping):
            raise BundleError(f"{where}: expected a JSON object, got {type(data).__name__}")
        version = data.get("schema_version")
        if isinstance(version, int) and not isinstance(version, bool) and version > SCHEMA_VERSION:
            raise BundleError(
                f"{where}: schema_version {version} is newer than this edgeseg reads "
                f"({SCHEMA_VERSION}); upgrade edgeseg"
            )
        required = (
            "schema_version",
            "model",
            "classes",
            "palette",
            "input",
            "precision",
            "opset",
            "files",
            "versions",
            "parity",
        )
        missing = [k for k in required if k not in data]
        if missing:
            raise BundleError(f"{where}: missing keys {', '.join(missing)}")
        data = dict(data)
        if not data.get("parity"):
            data.pop("parity")  # {}: no figures recorded
        if data.get("crf") is None:
            data.pop("crf", None)
        manifest: Manifest = decode(cls, data, f"{where}:")
        if validate:
            manifest.validate(where=where)
        return manifest

    def validate(self, *, where: str = MANIFEST_NAME) -> None:
        """Checks the manifest's internal consistency (every file it names is listed, ...).

        Raises:
            BundleError: naming the first inconsistency found.
        """
        if not self.classes:
            raise BundleError(f"{where}: 'classes' is empty")
        if len(self.classes) > 256:
            raise BundleError(
                f"{where}: {len(self.classes)} classes do not fit a uint8 mask (at most 256)"
            )
        if len(self.palette) != len(self.classes):
            raise BundleError(
                f"{where}: palette has {len(self.palette)} colours for {len(self.classes)} classes"
            )
        for name in self.files:
            if not _plain_name(name):
                raise BundleError(f"{where}: file name {name!r} is not a plain name in the bundle")
        if self.precision not in self.graphs:
            raise BundleError(f"{where}: no graph for the bundle's precision {self.precision!r}")
        for precision, name in self.graphs.items():
            if precision not in PRECISIONS:
                raise BundleError(
                    f"{where}: graph precision {precision!r} is not one of {', '.join(PRECISIONS)}"
                )
            if name not in self.files:
                raise BundleError(
                    f"{where}: graph {name!r} ({precision}) is not listed under 'files'"
                )
        for precision, record in self.precisions.items():
            if precision not in self.graphs:
                raise BundleError(
                    f"{where}: 'precisions' describes {precision!r}, which has no graph"
                )
            if record.graph != self.graphs[precision]:
                raise BundleError(
                    f"{where}: precisions.{precision}.graph {record.graph!r} is not the "
                    f"{precision} graph {self.graphs[precision]!r}"
                )
        for graph in self.op_types:
            if graph not in self.files:
                raise BundleError(
                    f"{where}: op_types describes {graph!r}, which is not listed under 'files'"
                )
        seen: set[str] = set()
        for i, engine in enumerate(self.engines):
            at = f"{where}: engines[{i}]"
            if engine.file in seen:
                raise BundleError(
                    f"{where}: engine {engine.file!r} is listed twice under 'engines'"
                )
            seen.add(engine.file)
            named: list[tuple[str, str | None]] = [
                ("file", engine.file),
                ("inspector", engine.inspector),
                ("graph", engine.graph),
                *(("plugins", p) for p in engine.plugins),
            ]
            for label, listed in named:
                if listed is not None and listed not in self.files:
                    raise BundleError(f"{at}.{label} {listed!r} is not listed under 'files'")
            if engine.stage == "crf":
                crf_graph = (
                    self.crf.graph if self.crf is not None and self.crf.mode == "separate" else None
                )
                if engine.graph != crf_graph:
                    raise BundleError(
                        f"{at}: a crf engine's graph {engine.graph!r} is not the bundle's separate "
                        f"crf graph ({crf_graph or 'it has none'})"
                    )
        unknown = [o for o in self.outputs if o not in OUTPUTS]
        if "mask" not in self.outputs or unknown or len(set(self.outputs)) != len(self.outputs):
            raise BundleError(
                f"{where}: outputs {list(self.outputs)} must include 'mask' and only "
                f"{', '.join(OUTPUTS)}, each once"
            )
        if self.crf is not None and self.crf.mode == "separate":
            if self.crf.graph not in self.files:
                raise BundleError(
                    f"{where}: crf graph {self.crf.graph!r} is not listed under 'files'"
                )
            if "logits" not in self.outputs:
                raise BundleError(f"{where}: a separate crf needs the model's 'logits' output")


__all__ = [
    "CRF_MODES",
    "ENGINE_STAGES",
    "MANIFEST_NAME",
    "OUTPUTS",
    "PRECISIONS",
    "SCHEMA_VERSION",
    "CRFParams",
    "CrfRecord",
    "CrfTuningRecord",
    "EngineRecord",
    "FileRecord",
    "InputSpec",
    "Manifest",
    "ModelRecord",
    "ParityRecord",
    "PrecisionRecord",
    "ProfileRecord",
    "decode",
    "encode",
    "spec",
]
