"""The CLI end to end through a subprocess: success paths and one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from edgeseg.bundle import Bundle


def edgeseg_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edgeseg", *args], capture_output=True, text=True, cwd=cwd, timeout=600
    )


def assert_one_line_error(proc: subprocess.CompletedProcess[str], text: str, code: int = 1) -> None:
    assert proc.returncode == code, proc.stderr
    assert "Traceback" not in proc.stderr
    assert text in proc.stderr, proc.stderr


@pytest.fixture(scope="module")
def cli_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from click.testing import CliRunner

    from edgeseg.cli import cli

    out = tmp_path_factory.mktemp("cli") / "unet.edgeseg"
    # in this process (torch is imported once per session); the subprocess tests below cover
    # what only a fresh interpreter shows (one-line errors, no torch import)
    result = CliRunner().invoke(cli, [
        "build", "--model", "unet", "--out", str(out), "--input-size", "64x64", "--num-classes", "3",
        "-o", "base_channels=8", "--num-samples", "2", "--outputs", "mask,probs",
    ])
    assert result.exit_code == 0, result.output
    assert "built" in result.stdout and "agreement" in result.stdout
    assert "[edgeseg] exporting to ONNX" in result.stderr  # progress
    assert "untrained" in result.stderr  # no weights: the build says so
    return out


@pytest.fixture(scope="module")
def frames(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("frames")
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (48, 80, 3), dtype=np.uint8)).save(folder / f"f{i}.png")
    return folder


def test_build_writes_a_verified_bundle(cli_bundle: Path) -> None:
    m = Bundle.load(cli_bundle).manifest
    assert m.model.name == "unet" and m.model.options["base_channels"] == 8
    assert m.model.trained is False
    assert m.outputs == ("mask", "probs")
    assert m.input.size == (64, 64)


def test_info_table_and_json(cli_bundle: Path) -> None:
    proc = edgeseg_cli("info", str(cli_bundle))
    assert proc.returncode == 0, proc.stderr
    assert "unet [zoo]" in proc.stdout and "verified: yes" in proc.stdout and "parity" in proc.stdout
    proc = edgeseg_cli("info", str(cli_bundle), "--json")
    data = json.loads(proc.stdout)
    assert data["classes"] == ["class_0", "class_1", "class_2"]
    assert data["files"]["model.onnx"]["sha256"]


def test_run_folder_writes_masks_and_overlays(cli_bundle: Path, frames: Path, tmp_path: Path) -> None:
    (frames / "zz_broken.png").write_bytes(b"junk")
    try:
        proc = edgeseg_cli("run", str(cli_bundle), "--source", str(frames), "--masks", str(tmp_path / "m"),
                           "--overlay", str(tmp_path / "o"))
    finally:
        (frames / "zz_broken.png").unlink()
    assert proc.returncode == 0, proc.stderr
    assert "segmented 3 frame(s)" in proc.stdout and "skipped 1 unreadable" in proc.stdout
    assert "; end-to-end (capture to result, including queueing) median" in proc.stdout
    assert "skipped zz_broken" in proc.stderr
    masks = sorted((tmp_path / "m").iterdir())
    assert [p.name for p in masks] == ["f0.png", "f1.png", "f2.png"]
    mask = np.asarray(Image.open(masks[0]))
    assert mask.shape == (48, 80) and mask.dtype == np.uint8 and mask.max() < 3
    overlay = np.asarray(Image.open(tmp_path / "o" / "f0.png"))
    assert overlay.shape == (48, 80, 3)


def test_run_single_image_and_video(cli_bundle: Path, frames: Path, tmp_path: Path) -> None:
    cv2 = pytest.importorskip("cv2", reason="video needs opencv-python-headless (the video extra)")
    proc = edgeseg_cli("run", str(cli_bundle), "--source", str(frames / "f0.png"), "--overlay", str(tmp_path / "one.png"))
    assert proc.returncode == 0, proc.stderr
    assert np.asarray(Image.open(tmp_path / "one.png")).shape == (48, 80, 3)
    video = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 5.0, (80, 48))
    for i in range(4):
        writer.write(np.full((48, 80, 3), 40 * i, np.uint8))
    writer.release()
    proc = edgeseg_cli("run", str(cli_bundle), "--source", str(video), "--masks", str(tmp_path / "vm"),
                       "--overlay", str(tmp_path / "out.avi"))
    assert proc.returncode == 0, proc.stderr
    assert "segmented 4 frame(s)" in proc.stdout
    assert len(list((tmp_path / "vm").glob("frame_*.png"))) == 4
    cap = cv2.VideoCapture(str(tmp_path / "out.avi"))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 4
    cap.release()


@pytest.mark.slow
def test_models_lists_every_model() -> None:
    proc = edgeseg_cli("models", "--json", "--input-size", "256x256")
    assert proc.returncode == 0, proc.stderr
    every = json.loads(proc.stdout)
    rows = {r["name"]: r for r in every if r["variant"] is None}
    assert {"fcn32s", "fcn16s", "fcn8s", "unet", "deeplabv3", "deeplabv3p"} <= set(rows)
    assert all(r["params"] > 0 and r["gflops"] > 0 for r in every)
    assert rows["deeplabv3p"]["options"]["backbone"] == "mobilenet_v2"
    # each other backbone and variant gets a row of its own, with its own figures and multiple
    variants = {(r["name"], r["variant"]): r for r in every if r["variant"] is not None}
    for backbone in ("resnet50", "efficientnet_b0", "densenet121", "googlenet"):
        row = variants["deeplabv3p", f"backbone={backbone}"]
        assert row["options"]["backbone"] == backbone and row["gflops"] != rows["deeplabv3p"]["gflops"]
    assert ("deeplabv3", "backbone=mobilenet_v3_large") in variants
    assert variants["frrn", "variant=B"]["multiple_of"] == 32 and rows["frrn"]["multiple_of"] == 16
    table = edgeseg_cli("models")
    assert table.returncode == 0 and "deeplabv3p" in table.stdout and "GFLOPs" in table.stdout
    assert "backbone=googlenet" in table.stdout and "variant=B" in table.stdout


ONE_LINE_ERRORS = [
    (["build", "--model", "segformer"], "unknown model 'segformer'"),
    (["build", "--model", "unet", "-o", "colour=red"], "colour"),
    (["build", "--model", "unet", "-o", "base_channels"], "is not KEY=VALUE"),
    (["build", "--model", "fcn8s", "--input-size", "500x500"], "multiples of 32"),
    (["build", "--model", "unet", "--mean", "a,b,c"], "--mean 'a,b,c' is not comma-separated numbers"),
    (["build", "--model", "unet", "--weights", "/nonexistent.pth"], "/nonexistent.pth"),
    # each option group reaches converters.options through the generic forwarding
    (["build", "--model", "unet", "--precision", "int8"], "int8 needs a calibration set"),
    (["build", "--model", "unet", "--calib-size", "0"], "calib_size must be >= 1, got 0"),
    (["build", "--model", "unet", "--labels", "labels"], "labels need samples=DIR (--samples)"),
    (["build", "--model", "unet", "--num-classes", "0"], "num_classes must be a positive integer, got 0"),
    (["build", "--model", "unet", "--crf", "fused", "--crf-param", "sigma=1"], "unknown crf_params ['sigma']"),
    (["build", "--model", "unet", "--workspace-mb", "0"], "workspace_mb must be a positive integer"),
    (["calibrate", "/nonexistent.edgeseg", "--calib", "x", "--calib-size", "0"], "calib_size must be >= 1, got 0"),
    (["calibrate", "/nonexistent.edgeseg", "--calib", "x", "--labels", "l"], "labels need samples=DIR"),
    (["info", "/nonexistent.edgeseg"], "bundle /nonexistent.edgeseg does not exist"),
    (["run", "/nonexistent.edgeseg", "--source", "."], "does not exist"),
]


# each case is a CLI subprocess that imports torch (seconds): the fast loop keeps one of a kind
@pytest.mark.parametrize(
    ("args", "text"),
    [
        pytest.param(*case, marks=pytest.mark.slow if i and case[0][0] in ("build", "calibrate") else ())
        for i, case in enumerate(ONE_LINE_ERRORS)
    ],
)
def test_errors_are_one_line(args: list[str], text: str, tmp_path: Path) -> None:
    proc = edgeseg_cli(*args, cwd=tmp_path)
    assert_one_line_error(proc, text)


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    assert_one_line_error(edgeseg_cli("build", "--model", "unet", "--input-size", "big"), "is not HxW", code=2)
    assert_one_line_error(edgeseg_cli("build"), "Missing option '--model'", code=2)


def test_run_errors(cli_bundle: Path, tmp_path: Path) -> None:
    assert_one_line_error(edgeseg_cli("run", str(cli_bundle), "--source", str(tmp_path / "nope.png")), "does not exist")
    (tmp_path / "notes.txt").write_text("x")
    assert_one_line_error(edgeseg_cli("run", str(cli_bundle), "--source", str(tmp_path / "notes.txt")), "unknown file type '.txt'")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_one_line_error(edgeseg_cli("run", str(cli_bundle), "--source", str(empty)), "has no images")


def test_tampered_bundle_is_refused(cli_bundle: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "t.edgeseg"
    shutil.copytree(cli_bundle, copy)
    data = bytearray((copy / "model.onnx").read_bytes())
    data[-1] ^= 1
    (copy / "model.onnx").write_bytes(bytes(data))
    assert_one_line_error(edgeseg_cli("info", str(copy)), "does not match its checksum")


# Runs the CLI in a fresh interpreter and says on its last stderr line whether torch got imported.
_LIGHT_CLI = """
import sys
from edgeseg.cli import main
sys.argv[0] = "edgeseg"
try:
    main()
except SystemExit as exit:
    code = exit.code
print("torch imported" if "torch" in sys.modules else "no torch", file=sys.stderr)
sys.exit(code)
"""


def light_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """The CLI in a subprocess whose stderr ends with ``no torch`` when torch was never imported."""
    return subprocess.run(
        [sys.executable, "-c", _LIGHT_CLI, *args], capture_output=True, text=True, cwd=cwd, timeout=600
    )


def assert_refused_before_work(proc: subprocess.CompletedProcess[str], text: str) -> None:
    """One line, exit 1, and no torch import: the argument was checked before any work."""
    assert_one_line_error(proc, text)
    lines = proc.stderr.strip().splitlines()
    assert lines[-1] == "no torch", proc.stderr
    assert [line for line in lines if line.startswith("Error:")] == lines[-2:-1], proc.stderr


def test_zoo_names_of_the_cli_are_the_registry_s() -> None:
    """edgeseg.cli checks --model without importing the zoo (torch): its names are the registry's."""
    from edgeseg.cli import ZOO_MODELS
    from edgeseg.models import list_models

    assert ZOO_MODELS == tuple(spec.name for spec in list_models())


@pytest.fixture
def paths(tmp_path: Path, tiny_bundle: Path) -> dict[str, str]:
    """What the cases below name: a bundle, an image, a folder of images, a file, a folder."""
    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(np.zeros((48, 80, 3), np.uint8)).save(images / "f0.png")
    (tmp_path / "file.txt").write_text("x")
    (tmp_path / "plain.edgeseg").write_text("x")
    (tmp_path / "x.json").write_text("{}")
    (tmp_path / "folder").mkdir()
    return {"bundle": str(tiny_bundle), "image": str(images / "f0.png"), "images": str(images),
            "file": str(tmp_path / "file.txt"), "json": str(tmp_path / "x.json"),
            "plain_edgeseg": str(tmp_path / "plain.edgeseg"),
            "folder": str(tmp_path / "folder"), "tmp": str(tmp_path)}


REFUSED_BEFORE_WORK = [
    (["run", "{bundle}", "--source", "{images}", "--masks", "{file}"],
     "--masks {file} is an existing file; --masks takes a folder"),
    (["run", "{bundle}", "--source", "{images}", "--masks", "/proc/x"],
     "--masks /proc/x: cannot create files in /proc"),
    (["run", "{bundle}", "--source", "{image}", "--overlay", "{json}"],
     "--overlay {json}: unknown suffix '.json'; give an image (.bmp, .jpeg, .jpg, .pgm, .png, .ppm, "
     ".tif, .tiff, .webp), a video (.mp4, .avi, .mkv, .mov) or a folder (a name without a suffix)"),
    (["run", "{bundle}", "--source", "{images}", "--overlay", "{tmp}/x.gif"],
     "--overlay {tmp}/x.gif: unknown suffix '.gif'"),
    (["run", "{bundle}", "--source", "{images}", "--overlay", "{tmp}/one.png"],
     "--overlay {tmp}/one.png is one image but the source has many frames"),
    (["run", "{bundle}", "--source", "{images}", "--overlay", "{folder}/../file.txt/o.mp4"],
     "--overlay {folder}/../file.txt/o.mp4: {folder}/../file.txt is a file, not a folder"),
    (["run", "{bundle}", "--source", "{image}", "--alpha", "2"], "--alpha must be from 0 to 1, got 2.0"),
    (["profile", "{bundle}", "--json", "{folder}"], "--json {folder} is an existing folder; --json takes a file name"),
    (["profile", "{bundle}", "--trace", "/proc/t.json"], "--trace /proc/t.json: cannot create files in /proc"),
    (["profile", "{bundle}", "--plot", "/proc/p.png"], "--plot /proc/p.png: cannot create files in /proc"),
    (["profile", "{bundle}", "--frames", "0"], "--frames must be >= 1"),
    (["parity", "{bundle}", "--images", "{images}", "--report", "{file}"],
     "--report {file} is an existing file; --report takes a folder"),
    (["parity", "{bundle}", "--images", "{images}", "--json", "{folder}"], "--json {folder} is an existing folder"),
    (["parity", "{bundle}", "--images", "{images}", "--max-miou-drop", "1"], "--max-miou-drop needs --labels"),
    (["parity", "{bundle}", "--images", "{images}", "--min-agreement", "99.9"],
     "--min-agreement must be a fraction from 0 to 1, got 99.9"),
    (["parity", "{bundle}", "--images", "{tmp}/nothing"], "--images {tmp}/nothing does not exist"),
    (["parity", "{tmp}/nothing.edgeseg", "--images", "{images}"], "bundle {tmp}/nothing.edgeseg does not exist"),
    (["build", "--model", "segformer"],
     "unknown model 'segformer'; valid: deconvnet, deeplabv3, deeplabv3p, fcn16s, fcn32s, fcn8s, frrn, hypercolumn, unet"),
    (["build", "--model", "unet", "--out", "/proc/x"], "--out /proc/x.edgeseg: cannot create files in /proc"),
    (["build", "--model", "unet", "--out", "{bundle}"], "--out {bundle} already exists; pass --force to replace it"),
    (["build", "--model", "unet", "--out", "{plain_edgeseg}", "--force"],
     "--out {plain_edgeseg} is an existing file; a bundle is a folder"),
    (["build", "--model", "unet", "--out", "{tmp}/u", "--opset", "99"],
     "opset must be an integer from 19 to 23 (what torch.onnx's exporter writes and ONNX DeformConv needs), got 99"),
    (["build", "--model", "unet", "--out", "{tmp}/u", "--weights", "{tmp}/w.pth"], "--weights {tmp}/w.pth does not exist"),
    (["build", "--model", "unet", "--out", "{tmp}/u", "-o", "base_channels"], "is not KEY=VALUE"),
    (["build", "--model", "unet", "--out", "{tmp}/u", "--precision", "int8", "--calib", "{tmp}/c"],
     "--calib {tmp}/c does not exist"),
    (["plugins", "build", "--out", "{file}"], "--out {file} is an existing file; --out takes a folder"),
]


# each case is a CLI subprocess: the fast loop keeps one per command, the full suite runs all
def _refused_params() -> list[Any]:
    seen: set[str] = set()
    params = []
    for args, text in REFUSED_BEFORE_WORK:
        command = args[0]
        params.append(pytest.param(args, text, marks=() if command not in seen else pytest.mark.slow))
        seen.add(command)
    return params


@pytest.mark.parametrize(("args", "text"), _refused_params())
def test_arguments_are_refused_before_any_work(args: list[str], text: str, paths: dict[str, str]) -> None:
    """Output paths and cheap arguments are checked before torch is imported or a frame is read."""
    proc = light_cli(*(a.format(**paths) for a in args), cwd=Path(paths["tmp"]))
    assert_refused_before_work(proc, text.format(**paths))
    assert not (Path(paths["tmp"]) / "x.gif").exists()  # no folder named after an unknown suffix


def test_write_check_of_a_replaced_bundle_is_beside_it(
    tiny_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """build --force tries a new file where the new bundle is made (beside it), never inside the old one."""
    import shutil
    import tempfile

    from click.testing import CliRunner

    from edgeseg.cli import cli

    bundle = Path(shutil.copytree(tiny_bundle, tmp_path / "b.edgeseg"))
    tried: list[Path] = []
    real_mkstemp = tempfile.mkstemp

    def mkstemp(*args: Any, **kwargs: Any) -> tuple[int, str]:
        tried.append(Path(kwargs["dir"]))
        return real_mkstemp(*args, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    result = CliRunner().invoke(cli, ["build", "--model", "unet", "--out", str(bundle), "--force", "--opset", "99"])
    assert result.exit_code == 1 and "opset must be an integer from 19 to 23" in result.output
    assert tried == [tmp_path]


def test_engine_without_a_gpu_says_so_first(monkeypatch: pytest.MonkeyPatch, tiny_bundle: Path) -> None:
    """No GPU is the first thing `edgeseg engine` says, before TensorRT is looked for."""
    from click.testing import CliRunner

    import converters.tensorrt
    from edgeseg import engines
    from edgeseg.cli import cli
    from edgeseg.errors import BackendError

    def no_gpu(*args: object, **kwargs: object) -> engines.DeviceInfo:
        raise BackendError("cuInit failed: CUDA_ERROR_NO_DEVICE (100)")

    def never(*args: object, **kwargs: object) -> None:
        raise AssertionError("add_engine ran without a GPU")

    monkeypatch.setattr(engines, "probe_device", no_gpu)
    monkeypatch.setattr(converters.tensorrt, "add_engine", never)
    result = CliRunner().invoke(cli, ["engine", str(tiny_bundle)])
    assert result.exit_code == 1, result.output
    assert result.output.strip().splitlines() == [
        "Error: no NVIDIA GPU here to build an engine for: cuInit failed: CUDA_ERROR_NO_DEVICE (100)"
    ]


def _bomb_png(path: Path, side: int = 20000) -> Path:
    """A valid PNG header claiming side x side pixels (over Pillow's limit) and almost no data."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
                     + chunk(b"IDAT", zlib.compress(b"\x00" * (side + 1))) + chunk(b"IEND", b""))
    return path


def test_run_on_a_decompression_bomb_is_one_line(tiny_bundle: Path, tmp_path: Path) -> None:
    bomb = _bomb_png(tmp_path / "bomb.png")
    proc = edgeseg_cli("run", str(tiny_bundle), "--source", str(bomb))
    assert_one_line_error(proc, f"source {bomb}: no frame could be segmented")
    # the reason is on the error line itself, said once: no "skipped" line before it
    (error,) = [line for line in proc.stderr.splitlines() if line.startswith("Error:")]
    assert "decompression bomb" in error, proc.stderr
    assert proc.stderr.count("decompression bomb") == 1 and "skipped" not in proc.stderr, proc.stderr


def test_log_records_carry_no_traceback_unless_debugging() -> None:
    """A stream stage logs the exception that stopped it; the CLI shows it as one line (-vv: all)."""
    import logging

    from edgeseg.cli import _LogFormatter

    try:
        raise OSError("disk on fire")
    except OSError:
        record = logging.getLogger("edgeseg.runtime.stream").makeRecord(
            "edgeseg.runtime.stream", logging.ERROR, __file__, 1, "stream stage %s failed", ("capture",),
            sys.exc_info(),
        )
    assert _LogFormatter(tracebacks=False).format(record) == "ERROR edgeseg.runtime.stream: stream stage capture failed"
    assert "Traceback" in _LogFormatter(tracebacks=True).format(record)
    assert record.exc_info is not None  # the record is left as it was for other handlers


def test_profile_command(cli_bundle: Path, frames: Path, tmp_path: Path) -> None:
    proc = edgeseg_cli("profile", str(cli_bundle), "--source", str(frames / "f0.png"), "--frames", "8",
                       "--warmup", "2", "--layers", "--top", "3", "--json", str(tmp_path / "p.json"),
                       "--trace", str(tmp_path / "t.json"))
    assert proc.returncode == 0, proc.stderr
    assert "8 frames after 2 warm-up" in proc.stdout
    for stage in ("capture", "preprocess", "infer", "postprocess", "end-to-end"):
        assert stage in proc.stdout
    assert "share" in proc.stdout and "more layers" in proc.stdout  # the per-layer table, top 3
    data = json.loads((tmp_path / "p.json").read_text())
    assert data["frames"] == 8 and data["stages"]["infer"]["p50"] > 0 and len(data["layers"]) > 3
    trace = json.loads((tmp_path / "t.json").read_text())
    assert sum(1 for e in trace["traceEvents"] if e["ph"] == "X") == 8 * 4
    bad = edgeseg_cli("profile", str(cli_bundle), "--frames", "0")
    assert_one_line_error(bad, "--frames must be >= 1")


def _help(*command: str) -> str:
    proc = edgeseg_cli(*command, "--help")
    assert proc.returncode == 0, proc.stderr
    return " ".join(proc.stdout.split())  # click wraps the help: compare with single spaces


def test_help_shows_the_defaults_of_the_options_definitions() -> None:
    """The defaults in --help are read from converters.options, not written again in the CLI."""
    from converters.options import CALIBRATE_CHECK, CheckOptions, ModelOptions, QuantOptions
    from converters.tensorrt import EngineConfig
    from edgeseg.metrics import DEFAULT_MIN_AGREEMENT

    quant, check, model, engine = QuantOptions(), CheckOptions(), ModelOptions(), EngineConfig()
    build = _help("build")
    assert f"Frames of --calib to use [{quant.calib_size}]" in build
    assert f"Calibration method [{quant.method}]" in build
    assert quant.placement is None and "too [cpu with --target cpu, else tensorrt]" in build
    assert f"header [{quant.trt_cache_version}]" in build and f"pick [{quant.seed}]" in build
    assert f"--num-samples INTEGER [default: {check.num_samples}]" in build
    assert f"--opset INTEGER [default: {model.opset}]" in build
    assert f"fp32 vs PyTorch [{DEFAULT_MIN_AGREEMENT['fp32']}]" in build
    assert f"[{DEFAULT_MIN_AGREEMENT['fp16']}/{DEFAULT_MIN_AGREEMENT['int8']}]" in build
    assert f"level 0..5 [{engine.opt_level}]" in build and f"[{engine.deform_conv}]" in build
    calibrate = _help("calibrate")
    assert f"--num-samples INTEGER [default: {CALIBRATE_CHECK.num_samples}]" in calibrate
    assert f"must reach [{DEFAULT_MIN_AGREEMENT['int8']}]" in calibrate
    assert f"Frames of --calib to use [{quant.calib_size}]" in calibrate


def test_every_option_has_a_flag_or_is_api_only() -> None:
    """Adding a field to BuildOptions (or EngineConfig) without a flag fails here, unless it is
    listed in edgeseg.cli.API_ONLY; every flag is named as the keyword it sets."""
    from dataclasses import fields

    from converters.options import flat_names
    from converters.tensorrt import EngineConfig
    from edgeseg.cli import API_ONLY, build_cmd, calibrate_cmd, engine_cmd

    table = flat_names()
    engine_fields = {f.name for f in fields(EngineConfig)}
    build_keywords = (set(table) - {"engine"}) | engine_fields
    assert set(API_ONLY) <= build_keywords  # no stale entries

    build = {p.name for p in build_cmd.params}
    assert build_keywords - set(API_ONLY) <= build, build_keywords - set(API_ONLY) - build
    assert not build & set(API_ONLY)
    assert build - {"model_name", "out"} <= build_keywords  # no flag the forwarding would drop

    calibrate = {p.name for p in calibrate_cmd.params}
    int8_and_check = {k for k, (group, _) in table.items() if group in ("quant", "check")}
    assert int8_and_check <= calibrate
    assert calibrate - {"bundle", "keep_precision"} <= int8_and_check

    engine = {p.name for p in engine_cmd.params}
    assert engine_fields - set(API_ONLY) <= engine
    assert engine - {"bundle", "precision"} <= engine_fields

