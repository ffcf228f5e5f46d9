"""The graph a backend loads is checked against the manifest (edgeseg/runtime/contract.py)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

import edgeseg
from edgeseg.bundle import Bundle
from edgeseg.errors import BundleError
from edgeseg.manifest import InputSpec
from edgeseg.runtime.backends.base import TensorInfo
from edgeseg.runtime.backends.onnxruntime import OnnxRuntimeBackend
from edgeseg.runtime.contract import NUM_CLASSES_KEY, check_graph
from tests.conftest import tiny_module


@pytest.fixture(scope="module")
def mask_only(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model with 6 classes and only a mask output: no class dimension to read."""
    out = tmp_path_factory.mktemp("contract") / "six.edgeseg"
    return edgeseg.build(
        tiny_module(num_classes=6), out, input_size=(64, 96), num_classes=6, num_samples=1,
        target="cpu",
    ).path


def test_builds_stamp_the_class_count_and_a_true_bundle_passes(tiny_bundle: Path) -> None:
    bundle = Bundle.load(tiny_bundle)
    with OnnxRuntimeBackend(bundle.graph()) as backend:
        assert backend.metadata[NUM_CLASSES_KEY] == "4"
        assert backend.tensors()["image"] == TensorInfo("image", "uint8", (1, 64, 96, 3), True)
        check_graph(backend, bundle.manifest, "model.onnx")  # no error


def test_a_swapped_graph_is_caught_by_its_stamp(tiny_bundle: Path, mask_only: Path) -> None:
    """Another valid graph under the manifest's name (checksums recomputed): 6 classes, not 4."""
    manifest = Bundle.load(tiny_bundle).manifest
    with OnnxRuntimeBackend(Bundle.load(mask_only).graph()) as backend:
        narrowed = dataclasses.replace(manifest, outputs=("mask",))
        with pytest.raises(BundleError, match=r"model.onnx was built for 6 classes, but the manifest names 4"):
            check_graph(backend, narrowed, "model.onnx")


def test_shapes_dtypes_and_outputs_must_match(tiny_bundle: Path, mask_only: Path) -> None:
    manifest = Bundle.load(tiny_bundle).manifest
    with OnnxRuntimeBackend(Bundle.load(tiny_bundle).graph()) as backend:
        bigger = dataclasses.replace(manifest, input=InputSpec(size=(128, 96)))
        with pytest.raises(BundleError, match=r"input 'image' is uint8 1x64x96x3, but the manifest describes a \(1, H, W, 3\)"):
            check_graph(backend, bigger, "model.onnx")
        gray = dataclasses.replace(manifest, input=InputSpec(size=(64, 96), channels=1, mean=(0.5,), std=(0.5,)))
        with pytest.raises(BundleError, match=r"\(1, H, W, 1\) uint8 image"):
            check_graph(backend, gray, "model.onnx")
        more = dataclasses.replace(manifest, classes=(*manifest.classes, "x"), palette=(*manifest.palette, (1, 2, 3)))
        with pytest.raises(BundleError, match=r"output 'probs' is float32 1x4x64x96, but the manifest describes a \(1, 5, H, W\) float probs"):
            check_graph(backend, more, "model.onnx")
    with OnnxRuntimeBackend(Bundle.load(mask_only).graph()) as backend:
        with pytest.raises(BundleError, match=r"has no output probs, logits that the manifest lists \(outputs: mask\)"):
            check_graph(backend, dataclasses.replace(manifest, classes=manifest.classes[:4]), "model.onnx")


def test_the_segmenter_refuses_a_bundle_whose_graph_is_not_its_own(
    tiny_bundle: Path, mask_only: Path, tmp_path: Path
) -> None:
    from edgeseg.bundle import write_bundle

    lying = Bundle.load(mask_only)
    files = {name: lying.path / name for name in lying.manifest.files}
    files["model.onnx"] = Bundle.load(tiny_bundle).graph()  # 4 classes, checksums recomputed
    forged = write_bundle(
        tmp_path / "forged", dataclasses.replace(lying.manifest, outputs=("mask",)), files
    )
    # the forged graph's class dimension (4) is not the manifest's (6): the first thing that differs
    with pytest.raises(BundleError, match=r"'probs' is float32 1x4x64x96, but the manifest describes a \(1, 6, H, W\)"):
        edgeseg.Segmenter(forged.path)


def test_info_checks_every_graph_too(tiny_bundle: Path, mask_only: Path, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from edgeseg.bundle import write_bundle
    from edgeseg.cli import cli
    from edgeseg.runtime.contract import check_bundle_graphs

    check_bundle_graphs(Bundle.load(tiny_bundle))  # a true bundle: no error
    lying = Bundle.load(mask_only)
    files = {name: lying.path / name for name in lying.manifest.files}
    files["model.onnx"] = Bundle.load(tiny_bundle).graph()
    forged = write_bundle(tmp_path / "forged", dataclasses.replace(lying.manifest, outputs=("mask",)), files)
    result = CliRunner().invoke(cli, ["info", str(forged.path)])
    assert result.exit_code == 1 and "but the manifest describes a (1, 6, H, W)" in result.output
    assert CliRunner().invoke(cli, ["info", str(forged.path), "--no-verify"]).exit_code == 0
