"""Calibration sets: sources, deterministic spread sampling, skipping, runtime pre-processing."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from calibration.sets import CalibrationSet, load_calibration_set
from edgeseg.bundle import InputSpec
from edgeseg.errors import ConfigError
from edgeseg.runtime.image import prepare
from edgeseg.runtime.sources import list_images, read_image

try:
    import cv2
except ImportError:  # the folder and npz tests still run
    cv2 = None
needs_cv2 = pytest.mark.skipif(
    cv2 is None, reason="video needs OpenCV: pip install 'edgeseg[video]'"
)

SPEC = InputSpec(size=(32, 48))
GRAY = InputSpec(size=(32, 48), channels=1)
VIDEO_FRAMES = 30
LEVEL = 8  # gray level of video frame i is i * LEVEL


def _image(rng: np.random.Generator, h: int = 40, w: int = 60) -> np.ndarray:
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def _folder(root: Path, n: int, *, seed: int = 0) -> list[str]:
    """n images (PNG and JPG) spread over nested subfolders; returns their relative names."""
    rng = np.random.default_rng(seed)
    names = []
    for i in range(n):
        sub = ("", "a", "a/b", "c")[i % 4]
        name = f"{sub}/img_{i:03d}.{'png' if i % 2 else 'jpg'}".lstrip("/")
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(_image(rng)).save(root / name)
        names.append(name)
    return sorted(names, key=lambda s: str(root / s))


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "calib"
    root.mkdir()
    _folder(root, 40)
    return root


@pytest.fixture
def broken_folder(tmp_path: Path) -> Path:
    """Six good images, a corrupt PNG (random bytes) and a truncated JPEG."""
    root = tmp_path / "broken"
    (root / "sub").mkdir(parents=True)
    _folder(root, 6)
    (root / "sub" / "corrupt.png").write_bytes(np.random.default_rng(3).bytes(500))
    good = root / "full.jpg"
    Image.fromarray(_image(np.random.default_rng(4), 120, 160)).save(good, quality=95)
    data = good.read_bytes()
    good.unlink()
    (root / "sub" / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (root / "notes.txt").write_text("not an image")  # ignored: not an image suffix
    return root


def _video(path: Path, n: int = VIDEO_FRAMES, size: tuple[int, int] = (32, 48)) -> Path:
    """An MJPG avi whose frame i is a flat gray level i * LEVEL."""
    h, w = size
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (w, h))
    assert writer.isOpened()
    for i in range(n):
        writer.write(np.full((h, w, 3), i * LEVEL, dtype=np.uint8))
    writer.release()
    return path


def _frame_index(image: np.ndarray) -> int:
    """Which video frame an image was decoded from (JPEG shifts the level by a few)."""
    return int(round(float(image.mean()) / LEVEL))


# ----------------------------------------------------------------- sampling


def test_folder_picks_are_deterministic_and_cover_the_whole_folder(folder: Path) -> None:
    a = load_calibration_set(folder, SPEC, size=10, seed=0)
    b = load_calibration_set(folder, SPEC, size=10, seed=0)
    c = load_calibration_set(folder, SPEC, size=10, seed=1)
    assert a.picked == b.picked and np.array_equal(a.images, b.images)
    assert a.picked != c.picked
    assert a.available == 40 and len(a) == 10 and a.kind == "folder" and a.seed == 0
    order = [p.relative_to(folder).as_posix() for p in list_images(folder, recursive=True)]
    positions = [order.index(name) for name in a.picked]
    assert positions == sorted(positions)
    assert positions[0] < 4 and positions[-1] >= 36  # first and last stratum
    assert any("/" in name for name in a.picked)  # relative names, nested folders searched


def test_size_larger_than_available_uses_everything(folder: Path) -> None:
    calib = load_calibration_set(folder, SPEC, size=200)
    assert calib.available == 40 and len(calib) == 40 and len(calib.picked) == 40
    assert calib.skipped == []


# ----------------------------------------------------------------- pre-processing


@pytest.mark.parametrize("spec", [SPEC, GRAY], ids=["rgb", "gray"])
def test_images_are_exactly_what_prepare_feeds_the_graph(folder: Path, spec: InputSpec) -> None:
    calib = load_calibration_set(folder, spec, size=5, seed=2)
    assert calib.images.dtype == np.uint8
    assert calib.images.shape == (5, 32, 48, spec.channels)
    for name, image in zip(calib.picked, calib.images, strict=True):
        expected = prepare(read_image(folder / name), spec)
        assert expected.shape[1:] == image.shape
        assert np.array_equal(expected[0], image)


def test_dynamic_spec_keeps_prepare_size_or_falls_back_to_nominal(tmp_path: Path) -> None:
    spec = InputSpec(size=(32, 48), dynamic=True, multiple_of=8)
    rng = np.random.default_rng(0)
    same = tmp_path / "same"
    same.mkdir()
    for i in range(3):
        Image.fromarray(_image(rng, 41, 70)).save(same / f"{i}.png")
    calib = load_calibration_set(same, spec, min_images=1)
    assert calib.images.shape == (3, 40, 72, 3)  # prepare's rounded size, not the nominal one
    assert np.array_equal(calib.images[0], prepare(read_image(same / "0.png"), spec)[0])

    mixed = tmp_path / "mixed"
    mixed.mkdir()
    Image.fromarray(_image(rng, 41, 70)).save(mixed / "a.png")
    Image.fromarray(_image(rng, 100, 30)).save(mixed / "b.png")
    calib = load_calibration_set(mixed, spec, min_images=1)
    assert calib.images.shape == (2, 32, 48, 3)  # mixed sizes: everything at spec.size


# ----------------------------------------------------------------- skipping and errors


def test_corrupt_files_are_skipped_counted_and_named(
    broken_folder: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="edgeseg.runtime.frames"):
        calib = load_calibration_set(broken_folder, SPEC, size=50, min_images=4)
    assert calib.available == 8 and len(calib.picked) == 8 and len(calib) == 6
    names = dict(calib.skipped)
    assert set(names) == {"sub/corrupt.png", "sub/truncated.jpg"}
    assert "corrupt.png: not a readable image" in names["sub/corrupt.png"]
    assert "truncated" in names["sub/truncated.jpg"].lower()
    assert sum("skipping" in r.getMessage() for r in caplog.records) == 2
    summary = calib.summary()
    assert summary["skipped"] == 2 and summary["used"] == 6
    assert set(summary["skipped_names"]) == set(names)


def test_too_few_usable_images_is_an_error_with_counts(broken_folder: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_calibration_set(broken_folder, SPEC, size=50, min_images=7)
    message = str(info.value)
    assert f"calibration set {broken_folder}" in message
    assert "6 usable images of 8 picked" in message
    assert "2 unreadable: sub/corrupt.png, sub/truncated.jpg" in message
    assert "at least 7 are needed" in message
    # the threshold is min(min_images, size): asking for 5 needs 5, not 8
    with pytest.raises(ConfigError, match=r"of 5 picked from 8 .*; at least 5 are needed"):
        load_calibration_set(broken_folder, SPEC, size=5, min_images=8, seed=0)


def test_min_images_is_capped_by_size(folder: Path) -> None:
    assert len(load_calibration_set(folder, SPEC, size=5, min_images=8)) == 5


def test_folder_of_only_broken_files_fails(tmp_path: Path) -> None:
    (tmp_path / "x.png").write_bytes(b"garbage")
    with pytest.raises(ConfigError, match=r"0 usable images of 1 picked \(1 unreadable: x.png\)"):
        load_calibration_set(tmp_path, SPEC)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ConfigError, match="holds no images"):
        load_calibration_set(empty, SPEC)


def test_bad_sources_and_arguments(tmp_path: Path, folder: Path) -> None:
    with pytest.raises(ConfigError, match=r"does not exist.*folder of images.*\.npz"):
        load_calibration_set(tmp_path / "nope", SPEC)
    other = tmp_path / "frames.txt"
    other.write_text("x")
    with pytest.raises(ConfigError, match=r"frames\.txt.*\.txt file.*\.mp4.*\.npz"):
        load_calibration_set(other, SPEC)
    image = tmp_path / "one.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(image)
    with pytest.raises(ConfigError, match="single image"):
        load_calibration_set(image, SPEC)
    bad_npz = tmp_path / "bad.npz"
    bad_npz.write_bytes(b"not a zip")
    with pytest.raises(ConfigError, match="bad.npz"):
        load_calibration_set(bad_npz, SPEC)
    for kwargs in ({"size": 0}, {"min_images": 0}, {"seed": -1}):
        with pytest.raises(ConfigError):
            load_calibration_set(folder, SPEC, **kwargs)


# ----------------------------------------------------------------- video


@needs_cv2
def test_video_picks_spread_frames_and_decodes_the_right_ones(tmp_path: Path) -> None:
    video = _video(tmp_path / "clip.avi")
    calib = load_calibration_set(video, SPEC, size=10, seed=0, min_images=1)
    assert calib.kind == "video" and calib.available == VIDEO_FRAMES and len(calib) == 10
    indices = [int(name.removeprefix("frame_")) for name in calib.picked]
    assert calib.picked[0] == f"frame_{indices[0]:06d}"
    assert indices == sorted(indices) and indices[0] < 3 and indices[-1] >= 27
    assert [_frame_index(image) for image in calib.images] == indices
    again = load_calibration_set(video, SPEC, size=10, seed=0, min_images=1)
    other = load_calibration_set(video, SPEC, size=10, seed=7, min_images=1)
    assert again.picked == calib.picked and other.picked != calib.picked
    everything = load_calibration_set(video, SPEC, size=100)
    assert [_frame_index(image) for image in everything.images] == list(range(VIDEO_FRAMES))


@needs_cv2
def test_video_frames_are_bgr_and_come_back_rgb(tmp_path: Path) -> None:
    path = tmp_path / "red.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (48, 32))
    red_bgr = np.zeros((32, 48, 3), np.uint8)
    red_bgr[:, :, 2] = 255  # OpenCV order: B, G, R
    for _ in range(3):
        writer.write(red_bgr)
    writer.release()
    calib = load_calibration_set(path, SPEC, min_images=1)
    mean = calib.images.reshape(-1, 3).mean(axis=0)
    assert mean[0] > 200 and mean[1] < 50 and mean[2] < 50, mean
    gray = load_calibration_set(path, GRAY, min_images=1)
    assert gray.images.shape == (3, 32, 48, 1)
    assert abs(float(gray.images.mean()) - 0.299 * 255) < 10  # luma of red, not of blue


class _Capture:
    """cv2.VideoCapture that reports a given frame count."""

    real: Any = None
    count = 0.0

    def __init__(self, *args: Any) -> None:
        self._cap = self.real(*args)

    def get(self, prop: int) -> float:
        if prop == cv2.CAP_PROP_FRAME_COUNT:
            return self.count
        return float(self._cap.get(prop))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._cap, name)


@needs_cv2
@pytest.mark.parametrize("reported", [0.0, -1.0, 40.0])
def test_video_with_unknown_or_wrong_frame_count(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, reported: float
) -> None:
    video = _video(tmp_path / "clip.avi")
    capture = type("Capture", (_Capture,), {"real": cv2.VideoCapture, "count": reported})
    monkeypatch.setattr(cv2, "VideoCapture", capture)
    calib = load_calibration_set(video, SPEC, size=100, min_images=1)
    if reported <= 0:  # unknown: counted by decoding
        assert calib.available == VIDEO_FRAMES and len(calib) == VIDEO_FRAMES
        assert calib.skipped == []
    else:  # the container claims more frames than there are: the missing ones are skipped
        assert calib.available == 40 and len(calib) == VIDEO_FRAMES
        assert [name for name, _ in calib.skipped] == [f"frame_{i:06d}" for i in range(30, 40)]
        assert "ended after 30 frames" in calib.skipped[0][1]
    assert [_frame_index(image) for image in calib.images] == list(range(VIDEO_FRAMES))


# ----------------------------------------------------------------- npz


def test_npz_single_stack(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (20, 40, 60, 3), dtype=np.uint8)
    path = tmp_path / "frames.npz"
    np.savez(path, frames=frames)
    calib = load_calibration_set(path, SPEC, size=5, seed=3)
    assert calib.kind == "npz" and calib.available == 20 and len(calib) == 5
    indices = [int(name.removeprefix("frames[").removesuffix("]")) for name in calib.picked]
    assert indices[0] < 4 and indices[-1] >= 16
    for i, image in zip(indices, calib.images, strict=True):
        assert np.array_equal(image, prepare(frames[i], SPEC)[0])
    gray_stack = tmp_path / "gray.npz"
    np.savez(gray_stack, frames=frames[..., 0])  # (N, H, W)
    calib = load_calibration_set(gray_stack, GRAY, size=100)
    assert calib.images.shape == (20, 32, 48, 1) and calib.picked[-1] == "frames[19]"


def test_npz_several_arrays_key_sorted_with_bad_ones_skipped(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    arrays: dict[str, np.ndarray] = {f"f{i:02d}": _image(rng) for i in range(9)}
    arrays["gray"] = rng.integers(0, 256, (40, 60), dtype=np.uint8)
    arrays["floaty"] = rng.random((40, 60, 3)).astype(np.float32)  # prepare rejects it
    arrays["stack"] = rng.integers(0, 256, (2, 40, 60, 3), dtype=np.uint8)
    arrays["vector"] = np.zeros(5, np.uint8)  # not a frame
    path = tmp_path / "frames.npz"
    np.savez(path, **arrays)
    calib = load_calibration_set(path, SPEC, size=100)
    expected_names: list[str] = []
    for key in sorted(arrays):  # key-sorted, a 4-D array contributes key[i]
        expected_names += ["stack[0]", "stack[1]"] if key == "stack" else [key]
    assert calib.picked == expected_names
    assert calib.available == 14 and len(calib) == 12
    skipped = dict(calib.skipped)
    assert set(skipped) == {"floaty", "vector"}
    assert "uint8" in skipped["floaty"] and "float32" in skipped["floaty"]
    assert "not a frame" in skipped["vector"]
    usable = [n for n in calib.picked if n not in skipped]
    for name, image in zip(usable, calib.images, strict=True):
        if name.startswith("stack["):
            frame = arrays["stack"][int(name[6])]
        else:
            frame = arrays[name]
        assert np.array_equal(image, prepare(frame, SPEC)[0])


# ----------------------------------------------------------------- reporting


def test_summary_is_json_and_progress_is_reported(broken_folder: Path) -> None:
    calls: list[tuple[int, int]] = []
    calib = load_calibration_set(
        broken_folder,
        GRAY,
        size=5,
        seed=4,
        min_images=1,
        progress=lambda d, t: calls.append((d, t)),
    )
    assert calls == [(k, 5) for k in range(1, 6)]
    summary = json.loads(json.dumps(calib.summary()))
    assert summary == {
        "source": str(broken_folder),
        "kind": "folder",
        "available": 8,
        "used": len(calib),
        "skipped": len(calib.skipped),
        "skipped_names": [name for name, _ in calib.skipped],
        "seed": 4,
        "image_size": [32, 48],
        "channels": 1,
    }
    assert isinstance(calib, CalibrationSet) and calib.source == str(broken_folder)


@pytest.mark.data
def test_real_camvid_frames(shared_data: Path) -> None:
    spec = InputSpec(size=(64, 96))
    calib = load_calibration_set(shared_data / "camvid" / "val", spec, size=16)
    assert calib.available == 101 and len(calib) == 16 and calib.skipped == []
    assert calib.images.shape == (16, 64, 96, 3) and calib.images.dtype == np.uint8
    assert len(set(calib.picked)) == 16
