"""Where datasets come from: the embedded synthetic one, a download, or your own export.

`get_dataset` turns a name, URL or path into a local folder; `read_annotations` picks the
reader (CVAT or COCO) from what that folder holds. Downloads go through pooch into a cache
(``$KPNB_CACHE``, default ``~/.cache/kpnb``): checksummed where the checksum is known,
written under a temporary name until complete, extracted with every member checked to
stay inside its folder, and reused on the next call.
"""

from __future__ import annotations

import hashlib
import logging
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

from kpnb._io import atomic_path
from kpnb.config import cache_dir
from kpnb.tables import Annotations

__all__ = ["read_annotations", "detect_format", "get_dataset", "register_dataset",
           "DatasetUnavailableError", "REGISTRY", "safe_extract"]  # fmt: skip

log = logging.getLogger(__name__)


class DatasetUnavailableError(RuntimeError):
    """A dataset could not be fetched or unpacked; the message says what to do instead."""


@dataclass(frozen=True)
class RemoteDataset:
    url: str
    sha256: str | None = None  # None: not known; the file is still checked to be a zip


#: Datasets known by name. The seed tutorial's toy set is a zip of a CVAT export.
REGISTRY: dict[str, RemoteDataset] = {
    "cj-mills/cvat-keypoint-toy-dataset": RemoteDataset(
        "https://huggingface.co/datasets/cj-mills/cvat-keypoint-toy-dataset/resolve/main/"
        "cvat-keypoint-toy-dataset.zip"
    ),
}


def register_dataset(name: str, url: str, sha256: str | None = None) -> None:
    """Make `name` usable with `get_dataset` (a zip of a CVAT or COCO export at `url`)."""
    REGISTRY[name] = RemoteDataset(url, sha256)


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


def safe_extract(archive: str | os.PathLike, target: str | os.PathLike) -> Path:
    """Extract a zip into `target`, refusing members that would land outside it.

    ``zipfile`` would silently rewrite ``../x`` and ``/etc/x``; a dataset zip holding such
    names is broken or hostile, so kpnb stops instead. The folder appears complete or not
    at all.
    """
    archive, target = Path(archive), Path(target)
    try:
        zf = zipfile.ZipFile(archive)
    except zipfile.BadZipFile as exc:
        raise DatasetUnavailableError(f"{archive}: not a zip file ({exc}); delete it and "
                                      "download again") from None  # fmt: skip
    with zf, atomic_path(target, directory=True) as tmp:
        base = tmp.resolve()
        for info in zf.infolist():
            name = info.filename.replace("\\", "/")
            dest = (base / name).resolve()
            if name.startswith("/") or (dest != base and base not in dest.parents):
                raise DatasetUnavailableError(
                    f"{archive}: member {info.filename!r} would be written outside {target}; "
                    "refusing to extract this archive"
                )
        zf.extractall(base)
    return target


def _dataset_root(folder: Path) -> Path:
    """The folder inside an extracted export that holds its annotations."""
    for pattern in ("annotations.xml", "annotations/*.json"):
        found = sorted(folder.rglob(pattern), key=lambda p: len(p.parts))
        if found:
            hit = found[0]
            return hit.parent if hit.name == "annotations.xml" else hit.parent.parent
    raise DatasetUnavailableError(f"{folder}: holds no annotations.xml or annotations/*.json")


def _download(url: str, sha256: str | None, folder: Path, progress: bool) -> Path:
    import pooch
    import requests

    fname = Path(url.split("?")[0]).name or "dataset.zip"
    try:
        return Path(pooch.retrieve(url, known_hash=f"sha256:{sha256}" if sha256 else None,
                                   fname=fname, path=folder, progressbar=progress))  # fmt: skip
    except requests.exceptions.HTTPError as exc:
        raise DatasetUnavailableError(f"could not download {url}: {exc}") from None
    except requests.exceptions.ChunkedEncodingError as exc:
        raise DatasetUnavailableError(
            f"could not download {url}: the connection broke off ({exc.__class__.__name__}); "
            "nothing was kept, run again to retry"
        ) from None
    except requests.exceptions.RequestException as exc:
        reason = str(exc).split(":")[-1].strip(" )'\"") or type(exc).__name__
        raise DatasetUnavailableError(
            f"could not download {url} ({reason}). Offline? Use get_dataset('synthetic'), "
            f"or download the file by hand to {folder / fname} and run again"
        ) from None
    except ValueError as exc:  # pooch: hash mismatch
        raise DatasetUnavailableError(f"{url}: {exc}; the download was discarded") from None


def get_dataset(
    spec: str | os.PathLike = "synthetic",
    root: str | os.PathLike | None = None,
    *,
    n_images: int = 200,
    seed: int = 0,
    sha256: str | None = None,
    progress: bool = True,
) -> Path:
    """A local folder (or annotation file) for `spec`, fetching or making it once.

    Args:
        spec: ``"synthetic"`` (drawn by `kpnb.synthetic`, seed-stable), a name in
            `REGISTRY` (e.g. ``"cj-mills/cvat-keypoint-toy-dataset"``), an ``http(s)`` URL
            of an export zip, or a local folder, zip or annotations file.
        root: cache folder (default: ``$KPNB_CACHE`` or ``~/.cache/kpnb``).
        n_images, seed: the synthetic dataset's size and seed.
        sha256: expected checksum of a URL's file.

    Raises:
        DatasetUnavailableError: a download failed (the message says what to do), a
            checksum did not match, or an archive is broken or unsafe.
        FileNotFoundError: a local path does not exist.
    """
    root = Path(root) if root is not None else cache_dir()
    spec_str = str(spec)
    if spec_str == "synthetic":
        folder = root / f"synthetic-seed{seed}-n{n_images}"
        if not (folder / "annotations.xml").is_file():
            from kpnb.synthetic import generate

            generate(folder, n_images, seed)
        return folder
    if spec_str in REGISTRY or spec_str.startswith(("http://", "https://")):
        remote = REGISTRY.get(spec_str) or RemoteDataset(spec_str, sha256)
        key = hashlib.sha256(remote.url.encode()).hexdigest()[:12]
        extracted = root / "datasets" / key
        if not extracted.is_dir():
            archive = _download(remote.url, remote.sha256 or sha256, root / "downloads", progress)
            try:
                safe_extract(archive, extracted)
            except DatasetUnavailableError:
                archive.unlink(missing_ok=True)  # a broken archive must not count as cached
                raise
        return _dataset_root(extracted)
    path = Path(spec).expanduser()
    if not path.exists():
        known = ", ".join(["synthetic", *REGISTRY])
        raise FileNotFoundError(f"{path}: no such file or folder (named datasets: {known})")
    if path.is_file() and path.suffix.lower() == ".zip":
        digest = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
        extracted = root / "local" / f"{path.stem}-{digest}"
        if not extracted.is_dir():
            safe_extract(path, extracted)
        return _dataset_root(extracted)
    if path.is_file() and path.name == "annotations.xml":
        return path.parent
    return path


__all__ += ["open_export"]


def open_export(
    spec: str | os.PathLike = "synthetic", *, skeleton_name: str = "object", **dataset_kwargs
) -> tuple[Path, Annotations, str]:
    """Get a dataset, read it, and pick the skeleton label to work on: what notebooks 00-03 do.

    The notebooks run unchanged on the synthetic set, the seed tutorial's toy set and your
    own export because this function adapts to what it finds: a skeleton label with
    instances is used as it is (the first one, in file order); an export with no skeleton
    instances but plain ``<points>`` shapes (one shape per keypoint label, one object per
    image, like the toy set) gets a skeleton `skeleton_name` made of its point labels by
    `kpnb.tables.points_to_skeleton`, and a log line says so.

    Args:
        spec: anything `get_dataset` takes (``"synthetic"``, a registered name, a URL, a
            folder, zip or ``annotations.xml``).
        skeleton_name: the name for the skeleton built from plain points.
        **dataset_kwargs: passed to `get_dataset` (``n_images``, ``seed``, ``root``...).

    Returns:
        ``(root, annotations, label)``: the folder holding the export's images, the
        tables, and the skeleton label to learn (a key of ``annotations.skeletons``).

    Raises:
        ValueError: the export holds no keypoints at all, or its plain points do not form
            one object per image (the message says which image and label).

    Example:
        >>> root, ann, label = open_export("synthetic", n_images=20)  # doctest: +SKIP
        >>> ann.skeletons[label].keypoints  # doctest: +SKIP
        ('nose', 'left_eye', 'right_eye', 'left_ear', 'right_ear')
    """
    from kpnb.tables import points_to_skeleton

    found = get_dataset(spec, **dataset_kwargs)
    ann = read_annotations(found)
    root = found if found.is_dir() else found.parent
    used = set(ann.keypoints["label"].astype(str))
    label = next((name for name in ann.skeletons if name in used), None)
    if label is None:
        plain = sorted(used - set(ann.skeletons))
        if not plain:
            raise ValueError(
                f"{found}: no keypoints in this export ({len(ann.images)} images, skeletons "
                f"{list(ann.skeletons) or 'none'}); annotate some points in CVAT and export "
                "again, choosing 'CVAT for images' with the annotations included"
            )
        try:
            ann = points_to_skeleton(ann, skeleton_name)
        except ValueError as exc:
            raise ValueError(f"{found}: {exc}") from None
        label = skeleton_name
        log.info("%s has no skeleton: each image's plain <points> (%s) became one instance of "
                 "a skeleton %r (kpnb.tables.points_to_skeleton)", found,
                 ", ".join(ann.skeletons[label].keypoints), label)  # fmt: skip
    return root, ann, label
