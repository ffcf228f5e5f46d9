"""ONNX Runtime backend: the embedded default, on any CPU."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import ModuleType

import numpy as np

from edgeseg.errors import BackendError, MissingDependencyError
from edgeseg.runtime.backends.base import Backend, TensorInfo

log = logging.getLogger(__name__)


def _import_ort() -> ModuleType:
    try:
        import onnxruntime
    except ImportError as err:
        raise MissingDependencyError(
            "the onnxruntime backend needs onnxruntime: pip install 'edgeseg[cpu]'"
        ) from err
    return onnxruntime


# operators ONNX Runtime's CPU provider runs only from some release on (measured: 1.24 cannot
# run DeformConv, 1.31 can); JetPack 6's Python 3.10 has onnxruntime <= 1.23.2
MIN_VERSION_FOR_OP: dict[str, tuple[int, int]] = {"DeformConv": (1, 31)}


def check_operators(op_types: Sequence[str], where: str) -> None:
    """Raises when the installed onnxruntime cannot run one of a graph's operators.

    Args:
        op_types: the graph's operator types (a bundle records them: ``manifest.op_types``).
        where: the graph, for the message.

    Raises:
        BackendError: naming the operator, the release it needs and the one installed,
            and the ways out.
    """
    version = str(_import_ort().__version__)
    have = tuple(int(p) for p in version.split(".")[:2] if p.isdigit())
    for op in sorted(set(op_types) & set(MIN_VERSION_FOR_OP)):
        need = MIN_VERSION_FOR_OP[op]
        if have < need:
            raise BackendError(
                f"{where} uses {op}, which onnxruntime runs on the CPU only from "
                f"{need[0]}.{need[1]}; this is onnxruntime {version}. Run it with the TensorRT "
                "backend (backend='tensorrt'), or install "
                f"onnxruntime>={need[0]}.{need[1]} "
                "(it has no Python 3.10 wheels: on JetPack 6, use TensorRT)"
            )


def available() -> bool:
    """True when onnxruntime can be imported."""
    try:
        _import_ort()
    except MissingDependencyError:
        return False
    return True


class OnnxRuntimeBackend(Backend):
    """Runs an ONNX graph with ONNX Runtime.

    Args:
        model_path: the ONNX file.
        threads: intra-op threads; default: every core the process may use.
        providers: execution providers, default CPU only.
        profile_dir: if set, ONNX Runtime writes a per-node profile there.
        spin: let ORT's worker threads spin-wait between runs. Off by default:
            spinning shaves little latency but burns the cores that the
            caller's own threads (capture, robot code, PyTorch) need.
    """

    name = "onnxruntime"

    def __init__(
        self,
        model_path: str | os.PathLike[str],
        *,
        threads: int | None = None,
        providers: Sequence[str] = ("CPUExecutionProvider",),
        profile_dir: str | os.PathLike[str] | None = None,
        spin: bool = False,
    ) -> None:
        ort = _import_ort()
        self._path = Path(model_path)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = threads if threads is not None else _cpu_count()
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
        if profile_dir is not None:
            options.enable_profiling = True
            options.profile_file_prefix = str(Path(profile_dir) / "ort_profile")
        available_providers = ort.get_available_providers()
        unknown = [p for p in providers if p not in available_providers]
        if unknown:
            raise BackendError(
                f"onnxruntime has no provider {', '.join(unknown)}; available: "
                f"{', '.join(available_providers)}"
            )
        try:
            self._session = ort.InferenceSession(
                str(self._path), sess_options=options, providers=list(providers)
            )
        except Exception as err:  # noqa: BLE001 - ORT raises its own untyped errors
            raise BackendError(f"onnxruntime cannot load {self._path}: {err}") from err
        self._inputs = [i.name for i in self._session.get_inputs()]
        self._outputs = [o.name for o in self._session.get_outputs()]
        self._providers = list(providers)
        self._closed = False

    @property
    def input_names(self) -> Sequence[str]:
        return self._inputs

    @property
    def output_names(self) -> Sequence[str]:
        return self._outputs

    @property
    def description(self) -> str:
        return f"onnxruntime {_import_ort().__version__} ({', '.join(self._providers)})"

    def tensors(self) -> dict[str, TensorInfo]:
        ios = [(a, True) for a in self._session.get_inputs()] + [
            (a, False) for a in self._session.get_outputs()
        ]
        return {
            arg.name: TensorInfo(
                arg.name,
                _ORT_TYPES.get(arg.type, arg.type),
                tuple(d if isinstance(d, int) and d >= 0 else None for d in arg.shape),
                is_input,
            )
            for arg, is_input in ios
        }

    @property
    def metadata(self) -> dict[str, str]:
        return dict(self._session.get_modelmeta().custom_metadata_map)

    def input_shape(self, name: str) -> list[int | str | None]:
        for i in self._session.get_inputs():
            if i.name == name:
                return list(i.shape)
        raise BackendError(f"{self._path} has no input {name!r}")

    def infer(
        self, feeds: Mapping[str, np.ndarray], outputs: Sequence[str] | None = None
    ) -> dict[str, np.ndarray]:
        if self._closed:
            raise BackendError(f"the onnxruntime session for {self._path} is closed")
        names = list(outputs) if outputs is not None else self._outputs
        try:
            values = self._session.run(names, dict(feeds))
        except Exception as err:  # noqa: BLE001 - ORT raises its own untyped errors
            raise BackendError(f"onnxruntime failed to run {self._path.name}: {err}") from err
        return dict(zip(names, values, strict=True))

    def end_profiling(self) -> str | None:
        """Stops ORT's profiler and returns the JSON file it wrote (if profiling)."""
        if self._closed:
            return None
        path = self._session.end_profiling()
        return path or None

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            del self._session


# ONNX Runtime's tensor type names -> NumPy dtype names
_ORT_TYPES = {
    "tensor(uint8)": "uint8",
    "tensor(int8)": "int8",
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(double)": "float64",
    "tensor(int32)": "int32",
    "tensor(int64)": "int64",
    "tensor(bool)": "bool",
}


def _cpu_count() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)
