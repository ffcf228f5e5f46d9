"""Ground-truth label images: reading them as class ids, pairing them with images.

Three on-disk conventions are understood:

* ``"ids"``: a single-channel PNG whose pixel values are the class ids
  (CamVid as packaged by SegNet: 0..10, 11 = void).
* ``"voc"``: a palette (mode ``P``) PNG whose palette *indices* are the class
  ids and 255 marks boundaries / ignore (Pascal VOC ``SegmentationClass``).
* ``"cityscapes"``: a ``*_gtFine_labelIds.png``, mapped to the 19 train ids
  (255 = ignore) with :data:`CITYSCAPES_TRAIN_IDS`.

``read_label`` returns the raw ids (except for the Cityscapes mapping); which id
to ignore in metrics is the caller's choice, with :func:`default_ignore_index`
giving the convention of a format where it has one.

Deploy-time module: NumPy, Pillow and the standard library only.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from edgeseg.errors import ConfigError, InputError
from edgeseg.runtime.sources import IMAGE_SUFFIXES, list_images

log = logging.getLogger(__name__)

LABEL_FORMATS = ("auto", "ids", "voc", "cityscapes")

CITYSCAPES_CLASSES: tuple[str, ...] = (
    "road",
    "sidewalk",
    "building",
    "wall",
    "fence",
    "pole",
    "traffic light",
    "traffic sign",
    "vegetation",
    "terrain",
    "sky",
    "person",
    "rider",
    "car",
    "truck",
    "bus",
    "train",
    "motorcycle",
    "bicycle",
)

# labelId -> trainId of the 19 evaluated classes (cityscapesScripts, helpers/labels.py).
_CITYSCAPES_LABEL_TO_TRAIN = {
    7: 0,  # road
    8: 1,  # sidewalk
    11: 2,  # building
    12: 3,  # wall
    13: 4,  # fence
    17: 5,  # pole
    19: 6,  # traffic light
    20: 7,  # traffic sign
    21: 8,  # vegetation
    22: 9,  # terrain
    23: 10,  # sky
    24: 11,  # person
    25: 12,  # rider
    26: 13,  # car
    27: 14,  # truck
    28: 15,  # bus
    31: 16,  # train
    32: 17,  # motorcycle
    33: 18,  # bicycle
}


def _cityscapes_table() -> np.ndarray:
    table = np.full(256, 255, dtype=np.uint8)
    for label_id, train_id in _CITYSCAPES_LABEL_TO_TRAIN.items():
        table[label_id] = train_id
    table.setflags(write=False)
    return table


CITYSCAPES_TRAIN_IDS: np.ndarray = _cityscapes_table()
"""(256,) uint8 lookup table, Cityscapes labelId -> trainId; 255 = ignore. Read-only."""

CITYSCAPES_LABEL_SUFFIX = "_labelIds.png"
_CITYSCAPES_IMAGE_TAG = "_leftImg8bit"
_CITYSCAPES_LABEL_TAG = "_gtFine_labelIds"

# Modes whose pixel values are read as class ids directly.
_INDEX_MODES = frozenset({"L", "P", "1", "I;16", "I;16L", "I;16B", "I;16N", "I"})
_COLOUR_MODES = frozenset({"RGB", "RGBA", "RGBX", "RGBa", "CMYK", "YCbCr", "LAB", "HSV"})


def read_label(path: str | os.PathLike[str], *, format: str = "auto") -> np.ndarray:
    """Reads a label image as (H, W) uint8 class ids.

    The ids are returned as stored (no ignore value is applied), except that
    ``"cityscapes"`` maps labelIds to the 19 train ids (255 = ignore).

    Args:
        path: the label image file.
        format: one of :data:`LABEL_FORMATS`:

            * ``"ids"``: single-channel image of class ids (mode ``L``, ``1``,
              ``I;16`` / ``I`` with values in 0..255, or ``P`` read as indices).
            * ``"voc"``: palette (mode ``P``) PNG; the palette indices are the ids.
            * ``"cityscapes"``: a ``*_labelIds.png``, mapped through
              :data:`CITYSCAPES_TRAIN_IDS`.
            * ``"auto"``: a name ending ``_labelIds.png`` -> cityscapes, mode
              ``P`` -> voc, another single-channel mode -> ids.

    Returns:
        (H, W) uint8 array, C-contiguous and writable.

    Raises:
        ConfigError: ``format`` is not one of :data:`LABEL_FORMATS`.
        InputError: naming the file, when it is missing, not a readable image,
            a colour image, or its mode or values do not fit the format.
    """
    _check_format(format)
    path = Path(path)
    try:
        with Image.open(path) as img:
            img.load()
            fmt = format
            if fmt == "auto":
                fmt = _detect_format(path, img)
                log.debug("%s: label format %r detected (mode %s)", path, fmt, img.mode)
            if fmt == "voc":
                if img.mode != "P":
                    raise InputError(
                        f"{path}: expected a palette (mode P) PNG for format='voc', got mode "
                        f"{img.mode}; use format='ids' for single-channel id images"
                    )
                return np.array(img, dtype=np.uint8)
            ids = _read_ids(path, img, fmt)
    except FileNotFoundError as err:
        raise InputError(f"{path}: no such label file") from err
    except (UnidentifiedImageError, OSError) as err:
        raise InputError(f"{path}: not a readable label image ({err})") from err
    if fmt == "cityscapes":
        return CITYSCAPES_TRAIN_IDS[ids]
    return ids


def default_ignore_index(format: str) -> int | None:
    """The id that a label format marks as ignore, or None where it has no convention.

    Args:
        format: one of :data:`LABEL_FORMATS`.

    Returns:
        255 for ``"voc"`` (boundaries) and ``"cityscapes"`` (after the train-id
        mapping); None for ``"ids"`` and ``"auto"``, whose void id depends on the
        data set (CamVid: 11) and must be given by the caller.

    Raises:
        ConfigError: ``format`` is not one of :data:`LABEL_FORMATS`.
    """
    _check_format(format)
    return 255 if format in ("voc", "cityscapes") else None


def pair_labels(
    images: Sequence[str | os.PathLike[str]], label_dir: str | os.PathLike[str]
) -> dict[Path, Path]:
    """Matches each image file to its label file in ``label_dir`` (searched recursively).

    A label matches an image when its stem is:

    1. the image's stem (CamVid ``val/x.png`` <-> ``valannot/x.png``; VOC
       ``JPEGImages/x.jpg`` <-> ``SegmentationClass/x.png``), or else
    2. for a Cityscapes image ``<name>_leftImg8bit.*``, ``<name>_gtFine_labelIds``.

    Label files may have any image suffix. The image file itself is never taken
    as its own label, so ``label_dir`` may contain the image folder.

    Args:
        images: the image files.
        label_dir: folder holding the label files, at any depth.

    Returns:
        ``{image: label}`` for the images that have a label, in the order of
        ``images``. When only some have one, a warning with the count is logged.

    Raises:
        ConfigError: ``label_dir`` is not a folder, no image is given, no image
            has a label, or two label files match one image.
    """
    root = Path(label_dir)
    if not root.is_dir():
        what = "is not a folder" if root.exists() else "does not exist"
        raise ConfigError(f"label folder {root} {what}")
    paths = [Path(p) for p in images]
    if not paths:
        raise ConfigError(f"no images given to pair with the labels in {root}")

    by_stem: dict[str, list[Path]] = {}
    for label in list_images(root, recursive=True):
        by_stem.setdefault(label.stem, []).append(label)

    pairs: dict[Path, Path] = {}
    unpaired: list[Path] = []
    for image in paths:
        found = _find_label(image, by_stem, root)
        if found is None:
            unpaired.append(image)
        else:
            pairs[image] = found

    if not pairs:
        example = paths[0]
        wanted = " or ".join(repr(s + ".*") for s in _label_stems(example))
        raise ConfigError(
            f"no labels found in {root} for any of the {len(paths)} images; e.g. for "
            f"{example.name} it looked for {wanted} (label suffixes: "
            f"{', '.join(sorted(IMAGE_SUFFIXES))})"
        )
    if unpaired:
        log.warning(
            "%d of %d images have no label in %s and are left out (e.g. %s)",
            len(unpaired),
            len(paths),
            root,
            unpaired[0].name,
        )
    return pairs


def _check_format(format: str) -> None:
    if format not in LABEL_FORMATS:
        raise ConfigError(
            f"unknown label format {format!r}; expected one of {', '.join(LABEL_FORMATS)}"
        )


def _detect_format(path: Path, img: Image.Image) -> str:
    if path.name.endswith(CITYSCAPES_LABEL_SUFFIX):
        return "cityscapes"
    if img.mode == "P":
        return "voc"
    return "ids"  # _read_ids rejects colour and other modes with the reason


def _read_ids(path: Path, img: Image.Image, fmt: str) -> np.ndarray:
    """Single-channel pixel values as uint8 ids; InputError for anything else."""
    mode = img.mode
    if mode in _COLOUR_MODES:
        hint = (
            "; Cityscapes labels are the *_labelIds.png files, not *_color.png"
            if fmt == "cityscapes"
            else ""
        )
        raise InputError(
            f"{path}: a colour image (mode {mode}), expected a single-channel image of "
            f"class ids; use format='voc' for palette PNGs, or convert the colours to ids{hint}"
        )
    if mode not in _INDEX_MODES:
        raise InputError(
            f"{path}: image mode {mode} cannot hold class ids; expected a single-channel "
            f"image (mode L, P, 1 or I;16) of integer ids in 0..255"
        )
    values = np.array(img)
    if values.dtype == np.uint8:
        return values
    if values.dtype == np.bool_:
        return values.astype(np.uint8)
    lo, hi = int(values.min()), int(values.max())
    if lo < 0 or hi > 255:
        raise InputError(
            f"{path}: label values span {lo}..{hi} (mode {mode}); expected class ids in "
            f"0..255 to fit uint8 (max value found: {hi})"
        )
    return values.astype(np.uint8)


def _label_stems(image: Path) -> list[str]:
    """The label stems that match an image, in order of preference."""
    stems = [image.stem]
    if image.stem.endswith(_CITYSCAPES_IMAGE_TAG):
        stems.append(image.stem[: -len(_CITYSCAPES_IMAGE_TAG)] + _CITYSCAPES_LABEL_TAG)
    return stems


def _find_label(image: Path, by_stem: dict[str, list[Path]], root: Path) -> Path | None:
    own = image.resolve()
    for stem in _label_stems(image):
        found = [p for p in by_stem.get(stem, ()) if p.resolve() != own]
        if len(found) > 1:
            names = ", ".join(str(p) for p in found)
            raise ConfigError(
                f"{len(found)} label files in {root} match image {image.name}: {names}; "
                f"expected one, point the label folder at the one that holds the right labels"
            )
        if found:
            return found[0]
    return None
