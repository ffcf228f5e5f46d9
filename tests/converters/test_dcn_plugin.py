"""The deformable-convolution plugin: its arithmetic on the CPU, its sources through the compilers.

The kernels' sampling arithmetic lives in ``dcn_common.cuh``; ``dcn_cpu.cpp``
runs it on the CPU (built here with g++) and is compared with
``torchvision.ops.deform_conv2d`` (symmetric padding) and with a float64 NumPy
reference of ONNX DeformConv (asymmetric pads). The CUDA sources are compiled
with ``nvcc -c`` wherever nvcc exists (what CI runs), the plugin against
TensorRT's headers wherever they are found. Nothing here runs on a GPU.
"""

from __future__ import annotations

import ctypes
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from converters import plugins
from edgeseg.errors import ConfigError, ExportError, MissingDependencyError

SRC = plugins.SOURCE_DIR / "src"
TOLERANCE = 1e-5
K_OK, K_INVALID = 0, 1


class DcnParams(ctypes.Structure):
    """Mirror of ``edgeseg::DcnParams`` (dcn_common.cuh): 19 int32 fields, in order."""

    _fields_ = [
        (name, ctypes.c_int32)
        for name in (
            "batch", "in_channels", "height", "width", "out_channels", "kernel_h", "kernel_w",
            "out_h", "out_w", "stride_h", "stride_w", "pad_top", "pad_left", "pad_bottom",
            "pad_right", "dilation_h", "dilation_w", "group", "offset_group",
        )
    ]  # fmt: skip


@dataclass(frozen=True)
class Case:
    """One deformable convolution: shapes, ONNX attributes and what the inputs look like."""

    batch: int
    channels: int
    size: tuple[int, int]
    out_channels: int
    kernel: tuple[int, int]
    stride: tuple[int, int] = (1, 1)
    pads: tuple[int, int, int, int] = (0, 0, 0, 0)  # top, left, bottom, right (ONNX)
    dilation: tuple[int, int] = (1, 1)
    group: int = 1
    offset_group: int = 1
    mask: bool = True
    bias: bool = True
    offset_scale: float = 2.0
    integer_offsets: bool = False  # land exactly on pixels and on the -1 / H borders

    @property
    def out_size(self) -> tuple[int, int]:
        (top, left, bottom, right), (kh, kw) = self.pads, self.kernel
        return (
            _extent(self.size[0], top + bottom, kh, self.stride[0], self.dilation[0]),
            _extent(self.size[1], left + right, kw, self.stride[1], self.dilation[1]),
        )


def _extent(size: int, pads: int, kernel: int, stride: int, dilation: int) -> int:
    return (size + pads - (dilation * (kernel - 1) + 1)) // stride + 1


# Every attribute and its edge: stride 1/2, padding 0/1/2, dilation 1/2, groups
# 1/2/4/depthwise, offset groups 1/2/4, kernels 1x1/3x3/3x1, batch 1/2, offsets
# that sample far outside the image, with and without mask and bias.
# fmt: off
SYMMETRIC = [
    Case(1, 4, (7, 9), 6, (3, 3), pads=(1, 1, 1, 1)),
    Case(2, 4, (8, 8), 4, (3, 3), stride=(2, 2), pads=(1, 1, 1, 1), group=2, offset_group=2,
         bias=False),
    Case(1, 8, (9, 7), 8, (3, 3), pads=(2, 2, 2, 2), dilation=(2, 2), group=2, offset_group=4),
    Case(2, 3, (6, 5), 5, (1, 1), mask=False),
    Case(1, 6, (10, 6), 4, (3, 1), stride=(2, 1), pads=(1, 0, 1, 0), dilation=(1, 2), group=2,
         offset_group=2),
    Case(2, 8, (5, 5), 8, (3, 3), stride=(2, 2), pads=(2, 2, 2, 2), dilation=(2, 2), group=4,
         offset_group=4, mask=False, bias=False),
    Case(1, 2, (4, 4), 2, (3, 3), offset_scale=6.0),
    Case(1, 4, (12, 11), 8, (3, 3), stride=(2, 2), pads=(1, 1, 1, 1), dilation=(2, 2),
         offset_group=2),
    Case(2, 4, (6, 7), 6, (1, 1), stride=(2, 2), pads=(1, 1, 1, 1), group=2, offset_group=4,
         bias=False),
    Case(1, 16, (8, 8), 16, (3, 3), pads=(1, 1, 1, 1), group=16, offset_group=4),
    Case(1, 4, (3, 3), 4, (3, 3), pads=(2, 2, 2, 2), mask=False, offset_scale=4.0),
    Case(2, 6, (7, 9), 3, (3, 1), pads=(1, 0, 1, 0), dilation=(2, 1), group=3, offset_group=2),
    Case(1, 1, (1, 1), 1, (1, 1)),
    Case(2, 4, (6, 6), 4, (3, 3), pads=(1, 1, 1, 1), offset_group=2, integer_offsets=True),
]
ASYMMETRIC = [
    Case(1, 4, (7, 8), 4, (3, 3), pads=(0, 1, 2, 0)),
    Case(2, 4, (9, 6), 6, (3, 3), stride=(2, 2), pads=(2, 0, 1, 1), dilation=(1, 2), group=2,
         offset_group=2),
    Case(1, 8, (5, 7), 4, (3, 1), pads=(1, 0, 0, 0), group=4, offset_group=4, mask=False,
         bias=False),
    Case(2, 2, (6, 6), 2, (1, 1), stride=(2, 1), pads=(1, 2, 0, 1), integer_offsets=True),
]
# fmt: on


def _inputs(case: Case, seed: int) -> dict[str, np.ndarray | None]:
    rng = np.random.default_rng(seed)
    n, c, (h, w), m = case.batch, case.channels, case.size, case.out_channels
    kh, kw = case.kernel
    oh, ow = case.out_size
    taps = kh * kw
    offset_shape = (n, case.offset_group * 2 * taps, oh, ow)
    if case.integer_offsets:
        offset = rng.integers(-4, 5, offset_shape).astype(np.float32) / 2  # integers and halves
    else:
        offset = (rng.standard_normal(offset_shape) * case.offset_scale).astype(np.float32)
    return {
        "x": rng.standard_normal((n, c, h, w)).astype(np.float32),
        "weight": (
            rng.standard_normal((m, c // case.group, kh, kw)) / np.sqrt(c * taps / case.group)
        ).astype(np.float32),
        "offset": offset,
        "mask": rng.uniform(0, 1, (n, case.offset_group * taps, oh, ow)).astype(np.float32)
        if case.mask
        else None,
        "bias": rng.standard_normal(m).astype(np.float32) if case.bias else None,
    }


def _case_id(case: Case) -> str:
    parts = [
        f"n{case.batch}c{case.channels}m{case.out_channels}",
        f"k{case.kernel[0]}x{case.kernel[1]}",
        f"s{case.stride[0]}{case.stride[1]}",
        "p" + "".join(map(str, case.pads)),
        f"d{case.dilation[0]}{case.dilation[1]}",
        f"g{case.group}",
        f"og{case.offset_group}",
    ]
    parts += [] if case.mask else ["nomask"]
    parts += [] if case.bias else ["nobias"]
    parts += ["int-offsets"] if case.integer_offsets else []
    return "-".join(parts)


# ---------------------------------------------------------------- the CPU twin


@pytest.fixture(scope="session")
def cpu_twin(tmp_path_factory: pytest.TempPathFactory) -> ctypes.CDLL:
    """dcn_cpu.cpp built with g++ once per session and loaded with ctypes."""
    gxx = shutil.which("g++")
    if gxx is None:
        pytest.skip("g++ is not installed: the CPU twin of the CUDA kernels cannot be built")
    lib = tmp_path_factory.mktemp("dcn") / "libdcn_cpu.so"
    cmd = [
        gxx,
        "-O2",
        "-std=c++17",
        "-shared",
        "-fPIC",
        "-Wall",
        "-Wextra",
        "-Werror",
        f"-I{SRC}",
        str(SRC / "dcn_cpu.cpp"),
        "-o",
        str(lib),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    dll = ctypes.CDLL(str(lib))
    dll.edgeseg_dcn_params_size.restype = ctypes.c_int32
    dll.edgeseg_dcn_cpu_forward.restype = ctypes.c_int32
    dll.edgeseg_dcn_cpu_forward.argtypes = [ctypes.POINTER(DcnParams)] + [ctypes.c_void_p] * 6
    return dll


def _params(case: Case, **override: int) -> DcnParams:
    values = dict(
        batch=case.batch,
        in_channels=case.channels,
        height=case.size[0],
        width=case.size[1],
        out_channels=case.out_channels,
        kernel_h=case.kernel[0],
        kernel_w=case.kernel[1],
        out_h=case.out_size[0],
        out_w=case.out_size[1],
        stride_h=case.stride[0],
        stride_w=case.stride[1],
        pad_top=case.pads[0],
        pad_left=case.pads[1],
        pad_bottom=case.pads[2],
        pad_right=case.pads[3],
        dilation_h=case.dilation[0],
        dilation_w=case.dilation[1],
        group=case.group,
        offset_group=case.offset_group,
    )
    values.update(override)
    return DcnParams(**values)


def _pointer(array: np.ndarray | None) -> int | None:
    return None if array is None else array.ctypes.data


def run_twin(
    dll: ctypes.CDLL, case: Case, inputs: dict[str, np.ndarray | None], **override: int
) -> np.ndarray:
    """The CPU twin's output; asserts it returned success."""
    arrays = {
        k: None if v is None else np.ascontiguousarray(v, dtype=np.float32)
        for k, v in inputs.items()
    }
    y = np.full((case.batch, case.out_channels, *case.out_size), np.nan, dtype=np.float32)
    status = dll.edgeseg_dcn_cpu_forward(
        ctypes.byref(_params(case, **override)),
        _pointer(arrays["x"]),
        _pointer(arrays["weight"]),
        _pointer(arrays["offset"]),
        _pointer(arrays["mask"]),
        _pointer(arrays["bias"]),
        y.ctypes.data,
    )
    assert status == K_OK, f"edgeseg_dcn_cpu_forward returned {status}"
    return y


def reference_deform_conv(case: Case, inputs: dict[str, np.ndarray | None]) -> np.ndarray:
    """ONNX DeformConv (asymmetric pads included) in float64 NumPy, written from the spec."""
    x = np.asarray(inputs["x"], dtype=np.float64)
    weight = np.asarray(inputs["weight"], dtype=np.float64)
    n, c, h, w = x.shape
    m, cg, kh, kw = weight.shape
    oh, ow = case.out_size
    og = case.offset_group
    taps = kh * kw
    offset = np.asarray(inputs["offset"], dtype=np.float64).reshape(n, og, taps, 2, oh, ow)
    mask = inputs["mask"]
    modulation = (
        np.ones((n, og, taps, oh, ow))
        if mask is None
        else np.asarray(mask, dtype=np.float64).reshape(n, og, taps, oh, ow)
    )
    ki, kj = np.meshgrid(np.arange(kh), np.arange(kw), indexing="ij")
    base_y = (np.arange(oh) * case.stride[0] - case.pads[0])[None, :, None] + (
        ki.reshape(-1) * case.dilation[0]
    )[:, None, None]
    base_x = (np.arange(ow) * case.stride[1] - case.pads[1])[None, None, :] + (
        kj.reshape(-1) * case.dilation[1]
    )[:, None, None]
    ys = base_y[None, None] + offset[:, :, :, 0]  # (n, og, taps, oh, ow)
    xs = base_x[None, None] + offset[:, :, :, 1]

    def sample(plane: np.ndarray, py: np.ndarray, px: np.ndarray) -> np.ndarray:
        inside = (py > -1) & (py < h) & (px > -1) & (px < w)
        y0, x0 = np.floor(py).astype(int), np.floor(px).astype(int)
        ly, lx = py - y0, px - x0
        out = np.zeros_like(py)
        for dy, dx, wgt in (
            (0, 0, (1 - ly) * (1 - lx)),
            (0, 1, (1 - ly) * lx),
            (1, 0, ly * (1 - lx)),
            (1, 1, ly * lx),
        ):
            yy, xx = y0 + dy, x0 + dx
            ok = inside & (yy >= 0) & (yy < h) & (xx >= 0) & (xx < w)
            out += np.where(ok, wgt * plane[np.clip(yy, 0, h - 1), np.clip(xx, 0, w - 1)], 0.0)
        return out

    cols = np.zeros((n, c, taps, oh, ow))
    per_og = c // og
    for b in range(n):
        for ch in range(c):
            g = ch // per_og
            cols[b, ch] = sample(x[b, ch], ys[b, g], xs[b, g]) * modulation[b, g]
    groups = case.group
    cols = cols.reshape(n, groups, cg * taps, oh * ow)
    wmat = weight.reshape(groups, m // groups, cg * taps)
    y = np.einsum("gmk,ngkp->ngmp", wmat, cols).reshape(n, m, oh, ow)
    if inputs["bias"] is not None:
        y += np.asarray(inputs["bias"], dtype=np.float64)[None, :, None, None]
    return y


def _torchvision(case: Case, inputs: dict[str, np.ndarray | None]) -> np.ndarray:
    torch = pytest.importorskip(
        "torch", reason="torch is not installed (pip install -e '.[build]')"
    )
    ops = pytest.importorskip("torchvision.ops", reason="torchvision is not installed")

    def t(a: np.ndarray | None) -> object:
        return None if a is None else torch.from_numpy(a)

    with torch.no_grad():
        y = ops.deform_conv2d(
            t(inputs["x"]),
            t(inputs["offset"]),
            t(inputs["weight"]),
            t(inputs["bias"]),
            stride=case.stride,
            padding=(case.pads[0], case.pads[1]),
            dilation=case.dilation,
            mask=t(inputs["mask"]),
        )
    return y.numpy()


def test_params_struct_matches(cpu_twin: ctypes.CDLL) -> None:
    assert cpu_twin.edgeseg_dcn_params_size() == ctypes.sizeof(DcnParams)


def test_cases_cover_every_attribute() -> None:
    cases = SYMMETRIC + ASYMMETRIC
    assert {c.stride for c in cases} >= {(1, 1), (2, 2), (2, 1)}
    assert {p for c in cases for p in c.pads} >= {0, 1, 2}
    assert {c.dilation for c in cases} >= {(1, 1), (2, 2), (1, 2), (2, 1)}
    assert {c.group for c in cases} >= {1, 2, 4} and any(c.group == c.channels > 1 for c in cases)
    assert {c.offset_group for c in cases} >= {1, 2, 4}
    assert {c.kernel for c in cases} >= {(1, 1), (3, 3), (3, 1)}
    assert {c.batch for c in cases} == {1, 2}
    assert {c.mask for c in cases} == {True, False} and {c.bias for c in cases} == {True, False}
    assert len(SYMMETRIC) >= 12


@pytest.mark.parametrize("case", SYMMETRIC, ids=[_case_id(c) for c in SYMMETRIC])
def test_twin_matches_torchvision(case: Case, cpu_twin: ctypes.CDLL) -> None:
    inputs = _inputs(case, seed=SYMMETRIC.index(case))
    expected = _torchvision(case, inputs)
    got = run_twin(cpu_twin, case, inputs)
    assert got.shape == expected.shape
    error = float(np.max(np.abs(got - expected)))
    assert error <= TOLERANCE, f"max abs error {error:.3g} vs torchvision.ops.deform_conv2d"


@pytest.mark.parametrize("case", SYMMETRIC[:4], ids=[_case_id(c) for c in SYMMETRIC[:4]])
def test_numpy_reference_matches_torchvision(case: Case) -> None:
    """The float64 reference that judges asymmetric pads agrees with torchvision."""
    inputs = _inputs(case, seed=100 + SYMMETRIC.index(case))
    error = float(np.max(np.abs(reference_deform_conv(case, inputs) - _torchvision(case, inputs))))
    assert error <= TOLERANCE


@pytest.mark.parametrize("case", ASYMMETRIC, ids=[_case_id(c) for c in ASYMMETRIC])
def test_twin_matches_reference_with_asymmetric_pads(case: Case, cpu_twin: ctypes.CDLL) -> None:
    inputs = _inputs(case, seed=50 + ASYMMETRIC.index(case))
    got = run_twin(cpu_twin, case, inputs)
    error = float(np.max(np.abs(got - reference_deform_conv(case, inputs))))
    assert error <= TOLERANCE, f"max abs error {error:.3g} vs the float64 ONNX reference"


def test_twin_samples_outside_the_image_as_zero(cpu_twin: ctypes.CDLL) -> None:
    """Offsets that push every tap to h <= -1 or beyond the last row give bias only."""
    case = Case(1, 2, (4, 4), 3, (3, 3), pads=(1, 1, 1, 1), mask=False)
    inputs = _inputs(case, seed=7)
    inputs["offset"] = np.full_like(inputs["offset"], 10.0)
    bias = inputs["bias"]
    assert bias is not None
    got = run_twin(cpu_twin, case, inputs)
    np.testing.assert_array_equal(got, np.broadcast_to(bias[None, :, None, None], got.shape))


@pytest.mark.parametrize(
    "override",
    [{"out_h": 99}, {"group": 3}, {"offset_group": 3}, {"stride_h": 0}, {"pad_left": -1}],
    ids=[
        "wrong-out-h",
        "group-not-dividing",
        "offset-group-not-dividing",
        "zero-stride",
        "negative-pad",
    ],
)
def test_twin_rejects_inconsistent_params(cpu_twin: ctypes.CDLL, override: dict[str, int]) -> None:
    case = Case(1, 4, (6, 6), 4, (3, 3), pads=(1, 1, 1, 1))
    inputs = _inputs(case, seed=3)
    y = np.zeros((1, 4, 6, 6), dtype=np.float32)
    status = cpu_twin.edgeseg_dcn_cpu_forward(
        ctypes.byref(_params(case, **override)),
        _pointer(inputs["x"]),
        _pointer(inputs["weight"]),
        _pointer(inputs["offset"]),
        _pointer(inputs["mask"]),
        _pointer(inputs["bias"]),
        y.ctypes.data,
    )
    assert status == K_INVALID


# ---------------------------------------------------------------- sources and compilers


@pytest.mark.slow
def test_nvcc_compiles_every_cuda_source(tmp_path: Path) -> None:
    """What CI runs: a CUDA syntax or type error fails here wherever nvcc exists."""
    if plugins.find_nvcc() is None:
        pytest.skip("nvcc is not installed (CUDA toolkit): the .cu sources were not compiled")
    try:
        objects = plugins.nvcc_compile_check(tmp_path)
    except MissingDependencyError as err:
        pytest.skip(str(err))
    sources = sorted(p.stem for p in SRC.glob("*.cu"))
    assert sorted(o.stem for o in objects) == sources
    assert all(o.stat().st_size > 0 for o in objects)
    assert set(plugins.CUDA_SOURCES) == {p.name for p in SRC.glob("*.cu")}


def test_plugin_compiles_against_tensorrt_headers(tmp_path: Path) -> None:
    include = plugins.find_tensorrt_include()
    if include is None:
        pytest.skip(
            "TensorRT headers (NvInfer.h) not found (set TENSORRT_INCLUDE_DIR; they are not "
            "installable without the TensorRT SDK)"
        )
    if plugins.find_nvcc() is None:
        pytest.skip("nvcc is not installed: the plugin was not compiled")
    try:
        obj = plugins.plugin_compile_check(tmp_path, tensorrt_include=include)
    except MissingDependencyError as err:
        pytest.skip(str(err))
    assert obj.stat().st_size > 0


def test_cmakelists_builds_every_source() -> None:
    cmake = (plugins.SOURCE_DIR / "CMakeLists.txt").read_text()
    sources = sorted(p.name for p in SRC.iterdir() if p.suffix in {".cu", ".cuh", ".cpp", ".h"})
    assert sources, f"no sources in {SRC}"
    missing = [s for s in sources if f"src/{s}" not in cmake]
    assert not missing, f"CMakeLists.txt does not mention {missing}"
    assert (
        "OUTPUT_NAME edgeseg_plugins" in cmake and plugins.LIBRARY_NAME == "libedgeseg_plugins.so"
    )


def test_python_names_match_the_plugin_source() -> None:
    source = (SRC / "dcn_plugin.cpp").read_text()
    assert f'kPluginName = "{plugins.PLUGIN_OP}"' in source
    assert f'kPluginVersion = "{plugins.PLUGIN_VERSION}"' in source
    assert f'kPluginNamespace = "{plugins.PLUGIN_NAMESPACE}"' in source
    from converters.passes.deform import PLUGIN_FIELDS

    creator_fields = re.findall(r'mFields\.emplace_back\("(\w+)"', source)
    assert tuple(creator_fields) == PLUGIN_FIELDS


def test_kernels_file_needs_no_tensorrt() -> None:
    for name in ("dcn_kernels.cu", "dcn_kernels.h", "dcn_common.cuh"):
        assert "NvInfer" not in (SRC / name).read_text(), name


# ---------------------------------------------------------------- build_plugins errors


@pytest.fixture
def no_tensorrt(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No TensorRT headers anywhere, whatever this machine has."""
    monkeypatch.delenv("TENSORRT_INCLUDE_DIR", raising=False)
    monkeypatch.delenv("TENSORRT_ROOT", raising=False)
    monkeypatch.setattr(plugins, "TENSORRT_INCLUDE_DIRS", (str(tmp_path / "nowhere"),))


def _fake_tools(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, cmake_script: str | None = None
) -> None:
    """cmake and nvcc 'found' on PATH; cmake may be a script standing in for it."""
    tools = {}
    for name in ("cmake", "nvcc"):
        path = tmp_path / "bin" / name
        path.parent.mkdir(exist_ok=True)
        path.write_text(cmake_script if name == "cmake" and cmake_script else "#!/bin/sh\nexit 0\n")
        path.chmod(0o755)
        tools[name] = str(path)
    monkeypatch.setattr(plugins, "_which", tools.get)


def test_build_plugins_names_missing_tensorrt_headers(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, no_tensorrt: None
) -> None:
    _fake_tools(monkeypatch, tmp_path)
    with pytest.raises(MissingDependencyError, match=r"NvInfer\.h.*libnvinfer-dev"):
        plugins.build_plugins(tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_build_plugins_names_missing_cmake(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(plugins, "_which", lambda tool: None)
    with pytest.raises(MissingDependencyError, match="cmake not found"):
        plugins.build_plugins(tmp_path / "out")


@pytest.mark.parametrize(
    ("error", "message"),
    [
        ("CMake Error: something broke", r"cmake configure failed \(exit status 1\)[\s\S]*broke"),
        (
            'CUDA_ARCHITECTURES is set to "native", but no GPU was detected.',
            r"no GPU was detected[\s\S]*pass cuda_archs",
        ),
    ],
    ids=["any-error", "native-without-gpu"],
)
def test_build_plugins_reports_the_build_log(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, error: str, message: str
) -> None:
    headers = tmp_path / "trt" / "include"
    headers.mkdir(parents=True)
    (headers / "NvInfer.h").write_text("// stand-in\n")
    monkeypatch.setenv("TENSORRT_INCLUDE_DIR", str(headers))
    script = f"#!/bin/sh\necho 'line one'\necho '{error}' >&2\nexit 1\n"
    _fake_tools(monkeypatch, tmp_path, cmake_script=script)
    with pytest.raises(ExportError, match=message):
        plugins.build_plugins(tmp_path / "out")
    assert not (tmp_path / "out" / plugins.LIBRARY_NAME).exists()
    assert list((tmp_path / "out").iterdir()) == []  # the temporary build tree is gone


@pytest.mark.parametrize("archs", ["sm_87", "87 90", "87;;90", "abc"])
def test_build_plugins_rejects_malformed_archs(archs: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cuda_archs"):
        plugins.build_plugins(tmp_path, cuda_archs=archs)


def test_find_tensorrt_include_honours_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / "include").mkdir()
    (tmp_path / "include" / "NvInfer.h").write_text("")
    monkeypatch.delenv("TENSORRT_INCLUDE_DIR", raising=False)
    monkeypatch.setenv("TENSORRT_ROOT", str(tmp_path))
    assert plugins.find_tensorrt_include() == tmp_path / "include"
    monkeypatch.setenv("TENSORRT_INCLUDE_DIR", str(tmp_path / "include"))
    assert plugins.find_tensorrt_include() == tmp_path / "include"


# ---------------------------------------------------------------- compile-check errors


def _require_nvcc() -> None:
    if plugins.find_nvcc() is None or plugins.find_cublas_include() is None:
        pytest.skip("nvcc or the cuBLAS headers are not installed")


def test_nvcc_compile_check_reports_a_cuda_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _require_nvcc()
    src = tmp_path / "src"
    src.mkdir()
    (src / "broken.cu").write_text("__global__ void k(float* x) { x[threadIdx.x] = undeclared; }\n")
    monkeypatch.setattr(plugins, "SRC_DIR", src)
    with pytest.raises(ExportError, match=r"nvcc -c broken\.cu failed[\s\S]*undeclared"):
        plugins.nvcc_compile_check(tmp_path / "obj", archs=("90",))


def test_nvcc_compile_check_rejects_unknown_archs(tmp_path: Path) -> None:
    _require_nvcc()
    with pytest.raises(ConfigError, match="supports none of the architectures 12"):
        plugins.nvcc_compile_check(tmp_path, archs=("12",))


def test_compile_checks_name_what_is_missing(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, no_tensorrt: None
) -> None:
    with pytest.raises(MissingDependencyError, match=r"NvInfer\.h"):
        plugins.plugin_compile_check(tmp_path)
    monkeypatch.setattr(plugins, "find_cublas_include", lambda nvcc=None: None)
    monkeypatch.setattr(plugins, "find_nvcc", lambda: Path("/opt/cuda/bin/nvcc"))
    with pytest.raises(MissingDependencyError, match=r"cublas_v2\.h not found"):
        plugins.nvcc_compile_check(tmp_path)
    monkeypatch.setattr(plugins, "find_nvcc", lambda: None)
    with pytest.raises(MissingDependencyError, match="nvcc not found"):
        plugins.nvcc_compile_check(tmp_path)
