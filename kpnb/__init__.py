"""kpnb: from a CVAT keypoint export to a fine-tuned torchvision Keypoint R-CNN.

Stages, each its own module, data flowing one way:
``cvat``/``coco``/``synthetic`` (files -> tidy tables) -> ``transforms``/``dataset``
(tables -> tensors) -> ``model``/``train``/``evaluate`` (tensors -> metrics), with ``viz``
drawing tables and tensors and ``cli`` calling them all.
"""

import importlib.util

from kpnb.config import SMOKE, environment_report, pick, setup_notebook, version
from kpnb.skeleton import Skeleton, flip_indices
from kpnb.tables import Annotations

__version__ = version()
__all__ = [
    "Annotations",
    "Skeleton",
    "flip_indices",
    "SMOKE",
    "pick",
    "setup_notebook",
    "environment_report",
    "__version__",
]


def __getattr__(name: str):
    """``kpnb.viz`` and friends without importing torch-heavy modules at ``import kpnb``."""
    if importlib.util.find_spec(f"kpnb.{name}") is None:
        raise AttributeError(f"module 'kpnb' has no attribute {name!r}")
    return importlib.import_module(f"kpnb.{name}")
