"""Is an XML file well formed? expat's answer, runnable as a separate process.

`kpnb.cvat.read_cvat` starts this beside its fast reader on large files, so expat's check
and the regex extraction run on two cores at once. It is standalone on purpose (standard
library only, started with ``python -I -S``), so the process starts in milliseconds:

    python -I -S _wellformed.py FILE [ZIP-MEMBER]

prints ``ok``, or ``error LINE COLUMN MESSAGE`` for the first problem expat finds.
"""

from __future__ import annotations

import pyexpat
import sys
import zipfile

_SLICE = 1 << 15  # expat is fastest fed about 32 KB at a time


class Refused(ValueError):
    """The document declares entities or references external ones (CVAT never does)."""


def _refuse(*args) -> None:
    raise Refused("the XML declares entities or external references")


def check(stream) -> tuple[int, int, str] | None:
    """Run expat over `stream` (binary, with ``read``): None, or (line, column, message)."""
    p = pyexpat.ParserCreate()
    p.SetParamEntityParsing(pyexpat.XML_PARAM_ENTITY_PARSING_NEVER)
    # the guards defusedxml applies: no entity declarations (bombs), no external references
    p.EntityDeclHandler = p.UnparsedEntityDeclHandler = _refuse
    p.ExternalEntityRefHandler = _refuse
    try:
        while True:
            data = stream.read(_SLICE)
            p.Parse(data, not data)
            if not data:
                return None
    except pyexpat.ExpatError as exc:
        return exc.lineno, exc.offset, pyexpat.ErrorString(exc.code)
    except Refused as exc:
        return p.CurrentLineNumber, p.CurrentColumnNumber, str(exc)


def check_path(path: str, member: str | None = None) -> tuple[int, int, str] | None:
    """`check` of a file, or of one member of a zip file."""
    if member:
        with zipfile.ZipFile(path) as zf, zf.open(member) as f:
            return check(f)
    with open(path, "rb") as f:
        return check(f)


def main(argv: list[str]) -> int:
    result = check_path(argv[0], argv[1] if len(argv) > 1 else None)
    print("ok" if result is None else "error {} {} {}".format(*result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
