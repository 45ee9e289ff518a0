"""Pictures of annotations, augmentations, distributions, predictions and training
(`kpnb.viz.draw`, moved here unchanged from ``kpnb/viz.py``)."""

from kpnb.viz.draw import *  # noqa: F403
from kpnb.viz.draw import (  # noqa: F401
    ERROR_LINE,
    OCCLUDED_MARKERS,
    OUTLINE,
    RGB,
    __all__,
    keypoint_legend,
    marker_radius,
    save_figure,
)
