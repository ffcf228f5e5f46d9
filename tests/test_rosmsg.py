"""edgeseg.rosmsg on real CDR bytes: messages made by the rosbags typestore, serialised and
deserialised as a bag or DDS would carry them, decoded by the package's code; masks and overlays
encoded back the same way. Then the ROS 2 example node's worker on such messages."""

from __future__ import annotations

import array
import io
import re
import sys
import threading
import time
from types import ModuleType
from typing import Any

import numpy as np
import pytest
from PIL import Image as PILImage

from edgeseg import rosmsg
from edgeseg.errors import InputError
from edgeseg.rosmsg import (
    compressed_msg_to_array,
    image_msg_to_array,
    mask_to_image_fields,
    message_to_array,
    rgb_to_image_fields,
)
from tests.test_examples import EXAMPLES, NOT_INSTALLED, _load

typesys = pytest.importorskip(
    "rosbags.typesys", reason="needs rosbags for real ROS 2 CDR bytes: pip install 'edgeseg[bags]'"
)

TS = typesys.get_typestore(typesys.Stores.ROS2_HUMBLE)
IMAGE = "sensor_msgs/msg/Image"
COMPRESSED = "sensor_msgs/msg/CompressedImage"
Image = TS.types[IMAGE]
CompressedImage = TS.types[COMPRESSED]
Header = TS.types["std_msgs/msg/Header"]
Time = TS.types["builtin_interfaces/msg/Time"]

RNG = np.random.default_rng(16)
H, W = 5, 7  # odd sizes: no accidental alignment
FRAME = RNG.integers(0, 256, (H, W, 3), dtype=np.uint8)  # the known RGB frame
GRAY = FRAME[:, :, 1].copy()  # the known gray frame (differs from every colour channel)
ALPHA = RNG.integers(0, 256, (H, W, 1), dtype=np.uint8)  # not constant: it must be dropped

# encoding -> (pixels as they lie in msg.data, what image_msg_to_array must give)
PIXELS: dict[str, tuple[np.ndarray, np.ndarray]] = {
    "rgb8": (FRAME, FRAME),
    "bgr8": (FRAME[:, :, ::-1], FRAME),
    "rgba8": (np.concatenate([FRAME, ALPHA], axis=2), FRAME),
    "bgra8": (np.concatenate([FRAME[:, :, ::-1], ALPHA], axis=2), FRAME),
    "mono8": (GRAY[:, :, None], GRAY),
}
PADDING = ("tight", "odd", "aligned32")  # step = width * channels, + 3, rounded up to 32


def _header(sec: int = 1_700_000_123, nanosec: int = 987_654_321, frame_id: str = "camera_front_optical") -> Any:
    return Header(stamp=Time(sec=sec, nanosec=nanosec), frame_id=frame_id)


def _cdr(msg: Any, msgtype: str) -> Any:
    """The message as another process gets it: CDR bytes, deserialised."""
    raw = bytes(TS.serialize_cdr(msg, msgtype))
    assert raw[:4] == b"\x00\x01\x00\x00"  # CDR little-endian encapsulation header
    return TS.deserialize_cdr(raw, msgtype)


def _pad_bytes(row: int, padding: str) -> int:
    return {"tight": 0, "odd": 3, "aligned32": -row % 32 or 32}[padding]


def _image(encoding: str, pixels: np.ndarray, pad: int = 0, header: Any = None) -> Any:
    """A typestore sensor_msgs/Image of ``pixels`` (H, W, C), each row followed by ``pad`` garbage bytes."""
    height, width = pixels.shape[:2]
    rows = pixels.reshape(height, -1)
    garbage = RNG.integers(0, 256, (height, pad), dtype=np.uint8)
    data = np.concatenate([rows, garbage], axis=1).reshape(-1)
    return Image(
        header=_header() if header is None else header,
        height=height,
        width=width,
        encoding=encoding,
        is_bigendian=0,
        step=rows.shape[1] + pad,
        data=data,
    )


def _compressed(fmt: str, data: bytes) -> Any:
    return _cdr(CompressedImage(header=_header(), format=fmt, data=np.frombuffer(data, np.uint8)), COMPRESSED)


def _encode(pixels: np.ndarray, codec: str, **options: Any) -> bytes:
    buf = io.BytesIO()
    PILImage.fromarray(pixels).save(buf, codec, **options)
    return buf.getvalue()


def _smooth(height: int = 23, width: int = 37) -> np.ndarray:
    """Gradients: what JPEG keeps well (odd sizes, so chroma subsampling meets a ragged edge)."""
    y, x = np.mgrid[0:height, 0:width]
    return np.stack(
        [x * 255 // (width - 1), y * 255 // (height - 1), (x + y) * 255 // (width + height - 2)], axis=-1
    ).astype(np.uint8)


# --------------------------------------------------------------------------- Image -> frame


@pytest.mark.parametrize("padding", PADDING)
@pytest.mark.parametrize("encoding", list(PIXELS))
def test_every_encoding_decodes_exactly_from_cdr(encoding: str, padding: str) -> None:
    pixels, expected = PIXELS[encoding]
    pad = _pad_bytes(pixels[0].size, padding)
    sent = _image(encoding, pixels, pad)
    msg = _cdr(sent, IMAGE)
    assert (msg.encoding, msg.height, msg.width, msg.step) == (encoding, H, W, pixels[0].size + pad)
    assert bytes(msg.data) == bytes(sent.data)  # padding garbage and all

    out = image_msg_to_array(msg)

    assert out.dtype == np.uint8 and out.shape == expected.shape
    np.testing.assert_array_equal(out, expected)
    assert np.shares_memory(out, msg.data)  # a view of the deserialised buffer, no copy


def test_the_header_survives_the_round_trip() -> None:
    header = _header(sec=1_712_345_678, nanosec=5, frame_id="base_link/cam_left_optical")
    msg = _cdr(_image("bgr8", FRAME[:, :, ::-1], 3, header=header), IMAGE)
    assert (msg.header.stamp.sec, msg.header.stamp.nanosec) == (1_712_345_678, 5)
    assert msg.header.frame_id == "base_link/cam_left_optical"
    np.testing.assert_array_equal(image_msg_to_array(msg), FRAME)


@pytest.mark.parametrize(
    ("encoding", "bytes_per_pixel"), [("16UC1", 2), ("bayer_rggb8", 1), ("yuv422", 2), ("32FC1", 4), ("8UC3", 3)]
)
def test_an_unsupported_encoding_from_cdr_is_an_input_error_naming_it(encoding: str, bytes_per_pixel: int) -> None:
    pixels = RNG.integers(0, 256, (H, W, bytes_per_pixel), dtype=np.uint8)
    msg = _cdr(_image(encoding, pixels), IMAGE)
    with pytest.raises(InputError, match=re.escape(repr(encoding))) as info:
        image_msg_to_array(msg)
    assert "rgb8" in str(info.value)  # and says what is taken


@pytest.mark.parametrize(
    ("encoding", "pad", "keep", "needs"),
    [
        ("rgb8", 0, H * W * 3 - 1, H * W * 3),  # one byte short
        ("mono8", 3, H * (W + 3) - 3, H * (W + 3)),  # the last row's padding missing
        ("bgra8", 0, 0, H * W * 4),  # no data at all
    ],
)
def test_truncated_data_from_cdr_is_an_input_error(encoding: str, pad: int, keep: int, needs: int) -> None:
    sent = _image(encoding, PIXELS[encoding][0], pad)
    sent.data = sent.data[:keep]
    msg = _cdr(sent, IMAGE)
    assert msg.data.size == keep
    with pytest.raises(InputError, match=f"needs {needs} bytes, has {keep}"):
        image_msg_to_array(msg)


@pytest.mark.parametrize(
    "wrap", [lambda b: np.array(list(b)), lambda b: array.array("i", list(b))], ids=["int64-ndarray", "array-i"]
)
def test_data_of_wider_ints_is_read_as_values_not_bytes(wrap: Any) -> None:
    # a stand-in's np.array(list_of_ints) is int64: its buffer is 8 bytes a value, not the pixels
    msg = _cdr(_image("rgb8", FRAME, 3), IMAGE)
    msg.data = wrap(msg.data.tobytes())
    np.testing.assert_array_equal(image_msg_to_array(msg), FRAME)


def test_a_step_narrower_than_a_row_is_an_input_error() -> None:
    sent = _image("rgb8", FRAME)
    sent.step = W * 3 - 1
    with pytest.raises(InputError, match=f"step {W * 3 - 1} is less than"):
        image_msg_to_array(_cdr(sent, IMAGE))


# --------------------------------------------------------------------------- CompressedImage -> frame


@pytest.mark.parametrize("fmt", ["png", "bgr8; png compressed bgr8", ""])
def test_png_decodes_exactly(fmt: str) -> None:
    out = compressed_msg_to_array(_compressed(fmt, _encode(FRAME, "PNG")))
    assert out.dtype == np.uint8 and out.shape == (H, W, 3)
    np.testing.assert_array_equal(out, FRAME)


@pytest.mark.parametrize("fmt", ["jpeg", "rgb8; jpeg compressed bgr8"])
def test_jpeg_decodes_within_its_loss(fmt: str) -> None:
    smooth = _smooth()
    out = compressed_msg_to_array(_compressed(fmt, _encode(smooth, "JPEG", quality=95)))
    assert out.dtype == np.uint8 and out.shape == smooth.shape
    error = np.abs(out.astype(np.int16) - smooth.astype(np.int16))
    assert error.mean() < 3.0, f"mean abs error {error.mean():.2f}"
    assert np.abs(out[..., 0].astype(np.int16) - smooth[..., 2]).mean() > 30  # RGB, not BGR


def test_gray_png_and_jpeg_give_2d_frames() -> None:
    out = compressed_msg_to_array(_compressed("mono8; png compressed mono8", _encode(GRAY, "PNG")))
    assert out.shape == (H, W)
    np.testing.assert_array_equal(out, GRAY)
    smooth = _smooth()[..., 0]
    out = compressed_msg_to_array(_compressed("mono8; jpeg compressed mono8", _encode(smooth, "JPEG", quality=95)))
    assert out.shape == smooth.shape
    assert np.abs(out.astype(np.int16) - smooth).mean() < 3.0


def test_rgba_png_loses_alpha() -> None:
    rgba = np.concatenate([FRAME, ALPHA], axis=2)
    out = compressed_msg_to_array(_compressed("png", _encode(rgba, "PNG")))
    np.testing.assert_array_equal(out, FRAME)


@pytest.mark.parametrize(
    ("fmt", "data"),
    [
        ("jpeg", RNG.integers(0, 256, 300, dtype=np.uint8).tobytes()),  # garbage
        ("jpeg", _encode(_smooth(), "JPEG")[:200]),  # cut off mid-stream
        ("png", b""),
    ],
    ids=["garbage", "truncated-jpeg", "empty"],
)
def test_undecodable_data_is_an_input_error(fmt: str, data: bytes) -> None:
    with pytest.raises(InputError, match=f"compressed image \\({fmt}\\): not decodable"):
        compressed_msg_to_array(_compressed(fmt, data))


@pytest.mark.parametrize("fmt", ["16UC1; compressedDepth", "32FC1; compressedDepth png", "16UC1; png compressed "])
def test_depth_formats_are_input_errors_naming_them(fmt: str) -> None:
    depth = RNG.integers(0, 256, (H, W), dtype=np.uint8)  # decodable, so only the format refuses it
    with pytest.raises(InputError, match=re.escape(repr(fmt))):
        compressed_msg_to_array(_compressed(fmt, _encode(depth, "PNG")))


def test_message_to_array_dispatches_on_the_type_name() -> None:
    raw = _cdr(_image("bgr8", FRAME[:, :, ::-1], 5), IMAGE)
    png = _compressed("png", _encode(FRAME, "PNG"))
    for msgtype in rosmsg.IMAGE_TYPES:
        np.testing.assert_array_equal(message_to_array(raw, msgtype), FRAME)
    for msgtype in rosmsg.COMPRESSED_TYPES:
        np.testing.assert_array_equal(message_to_array(png, msgtype), FRAME)
    with pytest.raises(InputError, match="std_msgs/msg/String is not an image message"):
        message_to_array(TS.types["std_msgs/msg/String"](data="hi"), "std_msgs/msg/String")


# --------------------------------------------------------------------------- mask / overlay -> Image


MASK = RNG.integers(0, 19, (H, W), dtype=np.uint8)


@pytest.mark.parametrize("view", ["contiguous", "flipped", "transposed"])
def test_mask_fields_round_trip_through_cdr(view: str) -> None:
    mask = {"contiguous": MASK, "flipped": MASK[:, ::-1], "transposed": MASK.T}[view]
    height, width = mask.shape
    header = _header(sec=42, nanosec=7, frame_id="camera")
    fields = mask_to_image_fields(mask, data="numpy")
    msg = _cdr(Image(header=header, **fields), IMAGE)
    assert (msg.height, msg.width, msg.encoding, msg.is_bigendian, msg.step) == (height, width, "mono8", 0, width)
    assert msg.data.size == height * width and bytes(msg.data) == np.ascontiguousarray(mask).tobytes()
    np.testing.assert_array_equal(image_msg_to_array(msg), mask)
    assert (msg.header.stamp.sec, msg.header.stamp.nanosec, msg.header.frame_id) == (42, 7, "camera")

    # data="array" (what rclpy's uint8[] takes) carries the same bytes and the same other fields
    as_array = mask_to_image_fields(mask, data="array")
    assert isinstance(as_array["data"], array.array) and as_array["data"].typecode == "B"
    assert bytes(as_array["data"]) == fields["data"].tobytes()
    assert {k: v for k, v in as_array.items() if k != "data"} == {k: v for k, v in fields.items() if k != "data"}
    # and serialised, byte for byte the same message
    from_array = Image(header=header, **{**as_array, "data": np.frombuffer(as_array["data"], np.uint8)})
    assert bytes(TS.serialize_cdr(from_array, IMAGE)) == bytes(TS.serialize_cdr(Image(header=header, **fields), IMAGE))


def test_mask_fields_are_a_copy_not_a_view() -> None:
    mask = MASK.copy()
    fields = mask_to_image_fields(mask, data="numpy")
    mask[:] = 0  # the next frame written into the same buffer
    msg = _cdr(Image(header=_header(), **fields), IMAGE)
    np.testing.assert_array_equal(image_msg_to_array(msg), MASK)


@pytest.mark.parametrize("view", ["contiguous", "flipped"])
def test_overlay_fields_round_trip_through_cdr(view: str) -> None:
    overlay = FRAME if view == "contiguous" else FRAME[:, ::-1]
    fields = rgb_to_image_fields(overlay)
    msg = _cdr(Image(header=_header(frame_id="overlay"), **fields), IMAGE)
    assert (msg.height, msg.width, msg.encoding, msg.is_bigendian, msg.step) == (H, W, "rgb8", 0, W * 3)
    assert bytes(msg.data) == np.ascontiguousarray(overlay).tobytes()
    np.testing.assert_array_equal(image_msg_to_array(msg), overlay)
    assert msg.header.frame_id == "overlay"


def test_overlay_fields_reject_a_non_rgb_array() -> None:
    with pytest.raises(InputError, match="expected shape"):
        rgb_to_image_fields(GRAY)


# --------------------------------------------------------------------------- the ROS 2 node's worker


@pytest.fixture
def node(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """The example node, loaded as tests/test_examples.py does: without ROS 2 or OpenCV."""
    for name in NOT_INSTALLED:
        monkeypatch.setitem(sys.modules, name, None)
    return _load(EXAMPLES / "ros2_segmentation_node.py")


def _segment(frame: np.ndarray) -> np.ndarray:
    return (frame[..., 0] if frame.ndim == 3 else frame) // 64


def test_the_node_uses_the_package_conversions(node: ModuleType) -> None:
    assert node.image_msg_to_array is image_msg_to_array
    assert node.mask_to_image_fields is mask_to_image_fields


def test_node_worker_on_cdr_messages_publishes_masks_with_the_source_header(node: ModuleType) -> None:
    queue, stats = node.LatestQueue(), node.NodeStats()
    published: list[tuple[Any, np.ndarray]] = []
    errors: list[str] = []
    handled = threading.Semaphore(0)

    def publish(msg: Any, mask: np.ndarray) -> None:
        published.append((msg, mask))
        handled.release()

    def on_error(text: str) -> None:
        errors.append(text)
        handled.release()

    sent: list[tuple[Any, np.ndarray]] = []  # (deserialised message, the mask it must give)
    for i, encoding in enumerate(PIXELS):
        pixels, expected = PIXELS[encoding]
        header = _header(sec=1_700_000_000 + i, nanosec=1000 * i + 1, frame_id=f"cam{i}_optical")
        msg = _cdr(_image(encoding, pixels, pad=i, header=header), IMAGE)
        sent.append((msg, _segment(expected)))
    bad = _cdr(_image("yuv422", RNG.integers(0, 256, (H, W, 2), dtype=np.uint8)), IMAGE)

    worker = node.SegmentationWorker(_segment, queue, publish, stats, on_error)
    worker.start()
    try:
        for msg in [sent[0][0], bad, *(m for m, _ in sent[1:])]:  # one at a time: nothing dropped
            queue.put((msg, time.perf_counter()))
            assert handled.acquire(timeout=5.0), "the worker did not handle the message"
    finally:
        worker.stop()

    assert worker.failure is None and queue.dropped == 0
    assert len(errors) == 1 and "'yuv422'" in errors[0]
    assert len(published) == len(sent)
    for (source, expected), (msg, mask) in zip(sent, published, strict=True):
        assert msg is source
        np.testing.assert_array_equal(mask, expected)
        # what SegmentationNode._publish_mask builds, made with the typestore (NumPy data)
        out = _cdr(Image(header=msg.header, **node.mask_to_image_fields(mask, data="numpy")), IMAGE)
        assert (out.encoding, out.height, out.width, out.step) == ("mono8", H, W, W)
        np.testing.assert_array_equal(image_msg_to_array(out), expected)
        assert (out.header.stamp.sec, out.header.stamp.nanosec) == (
            source.header.stamp.sec,
            source.header.stamp.nanosec,
        )
        assert out.header.frame_id == source.header.frame_id
    assert len({m.header.frame_id for m, _ in published}) == len(sent)  # every mask has its own image's header
    latencies, _ = stats.take()
    assert len(latencies) == len(sent) and stats.errors == 1
