"""torch -> ONNX with pre- and post-processing fused into the graph.

The exported graph takes ``image``: uint8, NHWC, RGB (or one gray channel),
at the model's size, and does the cast, scaling, mean/std normalisation and
transpose itself. It returns ``mask`` (uint8 argmax, N x H x W), ``probs``
(softmax) and ``logits``; :func:`converters.passes.select_outputs` keeps the
ones a bundle asks for. The runtime then moves bytes, not floats.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import onnx
import torch
from torch import nn

from converters.options import DEFAULT_OPSET
from converters.passes import shapes_after_cast, simplify, strip_metadata
from edgeseg.errors import ConfigError, ExportError

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
    """

    input_size: tuple[int, int]
    in_channels: int = 3
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    dynamic: bool = False
    multiple_of: int = 1
    opset: int = DEFAULT_OPSET
    simplify: bool = True

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


class DeployWrapper(nn.Module):
    """uint8 NHWC image -> (mask, probs, logits), around a logits model.

    The model may return a tensor, or a dict with ``"out"`` (torchvision's
    segmentation models), or a tuple/list whose first item is the logits.
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

    def normalize(self, image: torch.Tensor) -> torch.Tensor:
        # uint8 is cast before anything else touches it: TensorRT takes uint8 I/O tensors
        # only through a cast to or from float32/float16
        return image.to(torch.float32).permute(0, 3, 1, 2) * self.scale + self.shift

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        logits = logits_of(self.model(self.normalize(image))).to(torch.float32)
        # the index goes through float32 on its way to uint8, for the same reason
        mask = torch.argmax(logits, dim=1).to(torch.float32).to(torch.uint8)
        probs = torch.softmax(logits, dim=1)
        return mask, probs, logits


def logits_of(out: object) -> torch.Tensor:
    """The logits tensor in a model's output (tensor, ``{"out": ...}``, or a sequence)."""
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, dict):
        if "out" not in out:
            raise ExportError(f"model returned a dict without 'out' (keys: {list(out)})")
        return logits_of(out["out"])
    if isinstance(out, (tuple, list)) and out:
        return logits_of(out[0])
    raise ExportError(
        f"model returned {type(out).__name__}; expected logits as a tensor, a dict with 'out', "
        "or a tuple whose first item is the logits"
    )


def probe_module(model: nn.Module, spec: ExportSpec) -> int:
    """Runs the model once at the export size and returns its number of classes.

    Raises:
        ExportError: the forward fails or returns something that is not
            (1, C, H, W) logits at the input's resolution.
    """
    h, w = spec.input_size
    x = torch.zeros(1, spec.in_channels, h, w)
    try:
        with torch.no_grad():
            logits = logits_of(model(x))
    except ExportError:
        raise
    except Exception as err:  # noqa: BLE001 - user code may raise anything
        raise ExportError(
            f"model forward failed on a (1, {spec.in_channels}, {h}, {w}) float input: "
            f"{type(err).__name__}: {err}"
        ) from err
    if logits.dim() != 4 or logits.shape[0] != 1 or tuple(logits.shape[2:]) != (h, w):
        raise ExportError(
            f"model returned logits of shape {tuple(logits.shape)} for a (1, {spec.in_channels}, "
            f"{h}, {w}) input; expected (1, num_classes, {h}, {w}) (upsample the logits to the input size)"
        )
    return int(logits.shape[1])


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
