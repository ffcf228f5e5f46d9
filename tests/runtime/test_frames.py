"""One frame reader: sources, the picking rule, skipping, labels, preparation and its errors."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from edgeseg.bundle import InputSpec
from edgeseg.errors import ConfigError, InputError
from edgeseg.runtime.frames import (
    FrameSource,
    frame_source,
    load_frames,
    pair_frame_labels,
    stratified_picks,
)
from edgeseg.runtime.image import prepare
from edgeseg.runtime.sources import read_image

try:
    import cv2
except ImportError:  # everything but the video tests still runs
    cv2 = None
needs_cv2 = pytest.mark.skipif(cv2 is None, reason="video needs OpenCV: pip install 'edgeseg[video]'")

SPEC = InputSpec(size=(16, 24))


def _image(seed: int, h: int = 20, w: int = 30) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _folder(root: Path, n: int) -> list[str]:
    """n PNGs spread over nested subfolders; returns their relative names, sorted as listed."""
    names = []
    for i in range(n):
        name = f"{('', 'a/', 'a/b/')[i % 3]}img_{i:03d}.png"
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(_image(i)).save(root / name)
        names.append(name)
    return sorted(names, key=lambda s: str(root / s))


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "frames"
    root.mkdir()
    _folder(root, 30)
    return root


# ----------------------------------------------------------------- the picking rule


def test_stratified_picks_are_spread_sorted_and_deterministic() -> None:
    picks = stratified_picks(1000, 10, seed=0)
    assert len(set(picks.tolist())) == 10 and list(picks) == sorted(picks)
    for k, index in enumerate(picks):  # one per stratum: the first in the first, the last in the last
        assert k * 100 <= index < (k + 1) * 100
    assert np.array_equal(picks, stratified_picks(1000, 10, seed=0))
    assert not np.array_equal(picks, stratified_picks(1000, 10, seed=1))
    assert stratified_picks(7, 10, seed=0).tolist() == list(range(7))  # fewer: all are used
    assert stratified_picks(10, 10, seed=3).tolist() == list(range(10))


def test_pick_is_the_same_rule_for_every_source(folder: Path) -> None:
    source = frame_source(folder)
    arrays = frame_source(np.zeros((30, 4, 4, 3), np.uint8))
    assert source.pick(5, seed=2) == arrays.pick(5, seed=2) == stratified_picks(30, 5, 2).tolist()
    assert source.pick() == list(range(30)) and source.pick(100) == list(range(30))
    among = [1, 3, 5, 7, 9]  # e.g. the labelled candidates only
    assert source.pick(4, among=among) == [among[i] for i in stratified_picks(5, 4, 0)]
    assert source.pick(9, among=among) == among


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"limit": 0}, r"frames limit must be an integer >= 1, got 0"),
        ({"limit": True}, r"frames limit must be an integer >= 1, got True"),
        ({"seed": -1}, r"frames seed must be an integer >= 0, got -1"),
    ],
)
def test_pick_rejects_bad_limit_and_seed(folder: Path, kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        frame_source(folder).pick(**kwargs)


def test_read_needs_ascending_indices_in_range(folder: Path) -> None:
    source = frame_source(folder, what="samples folder")
    for bad in ([3, 1], [2, 2], [0, 30], [-1]):
        with pytest.raises(ConfigError, match=rf"samples folder {folder}: frame indices must be ascending within 0\.\.29"):
            list(source.read(bad))
    assert list(source.read([])) == []


# ----------------------------------------------------------------- sources


def test_folder_is_listed_recursively_and_read_lazily(folder: Path) -> None:
    names = _folder(folder, 30)  # the same files again: the sorted listing order
    source = frame_source(folder)
    assert isinstance(source, FrameSource) and frame_source(source) is source
    assert source.kind == "folder" and source.source == str(folder) and source.available == 30
    assert list(source.names) == names and any("/" in n for n in names)
    assert source.files is not None and source.files[0] == folder / names[0]
    assert source.frame_size(0) == (20, 30)
    frames = source.read([0, 29])
    first = next(frames)  # a generator: one file decoded at a time
    assert first.name == names[0] and first.error is None
    assert np.array_equal(first.frame, read_image(folder / names[0]))
    assert next(frames).name == names[29]


def test_load_frames_prepares_like_the_runtime(folder: Path) -> None:
    frames = load_frames(folder, SPEC, limit=6, seed=1)
    source = frame_source(folder)
    picks = source.pick(6, seed=1)
    assert frames.picked == frames.names == tuple(source.names[i] for i in picks)
    assert frames.images.shape == (6, 16, 24, 3) and frames.images.dtype == np.uint8
    assert frames.kind == "folder" and frames.available == 30 and frames.seed == 1 and len(frames) == 6
    assert frames.labels is None and frames.skipped == ()
    for name, image in zip(frames.names, frames.images, strict=True):
        assert np.array_equal(image, prepare(read_image(folder / name), SPEC)[0])
    again = load_frames(folder, SPEC, limit=6, seed=1)
    assert again.names == frames.names and np.array_equal(again.images, frames.images)
    assert load_frames(folder, SPEC, limit=6, seed=2).names != frames.names


def test_list_of_files_is_named_relative_to_its_common_folder(folder: Path) -> None:
    files = [folder / "img_000.png", folder / "a" / "b" / "img_005.png", folder / "a" / "img_004.png"]
    source = frame_source(files)
    assert source.kind == "files" and source.source == "(3 files)"
    assert source.names == ("img_000.png", "a/b/img_005.png", "a/img_004.png")
    assert frame_source([files[1]]).names == ("img_005.png",)
    frames = load_frames([str(f) for f in files], SPEC)
    assert np.array_equal(frames.images[1], prepare(read_image(files[1]), SPEC)[0])


def test_arrays_stack_or_list() -> None:
    stack = np.stack([_image(i) for i in range(5)])
    source = frame_source(stack, what="images")
    assert source.kind == "arrays" and source.source == "(5 arrays)" and source.files is None
    assert source.names == tuple(f"image_{i:04d}" for i in range(5))
    frames = load_frames(list(stack), SPEC, limit=2)
    assert frames.names == tuple(source.names[i] for i in source.pick(2))
    for name, image in zip(frames.names, frames.images, strict=True):
        assert np.array_equal(image, prepare(stack[int(name[-4:])], SPEC)[0])
    gray = frame_source(stack[..., 0])  # (N, H, W): a stack of grayscale frames
    assert gray.available == 5 and gray.frame_size(0) == (20, 30)


def test_npz_stack_and_several_arrays(tmp_path: Path) -> None:
    stack = np.stack([_image(i) for i in range(12)])
    path = tmp_path / "stack.npz"
    np.savez(path, frames=stack)
    frames = load_frames(path, SPEC, limit=4, seed=3)
    assert frames.kind == "npz" and frames.available == 12
    indices = [int(n.removeprefix("frames[").removesuffix("]")) for n in frames.names]
    assert indices == stratified_picks(12, 4, 3).tolist()
    for i, image in zip(indices, frames.images, strict=True):
        assert np.array_equal(image, prepare(stack[i], SPEC)[0])

    several = tmp_path / "several.npz"
    np.savez(several, b=_image(1), a=_image(0), vector=np.zeros(5, np.uint8))
    frames = load_frames(several, SPEC)
    assert frames.picked == ("a", "b", "vector") and frames.names == ("a", "b")
    assert "not a frame" in dict(frames.skipped)["vector"]
    assert frame_source(several).frame_size(0) == (20, 30)


@needs_cv2
def test_video_frames_come_back_rgb(tmp_path: Path) -> None:
    path = tmp_path / "red.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (24, 16))
    red_bgr = np.zeros((16, 24, 3), np.uint8)
    red_bgr[:, :, 2] = 255
    for _ in range(4):
        writer.write(red_bgr)
    writer.release()
    source = frame_source(path)
    assert source.kind == "video" and source.names == tuple(f"frame_{i:06d}" for i in range(4))
    (frame,) = [raw.frame for raw in source.read([2])]
    assert frame is not None and frame[..., 0].mean() > 200 and frame[..., 2].mean() < 50


@needs_cv2
def test_video_that_cannot_be_opened_or_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    garbage = tmp_path / "clip.avi"
    garbage.write_bytes(b"not a video")
    with pytest.raises(ConfigError, match=rf"clip {garbage}: OpenCV cannot open this video"):
        frame_source(garbage, what="clip")

    class Empty:  # opens, reports no frame count and has no frame to decode
        def __init__(self, *args: object) -> None:
            pass

        def isOpened(self) -> bool:  # noqa: N802 - OpenCV's name
            return True

        def get(self, prop: int) -> float:
            return 0.0

        def grab(self) -> bool:
            return False

        def release(self) -> None:
            pass

    monkeypatch.setattr(cv2, "VideoCapture", Empty)
    with pytest.raises(ConfigError, match=rf"clip {garbage}: no frame of the video could be read"):
        frame_source(garbage, what="clip")


# ----------------------------------------------------------------- skipping


def test_unreadable_files_are_skipped_counted_with_the_reason(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "broken"
    (root / "sub").mkdir(parents=True)
    for i in range(3):
        Image.fromarray(_image(i)).save(root / f"{i}.png")
    (root / "sub" / "corrupt.png").write_bytes(b"not a png")
    with caplog.at_level(logging.WARNING, logger="edgeseg.runtime.frames"):
        frames = load_frames(root, SPEC, what="samples folder")
    assert frames.picked == ("0.png", "1.png", "2.png", "sub/corrupt.png")
    assert frames.names == ("0.png", "1.png", "2.png") and len(frames) == 3
    ((name, reason),) = frames.skipped
    assert name == "sub/corrupt.png" and "corrupt.png: not a readable image" in reason
    assert [r.getMessage() for r in caplog.records if "skipping" in r.getMessage()] == [
        f"samples folder {root}: skipping sub/corrupt.png: {reason}"
    ]


def test_frames_prepare_rejects_are_skipped() -> None:
    frames = load_frames([_image(0), np.zeros((4, 4, 3), np.float32), _image(1)], SPEC)
    assert frames.names == ("image_0000", "image_0002")
    assert "dtype uint8, got float32" in dict(frames.skipped)["image_0001"]


def test_too_few_usable_frames_names_the_source_counts_and_skipped(tmp_path: Path) -> None:
    root = tmp_path / "bad"
    root.mkdir()
    for i in range(12):
        (root / f"x{i:02d}.png").write_bytes(b"garbage")
    with pytest.raises(
        ConfigError,
        match=rf"samples folder {root}: 0 usable images of 12 picked \(12 unreadable: x00.png, .*x09.png, "
        r"\.\.\. \(2 more\)\); at least 1 is needed",
    ):
        load_frames(root, SPEC, what="samples folder")
    with pytest.raises(ConfigError, match=r"0 usable images of 3 picked from 12 .*; at least 2 are needed"):
        load_frames(root, SPEC, limit=3, min_frames=2)
    with pytest.raises(ConfigError, match=r"frames min_frames must be an integer >= 1, got 0"):
        load_frames(root, SPEC, min_frames=0)
    with pytest.raises(ConfigError, match=r"\(1 arrays\): 0 usable frames of 1 picked"):
        load_frames([np.zeros(3, np.uint8)], SPEC)


def test_dynamic_spec_with_mixed_sizes_stacks_at_the_nominal_size() -> None:
    spec = InputSpec(size=(16, 24), dynamic=True, multiple_of=8)
    same = load_frames([_image(0, 41, 70), _image(1, 41, 70)], spec)
    assert same.images.shape == (2, 40, 72, 3)  # prepare's rounded size
    mixed = load_frames([_image(0, 41, 70), _image(1, 100, 30)], spec)
    assert mixed.images.shape == (2, 16, 24, 3)


# ----------------------------------------------------------------- labels


def test_labels_are_paired_by_name_and_resized_nearest(tmp_path: Path) -> None:
    images, labels = tmp_path / "images", tmp_path / "labels"
    (images / "sub").mkdir(parents=True)
    labels.mkdir()
    for i, name in enumerate(["a.png", "b.jpg", "sub/c.png", "d.png"]):
        Image.fromarray(_image(i, 32, 48)).save(images / name)
    grid = np.zeros((32, 48), np.uint8)
    grid[16:, :] = 1
    grid[:, 24:] += 2  # four quadrants: ids 0, 2, 1, 3
    for stem in ("a", "b", "c"):  # d has no label
        Image.fromarray(grid).save(labels / f"{stem}.png")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(labels / "b.png")  # a colour image: unusable

    source = frame_source(images)
    assert pair_frame_labels(source, labels) == {"a.png": labels / "a.png", "b.jpg": labels / "b.png",
                                                 "sub/c.png": labels / "c.png"}
    frames = load_frames(images, SPEC, labels=labels, label_format="ids")
    assert frames.available == 3  # only labelled images are candidates
    assert frames.names == ("a.png", "sub/c.png")
    assert "colour image" in dict(frames.skipped)["b.jpg"]
    assert frames.labels is not None and frames.labels.shape == (2, 16, 24)
    expected = np.zeros((16, 24), np.uint8)
    expected[8:, :] = 1
    expected[:, 12:] += 2
    assert np.array_equal(frames.labels[0], expected) and np.array_equal(frames.labels[1], expected)


def test_labels_need_image_files(tmp_path: Path) -> None:
    with pytest.raises(
        ConfigError,
        match=r"a labels folder needs images given as a folder or a list of files, not arrays \(\(2 arrays\)\)",
    ):
        load_frames([_image(0), _image(1)], SPEC, labels=tmp_path)


# ----------------------------------------------------------------- errors


def test_missing_or_empty_folder_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=rf"samples folder {tmp_path / 'nope'} does not exist; expected a folder"):
        frame_source(tmp_path / "nope", what="samples folder")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("not an image")
    with pytest.raises(ConfigError, match=rf"images {empty}: the folder holds no images \(searched recursively"):
        load_frames(empty, SPEC, what="images")


def test_files_that_are_not_a_source(tmp_path: Path) -> None:
    image = tmp_path / "one.png"
    Image.fromarray(_image(0)).save(image)
    with pytest.raises(ConfigError, match=rf"frames {image} is a single image; expected .*\.npz"):
        frame_source(image)
    text = tmp_path / "frames.txt"
    text.write_text("x")
    with pytest.raises(ConfigError, match=r"frames\.txt is a \.txt file; expected .*\.mp4"):
        frame_source(text)
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip")
    with pytest.raises(ConfigError, match=rf"frames {bad}: not a readable \.npz file"):
        frame_source(bad)
    npy = tmp_path / "array.npz"
    with npy.open("wb") as fp:
        np.save(fp, np.zeros((2, 4, 4, 3), np.uint8))  # an .npy file named .npz
    with pytest.raises(ConfigError, match=rf"frames {npy}: not an \.npz archive of arrays"):
        frame_source(npy)
    empty = tmp_path / "empty.npz"
    np.savez(empty, frames=np.zeros((0, 4, 4, 3), np.uint8))
    with pytest.raises(ConfigError, match=rf"frames {empty}: the \.npz file holds no frames"):
        frame_source(empty)


def test_bad_in_memory_sources() -> None:
    with pytest.raises(InputError, match=r"images: expected an \(N, H, W\[, C\]\) array, got shape \(4, 4\)"):
        frame_source(np.zeros((4, 4), np.uint8), what="images")
    with pytest.raises(ConfigError, match=r"images: no frames given \(an empty sequence\)"):
        frame_source([], what="images")
    with pytest.raises(ConfigError, match=r"images: a list that mixes file paths and arrays"):
        frame_source(["a.png", _image(0)], what="images")
    with pytest.raises(ConfigError, match=r"images: expected a folder of images .*, got int"):
        frame_source(42, what="images")
