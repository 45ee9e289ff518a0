"""The one rule for an object box made from keypoints (numpy only).

An instance without a box of its own (a CVAT skeleton with no grouped ``<box>``, a COCO
annotation without ``bbox``) trains, is checked and is exported (COCO ``bbox``) with the box
`boxes_from_points` gives it; `kpnb.transforms` uses its tight form after augmentation.
"""

from __future__ import annotations

import numpy as np

__all__ = ["BOX_MARGIN", "MIN_BOX", "MIN_PAD", "boxes_from_points"]

#: Each side of a box from points grows by this fraction of the points' extent ...
BOX_MARGIN = 0.1
#: ... and by at least this many pixels.
MIN_PAD = 2.0
#: A box from points is at least this fraction of the image's shorter side on each axis.
MIN_BOX = 0.1


def boxes_from_points(
    xy: np.ndarray,
    vis: np.ndarray,
    width: float | np.ndarray = np.inf,
    height: float | np.ndarray = np.inf,
    *,
    margin: float = BOX_MARGIN,
    min_pad: float = MIN_PAD,
    min_fraction: float = MIN_BOX,
    starts: np.ndarray | None = None,
) -> np.ndarray:
    """Object boxes ``[N, 4]`` float64 xyxy (pixels) around each instance's labelled points.

    Per instance and axis, the extent of the labelled points (``v > 0``, finite; also those
    outside the image: the object reaches the border) grows on each side by
    ``max(margin * extent, min_pad)`` and is clipped to ``[0, width] x [0, height]``; a box
    narrower than ``min_fraction`` of the image's shorter side is widened to it, slid back
    inside (Keypoint R-CNN cannot learn from a 4 px box). No labelled point: ``[0, 0, 0, 0]``.
    An unknown size (NaN or inf) skips clipping and minimum; ``margin=0, min_pad=0,
    min_fraction=0`` gives the tight extent, clipped.

    Args:
        xy, vis: ``[N, K, 2]`` points and ``[N, K]`` visibility 0/1/2, or ragged ``[P, 2]``
            and ``[P]`` with `starts`: each instance's first row (ascending, none empty).
        width, height: the image size, a number or one per instance (``[N]``).

    Example:
        >>> boxes_from_points(np.array([[[50.0, 50.0]]]), np.array([[2]]), 200, 100)
        array([[45., 45., 55., 55.]])
    """
    xy = np.asarray(xy, dtype=np.float64)
    vis = np.asarray(vis)
    if starts is None:
        n, k = vis.shape[:2]
        xy, vis = xy.reshape(n * k, 2), vis.reshape(n * k)
        starts = np.arange(n) * k
    starts = np.asarray(starts, dtype=np.intp)
    n = len(starts)
    if n == 0:
        return np.zeros((0, 4))
    on = (vis > 0) & np.isfinite(xy).all(axis=1)
    lo = np.minimum.reduceat(np.where(on[:, None], xy, np.inf), starts, axis=0)
    hi = np.maximum.reduceat(np.where(on[:, None], xy, -np.inf), starts, axis=0)
    none = np.add.reduceat(on.astype(np.intp), starts) == 0
    lo[none] = hi[none] = 0.0
    pad = np.maximum((hi - lo) * margin, min_pad)
    lo, hi = lo - pad, hi + pad
    size = np.stack(np.broadcast_arrays(width, height), axis=-1).astype(np.float64)
    size = np.broadcast_to(np.where(np.isfinite(size), size, np.inf), (n, 2))
    lo, hi = lo.clip(0, size), hi.clip(0, size)
    side = size.min(axis=1, keepdims=True)
    need = np.where(np.isfinite(side), min_fraction * side, 0.0)
    small = (hi - lo < need) & ~none[:, None]
    start = np.clip((lo + hi - need) / 2, 0, np.maximum(size - need, 0))
    lo = np.where(small, start, lo)
    hi = np.where(small, np.minimum(start + need, size), hi)
    boxes = np.concatenate([lo, hi], axis=1)
    boxes[none] = 0.0
    return boxes
