"""Frame checks and conversions for the runtime (NumPy and Pillow only).

The graph does the arithmetic (cast, normalisation, layout); this module only
gets a frame into the graph's ``image`` shape: the right channel count and the
right size, as uint8 bytes.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from edgeseg.bundle import InputSpec
from edgeseg.errors import InputError

# ITU-R BT.601 luma, what Pillow's "L" conversion uses.
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def check_frame(frame: object, *, what: str = "frame") -> np.ndarray:
    """Validates a frame and returns it as an (H, W, C) uint8 array.

    Accepts HxW (grayscale), HxWx1, HxWx3 (RGB) and HxWx4 (RGBA) uint8 arrays.
    An ndarray subclass (``np.matrix``, a masked array, a memmap) is viewed as a
    plain ndarray first: subclasses change what indexing and reshaping return
    (``np.matrix`` refuses a third axis, and NumPy can corrupt memory while it
    refuses), and nothing below expects that.

    Raises:
        InputError: naming the frame and what was expected.
    """
    if not isinstance(frame, np.ndarray):
        raise InputError(
            f"{what}: expected a numpy uint8 array of shape (H, W, 3), got {type(frame).__name__}"
        )
    if type(frame) is not np.ndarray:
        frame = np.asarray(frame)  # a view of the same memory, no copy
    if frame.dtype != np.uint8:
        hint = " (scale floats in 0..1 with (x * 255).round().astype(np.uint8))" if frame.dtype.kind == "f" else ""
        raise InputError(f"{what}: expected dtype uint8, got {frame.dtype}{hint}")
    if frame.ndim == 2:
        frame = frame[:, :, None]
    if frame.ndim != 3:
        raise InputError(
            f"{what}: expected shape (H, W), (H, W, 1), (H, W, 3) or (H, W, 4), got {frame.shape}"
        )
    if frame.shape[0] == 0 or frame.shape[1] == 0:
        raise InputError(f"{what}: frame is empty (shape {frame.shape})")
    if frame.shape[2] not in (1, 3, 4):
        raise InputError(
            f"{what}: expected 1, 3 or 4 channels in the last axis (HWC), got shape {frame.shape}"
        )
    return frame


def to_channels(frame: np.ndarray, channels: int, *, bgr: bool = False) -> np.ndarray:
    """Converts a checked (H, W, C) frame to ``channels`` (1 or 3) in RGB order.

    Args:
        frame: output of :func:`check_frame`.
        channels: what the model takes.
        bgr: the frame's colour order is BGR(A) (OpenCV); it is flipped to RGB.
    """
    c = frame.shape[2]
    if c == 4:
        frame = frame[:, :, :3]
        c = 3
    if c == 3 and bgr:
        frame = frame[:, :, ::-1]
    if channels == 3:
        if c == 1:
            return np.repeat(frame, 3, axis=2)
        return frame
    if channels == 1:
        if c == 1:
            return frame
        luma = frame.astype(np.float32) @ _LUMA
        return np.clip(np.rint(luma), 0, 255).astype(np.uint8)[:, :, None]
    raise InputError(f"models with {channels} input channels are not supported (1 or 3)")


def resize_image(frame: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of an (H, W, C) uint8 frame to ``size`` = (height, width)."""
    height, width = size
    if frame.shape[0] == height and frame.shape[1] == width:
        return frame
    squeeze = frame.shape[2] == 1
    image = Image.fromarray(frame[:, :, 0] if squeeze else np.ascontiguousarray(frame))
    resized = np.array(image.resize((width, height), Image.Resampling.BILINEAR))  # writable
    return resized[:, :, None] if squeeze else resized


class NearestResizer:
    """Nearest-neighbour resize of label maps, with index tables cached per shape.

    Masks must not be interpolated (class ids are not ordinal); the tables
    make each call a single gather instead of recomputing coordinates.
    """

    def __init__(self) -> None:
        self._cache: dict[tuple[int, int, int, int], tuple[np.ndarray, np.ndarray]] = {}

    def __call__(self, mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
        src_h, src_w = mask.shape[-2:]
        dst_h, dst_w = size
        if (src_h, src_w) == (dst_h, dst_w):
            return mask
        key = (src_h, src_w, dst_h, dst_w)
        tables = self._cache.get(key)
        if tables is None:
            if len(self._cache) > 16:
                self._cache.clear()
            # pixel-centre sampling, as Pillow/OpenCV's nearest does
            rows = np.minimum(((np.arange(dst_h) + 0.5) * src_h / dst_h).astype(np.intp), src_h - 1)
            cols = np.minimum(((np.arange(dst_w) + 0.5) * src_w / dst_w).astype(np.intp), src_w - 1)
            tables = (rows[:, None], cols[None, :])
            self._cache[key] = tables
        return mask[..., tables[0], tables[1]]


def model_size(spec: InputSpec, frame_size: tuple[int, int]) -> tuple[int, int]:
    """The size a frame of ``frame_size`` is resized to before inference."""
    if spec.dynamic:
        return round_to_multiple(frame_size, max(1, spec.multiple_of))
    return spec.size


def prepare(frame: object, spec: InputSpec, *, bgr: bool = False) -> np.ndarray:
    """Checks a frame and returns the graph's (1, h, w, C) uint8 ``image`` input."""
    checked = check_frame(frame)
    image = to_channels(checked, spec.channels, bgr=bgr)
    image = resize_image(image, model_size(spec, (checked.shape[0], checked.shape[1])))
    return np.ascontiguousarray(image)[None]


def round_to_multiple(size: tuple[int, int], multiple: int) -> tuple[int, int]:
    """Rounds each side to the nearest multiple (at least one multiple)."""
    return tuple(max(multiple, int(round(s / multiple)) * multiple) for s in size)  # type: ignore[return-value]
