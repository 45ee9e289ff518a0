"""Charts of a dataset (labels, visibility, instances, image sizes, keypoint heat maps) and
of a training run (`plot_history`), each a matplotlib ``Figure`` built without pyplot."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.colors import PowerNorm
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from kpnb.errors import KpnbError
from kpnb.tables import Annotations
from kpnb.viz.draw import keypoint_colors

#: Visibility kinds and their colours, in the order they stack.
_VISIBILITY = {"visible": "#2e7d32", "occluded": "#f9a825", "absent": "#757575"}


def _bar_figure(title: str, xlabel: str, ylabel: str):
    fig = Figure(figsize=(6.4, 4.0), layout="constrained")
    ax = fig.add_subplot()
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    return fig, ax


def plot_label_counts(ann: Annotations) -> Figure:
    """Instances per label."""
    counts = ann.label_counts()
    fig, ax = _bar_figure("Instances per label", "label", "instances")
    colours = keypoint_colors(counts.index)
    rgb = [np.array(colours[n]) / 255 for n in counts.index]
    ax.bar(counts.index.astype(str), counts.values, color=rgb)
    ax.tick_params(axis="x", rotation=45)
    return fig


def plot_keypoint_visibility(ann: Annotations) -> Figure:
    """Each keypoint's points by visibility: stacked to 100 % on the left; on the right the
    occluded and absent shares alone, on their own scale and counted, so a 1 % sliver shows."""
    table = ann.keypoint_counts()
    several = table.index.get_level_values(0).nunique() > 1
    labels = [f"{lab}/{kp}" if several else kp for lab, kp in table.index]
    total = table["total"].to_numpy(float).clip(min=1)
    shares = {c: 100 * table[c].to_numpy(float) / total for c in _VISIBILITY}
    fig = Figure(figsize=(max(9.0, 0.9 * len(labels) + 4), 4.2), layout="constrained")
    left, right = fig.subplots(1, 2, width_ratios=[1, 1])
    y = np.arange(len(labels))
    start = np.zeros(len(labels))
    for col, colour in _VISIBILITY.items():
        left.barh(y, shares[col], left=start, color=colour, label=col)
        start += shares[col]
    left.set(xlim=(0, 100), title="All points (share of each keypoint's points)")
    width = 0.38
    peak = max(1.0, *(shares[c].max() for c in ("occluded", "absent")))
    for k, col in enumerate(("occluded", "absent")):
        bars = right.barh(y + (k - 0.5) * width, shares[col], height=width, color=_VISIBILITY[col])
        right.bar_label(bars, labels=[str(int(n)) for n in table[col]], padding=2, fontsize=8)
    right.set(xlim=(0, peak * 1.18), title="Not visible, enlarged (count at each bar)")
    for ax in (left, right):
        ax.set_yticks(y, labels)
        ax.set(xlabel="% of points", ylabel="keypoint", ylim=(len(labels) - 0.5, -0.5))
    fig.legend(
        handles=[Patch(color=c, label=n) for n, c in _VISIBILITY.items()],
        loc="outside lower center",
        ncols=3,
        frameon=False,
    )
    fig.suptitle("Keypoints by visibility")
    return fig


def plot_instances_per_image(ann: Annotations) -> Figure:
    """How many images hold 0, 1, 2... instances."""
    counts = ann.instances_per_image().value_counts().sort_index()
    fig, ax = _bar_figure("Instances per image", "instances in the image", "images")
    ax.bar(counts.index.astype(int), counts.values, color="#1565c0")
    ax.set_xticks(counts.index.astype(int))
    return fig


def plot_image_sizes(ann: Annotations) -> Figure:
    """Image widths against heights, sized by how many images share them."""
    sizes = ann.images.groupby(["width", "height"]).size().reset_index(name="n")
    fig, ax = _bar_figure("Image sizes", "width (px)", "height (px)")
    w, h, n = sizes["width"].astype(float), sizes["height"].astype(float), sizes["n"]
    ax.scatter(w, h, s=20 + 200 * n / n.max(), alpha=0.7)
    for x, y, count in zip(w, h, n, strict=True):
        ax.annotate(str(count), (x, y), fontsize=8, xytext=(4, 4), textcoords="offset points")
    ax.set_aspect("equal", adjustable="datalim")
    return fig


def plot_keypoint_heatmap(ann: Annotations, label: str, normalize: str = "box") -> Figure:
    """Where each labelled keypoint (v > 0) of `label` falls: one 2-D histogram per keypoint.

    `normalize` ``"box"`` (24 bins a side): each object in its own frame, origin at the mean
    of its points, unit their RMS distance from it (a min-max box would pin the extreme
    points to its border); with more than two keypoints only fully labelled objects count
    (a partial object's mean is not its centre). ``"image"`` (10 bins): x / width, y / height.
    """
    if normalize not in ("box", "image"):
        raise KpnbError(f"normalize must be 'box' or 'image', got {normalize!r}")
    names = list(ann.skeleton_for(label).keypoints)
    kp = ann.keypoints[(ann.keypoints["label"] == label) & (ann.keypoints["visibility"] > 0)]
    kp = kp.assign(x=kp["x"].astype(float), y=kp["y"].astype(float))
    if normalize == "box":
        g = kp.groupby(["image_index", "instance_id"])
        if len(names) > 2:
            kp = kp[g["x"].transform("size").to_numpy() == len(names)]
            g = kp.groupby(["image_index", "instance_id"])
        cx, cy = g["x"].transform("mean"), g["y"].transform("mean")
        spread = np.sqrt(
            ((kp["x"] - cx) ** 2 + (kp["y"] - cy) ** 2).groupby(g.ngroup()).transform("mean")
        )
        spread = spread.where(lambda s: s > 0, 1)
        u, v = ((kp["x"] - cx) / spread).to_numpy(), ((kp["y"] - cy) / spread).to_numpy()
        lim, xlabel, ylabel = (-1.8, 1.8), "(x - centre) / size", "(y - centre) / size"
    else:
        sizes = ann.images.set_index("image_index").loc[kp["image_index"]]
        u = kp["x"].to_numpy() / sizes["width"].to_numpy(float)
        v = kp["y"].to_numpy() / sizes["height"].to_numpy(float)
        lim, xlabel, ylabel = (0.0, 1.0), "x / image width", "y / image height"
    bins = 24 if normalize == "box" else 10
    ncols = min(5, len(names))
    nrows = -(-len(names) // ncols)
    fig = Figure(figsize=(2.6 * ncols, 2.6 * nrows + 0.5), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    masks = [(kp["keypoint"] == name).to_numpy() for name in names]
    # one colour scale for every panel, so the shared colour bar reads on all of them
    peak = max(
        [np.histogram2d(u[m], v[m], bins=bins, range=[lim, lim])[0].max() for m in masks if m.any()]
        or [1.0]
    )
    norm = PowerNorm(0.5, vmin=0, vmax=max(peak, 1.0))
    for ax, name, m in zip(axes.flat, names, masks, strict=False):
        *_, image = ax.hist2d(u[m], v[m], bins=bins, range=[lim, lim], cmap="magma", norm=norm)
        ax.set(ylim=(lim[1], lim[0]), aspect="equal")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel(xlabel, fontsize=8)
        ax.set_ylabel(ylabel, fontsize=8)
    for ax in list(axes.flat)[len(names) :]:
        ax.set_axis_off()
    fig.colorbar(image, ax=axes, shrink=0.85, label="points per bin")
    how = "each object's centre and size" if normalize == "box" else "the image size"
    fig.suptitle(f"Where the keypoints of {label!r} fall (normalised by {how})")
    return fig


_LOSS_PARTS = {
    "loss": "total",
    "loss_keypoint": "keypoint",
    "loss_classifier": "classifier",
    "loss_box_reg": "box",
    "loss_objectness": "objectness",
    "loss_rpn_box_reg": "RPN box",
}


def plot_history(history: Sequence[Mapping] | pd.DataFrame) -> Figure:
    """Training curves per epoch (1-based) on three panels: the losses (the total in bold),
    OKS AP (AP, AP50, AP75) and PCK. A missing value (None) leaves a gap; an epoch the time
    budget cut short (``complete`` False) is said so in the title."""
    df = pd.DataFrame(history)
    epoch = pd.to_numeric(df["epoch"]) + 1
    fig = Figure(figsize=(11, 3.6), layout="constrained")
    axes = fig.subplots(1, 3)
    panels = [
        ("Training loss", "loss", [c for c in df.columns if c.startswith("loss")]),
        ("Validation OKS AP", "AP (0-1)", [c for c in ("AP", "AP50", "AP75") if c in df]),
        ("Validation PCK", "share of points (0-1)", [c for c in df if c.startswith("PCK@")]),
    ]
    for ax, (name, ylabel, cols) in zip(axes, panels, strict=True):
        for c in cols:
            values = pd.to_numeric(df[c], errors="coerce")
            bold = c in ("loss", "AP")
            ax.plot(epoch, values, marker="o", lw=2.5 if bold else 1.3, label=_LOSS_PARTS.get(c, c))
        ax.set(title=name, xlabel="epoch", ylabel=ylabel)
        if len(epoch):  # whole epochs only, at most about ten ticks
            first, last = int(epoch.min()), int(epoch.max())
            ax.set_xticks(range(first, last + 1, max(1, -(-(last - first + 1) // 10))))
            ax.set_xlim(first - 0.5, last + 0.5)
        if name != "Training loss":
            ax.set_ylim(-0.03, 1.03)
        if ax.lines:
            ax.legend(fontsize=8)
    if "complete" in df and not df["complete"].fillna(True).astype(bool).all():
        fig.suptitle("Training curves (the last epoch was cut short by the time budget)")
    return fig


def save_figure(fig: Figure, path: str | os.PathLike, dpi: int = 100) -> Path:
    """Save a figure (PNG by suffix), creating folders as needed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    return path
