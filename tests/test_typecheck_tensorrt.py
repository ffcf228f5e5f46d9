"""tools/typecheck_tensorrt.py: mypy against tensorrt-stubs catches misspelled TensorRT calls.

The end-to-end tests download the stubs wheel once (into .typecheck/, reused)
and skip with the reason when it cannot be downloaded (exit status 3).
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "tools" / "typecheck_tensorrt.py"
STUBS_UNAVAILABLE = 3

pytest.importorskip("mypy", reason="mypy is not installed (pip install -e '.[test]')")


def _load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("typecheck_tensorrt", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look the module up
    spec.loader.exec_module(module)
    return module


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if proc.returncode == STUBS_UNAVAILABLE:
        pytest.skip(f"tensorrt-stubs could not be downloaded: {proc.stderr.strip()[-300:]}")
    return proc


SCRATCH = "\n".join(
    [
        "from __future__ import annotations",
        "",
        "import tensorrt as trt",
        "",
        "",
        "def network(logger: trt.ILogger) -> trt.INetworkDefinition:",
        "    builder = trt.Builder(logger)",
        "    return builder.{method}(0)",
        "",
    ]
)


@pytest.mark.slow
def test_misspelled_builder_method_fails(tmp_path: Path) -> None:
    bad = tmp_path / "scratch_bad.py"
    bad.write_text(SCRATCH.format(method="create_netwrok"))
    proc = _run(str(bad))
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert '"Builder" has no attribute "create_netwrok"' in out, out
    assert "scratch_bad.py:8" in out, out


def test_correct_builder_method_passes(tmp_path: Path) -> None:
    good = tmp_path / "scratch_good.py"
    good.write_text(SCRATCH.format(method="create_network"))
    proc = _run(str(good))
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.slow
def test_repository_tensorrt_code_passes() -> None:
    proc = _run()  # every file of the repo that imports tensorrt
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "calibration/tensorrt_calibrator.py" in out
    assert "Success: no issues found" in out


def test_finds_the_files_that_import_tensorrt() -> None:
    script = _load_script()
    found = {p.relative_to(REPO).as_posix() for p in script.find_tensorrt_files()}
    assert "calibration/tensorrt_calibrator.py" in found
    assert "calibration/tensorrt_cache.py" not in found  # imports nothing from tensorrt
    assert not any(name.startswith("tests/") for name in found)


def test_import_pattern() -> None:
    pattern = _load_script().IMPORTS_TENSORRT
    for line in ("import tensorrt as trt", "    import tensorrt", "from tensorrt import Builder",
                 "import tensorrt.plugin as trtp", "from tensorrt.plugin import x"):
        assert pattern.search(line), line
    for line in ("from calibration.tensorrt_cache import x", "import tensorrt_libs",
                 "# uses tensorrt", "x = 'import tensorrt'"):
        assert not pattern.search(line), line


def _fake_stubs(root: Path, *, with_in: bool = True) -> None:
    (root / "tensorrt").mkdir(parents=True)
    (root / "tensorrt_bindings").mkdir()
    (root / "tensorrt" / "__init__.pyi").write_text(
        "from __future__ import annotations\nimport tensorrt_libs as tensorrt_libs\nx: int\n"
    )
    (root / "tensorrt_bindings" / "__init__.pyi").write_text("y: int\n")
    param = "in" if with_in else "inputs"
    (root / "tensorrt_bindings" / "tensorrt.pyi").write_text(
        "class P:\n"
        f"    def f(self, {param}: list[int], out: list[int]) -> None: ...\n"
        "class N:\n"
        "    def add_scale_nd(self, input: int, mode: int, shift: int = None, "
        "channel_axis: int) -> int: ...\n"
    )


def test_fixes_apply_and_stubs_parse(tmp_path: Path) -> None:
    script = _load_script()
    _fake_stubs(tmp_path)
    report = script.apply_fixes(tmp_path)
    assert len(report) == len(script.FIXES)
    bindings = (tmp_path / "tensorrt_bindings" / "tensorrt.pyi").read_text()
    assert "def f(self, in_: list[int]" in bindings
    assert "channel_axis: int = ...)" in bindings
    assert "tensorrt_libs" not in (tmp_path / "tensorrt" / "__init__.pyi").read_text()


def test_a_fix_that_no_longer_applies_fails_loudly(tmp_path: Path) -> None:
    script = _load_script()
    _fake_stubs(tmp_path, with_in=False)  # as if a new release renamed the parameters
    with pytest.raises(script.StubsBroken, match="in_"):
        script.apply_fixes(tmp_path)
