"""The install matrix, checked by pip's own resolver, offline of the devices.

For each machine edgeseg targets (JetPack 6: CPython 3.10 on aarch64; JetPack 7:
CPython 3.12 on aarch64; x86-64 CPython 3.10 to 3.13) and each extra, pip
resolves the built wheel for that interpreter and platform (``pip install
--dry-run --report`` with ``--python-version/--platform/--only-binary=:all:``):
it must resolve, and the runtime must not pull a torch or an onnxruntime that
the machine keeps itself (a Jetson's own torch and onnxruntime-gpu). pycuda is
published as a source distribution only, which pip cannot resolve for another
platform, so the Jetson extras are resolved without it. Needs the package
index; skipped with the reason when it cannot be reached.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow  # builds a wheel and asks the index (seconds per row)

JETPACK6 = ("3.10", ["manylinux_2_28_aarch64", "manylinux_2_17_aarch64", "manylinux2014_aarch64"])
JETPACK7 = ("3.12", ["manylinux_2_28_aarch64", "manylinux_2_17_aarch64", "manylinux2014_aarch64"])
X86 = ["manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64"]

# (row, python, platforms, extras, the distributions it must not bring, the ones it must)
MATRIX: list[tuple[str, str, list[str], str, set[str], set[str]]] = [
    ("jetpack6-runtime", *JETPACK6, "", {"torch", "onnxruntime"}, set()),
    ("jetpack6-cpu", *JETPACK6, "cpu", {"torch"}, {"onnxruntime"}),
    ("jetpack6-video-plot", *JETPACK6, "video,plot", {"torch", "onnxruntime"}, set()),
    ("jetpack6-bags", *JETPACK6, "bags", {"torch", "onnxruntime"}, {"rosbags", "mcap"}),
    ("jetpack7-runtime", *JETPACK7, "", {"torch", "onnxruntime"}, set()),
    ("jetpack7-bags", *JETPACK7, "bags", {"torch", "onnxruntime"}, {"rosbags", "mcap"}),
    ("jetpack7-cpu", *JETPACK7, "cpu", {"torch"}, {"onnxruntime"}),
    *[(f"x86-cp{v.replace('.', '')}-cpu", v, X86, "cpu", {"torch"}, {"onnxruntime"})
      for v in ("3.10", "3.11", "3.12", "3.13")],
    ("x86-cp311-workstation", "3.11", X86, "workstation", set(), {"torch", "onnxruntime"}),
]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(REPO)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    (built,) = out.glob("edgeseg-*.whl")
    return built


def resolve(requirements: list[str], python: str, platforms: list[str], tmp: Path) -> dict[str, str]:
    """name -> version that pip would install for ``python`` on ``platforms`` (binaries only)."""
    report = tmp / "report.json"
    abi = "cp" + python.replace(".", "")
    command = [
        sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
        "--target", str(tmp / "target"), "--report", str(report), "--only-binary=:all:",
        "--python-version", python, "--implementation", "cp", "--abi", abi,
        *[arg for p in platforms for arg in ("--platform", p)], *requirements,
    ]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        if re.search(r"Max retries exceeded|Could not fetch URL|Temporary failure in name", proc.stderr):
            pytest.skip(f"the package index cannot be reached: {proc.stderr.strip().splitlines()[-1]}")
        raise AssertionError(f"pip cannot resolve {requirements} for cp{python} {platforms[0]}:\n{proc.stderr}")
    data: dict[str, Any] = json.loads(report.read_text())
    return {item["metadata"]["name"].lower(): item["metadata"]["version"] for item in data["install"]}


@pytest.mark.parametrize(
    ("row", "python", "platforms", "extras", "never", "always"), MATRIX, ids=[m[0] for m in MATRIX]
)
def test_every_row_of_the_matrix_resolves(
    wheel: Path, tmp_path: Path, row: str, python: str, platforms: list[str], extras: str,
    never: set[str], always: set[str],
) -> None:
    target = f"{wheel}[{extras}]" if extras else str(wheel)
    found = resolve([target], python, platforms, tmp_path)
    assert "edgeseg" in found
    assert not never & set(found), f"{row} would install {sorted(never & set(found))}"
    assert always <= set(found), f"{row} misses {sorted(always - set(found))}"
    if "onnxruntime" in found and python == "3.10":
        assert found["onnxruntime"].startswith("1.2"), found  # the last cp310 line is 1.23


@pytest.mark.parametrize(("extra", "python", "cuda_major"), [("jetpack6", "3.10", "12"), ("jetpack7", "3.12", "13")])
def test_jetson_extras_resolve_with_the_cuda_of_their_jetpack(
    tmp_path: Path, extra: str, python: str, cuda_major: str
) -> None:
    """pycuda is sdist-only (built on the device); the rest of each Jetson extra resolves."""
    tomllib = pytest.importorskip("tomllib", reason="reading pyproject.toml needs Python >= 3.11")
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    requirements = [r for r in extras[extra] if not r.startswith("pycuda")]
    found = resolve(requirements, python, JETPACK6[1], tmp_path)
    assert found["cuda-python"].split(".")[0] == cuda_major, found
    assert not {"torch", "onnxruntime"} & set(found)


def test_the_previous_pins_did_not_install_on_jetpack_6(tmp_path: Path) -> None:
    """What this matrix replaced: onnxruntime>=1.31 as a base dependency has no cp310 wheel."""
    command = [
        sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--target", str(tmp_path / "t"),
        "--only-binary=:all:", "--python-version", "3.10", "--implementation", "cp", "--abi", "cp310",
        *[arg for p in JETPACK6[1] for arg in ("--platform", p)], "onnxruntime>=1.31",
    ]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=600)
    if re.search(r"Max retries exceeded|Could not fetch URL", proc.stderr):
        pytest.skip("the package index cannot be reached")
    assert proc.returncode != 0 and "No matching distribution found for onnxruntime>=1.31" in proc.stderr
