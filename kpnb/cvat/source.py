"""Where an export's ``annotations.xml`` is: a file, a folder holding one, or an export zip."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

from kpnb._io import ZIP_DAMAGED, ZipLimitError, check_member
from kpnb.cvat.errors import CvatFormatError


class Source:
    """An annotations.xml as a binary stream, from a file, a folder or an export zip."""

    def __init__(self, source: str | os.PathLike):
        self.path = Path(source)
        self.member: str | None = None
        if not self.path.exists():
            raise FileNotFoundError(f"{self.path}: no such file or folder")
        if self.path.is_dir():
            self.path = _find_xml_in_folder(self.path)
        elif self.path.suffix.lower() == ".zip":
            self.member = _find_xml_in_zip(self.path)

    @property
    def name(self) -> str:
        """The file (or ``zip!member``) as error messages name it."""
        return f"{self.path}!{self.member}" if self.member else str(self.path)

    def open(self):
        """A binary stream of the XML, read piece by piece (a zip member is never unpacked)."""
        if self.member is None:
            return open(self.path, "rb")
        return _ZipMember(self.path, self.member)


class _ZipMember:
    """One zip member as a stream, within kpnb's unzip limits (ratio and size, checked from
    its header before a byte is decompressed); a damaged member is a `CvatFormatError`."""

    def __init__(self, path: Path, member: str):
        self.name = f"{path}!{member}"
        self.zf = zipfile.ZipFile(path)
        try:
            info = self.zf.getinfo(member)
            check_member(path, info)
            self.fh = self.zf.open(info)
        except ZipLimitError as exc:
            self.zf.close()
            raise CvatFormatError(str(exc)) from None
        except ZIP_DAMAGED as exc:
            self.zf.close()
            raise self._damaged(exc) from None

    def read(self, n: int = -1) -> bytes:
        try:
            return self.fh.read(n)
        except ZIP_DAMAGED as exc:  # zipfile checks the CRC as the member's end is read
            raise self._damaged(exc) from None

    def _damaged(self, exc: Exception) -> CvatFormatError:
        return CvatFormatError(
            f"{self.name}: the zip member is damaged ({exc}); download or export it again"
        )

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.fh.close()
        self.zf.close()


def _find_xml_in_folder(folder: Path) -> Path:
    direct = folder / "annotations.xml"
    if direct.is_file():
        return direct
    found = sorted(folder.rglob("annotations.xml")) or sorted(folder.glob("*.xml"))
    if len(found) == 1:
        return found[0]
    if not found:
        raise FileNotFoundError(
            f"{folder}: no annotations.xml in this folder; point at a CVAT export "
            "(a folder or .zip holding annotations.xml) or at the XML file itself"
        )
    raise CvatFormatError(
        f"{folder}: several XML files ({', '.join(str(p.relative_to(folder)) for p in found[:5])});"
        " pass the annotations file itself"
    )


def _find_xml_in_zip(path: Path) -> str:
    """The one annotations member of an export zip; two are refused, naming both."""
    try:
        with zipfile.ZipFile(path) as zf:
            names = [i.filename for i in zf.infolist() if i.filename.lower().endswith(".xml")]
    except zipfile.BadZipFile as exc:
        raise CvatFormatError(f"{path}: not a readable zip ({exc}); download it again") from None
    preferred = [n for n in names if n.rsplit("/", 1)[-1] == "annotations.xml"]
    if len(preferred) > 1:
        raise CvatFormatError(
            f"{path}: this zip holds {len(preferred)} annotations.xml members "
            f"({', '.join(map(repr, preferred))}); a CVAT export has one: unpack the zip and "
            "pass the annotations.xml you mean"
        )
    if preferred:
        return preferred[0]
    if len(names) == 1:
        return names[0]
    raise CvatFormatError(
        f"{path}: no annotations.xml in this zip (XML members: {names[:5]}); "
        "export the dataset from CVAT in 'CVAT for images 1.1' or 'CVAT for video 1.1'"
    )
