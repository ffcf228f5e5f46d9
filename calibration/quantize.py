"""INT8 by explicit quantization: calibration statistics, then Q/DQ placements.

ONNX Runtime's quantization tooling does the work (``onnxruntime.quantization``:
its calibrators and its QDQ quantizer); this module decides what it is given:

* **Which nodes.** A bundle graph carries its own pre-processing (cast,
  normalisation, layout) and post-processing (upsampling of the logits, argmax,
  softmax, a fused CRF). Those stay in float: :func:`split_regions` finds them,
  and only the network between them (the *body*) is quantized.
* **One set of statistics, two placements.** :func:`collect_statistics` runs a
  calibrator (min-max, percentile or entropy) once over the calibration images
  and keeps each tensor's range. :func:`quantize` turns the same ranges into
  either placement:

  - ``cpu``: ONNX Runtime's own QDQ placement (uint8 activations, int8
    per-channel weights, Q/DQ around every operator it has an integer kernel
    for), which its graph optimiser fuses into ``QLinearConv`` and friends, so
    INT8 runs faster than FP32 on a CPU. Before quantizing, the float graph is
    rewritten (exactly) into operators that have such kernels
    (:mod:`converters.passes.int8_cpu`: HardSwish/HardSigmoid as Mul, Add and
    Clip, ReduceMean as GlobalAveragePool, dilated taps that only read padding
    dropped); after, a multiplication by a constant between Q/DQ becomes a scale.
  - ``tensorrt``: TensorRT's rules: symmetric int8 with zero point 0,
    per-tensor activations, per-channel weights on the output-channel axis
    (0 for Conv, 1 for ConvTranspose), float weights behind a Q/DQ pair, no
    quantized bias, and Q/DQ on the *inputs* of the compute operators only,
    where TensorRT fuses them. ONNX Runtime runs this graph too (slowly: it
    has no fused kernels for it), which is how its accuracy is measured here.
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from converters.options import DEFAULT_METHOD
from converters.options import METHODS as METHODS
from converters.options import PLACEMENTS as PLACEMENTS
from edgeseg.errors import ConfigError, ExportError
from edgeseg.progress import Count

log = logging.getLogger(__name__)

DEFAULT_PERCENTILE = 99.999
COMPUTE_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
# What the tensorrt placement puts Q/DQ in front of (inputs only).
TENSORRT_OPS = COMPUTE_OPS
# What the cpu placement quantizes: the operators ONNX Runtime's CPU provider
# has integer (QLinear*) kernels or QDQ fusions for.
CPU_OPS = (
    *COMPUTE_OPS,
    "Add",
    "Mul",
    "Concat",
    "Resize",
    "MaxPool",
    "AveragePool",
    "GlobalAveragePool",
    "Relu",
    "Clip",
    "LeakyRelu",
    "Sigmoid",
)
# Candidates of the mixed-precision search, per placement: the operators that the placement,
# quantizing such a node on its own, gives Q/DQ on its inputs and an integer kernel (measured:
# tests/calibration/test_candidates.py quantizes each operator alone and holds these lists to
# what ONNX Runtime's quantizer does). Not candidates: MaxPool, AveragePool and Resize, which
# it quantizes only when their input already is (they pass int8 through, and alone change
# nothing: ranked least sensitive, they would stay "quantized" while the Convs went back to
# float), and Relu and Clip, which fold into their quantized producer.
CANDIDATE_OPS: dict[str, tuple[str, ...]] = {
    "cpu": (*COMPUTE_OPS, "Add", "Mul", "Concat", "GlobalAveragePool", "LeakyRelu", "Sigmoid"),
    "tensorrt": TENSORRT_OPS,
}


@dataclass(frozen=True)
class Regions:
    """Node names of a bundle graph, split into pre-processing, body and post-processing."""

    pre: tuple[str, ...]
    body: tuple[str, ...]
    post: tuple[str, ...]

    @property
    def float_nodes(self) -> tuple[str, ...]:
        """Nodes that always stay in float."""
        return self.pre + self.post


def name_nodes(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy whose nodes all have unique names (the quantizer selects nodes by name)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    seen: set[str] = set()
    for i, node in enumerate(out.graph.node):
        name = node.name or f"{node.op_type}_{i}"
        while name in seen:
            name = f"{name}_{i}"
        node.name = name
        seen.add(name)
    return out


def split_regions(model: onnx.ModelProto) -> Regions:
    """Finds the pre-processing, the body and the post-processing of a graph.

    The body is every node that a compute operator (Conv, ConvTranspose, Gemm,
    MatMul) depends on, or that depends on one and feeds another: the network
    itself. Pre-processing is what runs before the first compute operator (the
    cast and normalisation of the uint8 image); post-processing is what only
    follows the last ones (logit upsampling, argmax, softmax, a fused CRF).

    Raises:
        ExportError: the graph has no compute operator, or a node has no name.
    """
    nodes = list(model.graph.node)
    if any(not n.name for n in nodes):
        raise ExportError("every node needs a name to be quantized; run name_nodes() first")
    producer = {out: i for i, n in enumerate(nodes) for out in n.output if out}
    compute = [i for i, n in enumerate(nodes) if n.op_type in COMPUTE_OPS]
    if not compute:
        raise ExportError("the graph has no Conv, ConvTranspose, Gemm or MatMul to quantize")

    # Ancestors of the compute nodes (what they need), and the compute nodes' descendants.
    needed: set[int] = set()
    stack = list(compute)
    while stack:
        i = stack.pop()
        if i in needed:
            continue
        needed.add(i)
        stack.extend(producer[t] for t in nodes[i].input if t in producer)
    after: set[int] = set()
    for i, node in enumerate(nodes):  # nodes are topologically sorted
        if i in compute or any(t in producer and producer[t] in after for t in node.input):
            after.add(i)
    body = {i for i in needed if i in after}  # between the first and the last compute node
    pre = {i for i in needed if i not in after}
    post = set(range(len(nodes))) - body - pre
    return Regions(
        pre=tuple(nodes[i].name for i in sorted(pre)),
        body=tuple(nodes[i].name for i in sorted(body)),
        post=tuple(nodes[i].name for i in sorted(post)),
    )


def quantizable_nodes(model: onnx.ModelProto, placement: str) -> list[str]:
    """Body nodes the placement quantizes on their own, in graph order: the candidates a
    mixed-precision search may keep in float (:data:`CANDIDATE_OPS`)."""
    _check_placement(placement)
    body = set(split_regions(model).body)
    ops = CANDIDATE_OPS[placement]
    return [n.name for n in model.graph.node if n.name in body and n.op_type in ops]


@dataclass
class CalibrationStats:
    """Per-tensor ranges from one calibration run, shared by both placements.

    Attributes:
        method: ``minmax``, ``percentile`` or ``entropy``.
        ranges: tensor name -> (low, high) as the calibrator chose them.
        images: how many calibration images were seen.
        percentile: the percentile used (``percentile`` method only).
    """

    method: str
    ranges: dict[str, tuple[float, float]]
    images: int
    percentile: float | None = None
    _tensors: Any = field(default=None, repr=False)  # ORT's TensorsData, for its quantizer

    def amax(self) -> dict[str, float]:
        """Symmetric range of each tensor: max(|low|, |high|)."""
        return {k: max(abs(lo), abs(hi)) for k, (lo, hi) in self.ranges.items()}

    def to_json(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "percentile": self.percentile,
            "images": self.images,
            "ranges": {k: [lo, hi] for k, (lo, hi) in self.ranges.items()},
        }

    def tensors_data(self) -> Any:
        """The ranges as ONNX Runtime's ``TensorsData`` (what its quantizer reads)."""
        from onnxruntime.quantization.calibrate import TensorData, TensorsData

        if self._tensors is None:
            data = {
                k: TensorData(lowest=np.float32(lo), highest=np.float32(hi))
                for k, (lo, hi) in self.ranges.items()
            }
            self._tensors = TensorsData(_ort_method(self.method), data)
        return self._tensors

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CalibrationStats:
        try:
            method = str(data["method"])
            if method not in METHODS:
                raise ValueError(f"method {method!r} is not one of {', '.join(METHODS)}")
            ranges = {str(k): (float(v[0]), float(v[1])) for k, v in data["ranges"].items()}
            bad = [k for k, (lo, hi) in ranges.items() if not (np.isfinite(lo) and np.isfinite(hi) and lo <= hi)]
            if bad:
                raise ValueError(f"tensor {bad[0]!r} has a range that is not finite with low <= high")
            images = int(data["images"])
            if images < 1:
                raise ValueError(f"images must be >= 1, got {images}")
            return cls(method, ranges, images, data.get("percentile"))
        except (KeyError, TypeError, ValueError, IndexError, AttributeError) as err:
            raise ConfigError(f"calibration statistics are malformed: {err}") from err


def collect_statistics(
    model: onnx.ModelProto,
    images: np.ndarray,
    *,
    method: str = DEFAULT_METHOD,
    percentile: float = DEFAULT_PERCENTILE,
    chunk: int = 8,
    input_name: str = "image",
    progress: Count | None = None,
) -> CalibrationStats:
    """Runs one calibrator over ``images`` and returns every body tensor's range.

    Args:
        model: the float bundle graph (uint8 ``image`` input).
        images: (N, H, W, C) uint8 frames, prepared as the runtime prepares them.
        method: ``minmax`` (the observed extremes), ``percentile`` (clips the
            tails of a histogram) or ``entropy`` (the KL-divergence threshold of
            TensorRT's entropy calibrator, as ONNX Runtime implements it).
        percentile: for ``percentile``, which percentile of |x| is kept.
        chunk: images per inference batch of the calibrator; intermediate
            outputs of only this many images are held in memory at a time.
        progress: called with (images done, total).

    Raises:
        ConfigError: an unknown method, a bad percentile, or no images.
    """
    from onnxruntime.quantization.calibrate import create_calibrator

    ort_method = _ort_method(method)
    if not 0.0 < percentile <= 100.0:
        raise ConfigError(f"percentile must be in (0, 100], got {percentile}")
    if images.ndim != 4 or images.dtype != np.uint8 or len(images) == 0:
        raise ConfigError(
            f"calibration images must be a non-empty (N, H, W, C) uint8 array, got "
            f"{images.dtype} {images.shape}"
        )
    chunk = max(1, int(chunk))
    from converters.passes.int8_cpu import for_cpu_int8

    # The cpu placement's rewrites keep every tensor of the float graph and add a few; calibrating
    # the rewritten graph gives both placements their ranges.
    named = for_cpu_int8(name_nodes(model))
    regions = split_regions(named)
    body = set(regions.body)
    ops = sorted(set(CPU_OPS) | set(TENSORRT_OPS))
    options: dict[str, Any] = {"symmetric": False}
    if method == "percentile":
        options["percentile"] = percentile
    with tempfile.TemporaryDirectory(prefix="edgeseg-calib-") as tmp, _quiet():
        path = Path(tmp) / "model.onnx"
        onnx.save_model(named, str(path))
        calibrator = create_calibrator(
            path,
            ops,
            augmented_model_path=str(Path(tmp) / "augmented.onnx"),
            calibrate_method=ort_method,
            providers=["CPUExecutionProvider"],
            extra_options=options,
        )
        try:
            done = 0
            for start in range(0, len(images), chunk):
                batch = images[start : start + chunk]
                calibrator.collect_data(_Reader(batch, input_name))
                done += len(batch)
                if progress is not None:
                    progress(done, len(images))
            tensors = calibrator.compute_data()
        finally:
            del calibrator
    wanted = _body_tensors(named, body)
    ranges = {}
    for name, data in tensors.data.items():
        if name not in wanted:
            continue
        lo, hi = (float(np.asarray(v).reshape(-1)[0]) for v in data.range_value)
        if not (np.isfinite(lo) and np.isfinite(hi)):
            raise ExportError(f"calibration produced a non-finite range for tensor {name!r}: ({lo}, {hi})")
        ranges[name] = (lo, hi)
    return CalibrationStats(method, ranges, int(len(images)), percentile if method == "percentile" else None)


def quantize(
    model: onnx.ModelProto,
    stats: CalibrationStats,
    *,
    placement: str,
    keep_float: Sequence[str] = (),
    only: Sequence[str] | None = None,
) -> onnx.ModelProto:
    """The Q/DQ model of ``model`` for a placement, from calibration statistics.

    Args:
        model: the float bundle graph.
        stats: from :func:`collect_statistics` on the same graph.
        placement: ``cpu`` or ``tensorrt`` (see the module's docstring).
        keep_float: body nodes to leave in float (mixed precision). With the
            ``tensorrt`` placement such a node reads float inputs. With ``cpu``
            its weights and arithmetic are float, but an input whose producer is
            quantized keeps that producer's Q/DQ (ONNX Runtime quantizes tensors,
            not edges), so some of its input's rounding remains.
        only: quantize just these nodes (the sensitivity analysis uses one at a time).

    Raises:
        ConfigError: an unknown placement or node name.
    """
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.calibrate import save_tensors_data

    _check_placement(placement)
    named = name_nodes(model)
    if only is not None and not only:
        return named  # nothing to quantize (ONNX Runtime would read an empty list as "all")
    regions = split_regions(named)
    known = {n.name for n in named.graph.node}
    unknown = sorted(set(keep_float) - known) + sorted(set(only or ()) - known)
    if unknown:
        raise ConfigError(f"no node named {', '.join(map(repr, unknown[:5]))} in the graph")
    if placement == "cpu":
        # Float-exact rewrites that give ONNX Runtime's CPU kernels an integer path (HardSwish,
        # HardSigmoid, ReduceMean as pooling, dead dilated taps): converters.passes.int8_cpu.
        from converters.passes.int8_cpu import derived_ranges, for_cpu_int8

        named = for_cpu_int8(named)
        regions = split_regions(named)
        extra = derived_ranges(named, stats.ranges)
        if extra:
            stats = CalibrationStats(stats.method, {**stats.ranges, **extra}, stats.images, stats.percentile)
    exclude = sorted(set(regions.float_nodes) | set(keep_float))
    if placement == "cpu":
        kwargs: dict[str, Any] = {
            "activation_type": QuantType.QUInt8,
            "weight_type": QuantType.QInt8,
            "op_types_to_quantize": list(CPU_OPS),
            "extra_options": {},
        }
    else:
        kwargs = {
            "activation_type": QuantType.QInt8,
            "weight_type": QuantType.QInt8,
            "op_types_to_quantize": list(TENSORRT_OPS),
            "extra_options": {
                "ActivationSymmetric": True,
                "WeightSymmetric": True,
                "QuantizeBias": False,
                "AddQDQPairToWeight": True,
                "OpTypesToExcludeOutputQuantization": list(TENSORRT_OPS),
                "QDQOpTypePerChannelSupportToAxis": {"Conv": 0, "ConvTranspose": 1},
            },
        }
    with tempfile.TemporaryDirectory(prefix="edgeseg-quant-") as tmp, _quiet():
        src, dst, cache = Path(tmp) / "float.onnx", Path(tmp) / "int8.onnx", Path(tmp) / "ranges.json"
        onnx.save_model(named, str(src))
        save_tensors_data(stats.tensors_data(), cache)
        quantize_static(
            str(src),
            str(dst),
            None,
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            reduce_range=False,
            nodes_to_exclude=exclude,
            nodes_to_quantize=list(only) if only else None,
            calibrate_method=_ort_method(stats.method),
            calibration_cache_path=str(cache),
            **kwargs,
        )
        quantized = onnx.load(str(dst))
    if placement == "cpu":
        from converters.passes.int8_cpu import fold_scalar_muls

        quantized = fold_scalar_muls(quantized)
    quantized.producer_name = "edgeseg"
    quantized.doc_string = f"edgeseg int8 ({placement} placement, {stats.method} calibration)"
    if quantized.ir_version > 9:
        quantized.ir_version = 9  # what onnxruntime >= 1.31 and TensorRT 10.3 both read
    return quantized


def quantized_nodes(model: onnx.ModelProto) -> list[str]:
    """Names of the nodes of a Q/DQ model that read a dequantized input."""
    dq_outputs = {o for n in model.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    return [
        n.name
        for n in model.graph.node
        if n.op_type not in ("QuantizeLinear", "DequantizeLinear") and any(i in dq_outputs for i in n.input)
    ]


class _Reader:
    """A CalibrationDataReader over a uint8 array, one image per inference."""

    def __init__(self, images: np.ndarray, input_name: str) -> None:
        self._images = images
        self._name = input_name
        self._i = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._i >= len(self._images):
            return None
        batch = np.ascontiguousarray(self._images[self._i : self._i + 1])
        self._i += 1
        return {self._name: batch}

    def rewind(self) -> None:
        self._i = 0

    def __len__(self) -> int:
        return len(self._images)


def _body_tensors(model: onnx.ModelProto, body: set[str]) -> set[str]:
    tensors: set[str] = set()
    for node in model.graph.node:
        if node.name in body:
            tensors.update(t for t in node.input if t)
            tensors.update(t for t in node.output if t)
    return tensors


def _ort_method(method: str) -> Any:
    from onnxruntime.quantization import CalibrationMethod

    table = {
        "minmax": CalibrationMethod.MinMax,
        "percentile": CalibrationMethod.Percentile,
        "entropy": CalibrationMethod.Entropy,
    }
    if method not in table:
        raise ConfigError(f"calibration method must be one of {', '.join(METHODS)}, got {method!r}")
    return table[method]


def _check_placement(placement: str) -> None:
    if placement not in PLACEMENTS:
        raise ConfigError(f"placement must be one of {', '.join(PLACEMENTS)}, got {placement!r}")


class _DropRootWarnings(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno > logging.WARNING


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """ONNX Runtime's quantizer prints progress to stdout and nags on the root logger."""
    root = logging.getLogger()
    quiet = _DropRootWarnings()
    root.addFilter(quiet)
    for handler in root.handlers:
        handler.addFilter(quiet)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        root.removeFilter(quiet)
        for handler in root.handlers:
            handler.removeFilter(quiet)
