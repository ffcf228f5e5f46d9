"""README's examples run: the embedding snippet, on a bundle of the name it uses."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)


def test_readme_has_a_quickstart_with_two_commands() -> None:
    text = README.read_text(encoding="utf-8")
    quickstart = text.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    commands = re.findall(r"```bash\n(.*?)```", quickstart, flags=re.S)
    assert len(commands) == 2
    assert "edgeseg build --model deeplabv3p" in commands[0] and "edgeseg run" in commands[0]
    assert "pytest" in commands[1]
    ci = (README.parent / ".ci" / "run").read_text()
    assert "pytest" in ci
    # the CRF reference tests skip without pydensecrf2: the Quickstart installs it as CI does
    crf_reference = "pip install cython && pip install --no-build-isolation pydensecrf2"
    assert crf_reference in ci and crf_reference in " ".join(quickstart.split())


def test_python_blocks_are_complete_python() -> None:
    """Every Python example at least compiles (the ones that can run on this machine run below)."""
    blocks = _python_blocks()
    assert len(blocks) >= 6
    for block in blocks:
        compile(block, "README.md", "exec")


@pytest.mark.slow
def test_build_from_module_example_runs(tmp_path: Path) -> None:
    """The build-from-any-model example as written (torchvision's DeepLabV3, about 25 s)."""
    from edgeseg.bundle import Bundle

    block = next(b for b in _python_blocks() if "deeplabv3_mobilenet_v3_large" in b)
    proc = subprocess.run([sys.executable, "-c", block], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    manifest = Bundle.load(tmp_path / "road.edgeseg").manifest
    assert len(manifest.classes) == 11 and manifest.classes[3] == "road"
    assert manifest.input.size == (360, 480)


def test_embedding_example_runs(tiny_bundle: Path, tmp_path: Path) -> None:
    block = next(b for b in _python_blocks() if "Segmenter(" in b and "seg(frame)" in b)
    shutil.copytree(tiny_bundle, tmp_path / "deeplabv3p.edgeseg")
    proc = subprocess.run([sys.executable, "-c", block], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("(360, 480) {'preprocess'")


@pytest.mark.data
def test_quickstart_run_on_camvid(shared_data: Path, tiny_bundle: Path, tmp_path: Path) -> None:
    """`edgeseg run` over the real CamVid validation folder (tiny model, real frames)."""
    val = shared_data / "camvid" / "val"
    proc = subprocess.run(
        [sys.executable, "-m", "edgeseg", "run", str(tiny_bundle), "--source", str(val), "--masks", str(tmp_path / "m")],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    n = len(list(val.glob("*.png")))
    assert f"segmented {n} frame(s)" in proc.stdout
    assert len(list((tmp_path / "m").glob("*.png"))) == n
