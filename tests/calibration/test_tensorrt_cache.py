"""TensorRT's calibration cache (pure Python) and the legacy calibrator's CPU-side logic.

The calibrator tests at the end run against small stand-ins for the
``tensorrt`` and ``pycuda.driver`` modules: they check the calibrator's own
bookkeeping (batches, cache files, version guards), not TensorRT or a GPU.
"""

from __future__ import annotations

import math
import struct
import subprocess
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from calibration.tensorrt_cache import (
    CACHE_ALGORITHM,
    MIN_AMAX,
    CalibrationCache,
    cache_from_ranges,
    check_cache_version,
    decode_scale,
    encode_scale,
    format_trt_version,
    parse_cache,
    read_cache,
    trt_version_int,
    write_cache,
)
from edgeseg.errors import ConfigError, MissingDependencyError


def f32(x: float) -> float:
    return float(struct.unpack(">f", struct.pack(">f", x))[0])


# -- versions ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("version", "expected"),
    [
        ("10.3.0", 100300),
        ("10.3.0.26", 100300),
        ("10.13.0.35", 101300),
        ("11.4", 110400),
        ("10.3.0.30-1+cuda12.6", 100300),
        ("8.6.2", 8602),  # TensorRT < 10 used major*1000
    ],
)
def test_trt_version_int(version: str, expected: int) -> None:
    assert trt_version_int(version) == expected


@pytest.mark.parametrize("junk", ["", "abc", "10", "10.x", "10.3junk", "1e3", "10.100.0", "v10.3"])
def test_trt_version_int_refuses_junk(junk: str) -> None:
    with pytest.raises(ConfigError):
        trt_version_int(junk)


def test_format_trt_version_inverts() -> None:
    assert format_trt_version(100300) == "10.3.0"
    assert format_trt_version(110400) == "11.4.0"
    assert format_trt_version(8602) == "8.6.2"


# -- scales -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("scale", "text"), [(1.0, "3f800000"), (0.0078125, "3c000000"), (2.0, "40000000")]
)
def test_known_encodings(scale: float, text: str) -> None:
    assert encode_scale(scale) == text
    assert struct.pack(">f", scale).hex() == text
    assert decode_scale(text) == scale
    assert decode_scale(text.upper()) == scale


def test_encode_is_big_endian_float32() -> None:
    scale = 0.123456789
    text = encode_scale(scale)
    assert len(text) == 8 and text == text.lower()
    assert struct.unpack(">f", bytes.fromhex(text))[0] == pytest.approx(scale, rel=1e-7)


@pytest.mark.parametrize("bad", [0.0, -0.0, -1.0, math.nan, math.inf, -math.inf, 1e39, 1e-50])
def test_encode_refuses_nonpositive_nonfinite_and_out_of_range(bad: float) -> None:
    with pytest.raises(ConfigError):
        encode_scale(bad)


@pytest.mark.parametrize("bad", ["3f80000", "3f8000000", "3f80000g", "", "0x3f8000"])
def test_decode_refuses_bad_hex(bad: str) -> None:
    with pytest.raises(ConfigError):
        decode_scale(bad)


# -- the cache --------------------------------------------------------------------------------


def test_header_and_text() -> None:
    cache = cache_from_ranges({"image": 127.0, "a/b.c:0": 1.27}, "10.3.0")
    assert cache.header() == "TRT-100300-EntropyCalibration2"
    assert cache.to_text() == (
        "TRT-100300-EntropyCalibration2\n"
        f"image: {encode_scale(1.0)}\n"
        f"a/b.c:0: {encode_scale(0.01)}\n"
    )
    assert cache.to_bytes() == cache.to_text().encode()


def test_tensor_order_is_kept() -> None:
    names = ["z", "a", "m", "/b/Conv_output_0"]
    cache = cache_from_ranges({n: 1.0 for n in names}, 100300)
    assert list(cache.scales) == names
    lines = cache.to_text().splitlines()[1:]
    assert [line.rsplit(": ", 1)[0] for line in lines] == names


REALISTIC = (
    "TRT-100300-EntropyCalibration2\n"
    "image: 3c010204\n"
    "/backbone/conv1/Conv_output_0: 3d8c3f2a\n"
    "/aspp/Concat_output_0: 3e1b2c3d\n"
    "onnx::Mul_123: 3c000000\n"
    "weird: name: with colons: 3f800000\n"
    "(Unnamed Layer* 5) [Constant]_output: 3c23d70a\n"
    "logits: 3e800000\n"
)


def test_parse_realistic_cache() -> None:
    cache = parse_cache(REALISTIC.encode(), source="road.cache")
    assert cache.version == 100300
    assert cache.algorithm == CACHE_ALGORITHM
    assert list(cache.scales) == [
        "image",
        "/backbone/conv1/Conv_output_0",
        "/aspp/Concat_output_0",
        "onnx::Mul_123",
        "weird: name: with colons",
        "(Unnamed Layer* 5) [Constant]_output",
        "logits",
    ]
    assert cache.scales["onnx::Mul_123"] == 0.0078125
    assert cache.scales["weird: name: with colons"] == 1.0
    assert cache.scales["logits"] == 0.25
    assert cache.amax()["logits"] == pytest.approx(0.25 * 127)
    assert cache.to_text() == REALISTIC  # byte-identical round trip
    assert parse_cache(REALISTIC) == cache  # str input too


def test_parse_accepts_other_algorithms_crlf_and_no_final_newline() -> None:
    cache = parse_cache("TRT-8602-MinMaxCalibration\r\nx: 3f800000")
    assert (cache.version, cache.algorithm, cache.scales) == (8602, "MinMaxCalibration", {"x": 1.0})
    assert parse_cache("TRT-101300-EntropyCalibration2\n").scales == {}


@pytest.mark.parametrize(
    ("text", "lineno", "fragment"),
    [
        ("", None, "empty"),
        ("TRT-100300\nx: 3f800000\n", 1, "TRT-100300"),
        ("trt-100300-EntropyCalibration2\n", 1, "trt-100300"),
        ("TRT-abc-EntropyCalibration2\n", 1, "TRT-abc"),
        ("x: 3f800000\n", 1, "x: 3f800000"),
        ("TRT-100300-EntropyCalibration2\nx: 3f80000g\n", 2, "3f80000g"),
        ("TRT-100300-EntropyCalibration2\nx: 3f8000\n", 2, "x: 3f8000"),
        ("TRT-100300-EntropyCalibration2\na: 3f800000\nno colon here\n", 3, "no colon here"),
        ("TRT-100300-EntropyCalibration2\na:3f800000\n", 2, "a:3f800000"),
        ("TRT-100300-EntropyCalibration2\na: 3f800000 \n", 2, "a: 3f800000 "),
        ("TRT-100300-EntropyCalibration2\n: 3f800000\n", 2, "empty tensor name"),
        ("TRT-100300-EntropyCalibration2\na: 3f800000\n\nb: 3f800000\n", 3, "''"),
        ("TRT-100300-EntropyCalibration2\na: 7fc00000\n", 2, "7fc00000"),  # NaN
        ("TRT-100300-EntropyCalibration2\na: 7f800000\n", 2, "7f800000"),  # inf
        ("TRT-100300-EntropyCalibration2\na: bf800000\n", 2, "bf800000"),  # -1.0
        ("TRT-100300-EntropyCalibration2\na: 3f800000\na: 40000000\n", 3, "line 2"),
    ],
)
def test_parse_refuses_malformed(text: str, lineno: int | None, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_cache(text.encode(), source="bundle/calibration.cache")
    message = str(info.value)
    assert "bundle/calibration.cache" in message
    if lineno is not None:
        assert f"line {lineno}" in message
    assert fragment in message


def test_parse_refuses_non_utf8() -> None:
    with pytest.raises(ConfigError, match="UTF-8"):
        parse_cache(b"TRT-100300-EntropyCalibration2\n\xff: 3f800000\n")


def test_names_with_line_breaks_are_refused() -> None:
    for name in ("a\nb", "a\rb", ""):
        with pytest.raises(ConfigError):
            cache_from_ranges({name: 1.0}, "10.3.0")
        with pytest.raises(ConfigError):
            CalibrationCache(version=100300, algorithm=CACHE_ALGORITHM, scales={name: 0.5})


def test_cache_validates_its_fields() -> None:
    with pytest.raises(ConfigError):
        CalibrationCache(version=0, algorithm=CACHE_ALGORITHM, scales={})
    with pytest.raises(ConfigError):
        CalibrationCache(version=100300, algorithm="Entropy Calibration", scales={})
    for bad in (math.nan, math.inf, -1.0, -0.0):
        with pytest.raises(ConfigError):
            CalibrationCache(version=100300, algorithm=CACHE_ALGORITHM, scales={"x": bad})


def test_zero_scale_is_read_but_not_written() -> None:
    cache = parse_cache("TRT-100300-EntropyCalibration2\nx: 00000000\n")
    assert cache.scales == {"x": 0.0}
    with pytest.raises(ConfigError, match="positive"):
        cache.to_text()


def test_scales_are_stored_as_float32() -> None:
    cache = CalibrationCache(version=100300, algorithm=CACHE_ALGORITHM, scales={"x": 0.1})
    assert cache.scales["x"] == f32(0.1) != 0.1


# -- ranges -----------------------------------------------------------------------------------


def test_cache_from_min_max_and_amax() -> None:
    cache = cache_from_ranges(
        {"minmax": (-2.54, 1.0), "pos": (0.0, 6.35), "amax": 12.7, "int": 127}, "10.3.0.26"
    )
    assert cache.version == 100300
    assert cache.algorithm == CACHE_ALGORITHM
    assert cache.scales["minmax"] == f32(2.54 / 127)
    assert cache.scales["pos"] == f32(6.35 / 127)
    assert cache.scales["amax"] == f32(0.1)
    assert cache.scales["int"] == 1.0
    assert cache.amax()["minmax"] == pytest.approx(2.54, rel=1e-6)


def test_zero_range_gets_a_tiny_positive_scale() -> None:
    cache = cache_from_ranges({"zeros": (0.0, 0.0), "zero_amax": 0.0}, "10.3.0")
    for name in ("zeros", "zero_amax"):
        assert cache.scales[name] == f32(MIN_AMAX / 127) > 0
    assert parse_cache(cache.to_bytes()) == cache


@pytest.mark.parametrize(
    "bad",
    [(1.0, -1.0), (math.nan, 1.0), (0.0, math.inf), -1.0, math.nan, math.inf, 1e41, "1.0",
     (1.0, 2.0, 3.0), ("a", "b")],
)
def test_cache_from_ranges_refuses_bad_ranges(bad: Any) -> None:
    with pytest.raises(ConfigError, match="t0"):
        cache_from_ranges({"t0": bad}, "10.3.0")


def test_cache_from_ranges_algorithm_and_int_version() -> None:
    cache = cache_from_ranges({"x": 1.0}, 101300, algorithm="MinMaxCalibration")
    assert cache.header() == "TRT-101300-MinMaxCalibration"
    with pytest.raises(ConfigError):
        cache_from_ranges({"x": 1.0}, "ten")


# -- versions of caches -----------------------------------------------------------------------


def test_version_mismatch_names_both_versions() -> None:
    cache = cache_from_ranges({"x": 1.0}, "10.3.0")
    check_cache_version(cache, "10.3.0.30")  # the build number does not matter
    check_cache_version(cache, 100300)
    with pytest.raises(ConfigError) as info:
        check_cache_version(cache, "10.13.0.35")
    message = str(info.value)
    assert "TensorRT 10.3.0" in message
    assert "TRT-100300-EntropyCalibration2" in message
    assert "TensorRT 10.13.0" in message
    assert "ignore" in message
    assert message.startswith(
        "calibration cache was written by TensorRT 10.3.0 (TRT-100300-EntropyCalibration2) "
        "but this is TensorRT 10.13.0; TensorRT would ignore it"
    )
    with pytest.raises(ConfigError, match="my.cache was written"):
        check_cache_version(cache, "11.4", source="my.cache")


# -- files ------------------------------------------------------------------------------------


def test_write_read_round_trip(tmp_path: Path) -> None:
    ranges = {f"/layer{i}/Conv_output_0": (-(i + 1) * 0.37, i * 0.5) for i in range(20)}
    cache = cache_from_ranges(ranges, "10.3.0")
    path = tmp_path / "calibration.cache"
    write_cache(path, cache)
    again = read_cache(path)
    assert again == cache
    for name, (lo, hi) in ranges.items():
        assert again.scales[name] == f32(max(abs(lo), abs(hi)) / 127)
    assert path.read_text().startswith("TRT-100300-EntropyCalibration2\n")


def test_atomic_write_replaces_and_leaves_no_temp_files(tmp_path: Path) -> None:
    path = tmp_path / "calibration.cache"
    path.write_text("old")
    write_cache(path, cache_from_ranges({"x": 1.0}, "10.3.0"))
    write_cache(path, cache_from_ranges({"y": 2.0}, "10.3.0"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["calibration.cache"]
    assert list(read_cache(path).scales) == ["y"]


def test_failed_write_keeps_the_old_file(tmp_path: Path) -> None:
    path = tmp_path / "calibration.cache"
    write_cache(path, cache_from_ranges({"x": 1.0}, "10.3.0"))
    zero = parse_cache("TRT-100300-EntropyCalibration2\nz: 00000000\n")
    with pytest.raises(ConfigError):
        write_cache(path, zero)
    assert list(read_cache(path).scales) == ["x"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["calibration.cache"]


def test_read_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="missing.cache"):
        read_cache(tmp_path / "missing.cache")
    bad = tmp_path / "bad.cache"
    bad.write_text("TRT-100300-EntropyCalibration2\nx 3f800000\n")
    with pytest.raises(ConfigError, match=r"bad\.cache, line 2"):
        read_cache(bad)
    with pytest.raises(ConfigError, match="cannot write"):
        write_cache(tmp_path / "no" / "such" / "dir.cache", cache_from_ranges({"x": 1.0}, 100300))


# -- the legacy calibrator --------------------------------------------------------------------


def test_calibrator_import_without_tensorrt_names_the_install() -> None:
    code = (
        "import sys\n"
        "sys.modules['tensorrt'] = None  # as if TensorRT were not installed\n"
        "from edgeseg.errors import MissingDependencyError\n"
        "try:\n"
        "    import calibration.tensorrt_calibrator\n"
        "except MissingDependencyError as err:\n"
        "    print('MissingDependencyError:', err)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "MissingDependencyError:" in out.stdout, out.stdout + out.stderr
    assert "pip install 'tensorrt" in out.stdout
    assert "JetPack" in out.stdout


def test_calibrator_import_here_raises_missing_dependency() -> None:
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("tensorrt is installed here")
    with pytest.raises(MissingDependencyError, match="tensorrt"):
        import calibration.tensorrt_calibrator  # noqa: F401


def _fake_tensorrt(version: str) -> types.ModuleType:
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version  # type: ignore[attr-defined]
    if int(version.split(".")[0]) < 11:

        class IInt8EntropyCalibrator2:
            def __init__(self) -> None:
                pass

        trt.IInt8EntropyCalibrator2 = IInt8EntropyCalibrator2  # type: ignore[attr-defined]
    trt.BuilderFlag = types.SimpleNamespace(  # type: ignore[attr-defined]
        INT8="INT8", FP16="FP16", GPU_FALLBACK="GPU_FALLBACK"
    )
    trt.DeviceType = types.SimpleNamespace(GPU="GPU", DLA="DLA")  # type: ignore[attr-defined]
    return trt


class _FakeDevice:
    """A device allocation stand-in: host bytes with an address."""

    def __init__(self, nbytes: int) -> None:
        self.data = np.zeros(nbytes, np.uint8)
        self.freed = False

    def __int__(self) -> int:
        return 0x7F0000001000

    def free(self) -> None:
        self.freed = True


def _fake_pycuda() -> tuple[types.ModuleType, types.ModuleType]:
    pycuda = types.ModuleType("pycuda")
    driver = types.ModuleType("pycuda.driver")

    class Error(Exception):
        pass

    def memcpy_htod(dest: _FakeDevice, src: np.ndarray) -> None:
        dest.data[:] = src.reshape(-1)

    driver.Error = Error  # type: ignore[attr-defined]
    driver.pagelocked_empty = np.empty  # type: ignore[attr-defined]
    driver.mem_alloc = _FakeDevice  # type: ignore[attr-defined]
    driver.memcpy_htod = memcpy_htod  # type: ignore[attr-defined]
    pycuda.driver = driver  # type: ignore[attr-defined]
    return pycuda, driver


@pytest.fixture
def fake_trt(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """Imports calibration.tensorrt_calibrator against stand-in modules; returns a loader."""
    import calibration

    def load(version: str = "10.3.0.30") -> Any:
        monkeypatch.setitem(sys.modules, "tensorrt", _fake_tensorrt(version))
        pycuda, driver = _fake_pycuda()
        monkeypatch.setitem(sys.modules, "pycuda", pycuda)
        monkeypatch.setitem(sys.modules, "pycuda.driver", driver)
        sys.modules.pop("calibration.tensorrt_calibrator", None)
        import calibration.tensorrt_calibrator as module

        return module

    yield load
    sys.modules.pop("calibration.tensorrt_calibrator", None)
    if hasattr(calibration, "tensorrt_calibrator"):
        delattr(calibration, "tensorrt_calibrator")


def test_calibrator_batches(fake_trt: Any, rng: np.random.Generator) -> None:
    module = fake_trt()
    images = rng.integers(0, 256, (5, 4, 6, 3), dtype=np.uint8)
    calib = module.EntropyCalibrator(images, cache_path=None, batch_size=2)
    assert calib.get_batch_size() == 2
    assert calib.read_calibration_cache() is None
    seen = []
    while (ptrs := calib.get_batch(["image"])) is not None:
        assert ptrs == [0x7F0000001000]
        seen.append(calib._device.data.reshape(2, 4, 6, 3).copy())
    assert len(seen) == 2  # the fifth image does not fill a batch
    np.testing.assert_array_equal(np.concatenate(seen), images[:4])
    assert calib.get_batch(["image"]) is None
    calib.raise_if_failed()
    device = calib._device
    calib.close()
    assert device.freed


def test_calibrator_wrong_input_name_is_kept(fake_trt: Any) -> None:
    module = fake_trt()
    calib = module.EntropyCalibrator(np.zeros((1, 2, 2, 3), np.uint8), cache_path=None)
    with pytest.raises(ConfigError, match="'input'"):
        calib.get_batch(["input"])
    with pytest.raises(ConfigError):
        calib.raise_if_failed()


@pytest.mark.parametrize(
    "images",
    [np.zeros((2, 4, 4), np.uint8), np.zeros((2, 4, 4, 3), np.float32), [[1, 2]]],
)
def test_calibrator_refuses_bad_images(fake_trt: Any, images: Any) -> None:
    module = fake_trt()
    with pytest.raises(ConfigError, match="uint8"):
        module.EntropyCalibrator(images, cache_path=None)


def test_calibrator_needs_images_or_cache(fake_trt: Any, tmp_path: Path) -> None:
    module = fake_trt("10.3.0.30")
    empty = np.zeros((0, 4, 4, 3), np.uint8)
    with pytest.raises(ConfigError, match="at least 2"):
        module.EntropyCalibrator(np.zeros((1, 4, 4, 3), np.uint8), cache_path=None, batch_size=2)
    with pytest.raises(ConfigError, match="no file"):
        module.EntropyCalibrator(empty, cache_path=tmp_path / "c.cache")
    path = tmp_path / "c.cache"
    write_cache(path, cache_from_ranges({"image": 255.0}, "10.3.0"))
    calib = module.EntropyCalibrator(empty, cache_path=path)
    assert calib.read_calibration_cache() == path.read_bytes()
    assert calib.get_batch(["image"]) is None


def test_calibrator_validates_the_cache_up_front(fake_trt: Any, tmp_path: Path) -> None:
    module = fake_trt("10.3.0.30")
    images = np.zeros((1, 4, 4, 3), np.uint8)
    path = tmp_path / "c.cache"
    path.write_text("TRT-100300-EntropyCalibration2\nimage 3f800000\n")
    with pytest.raises(ConfigError, match="line 2"):
        module.EntropyCalibrator(images, cache_path=path)
    write_cache(path, cache_from_ranges({"image": 1.0}, "10.13.0"))
    with pytest.raises(ConfigError, match="TensorRT 10.13.0 .* this is TensorRT 10.3.0"):
        module.EntropyCalibrator(images, cache_path=path)
    write_cache(path, cache_from_ranges({"image": 1.0}, "10.3.0", algorithm="MinMaxCalibration"))
    with pytest.raises(ConfigError, match="MinMaxCalibration"):
        module.EntropyCalibrator(images, cache_path=path)


def test_calibrator_writes_the_cache_atomically(fake_trt: Any, tmp_path: Path) -> None:
    module = fake_trt()
    path = tmp_path / "c.cache"
    calib = module.EntropyCalibrator(np.zeros((1, 4, 4, 3), np.uint8), cache_path=path)
    data = cache_from_ranges({"image": 1.0, "out": 2.0}, "10.3.0").to_bytes()
    calib.write_calibration_cache(memoryview(data))
    assert path.read_bytes() == data == calib.written_cache
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.cache"]


class _Recorder:
    def __init__(self) -> None:
        self.flags: list[str] = []
        self.int8_calibrator: Any = None
        self.default_device_type = "GPU"
        self.DLA_core = -1

    def set_flag(self, flag: str) -> None:
        self.flags.append(flag)


def test_legacy_int8_config(fake_trt: Any) -> None:
    module = fake_trt()
    calib = module.EntropyCalibrator(np.zeros((1, 4, 4, 3), np.uint8), cache_path=None)
    builder = types.SimpleNamespace(num_DLA_cores=2)
    gpu = _Recorder()
    module.legacy_int8_config(builder, gpu, calib)
    assert (gpu.flags, gpu.int8_calibrator, gpu.default_device_type) == (["INT8"], calib, "GPU")
    dla = _Recorder()
    module.legacy_int8_config(builder, dla, calib, dla_core=1)
    assert dla.flags == ["INT8", "FP16", "GPU_FALLBACK"]
    assert (dla.default_device_type, dla.DLA_core) == ("DLA", 1)
    with pytest.raises(ConfigError, match="2 DLA core"):
        module.legacy_int8_config(builder, _Recorder(), calib, dla_core=2)
    with pytest.raises(ConfigError, match="0 DLA core"):
        module.legacy_int8_config(types.SimpleNamespace(num_DLA_cores=0), _Recorder(), calib,
                                  dla_core=0)


def test_tensorrt_11_points_at_the_qdq_graph(fake_trt: Any) -> None:
    module = fake_trt("11.4.0.1")  # no IInt8EntropyCalibrator2 at all: the import still works
    with pytest.raises(ConfigError, match=r"removed in TensorRT 11.*model\.int8\.onnx"):
        module.EntropyCalibrator(np.zeros((1, 4, 4, 3), np.uint8), cache_path=None)
    with pytest.raises(ConfigError, match=r"removed in TensorRT 11.*model\.int8\.onnx"):
        module.legacy_int8_config(types.SimpleNamespace(num_DLA_cores=0), _Recorder(), None)
