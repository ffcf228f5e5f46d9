"""Frames of a source, picked by one rule and prepared exactly as the runtime prepares them.

The one reader behind build-time parity samples (``converters.samples``),
evaluation sets (``converters.precision``), calibration sets
(``calibration.sets``) and ``edgeseg parity`` (:mod:`edgeseg.parity`).

A source (:func:`frame_source`) is listed first, without decoding a frame:

* a folder of images, searched recursively (the suffixes of
  :data:`edgeseg.runtime.sources.IMAGE_SUFFIXES`); a frame is named by its
  path relative to the folder (``"a/b/x.png"``);
* a video file (:data:`edgeseg.runtime.sources.VIDEO_SUFFIXES`, read with
  OpenCV); frames are named ``"frame_000123"`` and come out RGB;
* an ``.npz`` file whose arrays are frames: one array holding a stack of frames
  ``(N, H, W, C)`` / ``(N, H, W)``, or several arrays holding one frame each
  ``(H, W, C)`` / ``(H, W)``, every array used in key-sorted order; frames are
  named ``"key[17]"`` (in a stack) or ``"key"``;
* a bag (``.mcap``, ``.bag``, ``.db3`` or a rosbag2 folder; rosbags and mcap)
  and one of its image topics; frames are named by their position on the topic,
  ``"000123"``, in recorded order;
* a list of image files, named by their paths relative to their common folder;
* arrays: an ``(N, H, W[, C])`` array or a list of ``(H, W[, C])`` arrays, named
  ``"image_0000"``, ...

Then some candidates are picked (:meth:`FrameSource.pick`, the one rule: with
more candidates than asked for, one seeded random frame per equal stratum of
the index range, so a long video is not represented by its first seconds only
and the same seed always gives the same frames) and read lazily, in source
order (:meth:`FrameSource.read`). :func:`load_frames` does all of it and
prepares every frame with :func:`edgeseg.runtime.image.prepare`, skipping and
naming the ones that cannot be read or used.

Deploy-time module: NumPy and Pillow (OpenCV only when a video is read, rosbags/mcap for a bag).
"""

from __future__ import annotations

import logging
import os
import zipfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple, Protocol

import numpy as np
from PIL import Image

from edgeseg.bundle import InputSpec
from edgeseg.errors import ConfigError, InputError, SourceError
from edgeseg.labels import pair_labels, read_label
from edgeseg.progress import Count
from edgeseg.runtime.image import (
    NearestResizer,
    check_frame,
    model_size,
    prepare,
    resize_image,
    to_channels,
)
from edgeseg.runtime.sources import (
    IMAGE_SUFFIXES,
    VIDEO_SUFFIXES,
    import_cv2,
    list_images,
    read_image,
)

log = logging.getLogger(__name__)

NPZ_SUFFIX = ".npz"
KINDS = ("folder", "video", "bag", "npz", "files", "arrays")
FILE_KINDS = ("folder", "files")  # kinds whose frames are image files (labels pair with these)
_ERROR_NAMES = 10  # skipped names listed in the too-few error

_Read = tuple["np.ndarray | None", "str | None"]  # (frame, None) or (None, why it is unusable)


class RawFrame(NamedTuple):
    """One picked frame as read, before preparation.

    Attributes:
        name: the frame's name in its source (see the module docstring).
        frame: (H, W[, C]) uint8 RGB, or None when it could not be read.
        error: why it could not be read, or None.
    """

    name: str
    frame: np.ndarray | None
    error: str | None


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


def check_int(what: str, name: str, value: object, *, minimum: int) -> None:
    """Raises ConfigError unless ``value`` is an integer (not a bool) >= ``minimum``.

    Args:
        what: what the option belongs to, first word of the message (``"calibration"``).
        name: the option's name.
        value: its value.
        minimum: the smallest value allowed.

    Raises:
        ConfigError: ``"{what} {name} must be an integer >= {minimum}, got {value!r}"``.
    """
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ConfigError(f"{what} {name} must be an integer >= {minimum}, got {value!r}")


# --------------------------------------------------------------------------- sources


class _Reader(Protocol):
    def read(self, indices: Sequence[int]) -> Iterator[_Read]:
        """One (frame, error) per index, in the order given (ascending)."""
        ...  # pragma: no cover

    def size(self, index: int) -> tuple[int, int] | None:
        """(height, width) of a candidate without decoding it, None when unknown."""
        ...  # pragma: no cover


@dataclass(frozen=True, eq=False)
class FrameSource:
    """A source's candidate frames, listed without decoding them; reads them on demand.

    Made by :func:`frame_source`. Compared by identity (``eq=False``).

    Attributes:
        source: the path given, as str, or ``"(N arrays)"`` / ``"(N files)"``.
        kind: one of :data:`KINDS`.
        names: every candidate's name, in source order.
        files: the image file of every candidate (kinds ``folder`` and ``files``), else None.
        what: what the caller calls the source (``"calibration set"``), for messages.
    """

    source: str
    kind: str
    names: tuple[str, ...]
    files: tuple[Path, ...] | None
    what: str
    reader: _Reader = field(repr=False)

    @property
    def available(self) -> int:
        """How many candidate frames the source has."""
        return len(self.names)

    def pick(
        self, limit: int | None = None, seed: int = 0, *, among: Sequence[int] | None = None
    ) -> list[int]:
        """Sorted indices of the candidates to use: all, or ``limit`` spread over the source.

        Args:
            limit: how many to pick at most (None: every candidate).
            seed: seed of :func:`stratified_picks`; the same seed picks the same frames.
            among: pick among these candidate indices (ascending) only.

        Raises:
            ConfigError: ``limit`` or ``seed`` is not an integer >= 1 / >= 0.
        """
        if limit is not None:
            check_int(self.what, "limit", limit, minimum=1)
        check_int(self.what, "seed", seed, minimum=0)
        pool = range(self.available) if among is None else list(among)
        size = len(pool) if limit is None else int(limit)
        return [int(pool[i]) for i in stratified_picks(len(pool), size, int(seed))]

    def read(self, indices: Sequence[int]) -> Iterator[RawFrame]:
        """Reads the candidates at ``indices`` lazily, one frame in memory at a time.

        Args:
            indices: distinct candidate indices in ascending order, e.g. from :meth:`pick`.

        Yields:
            One :class:`RawFrame` per index: the frame, or None and why it is unusable.

        Raises:
            ConfigError: the indices are not ascending or out of range.
        """
        order = [int(i) for i in indices]
        if any(b <= a for a, b in zip(order, order[1:], strict=False)) or (
            order and not 0 <= order[0] <= order[-1] < self.available
        ):
            raise ConfigError(
                f"{self.what} {self.source}: frame indices must be ascending within "
                f"0..{self.available - 1}, got {order[:5]}{' ...' if len(order) > 5 else ''}"
            )
        for index, (frame, error) in zip(order, self.reader.read(order), strict=True):
            yield RawFrame(self.names[index], frame, error)

    def frame_size(self, index: int) -> tuple[int, int] | None:
        """(height, width) of a candidate, read from its header; None when unknown."""
        return self.reader.size(index)


def frame_source(source: object, *, what: str = "frames", topic: str | None = None) -> FrameSource:
    """Lists the candidate frames of a source (see the module docstring), decoding none.

    Args:
        source: a folder, video, bag or ``.npz`` path; a list of image files; an
            ``(N, H, W[, C])`` array or a list of arrays; or a FrameSource (returned as is).
        what: what the caller calls the source; the first words of every message.
        topic: a bag's image topic (None: its only image topic).

    Raises:
        ConfigError: naming the source, when it does not exist, is of an unknown
            kind, is a single image, holds no frame or cannot be opened.
        InputError: an array that is not a stack of frames.
        MissingDependencyError: a video without OpenCV installed.
    """
    if isinstance(source, FrameSource):
        return source
    if topic is not None and not (isinstance(source, (str, os.PathLike)) and _is_bag(source)):
        raise ConfigError(f"{what}: a topic ({topic!r}) is for a bag (.mcap, .bag, .db3, a rosbag2 folder)")
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if _is_bag(path):
            return _bag(path, what, topic)
        if path.is_dir():
            return _folder(path, what)
        if not path.exists():
            raise ConfigError(f"{what} {path} does not exist; expected {_accepted()}")
        suffix = path.suffix.lower()
        if suffix == NPZ_SUFFIX:
            return _npz(path, what)
        if suffix in VIDEO_SUFFIXES:
            return _video(path, what)
        thing = "a single image" if suffix in IMAGE_SUFFIXES else f"a {suffix or 'suffix-less'} file"
        raise ConfigError(f"{what} {path} is {thing}; expected {_accepted()}")
    if isinstance(source, np.ndarray):
        if source.ndim not in (3, 4):
            raise InputError(f"{what}: expected an (N, H, W[, C]) array, got shape {source.shape}")
        items: list[object] = list(source)
    elif isinstance(source, Iterable) and not isinstance(source, bytes):
        items = list(source)
    else:
        raise ConfigError(
            f"{what}: expected {_accepted()}, a list of image files or arrays, "
            f"got {type(source).__name__}"
        )
    if not items:
        raise ConfigError(f"{what}: no frames given (an empty sequence)")
    paths = [isinstance(item, (str, os.PathLike)) for item in items]
    if all(paths):
        return _files([Path(item) for item in items], what)  # type: ignore[arg-type]
    if any(paths):
        raise ConfigError(
            f"{what}: a list that mixes file paths and arrays; give image files or arrays, not both"
        )
    names = tuple(f"image_{i:04d}" for i in range(len(items)))
    return FrameSource(f"({len(items)} arrays)", "arrays", names, None, what, _ArrayReader(items))


def pair_frame_labels(frames: FrameSource, labels: str | os.PathLike[str]) -> dict[str, Path]:
    """``{frame name: label file}`` for the frames of ``frames`` that have a label.

    Labels are matched by name with :func:`edgeseg.labels.pair_labels`.

    Raises:
        ConfigError: the source's frames are not image files, ``labels`` is not a
            folder, or no frame has a label.
    """
    if frames.files is None:
        raise ConfigError(
            f"a labels folder needs images given as a folder or a list of files, "
            f"not {frames.kind} ({frames.source})"
        )
    pairs = pair_labels(frames.files, labels)
    return {name: pairs[file] for name, file in zip(frames.names, frames.files, strict=True) if file in pairs}


def _accepted() -> str:
    return (
        f"a folder of images ({', '.join(sorted(IMAGE_SUFFIXES))}), "
        f"a video ({', '.join(sorted(VIDEO_SUFFIXES))}), a bag (.mcap, .bag, .db3, a rosbag2 "
        f"folder) or an {NPZ_SUFFIX} file of frames"
    )


# ---- bags


def _is_bag(path: str | os.PathLike[str]) -> bool:
    from edgeseg.runtime.bags import is_bag

    return is_bag(path)


def _bag(path: Path, what: str, topic: str | None) -> FrameSource:
    from edgeseg.runtime.bags import BagSource

    try:
        bag = BagSource(path, topic)
    except SourceError as err:
        raise ConfigError(f"{what}: {err}") from err
    count = bag.count
    chosen = bag.topic
    bag.close()
    if count is None:  # no summary (a truncated MCAP): count what can be read
        count = sum(1 for _ in _BagReader(path, chosen, None).read_all())
    if count <= 0:
        raise ConfigError(f"{what} {path}: topic {chosen} has no messages")
    names = tuple(f"{i:06d}" for i in range(count))
    return FrameSource(f"{path} {chosen}", "bag", names, None, what, _BagReader(path, chosen, count))


class _BagReader:
    def __init__(self, path: Path, topic: str, count: int | None) -> None:
        self.path, self.topic, self.count = path, topic, count

    def read_all(self) -> Iterator[_Read]:
        from edgeseg.runtime.bags import BagSource

        bag = BagSource(self.path, self.topic)
        try:
            while True:
                try:
                    frame, error, _ = bag.read()
                except StopIteration:
                    return
                except SourceError:
                    return  # the damaged tail: what was read before counts
                yield frame, error
        finally:
            bag.close()

    def read(self, indices: Sequence[int]) -> Iterator[_Read]:
        wanted = iter(indices)
        target = next(wanted, None)
        position = 0
        from edgeseg.runtime.bags import BagSource

        bag = BagSource(self.path, self.topic)
        try:
            while target is not None:
                try:
                    frame, error, _ = bag.read()
                except (StopIteration, SourceError) as err:
                    reason = (
                        f"the bag's topic {self.topic} ended after {position} messages"
                        if isinstance(err, StopIteration)
                        else str(err)
                    )
                    yield None, reason
                    for _ in wanted:
                        yield None, reason
                    return
                if position == target:
                    yield frame, error
                    target = next(wanted, None)
                position += 1
        finally:
            bag.close()

    def size(self, index: int) -> tuple[int, int] | None:
        return None


# ---- folder and files


def _folder(path: Path, what: str) -> FrameSource:
    files = list_images(path, recursive=True)
    if not files:
        raise ConfigError(
            f"{what} {path}: the folder holds no images "
            f"(searched recursively for {', '.join(sorted(IMAGE_SUFFIXES))})"
        )
    names = tuple(p.relative_to(path).as_posix() for p in files)
    return FrameSource(str(path), "folder", names, tuple(files), what, _FileReader(files))


def _files(files: list[Path], what: str) -> FrameSource:
    base = Path(os.path.commonpath([p.absolute().parent for p in files]))
    names = tuple(p.absolute().relative_to(base).as_posix() for p in files)
    source = f"({len(files)} files)"
    return FrameSource(source, "files", names, tuple(files), what, _FileReader(files))


class _FileReader:
    def __init__(self, files: Sequence[Path]) -> None:
        self.files = list(files)

    def read(self, indices: Sequence[int]) -> Iterator[_Read]:
        for i in indices:
            try:
                yield read_image(self.files[i]), None
            except InputError as err:
                yield None, str(err)

    def size(self, index: int) -> tuple[int, int] | None:
        try:
            with Image.open(self.files[index]) as img:
                width, height = img.size
        except (OSError, ValueError, Image.DecompressionBombError):
            return None
        return height, width


# ---- arrays


class _ArrayReader:
    def __init__(self, items: Sequence[object]) -> None:
        self.items = list(items)

    def read(self, indices: Sequence[int]) -> Iterator[_Read]:
        for i in indices:
            yield np.asarray(self.items[i]), None

    def size(self, index: int) -> tuple[int, int] | None:
        shape = np.asarray(self.items[index]).shape  # no copy for an array
        return (int(shape[0]), int(shape[1])) if len(shape) in (2, 3) else None


# ---- video


def _video(path: Path, what: str) -> FrameSource:
    cv2 = import_cv2()
    cap = cv2.VideoCapture(str(path))
    try:
        if not cap.isOpened():
            raise ConfigError(f"{what} {path}: OpenCV cannot open this video")
        reported = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        if reported <= 0:  # unknown: count by decoding (frames are not kept)
            reported = 0
            while cap.grab():
                reported += 1
    finally:
        cap.release()
    if reported <= 0:
        raise ConfigError(f"{what} {path}: no frame of the video could be read")
    names = tuple(f"frame_{i:06d}" for i in range(reported))
    return FrameSource(str(path), "video", names, None, what, _VideoReader(path, reported))


class _VideoReader:
    def __init__(self, path: Path, reported: int) -> None:
        self.path = path
        self.reported = reported

    def read(self, indices: Sequence[int]) -> Iterator[_Read]:
        # Sequential decoding (grab every frame, retrieve the picked ones) is reliable
        # across codecs, unlike seeking with CAP_PROP_POS_FRAMES.
        cv2 = import_cv2()
        cap = cv2.VideoCapture(str(self.path))
        try:
            position = 0  # index of the next frame grab() returns
            for k, index in enumerate(indices):
                while position <= index:
                    if not cap.grab():
                        reason = f"the video ended after {position} frames (it reports {self.reported})"
                        for _ in indices[k:]:
                            yield None, reason
                        return
                    position += 1
                ok, frame = cap.retrieve()
                if not ok or frame is None:
                    yield None, f"OpenCV could not decode frame {index}"
                else:
                    yield _bgr_to_rgb(frame), None
        finally:
            cap.release()

    def size(self, index: int) -> tuple[int, int] | None:
        return None  # every frame of a video has the same size


def _bgr_to_rgb(frame: np.ndarray) -> np.ndarray:
    """OpenCV's BGR(A) as RGB (a view; alpha dropped, as ``prepare`` would drop it)."""
    if frame.ndim == 3 and frame.shape[2] in (3, 4):
        return frame[:, :, 2::-1]
    return frame


# ---- npz

_NPZ_ERRORS = (OSError, ValueError, zipfile.BadZipFile, EOFError)


def _npz(path: Path, what: str) -> FrameSource:
    try:
        data = np.load(path, allow_pickle=False)
    except _NPZ_ERRORS as err:
        raise ConfigError(f"{what} {path}: not a readable .npz file ({err})") from err
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise ConfigError(f"{what} {path}: not an .npz archive of arrays")
    try:
        shapes = {key: _npz_shape(data, key) for key in sorted(data.files)}
    except _NPZ_ERRORS as err:
        raise ConfigError(f"{what} {path}: not a readable .npz file ({err})") from err
    finally:
        data.close()
    # candidates: (key, index within a stack or None for a single-frame array)
    single = len(shapes) == 1
    candidates: list[tuple[str, int | None]] = []
    for key, shape in shapes.items():
        if _is_stack(shape, single=single):
            candidates += [(key, i) for i in range(shape[0])]
        else:
            candidates.append((key, None))
    if not candidates:
        raise ConfigError(f"{what} {path}: the .npz file holds no frames")
    names = tuple(key if i is None else f"{key}[{i}]" for key, i in candidates)
    return FrameSource(str(path), "npz", names, None, what, _NpzReader(path, candidates, shapes))


class _NpzReader:
    def __init__(
        self, path: Path, candidates: list[tuple[str, int | None]], shapes: dict[str, tuple[int, ...]]
    ) -> None:
        self.path = path
        self.candidates = candidates
        self.shapes = shapes

    def read(self, indices: Sequence[int]) -> Iterator[_Read]:
        try:
            data = np.load(self.path, allow_pickle=False)
        except _NPZ_ERRORS as err:
            for _ in indices:
                yield None, f"{self.path} cannot be read ({err})"
            return
        # One array in memory at a time; candidates are in key order.
        try:
            current: str | None = None
            array: np.ndarray | None = None
            error = ""
            for i in indices:
                key, index = self.candidates[i]
                if key != current:
                    current, array = key, None  # drop the previous array before loading
                    try:
                        array = data[key]
                    except _NPZ_ERRORS as err:
                        error = f"array {key!r} cannot be read ({err})"
                if array is None:
                    yield None, error
                elif index is not None:
                    yield np.asarray(array[index]), None
                elif array.ndim not in (2, 3):
                    yield None, _bad_shape(key, array.shape)
                else:
                    yield array, None
        finally:
            data.close()

    def size(self, index: int) -> tuple[int, int] | None:
        key, i = self.candidates[index]
        shape = self.shapes[key]
        frame = shape[1:] if i is not None else shape
        return (frame[0], frame[1]) if len(frame) in (2, 3) else None


def _npz_shape(data: np.lib.npyio.NpzFile, key: str) -> tuple[int, ...]:
    """An array's shape from its .npy header, without loading it (loads it as a fallback)."""
    archive = data.zip
    if archive is None:  # pragma: no cover - closed
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
    except (*_NPZ_ERRORS, KeyError):
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


def _bad_shape(key: str, shape: tuple[int, ...]) -> str:
    return (
        f"array {key!r} of shape {shape} is not a frame; expected (H, W), (H, W, C), "
        f"or a stack (N, H, W, C)"
    )


# --------------------------------------------------------------------------- prepared frames


@dataclass(frozen=True, eq=False)
class Frames:
    """Picked frames of a source, exactly as the graph's ``image`` input takes them.

    Compared by identity (``eq=False``): the fields hold arrays.

    Attributes:
        images: (N, H, W, C) uint8; ``images[i]`` is the graph's ``image`` input for
            one frame with the batch dimension dropped.
        names: names of the frames in ``images``, in source order.
        picked: names of every picked frame, in source order (``names`` and the skipped).
        skipped: (name, reason) of every picked frame that could not be read or used.
        available: how many candidates the picks were drawn from (with labels: the
            frames that have one).
        source: the source, as :attr:`FrameSource.source`.
        kind: one of :data:`KINDS`.
        seed: the seed of the picks.
        labels: (N, H, W) uint8 class ids, resized (nearest) to ``images``; None
            without labels.
    """

    images: np.ndarray
    names: tuple[str, ...]
    picked: tuple[str, ...]
    skipped: tuple[tuple[str, str], ...]
    available: int
    source: str
    kind: str
    seed: int
    labels: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.images.shape[0])


def load_frames(
    source: object,
    spec: InputSpec,
    *,
    limit: int | None = None,
    seed: int = 0,
    labels: str | os.PathLike[str] | None = None,
    label_format: str = "auto",
    min_frames: int = 1,
    what: str = "frames",
    progress: Count | None = None,
) -> Frames:
    """Lists, picks, reads and prepares frames of a source (see the module docstring).

    Each frame is prepared with :func:`edgeseg.runtime.image.prepare` as it is
    read, so only model-sized frames are held in memory. Frames that cannot be
    read, or that ``prepare`` (or their label) rejects, are skipped, logged and
    listed in :attr:`Frames.skipped`.

    For a ``dynamic`` spec, ``prepare`` resizes a frame to the allowed size nearest
    to its own, so frames of different sizes would come out in different shapes.
    When the picked frames do not all map to one size, every frame is instead
    resized to the spec's nominal ``spec.size`` (after the same channel
    conversion), so that the frames stack into one array.

    Args:
        source: anything :func:`frame_source` takes.
        spec: the graph's ``image`` input.
        limit: how many frames to pick at most (None: all), spread over the source.
        seed: seed of the picks; the same seed gives the same frames.
        labels: a folder of label images, paired with the frames by name
            (:func:`edgeseg.labels.pair_labels`); only frames with a label are
            candidates. Needs a folder or a list of image files.
        label_format: how labels are read (:func:`edgeseg.labels.read_label`).
        min_frames: fewer usable frames than this is an error.
        what: what the caller calls the source, the first words of every message.
        progress: called as ``progress(done, total)`` after each picked frame.

    Returns:
        The prepared frames, with what was picked and skipped.

    Raises:
        ConfigError: the source cannot be listed (see :func:`frame_source`), an
            option is out of range, the labels do not pair, or fewer than
            ``min_frames`` picked frames are usable (the message names the
            source, the counts and the skipped frames).
        MissingDependencyError: a video without OpenCV installed.
    """
    frames = frame_source(source, what=what)
    check_int(what, "min_frames", min_frames, minimum=1)
    label_files = pair_frame_labels(frames, labels) if labels is not None else None
    among = None
    if label_files is not None:
        among = [i for i, name in enumerate(frames.names) if name in label_files]
    picks = frames.pick(limit, seed, among=among)
    total = len(picks)
    fixed = spec.dynamic and _sizes_differ(spec, [frames.frame_size(i) for i in picks])

    collector = _Collector(spec, total, fixed=fixed, labelled=label_files is not None)
    skipped: list[tuple[str, str]] = []
    for done, (name, frame, error) in enumerate(frames.read(picks), start=1):
        try:
            if frame is None:
                raise InputError(error or "unreadable")
            label = None
            if label_files is not None:
                label = read_label(label_files[name], format=label_format)
            collector.add(frame, label)
        except InputError as err:
            reason = str(err)
            log.warning("%s %s: skipping %s: %s", what, frames.source, name, reason)
            skipped.append((name, reason))
        if progress is not None:
            progress(done, total)

    available = frames.available if among is None else len(among)
    if collector.count < min_frames:
        raise ConfigError(_too_few_message(frames, available, total, skipped, min_frames))
    skipped_names = {name for name, _ in skipped}
    picked = tuple(frames.names[i] for i in picks)
    images, label_maps = collector.result()
    return Frames(
        images=images,
        names=tuple(name for name in picked if name not in skipped_names),
        picked=picked,
        skipped=tuple(skipped),
        available=available,
        source=frames.source,
        kind=frames.kind,
        seed=int(seed),
        labels=label_maps,
    )


class _Collector:
    """Prepares frames one by one into a preallocated (total, h, w, C) array (labels alike)."""

    def __init__(self, spec: InputSpec, total: int, *, fixed: bool, labelled: bool) -> None:
        self.spec = spec
        self.total = total
        self.fixed = fixed
        self.labelled = labelled
        self.count = 0
        self._images: np.ndarray | None = None
        self._labels: np.ndarray | None = None
        self._resize = NearestResizer()

    def add(self, frame: np.ndarray, label: np.ndarray | None) -> None:
        if self.fixed:
            image = to_channels(check_frame(frame), self.spec.channels)
            image = resize_image(image, self.spec.size)
        else:
            image = prepare(frame, self.spec)[0]
        if self._images is None:
            self._images = np.empty((self.total, *image.shape), dtype=np.uint8)
            if self.labelled:
                self._labels = np.empty((self.total, *image.shape[:2]), dtype=np.uint8)
        elif image.shape != self._images.shape[1:]:
            # Only for a dynamic spec whose frames' sizes could not all be known up front
            # (they are for folders, npz files and arrays); keeps the frames stackable.
            log.debug("frame of shape %s resized to %s", image.shape, self._images.shape[1:])
            image = resize_image(image, (self._images.shape[1], self._images.shape[2]))
        if self._labels is not None and label is not None:
            self._labels[self.count] = self._resize(label, (image.shape[0], image.shape[1]))
        self._images[self.count] = image
        self.count += 1

    def result(self) -> tuple[np.ndarray, np.ndarray | None]:
        if self._images is None:  # pragma: no cover - too few frames is an error before this
            h, w = self.spec.size
            return np.empty((0, h, w, self.spec.channels), dtype=np.uint8), None
        if self.count < self.total:  # release the unused tail
            labels = None if self._labels is None else self._labels[: self.count].copy()
            return self._images[: self.count].copy(), labels
        return self._images, self._labels


def _sizes_differ(spec: InputSpec, sizes: list[tuple[int, int] | None]) -> bool:
    """A dynamic spec maps these frame sizes (None: unknown) to more than one model size."""
    return len({model_size(spec, s) for s in sizes if s is not None}) > 1


def _too_few_message(
    frames: FrameSource, available: int, picked: int, skipped: list[tuple[str, str]], needed: int
) -> str:
    noun = "images" if frames.kind in FILE_KINDS else "frames"
    usable = picked - len(skipped)
    message = f"{frames.what} {frames.source}: {usable} usable {noun} of {picked} picked"
    if available > picked:
        message += f" from {available}"
    if skipped:
        names = ", ".join(name for name, _ in skipped[:_ERROR_NAMES])
        if len(skipped) > _ERROR_NAMES:
            names += f", ... ({len(skipped) - _ERROR_NAMES} more)"
        message += f" ({len(skipped)} unreadable: {names})"
    return message + f"; at least {needed} {'is' if needed == 1 else 'are'} needed"


__all__ = [
    "FILE_KINDS",
    "KINDS",
    "NPZ_SUFFIX",
    "FrameSource",
    "Frames",
    "RawFrame",
    "check_int",
    "frame_source",
    "load_frames",
    "pair_frame_labels",
    "stratified_picks",
]
