"""A synthetic CVAT keypoint export drawn from a seed (`kpnb.synthetic.cats`, moved here
unchanged from ``kpnb/synthetic.py``)."""

from kpnb.synthetic.cats import *  # noqa: F403
from kpnb.synthetic.cats import (  # noqa: F401
    FEATURE_COLOURS,
    IMAGE_SIZES,
    INNER_EAR,
    LABEL,
    NOSE,
    PUPIL,
    SUBSETS,
    __all__,
    image_name,
    image_relpath,
)
