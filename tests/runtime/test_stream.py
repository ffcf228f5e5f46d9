"""Streaming: ordering, drops, bad frames, dying sources, prompt shutdown, no leaked threads."""

from __future__ import annotations

import os
import struct
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import edgeseg
from edgeseg.errors import ConfigError, InputError, SourceError
from edgeseg.runtime import stream as stream_mod
from edgeseg.runtime.stream import open_source


def _stream_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("edgeseg-")]


@pytest.fixture
def seg(tiny_bundle: Path) -> Iterator[edgeseg.Segmenter]:
    with edgeseg.Segmenter(tiny_bundle, threads=1) as s:
        yield s
    assert _stream_threads() == []


def _frames(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (48, 80, 3), dtype=np.uint8) for _ in range(n)]


def test_iterable_every_frame_in_order_and_equal_to_single_calls(seg: edgeseg.Segmenter) -> None:
    frames = _frames(12)
    with seg.stream(frames) as s:
        assert s.drop == "none"  # iterables default to processing everything
        results = list(s)
    assert [r.frame_index for r in results] == list(range(12))
    for r, frame in zip(results, frames, strict=True):
        assert r.error is None and r.dropped == 0
        np.testing.assert_array_equal(r.mask, seg(frame).mask)
        assert set(r.timings) == {"capture", "preprocess", "infer", "postprocess"}
        assert r.latency_ms >= r.timings["infer"] > 0
    assert s.end_reason and "end of iterable" in s.end_reason and not s.failed


def test_folder_source_reports_bad_frame_and_goes_on(seg: edgeseg.Segmenter, tmp_path: Path) -> None:
    for i, frame in enumerate(_frames(4)):
        Image.fromarray(frame).save(tmp_path / f"{i:02d}.png")
    (tmp_path / "02.png").write_bytes(b"broken")
    results = list(seg.stream(tmp_path, keep_frames=True))
    assert [r.frame_index for r in results] == [0, 1, 2, 3]
    assert results[2].error is not None and "02.png" in results[2].error and results[2].mask is None
    assert all(r.mask is not None and r.frame is not None for i, r in enumerate(results) if i != 2)


def _bomb_png(path: Path) -> None:
    """A real PNG whose header claims 20000 x 20000 pixels: Pillow refuses it as a decompression bomb."""
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(path)
    data = bytearray(path.read_bytes())
    assert data[12:16] == b"IHDR"
    data[16:24] = struct.pack(">II", 20000, 20000)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    path.write_bytes(bytes(data))


def test_folder_with_a_decompression_bomb_reports_it_on_its_frame(seg: edgeseg.Segmenter, tmp_path: Path) -> None:
    for i, frame in enumerate(_frames(4)):
        Image.fromarray(frame).save(tmp_path / f"{i:02d}.png")
    _bomb_png(tmp_path / "01.png")
    with seg.stream(tmp_path) as s:
        results = list(s)
    assert [r.frame_index for r in results] == [0, 1, 2, 3]
    assert results[1].error is not None and results[1].mask is None
    assert "01.png: image too large to decode safely" in results[1].error
    assert all(r.error is None for i, r in enumerate(results) if i != 1)
    assert not s.failed


@pytest.mark.filterwarnings("ignore:the matrix subclass:PendingDeprecationWarning")
def test_ndarray_subclass_frames_are_segmented_as_plain_arrays(seg: edgeseg.Segmenter) -> None:
    # (np.matrix of a non-contiguous frame aborted the process: test_runtime checks it in a subprocess)
    gray = np.ascontiguousarray(_frames(1)[0][:, :, 0])
    masked = np.ma.masked_array(gray, mask=gray > 200)
    results = list(seg.stream([np.asmatrix(gray), masked]))
    assert [r.error for r in results] == [None, None]
    expected = seg(gray).mask
    for r in results:
        np.testing.assert_array_equal(r.mask, expected)


def test_array_sources_are_stacks_of_frames(seg: edgeseg.Segmenter) -> None:
    stack = np.stack(_frames(3))
    assert [r.error for r in seg.stream(stack)] == [None] * 3
    gray_stack = stack[:, :, :, 0]  # (N, H, W): grayscale frames
    results = list(seg.stream(gray_stack))
    assert [r.mask.shape for r in results if r.mask is not None] == [(48, 80)] * 3
    wrap = r"; it looks like one frame: wrap it in a list to stream it, stream\(\[frame\]\)"
    with pytest.raises(InputError, match=r"array source of shape \(48, 80\): expected a stack of frames "
                       r"\(N, H, W\[, C\]\)" + wrap):
        seg.stream(gray_stack[0])
    with pytest.raises(InputError, match=r"array source of shape \(48, 80, 3\): .*" + wrap):
        seg.stream(stack[0])
    with pytest.raises(InputError, match=r"array source of shape \(5,\): expected a stack of frames "
                       r"\(N, H, W\[, C\]\)$"):
        seg.stream(np.zeros(5, np.uint8))
    assert _stream_threads() == []


def test_bad_frame_from_an_iterable(seg: edgeseg.Segmenter) -> None:
    frames: list[object] = _frames(3)
    frames.insert(1, np.zeros((48, 80, 3), np.float32))
    results = list(seg.stream(frames))
    assert len(results) == 4
    assert results[1].error is not None and results[1].error.startswith("frame 1: expected dtype uint8")
    assert results[1].error.count("frame 1") == 1  # one prefix, not "frame 1: frame 1: ..."
    assert [r.error is None for r in results] == [True, False, True, True]


@pytest.mark.slow
def test_drop_oldest_keeps_latency_bounded_with_a_slow_consumer(seg: edgeseg.Segmenter) -> None:
    frame = _frames(1)[0]

    def camera() -> Iterator[np.ndarray]:  # a live source: a frame every 5 ms
        while True:
            time.sleep(0.005)
            yield frame

    latencies, indices = [], []
    with seg.stream(camera(), drop="oldest", max_frames=400) as s:
        for r in s:
            time.sleep(0.03)  # the robot's slow control loop
            latencies.append(r.latency_ms)
            indices.append(r.frame_index)
    assert s.dropped > 100 and indices == sorted(indices)
    assert len(indices) + s.dropped == 400
    # bounded: a handful of queued frames at most, not the whole backlog (400 x 5 ms)
    assert np.percentile(latencies, 99) < 600


def test_drop_none_processes_every_frame_with_a_slow_consumer(seg: edgeseg.Segmenter) -> None:
    results = []
    for r in seg.stream(_frames(15), drop="none"):
        time.sleep(0.01)
        results.append(r)
    assert [r.frame_index for r in results] == list(range(15)) and results[-1].dropped == 0


def test_dying_source_ends_with_its_reason(seg: edgeseg.Segmenter) -> None:
    frames = _frames(5)

    def flaky() -> Iterator[np.ndarray]:
        yield from frames
        raise SourceError("camera 0: cable unplugged")

    with seg.stream(flaky()) as s:
        results = list(s)
    assert len(results) == 5  # what was captured is still delivered
    assert s.failed and s.end_reason == "camera 0: cable unplugged"


def test_break_stops_every_thread_promptly(seg: edgeseg.Segmenter) -> None:
    def endless() -> Iterator[np.ndarray]:
        frame = _frames(1)[0]
        while True:
            yield frame

    start = time.perf_counter()
    for r in seg.stream(endless(), drop="oldest"):
        if r.frame_index >= 3:
            break
    deadline = time.perf_counter() + 2.0
    while _stream_threads() and time.perf_counter() < deadline:
        time.sleep(0.01)
    assert _stream_threads() == []
    assert time.perf_counter() - start < 5.0


def test_stage_exception_is_reported_on_its_frame_and_the_stream_goes_on(
    seg: edgeseg.Segmenter, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = seg._require_open()
    infer = backend.infer
    calls = iter(range(100))

    def flaky(*args: object, **kwargs: object) -> dict[str, np.ndarray]:
        if next(calls) == 2:
            raise RuntimeError("device hiccup")
        return infer(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(backend, "infer", flaky)
    with seg.stream(_frames(5)) as s:
        results = list(s)
    assert [r.frame_index for r in results] == [0, 1, 2, 3, 4]
    assert results[2].error == "frame 2: infer failed: RuntimeError: device hiccup" and results[2].mask is None
    assert all(r.error is None and r.mask is not None for i, r in enumerate(results) if i != 2)
    assert not s.failed and s.end_reason == "end of iterable list"


def test_postprocess_exception_is_reported_on_its_frame(
    seg: edgeseg.Segmenter, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
        raise IndexError("bad table")

    monkeypatch.setattr(seg, "_resize_mask", broken)
    results = list(seg.stream(_frames(3)))
    assert [r.error for r in results] == [f"frame {i}: postprocess failed: IndexError: bad table" for i in range(3)]


def test_source_raising_any_exception_delivers_every_frame_it_read(seg: edgeseg.Segmenter) -> None:
    frames = _frames(10)

    def dying() -> Iterator[np.ndarray]:
        yield from frames
        raise RuntimeError("driver crashed")

    for _ in range(3):  # the lost frames were a race: try it more than once
        with seg.stream(dying()) as s:
            results = list(s)
        assert [r.frame_index for r in results] == list(range(10))
        assert all(r.error is None for r in results)
        assert s.failed and s.end_reason == "iterable generator failed: RuntimeError: driver crashed"


def test_keyboard_interrupt_in_a_source_stops_the_stream(seg: edgeseg.Segmenter) -> None:
    def interrupted() -> Iterator[np.ndarray]:
        yield from _frames(3)
        raise KeyboardInterrupt

    with seg.stream(interrupted()) as s, pytest.raises(KeyboardInterrupt):
        list(s)
    assert s.failed and s.end_reason == "capture stage stopped by KeyboardInterrupt"
    assert _stream_threads() == []


def test_system_exit_in_a_stage_stops_the_stream(seg: edgeseg.Segmenter, monkeypatch: pytest.MonkeyPatch) -> None:
    def leaving(*args: object, **kwargs: object) -> dict[str, np.ndarray]:
        raise SystemExit(3)

    monkeypatch.setattr(seg._require_open(), "infer", leaving)
    with seg.stream(_frames(5)) as s, pytest.raises(SystemExit):
        list(s)
    assert s.failed and s.end_reason == "infer stage stopped by SystemExit"


def test_stage_loop_crash_ends_the_stream_instead_of_hanging(
    seg: edgeseg.Segmenter, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken_forward(self: stream_mod.Stream, stage: int, item: object) -> bool:
        raise RuntimeError("channel bug")

    monkeypatch.setattr(stream_mod.Stream, "_forward", broken_forward)
    with seg.stream(_frames(5)) as s:
        results = list(s)
    assert results == [] and s.failed and "capture stage failed: RuntimeError: channel bug" in (s.end_reason or "")


def test_profile_has_every_stage(seg: edgeseg.Segmenter) -> None:
    list(seg.stream(_frames(6)))
    summary = seg.profile()
    assert summary.frames == 6
    assert {"capture", "preprocess", "infer", "postprocess"} <= set(summary.stages)
    assert summary.end_to_end.p50 >= summary.stages["infer"].p50
    assert "infer" in summary.table()


class _FakeCapture:
    """cv2.VideoCapture stand-in: delivers ``good`` frames, then fails every read."""

    opened: list[object] = []

    def __init__(self, target: object, *args: object) -> None:
        self.target, self.args = target, args
        self.reads = 0
        _FakeCapture.opened.append(target)

    def isOpened(self) -> bool:  # noqa: N802 - OpenCV's name
        return True

    def read(self) -> tuple[bool, np.ndarray | None]:
        self.reads += 1
        if len(_FakeCapture.opened) == 1 and self.reads <= 2:
            return True, np.zeros((8, 8, 3), np.uint8)
        return False, None

    def release(self) -> None:
        pass


def test_camera_retries_then_gives_up(monkeypatch: pytest.MonkeyPatch) -> None:
    cv2 = pytest.importorskip("cv2", reason="camera sources need opencv-python-headless (video extra)")
    _FakeCapture.opened = []
    monkeypatch.setattr(cv2, "VideoCapture", _FakeCapture)
    source = stream_mod._CaptureSource(0, live=True, retries=2, retry_delay_s=0.001)
    assert source.read()[0] is not None and source.read()[0] is not None
    with pytest.raises(SourceError, match="camera 0: no frame after 2 retries"):
        source.read()
    assert len(_FakeCapture.opened) == 3  # opened once, reopened twice
    gst = open_source("videotestsrc ! videoconvert ! appsink")
    assert gst.live and "GStreamer pipeline" in gst.description
    assert _FakeCapture.opened[-1] == "videotestsrc ! videoconvert ! appsink"
    assert open_source("/dev/video0").live


def test_negative_or_bool_camera_index_is_refused_before_opencv(
    seg: edgeseg.Segmenter, monkeypatch: pytest.MonkeyPatch
) -> None:
    cv2 = pytest.importorskip("cv2", reason="camera sources need opencv-python-headless (video extra)")

    def never(*args: object) -> None:
        raise AssertionError("OpenCV was given the index")

    monkeypatch.setattr(cv2, "VideoCapture", never)
    with pytest.raises(ConfigError, match="camera index must be an integer >= 0, got -1"):
        seg.stream(-1)
    with pytest.raises(ConfigError, match="camera index must be an integer >= 0, got -2"):
        seg.stream(np.int64(-2))
    with pytest.raises(ConfigError, match="camera index must be an integer >= 0, got True"):
        stream_mod._CaptureSource(True, live=True)
    with pytest.raises(ConfigError, match="source must be a camera index, path, pipeline or iterable, got True"):
        seg.stream(True)


def _write_avi(path: Path, frames: int) -> None:
    cv2 = pytest.importorskip("cv2", reason="videos need opencv-python-headless (video extra)")
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (80, 48))
    if not writer.isOpened():
        pytest.skip("this OpenCV cannot write MJPG AVI files")
    for frame in _frames(frames):
        writer.write(frame)
    writer.release()


def test_video_ends_normally_after_its_frame_count(seg: edgeseg.Segmenter, tmp_path: Path) -> None:
    video = tmp_path / "whole.avi"
    _write_avi(video, 60)
    with seg.stream(video) as s:
        results = list(s)
    assert len(results) == 60 and all(r.error is None for r in results)
    assert not s.failed and s.end_reason == f"end of video {video}"


def test_truncated_video_ends_failed_naming_both_counts(seg: edgeseg.Segmenter, tmp_path: Path) -> None:
    video = tmp_path / "cut.avi"
    _write_avi(video, 60)
    data = video.read_bytes()
    video.write_bytes(data[: len(data) // 2])  # the header still says 60 frames
    with seg.stream(video) as s:
        results = list(s)
    assert 0 < len(results) < 60
    assert s.failed and s.end_reason == (
        f"video {video} ended after {len(results)} of 60 frames (truncated or corrupt)"
    )


def test_bad_sources_and_options(seg: edgeseg.Segmenter, tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="does not exist"):
        seg.stream(tmp_path / "missing.mp4")
    with pytest.raises(ConfigError, match="drop must be one of oldest, none"):
        seg.stream(_frames(1), drop="newest")
    with pytest.raises(ConfigError, match="queue_size must be >= 1"):
        seg.stream(_frames(1), queue_size=0)
    with pytest.raises(ConfigError, match="source must be"):
        seg.stream(3.5)


def test_lower_priority_applies_to_the_calling_thread_only() -> None:
    if not hasattr(os, "getpriority"):
        pytest.skip("thread priorities are a POSIX feature")
    seen: dict[str, int] = {}

    def worker() -> None:
        stream_mod._lower_priority(5)
        seen["worker"] = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    base = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    t = threading.Thread(target=worker)
    t.start()
    t.join()
    assert seen["worker"] == min(base + 5, 19)
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == base


def test_stream_with_nice_still_delivers(seg: edgeseg.Segmenter) -> None:
    results = list(seg.stream(_frames(4), nice=5))
    assert [r.frame_index for r in results] == [0, 1, 2, 3]
