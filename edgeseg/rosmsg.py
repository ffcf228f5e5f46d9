"""ROS image messages <-> NumPy, without ROS: what the ROS 2 node and the bag source share.

Messages are read by field name (``height``, ``width``, ``encoding``, ``step``,
``data``; ``format`` and ``data`` for compressed images), so the same functions
take rclpy's messages, the ``rosbags`` typestore's and any stand-in. ``data``
may be bytes, ``array.array('B')`` (rclpy), a uint8 NumPy array (rosbags) or a
list of ints.
"""

from __future__ import annotations

import array
import io
from collections.abc import Callable
from typing import Any, Literal

import numpy as np

from edgeseg.errors import InputError

# encoding -> (channels in msg.data, HxWxC view -> RGB (or gray) view; flips are strides, not copies)
ENCODINGS: dict[str, tuple[int, Callable[[np.ndarray], np.ndarray]]] = {
    "rgb8": (3, lambda a: a),
    "bgr8": (3, lambda a: a[:, :, ::-1]),
    "rgba8": (4, lambda a: a[:, :, :3]),
    "bgra8": (4, lambda a: a[:, :, 2::-1]),
    "mono8": (1, lambda a: a[:, :, 0]),
}
IMAGE_TYPES = ("sensor_msgs/msg/Image", "sensor_msgs/Image")
COMPRESSED_TYPES = ("sensor_msgs/msg/CompressedImage", "sensor_msgs/CompressedImage")


def _bytes_of(data: Any) -> np.ndarray:
    if getattr(data, "itemsize", 1) != 1:  # int64 ndarray, array('i'): frombuffer would read their bytes
        return np.asarray(data, dtype=np.uint8).reshape(-1)
    try:
        return np.frombuffer(data, dtype=np.uint8)  # bytes, array.array('B'), uint8 ndarray: no copy
    except (TypeError, ValueError):  # a plain list of ints (or an ndarray of another dtype)
        return np.asarray(data, dtype=np.uint8).reshape(-1)


def image_msg_to_array(msg: Any) -> np.ndarray:
    """A sensor_msgs/Image as an (H, W, 3) RGB or (H, W) grayscale uint8 array.

    A view of ``msg.data`` (no copy): rows are cut out of ``step`` (which may
    include padding), BGR is flipped to RGB, alpha is left out.

    Raises:
        InputError: the encoding is not one of rgb8, bgr8, rgba8, bgra8, mono8
            (naming it), or the sizes do not fit the data.
    """
    encoding = str(msg.encoding)
    if encoding.lower() not in ENCODINGS:
        raise InputError(
            f"image encoding {encoding!r} is not supported; expected one of {', '.join(ENCODINGS)}"
        )
    channels, to_rgb = ENCODINGS[encoding.lower()]
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    row = width * channels
    if height <= 0 or width <= 0:
        raise InputError(f"{encoding} image is empty ({width}x{height})")
    if step < row:
        raise InputError(f"{encoding} image: step {step} is less than width * channels = {row}")
    data = _bytes_of(msg.data)
    if data.size < height * step:
        raise InputError(
            f"{encoding} image {width}x{height} (step {step}) needs {height * step} bytes, has {data.size}"
        )
    rows = data[: height * step].reshape(height, step)[:, :row]
    return to_rgb(rows.reshape(height, width, channels))


def compressed_msg_to_array(msg: Any) -> np.ndarray:
    """A sensor_msgs/CompressedImage (JPEG, PNG, ... as Pillow decodes) as RGB or grayscale uint8.

    ``format`` is read for what it says of the pixels (``"rgb8; jpeg compressed bgr8"``
    from image_transport, or just ``"jpeg"``); the codec is recognised from the data.

    Raises:
        InputError: the data is not an image Pillow can decode, or it is a depth
            format (``16UC1``, ``32FC1``, compressedDepth), naming the format.
    """
    from PIL import Image, UnidentifiedImageError

    fmt = str(getattr(msg, "format", ""))
    if "compresseddepth" in fmt.lower().replace(" ", "") or fmt.split(";")[0].strip().upper() in (
        "16UC1",
        "32FC1",
    ):
        raise InputError(f"compressed image format {fmt!r} is depth, not a colour or gray image")
    data = _bytes_of(msg.data)
    try:
        with Image.open(io.BytesIO(data.tobytes())) as img:
            img.load()
            if img.mode in ("L", "1"):
                return np.asarray(img.convert("L"), dtype=np.uint8)
            return np.asarray(img.convert("RGB"), dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as err:
        raise InputError(f"compressed image ({fmt or 'no format'}): not decodable ({err})") from err


def message_to_array(msg: Any, msgtype: str) -> np.ndarray:
    """An Image or CompressedImage message (by its type name) as a frame.

    Raises:
        InputError: another message type, or an image that cannot be read.
    """
    if msgtype in IMAGE_TYPES:
        return image_msg_to_array(msg)
    if msgtype in COMPRESSED_TYPES:
        return compressed_msg_to_array(msg)
    raise InputError(f"{msgtype} is not an image message (sensor_msgs/Image or CompressedImage)")


def mask_to_image_fields(
    mask: np.ndarray, *, data: Literal["array", "numpy"] = "array"
) -> dict[str, Any]:
    """The sensor_msgs/Image fields of an (H, W) uint8 mask: ``Image(header=..., **fields)``.

    Args:
        mask: class ids.
        data: ``array`` gives ``array.array('B')``, how rclpy stores uint8[] (assigning
            one skips the per-byte type check bytes or a list would get: tens of ms for a
            VGA mask); ``numpy`` gives a uint8 array, what the rosbags typestore takes.
    """
    if mask.ndim != 2:
        raise InputError(f"mask: expected shape (H, W), got {mask.shape}")
    height, width = mask.shape
    flat = np.ascontiguousarray(mask, dtype=np.uint8).reshape(-1)
    payload: Any = array.array("B", flat.tobytes()) if data == "array" else flat.copy()
    return {
        "height": height,
        "width": width,
        "encoding": "mono8",
        "is_bigendian": 0,
        "step": width,
        "data": payload,
    }


def rgb_to_image_fields(image: np.ndarray) -> dict[str, Any]:
    """The sensor_msgs/Image fields (rgb8, NumPy data) of an (H, W, 3) uint8 image."""
    if image.ndim != 3 or image.shape[2] != 3:
        raise InputError(f"image: expected shape (H, W, 3), got {image.shape}")
    height, width = image.shape[:2]
    return {
        "height": height,
        "width": width,
        "encoding": "rgb8",
        "is_bigendian": 0,
        "step": width * 3,
        "data": np.ascontiguousarray(image, dtype=np.uint8).reshape(-1).copy(),
    }
