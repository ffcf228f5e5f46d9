"""edgeseg's TensorRT plugins: sources, build and compile checks.

The plugin library ``libedgeseg_plugins.so`` holds ``EdgesegDeformConv``, a
modulated deformable convolution (ONNX ``DeformConv`` semantics) as a TensorRT
IPluginV3 with FP32 and FP16 kernels. :func:`build_plugins` builds it with
CMake against the TensorRT found on the machine (normally the device itself);
the library is carried in the bundle and loaded from there with
``trt.get_plugin_registry().load_library(path)`` (TensorRT calls the library's
exported ``getCreators`` / ``setLoggerFinder``; loading it with ``ctypes``
alone registers nothing). trtexec takes it as ``--dynamicPlugins=path``.

:func:`nvcc_compile_check` compiles every CUDA source with ``nvcc -c`` (CUDA
toolkit only, no TensorRT), which is what CI runs wherever nvcc exists.

This module imports neither torch nor onnx nor tensorrt.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

from edgeseg.doctor import TENSORRT_INCLUDE_DIRS, find_tensorrt_include
from edgeseg.engines import PLUGIN_LIBRARY as LIBRARY_NAME
from edgeseg.engines import PLUGIN_OP
from edgeseg.errors import ConfigError, ExportError, MissingDependencyError
from edgeseg.progress import Say

log = logging.getLogger(__name__)

__all__ = [
    "CUDA_SOURCES",
    "LIBRARY_NAME",
    "PLUGIN_DOMAIN",
    "PLUGIN_NAMESPACE",
    "PLUGIN_OP",
    "PLUGIN_VERSION",
    "SOURCE_DIR",
    "build_plugins",
    "find_cublas_include",
    "find_nvcc",
    "find_tensorrt_include",
    "nvcc_compile_check",
    "plugin_compile_check",
]

# PLUGIN_OP (the plugin's name, and the op_type of the ONNX nodes TensorRT's parser maps onto it)
# and LIBRARY_NAME come from edgeseg.engines, which the runtime reads them from.
PLUGIN_DOMAIN = "edgeseg"
"""ONNX domain of those nodes."""
PLUGIN_NAMESPACE = "edgeseg"
"""TensorRT plugin namespace (the nodes' ``plugin_namespace`` attribute)."""
PLUGIN_VERSION = "1"
"""TensorRT plugin version (the nodes' ``plugin_version`` attribute)."""

SOURCE_DIR = Path(__file__).resolve().parent
"""Folder with ``CMakeLists.txt`` and ``src/``."""
SRC_DIR = SOURCE_DIR / "src"
CUDA_SOURCES: tuple[str, ...] = ("dcn_kernels.cu",)
"""The .cu files under ``src/`` (:func:`nvcc_compile_check` compiles every .cu it finds)."""

DEFAULT_CHECK_ARCHS: tuple[str, ...] = ("87", "90")
"""Architectures :func:`nvcc_compile_check` compiles for: Jetson Orin and Hopper."""

_ARCHS_PATTERN = re.compile(
    r"^(native|all|all-major|\d+[af]?(-real|-virtual)?(;\d+[af]?(-real|-virtual)?)*)$"
)
_LOG_TAIL_LINES = 40



def require_nvcc() -> Path:
    """:func:`find_nvcc`'s nvcc, or MissingDependencyError saying how to get one."""
    nvcc = find_nvcc()
    if nvcc is None:
        raise MissingDependencyError(
            "nvcc not found: install the CUDA toolkit (or put its bin/ on PATH, or set CUDA_HOME)"
        )
    return nvcc


def find_nvcc() -> Path | None:
    """nvcc on PATH, else under ``$CUDA_HOME`` / ``$CUDA_PATH`` / ``/usr/local/cuda``."""
    found = _which("nvcc")
    if found:
        return Path(found)
    for root in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if root and (Path(root) / "bin" / "nvcc").is_file():
            return Path(root) / "bin" / "nvcc"
    return None


def find_cublas_include(nvcc: Path | None = None) -> Path | None:
    """The folder holding ``cublas_v2.h``, or None.

    The CUDA toolkit's own include folder normally has it; toolkits assembled
    from pip wheels keep cuBLAS in the ``nvidia`` packages (``nvidia/cu13``,
    ``nvidia/cublas``), which are searched too, as is ``$CUBLAS_INCLUDE_DIR``.
    """
    candidates: list[Path] = []
    if os.environ.get("CUBLAS_INCLUDE_DIR"):
        candidates.append(Path(os.environ["CUBLAS_INCLUDE_DIR"]))
    nvcc = nvcc or find_nvcc()
    if nvcc is not None:
        root = nvcc.resolve().parent.parent
        candidates.append(root / "include")
        candidates += sorted((root / "targets").glob("*/include"))
    spec = importlib.util.find_spec("nvidia")
    if spec is not None and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            candidates += sorted(Path(location).glob("*/include"))
    for folder in candidates:
        if (folder / "cublas_v2.h").is_file():
            return folder
    return None


def nvcc_compile_check(
    out_dir: str | os.PathLike[str], *, archs: Sequence[str] | None = None
) -> list[Path]:
    """Compiles every ``src/*.cu`` with ``nvcc -c -std=c++17`` into ``out_dir``.

    Needs the CUDA toolkit (nvcc and the cuBLAS headers) but no TensorRT and
    no GPU, so a syntax or type error in the CUDA sources fails CI.

    Args:
        out_dir: Where the object files go (created if missing).
        archs: Compute capabilities to compile for, e.g. ``("87", "90")``;
            those this nvcc does not know are dropped.

    Returns:
        The object files, one per .cu source.

    Raises:
        MissingDependencyError: nvcc or the cuBLAS headers are missing.
        ExportError: nvcc failed; the message holds its output.
    """
    nvcc = require_nvcc()
    cublas = find_cublas_include(nvcc)
    if cublas is None:
        raise MissingDependencyError(
            f"cublas_v2.h not found with the CUDA toolkit of {nvcc}: install cuBLAS's development "
            "files (libcublas-dev / cuda-libraries-dev, or pip install nvidia-cublas) "
            "or set CUBLAS_INCLUDE_DIR"
        )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    gencode: list[str] = []
    for arch in _supported_archs(nvcc, archs or DEFAULT_CHECK_ARCHS):
        gencode += ["-gencode", f"arch=compute_{arch},code=sm_{arch}"]
    objects = []
    for source in sorted(SRC_DIR.glob("*.cu")):
        obj = out / (source.stem + ".o")
        cmd = [
            str(nvcc),
            "-c",
            "-std=c++17",
            f"-I{SRC_DIR}",
            f"-I{cublas}",
            *gencode,
            "-Xcompiler",
            "-Wall",
            str(source),
            "-o",
            str(obj),
        ]
        _run_checked(cmd, what=f"nvcc -c {source.name}")
        objects.append(obj)
    return objects


def plugin_compile_check(
    out_dir: str | os.PathLike[str], *, tensorrt_include: str | os.PathLike[str] | None = None
) -> Path:
    """Compiles ``src/dcn_plugin.cpp`` against TensorRT's headers (``nvcc -c``, host code only).

    Args:
        out_dir: Where the object file goes.
        tensorrt_include: Folder holding ``NvInfer.h``; :func:`find_tensorrt_include` by default.

    Returns:
        The object file.

    Raises:
        MissingDependencyError: nvcc, cuBLAS or TensorRT headers are missing.
        ExportError: the compiler failed; the message holds its output.
    """
    include = Path(tensorrt_include) if tensorrt_include else find_tensorrt_include()
    if include is None or not (include / "NvInfer.h").is_file():
        raise MissingDependencyError(_missing_headers_message(include))
    nvcc = find_nvcc()
    if nvcc is None:
        raise MissingDependencyError("nvcc not found: install the CUDA toolkit (or set CUDA_HOME)")
    cublas = find_cublas_include(nvcc)
    if cublas is None:
        raise MissingDependencyError("cublas_v2.h not found: install cuBLAS's development files")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    obj = out / "dcn_plugin.o"
    cmd = [
        str(nvcc),
        "-c",
        "-std=c++17",
        f"-I{SRC_DIR}",
        f"-I{cublas}",
        "-isystem",
        str(include),
        "-Xcompiler",
        "-Wall,-Wextra",
        str(SRC_DIR / "dcn_plugin.cpp"),
        "-o",
        str(obj),
    ]
    _run_checked(cmd, what="compiling dcn_plugin.cpp")
    return obj


def build_plugins(
    out_dir: str | os.PathLike[str],
    *,
    tensorrt_root: str | None = None,
    cuda_archs: str | None = None,
    jobs: int | None = None,
    progress: Say | None = None,
) -> Path:
    """Builds ``libedgeseg_plugins.so`` with CMake and puts it in ``out_dir``.

    Runs ``cmake -S SOURCE_DIR -B <tmp>`` then ``cmake --build <tmp>`` in a
    temporary build tree; the library is moved into ``out_dir`` only when the
    build succeeded (an older one there is replaced atomically).

    Args:
        out_dir: Folder that receives ``libedgeseg_plugins.so``.
        tensorrt_root: TensorRT install prefix (holding ``include/NvInfer.h``);
            ``$TENSORRT_ROOT`` and the system folders by default.
        cuda_archs: CMake CUDA architectures, e.g. ``"87"`` or ``"87;90"``;
            the building machine's GPU (``native``, CMake >= 3.24) by default.
        jobs: Parallel compile jobs (default: CPU count).
        progress: Called with a short message before each step.

    Returns:
        The path of the library in ``out_dir``.

    Raises:
        ConfigError: ``cuda_archs`` or ``jobs`` is malformed.
        MissingDependencyError: cmake, nvcc or TensorRT's headers (NvInfer.h)
            are missing; checked before anything runs.
        ExportError: CMake failed; the message ends with the tail of its log.
    """
    if cuda_archs is not None and not _ARCHS_PATTERN.match(cuda_archs):
        raise ConfigError(
            "cuda_archs must be CMake CUDA architectures like '87', '87;90' or 'native', "
            f"got {cuda_archs!r}"
        )
    if jobs is not None and jobs < 1:
        raise ConfigError(f"jobs must be >= 1, got {jobs}")
    cmake = _which("cmake")
    if cmake is None:
        raise MissingDependencyError(
            "cmake not found: install CMake >= 3.18 (apt-get install cmake, or pip install cmake)"
        )
    nvcc = find_nvcc()
    if nvcc is None:
        raise MissingDependencyError(
            "nvcc not found: install the CUDA toolkit (JetPack ships it in /usr/local/cuda) "
            "or put its bin/ on PATH"
        )
    include = find_tensorrt_include(tensorrt_root)
    if include is None:
        raise MissingDependencyError(_missing_headers_message(None, tensorrt_root))

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    say: Say = progress if progress is not None else _quiet
    with tempfile.TemporaryDirectory(prefix=".edgeseg-plugins-", dir=out) as tmp:
        build = Path(tmp) / "build"
        configure = [
            cmake,
            "-S",
            str(SOURCE_DIR),
            "-B",
            str(build),
            "-DCMAKE_BUILD_TYPE=Release",
            f"-DCMAKE_CUDA_COMPILER={nvcc}",
            f"-DTENSORRT_INCLUDE_DIR={include}",
        ]
        if tensorrt_root:
            configure.append(f"-DTENSORRT_ROOT={tensorrt_root}")
        if cuda_archs:
            configure.append(f"-DCMAKE_CUDA_ARCHITECTURES={cuda_archs}")
        say(f"configuring the plugins (TensorRT headers at {include})")
        try:
            _run_checked(configure, what="cmake configure")
        except ExportError as err:
            if "no GPU was detected" not in str(err):
                raise
            raise ExportError(
                f"{err}\nThis machine has no GPU to build for: pass cuda_archs "
                "(--cuda-arch), e.g. '87' for Jetson Orin."
            ) from err
        say("compiling the plugins")
        _run_checked(
            [
                cmake,
                "--build",
                str(build),
                "--target",
                "edgeseg_plugins",
                "--parallel",
                str(jobs or os.cpu_count() or 1),
            ],
            what="cmake --build",
        )
        built = build / LIBRARY_NAME
        if not built.is_file():
            raise ExportError(f"cmake finished but {built} was not produced")
        staged = Path(tmp) / LIBRARY_NAME
        shutil.copy2(built, staged)
        target = out / LIBRARY_NAME
        os.replace(staged, target)
    log.info("built %s", target)
    return target


def _quiet(message: str) -> None:
    del message


def _which(tool: str) -> str | None:
    return shutil.which(tool)


def _missing_headers_message(include: Path | None, tensorrt_root: str | None = None) -> str:
    searched = [str(include)] if include else []
    if tensorrt_root:
        searched.append(f"{tensorrt_root}/include")
    searched += [d for d in TENSORRT_INCLUDE_DIRS if d not in searched]
    return (
        "TensorRT headers (NvInfer.h) not found in " + ", ".join(searched) + ": install them "
        "(JetPack ships them; apt-get install libnvinfer-dev, or a TensorRT tarball) and pass "
        "tensorrt_root or set TENSORRT_ROOT / TENSORRT_INCLUDE_DIR"
    )


def _supported_archs(nvcc: Path, wanted: Sequence[str]) -> list[str]:
    """``wanted`` minus what ``nvcc --list-gpu-arch`` does not list (all if nvcc cannot say)."""
    try:
        proc = subprocess.run(
            [str(nvcc), "--list-gpu-arch"], capture_output=True, text=True, timeout=60, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return list(wanted)
    known = set(re.findall(r"compute_(\d+[af]?)", proc.stdout))
    if proc.returncode != 0 or not known:
        return list(wanted)
    kept = [a for a in wanted if a in known]
    if not kept:
        raise ConfigError(f"{nvcc} supports none of the architectures {', '.join(wanted)}")
    dropped = [a for a in wanted if a not in known]
    if dropped:
        log.info("%s does not know sm_%s; skipped", nvcc, ", sm_".join(dropped))
    return kept


def _run_checked(cmd: list[str], *, what: str) -> str:
    """Runs ``cmd``; its combined output, or ExportError with the output's tail."""
    log.debug("running %s", " ".join(cmd))
    try:
        proc = subprocess.run(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=3600,
            check=False,
        )
    except (OSError, subprocess.SubprocessError) as err:
        raise ExportError(f"{what} could not run: {err}") from err
    if proc.returncode != 0:
        tail = "\n".join(proc.stdout.strip().splitlines()[-_LOG_TAIL_LINES:])
        raise ExportError(
            f"{what} failed (exit status {proc.returncode}); last lines of its output:\n{tail}"
        )
    return proc.stdout
