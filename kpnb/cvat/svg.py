"""Skeleton labels' ``<svg>``: written as CVAT stores it, read back into a `Skeleton`."""

from __future__ import annotations

import logging
from collections import Counter
from xml.sax.saxutils import quoteattr

import numpy as np

from kpnb.cvat.values import CvatFormatError
from kpnb.tables import Skeleton

log = logging.getLogger(__name__)


def skeleton_svg(skeleton: Skeleton, positions: np.ndarray | None = None) -> str:
    """The ``<svg>`` text CVAT stores for a skeleton label (lines first, then circles).

    Node ids are 1-based positions, so edges read back as the same 0-based pairs.
    `positions` (``[K, 2]`` in a 0-100 box) places the circles; default is a ring.
    """
    k = skeleton.num_keypoints
    if positions is None:
        angles = np.linspace(-np.pi / 2, 1.5 * np.pi, k, endpoint=False)
        positions = np.stack([50 + 35 * np.cos(angles), 50 + 35 * np.sin(angles)], axis=1)
    parts = []
    for a, b in skeleton.edges:
        (x1, y1), (x2, y2) = positions[a], positions[b]
        parts.append(
            f'<line x1="{x1:.4f}" y1="{y1:.4f}" x2="{x2:.4f}" y2="{y2:.4f}" stroke="black" '
            f'data-type="edge" data-node-from="{a + 1}" stroke-width="0.5" '
            f'data-node-to="{b + 1}"></line>'
        )
    for i, name in enumerate(skeleton.keypoints):
        x, y = positions[i]
        parts.append(
            f'<circle r="1.5" stroke="black" fill="#b3b3b3" cx="{x:.4f}" cy="{y:.4f}" '
            f'stroke-width="0.1" data-type="element node" data-element-id="{i + 1}" '
            f'data-node-id="{i + 1}" data-label-name={quoteattr(name)}></circle>'
        )
    return "".join(parts)


def parse_skeleton_svg(name: str, svg: str | None, sublabels: list[str], source: str):
    """Keypoint order from the svg circles, edges from node ids; parent order as fallback."""
    from defusedxml.ElementTree import fromstring

    try:
        root = fromstring("<root>" + (svg or "") + "</root>")
    except Exception as exc:  # unescaped names in data-label-name make the svg unparsable
        log.warning(
            "%s: skeleton %r: unreadable <svg> (%s); using <parent> order", source, name, exc
        )
        root = fromstring("<root/>")
    circles = [c for c in root.iter("circle") if c.get("data-label-name") is not None]
    if not circles:
        return _skeleton(name, sublabels, (), source) if sublabels else None
    node_pos = {c.get("data-node-id"): i for i, c in enumerate(circles)}
    edges, dropped = [], []
    for ln in root.iter("line"):
        a, b = ln.get("data-node-from"), ln.get("data-node-to")
        if a in node_pos and b in node_pos:
            edges.append((node_pos[a], node_pos[b]))
        else:
            dropped.append((a, b))
    if dropped:
        log.warning("%s: skeleton %r: edges %s refer to no node; left out", source, name, dropped)
    names = [c.get("data-label-name") for c in circles]
    return _skeleton(name, names, tuple(dict.fromkeys(edges)), source)


def _skeleton(label: str, keypoints: list[str], edges: tuple, source: str) -> Skeleton:
    twice = sorted(k for k, n in Counter(keypoints).items() if n > 1)
    if twice:
        raise CvatFormatError(
            f"{source}: skeleton label {label!r} names keypoints {twice} more than once; "
            "rename them in CVAT's skeleton editor and export again"
        )
    return Skeleton(tuple(keypoints), edges)
