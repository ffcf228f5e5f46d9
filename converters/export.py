"""torch -> ONNX with pre- and post-processing fused into the graph.

The exported graph takes ``image``: uint8, NHWC, RGB (or one gray channel),
at the model's size, and does the cast, scaling, mean/std normalisation and
transpose itself. It returns ``mask`` (uint8 argmax, N x H x W), ``probs``
(softmax) and ``logits``; :func:`converters.passes.select_outputs` keeps the
ones a bundle asks for. The runtime then moves bytes, not floats.

The model's output is taken where popular libraries put the logits
(:func:`locate_logits`: a tensor, ``{"out": ...}`` as torchvision,
``{"logits": ...}`` or ``.logits`` as Hugging Face, the first item of a tuple),
and logits smaller than the input by an integer factor per axis (1/4, 1/8)
get a bilinear upsampling to the input size in the graph, before the argmax
and softmax (:func:`probe_module` finds the factor, :func:`family_align_corners`
the ``align_corners``).
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import onnx
import torch
from torch import nn
from torch.nn import functional as F

from converters.options import DEFAULT_OPSET
from converters.passes import shapes_after_cast, simplify, strip_metadata
from edgeseg.errors import ConfigError, ExportError
from edgeseg.manifest import OutputRecord

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MIN_OPSET = 19
GRAPH_OUTPUTS = ("mask", "probs", "logits")


@dataclass(frozen=True)
class ExportSpec:
    """How a module is exported.

    Attributes:
        input_size: (height, width) of the ``image`` input (nominal size when dynamic).
        in_channels: 3 (RGB) or 1 (grayscale).
        mean: per-channel mean on the 0..1 scale.
        std: per-channel standard deviation on the 0..1 scale.
        dynamic: symbolic height and width.
        multiple_of: with ``dynamic``, sides must be multiples of this.
        opset: ONNX opset (>= 19).
        simplify: run onnxslim after export.
        logits_scale: (input height / logits height, input width / logits width), integers
            >= 1: above 1, the graph upsamples the model's logits to the input size
            (bilinear) before the argmax and softmax. With ``dynamic``, ``multiple_of``
            must be a multiple of both, so that every size the runtime feeds divides.
        align_corners: ``align_corners`` of that upsampling.
    """

    input_size: tuple[int, int]
    in_channels: int = 3
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    dynamic: bool = False
    multiple_of: int = 1
    opset: int = DEFAULT_OPSET
    simplify: bool = True
    logits_scale: tuple[int, int] = (1, 1)
    align_corners: bool = False

    def __post_init__(self) -> None:
        size = tuple(self.input_size)
        if len(size) != 2 or not all(isinstance(s, int) and s > 0 for s in size):
            raise ConfigError(f"input_size must be (height, width) of positive ints, got {self.input_size!r}")
        if self.in_channels not in (1, 3):
            raise ConfigError(f"in_channels must be 1 or 3, got {self.in_channels!r}")
        for label, values in (("mean", self.mean), ("std", self.std)):
            if len(values) != self.in_channels:
                raise ConfigError(
                    f"{label} has {len(values)} values for {self.in_channels} input channels: {values!r}"
                )
        if any(s <= 0 for s in self.std):
            raise ConfigError(f"std values must be positive, got {self.std!r}")
        if any(m < 0 or m > 1 for m in self.mean) or any(s > 1 for s in self.std):
            raise ConfigError(
                f"mean {self.mean!r} and std {self.std!r} are on the 0..1 scale "
                "(divide 0..255 values by 255)"
            )
        if self.opset < MIN_OPSET:
            raise ConfigError(f"opset must be >= {MIN_OPSET} (ONNX DeformConv), got {self.opset}")
        if self.multiple_of < 1:
            raise ConfigError(f"multiple_of must be >= 1, got {self.multiple_of}")
        scale = tuple(self.logits_scale)
        if len(scale) != 2 or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in scale):
            raise ConfigError(f"logits_scale must be (sh, sw) of integers >= 1, got {self.logits_scale!r}")
        object.__setattr__(self, "logits_scale", scale)  # a list given is kept as a tuple
        if self.dynamic and (self.multiple_of % scale[0] or self.multiple_of % scale[1]):
            works = math.lcm(self.multiple_of, *scale)
            raise ConfigError(
                f"the model's logits are 1/{scale[0]} x 1/{scale[1]} of the input, so every size of the "
                f"dynamic graph must divide by {scale[0]}x{scale[1]}, but multiple_of is {self.multiple_of}: "
                f"pass multiple_of={works} (or a multiple of it)"
            )


class DeployWrapper(nn.Module):
    """uint8 NHWC image -> (mask, probs, logits), around a logits model.

    The model may return the logits wherever :func:`locate_logits` finds them
    (a tensor, a dict or Hugging Face ``ModelOutput`` with ``"out"`` or
    ``"logits"``, an object with ``.logits``, a tuple/list starting with one of
    these). With ``spec.logits_scale`` above (1, 1) the logits are upsampled
    (bilinear, ``spec.align_corners``) to the input size before the argmax and
    softmax, so all three outputs are at the input size: by the constant factor
    in a fixed-size graph (a Resize with constant scales, which TensorRT and
    its DLA take), to the input's own size in a dynamic one (a Resize whose
    sizes are computed from the input at run time).
    """

    scale: torch.Tensor
    shift: torch.Tensor

    def __init__(self, model: nn.Module, spec: ExportSpec) -> None:
        super().__init__()
        self.model = model
        mean = torch.tensor(spec.mean, dtype=torch.float32).view(1, -1, 1, 1)
        std = torch.tensor(spec.std, dtype=torch.float32).view(1, -1, 1, 1)
        # (x/255 - mean)/std == x * scale + shift: one Mul and one Add in the graph
        self.register_buffer("scale", 1.0 / (255.0 * std), persistent=False)
        self.register_buffer("shift", -mean / std, persistent=False)
        self.logits_scale = tuple(spec.logits_scale)
        self.align_corners = spec.align_corners
        self.dynamic = spec.dynamic

    def normalize(self, image: torch.Tensor) -> torch.Tensor:
        # uint8 is cast before anything else touches it: TensorRT takes uint8 I/O tensors
        # only through a cast to or from float32/float16
        return image.to(torch.float32).permute(0, 3, 1, 2) * self.scale + self.shift

    def upsample(self, logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The logits at the size of the normalised input ``x`` (unchanged at scale (1, 1))."""
        if self.logits_scale == (1, 1):
            return logits
        if self.dynamic:
            return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=self.align_corners)
        return F.interpolate(
            logits, scale_factor=[float(s) for s in self.logits_scale], mode="bilinear",
            align_corners=self.align_corners,
        )

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.normalize(image)
        logits = self.upsample(logits_of(self.model(x)).to(torch.float32), x)
        # the index goes through float32 on its way to uint8, for the same reason
        mask = torch.argmax(logits, dim=1).to(torch.float32).to(torch.uint8)
        probs = torch.softmax(logits, dim=1)
        return mask, probs, logits


ACCEPTED_OUTPUTS = (
    "the logits as a tensor, a dict (or Hugging Face ModelOutput) with 'out' (torchvision) or "
    "'logits' (Hugging Face), an object with a .logits attribute, or a tuple/list whose first item "
    "is one of these"
)


def locate_logits(out: object) -> tuple[torch.Tensor, str]:
    """The logits tensor in a model's output, and where it was (an :class:`OutputRecord` kind).

    Looks where popular libraries put them: a tensor (``tensor``); a dict or a
    Hugging Face ``ModelOutput`` (a dict) with ``"out"`` (torchvision) or, without
    it, ``"logits"`` (Hugging Face); an object with a ``.logits`` attribute
    (``attribute``); a tuple or list whose first item is any of these (``tuple``).
    The kind names the outermost container.

    Raises:
        ExportError: none of these; the message names what was returned (type,
            keys) and what is accepted.
    """
    found = _locate(out)
    if found is None:
        raise ExportError(f"model returned {describe_output(out)}; expected {ACCEPTED_OUTPUTS}")
    return found


def _locate(out: object, depth: int = 0) -> tuple[torch.Tensor, str] | None:
    if isinstance(out, torch.Tensor):
        return out, "tensor"
    if depth > 4:
        return None
    if isinstance(out, Mapping):
        for key in ("out", "logits"):
            if key in out:
                inner = _locate(out[key], depth + 1)
                return None if inner is None else (inner[0], key)
        return None
    if not isinstance(out, (str, bytes)):
        try:
            attribute = getattr(out, "logits", None)
        except Exception:  # noqa: BLE001 - a user's __getattr__ may raise anything
            attribute = None
        if attribute is not None:
            inner = _locate(attribute, depth + 1)
            if inner is not None:
                return inner[0], "attribute"
    if isinstance(out, (tuple, list)) and out:
        inner = _locate(out[0], depth + 1)
        return None if inner is None else (inner[0], "tuple")
    return None


def describe_output(out: object) -> str:
    """What a model returned, for a message: its type, and its keys or items."""
    name = type(out).__name__
    if isinstance(out, torch.Tensor):
        return f"a tensor of shape {tuple(out.shape)}"
    if isinstance(out, Mapping):
        keys = [str(k) for k in list(out)[:8]]
        more = ", ..." if len(out) > 8 else ""
        what = "a dict" if type(out) is dict else f"a {name} (a dict)"
        return f"{what} with keys [{', '.join(repr(k) for k in keys)}{more}] but neither 'out' nor 'logits'"
    if isinstance(out, (tuple, list)):
        if not out:
            return f"an empty {name}"
        first = describe_output(out[0])
        return f"a {name} of {len(out)} items whose first is {first}"
    return name


def logits_of(out: object) -> torch.Tensor:
    """The logits tensor in a model's output (see :func:`locate_logits`)."""
    return locate_logits(out)[0]


def family_align_corners(model: nn.Module) -> tuple[bool, str]:
    """The ``align_corners`` a model family upsamples its logits with, and why.

    The rule: a boolean ``align_corners`` attribute on the model or on its
    ``decode_head`` (mmsegmentation's segmentors and decode heads carry the one
    their config resizes with) is taken as it is; otherwise False, which is what
    Hugging Face's ``post_process_semantic_segmentation`` (Segformer, UperNet,
    DPT, ...), torchvision's segmentation models and segmentation_models_pytorch
    upsample with.

    Returns:
        (align_corners, a short reason for the log and messages).
    """
    for owner, where in ((model, "the model"), (getattr(model, "decode_head", None), "its decode_head")):
        value = getattr(owner, "align_corners", None) if owner is not None else None
        if isinstance(value, bool):
            return value, f"{where}'s align_corners attribute"
    path = type(model).__module__
    family = next(
        (label for prefix, label in _FAMILIES if path == prefix or path.startswith(prefix + ".")),
        None,
    )
    if family is not None:
        return False, f"{family}'s rule"
    return False, "the default (Hugging Face, torchvision and segmentation_models_pytorch use False)"


_FAMILIES = (
    ("transformers", "Hugging Face"),
    ("torchvision", "torchvision"),
    ("segmentation_models_pytorch", "segmentation_models_pytorch"),
    ("edgeseg", "edgeseg's zoo"),
)


@dataclass(frozen=True)
class Probe:
    """What one forward at the export size says about a model.

    Attributes:
        num_classes: channels of the logits.
        output: where the logits were, their scale to the input, and the
            ``align_corners`` of the upsampling (None at scale (1, 1)).
        align_reason: why that ``align_corners`` (None at scale (1, 1)).
    """

    num_classes: int
    output: OutputRecord
    align_reason: str | None = None


def probe_module(model: nn.Module, spec: ExportSpec, *, align_corners: bool | None = None) -> Probe:
    """Runs the model once at the export size: its classes, and where and how large its logits are.

    Args:
        model: the module, in eval mode.
        spec: the export size and channels.
        align_corners: for logits smaller than the input, the upsampling's
            ``align_corners`` (None: :func:`family_align_corners`).

    Raises:
        ExportError: the forward fails, returns nothing :func:`locate_logits`
            finds, or logits that are not (1, C, h, w) with h and w dividing the
            input's height and width (the message gives the sizes that would work).
    """
    h, w = spec.input_size
    x = torch.zeros(1, spec.in_channels, h, w)
    try:
        with torch.no_grad():
            logits, kind = locate_logits(model(x))
    except ExportError:
        raise
    except Exception as err:  # noqa: BLE001 - user code may raise anything
        raise ExportError(
            f"model forward failed on a (1, {spec.in_channels}, {h}, {w}) float input: "
            f"{type(err).__name__}: {err}"
        ) from err
    if logits.dim() != 4 or logits.shape[0] != 1:
        raise ExportError(
            f"model returned logits of shape {tuple(logits.shape)} for a (1, {spec.in_channels}, "
            f"{h}, {w}) input; expected (1, num_classes, h, w) with h and w the input's size divided "
            "by an integer"
        )
    lh, lw = int(logits.shape[2]), int(logits.shape[3])
    if lh < 1 or lw < 1 or h % lh or w % lw:
        raise ExportError(_factor_message(logits, spec))
    scale = (h // lh, w // lw)
    if scale == (1, 1):
        return Probe(int(logits.shape[1]), OutputRecord(kind=kind))
    if align_corners is None:
        align_corners, reason = family_align_corners(model)
    else:
        reason = "the align_corners option"
    return Probe(
        int(logits.shape[1]),
        OutputRecord(kind=kind, scale=scale, align_corners=align_corners),
        reason,
    )


def _factor_message(logits: torch.Tensor, spec: ExportSpec) -> str:
    """Why logits of this size cannot be upsampled to the input, and the input sizes that would work."""
    h, w = spec.input_size
    lh, lw = int(logits.shape[2]), int(logits.shape[3])
    head = (
        f"model returned logits of shape {tuple(logits.shape)} for a (1, {spec.in_channels}, {h}, {w}) "
        f"input: {lh}x{lw} logits for a {h}x{w} input"
    )
    if lh > h or lw > w or lh < 1 or lw < 1:
        return head + "; expected logits at the input size or smaller by an integer factor per axis"
    fh, fw = max(1, round(h / lh)), max(1, round(w / lw))
    heights = sorted({max(fh, (h // fh) * fh), -(-h // fh) * fh})
    widths = sorted({max(fw, (w // fw) * fw), -(-w // fw) * fw})
    sizes = " or ".join(f"{a}x{b}" for a in heights for b in widths)
    return (
        f"{head}, which is not the input divided by an integer per axis ({h}/{lh} and {w}/{lw}); "
        f"the model looks like it predicts at 1/{fh} x 1/{fw}: input sizes that are multiples of "
        f"{fh}x{fw} would work, e.g. {sizes}"
    )


def onnx_from_module(model: nn.Module, spec: ExportSpec) -> onnx.ModelProto:
    """Exports ``model`` wrapped in :class:`DeployWrapper` with the dynamo exporter.

    The graph has input ``image`` and outputs ``mask``, ``probs``, ``logits``;
    it passes onnx.checker (full check, shape inference included).

    Raises:
        ExportError: the exporter or the checks failed; the message says which.
    """
    wrapper = DeployWrapper(model, spec).eval()
    h, w = spec.input_size
    example = torch.zeros(1, h, w, spec.in_channels, dtype=torch.uint8)
    dynamic_shapes = None
    if spec.dynamic:
        m = spec.multiple_of
        height = torch.export.Dim("height_div", min=1, max=8192 // m)
        width = torch.export.Dim("width_div", min=1, max=8192 // m)
        dynamic_shapes = {"image": {1: m * height, 2: m * width}} if m > 1 else {
            "image": {1: torch.export.Dim("height", min=2, max=8192), 2: torch.export.Dim("width", min=2, max=8192)}
        }
    log.info("exporting %s at %dx%d (dynamo, opset %d)", type(model).__name__, h, w, spec.opset)
    if spec.logits_scale != (1, 1):
        log.info(
            "the logits are 1/%d x 1/%d of the input: the graph upsamples them (bilinear, align_corners=%s)",
            *spec.logits_scale, spec.align_corners,
        )
    try:
        with _quiet_exporter():
            program = torch.onnx.export(
                wrapper,
                (example,),
                dynamo=True,
                opset_version=spec.opset,
                input_names=["image"],
                output_names=list(GRAPH_OUTPUTS),
                dynamic_shapes=dynamic_shapes,
                optimize=True,
                verbose=False,
            )
    except Exception as err:  # noqa: BLE001 - the exporter raises many types
        raise ExportError(f"torch.onnx.export (dynamo) failed: {_first_line(err)}") from err
    if program is None:  # pragma: no cover - dynamo=True always returns a program
        raise ExportError("torch.onnx.export returned no program")
    proto = program.model_proto
    proto = strip_metadata(proto)
    if spec.dynamic:
        proto = _name_dynamic_dims(proto)
    if spec.simplify:
        proto = simplify(proto)
    if spec.dynamic:
        proto = shapes_after_cast(proto)  # TensorRT: uint8 `image` may feed only a Cast
    if any(n.op_type == "DeformConv" for n in proto.graph.node):
        from converters.passes.deform import explicit_masks

        proto = explicit_masks(proto)  # DCNv1: TensorRT sizes a missing mask wrongly
    check_graph(proto)
    return proto


def _name_dynamic_dims(model: onnx.ModelProto) -> onnx.ModelProto:
    """Gives the image input's symbolic dims readable names (``height``, ``width``)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    dims = out.graph.input[0].type.tensor_type.shape.dim
    for index, name in ((1, "height"), (2, "width")):
        if dims[index].HasField("dim_param") or not dims[index].HasField("dim_value"):
            dims[index].dim_param = name
    for output in out.graph.output:
        odims = output.type.tensor_type.shape.dim
        if len(odims) >= 3:
            for index, name in ((len(odims) - 2, "height"), (len(odims) - 1, "width")):
                if not odims[index].HasField("dim_value"):
                    odims[index].dim_param = name
    return out


def check_graph(model: onnx.ModelProto) -> None:
    """onnx.checker with full shape inference.

    Raises:
        ExportError: with the checker's message.
    """
    try:
        onnx.checker.check_model(model, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as err:
        raise ExportError(f"the exported graph fails onnx.checker: {_first_line(err)}") from err
    problems = uint8_io_problems(model)
    if problems:
        raise ExportError("the graph's uint8 inputs/outputs break TensorRT's rule: " + "; ".join(problems))


_FLOATS = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)


def uint8_io_problems(model: onnx.ModelProto) -> list[str]:
    """Where a uint8 graph input or output is not a plain cast from/to float.

    TensorRT (10.3 as 11.x) takes uint8 network inputs and outputs only through
    a cast to or from float32/float16; a Transpose on uint8, or an integer index
    cast straight to uint8, fails to build there while ONNX Runtime runs it.
    """
    uint8 = onnx.TensorProto.UINT8
    producer = {o: n for n in model.graph.node for o in n.output}
    cast_to = {
        n.output[0]: next((a.i for a in n.attribute if a.name == "to"), None)
        for n in model.graph.node if n.op_type == "Cast"
    }
    problems = []
    for value in model.graph.input:
        if value.type.tensor_type.elem_type != uint8:
            continue
        for node in model.graph.node:
            if value.name in node.input and not (node.op_type == "Cast" and cast_to.get(node.output[0]) in _FLOATS):
                problems.append(f"input {value.name!r} feeds {node.op_type} {node.name!r} (expected a Cast to float)")
    outputs = [v for v in model.graph.output if v.type.tensor_type.elem_type == uint8]
    if outputs:
        inferred = onnx.shape_inference.infer_shapes(model)
        types = {
            v.name: v.type.tensor_type.elem_type
            for v in (*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output)
        }
        for value in outputs:
            node = producer.get(value.name)
            if node is None or node.op_type != "Cast" or types.get(node.input[0]) not in _FLOATS:
                problems.append(f"output {value.name!r} is not a Cast to uint8 of a float tensor")
    return problems


def graph_ops(model: onnx.ModelProto) -> Sequence[str]:
    """The sorted set of op types in the main graph."""
    return sorted({n.op_type for n in model.graph.node})


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """The dynamo exporter prints progress to stdout; keep it for debug logging only."""
    buffer = io.StringIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with contextlib.redirect_stdout(buffer):
            yield
    if buffer.getvalue():
        log.debug("exporter said:\n%s", buffer.getvalue())


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"
