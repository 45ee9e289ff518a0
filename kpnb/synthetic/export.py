"""The synthetic dataset as tables, and on disk (a folder or a zip) exactly as CVAT exports
a project ("CVAT for images 1.1" + ``images/<subset>/``); fixed zip timestamps."""

from __future__ import annotations

import io
import os
from itertools import chain
from pathlib import Path

import pandas as pd
from PIL import Image

from kpnb.cvat import iter_cvat_lines, skeleton_svg
from kpnb.io import atomic_path, check_output, write_zip
from kpnb.synthetic.cats import _KEYPOINTS_UV, FACE
from kpnb.synthetic.scene import SyntheticScene, render_scene
from kpnb.tables import Annotations, tidy_images, tidy_keypoints

LABEL = "face"
# Where the circles sit in the label's svg (CVAT's skeleton editor canvas is 0-100).
_SVG_POSITIONS = 50 + 40 * _KEYPOINTS_UV
SUBSETS = ("Train", "Validation")


def _labels(layout: str) -> pd.DataFrame:
    colours = ["#f0c419", "#e74c3c", "#3498db", "#2ecc71", "#9b59b6", "#e67e22"]
    parent = LABEL if layout == "skeleton" else None
    rows = [(kp, "points", colours[i + 1], parent, None) for i, kp in enumerate(FACE.keypoints)]
    if parent:
        rows.insert(0, (LABEL, "skeleton", colours[0], None, skeleton_svg(FACE, _SVG_POSITIONS)))
    return pd.DataFrame(rows, columns=["name", "type", "color", "parent", "svg"])


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
    images, rows, pictures, next_id = [], [], [], 0
    skel = layout == "skeleton"
    for index in range(n_images):
        scene = render_scene(seed, index, layout)
        pictures.append(scene.image)
        width, height = scene.image.size
        subset = SUBSETS[1 if index % 5 == 4 else 0]  # every fifth image validates
        images.append(
            {
                "image_index": index,
                "image_id": index,
                "name": f"img_{index:05d}.jpg",
                "width": width,
                "height": height,
                "subset": subset if skel else None,
                "task_id": SUBSETS.index(subset) + 1 if skel else None,
            }
        )
        rows += _scene_rows(scene, index, layout, next_id)
        next_id += len(scene.keypoints) if skel else FACE.num_keypoints
    ann = Annotations(
        images=tidy_images(pd.DataFrame(images)),
        keypoints=tidy_keypoints(pd.DataFrame(rows)),
        skeletons={LABEL: FACE} if skel else {},
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

    With `as_zip`, the same files go into the zip `out` (``.zip`` added if missing), as
    CVAT's "export dataset with images". Written atomically: an interrupted run leaves
    nothing. An existing zip or non-empty folder `out` is refused
    (`kpnb.io.OutputExistsError`) unless `overwrite`; then only the files written here are
    replaced.

    Example:
        >>> root = generate("data/synthetic", n_images=20, seed=0)  # doctest: +SKIP
    """
    out = Path(out)
    if as_zip and out.suffix.lower() != ".zip":
        out = out.with_name(out.name + ".zip")
    check_output(out, directory=not as_zip, overwrite=overwrite)  # before the drawing
    ann, pictures = synthesize(n_images, seed, layout)
    images = zip(ann.images.itertuples(index=False), pictures, strict=True)
    jpegs = ((image_relpath(i.name, i.subset), _jpeg_bytes(p, quality)) for i, p in images)
    xml = "".join(line + "\n" for line in iter_cvat_lines(ann)).encode("utf-8")
    files = chain([("annotations.xml", xml)], jpegs)  # one JPEG in memory at a time
    if as_zip:
        return write_zip(out, files, overwrite=overwrite)
    with atomic_path(out, directory=True, overwrite=overwrite) as tmp:
        for name, data in files:
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp / name).write_bytes(data)
    return out


def _jpeg_bytes(img: Image.Image, quality: int) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()
