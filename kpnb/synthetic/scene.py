"""One synthetic image and its exact truth: faces placed on a lit, shadowed backdrop.

Two random streams seeded by (seed, index, layout): one for the geometry (size, faces,
where, how large, how turned), one for the looks only, so drawing never moves a keypoint.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from kpnb.errors import KpnbError
from kpnb.synthetic.cats import (
    _KEYPOINTS_UV,
    FACE,
    _coat,
    _draw_face,
    _in_silhouette,
    _rotation,
    _shadows,
    _to_image,
)
from kpnb.synthetic.textures import _background, _lighting
from kpnb.tables import visibility_from_flags

#: Raised whenever the drawing or the geometry changes: cached copies (`kpnb.data.get_dataset`)
#: are keyed by it, so an old drawing is never taken for the current one.
STYLE_VERSION = 2
IMAGE_SIZES = [(320, 240), (240, 320), (384, 288), (288, 384), (320, 320), (416, 312), (312, 416)]


@dataclass
class SyntheticScene:
    """One drawn RGB image (before JPEG) and its truth: `keypoints` ``[N, K, 2]`` float64
    exact pixels (may lie off the canvas), `occluded` ``[N, K]`` (under a face drawn later)
    and `outside` ``[N, K]`` (off the canvas)."""

    image: Image.Image
    keypoints: np.ndarray
    occluded: np.ndarray
    outside: np.ndarray

    @property
    def visibility(self) -> np.ndarray:
        return visibility_from_flags(self.occluded, self.outside).reshape(self.occluded.shape)


def render_scene(seed: int, index: int, layout: str = "skeleton") -> SyntheticScene:
    """Draw image `index` of the dataset with `seed`; independent of every other image."""
    if layout not in ("skeleton", "points"):
        raise KpnbError(f"unknown layout {layout!r}; choose 'skeleton' or 'points'")
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
    keypoints = np.zeros((n, FACE.num_keypoints, 2))
    occluded = np.zeros((n, FACE.num_keypoints), bool)
    for i, (centre, radius, rot, _) in enumerate(faces):
        keypoints[i] = _to_image(_KEYPOINTS_UV, centre, radius, rot)
        for later in faces[i + 1 :]:
            occluded[i] |= _in_silhouette(keypoints[i], *later[:3])
    x, y = keypoints[..., 0], keypoints[..., 1]
    outside = (x < 0) | (x >= width) | (y < 0) | (y >= height)
    return SyntheticScene(img, keypoints, occluded & ~outside, outside)
