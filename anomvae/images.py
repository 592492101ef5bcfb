"""Reading images (files, folders, glob patterns, ``.npy``/``.npz`` arrays)
into rows of float32 pixels in [0, 1], channels first.

Never touches torch. Errors are :class:`~anomvae.errors.DataError`, naming
the file at fault.
"""

import glob
import os

import numpy as np

from . import parquet
from .errors import DataError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
ARRAY_EXTENSIONS = (".npy", ".npz")
# Pillow modes read as one channel; anything else is read as RGB.
_GRAY_MODES = ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F")
# Pillow modes of more than 8 bits per pixel: unsigned 16-bit integers
# ("I;16*"), 32-bit signed integers ("I", which is also how Pillow before 10
# opens 16-bit PNGs) and 32-bit floats ("F"). Pillow's convert("L") clips
# them at 255 (16-bit levels from 255 up all turn white, floats in [0, 1]
# turn 0 or 1), so they are read in float instead.
_DEEP_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N", "F")
_MAX_16_BIT = 65535


def is_image_source(source):
    """True when ``source`` names images: a directory, a glob pattern, an
    image file, a ``.npy``/``.npz`` array, or a list of such paths. A file
    that exists is what its name says, even with ``*?[`` in the name
    (``batch[1].csv`` is a CSV file, not a pattern). Parquet data
    (:func:`anomvae.parquet.is_parquet_source`: a folder holding Parquet
    files, a pattern matching only such files) is not images."""
    if isinstance(source, (list, tuple)):
        return True
    text = str(source)
    if text == "-" or parquet.is_parquet_source(text):
        return False
    pattern = parquet.is_pattern(text)
    return os.path.isdir(text) or pattern or text.lower().endswith(IMAGE_EXTENSIONS + ARRAY_EXTENSIONS)


def list_images(source):
    """Image paths of ``source``, in a stable order.

    A directory is searched recursively for files with an image extension
    (sorted by path); a glob pattern (``**`` recurses) gives its matches,
    sorted; a single file or a list of paths is kept as given.
    """
    if isinstance(source, (list, tuple)):
        return [str(p) for p in source]
    text = str(source)
    if os.path.isdir(text):
        found = []
        for root, dirs, files in os.walk(text):
            dirs.sort()
            found += [os.path.join(root, f) for f in sorted(files) if f.lower().endswith(IMAGE_EXTENSIONS)]
        if not found:
            raise DataError(f"{text}: no image files ({', '.join(IMAGE_EXTENSIONS)}) in this folder")
        return found
    if parquet.is_pattern(text):
        found = sorted(p for p in glob.glob(text, recursive=True) if os.path.isfile(p))
        if not found:
            raise DataError(f"{text}: the pattern matches no file")
        return found
    if not os.path.isfile(text):
        raise DataError(f"{text}: no such file or folder")
    return [text]


def _exif_turns():
    from PIL import Image

    # EXIF orientation 2..8 -> the transpose that shows the image upright.
    t = Image.Transpose
    return {2: t.FLIP_LEFT_RIGHT, 3: t.ROTATE_180, 4: t.FLIP_TOP_BOTTOM, 5: t.TRANSPOSE,
            6: t.ROTATE_270, 7: t.TRANSVERSE, 8: t.ROTATE_90}


def _open_image(path):
    """The image at ``path``, decoded and turned upright as viewers show it
    (by its EXIF orientation, as phones and cameras record it)."""
    from PIL import Image

    try:
        with Image.open(path) as opened:
            opened.load()  # decode now: a truncated file fails here, not later
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(f"{path}: not a readable image ({exc})") from None
    try:
        orientation = opened.getexif().get(0x0112)
    except Exception:  # damaged metadata: the pixels are still good
        orientation = None
    turn = _exif_turns().get(orientation)
    return opened if turn is None else opened.transpose(turn)


def probe_image(path):
    """``(height, width, grayscale)`` of the image at ``path``; a palette
    image is grey when every colour it uses is."""
    image = _open_image(path)
    grey = image.mode in _GRAY_MODES
    if image.mode in ("P", "PA"):
        palette = np.asarray(image.getpalette("RGB") or [], dtype=np.int64).reshape(-1, 3)
        used = np.unique(np.asarray(image.convert("P") if image.mode == "PA" else image))
        # Fully transparent entries' colours are never seen: they do not count.
        transparency = image.info.get("transparency")
        if isinstance(transparency, int):
            clear = [transparency]
        elif isinstance(transparency, bytes):  # one alpha value per entry
            clear = np.flatnonzero(np.frombuffer(transparency, dtype=np.uint8) == 0)
        else:
            clear = []
        used = used[(used < len(palette)) & ~np.isin(used, clear)]
        grey = bool(len(used)) and bool((palette[used] == palette[used][:, :1]).all())
    return image.height, image.width, grey


def _deep_pixels(image, path):
    """A grey image of more than 8 bits (see ``_DEEP_MODES``) as float32
    levels in [0, 1], shape (H, W).

    Integer images are divided by 65535, the 16-bit white, whatever their
    mode: a 32-bit integer image must hold 16-bit values. Float images must
    already lie in [0, 1], as float arrays must. Other values raise
    :class:`DataError` rather than being clipped or rescaled per image,
    which would give the same scene different pixels in different files.
    """
    values = np.asarray(image)
    if not values.size:
        return values.astype(np.float32)
    if image.mode == "F":
        if not np.isfinite(values).all():
            raise DataError(f"{path}: floating-point pixels must lie in [0, 1]; this image holds NaN or "
                            "infinite values")
        if values.min() < 0 or values.max() > 1:
            raise DataError(f"{path}: floating-point pixels must lie in [0, 1]; this image has values "
                            f"from {values.min():g} to {values.max():g}")
        return values.astype(np.float32)
    if values.min() < 0 or values.max() > _MAX_16_BIT:
        raise DataError(f"{path}: integer pixels are read as 16-bit values, 0 to {_MAX_16_BIT}; this "
                        f"{image.mode!r} image has values from {values.min()} to {values.max()}")
    return values.astype(np.float32) / np.float32(_MAX_16_BIT)


def read_image(path, *, size, grayscale):
    """One image as float32 pixels in [0, 1], shape (C * H * W,), channels first.

    ``size`` is ``(height, width)``; an image of another size is resized with
    Pillow's bilinear filter (which averages over the covered source pixels
    when shrinking), stretching it if its aspect ratio differs. Colour images
    are converted to grey with ITU-R 601-2 luma weights under
    ``grayscale=True``; grey ones are repeated into three channels otherwise;
    an alpha channel is dropped.

    8-bit images are divided by 255. Grey images of higher depth keep their
    precision: 16-bit and 32-bit integer ones are divided by 65535, float
    ones are kept as they are, and both are resized in float. Values outside
    0..65535 or [0, 1] raise :class:`DataError` naming the file.
    """
    from PIL import Image

    image = _open_image(path)
    if image.mode in _DEEP_MODES:
        return _array_pixels(_deep_pixels(image, path)[None, None], path, size, grayscale)[0]
    image = image.convert("L" if grayscale else "RGB")
    height, width = size
    if (image.height, image.width) != (height, width):
        image = image.resize((width, height), Image.Resampling.BILINEAR)
    pixels = np.asarray(image, dtype=np.float32) / 255.0
    if pixels.ndim == 3:
        pixels = pixels.transpose(2, 0, 1)
    return pixels.reshape(-1)


def _array_images(path):
    """Load a ``.npy``/``.npz`` file of images as an (n, C, H, W) array
    (memory-mapped for ``.npy``) without converting the values yet."""
    try:
        if str(path).lower().endswith(".npz"):
            with np.load(path) as archive:
                keys = list(archive.keys())
                key = keys[0] if len(keys) == 1 else next((k for k in ("images", "X") if k in keys), None)
                if key is None:
                    raise DataError(f"{path}: holds arrays {keys}; name the images 'images' or 'X'")
                array = archive[key]
        else:
            array = np.load(path, mmap_mode="r")
    except DataError:
        raise
    except (OSError, ValueError, EOFError) as exc:
        raise DataError(f"{path}: not a readable numpy array file ({exc})") from None
    if array.ndim == 3:
        return array[:, None]
    if array.ndim == 4:
        if array.shape[-1] in (1, 3):
            return array.transpose(0, 3, 1, 2)
        if array.shape[1] in (1, 3):
            return array
    raise DataError(
        f"{path}: an array of shape {array.shape} is not images; expected (n, H, W), "
        "(n, H, W, C) or (n, C, H, W) with C = 1 or 3"
    )


def _array_pixels(block, path, size, grayscale):
    """Rows of an (n, C, H, W) block as float32 in [0, 1], resized and
    converted like :func:`read_image`."""
    from PIL import Image

    if block.dtype == np.uint8:
        block = block.astype(np.float32) / 255.0
    elif block.dtype.kind == "u" and block.dtype.itemsize == 2:  # uint16 of either byte order
        block = block.astype(np.float32) / np.float32(_MAX_16_BIT)
    else:
        block = np.asarray(block, dtype=np.float32)
        if block.size and not (np.isfinite(block).all() and block.min() >= 0 and block.max() <= 1):
            raise DataError(f"{path}: pixel values must be uint8, uint16 or floats in [0, 1]")
    if grayscale and block.shape[1] == 3:
        block = np.tensordot(np.float32([0.299, 0.587, 0.114]), block, axes=([0], [1]))[:, None]
    elif not grayscale and block.shape[1] == 1:
        block = np.repeat(block, 3, axis=1)
    height, width = size
    if block.shape[2:] != (height, width):
        block = np.stack([
            np.stack([np.asarray(Image.fromarray(channel, mode="F").resize((width, height), Image.Resampling.BILINEAR))
                      for channel in image])
            for image in block
        ])
    return np.clip(block, 0.0, 1.0).reshape(len(block), -1).astype(np.float32)


def probe_images(source):
    """``(height, width, grayscale)`` of the first image of ``source``: the
    size and colour mode an image model gets when none is given."""
    if _is_array_file(source):
        array = _array_images(str(source))
        if not len(array):
            raise DataError(f"{source}: the array holds no image")
        return array.shape[2], array.shape[3], array.shape[1] == 1
    return probe_image(list_images(source)[0])


def _is_array_file(source):
    return not isinstance(source, (list, tuple)) and str(source).lower().endswith(ARRAY_EXTENSIONS)


def iter_images(source, *, size, grayscale, batch_size=256, skip_unreadable=False):
    """Read images in batches, so that a large folder never sits in memory.

    Parameters
    ----------
    source : str or list of str
        A folder (searched recursively), a glob pattern, an image file, a
        list of image files, or a ``.npy``/``.npz`` array of images.
    size : (int, int)
        Height and width every image is resized to (see :func:`read_image`).
    grayscale : bool
        One channel when True, RGB otherwise.
    batch_size : int, default=256
    skip_unreadable : bool, default=False
        An unreadable or truncated image raises :class:`DataError` naming
        it; with True it is reported in ``problems`` instead.

    Yields
    ------
    paths : list of str
        One per image; ``FILE[i]`` for image ``i`` of an array file.
    pixels : ndarray of shape (len(paths), C * H * W), dtype float32
        Values in [0, 1], channels first; zeros for a row with a problem.
    problems : list of (str or None)
        Why each image could not be read, or None.
    """
    channels = 1 if grayscale else 3
    width = channels * size[0] * size[1]
    if _is_array_file(source):
        array = _array_images(str(source))
        if not len(array):
            raise DataError(f"{source}: the array holds no image")
        for start in range(0, len(array), batch_size):
            block = _array_pixels(array[start:start + batch_size], source, size, grayscale)
            yield [f"{source}[{start + i}]" for i in range(len(block))], block, [None] * len(block)
        return
    paths = list_images(source)
    for start in range(0, len(paths), batch_size):
        names = paths[start:start + batch_size]
        pixels = np.zeros((len(names), width), dtype=np.float32)
        problems = [None] * len(names)
        for i, path in enumerate(names):
            try:
                pixels[i] = read_image(path, size=size, grayscale=grayscale)
            except DataError as exc:
                if not skip_unreadable:
                    raise
                problems[i] = str(exc).removeprefix(f"{path}: ")
        yield names, pixels, problems


def read_images(source, *, size, grayscale):
    """All images of ``source`` as one (n, C * H * W) float32 array and their
    paths; for training sets. Unreadable images raise :class:`DataError`."""
    paths, blocks = [], []
    for names, pixels, _ in iter_images(source, size=size, grayscale=grayscale):
        paths += names
        blocks.append(pixels)
    return paths, np.concatenate(blocks)
