"""``edgeseg doctor``: every probe survives absence, says what to install, and the exit code tells.

Exit codes (``edgeseg.doctor``): 0 when the TensorRT path is ready (GPU,
TensorRT >= 10.3 and pycuda ok, no check failed), 1 when it is not, 2 for
bad usage. The machines this suite runs on in CI have no GPU: the absent
cases are forced with monkeypatch so that the tests mean the same anywhere.
"""

from __future__ import annotations

import ctypes
import importlib.machinery
import importlib.util
import json
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import pytest

from edgeseg import doctor


def _no_gpu_no_tensorrt(monkeypatch: pytest.MonkeyPatch) -> None:
    real_cdll = ctypes.CDLL
    real_find_spec = importlib.util.find_spec

    def cdll(name: str, *args: Any, **kwargs: Any) -> Any:
        if "cuda" in str(name):
            raise OSError(f"{name}: cannot open shared object file: No such file or directory")
        return real_cdll(name, *args, **kwargs)

    def find_spec(name: str, *args: Any, **kwargs: Any) -> Any:
        if name.split(".")[0] in ("tensorrt", "pycuda"):
            return None
        return real_find_spec(name, *args, **kwargs)

    monkeypatch.setattr(ctypes, "CDLL", cdll)
    monkeypatch.setattr(importlib.util, "find_spec", find_spec)


def _by_name(report: doctor.Report) -> dict[str, doctor.Check]:
    return {c.name: c for c in report.checks}


def test_no_gpu_and_no_tensorrt_are_reported_with_hints(monkeypatch: pytest.MonkeyPatch) -> None:
    _no_gpu_no_tensorrt(monkeypatch)
    report = doctor.run()
    checks = _by_name(report)
    assert list(checks)[:7] == [
        "platform",
        "gpu",
        "compute capability",
        "driver",
        "cuda",
        "tensorrt",
        "pycuda",
    ]
    assert checks["gpu"].status == "missing" and checks["gpu"].required
    assert checks["gpu"].detail == "none visible: there is no NVIDIA driver (see driver)"
    assert "run on the CPU with onnxruntime" in checks["gpu"].hint
    assert checks["compute capability"].status == "missing"
    assert checks["driver"].status == "missing"
    assert "libcuda.so.1" in checks["driver"].detail
    assert "install the NVIDIA driver" in checks["driver"].hint
    # whatever CUDA toolkit or pip wheel is here, it runs nothing without a driver
    assert checks["cuda"].status == "missing"
    assert (
        checks["tensorrt"].status == "missing" and "python3-libnvinfer" in checks["tensorrt"].hint
    )
    assert "pip install 'tensorrt>=10.3'" in checks["tensorrt"].hint
    assert checks["pycuda"].status == "missing" and "pip install pycuda" in checks["pycuda"].hint
    assert checks["dla"].status in ("missing", "ok")
    assert (
        checks["plugin library"].status == "missing"
        and "edgeseg plugins build" in checks["plugin library"].hint
    )
    assert not report.ready and report.exit_code == doctor.EXIT_NOT_READY == 1
    assert "TensorRT path: not ready" in report.table()
    data = json.loads(json.dumps(report.to_json()))
    assert data["ready"] is False and {c["name"] for c in data["checks"]} == set(checks)
    assert all(c["status"] in ("ok", "missing", "error") for c in data["checks"])


def test_each_fact_is_said_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """No driver: the driver line says why, once; the gpu line does not repeat it."""
    _no_gpu_no_tensorrt(monkeypatch)
    table = doctor.run().table()
    assert table.count("libcuda.so.1: cannot open shared object file") == 1, table
    assert table.count("install the NVIDIA driver") == 1, table
    lines = [line.strip() for line in table.splitlines()]
    assert len(lines) == len(set(lines)), table


def _facts_with_driver(cuda: int | None) -> Any:
    facts = doctor._Facts()
    facts.driver_cuda = cuda
    return facts


def test_cuda_is_named_as_what_it_is_and_needs_a_driver(monkeypatch: pytest.MonkeyPatch) -> None:
    """A CUDA runtime wheel (torch's) or toolkit is no CUDA to run on without a driver and GPU."""
    monkeypatch.setattr(doctor, "_cuda_runtime_version", lambda: ("13.5", "cuda-python's cuda.bindings.runtime"))
    monkeypatch.setattr(doctor, "_cuda_toolkit_version", lambda: ("12.6", "/usr/local/cuda/version.json"))
    no_driver = doctor.probe_cuda(_facts_with_driver(None))
    assert no_driver.status == "missing"
    assert no_driver.detail == (
        "CUDA toolkit 12.6 (/usr/local/cuda/version.json); runtime library 13.5 (cuda-python's "
        "cuda.bindings.runtime); unusable here: CUDA runs only on an NVIDIA driver that sees a GPU "
        "(see gpu, driver)"
    )
    assert no_driver.data == {"toolkit": "12.6", "runtime library": "13.5", "version": "12.6"}
    old_driver = doctor.probe_cuda(_facts_with_driver(12060))
    assert old_driver.status == "error"
    assert old_driver.detail.endswith("runtime library 13.5 newer than the driver's CUDA 12.6")
    ok = doctor.probe_cuda(_facts_with_driver(13050))
    assert ok.status == "ok" and ok.detail.startswith("CUDA toolkit 12.6")
    monkeypatch.setattr(doctor, "_cuda_runtime_version", lambda: None)
    monkeypatch.setattr(doctor, "_cuda_toolkit_version", lambda: None)
    none = doctor.probe_cuda(_facts_with_driver(13050))
    assert none.status == "missing" and none.detail.startswith("no CUDA toolkit")


def test_driver_without_a_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """libcuda.so.1 loads but finds no GPU: the driver is there, the gpu line says what is not."""
    from edgeseg import engines
    from edgeseg.errors import BackendError

    def no_device() -> Any:
        raise BackendError("cuInit failed: CUDA_ERROR_NO_DEVICE (100)")

    monkeypatch.setattr(engines, "cuda_driver", no_device)
    facts = doctor._Facts()
    gpu = doctor.probe_gpu(facts)
    assert gpu.status == "missing" and gpu.detail == "no NVIDIA GPU: cuInit failed: CUDA_ERROR_NO_DEVICE (100)"
    driver = doctor.probe_driver(facts)
    assert driver.status == "ok" and "installed (libcuda.so.1 loads); CUDA did not start on it (see gpu)" in driver.detail


def test_a_failing_probe_is_an_error_not_a_crash() -> None:
    def broken(facts: Any) -> doctor.Check:
        raise RuntimeError("sysfs exploded")

    def fine(facts: Any) -> doctor.Check:
        return doctor.Check("gpu", "ok", "stand-in", required=True)

    report = doctor.run(probes=[broken, fine])
    first, second = report.checks
    assert first.status == "error" and "RuntimeError: sysfs exploded" in first.detail
    assert second.status == "ok"
    assert not report.ready  # an error anywhere: not ready


def test_ready_when_every_required_check_is_ok() -> None:
    checks = tuple(doctor.Check(n, "ok", "x", required=True) for n in doctor.REQUIRED)
    assert doctor.Report(checks).exit_code == doctor.EXIT_READY == 0
    optional = doctor.Check("dla", "missing", "no DLA cores", "optional")
    assert doctor.Report((*checks, optional)).ready


def test_jetson_platform_and_dla(monkeypatch: pytest.MonkeyPatch) -> None:
    files = {
        "/proc/device-tree/model": "NVIDIA Jetson AGX Orin Developer Kit",
        "/etc/nv_tegra_release": "# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic",
    }
    monkeypatch.setattr(doctor, "_read", files.get)
    facts = doctor._Facts()
    check = doctor.probe_platform(facts)
    assert "NVIDIA Jetson AGX Orin Developer Kit, L4T 36.4.3 (JetPack 6.1/6.2)" in check.detail
    assert check.data["jetpack"] == "6.1/6.2"
    monkeypatch.setattr(doctor, "_sysfs_dla_cores", lambda: 2)
    dla = doctor.probe_dla(facts)
    assert dla.status == "ok" and "2 DLA core(s)" in dla.detail and "--dla-core 0..1" in dla.detail


def test_tensorrt_versions(monkeypatch: pytest.MonkeyPatch) -> None:
    """With a stand-in ``tensorrt`` module (its version only): 10.3 is fine, 8.6 is too old."""
    for version, status in (("10.3.0.30", "ok"), ("8.6.2", "error")):
        module = types.ModuleType("tensorrt")
        module.__spec__ = importlib.machinery.ModuleSpec("tensorrt", None)
        module.__version__ = version
        monkeypatch.setitem(sys.modules, "tensorrt", module)
        check = doctor.probe_tensorrt(doctor._Facts())
        assert check.status == status, check
        assert version in check.detail


def test_plugin_library_and_bundle(
    tiny_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _no_gpu_no_tensorrt(monkeypatch)
    report = doctor.run(bundle=tiny_bundle, plugin=tmp_path / "libedgeseg_plugins.so")
    checks = _by_name(report)
    assert (
        checks["plugin library"].status == "error"
        and "does not exist" in checks["plugin library"].detail
    )
    assert (
        checks["bundle"].status == "ok"
        and "no GPU here, runs on onnxruntime" in checks["bundle"].detail
    )
    library = tmp_path / "libedgeseg_plugins.so"
    library.write_bytes(b"\x7fELF")
    checks = _by_name(doctor.run(plugin=library))
    assert (
        checks["plugin library"].status == "ok"
        and "not loaded: needs TensorRT and a GPU" in checks["plugin library"].detail
    )
    bad = _by_name(doctor.run(bundle=tmp_path / "nothing.edgeseg"))["bundle"]
    assert bad.status == "error" and "does not exist" in bad.detail
    # --bundle without --plugin: the bundle has no library (not "none was given")
    plugin = _by_name(doctor.run(bundle=tiny_bundle))["plugin library"]
    assert plugin.status == "missing"
    assert plugin.detail == (
        f"the bundle {tiny_bundle} has no libedgeseg_plugins.so (--plugin PATH checks another)"
    )


def test_a_bundles_plugin_library_is_verified_and_loaded_only_when_allowed(
    tiny_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil

    from edgeseg.bundle import Bundle, write_bundle

    _no_gpu_no_tensorrt(monkeypatch)
    # an unlisted library dropped into a bundle folder is no candidate (and fails verification)
    dropped = tmp_path / "dropped.edgeseg"
    shutil.copytree(tiny_bundle, dropped)
    (dropped / "libedgeseg_plugins.so").write_bytes(b"\x7fELF unlisted")
    plugin = _by_name(doctor.run(bundle=dropped, allow_plugins=True))["plugin library"]
    assert plugin.status == "missing" and "has no libedgeseg_plugins.so" in plugin.detail
    # a listed, verified library is not loaded unless allowed
    loaded = Bundle.load(tiny_bundle)
    files: dict[str, Any] = {n: tiny_bundle / n for n in loaded.manifest.files}
    files["libedgeseg_plugins.so"] = b"\x7fELF listed"
    carrying = write_bundle(tmp_path / "carrying", loaded.manifest, files).path
    plugin = _by_name(doctor.run(bundle=carrying))["plugin library"]
    assert plugin.status == "ok" and "not loaded: loading runs its code" in plugin.detail
    assert "--allow-plugins" in plugin.hint
    plugin = _by_name(doctor.run(bundle=carrying, allow_plugins=True))["plugin library"]
    assert "not loaded: needs TensorRT and a GPU" in plugin.detail  # asked for: it would load


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edgeseg", "doctor", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.slow  # CLI subprocesses
def test_cli_json_and_exit_code() -> None:
    """Whatever this machine has: --json parses; the exit code is 0 exactly when it is ready."""
    proc = _cli("--json")
    assert "Traceback" not in proc.stderr, proc.stderr
    data = json.loads(proc.stdout)
    assert proc.returncode == (0 if data["ready"] else 1)
    names = [c["name"] for c in data["checks"]]
    for name in (
        "gpu",
        "compute capability",
        "driver",
        "cuda",
        "tensorrt",
        "pycuda",
        "dla",
        "plugin library",
    ):
        assert name in names
    for check in data["checks"]:
        assert set(check) == {"name", "status", "detail", "hint", "required", "data"}
        if check["status"] != "ok" and check["required"]:
            assert check["hint"], check
    table = _cli()
    assert table.returncode == proc.returncode
    assert "TensorRT path:" in table.stdout and "[" in table.stdout
    assert _cli("--bogus").returncode == 2  # click's usage error
