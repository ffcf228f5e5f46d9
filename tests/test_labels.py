"""edgeseg.labels: reading label images as class ids and pairing them with images."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgeseg.errors import ConfigError, InputError
from edgeseg.labels import (
    CITYSCAPES_CLASSES,
    CITYSCAPES_TRAIN_IDS,
    LABEL_FORMATS,
    default_ignore_index,
    pair_labels,
    read_label,
)

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
CAMVID = SHARED_DATA / "camvid"


def _touch_image(path: Path, size: tuple[int, int] = (4, 3)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (10, 20, 30)).save(path)
    return path


def _save_ids(path: Path, ids: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(ids.astype(np.uint8), mode="L").save(path)
    return path


def _save_palette(path: Path, ids: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(ids.astype(np.uint8), mode="L").convert("P")
    img.putdata(ids.astype(np.uint8).ravel().tolist())  # indices exactly as given
    palette = [0] * 768
    palette[3:6] = [128, 0, 0]  # VOC colours: 1 aeroplane
    palette[15 * 3 : 15 * 3 + 3] = [192, 128, 128]  # 15 person
    palette[255 * 3 : 255 * 3 + 3] = [224, 224, 192]  # 255 boundary
    img.putpalette(palette)
    img.save(path)
    return path


# --- read_label: ids -------------------------------------------------------------------


def test_ids_png_round_trip(tmp_path: Path) -> None:
    ids = np.array([[0, 1, 2, 3], [4, 5, 11, 10], [7, 8, 9, 6]], dtype=np.uint8)
    path = _save_ids(tmp_path / "x.png", ids)
    for fmt in ("ids", "auto"):
        out = read_label(path, format=fmt)
        assert out.dtype == np.uint8
        assert out.shape == (3, 4)
        np.testing.assert_array_equal(out, ids)
    out[0, 0] = 9  # callers may write into it
    assert out[0, 0] == 9


def test_ids_i16_within_uint8_is_read(tmp_path: Path) -> None:
    ids = np.array([[0, 200], [11, 255]], dtype=np.uint16)
    path = tmp_path / "wide.png"
    Image.fromarray(ids).save(path)
    assert Image.open(path).mode.startswith("I")
    out = read_label(path, format="ids")
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, ids.astype(np.uint8))


def test_ids_i16_over_255_is_an_input_error(tmp_path: Path) -> None:
    path = tmp_path / "wide.png"
    Image.fromarray(np.array([[0, 3], [300, 1000]], dtype=np.uint16)).save(path)
    with pytest.raises(InputError, match="1000") as info:
        read_label(path, format="ids")
    assert str(path) in str(info.value)
    with pytest.raises(InputError, match="1000"):
        read_label(path)  # auto -> ids


def test_rgb_label_is_an_input_error_that_mentions_voc(tmp_path: Path) -> None:
    path = _touch_image(tmp_path / "colour.png")
    for fmt in ("ids", "auto", "cityscapes"):
        with pytest.raises(InputError, match="colour") as info:
            read_label(path, format=fmt)
        assert "format='voc'" in str(info.value)
        assert str(path) in str(info.value)


def test_missing_or_unreadable_label_names_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope.png"
    with pytest.raises(InputError, match="no such label file") as info:
        read_label(missing)
    assert str(missing) in str(info.value)
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"not a png at all")
    with pytest.raises(InputError, match="not a readable label image") as info:
        read_label(junk)
    assert str(junk) in str(info.value)


def test_unknown_format_is_a_config_error(tmp_path: Path) -> None:
    path = _save_ids(tmp_path / "x.png", np.zeros((2, 2), np.uint8))
    with pytest.raises(ConfigError, match="unknown label format 'coco'"):
        read_label(path, format="coco")
    with pytest.raises(ConfigError, match="expected one of auto, ids, voc, cityscapes"):
        default_ignore_index("coco")


# --- read_label: voc -------------------------------------------------------------------


def test_voc_palette_returns_indices_not_colours(tmp_path: Path) -> None:
    ids = np.array([[0, 1, 15], [255, 15, 0]], dtype=np.uint8)
    path = _save_palette(tmp_path / "2007_000032.png", ids)
    assert Image.open(path).mode == "P"
    for fmt in ("voc", "auto", "ids"):  # ids accepts P as indices too
        out = read_label(path, format=fmt)
        assert out.dtype == np.uint8
        assert out.shape == (2, 3)
        np.testing.assert_array_equal(out, ids)
    assert read_label(path)[1, 0] == 255  # boundary kept, not mapped


def test_voc_on_a_grayscale_image_is_an_input_error(tmp_path: Path) -> None:
    path = _save_ids(tmp_path / "gray.png", np.ones((2, 2), np.uint8))
    with pytest.raises(InputError, match="mode P") as info:
        read_label(path, format="voc")
    assert "got mode L" in str(info.value)
    assert str(path) in str(info.value)


# --- read_label: cityscapes ------------------------------------------------------------


def test_cityscapes_label_ids_map_to_train_ids(tmp_path: Path) -> None:
    ids = np.array([[7, 26, 0, 33, 255]], dtype=np.uint8)
    path = _save_ids(tmp_path / "aachen_000000_000019_gtFine_labelIds.png", ids)
    expected = np.array([[0, 13, 255, 18, 255]], dtype=np.uint8)
    for fmt in ("cityscapes", "auto"):  # auto: by the file name
        out = read_label(path, format=fmt)
        assert out.dtype == np.uint8
        np.testing.assert_array_equal(out, expected)
    # the same pixels under another name are raw ids
    other = _save_ids(tmp_path / "plain.png", ids)
    np.testing.assert_array_equal(read_label(other), ids)


def test_cityscapes_table_and_classes() -> None:
    assert len(CITYSCAPES_CLASSES) == 19
    assert CITYSCAPES_CLASSES[:2] == ("road", "sidewalk")
    assert CITYSCAPES_CLASSES[-1] == "bicycle"
    assert CITYSCAPES_TRAIN_IDS.shape == (256,)
    assert CITYSCAPES_TRAIN_IDS.dtype == np.uint8
    mapped = np.flatnonzero(CITYSCAPES_TRAIN_IDS != 255)
    np.testing.assert_array_equal(
        mapped, [7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33]
    )
    np.testing.assert_array_equal(CITYSCAPES_TRAIN_IDS[mapped], np.arange(19))
    assert CITYSCAPES_TRAIN_IDS[255] == 255
    assert not CITYSCAPES_TRAIN_IDS.flags.writeable


def test_default_ignore_index() -> None:
    assert LABEL_FORMATS == ("auto", "ids", "voc", "cityscapes")
    assert default_ignore_index("voc") == 255
    assert default_ignore_index("cityscapes") == 255
    assert default_ignore_index("ids") is None
    assert default_ignore_index("auto") is None


# --- pair_labels -----------------------------------------------------------------------


def test_pair_camvid_style(tmp_path: Path) -> None:
    names = ["0001TP_008550.png", "0001TP_008580.png", "Seq05VD_f00000.png"]
    images = [_touch_image(tmp_path / "val" / n) for n in names]
    labels = [_save_ids(tmp_path / "valannot" / n, np.zeros((3, 4))) for n in names]
    _save_ids(tmp_path / "valannot" / "other_frame.png", np.zeros((3, 4)))  # unused extra
    pairs = pair_labels(images, tmp_path / "valannot")
    assert pairs == dict(zip(images, labels, strict=True))
    assert list(pairs) == images
    # the parent of both folders works too: an image is never its own label
    assert pair_labels(images, tmp_path) == pairs


def test_pair_voc_style_jpg_to_png(tmp_path: Path) -> None:
    images = [_touch_image(tmp_path / "JPEGImages" / f"2007_00003{i}.jpg") for i in range(2)]
    labels = [
        _save_palette(tmp_path / "SegmentationClass" / f"2007_00003{i}.png", np.zeros((3, 4)))
        for i in range(2)
    ]
    pairs = pair_labels([str(p) for p in images], tmp_path / "SegmentationClass")
    assert pairs == dict(zip(images, labels, strict=True))
    assert all(label.suffix == ".png" for label in pairs.values())


def test_pair_cityscapes_style(tmp_path: Path) -> None:
    stems = ["frankfurt_000000_000294", "munster_000001_000019"]
    images = [
        _touch_image(tmp_path / "leftImg8bit" / "val" / s.split("_")[0] / f"{s}_leftImg8bit.png")
        for s in stems
    ]
    gt = tmp_path / "gtFine" / "val"
    labels = []
    for s in stems:
        city = gt / s.split("_")[0]
        labels.append(_save_ids(city / f"{s}_gtFine_labelIds.png", np.zeros((3, 4))))
        _touch_image(city / f"{s}_gtFine_color.png")  # must not be taken
        _save_ids(city / f"{s}_gtFine_instanceIds.png", np.zeros((3, 4)))
    pairs = pair_labels(images, tmp_path / "gtFine")
    assert pairs == dict(zip(images, labels, strict=True))


def test_partial_pairing_warns_and_returns_the_subset(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    images = [_touch_image(tmp_path / "img" / f"f{i}.png") for i in range(4)]
    label = _save_ids(tmp_path / "ann" / "f2.png", np.zeros((3, 4)))
    with caplog.at_level(logging.WARNING, logger="edgeseg.labels"):
        pairs = pair_labels(images, tmp_path / "ann")
    assert pairs == {images[2]: label}
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "3 of 4 images have no label" in warnings[0].getMessage()
    assert "f0.png" in warnings[0].getMessage()


def test_no_pairs_is_a_config_error_with_an_example(tmp_path: Path) -> None:
    images = [
        _touch_image(tmp_path / "img" / "a_leftImg8bit.png"),
        _touch_image(tmp_path / "img" / "b_leftImg8bit.png"),
    ]
    _save_ids(tmp_path / "ann" / "unrelated.png", np.zeros((3, 4)))
    with pytest.raises(ConfigError) as info:
        pair_labels(images, tmp_path / "ann")
    msg = str(info.value)
    assert str(tmp_path / "ann") in msg
    assert "any of the 2 images" in msg
    assert "a_leftImg8bit.png" in msg
    assert "'a_leftImg8bit.*'" in msg and "'a_gtFine_labelIds.*'" in msg


def test_two_matching_labels_is_a_config_error_naming_both(tmp_path: Path) -> None:
    images = [_touch_image(tmp_path / "img" / "x.png")]
    first = _save_ids(tmp_path / "ann" / "a" / "x.png", np.zeros((3, 4)))
    second = _save_ids(tmp_path / "ann" / "b" / "x.png", np.zeros((3, 4)))
    with pytest.raises(ConfigError, match="2 label files") as info:
        pair_labels(images, tmp_path / "ann")
    assert str(first) in str(info.value) and str(second) in str(info.value)


def test_missing_label_dir_or_no_images_is_a_config_error(tmp_path: Path) -> None:
    images = [_touch_image(tmp_path / "img" / "x.png")]
    with pytest.raises(ConfigError, match="does not exist") as info:
        pair_labels(images, tmp_path / "nowhere")
    assert str(tmp_path / "nowhere") in str(info.value)
    with pytest.raises(ConfigError, match="is not a folder"):
        pair_labels(images, images[0])
    with pytest.raises(ConfigError, match="no images given"):
        pair_labels([], tmp_path / "img")


# --- real data -------------------------------------------------------------------------


@pytest.fixture
def camvid() -> Path:
    if not (CAMVID / "val").is_dir() or not (CAMVID / "valannot").is_dir():
        pytest.skip(f"CamVid val/ and valannot/ not found at {CAMVID}")
    return CAMVID


@pytest.mark.data
def test_real_camvid_labels(camvid: Path) -> None:
    from edgeseg.runtime.sources import list_images

    labels = list_images(camvid / "valannot")[:3]
    assert len(labels) == 3
    for path in labels:
        ids = read_label(path)
        assert ids.dtype == np.uint8
        assert ids.shape == (360, 480)
        assert 0 <= int(ids.min()) and int(ids.max()) <= 11
        assert len(np.unique(ids)) > 1  # a real scene, not a blank image


@pytest.mark.data
def test_real_camvid_pairs_fully(camvid: Path) -> None:
    from edgeseg.runtime.sources import list_images

    images = list_images(camvid / "val")
    assert len(images) == 101
    pairs = pair_labels(images, camvid / "valannot")
    assert len(pairs) == 101
    assert all(label.parent == camvid / "valannot" for label in pairs.values())
    assert all(label.name == image.name for image, label in pairs.items())
