"""Colouring masks for people: palette images and overlays."""

from __future__ import annotations

import numpy as np

from edgeseg.errors import InputError


def colorize(mask: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """Maps an (H, W) class-id mask to an (H, W, 3) RGB image with ``palette``.

    Ids past the palette's end are drawn black.
    """
    lut = np.zeros((256, 3), dtype=np.uint8)
    lut[: len(palette)] = palette
    return lut[mask]


def overlay(frame: np.ndarray, mask: np.ndarray, palette: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blends the coloured mask over an RGB (or grayscale) frame of the same size."""
    if frame.shape[:2] != mask.shape:
        raise InputError(f"overlay: frame {frame.shape[:2]} and mask {mask.shape} differ in size")
    if not 0.0 <= alpha <= 1.0:
        raise InputError(f"overlay: alpha must be in [0, 1], got {alpha}")
    rgb = frame if frame.ndim == 3 and frame.shape[2] == 3 else np.repeat(frame.reshape(*mask.shape, 1)[..., :1], 3, axis=2)
    blended = rgb.astype(np.float32) * (1.0 - alpha) + colorize(mask, palette).astype(np.float32) * alpha
    return np.clip(np.rint(blended), 0, 255).astype(np.uint8)


def draw_legend(
    image: np.ndarray, mask: np.ndarray, classes: tuple[str, ...] | list[str], palette: np.ndarray, *, max_items: int = 12
) -> np.ndarray:
    """Draws a legend of the classes present in ``mask`` (largest first) in the image's top-left corner.

    Returns a new RGB image; ``image`` is not modified.
    """
    from PIL import Image, ImageDraw, ImageFont

    counts = np.bincount(mask.ravel(), minlength=len(classes))[: len(classes)]
    present = [int(c) for c in np.argsort(-counts) if counts[c] > 0][:max_items]
    canvas = Image.fromarray(np.ascontiguousarray(image))
    if not present:
        return np.asarray(canvas).copy()
    draw = ImageDraw.Draw(canvas, "RGBA")
    font = ImageFont.load_default()
    line = 14
    width = 22 + max(int(draw.textlength(classes[c], font=font)) for c in present)
    draw.rectangle((2, 2, 6 + width, 6 + line * len(present)), fill=(0, 0, 0, 150))
    for row, c in enumerate(present):
        y = 5 + row * line
        draw.rectangle((5, y, 15, y + 10), fill=tuple(int(v) for v in palette[c]), outline=(255, 255, 255))
        draw.text((20, y - 1), classes[c], fill=(255, 255, 255), font=font)
    return np.asarray(canvas).copy()
