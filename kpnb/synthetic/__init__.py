"""A synthetic CVAT keypoint export drawn from a seed: the dataset the tutorials and tests use.

Shaded cat faces on photograph-like backdrops, drawn with numpy and PIL and written as CVAT
exports a project, so later stages run the same code on it as on a real export. Nothing is
downloaded; the same seed gives the same bytes. Two layouts:

* ``"skeleton"`` (default): subsets ``Train`` and ``Validation`` (every fifth image), one
  skeleton label ``face`` (nose, left/right eye, left/right ear; 5 edges), 0-3 faces per
  image; a point under a later face is ``occluded="1"``, one off the frame ``outside="1"``.
* ``"points"``: the toy set's layout in Christian Mills' "Working with CVAT Keypoint
  Annotations in Torchvision": a task export, one face per image, one ``<points>`` shape
  per keypoint label, no skeleton; a point off the frame is not annotated.

"Left" is the animal's left: ``left_eye`` is on the image's right when the face is upright.
Modules, each importing only from those before it: `textures`, `cats`, `scene`, `export`.
"""

from kpnb.synthetic.cats import FACE, FEATURE_COLOURS, INNER_EAR, NOSE, PUPIL
from kpnb.synthetic.export import generate, synthesize
from kpnb.synthetic.scene import STYLE_VERSION, SyntheticScene, render_scene

__all__ = [
    "FACE",
    "STYLE_VERSION",
    "SyntheticScene",
    "render_scene",
    "synthesize",
    "generate",
    "PUPIL",
    "NOSE",
    "INNER_EAR",
    "FEATURE_COLOURS",
]
