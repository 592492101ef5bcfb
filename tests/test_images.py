"""anomvae.images, the image readers: folders, globs, arrays, sizes, bit depths, bad files."""

import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image, features

from anomvae import images as readers
from anomvae.errors import DataError


def save_gray(path, pixels):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(pixels, dtype=np.uint8), mode="L").save(path)
    return path


@pytest.fixture
def folder(tmp_path):
    rng = np.random.RandomState(0)
    save_gray(tmp_path / "b.png", rng.randint(0, 256, (4, 6)))
    save_gray(tmp_path / "a.png", rng.randint(0, 256, (4, 6)))
    save_gray(tmp_path / "sub" / "c.png", rng.randint(0, 256, (4, 6)))
    (tmp_path / "notes.txt").write_text("not an image")
    return tmp_path


def test_folders_are_searched_recursively_in_sorted_order(folder):
    names = [p.removeprefix(str(folder)) for p in readers.list_images(str(folder))]
    assert names == ["/a.png", "/b.png", "/sub/c.png"]


def test_glob_patterns(folder):
    assert len(readers.list_images(str(folder / "**" / "*.png"))) == 3
    assert len(readers.list_images(str(folder / "*.png"))) == 2
    with pytest.raises(DataError, match="matches no file"):
        readers.list_images(str(folder / "*.jpg"))


def test_empty_folder_is_an_error(tmp_path):
    (tmp_path / "readme.txt").write_text("x")
    with pytest.raises(DataError, match="no image files"):
        readers.list_images(str(tmp_path))


def test_gray_pixels_scaled_to_unit_range_row_major(tmp_path):
    pixels = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    path = save_gray(tmp_path / "x.png", pixels)
    row = readers.read_image(str(path), size=(3, 4), grayscale=True)
    assert row.dtype == np.float32
    np.testing.assert_allclose(row, pixels.reshape(-1) / 255.0, rtol=1e-6)
    rgb = readers.read_image(str(path), size=(3, 4), grayscale=False)
    np.testing.assert_allclose(rgb, np.tile(pixels.reshape(-1) / 255.0, 3), rtol=1e-6)


def test_colour_images_are_channels_first(tmp_path):
    pixels = np.zeros((2, 3, 3), dtype=np.uint8)
    pixels[..., 0], pixels[..., 2] = 255, 51
    Image.fromarray(pixels, mode="RGB").save(tmp_path / "c.png")
    row = readers.read_image(str(tmp_path / "c.png"), size=(2, 3), grayscale=False)
    np.testing.assert_allclose(row.reshape(3, 2, 3)[:, 0, 0], [1.0, 0.0, 0.2], rtol=1e-6)
    gray = readers.read_image(str(tmp_path / "c.png"), size=(2, 3), grayscale=True)
    assert gray.shape == (6,) and 0.3 < gray[0] < 0.33  # 0.299 * 255 + 0.114 * 51, in 8 bits


def test_mixed_sizes_are_resized(tmp_path):
    save_gray(tmp_path / "small.png", np.full((4, 4), 200))
    save_gray(tmp_path / "large.png", np.full((16, 10), 200))
    paths, X = readers.read_images(str(tmp_path), size=(4, 4), grayscale=True)
    assert X.shape == (2, 16)
    np.testing.assert_allclose(X, 200 / 255.0, rtol=1e-5)


@pytest.mark.parametrize("fmt", ["JPEG", "BMP", "TIFF", "WEBP"])
def test_other_formats(tmp_path, fmt):
    if fmt == "WEBP" and not features.check("webp"):
        pytest.skip("this Pillow has no WebP support")
    path = tmp_path / f"x.{fmt.lower()}"
    Image.fromarray(np.full((5, 5), 128, dtype=np.uint8), mode="L").save(path, format=fmt)
    (batch,) = readers.iter_images(str(tmp_path), size=(5, 5), grayscale=True)
    assert batch[0] == [str(path)]
    np.testing.assert_allclose(batch[1], 128 / 255.0, atol=0.02)


def test_truncated_image_is_named_or_reported(folder):
    whole = (folder / "a.png").read_bytes()
    (folder / "a.png").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(DataError, match="a.png: not a readable image"):
        list(readers.iter_images(str(folder), size=(4, 6), grayscale=True))
    batches = list(readers.iter_images(str(folder), size=(4, 6), grayscale=True, batch_size=2,
                                       skip_unreadable=True))
    assert [len(b[0]) for b in batches] == [2, 1]
    problems = [p for b in batches for p in b[2]]
    assert problems[0].startswith("not a readable image") and problems[1:] == [None, None]
    assert not batches[0][1][0].any() and batches[0][1][1].any()


@pytest.mark.parametrize("orientation, turn", [(6, Image.Transpose.ROTATE_270), (3, Image.Transpose.ROTATE_180)])
def test_exif_orientation_is_applied(tmp_path, orientation, turn):
    # A photo stored sideways with an EXIF tag saying how to show it: read as shown.
    stored = Image.fromarray((np.arange(32).reshape(4, 8) * 8).astype(np.uint8), mode="L")
    exif = Image.Exif()
    exif[0x0112] = orientation
    stored.save(tmp_path / "tagged.png", exif=exif)
    shown = stored.transpose(turn)
    assert readers.probe_image(tmp_path / "tagged.png") == (shown.height, shown.width, True)
    pixels = readers.read_image(tmp_path / "tagged.png", size=(shown.height, shown.width), grayscale=True)
    np.testing.assert_array_equal(pixels, np.asarray(shown, dtype=np.float32).reshape(-1) / 255)


def test_a_palette_image_is_grey_when_its_colours_are(tmp_path):
    levels = (np.arange(16).reshape(4, 4) * 16).astype(np.uint8)
    Image.fromarray(levels, mode="L").convert("P").save(tmp_path / "grey.png")
    colour = Image.fromarray(np.stack([levels, levels[::-1], levels.T], axis=-1), mode="RGB")
    colour.convert("P", palette=Image.Palette.ADAPTIVE).save(tmp_path / "colour.png")
    assert Image.open(tmp_path / "grey.png").mode == Image.open(tmp_path / "colour.png").mode == "P"
    assert readers.probe_image(tmp_path / "grey.png") == (4, 4, True)
    assert readers.probe_image(tmp_path / "colour.png") == (4, 4, False)
    # A grey palette whose transparent entry is magenta: that colour is never seen.
    indices = np.arange(16, dtype=np.uint8).reshape(4, 4)
    indices[0, 0] = 255
    holed = Image.fromarray(indices, mode="P")
    holed.putpalette([v for i in range(255) for v in (i, i, i)] + [255, 0, 255])
    holed.save(tmp_path / "holed.png", transparency=255)
    assert readers.probe_image(tmp_path / "holed.png") == (4, 4, True)
    holed.save(tmp_path / "magenta.png")  # the same, the magenta pixel visible
    assert readers.probe_image(tmp_path / "magenta.png") == (4, 4, False)


def test_decompression_bomb_is_named_or_reported(tmp_path, monkeypatch):
    # Pillow refuses images over twice MAX_IMAGE_PIXELS; lowered here so the "bomb" is small.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    Image.new("L", (20, 20)).save(tmp_path / "bomb.png")
    Image.new("L", (5, 5)).save(tmp_path / "small.png")
    with pytest.raises(DataError, match=r"bomb\.png: not a readable image .*decompression bomb"):
        readers.read_image(tmp_path / "bomb.png", size=(5, 5), grayscale=True)
    batches = list(readers.iter_images(str(tmp_path), size=(5, 5), grayscale=True, skip_unreadable=True))
    problems = [p for _, _, batch_problems in batches for p in batch_problems]
    assert sum(p is not None for p in problems) == 1 and len(problems) == 2


def test_array_layouts_give_the_same_rows(tmp_path):
    rng = np.random.RandomState(0)
    images = rng.randint(0, 256, (5, 3, 4, 6)).astype(np.uint8)  # (n, C, H, W)
    expected = images.reshape(5, -1) / 255.0
    np.save(tmp_path / "nchw.npy", images)
    np.save(tmp_path / "nhwc.npy", images.transpose(0, 2, 3, 1))
    np.savez(tmp_path / "arrays.npz", images=images, labels=np.arange(5))
    for name in ("nchw.npy", "nhwc.npy", "arrays.npz"):
        paths, X = readers.read_images(str(tmp_path / name), size=(4, 6), grayscale=False)
        np.testing.assert_allclose(X, expected, rtol=1e-6, err_msg=name)
        assert paths[2] == f"{tmp_path / name}[2]"
    np.save(tmp_path / "gray.npy", images[:, 0].astype(np.float32) / 255.0)
    assert readers.probe_images(str(tmp_path / "gray.npy")) == (4, 6, True)
    _, X = readers.read_images(str(tmp_path / "gray.npy"), size=(2, 3), grayscale=True)
    assert X.shape == (5, 6)


@pytest.mark.parametrize("array, message", [
    (np.zeros((3, 5, 5, 5)), "is not images"),
    (np.full((3, 4, 4), 2.0), "uint8, uint16 or floats in \\[0, 1\\]"),
    (np.zeros(4), "is not images"),
])
def test_bad_arrays_are_named(tmp_path, array, message):
    np.save(tmp_path / "bad.npy", array)
    with pytest.raises(DataError, match=message):
        readers.read_images(str(tmp_path / "bad.npy"), size=(4, 4), grayscale=True)


# 16-bit levels that differ only in their low byte: an 8-bit reading makes
# each pair equal.
LOW_BYTE = np.array([[256, 257, 258, 511], [65280, 65281, 65535, 0]], dtype=np.uint16)


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
def test_16_bit_images_keep_their_low_byte(tmp_path, fmt):
    image = Image.fromarray(LOW_BYTE)
    assert image.mode == "I;16"
    path = tmp_path / f"deep.{fmt.lower()}"
    image.save(path, format=fmt)
    assert readers.probe_image(str(path)) == (2, 4, True)
    row = readers.read_image(str(path), size=(2, 4), grayscale=True)
    assert row.dtype == np.float32
    np.testing.assert_allclose(row, LOW_BYTE.reshape(-1) / 65535.0, rtol=0, atol=1e-6)
    assert row[0] < row[1] < row[2] and row[4] < row[5]
    rgb = readers.read_image(str(path), size=(2, 4), grayscale=False)
    np.testing.assert_allclose(rgb, np.tile(LOW_BYTE.reshape(-1) / 65535.0, 3), rtol=0, atol=1e-6)


def test_big_endian_16_bit_tiff(tmp_path):
    image = Image.frombytes("I;16B", (4, 2), LOW_BYTE.astype(">u2").tobytes())
    image.save(tmp_path / "be.tif")
    assert Image.open(tmp_path / "be.tif").mode == "I;16B"
    row = readers.read_image(str(tmp_path / "be.tif"), size=(2, 4), grayscale=True)
    np.testing.assert_allclose(row, LOW_BYTE.reshape(-1) / 65535.0, rtol=0, atol=1e-6)


def test_16_bit_images_are_resized_in_float(tmp_path):
    # 300 / 65535 read at 8 bits would be 1 / 255, 15% less.
    Image.fromarray(np.full((8, 6), 300, dtype=np.uint16)).save(tmp_path / "flat.png")
    row = readers.read_image(str(tmp_path / "flat.png"), size=(4, 3), grayscale=False)
    assert row.shape == (36,)
    np.testing.assert_allclose(row, 300 / 65535.0, rtol=0, atol=1e-6)
    ramp = np.arange(256, 256 + 8 * 8, dtype=np.uint16).reshape(8, 8)
    Image.fromarray(ramp).save(tmp_path / "ramp.png")
    small = readers.read_image(str(tmp_path / "ramp.png"), size=(4, 4), grayscale=True) * 65535
    assert len(np.unique(np.round(small, 3))) == 16  # every level distinct, all within one 8-bit step
    assert 256 <= small.min() and small.max() <= 256 + 63


def test_32_bit_integer_and_float_tiffs(tmp_path):
    Image.fromarray(LOW_BYTE.astype(np.int32)).save(tmp_path / "int.tif")
    Image.fromarray(np.float32([[0.0, 0.25], [1e-5, 1.0]])).save(tmp_path / "float.tif")
    assert Image.open(tmp_path / "int.tif").mode == "I" and Image.open(tmp_path / "float.tif").mode == "F"
    row = readers.read_image(str(tmp_path / "int.tif"), size=(2, 4), grayscale=True)
    np.testing.assert_allclose(row, LOW_BYTE.reshape(-1) / 65535.0, rtol=0, atol=1e-6)
    row = readers.read_image(str(tmp_path / "float.tif"), size=(2, 2), grayscale=True)
    np.testing.assert_array_equal(row, np.float32([0.0, 0.25, 1e-5, 1.0]))


@pytest.mark.parametrize("pixels, message", [
    (np.int32([[0, 70000]]), "read as 16-bit values, 0 to 65535; this 'I' image has values from 0 to 70000"),
    (np.int32([[-3, 5]]), "from -3 to 5"),
    (np.float32([[0.5, 2.0]]), "floating-point pixels must lie in \\[0, 1\\]; this image has values from 0.5 to 2"),
    (np.float32([[0.5, np.nan]]), "holds NaN or infinite values"),
])
def test_deep_pixels_out_of_range_are_named(tmp_path, pixels, message):
    path = tmp_path / "odd.tif"
    Image.fromarray(pixels).save(path)
    with pytest.raises(DataError, match=f"^{re.escape(str(path))}: .*{message}"):
        readers.read_image(str(path), size=(1, 2), grayscale=True)
    ((names, _, problems),) = readers.iter_images(str(path), size=(1, 2), grayscale=True, skip_unreadable=True)
    assert names == [str(path)] and problems[0].startswith(("integer", "floating"))


def test_uint16_arrays_are_scaled_by_65535(tmp_path):
    np.save(tmp_path / "deep.npy", LOW_BYTE[None])
    np.save(tmp_path / "swapped.npy", LOW_BYTE[None].astype(">u2"))
    for name in ("deep.npy", "swapped.npy"):
        _, X = readers.read_images(str(tmp_path / name), size=(2, 4), grayscale=True)
        np.testing.assert_allclose(X[0], LOW_BYTE.reshape(-1) / 65535.0, rtol=0, atol=1e-6, err_msg=name)


def test_image_sources_are_told_from_csv(folder):
    assert readers.is_image_source(str(folder))
    assert readers.is_image_source("shots/*.png") and readers.is_image_source("x.npz")
    assert not readers.is_image_source("data.csv") and not readers.is_image_source("-")


@pytest.mark.parametrize("name", ["batch[1].csv", "what?.csv", "a*.csv"])
def test_a_file_named_with_glob_characters_is_what_its_name_says(tmp_path, name):
    assert readers.is_image_source(str(tmp_path / name))  # not there: a pattern
    (tmp_path / name).write_text("a,b\n1,2\n")
    assert not readers.is_image_source(str(tmp_path / name))
    (tmp_path / "shot[1].png").write_bytes(b"")
    assert readers.is_image_source(str(tmp_path / "shot[1].png"))


def test_readers_never_import_torch():
    code = "import anomvae.images, anomvae.tables, sys; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
