"""Sample images for build-time parity: a user's frames, or generated scenes."""

from __future__ import annotations

import os

import numpy as np

from edgeseg.bundle import InputSpec
from edgeseg.runtime.frames import load_frames
from edgeseg.runtime.image import to_channels


def synthetic_images(n: int, size: tuple[int, int], channels: int = 3, *, seed: int = 0) -> np.ndarray:
    """``n`` deterministic street-scene-like uint8 images, (n, H, W, channels).

    Smooth gradients with rectangles, ellipses, stripes and sensor noise: enough
    structure that a network's logits vary across the image, unlike plain noise.
    """
    rng = np.random.default_rng(seed)
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    out = np.empty((n, h, w, 3), dtype=np.uint8)
    for k in range(n):
        top, bottom = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
        img = top[None, None, :] + (bottom - top)[None, None, :] * (yy / max(h - 1, 1))[..., None]
        for _ in range(rng.integers(4, 10)):
            color = rng.uniform(0, 255, 3)
            cy, cx = rng.uniform(0, h), rng.uniform(0, w)
            ry, rx = rng.uniform(0.05, 0.3) * h, rng.uniform(0.05, 0.3) * w
            if rng.random() < 0.5:
                region = (np.abs(yy - cy) < ry) & (np.abs(xx - cx) < rx)
            else:
                region = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1.0
            img[region] = color
        period = rng.uniform(4, 32)
        img += 20.0 * np.sin(xx / period)[..., None]
        img += rng.normal(0, 6, img.shape)
        out[k] = np.clip(img, 0, 255).astype(np.uint8)
    if channels == 1:
        return np.stack([to_channels(im, 1) for im in out])
    return out


def load_samples(
    folder: str | os.PathLike[str],
    size: tuple[int, int],
    channels: int = 3,
    *,
    limit: int = 8,
    seed: int = 0,
) -> tuple[np.ndarray, int]:
    """Up to ``limit`` frames of ``folder``, prepared exactly as the runtime prepares them.

    The frames are picked and read by :func:`edgeseg.runtime.frames.load_frames`:
    spread over the whole source, the same ``seed`` giving the same frames.

    Args:
        folder: a folder of images (searched recursively), a video or an ``.npz`` file.
        size: (height, width) of the graph's input.
        channels: 1 or 3.
        limit: how many frames to use at most.
        seed: seed of the picks.

    Returns:
        (images (n, H, W, channels) uint8, number of unreadable frames skipped).

    Raises:
        ConfigError: the folder does not exist or holds no readable image.
    """
    frames = load_frames(
        folder, InputSpec(size=size, channels=channels), limit=limit, seed=seed, what="samples folder"
    )
    return frames.images, len(frames.skipped)
