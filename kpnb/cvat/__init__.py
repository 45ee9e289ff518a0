"""CVAT for images / video 1.1 XML <-> the tidy `Annotations` tables.

`read_cvat` reads an export (layouts with real examples: ``tests/data/conformance/README.md``):
`kpnb.io.Source` finds the XML, `parse` collects and checks its rows, `build` makes the
tables. `write_cvat` (`write`) writes XML that CVAT itself imports.
"""

from __future__ import annotations

import os

from kpnb.cvat.build import build_tables
from kpnb.cvat.parse import CvatFormatError, Reader
from kpnb.cvat.write import FIXED_DUMPED, iter_cvat_lines, skeleton_svg, write_cvat
from kpnb.io import Source
from kpnb.tables import Annotations

__all__ = [
    "CvatFormatError",
    "read_cvat",
    "write_cvat",
    "skeleton_svg",
    "iter_cvat_lines",
    "FIXED_DUMPED",
]


def read_cvat(source: str | os.PathLike | Source, *, keyframes_only: bool = False) -> Annotations:
    """Read a CVAT for images/video 1.1 export (an ``annotations.xml``, a folder holding
    one, a CVAT export ``.zip``, or the `kpnb.io.Source` that found it) into `Annotations`.

    A skeleton instance has one keypoint row per skeleton keypoint, in definition order; a
    missing element is ``(nan, nan)`` with visibility 0. `keyframes_only` keeps only a video
    track's keyframes, dropping CVAT's interpolated frames and those a track repeats past its
    last keyframe (``meta["past_last_keyframe"]`` counts them per track either way). The
    file is streamed: memory grows with the tables, not the file.

    Raises:
        CvatFormatError: malformed or non-CVAT XML, a DTD with declarations, or a bad
            value; the message names the file, line, element and attribute.
        FileNotFoundError: `source` does not exist or holds no annotations file.
    """
    src = source if isinstance(source, Source) else Source(source, "cvat", error=CvatFormatError)
    src.error = CvatFormatError
    name = src.files[0]
    reader = Reader(src.where(name))
    with src.open(name) as stream:
        reader.parse(stream)
    ann = build_tables(reader, keyframes_only=keyframes_only)
    # the file or zip on disk (a zip's member is not a path)
    ann.meta["path"] = str(src.path if src.zip else src.where(name))
    return ann
