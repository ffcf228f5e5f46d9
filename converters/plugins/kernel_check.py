"""The plugin's DCNv2 CUDA kernels against torchvision on the GPU, without TensorRT.

``src/dcn_kernels.cu`` (the launcher the TensorRT plugin's ``enqueue`` calls)
is built with a small pybind11 binding (``kernel_check/binding.cpp``, no
TensorRT and no torch header) through torch's extension loader
(``torch.utils.cpp_extension.load``), and every case of :data:`CASES` runs at
FP32 and FP16 on the GPU and is compared with ``torchvision.ops.deform_conv2d``
run on the same GPU in float64 on exactly the inputs the kernel saw (FP16
inputs are rounded first). Each case reports the largest absolute error, the
tolerance it is held to (:data:`TOLERANCE` times ``max(1, max |reference|)``),
the share of bilinear samples that fall outside the image, and the GPU
milliseconds of the kernel and of torchvision at the same precision.

Needs a CUDA build of torch with torchvision, a CUDA device, nvcc with the
cuBLAS headers and ninja (torch's loader uses it); not TensorRT. The build is
cached by torch's loader (``~/.cache/torch_extensions``, or ``--build-dir``),
so a second run starts at once; the first one compiles two small files for
this GPU's architecture only. The whole check takes well under two minutes.

Anything missing is a clean "not run" with the reason (``no CUDA device`` on
a machine without a GPU); a build error or a case over its tolerance is
"failed". No figure is ever produced without the kernel having run on a GPU.

Usage::

    python -m converters.plugins.kernel_check [--json FILE] [--build-dir DIR]
    python -m converters.plugins.kernel_check --build-only --arch 8.7   # no GPU needed

Exit status: 0 every case within its tolerance (``--build-only``: built and
imported); 1 a case failed or the build failed; 2 bad usage; 3 not run.

This module imports torch only inside its functions, and never tensorrt.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from types import ModuleType
from typing import Any, Literal

from converters.plugins import SOURCE_DIR, SRC_DIR, find_cublas_include, require_nvcc
from edgeseg.errors import MissingDependencyError
from edgeseg.progress import Say, say_or_log

__all__ = [
    "BINDING",
    "CASES",
    "DTYPES",
    "PARAM_FIELDS",
    "TOLERANCE",
    "CaseResult",
    "KernelCase",
    "KernelCheckReport",
    "build_extension",
    "extension_forward",
    "main",
    "not_run_reason",
    "run_cases",
    "run_kernel_check",
]

BINDING = SOURCE_DIR / "kernel_check" / "binding.cpp"
"""The pybind11 binding of ``edgeseg_dcn_forward`` (device pointers in, DcnStatus out)."""
KERNEL_SOURCE = SRC_DIR / "dcn_kernels.cu"
EXTENSION_NAME = "edgeseg_dcn_kernel_check"

PARAM_FIELDS: tuple[str, ...] = (
    "batch", "in_channels", "height", "width", "out_channels", "kernel_h", "kernel_w", "out_h",
    "out_w", "stride_h", "stride_w", "pad_top", "pad_left", "pad_bottom", "pad_right",
    "dilation_h", "dilation_w", "group", "offset_group",
)  # fmt: skip
"""``edgeseg::DcnParams`` (dcn_common.cuh), field by field, as the binding takes them."""

Dtype = Literal["fp32", "fp16"]
DTYPES: tuple[Dtype, ...] = ("fp32", "fp16")
_DTYPE_CODES = {"fp32": 0, "fp16": 1}  # edgeseg::DcnDataType

TOLERANCE: dict[str, float] = {"fp32": 1e-4, "fp16": 5e-3}
"""Largest absolute error allowed, as a multiple of ``max(1, max |reference|)``.

FP32: float accumulation over at most a few hundred products (about 1e-6 seen
on the CPU twin). FP16: the column matrix and the output are stored in half
(relative rounding 2**-11 each), the GEMM accumulates in FP32. An indexing or
sampling bug is an error of the order of the values themselves.
"""

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_NOT_RUN = 0, 1, 2, 3
_MISMATCH = "mismatches the version that was used to compile"  # torch's loader, CUDA major differs


@dataclass(frozen=True)
class KernelCase:
    """One deformable convolution with symmetric padding (what torchvision takes)."""

    name: str
    batch: int
    channels: int
    size: tuple[int, int]
    out_channels: int
    kernel: tuple[int, int]
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    dilation: tuple[int, int] = (1, 1)
    group: int = 1
    offset_group: int = 1
    mask: bool = True
    bias: bool = True
    offset_scale: float = 2.0  # standard deviation of the offsets, in pixels
    integer_offsets: bool = False  # whole and half pixels: exactly on pixels and on borders

    @property
    def out_size(self) -> tuple[int, int]:
        return (
            _extent(
                self.size[0], self.padding[0], self.kernel[0], self.stride[0], self.dilation[0]
            ),
            _extent(
                self.size[1], self.padding[1], self.kernel[1], self.stride[1], self.dilation[1]
            ),
        )

    def params(self) -> list[int]:
        """The 19 fields of ``DcnParams`` in :data:`PARAM_FIELDS` order."""
        (oh, ow), (ph, pw) = self.out_size, self.padding
        values = {
            "batch": self.batch,
            "in_channels": self.channels,
            "height": self.size[0],
            "width": self.size[1],
            "out_channels": self.out_channels,
            "kernel_h": self.kernel[0],
            "kernel_w": self.kernel[1],
            "out_h": oh,
            "out_w": ow,
            "stride_h": self.stride[0],
            "stride_w": self.stride[1],
            "pad_top": ph,
            "pad_left": pw,
            "pad_bottom": ph,
            "pad_right": pw,
            "dilation_h": self.dilation[0],
            "dilation_w": self.dilation[1],
            "group": self.group,
            "offset_group": self.offset_group,
        }
        return [values[name] for name in PARAM_FIELDS]


def _extent(size: int, pad: int, kernel: int, stride: int, dilation: int) -> int:
    return (size + 2 * pad - (dilation * (kernel - 1) + 1)) // stride + 1


# Every attribute and its edges: stride 1/2/(2,1), padding 0/1/2, dilation 1/2/(1,2), groups
# 1/2/depthwise, offset groups 1/2/4, kernels 1x1/3x3/3x1/5x5, batch 1..4, with and without
# mask and bias, offsets that push most samples outside the image, offsets on pixel borders,
# and two layers of the zoo's size (a DeepLab ASPP-like 3x3 at 64 channels).
# fmt: off
CASES: tuple[KernelCase, ...] = (
    KernelCase("basic", 1, 4, (7, 9), 6, (3, 3), padding=(1, 1)),
    KernelCase("stride2-groups", 2, 4, (8, 8), 4, (3, 3), stride=(2, 2), padding=(1, 1), group=2,
               offset_group=2, bias=False),
    KernelCase("dilation2-offset-groups4", 1, 8, (9, 7), 8, (3, 3), padding=(2, 2),
               dilation=(2, 2), group=2, offset_group=4),
    KernelCase("1x1-no-mask", 2, 3, (6, 5), 5, (1, 1), mask=False),
    KernelCase("3x1-mixed-attributes", 1, 6, (10, 6), 4, (3, 1), stride=(2, 1), padding=(1, 0),
               dilation=(1, 2), group=2, offset_group=2),
    KernelCase("depthwise", 1, 16, (8, 8), 16, (3, 3), padding=(1, 1), group=16, offset_group=4),
    KernelCase("far-out-of-bounds", 1, 4, (6, 6), 4, (3, 3), padding=(1, 1), mask=False,
               offset_scale=8.0),
    KernelCase("integer-offsets-on-borders", 2, 4, (6, 6), 4, (3, 3), padding=(1, 1),
               offset_group=2, integer_offsets=True),
    KernelCase("tiny-1x1-image", 1, 1, (1, 1), 1, (1, 1), offset_scale=0.5),
    KernelCase("5x5-batch4", 4, 16, (20, 20), 32, (5, 5), padding=(2, 2), offset_group=2,
               bias=False),
    KernelCase("aspp-like-64ch", 2, 64, (48, 64), 64, (3, 3), padding=(1, 1), offset_scale=1.0),
    KernelCase("strided-dilated-32ch", 1, 32, (33, 45), 48, (3, 3), stride=(2, 2),
               padding=(2, 2), dilation=(2, 2), offset_group=2, mask=False),
)
# fmt: on


@dataclass(frozen=True)
class CaseResult:
    """One case at one precision, as measured on the GPU."""

    case: str
    dtype: str
    shape: str  # "NxCxHxW -> NxMxoHxoW"
    max_abs_error: float  # kernel vs torchvision in float64 on the same inputs
    tolerance: float  # absolute: TOLERANCE[dtype] * max(1, max |reference|)
    passed: bool
    max_abs_reference: float
    outside_fraction: float  # share of bilinear samples outside the image
    torchvision_error: float | None  # torchvision at the same precision vs float64
    kernel_ms: float  # median GPU ms of edgeseg_dcn_forward (CUDA events)
    torchvision_ms: float | None  # likewise for torchvision at the same precision


@dataclass
class KernelCheckReport:
    """What the kernel check found; ``status`` is ``passed``, ``failed`` or ``not run``."""

    status: Literal["passed", "failed", "not run"]
    reason: str
    device: str | None = None
    versions: dict[str, str | None] = field(default_factory=dict)
    cases: list[CaseResult] = field(default_factory=list)
    build_seconds: float | None = None
    seconds: float = 0.0
    date: str = ""

    @property
    def ok(self) -> bool:
        return self.status == "passed"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        """One line: the status and the reason."""
        return f"kernel check {self.status}: {self.reason}"

    def table(self) -> str:
        """The cases as a markdown table (empty when none ran)."""
        if not self.cases:
            return ""
        lines = [
            "| case | dtype | shape | max abs error | tolerance | result | samples outside "
            "| torchvision error | kernel ms | torchvision ms |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for r in self.cases:
            lines.append(
                f"| {r.case} | {r.dtype} | {r.shape} | {r.max_abs_error:.3g} | {r.tolerance:.3g} "
                f"| {'pass' if r.passed else 'FAIL'} | {r.outside_fraction:.1%} "
                f"| {_fmt(r.torchvision_error, '.3g')} | {r.kernel_ms:.3f} "
                f"| {_fmt(r.torchvision_ms, '.3f')} |"
            )
        return "\n".join(lines)


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


# -- what is needed --------------------------------------------------------------------------


def not_run_reason(*, need_device: bool = True) -> str | None:
    """Why the check cannot run here (torch, a CUDA build, torchvision, a device), or None."""
    if importlib.util.find_spec("torch") is None:
        return "torch is not installed (pip install -e '.[build]')"
    import torch

    if torch.version.cuda is None:
        return f"torch {torch.__version__} is a CPU-only build: the kernels need a CUDA build"
    if importlib.util.find_spec("torchvision") is None:
        return "torchvision is not installed (the reference is torchvision.ops.deform_conv2d)"
    if need_device and not torch.cuda.is_available():
        return (
            f"no CUDA device (torch {torch.__version__}, built for CUDA {torch.version.cuda}, "
            "sees none)"
        )
    return None


def _cuda_home(nvcc: Path) -> Path | None:
    """The CUDA toolkit nvcc belongs to: ``$CUDA_HOME``/``$CUDA_PATH``, else a folder with
    ``bin/nvcc`` and ``include/cuda_runtime_api.h`` (nvcc may be a wrapper script elsewhere)."""
    for variable in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(variable):
            return Path(os.environ[variable])
    for root in (nvcc.resolve().parent.parent, Path("/usr/local/cuda")):
        if (root / "bin" / "nvcc").exists() and (root / "include" / "cuda_runtime_api.h").is_file():
            return root
    return None


def find_cublas_library(cuda_home: Path | None) -> Path | None:
    """``libcublas.so*``: the pip ``nvidia`` packages' (the one torch loads) first, then the
    toolkit's."""
    folders: list[Path] = []
    spec = importlib.util.find_spec("nvidia")
    if spec is not None and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            folders += sorted(Path(location).glob("*/lib"))
    if cuda_home is not None:
        folders += [
            cuda_home / "lib64",
            cuda_home / "lib",
            *sorted(cuda_home.glob("targets/*/lib")),
        ]
    for folder in folders:
        found = sorted(folder.glob("libcublas.so*"), key=lambda p: len(p.name))
        if found:
            return found[0]
    return None


def build_extension(
    build_dir: str | os.PathLike[str] | None = None,
    *,
    arch: str | None = None,
    verbose: bool = False,
) -> ModuleType:
    """Builds (or reuses) the binding and ``dcn_kernels.cu`` with torch's extension loader.

    Args:
        build_dir: Where the loader builds (created); torch's cache folder by default.
        arch: ``TORCH_CUDA_ARCH_LIST`` for this build, e.g. ``"8.7"``; the visible
            GPU's by default (so a machine without a GPU must name one).
        verbose: Show the compiler commands.

    Returns:
        The imported extension (``forward``, ``workspace_bytes``, ``check_params``,
        ``status_string``, ``PARAM_COUNT``).

    Raises:
        MissingDependencyError: torch, nvcc, the CUDA or cuBLAS headers, cuBLAS or
            ninja are missing, or the binding's source is not installed.
        RuntimeError: the compiler or linker failed (torch's message holds the log).
    """
    reason = not_run_reason(need_device=False)
    if reason is not None:
        raise MissingDependencyError(reason)
    if not BINDING.is_file():
        raise MissingDependencyError(
            f"{BINDING} is missing: run from a checkout (or install converters/plugins/kernel_check/*)"
        )
    nvcc = require_nvcc()
    cuda_home = _cuda_home(nvcc)
    if cuda_home is None:
        raise MissingDependencyError(
            f"no CUDA toolkit with include/cuda_runtime_api.h found for {nvcc}: set CUDA_HOME"
        )
    os.environ.setdefault("CUDA_HOME", str(cuda_home))  # read when torch's loader is imported
    from torch.utils import cpp_extension

    if not (Path(str(cpp_extension.CUDA_HOME or "")) / "include" / "cuda_runtime_api.h").is_file():
        # imported earlier with a CUDA_HOME that has no headers (nvcc found through a wrapper)
        cpp_extension.CUDA_HOME = str(cuda_home)
    if not cpp_extension.is_ninja_available():
        raise MissingDependencyError("torch's extension loader needs ninja: pip install ninja")
    includes = [str(SRC_DIR)]
    if not (cuda_home / "include" / "cublas_v2.h").is_file():
        cublas_include = find_cublas_include(nvcc)
        if cublas_include is None:
            raise MissingDependencyError(
                "cublas_v2.h not found: install cuBLAS's development files (libcublas-dev, or "
                "pip install nvidia-cublas) or set CUBLAS_INCLUDE_DIR"
            )
        includes.append(str(cublas_include))
    cublas = find_cublas_library(cuda_home)
    if cublas is None:
        raise MissingDependencyError(f"libcublas.so not found with {cuda_home} or torch's wheels")
    folder = None
    if build_dir is not None:
        folder = Path(build_dir)
        folder.mkdir(parents=True, exist_ok=True)
    saved = os.environ.get("TORCH_CUDA_ARCH_LIST")
    if arch is not None:
        os.environ["TORCH_CUDA_ARCH_LIST"] = arch
    try:
        return cpp_extension.load(
            name=EXTENSION_NAME,
            sources=[str(BINDING), str(KERNEL_SOURCE)],
            extra_include_paths=includes,
            extra_cflags=["-O2"],
            extra_cuda_cflags=["-O2"],
            extra_ldflags=[str(cublas)],
            build_directory=str(folder) if folder is not None else None,
            verbose=verbose,
        )
    finally:
        if arch is not None:
            if saved is None:
                os.environ.pop("TORCH_CUDA_ARCH_LIST", None)
            else:
                os.environ["TORCH_CUDA_ARCH_LIST"] = saved


def check_binding(ext: ModuleType) -> list[str]:
    """Host-only checks of a built extension (no GPU needed); the problems found.

    The binding's parameter count is :data:`PARAM_FIELDS`'s, every case's parameters
    pass ``dcn_check_params``, an inconsistent set does not, and the workspace is one
    image's column matrix rounded up to 256 bytes.
    """
    problems = []
    if int(ext.PARAM_COUNT) != len(PARAM_FIELDS):
        problems.append(
            f"the binding takes {ext.PARAM_COUNT} params, PARAM_FIELDS has {len(PARAM_FIELDS)}"
        )
    for case in CASES:
        params = case.params()
        if int(ext.check_params(params)) != 0:
            problems.append(f"{case.name}: dcn_check_params refused {params}")
        rows = case.channels * case.kernel[0] * case.kernel[1]
        cols = case.out_size[0] * case.out_size[1]
        for dtype, size in (("fp32", 4), ("fp16", 2)):
            expected = (rows * cols * size + 255) // 256 * 256
            got = int(ext.workspace_bytes(params, _DTYPE_CODES[dtype]))
            if got != expected:
                problems.append(f"{case.name} {dtype}: workspace {got} bytes, expected {expected}")
    broken = CASES[0].params()
    broken[PARAM_FIELDS.index("out_h")] += 1
    if int(ext.check_params(broken)) == 0:
        problems.append("dcn_check_params accepted a wrong out_h")
    return problems


# -- running the cases -----------------------------------------------------------------------

Forward = Callable[[Any, Any, Any, Any, Any, KernelCase], Any]
"""``forward(x, weight, offset, mask, bias, case) -> y`` on torch tensors (mask, bias may be None)."""


def extension_forward(ext: ModuleType) -> Forward:
    """The built extension's ``edgeseg_dcn_forward`` as a :data:`Forward` on CUDA tensors."""
    import torch

    def forward(x: Any, weight: Any, offset: Any, mask: Any, bias: Any, case: KernelCase) -> Any:
        tensors = {"x": x, "weight": weight, "offset": offset, "mask": mask, "bias": bias}
        for name, tensor in tensors.items():
            if tensor is None:
                continue
            if tensor.device != x.device or tensor.dtype != x.dtype or not tensor.is_contiguous():
                raise ValueError(f"{name} must be a contiguous {x.dtype} tensor on {x.device}")
        if x.device.type != "cuda" or x.dtype not in (torch.float32, torch.float16):
            raise ValueError(
                f"x must be float32 or float16 on a CUDA device, got {x.dtype} on {x.device}"
            )
        oh, ow = case.out_size
        taps, og = case.kernel[0] * case.kernel[1], case.offset_group
        shapes = {
            "x": (case.batch, case.channels, *case.size),
            "weight": (case.out_channels, case.channels // case.group, *case.kernel),
            "offset": (case.batch, og * 2 * taps, oh, ow),
            "mask": (case.batch, og * taps, oh, ow),
            "bias": (case.out_channels,),
        }
        for name, tensor in tensors.items():  # the launcher trusts the params: check them here
            if tensor is not None and tuple(tensor.shape) != shapes[name]:
                raise ValueError(
                    f"{name} must be {shapes[name]} for {case.name}, got {tuple(tensor.shape)}"
                )
        params = case.params()
        code = _DTYPE_CODES["fp16" if x.dtype == torch.float16 else "fp32"]
        y = torch.empty((case.batch, case.out_channels, oh, ow), dtype=x.dtype, device=x.device)
        workspace = torch.empty(
            int(ext.workspace_bytes(params, code)), dtype=torch.uint8, device=x.device
        )
        with torch.cuda.device(x.device):
            status = int(
                ext.forward(
                    params,
                    x.data_ptr(),
                    weight.data_ptr(),
                    offset.data_ptr(),
                    0 if mask is None else mask.data_ptr(),
                    0 if bias is None else bias.data_ptr(),
                    y.data_ptr(),
                    workspace.data_ptr(),
                    code,
                    torch.cuda.current_stream(x.device).cuda_stream,
                )
            )
        if status != 0:
            raise RuntimeError(
                f"edgeseg_dcn_forward returned {status}: {ext.status_string(status)}"
            )
        return y

    return forward


def _inputs(case: KernelCase, seed: int, dtype: Any, device: Any) -> dict[str, Any]:
    import torch

    g = torch.Generator().manual_seed(seed)
    n, c, (h, w), m = case.batch, case.channels, case.size, case.out_channels
    kh, kw = case.kernel
    oh, ow = case.out_size
    taps = kh * kw
    offset_shape = (n, case.offset_group * 2 * taps, oh, ow)
    if case.integer_offsets:
        offset = torch.randint(-4, 5, offset_shape, generator=g).float() / 2
    else:
        offset = torch.randn(offset_shape, generator=g) * case.offset_scale
    values = {
        "x": torch.randn((n, c, h, w), generator=g),
        "weight": torch.randn((m, c // case.group, kh, kw), generator=g)
        / (c * taps / case.group) ** 0.5,
        "offset": offset,
        "mask": torch.rand((n, case.offset_group * taps, oh, ow), generator=g)
        if case.mask
        else None,
        "bias": torch.randn((m,), generator=g) if case.bias else None,
    }
    return {
        k: None if v is None else v.to(device=device, dtype=dtype).contiguous()
        for k, v in values.items()
    }


def _torchvision(inputs: dict[str, Any], case: KernelCase, dtype: Any) -> Any:
    from torchvision.ops import deform_conv2d

    def cast(t: Any) -> Any:
        return None if t is None else t.to(dtype)

    return deform_conv2d(
        cast(inputs["x"]),
        cast(inputs["offset"]),
        cast(inputs["weight"]),
        cast(inputs["bias"]),
        stride=case.stride,
        padding=case.padding,
        dilation=case.dilation,
        mask=cast(inputs["mask"]),
    )


def _outside_fraction(case: KernelCase, offset: Any) -> float:
    """Share of the bilinear samples at ``h <= -1``, ``h >= H``, ``w <= -1`` or ``w >= W``."""
    import torch

    kh, kw = case.kernel
    oh, ow = case.out_size
    off = offset.double().reshape(case.batch, case.offset_group, kh * kw, 2, oh, ow)
    device = off.device
    ki = torch.arange(kh, device=device).repeat_interleave(kw).double()
    kj = torch.arange(kw, device=device).repeat(kh).double()
    oy = torch.arange(oh, device=device).double() * case.stride[0] - case.padding[0]
    ox = torch.arange(ow, device=device).double() * case.stride[1] - case.padding[1]
    ys = oy[None, :, None] + (ki * case.dilation[0])[:, None, None] + off[:, :, :, 0]
    xs = ox[None, None, :] + (kj * case.dilation[1])[:, None, None] + off[:, :, :, 1]
    h, w = case.size
    outside = (ys <= -1) | (ys >= h) | (xs <= -1) | (xs >= w)
    return float(outside.double().mean())


def _median_ms(run: Callable[[], Any], device: Any, repeats: int = 5) -> float:
    import torch

    run()  # warm-up (cuBLAS heuristics, lazy module loading)
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            run()
            end.record()
            end.synchronize()
            times.append(float(start.elapsed_time(end)))
        else:
            began = time.perf_counter()
            run()
            times.append((time.perf_counter() - began) * 1e3)
    return sorted(times)[len(times) // 2]


def run_cases(
    forward: Forward,
    *,
    device: Any,
    cases: Sequence[KernelCase] = CASES,
    dtypes: Sequence[str] = DTYPES,
    say: Say | None = None,
) -> list[CaseResult]:
    """Every case at every precision through ``forward``, judged against torchvision.

    The reference is ``torchvision.ops.deform_conv2d`` on ``device`` in float64 on the
    very inputs ``forward`` gets (FP16 inputs rounded to half first).
    """
    import torch

    say = say_or_log(say)
    device = torch.device(device)
    types = {"fp32": torch.float32, "fp16": torch.float16}
    results = []
    for index, case in enumerate(cases):
        for dtype in dtypes:
            inputs = _inputs(case, 1000 + index, types[dtype], device)
            args = (inputs["x"], inputs["weight"], inputs["offset"], inputs["mask"], inputs["bias"])
            with torch.no_grad():
                got = forward(*args, case)
                reference = _torchvision(inputs, case, torch.float64)
                try:
                    same_precision = _torchvision(inputs, case, types[dtype])
                except (RuntimeError, NotImplementedError):  # e.g. no half kernel on this device
                    same_precision = None
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if tuple(got.shape) != tuple(reference.shape):
                raise RuntimeError(
                    f"{case.name} {dtype}: output shape {tuple(got.shape)}, "
                    f"torchvision gives {tuple(reference.shape)}"
                )
            scale = max(1.0, float(reference.abs().max()))
            error = float((got.double() - reference).abs().max())
            tolerance = TOLERANCE[dtype] * scale
            passed = bool(error <= tolerance)  # a NaN fails
            kernel_ms = _median_ms(functools.partial(forward, *args, case), device)
            tv_ms = None
            tv_error = None
            if same_precision is not None:
                tv_error = float((same_precision.double() - reference).abs().max())
                tv_ms = _median_ms(
                    functools.partial(_torchvision, inputs, case, types[dtype]), device
                )
            n, c, (h, w) = case.batch, case.channels, case.size
            oh, ow = case.out_size
            result = CaseResult(
                case=case.name,
                dtype=dtype,
                shape=f"{n}x{c}x{h}x{w} -> {n}x{case.out_channels}x{oh}x{ow}",
                max_abs_error=error,
                tolerance=tolerance,
                passed=passed,
                max_abs_reference=float(reference.abs().max()),
                outside_fraction=_outside_fraction(case, inputs["offset"]),
                torchvision_error=tv_error,
                kernel_ms=kernel_ms,
                torchvision_ms=tv_ms,
            )
            say(
                f"{case.name} {dtype}: max abs error {error:.3g} (tolerance {tolerance:.3g}) "
                f"{'pass' if passed else 'FAIL'}"
            )
            results.append(result)
    return results


def _versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {"python": platform.python_version()}
    try:
        import torch

        versions["torch"] = str(torch.__version__)
        versions["torch_cuda"] = torch.version.cuda
    except ImportError:
        versions["torch"] = None
    try:
        import torchvision

        versions["torchvision"] = str(torchvision.__version__)
    except ImportError:
        versions["torchvision"] = None
    return versions


def run_kernel_check(
    *,
    build_dir: str | os.PathLike[str] | None = None,
    cases: Sequence[KernelCase] = CASES,
    dtypes: Sequence[str] = DTYPES,
    say: Say | None = None,
    verbose: bool = False,
) -> KernelCheckReport:
    """Builds the kernels and runs every case on CUDA device 0 (see the module's docstring).

    Never raises for what the machine lacks: that is a ``not run`` report with the
    reason; a build error or a case over its tolerance is ``failed``.
    """
    say = say_or_log(say)
    started = time.perf_counter()
    date = datetime.now(timezone.utc).isoformat(timespec="seconds")

    def report(
        status: Literal["passed", "failed", "not run"], reason: str, **extra: Any
    ) -> KernelCheckReport:
        return KernelCheckReport(
            status=status,
            reason=reason,
            versions=_versions(),
            seconds=round(time.perf_counter() - started, 3),
            date=date,
            **extra,
        )

    reason = not_run_reason()
    if reason is not None:
        return report("not run", reason)
    import torch

    device = torch.device("cuda", 0)
    props = torch.cuda.get_device_properties(device)
    name = f"{props.name} (sm{props.major}{props.minor}, {props.total_memory / 2**30:.1f} GiB)"
    say(f"building the DCNv2 kernels for {name} with torch's extension loader")
    build_started = time.perf_counter()
    try:
        ext = build_extension(build_dir, verbose=verbose)
    except MissingDependencyError as err:
        return report("not run", str(err), device=name)
    except (RuntimeError, OSError, ImportError) as err:
        if _MISMATCH in str(err):  # the machine's nvcc cannot build for its torch: not the kernels
            return report(
                "not run", f"nvcc does not match torch's CUDA: {_tail(str(err), 3)}", device=name
            )
        return report("failed", f"building the extension failed: {_tail(str(err))}", device=name)
    build_seconds = round(time.perf_counter() - build_started, 3)
    problems = check_binding(ext)
    if problems:
        return report(
            "failed", "the binding disagrees: " + "; ".join(problems), device=name,
            build_seconds=build_seconds,
        )  # fmt: skip
    try:
        results = run_cases(
            extension_forward(ext), device=device, cases=cases, dtypes=dtypes, say=say
        )
    except (RuntimeError, ValueError) as err:
        return report("failed", f"a case could not run: {_tail(str(err))}", device=name,
                      build_seconds=build_seconds)  # fmt: skip
    failed = [r for r in results if not r.passed]
    if failed:
        worst = ", ".join(
            f"{r.case} {r.dtype} (error {r.max_abs_error:.3g} > {r.tolerance:.3g})" for r in failed
        )
        status: Literal["passed", "failed"] = "failed"
        reason = f"{len(failed)} of {len(results)} cases over their tolerance: {worst}"
    else:
        status = "passed"
        worst_case = max(results, key=lambda r: r.max_abs_error / r.tolerance)
        reason = (
            f"all {len(results)} cases within their tolerance (closest: {worst_case.case} "
            f"{worst_case.dtype}, {worst_case.max_abs_error:.3g} of {worst_case.tolerance:.3g})"
        )
    return report(status, reason, device=name, cases=results, build_seconds=build_seconds)


def _tail(text: str, lines: int = 30) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


# -- command line ----------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m converters.plugins.kernel_check",
        description="edgeseg's DCNv2 CUDA kernels against torchvision.ops.deform_conv2d on the GPU "
        "(no TensorRT).",
    )
    parser.add_argument("--json", type=Path, help="write the report here as JSON")
    parser.add_argument(
        "--build-dir", type=Path, help="where torch's loader builds (default: its cache)"
    )
    parser.add_argument(
        "--build-only",
        action="store_true",
        help="build and import the extension and check the binding on the host; run no kernel "
        "(needs no GPU with --arch)",
    )
    parser.add_argument(
        "--arch", help="TORCH_CUDA_ARCH_LIST for the build, e.g. 8.7 (default: this GPU)"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="show the compiler commands")
    args = parser.parse_args(argv)

    def say(message: str) -> None:
        print(f"[kernel-check] {message}", file=sys.stderr, flush=True)

    if args.build_only:
        report = _build_only(args.build_dir, args.arch, args.verbose, say)
    else:
        if args.arch:
            parser.error("--arch goes with --build-only (a check builds for the GPU it runs on)")
        report = run_kernel_check(build_dir=args.build_dir, say=say, verbose=args.verbose)
    if report.cases:
        print(report.table())
    print(report.summary())
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report.to_json(), indent=2) + "\n")
    if report.status == "passed":
        return EXIT_OK
    if report.status == "failed":
        return EXIT_FAILED
    if args.build_only and report.build_seconds is not None:
        return EXIT_OK
    return EXIT_NOT_RUN


def _build_only(
    build_dir: Path | None, arch: str | None, verbose: bool, say: Say
) -> KernelCheckReport:
    started = time.perf_counter()
    date = datetime.now(timezone.utc).isoformat(timespec="seconds")
    say("building the DCNv2 kernels with torch's extension loader (no kernel will run)")
    try:
        ext = build_extension(build_dir, arch=arch, verbose=verbose)
    except MissingDependencyError as err:
        status: Literal["failed", "not run"] = "not run"
        reason, build_seconds = str(err), None
    except (RuntimeError, OSError, ImportError) as err:
        status, reason, build_seconds = (
            "failed",
            f"building the extension failed: {_tail(str(err))}",
            None,
        )
    else:
        build_seconds = round(time.perf_counter() - started, 3)
        problems = check_binding(ext)
        if problems:
            status, reason = "failed", "the binding disagrees: " + "; ".join(problems)
        else:
            status = "not run"
            reason = (
                f"built and imported in {build_seconds:.1f} s and the binding agrees with "
                "PARAM_FIELDS (--build-only: no kernel ran)"
            )
    return KernelCheckReport(
        status=status,
        reason=reason,
        versions=_versions(),
        build_seconds=build_seconds,
        seconds=round(time.perf_counter() - started, 3),
        date=date,
    )


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
