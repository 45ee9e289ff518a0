"""Pictures of annotations, augmentations, distributions, predictions and training.

Every function returns a PIL image or a pyplot-free matplotlib ``Figure`` (no global state).
Importing it does not import torch; a tensor or a prediction figure brings it in. Modules:
`draw` (one picture), `grids` (grids, legends), `plots` (charts), `predictions`.
"""

from kpnb.viz.draw import (
    OCCLUDED_MARKERS,
    OUTLINE,
    RGB,
    draw_instances,
    draw_target,
    keypoint_colors,
    marker_radius,
    show_sample,
    showcase_image,
)
from kpnb.viz.grids import color_swatch, image_grid, keypoint_legend, sample_grid
from kpnb.viz.plots import (
    plot_history,
    plot_image_sizes,
    plot_instances_per_image,
    plot_keypoint_heatmap,
    plot_keypoint_visibility,
    plot_label_counts,
    save_figure,
)
from kpnb.viz.predictions import ERROR_LINE, compare_predictions, draw_predictions

__all__ = [
    "RGB",
    "OUTLINE",
    "OCCLUDED_MARKERS",
    "ERROR_LINE",
    "keypoint_colors",
    "marker_radius",
    "color_swatch",
    "keypoint_legend",
    "draw_instances",
    "draw_target",
    "show_sample",
    "showcase_image",
    "image_grid",
    "sample_grid",
    "plot_label_counts",
    "plot_keypoint_visibility",
    "plot_instances_per_image",
    "plot_image_sizes",
    "plot_keypoint_heatmap",
    "draw_predictions",
    "compare_predictions",
    "plot_history",
    "save_figure",
]
