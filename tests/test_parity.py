"""Parity: honest artefacts pass, corrupted ones fail loudly, with figures, report and CLI."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from PIL import Image

import edgeseg
from edgeseg.bundle import Bundle, write_bundle
from edgeseg.errors import ConfigError
from edgeseg.metrics import DEFAULT_MIN_AGREEMENT
from edgeseg.parity import (
    ArtefactResult,
    ParityReport,
    Reference,
    WorstImage,
    compare,
    expose_logits,
    iter_images,
    reference_model,
)
from edgeseg.runtime.frames import stratified_picks
from edgeseg.testing import assert_parity
from tests.conftest import tiny_module

CLASSES = ["sky", "road", "car", "person"]


@pytest.fixture(scope="module")
def frames_and_labels(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Generated scenes as PNGs, and labels = the tiny model's own masks with some noise."""
    from converters.samples import synthetic_images

    root = tmp_path_factory.mktemp("parity-data")
    images, labels = root / "images", root / "labels"
    images.mkdir()
    labels.mkdir()
    rng = np.random.default_rng(0)
    for i, frame in enumerate(synthetic_images(6, (48, 72), seed=3)):
        Image.fromarray(frame).save(images / f"f{i}.png")
        Image.fromarray(rng.integers(0, 4, (48, 72), dtype=np.uint8)).save(labels / f"f{i}.png")
    return images, labels


def _corrupted_copy(bundle: Path, out: Path, scale: float = 0.2) -> Path:
    """A copy whose graph weights are perturbed, re-checksummed so only parity can catch it."""
    model = onnx.load(str(bundle / "model.onnx"))
    rng = np.random.default_rng(0)
    for init in model.graph.initializer:
        array = numpy_helper.to_array(init)
        if array.dtype == np.float32 and array.ndim == 4:  # conv weights
            noisy = array + scale * rng.standard_normal(array.shape).astype(np.float32) * (np.abs(array).mean() + 1e-3)
            init.CopyFrom(numpy_helper.from_array(noisy, init.name))
    manifest = Bundle.load(bundle).manifest
    return write_bundle(out, manifest, {"model.onnx": model.SerializeToString()}).path


def test_honest_bundle_passes_with_labels(tiny_bundle: Path, frames_and_labels: tuple[Path, Path]) -> None:
    images, labels = frames_and_labels
    report = assert_parity(tiny_bundle, tiny_module(), images, labels=labels, min_agreement=0.9999,
                           max_miou_drop=0.01, max_abs_error=1e-4)
    (fp32,) = report.artefacts
    assert report.images == 6 and report.labelled == 6
    assert fp32.agreement >= 0.9999 and fp32.max_abs_error < 1e-4
    assert report.reference_miou is not None and fp32.miou is not None
    assert abs(report.reference_miou - fp32.miou) < 1e-6
    assert len(fp32.worst) == 5 and fp32.worst[0].agreement <= fp32.worst[-1].agreement


def test_perturbed_reference_fails(tiny_bundle: Path, frames_and_labels: tuple[Path, Path]) -> None:
    images, _ = frames_and_labels
    model = tiny_module()
    with torch.no_grad():
        model.head.weight.mul_(-1.0)  # a different model than the bundle's
    with pytest.raises(AssertionError, match=r"fp32 \(onnxruntime\): pixel agreement .*% < min_agreement 99\.9000%"):
        assert_parity(tiny_bundle, model, images)


def _report_of(agreements: dict[str, float]) -> ParityReport:
    """A report with one artefact per precision at the given pixel agreement with PyTorch."""
    graphs = {"fp32": "model.onnx", "fp16": "model.fp16.onnx", "int8": "model.int8.onnx"}
    artefacts = [
        ArtefactResult(f"{p} (onnxruntime)", graphs[p], "onnxruntime",
                       {"agreement": a, "worst_image_agreement": a, "max_abs_error": 0.1,
                        "mean_abs_error": 0.01, "max_abs_logit": 10.0})
        for p, a in agreements.items()
    ]
    return ParityReport("road.edgeseg", "PyTorch", CLASSES, 4, 0, None, None, None, artefacts)


@pytest.mark.parametrize(
    ("agreements", "min_agreement", "failures"),
    [
        # the default: each graph held to what its precision's build targets
        ({"fp32": 0.9995, "fp16": 0.996, "int8": 0.992}, DEFAULT_MIN_AGREEMENT, []),
        ({"fp32": 0.998, "int8": 0.985}, DEFAULT_MIN_AGREEMENT,
         [r"fp32 \(onnxruntime\): pixel agreement 99\.8000% < min_agreement 99\.9000%",
          r"int8 \(onnxruntime\): pixel agreement 98\.5000% < min_agreement 99\.0000%"]),
        # one figure: every graph
        ({"fp32": 0.9995, "int8": 0.992}, 0.999,
         [r"int8 \(onnxruntime\): pixel agreement 99\.2000% < min_agreement 99\.9000%"]),
        ({"fp32": 0.5, "int8": 0.5}, None, []),
    ],
)
def test_agreement_targets_per_precision(
    agreements: dict[str, float], min_agreement: Any, failures: list[str], tiny_bundle: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """README's three lines pass on an INT8 bundle its build accepted (99 %), as on an FP32 one."""
    import edgeseg.testing

    monkeypatch.setattr(edgeseg.testing, "compare", lambda *args, **kwargs: _report_of(agreements))
    if not failures:
        report = assert_parity(tiny_bundle, tiny_module(), [], min_agreement=min_agreement)
        assert report.passed
        if min_agreement is DEFAULT_MIN_AGREEMENT:
            assert report.thresholds["min_agreement (int8)"] == DEFAULT_MIN_AGREEMENT["int8"] == 0.99
        return
    with pytest.raises(AssertionError) as caught:
        assert_parity(tiny_bundle, tiny_module(), [], min_agreement=min_agreement)
    lines = str(caught.value).splitlines()[1 : 1 + len(failures)]
    assert len(lines) == len(failures)
    for line, pattern in zip(lines, failures, strict=True):
        assert re.search(pattern, line), line


def test_agreement_targets_must_cover_the_precisions(tiny_bundle: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import edgeseg.testing

    monkeypatch.setattr(edgeseg.testing, "compare", lambda *args, **kwargs: _report_of({"int8": 0.995}))
    with pytest.raises(ConfigError, match=r"min_agreement has no figure for int8 \(model.int8.onnx\); it has fp32"):
        assert_parity(tiny_bundle, tiny_module(), [], min_agreement={"fp32": 0.999})


def test_corrupted_artefact_fails_with_figures(tiny_bundle: Path, frames_and_labels: tuple[Path, Path], tmp_path: Path) -> None:
    images, labels = frames_and_labels
    bad = _corrupted_copy(tiny_bundle, tmp_path / "bad.edgeseg")
    with pytest.raises(AssertionError) as info:
        assert_parity(bad, tiny_module(), images, labels=labels, max_abs_error=1e-3, report_dir=tmp_path / "r")
    message = str(info.value)
    assert "max abs logit error" in message and "> max_abs_error 0.001" in message
    assert "pixel agreement" in message and "PyTorch" in message or "pytorch" in message
    assert (tmp_path / "r" / "index.html").is_file()
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert report["passed"] is False and report["artefacts"][0]["agreement"] < 0.999


def test_html_report_has_table_bars_and_worst_images(tiny_bundle: Path, frames_and_labels: tuple[Path, Path], tmp_path: Path) -> None:
    images, labels = frames_and_labels
    assert_parity(tiny_bundle, tiny_module(), images, labels=labels, report_dir=tmp_path / "rep")
    page = (tmp_path / "rep" / "index.html").read_text()
    assert "PASSED" in page and "IoU per class" in page and "Worst images" in page
    for name in CLASSES:
        assert f"<td>{name}</td>" in page
    pngs = sorted(p.name for p in (tmp_path / "rep" / "images").iterdir())
    assert "a0-0-disagreement.png" in pngs and "a0-0-frame.png" in pngs and len(pngs) == 20
    heat = np.asarray(Image.open(tmp_path / "rep" / "images" / "a0-0-disagreement.png"))
    assert heat.shape == (64, 96, 3)


def _report_with_worst(max_abs_logit: float, error: np.ndarray) -> ParityReport:
    """A labelled report whose one artefact equals PyTorch's IoUs (up to -1e-9) and has one worst image."""
    h, w = error.shape
    reference = np.zeros((h, w), np.uint8)
    artefact = reference.copy()
    artefact[0, 0] = 1  # one pixel differs
    worst = WorstImage("f0", 1 - 1 / (h * w), np.zeros((h, w, 3), np.uint8), reference, artefact,
                       error.astype(np.float32))
    iou = [0.5, 0.5, 0.25, 1.0]
    result = ArtefactResult("fp32 (onnxruntime)", "model.onnx", "onnxruntime",
                            {"agreement": worst.agreement, "worst_image_agreement": worst.agreement,
                             "max_abs_error": float(error.max()), "mean_abs_error": float(error.mean()),
                             "max_abs_logit": max_abs_logit},
                            miou=0.5625 - 1e-11, iou=[v - 1e-11 for v in iou], worst=[worst])
    return ParityReport("road.edgeseg", "PyTorch", CLASSES, 1, 1, None, 0.5625, iou, [result])


def test_heat_map_has_a_fixed_labelled_scale(tmp_path: Path) -> None:
    """1e-6 of error at 99.997 % agreement looks like nothing, not a red field: the scale is fixed."""
    from edgeseg.report import _heatmap, write_report

    tiny = np.full((4, 6), 1e-6, np.float32)  # |Δlogit| 1e-6 with logits up to 10: 1e-7 relative
    heat = _heatmap(tiny, np.zeros((4, 6), bool), 10.0)
    assert heat.max() == 0  # black, not the solid red of a map scaled to its own maximum
    steps = np.array([[1e-2, 1.0, 10.0, 0.0]], np.float32)  # relative 1e-3, 0.1, 1, none
    heat = _heatmap(steps, np.array([[False, False, False, True]]), 10.0)
    assert heat[0, 0].tolist() == [255, 0, 0] and heat[0, 2].tolist() == [255, 255, 0]
    assert 0 < heat[0, 1, 1] < 255 and heat[0, 3].tolist() == [255, 255, 255]  # differing: white

    page = write_report(_report_with_worst(10.0, tiny), tmp_path / "r", np.zeros((4, 3), np.uint8)).read_text()
    assert "<div class='ramp'></div><div class='ticks'><span>1e-6</span>" in page and "<span>1</span></div>" in page
    assert "relative to PyTorch's largest |logit| (10), log scale" in page
    drawn = np.asarray(Image.open(tmp_path / "r" / "images" / "a0-0-disagreement.png"))
    assert drawn[1:, 1:].max() == 0 and drawn[0, 0].tolist() == [255, 255, 255]


def test_iou_bars_share_a_baseline_and_no_negative_zero(tmp_path: Path) -> None:
    from edgeseg.report import _CSS, write_report

    page = write_report(_report_with_worst(10.0, np.zeros((4, 6))), tmp_path / "r",
                        np.zeros((4, 3), np.uint8)).read_text()
    assert "-0.00" not in page
    assert "<td>+0.00</td>" in page and "50.00 (+0.00)" in page
    # each bar starts a fixed-width track in a left-aligned cell: equal values, equal bars, one baseline
    assert ".bars td{border:none;padding:1px 6px;text-align:left}" in _CSS
    assert ".track{display:inline-block;width:300px" in _CSS
    widths = re.findall(r"<div class='iou'><span class='track'><span class='bar' style='width:(\d+)px", page)
    assert widths == ["150", "150", "150", "150", "75", "75", "300", "300"]


def test_arrays_and_mapping_labels(tiny_bundle: Path) -> None:
    rng = np.random.default_rng(5)
    frames = rng.integers(0, 256, (3, 40, 60, 3), dtype=np.uint8)
    labels = {f"image_{i:04d}": rng.integers(0, 4, (40, 60), dtype=np.uint8) for i in range(3)}
    report = compare(tiny_bundle, tiny_module(), frames, labels=labels)
    assert report.images == 3 and report.labelled == 3
    assert report.reference_iou is not None and len(report.reference_iou) == 4
    with pytest.raises(ConfigError, match="max_miou_drop needs labels"):
        compare(tiny_bundle, tiny_module(), frames).check(max_miou_drop=1.0)


class _GraphReference(Reference):
    """A reference that is not PyTorch: the bundle's own FP32 graph in ONNX Runtime."""

    description = "the fp32 graph"

    def __init__(self, bundle: Path) -> None:
        from edgeseg.runtime.backends.onnxruntime import OnnxRuntimeBackend

        self.backend = OnnxRuntimeBackend(Bundle.load(bundle).graph("fp32"))
        self.calls = 0

    def __call__(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        self.calls += 1
        out = self.backend.infer({"image": batch}, ["mask", "logits"])
        return out["mask"][0], out["logits"][0]


def test_any_reference_compares_without_torch(tiny_bundle: Path) -> None:
    frames = np.random.default_rng(6).integers(0, 256, (3, 40, 60, 3), dtype=np.uint8)
    reference = _GraphReference(tiny_bundle)
    report = compare(tiny_bundle, reference, frames)
    (result,) = report.artefacts
    assert reference.calls == 3 and report.reference == "the fp32 graph"
    assert result.figures["agreement"] == 1.0 and result.figures["max_abs_error"] == 0.0
    # the PyTorch reference of the same bundle goes through converters.reference, lazily
    assert compare(tiny_bundle, tiny_module(), frames).reference == "Tiny"


def test_label_shape_mismatch_is_named(tiny_bundle: Path) -> None:
    frames = np.zeros((1, 40, 60, 3), np.uint8)
    with pytest.raises(edgeseg.errors.InputError, match=r"label of image_0000 is \(10, 10\), the image is \(40, 60\)"):
        compare(tiny_bundle, tiny_module(), frames, labels=[np.zeros((10, 10), np.uint8)])


def test_limit_picks_spread_over_the_source(tiny_bundle: Path, frames_and_labels: tuple[Path, Path]) -> None:
    images, labels = frames_and_labels
    picked = [f"f{i}.png" for i in stratified_picks(6, 3, 0)]
    assert [name for name, _, _ in iter_images(images, limit=3)] == picked  # not the first three
    assert [name for name, _, _ in iter_images(images, limit=3, seed=0)] == picked
    report = compare(tiny_bundle, tiny_module(), images, labels=labels, limit=3, keep_worst=6)
    assert report.images == 3 and report.labelled == 3
    assert sorted(w.name for w in report.artefacts[0].worst) == picked


def test_limit_keeps_sequence_labels_aligned(tiny_bundle: Path) -> None:
    rng = np.random.default_rng(1)
    frames = [rng.integers(0, 256, (40, 50 + 2 * i, 3), dtype=np.uint8) for i in range(8)]
    labels = [np.zeros(f.shape[:2], np.uint8) for f in frames]  # a misaligned label has the wrong shape
    calls: list[tuple[int, int | None]] = []
    report = compare(tiny_bundle, tiny_module(), frames, labels=labels, limit=3,
                     progress=lambda done, total: calls.append((done, total)))
    assert report.images == 3 and report.labelled == 3
    assert calls == [(1, 3), (2, 3), (3, 3)]


@pytest.mark.slow
def test_reference_model_needs_weights_or_factory(tiny_bundle: Path, tmp_path: Path) -> None:
    manifest = Bundle.load(tiny_bundle).manifest
    with pytest.raises(ConfigError, match=r"built from a user module .*pass factory='module:callable'"):
        reference_model(manifest)
    with pytest.raises(ConfigError, match="is not 'module:callable'"):
        reference_model(manifest, factory="nocolon")
    with pytest.raises(ConfigError, match="cannot import no_such_module"):
        reference_model(manifest, factory="no_such_module:make")
    model, described, notes = reference_model(manifest, factory="tests.conftest:tiny_module")
    assert described == "factory tests.conftest:tiny_module" and notes == []
    zoo = edgeseg.build("unet", tmp_path / "u", num_classes=2, input_size=(32, 32),
                        options={"base_channels": 4}, num_samples=1)
    with pytest.raises(ConfigError, match="untrained unet"):
        reference_model(zoo.manifest)


def test_expose_logits_rejects_foreign_graphs() -> None:
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["image"], ["mask"])], "g",
        [helper.make_tensor_value_info("image", TensorProto.UINT8, [1])],
        [helper.make_tensor_value_info("mask", TensorProto.UINT8, [1])],
    )
    with pytest.raises(edgeseg.errors.InputError, match="not an ArgMax"):
        expose_logits(helper.make_model(graph))


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edgeseg", *args], capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_cli_zoo_bundle_with_weights(tmp_path: Path, frames_and_labels: tuple[Path, Path]) -> None:
    images, labels = frames_and_labels
    torch.manual_seed(0)
    from edgeseg import models as zoo

    trained = zoo.create_model("unet", num_classes=4, base_channels=4)
    ckpt = tmp_path / "w.pth"
    torch.save(trained.state_dict(), ckpt)
    bundle = edgeseg.build("unet", tmp_path / "u", num_classes=4, input_size=(48, 64),
                           options={"base_channels": 4}, weights=ckpt, num_samples=1).path
    ok = _cli("parity", str(bundle), "--images", str(images), "--labels", str(labels), "--weights", str(ckpt),
              "--min-agreement", "0.999", "--max-miou-drop", "0.5", "--json", str(tmp_path / "p.json"),
              "--report", str(tmp_path / "rep"))
    assert ok.returncode == 0, ok.stderr
    assert "PASSED" in ok.stdout and "fp32 (onnxruntime)" in ok.stdout
    data = json.loads((tmp_path / "p.json").read_text())
    assert data["passed"] and data["labelled_images"] == 6 and data["artefacts"][0]["miou_drop_points"] == pytest.approx(0, abs=0.01)
    assert (tmp_path / "rep" / "index.html").is_file()
    # the same bundle against other weights: exit 1, failing figures on stderr, no traceback
    other = tmp_path / "other.pth"
    torch.manual_seed(1)
    torch.save(zoo.create_model("unet", num_classes=4, base_channels=4).state_dict(), other)
    bad = _cli("parity", str(bundle), "--images", str(images), "--weights", str(other), "--min-agreement", "0.999")
    assert bad.returncode == 1
    assert "parity failed: fp32 (onnxruntime): pixel agreement" in bad.stderr
    assert "differ from the ones the bundle was built with" in bad.stderr
    assert "Traceback" not in bad.stderr


@pytest.mark.slow
def test_cli_errors(tiny_bundle: Path, frames_and_labels: tuple[Path, Path]) -> None:
    images, _ = frames_and_labels
    proc = _cli("parity", str(tiny_bundle), "--images", str(images))
    assert proc.returncode == 1 and "pass factory='module:callable' (--factory)" in proc.stderr
    proc = _cli("parity", str(tiny_bundle), "--images", str(images), "--max-miou-drop", "1")
    assert proc.returncode == 1 and "--max-miou-drop needs --labels" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.slow
def test_pytest_fixture(pytester: pytest.Pytester, tiny_bundle: Path, frames_and_labels: tuple[Path, Path]) -> None:
    images, _ = frames_and_labels
    root = Path(__file__).resolve().parents[1]
    pytester.makepyfile(
        f"""
        import sys
        sys.path.insert(0, {str(root)!r})
        from tests.conftest import tiny_module

        def test_ok(edgeseg_parity):
            edgeseg_parity({str(tiny_bundle)!r}, tiny_module(), {str(images)!r}, min_agreement=0.9999)

        def test_drift(edgeseg_parity):
            model = tiny_module()
            model.head.bias.data += 5 * __import__("torch").arange(4.0)
            edgeseg_parity({str(tiny_bundle)!r}, model, {str(images)!r})
        """
    )
    result = pytester.runpytest_subprocess()  # the plugin comes from the installed entry point
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*pixel agreement*< min_agreement 99.9000%*"])


@pytest.mark.data
def test_camvid_val_parity(shared_data: Path, tiny_bundle: Path, tmp_path: Path) -> None:
    """Real CamVid frames and labels (void = 11 is never counted: past the 4 classes)."""
    val, annot = shared_data / "camvid" / "val", shared_data / "camvid" / "valannot"
    report = assert_parity(tiny_bundle, tiny_module(), val, labels=annot, label_format="ids",
                           ignore_index=11, limit=12, min_agreement=0.9999, max_miou_drop=0.05)
    assert report.images == 12 and report.labelled == 12
    bad = _corrupted_copy(tiny_bundle, tmp_path / "bad.edgeseg")
    with pytest.raises(AssertionError, match="pixel agreement"):
        assert_parity(bad, tiny_module(), val, labels=annot, limit=12, min_agreement=0.999)
