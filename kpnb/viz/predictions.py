"""Predictions against the ground truth: the errors picture and the side-by-side figure.

Both pair each ground-truth instance with the prediction the metrics matched it to
(`kpnb.evaluate.match_instances`, by box IoU), so a figure shows the errors that were scored.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from PIL import Image, ImageDraw

from kpnb.skeleton import Skeleton
from kpnb.viz.draw import OUTLINE, RGB, _as_pil, draw_instances, keypoint_colors, marker_radius
from kpnb.viz.grids import _marker, image_grid, keypoint_legend

if TYPE_CHECKING:
    from kpnb.evaluate import ImageResult

ERROR_LINE: RGB = (255, 255, 255)  # error lines: white dashes on a dark halo, no keypoint's colour


def _dashed(draw: ImageDraw.ImageDraw, a, b, fill: RGB, width: int, dash: float) -> None:
    """A dashed line from `a` to `b` (PIL draws solid lines only)."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    length = float(np.hypot(*(b - a)))
    if not np.isfinite(length) or length == 0:
        return
    step = (b - a) / length
    for s in np.arange(0.0, length, 2 * dash):
        draw.line(
            [tuple(a + step * s), tuple(a + step * min(s + dash, length))], fill=fill, width=width
        )


def _matched(result: ImageResult, k: int, iou_threshold: float):
    """Ground truth ``[N, K, 3]``, each instance's matched prediction ``[N, K, 3]`` (NaN
    where none matched) and how many predictions matched nothing (`match_instances`)."""
    from kpnb.evaluate import match_instances

    gt = np.asarray(result.gt_keypoints, np.float32).reshape(-1, k, 3)
    pred = np.asarray(result.keypoints, np.float32).reshape(-1, k, 3)
    match = np.asarray(match_instances(result, iou_threshold), int)
    paired = np.full_like(gt, np.nan)
    paired[match >= 0] = pred[match[match >= 0]]
    return gt, paired, len(pred) - int((match >= 0).sum())


def draw_predictions(
    image, result: ImageResult, skeleton: Skeleton, *, iou_threshold: float = 0.5
) -> Image.Image:
    """The errors picture on `image` (PIL or ``[3, H, W]``, in the frame of `result`): each
    labelled ground-truth point (a disc, occluded a hollow square) joined by a white dashed
    line to the point of the prediction matched with box IoU >= `iou_threshold` (a cross).
    Unmatched predictions and skeleton edges are not drawn, so nothing looks like an error.
    """
    gt, paired, _ = _matched(result, skeleton.num_keypoints, iou_threshold)
    points = Skeleton(skeleton.keypoints)  # the names without edges
    canvas = _as_pil(image)
    r = max(2, round(0.7 * marker_radius(*canvas.size)))  # smaller: the lines must show
    draw = ImageDraw.Draw(canvas)
    width, halo = max(1, round(r / 3)), max(1, round(r / 4))
    for g, p in zip(gt, paired, strict=True):
        for j in np.flatnonzero((g[:, 2] > 0) & np.isfinite(p[:, 0])):
            for fill, wd in ((OUTLINE, width + 2 * halo), (ERROR_LINE, width)):
                _dashed(draw, g[j, :2], p[j, :2], fill, wd, dash=max(3, 1.5 * r))
    out = draw_instances(canvas, gt, points, show_names=False, radius=r)
    shown = paired.copy()
    shown[..., 2] = np.where(np.isfinite(shown[..., 0]), 1, 0)  # drawn as crosses
    return draw_instances(
        out, np.nan_to_num(shown), points, show_names=False, radius=r, occluded_marker="x"
    )


def compare_predictions(
    image,
    result: ImageResult,
    skeleton: Skeleton,
    *,
    title: str | None = None,
    iou_threshold: float = 0.5,
) -> Figure:
    """Ground truth, the matched predictions, and the errors (`draw_predictions`), side by
    side with a legend of keypoint colours and marker styles.

    Only matched predictions are drawn (a young model's top detections are often duplicates
    of one object); the titles count what is left out. A small image (96-192 px) is first
    enlarged by a whole factor, so the markers stay small at the grid's scale.
    """
    image, result = _enlarged(image, result)
    gt, paired, unmatched = _matched(result, skeleton.num_keypoints, iou_threshold)
    found = np.isfinite(paired[:, 0, 0])
    pred = paired[found].copy()
    pred[..., 2] = 2
    colors = keypoint_colors(skeleton.keypoints)
    pictures = [
        draw_instances(image, gt, skeleton, show_names=False, colors=colors),
        draw_instances(image, pred, skeleton, show_names=False, colors=colors),
        draw_predictions(image, result, skeleton, iou_threshold=iou_threshold),
    ]
    n_found, missed = int(found.sum()), int((~found).sum())
    titles = [
        f"ground truth: {_count(len(gt), 'object')}",
        _count(n_found, "matched prediction")
        + (f" ({unmatched} unmatched not shown)" if unmatched else ""),
        "errors" + (f" ({_count(missed, 'object')} not found)" if missed else ""),
    ]
    fig = image_grid(pictures, titles, ncols=3, title=title)
    keypoint_legend(fig, colors, ncols=4, extra=_error_styles())
    return fig


def _error_styles() -> list[Line2D]:
    """Legend handles for the errors panel: the prediction's cross and the error line."""
    from matplotlib import patheffects

    halo = patheffects.withStroke(linewidth=4, foreground=np.array(OUTLINE) / 255)
    cross = _marker(
        "prediction (errors panel)", "x", markersize=9, markeredgewidth=2.5, color="0.35"
    )
    dashes = {"ls": (0, (2, 1.5)), "lw": 2, "color": "white", "path_effects": [halo]}
    line = Line2D([], [], label="error: point to prediction", **dashes)
    return [cross, line]


def _enlarged(image, result: ImageResult, target: int = 320):
    """`image` and `result` scaled by the whole factor that brings the longer side near
    `target` px (unchanged when it is already that large)."""
    img = _as_pil(image)
    f = max(1, target // max(img.size))
    if f == 1:
        return img, result
    big = img.resize((img.width * f, img.height * f), Image.Resampling.BILINEAR)

    def points(kps):
        kps = np.array(kps, np.float32)
        kps[..., :2] *= f
        return kps

    return big, replace(
        result,
        gt_boxes=np.asarray(result.gt_boxes) * f,
        gt_keypoints=points(result.gt_keypoints),
        boxes=np.asarray(result.boxes) * f,
        keypoints=points(result.keypoints),
    )


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"
