"""Small file helpers shared by the writers and readers: safe output, bounded zip reading.

Writers go through `atomic_path`, which gives three promises:

- nothing half-written: output is built under a temporary sibling and renamed into place;
- nothing lost: kpnb never deletes a file it did not make, refuses to write into a non-empty
  folder unless asked to (``overwrite=True``, the CLI's ``--overwrite``), and then replaces
  only the files it writes; it never turns an existing file into a folder or back;
- ordinary permissions: outputs get ``0o666``/``0o777`` minus the umask, as ``open`` gives.

Readers of zips go through `zip_limits`, `check_zip` (a whole archive), `check_member` and
`read_member` (one member), so a zip bomb is refused from its header before anything is
decompressed.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
import tempfile
import threading
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from kpnb.errors import KpnbError

__all__ = [
    "OutputExistsError",
    "check_output",
    "atomic_path",
    "ZipLimits",
    "ZipLimitError",
    "zip_limits",
    "check_zip",
    "check_member",
    "read_member",
]


class OutputExistsError(KpnbError, FileExistsError):
    """An output path holds something kpnb will not replace; the message says what to do."""


_umask_lock = threading.Lock()


def _umask() -> int:
    """The process umask: from /proc on Linux, else by setting and restoring it."""
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    with _umask_lock:  # os.umask can only be read by setting it
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


_FILE_HINT = "pass overwrite=True (on the command line: --overwrite) to replace it"
_FOLDER_HINT = (
    "pass overwrite=True (on the command line: --overwrite) to replace only the "
    "files kpnb writes in it, keeping the others"
)
_MOVE_HINT = "move it away first"


def _refuse(path: Path, what: str, hint: str) -> OutputExistsError:
    return OutputExistsError(
        f"{path}: {what}; kpnb does not overwrite what it did not make. "
        f"Choose another output, or {hint}"
    )


def _nonempty_dir(path: Path) -> bool:
    with os.scandir(path) as it:
        return any(True for _ in it)


def check_output(
    path: str | os.PathLike, *, directory: bool = False, overwrite: bool | None = None
) -> None:
    """Raise `OutputExistsError` if writing `path` would replace what kpnb must not.

    `overwrite` None (the default) means: an existing file may be replaced (like ``open(path,
    "w")``), a non-empty folder may not. A file never becomes a folder, nor the reverse.
    `atomic_path` calls this first; callers call it early to fail before any work.
    """
    path = Path(path)
    if path.is_symlink() and not path.exists() and directory:
        raise _refuse(
            path, "is a link to nothing; kpnb will not write a folder through it", _MOVE_HINT
        )
    if directory:
        if path.exists() and not path.is_dir():
            raise _refuse(
                path, "is a file, not a folder; kpnb will not turn it into a folder", _MOVE_HINT
            )
        if path.is_dir() and not overwrite and _nonempty_dir(path):
            raise _refuse(path, "the folder is not empty", _FOLDER_HINT)
    else:
        if path.is_dir():
            raise _refuse(
                path,
                "is a folder; kpnb writes a file here and will not replace a folder",
                _MOVE_HINT,
            )
        if overwrite is False and (path.exists() or path.is_symlink()):
            raise _refuse(path, "the file exists", _FILE_HINT)
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise _refuse(
                    parent,
                    "is a file, not a folder; kpnb will not turn it into a folder",
                    _MOVE_HINT,
                )
            break


@contextlib.contextmanager
def atomic_path(
    path: str | os.PathLike, *, directory: bool = False, overwrite: bool | None = None
) -> Iterator[Path]:
    """Yield a temporary sibling of `path` to write into; on success move it to `path`.

    A file (the default) replaces an existing file at `path` in one rename, unless
    `overwrite` is False. A folder (``directory=True``) is renamed into place when `path`
    does not exist or is an empty folder; a non-empty folder is refused with
    `OutputExistsError` before any work starts, unless `overwrite`, when each file written
    replaces its namesake in `path` and every other file there stays. `path` is never
    turned from a file into a folder or back (`check_output` has the rules).

    On any exception the temporary file or folder is removed and `path` is untouched; no
    ``.tmp`` is left behind either way.

    Raises:
        OutputExistsError: see `check_output`; also when a file inside the folder stands
            where kpnb writes a folder (or the reverse).
    """
    path = Path(path)
    check_output(path, directory=directory, overwrite=overwrite)
    parent = path.parent
    parent.mkdir(parents=True, exist_ok=True)
    mask = _umask()
    if directory:
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=parent))
        os.chmod(tmp, 0o777 & ~mask)
    else:
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=parent)
        os.close(fd)
        tmp = Path(name)
        os.chmod(tmp, 0o666 & ~mask)
    try:
        yield tmp
        if not directory:
            if overwrite is False and (path.exists() or path.is_symlink()):
                raise _refuse(path, "the file exists", _FILE_HINT)  # made while we were writing
            os.replace(tmp, path)
        elif not _rename_dir(tmp, path):
            if not overwrite and _nonempty_dir(path):  # filled while we were writing
                raise _refuse(path, "the folder is not empty", _FOLDER_HINT)
            _merge_into(tmp, path)
    finally:
        # Whatever is left of the temporary (all of it on failure, empty folders after a
        # merge) is kpnb's own: created above, never a user's.
        if tmp.is_dir() and not tmp.is_symlink():
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

    Conflicts (a folder where a file goes, a file where a folder goes) are all checked
    before anything moves, so a refusal changes nothing.
    """
    files: list[Path] = []
    folders: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(tmp):
        rel = Path(dirpath).relative_to(tmp)
        folders += [rel / d for d in dirnames]
        files += [rel / f for f in filenames]
    for rel in folders:
        dest = path / rel
        if dest.exists() and not dest.is_dir():
            raise _refuse(dest, "is a file where kpnb writes a folder", _MOVE_HINT)
    for rel in files:
        dest = path / rel
        if dest.is_dir():
            raise _refuse(dest, "is a folder where kpnb writes a file", _MOVE_HINT)
    for rel in folders:
        (path / rel).mkdir(exist_ok=True)
    for rel in files:
        _move_file(tmp / rel, path / rel)


def _move_file(src: Path, dest: Path) -> None:
    try:
        os.replace(src, dest)
    except OSError as exc:
        if exc.errno != errno.EXDEV:  # `dest`'s folder is a link to another file system
            raise
        fd, name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
        os.close(fd)
        try:
            shutil.copyfile(src, name)
            os.chmod(name, 0o666 & ~_umask())
            os.replace(name, dest)
        except BaseException:
            Path(name).unlink(missing_ok=True)
            raise


# -- zips ---------------------------------------------------------------------------------
#: Defaults of `zip_limits`; each can be raised with the environment variable in its comment.
MAX_UNZIP_BYTES = 32 * 2**30  # KPNB_MAX_UNZIP_BYTES: total unpacked size, 32 GiB
MAX_UNZIP_RATIO = 200  # KPNB_MAX_UNZIP_RATIO: unpacked / packed size of one member
MAX_UNZIP_MEMBERS = 1_000_000  # KPNB_MAX_UNZIP_MEMBERS: files and folders in one zip
#: Members smaller than this may compress better than the ratio (tiny text files do).
RATIO_FLOOR = 2**20
#: What reading a corrupt zip member raises (bad CRC, bad deflate data, cut short).
ZIP_DAMAGED = (zipfile.BadZipFile, zlib.error, EOFError)


class ZipLimitError(KpnbError):
    """A zip exceeds a limit or holds a member kpnb refuses; the message says which."""


@dataclass(frozen=True)
class ZipLimits:
    """How much a zip may unpack to: refused above these, from the header, before reading."""

    max_bytes: int = MAX_UNZIP_BYTES
    max_ratio: float = MAX_UNZIP_RATIO
    max_members: int = MAX_UNZIP_MEMBERS


def _env_number(name: str, default, kind):
    value = os.environ.get(name, "").strip()
    if not value:
        return default
    try:
        number = kind(value)
    except ValueError:
        raise ZipLimitError(f"{name}={value!r} is not a number") from None
    if not number > 0:
        raise ZipLimitError(f"{name}={value!r} must be positive")
    return number


def zip_limits(
    max_bytes: int | None = None, max_ratio: float | None = None, max_members: int | None = None
) -> ZipLimits:
    """The limits in force: each argument if given, else its environment variable
    (``KPNB_MAX_UNZIP_BYTES``, ``KPNB_MAX_UNZIP_RATIO``, ``KPNB_MAX_UNZIP_MEMBERS``), else
    the default (32 GiB, 200x, a million members)."""
    return ZipLimits(
        max_bytes
        if max_bytes is not None
        else _env_number("KPNB_MAX_UNZIP_BYTES", MAX_UNZIP_BYTES, int),
        max_ratio
        if max_ratio is not None
        else _env_number("KPNB_MAX_UNZIP_RATIO", MAX_UNZIP_RATIO, float),
        max_members
        if max_members is not None
        else _env_number("KPNB_MAX_UNZIP_MEMBERS", MAX_UNZIP_MEMBERS, int),
    )


def _check_ratio(archive, info: zipfile.ZipInfo, limits: ZipLimits) -> None:
    """Refuse a member (over `RATIO_FLOOR`) unpacking to more than ``max_ratio`` x its size."""
    if info.file_size > RATIO_FLOOR and info.file_size > limits.max_ratio * max(
        info.compress_size, 1
    ):
        ratio = info.file_size / max(info.compress_size, 1)
        raise ZipLimitError(
            f"{archive}: member {info.filename!r} unpacks {info.compress_size:,} bytes to "
            f"{info.file_size:,} ({ratio:.0f}x, limit {limits.max_ratio:g}x): a zip bomb or "
            "not a dataset; if the file is trusted, raise KPNB_MAX_UNZIP_RATIO"
        )


def check_zip(archive, zf: zipfile.ZipFile, limits: ZipLimits) -> list[tuple[zipfile.ZipInfo, str]]:
    """Every member of `zf` with its clean relative name, after checking all of them.

    Refuses (`ZipLimitError`) too many members, too many bytes in total, a member that
    compresses better than the ratio, links and other special files, absolute names,
    ``..`` parts and names that occur twice. Only the central directory is read.
    """
    infos = zf.infolist()
    _check_totals(archive, infos, limits)
    seen: dict[str, str] = {}
    out = []
    for info in infos:
        clean = _clean_name(archive, info)
        if clean is None:
            continue
        if clean.rstrip("/") in seen:
            raise ZipLimitError(
                f"{archive}: member {info.filename!r} occurs twice (also as "
                f"{seen[clean.rstrip('/')]!r}); which one is meant is "
                "ambiguous, refusing this archive"
            )
        seen[clean.rstrip("/")] = info.filename
        _check_ratio(archive, info, limits)
        out.append((info, clean))
    _check_no_file_is_a_folder(archive, out)
    _check_total_ratio(archive, infos, limits)
    return out


def _check_total_ratio(archive, infos: list[zipfile.ZipInfo], limits: ZipLimits) -> None:
    """Refuse members that each pass (under `RATIO_FLOOR`) but add up to a bomb."""
    total = sum(i.file_size for i in infos)
    packed = max(sum(i.compress_size for i in infos), 1)
    if total > RATIO_FLOOR and total > limits.max_ratio * packed:
        raise ZipLimitError(
            f"{archive}: {len(infos):,} members unpack {packed:,} bytes to {total:,} "
            f"({total / packed:.0f}x, limit {limits.max_ratio:g}x): a zip bomb or not a "
            "dataset; if the file is trusted, raise KPNB_MAX_UNZIP_RATIO"
        )


def _check_totals(archive, infos: list[zipfile.ZipInfo], limits: ZipLimits) -> None:
    """Refuse more members or more unpacked bytes in all than `limits` allow."""
    if len(infos) > limits.max_members:
        raise ZipLimitError(
            f"{archive}: {len(infos):,} members, more than the limit of "
            f"{limits.max_members:,}; if the file is trusted, raise "
            "KPNB_MAX_UNZIP_MEMBERS"
        )
    total = sum(i.file_size for i in infos)
    if total > limits.max_bytes:
        raise ZipLimitError(
            f"{archive}: unpacks to {total:,} bytes, more than the limit of "
            f"{limits.max_bytes:,}; if the file is trusted and the disk has "
            "room, raise KPNB_MAX_UNZIP_BYTES"
        )


def _clean_name(archive, info: zipfile.ZipInfo) -> str | None:
    """The member's relative ``/`` name (a folder ends in ``/``; None: names nothing, such
    as ``./``), refusing links, special files and names that lead outside the target."""
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
            f"{archive}: member {raw!r} would be written outside the "
            "target folder; refusing this archive"
        )
    if not parts:
        return None
    return "/".join(parts) + ("/" if info.is_dir() else "")


def _check_no_file_is_a_folder(archive, members: list[tuple[zipfile.ZipInfo, str]]) -> None:
    """Refuse a member lying inside a path that another member holds as a file."""
    files = {clean for info, clean in members if not clean.endswith("/")}
    for info, clean in members:
        parts = clean.rstrip("/").split("/")
        for i in range(1, len(parts)):
            if "/".join(parts[:i]) in files:
                raise ZipLimitError(
                    f"{archive}: member {info.filename!r} lies inside "
                    f"{'/'.join(parts[:i])!r}, which the zip also holds as a "
                    "file; refusing this archive"
                )


def check_member(archive, info: zipfile.ZipInfo, limits: ZipLimits | None = None) -> None:
    """Refuse (`ZipLimitError`) one member that unpacks past the limits, from its header.

    For readers that stream a member (``zf.open``) rather than unpack the whole zip: call
    this first, then read; ``zipfile`` stops at the declared size and checks the CRC.
    """
    limits = limits or zip_limits()
    _check_ratio(archive, info, limits)
    if info.file_size > limits.max_bytes:
        raise ZipLimitError(
            f"{archive}: member {info.filename!r} unpacks to "
            f"{info.file_size:,} bytes, more than the limit of "
            f"{limits.max_bytes:,}; raise KPNB_MAX_UNZIP_BYTES if the file is "
            "trusted"
        )


def read_member(
    archive,
    zf: zipfile.ZipFile,
    info: zipfile.ZipInfo | str,
    limits: ZipLimits | None = None,
    chunk: int = 2**20,
) -> bytes:
    """The bytes of one zip member, read in chunks and refused past the limits.

    The header's sizes are checked first (ratio and total bytes); the stream is cut off at
    the declared size, so a member lying about its size cannot exceed it.
    """
    limits = limits or zip_limits()
    if isinstance(info, str):
        info = zf.getinfo(info)
    check_member(archive, info, limits)
    parts, size = [], 0
    with zf.open(info) as f:
        while block := f.read(chunk):
            size += len(block)
            if size > info.file_size:  # zipfile stops at the declared size; be sure anyway
                raise ZipLimitError(
                    f"{archive}: member {info.filename!r} is larger than "
                    "its header says; the zip is corrupt"
                )
            parts.append(block)
    return b"".join(parts)
