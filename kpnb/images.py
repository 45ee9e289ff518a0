"""The one way kpnb finds and opens an export's images.

Every image reaches kpnb (the Dataset, pictures, evaluation, prediction, the CLI) through
`find_image` and `load_image`, so every caller gets the same guarantees:

- the path stays inside the export's image root (no ``../``, absolute names or symlinks out);
- the pixels are as CVAT shows them: EXIF orientation applied, RGB, 16-bit scaled to 8-bit;
- the pixel count is checked from the header before anything is decoded.

PIL is used rather than ``torchvision.io.decode_image`` because only PIL applies EXIF
orientation and reads every mode and bit depth; ``benchmarks/bench_dataset.py`` measures
what that costs per sample.
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

__all__ = ["ImageError", "MAX_PIXELS", "find_image", "load_image", "image_size", "max_pixels"]

log = logging.getLogger(__name__)

#: The default pixel limit (width x height): 64 megapixels, an 8k x 8k photo.
MAX_PIXELS = 64_000_000

# Frames of CVAT video tasks carry no extension in the XML; CVAT writes them as .PNG.
_FRAME_EXTENSIONS = (".PNG", ".png", ".jpg", ".jpeg", ".JPG")


class ImageError(KpnbError):
    """An image file cannot be used: outside its export, too large or undecodable."""


def max_pixels() -> int:
    """The pixel limit in force: ``$KPNB_MAX_PIXELS`` if set, else `MAX_PIXELS`."""
    value = os.environ.get("KPNB_MAX_PIXELS", "").strip()
    if not value:
        return MAX_PIXELS
    try:
        limit = int(value)
    except ValueError:
        raise ImageError(f"KPNB_MAX_PIXELS={value!r} is not a whole number of pixels") from None
    if limit <= 0:
        raise ImageError(f"KPNB_MAX_PIXELS={value!r} must be positive")
    return limit


def _inside(root: Path, path: Path) -> bool:
    try:
        path.resolve().relative_to(root)
    except ValueError:
        return False
    return True


def find_image(root: str | os.PathLike, name: str, subset: str | None = None) -> Path | None:
    """Where an export keeps image `name`: ``images/<subset>/``, ``images/``, or `root`.

    Returns None when no such file exists. Video frames (``frame_000012``) are found with
    CVAT's extensions.

    Raises:
        ImageError: `name` or `subset` leads outside `root` (``..``, an absolute path or a
            symlink out of it): an export may only name its own files.
    """
    root = Path(root).resolve()
    name = str(name).replace("\\", "/")
    bases = []
    if isinstance(subset, str) and subset:
        bases.append(root / "images" / subset)
    bases += [root / "images", root]
    names = [name] if Path(name).suffix else [name] + [name + ext for ext in _FRAME_EXTENSIONS]
    for base in bases:
        for candidate in names:
            path = base / candidate
            if not _inside(root, path):
                where = f" in subset {subset!r}" if subset else ""
                raise ImageError(
                    f"image {name!r}{where} leads outside the export's image root {root}: "
                    "image names must be relative paths inside the export; fix the name in the "
                    "annotations or pass the right image root"
                )
            if path.is_file():
                return path
    return None


def _follow_limit(limit: int) -> None:
    """Raise PIL's own bomb limit to kpnb's `limit` when it is lower; never lower it.

    PIL refuses images over ``Image.MAX_IMAGE_PIXELS`` (about 89 MP) while opening them and
    again while decoding (GIF frames, TIFF tiles), so below that value ``KPNB_MAX_PIXELS``
    could not take effect and PIL's error would contradict kpnb's. Setting PIL's value for
    the length of one call and restoring it afterwards would race between threads (one
    thread restoring while another decodes), and would have to last for the whole decode.
    So kpnb raises it once, to the limit the user asked kpnb for (``KPNB_MAX_PIXELS`` or
    ``limit=``): setting that limit says such files are trusted. It is never lowered, and
    ``None`` (a user who turned PIL's check off) is left alone; with kpnb's default limit
    (64 MP, under PIL's) PIL's value does not change at all.
    """
    current = Image.MAX_IMAGE_PIXELS
    if current is not None and current < limit:
        log.debug("raising PIL's Image.MAX_IMAGE_PIXELS from %d to kpnb's %d", current, limit)
        Image.MAX_IMAGE_PIXELS = limit


def _too_large(path: Path, limit: int, size: str) -> ImageError:
    return ImageError(
        f"{path}: the image{size} has more than {limit:,} pixels; raise the limit with "
        "KPNB_MAX_PIXELS=<pixels> if the file is trusted"
    )


def _open(path: Path, limit: int | None) -> Image.Image:
    """`path` opened (header only) after checking its pixel count against `limit`."""
    limit = max_pixels() if limit is None else limit
    _follow_limit(limit)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(path)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # PIL's limit is at least kpnb's here, so the image is over kpnb's limit too
        pixels = re.search(r"\((\d+) pixels\)", str(exc))
        raise _too_large(path, limit, f" ({int(pixels[1]):,} pixels)" if pixels else "") from None
    except (OSError, SyntaxError, ValueError) as exc:  # PIL raises these for broken files
        raise ImageError(f"{path}: cannot read the image ({exc})") from None
    if img.width * img.height > limit:
        img.close()
        raise _too_large(path, limit, f" ({img.width}x{img.height})")
    return img


def image_size(path: str | os.PathLike, *, limit: int | None = None) -> tuple[int, int]:
    """``(width, height)`` as CVAT shows the image (after EXIF rotation), from the header.

    Raises:
        ImageError: the file cannot be read (also a truncated one, whose EXIF lies past
            the end) or has more than `limit` pixels (default `max_pixels()`).
    """
    path = Path(path)
    with _open(path, limit) as img:
        w, h = img.size
        try:
            orientation = img.getexif().get(0x0112, 1)
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
            raise ImageError(f"{path}: cannot read the image ({exc})") from None
    return (h, w) if orientation in (5, 6, 7, 8) else (w, h)


def load_image(path: str | os.PathLike, *, limit: int | None = None) -> np.ndarray:
    """The image at `path` as a uint8 ``[H, W, 3]`` RGB array, upright as CVAT shows it.

    EXIF orientation is applied (CVAT annotates the rotated image); 16-bit grey images are
    scaled to 0-255; palette, grey, CMYK and alpha images become RGB.

    Raises:
        ImageError: the file cannot be decoded or has more than `limit` pixels (default
            `max_pixels()`).
    """
    path = Path(path)
    with _open(path, limit) as img:
        try:
            img.load()
            img = ImageOps.exif_transpose(img)
            if img.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
                grey = np.asarray(img, dtype=np.float64)
                grey = np.clip(np.rint(grey * (255.0 / 65535.0)), 0, 255).astype(np.uint8)
                return np.ascontiguousarray(np.repeat(grey[..., None], 3, axis=2))
            if img.mode == "F":
                grey = np.clip(np.nan_to_num(np.asarray(img, dtype=np.float64)), 0, 1)
                grey = np.rint(grey * 255).astype(np.uint8)
                return np.ascontiguousarray(np.repeat(grey[..., None], 3, axis=2))
            return np.array(img.convert("RGB"), dtype=np.uint8)  # writable, for torch
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
            raise ImageError(f"{path}: cannot decode the image ({exc})") from None
