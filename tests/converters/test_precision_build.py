"""FP16 and INT8 bundles end to end: edgeseg.build(precision=...), `edgeseg build --precision`,
`edgeseg calibrate` and `edgeseg info`, on tiny models and generated calibration images."""

from __future__ import annotations

import json
import logging
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner, Result
from PIL import Image

import edgeseg
from calibration.qdq_rules import check_tensorrt_qdq
from calibration.tensorrt_cache import parse_cache
from converters.precision import calibrate_bundle
from converters.samples import synthetic_images
from edgeseg.bundle import Bundle
from edgeseg.cli import cli
from edgeseg.errors import ConfigError, ParityError
from edgeseg.manifest import Target
from tests.calibration.test_quantize import DeepNet
from tests.conftest import tiny_module

SIZE = (32, 48)




def _write_pngs(folder: Path, n: int, seed: int, size: tuple[int, int] = (40, 60)) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(synthetic_images(n, size, seed=seed)):
        Image.fromarray(image).save(folder / f"frame_{i:03d}.png")
    return folder


@pytest.fixture(scope="session")
def calib_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """32 frames: 16 to calibrate on and 16 held out for evaluation at calib_size=16."""
    return _write_pngs(tmp_path_factory.mktemp("calib") / "frames", 32, seed=11)


@pytest.fixture(scope="session")
def dirty_calib_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = _write_pngs(tmp_path_factory.mktemp("dirty") / "frames", 14, seed=12)
    (folder / "broken.png").write_bytes(b"not a png at all")
    (folder / "sub").mkdir()
    (folder / "sub" / "cut.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    return folder


@pytest.fixture(scope="session")
def eval_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _write_pngs(tmp_path_factory.mktemp("eval") / "frames", 8, seed=13)


@pytest.fixture(scope="session")
def int8_cpu(tmp_path_factory: pytest.TempPathFactory, calib_dir: Path) -> Bundle:
    """cpu placement, evaluation frames held out of the calibration folder."""
    out = tmp_path_factory.mktemp("int8") / "cpu"
    return edgeseg.build(
        tiny_module(),
        out,
        input_size=SIZE,
        precision="int8",
        calib=calib_dir,
        calib_size=16,
        placement="cpu",
        num_samples=2,
    )


@pytest.fixture(scope="session")
def int8_tensorrt(
    tmp_path_factory: pytest.TempPathFactory, dirty_calib_dir: Path, eval_dir: Path
) -> Bundle:
    """tensorrt placement, minmax, a folder with unreadable files, evaluation on samples."""
    out = tmp_path_factory.mktemp("int8") / "trt"
    return edgeseg.build(
        tiny_module(),
        out,
        input_size=SIZE,
        precision="int8",
        calib=dirty_calib_dir,
        calib_size=16,
        placement="tensorrt",
        method="minmax",
        samples=eval_dir,
        outputs=("mask", "probs"),
        num_samples=2,
    )


BUNDLES = ["int8_cpu", "int8_tensorrt"]


# ---------------------------------------------------------------- edgeseg.build(precision="int8")


@pytest.mark.parametrize("which", BUNDLES)
def test_int8_bundle_manifest(request: pytest.FixtureRequest, which: str) -> None:
    bundle: Bundle = request.getfixturevalue(which)
    m = bundle.manifest
    placement = "cpu" if which == "int8_cpu" else "tensorrt"
    assert m.precision == "int8"
    assert m.graphs == {"fp32": "model.onnx", "int8": "model.int8.onnx"}
    assert {"model.onnx", "model.int8.onnx", "calibration.cache"} <= set(m.files)
    assert m.parity.precision == "fp32" and m.parity.agreement >= 0.999  # fp32 vs PyTorch
    info = m.precisions["int8"]
    assert set(m.precisions) == {"int8"} and info.graph == "model.int8.onnx"
    parity = info.parity
    assert 0.99 <= parity.agreement <= 1.0  # the default int8 target
    assert parity.backend == "onnxruntime-cpu" and parity.reference.startswith("fp32 graph")
    assert parity.pytorch.agreement >= 0.99
    quant = info.quantization
    assert quant.placement == placement
    assert quant.method == ("entropy" if placement == "cpu" else "minmax")
    assert quant.quantized_nodes >= 2 and isinstance(quant.kept_float, tuple)
    share = quant.int8_share  # the tiny model's two Convs at 32x48: 165888 + 24576 FLOPs
    assert share.flops == 190464 and share.floor == 0.5 and 0.5 <= share.share <= 1.0
    assert share.int8_flops == round(share.share * share.flops)
    assert quant.trt_cache.file == "calibration.cache"
    assert quant.trt_cache.header == "TRT-100300-EntropyCalibration2"
    calibration = quant.calibration
    assert calibration.kind == "folder" and calibration.image_size == SIZE
    assert isinstance(calibration.used, int) and isinstance(calibration.skipped, int)
    assert info.target == Target(min_agreement=0.99, max_miou_drop=None, confidence=0.95)
    # judged on the agreement that 95 % of the judged frames reach, which is at most their mean
    assert parity.agreement_low is not None and 0.99 <= parity.agreement_low <= parity.agreement
    if placement == "cpu":
        assert parity.samples == 16 and "held out from calibration" in parity.sample_source
        assert calibration.used == 16 and calibration.held_out_for_evaluation == 16
        assert calibration.skipped == 0 and calibration.available == 32
        assert quant.tensorrt_rules is None
    else:
        assert parity.samples == 8 and parity.sample_source == str(
            request.getfixturevalue("eval_dir")
        )
        rules = quant.tensorrt_rules
        assert rules.ok is True and rules.quantized_ops.get("Conv", 0) >= 1
        assert calibration.held_out_for_evaluation is None
    json.dumps(m.to_json())  # the manifest is JSON all the way down


@pytest.mark.parametrize("which", BUNDLES)
def test_int8_graph_and_calibration_cache(request: pytest.FixtureRequest, which: str) -> None:
    bundle: Bundle = request.getfixturevalue(which)
    graph = onnx.load(str(bundle.graph("int8")))
    assert bundle.graph() == bundle.graph("int8")
    ops = {n.op_type for n in graph.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "ArgMax"} <= ops
    assert [o.name for o in graph.graph.output] == list(bundle.manifest.outputs)
    if which == "int8_tensorrt":
        report = check_tensorrt_qdq(graph)  # the checker holds on what the bundle ships
        assert report.ok, report.violations
    cache = parse_cache((bundle.path / "calibration.cache").read_bytes())
    assert cache.header() == "TRT-100300-EntropyCalibration2"
    assert cache.version == 100300 and cache.algorithm == "EntropyCalibration2"
    assert (
        len(cache.scales)
        == bundle.manifest.precisions["int8"].quantization.trt_cache.tensors
    )
    assert cache.scales and all(s > 0 for s in cache.scales.values())
    fp32_tensors = {t for n in onnx.load(str(bundle.graph("fp32"))).graph.node for t in n.output}
    assert set(cache.scales) <= fp32_tensors  # ranges of the float graph's tensors


def test_segmenter_runs_int8_by_default_and_fp32_on_request(int8_cpu: Bundle) -> None:
    frame = synthetic_images(1, (50, 70), seed=21)[0]
    with edgeseg.Segmenter(int8_cpu.path) as seg:
        assert seg.precision == "int8"
        int8_mask = seg(frame).mask
    with edgeseg.Segmenter(int8_cpu.path, precision="fp32") as seg:
        assert seg.precision == "fp32"
        fp32_mask = seg(frame).mask
    assert int8_mask.shape == fp32_mask.shape == (50, 70)
    assert int8_mask.dtype == np.uint8 and int8_mask.max() < 4
    assert float(np.mean(int8_mask == fp32_mask)) >= 0.95


def test_corrupt_calibration_files_are_skipped_and_counted(int8_tensorrt: Bundle) -> None:
    calibration = int8_tensorrt.manifest.precisions["int8"].quantization.calibration
    assert calibration.available == 16
    assert calibration.skipped == 2 and calibration.used == 14
    assert sorted(calibration.skipped_names) == ["broken.png", "sub/cut.jpg"]


# ---------------------------------------------------------------- fp16


def test_fp16_build(tmp_path: Path) -> None:
    bundle = edgeseg.build(
        tiny_module(), tmp_path / "half", input_size=SIZE, precision="fp16", num_samples=4
    )
    m = bundle.manifest
    assert m.precision == "fp16" and m.graphs["fp16"] == "model.fp16.onnx"
    record = m.precisions["fp16"]
    assert record.fp16.fp16_nodes > 0 and record.parity.agreement >= 0.995
    with edgeseg.Segmenter(bundle.path) as seg:
        assert seg.precision == "fp16" and seg(np.zeros((40, 40, 3), np.uint8)).mask.shape == (
            40,
            40,
        )


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"precision": "int8"}, "int8 needs a calibration set: calib=PATH"),
        ({"calib": "frames"}, "calib is for precision='int8'; this build is fp32"),
        (
            {"precision": "fp16", "calib": "frames"},
            "calib is for precision='int8'; this build is fp16",
        ),
        ({"precision": "int4"}, "precision must be one of fp32, fp16, int8, got 'int4'"),
        ({"labels": "labels"}, r"labels need samples=DIR"),
        ({"precision": "int8", "calib": "frames", "method": "kl"}, "method must be one of minmax"),
        (
            {"precision": "int8", "calib": "frames", "placement": "gpu"},
            "placement must be one of cpu, tensorrt",
        ),
        ({"precision": "int8", "calib": "frames", "calib_size": 0}, "calib_size must be >= 1"),
    ],
)
def test_precision_arguments(tmp_path: Path, kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        edgeseg.build(tiny_module(), tmp_path / "b", input_size=SIZE, **kwargs)
    assert not (tmp_path / "b.edgeseg").exists()


def test_max_miou_drop_needs_labels(tmp_path: Path, calib_dir: Path) -> None:
    with pytest.raises(ConfigError, match="max_miou_drop needs labelled evaluation images"):
        edgeseg.build(
            tiny_module(),
            tmp_path / "b",
            input_size=SIZE,
            precision="int8",
            calib=calib_dir,
            calib_size=16,
            max_miou_drop=1.0,
            num_samples=1,
        )
    assert list(tmp_path.iterdir()) == []


def test_too_few_calibration_images(tmp_path: Path) -> None:
    folder = _write_pngs(tmp_path / "three", 3, seed=14)
    with pytest.raises(ConfigError) as err:
        edgeseg.build(
            tiny_module(),
            tmp_path / "b",
            input_size=SIZE,
            precision="int8",
            calib=folder,
            calib_size=16,
            num_samples=1,
        )
    text = str(err.value)
    assert str(folder) in text and "3 usable images of 3 picked" in text and "at least 8" in text
    assert not (tmp_path / "b.edgeseg").exists()


def test_missed_target_without_mixed_precision_writes_nothing(
    tmp_path: Path, calib_dir: Path
) -> None:
    torch.manual_seed(0)
    out = tmp_path / "deep"
    with pytest.raises(
        ParityError, match=r"int8 graph misses the target \(mixed precision was off"
    ) as err:
        edgeseg.build(
            DeepNet().eval(),
            out,
            input_size=SIZE,
            precision="int8",
            calib=calib_dir,
            calib_size=16,
            min_agreement=1.0,
            mixed_precision=False,
            num_samples=1,
        )
    assert "nothing was written" in str(err.value) and "16 images" in str(err.value)
    assert not out.with_name("deep.edgeseg").exists() and list(tmp_path.iterdir()) == []


DEEP_FLOPS = 1517568  # DeepNet's five Convs at 32x48 (tests/calibration/test_flops.py)


def _floor_message(text: str, kept: str) -> None:
    """The figures and the ways out that a graph below the INT8 floor is refused with."""
    assert "runs 0.0% of the model's compute in INT8 (0.00 of 0.00152 GFLOPs)" in text
    assert "below the floor of 50.0% (min_int8_share)" in text
    assert f"mixed precision kept {kept} layers in float to meet the target (agreement >= 100.00% on 95% of the " \
        "frames)" in text
    assert "5 of 5 compute nodes run in float, the largest: node_conv2d" in text
    assert "(Conv, 29.1% of the FLOPs)" in text and "Nothing was written" in text
    for way in ("--precision fp16 / fp32", "--calib-size, now 16 images", "--min-agreement, now 100.00%",
                "--confidence, now 0.95",
                "--min-int8-share, now 0.5; 0 turns this check off"):
        assert way in text, way


def test_int8_below_the_floor_fails_the_build_and_writes_nothing(
    tmp_path: Path, calib_dir: Path
) -> None:
    """An impossible target: the search keeps every Conv in float, which meets it (the float
    graph agrees with itself), leaving a graph with no INT8 compute; the floor refuses it."""
    torch.manual_seed(0)
    out = tmp_path / "deep"
    with pytest.raises(ParityError, match="below the floor of 50.0%") as err:
        edgeseg.build(
            DeepNet().eval(), out, input_size=SIZE, precision="int8", calib=calib_dir,
            calib_size=16, min_agreement=1.0, num_samples=1,
        )
    _floor_message(str(err.value), "5 of 5")
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def deep_fp32(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    bundle = edgeseg.build(DeepNet().eval(), tmp_path / "deep", input_size=SIZE, num_samples=1)
    return bundle.path


def test_int8_below_the_floor_fails_calibrate_and_leaves_the_bundle(
    deep_fp32: Path, calib_dir: Path
) -> None:
    before = {p.name: p.read_bytes() for p in deep_fp32.iterdir()}
    failed = invoke("calibrate", deep_fp32, "--calib", calib_dir, "--calib-size", "16", "--min-agreement", "1.0")
    assert failed.exit_code == 1 and "Traceback" not in failed.output
    _floor_message(" ".join(failed.stderr.split()), "5 of 5")
    assert {p.name: p.read_bytes() for p in deep_fp32.iterdir()} == before

    # the floor off: the graph is written, and says what it is
    done = invoke(
        "calibrate", deep_fp32, "--calib", calib_dir, "--calib-size", "16", "--min-agreement", "1.0",
        "--min-int8-share", "0",
    )
    assert done.exit_code == 0, done.output
    quant = Bundle.load(deep_fp32).manifest.precisions["int8"].quantization
    assert quant.int8_share.flops == DEEP_FLOPS and quant.int8_share.int8_flops == 0
    assert quant.int8_share.share == 0.0 and quant.int8_share.floor == 0.0
    assert len(quant.kept_float) == 5  # the mixed-precision record stays
    line = next(x for x in invoke("info", deep_fp32).stdout.splitlines() if x.startswith("int8 "))
    assert "5 kept in float" in line and "INT8 on 0.0% of the compute (0.00 of 0.00152 GFLOPs)" in line


def test_the_floor_itself() -> None:
    """At the floor passes, below fails (saying why without a search), 0 turns it off."""
    from calibration.flops import Int8Share, NodeFlops
    from calibration.mixed import Target as SearchTarget
    from converters.options import QuantOptions
    from converters.precision import _enforce_share

    share = Int8Share((NodeFlops("big", "Conv", 600, False), NodeFlops("small", "MatMul", 400, True)))
    assert share.share == 0.4
    _enforce_share(share, QuantOptions(min_int8_share=0.4), SearchTarget(0.99), 16)
    _enforce_share(share, QuantOptions(min_int8_share=0), SearchTarget(0.99), 16)
    with pytest.raises(ParityError) as err:
        _enforce_share(share, QuantOptions(min_int8_share=0.41), SearchTarget(0.99, 0.5), 16)
    text = str(err.value)
    assert "runs 40.0% of the model's compute in INT8 (4e-07 of 1e-06 GFLOPs), below the floor of 41.0%" in text
    assert "mixed precision was off: the placement itself left that compute in float" in text
    assert "1 of 2 compute nodes run in float, the largest: big (Conv, 60.0% of" in text
    assert "--min-agreement, now 99.00%; --max-miou-drop, now 0.5 points" in text


def test_small_calib_size_holds_frames_out(tmp_path: Path) -> None:
    folder = _write_pngs(tmp_path / "many", 40, seed=15, size=SIZE)
    bundle = edgeseg.build(
        tiny_module(),
        tmp_path / "b",
        input_size=SIZE,
        precision="int8",
        calib=folder,
        calib_size=8,
        num_samples=1,
    )
    assert bundle.manifest.precisions["int8"].quantization.calibration.used == 8


# ---------------------------------------------------------------- CLI


def invoke(*args: str) -> Result:
    """Runs the CLI in-process; restores the warning and logging state the CLI changes."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        with warnings.catch_warnings():
            return CliRunner().invoke(cli, [str(a) for a in args])
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)


@pytest.fixture
def fp32_copy(tiny_bundle: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "tiny.edgeseg"
    shutil.copytree(tiny_bundle, copy)
    return copy


@pytest.mark.slow
def test_cli_build_zoo_model_int8(tmp_path: Path, calib_dir: Path) -> None:
    out = tmp_path / "dlp.edgeseg"
    result = invoke(
        "build",
        "--model",
        "deeplabv3p",
        "--out",
        out,
        "--input-size",
        "32x32",
        "--num-classes",
        "3",
        "-o",
        "width=0.35",
        "-o",
        "aspp_channels=32",
        "--num-samples",
        "2",
        "--precision",
        "int8",
        "--calib",
        calib_dir,
        "--calib-size",
        "16",
        "--placement",
        "tensorrt",
        "--min-agreement",
        "0.9",
    )
    assert result.exit_code == 0, result.output
    assert (
        "built" in result.stdout
        and "int8" in result.stdout
        and "tensorrt placement" in result.stdout
    )
    assert "[edgeseg] calibrating (entropy) on 16 images" in result.stderr
    m = Bundle.load(out).manifest
    assert m.precision == "int8" and m.model.name == "deeplabv3p"
    quant = m.precisions["int8"].quantization
    assert quant.placement == "tensorrt" and quant.tensorrt_rules.ok is True
    assert quant.int8_share.share >= 0.5 and "% of the compute (" in result.stdout
    assert m.precisions["int8"].target.min_agreement == 0.9
    assert m.precisions["int8"].parity.agreement >= 0.9


@pytest.fixture
def calibrated(fp32_copy: Path, calib_dir: Path) -> tuple[Path, Result]:
    before = Bundle.load(fp32_copy).manifest
    assert before.precision == "fp32" and "int8" not in before.graphs
    result = invoke(
        "calibrate",
        fp32_copy,
        "--calib",
        calib_dir,
        "--calib-size",
        "16",
        "--method",
        "percentile",
        "--trt-cache-version",
        "8.6.1",
    )
    return fp32_copy, result


def test_cli_calibrate_adds_the_int8_graph(calibrated: tuple[Path, Result]) -> None:
    path, result = calibrated
    assert result.exit_code == 0, result.output
    assert "calibrated" in result.stdout and "default precision int8" in result.stdout
    line = next(x for x in result.stdout.splitlines() if x.startswith("int8"))
    assert "model.int8.onnx" in line and "percentile calibration on 16 images" in line
    m = Bundle.load(path).manifest
    assert m.precision == "int8" and m.graphs == {"fp32": "model.onnx", "int8": "model.int8.onnx"}
    assert m.outputs == ("mask", "probs", "logits") and m.classes == (
        "sky",
        "road",
        "car",
        "person",
    )
    info = m.precisions["int8"]
    assert (
        info.quantization.method == "percentile"
        and info.quantization.percentile == 99.999
    )
    assert info.quantization.calibration.used == 16 and info.parity.samples == 16
    cache = parse_cache((path / "calibration.cache").read_bytes())
    assert cache.header() == "TRT-8601-EntropyCalibration2"
    graph = onnx.load(str(path / "model.int8.onnx"))
    assert [o.name for o in graph.graph.output] == ["mask", "probs", "logits"]
    with edgeseg.Segmenter(path, outputs=("probs",)) as seg:
        out = seg(synthetic_images(1, (64, 96), seed=22)[0])
    assert seg.precision == "int8" and out.mask.shape == (64, 96)
    assert out.probs is not None and np.allclose(out.probs.sum(axis=0), 1.0, atol=1e-3)


def test_cli_info_shows_the_int8_line(calibrated: tuple[Path, Result]) -> None:
    path, result = calibrated
    assert result.exit_code == 0, result.output
    info = invoke("info", path)
    assert info.exit_code == 0, info.output
    assert "precision   int8" in info.stdout
    assert "graphs      fp32: model.onnx, int8: model.int8.onnx" in info.stdout
    line = next(x for x in info.stdout.splitlines() if x.startswith("int8 "))
    assert "agreement with fp32" in line and "nodes quantized" in line
    low = Bundle.load(path).manifest.precisions["int8"].parity.agreement_low
    assert f"(>= {low:.4%} on 95% of the frames)" in line  # what the target was judged on
    assert "tensorrt placement" in line  # calibrate without --placement: the one TensorRT takes too
    share = Bundle.load(path).manifest.precisions["int8"].quantization.int8_share
    assert share.flops == 761856 and share.floor == 0.5
    assert f"; INT8 on {share.share:.1%} of the compute ({share.int8_flops / 1e9:.3g} of 0.000762 GFLOPs)" in line
    data = json.loads(invoke("info", path, "--json").stdout)
    assert data["precisions"]["int8"]["graph"] == "model.int8.onnx"


def test_cli_calibrate_keep_precision(fp32_copy: Path, calib_dir: Path) -> None:
    result = invoke(
        "calibrate",
        fp32_copy,
        "--calib",
        calib_dir,
        "--calib-size",
        "16",
        "--keep-precision",
        "--placement",
        "tensorrt",
        "--method",
        "minmax",
    )
    assert result.exit_code == 0, result.output
    assert "default precision fp32" in result.stdout
    m = Bundle.load(fp32_copy).manifest
    assert m.precision == "fp32" and set(m.graphs) == {"fp32", "int8"}
    assert m.precisions["int8"].quantization.tensorrt_rules.ok is True
    with edgeseg.Segmenter(fp32_copy) as seg:
        assert seg.precision == "fp32"


def test_cli_calibrate_usage_errors(fp32_copy: Path, calib_dir: Path) -> None:
    before = (fp32_copy / "manifest.json").read_text()
    missing = invoke("calibrate", fp32_copy)
    assert missing.exit_code == 2 and "--calib is required" in missing.stderr
    bad = invoke("calibrate", fp32_copy, "--calib", calib_dir, "--method", "kl")
    assert bad.exit_code == 2 and "Invalid value for '--method'" in bad.stderr
    few = invoke("calibrate", fp32_copy, "--calib", calib_dir / "frame_000.png")
    assert few.exit_code == 1 and "is a single image" in few.stderr
    assert "Traceback" not in few.output
    assert (fp32_copy / "manifest.json").read_text() == before


# ---------------------------------------------------------------- real data


@pytest.mark.data
def test_calibrate_on_camvid(shared_data: Path, fp32_copy: Path) -> None:
    """The model is untrained, so accuracy means nothing here: only that CamVid is read."""
    val = shared_data / "camvid" / "val"
    bundle = calibrate_bundle(fp32_copy, val, calib_size=16, placement="tensorrt")
    quant = bundle.manifest.precisions["int8"].quantization
    calibration = quant.calibration
    assert calibration.source == str(val) and calibration.available == 101
    assert calibration.used == 16 and calibration.skipped == 0
    assert calibration.held_out_for_evaluation == 16 and calibration.image_size == (64, 96)
    assert quant.tensorrt_rules.ok is True
    assert bundle.manifest.precision == "int8"
