"""Image readers of anomvae.data: folders, globs, arrays, sizes, bad files."""

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image, features

from anomvae import data as readers
from anomvae.data import DataError


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
    (np.full((3, 4, 4), 2.0), "uint8 or floats in \\[0, 1\\]"),
    (np.zeros(4), "is not images"),
])
def test_bad_arrays_are_named(tmp_path, array, message):
    np.save(tmp_path / "bad.npy", array)
    with pytest.raises(DataError, match=message):
        readers.read_images(str(tmp_path / "bad.npy"), size=(4, 4), grayscale=True)


def test_image_sources_are_told_from_csv(folder):
    assert readers.is_image_source(str(folder))
    assert readers.is_image_source("shots/*.png") and readers.is_image_source("x.npz")
    assert not readers.is_image_source("data.csv") and not readers.is_image_source("-")


def test_data_module_never_imports_torch():
    code = "import anomvae.data, sys; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
