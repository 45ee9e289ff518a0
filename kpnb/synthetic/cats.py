"""A synthetic CVAT keypoint export drawn from a seed: the dataset the tutorials and tests use.

Shaded cat faces (fur, muzzle, eyes with pupils, whiskers, a soft shadow) on backdrops
that read as photographs (grass and sky, leaves, wood, stone, cloth), all drawn
procedurally with numpy and PIL, and written exactly as CVAT exports a project
("CVAT for images 1.1" + ``images/<subset>/``), so every later stage runs the same code
on it as on a real export. Nothing is downloaded; the same seed gives the same bytes.

Two layouts:

* ``"skeleton"`` (default): a project export with subsets ``Train`` and ``Validation``
  (every fifth image) and one skeleton label ``face`` with 5 keypoints (nose, left/right
  eye, left/right ear) and 5 edges. 0-3 faces per image; a point hidden by a face drawn
  on top is ``occluded="1"``, a point cut off by the frame is ``outside="1"``.
* ``"points"``: the layout of the seed tutorial's toy set: a task export (no subsets),
  one face per image, one ``<points>`` shape per keypoint label, no skeleton; a point cut
  off by the frame is not annotated.

"Left" is the animal's left, which faces the viewer: ``left_eye`` appears on the image's
right side when the face is upright.
"""

from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw, ImageFilter

from kpnb._io import atomic_path, check_output
from kpnb.cvat import skeleton_svg, write_cvat
from kpnb.errors import KpnbError
from kpnb.tables import Annotations, Skeleton, tidy_images, tidy_keypoints, visibility_from_flags

__all__ = ["FACE", "STYLE_VERSION", "SyntheticScene", "render_scene", "synthesize", "generate"]

#: Raised whenever the drawing or the geometry changes: cached copies (`kpnb.data.get_dataset`)
#: are keyed by it, so an old drawing is never taken for the current one.
STYLE_VERSION = 2
LABEL = "face"
FACE = Skeleton(
    ("nose", "left_eye", "right_eye", "left_ear", "right_ear"),
    ((0, 1), (0, 2), (1, 2), (1, 3), (2, 4)),
)
# Keypoints in face coordinates (units of the head radius, u right, v down, upright face).
_KEYPOINTS_UV = np.array(
    [[0.0, 0.28], [0.38, -0.18], [-0.38, -0.18], [0.74, -0.98], [-0.74, -0.98]]
)
_EAR_UV = np.array([[0.30, -0.62], [0.98, -0.38], [0.84, -1.32]])  # left ear; right is mirrored
_HEAD_RX, _HEAD_RY = 1.0, 0.86
# Where the circles sit in the label's svg (CVAT's skeleton editor canvas is 0-100).
_SVG_POSITIONS = 50 + 40 * _KEYPOINTS_UV * np.array([1.0, 1.0])
IMAGE_SIZES = [(320, 240), (240, 320), (384, 288), (288, 384), (320, 320), (416, 312), (312, 416)]
SUBSETS = ("Train", "Validation")
# Feature colours drawn centred on each keypoint; tests read them back at the written positions.
PUPIL = (12, 12, 12)
NOSE = (160, 62, 80)
INNER_EAR = (242, 160, 178)
FEATURE_COLOURS = (NOSE, PUPIL, PUPIL, INNER_EAR, INNER_EAR)


@dataclass
class SyntheticScene:
    """One drawn image and its exact truth.

    Attributes:
        image: the RGB picture (before JPEG compression).
        keypoints: ``[N, K, 2]`` float64 exact positions (pixels, may lie off the canvas).
        occluded: ``[N, K]`` bool, hidden by a face drawn later (on top).
        outside: ``[N, K]`` bool, off the canvas.
    """

    image: Image.Image
    keypoints: np.ndarray
    occluded: np.ndarray
    outside: np.ndarray

    @property
    def visibility(self) -> np.ndarray:
        return visibility_from_flags(self.occluded, self.outside).reshape(self.occluded.shape)


def _rotation(theta: float) -> np.ndarray:
    c, s = np.cos(theta), np.sin(theta)
    return np.array([[c, -s], [s, c]])


def _to_image(uv: np.ndarray, centre, radius, rot) -> np.ndarray:
    return np.asarray(centre) + (uv * radius) @ rot.T


def _in_silhouette(points: np.ndarray, centre, radius, rot) -> np.ndarray:
    """Which image points fall inside a face (head ellipse or either ear)."""
    uv = ((points - np.asarray(centre)) @ rot) / radius  # inverse of _to_image
    inside = (uv[:, 0] / _HEAD_RX) ** 2 + (uv[:, 1] / _HEAD_RY) ** 2 <= 1.0
    for sign in (1.0, -1.0):
        tri = _EAR_UV * np.array([sign, 1.0])
        inside |= _in_triangle(uv, tri)
    return inside


def _in_triangle(p: np.ndarray, tri: np.ndarray) -> np.ndarray:
    a, b, c = tri

    def cross(o, q, r):
        return (q[0] - o[0]) * (r[:, 1] - o[1]) - (q[1] - o[1]) * (r[:, 0] - o[0])

    d1, d2, d3 = cross(a, b, p), cross(b, c, p), cross(c, a, p)
    neg = (d1 < 0) | (d2 < 0) | (d3 < 0)
    pos = (d1 > 0) | (d2 > 0) | (d3 > 0)
    return ~(neg & pos)


# -- drawing: procedural photographs -------------------------------------------------------
# Everything is numpy + PIL, seeded, no files: value noise for textures, PIL blurs for soft
# shapes, a Lambert-shaded ellipsoid with radial fur streaks for each head. Features centred
# on a keypoint (pupil, nose, inner ear) are flat colours, so the point stays well defined.
_COATS = (  # fur colours of real cats, dogs and foxes
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
_IRISES = ((214, 160, 42), (128, 164, 64), (150, 98, 42), (104, 140, 170), (196, 128, 40))
_CREAM = np.array([238, 228, 208], np.float32)
_SCENES = ("meadow", "foliage", "wood", "stone", "fabric")


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
    amp = norm = 1.0
    side = max(width, height)
    for o in range(octaves):
        gx = max(2, round(cells * 2**o * stretch[0] * width / side)) + 1
        gy = max(2, round(cells * 2**o * stretch[1] * height / side)) + 1
        grid = Image.fromarray(rng.random((gy, gx), dtype=np.float32), mode="F")
        total += np.asarray(grid.resize((width, height), Image.BICUBIC)) * amp
        amp *= 0.5
        norm += amp
    return (total / (norm - amp) - 0.5) * 2.0


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


def _background(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """A photograph-like backdrop ``[H, W, 3]`` float32: grass, leaves, wood, stone or cloth."""
    kind = _SCENES[int(rng.integers(len(_SCENES)))]
    yy = np.linspace(0, 1, height, dtype=np.float32)[:, None]
    if kind == "meadow":
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
        img = sky * (1 - edge) + grass * edge
    elif kind == "foliage":
        img = _mix(
            _jitter(rng, (24, 52, 20)),
            _jitter(rng, (70, 112, 40)),
            0.5 + 0.5 * _noise(rng, width, height, 2, 3),
        )
        for shade in (0.7, 1.0, 1.35):
            leaves = _blobs(rng, width, height, 40, (0.02, 0.07), 0.008)
            img = _blend(img, _jitter(rng, (80, 128, 46)) * shade, leaves)
    elif kind == "wood":
        vertical = rng.random() < 0.5
        along, across = (height, width) if vertical else (width, height)
        grain = _noise(rng, along, across, 2, 3, stretch=(0.3, 3.0)).T if vertical else None
        if grain is None:
            grain = _noise(rng, width, height, 2, 3, stretch=(0.3, 3.0))
        pos = np.mgrid[0:height, 0:width][1 if vertical else 0].astype(np.float32)
        period = rng.uniform(40, 90)
        rings = np.sin((pos + grain * rng.uniform(8, 20)) * 2 * np.pi / rng.uniform(5, 11))
        img = _mix(
            _jitter(rng, (110, 68, 38)),
            _jitter(rng, (184, 132, 84)),
            0.55 + 0.25 * rings + 0.3 * grain,
        )
        img *= (1 - 0.45 * (np.mod(pos, period) < 2))[..., None]  # gaps between the boards
    elif kind == "stone":
        base = _noise(rng, width, height, 4, 5)
        dark, pale = _jitter(rng, (96, 92, 86), 0.05), _jitter(rng, (196, 188, 172), 0.05)
        img = _mix(dark, pale, 0.5 + 0.7 * base)
        img *= (1 - 0.35 * _blobs(rng, width, height, 30, (0.02, 0.06), 0.01))[..., None]
    else:  # fabric: a soft cloth with folds
        folds = _noise(rng, width, height, 1.5, 3, stretch=(0.6, 1.6))
        colour = _jitter(rng, _COATS[int(rng.integers(len(_COATS)))], 0.3) * 0.8 + 30
        img = colour * (0.85 + 0.3 * folds)[..., None]
        weave = (
            np.sin(np.arange(width, dtype=np.float32) * 2.1)[None, :]
            * np.sin(np.arange(height, dtype=np.float32) * 2.1)[:, None]
        )
        img += (weave * 4)[..., None]
    return img


def _lighting(rng: np.random.Generator, img: np.ndarray, light: np.ndarray) -> np.ndarray:
    """Soft light on the backdrop: a gradient along the light direction and a vignette."""
    h, w = img.shape[:2]
    yy, xx = np.ogrid[0:h, 0:w]
    nx, ny = (xx - w / 2) / (w / 2), (yy - h / 2) / (h / 2)
    ramp = 1.0 + 0.12 * (nx * light[0] + ny * light[1])
    vignette = 1.0 - rng.uniform(0.15, 0.35) * (nx**2 + ny**2) / 2
    return img * (ramp * vignette)[..., None]


def _silhouette_uv(n: int = 40) -> list[np.ndarray]:
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    head = np.stack([_HEAD_RX * np.cos(t), _HEAD_RY * np.sin(t)], axis=1)
    return [head] + [_EAR_UV * np.array([s, 1.0]) for s in (1.0, -1.0)]


def _shadows(img: np.ndarray, faces, light: np.ndarray, scale: float = 1.0) -> np.ndarray:
    """Soft contact shadows of all faces on the backdrop, cast away from the light.

    `scale` maps image pixels to `img` pixels (the backdrop is drawn at half size)."""
    if not faces:
        return img
    h, w = img.shape[:2]
    mask = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(mask)
    for centre, radius, rot, _ in faces:
        offset = -light[:2] * radius * 0.16 + np.array([0.0, radius * 0.06])
        for poly in _silhouette_uv(24):
            pts = (_to_image(poly * 1.04, centre, radius, rot) + offset) * scale
            draw.polygon([tuple(p) for p in pts], fill=255)
    blur = 0.14 * scale * float(np.mean([f[1] for f in faces]))
    soft = np.asarray(mask.filter(ImageFilter.GaussianBlur(blur)), np.float32) / 255
    return img * (1 - 0.5 * soft)[..., None]


def _coat(rng: np.random.Generator) -> dict:
    """How one animal looks: fur, markings, eyes (appearance only, no geometry)."""
    fur = _jitter(rng, _COATS[int(rng.integers(len(_COATS)))], 0.08)
    return {
        "fur": fur,
        "iris": _jitter(rng, _IRISES[int(rng.integers(len(_IRISES)))], 0.08),
        "muzzle": float(rng.uniform(0.5, 0.85)),
        "tabby": bool(rng.random() < 0.35),
        "phase": rng.uniform(0, 2 * np.pi, 4),
        "streaks": rng.uniform(0, 2 * np.pi, 3),
    }


def _aa(sd: np.ndarray, radius: float) -> np.ndarray:
    """Coverage 0-1 from a signed distance in face units (positive inside), 1 px ramp."""
    return np.clip(sd * radius + 0.5, 0.0, 1.0)


def _triangle_sd(u: np.ndarray, v: np.ndarray, tri: np.ndarray) -> np.ndarray:
    """Signed distance to a triangle's edges (positive inside), in face units."""
    a, b, c = np.asarray(tri, float).tolist()  # python floats keep the arrays float32
    area = (b[0] - a[0]) * (c[1] - a[1]) - (b[1] - a[1]) * (c[0] - a[0])
    sign = 1.0 if area > 0 else -1.0
    out = None
    for p, q in ((a, b), (b, c), (c, a)):
        ex, ey = q[0] - p[0], q[1] - p[1]
        d = (sign / float(np.hypot(ex, ey))) * (ex * (v - p[1]) - ey * (u - p[0]))
        out = d if out is None else np.minimum(out, d)
    return out


def _fur_streaks(u: np.ndarray, v: np.ndarray, phase: np.ndarray) -> np.ndarray:
    """Fur: strands radiating from the nose, as three waves around it with incommensurate
    frequencies (integers, so the pattern closes on itself), each wobbling outward; -1..1."""
    ang = np.arctan2(v - 0.2, u)
    rad = np.hypot(u, v - 0.2)
    out = np.zeros_like(u)
    for k, (freq, wobble) in enumerate(((37, 3.0), (61, 5.0), (97, 7.0))):
        out += np.sin(ang * freq + rad * wobble + float(phase[k]))
    return out / 3.0


def _blend(dst: np.ndarray, colour, alpha: np.ndarray) -> np.ndarray:
    """`colour` (an RGB triple or a ``[..., 3]`` array) over `dst` with coverage `alpha`."""
    a = alpha[..., None]
    return dst * (1 - a) + np.asarray(colour, np.float32) * a


def _window(shape, origin, centre, half: float) -> tuple[slice, slice]:
    """Rows and columns of a crop (at `origin` in the image) within `half` px of `centre`."""
    cx, cy = centre[0] - origin[0], centre[1] - origin[1]
    return (
        slice(max(0, int(cy - half)), max(0, min(shape[0], int(cy + half) + 2))),
        slice(max(0, int(cx - half)), max(0, min(shape[1], int(cx + half) + 2))),
    )


def _draw_face(img: np.ndarray, centre, radius: float, rot, coat: dict, light) -> None:
    """Composite one animal face into `img` (``[H, W, 3]`` float32, in place).

    Ears behind a Lambert-shaded head with fur streaks, a light muzzle, eyes (dark rim,
    shaded iris, flat pupil, catchlight), a rounded nose, then mouth and whiskers. The
    pupils, the nose and the inner ears are flat `FEATURE_COLOURS` at their keypoints.
    Small features are computed only in a window around them, which keeps this fast.
    """
    h, w = img.shape[:2]
    reach = 1.6 * radius
    x0, x1 = max(0, int(centre[0] - reach)), min(w, int(centre[0] + reach) + 1)
    y0, y1 = max(0, int(centre[1] - reach)), min(h, int(centre[1] + reach) + 1)
    if x0 >= x1 or y0 >= y1:
        return
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    pix = np.stack([xx + 0.5 - centre[0], yy + 0.5 - centre[1]], axis=-1) @ rot.astype(np.float32)
    u, v = pix[..., 0] / np.float32(radius), pix[..., 1] / np.float32(radius)
    out, fur, kps = img[y0:y1, x0:x1], coat["fur"], _KEYPOINTS_UV
    kp_px = _to_image(kps, centre, radius, rot)
    streaks = _fur_streaks(u, v, coat["streaks"])
    lx, ly = (rot.T @ light[:2]).tolist()  # the light in face coordinates
    lz = float(light[2])
    for sign in (1.0, -1.0):  # ears, behind the head; the pink inside darkens at its rim
        ear = _EAR_UV * np.array([sign, 1.0])
        corners = _to_image(ear, centre, radius, rot)
        mid = (corners.min(0) + corners.max(0)) / 2
        span = float((corners.max(0) - corners.min(0)).max())
        win = _window(out.shape, (x0, y0), mid, span / 2 + 1)
        eu, ev, st = u[win], v[win], streaks[win]
        tipward = np.clip((-ev - 0.6) / 0.7, 0, 1)
        ear_col = fur * (0.82 - 0.25 * tipward + 0.06 * st)[..., None]
        out[win] = _blend(out[win], ear_col, _aa(_triangle_sd(eu, ev, ear), radius))
        kp = kps[3] * np.array([sign, 1.0])
        sd_in = _triangle_sd(eu, ev, kp + (ear - kp) * 0.6)
        inner = _mix(np.asarray(INNER_EAR) * 0.72, INNER_EAR, sd_in * radius / 0.6)
        out[win] = _blend(out[win], inner, _aa(sd_in, radius))
    q = np.sqrt((u / _HEAD_RX) ** 2 + (v / _HEAD_RY) ** 2)
    nz = np.sqrt(np.clip(1.0 - q**2, 0.0, 1.0))
    lambert = np.clip((u / _HEAD_RX) * lx + (v / _HEAD_RY) * ly + nz * lz, 0, 1)
    shade = 0.5 + 0.6 * lambert + 0.07 * streaks
    if coat["tabby"]:  # dark stripes across the forehead, fading out above the eyes
        ph = coat["phase"].tolist()
        stripes = np.clip(np.sin(u * 11 + ph[0] + 2 * np.sin(v * 3 + ph[1])) * 2 - 0.6, 0, 1)
        shade = shade * (1 - 0.45 * stripes * np.clip((-v - 0.42) / 0.2, 0, 1))
    head = fur * shade[..., None]
    win = _window(
        out.shape, (x0, y0), _to_image(np.array([0.0, 0.5]), centre, radius, rot), 0.55 * radius + 3
    )
    mu, mv = u[win], v[win]
    muzzle = np.maximum.reduce(
        [
            1 - np.hypot((mu - 0.16) / 0.27, (mv - 0.42) / 0.21),
            1 - np.hypot((mu + 0.16) / 0.27, (mv - 0.42) / 0.21),
            1 - np.hypot(mu / 0.22, (mv - 0.62) / 0.14),
            1 - np.hypot(mu / 0.2, (mv - 0.27) / 0.17),  # the bridge: light all round the nose
        ]
    )
    pale = fur + (_CREAM - fur) * coat["muzzle"]
    pale = pale * (0.75 + 0.3 * lambert[win] + 0.05 * streaks[win])[..., None]
    head[win] = _blend(head[win], pale, np.clip(muzzle * radius / 3, 0, 1))
    # eyes: a dark rim, a shaded iris at least ~2 px wide (even on small faces), a pupil
    re, rp = max(radius * 0.17, 5.0), max(radius * 0.09, 2.5)
    rim_px = min(1.2, max(0.7, 0.12 * re))
    rim = np.float32([28, 22, 18])
    norm = max(np.hypot(lx, ly), 1e-6)
    for j in (1, 2):
        win = _window(out.shape, (x0, y0), kp_px[j], re + 1)
        du = (u[win] - float(kps[j, 0])) * radius  # pixels from the keypoint, face axes
        dv = (v[win] - float(kps[j, 1])) * radius
        d = np.hypot(du, dv)
        iris = coat["iris"] * (0.85 + 0.3 * np.clip(dv / re, -0.5, 1))[..., None]
        eye = _blend(np.broadcast_to(rim, iris.shape), iris, np.clip(re - rim_px - d, 0, 1))
        patch = _blend(head[win], eye, np.clip(re - d + 0.5, 0, 1))
        patch = _blend(patch, PUPIL, np.clip(rp - d + 0.5, 0, 1))
        if re >= 5:  # a catchlight towards the light, clear of the pupil's centre
            dc = np.hypot(du - lx / norm * 0.55 * re, dv - ly / norm * 0.55 * re)
            patch = _blend(patch, (250, 250, 246), np.clip(0.17 * re - dc + 0.5, 0, 1))
        head[win] = patch
    rn = max(radius * 0.11, 2.5)  # nose: a rounded triangle, flat around its keypoint
    win = _window(out.shape, (x0, y0), kp_px[0], 1.4 * rn + 1)
    a_ = u[win] * (radius / rn)
    b_ = (v[win] - float(kps[0, 1])) * (radius / rn)
    nq = np.hypot(a_ / (1.3 * (1 - 0.35 * np.clip(b_, -1, 1))), b_ / 0.85)
    nose_sd = (1 - nq) * rn * 0.8  # about pixels inside the nose's edge
    patch = _blend(head[win], (78, 34, 40), np.clip(nose_sd + 1.3, 0, 1))  # a dark edge
    patch = _blend(patch, NOSE, np.clip(nose_sd + 0.5, 0, 1))
    if rn >= 4:
        shine = np.clip(0.22 * rn - np.hypot(a_, b_ + 0.55) * rn + 0.5, 0, 1)
        patch = _blend(patch, (235, 170, 180), 0.6 * shine)
    head[win] = patch
    head_a = _aa((1.0 - q) * 0.92 + 0.02 * streaks, radius)
    img[y0:y1, x0:x1] = _blend(out, head, head_a)
    _draw_lines(img, centre, radius, rot, coat, (x0, y0, x1, y1), rn)


def _draw_lines(img, centre, radius, rot, coat, box, rn) -> None:
    """Mouth and whiskers: thin anti-aliased strokes drawn at 2x and averaged."""
    x0, y0, x1, y1 = box
    s = 2
    mouth = Image.new("L", ((x1 - x0) * s, (y1 - y0) * s), 0)
    whisk = Image.new("L", mouth.size, 0)
    dm, dw = ImageDraw.Draw(mouth), ImageDraw.Draw(whisk)

    def at(uv):
        p = _to_image(np.asarray(uv, float), centre, radius, rot)
        return [((x - x0) * s, (y - y0) * s) for x, y in np.atleast_2d(p)]

    top = 0.28 + 0.8 * rn / radius
    width = max(2, round(radius * 0.05 * s))
    dm.line(at([[0, top], [0, 0.47]]), fill=255, width=width)
    for sign in (1.0, -1.0):
        dm.line(
            at([[0, 0.47], [sign * 0.09, 0.53], [sign * 0.19, 0.5]]),
            fill=255,
            width=width,
            joint="curve",
        )
        for k, (dv, tip) in enumerate(((0.40, 0.30), (0.46, 0.46), (0.52, 0.64))):
            bend = coat["phase"][k % 4] * 0.01
            path = [[sign * 0.24, dv], [sign * 0.7, (dv + tip) / 2 + bend], [sign * 1.28, tip]]
            dw.line(at(path), fill=200, width=max(1, round(radius * 0.018 * s)))
    size = (x1 - x0, y1 - y0)
    m = np.asarray(mouth.resize(size, Image.BOX), np.float32) / 255
    wk = np.asarray(whisk.resize(size, Image.BOX), np.float32) / 255
    crop = img[y0:y1, x0:x1]
    crop = _blend(crop, coat["fur"] * 0.3, m * 0.85)
    img[y0:y1, x0:x1] = _blend(crop, (245, 242, 232), wk * 0.8)


def render_scene(seed: int, index: int, layout: str = "skeleton") -> SyntheticScene:
    """Draw image `index` of the dataset with `seed`; independent of every other image."""
    _check_layout(layout)
    stream = [seed, index, 0 if layout == "skeleton" else 1]
    rng = np.random.default_rng(stream)  # geometry: sizes, how many faces, where
    looks = np.random.default_rng(stream + [1])  # appearance only: never moves a keypoint
    width, height = IMAGE_SIZES[int(rng.integers(len(IMAGE_SIZES)))]
    n = int(rng.choice(4, p=[0.12, 0.43, 0.30, 0.15])) if layout == "skeleton" else 1
    short = min(width, height)
    faces = []
    for _ in range(n):
        lo, hi = (0.10, 0.22) if layout == "skeleton" else (0.16, 0.28)
        radius = rng.uniform(lo, hi) * short
        centre = (rng.uniform(0.06, 0.94) * width, rng.uniform(0.12, 0.94) * height)
        rot = _rotation(np.deg2rad(rng.uniform(-35, 35)))
        faces.append((centre, radius, rot, _coat(looks)))
    angle = looks.uniform(np.pi * 1.1, np.pi * 1.9)  # light from above, left or right
    light = np.array([np.cos(angle) * 0.55, np.sin(angle) * 0.55, 0.8])
    # The backdrop is soft, so it is drawn at half size (four times fewer pixels), lit,
    # shadowed and upsampled; film grain is added at full size.
    half = (width + 1) // 2, (height + 1) // 2
    backdrop = _lighting(looks, _background(looks, *half), light)
    backdrop = _shadows(backdrop, faces, light, scale=half[0] / width)
    backdrop = Image.fromarray(np.clip(backdrop + 0.5, 0, 255).astype(np.uint8))
    canvas = np.asarray(backdrop.resize((width, height), Image.BICUBIC), np.float32)
    grain = looks.standard_normal((height, width), dtype=np.float32) * looks.uniform(2, 5)
    canvas = canvas + grain[..., None]
    for centre, radius, rot, coat in faces:
        _draw_face(canvas, centre, radius, rot, coat, light)
    img = Image.fromarray(np.clip(canvas + 0.5, 0, 255).astype(np.uint8))
    faces = [f[:3] for f in faces]
    k = FACE.num_keypoints
    keypoints = np.zeros((n, k, 2))
    occluded = np.zeros((n, k), bool)
    for i, (centre, radius, rot) in enumerate(faces):
        keypoints[i] = _to_image(_KEYPOINTS_UV, centre, radius, rot)
        for later in faces[i + 1 :]:
            occluded[i] |= _in_silhouette(keypoints[i], *later)
    x, y = keypoints[..., 0], keypoints[..., 1]
    outside = (x < 0) | (x >= width) | (y < 0) | (y >= height)
    return SyntheticScene(img, keypoints, occluded & ~outside, outside)


def _check_layout(layout: str) -> None:
    if layout not in ("skeleton", "points"):
        raise KpnbError(f"unknown layout {layout!r}; choose 'skeleton' or 'points'")


def image_name(index: int) -> str:
    return f"img_{index:05d}.jpg"


def _subset(index: int) -> str:
    return SUBSETS[1] if index % 5 == 4 else SUBSETS[0]


def _labels(layout: str) -> pd.DataFrame:
    colours = ["#f0c419", "#e74c3c", "#3498db", "#2ecc71", "#9b59b6", "#e67e22"]
    if layout == "skeleton":
        rows = [
            {
                "name": LABEL,
                "type": "skeleton",
                "color": colours[0],
                "parent": None,
                "svg": skeleton_svg(FACE, _SVG_POSITIONS),
            }
        ]
        rows += [
            {"name": kp, "type": "points", "color": colours[i + 1], "parent": LABEL, "svg": None}
            for i, kp in enumerate(FACE.keypoints)
        ]
    else:
        rows = [
            {"name": kp, "type": "points", "color": colours[i + 1], "parent": None, "svg": None}
            for i, kp in enumerate(FACE.keypoints)
        ]
    return pd.DataFrame(rows)


def _scene_rows(scene: SyntheticScene, index: int, layout: str, next_id: int) -> list[dict]:
    rows = []
    for i in range(len(scene.keypoints)):
        for j, name in enumerate(FACE.keypoints):
            if layout == "points" and scene.outside[i, j]:
                continue  # the toy layout simply has no point for a cut-off keypoint
            x, y = scene.keypoints[i, j]
            rows.append(
                {
                    "image_index": index,
                    "instance_id": next_id + (i if layout == "skeleton" else j),
                    "label": LABEL if layout == "skeleton" else name,
                    "keypoint": name,
                    "point_index": j if layout == "skeleton" else 0,
                    "x": round(x, 2),
                    "y": round(y, 2),
                    "occluded": bool(scene.occluded[i, j]),
                    "outside": bool(scene.outside[i, j]),
                    "source": "manual" if layout == "skeleton" else "file",
                    "z_order": i,
                }
            )
    return rows


def synthesize(n_images: int = 200, seed: int = 0, layout: str = "skeleton"):
    """Draw the dataset in memory: ``(Annotations, list of PIL images)``.

    The tables hold the positions as written to the file (two decimals).
    """
    _check_layout(layout)
    images, rows, pictures, next_id = [], [], [], 0
    for index in range(n_images):
        scene = render_scene(seed, index, layout)
        pictures.append(scene.image)
        width, height = scene.image.size
        skel = layout == "skeleton"
        images.append(
            {
                "image_index": index,
                "image_id": index,
                "name": image_name(index),
                "width": width,
                "height": height,
                "subset": _subset(index) if skel else None,
                "task_id": (SUBSETS.index(_subset(index)) + 1) if skel else None,
            }
        )
        rows += _scene_rows(scene, index, layout, next_id)
        next_id += len(scene.keypoints) if skel else FACE.num_keypoints
    keypoints = tidy_keypoints(pd.DataFrame(rows, columns=list(rows[0]) if rows else None))
    ann = Annotations(
        images=tidy_images(pd.DataFrame(images)),
        keypoints=keypoints,
        skeletons={LABEL: FACE} if layout == "skeleton" else {},
        labels=_labels(layout),
        meta={"name": f"kpnb-synthetic-{layout}", "source": "kpnb.synthetic", "seed": seed},
    )
    return ann, pictures


def image_relpath(name: str, subset: str | None) -> str:
    """Where CVAT puts an image in an export: ``images/<subset>/<name>`` for projects."""
    return f"images/{subset}/{name}" if isinstance(subset, str) and subset else f"images/{name}"


def generate(
    out: str | os.PathLike,
    n_images: int = 200,
    seed: int = 0,
    layout: str = "skeleton",
    *,
    as_zip: bool = False,
    quality: int = 90,
    overwrite: bool = False,
) -> Path:
    """Write a synthetic CVAT export: ``out/annotations.xml`` and ``out/images/...jpg``.

    With `as_zip`, writes the same files into the zip `out` (``.zip`` added if missing),
    laid out like CVAT's "export dataset with images". The output appears atomically:
    an interrupted run leaves nothing behind. An existing zip or non-empty folder `out` is
    refused unless `overwrite`; then only the files written here are replaced.

    Raises:
        kpnb._io.OutputExistsError: `out` exists (see `overwrite`) or is a file where a
            folder is written.

    Example:
        >>> root = generate("data/synthetic", n_images=20, seed=0)  # doctest: +SKIP
    """
    out = Path(out)
    if as_zip and out.suffix.lower() != ".zip":
        out = out.with_name(out.name + ".zip")
    check_output(out, directory=not as_zip, overwrite=overwrite)  # before the drawing
    ann, pictures = synthesize(n_images, seed, layout)
    if as_zip:
        with (
            atomic_path(out, overwrite=overwrite) as tmp,
            zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf,
        ):
            _zip_add(zf, "annotations.xml", _xml_bytes(ann))
            for img, pic in zip(ann.images.itertuples(index=False), pictures, strict=True):
                _zip_add(zf, image_relpath(img.name, img.subset), _jpeg_bytes(pic, quality))
        return out
    with atomic_path(out, directory=True, overwrite=overwrite) as tmp:
        write_cvat(ann, tmp / "annotations.xml")
        for img, pic in zip(ann.images.itertuples(index=False), pictures, strict=True):
            path = tmp / image_relpath(img.name, img.subset)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(_jpeg_bytes(pic, quality))
    return out


def _jpeg_bytes(img: Image.Image, quality: int) -> bytes:
    import io

    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def _xml_bytes(ann: Annotations) -> bytes:
    from kpnb.cvat import iter_cvat_lines

    return "".join(line + "\n" for line in iter_cvat_lines(ann)).encode("utf-8")


def _zip_add(zf: zipfile.ZipFile, name: str, data: bytes) -> None:
    info = zipfile.ZipInfo(name, date_time=(2024, 1, 1, 0, 0, 0))  # fixed: byte-identical zips
    info.compress_type = zipfile.ZIP_DEFLATED
    info.external_attr = 0o644 << 16
    zf.writestr(info, data)
