"""The one way kpnb finds and opens an export's images: `find_image` and `load_image`.

The path stays inside the export's image root; the pixels are as CVAT shows them (EXIF
orientation applied, RGB); the pixel count is checked from the header before decoding. PIL,
not ``torchvision.io.decode_image``: only PIL applies EXIF orientation and reads every mode.
"""

from __future__ import annotations

import logging
import os
import re
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from kpnb.errors import KpnbError
from kpnb.io import env_number, name_problem

__all__ = ["ImageError", "MAX_PIXELS", "find_image", "load_image", "image_size", "max_pixels"]

log = logging.getLogger(__name__)

#: The default pixel limit (width x height): 64 megapixels, an 8k x 8k photo.
MAX_PIXELS = 64_000_000

# Frames of CVAT video tasks carry no extension in the XML; CVAT writes them as .PNG.
_FRAME_EXTENSIONS = (".PNG", ".png", ".jpg", ".jpeg", ".JPG")
#: What PIL raises for a broken file (a TypeError: a TIFF tag of the wrong type; the bomb
#: error: a frame larger than the header said).
_BROKEN = (OSError, SyntaxError, ValueError, TypeError, Image.DecompressionBombError)


class ImageError(KpnbError):
    """An image file cannot be used: outside its export, too large or undecodable."""


def max_pixels() -> int:
    """The pixel limit in force: ``$KPNB_MAX_PIXELS`` if set, else `MAX_PIXELS`."""
    return env_number("KPNB_MAX_PIXELS", MAX_PIXELS, int, ImageError)


def find_image(root: str | os.PathLike, name: str, subset: str | None = None) -> Path | None:
    """Where an export keeps image `name`: ``images/<subset>/``, ``images/``, or `root`;
    None when no such file exists. Video frames (``frame_000012``) are found with CVAT's
    extensions. An `ImageError` when `name` or `subset` leads outside `root` (``..``, an
    absolute path, a symlink out of it): an export may only name its own files.
    """
    root = Path(root).resolve()
    name = str(name).replace("\\", "/")
    subset = subset if isinstance(subset, str) and subset else None  # NaN: no subset
    where = f" in subset {subset!r}" if subset else ""
    if problem := name_problem(name) or (subset and name_problem(subset)):
        raise ImageError(f"image {name!r}{where}: the name {problem}; fix it in the annotations")
    bases = [root / "images" / subset] if subset else []
    bases += [root / "images", root]
    names = [name] if Path(name).suffix else [name] + [name + ext for ext in _FRAME_EXTENSIONS]
    odd = None  # the first thing by that name that is not a file
    for base in bases:
        for candidate in names:
            path = base / candidate
            if not path.resolve().is_relative_to(root):
                raise ImageError(
                    f"image {name!r}{where} leads outside the export's image root {root}: "
                    "image names must be relative paths inside the export; fix the name in the "
                    "annotations or pass the right image root"
                )
            if path.is_file():
                return path
            if odd is None and path.exists():
                odd = path
    if odd is not None:
        kind = "a folder" if odd.is_dir() else "not a regular file (a FIFO, socket or device)"
        raise ImageError(f"image {name!r}{where}: {odd} is {kind}, not an image file")
    return None


def _too_large(path: Path, limit: int, size: str) -> ImageError:
    return ImageError(
        f"{path}: the image{size} has more than {limit:,} pixels; raise the limit with "
        "KPNB_MAX_PIXELS=<pixels> if the file is trusted"
    )


def _open(path: Path, limit: int | None) -> Image.Image:
    """`path` opened (header only) after checking its pixel count against `limit`."""
    limit = max_pixels() if limit is None else limit
    # PIL's own bomb limit, checked while opening and decoding, is raised to kpnb's so that
    # KPNB_MAX_PIXELS takes effect; never lowered (restoring it would race between threads)
    if Image.MAX_IMAGE_PIXELS is not None and Image.MAX_IMAGE_PIXELS < limit:
        log.debug(
            "raising PIL's Image.MAX_IMAGE_PIXELS from %d to %d", Image.MAX_IMAGE_PIXELS, limit
        )
        Image.MAX_IMAGE_PIXELS = limit
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(path)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # PIL's limit is at least kpnb's here, so the image is over kpnb's limit too
        pixels = re.search(r"\((\d+) pixels\)", str(exc))
        raise _too_large(path, limit, f" ({int(pixels[1]):,} pixels)" if pixels else "") from None
    except _BROKEN as exc:
        raise ImageError(f"{path}: cannot read the image ({exc})") from None
    if img.width * img.height > limit:
        img.close()
        raise _too_large(path, limit, f" ({img.width}x{img.height})")
    return img


def image_size(path: str | os.PathLike, *, limit: int | None = None) -> tuple[int, int]:
    """``(width, height)`` as CVAT shows the image (after EXIF rotation), from the header.
    An `ImageError` when the file cannot be read or has more than `limit` pixels (default
    `max_pixels()`)."""
    path = Path(path)
    with _open(path, limit) as img:
        w, h = img.size
        try:
            orientation = img.getexif().get(0x0112, 1)
        except _BROKEN as exc:
            raise ImageError(f"{path}: cannot read the image ({exc})") from None
    return (h, w) if orientation in (5, 6, 7, 8) else (w, h)


def load_image(
    path: str | os.PathLike,
    *,
    limit: int | None = None,
    expect: tuple[int, int] | None = None,
    rescale: bool = False,
) -> np.ndarray:
    """The image at `path` as a uint8 ``[H, W, 3]`` RGB array, upright as CVAT shows it.

    16-bit grey images are scaled to 0-255; palette, grey, CMYK and alpha become RGB.
    `expect`: the ``(width, height)`` the annotations declare (a side <= 0 or missing: not
    checked); an image of another size is refused, or with `rescale` resized to it.

    Raises:
        ImageError: the file cannot be decoded, has more than `limit` pixels (default
            `max_pixels()`), or is not the `expect` size (without `rescale`).
    """
    path = Path(path)
    with _open(path, limit) as img:
        try:
            img.load()
            img = ImageOps.exif_transpose(img)
            if img.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
                grey = np.nan_to_num(np.asarray(img, dtype=np.float64))
                top = 1.0 if img.mode == "F" else 65535.0
                grey = np.clip(np.rint(grey * (255.0 / top)), 0, 255).astype(np.uint8)
                img = Image.fromarray(grey)
            img = img.convert("RGB")
        except _BROKEN as exc:
            raise ImageError(f"{path}: cannot decode the image ({exc})") from None
    if expect is not None and all(_known(side) for side in expect):
        want = (int(expect[0]), int(expect[1]))
        if img.size != want:
            if not rescale:
                raise ImageError(
                    f"{path}: the image is {img.width}x{img.height} but the annotations say "
                    f"{want[0]}x{want[1]}; use the images the export was annotated on, or "
                    "pass {rescale_images} to resize each image to its declared size",
                    params={"rescale_images": True},
                )
            img = img.resize(want, Image.Resampling.BILINEAR)
    return np.array(img, dtype=np.uint8)  # writable, for torch


def _known(side) -> bool:
    """Whether a declared width/height is known: a number > 0 (not NaN, None or 0)."""
    try:
        return float(side) > 0
    except (TypeError, ValueError):
        return False
