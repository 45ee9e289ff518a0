"""Procedural photographs: the backdrops behind the synthetic faces, and the colour tools.

Numpy + PIL, no files: value noise, soft blurred blobs (leaves, stones, clouds), colour
blends. Each backdrop draws from its random stream in a fixed order: same seed, same bytes.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

_COATS = (  # fur colours of real cats, dogs and foxes; the cloth backdrop takes one too
    (205, 122, 58),
    (226, 204, 166),
    (140, 138, 140),
    (52, 46, 44),
    (122, 82, 52),
    (156, 118, 82),
    (236, 232, 224),
    (198, 96, 42),
    (200, 160, 92),
    (92, 62, 46),
    (112, 118, 130),
)


def _noise(
    rng: np.random.Generator,
    width: int,
    height: int,
    cells: float,
    octaves: int = 4,
    stretch: tuple[float, float] = (1.0, 1.0),
) -> np.ndarray:
    """Multi-octave value noise ``[height, width]`` in about [-1, 1]: bicubic-upsampled
    random grids, each octave twice as fine and half as strong. `cells` is the number of
    grid cells across the longer side at the coarsest octave; `stretch` scales x and y."""
    total = np.zeros((height, width), np.float32)
    side = max(width, height)
    for o in range(octaves):
        gx = max(2, round(cells * 2**o * stretch[0] * width / side)) + 1
        gy = max(2, round(cells * 2**o * stretch[1] * height / side)) + 1
        grid = Image.fromarray(rng.random((gy, gx), dtype=np.float32), mode="F")
        total += np.asarray(grid.resize((width, height), Image.BICUBIC)) * 0.5**o
    return (total / (2 - 0.5 ** (octaves - 1)) - 0.5) * 2.0  # the amplitudes sum to 1 first


def _mix(c0, c1, t: np.ndarray) -> np.ndarray:
    """Per-pixel blend of two colours by `t` (0 -> c0, 1 -> c1): ``[H, W, 3]`` float32."""
    c0, c1 = np.asarray(c0, np.float32), np.asarray(c1, np.float32)
    return c0 + (c1 - c0) * np.clip(t, 0, 1, dtype=np.float32)[..., None]


def _jitter(rng: np.random.Generator, colour, amount: float = 0.12) -> np.ndarray:
    scale = rng.uniform(1 - amount, 1 + amount, 3).astype(np.float32)
    return np.clip(np.asarray(colour, np.float32) * scale, 0, 255)


def _blobs(
    rng: np.random.Generator,
    width: int,
    height: int,
    n: int,
    size: tuple[float, float],
    blur: float,
    region: tuple[float, float] = (0.0, 1.0),
) -> np.ndarray:
    """Soft blobs (0-1) drawn at half resolution and blurred: leaves, stones, bokeh."""
    w2, h2 = max(1, width // 2), max(1, height // 2)
    layer = Image.new("L", (w2, h2), 0)
    draw = ImageDraw.Draw(layer)
    for _ in range(n):
        x, y = rng.uniform(0, w2), rng.uniform(region[0] * h2, region[1] * h2)
        rx, ry = rng.uniform(*size, 2) * max(w2, h2)
        draw.ellipse([x - rx, y - ry, x + rx, y + ry], fill=int(rng.integers(90, 256)))
    layer = layer.filter(ImageFilter.GaussianBlur(blur * max(w2, h2)))
    return np.asarray(layer.resize((width, height), Image.BILINEAR), np.float32) / 255


def _blend(dst: np.ndarray, colour, alpha: np.ndarray) -> np.ndarray:
    """`colour` (an RGB triple or a ``[..., 3]`` array) over `dst` with coverage `alpha`."""
    a = alpha[..., None]
    return dst * (1 - a) + np.asarray(colour, np.float32) * a


def _lighting(rng: np.random.Generator, img: np.ndarray, light: np.ndarray) -> np.ndarray:
    """Soft light on the backdrop: a gradient along the light direction and a vignette."""
    h, w = img.shape[:2]
    yy, xx = np.ogrid[0:h, 0:w]
    nx, ny = (xx - w / 2) / (w / 2), (yy - h / 2) / (h / 2)
    ramp = 1.0 + 0.12 * (nx * light[0] + ny * light[1])
    vignette = 1.0 - rng.uniform(0.15, 0.35) * (nx**2 + ny**2) / 2
    return img * (ramp * vignette)[..., None]


def _meadow(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """Sky with soft clouds over grass, a band of trees on the horizon."""
    yy = np.linspace(0, 1, height, dtype=np.float32)[:, None]
    horizon = rng.uniform(0.22, 0.5)
    sky = _mix(
        _jitter(rng, (150, 190, 230)),
        _jitter(rng, (225, 235, 240)),
        np.broadcast_to(yy / horizon, (height, width)),
    )
    sky += (_blobs(rng, width, height, 6, (0.08, 0.2), 0.05, (0, horizon)) * 40)[..., None]
    grass = _mix(
        _jitter(rng, (52, 92, 30)),
        _jitter(rng, (128, 160, 64)),
        0.5 + 0.6 * _noise(rng, width, height, 3, 5, stretch=(3.0, 0.6)),
    )
    trees = _blobs(rng, width, height, 14, (0.04, 0.1), 0.02, (horizon - 0.08, horizon))
    grass *= (1 - 0.5 * trees)[..., None]
    edge = np.clip((yy - horizon) * height / 3 + 0.5, 0, 1)[..., None]
    return sky * (1 - edge) + grass * edge


def _foliage(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """Three layers of leaves, darker to lighter, over a dark green ground."""
    img = _mix(
        _jitter(rng, (24, 52, 20)),
        _jitter(rng, (70, 112, 40)),
        0.5 + 0.5 * _noise(rng, width, height, 2, 3),
    )
    for shade in (0.7, 1.0, 1.35):
        leaves = _blobs(rng, width, height, 40, (0.02, 0.07), 0.008)
        img = _blend(img, _jitter(rng, (80, 128, 46)) * shade, leaves)
    return img


def _wood(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """Boards with grain and rings, vertical or horizontal, dark gaps between them."""
    vertical = rng.random() < 0.5
    along, across = (height, width) if vertical else (width, height)
    grain = _noise(rng, along, across, 2, 3, stretch=(0.3, 3.0))
    grain = grain.T if vertical else grain
    pos = np.mgrid[0:height, 0:width][1 if vertical else 0].astype(np.float32)
    period = rng.uniform(40, 90)
    rings = np.sin((pos + grain * rng.uniform(8, 20)) * 2 * np.pi / rng.uniform(5, 11))
    img = _mix(
        _jitter(rng, (110, 68, 38)),
        _jitter(rng, (184, 132, 84)),
        0.55 + 0.25 * rings + 0.3 * grain,
    )
    img *= (1 - 0.45 * (np.mod(pos, period) < 2))[..., None]  # gaps between the boards
    return img


def _stone(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """Mottled grey stone with darker pits."""
    base = _noise(rng, width, height, 4, 5)
    dark, pale = _jitter(rng, (96, 92, 86), 0.05), _jitter(rng, (196, 188, 172), 0.05)
    img = _mix(dark, pale, 0.5 + 0.7 * base)
    img *= (1 - 0.35 * _blobs(rng, width, height, 30, (0.02, 0.06), 0.01))[..., None]
    return img


def _fabric(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """A soft cloth in a coat colour, with folds and a fine weave."""
    folds = _noise(rng, width, height, 1.5, 3, stretch=(0.6, 1.6))
    colour = _jitter(rng, _COATS[int(rng.integers(len(_COATS)))], 0.3) * 0.8 + 30
    img = colour * (0.85 + 0.3 * folds)[..., None]
    rows, cols = (np.sin(np.arange(n, dtype=np.float32) * 2.1) for n in (height, width))
    return img + (np.outer(rows, cols) * 4)[..., None]  # a fine weave


_BACKDROPS = (_meadow, _foliage, _wood, _stone, _fabric)


def _background(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """A photograph-like backdrop ``[H, W, 3]`` float32: grass, leaves, wood, stone or cloth."""
    return _BACKDROPS[int(rng.integers(len(_BACKDROPS)))](rng, width, height)
