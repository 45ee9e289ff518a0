"""The one door for bytes: every file and zip kpnb reads or writes goes through here.

`Source` decides once which file(s) of an export (a file, folder or zip) hold its annotations
and opens them. Zips are checked from their directory before anything is decompressed (bombs,
names leading outside, links, encrypted members). `atomic_path` makes outputs appear complete
or not at all, and never replaces what kpnb did not make unless asked (``overwrite=True``).
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import secrets
import shutil
import stat
import zipfile
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from kpnb.errors import KpnbError

__all__ = [
    "OutputExistsError",
    "check_output",
    "atomic_path",
    "name_problem",
    "ZipLimits",
    "ZipLimitError",
    "zip_limits",
    "check_zip",
    "check_member",
    "extract_zip",
    "write_zip",
    "Source",
    "env_number",
]

#: The longest file name (one path part) the common file systems hold, in bytes.
MAX_NAME_BYTES = 255


def name_problem(name: str) -> str | None:
    """Why `name` (a relative path) cannot name a file (a NUL, a part too long), or None."""
    if "\0" in name:
        return "holds a NUL character, which no file name can"
    for part in name.replace("\\", "/").split("/"):
        if len(part.encode("utf-8", "surrogateescape")) > MAX_NAME_BYTES:
            return f"has a part longer than {MAX_NAME_BYTES} bytes, more than a file name can be"
    return None


# -- outputs ----------------------------------------------------------------------------------
class OutputExistsError(KpnbError, FileExistsError):
    """An output path holds something kpnb will not replace; the message says what to do."""


_FILE_HINT = "pass {overwrite} to replace it"
_FOLDER_HINT = "pass {overwrite} to replace only the files kpnb writes in it, keeping the others"


def _refuse(path: Path, what: str, hint: str | None = None) -> OutputExistsError:
    return OutputExistsError(
        f"{path}: {what}; kpnb does not overwrite what it did not make. Choose another output, "
        f"or {hint or 'move it away first'}",
        params={"overwrite": True} if hint else None,
    )


_SPECIAL = {
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFIFO: "a FIFO (named pipe)",
    stat.S_IFSOCK: "a socket",
}


def _refuse_special(path: Path) -> None:
    """Refuse `path` when it is (or links to) a device, FIFO or socket."""
    try:
        kind = _SPECIAL.get(stat.S_IFMT(path.stat().st_mode))
    except OSError:  # missing, or a link to nothing
        return
    if kind:
        raise OutputExistsError(
            f"{path}: is {kind}, not a regular file; kpnb writes only regular files and "
            "folders and never replaces anything else: choose another output"
        )


def check_output(
    path: str | os.PathLike, *, directory: bool = False, overwrite: bool | None = None
) -> None:
    """Raise `OutputExistsError` if writing `path` would replace what kpnb must not.

    `overwrite` None (the default): an existing file may be replaced, a non-empty folder may
    not. A file never becomes a folder, nor the reverse; a device, FIFO or socket is never
    replaced. Callers call it early, to fail before any work.
    """
    path = Path(path)
    if problem := name_problem(path.name):
        raise KpnbError(f"{path}: the output name {problem}; choose a shorter plain name")
    _refuse_special(path)
    if directory and path.is_symlink() and not path.exists():
        raise _refuse(path, "is a link to nothing; kpnb will not write a folder through it")
    if directory and path.exists() and not path.is_dir():
        raise _refuse(path, "is a file, not a folder; kpnb will not turn it into a folder")
    if directory and path.is_dir() and not overwrite and any(path.iterdir()):
        raise _refuse(path, "the folder is not empty", _FOLDER_HINT)
    if not directory and path.is_dir():
        raise _refuse(path, "is a folder; kpnb writes a file here and will not replace a folder")
    if not directory and overwrite is False and (path.exists() or path.is_symlink()):
        raise _refuse(path, "the file exists", _FILE_HINT)
    parent = next((p for p in path.parents if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise _refuse(parent, "is a file, not a folder; kpnb will not turn it into a folder")


@contextlib.contextmanager
def atomic_path(
    path: str | os.PathLike, *, directory: bool = False, overwrite: bool | None = None
) -> Iterator[Path]:
    """Yield a temporary sibling of `path` to write into; on success move it to `path`.

    A file replaces an existing one in one rename, unless `overwrite` is False. A folder
    (``directory=True``) is renamed into place when `path` is missing or empty; a non-empty
    one is refused unless `overwrite`: then each file written replaces its namesake and the
    others stay. On an exception `path` is untouched."""
    path = Path(path)
    check_output(path, directory=directory, overwrite=overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    # a new hidden sibling (O_EXCL: never an old file), with the mode open/mkdir give: the
    # kernel applies the umask, so kpnb never reads it
    stem = path.name.encode("utf-8", "surrogateescape")[:100].decode("utf-8", "ignore")
    tmp = path.with_name(f".{stem}.{secrets.token_hex(8)}.tmp")
    if directory:
        os.mkdir(tmp, 0o777)
    else:
        os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
    try:
        yield tmp
        check_output(path, directory=directory, overwrite=overwrite)  # made while we wrote?
        if not directory:
            os.replace(tmp, path)
        elif not _rename_dir(tmp, path):
            _merge_into(tmp, path)
    finally:  # what is left of the temporary (all of it on failure) is kpnb's own
        if directory:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)


def _rename_dir(tmp: Path, path: Path) -> bool:
    """Rename `tmp` to `path` if that replaces nothing; False if `path` is a non-empty folder."""
    if path.is_symlink():  # a link to a folder: write into what it points at, keep the link
        return False
    try:
        os.rename(tmp, path)  # POSIX: replaces only a missing path or an empty folder
    except OSError as exc:
        if exc.errno in (errno.ENOTEMPTY, errno.EEXIST) and path.is_dir():
            return False
        raise
    return True


def _merge_into(tmp: Path, path: Path) -> None:
    """Move every file under `tmp` to the same place under `path`, replacing its namesake.
    Conflicts are all checked before anything moves, so a refusal changes nothing."""
    found = sorted(p.relative_to(tmp) for p in tmp.rglob("*"))  # a folder before its files
    folders = [rel for rel in found if (tmp / rel).is_dir()]
    files = [rel for rel in found if not (tmp / rel).is_dir()]
    for rel in folders:
        if (path / rel).exists() and not (path / rel).is_dir():
            raise _refuse(path / rel, "is a file where kpnb writes a folder")
    for rel in files:
        check_output(path / rel)  # a folder, device, FIFO or socket there is refused
    for rel in folders:
        (path / rel).mkdir(exist_ok=True)
    for rel in files:  # copied beside its namesake, which may be on another file system
        with atomic_path(path / rel) as new:
            shutil.copyfile(tmp / rel, new)


# -- zips ---------------------------------------------------------------------------------------
#: Members smaller than this may compress better than the ratio (tiny text files do).
RATIO_FLOOR = 2**20
_READABLE = {zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA}


class ZipLimitError(KpnbError):
    """A zip exceeds a limit, is damaged or holds a member kpnb refuses; the message says which."""


@dataclass(frozen=True)
class ZipLimits:
    """How much a zip may unpack to: refused above these, from the header, before reading.
    Each default can be raised with the environment variable in its comment."""

    max_bytes: int = 32 * 2**30  # KPNB_MAX_UNZIP_BYTES: total unpacked size, 32 GiB
    max_ratio: float = 200  # KPNB_MAX_UNZIP_RATIO: unpacked / packed size of one member
    max_members: int = 1_000_000  # KPNB_MAX_UNZIP_MEMBERS: files and folders in one zip


def env_number(name: str, default, kind=int, error: type[KpnbError] = KpnbError):
    """The positive number (`kind`) environment variable `name` holds, else `default`; a
    value that is not one is refused with `error`."""
    value = os.environ.get(name, "").strip()
    if not value:
        return default
    try:
        number = kind(value)
    except ValueError:
        number = 0
    if not number > 0:
        whole = " whole" if kind is int else ""
        raise error(f"{name}={value!r} is not a positive{whole} number")
    return number


def zip_limits(
    max_bytes: int | None = None, max_ratio: float | None = None, max_members: int | None = None
) -> ZipLimits:
    """The limits in force: each argument if given, else its environment variable
    (``KPNB_MAX_UNZIP_BYTES``, ``KPNB_MAX_UNZIP_RATIO``, ``KPNB_MAX_UNZIP_MEMBERS``), else
    the `ZipLimits` default."""
    env, default = functools.partial(env_number, error=ZipLimitError), ZipLimits()
    return ZipLimits(
        env("KPNB_MAX_UNZIP_BYTES", default.max_bytes) if max_bytes is None else max_bytes,
        env("KPNB_MAX_UNZIP_RATIO", default.max_ratio, float) if max_ratio is None else max_ratio,
        env("KPNB_MAX_UNZIP_MEMBERS", default.max_members) if max_members is None else max_members,
    )


def _open_zip(archive: Path, error: type[KpnbError] = ZipLimitError) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(archive)
    except zipfile.BadZipFile as exc:
        raise error(
            f"{archive}: not a zip file, or a damaged one ({exc}); is the file complete? "
            "download or export it again"
        ) from None


def check_member(archive, info: zipfile.ZipInfo, limits: ZipLimits | None = None) -> None:
    """Refuse (`ZipLimitError`) one member from its header: encrypted, compressed in a way
    Python cannot read, or unpacking past the limits (size, or ratio above `RATIO_FLOOR`)."""
    limits = limits or zip_limits()
    where = f"{archive}: member {info.filename!r}"
    if info.flag_bits & 0x1:
        raise ZipLimitError(
            f"{where} is encrypted; kpnb reads no passwords: unzip it yourself and pass the folder"
        )
    if info.compress_type not in _READABLE:
        raise ZipLimitError(
            f"{where} uses compression method {info.compress_type} (e.g. implode), which "
            "Python cannot unpack; unzip it with another tool, or zip it again with deflate"
        )
    _check_size(f"{where} unpacks", info.file_size, info.compress_size, limits)


def _check_size(what: str, unpacked: int, packed: int, limits: ZipLimits) -> None:
    """Refuse `unpacked` bytes from `packed`: above the ratio (past `RATIO_FLOOR`) or the size."""
    ratio = unpacked / max(packed, 1)
    if unpacked > RATIO_FLOOR and ratio > limits.max_ratio:
        raise ZipLimitError(
            f"{what} {packed:,} bytes to {unpacked:,} ({ratio:.0f}x, limit "
            f"{limits.max_ratio:g}x): a zip bomb or not a dataset; if the file is trusted, "
            "raise KPNB_MAX_UNZIP_RATIO"
        )
    if unpacked > limits.max_bytes:
        raise ZipLimitError(
            f"{what} to {unpacked:,} bytes, more than the limit of {limits.max_bytes:,}; if "
            "the file is trusted and the disk has room, raise KPNB_MAX_UNZIP_BYTES"
        )


def check_zip(archive, zf: zipfile.ZipFile, limits: ZipLimits) -> list[tuple[zipfile.ZipInfo, str]]:
    """Every member of `zf` with its clean relative name, from the central directory alone.
    Refuses (`ZipLimitError`) too many members or bytes, a bad ratio, what `check_member` and
    `_clean_name` refuse, names that occur twice and members inside a file."""
    infos = zf.infolist()
    if len(infos) > limits.max_members:
        raise ZipLimitError(
            f"{archive}: {len(infos):,} members, more than the limit of "
            f"{limits.max_members:,}; if the file is trusted, raise KPNB_MAX_UNZIP_MEMBERS"
        )
    seen: dict[str, str] = {}
    out = []
    for info in infos:
        clean = _clean_name(archive, info)
        if clean is None:
            continue
        key = clean.rstrip("/")
        if key in seen:
            raise ZipLimitError(
                f"{archive}: member {info.filename!r} occurs twice (also as {seen[key]!r}); "
                "which one is meant is ambiguous, refusing this archive"
            )
        seen[key] = info.filename
        check_member(archive, info, limits)
        out.append((info, clean))
    files = {clean for _, clean in out if not clean.endswith("/")}
    for info, clean in out:
        if inside := [str(p) for p in PurePosixPath(clean).parents if str(p) in files]:
            raise ZipLimitError(
                f"{archive}: member {info.filename!r} lies inside {inside[-1]!r}, which the "
                "zip also holds as a file; refusing this archive"
            )
    total, packed = sum(i.file_size for i in infos), sum(i.compress_size for i in infos)
    _check_size(f"{archive}: {len(infos):,} members unpack", total, packed, limits)
    return out


def _clean_name(archive, info: zipfile.ZipInfo) -> str | None:
    """The member's relative ``/`` name (a folder's ends in ``/``; None for ``./``), refusing
    links, special files and names that lead outside the target."""
    raw = info.filename
    name = raw.replace("\\", "/")
    mode = info.external_attr >> 16
    if stat.S_IFMT(mode) and not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        kind = "a symbolic link" if stat.S_ISLNK(mode) else "not a regular file"
        raise ZipLimitError(
            f"{archive}: member {raw!r} is {kind}; refusing this archive "
            "(a dataset zip holds only files and folders)"
        )
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if name.startswith("/") or (len(name) > 1 and name[1] == ":") or ".." in parts:
        raise ZipLimitError(
            f"{archive}: member {raw!r} would be written outside the target folder; "
            "refusing this archive"
        )
    if problem := name_problem(name):
        raise ZipLimitError(f"{archive}: member {raw!r} {problem}; refusing this archive")
    if not parts:
        return None
    return "/".join(parts) + ("/" if info.is_dir() else "")


@contextlib.contextmanager
def _member_stream(archive, zf: zipfile.ZipFile, info: zipfile.ZipInfo, error):
    """`info`'s stream (zipfile stops at its declared size and checks its CRC); a damaged
    member, met while opening or reading, is raised as `error`."""
    try:
        with zf.open(info) as f:
            yield f
    except (zipfile.BadZipFile, zlib.error, EOFError) as exc:  # bad CRC or data, cut short
        raise error(
            f"{archive}!{info.filename}: the zip member is damaged ({exc}); download or export "
            "it again"
        ) from None


def extract_zip(archive: str | os.PathLike, target: str | os.PathLike, limits: ZipLimits) -> Path:
    """Unpack `archive` into the new folder `target` after `check_zip`: into a temporary
    sibling renamed to `target` when complete. Raises `ZipLimitError`, `OutputExistsError`."""
    archive, target = Path(archive), Path(target)
    with _open_zip(archive) as zf:
        members = check_zip(archive, zf, limits)
        with atomic_path(target, directory=True) as tmp:
            for info, name in members:
                dest = tmp / name
                if info.is_dir():
                    dest.mkdir(parents=True, exist_ok=True)
                    continue
                dest.parent.mkdir(parents=True, exist_ok=True)
                try:
                    out = open(dest, "xb")
                except FileExistsError:  # a case-insensitive disk: 'A.png' and 'a.png'
                    raise ZipLimitError(
                        f"{archive}: member {info.filename!r} names a file written before "
                        "(the names differ only in case); refusing this archive"
                    ) from None
                with out, _member_stream(archive, zf, info, ZipLimitError) as src:
                    shutil.copyfileobj(src, out, 2**20)
    return target


def write_zip(
    path: str | os.PathLike, members: Iterable[tuple[str, bytes]], *, overwrite: bool | None = None
) -> Path:
    """Write the zip `path` atomically from ``(name, bytes)`` pairs, deflated, with a fixed
    timestamp so the same members give the same bytes."""
    path = Path(path)
    with atomic_path(path, overwrite=overwrite) as tmp, zipfile.ZipFile(tmp, "w") as zf:
        for name, data in members:
            info = zipfile.ZipInfo(name, date_time=(2024, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            zf.writestr(info, data, compress_type=zipfile.ZIP_DEFLATED)
    return path


# -- sources ------------------------------------------------------------------------------------
class Source:
    """An export as given: a file, a folder or a zip, and which of its files hold the
    annotations (`files`, in order) in which `format` (``"cvat"``, ``"coco"``, ``"tables"``).

    Decided once, by these rules: a folder holding ``skeletons.json`` is saved tables; else
    its ``annotations.xml`` (or its one ``*.xml``) is CVAT; else ``annotations/*.json`` (or its
    ``*.json``) is COCO; else the shallowest ``annotations.xml`` or ``annotations/*.json``
    below it. A zip's ``annotations.xml`` member (or its one ``.xml``) is CVAT, else its
    ``.json`` members are COCO. A file is CVAT (``.xml``) or COCO (``.json``). `format` given
    picks that format's files. Input errors are raised as `error` (a `KpnbError` class).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        format: str | None = None,
        *,
        error: type[KpnbError] = KpnbError,
    ):
        self.path, self.error = Path(path), error
        self.root: Path | None = None  # the images' folder: a folder's, a file's own (not a zip)
        if not self.path.exists():
            raise FileNotFoundError(f"{self.path}: no such file or folder")
        self.zip = self.path.suffix.lower() == ".zip" and not self.path.is_dir()
        if self.path.is_dir():
            self.format, self.files, self.root = self._in_folder(self.path, format)
        elif self.zip:
            self.format, self.files = self._in_zip(format)
        else:
            suffix = self.path.suffix.lower()
            found = format or {".xml": "cvat", ".json": "coco"}.get(suffix)
            if found is None:
                raise error(
                    f"{self.path}: unknown annotation file type {suffix!r}; expected .xml, "
                    ".json or .zip, or an export folder"
                )
            self.format, self.files, self.root = found, (self.path.name,), self.path.parent

    def _in_folder(self, folder: Path, want: str | None) -> tuple[str, tuple[str, ...], Path]:
        if (folder / "skeletons.json").is_file() and want in (None, "tables"):
            return "tables", ("skeletons.json",), folder
        xml = [folder / "annotations.xml"]
        if not xml[0].is_file():
            xml = sorted(folder.glob("*.xml"))
        if xml and want in (None, "cvat"):
            return "cvat", self._one(folder, xml), folder
        json = sorted(folder.glob("annotations/*.json")) or sorted(folder.glob("*.json"))
        if json and want in (None, "coco"):
            return "coco", tuple(str(p.relative_to(folder)) for p in json), folder
        pattern = {"cvat": ["annotations.xml"], "coco": ["annotations/*.json"]}.get(
            want, ["annotations.xml", "annotations/*.json"]
        )
        nested = sorted(
            (p for pat in pattern for p in folder.rglob(pat)), key=lambda p: (len(p.parts), p)
        )
        if nested:
            hit = nested[0]
            root = hit.parent if hit.suffix == ".xml" else hit.parent.parent
            if hit.suffix == ".xml":
                self._one(folder, [p for p in nested if len(p.parts) == len(hit.parts)])
            fmt, files, _ = self._in_folder(root, want)
            return fmt, tuple(str((root / f).relative_to(folder)) for f in files), root
        raise FileNotFoundError(
            f"{folder}: holds no annotations.xml (CVAT) and no COCO .json; point at an export "
            "(a folder or .zip holding annotations.xml) or at the annotations file itself"
        )

    def _one(self, folder: Path, found: list[Path]) -> tuple[str]:
        if len(found) > 1:
            listed = ", ".join(str(p.relative_to(folder)) for p in found[:5])
            raise self.error(
                f"{folder}: several XML files ({listed}); pass the annotations file itself"
            )
        return (str(found[0].relative_to(folder)),)

    def _in_zip(self, want: str | None) -> tuple[str, tuple[str, ...]]:
        with _open_zip(self.path, self.error) as zf:
            names = [i.filename for i in zf.infolist() if not i.is_dir()]
        xml = [n for n in names if n.lower().endswith(".xml")]
        json = sorted(n for n in names if n.lower().endswith(".json"))
        if want == "cvat" or (want is None and xml):
            exact = [n for n in xml if n.rsplit("/", 1)[-1] == "annotations.xml"]
            if len(exact) > 1:
                raise self.error(
                    f"{self.path}: this zip holds {len(exact)} annotations.xml members "
                    f"({', '.join(map(repr, exact))}); a CVAT export has one: unzip it and "
                    "pass the annotations.xml you mean"
                )
            if exact or len(xml) == 1:
                return "cvat", ((exact or xml)[0],)
            raise self.error(
                f"{self.path}: no annotations.xml in this zip (XML members: {xml[:5]}); "
                "export the dataset from CVAT in 'CVAT for images 1.1' or 'CVAT for video 1.1'"
            )
        if json and want in (None, "coco"):
            return "coco", tuple(json)
        raise FileNotFoundError(f"{self.path}: the zip holds no .xml or .json annotations")

    def where(self, name: str) -> str:
        """`name` as messages name it: its path, or ``zip!member``."""
        if self.zip:
            return f"{self.path}!{name}"
        return str(self.path / name if self.path.is_dir() else self.path)

    @contextlib.contextmanager
    def open(self, name: str) -> Iterator[BinaryIO]:
        """A binary stream of file `name` (a zip member is streamed within `zip_limits`)."""
        if not self.zip:
            with open(self.where(name), "rb") as f:
                yield f
            return
        with _open_zip(self.path, self.error) as zf:
            info = zf.getinfo(name)
            try:
                check_member(self.path, info)
            except ZipLimitError as exc:
                raise self.error(str(exc)) from None
            with _member_stream(self.path, zf, info, self.error) as f:
                yield f

    def read_bytes(self, name: str) -> bytes:
        with self.open(name) as f:
            return f.read()
