"""Pictures of annotations, augmentations, distributions, predictions and training.

Every function returns a PIL image or a matplotlib ``Figure`` and keeps no global state
(no ``plt.show()``, no pyplot figure manager), so notebooks display the result and tests
can check it. Importing it does not import torch (``kpnb show`` starts fast); a tensor
passed in, or a prediction figure, brings torch in when it is used.

Modules, each importing only from those above it: `draw` (colours, markers, one annotated
picture), `grids` (grids as palette PNGs, colour legends), `plots` (dataset statistics,
heat maps, training curves) and `predictions` (predictions against the ground truth).
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
