"""pytest plugin (entry point ``pytest11``): the ``edgeseg_parity`` fixture.

    def test_parity(edgeseg_parity):
        edgeseg_parity("road.edgeseg", make_model(), "frames/", min_agreement=0.999)
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest


@pytest.fixture
def edgeseg_parity(tmp_path: Path) -> Callable[..., Any]:
    """``edgeseg.testing.assert_parity`` that writes its HTML report under the test's tmp_path."""
    from edgeseg.testing import assert_parity

    return functools.partial(assert_parity, report_dir=tmp_path / "edgeseg-parity")
