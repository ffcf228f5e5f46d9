"""Frame sources: an image file, a folder of images, a video file.

Each source yields :class:`Frame` items in order. A frame that cannot be
decoded is yielded with its ``error`` set instead of stopping the source, so
the caller can report it and go on.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import numpy as np
from PIL import Image, UnidentifiedImageError

from edgeseg.errors import InputError, MissingDependencyError, SourceError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".ppm", ".pgm", ".webp"})
VIDEO_SUFFIXES = frozenset({".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v"})


@dataclass
class Frame:
    """One item of a source.

    Attributes:
        index: position in the source, from 0.
        name: file stem (images) or ``frame_000042`` (videos), for output names.
        image: (H, W, 3) RGB or (H, W) grayscale uint8, or None if ``error``.
        error: why the frame could not be read, or None.
    """

    index: int
    name: str
    image: np.ndarray | None
    error: str | None = None


def read_image(path: str | os.PathLike[str]) -> np.ndarray:
    """Reads an image file as RGB (H, W, 3) or grayscale (H, W) uint8.

    Raises:
        InputError: naming the file when it is missing or not a readable image.
    """
    path = Path(path)
    try:
        with Image.open(path) as img:
            img.load()
            if img.mode in ("L", "1", "I;16", "I", "F"):
                return np.asarray(img if img.mode == "L" else img.convert("L"), dtype=np.uint8)
            return np.asarray(img.convert("RGB"), dtype=np.uint8)
    except FileNotFoundError as err:
        raise InputError(f"{path}: no such image file") from err
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise InputError(f"{path}: not a readable image ({err})") from err


def list_images(folder: str | os.PathLike[str], *, recursive: bool = False) -> list[Path]:
    """Image files in a folder, sorted by name."""
    root = Path(folder)
    pattern = root.rglob("*") if recursive else root.iterdir()
    return sorted(p for p in pattern if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def source_kind(source: str | os.PathLike[str]) -> str:
    """``"image"``, ``"folder"`` or ``"video"``; SourceError for anything else."""
    path = Path(source)
    if path.is_dir():
        return "folder"
    if not path.exists():
        raise SourceError(f"source {path} does not exist")
    suffix = path.suffix.lower()
    if suffix in IMAGE_SUFFIXES:
        return "image"
    if suffix in VIDEO_SUFFIXES:
        return "video"
    raise SourceError(
        f"source {path}: unknown file type {suffix!r}; images: {', '.join(sorted(IMAGE_SUFFIXES))}; "
        f"videos: {', '.join(sorted(VIDEO_SUFFIXES))}"
    )


def iter_frames(source: str | os.PathLike[str]) -> Iterator[Frame]:
    """Yields the frames of an image file, an image folder or a video file.

    Raises:
        SourceError: the source does not exist, has no images, or cannot be opened.
    """
    kind = source_kind(source)
    path = Path(source)
    if kind == "image":
        yield _image_frame(0, path)
    elif kind == "folder":
        files = list_images(path)
        if not files:
            raise SourceError(
                f"source folder {path} has no images ({', '.join(sorted(IMAGE_SUFFIXES))})"
            )
        for index, file in enumerate(files):
            yield _image_frame(index, file)
    else:
        yield from _video_frames(path)


def count_frames(source: str | os.PathLike[str]) -> int | None:
    """Number of frames a source will yield, when known up front."""
    kind = source_kind(source)
    if kind == "image":
        return 1
    if kind == "folder":
        return len(list_images(source))
    cv2 = import_cv2()
    cap = cv2.VideoCapture(str(source))
    try:
        n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    finally:
        cap.release()
    return n if n > 0 else None


def _image_frame(index: int, file: Path) -> Frame:
    try:
        return Frame(index, file.stem, read_image(file))
    except InputError as err:
        return Frame(index, file.stem, None, str(err))


def import_cv2() -> ModuleType:
    """Imports OpenCV or raises an error naming the extra that installs it."""
    try:
        import cv2
    except ImportError as err:
        raise MissingDependencyError(
            "video files need OpenCV: pip install 'edgeseg[video]' (opencv-python-headless)"
        ) from err
    return cv2


def _video_frames(path: Path) -> Iterator[Frame]:
    cv2 = import_cv2()
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        cap.release()
        raise SourceError(f"source {path}: OpenCV cannot open this video")
    try:
        index = 0
        while True:
            ok, bgr = cap.read()
            if not ok:
                break
            yield Frame(index, f"frame_{index:06d}", np.ascontiguousarray(bgr[:, :, ::-1]))
            index += 1
    finally:
        cap.release()
    if index == 0:
        raise SourceError(f"source {path}: the video has no readable frames")
