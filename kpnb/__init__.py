"""kpnb: from a CVAT keypoint export to a fine-tuned torchvision Keypoint R-CNN.

Stages, each its own module, data flowing one way:
``cvat``/``coco``/``synthetic`` (files -> tidy tables) -> ``transforms``/``dataset``
(tables -> tensors) -> ``model``/``train``/``evaluate`` (tensors -> metrics), with ``viz``
drawing tables and tensors and ``cli`` calling them all.
"""

from kpnb.tables import Annotations, Skeleton, flip_indices

__version__ = "0.1.0"
__all__ = ["Annotations", "Skeleton", "flip_indices", "__version__"]
