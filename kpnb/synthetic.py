"""A synthetic CVAT keypoint export drawn from a seed: the dataset the tutorials and tests use.

Cartoon animal faces on textured backgrounds, written exactly as CVAT exports a project
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
from PIL import Image, ImageDraw

from kpnb._io import atomic_path, check_output
from kpnb.cvat import skeleton_svg, write_cvat
from kpnb.tables import Annotations, Skeleton, tidy_images, tidy_keypoints, visibility_from_flags

__all__ = ["FACE", "SyntheticScene", "render_scene", "synthesize", "generate"]

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
NOSE = (196, 40, 86)
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


def _background(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """Smooth colour field + stripes + grain, then a few distractor shapes."""
    gh, gw = rng.integers(2, 6, size=2)
    coarse = rng.uniform(30, 225, size=(gh, gw, 3)).astype(np.uint8)
    field = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BICUBIC), np.float32)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    angle, period = rng.uniform(0, np.pi), rng.uniform(6, 40)
    stripes = np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * (2 * np.pi / period))
    field += stripes[..., None] * rng.uniform(4, 28) + rng.normal(0, 6, size=field.shape)
    img = Image.fromarray(np.clip(field, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(0, 5))):
        x0, y0 = rng.uniform(0, width), rng.uniform(0, height)
        w, h = rng.uniform(10, width / 3), rng.uniform(10, height / 3)
        colour = tuple(int(c) for c in rng.integers(0, 256, size=3))
        box = [x0, y0, x0 + w, y0 + h]
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=colour)
    return img


def _fur_colour(rng: np.random.Generator) -> tuple[int, int, int]:
    hue = rng.uniform(0, 1)
    sat, val = rng.uniform(0.25, 0.8), rng.uniform(0.45, 0.95)
    rgb = np.array(Image.new("HSV", (1, 1), (int(hue * 255), int(sat * 255), int(val * 255)))
                   .convert("RGB").getpixel((0, 0)))  # fmt: skip
    return tuple(int(c) for c in rgb)


def _draw_face(draw: ImageDraw.ImageDraw, centre, radius: float, rot, fur, rng) -> None:
    dark = tuple(int(c * 0.6) for c in fur)
    for sign in (1.0, -1.0):
        ear = _to_image(_EAR_UV * np.array([sign, 1.0]), centre, radius, rot)
        draw.polygon([tuple(p) for p in ear], fill=dark)
        inner_uv = (
            _KEYPOINTS_UV[3] * np.array([sign, 1.0])
            + (_EAR_UV * np.array([sign, 1.0]) - _KEYPOINTS_UV[3] * np.array([sign, 1.0])) * 0.45
        )
        inner = _to_image(inner_uv, centre, radius, rot)
        draw.polygon([tuple(p) for p in inner], fill=INNER_EAR)
    t = np.linspace(0, 2 * np.pi, 48, endpoint=False)
    head_uv = np.stack([_HEAD_RX * np.cos(t), _HEAD_RY * np.sin(t)], axis=1)
    draw.polygon([tuple(p) for p in _to_image(head_uv, centre, radius, rot)], fill=fur)
    kps = _to_image(_KEYPOINTS_UV, centre, radius, rot)
    for eye in kps[1:3]:
        _disc(draw, eye, max(radius * 0.17, 3.5), (250, 250, 245))
        _disc(draw, eye, max(radius * 0.09, 2.5), PUPIL)
    _disc(draw, kps[0], max(radius * 0.11, 2.5), NOSE)
    mouth = _to_image(np.array([[-0.22, 0.46], [0.0, 0.56], [0.22, 0.46]]), centre, radius, rot)
    draw.line([tuple(p) for p in mouth], fill=dark, width=max(1, int(radius * 0.04)))


def _disc(draw: ImageDraw.ImageDraw, centre, r: float, colour) -> None:
    x, y = centre
    draw.ellipse([x - r, y - r, x + r, y + r], fill=colour)


def render_scene(seed: int, index: int, layout: str = "skeleton") -> SyntheticScene:
    """Draw image `index` of the dataset with `seed`; independent of every other image."""
    _check_layout(layout)
    rng = np.random.default_rng([seed, index, 0 if layout == "skeleton" else 1])
    width, height = IMAGE_SIZES[int(rng.integers(len(IMAGE_SIZES)))]
    img = _background(rng, width, height)
    draw = ImageDraw.Draw(img)
    if layout == "skeleton":
        n = int(rng.choice(4, p=[0.12, 0.43, 0.30, 0.15]))
    else:
        n = 1
    short = min(width, height)
    faces = []
    for _ in range(n):
        radius = rng.uniform(0.10, 0.22) * short
        if layout == "points":
            radius = rng.uniform(0.16, 0.28) * short
        centre = (rng.uniform(0.06, 0.94) * width, rng.uniform(0.12, 0.94) * height)
        rot = _rotation(np.deg2rad(rng.uniform(-35, 35)))
        _draw_face(draw, centre, radius, rot, _fur_colour(rng), rng)
        faces.append((centre, radius, rot))
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
        raise ValueError(f"unknown layout {layout!r}; choose 'skeleton' or 'points'")


def image_name(index: int) -> str:
    return f"img_{index:05d}.jpg"


def _subset(index: int) -> str:
    return SUBSETS[1] if index % 5 == 4 else SUBSETS[0]


def _labels(layout: str) -> pd.DataFrame:
    colours = ["#f0c419", "#e74c3c", "#3498db", "#2ecc71", "#9b59b6", "#e67e22"]
    if layout == "skeleton":
        rows = [{"name": LABEL, "type": "skeleton", "color": colours[0], "parent": None,
                 "svg": skeleton_svg(FACE, _SVG_POSITIONS)}]  # fmt: skip
        rows += [{"name": kp, "type": "points", "color": colours[i + 1], "parent": LABEL,
                  "svg": None} for i, kp in enumerate(FACE.keypoints)]  # fmt: skip
    else:
        rows = [{"name": kp, "type": "points", "color": colours[i + 1], "parent": None,
                 "svg": None} for i, kp in enumerate(FACE.keypoints)]  # fmt: skip
    return pd.DataFrame(rows)


def _scene_rows(scene: SyntheticScene, index: int, layout: str, next_id: int) -> list[dict]:
    rows = []
    for i in range(len(scene.keypoints)):
        for j, name in enumerate(FACE.keypoints):
            if layout == "points" and scene.outside[i, j]:
                continue  # the toy layout simply has no point for a cut-off keypoint
            x, y = scene.keypoints[i, j]
            rows.append({
                "image_index": index,
                "instance_id": next_id + (i if layout == "skeleton" else j),
                "label": LABEL if layout == "skeleton" else name,
                "keypoint": name,
                "point_index": j if layout == "skeleton" else 0,
                "x": round(x, 2), "y": round(y, 2),
                "occluded": bool(scene.occluded[i, j]), "outside": bool(scene.outside[i, j]),
                "source": "manual" if layout == "skeleton" else "file",
                "z_order": i,
            })  # fmt: skip
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
        images.append({
            "image_index": index, "image_id": index, "name": image_name(index),
            "width": width, "height": height,
            "subset": _subset(index) if skel else None,
            "task_id": (SUBSETS.index(_subset(index)) + 1) if skel else None,
        })  # fmt: skip
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
        with (atomic_path(out, overwrite=overwrite) as tmp,
              zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf):  # fmt: skip
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
