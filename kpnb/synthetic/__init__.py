"""A synthetic CVAT keypoint export drawn from a seed: the dataset the tutorials and tests use.

Shaded cat faces (fur, muzzle, eyes with pupils, whiskers, a soft shadow) on backdrops
that read as photographs (grass and sky, leaves, wood, stone, cloth), all drawn
procedurally with numpy and PIL, and written exactly as CVAT exports a project
("CVAT for images 1.1" + ``images/<subset>/``), so every later stage runs the same code
on it as on a real export. Nothing is downloaded; the same seed gives the same bytes.

Two layouts:

* ``"skeleton"`` (default): a project export with subsets ``Train`` and ``Validation``
  (every fifth image) and one skeleton label ``face`` with 5 keypoints (nose, left/right
  eye, left/right ear) and 5 edges. 0-3 faces per image; a point hidden by a face drawn
  on top is ``occluded="1"``, a point cut off by the frame is ``outside="1"``.
* ``"points"``: the layout of the seed tutorial's toy set: a task export (no subsets),
  one face per image, one ``<points>`` shape per keypoint label, no skeleton; a point cut
  off by the frame is not annotated.

"Left" is the animal's left, which faces the viewer: ``left_eye`` appears on the image's
right side when the face is upright.

One job per module, each importing only from those above it: `textures` (backdrops and
colour tools), `cats` (the face: skeleton, keypoints, drawing), `scene` (one image and
its truth, `render_scene`), `export` (tables and the CVAT export, `synthesize`,
`generate`).
"""

from kpnb.synthetic.cats import FACE, FEATURE_COLOURS, INNER_EAR, NOSE, PUPIL
from kpnb.synthetic.export import (
    LABEL,
    SUBSETS,
    generate,
    image_name,
    image_relpath,
    synthesize,
)
from kpnb.synthetic.scene import IMAGE_SIZES, STYLE_VERSION, SyntheticScene, render_scene

__all__ = [
    "FACE",
    "STYLE_VERSION",
    "SyntheticScene",
    "render_scene",
    "synthesize",
    "generate",
    "LABEL",
    "SUBSETS",
    "IMAGE_SIZES",
    "PUPIL",
    "NOSE",
    "INNER_EAR",
    "FEATURE_COLOURS",
    "image_name",
    "image_relpath",
]
