"""The one error `read_cvat` raises for a file it cannot read right."""

from __future__ import annotations

from kpnb.errors import KpnbError


class CvatFormatError(KpnbError):
    """A CVAT file is malformed or not CVAT: the message names the file, line and fix."""


def at_line(source: str, line: int | None, message: str) -> CvatFormatError:
    """A `CvatFormatError` for `message` at `line` of `source` (no line: the whole file)."""
    where = f"{source}: line {line}: " if line is not None else f"{source}: "
    return CvatFormatError(where + message)
