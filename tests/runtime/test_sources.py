"""Reading image files: 16-bit images scaled (not saturated), and every unreadable file an InputError."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgeseg.errors import InputError
from edgeseg.runtime import sources
from edgeseg.runtime.sources import read_image

# every 16-bit level that matters: the ends, the 8-bit steps (257 * k) and values between them
LEVELS = np.array([0, 255, 256, 257, 32767, 32768, 257 * 200, 257 * 200 + 256, 65279, 65280, 65535], np.uint16)
EXPECTED = np.array([0, 0, 1, 1, 127, 128, 200, 201, 254, 255, 255], np.uint8)  # the high byte


def test_16bit_grayscale_png_from_pillow_is_scaled_not_saturated(tmp_path: Path) -> None:
    path = tmp_path / "depth.png"
    image = Image.fromarray(LEVELS.reshape(1, -1))
    assert image.mode == "I;16"
    image.save(path)
    got = read_image(path)
    assert got.dtype == np.uint8 and got.shape == (1, LEVELS.size)
    np.testing.assert_array_equal(got[0], EXPECTED)  # was 255 for every level above 255


def test_16bit_png_from_opencv_gray_and_colour_read_alike(tmp_path: Path) -> None:
    cv2 = pytest.importorskip("cv2", reason="needs opencv-python-headless (video extra)")
    gray = np.tile(LEVELS, (4, 1))
    colour = np.stack([gray, gray[:, ::-1], np.full_like(gray, 40000)], axis=2)  # RGB
    assert cv2.imwrite(str(tmp_path / "gray.png"), gray)
    if not cv2.imwrite(str(tmp_path / "colour.png"), np.ascontiguousarray(colour[:, :, ::-1])):
        pytest.skip("this OpenCV does not write 16-bit colour PNG files")
    np.testing.assert_array_equal(read_image(tmp_path / "gray.png"), np.tile(EXPECTED, (4, 1)))
    rgb = read_image(tmp_path / "colour.png")
    assert rgb.dtype == np.uint8 and rgb.shape == (4, LEVELS.size, 3)
    np.testing.assert_array_equal(rgb[:, :, 0], read_image(tmp_path / "gray.png"))  # one rule for both
    np.testing.assert_array_equal(rgb[:, :, 1], np.tile(EXPECTED[::-1], (4, 1)))
    assert (rgb[:, :, 2] == 40000 >> 8).all()


def test_decompression_bomb_is_an_input_error_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "bomb.png"
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(path)
    data = bytearray(path.read_bytes())  # claim 20000 x 20000 pixels in the header
    data[16:24] = struct.pack(">II", 20000, 20000)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    path.write_bytes(bytes(data))
    with pytest.raises(InputError, match=r"bomb\.png: image too large to decode safely \(Image size"):
        read_image(path)


def test_any_decoder_error_is_an_input_error_naming_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "odd.tif"
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(path)

    def broken(*args: object, **kwargs: object) -> Image.Image:
        raise struct.error("unpack requires a buffer of 4 bytes")  # as a malformed TIFF tag can

    monkeypatch.setattr(sources.Image, "open", broken)
    with pytest.raises(InputError, match=r"odd\.tif: not a readable image \(error: unpack requires a buffer"):
        read_image(path)


def test_missing_and_broken_files(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"nope\.png: no such image file"):
        read_image(tmp_path / "nope.png")
    (tmp_path / "broken.png").write_bytes(b"broken")
    with pytest.raises(InputError, match=r"broken\.png: not a readable image \(cannot identify"):
        read_image(tmp_path / "broken.png")
