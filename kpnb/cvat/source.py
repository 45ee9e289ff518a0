"""Where an export's ``annotations.xml`` is: `kpnb.io.Source` with CVAT's error class.
(A shim until `read_cvat` takes a `kpnb.io.Source` itself.)"""

from __future__ import annotations

import os
from pathlib import Path

from kpnb.cvat.errors import CvatFormatError
from kpnb.io import Source as _Source


class Source:
    """An annotations.xml as a binary stream, from a file, a folder or an export zip."""

    def __init__(self, source: str | os.PathLike):
        self.src = _Source(source, "cvat", error=CvatFormatError)
        self.name = self.src.where(self.src.files[0])  # the file or ``zip!member``
        self.path = self.src.path if self.src.zip else Path(self.name)

    def open(self):
        return self.src.open(self.src.files[0])
