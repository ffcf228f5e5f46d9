"""Reading frames from files: images, folders of images, videos (OpenCV).

The streaming sources built on these (cameras, pipelines, iterables) live in
:mod:`edgeseg.runtime.stream`.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from types import ModuleType

import numpy as np
from PIL import Image, UnidentifiedImageError

from edgeseg.errors import InputError, MissingDependencyError, SourceError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".ppm", ".pgm", ".webp"})
VIDEO_SUFFIXES = frozenset({".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v"})


# 16-bit grayscale as Pillow opens it (PNG, TIFF); 16-bit colour opens as 8-bit "RGB"/"RGBA"
_GRAY16_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})


def read_image(path: str | os.PathLike[str]) -> np.ndarray:
    """Reads an image file as RGB (H, W, 3) or grayscale (H, W) uint8.

    16-bit images are scaled to 8 bits by their high byte (``>> 8``), the
    same rule Pillow applies to 16-bit colour, so a 16-bit gray image and its
    RGB copy read alike; nothing saturates at 255.

    Raises:
        InputError: naming the file when it is missing, not a readable image,
            or too large to decode safely (Pillow's decompression-bomb guard).
    """
    path = Path(path)
    try:
        with Image.open(path) as img:
            img.load()
            if img.mode in _GRAY16_MODES:
                return (np.asarray(img).astype(np.uint16) >> 8).astype(np.uint8)
            if img.mode in ("L", "1", "I", "F"):
                return np.asarray(img if img.mode == "L" else img.convert("L"), dtype=np.uint8)
            return np.asarray(img.convert("RGB"), dtype=np.uint8)
    except FileNotFoundError as err:
        raise InputError(f"{path}: no such image file") from err
    except Image.DecompressionBombError as err:
        raise InputError(f"{path}: image too large to decode safely ({err})") from err
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise InputError(f"{path}: not a readable image ({err})") from err
    except Exception as err:  # noqa: BLE001 - Pillow's decoders raise untyped errors on malformed files
        raise InputError(f"{path}: not a readable image ({type(err).__name__}: {err})") from err


def list_images(folder: str | os.PathLike[str], *, recursive: bool = False) -> list[Path]:
    """Image files in a folder, sorted by name."""
    root = Path(folder)
    pattern = root.rglob("*") if recursive else root.iterdir()
    return sorted(p for p in pattern if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def source_kind(source: str | os.PathLike[str]) -> str:
    """``"image"``, ``"folder"``, ``"video"`` or ``"bag"``; SourceError for anything else."""
    from edgeseg.runtime.bags import BAG_SUFFIXES, is_bag

    path = Path(source)
    if path.is_dir():
        return "bag" if is_bag(path) else "folder"
    if not path.exists():
        raise SourceError(f"source {path} does not exist")
    suffix = path.suffix.lower()
    if suffix in BAG_SUFFIXES:
        return "bag"
    if suffix in IMAGE_SUFFIXES:
        return "image"
    if suffix in VIDEO_SUFFIXES:
        return "video"
    raise SourceError(
        f"source {path}: unknown file type {suffix!r}; images: {', '.join(sorted(IMAGE_SUFFIXES))}; "
        f"videos: {', '.join(sorted(VIDEO_SUFFIXES))}; bags: {', '.join(sorted(BAG_SUFFIXES))} "
        "or a rosbag2 folder"
    )


def count_frames(source: str | os.PathLike[str], *, topic: str | None = None) -> int | None:
    """Number of frames a source will yield, when known up front (a bag: its topic's message count)."""
    kind = source_kind(source)
    if kind == "image":
        return 1
    if kind == "folder":
        return len(list_images(source))
    if kind == "bag":
        from edgeseg.runtime.bags import BagSource

        bag = BagSource(source, topic)
        try:
            return bag.count
        finally:
            bag.close()
    cv2 = import_cv2()
    cap = cv2.VideoCapture(str(source))
    try:
        n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    finally:
        cap.release()
    return n if n > 0 else None


def import_cv2() -> ModuleType:
    """Imports OpenCV or raises an error naming the extra that installs it."""
    try:
        import cv2
    except ImportError as err:
        raise MissingDependencyError(
            "video files need OpenCV: pip install 'edgeseg[video]' (opencv-python-headless)"
        ) from err
    return cv2
