"""Segmenter on the CPU backend: frames of every kind, sizes, outputs, and clear errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import edgeseg
from edgeseg.errors import BackendError, BundleError, ConfigError, InputError
from edgeseg.runtime.backends import BackendChoice
from edgeseg.runtime.image import NearestResizer, resize_image, round_to_multiple, to_channels
from edgeseg.runtime.segmenter import _check_backend_options


def test_mask_matches_frame_size_and_timings(tiny_bundle: Path, rng: np.random.Generator) -> None:
    with edgeseg.Segmenter(tiny_bundle) as seg:
        for shape in [(64, 96, 3), (120, 160, 3), (37, 51, 3)]:
            frame = rng.integers(0, 256, shape, dtype=np.uint8)
            r = seg(frame)
            assert r.mask.shape == shape[:2] and r.mask.dtype == np.uint8
            assert r.mask.max() < 4
            assert r.probs is None and r.logits is None
            assert set(r.timings) == {"preprocess", "infer", "postprocess", "total"}
            assert r.timings["total"] >= r.timings["infer"] > 0


def test_model_size_frame_equals_argmax_of_logits(tiny_bundle: Path, rng: np.random.Generator) -> None:
    frame = rng.integers(0, 256, (64, 96, 3), dtype=np.uint8)
    with edgeseg.Segmenter(tiny_bundle, outputs=["probs", "logits"]) as seg:
        r = seg(frame)
    assert r.probs is not None and r.logits is not None
    assert r.probs.shape == (4, 64, 96) and r.logits.shape == (4, 64, 96)
    np.testing.assert_allclose(r.probs.sum(axis=0), 1.0, atol=1e-5)
    np.testing.assert_array_equal(r.mask, r.logits.argmax(axis=0))


def test_runtime_matches_pytorch_on_the_same_frame(tiny_bundle: Path, rng: np.random.Generator) -> None:
    import torch

    from tests.conftest import tiny_module

    frame = rng.integers(0, 256, (64, 96, 3), dtype=np.uint8)
    x = torch.from_numpy(frame).permute(2, 0, 1)[None].float() / 255
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        ref = tiny_module()((x - mean) / std)["out"][0].numpy()
    with edgeseg.Segmenter(tiny_bundle, outputs=["logits"]) as seg:
        got = seg(frame).logits
    np.testing.assert_allclose(got, ref, atol=1e-4)


def test_gray_rgba_and_bgr_frames(tiny_bundle: Path, rng: np.random.Generator) -> None:
    rgb = rng.integers(0, 256, (64, 96, 3), dtype=np.uint8)
    with edgeseg.Segmenter(tiny_bundle) as seg:
        base = seg(rgb).mask
        rgba = np.concatenate([rgb, np.full((64, 96, 1), 7, np.uint8)], axis=2)
        np.testing.assert_array_equal(seg(rgba).mask, base)
        np.testing.assert_array_equal(seg(np.ascontiguousarray(rgb[:, :, ::-1]), bgr=True).mask, base)
        gray = rgb[:, :, 0]
        np.testing.assert_array_equal(seg(gray).mask, seg(np.repeat(gray[:, :, None], 3, 2)).mask)
        assert seg(gray[:, :, None]).mask.shape == (64, 96)


@pytest.mark.parametrize(
    ("frame", "message"),
    [
        (np.zeros((64, 96, 3), np.float32), r"frame: expected dtype uint8, got float32 \(scale floats"),
        (np.zeros((64, 96, 3), np.int64), "expected dtype uint8, got int64"),
        (np.zeros((2, 64, 96, 3), np.uint8), r"expected shape \(H, W\).*got \(2, 64, 96, 3\)"),
        (np.zeros((0, 96, 3), np.uint8), "frame is empty"),
        (np.zeros((64, 96, 2), np.uint8), "expected 1, 3 or 4 channels"),
        (np.zeros((3, 64, 96), np.uint8), "expected 1, 3 or 4 channels"),
        ([[1, 2], [3, 4]], "expected a numpy uint8 array.*got list"),
    ],
)
def test_bad_frames_get_clear_errors(tiny_bundle: Path, frame: object, message: str) -> None:
    with edgeseg.Segmenter(tiny_bundle) as seg, pytest.raises(InputError, match=message):
        seg(frame)  # type: ignore[arg-type]


@pytest.mark.filterwarnings("ignore:the matrix subclass:PendingDeprecationWarning")
def test_ndarray_subclasses_are_plain_frames(tiny_bundle: Path, rng: np.random.Generator) -> None:
    gray = rng.integers(0, 256, (48, 80), dtype=np.uint8)
    with edgeseg.Segmenter(tiny_bundle) as seg:
        expected = seg(gray).mask
        np.testing.assert_array_equal(seg(np.asmatrix(gray)).mask, expected)  # was a raw ValueError
        np.testing.assert_array_equal(seg(np.ma.masked_array(gray, mask=gray > 100)).mask, expected)
        assert seg.preprocess(np.asmatrix(gray)).shape == (1, 64, 96, 3)


def test_matrix_of_a_non_contiguous_frame_does_not_crash_the_process() -> None:
    # np.matrix refuses a third axis while NumPy builds it; here that corrupted the heap
    # ("double free or corruption") and aborted: run it where an abort cannot take pytest down
    code = (
        "import numpy as np\n"
        "from edgeseg.bundle import InputSpec\n"
        "from edgeseg.runtime.image import prepare\n"
        "gray = np.random.default_rng(0).integers(0, 256, (48, 80, 3), dtype=np.uint8)[:, :, 0]\n"
        "print(prepare(np.asmatrix(gray), InputSpec(size=(64, 96))).shape)\n"
    )
    done = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", code], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "(1, 64, 96, 3)"


def test_unknown_backend_option_names_it_and_lists_the_valid_ones(tiny_bundle: Path) -> None:
    with pytest.raises(
        ConfigError,
        match=r"Segmenter got option 'treads', which the onnxruntime backend does not take \(chosen "
        r"because .*\); it takes: profile_dir, providers, spin, threads \(did you mean 'threads'\?\)$",
    ):
        edgeseg.Segmenter(tiny_bundle, treads=2)
    with pytest.raises(ConfigError, match=r"options 'cuda_graph', 'zzz', which the onnxruntime backend.*spin, threads$"):
        edgeseg.Segmenter(tiny_bundle, backend="onnxruntime", cuda_graph=True, zzz=1)
    trt = BackendChoice("tensorrt", "asked for")
    with pytest.raises(
        ConfigError,
        match=r"option 'cuda_grpah', which the tensorrt backend does not take \(chosen because asked "
        r"for\); it takes: cuda_graph, device, dla_core, plugins \(did you mean 'cuda_graph'\?\)$",
    ):
        _check_backend_options(trt, {"cuda_grpah": True})
    _check_backend_options(trt, {"cuda_graph": True, "device": 0})  # valid options pass
    with edgeseg.Segmenter(tiny_bundle, threads=1, spin=False) as seg:
        assert seg.backend_name == "onnxruntime"


def test_outputs_the_bundle_lacks(tiny_bundle: Path, dynamic_bundle: Path) -> None:
    with pytest.raises(ConfigError, match="has no output probs; it has mask"):
        edgeseg.Segmenter(dynamic_bundle, outputs=["probs"])


def test_unknown_backend_and_precision(tiny_bundle: Path) -> None:
    with pytest.raises(BackendError, match="unknown backend 'cuda'; valid: auto, onnxruntime"):
        edgeseg.Segmenter(tiny_bundle, backend="cuda")
    with pytest.raises(BundleError, match="has no int8 graph; it has fp32"):
        edgeseg.Segmenter(tiny_bundle, precision="int8")


def test_closed_segmenter(tiny_bundle: Path) -> None:
    seg = edgeseg.Segmenter(tiny_bundle)
    seg.close()
    seg.close()  # idempotent
    with pytest.raises(ConfigError, match="is closed"):
        seg(np.zeros((64, 96, 3), np.uint8))


def test_dynamic_bundle_runs_at_the_frame_size(dynamic_bundle: Path, rng: np.random.Generator) -> None:
    with edgeseg.Segmenter(dynamic_bundle) as seg:
        assert seg.manifest.input.dynamic
        assert seg.model_size_for((120, 160)) == (120, 160)
        assert seg.model_size_for((121, 158)) == (120, 160)
        for shape in [(120, 160, 3), (64, 96, 3), (33, 70, 3)]:
            r = seg(rng.integers(0, 256, shape, dtype=np.uint8))
            assert r.mask.shape == shape[:2]


def test_dynamic_bundle_matches_pytorch_at_another_size(dynamic_bundle: Path, rng: np.random.Generator) -> None:
    import torch

    from converters.export import DeployWrapper, ExportSpec
    from tests.conftest import tiny_module

    frame = rng.integers(0, 256, (128, 200, 3), dtype=np.uint8)
    wrapper = DeployWrapper(tiny_module(), ExportSpec(input_size=(64, 96)))
    with torch.no_grad():
        ref = wrapper(torch.from_numpy(frame)[None])[0][0].numpy()
    with edgeseg.Segmenter(dynamic_bundle) as seg:
        assert (seg(frame).mask == ref).mean() > 0.9999


def test_image_helpers() -> None:
    frame = np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3)
    assert to_channels(frame, 1).shape == (4, 6, 1)
    assert to_channels(frame[:, :, :1], 3).shape == (4, 6, 3)
    gray = to_channels(np.full((2, 2, 3), (255, 0, 0), np.uint8), 1)
    assert int(gray[0, 0, 0]) == 76  # BT.601: 0.299 * 255
    assert resize_image(frame, (8, 12)).shape == (8, 12, 3)
    assert resize_image(frame[:, :, :1], (8, 12)).shape == (8, 12, 1)
    assert round_to_multiple((121, 158), 8) == (120, 160)
    assert round_to_multiple((3, 3), 8) == (8, 8)
    resize = NearestResizer()
    mask = np.array([[0, 1], [2, 3]], np.uint8)
    np.testing.assert_array_equal(resize(mask, (4, 4)), np.repeat(np.repeat(mask, 2, 0), 2, 1))
    np.testing.assert_array_equal(resize(np.repeat(np.repeat(mask, 2, 0), 2, 1), (2, 2)), mask)
    assert resize(mask, (2, 2)) is mask


def test_altered_bundle_refused_by_segmenter(tiny_bundle: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "copy.edgeseg"
    shutil.copytree(tiny_bundle, copy)
    with open(copy / "model.onnx", "ab") as fh:
        fh.write(b"\0")
    with pytest.raises(BundleError, match="model.onnx has .* bytes, the manifest says"):
        edgeseg.Segmenter(copy)


def test_overlay_and_legend() -> None:
    from edgeseg.runtime.overlay import colorize, draw_legend, overlay

    palette = np.array([[0, 0, 0], [255, 0, 0], [0, 255, 0]], np.uint8)
    mask = np.zeros((60, 120), np.uint8)
    mask[:, 60:] = 2
    frame = np.full((60, 120, 3), 100, np.uint8)
    np.testing.assert_array_equal(colorize(mask, palette)[0, 100], [0, 255, 0])
    blended = overlay(frame, mask, palette, 0.5)
    np.testing.assert_array_equal(blended[0, 100], [50, 178, 50])  # half frame, half green
    with_legend = draw_legend(blended, mask, ("void", "car", "tree"), palette)
    assert with_legend.shape == blended.shape
    assert not np.array_equal(with_legend[:30, :60], blended[:30, :60])  # legend drawn top-left
    np.testing.assert_array_equal(with_legend[40:, 80:], blended[40:, 80:])  # the rest untouched
    with pytest.raises(InputError, match="differ in size"):
        overlay(frame, mask[:10], palette)
