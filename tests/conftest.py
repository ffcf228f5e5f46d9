"""Shared fixtures: tiny models built in the test, bundles built once per session."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
pytest_plugins = ["pytester"]  # tests of our own pytest fixture

SHARED_DATA = Path(os.environ.get("EDGESEG_DATA", REPO.parent / "shared" / "data"))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    try:
        import tensorrt  # noqa: F401

        has_trt = True
    except ImportError:
        has_trt = False
    skip = pytest.mark.skip(reason="needs an NVIDIA GPU with TensorRT and pycuda (run `pytest -m gpu` on one)")
    for item in items:
        if "gpu" in item.keywords and not has_trt:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data, or a skip that says it is absent."""
    if not (SHARED_DATA / "camvid" / "val").is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA} (set EDGESEG_DATA to its folder)")
    return SHARED_DATA


def tiny_module(num_classes: int = 4, in_channels: int = 3, dict_output: bool = True):
    """A small conv net with BN, a stride and bilinear upsampling; returns {"out": logits}."""
    import torch
    from torch import nn

    class Tiny(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(in_channels, 8, 3, padding=1, stride=2)
            self.bn = nn.BatchNorm2d(8)
            self.head = nn.Conv2d(8, num_classes, 1)

        def forward(self, x):  # type: ignore[no-untyped-def]
            y = self.head(torch.relu(self.bn(self.conv(x))))
            y = nn.functional.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=False)
            return {"out": y} if dict_output else y

    torch.manual_seed(0)
    model = Tiny().eval()
    with torch.no_grad():  # non-trivial BN statistics, so normalisation matters
        model.bn.running_mean.uniform_(-0.5, 0.5)
        model.bn.running_var.uniform_(0.5, 2.0)
    return model


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A static 64x96 bundle of the tiny model with mask, probs and logits outputs."""
    import edgeseg

    out = tmp_path_factory.mktemp("bundles") / "tiny.edgeseg"
    bundle = edgeseg.build(
        tiny_module(),
        out,
        input_size=(64, 96),
        classes=["sky", "road", "car", "person"],
        outputs=("mask", "probs", "logits"),
        target="cpu",  # the same files on every machine (a GPU one would add an engine)
    )
    return bundle.path


@pytest.fixture(scope="session")
def dynamic_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model with symbolic height/width (multiples of 4)."""
    import edgeseg

    out = tmp_path_factory.mktemp("bundles") / "tiny-dynamic.edgeseg"
    bundle = edgeseg.build(
        tiny_module(), out, input_size=(64, 96), num_classes=4, dynamic=True, multiple_of=4,
        target="cpu",
    )
    return bundle.path


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


@pytest.fixture(autouse=True)
def _no_untrained_noise():  # type: ignore[no-untyped-def]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*untrained.*")
        yield
