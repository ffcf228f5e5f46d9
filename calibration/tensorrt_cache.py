"""TensorRT's INT8 calibration cache: parse, write and build it without TensorRT.

The cache is the text file that TensorRT's implicit INT8 calibrators
(``IInt8EntropyCalibrator2`` and friends) read and write. It only matters for
the legacy implicit-INT8 path (TensorRT 10.x, DLA on JetPack 6); TensorRT 11
removed calibrators, and edgeseg's main INT8 path is an explicit Q/DQ graph.
The format comes from consumer code, not from an NVIDIA specification::

    TRT-100300-EntropyCalibration2
    image: 3c010204
    /backbone/conv1/Conv_output_0: 3d8c3f2a
    (Unnamed Layer* 5) [Constant]_output: 3c000000

The first line is ``TRT-<version>-<algorithm>``; ``<version>`` is TensorRT's
``NV_TENSORRT_VERSION`` integer (``major*10000 + minor*100 + patch`` since
TensorRT 10, e.g. ``100300`` for 10.3.0; ``major*1000 + minor*100 + patch``
before, e.g. ``8602`` for 8.6.2). Every further line is
``<tensor name>: <8 hex digits>``, the big-endian IEEE-754 float32 bit pattern
of the tensor's scale, which is about ``amax / 127``. TensorRT ignores a cache
whose header names another TensorRT version or calibration algorithm.

Tensor names are arbitrary strings (ONNX names hold ``/``, ``.``, ``:``,
spaces, brackets), so a line is split at its *last* ``": "``; a name holding a
newline cannot be written at all.

This module is pure Python (no numpy, no TensorRT) so that caches can be made
and checked on any CPU.
"""

from __future__ import annotations

import math
import os
import re
import struct
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from edgeseg.errors import ConfigError

__all__ = [
    "CACHE_ALGORITHM",
    "MIN_AMAX",
    "CalibrationCache",
    "atomic_write_bytes",
    "cache_from_ranges",
    "check_cache_version",
    "decode_scale",
    "encode_scale",
    "format_trt_version",
    "parse_cache",
    "read_cache",
    "trt_version_int",
    "write_cache",
]

CACHE_ALGORITHM = "EntropyCalibration2"
"""The algorithm name ``IInt8EntropyCalibrator2`` writes (the one DLA requires)."""

QMAX = 127.0
"""Largest INT8 magnitude used by symmetric quantization: scale = amax / 127."""

MIN_AMAX = 1e-8
"""Range given to a tensor whose calibrated range is zero (constant zero).

TensorRT needs a positive scale. With ``amax = 1e-8`` (scale ~7.9e-11) the
tensor still quantizes its calibrated values (zeros) exactly, anything
non-zero it meets later saturates to +-1e-8, i.e. stays practically zero, and
``1 / scale`` (~1.3e10) is far from float32 overflow.
"""

_HEADER = re.compile(r"TRT-(?P<version>[0-9]+)-(?P<algorithm>[A-Za-z][A-Za-z0-9_]*)")
_ALGORITHM = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
_HEX8 = re.compile(r"[0-9A-Fa-f]{8}")
_VERSION = re.compile(
    r"\s*(?P<major>[0-9]+)\.(?P<minor>[0-9]+)(?:\.(?P<patch>[0-9]+)(?:\.[0-9]+)*)?"
    r"(?:(?:a|b|rc|ea|dev|post)[0-9]*)?(?:[-+][0-9A-Za-z.+\-_]*)?\s*"
)
_SEPARATOR = ": "
_FLOAT32_MAX = 3.4028234663852886e38


def trt_version_int(version: str) -> int:
    """TensorRT's version integer (``NV_TENSORRT_VERSION``) of a version string.

    From TensorRT 10 on it is ``major*10000 + minor*100 + patch``; before 10 it
    was ``major*1000 + minor*100 + patch``. A build number (fourth field) and a
    suffix such as ``+cuda12.6`` or ``-1`` are ignored.

    Args:
        version: ``"10.3.0"``, ``"10.3.0.26"``, ``"11.4"`` (patch 0),
            ``"8.6.2.3"``, typically ``tensorrt.__version__``.

    Returns:
        ``100300``, ``100300``, ``110400``, ``8602`` for the examples above.

    Raises:
        ConfigError: ``version`` is not a version string, or a field is too
            large to be encoded.
    """
    if not isinstance(version, str):
        raise ConfigError(f"TensorRT version must be a string like '10.3.0', got {version!r}")
    match = _VERSION.fullmatch(version)
    if match is None:
        raise ConfigError(
            f"not a TensorRT version: {version!r} (expected 'major.minor[.patch[.build]]', "
            "e.g. '10.3.0')"
        )
    major = int(match["major"])
    minor = int(match["minor"])
    patch = int(match["patch"] or 0)
    if major >= 10:
        if minor > 99 or patch > 99:
            raise ConfigError(f"TensorRT version {version!r} has a field above 99")
        return major * 10000 + minor * 100 + patch
    if major < 1 or minor > 9 or patch > 99:
        raise ConfigError(f"TensorRT version {version!r} cannot be encoded as a TensorRT < 10 one")
    return major * 1000 + minor * 100 + patch


def format_trt_version(version: int) -> str:
    """``"major.minor.patch"`` of a TensorRT version integer (inverse of `trt_version_int`).

    Args:
        version: e.g. ``100300`` (10.3.0) or ``8602`` (8.6.2).

    Returns:
        The dotted version, e.g. ``"10.3.0"``.
    """
    if version >= 100000:
        return f"{version // 10000}.{version // 100 % 100}.{version % 100}"
    return f"{version // 1000}.{version // 100 % 10}.{version % 100}"


def _version_of(version: str | int) -> int:
    """A version integer from a version string or an already encoded integer."""
    if isinstance(version, bool) or not isinstance(version, (int, str)):
        raise ConfigError(f"TensorRT version must be a string or an integer, got {version!r}")
    if isinstance(version, int):
        if version <= 0:
            raise ConfigError(f"TensorRT version integer must be positive, got {version}")
        return version
    return trt_version_int(version)


def _float32(value: float) -> float:
    """``value`` rounded to float32 (ConfigError when it overflows float32)."""
    try:
        return float(struct.unpack(">f", struct.pack(">f", value))[0])
    except OverflowError as err:
        raise ConfigError(f"scale {value!r} does not fit in a float32") from err


def _hex32(value: float) -> str:
    """8 lowercase hex digits of the big-endian float32 bit pattern of ``value``."""
    try:
        return struct.pack(">f", value).hex()
    except OverflowError as err:
        raise ConfigError(f"scale {value!r} does not fit in a float32") from err


def encode_scale(scale: float) -> str:
    """The cache text of one scale: 8 lowercase hex digits, big-endian float32.

    Args:
        scale: A finite positive scale (``amax / 127``).

    Returns:
        e.g. ``"3f800000"`` for 1.0, ``"3c000000"`` for 0.0078125.

    Raises:
        ConfigError: ``scale`` is not finite, is zero or negative, or overflows
            float32.
    """
    if isinstance(scale, bool) or not isinstance(scale, (int, float)):
        raise ConfigError(f"scale must be a number, got {scale!r}")
    if not math.isfinite(scale) or scale <= 0:
        raise ConfigError(f"scale must be finite and positive, got {scale!r}")
    if _float32(scale) == 0.0:
        raise ConfigError(f"scale {scale!r} underflows to 0 in float32")
    return _hex32(scale)


def decode_scale(text: str) -> float:
    """The float32 value of 8 hex digits (either case) of the cache format.

    Args:
        text: e.g. ``"3c000000"``.

    Returns:
        e.g. ``0.0078125``. No range check: `parse_cache` checks the value.

    Raises:
        ConfigError: ``text`` is not exactly 8 hex digits.
    """
    if not isinstance(text, str) or _HEX8.fullmatch(text) is None:
        raise ConfigError(f"a scale must be 8 hex digits (big-endian float32), got {text!r}")
    return float(struct.unpack(">f", bytes.fromhex(text))[0])


def _check_name(name: object) -> str:
    if not isinstance(name, str):
        raise ConfigError(f"tensor names must be strings, got {name!r}")
    if not name:
        raise ConfigError("a calibration cache cannot hold an empty tensor name")
    if "\n" in name or "\r" in name:
        raise ConfigError(
            f"tensor name {name!r} holds a line break; the calibration cache cannot store it"
        )
    return name


def _check_stored_scale(name: str, scale: object) -> float:
    """A scale a cache may hold: finite and >= 0 (0 only as read from a file)."""
    if isinstance(scale, bool) or not isinstance(scale, (int, float)):
        raise ConfigError(f"scale of tensor {name!r} must be a number, got {scale!r}")
    value = float(scale)
    if not math.isfinite(value) or value < 0 or math.copysign(1.0, value) < 0:
        raise ConfigError(
            f"scale of tensor {name!r} must be finite and not negative, got {scale!r}"
        )
    return _float32(value)


@dataclass(frozen=True)
class CalibrationCache:
    """The contents of a TensorRT calibration cache.

    Scales are stored as float32 values (rounded on construction), in the
    order given, which is the order they are written in.

    Attributes:
        version: TensorRT's version integer, e.g. ``100300`` for 10.3.0.
        algorithm: The calibrator's algorithm name, e.g. ``"EntropyCalibration2"``.
        scales: Tensor name -> scale (float32 value, about amax / 127). Scales
            are finite and positive; a zero scale is kept only when read from a
            file (it cannot be written back).
    """

    version: int
    algorithm: str
    scales: dict[str, float]

    def __post_init__(self) -> None:
        if isinstance(self.version, bool) or not isinstance(self.version, int):
            raise ConfigError(f"cache version must be an integer, got {self.version!r}")
        if self.version <= 0:
            raise ConfigError(f"cache version must be positive, got {self.version}")
        if not isinstance(self.algorithm, str) or _ALGORITHM.fullmatch(self.algorithm) is None:
            raise ConfigError(
                f"calibration algorithm must be a name like {CACHE_ALGORITHM!r}, "
                f"got {self.algorithm!r}"
            )
        if not isinstance(self.scales, Mapping):
            raise ConfigError(f"scales must map tensor names to scales, got {self.scales!r}")
        checked = {_check_name(n): _check_stored_scale(n, s) for n, s in self.scales.items()}
        object.__setattr__(self, "scales", checked)

    def header(self) -> str:
        """The first line, e.g. ``"TRT-100300-EntropyCalibration2"``."""
        return f"TRT-{self.version}-{self.algorithm}"

    def to_text(self) -> str:
        """The cache file's text: header, one ``name: hex`` line per tensor, ``\\n`` endings.

        Raises:
            ConfigError: A scale is zero (only encodable scales are written).
        """
        lines = [self.header()]
        lines.extend(f"{name}{_SEPARATOR}{encode_scale(s)}" for name, s in self.scales.items())
        return "\n".join(lines) + "\n"

    def to_bytes(self) -> bytes:
        """`to_text` encoded as UTF-8 (what TensorRT reads)."""
        return self.to_text().encode("utf-8")

    def amax(self) -> dict[str, float]:
        """Tensor name -> the range the scale stands for (``scale * 127``)."""
        return {name: scale * QMAX for name, scale in self.scales.items()}


def _fail(source: str, lineno: int, line: str, why: str) -> ConfigError:
    return ConfigError(f"{source}, line {lineno}: {why}: {line!r}")


def parse_cache(data: bytes | str, *, source: str = "calibration cache") -> CalibrationCache:
    """Parse a calibration cache strictly.

    Accepts any ``TRT-<digits>-<Name>`` header (EntropyCalibration2,
    MinMaxCalibration, ...), ``\\n`` or ``\\r\\n`` line endings and a missing
    final newline; nothing else is skipped.

    Args:
        data: The file's bytes (UTF-8) or text.
        source: What to call the data in errors, e.g. the file's path.

    Returns:
        The parsed cache.

    Raises:
        ConfigError: Not UTF-8, empty, a bad header, or a line that is blank,
            lacks ``": "``, has no name, has no 8-hex-digit scale, a negative,
            infinite or NaN scale, or repeats a tensor. The message names
            ``source``, the line number and the line.
    """
    if isinstance(data, (bytes, bytearray, memoryview)):
        try:
            text = bytes(data).decode("utf-8")
        except UnicodeDecodeError as err:
            raise ConfigError(f"{source} is not UTF-8 text ({err})") from err
    elif isinstance(data, str):
        text = data
    else:
        raise ConfigError(f"{source}: expected bytes or str, got {type(data).__name__}")

    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the final newline
    if not lines:
        raise ConfigError(f"{source} is empty (expected a 'TRT-<version>-<algorithm>' line)")
    lines = [line[:-1] if line.endswith("\r") else line for line in lines]

    header = _HEADER.fullmatch(lines[0])
    if header is None:
        raise _fail(
            source, 1, lines[0], "expected a header 'TRT-<version>-<algorithm>', "
            f"e.g. 'TRT-100300-{CACHE_ALGORITHM}'"
        )
    version = int(header["version"])
    if version <= 0:
        raise _fail(source, 1, lines[0], "the TensorRT version must be positive")

    scales: dict[str, float] = {}
    first_seen: dict[str, int] = {}
    for lineno, line in enumerate(lines[1:], start=2):
        name, sep, value = line.rpartition(_SEPARATOR)
        if not sep:
            raise _fail(source, lineno, line, "expected '<tensor name>: <8 hex digits>'")
        if not name:
            raise _fail(source, lineno, line, "empty tensor name")
        if _HEX8.fullmatch(value) is None:
            raise _fail(source, lineno, line, "the scale must be 8 hex digits (big-endian float32)")
        scale = decode_scale(value)
        if not math.isfinite(scale) or scale < 0 or math.copysign(1.0, scale) < 0:
            raise _fail(source, lineno, line, f"the scale {scale!r} is negative or not finite")
        if name in scales:
            why = f"tensor {name!r} already has a scale on line {first_seen[name]}"
            raise _fail(source, lineno, line, why)
        scales[name] = scale
        first_seen[name] = lineno
    return CalibrationCache(version=version, algorithm=header["algorithm"], scales=scales)


def _amax_of(name: str, value: tuple[float, float] | float) -> float:
    if isinstance(value, (tuple, list)):
        try:
            lo, hi = (float(v) for v in value)
        except (TypeError, ValueError) as err:
            raise ConfigError(
                f"range of tensor {name!r} must be (min, max) or an amax, got {value!r}"
            ) from err
        if not (math.isfinite(lo) and math.isfinite(hi)):
            raise ConfigError(f"range of tensor {name!r} is not finite: {value!r}")
        if lo > hi:
            raise ConfigError(f"range of tensor {name!r} has min > max: {value!r}")
        return max(abs(lo), abs(hi))
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"range of tensor {name!r} must be (min, max) or an amax, got {value!r}")
    amax = float(value)
    if not math.isfinite(amax) or amax < 0:
        raise ConfigError(f"amax of tensor {name!r} must be finite and >= 0, got {value!r}")
    return amax


def cache_from_ranges(
    ranges: Mapping[str, tuple[float, float] | float],
    version: str | int,
    *,
    algorithm: str = CACHE_ALGORITHM,
) -> CalibrationCache:
    """A cache from measured activation ranges (e.g. from ONNX Runtime).

    ``scale = max(|min|, |max|) / 127``; a tensor whose range is (below)
    `MIN_AMAX`, e.g. a constant-zero one, gets ``MIN_AMAX / 127`` instead of
    the zero scale TensorRT cannot use.

    Args:
        ranges: Tensor name -> ``(min, max)`` or amax (``max |x|``).
        version: The TensorRT version the cache is for (``"10.3.0"``,
            ``tensorrt.__version__`` or an integer such as ``100300``).
            TensorRT ignores a cache made for another version.
        algorithm: The header's algorithm name; it must be the one of the
            calibrator that reads the cache.

    Returns:
        The cache, tensors in the order of ``ranges``.

    Raises:
        ConfigError: A range that is not finite, has min > max or a negative
            amax, a range too large for float32, a bad tensor name or version.
    """
    version_int = _version_of(version)
    scales: dict[str, float] = {}
    for name, value in ranges.items():
        _check_name(name)
        amax = max(_amax_of(name, value), MIN_AMAX)
        scale = amax / QMAX
        if scale > _FLOAT32_MAX:
            raise ConfigError(f"range of tensor {name!r} ({amax!r}) does not fit in a float32")
        scales[name] = scale
    return CalibrationCache(version=version_int, algorithm=algorithm, scales=scales)


def check_cache_version(
    cache: CalibrationCache, trt_version: str | int, *, source: str = "calibration cache"
) -> None:
    """Refuse a cache written for another TensorRT version (TensorRT would ignore it).

    Args:
        cache: The cache, e.g. from `read_cache`.
        trt_version: The TensorRT in use (``tensorrt.__version__``) or its integer.
        source: What to call the cache in the message, e.g. its path.

    Raises:
        ConfigError: The versions differ; the message names both.
    """
    expected = _version_of(trt_version)
    if cache.version != expected:
        raise ConfigError(
            f"{source} was written by TensorRT {format_trt_version(cache.version)} "
            f"({cache.header()}) but this is TensorRT {format_trt_version(expected)}; "
            "TensorRT would ignore it (delete it to calibrate again, or make it for "
            f"TRT-{expected})"
        )


def read_cache(path: str | os.PathLike[str]) -> CalibrationCache:
    """Read and parse a calibration cache file (see `parse_cache`).

    Raises:
        ConfigError: The file cannot be read or is malformed; names the path.
    """
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as err:
        raise ConfigError(f"cannot read calibration cache {p}: {err.strerror or err}") from err
    return parse_cache(data, source=f"calibration cache {p}")


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically: a synced temporary file in the same folder,
    then ``os.replace``. Readers see the old file or the new one, never a part.

    Raises:
        ConfigError: The folder does not exist or cannot be written.
    """
    p = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    except OSError as err:
        raise ConfigError(f"cannot write {p}: {err.strerror or err}") from err
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, p)
    except BaseException as err:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if isinstance(err, OSError):
            raise ConfigError(f"cannot write {p}: {err.strerror or err}") from err
        raise


def write_cache(path: str | os.PathLike[str], cache: CalibrationCache) -> None:
    """Write ``cache`` to ``path`` atomically (see `atomic_write_bytes`).

    Raises:
        ConfigError: The cache cannot be encoded or the file cannot be written.
    """
    atomic_write_bytes(path, cache.to_bytes())
