"""examples/: every script compiles and imports without ROS, OpenCV, a camera or a bundle,
and the parts that do the work (message <-> NumPy, the one-slot queue, the worker, the
diagnostics figures, the camera loop) behave, driven by plain fakes."""

from __future__ import annotations

import array
import importlib.util
import py_compile
import sys
import threading
import time
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import numpy as np
import pytest

from edgeseg.errors import ConfigError, InputError

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
# None in sys.modules makes `import X` raise ImportError: as if not installed.
NOT_INSTALLED = ("cv2", "rclpy", "sensor_msgs", "diagnostic_msgs", "cv_bridge")


def _load(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"edgeseg_example_{path.stem}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def bare(monkeypatch: pytest.MonkeyPatch) -> None:
    """No OpenCV and no ROS 2 for the duration of the test."""
    for name in NOT_INSTALLED:
        monkeypatch.setitem(sys.modules, name, None)


@pytest.fixture
def node(bare: None) -> ModuleType:
    return _load(EXAMPLES / "ros2_segmentation_node.py")


@pytest.fixture
def loop(bare: None) -> ModuleType:
    return _load(EXAMPLES / "camera_loop.py")


# --------------------------------------------------------------------------- every example


def test_the_examples_are_there() -> None:
    names = {p.name for p in EXAMPLES.glob("*.py")}
    assert {"camera_loop.py", "ros2_segmentation_node.py"} <= names
    readme = (EXAMPLES / "README.md").read_text(encoding="utf-8")
    for name in names:
        assert name in readme, f"examples/README.md does not describe {name}"


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.py")), ids=lambda p: p.name)
def test_example_compiles_and_imports_without_ros_or_opencv(path: Path, tmp_path: Path, bare: None) -> None:
    py_compile.compile(str(path), cfile=str(tmp_path / "example.pyc"), doraise=True)
    module = _load(path)
    assert callable(module.main)
    assert module.__doc__ and "python" in module.__doc__  # says how to run it
    assert not any(sys.modules.get(name) for name in NOT_INSTALLED)


# --------------------------------------------------------------------------- ROS node: messages


def _msg(encoding: str, pixels: np.ndarray, pad: int = 0, data_type: type = bytes) -> SimpleNamespace:
    """A fake sensor_msgs/Image holding ``pixels`` (H, W[, C]) with ``pad`` bytes after each row."""
    height, width = pixels.shape[:2]
    rows = pixels.reshape(height, -1)
    padded = np.concatenate([rows, np.full((height, pad), 0xAB, np.uint8)], axis=1)
    data = padded.tobytes()
    if data_type is array.array:
        data = array.array("B", data)  # what rclpy gives
    elif data_type is list:
        data = list(data)
    return SimpleNamespace(
        header=SimpleNamespace(stamp=(12, 34), frame_id="camera"),
        height=height, width=width, encoding=encoding, is_bigendian=0,
        step=rows.shape[1] + pad, data=data,
    )


@pytest.fixture
def rgb() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (4, 5, 3), dtype=np.uint8)


def test_rgb8_is_a_view_of_the_message_data(node: ModuleType, rgb: np.ndarray) -> None:
    msg = _msg("rgb8", rgb, data_type=array.array)
    out = node.image_msg_to_array(msg)
    assert out.dtype == np.uint8 and out.shape == (4, 5, 3)
    np.testing.assert_array_equal(out, rgb)
    assert np.shares_memory(out, np.frombuffer(msg.data, np.uint8))  # no copy per frame


def test_bgr8_is_flipped_to_rgb(node: ModuleType, rgb: np.ndarray) -> None:
    out = node.image_msg_to_array(_msg("bgr8", rgb[:, :, ::-1]))
    np.testing.assert_array_equal(out, rgb)


def test_rgba8_and_bgra8_lose_alpha_and_come_out_rgb(node: ModuleType, rgb: np.ndarray) -> None:
    alpha = np.full((4, 5, 1), 7, np.uint8)
    rgba = np.concatenate([rgb, alpha], axis=2)
    bgra = np.concatenate([rgb[:, :, ::-1], alpha], axis=2)
    np.testing.assert_array_equal(node.image_msg_to_array(_msg("rgba8", rgba)), rgb)
    np.testing.assert_array_equal(node.image_msg_to_array(_msg("bgra8", bgra)), rgb)


def test_mono8_is_a_2d_grayscale_frame(node: ModuleType) -> None:
    gray = np.arange(20, dtype=np.uint8).reshape(4, 5)
    out = node.image_msg_to_array(_msg("mono8", gray, data_type=list))
    assert out.shape == (4, 5)
    np.testing.assert_array_equal(out, gray)


@pytest.mark.parametrize("encoding", ["rgb8", "bgr8", "mono8"])
def test_row_padding_in_step_is_cut_off(node: ModuleType, rgb: np.ndarray, encoding: str) -> None:
    pixels = rgb[:, :, 0] if encoding == "mono8" else rgb
    msg = _msg(encoding, pixels, pad=3)
    assert msg.step == pixels[0].size + 3
    out = node.image_msg_to_array(msg)
    expected = pixels[:, :, ::-1] if encoding == "bgr8" else pixels
    np.testing.assert_array_equal(out, expected)
    assert 0xAB not in out[:, -1]  # the padding is not read as pixels


@pytest.mark.parametrize("encoding", ["16UC1", "yuv422", "bayer_rggb8", "32FC1"])
def test_an_unsupported_encoding_is_an_input_error_naming_it(node: ModuleType, rgb: np.ndarray, encoding: str) -> None:
    with pytest.raises(InputError, match=encoding) as info:
        node.image_msg_to_array(_msg(encoding, rgb))
    assert isinstance(info.value, ValueError)
    assert "rgb8" in str(info.value)  # and says what works


def test_inconsistent_sizes_are_input_errors(node: ModuleType, rgb: np.ndarray) -> None:
    short = _msg("rgb8", rgb)
    short.data = short.data[:-1]
    with pytest.raises(InputError, match="needs 60 bytes, has 59"):
        node.image_msg_to_array(short)
    narrow = _msg("rgb8", rgb)
    narrow.step = 14
    with pytest.raises(InputError, match="step 14"):
        node.image_msg_to_array(narrow)


def test_mask_fields_round_trip_through_the_decoder(node: ModuleType) -> None:
    mask = np.random.default_rng(1).integers(0, 11, (6, 9), dtype=np.uint8)
    fields = node.mask_to_image_fields(mask[:, ::-1])  # a non-contiguous mask too
    assert set(fields) == {"height", "width", "encoding", "is_bigendian", "step", "data"}
    assert (fields["height"], fields["width"], fields["encoding"], fields["step"]) == (6, 9, "mono8", 9)
    assert isinstance(fields["data"], array.array) and fields["data"].typecode == "B"
    assert len(fields["data"]) == 6 * 9
    decoded = node.image_msg_to_array(SimpleNamespace(**fields))
    np.testing.assert_array_equal(decoded, mask[:, ::-1])


def test_mask_fields_reject_a_3d_array(node: ModuleType) -> None:
    with pytest.raises(InputError, match="expected shape"):
        node.mask_to_image_fields(np.zeros((2, 3, 3), np.uint8))


# --------------------------------------------------------------------------- ROS node: queue


def test_queue_keeps_the_newest_and_counts_drops(node: ModuleType) -> None:
    q = node.LatestQueue()
    assert [q.put(i) for i in (1, 2, 3)] == [True, False, False]
    assert q.dropped == 2
    assert q.get(timeout=0) == 3
    assert q.get(timeout=0.01) is None  # empty again
    assert q.put(4) is True and q.get(timeout=0) == 4
    assert q.dropped == 2


def test_queue_drop_newest_keeps_the_waiting_item(node: ModuleType) -> None:
    q = node.LatestQueue(drop="newest")
    assert [q.put(i) for i in (1, 2, 3)] == [True, False, False]
    assert q.get(timeout=0) == 1 and q.dropped == 2


def test_queue_rejects_an_unknown_policy(node: ModuleType) -> None:
    with pytest.raises(ConfigError, match="'latest'"):
        node.LatestQueue(drop="latest")


def test_queue_close_wakes_a_blocked_get(node: ModuleType) -> None:
    q = node.LatestQueue()
    got: list[Any] = []
    waiter = threading.Thread(target=lambda: got.append(q.get()))
    waiter.start()
    time.sleep(0.05)
    q.close()
    waiter.join(2.0)
    assert not waiter.is_alive() and got == [None]
    q.put(5)
    assert q.get(timeout=0) is None  # closed for good


def test_queue_hands_over_between_threads(node: ModuleType) -> None:
    q = node.LatestQueue()
    got: list[Any] = []
    consumer = threading.Thread(target=lambda: got.append(q.get(timeout=2.0)))
    consumer.start()
    q.put("msg")
    consumer.join(2.0)
    assert got == ["msg"]


# --------------------------------------------------------------------------- ROS node: diagnostics


def test_stats_windows_with_a_fake_clock(node: ModuleType) -> None:
    now = [100.0]
    stats = node.NodeStats(clock=lambda: now[0])
    stats.record(10.0)
    stats.record(30.0)
    stats.record_error()
    now[0] = 101.5
    assert stats.take() == ([10.0, 30.0], 1.5)
    now[0] = 102.0
    assert stats.take() == ([], 0.5)
    assert stats.errors == 1


def test_diagnostic_values(node: ModuleType) -> None:
    level, message, values = node.diagnostic_status([float(i) for i in range(1, 101)], 2.0, dropped=7, errors=1)
    assert level == "OK"
    assert values == {
        "latency_p50_ms": "50.5", "latency_p99_ms": "99.0", "fps": "50.0",
        "frames": "100", "dropped": "7", "errors": "1",
    }
    assert "50.0 fps" in message


def test_diagnostics_warn_without_frames_and_error_on_failure(node: ModuleType) -> None:
    level, message, values = node.diagnostic_status([], 1.0, dropped=0, errors=3)
    assert level == "WARN" and "no image" in message
    assert values["latency_p50_ms"] == "n/a" and values["fps"] == "0.0" and values["errors"] == "3"
    level, message, _ = node.diagnostic_status([5.0], 1.0, 0, 0, failure="RuntimeError: boom")
    assert level == "ERROR" and "boom" in message


# --------------------------------------------------------------------------- ROS node: worker


class _Worker:
    """Runs the node's worker with a fake model and a publish that records."""

    def __init__(self, node: ModuleType, segment: Any) -> None:
        self.queue = node.LatestQueue()
        self.stats = node.NodeStats()
        self.published: list[tuple[Any, np.ndarray]] = []
        self.errors: list[str] = []
        self.done = threading.Semaphore(0)

        def publish(msg: Any, mask: np.ndarray) -> None:
            self.published.append((msg, mask))
            self.done.release()

        def on_error(text: str) -> None:
            self.errors.append(text)
            self.done.release()

        self.worker = node.SegmentationWorker(segment, self.queue, publish, self.stats, on_error)
        self.worker.start()

    def feed(self, msg: Any) -> None:
        self.queue.put((msg, time.perf_counter()))
        assert self.done.acquire(timeout=5.0), "the worker did not handle the message"


def test_worker_segments_publishes_and_skips_bad_images(node: ModuleType, rgb: np.ndarray) -> None:
    w = _Worker(node, lambda frame: (frame[..., 0] > 127).astype(np.uint8))
    try:
        good = _msg("bgr8", rgb[:, :, ::-1])
        w.feed(_msg("yuv422", rgb))
        w.feed(good)
    finally:
        w.worker.stop()
    assert len(w.errors) == 1 and "yuv422" in w.errors[0]
    assert len(w.published) == 1
    msg, mask = w.published[0]
    assert msg is good  # the header travels with the mask
    np.testing.assert_array_equal(mask, (rgb[..., 0] > 127).astype(np.uint8))
    latencies, _ = w.stats.take()
    assert len(latencies) == 1 and latencies[0] >= 0.0
    assert w.stats.errors == 1 and w.worker.failure is None


def test_a_worker_that_dies_says_why(node: ModuleType, rgb: np.ndarray) -> None:
    def broken(frame: np.ndarray) -> np.ndarray:
        raise RuntimeError("backend lost")

    w = _Worker(node, broken)
    w.feed(_msg("rgb8", rgb))
    w.worker.stop()
    assert w.worker.failure == "RuntimeError: backend lost"
    assert "worker stopped" in w.errors[0]
    assert node.diagnostic_status([], 1.0, 0, 0, w.worker.failure)[0] == "ERROR"


def test_node_main_without_ros_is_one_line_and_nonzero(node: ModuleType, capsys: pytest.CaptureFixture[str]) -> None:
    assert node.main([]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "rclpy" in err


# --------------------------------------------------------------------------- camera loop


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0", 0),
        ("12", 12),
        ("/dev/video0", "/dev/video0"),
        ("clips/drive.mp4", "clips/drive.mp4"),
        ("frames/", "frames/"),
        ("v4l2src device=/dev/video0 ! videoconvert ! appsink", "v4l2src device=/dev/video0 ! videoconvert ! appsink"),
    ],
)
def test_parse_source(loop: ModuleType, text: str, expected: int | str) -> None:
    assert loop.parse_source(text) == expected
    assert type(loop.parse_source(text)) is type(expected)


def test_parse_args_defaults_to_camera_zero(loop: ModuleType) -> None:
    args = loop.parse_args(["road.edgeseg"])
    assert (args.bundle, args.source, args.display, args.output, args.frames) == ("road.edgeseg", 0, False, None, 0)
    assert loop.parse_args(["b", "--source", "/dev/video0"]).source == "/dev/video0"
    assert loop.parse_args(["b", "--source", "1", "--frames", "5"]).frames == 5
    assert loop.parse_args(["b"]).drop == "oldest" and loop.parse_args(["b", "--drop", "none"]).drop == "none"


class _FakeStream:
    def __init__(self, results: list[SimpleNamespace], failed: bool = False) -> None:
        self.results, self.failed, self.closed = results, failed, False
        self.end_reason = "camera 0: no frame after 3 retries" if failed else None

    def __enter__(self) -> _FakeStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.closed = True

    def __iter__(self) -> Any:
        return iter(self.results)


class _FakeSegmenter:
    """Stands in for edgeseg.Segmenter: the stream API the example is written against."""

    palette = np.array([[0, 0, 0], [255, 0, 0]], np.uint8)
    instances: list[_FakeSegmenter] = []

    def __init__(self, path: str, failed: bool = False) -> None:
        self.path, self.closed, self.stream_args = path, False, None
        frame = np.full((4, 6, 3), 100, np.uint8)
        mask = np.eye(4, 6, dtype=np.uint8)
        self.results = [
            SimpleNamespace(frame_index=i, mask=None if i == 1 else mask, frame=frame, error="bad frame" if i == 1 else None)
            for i in range(5)
        ]
        self.stream_obj = _FakeStream(self.results, failed)
        _FakeSegmenter.instances.append(self)

    def __enter__(self) -> _FakeSegmenter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.closed = True

    def stream(self, source: Any, **kwargs: Any) -> _FakeStream:
        self.stream_args = (source, kwargs)
        return self.stream_obj

    def profile(self) -> str:
        return "stage p50 p90 p99 (fake profile)"


class _FakeCv2:
    COLOR_RGB2BGR = 4

    def __init__(self, quit_after: int = 0, opens: bool = True) -> None:
        self.shown: list[np.ndarray] = []
        self.writers: list[Any] = []
        self.windows_destroyed = False
        self._quit_after, self._opens = quit_after, opens
        cv2 = self

        class VideoWriter:
            def __init__(self, path: str, fourcc: int, fps: float, size: tuple[int, int]) -> None:
                self.path, self.fps, self.size, self.frames, self.released = path, fps, size, [], False
                cv2.writers.append(self)

            def isOpened(self) -> bool:
                return cv2._opens

            def write(self, frame: np.ndarray) -> None:
                self.frames.append(frame)

            def release(self) -> None:
                self.released = True

        self.VideoWriter = VideoWriter

    def cvtColor(self, image: np.ndarray, code: int) -> np.ndarray:
        assert code == self.COLOR_RGB2BGR
        return image[:, :, ::-1]

    def VideoWriter_fourcc(self, *chars: str) -> int:
        assert "".join(chars) == "mp4v"
        return 1

    def imshow(self, name: str, image: np.ndarray) -> None:
        self.shown.append(image)

    def waitKey(self, delay: int) -> int:
        return ord("q") if self._quit_after and len(self.shown) >= self._quit_after else -1

    def destroyAllWindows(self) -> None:
        self.windows_destroyed = True


@pytest.fixture
def fake_seg(loop: ModuleType, monkeypatch: pytest.MonkeyPatch) -> type[_FakeSegmenter]:
    _FakeSegmenter.instances = []
    monkeypatch.setattr(loop, "edgeseg", SimpleNamespace(Segmenter=_FakeSegmenter, errors=loop.edgeseg.errors))
    return _FakeSegmenter


def test_loop_writes_overlays_skips_bad_frames_and_stops_at_frames(
    loop: ModuleType, fake_seg: type[_FakeSegmenter], monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str], tmp_path: Path,
) -> None:
    cv2 = _FakeCv2()
    monkeypatch.setitem(sys.modules, "cv2", cv2)
    out = str(tmp_path / "overlay.mp4")
    assert loop.main(["road.edgeseg", "--output", out, "--frames", "3"]) == 0
    seg = fake_seg.instances[0]
    assert seg.path == "road.edgeseg" and seg.closed and seg.stream_obj.closed
    assert seg.stream_args == (0, {"drop": "oldest", "keep_frames": True})
    (writer,) = cv2.writers
    assert writer.path == out and writer.size == (6, 4) and writer.released
    assert len(writer.frames) == 2  # results 0 and 2; result 1 was an error; stopped after 3
    expected = loop.overlay(seg.results[0].frame, seg.results[0].mask, seg.palette, 0.5)[:, :, ::-1]
    np.testing.assert_array_equal(writer.frames[0], expected)
    captured = capsys.readouterr()
    assert "frame 1: bad frame" in captured.err
    assert "fake profile" in captured.out
    assert cv2.shown == []


def test_loop_display_quits_on_q(
    loop: ModuleType, fake_seg: type[_FakeSegmenter], monkeypatch: pytest.MonkeyPatch
) -> None:
    cv2 = _FakeCv2(quit_after=2)
    monkeypatch.setitem(sys.modules, "cv2", cv2)
    assert loop.main(["road.edgeseg", "--display", "--source", "/dev/video2"]) == 0
    assert len(cv2.shown) == 2 and cv2.windows_destroyed and cv2.writers == []
    assert fake_seg.instances[0].stream_args[0] == "/dev/video2"


def test_loop_without_display_needs_no_opencv(
    loop: ModuleType, fake_seg: type[_FakeSegmenter], capsys: pytest.CaptureFixture[str]
) -> None:
    assert loop.main(["road.edgeseg", "--source", "clip.mp4", "--drop", "none"]) == 0  # cv2 is blocked
    assert fake_seg.instances[0].stream_args == ("clip.mp4", {"drop": "none", "keep_frames": False})
    assert "fake profile" in capsys.readouterr().out


def test_loop_reports_a_dead_camera(
    loop: ModuleType, fake_seg: type[_FakeSegmenter], monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    class Failing(_FakeSegmenter):
        def __init__(self, path: str) -> None:
            super().__init__(path, failed=True)

    monkeypatch.setattr(loop, "edgeseg", SimpleNamespace(Segmenter=Failing, errors=loop.edgeseg.errors))
    assert loop.main(["road.edgeseg"]) == 1
    captured = capsys.readouterr()
    assert "fake profile" in captured.out  # the profile still prints
    assert captured.err.strip().splitlines()[-1] == "error: camera 0: no frame after 3 retries"


def test_loop_unwritable_output_is_one_line(
    loop: ModuleType, fake_seg: type[_FakeSegmenter], monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setitem(sys.modules, "cv2", _FakeCv2(opens=False))
    assert loop.main(["road.edgeseg", "--output", "/nowhere/x.mp4"]) == 1
    assert capsys.readouterr().err.strip().splitlines()[-1] == "error: OpenCV cannot write /nowhere/x.mp4"
    assert fake_seg.instances[0].closed


def test_loop_without_opencv_names_the_extra(loop: ModuleType, capsys: pytest.CaptureFixture[str]) -> None:
    # cv2 is blocked by the fixture; the error comes before any bundle is opened
    assert loop.main(["missing.edgeseg", "--display"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install 'edgeseg[video]'" in err


def test_loop_missing_bundle_is_one_line(loop: ModuleType, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert loop.main([str(tmp_path / "missing.edgeseg")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and "missing.edgeseg" in err
