"""Legacy implicit INT8 for TensorRT 10.x: an entropy calibrator and its builder settings.

edgeseg's INT8 path is an explicit Q/DQ graph (``model.int8.onnx``) built as a
strongly typed network; that is the only INT8 TensorRT 11 offers. This module
is the *legacy* path for TensorRT 10.x, which DLA on JetPack 6 (TensorRT 10.3)
still needs: ``IInt8EntropyCalibrator2`` fed from our calibration set, with
TensorRT's calibration cache read and written through
`calibration.tensorrt_cache`.

TensorRT 11 removed ``IInt8EntropyCalibrator2``, ``IBuilderConfig.int8_calibrator``
and ``BuilderFlag.INT8``/``FP16``. This module still imports there (so that the
error is ours), but `EntropyCalibrator` and `legacy_int8_config` raise
`ConfigError` pointing at the Q/DQ graph. The code is type-checked with
``tools/typecheck_tensorrt.py`` against ``tensorrt-stubs`` 10.13, which still
describe these names; the runtime guard, not the type check, covers 11.x.

Importing this module needs TensorRT (``MissingDependencyError`` otherwise);
pycuda is imported when the first batch is copied. **A CUDA context must be
current** when TensorRT calls `EntropyCalibrator.get_batch` (during
``builder.build_serialized_network``): this module never creates one; callers
use Polygraphy (which makes one) or ``import pycuda.autoinit``.

Example (TensorRT 10.x)::

    calibrator = EntropyCalibrator(images, cache_path="bundle/calibration.cache")
    legacy_int8_config(builder, config, calibrator, dla_core=0)
    plan = builder.build_serialized_network(network, config)
    calibrator.raise_if_failed()  # TensorRT only logs errors raised in callbacks
    calibrator.close()
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from calibration.tensorrt_cache import (
    CACHE_ALGORITHM,
    atomic_write_bytes,
    check_cache_version,
    parse_cache,
)
from edgeseg.errors import BackendError, ConfigError, MissingDependencyError

try:
    import tensorrt as trt
except ImportError as _err:
    raise MissingDependencyError(
        "the legacy TensorRT INT8 calibrator needs TensorRT 10.x's Python package: on Jetson "
        "it comes with JetPack (sudo apt install python3-libnvinfer); elsewhere "
        "pip install 'tensorrt>=10.3,<11' on a machine with an NVIDIA GPU"
    ) from _err

if TYPE_CHECKING:
    from tensorrt import IInt8EntropyCalibrator2 as _CalibratorBase
    from typing_extensions import Buffer
else:  # TensorRT 11 has no IInt8EntropyCalibrator2: keep the module importable
    _CalibratorBase = getattr(trt, "IInt8EntropyCalibrator2", object)

__all__ = ["EntropyCalibrator", "legacy_int8_config", "trt_major_version"]

log = logging.getLogger(__name__)

_REMOVED_IN_11 = (
    "the implicit INT8 calibrator (IInt8EntropyCalibrator2, BuilderFlag.INT8, "
    "IBuilderConfig.int8_calibrator) was removed in TensorRT 11 and this is TensorRT {version}; "
    "use the explicit Q/DQ graph (model.int8.onnx) instead, built as a strongly typed network"
)


def trt_major_version() -> int:
    """The major version of the imported TensorRT (``tensorrt.__version__``)."""
    version = str(trt.__version__)
    try:
        return int(version.split(".", 1)[0])
    except ValueError as err:
        raise BackendError(f"cannot read TensorRT's version from {version!r}") from err


def _require_trt10() -> None:
    if trt_major_version() >= 11:
        raise ConfigError(_REMOVED_IN_11.format(version=trt.__version__))


def _import_cuda() -> Any:
    """``pycuda.driver``, or MissingDependencyError with the install hint."""
    try:
        import pycuda.driver as cuda
    except ImportError as err:
        raise MissingDependencyError(
            "feeding the TensorRT calibrator needs pycuda: pip install pycuda "
            "(it builds against the CUDA toolkit; on Jetson against JetPack's CUDA)"
        ) from err
    return cuda


class EntropyCalibrator(_CalibratorBase):
    """``IInt8EntropyCalibrator2`` over a uint8 NHWC calibration set (TensorRT 10.x only).

    The graph's input (``image`` by default) is uint8 NHWC and normalisation
    happens inside the ONNX graph, so images go to the GPU as they are. Each
    batch is copied into page-locked host memory, then into one device
    buffer, whose address TensorRT receives. TensorRT 10 networks have an
    explicit batch dimension: TensorRT takes the input's shape from the
    network (or its calibration profile), so ``batch_size`` must equal the
    input's batch dimension during calibration (1 for edgeseg's bundles).
    Images past the last whole batch are not used.

    The cache file, when it exists, is validated at construction (parsed
    strictly, written by this TensorRT version and by an entropy-2
    calibrator) so a bad cache is a `ConfigError` before the build rather
    than something TensorRT silently ignores. When it is valid, TensorRT
    takes the scales from it and asks for no batches, so ``images`` may then
    be empty (``(0, H, W, C)``).

    TensorRT calls the methods below from C++ and only logs what they raise;
    the error is kept in `last_error` and `raise_if_failed` raises it.
    """

    def __init__(
        self,
        images: npt.NDArray[np.uint8],
        *,
        cache_path: str | os.PathLike[str] | None,
        input_name: str = "image",
        batch_size: int = 1,
    ) -> None:
        """Check the calibration set and the cache; no GPU work happens here.

        Args:
            images: ``(N, H, W, C)`` uint8 calibration images, in the layout
                of the graph's input.
            cache_path: TensorRT's calibration cache: read when it exists,
                (re)written after calibrating. ``None``: neither.
            input_name: The network input the images feed.
            batch_size: Images per batch; the input's batch dimension.

        Raises:
            ConfigError: TensorRT >= 11; bad images or batch size; a cache
                that is malformed, from another TensorRT version or of another
                calibration algorithm; no images and no cache.
        """
        _require_trt10()
        trt.IInt8EntropyCalibrator2.__init__(self)
        if not isinstance(images, np.ndarray) or images.ndim != 4 or images.dtype != np.uint8:
            raise ConfigError(
                "calibration images must be a (N, H, W, C) uint8 array, got "
                + (
                    f"{images.dtype} array of shape {images.shape}"
                    if isinstance(images, np.ndarray)
                    else type(images).__name__
                )
            )
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
        if not isinstance(input_name, str) or not input_name:
            raise ConfigError(f"input_name must be a non-empty string, got {input_name!r}")
        self.cache_path: Path | None = None if cache_path is None else Path(cache_path)
        self.input_name = input_name
        self.batch_size = batch_size
        self.images: npt.NDArray[np.uint8] = np.ascontiguousarray(images)
        self.num_batches = len(self.images) // batch_size
        has_cache = self._valid_cache() is not None
        if self.num_batches == 0 and not has_cache:
            raise ConfigError(
                f"calibration needs at least {batch_size} image(s) (batch_size) or an existing "
                f"calibration cache, got {len(self.images)} image(s) and "
                + ("no cache path" if self.cache_path is None else f"no file {self.cache_path}")
            )
        unused = len(self.images) - self.num_batches * batch_size
        if unused and self.num_batches:
            log.warning(
                "calibration uses %d of %d images: the last %d do not fill a batch of %d",
                self.num_batches * batch_size, len(self.images), unused, batch_size,
            )
        self.batches_done = 0
        self.written_cache: bytes | None = None
        self.last_error: BaseException | None = None
        self._host: npt.NDArray[np.uint8] | None = None
        self._device: Any = None

    # -- cache -------------------------------------------------------------------------------

    def _valid_cache(self) -> bytes | None:
        """The cache file's bytes after validation, None when there is no file."""
        if self.cache_path is None or not self.cache_path.is_file():
            return None
        source = f"calibration cache {self.cache_path}"
        try:
            data = self.cache_path.read_bytes()
        except OSError as err:
            raise ConfigError(f"cannot read {source}: {err.strerror or err}") from err
        cache = parse_cache(data, source=source)
        check_cache_version(cache, str(trt.__version__), source=source)
        if cache.algorithm != CACHE_ALGORITHM:
            raise ConfigError(
                f"{source} was written by a {cache.algorithm} calibrator ({cache.header()}) but "
                f"this one is {CACHE_ALGORITHM}; TensorRT would ignore it (delete it to calibrate "
                "again)"
            )
        return data

    def read_calibration_cache(self) -> bytes | None:  # type: ignore[override, unused-ignore]
        """The cache file's bytes for TensorRT, or None to calibrate (no file / no path).

        Raises:
            ConfigError: The file is malformed or from another TensorRT version
                or algorithm (also kept in `last_error`).
        """
        try:
            data = self._valid_cache()
        except BaseException as err:
            self.last_error = err
            raise
        if data is not None:
            log.info("TensorRT reads calibration cache %s", self.cache_path)
        return data

    def write_calibration_cache(self, cache: Buffer) -> None:
        """Keep TensorRT's new cache in `written_cache` and write it atomically to `cache_path`."""
        try:
            data = bytes(cache)
            self.written_cache = data
            try:
                count = len(parse_cache(data, source="the cache TensorRT wrote").scales)
            except ConfigError as err:  # still TensorRT's own bytes: keep them
                log.warning("%s; writing it unchanged", err)
            else:
                log.info("TensorRT wrote a calibration cache of %d tensors", count)
            if self.cache_path is not None:
                atomic_write_bytes(self.cache_path, data)
        except BaseException as err:
            self.last_error = err
            raise

    # -- batches -----------------------------------------------------------------------------

    def get_batch_size(self) -> int:
        """Images per batch (see the class docstring for explicit-batch networks)."""
        return self.batch_size

    def get_batch(  # type: ignore[override, unused-ignore]
        self, names: list[str]
    ) -> list[int] | None:
        """Copy the next batch to the GPU and return its device address.

        Args:
            names: The network inputs TensorRT wants, in order; only
                ``input_name`` is known here.

        Returns:
            ``[device pointer]``, or None when every batch has been given.

        Raises:
            ConfigError: TensorRT asks for inputs other than ``input_name``.
            BackendError: No current CUDA context or another CUDA failure.
            MissingDependencyError: pycuda is not installed.
        """
        try:
            return self._next_batch(list(names))
        except BaseException as err:
            self.last_error = err
            raise

    def _next_batch(self, names: list[str]) -> list[int] | None:
        if names != [self.input_name]:
            raise ConfigError(
                f"the calibrator feeds one input {self.input_name!r} but the network asks for "
                f"{names}"
            )
        if self.batches_done >= self.num_batches:
            return None
        start = self.batches_done * self.batch_size
        batch = self.images[start : start + self.batch_size]
        cuda = _import_cuda()
        try:
            if self._host is None:
                self._host = cuda.pagelocked_empty(batch.shape, dtype=np.uint8)
                self._device = cuda.mem_alloc(batch.nbytes)
            assert self._host is not None
            np.copyto(self._host, batch)
            cuda.memcpy_htod(self._device, self._host)
        except cuda.Error as err:
            raise BackendError(
                f"copying calibration batch {self.batches_done} to the GPU failed ({err}); "
                "a CUDA context must be current (use Polygraphy, or import pycuda.autoinit)"
            ) from err
        self.batches_done += 1
        if self.batches_done % 10 == 0 or self.batches_done == self.num_batches:
            log.info("calibration batch %d/%d", self.batches_done, self.num_batches)
        return [int(self._device)]

    def reset(self) -> None:
        """Start again from the first batch (for another build)."""
        self.batches_done = 0
        self.last_error = None

    def raise_if_failed(self) -> None:
        """Raise what a TensorRT callback raised (TensorRT itself only logs it)."""
        if self.last_error is not None:
            raise self.last_error

    def close(self) -> None:
        """Free the device and host buffers (needs the CUDA context they were made in)."""
        if self._device is not None:
            self._device.free()
        self._device = None
        self._host = None


def legacy_int8_config(
    builder: trt.Builder,
    config: trt.IBuilderConfig,
    calibrator: EntropyCalibrator,
    *,
    dla_core: int | None = None,
) -> None:
    """Set up ``config`` for implicit INT8 with ``calibrator`` (TensorRT 10.x only).

    Sets ``BuilderFlag.INT8`` and ``config.int8_calibrator``. With
    ``dla_core``, the network runs on that DLA core by default
    (``DeviceType.DLA``), with ``BuilderFlag.FP16`` for layers DLA cannot run
    in INT8 and ``BuilderFlag.GPU_FALLBACK`` for those it cannot run at all.
    The network must not be strongly typed (those take precision from the
    graph and refuse these flags).

    Args:
        builder: The builder (asked for its number of DLA cores).
        config: The builder configuration to change.
        calibrator: The calibrator TensorRT will call during the build.
        dla_core: A DLA core index (0 or 1 on AGX Orin), or None for the GPU.

    Raises:
        ConfigError: TensorRT >= 11 (the calibrator API is gone: use the Q/DQ
            graph ``model.int8.onnx``), or no such DLA core.
    """
    _require_trt10()
    config.set_flag(trt.BuilderFlag.INT8)
    config.int8_calibrator = calibrator
    if dla_core is None:
        return
    available = int(builder.num_DLA_cores)
    if isinstance(dla_core, bool) or not isinstance(dla_core, int) or not (
        0 <= dla_core < available
    ):
        raise ConfigError(
            f"DLA core {dla_core!r} does not exist: this device has {available} DLA core(s)"
            + (f" (0..{available - 1})" if available else "")
        )
    config.set_flag(trt.BuilderFlag.FP16)
    config.default_device_type = trt.DeviceType.DLA
    config.DLA_core = dla_core
    config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
