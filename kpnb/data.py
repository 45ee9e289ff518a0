"""Where annotations come from: a local CVAT or COCO export, read into tidy tables.

`read_annotations` picks the reader from what the path holds, so every later stage and
the CLI take "an export" without asking which format it is.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

from kpnb.tables import Annotations

__all__ = ["read_annotations", "detect_format"]


def detect_format(source: str | os.PathLike) -> str:
    """``"cvat"``, ``"coco"`` or ``"tables"`` for a file, export folder or zip."""
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or folder")
    if path.is_dir():
        if (path / "skeletons.json").is_file():
            return "tables"
        if (path / "annotations.xml").is_file() or any(path.glob("*.xml")):
            return "cvat"
        if any(path.glob("annotations/*.json")) or any(path.glob("*.json")):
            return "coco"
        if any(path.rglob("annotations.xml")):
            return "cvat"
        raise FileNotFoundError(
            f"{path}: holds no annotations.xml (CVAT) and no COCO .json; point at an export"
        )
    suffix = path.suffix.lower()
    if suffix == ".xml":
        return "cvat"
    if suffix == ".json":
        return "coco"
    if suffix == ".zip":
        try:
            with zipfile.ZipFile(path) as zf:
                names = zf.namelist()
        except zipfile.BadZipFile as exc:
            raise ValueError(f"{path}: not a readable zip ({exc}); download it again") from exc
        if any(n.lower().endswith(".xml") for n in names):
            return "cvat"
        if any(n.lower().endswith(".json") for n in names):
            return "coco"
        raise ValueError(f"{path}: the zip holds no .xml or .json annotations")
    raise ValueError(f"{path}: unknown annotation file type {suffix!r}; expected .xml, .json, .zip")


def read_annotations(source: str | os.PathLike) -> Annotations:
    """Read a CVAT export (xml, folder, zip), a COCO keypoints export, or saved tables."""
    fmt = detect_format(source)
    if fmt == "cvat":
        from kpnb.cvat import read_cvat

        return read_cvat(source)
    if fmt == "coco":
        from kpnb.coco import read_coco

        return read_coco(source)
    from kpnb.tables import load_tables

    return load_tables(source)
