"""Reading images: faithful RGB conversion, a start-up check of every listed file, errors that name the file.

Modes and what becomes of them (datasets/README.md says the same):

- 8-bit modes (``1``, ``L``, ``P``, ``RGB``, ``RGBA``, ``LA``, ``PA``, ``CMYK``, ``YCbCr``, ``HSV``, ...): PIL's
  ``convert("RGB")``, exactly what open_clip's own preprocessing does (alpha is dropped, not composited).
- 16-bit greyscale (``I;16``, ``I;16L``, ``I;16B``, ``I;16N``) and 32-bit integer ``I`` with values in 0..65535:
  scaled from the 16-bit range to 8 bits (value / 257, rounded), then grey to RGB. PIL's own ``convert`` clips
  such values at 255 and turns most 16-bit images white.
- Refused by name: ``I`` with values outside 0..65535, 32-bit float ``F`` (no standard range), and any mode PIL
  cannot convert to RGB (``LAB``, multi-channel 16-bit): convert such files to 8- or 16-bit first.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterable, Optional, Union

import numpy as np
from PIL import Image

from vlprompt.errors import UnreadableImageError

SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
REFUSED_MODES = {"F": "32-bit float pixels have no standard range", "LAB": "PIL cannot convert LAB to RGB"}
#: Readers for the start-up check; the work is mostly waiting for the disk, so threads help despite the GIL.
CHECK_THREADS = min(16, (os.cpu_count() or 1) * 4)
#: Files per task of the start-up check.
CHECK_CHUNK = 512
#: Errors PIL raises for files it cannot read.
#: What counts as an image file where a folder is read without a list (unlabelled images, image-caption pairs).
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
PIL_ERRORS = (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError)


def to_rgb(image: Image.Image, path: Union[str, Path]) -> Image.Image:
    """``image`` as an 8-bit RGB image, faithfully, or :class:`UnreadableImageError` naming ``path``."""
    mode = image.mode
    if mode in REFUSED_MODES:
        raise UnreadableImageError(f"image {str(path)!r} has mode {mode} ({REFUSED_MODES[mode]}); convert it to an 8- or "
                                   "16-bit image")
    if mode in SIXTEEN_BIT_MODES or mode == "I":
        values = np.asarray(image)
        if mode == "I" and values.size and (values.min() < 0 or values.max() > 65535):
            raise UnreadableImageError(f"image {str(path)!r} has 32-bit integer pixels outside 0..65535; convert it to "
                                       "an 8- or 16-bit image")
        grey = np.rint(values.astype(np.float32) / 257.0).astype(np.uint8)
        return Image.fromarray(grey, mode="L").convert("RGB")
    try:
        return image.convert("RGB")
    except ValueError as err:
        raise UnreadableImageError(f"image {str(path)!r} has mode {mode}, which cannot be converted to RGB ({err}); "
                                   "convert it to an 8-bit RGB or greyscale image") from None


def read_rgb(path: Union[str, Path], listed_in: str = "the split file") -> Image.Image:
    """Open, decode and convert one image; any failure names the file (and ``listed_in``, what lists it)."""
    try:
        with Image.open(path) as image:
            return to_rgb(image, path)
    except UnreadableImageError:
        raise
    except PIL_ERRORS as err:
        raise UnreadableImageError(f"image {str(path)!r} cannot be read ({type(err).__name__}: {err}); replace it or "
                                   f"remove it from {listed_in}") from None


#: File signatures and end markers of the two formats nearly every data set uses; both hold only modes
#: :func:`to_rgb` converts, so a file with both marks needs no decoder at start-up.
JPEG_START, JPEG_END = b"\xff\xd8\xff", b"\xff\xd9"
PNG_START, PNG_END = b"\x89PNG\r\n\x1a\n", b"IEND"


def check_image(path: Path) -> Optional[str]:
    """Why ``path`` cannot be used as an image, or None.

    A JPEG or PNG that starts with its signature and ends with its end marker passes on those bytes alone (a
    file cut short has no end marker). Any other file goes to PIL: its header (format, mode) for other formats,
    a full decode for a JPEG or PNG whose end marker is missing (cut short, or with the trailing bytes some
    cameras write, which PIL reads fine).
    """
    try:
        with open(path, "rb") as stream:
            head = stream.read(len(PNG_START))
            stream.seek(0, os.SEEK_END)
            stream.seek(max(stream.tell() - 12, 0))
            tail = stream.read()
    except OSError as err:
        return f"{type(err).__name__}: {err.strerror or err}"
    if (head.startswith(JPEG_START) and tail.endswith(JPEG_END)) or (head.startswith(PNG_START) and PNG_END in tail):
        return None
    try:
        with Image.open(path) as image:
            if image.mode in REFUSED_MODES:
                return f"mode {image.mode} ({REFUSED_MODES[image.mode]})"
            if image.format in ("JPEG", "PNG"):
                image.load()
    except PIL_ERRORS as err:
        return f"{type(err).__name__}: {err}"
    return None


def check_many(paths: list[Path]) -> list[Optional[str]]:
    """:func:`check_image` of every path, in order; threads over chunks, so a slow (network) disk's latency
    overlaps while a fast local one is not slowed by one task per file."""
    chunks = [paths[i:i + CHECK_CHUNK] for i in range(0, len(paths), CHECK_CHUNK)]
    if len(chunks) <= 1:
        return [check_image(path) for path in paths]
    with ThreadPoolExecutor(min(CHECK_THREADS, len(chunks))) as pool:
        return [why for chunk in pool.map(lambda chunk: [check_image(p) for p in chunk], chunks) for why in chunk]


def check_images(image_dir: Path, relpaths: Iterable[str], what: str, listed_in: str = "the split file") -> None:
    """Refuse, before any training, a listed file that is missing or cannot be read as an image (``listed_in``: what
    lists them, for the message)."""
    relpaths = list(relpaths)
    missing = [p for p in relpaths if not (image_dir / p).is_file()]
    if missing:
        raise UnreadableImageError(f"{len(missing)} {what} images listed in {listed_in} are missing under "
                                   f"{str(image_dir)!r} (first: {missing[0]}); see datasets/README.md")
    problems = [(p, why) for p, why in zip(relpaths, check_many([image_dir / p for p in relpaths])) if why]
    if problems:
        shown = "; ".join(f"{p}: {why}" for p, why in problems[:3])
        raise UnreadableImageError(f"{len(problems)} {what} images under {str(image_dir)!r} cannot be read ({shown}"
                                   f"{'; ...' if len(problems) > 3 else ''}); replace them or remove them from "
                                   f"{listed_in}")
