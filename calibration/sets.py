"""Calibration sets for INT8 quantization: a user's frames, prepared as the runtime prepares them.

A calibration set is read from a folder of images (searched recursively), a
video file or an ``.npz`` file of frames, by :func:`edgeseg.runtime.frames.load_frames`:
the module docstring there says how each source is listed and its frames named.

When the source has more candidate frames than asked for, the frames used are
spread over the whole source (one random frame per equal stratum of the index
range, drawn from ``np.random.default_rng(seed)``: the rule of
:func:`edgeseg.runtime.frames.stratified_picks`), so a long video is not
represented by its first seconds only, and the same seed always gives the same
frames.

Every frame goes through :func:`edgeseg.runtime.image.prepare`, so calibration
sees exactly the bytes the runtime feeds the graph's ``image`` input. Frames that
cannot be read or that ``prepare`` rejects are skipped, logged and reported in
:attr:`CalibrationSet.skipped`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgeseg.bundle import InputSpec
from edgeseg.progress import Count
from edgeseg.runtime.frames import NPZ_SUFFIX, check_int, load_frames

_SUMMARY_NAMES = 20  # skipped names listed in summary()


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
        picked: names of the picked frames (the skipped ones included), in source
            order: relative file paths (folder), ``"frame_000123"`` (video) or
            ``"frames[17]"`` / ``"key"`` (npz).
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
    progress: Count | None = None,
) -> CalibrationSet:
    """Reads a calibration set from a folder, a video or an ``.npz`` file.

    Frames are picked deterministically: with more than ``size`` candidates, the
    index range ``[0, available)`` is split into ``size`` equal strata and one index
    is drawn from each with ``np.random.default_rng(seed)``; otherwise every
    candidate is used. Each frame is prepared with
    :func:`edgeseg.runtime.image.prepare` as it is read, so only the model-sized
    frames are held in memory; for a ``dynamic`` spec whose picked frames would
    come out at different sizes, every frame is resized to ``spec.size`` instead
    (see :func:`edgeseg.runtime.frames.load_frames`).

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
    check_int("calibration", "size", size, minimum=1)
    check_int("calibration", "min_images", min_images, minimum=1)
    check_int("calibration", "seed", seed, minimum=0)
    frames = load_frames(
        source,
        spec,
        limit=size,
        seed=seed,
        min_frames=min(min_images, size),
        what="calibration set",
        progress=progress,
    )
    return CalibrationSet(
        images=frames.images,
        source=str(source),
        kind=frames.kind,
        available=frames.available,
        picked=list(frames.picked),
        skipped=list(frames.skipped),
        seed=seed,
    )


__all__ = ["NPZ_SUFFIX", "CalibrationSet", "load_calibration_set"]
