"""What ``edgeseg.build`` and ``edgeseg calibrate`` are asked to do, defined once.

One frozen dataclass per group of options, each with its defaults and its
checks (a :class:`~edgeseg.errors.ConfigError` naming the option and the
value), gathered in :class:`BuildOptions`:

- :class:`ModelOptions`: the network and its graph (classes, input, normalisation, outputs);
- :class:`CheckOptions`: the images the graphs are judged on and the targets they must meet;
- :class:`QuantOptions`: how the INT8 graph is made;
- :class:`CRFOptions`: the dense CRF stage;
- :class:`converters.tensorrt.EngineConfig`: how a TensorRT engine is built;

plus the precision, the target and whether to overwrite. ``build()``'s flat
keywords (``calib_size=``, ``crf=``, ...) map onto the groups by field name
(:func:`flat_names`); the CLI's flags are the same names, and its help reads
the defaults from here.

Light: this module imports no torch or onnx (``edgeseg.cli`` imports it), so
the defaults that heavier modules share (the opset, the calibration method) are
defined here and those modules import them; the choices a bundle can record
come from :mod:`edgeseg.manifest`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import Field, dataclass, field, fields, replace
from typing import Any, TypeVar

from converters.tensorrt import TARGETS, EngineConfig, coerce_config
from edgeseg.bundle import CRF_MODES, OUTPUTS, PRECISIONS
from edgeseg.errors import ConfigError
from edgeseg.labels import LABEL_FORMATS
from edgeseg.manifest import QDQ_PLACEMENTS, QUANT_METHODS, CRFParams
from edgeseg.metrics import DEFAULT_MIN_AGREEMENT

# -- defaults ---------------------------------------------------------------------------------

DEFAULT_NUM_CLASSES = 21  # Pascal VOC, torchvision's default for its segmentation models
DEFAULT_NUM_SAMPLES = 8  # images of the fp32 graph's parity check with PyTorch
DEFAULT_EVAL_IMAGES = 16  # fewest images an FP16/INT8 graph is judged on
# An FP16/INT8 graph is judged on bounds for frames it was not judged on, at this confidence
# (calibration.mixed.unseen_bounds), not on the figures of the frames it was judged on.
DEFAULT_CONFIDENCE = 0.95
DEFAULT_CALIB_SIZE = 200
DEFAULT_PLACEMENT = "cpu"
DEFAULT_MIN_INT8_SHARE = 0.5  # of the model's Conv/ConvTranspose/Gemm/MatMul FLOPs
# The legacy implicit-INT8 path is for TensorRT 10.x on JetPack 6 (TensorRT 10.3).
DEFAULT_TRT_CACHE_VERSION = "10.3.0"
DEFAULT_OPSET = 19  # DeformConv needs 19; TensorRT 10.3's parser reads up to 20
MIN_OPSET = 19  # ONNX DeformConv, which the zoo's deformable options export to, is opset 19
# The newest opset torch.onnx says it supports (torch.onnx._constants.ONNX_MAX_OPSET, 23 in
# torch 2.14). A constant because this module must not import torch (a private module of it at
# that); tests/converters/test_options.py holds it equal to the installed torch's. Above it the
# exporter leans on ONNX's version converter, which gives up past ONNX's own newest opset and
# leaves the exporter's opset 18 in the graph while the manifest would record the one asked for.
MAX_OPSET = 23
METHODS = QUANT_METHODS
PLACEMENTS = QDQ_PLACEMENTS
DEFAULT_METHOD = "entropy"

FLAT = "flat"  # field metadata: the field's name among build()'s flat keywords, where it differs

_T = TypeVar("_T", bound="_Group")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _set(obj: Any, name: str, value: Any) -> None:
    object.__setattr__(obj, name, value)  # normalising a frozen dataclass's own field


class _Group:
    """Constructors shared by the option groups."""

    @classmethod
    def from_mapping(cls: type[_T], values: Mapping[str, Any], *, base: _T | None = None) -> _T:
        """The group from a dict of its fields; the others keep ``base``'s values (or the defaults).

        Raises:
            ConfigError: an unknown key (the message lists the valid ones), or a bad value.
        """
        names = [f.name for f in fields(cls)]  # type: ignore[arg-type]
        unknown = sorted(set(values) - set(names))
        if unknown:
            raise ConfigError(f"unknown {cls.__name__} fields {unknown}; valid: {', '.join(names)}")
        if base is not None:
            return replace(base, **values)  # type: ignore[type-var]
        return cls(**values)


@dataclass(frozen=True)
class ModelOptions(_Group):
    """The network and the graph exported from it.

    Attributes:
        classes: class names; or give ``num_classes`` (names are then generated).
        num_classes: number of classes (zoo models: :data:`DEFAULT_NUM_CLASSES` when neither
            is given; a module's is probed).
        input_size: (height, width); zoo models have a default, modules need it.
        in_channels: 3 (RGB) or 1 (grayscale).
        mean: per-channel mean on the 0..1 scale (None: ImageNet's, or its average for grayscale).
        std: per-channel std on the 0..1 scale (None: ImageNet's, or its average for grayscale).
        weights: a state dict or checkpoint file, loaded with ``weights_only=True``.
        options: zoo model options (``edgeseg models`` lists them); not for modules.
        outputs: graph outputs to keep: ``mask`` plus any of ``probs``, ``logits``.
        palette: one [r, g, b] per class (None: the Pascal VOC colour map).
        dynamic: symbolic height and width in the graph.
        multiple_of: with ``dynamic``, sides must be multiples of this (None: the zoo
            model's own, 32 for modules).
        opset: ONNX opset, :data:`MIN_OPSET` (19) to :data:`MAX_OPSET` (23).
        align_corners: for a model whose logits are smaller than its input (1/4, 1/8: a
            factor that divides the input), the ``align_corners`` of the bilinear upsampling
            fused into the graph (None: the model family's rule).
    """

    classes: tuple[str, ...] | None = None
    num_classes: int | None = None
    input_size: tuple[int, int] | None = None
    in_channels: int = 3
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    weights: str | os.PathLike[str] | None = None
    options: Mapping[str, Any] | None = None
    outputs: tuple[str, ...] = ("mask",)
    palette: tuple[tuple[int, int, int], ...] | None = None
    dynamic: bool = False
    multiple_of: int | None = None
    opset: int = DEFAULT_OPSET
    align_corners: bool | None = None

    def __post_init__(self) -> None:
        if self.align_corners is not None and not isinstance(self.align_corners, bool):
            raise ConfigError(f"align_corners must be True, False or None, got {self.align_corners!r}")
        if self.classes is not None:
            if isinstance(self.classes, str) or not isinstance(self.classes, Sequence):
                raise ConfigError(f"classes must be a list of names, got {self.classes!r}")
            _set(self, "classes", tuple(str(c) for c in self.classes))
        if self.num_classes is not None and (not _is_int(self.num_classes) or self.num_classes < 1):
            raise ConfigError(f"num_classes must be a positive integer, got {self.num_classes!r}")
        if self.input_size is not None:
            _set(self, "input_size", check_size(self.input_size))
        if self.in_channels is None:  # build(in_channels=None) always meant RGB
            _set(self, "in_channels", 3)
        if not _is_int(self.in_channels) or self.in_channels not in (1, 3):
            raise ConfigError(f"in_channels must be 1 or 3, got {self.in_channels!r}")
        for name in ("mean", "std"):
            value = getattr(self, name)
            if value is None:
                continue
            try:
                _set(self, name, tuple(float(v) for v in value))
            except (TypeError, ValueError) as err:
                raise ConfigError(f"{name} must be per-channel numbers, got {value!r}") from err
        if self.options is not None:
            if not isinstance(self.options, Mapping):
                raise ConfigError(f"options must be a dict of zoo model options, got {self.options!r}")
            _set(self, "options", dict(self.options))
        _set(self, "outputs", check_outputs(self.outputs))
        if self.palette is not None:
            _set(self, "palette", check_palette(self.palette))
        if not isinstance(self.dynamic, bool):
            raise ConfigError(f"dynamic must be True or False, got {self.dynamic!r}")
        if self.multiple_of is not None and (not _is_int(self.multiple_of) or self.multiple_of < 1):
            raise ConfigError(f"multiple_of must be >= 1, got {self.multiple_of!r}")
        if not _is_int(self.opset) or not MIN_OPSET <= self.opset <= MAX_OPSET:
            raise ConfigError(
                f"opset must be an integer from {MIN_OPSET} to {MAX_OPSET} (what torch.onnx's exporter "
                f"writes and ONNX DeformConv needs), got {self.opset!r}"
            )


@dataclass(frozen=True)
class CheckOptions(_Group):
    """The images the graphs are judged on, and the targets they must meet.

    Attributes:
        samples: a folder of images for the parity checks (None: generated images;
            for INT8, frames held out of the calibration set).
        num_samples: how many sample images the parity check with PyTorch runs (an
            FP16/INT8 graph is judged on at least :data:`DEFAULT_EVAL_IMAGES`).
        labels: label folder for ``samples`` (matched by name); enables ``max_miou_drop``.
        label_format: ``auto``, ``ids``, ``voc`` or ``cityscapes``.
        ignore_index: a label id left out of the mIoU (e.g. CamVid's 11).
        min_agreement: the fraction of pixels whose masks must agree with the
            reference's: the FP32 graph's with PyTorch, an FP16/INT8 graph's with
            the FP32 graph (None: :data:`edgeseg.metrics.DEFAULT_MIN_AGREEMENT` of the precision).
        max_miou_drop: mIoU points an FP16/INT8 graph may lose against FP32 (needs labels).
        confidence: an FP16/INT8 graph must meet the targets on frames it was not
            judged on with this confidence: this share of the judged frames must each
            reach ``min_agreement``, and the mIoU drop's upper bound from a bootstrap
            over them must stay within ``max_miou_drop``
            (:func:`calibration.mixed.unseen_bounds`). 0: judged on the figures
            themselves, with no margin.
    """

    samples: str | os.PathLike[str] | None = None
    num_samples: int = DEFAULT_NUM_SAMPLES
    labels: str | os.PathLike[str] | None = None
    label_format: str = "auto"
    ignore_index: int | None = None
    min_agreement: float | None = None
    max_miou_drop: float | None = None
    confidence: float = DEFAULT_CONFIDENCE

    def __post_init__(self) -> None:
        if not _is_int(self.num_samples) or self.num_samples < 1:
            raise ConfigError(f"num_samples must be >= 1, got {self.num_samples!r}")
        if self.label_format not in LABEL_FORMATS:
            raise ConfigError(
                f"label_format must be one of {', '.join(LABEL_FORMATS)}, got {self.label_format!r}"
            )
        if self.ignore_index is not None and not _is_int(self.ignore_index):
            raise ConfigError(f"ignore_index must be an integer label id, got {self.ignore_index!r}")
        if self.min_agreement is not None and not (
            isinstance(self.min_agreement, (int, float)) and 0.0 <= self.min_agreement <= 1.0
        ):
            raise ConfigError(f"min_agreement must be a fraction in [0, 1], got {self.min_agreement}")
        if self.max_miou_drop is not None and not (
            isinstance(self.max_miou_drop, (int, float)) and self.max_miou_drop >= 0
        ):
            raise ConfigError(f"max_miou_drop must be >= 0 (mIoU points), got {self.max_miou_drop}")
        if self.labels is not None and self.samples is None:
            raise ConfigError("labels need samples=DIR (--samples): the images they label")
        if not (
            isinstance(self.confidence, (int, float)) and not isinstance(self.confidence, bool)
            and (self.confidence == 0 or 0.5 <= self.confidence < 1)
        ):
            raise ConfigError(
                f"confidence must be 0 (no margin) or in [0.5, 1), e.g. 0.95, got {self.confidence!r}"
            )

    def target_confidence(self) -> float | None:
        """The confidence an FP16/INT8 graph's bounds are judged at (None: no margin)."""
        return float(self.confidence) if self.confidence else None


@dataclass(frozen=True)
class QuantOptions(_Group):
    """How the INT8 graph is made.

    Attributes:
        calib: INT8 calibration set: a folder of images (recursive), a video or an ``.npz``.
        calib_size: how many frames of ``calib`` to use (spread evenly over it).
        seed: seed of the deterministic pick of calibration frames (``calib_seed`` of ``build``).
        method: calibration method: ``minmax``, ``percentile`` or ``entropy``.
        placement: where Q/DQ goes: ``cpu`` (what ONNX Runtime fuses into integer
            kernels: uint8 activations, which TensorRT refuses) or ``tensorrt``
            (TensorRT's explicit-quantization rules, which ONNX Runtime runs too).
            None: ``cpu`` for a CPU-only build (``target="cpu"``), else ``tensorrt``,
            so that a bundle built anywhere also becomes an engine on the device
            (:meth:`for_target`).
        mixed_precision: keep the most sensitive layers in float until the target holds.
        trt_cache_version: TensorRT version written in the header of the legacy
            calibration cache (``calibration.cache``).
        min_int8_share: the share of the model's compute (FLOPs of Conv, ConvTranspose, Gemm,
            MatMul) that must run in INT8; an INT8 graph below it fails the build instead of
            shipping a float graph labelled int8.
    """

    calib: str | os.PathLike[str] | None = None
    calib_size: int = DEFAULT_CALIB_SIZE
    seed: int = field(default=0, metadata={FLAT: "calib_seed"})
    method: str = DEFAULT_METHOD
    placement: str | None = None
    mixed_precision: bool = True
    trt_cache_version: str = DEFAULT_TRT_CACHE_VERSION
    min_int8_share: float = DEFAULT_MIN_INT8_SHARE

    def __post_init__(self) -> None:
        if (
            isinstance(self.min_int8_share, bool)
            or not isinstance(self.min_int8_share, (int, float))
            or not 0.0 <= self.min_int8_share <= 1.0
        ):
            raise ConfigError(f"min_int8_share must be a fraction from 0 to 1, got {self.min_int8_share!r}")
        if not _is_int(self.calib_size) or self.calib_size < 1:
            raise ConfigError(f"calib_size must be >= 1, got {self.calib_size!r}")
        if not _is_int(self.seed):
            raise ConfigError(f"calib_seed must be an integer, got {self.seed!r}")
        if self.method not in METHODS:
            raise ConfigError(f"method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if self.placement is not None and self.placement not in PLACEMENTS:
            raise ConfigError(f"placement must be one of {', '.join(PLACEMENTS)}, got {self.placement!r}")
        if not isinstance(self.mixed_precision, bool):
            raise ConfigError(f"mixed_precision must be True or False, got {self.mixed_precision!r}")
        if not isinstance(self.trt_cache_version, str) or not self.trt_cache_version:
            raise ConfigError(
                f"trt_cache_version must be a TensorRT version such as '10.3.0', got {self.trt_cache_version!r}"
            )

    def for_target(self, target: str) -> QuantOptions:
        """These options with the placement settled for a build target (``cpu``, ``tensorrt``,
        ``auto``): a given placement stays; None becomes ``cpu`` (ONNX Runtime's integer
        kernels) for ``target="cpu"``, which declares a CPU-only bundle, and ``tensorrt``
        otherwise: a bundle built on a workstation is turned into an engine on the device, and
        TensorRT's parser refuses ONNX Runtime's uint8 Q/DQ."""
        if self.placement is not None:
            return self
        return replace(self, placement=DEFAULT_PLACEMENT if target == "cpu" else "tensorrt")

    def require_calib(self) -> str | os.PathLike[str]:
        """The calibration set, which INT8 needs.

        Raises:
            ConfigError: none was given.
        """
        if self.calib is None:
            raise ConfigError(
                "int8 needs a calibration set: calib=PATH (--calib), a folder of images, a video or an .npz"
            )
        return self.calib


@dataclass(frozen=True)
class CRFOptions(_Group):
    """The dense CRF stage.

    Attributes:
        mode: None (no CRF), ``separate`` (its own ``crf.onnx``, switchable at run
            time; the model then also outputs ``logits``) or ``fused`` (one graph:
            model, then CRF). Static sizes only.
        params: :class:`edgeseg.manifest.CRFParams` or a dict of its fields (None: its defaults).
    """

    mode: str | None = field(default=None, metadata={FLAT: "crf"})
    params: CRFParams | Mapping[str, Any] | None = field(default=None, metadata={FLAT: "crf_params"})

    def __post_init__(self) -> None:
        if self.mode is not None and self.mode not in CRF_MODES:
            raise ConfigError(f"crf must be one of {', '.join(CRF_MODES)} (or None), got {self.mode!r}")
        if self.params is None:
            return
        if self.mode is None:
            raise ConfigError("crf_params were given without crf='separate' or crf='fused'")
        if isinstance(self.params, CRFParams):
            return
        if not isinstance(self.params, Mapping):
            raise ConfigError(f"crf_params must be CRFParams or a dict of its fields, got {self.params!r}")
        valid = [f.name for f in fields(CRFParams)]
        unknown = sorted(set(self.params) - set(valid))
        if unknown:
            raise ConfigError(f"unknown crf_params {unknown}; valid: {', '.join(valid)}")
        _set(self, "params", CRFParams(**self.params))

    def crf_params(self) -> CRFParams | None:
        """The CRF settings of this build (None: no CRF stage)."""
        if self.mode is None:
            return None
        return self.params if isinstance(self.params, CRFParams) else CRFParams()


@dataclass(frozen=True)
class BuildOptions:
    """Everything ``edgeseg.build`` is asked to do, but the model and the output path.

    Attributes:
        precision: ``fp32``, ``fp16`` (an FP16 graph with I/O and sensitive
            operators in FP32) or ``int8`` (explicit Q/DQ from ``quant.calib``).
            The bundle keeps ``model.onnx`` (FP32) beside ``model.fp16.onnx`` /
            ``model.int8.onnx`` and runs the latter by default.
        target: ``cpu`` (ONNX graphs only), ``tensorrt`` (also a TensorRT engine for
            this GPU) or ``auto`` (an engine when TensorRT and a GPU are here).
        overwrite: replace an existing bundle.
        model: the network and its graph.
        check: parity images and targets.
        quant: how the INT8 graph is made (only with ``precision="int8"``).
        crf: the dense CRF stage.
        engine: how the TensorRT engine is built (``engine=`` takes an EngineConfig or a dict).
    """

    precision: str = "fp32"
    target: str = "auto"
    overwrite: bool = False
    model: ModelOptions = field(default_factory=ModelOptions)
    check: CheckOptions = field(default_factory=CheckOptions)
    quant: QuantOptions = field(default_factory=QuantOptions)
    crf: CRFOptions = field(default_factory=CRFOptions)
    engine: EngineConfig = field(default_factory=EngineConfig)

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.target not in TARGETS:
            raise ConfigError(f"target must be one of {', '.join(TARGETS)}, got {self.target!r}")
        if not isinstance(self.overwrite, bool):
            raise ConfigError(f"overwrite must be True or False, got {self.overwrite!r}")
        for f in fields(self):
            group = _group_type(f)
            value = getattr(self, f.name)
            if group is not None and not isinstance(value, group):
                if not isinstance(value, Mapping):
                    raise ConfigError(f"{f.name} must be {group.__name__} or a dict of its fields, got {value!r}")
                _set(self, f.name, group.from_mapping(value))
        _set(self, "engine", coerce_config(self.engine))
        if self.precision == "int8":
            self.quant.require_calib()
        elif self.quant.calib is not None:
            raise ConfigError(f"calib is for precision='int8'; this build is {self.precision}")
        if self.crf.mode is not None and self.model.dynamic:
            raise ConfigError(
                "the CRF stage is built for one input size; it cannot be combined with dynamic=True"
            )

    @classmethod
    def from_kwargs(cls, **kwargs: Any) -> BuildOptions:
        """The options from ``build()``'s flat keywords (``calib_size=200``, ``crf="fused"``, ...).

        Raises:
            ConfigError: an unknown keyword (the message lists the valid ones), or a bad value.
        """
        top, groups = group_kwargs(kwargs)
        made: dict[str, Any] = {name: _GROUPS[name].from_mapping(values) for name, values in groups.items()}
        return cls(**top, **made)

    def to_kwargs(self) -> dict[str, Any]:
        """The options as ``build()``'s flat keywords: ``from_kwargs(**o.to_kwargs()) == o``."""
        out: dict[str, Any] = {}
        for flat, (group, name) in flat_names().items():
            owner = self if group is None else getattr(self, group)
            out[flat] = getattr(owner, name)
        return out

    def parity_target(self) -> float:
        """The pixel agreement the FP32 graph must reach with PyTorch."""
        given = self.check.min_agreement
        return given if self.precision == "fp32" and given is not None else DEFAULT_MIN_AGREEMENT["fp32"]


# What `edgeseg calibrate` judges an INT8 graph on when not told: more images than a build's
# parity check, as it has no PyTorch model to compare with.
CALIBRATE_CHECK = CheckOptions(num_samples=DEFAULT_EVAL_IMAGES)


def _group_type(f: Field[Any]) -> type[_Group] | None:
    """The option group a BuildOptions field holds (None: a plain value or the EngineConfig)."""
    factory = f.default_factory
    return factory if isinstance(factory, type) and issubclass(factory, _Group) else None


def _flat_names() -> dict[str, tuple[str | None, str]]:
    table: dict[str, tuple[str | None, str]] = {}
    for f in fields(BuildOptions):
        group = _group_type(f)
        entries = (
            [(None, f.name, f.name)]
            if group is None
            else [(f.name, g.name, g.metadata.get(FLAT, g.name)) for g in fields(group)]  # type: ignore[arg-type]
        )
        for owner, name, flat in entries:
            if flat in table:  # pragma: no cover - a definition error: fails at import
                raise TypeError(f"build keyword {flat!r} is defined twice in BuildOptions")
            table[flat] = (owner, name)
    return table


_GROUPS = {f.name: g for f in fields(BuildOptions) if (g := _group_type(f)) is not None}
_FLAT_NAMES = _flat_names()


def flat_names() -> dict[str, tuple[str | None, str]]:
    """``build()``'s keywords -> (the BuildOptions group, or None for its own fields; the field).

    Groups' fields are flattened under their own names (or their ``flat`` metadata);
    ``precision``, ``target``, ``overwrite`` and ``engine`` (the whole EngineConfig) stay as they are.
    """
    return dict(_FLAT_NAMES)


def group_kwargs(kwargs: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """Sorts ``build()``'s flat keywords: BuildOptions' own fields, and each group's fields by name.

    Raises:
        ConfigError: an unknown keyword; the message lists the valid ones.
    """
    table = flat_names()
    unknown = sorted(set(kwargs) - set(table))
    if unknown:
        raise ConfigError(f"unknown build options {unknown}; valid: {', '.join(table)}")
    top: dict[str, Any] = {}
    groups: dict[str, dict[str, Any]] = {}
    for key, value in kwargs.items():
        group, name = table[key]
        if group is None:
            top[name] = value
        else:
            groups.setdefault(group, {})[name] = value
    return top, groups


def check_size(size: Any) -> tuple[int, int]:
    """``size`` as a positive (height, width).

    Raises:
        ConfigError: it is not two positive integers.
    """
    try:
        h, w = (int(s) for s in size)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"input_size must be (height, width), got {size!r}") from err
    if h <= 0 or w <= 0 or any(isinstance(s, bool) for s in size):
        raise ConfigError(f"input_size must be positive (height, width), got {size!r}")
    return (h, w)


def check_outputs(outputs: str | Sequence[str]) -> tuple[str, ...]:
    """``mask`` and the other wanted outputs, in the graph's order.

    Raises:
        ConfigError: an unknown output; the message lists the valid ones.
    """
    wanted = [outputs] if isinstance(outputs, str) else list(outputs)
    unknown = [o for o in wanted if o not in OUTPUTS]
    if unknown:
        raise ConfigError(f"unknown outputs {unknown}; valid: {', '.join(OUTPUTS)}")
    return ("mask", *(o for o in OUTPUTS[1:] if o in wanted))


def check_palette(palette: Sequence[Sequence[int]]) -> tuple[tuple[int, int, int], ...]:
    """The palette as (r, g, b) tuples (its length is checked against the classes later).

    Raises:
        ConfigError: an entry that is not three values 0..255 (the message names the entry).
    """
    colors = []
    for i, c in enumerate(palette):
        try:
            rgb = tuple(int(v) for v in c)
        except (TypeError, ValueError) as err:
            raise ConfigError(f"palette entry {i} is {c!r}; expected [r, g, b] with values 0..255") from err
        if len(rgb) != 3 or not all(0 <= v <= 255 for v in rgb):
            raise ConfigError(f"palette entry {i} is {c!r}; expected [r, g, b] with values 0..255")
        colors.append((rgb[0], rgb[1], rgb[2]))
    return tuple(colors)


__all__ = [
    "CALIBRATE_CHECK",
    "DEFAULT_CALIB_SIZE",
    "DEFAULT_CONFIDENCE",
    "DEFAULT_EVAL_IMAGES",
    "DEFAULT_METHOD",
    "DEFAULT_NUM_CLASSES",
    "DEFAULT_NUM_SAMPLES",
    "DEFAULT_OPSET",
    "DEFAULT_MIN_INT8_SHARE",
    "DEFAULT_PLACEMENT",
    "DEFAULT_TRT_CACHE_VERSION",
    "MAX_OPSET",
    "METHODS",
    "MIN_OPSET",
    "PLACEMENTS",
    "BuildOptions",
    "CRFOptions",
    "CheckOptions",
    "EngineConfig",
    "ModelOptions",
    "QuantOptions",
    "check_outputs",
    "check_palette",
    "check_size",
    "flat_names",
    "group_kwargs",
]
