"""Sample images for build-time parity: a user's frames, or generated scenes."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from edgeseg.errors import ConfigError, InputError
from edgeseg.runtime.image import resize_image, to_channels
from edgeseg.runtime.sources import list_images, read_image

log = logging.getLogger(__name__)


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
    folder: str | os.PathLike[str], size: tuple[int, int], channels: int = 3, *, limit: int = 8
) -> tuple[np.ndarray, int]:
    """Up to ``limit`` images of ``folder`` (evenly spread over its sorted files),
    prepared exactly as the runtime prepares frames.

    Returns:
        (images (n, H, W, channels) uint8, number of unreadable files skipped).

    Raises:
        ConfigError: the folder does not exist or holds no readable image.
    """
    root = Path(folder)
    if not root.is_dir():
        raise ConfigError(f"samples folder {root} does not exist or is not a folder")
    files = list_images(root, recursive=True)
    if not files:
        raise ConfigError(f"samples folder {root} has no images (png, jpg, bmp, tif)")
    if len(files) > limit:
        picks = np.linspace(0, len(files) - 1, limit).round().astype(int)
        files = [files[i] for i in picks]
    images, skipped = [], 0
    for file in files:
        try:
            frame = read_image(file)
        except InputError as err:
            log.warning("skipping sample: %s", err)
            skipped += 1
            continue
        frame = frame[:, :, None] if frame.ndim == 2 else frame
        images.append(resize_image(to_channels(frame, channels), size))
    if not images:
        raise ConfigError(f"samples folder {root}: none of {len(files)} images could be read")
    return np.stack(images), skipped
