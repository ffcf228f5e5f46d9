"""The deploy-time package stays thin: importing it pulls in no build-time module."""

from __future__ import annotations

import subprocess
import sys

import pytest

HEAVY = ("torch", "torchvision", "onnx", "onnxscript", "onnxslim", "polygraphy", "tensorrt", "cv2")


@pytest.mark.parametrize(
    "statement",
    [
        "import edgeseg",
        "import edgeseg.cli",
        "from edgeseg.runtime import Segmenter",
        "import edgeseg.runtime.backends.onnxruntime, edgeseg.runtime.sources, edgeseg.metrics, edgeseg.bundle",
    ],
)
def test_deploy_time_imports_are_thin(statement: str) -> None:
    code = f"{statement}\nimport sys\nprint(' '.join(m for m in {HEAVY!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"{statement!r} imported {out.stdout.strip()}"


def test_missing_build_extra_names_the_extra() -> None:
    code = (
        "import sys\n"
        "sys.modules['torch'] = None  # as if torch were not installed\n"
        "import edgeseg\n"
        "try:\n"
        "    edgeseg.build('unet', '/tmp/x')\n"
        "except edgeseg.errors.MissingDependencyError as err:\n"
        "    print(err)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "pip install 'edgeseg[build]'" in out.stdout
