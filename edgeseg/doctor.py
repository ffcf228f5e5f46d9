"""``edgeseg doctor``: what this machine has for running bundles on TensorRT, and what to install.

Every check is a probe that survives the absence of what it looks for (no
GPU, no driver, no TensorRT): it reports ``ok``, ``missing`` or ``error``
with a detail and, when something is missing, a hint saying what to install.
A probe that fails unexpectedly becomes an ``error`` check; it never stops
the others. Nothing heavy is imported unless it is installed: the CUDA
driver is read with ``ctypes`` (no CUDA context is created), TensorRT and
pycuda are imported only when found.

The TensorRT path is *ready* when the ``gpu``, ``tensorrt`` and ``pycuda``
checks are ok and no check is an error. ``edgeseg doctor`` exits with
:data:`EXIT_READY` (0) then and :data:`EXIT_NOT_READY` (1) otherwise, so a
provisioning script can test it; bundles still run on the CPU (ONNX Runtime)
when it is not ready.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import logging
import os
import platform
import re
import shutil
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edgeseg import engines
from edgeseg.errors import BackendError, ConfigError, EdgesegError
from edgeseg.runtime.backends import tensorrt_lib

log = logging.getLogger(__name__)

OK, MISSING, ERROR = "ok", "missing", "error"
EXIT_READY = 0
EXIT_NOT_READY = 1
REQUIRED = ("gpu", "tensorrt", "pycuda")  # what the TensorRT backend cannot run without

# L4T (Jetson Linux) release -> JetPack, for the hints (NVIDIA's release table)
_JETPACK = {"36.4": "6.1/6.2", "36.3": "6.0", "35": "5.1", "38": "7.0"}


@dataclass(frozen=True)
class Check:
    """One probe's result.

    Attributes:
        name: what was probed (``gpu``, ``tensorrt``, ...).
        status: ``ok``, ``missing`` or ``error``.
        detail: what was found, or what went wrong.
        hint: what to install or do (empty when nothing is needed).
        required: the TensorRT backend needs it.
        data: machine-readable facts (versions, counts) for ``--json``.
    """

    name: str
    status: str
    detail: str
    hint: str = ""
    required: bool = False
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Report:
    """All checks, and whether the TensorRT path is ready."""

    checks: tuple[Check, ...]

    @property
    def ready(self) -> bool:
        return all(c.status == OK for c in self.checks if c.required) and not any(
            c.status == ERROR for c in self.checks
        )

    @property
    def exit_code(self) -> int:
        return EXIT_READY if self.ready else EXIT_NOT_READY

    def to_json(self) -> dict[str, Any]:
        return {"ready": self.ready, "checks": [asdict(c) for c in self.checks]}

    def table(self) -> str:
        width = max(len(c.name) for c in self.checks)
        lines = []
        for c in self.checks:
            mark = {OK: "ok", MISSING: "--", ERROR: "!!"}[c.status]
            lines.append(f"[{mark}] {c.name:<{width}}  {c.detail}")
            if c.hint and c.status != OK:
                lines.append(f"     {'':<{width}}  -> {c.hint}")
        lines.append(
            "TensorRT path: ready"
            if self.ready
            else "TensorRT path: not ready (bundles run on the CPU with onnxruntime)"
        )
        return "\n".join(lines)


Probe = Callable[["_Facts"], Check]


@dataclass
class _Facts:
    """What earlier probes found, for later ones (the GPU, TensorRT's module)."""

    bundle: Path | None = None
    plugin: Path | None = None
    device: engines.DeviceInfo | None = None
    driver_cuda: int | None = None
    driver_missing: str | None = None  # why the driver library could not be loaded
    trt: Any = None
    jetson: str | None = None
    allow_plugins: bool = False  # load the bundle's plugin library (runs its code)


def _version_text(cuda_version: int) -> str:
    """12060 -> ``12.6`` (CUDA's integer versions)."""
    return f"{cuda_version // 1000}.{cuda_version % 1000 // 10}"


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text(encoding="utf-8", errors="replace").strip("\x00\n ")
    except OSError:
        return None


# -- probes ---------------------------------------------------------------------------------------


def probe_platform(facts: _Facts) -> Check:
    model = _read("/proc/device-tree/model")
    release = _read("/etc/nv_tegra_release")
    data: dict[str, Any] = {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "system": platform.system(),
    }
    detail = f"{platform.system()} {platform.machine()}, Python {platform.python_version()}"
    if release:
        match = re.search(r"R(\d+)\s*\(release\),\s*REVISION:\s*([\d.]+)", release)
        l4t = f"{match.group(1)}.{match.group(2)}" if match else release.splitlines()[0]
        jetpack = next((jp for key, jp in _JETPACK.items() if l4t.startswith(key)), None)
        facts.jetson = model or "Jetson"
        data.update({"jetson": facts.jetson, "l4t": l4t, "jetpack": jetpack})
        detail += f"; {facts.jetson}, L4T {l4t}" + (f" (JetPack {jetpack})" if jetpack else "")
    return Check("platform", OK, detail, data=data)


_ON_THE_CPU = "without a GPU, bundles run on the CPU with onnxruntime"
_INSTALL_DRIVER = "install the NVIDIA driver (on Jetson it comes with JetPack)"


def probe_gpu(facts: _Facts) -> Check:
    try:
        driver = engines.cuda_driver()
        facts.driver_cuda = driver.driver_version()
        count = driver.device_count()
    except BackendError as err:
        text = str(err)
        if "not installed" in text:  # the driver line says why: said once, there
            facts.driver_missing = text
            return Check(
                "gpu", MISSING, "none visible: there is no NVIDIA driver (see driver)", _ON_THE_CPU,
                required=True,
            )
        if "NO_DEVICE" in text:
            return Check("gpu", MISSING, f"no NVIDIA GPU: {text}", _ON_THE_CPU, required=True)
        return Check(
            "gpu",
            ERROR,
            text,
            "check the driver with nvidia-smi (desktop) or tegrastats (Jetson)",
            required=True,
        )
    if count == 0:
        return Check("gpu", MISSING, "the NVIDIA driver sees no GPU", _ON_THE_CPU, required=True)
    facts.device = engines.probe_device(0, with_tensorrt=False)
    dev = facts.device
    memory = f", {dev.total_memory / 2**30:.1f} GiB" if dev.total_memory else ""
    return Check(
        "gpu",
        OK,
        f"{dev.name}{memory}" + (f" (+{count - 1} more)" if count > 1 else ""),
        required=True,
        data={"name": dev.name, "count": count, "total_memory": dev.total_memory, "gpu": dev.gpu},
    )


def probe_compute_capability(facts: _Facts) -> Check:
    dev = facts.device
    if dev is None:
        return Check("compute capability", MISSING, "no GPU")
    major, minor = dev.compute_capability
    detail = f"{major}.{minor} ({dev.sm})"
    if (major, minor) < (7, 2):
        return Check(
            "compute capability",
            ERROR,
            detail + ": older than TensorRT 10 supports",
            "TensorRT 10 needs compute capability 7.2 (Xavier) / 7.5 (Turing) or newer",
            data={"sm": dev.sm},
        )
    return Check(
        "compute capability", OK, detail, data={"sm": dev.sm, "major": major, "minor": minor}
    )


def probe_driver(facts: _Facts) -> Check:
    kernel = _read("/proc/driver/nvidia/version")
    version = None
    if kernel:
        match = re.search(r"Kernel Module(?: for \w+)?\s+([\d.]+)", kernel)
        version = match.group(1) if match else None
    if facts.driver_missing is not None:
        return Check("driver", MISSING, facts.driver_missing, _INSTALL_DRIVER)
    if facts.driver_cuda is None:  # libcuda.so.1 loads, but CUDA did not start: the gpu line says why
        return Check(
            "driver",
            OK,
            (f"{version}, " if version else "") + "installed (libcuda.so.1 loads); CUDA did not start on it (see gpu)",
            data={"version": version},
        )
    cuda = _version_text(facts.driver_cuda)
    detail = (f"{version}, " if version else "") + f"supports CUDA {cuda}"
    return Check("driver", OK, detail, data={"version": version, "cuda": cuda})


def _cuda_runtime_version() -> tuple[str, str] | None:
    """(version, where) of the CUDA runtime library Python loads (cuda-python), or None.

    It comes from a pip wheel (often one torch brought), not from the system: it
    says nothing about the driver or the GPU, which it needs to run anything.
    """
    for name in ("cuda.bindings.runtime", "cuda.cudart"):
        try:
            if importlib.util.find_spec(name.rsplit(".", 1)[0]) is None:
                continue
        except ModuleNotFoundError:  # no `cuda` package at all
            continue
        try:
            cudart = importlib.import_module(name)
            status, value = cudart.cudaRuntimeGetVersion()
        except (ImportError, AttributeError, RuntimeError):
            continue
        if int(status) == 0 and value:
            return _version_text(int(value)), f"cuda-python's {name}"
    return None


def _cuda_toolkit_version() -> tuple[str, str] | None:
    """(version, where) of the CUDA toolkit (compilers and headers), or None."""
    for root in (os.environ.get("CUDA_HOME"), "/usr/local/cuda"):
        if not root:
            continue
        text = _read(os.path.join(root, "version.json"))
        if text:
            try:
                version = json.loads(text)["cuda"]["version"]
                return ".".join(str(version).split(".")[:2]), f"{root}/version.json"
            except (ValueError, KeyError, TypeError):
                pass
    nvcc = shutil.which("nvcc")
    if nvcc:
        out = subprocess.run(
            [nvcc, "--version"], capture_output=True, text=True, timeout=30, check=False
        )
        match = re.search(r"release ([\d.]+)", out.stdout)
        if match:
            return match.group(1), nvcc
    return None


def _cuda_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split(".")[:2])


def probe_cuda(facts: _Facts) -> Check:
    """The CUDA toolkit and the CUDA runtime library, each named as what it is.

    Neither runs anything without a driver that sees a GPU, so neither is ``ok`` then.
    """
    found = {"toolkit": _cuda_toolkit_version(), "runtime library": _cuda_runtime_version()}
    data: dict[str, Any] = {what: item[0] if item else None for what, item in found.items()}
    data["version"] = data["toolkit"] or data["runtime library"]
    parts = [f"{what} {item[0]} ({item[1]})" for what, item in found.items() if item]
    if not parts:
        return Check(
            "cuda",
            MISSING,
            "no CUDA toolkit (CUDA_HOME, /usr/local/cuda, nvcc) or runtime library (cuda-python) found",
            "install the CUDA toolkit matching the driver (on Jetson: sudo apt install "
            "nvidia-jetpack); pycuda and `edgeseg plugins build` need it",
            data=data,
        )
    detail = "CUDA " + "; ".join(parts)
    if facts.driver_cuda is None:
        return Check(
            "cuda",
            MISSING,
            f"{detail}; unusable here: CUDA runs only on an NVIDIA driver that sees a GPU (see gpu, driver)",
            data=data,
        )
    driver = _version_text(facts.driver_cuda)
    newer = [f"{what} {item[0]}" for what, item in found.items()
             if item and _cuda_tuple(item[0]) > _cuda_tuple(driver)]
    if newer:
        return Check(
            "cuda",
            ERROR,
            f"{detail}: {' and '.join(newer)} newer than the driver's CUDA {driver}",
            "update the NVIDIA driver or use a CUDA it supports",
            data=data,
        )
    return Check("cuda", OK, detail, data=data)


def probe_tensorrt(facts: _Facts) -> Check:
    hint = f"TensorRT's Python package: {engines.TRT_HINT}"
    if importlib.util.find_spec("tensorrt") is None:
        return Check(
            "tensorrt", MISSING, "the tensorrt Python package is not installed", hint, required=True
        )
    try:
        facts.trt = importlib.import_module("tensorrt")
    except (ImportError, OSError) as err:
        return Check("tensorrt", ERROR, f"import tensorrt fails: {err}", hint, required=True)
    version = str(getattr(facts.trt, "__version__", "?"))
    data = {"version": version}
    try:
        too_old = engines.parse_version(version)[:2] < engines.MIN_TRT_VERSION
    except ConfigError:
        too_old = True
    if too_old:
        return Check(
            "tensorrt",
            ERROR,
            f"TensorRT {version}: edgeseg needs 10.3 or newer",
            hint,
            required=True,
            data=data,
        )
    return Check("tensorrt", OK, f"TensorRT {version}", required=True, data=data)


def probe_pycuda(facts: _Facts) -> Check:
    if importlib.util.find_spec("pycuda") is None:
        return Check(
            "pycuda", MISSING, "pycuda is not installed", engines.PYCUDA_HINT, required=True
        )
    try:
        pycuda = importlib.import_module("pycuda")
        importlib.import_module("pycuda.driver")
    except (ImportError, OSError) as err:
        return Check(
            "pycuda",
            ERROR,
            f"import pycuda.driver fails: {err}",
            "reinstall pycuda against this CUDA: pip install --force-reinstall --no-cache-dir "
            "pycuda",
            required=True,
        )
    version = str(getattr(pycuda, "VERSION_TEXT", "?"))
    return Check("pycuda", OK, f"pycuda {version}", required=True, data={"version": version})


def probe_cuda_python(facts: _Facts) -> Check:
    for name in ("cuda.bindings", "cuda.cudart"):
        try:
            found = importlib.util.find_spec(name) is not None
        except ModuleNotFoundError:  # no `cuda` package at all
            found = False
        if found:
            return Check("cuda-python", OK, f"{name} (CUDA graphs: cuda_graph=True)")
    return Check(
        "cuda-python",
        MISSING,
        "not installed: CUDA graphs (cuda_graph=True) are unavailable",
        engines.CUDA_PYTHON_HINT + "; optional",
    )


def probe_onnxruntime(facts: _Facts) -> Check:
    if importlib.util.find_spec("onnxruntime") is None:
        return Check(
            "onnxruntime",
            MISSING,
            "not installed: no CPU backend",
            "pip install 'edgeseg[cpu]' (on a Jetson: NVIDIA's onnxruntime-gpu, or TensorRT alone)",
        )
    import onnxruntime

    from edgeseg.runtime.backends.onnxruntime import MIN_VERSION_FOR_OP

    version = str(onnxruntime.__version__)
    have = engines.parse_version(version)[:2]
    cannot = [f"{op} (needs {need[0]}.{need[1]})" for op, need in MIN_VERSION_FOR_OP.items() if have < need]
    if cannot:
        return Check(
            "onnxruntime",
            OK,
            f"{version}: runs every graph on the CPU but those with {', '.join(cannot)}",
            "bundles with those operators run with TensorRT here, or with a newer onnxruntime",
            data={"version": version},
        )
    providers = ", ".join(onnxruntime.get_available_providers())
    return Check("onnxruntime", OK, f"{version} ({providers})", data={"version": version})


def _sysfs_dla_cores() -> int:
    """DLA engines the Jetson kernel exposes (``...nvdla0``, ``...nvdla1``); 0 elsewhere."""
    root = Path("/sys/bus/platform/devices")
    try:
        return len([p for p in root.iterdir() if re.search(r"nvdla\d$", p.name)])
    except OSError:
        return 0


def probe_dla(facts: _Facts) -> Check:
    hint = (
        "DLA exists on Jetson AGX Orin and Orin NX; TensorRT builds for it on 10.0..10.7 "
        "(JetPack 6) and from 11.4.1 (JetPack >= 7.2.2)"
    )
    cores: int | None = None
    where = ""
    if facts.trt is not None and facts.device is not None:
        try:
            trt = facts.trt
            cores = int(trt.Builder(trt.Logger(trt.Logger.ERROR)).num_DLA_cores)
            where = "TensorRT"
        except (RuntimeError, TypeError, AttributeError) as err:
            log.debug("TensorRT builder for the DLA count failed: %s", err)
    if cores is None:
        cores, where = _sysfs_dla_cores(), "/sys/bus/platform/devices"
    if cores:
        return Check(
            "dla",
            OK,
            f"{cores} DLA core(s) ({where}): --dla-core 0..{cores - 1}",
            data={"cores": cores},
        )
    return Check("dla", MISSING, "no DLA cores", hint + "; optional", data={"cores": 0})


def _plugin_candidates(facts: _Facts) -> list[tuple[Path, bool]]:
    """(library, whether loading it was asked for): the one named with --plugin (the user's
    own choice), else the bundle's, only when its manifest lists it and its checksum holds
    (an unlisted library in a bundle folder is never a candidate), loaded only with
    --allow-plugins."""
    if facts.plugin is not None:
        return [(facts.plugin, True)]
    if facts.bundle is None:
        return []
    from edgeseg.bundle import Bundle

    try:
        loaded = Bundle.load(facts.bundle)  # verifies every listed file, refuses unlisted ones
    except EdgesegError:
        return []
    if engines.PLUGIN_LIBRARY not in loaded.manifest.files:
        return []
    return [(loaded.file(engines.PLUGIN_LIBRARY), facts.allow_plugins)]


def probe_plugin_library(facts: _Facts) -> Check:
    hint = (
        "only needed for --deform-conv plugin: `edgeseg plugins build --out DIR` (or --bundle "
        "BUNDLE), which needs nvcc, cmake and TensorRT's headers"
    )
    candidates = _plugin_candidates(facts)
    if not candidates:
        detail = (
            f"no {engines.PLUGIN_LIBRARY} given (--plugin PATH or --bundle BUNDLE)"
            if facts.bundle is None
            else f"the bundle {facts.bundle} has no {engines.PLUGIN_LIBRARY} (--plugin PATH checks another)"
        )
        return Check("plugin library", MISSING, detail, hint + "; optional")
    path, allowed = candidates[0]
    if not path.is_file():
        return Check("plugin library", ERROR, f"{path} does not exist", hint)
    if not allowed:
        return Check(
            "plugin library",
            OK,
            f"{path} (listed and verified; not loaded: loading runs its code)",
            "pass --allow-plugins to load the bundle's library and check that it registers "
            f"{engines.PLUGIN_OP}",
            data={"path": str(path)},
        )
    if facts.trt is None or facts.device is None:
        return Check(
            "plugin library",
            OK,
            f"{path} (not loaded: needs TensorRT and a GPU)",
            data={"path": str(path)},
        )
    try:
        logger = tensorrt_lib.make_logger()
        tensorrt_lib.load_plugin_libraries(logger, [path])
    except BackendError as err:
        return Check(
            "plugin library",
            ERROR,
            str(err),
            "rebuild it against this TensorRT: edgeseg plugins build",
            data={"path": str(path)},
        )
    return Check(
        "plugin library",
        OK,
        f"{path}: {engines.PLUGIN_OP} registered",
        data={"path": str(path)},
    )


# Where TensorRT's headers live when installed from packages: JetPack and the
# Debian/Ubuntu libnvinfer-dev packages, then tarball installs.
TENSORRT_INCLUDE_DIRS: tuple[str, ...] = (
    "/usr/include/aarch64-linux-gnu",
    "/usr/include/x86_64-linux-gnu",
    "/usr/include",
    "/usr/local/TensorRT/include",
    "/opt/tensorrt/include",
)


def find_tensorrt_include(tensorrt_root: str | os.PathLike[str] | None = None) -> Path | None:
    """The folder holding TensorRT's ``NvInfer.h``, or None.

    Looks in ``$TENSORRT_INCLUDE_DIR``, ``<tensorrt_root>/include`` (argument,
    then ``$TENSORRT_ROOT``) and the system folders of
    :data:`TENSORRT_INCLUDE_DIRS`, in that order.
    """
    candidates: list[Path] = []
    if os.environ.get("TENSORRT_INCLUDE_DIR"):
        candidates.append(Path(os.environ["TENSORRT_INCLUDE_DIR"]))
    for root in (tensorrt_root, os.environ.get("TENSORRT_ROOT")):
        if root:
            candidates += [Path(root) / "include", Path(root)]
    candidates += [Path(p) for p in TENSORRT_INCLUDE_DIRS]
    for folder in candidates:
        if (folder / "NvInfer.h").is_file():
            return folder
    return None


def probe_plugin_toolchain(facts: _Facts) -> Check:
    nvcc, cmake = shutil.which("nvcc"), shutil.which("cmake")
    include = find_tensorrt_include()
    missing = [
        what
        for what, ok in (("nvcc", nvcc), ("cmake", cmake), ("TensorRT headers", include))
        if not ok
    ]
    detail = f"nvcc {nvcc or '-'}, cmake {cmake or '-'}, NvInfer.h in {include or '-'}"
    if missing:
        return Check(
            "plugin toolchain",
            MISSING,
            detail,
            f"{', '.join(missing)} missing: `edgeseg plugins build` needs them (Jetson: "
            "JetPack's cuda-toolkit and libnvinfer-dev); optional",
        )
    return Check("plugin toolchain", OK, detail)


def probe_bundle(facts: _Facts) -> Check:
    from edgeseg.bundle import Bundle

    assert facts.bundle is not None
    try:
        loaded = Bundle.load(facts.bundle, verify=False)
    except EdgesegError as err:
        return Check(
            "bundle", ERROR, str(err), "give the NAME.edgeseg folder `edgeseg build` wrote"
        )
    manifest = loaded.manifest
    count = len(manifest.engines)
    if facts.device is None:
        return Check(
            "bundle", OK, f"{loaded.path}: {count} engine(s); no GPU here, runs on onnxruntime"
        )
    device = facts.device
    if facts.trt is not None:
        device = engines.DeviceInfo(
            device.name,
            device.compute_capability,
            str(getattr(facts.trt, "__version__", "")) or None,
        )
    try:
        choice, crf = engines.choose_engines(
            manifest, device, manifest.precision, where=str(loaded.path), crf=True
        )
    except BackendError as err:  # EngineMismatchError: no usable engine and no TensorRT
        return Check("bundle", MISSING, str(err), f"TensorRT: {engines.TRT_HINT}")
    data: dict[str, Any] = {"action": choice.action, "engines": count}
    message = f"{choice.action}: {choice.reason}"
    if crf is not None:  # a separate CRF: its own engine, chained to the model's
        data["crf_action"] = crf.action
        message += f"; CRF engine: {crf.action}: {crf.reason}"
    return Check("bundle", OK, message, data=data)


PROBES: tuple[Probe, ...] = (
    probe_platform,
    probe_gpu,
    probe_compute_capability,
    probe_driver,
    probe_cuda,
    probe_tensorrt,
    probe_pycuda,
    probe_cuda_python,
    probe_onnxruntime,
    probe_dla,
    probe_plugin_library,
    probe_plugin_toolchain,
)


def _name(probe: Probe) -> str:
    return getattr(probe, "__name__", "probe").removeprefix("probe_").replace("_", " ")


def run(
    *,
    bundle: str | os.PathLike[str] | None = None,
    plugin: str | os.PathLike[str] | None = None,
    allow_plugins: bool = False,
    probes: Sequence[Probe] = PROBES,
) -> Report:
    """Runs every probe (and, with ``bundle``, which engine it would use here).

    Args:
        bundle: a bundle to check engines and plugin library of.
        plugin: a plugin library to check (loaded: the caller named it).
        allow_plugins: also load the bundle's own plugin library (which runs its code);
            without it the library is only verified against the manifest.
        probes: the probes (tests replace them).

    Returns:
        The report; a probe that raised is an ``error`` check naming the exception.
    """
    facts = _Facts(
        bundle=Path(bundle) if bundle else None,
        plugin=Path(plugin) if plugin else None,
        allow_plugins=allow_plugins,
    )
    chosen = list(probes) + ([probe_bundle] if facts.bundle is not None else [])
    checks = []
    for probe in chosen:
        try:
            checks.append(probe(facts))
        except Exception as err:  # noqa: BLE001 - a probe reports, it never stops the doctor
            log.debug("probe %s failed", _name(probe), exc_info=True)
            checks.append(
                Check(
                    _name(probe),
                    ERROR,
                    f"the probe failed: {type(err).__name__}: {err}",
                    "please report this with `edgeseg doctor --json`",
                )
            )
    return Report(tuple(checks))
