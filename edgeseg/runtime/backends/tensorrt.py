"""TensorRT backend: runs a serialized engine with pycuda memory, streams and events.

A runner only, after TensorRT's ``samples/python/common_runtime.py``: it takes
an engine (a ``.plan`` file, its bytes, or a callable that returns either, as
Polygraphy's ``TrtRunner`` does) and never builds one. Which engine of a bundle
fits this device, and building a missing one, are decided before it is made
(:mod:`edgeseg.engines`, :func:`edgeseg.runtime.backends.open_backend`).

Tensors are addressed by name; device buffers and page-locked host buffers
are allocated once (and again only when a dynamic input grows past them),
bound with ``set_tensor_address``, and every inference is host-to-device
copies, ``execute_async_v3`` and device-to-host copies on one stream, timed
with CUDA events. The engine runs in the device's *primary* CUDA context,
pushed for each call and popped after it, so a backend made in one thread can
run in another (the streaming pipeline does that) and the CUDA runtime that
TensorRT uses sees the same context.

CUDA graphs: pycuda (2025.1) has no stream capture, so ``cuda_graph=True``
captures ``execute_async_v3`` with cuda-python's runtime API
(``cuda.bindings.runtime``, or ``cuda.cudart`` in cuda-python < 12.6),
imported only then: ``pip install cuda-python``.

:class:`TensorRTCrfChain` runs a model engine and a bundle's separate CRF
engine as one backend: the CRF engine reads the model's ``image`` and
``logits`` where they already are in device memory, on the model's stream.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

import numpy as np

from edgeseg.errors import BackendError, ConfigError
from edgeseg.runtime.backends.base import Backend, TensorInfo
from edgeseg.runtime.backends.tensorrt_lib import (
    import_cudart,
    import_pycuda,
    load_plugin_libraries,
    logged_errors,
    make_logger,
    require_tensorrt,
)

if TYPE_CHECKING:  # pragma: no cover
    import tensorrt as trt

log = logging.getLogger(__name__)

EngineFile: TypeAlias = "str | os.PathLike[str] | bytes"
# what TensorRTBackend takes: an engine file, its bytes, or a callable returning one (called once)
EngineSource: TypeAlias = "EngineFile | Callable[[], EngineFile]"

# TensorRT DataType names -> NumPy dtypes (names, not enum objects: stable across versions)
_NUMPY_DTYPES: dict[str, np.dtype[Any]] = {
    "FLOAT": np.dtype(np.float32),
    "HALF": np.dtype(np.float16),
    "INT8": np.dtype(np.int8),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
}


@dataclass
class _Tensor:
    """One I/O tensor of the engine and the buffers bound to it."""

    name: str
    is_input: bool
    dtype: np.dtype[Any]
    engine_shape: tuple[int, ...]
    shape: tuple[int, ...] = ()
    capacity: int = 0  # bytes of the buffers below
    device: Any = None  # pycuda DeviceAllocation
    host: np.ndarray | None = None  # page-locked, flat uint8 of `capacity` bytes
    linked: int | None = None  # an input read from this device address (another engine's buffer)

    @property
    def dynamic(self) -> bool:
        return any(d < 0 for d in self.engine_shape)

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize

    def host_bytes(self) -> np.ndarray:
        """The page-locked bytes of the current shape (the buffers are allocated first)."""
        if self.host is None:
            raise BackendError(f"tensor {self.name!r} has no buffers yet")
        return self.host[: self.nbytes]

    def host_view(self) -> np.ndarray:
        return self.host_bytes().view(self.dtype).reshape(self.shape)


@dataclass
class _CudaGraph:
    """A captured ``execute_async_v3`` (cuda-python handles)."""

    cudart: Any
    graph: Any
    exec: Any
    destroyed: bool = field(default=False)

    def destroy(self) -> None:
        if not self.destroyed:
            self.destroyed = True
            self.cudart.cudaGraphExecDestroy(self.exec)
            self.cudart.cudaGraphDestroy(self.graph)


def _cudart_check(cudart: Any, result: Any, what: str) -> Any:
    """Raises BackendError unless a cuda-python call's status is cudaSuccess; returns its value."""
    status, *values = result if isinstance(result, tuple) else (result,)
    if int(status) != 0:
        _, name = cudart.cudaGetErrorName(status)
        raise BackendError(f"{what} failed: {name.decode() if isinstance(name, bytes) else name}")
    return values[0] if values else None


def _capture_graph(
    cudart: Any,
    handle: int,
    launches: Sequence[tuple[trt.IExecutionContext, str]],
    logger: trt.ILogger,
) -> _CudaGraph:
    """Captures the ``execute_async_v3`` of each (context, engine name), in order, in one CUDA graph.

    Raises:
        BackendError: a capture call fails or a launch fails during capture (the
            half-made graph is destroyed).
    """
    mode = cudart.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal
    graph: Any = None
    try:
        _cudart_check(cudart, cudart.cudaStreamBeginCapture(handle, mode), "cudaStreamBeginCapture")
        failed: str | None = None
        try:
            for context, name in launches:
                if not context.execute_async_v3(handle):
                    failed = name
                    break
        finally:
            graph = _cudart_check(
                cudart, cudart.cudaStreamEndCapture(handle), "cudaStreamEndCapture"
            )
        if failed is not None:
            raise BackendError(
                f"execute_async_v3 of {failed} failed during capture{logged_errors(logger)}"
            )
        graph_exec = _cudart_check(
            cudart, cudart.cudaGraphInstantiate(graph, 0), "cudaGraphInstantiate"
        )
    except BackendError:
        if graph is not None:
            cudart.cudaGraphDestroy(graph)
        raise
    return _CudaGraph(cudart, graph, graph_exec)


def _engine_bytes(engine: Any) -> tuple[Path, bytes]:
    """(a path for messages, the serialized engine) of an engine, its file or a callable."""
    if callable(engine):
        engine = engine()
    if isinstance(engine, (bytes, bytearray, memoryview)):
        return Path("<serialized engine>"), bytes(engine)
    path = Path(engine)
    try:
        return path, path.read_bytes()
    except OSError as err:
        raise BackendError(f"cannot read engine {path}: {err.strerror or err}") from err


class TensorRTBackend(Backend):
    """Runs a serialized TensorRT engine (``.plan``) on one GPU.

    Args:
        engine: the engine: a ``.plan`` file (in a bundle:
            ``engine-<gpu>-<sm>-trt<version>-<precision>.plan``), its bytes, or a
            callable returning either (called once, here).
        plugins: plugin libraries to load before deserialising (only from the
            bundle or a path the user names).
        cuda_graph: capture the engine's launch in a CUDA graph after the first
            inference and replay it (lower launch overhead). Needs an engine with
            static shapes and cuda-python; if capture fails, the backend logs a
            warning and runs without.
        device: the CUDA device ordinal.
        dla_core: the DLA core an engine built for DLA runs on (TensorRT's
            ``Runtime.DLA_core``, set before deserialising); None for GPU engines.
        stream: a pycuda ``Stream`` to enqueue on, another backend's (engines chained
            on one stream, see :class:`TensorRTCrfChain`); None: a stream of its own.

    Raises:
        MissingDependencyError: tensorrt, pycuda (or, for ``cuda_graph``, cuda-python) missing.
        BackendError: the file cannot be read or deserialised (e.g. built by
            another TensorRT version), a plugin library cannot be loaded, no such device.
        ConfigError: ``cuda_graph`` with an engine whose shapes are dynamic.
    """

    name = "tensorrt"

    def __init__(
        self,
        engine: EngineSource,
        *,
        plugins: Sequence[str | os.PathLike[str]] = (),
        cuda_graph: bool = False,
        device: int = 0,
        dla_core: int | None = None,
        stream: Any = None,
    ) -> None:
        self._closed = True  # until everything below exists; close() then frees what does
        require_tensorrt()
        import tensorrt as trt

        cuda = import_pycuda()
        self._cuda = cuda
        self._cudart: Any = import_cudart() if cuda_graph else None
        self._path, data = _engine_bytes(engine)
        cuda.init()
        count = int(cuda.Device.count())
        if isinstance(device, bool) or not isinstance(device, int) or not 0 <= device < count:
            raise BackendError(
                f"CUDA device {device!r} does not exist: this machine has {count} GPU(s)"
            )
        gpu = cuda.Device(device)
        self._device_index = device
        self._device_name = str(gpu.name())
        self._ctx: Any = gpu.retain_primary_context()
        self._trt_version = str(trt.__version__)
        self._tensors: dict[str, _Tensor] = {}
        self._graph: _CudaGraph | None = None
        self._graph_wanted = bool(cuda_graph)
        self._graph_error: str | None = None
        self._timings: dict[str, float] = {}
        self._runs = 0
        self._ctx.push()
        try:
            self._logger = make_logger()
            load_plugin_libraries(self._logger, plugins)
            self._runtime = trt.Runtime(self._logger)
            if dla_core is not None:
                self._runtime.DLA_core = int(dla_core)
            cuda_engine = self._runtime.deserialize_cuda_engine(data)
            if cuda_engine is None:
                raise BackendError(
                    f"TensorRT {self._trt_version} cannot deserialize {self._path} (built by "
                    "another TensorRT version or for another GPU, or a plugin it needs is not "
                    f"loaded){logged_errors(self._logger)}"
                )
            self._engine: trt.ICudaEngine = cuda_engine
            self._context: trt.IExecutionContext = cuda_engine.create_execution_context()
            self._stream: Any = stream if stream is not None else cuda.Stream()
            self._events: list[Any] = [cuda.Event() for _ in range(4)]
            for i in range(cuda_engine.num_io_tensors):
                name = cuda_engine.get_tensor_name(i)
                dtype_name = cuda_engine.get_tensor_dtype(name).name
                if dtype_name not in _NUMPY_DTYPES:
                    raise BackendError(
                        f"{self._path.name}: tensor {name!r} has TensorRT type {dtype_name}, which "
                        "has no NumPy equivalent here"
                    )
                dims = cuda_engine.get_tensor_shape(name)
                shape = tuple(int(dims[d]) for d in range(len(dims)))
                tensor = _Tensor(
                    name=name,
                    is_input=cuda_engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT,
                    dtype=_NUMPY_DTYPES[dtype_name],
                    engine_shape=shape,
                )
                self._tensors[name] = tensor
                if not tensor.dynamic:  # static: allocate and bind once
                    tensor.shape = shape
                    self._reserve(tensor)
            self._inputs = [t.name for t in self._tensors.values() if t.is_input]
            self._outputs = [t.name for t in self._tensors.values() if not t.is_input]
            if cuda_graph and any(t.dynamic for t in self._tensors.values()):
                raise ConfigError(
                    f"cuda_graph=True needs an engine with static shapes; {self._path.name} has "
                    "dynamic ones (build the bundle without --dynamic, or run without CUDA graphs)"
                )
        except BaseException:
            self._release()
            self._ctx.pop()
            self._ctx.detach()
            raise
        self._ctx.pop()
        self._closed = False

    # -- properties --------------------------------------------------------------------------

    @property
    def input_names(self) -> Sequence[str]:
        return self._inputs

    @property
    def output_names(self) -> Sequence[str]:
        return self._outputs

    @property
    def description(self) -> str:
        graph = ", CUDA graph" if self._graph is not None else ""
        return f"tensorrt {self._trt_version} on {self._device_name}{graph}"

    @property
    def engine_path(self) -> Path:
        return self._path

    @property
    def device_index(self) -> int:
        """The CUDA device ordinal the engine runs on."""
        return self._device_index

    @property
    def stream(self) -> Any:
        """The pycuda ``Stream`` every inference is enqueued on."""
        return self._stream

    def device_address(self, name: str) -> int:
        """The device address tensor ``name`` is bound to (its buffer, or the linked one).

        Valid until the buffer grows (a dynamic input larger than any before).

        Raises:
            BackendError: no such tensor, or it has no buffer yet (a dynamic tensor
                before the first inference).
        """
        self._require_open()
        tensor = self._tensors.get(name)
        if tensor is None:
            raise BackendError(f"{self._path.name} has no tensor {name!r}")
        if tensor.linked is not None:
            return tensor.linked
        if tensor.device is None:
            raise BackendError(f"tensor {name!r} of {self._path.name} has no buffer yet")
        return int(tensor.device)

    @property
    def last_gpu_ms(self) -> float | None:
        """GPU ms of the last inference's engine execution (CUDA events), None before the first."""
        return self._timings.get("compute")

    @property
    def last_timings(self) -> dict[str, float]:
        """GPU milliseconds of the last inference: ``h2d`` copies, ``compute``, ``d2h`` copies."""
        return dict(self._timings)

    @property
    def cuda_graph_active(self) -> bool:
        """True when inferences replay a captured CUDA graph."""
        return self._graph is not None

    @property
    def cuda_graph_error(self) -> str | None:
        """Why CUDA-graph capture was given up, if it was."""
        return self._graph_error

    def tensors(self) -> dict[str, TensorInfo]:
        return {
            t.name: TensorInfo(
                t.name,
                t.dtype.name,
                tuple(d if d >= 0 else None for d in t.engine_shape),
                t.is_input,
            )
            for t in self._tensors.values()
        }

    def input_shape(self, name: str) -> list[int | None]:
        """The engine's shape of input ``name``; None for dynamic dimensions."""
        tensor = self._tensors.get(name)
        if tensor is None or not tensor.is_input:
            raise BackendError(f"{self._path} has no input {name!r}")
        return [d if d >= 0 else None for d in tensor.engine_shape]

    def profile_shapes(self, name: str) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
        """(min, opt, max) shapes of input ``name`` in the engine's optimisation profile 0."""
        self._require_open()
        shapes = self._engine.get_tensor_profile_shape(name, 0)
        out = [tuple(int(s[d]) for d in range(len(s))) for s in shapes]
        return out[0], out[1], out[2]

    def memory_info(self) -> tuple[int, int]:
        """(free, total) bytes of device memory (``pycuda.driver.mem_get_info``)."""
        self._require_open()
        self._ctx.push()
        try:
            free, total = self._cuda.mem_get_info()
        finally:
            self._ctx.pop()
        return int(free), int(total)

    # -- inference ---------------------------------------------------------------------------

    def infer(
        self, feeds: Mapping[str, np.ndarray], outputs: Sequence[str] | None = None
    ) -> dict[str, np.ndarray]:
        self._require_open()
        names = list(outputs) if outputs is not None else list(self._outputs)
        unknown = [n for n in names if n not in self._outputs]
        if unknown:
            raise BackendError(
                f"{self._path.name} has no output {', '.join(map(repr, unknown))}; it has "
                f"{', '.join(self._outputs)}"
            )
        fed = self._fed_inputs()
        missing = [n for n in fed if n not in feeds]
        extra = [n for n in feeds if n not in fed]
        if missing or extra:
            raise BackendError(
                f"{self._path.name} takes inputs {', '.join(fed)}; "
                + (f"missing {', '.join(missing)}" if missing else f"unknown {', '.join(extra)}")
            )
        self._ctx.push()
        try:
            arrays = self._prepare(feeds)
            return self._run(arrays, names)
        finally:
            self._ctx.pop()

    def _prepare(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Checks the feeds, sets input shapes, (re)allocates and binds buffers."""
        arrays: dict[str, np.ndarray] = {}
        reshaped = False
        for name in self._fed_inputs():
            tensor = self._tensors[name]
            array = np.ascontiguousarray(feeds[name])
            if array.dtype != tensor.dtype:
                raise BackendError(
                    f"input {name!r} of {self._path.name} is {tensor.dtype}, got {array.dtype}"
                )
            if array.ndim != len(tensor.engine_shape) or any(
                e >= 0 and e != s for e, s in zip(tensor.engine_shape, array.shape, strict=True)
            ):
                raise BackendError(
                    f"input {name!r} of {self._path.name} has shape {tensor.engine_shape} "
                    f"(-1: any size in the profile), got {array.shape}"
                )
            if tensor.dynamic and array.shape != tensor.shape:
                if not self._context.set_input_shape(name, array.shape):
                    low, _, high = self.profile_shapes(name)
                    raise BackendError(
                        f"input {name!r} shape {array.shape} is outside {self._path.name}'s "
                        f"optimisation profile {low}..{high}; rebuild the engine with a larger "
                        "--max-shape (or a smaller --min-shape)"
                    )
                tensor.shape = tuple(array.shape)
                self._reserve(tensor)
                reshaped = True
            arrays[name] = array
        if reshaped:
            for name in self._outputs:
                tensor = self._tensors[name]
                if not tensor.dynamic:
                    continue
                dims = self._context.get_tensor_shape(name)
                shape = tuple(int(dims[d]) for d in range(len(dims)))
                if any(d < 0 for d in shape):
                    raise BackendError(
                        f"output {name!r} of {self._path.name} has a data-dependent shape {shape}, "
                        "which this backend does not support"
                    )
                tensor.shape = shape
                self._reserve(tensor)
        return arrays

    def _reserve(self, tensor: _Tensor) -> None:
        """Makes the tensor's buffers hold its current shape (growing only) and binds them.

        A linked input is bound to the address it is linked to and has no buffers.
        """
        if tensor.linked is not None:
            if not self._context.set_tensor_address(tensor.name, tensor.linked):
                raise BackendError(f"TensorRT refused the address of tensor {tensor.name!r}")
            return
        needed = max(tensor.nbytes, 1)
        if needed > tensor.capacity:
            if tensor.device is not None:
                tensor.device.free()
            tensor.device = None
            tensor.host = None
            tensor.device = self._cuda.mem_alloc(needed)
            tensor.host = self._cuda.pagelocked_empty(needed, np.uint8)
            tensor.capacity = needed
            if self._graph is not None:  # addresses changed: a captured graph is stale
                self._graph.destroy()
                self._graph = None
        if not self._context.set_tensor_address(tensor.name, int(tensor.device)):
            raise BackendError(f"TensorRT refused the buffer of tensor {tensor.name!r}")

    def _fed_inputs(self) -> list[str]:
        """The inputs fed from the host: all but those linked to another engine's buffer."""
        return [n for n in self._inputs if self._tensors[n].linked is None]

    def _link(self, name: str, address: int) -> None:
        """Binds input ``name`` to ``address``, another engine's device buffer, from now on.

        The input then has no buffers of its own and gets no host-to-device copy:
        the engine reads what the other engine wrote there, on the same stream.
        A captured CUDA graph is dropped when the address changes.
        """
        tensor = self._tensors[name]
        if not tensor.is_input:
            raise BackendError(f"{self._path.name}: only an input can be linked, not {name!r}")
        if tensor.linked == address:
            return
        if tensor.device is not None:
            tensor.device.free()
        tensor.device, tensor.host, tensor.capacity = None, None, 0
        tensor.linked = address
        if self._graph is not None:
            self._graph.destroy()
            self._graph = None
        self._reserve(tensor)

    def _copy_in(self, arrays: Mapping[str, np.ndarray]) -> None:
        """Enqueues the host-to-device copies of the inputs (through the page-locked buffers)."""
        for name, array in arrays.items():
            tensor = self._tensors[name]
            np.copyto(tensor.host_view(), array)
            self._cuda.memcpy_htod_async(tensor.device, tensor.host_bytes(), self._stream)

    def _execute(self) -> None:
        """Enqueues the engine (or the captured CUDA graph) on the stream."""
        if self._graph is not None:
            _cudart_check(
                self._graph.cudart,
                self._graph.cudart.cudaGraphLaunch(self._graph.exec, self._stream.handle),
                f"launching the CUDA graph of {self._path.name}",
            )
        elif not self._context.execute_async_v3(self._stream.handle):
            raise BackendError(
                f"TensorRT failed to run {self._path.name}{logged_errors(self._logger)}"
            )

    def _copy_out(self, names: Sequence[str]) -> None:
        """Enqueues the device-to-host copies of outputs ``names``."""
        for name in names:
            tensor = self._tensors[name]
            self._cuda.memcpy_dtoh_async(tensor.host_bytes(), tensor.device, self._stream)

    def _results(self, names: Sequence[str]) -> dict[str, np.ndarray]:
        """Outputs ``names`` as arrays (copies: the page-locked buffers are reused next time)."""
        return {name: np.array(self._tensors[name].host_view(), copy=True) for name in names}

    def _run(self, arrays: Mapping[str, np.ndarray], names: Sequence[str]) -> dict[str, np.ndarray]:
        start, copied, computed, done = self._events
        start.record(self._stream)
        self._copy_in(arrays)
        copied.record(self._stream)
        self._execute()
        computed.record(self._stream)
        self._copy_out(names)
        done.record(self._stream)
        self._stream.synchronize()
        self._timings = {
            "h2d": float(start.time_till(copied)),
            "compute": float(copied.time_till(computed)),
            "d2h": float(computed.time_till(done)),
        }
        results = self._results(names)
        self._runs += 1
        if self._graph_wanted and self._graph is None and self._graph_error is None:
            self._capture()  # after one ordinary run, which did TensorRT's lazy set-up
        return results

    def _capture(self) -> None:
        """Captures ``execute_async_v3`` into a CUDA graph; on failure, logs and runs without."""
        try:
            self._graph = _capture_graph(
                self._cudart, self._stream.handle, [(self._context, self._path.name)], self._logger
            )
        except BackendError as err:
            self._graph_error = str(err)
            log.warning(
                "CUDA graph capture of %s failed, running without: %s", self._path.name, err
            )
            return
        log.info("captured %s in a CUDA graph", self._path.name)

    # -- lifetime ----------------------------------------------------------------------------

    def _require_open(self) -> None:
        if self._closed:
            raise BackendError(f"the tensorrt backend for {self._path} is closed")

    def _release(self) -> None:
        """Frees what exists, in the backend's context (pushed by the caller)."""
        if getattr(self, "_graph", None) is not None:
            assert self._graph is not None
            self._graph.destroy()
            self._graph = None
        for tensor in getattr(self, "_tensors", {}).values():
            if tensor.device is not None:
                tensor.device.free()
            tensor.device = None
            tensor.host = None
        for attribute in ("_context", "_engine", "_runtime", "_stream", "_events"):
            if hasattr(self, attribute):
                delattr(self, attribute)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._ctx.push()
        try:
            self._release()
        finally:
            self._ctx.pop()
            self._ctx.detach()  # gives back this backend's retain of the primary context


class TensorRTCrfChain(Backend):
    """A model engine and a bundle's separate CRF engine, chained on the GPU.

    The CRF engine's inputs are bound (``set_tensor_address``) to the model
    engine's device buffers: its ``image`` to the model's input buffer, its
    ``logits`` to the model's output buffer. Both engines are enqueued on the
    model's CUDA stream, so the CRF reads the logits where the model wrote them,
    with no device-to-host-to-device round trip. Only the outputs asked for come
    back to the host: the CRF's ``mask`` (and ``probs``), and the model's
    ``logits`` only when asked for by name.

    CUDA graphs: with ``cuda_graph=True`` both engines' launches are captured
    in **one** graph (model, then CRF, on the one stream) after the first
    ordinary run, and replayed together; the model backend captures nothing
    itself. If capture fails, the pair runs without a graph and
    :attr:`cuda_graph_error` says why, as for a single engine. With a graph,
    ``last_timings["compute"]`` covers both engines and there is no ``crf`` figure.

    Args:
        model: the model engine's backend (opened without ``cuda_graph``). The chain
            takes it over: closing the chain closes it, and so does a failure here.
        crf_engine: the CRF engine (``engine-...-crf.plan``), its bytes, or a callable.
        cuda_graph: capture both engines in one CUDA graph (static shapes, cuda-python).

    Raises:
        BackendError: the CRF engine cannot be loaded, or its inputs do not fit the
            model's tensors (names, dtypes, shapes).
        ConfigError: ``cuda_graph`` with a model engine whose shapes are dynamic.
        MissingDependencyError: ``cuda_graph`` without cuda-python.
    """

    name = "tensorrt"
    LINKS = {"image": "image", "logits": "logits"}  # CRF input -> the model tensor it reads

    def __init__(
        self, model: TensorRTBackend, crf_engine: EngineSource, *, cuda_graph: bool = False
    ) -> None:
        self._closed = True
        self._model = model
        self._crf: TensorRTBackend | None = None
        self._graph: _CudaGraph | None = None
        try:
            self._cudart: Any = import_cudart() if cuda_graph else None
            if cuda_graph and any(t.dynamic for t in model._tensors.values()):
                raise ConfigError(
                    f"cuda_graph=True needs an engine with static shapes; {model.engine_path.name} "
                    "has dynamic ones (build the bundle without --dynamic, or run without CUDA "
                    "graphs)"
                )
            self._crf = TensorRTBackend(crf_engine, device=model.device_index, stream=model.stream)
            self._check_links(self._crf)
            if not any(t.dynamic for t in model._tensors.values()):  # its buffers exist: bind now
                model._ctx.push()
                try:
                    self._link_buffers(self._crf)
                finally:
                    model._ctx.pop()
        except BaseException:
            if self._crf is not None:
                self._crf.close()
            model.close()
            raise
        self._graph_wanted = bool(cuda_graph)
        self._graph_error: str | None = None
        self._timings: dict[str, float] = {}
        self._events: list[Any] = []
        self._outputs = list(self._crf.output_names) + [
            n for n in model.output_names if n not in self._crf.output_names
        ]
        self._closed = False

    def _check_links(self, crf: TensorRTBackend) -> None:
        """Every CRF input reads a model tensor of the same dtype (and, where static, shape)."""
        model = self._model
        for name in crf.input_names:
            source = self.LINKS.get(name)
            theirs = model._tensors.get(source) if source is not None else None
            ours = crf._tensors[name]
            if theirs is None:
                raise BackendError(
                    f"the CRF engine {crf.engine_path.name} takes input {name!r}, which the model "
                    f"engine {model.engine_path.name} does not give (it has "
                    f"{', '.join(model._tensors)}); the CRF reads the model's image and logits"
                )
            if theirs.dtype != ours.dtype:
                raise BackendError(
                    f"the CRF engine {crf.engine_path.name} takes {name!r} as {ours.dtype}, but "
                    f"the model engine {model.engine_path.name} has it as {theirs.dtype}"
                )
            if not theirs.dynamic and not ours.dynamic and theirs.engine_shape != ours.engine_shape:
                raise BackendError(
                    f"the CRF engine {crf.engine_path.name} takes {name!r} of shape "
                    f"{ours.engine_shape}, but the model engine {model.engine_path.name} has "
                    f"{theirs.engine_shape}"
                )

    # -- properties --------------------------------------------------------------------------

    @property
    def model(self) -> TensorRTBackend:
        """The model engine's backend."""
        return self._model

    @property
    def crf(self) -> TensorRTBackend:
        """The CRF engine's backend (its inputs linked to the model's buffers)."""
        self._require_open()
        assert self._crf is not None
        return self._crf

    @property
    def input_names(self) -> Sequence[str]:
        return self._model.input_names

    @property
    def output_names(self) -> Sequence[str]:
        """The CRF's outputs (``mask``, ``probs``), then the model's others (``logits``)."""
        return self._outputs

    @property
    def description(self) -> str:
        graph = ", CUDA graph" if self._graph is not None else ""
        crf = self._crf.engine_path.name if self._crf is not None else "closed"
        return f"{self._model.description} with the CRF engine {crf}{graph}"

    @property
    def engine_path(self) -> Path:
        return self._model.engine_path

    @property
    def last_timings(self) -> dict[str, float]:
        """GPU milliseconds of the last inference: ``h2d``, ``compute`` (the model engine),
        ``crf`` (the CRF engine), ``d2h``; with a CUDA graph ``compute`` is both engines and
        there is no ``crf``."""
        return dict(self._timings)

    @property
    def last_gpu_ms(self) -> float | None:
        """GPU ms of both engines in the last inference, None before the first."""
        if "compute" not in self._timings:
            return None
        return self._timings["compute"] + self._timings.get("crf", 0.0)

    @property
    def cuda_graph_active(self) -> bool:
        return self._graph is not None

    @property
    def cuda_graph_error(self) -> str | None:
        return self._graph_error

    def tensors(self) -> dict[str, TensorInfo]:
        """The model engine's tensors (what the manifest describes; see ``check_graph``)."""
        return self._model.tensors()

    # -- inference ---------------------------------------------------------------------------

    def infer(
        self, feeds: Mapping[str, np.ndarray], outputs: Sequence[str] | None = None
    ) -> dict[str, np.ndarray]:
        """Runs the model engine, then the CRF engine on its device buffers; one synchronise.

        Args:
            feeds: the model's inputs (``image``).
            outputs: any of :attr:`output_names` (default: all). ``mask`` and ``probs``
                are the CRF's; the model's ``logits`` are copied back only when named.
        """
        self._require_open()
        crf, model = self.crf, self._model
        names = list(outputs) if outputs is not None else list(self._outputs)
        unknown = [n for n in names if n not in self._outputs]
        if unknown:
            raise BackendError(
                f"{model.engine_path.name} with the CRF engine has no output "
                f"{', '.join(map(repr, unknown))}; it has {', '.join(self._outputs)}"
            )
        crf_names = [n for n in names if n in crf.output_names]
        model_names = [n for n in names if n not in crf.output_names]
        model._require_open()
        fed = model.input_names
        if sorted(feeds) != sorted(fed):
            raise BackendError(
                f"{model.engine_path.name} takes inputs {', '.join(fed)}; got "
                f"{', '.join(feeds) or 'none'}"
            )
        model._ctx.push()
        try:
            arrays = model._prepare(feeds)
            self._link_buffers(crf)
            return self._run(crf, arrays, model_names, crf_names)
        finally:
            model._ctx.pop()

    def _link_buffers(self, crf: TensorRTBackend) -> None:
        """Binds the CRF's inputs to the model's current device buffers (after any growth)."""
        model = self._model
        for name, source in self.LINKS.items():
            if name not in crf._tensors:
                continue
            theirs, ours = model._tensors[source], crf._tensors[name]
            if theirs.shape != ours.engine_shape:
                raise BackendError(
                    f"the CRF engine {crf.engine_path.name} takes {name!r} of shape "
                    f"{ours.engine_shape}, but the model gave {theirs.shape}: a separate CRF runs "
                    "at the bundle's input size only"
                )
            address = model.device_address(source)
            if ours.linked != address and self._graph is not None:
                self._graph.destroy()  # the captured launches read the old address
                self._graph = None
            crf._link(name, address)

    def _run(
        self,
        crf: TensorRTBackend,
        arrays: Mapping[str, np.ndarray],
        model_names: Sequence[str],
        crf_names: Sequence[str],
    ) -> dict[str, np.ndarray]:
        model, stream = self._model, self._model.stream
        if not self._events:
            self._events = [model._cuda.Event() for _ in range(5)]
        start, copied, computed, refined, done = self._events
        start.record(stream)
        model._copy_in(arrays)
        copied.record(stream)
        if self._graph is not None:
            _cudart_check(
                self._graph.cudart,
                self._graph.cudart.cudaGraphLaunch(self._graph.exec, stream.handle),
                f"launching the CUDA graph of {model.engine_path.name} and the CRF engine",
            )
            computed.record(stream)
            refined.record(stream)
        else:
            model._execute()
            computed.record(stream)
            crf._execute()  # on the same stream: it starts when the model's logits are written
            refined.record(stream)
        model._copy_out(model_names)
        crf._copy_out(crf_names)
        done.record(stream)
        stream.synchronize()
        self._timings = {
            "h2d": float(start.time_till(copied)),
            "compute": float(copied.time_till(computed)),
            "d2h": float(refined.time_till(done)),
        }
        if self._graph is None:
            self._timings["crf"] = float(computed.time_till(refined))
        results = {**model._results(model_names), **crf._results(crf_names)}
        if self._graph_wanted and self._graph is None and self._graph_error is None:
            self._capture(crf)  # after one ordinary run of both, which did TensorRT's set-up
        return results

    def _capture(self, crf: TensorRTBackend) -> None:
        """Captures both engines' launches in one CUDA graph; on failure, logs and runs without."""
        model = self._model
        try:
            self._graph = _capture_graph(
                self._cudart,
                model.stream.handle,
                [(model._context, model.engine_path.name), (crf._context, crf.engine_path.name)],
                model._logger,
            )
        except BackendError as err:
            self._graph_error = str(err)
            log.warning(
                "CUDA graph capture of %s and the CRF engine failed, running without: %s",
                model.engine_path.name,
                err,
            )
            return
        log.info(
            "captured %s and %s in one CUDA graph", model.engine_path.name, crf.engine_path.name
        )

    # -- lifetime ----------------------------------------------------------------------------

    def _require_open(self) -> None:
        if self._closed:
            raise BackendError(f"the tensorrt backend for {self._model.engine_path} is closed")

    def close(self) -> None:
        """Closes the CRF engine (it reads the model's buffers), then the model engine."""
        if self._closed:
            return
        self._closed = True
        self._model._ctx.push()
        try:
            if self._graph is not None:
                self._graph.destroy()
                self._graph = None
            self._events = []  # freed in the context they were made in
        finally:
            self._model._ctx.pop()
        try:
            if self._crf is not None:
                self._crf.close()
        finally:
            self._model.close()
