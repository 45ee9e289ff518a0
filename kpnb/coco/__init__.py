"""COCO keypoints JSON <-> the tidy `Annotations` tables: `read_coco` reads any COCO keypoints
file, `to_coco`/`write_coco` write what CVAT's own exporter writes. COCO's ``[x, y, w, h]``
boxes exist only inside this package."""

from kpnb.coco.read import CocoFormatError, read_coco
from kpnb.coco.write import category_ids, image_ids, to_coco, write_coco

__all__ = ["CocoFormatError", "category_ids", "image_ids", "read_coco", "to_coco", "write_coco"]
