"""Calibration sets for INT8 quantization: a user's frames, prepared as the runtime prepares them.

A calibration set is read from one of three kinds of source:

* a folder of images (searched recursively; the suffixes of
  :data:`edgeseg.runtime.sources.IMAGE_SUFFIXES`),
* a video file (:data:`edgeseg.runtime.sources.VIDEO_SUFFIXES`, read with OpenCV),
* an ``.npz`` file whose arrays are frames: one array holding a stack of frames
  ``(N, H, W, C)`` / ``(N, H, W)``, or several arrays holding one frame each
  ``(H, W, C)`` / ``(H, W)``. Every array is used, in key-sorted order.

When the source has more candidate frames than asked for, the frames used are
spread over the whole source (one random frame per equal stratum of the index
range, drawn from ``np.random.default_rng(seed)``), so a long video is not
represented by its first seconds only, and the same seed always gives the same
frames.

Every frame goes through :func:`edgeseg.runtime.image.prepare`, so calibration
sees exactly the bytes the runtime feeds the graph's ``image`` input. Frames that
cannot be read or that ``prepare`` rejects are skipped, logged and reported in
:attr:`CalibrationSet.skipped`.
"""

from __future__ import annotations

import logging
import os
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from edgeseg.bundle import InputSpec
from edgeseg.errors import ConfigError, InputError
from edgeseg.runtime.image import check_frame, model_size, prepare, resize_image, to_channels
from edgeseg.runtime.sources import (
    IMAGE_SUFFIXES,
    VIDEO_SUFFIXES,
    import_cv2,
    list_images,
    read_image,
)

log = logging.getLogger(__name__)

KINDS = ("folder", "video", "npz")
NPZ_SUFFIX = ".npz"
_SUMMARY_NAMES = 20  # skipped names listed in summary()
_ERROR_NAMES = 10  # skipped names listed in the too-few error

ProgressFn = Callable[[int, int], None]


@dataclass(frozen=True, eq=False)
class CalibrationSet:
    """Frames for INT8 calibration, exactly as the graph's ``image`` input takes them.

    Compared by identity (``eq=False``): the fields hold an array and lists.

    Attributes:
        images: (N, H, W, C) uint8; ``images[i]`` is the graph's ``image`` input for
            one frame with the batch dimension dropped.
        source: the path given, as str.
        kind: ``"folder"``, ``"video"`` or ``"npz"``.
        available: how many candidate frames the source had (image files in the
            folder, frames in the video, frames in the npz arrays).
        picked: names of the frames used, in source order: relative file paths
            (folder), ``"frame_000123"`` (video) or ``"frames[17]"`` / ``"key"`` (npz).
        skipped: (name, reason) of every picked candidate that could not be read
            or used; these are not in ``images``.
        seed: the seed of the sampling.
    """

    images: np.ndarray
    source: str
    kind: str
    available: int
    picked: list[str]
    skipped: list[tuple[str, str]]
    seed: int

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def summary(self) -> dict[str, Any]:
        """A JSON-able description (for manifests and logs).

        Returns:
            source, kind, available, used (frames in the set), skipped (count),
            skipped_names (the first 20), seed, image_size ([h, w]) and channels.
        """
        shape = self.images.shape
        return {
            "source": self.source,
            "kind": self.kind,
            "available": int(self.available),
            "used": len(self),
            "skipped": len(self.skipped),
            "skipped_names": [name for name, _ in self.skipped[:_SUMMARY_NAMES]],
            "seed": int(self.seed),
            "image_size": [int(shape[1]), int(shape[2])] if len(shape) == 4 else None,
            "channels": int(shape[3]) if len(shape) == 4 else None,
        }


def load_calibration_set(
    source: str | os.PathLike[str],
    spec: InputSpec,
    *,
    size: int = 200,
    seed: int = 0,
    min_images: int = 8,
    progress: ProgressFn | None = None,
) -> CalibrationSet:
    """Reads a calibration set from a folder, a video or an ``.npz`` file.

    Frames are sampled deterministically: with more than ``size`` candidates, the
    index range ``[0, available)`` is split into ``size`` equal strata and one index
    is drawn from each with ``np.random.default_rng(seed)``; otherwise every
    candidate is used. Each frame is prepared with
    :func:`edgeseg.runtime.image.prepare` as it is read (video frames as BGR), so
    only the model-sized frames are held in memory.

    For a ``dynamic`` spec, ``prepare`` resizes a frame to the allowed size nearest
    to its own, so frames of different sizes would come out in different shapes.
    When the picked frames do not all map to one size, every frame is instead
    resized to the spec's nominal ``spec.size`` (after the same channel
    conversion), so that the set stacks into one array.

    Args:
        source: a folder of images, a video file or an ``.npz`` file.
        spec: the graph's ``image`` input.
        size: how many frames to use (at most).
        seed: seed of the sampling; the same seed gives the same frames.
        min_images: fewer usable frames than ``min(min_images, size)`` is an error.
        progress: called as ``progress(done, total)`` after each picked frame,
            ``total`` being the number of frames picked.

    Returns:
        The calibration set, with what was picked and skipped.

    Raises:
        ConfigError: the source is missing, of an unknown kind or cannot be opened;
            ``size``, ``min_images`` or ``seed`` are out of range; or too few picked
            frames are usable (the message names the source, the counts and the
            skipped frames).
        MissingDependencyError: a video source without OpenCV installed.
    """
    _check_int("size", size, minimum=1)
    _check_int("min_images", min_images, minimum=1)
    _check_int("seed", seed, minimum=0)
    path = Path(source)
    kind = _kind(path)
    reader = _READERS[kind]
    frames = reader(path, spec, size, seed)
    total = len(frames.picked)

    collector = _Collector(spec, total, fixed=frames.fixed)
    skipped: list[tuple[str, str]] = []
    done = 0
    for name, frame, bgr in frames.items:
        try:
            if isinstance(frame, _Skip):
                raise InputError(frame.reason)
            collector.add(frame, bgr=bgr)
        except InputError as err:
            reason = str(err)
            log.warning("calibration set %s: skipping %s: %s", path, name, reason)
            skipped.append((name, reason))
        done += 1
        if progress is not None:
            progress(done, total)

    usable = collector.count
    needed = min(min_images, size)
    if usable < needed:
        raise ConfigError(_too_few_message(path, kind, frames.available, total, skipped, needed))
    return CalibrationSet(
        images=collector.result(),
        source=str(source),
        kind=kind,
        available=frames.available,
        picked=list(frames.picked),
        skipped=skipped,
        seed=seed,
    )


def stratified_picks(available: int, size: int, seed: int) -> np.ndarray:
    """Sorted indices into ``range(available)``: all of them, or ``size`` spread evenly.

    With ``available > size``, ``[0, available)`` is split into ``size`` strata of
    (nearly) equal length and one index is drawn uniformly from each, so the first
    pick lies in the first stratum and the last in the last.

    Args:
        available: number of candidates.
        size: how many to pick.
        seed: seed of ``np.random.default_rng``.

    Returns:
        A sorted int64 array of distinct indices.
    """
    if available <= size:
        return np.arange(available, dtype=np.int64)
    edges = (np.arange(size + 1, dtype=np.int64) * available) // size  # strata are non-empty
    rng = np.random.default_rng(seed)
    return rng.integers(edges[:-1], edges[1:]).astype(np.int64)


# --------------------------------------------------------------------------- internals


class _Skip:
    """A picked candidate that is known to be unusable before preparation."""

    def __init__(self, reason: str) -> None:
        self.reason = reason


# (name, frame or _Skip, frame is BGR)
_Item = tuple[str, "np.ndarray | _Skip", bool]


@dataclass
class _Frames:
    """What a reader found: candidates, picks, and a lazy stream of the picked frames."""

    available: int
    picked: list[str]
    items: Iterator[_Item]
    fixed: bool  # resize every frame to spec.size (dynamic spec, mixed sizes)


class _Collector:
    """Prepares frames one by one into a preallocated (total, h, w, C) array."""

    def __init__(self, spec: InputSpec, total: int, *, fixed: bool) -> None:
        self.spec = spec
        self.total = total
        self.fixed = fixed
        self.count = 0
        self._out: np.ndarray | None = None

    def add(self, frame: np.ndarray, *, bgr: bool) -> None:
        if self.fixed:
            checked = check_frame(frame)
            image = to_channels(checked, self.spec.channels, bgr=bgr)
            image = resize_image(image, self.spec.size)
        else:
            image = prepare(frame, self.spec, bgr=bgr)[0]
        if self._out is None:
            self._out = np.empty((self.total, *image.shape), dtype=np.uint8)
        elif image.shape != self._out.shape[1:]:
            # Only for a dynamic spec whose frames' sizes could not all be known up front
            # (they are for folders, videos and npz); keeps the set stackable.
            log.debug("calibration frame of shape %s resized to %s", image.shape, self._out.shape)
            image = resize_image(image, (self._out.shape[1], self._out.shape[2]))
        self._out[self.count] = image
        self.count += 1

    def result(self) -> np.ndarray:
        if self._out is None:  # pragma: no cover - too few frames is an error before this
            h, w = self.spec.size
            return np.empty((0, h, w, self.spec.channels), dtype=np.uint8)
        if self.count < self.total:
            return self._out[: self.count].copy()  # release the unused tail
        return self._out


def _check_int(name: str, value: object, *, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ConfigError(f"calibration {name} must be an integer >= {minimum}, got {value!r}")


def _accepted() -> str:
    return (
        f"a folder of images ({', '.join(sorted(IMAGE_SUFFIXES))}), "
        f"a video ({', '.join(sorted(VIDEO_SUFFIXES))}) or an {NPZ_SUFFIX} file of frames"
    )


def _kind(path: Path) -> str:
    """``"folder"``, ``"video"`` or ``"npz"``; ConfigError for anything else.

    Mirrors :func:`edgeseg.runtime.sources.source_kind` (same suffix tables), but a
    single image is not a calibration set and ``.npz`` files are accepted.
    """
    if path.is_dir():
        return "folder"
    if not path.exists():
        raise ConfigError(f"calibration set {path} does not exist; expected {_accepted()}")
    suffix = path.suffix.lower()
    if suffix == NPZ_SUFFIX:
        return "npz"
    if suffix in VIDEO_SUFFIXES:
        return "video"
    what = "a single image" if suffix in IMAGE_SUFFIXES else f"a {suffix or 'suffix-less'} file"
    raise ConfigError(f"calibration set {path} is {what}; expected {_accepted()}")


def _too_few_message(
    path: Path,
    kind: str,
    available: int,
    picked: int,
    skipped: list[tuple[str, str]],
    needed: int,
) -> str:
    noun = "images" if kind == "folder" else "frames"
    usable = picked - len(skipped)
    message = f"calibration set {path}: {usable} usable {noun} of {picked} picked"
    if available > picked:
        message += f" from {available}"
    if skipped:
        names = ", ".join(name for name, _ in skipped[:_ERROR_NAMES])
        if len(skipped) > _ERROR_NAMES:
            names += f", ... ({len(skipped) - _ERROR_NAMES} more)"
        message += f" ({len(skipped)} unreadable: {names})"
    return message + f"; at least {needed} are needed"


def _sizes_differ(spec: InputSpec, sizes: list[tuple[int, int] | None]) -> bool:
    """A dynamic spec maps these frame sizes (None: unknown) to more than one model size."""
    if not spec.dynamic:
        return False
    return len({model_size(spec, s) for s in sizes if s is not None}) > 1


# ---- folder


def _read_folder(path: Path, spec: InputSpec, size: int, seed: int) -> _Frames:
    files = list_images(path, recursive=True)
    if not files:
        raise ConfigError(
            f"calibration set {path}: the folder holds no images "
            f"(searched recursively for {', '.join(sorted(IMAGE_SUFFIXES))})"
        )
    picks = [files[i] for i in stratified_picks(len(files), size, seed)]
    names = [p.relative_to(path).as_posix() for p in picks]
    fixed = spec.dynamic and _sizes_differ(spec, [_image_size(p) for p in picks])

    def items() -> Iterator[_Item]:
        for name, file in zip(names, picks, strict=True):
            try:
                frame: np.ndarray | _Skip = read_image(file)
            except InputError as err:
                frame = _Skip(str(err))
            yield name, frame, False

    return _Frames(available=len(files), picked=names, items=items(), fixed=fixed)


def _image_size(path: Path) -> tuple[int, int] | None:
    """(height, width) from the image's header, without decoding it; None if unreadable."""
    try:
        with Image.open(path) as img:
            width, height = img.size
    except (OSError, ValueError, Image.DecompressionBombError):
        return None
    return height, width


# ---- video


def _read_video(path: Path, spec: InputSpec, size: int, seed: int) -> _Frames:
    cv2 = import_cv2()
    cap = cv2.VideoCapture(str(path))
    try:
        if not cap.isOpened():
            raise ConfigError(f"calibration set {path}: OpenCV cannot open this video")
        reported = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        if reported <= 0:  # unknown: count by decoding (frames are not kept)
            reported = 0
            while cap.grab():
                reported += 1
    finally:
        cap.release()
    if reported <= 0:
        raise ConfigError(f"calibration set {path}: no frame of the video could be read")
    indices = [int(i) for i in stratified_picks(reported, size, seed)]
    names = [f"frame_{i:06d}" for i in indices]

    def items() -> Iterator[_Item]:
        # Sequential decoding (grab every frame, retrieve the picked ones) is reliable
        # across codecs, unlike seeking with CAP_PROP_POS_FRAMES.
        cap = cv2.VideoCapture(str(path))
        try:
            position = 0  # index of the next frame grab() returns
            for k, (index, name) in enumerate(zip(indices, names, strict=True)):
                ended = False
                while position <= index:
                    if not cap.grab():
                        ended = True
                        break
                    position += 1
                if ended:
                    reason = f"the video ended after {position} frames (it reports {reported})"
                    for rest in names[k:]:
                        yield rest, _Skip(reason), True
                    return
                ok, frame = cap.retrieve()
                if not ok or frame is None:
                    yield name, _Skip(f"OpenCV could not decode frame {index}"), True
                else:
                    yield name, frame, True
        finally:
            cap.release()

    return _Frames(available=reported, picked=names, items=items(), fixed=False)


# ---- npz


def _read_npz(path: Path, spec: InputSpec, size: int, seed: int) -> _Frames:
    try:
        data = np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as err:
        raise ConfigError(f"calibration set {path}: not a readable .npz file ({err})") from err
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise ConfigError(f"calibration set {path}: not an .npz archive of arrays")
    try:
        shapes = {key: _npz_shape(data, key) for key in sorted(data.files)}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as err:
        data.close()
        raise ConfigError(f"calibration set {path}: not a readable .npz file ({err})") from err
    # candidates: (key, index within a stack or None for a single-frame array)
    single = len(shapes) == 1
    candidates: list[tuple[str, int | None]] = []
    for key, shape in shapes.items():
        if _is_stack(shape, single=single):
            candidates += [(key, i) for i in range(shape[0])]
        else:
            candidates.append((key, None))
    if not candidates:
        data.close()
        raise ConfigError(f"calibration set {path}: the .npz file holds no frames")
    picks = [candidates[i] for i in stratified_picks(len(candidates), size, seed)]
    names = [key if i is None else f"{key}[{i}]" for key, i in picks]
    frame_sizes = [_npz_frame_size(shapes[key], stacked=i is not None) for key, i in picks]
    fixed = spec.dynamic and _sizes_differ(spec, frame_sizes)

    def items() -> Iterator[_Item]:
        # One array in memory at a time; picks are in key order.
        try:
            current: str | None = None
            array: np.ndarray | _Skip = _Skip("")
            for name, (key, index) in zip(names, picks, strict=True):
                if key != current:
                    current = key
                    array = _Skip("")  # drop the previous array before loading
                    try:
                        array = data[key]
                    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as err:
                        array = _Skip(f"array {key!r} cannot be read ({err})")
                if isinstance(array, _Skip):
                    yield name, array, False
                elif index is None:
                    if array.ndim not in (2, 3):
                        yield name, _Skip(_bad_shape(key, array.shape)), False
                    else:
                        yield name, array, False
                else:
                    yield name, np.asarray(array[index]), False
        finally:
            data.close()

    return _Frames(available=len(candidates), picked=names, items=items(), fixed=fixed)


def _npz_shape(data: np.lib.npyio.NpzFile, key: str) -> tuple[int, ...]:
    """An array's shape from its .npy header, without loading it (loads it as a fallback)."""
    archive = data.zip
    if archive is None:  # closed
        return tuple(int(s) for s in data[key].shape)
    member = key + ".npy" if key + ".npy" in archive.namelist() else key
    try:
        with archive.open(member) as fp:
            version = np.lib.format.read_magic(fp)
            if version == (1, 0):
                shape, _, _ = np.lib.format.read_array_header_1_0(fp)
            else:
                shape, _, _ = np.lib.format.read_array_header_2_0(fp)
        return tuple(int(s) for s in shape)
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError):
        return tuple(int(s) for s in data[key].shape)


def _is_stack(shape: tuple[int, ...], *, single: bool) -> bool:
    """Whether an array of this shape is a stack of frames (N, H, W, C) / (N, H, W).

    4-D arrays are stacks. A 3-D array is a single (H, W, C) frame when its last
    axis is 1, 3 or 4, and otherwise a stack of (H, W) grayscale frames; the
    latter reading is only taken when it is the npz file's only array.
    """
    if len(shape) == 4:
        return True
    return single and len(shape) == 3 and shape[-1] not in (1, 3, 4)


def _npz_frame_size(shape: tuple[int, ...], *, stacked: bool) -> tuple[int, int] | None:
    frame = shape[1:] if stacked else shape
    return (frame[0], frame[1]) if len(frame) in (2, 3) else None


def _bad_shape(key: str, shape: tuple[int, ...]) -> str:
    return (
        f"array {key!r} of shape {shape} is not a frame; expected (H, W), (H, W, C), "
        f"or a stack (N, H, W, C)"
    )


_READERS: dict[str, Callable[[Path, InputSpec, int, int], _Frames]] = {
    "folder": _read_folder,
    "video": _read_video,
    "npz": _read_npz,
}
