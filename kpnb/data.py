"""Where datasets come from: the embedded synthetic one, a download, or your own export.

`get_dataset` turns a name, URL or path into a local folder (downloads are cached by pooch in
``$KPNB_CACHE``, default ``~/.cache/kpnb``, and deleted when a check fails, to be fetched
again); `read_annotations` reads it; `open_export` does both and picks the label to learn.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import urllib.parse
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from kpnb.coco import read_coco
from kpnb.config import cache_dir
from kpnb.cvat import read_cvat
from kpnb.errors import KpnbError
from kpnb.grouping import merge_skeletons, points_as_instances, points_to_skeleton
from kpnb.io import OutputExistsError, Source, ZipLimitError, extract_zip, zip_limits
from kpnb.tables import Annotations, load_tables

__all__ = [
    "read_annotations",
    "detect_format",
    "open_export",
    "annotation_file",
    "first_record",
    "get_dataset",
    "register_dataset",
    "DatasetUnavailableError",
    "REGISTRY",
]

log = logging.getLogger(__name__)


class DatasetUnavailableError(KpnbError, RuntimeError):
    """A dataset could not be fetched or unpacked; the message says what to do instead."""


class _ChecksumMismatch(DatasetUnavailableError):
    """The file at a URL is not the one its sha256 names."""


#: Datasets known by name: ``(url, sha256 or None)``. Christian Mills' toy set is a CVAT zip.
REGISTRY: dict[str, tuple[str, str | None]] = {
    "cj-mills/cvat-keypoint-toy-dataset": (
        "https://huggingface.co/datasets/cj-mills/cvat-keypoint-toy-dataset/resolve/main/"
        "cvat-keypoint-toy-dataset.zip",
        None,
    ),
}


def register_dataset(name: str, url: str, sha256: str | None = None) -> None:
    """Make `name` usable with `get_dataset` (a zip of a CVAT or COCO export at `url`)."""
    REGISTRY[name] = (url, sha256)


def detect_format(source: str | os.PathLike) -> str:
    """``"cvat"``, ``"coco"`` or ``"tables"`` for a file, export folder or zip."""
    return Source(source).format


def read_annotations(source: str | os.PathLike, *, keyframes_only: bool = False) -> Annotations:
    """Read a CVAT export (xml, folder, zip), a COCO keypoints export, or saved tables.
    `keyframes_only`: CVAT video tracks keep only their keyframes (see `kpnb.cvat.read_cvat`).
    """
    src = Source(source)  # which file, in which format: decided here, once
    if src.format == "cvat":
        return read_cvat(src, keyframes_only=keyframes_only)
    if src.format == "coco":
        return read_coco(src)
    return load_tables(source)


def _dataset_root(folder: Path) -> Path:
    """The folder inside an extracted export that holds its annotations (and images)."""
    try:
        return Source(folder).root
    except (FileNotFoundError, KpnbError) as exc:
        raise DatasetUnavailableError(str(exc)) from None


def _cache_name(url: str) -> tuple[str, str]:
    """``(folder, file)`` names for `url` in the cache: ``<stem>-<12 hex digits of the URL's
    sha256>``, so two URLs ending in ``data.zip`` never share a cached file."""
    key = hashlib.sha256(url.encode("utf-8")).hexdigest()[:12]
    base = urllib.parse.unquote(urllib.parse.urlsplit(url).path.rsplit("/", 1)[-1])
    base = re.sub(r"[^A-Za-z0-9._-]+", "_", base).strip("._") or "dataset.zip"
    return f"{Path(base).stem[:60]}-{key}", base[:100]


def _discard(archive: Path) -> None:
    """Delete a cached download that failed verification (and its folder, if now empty)."""
    archive.unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        archive.parent.rmdir()


def _download(url: str, sha256: str | None, folder: Path, fname: str, progress: bool) -> Path:
    """Fetch `url` into ``folder/fname`` with pooch (reused when present and verified)."""
    import pooch
    import requests

    try:
        known = f"sha256:{sha256}" if sha256 else None
        return Path(pooch.retrieve(url, known, fname=fname, path=folder, progressbar=progress))
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
        msg = " ".join(str(exc).split())  # pooch's message spans lines
        raise _ChecksumMismatch(f"{url}: {msg}; the download was discarded") from None


def _extract_verified(archive: Path, extracted: Path, *, discard: bool) -> Path:
    """Unpack `archive` to `extracted` (bounded, nothing outside it) and return the export's
    root in it; on failure keep neither. `discard`: the archive is kpnb's own download,
    deleted when it fails, so the next run fetches it again."""
    try:
        extract_zip(archive, extracted, zip_limits())
        return _dataset_root(extracted)
    except OutputExistsError:
        if not extracted.is_dir():
            raise
        return _dataset_root(extracted)  # another process unpacked the same archive meanwhile
    except (ZipLimitError, DatasetUnavailableError) as exc:
        shutil.rmtree(extracted, ignore_errors=True)  # unpacked just now, so kpnb's own
        if not discard:
            raise DatasetUnavailableError(str(exc)) from None
        _discard(archive)
        raise DatasetUnavailableError(
            f"{exc}; the download was deleted, so the next run downloads it again"
        ) from None


def _hex(sha256: str | None) -> str | None:
    """`sha256` as 64 lower-case hex digits (a ``sha256:`` prefix is allowed), or None."""
    if sha256 is None:
        return None
    digest = str(sha256).strip().lower().removeprefix("sha256:")
    if not re.fullmatch(r"[0-9a-f]{64}", digest):
        raise KpnbError(f"sha256={sha256!r} is not a sha256 checksum (64 hex digits)")
    return digest


def _cached_download(url: str, sha256: str | None, root: Path, progress: bool) -> Path:
    """The export at `url`, from the cache when there, else downloaded and unpacked. With
    `sha256`, pooch checks the kept zip on every call (a mismatch deletes the cache entry);
    without, an extraction is reused as it is."""
    folder, fname = _cache_name(url)
    extracted = root / "datasets" / folder
    archive = root / "downloads" / folder / fname
    if extracted.is_dir() and sha256 is None:
        return _dataset_root(extracted)
    before = archive.stat().st_mtime_ns if archive.is_file() else None
    try:
        archive = _download(url, sha256, archive.parent, fname, progress)
    except _ChecksumMismatch:
        shutil.rmtree(extracted, ignore_errors=True)  # kpnb's own cache entry
        _discard(archive)
        raise
    if extracted.is_dir() and archive.stat().st_mtime_ns == before:
        return _dataset_root(extracted)
    shutil.rmtree(extracted, ignore_errors=True)  # a new download
    return _extract_verified(archive, extracted, discard=True)


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
        spec: ``"synthetic"`` (seed-stable), a name in `REGISTRY`, an ``http(s)`` URL of an
            export zip, or a local folder, zip or annotations file.
        root: cache folder (default: ``$KPNB_CACHE`` or ``~/.cache/kpnb``).
        n_images, seed: the synthetic dataset's size and seed.
        sha256: expected checksum of a URL's (or local zip's) file, checked on every call.

    Raises:
        DatasetUnavailableError: offline, a failed download or checksum, or an archive that
            is broken, over the `kpnb.io` zip limits or holds no annotations (such a
            download is deleted, to be fetched again).
        FileNotFoundError: a local path does not exist.
    """
    root = Path(root) if root is not None else cache_dir()
    spec_str = str(spec)
    if spec_str == "synthetic":
        if sha256 is not None:
            raise KpnbError("sha256= checks a downloaded or local file; 'synthetic' is drawn")
        from kpnb.synthetic import STYLE_VERSION, generate

        folder = root / f"synthetic-v{STYLE_VERSION}-seed{seed}-n{n_images}"
        if not (folder / "annotations.xml").is_file():
            generate(folder, n_images, seed)
        return folder
    if spec_str in REGISTRY or spec_str.startswith(("http://", "https://")):
        url, known = REGISTRY.get(spec_str, (spec_str, None))
        return _cached_download(url, _hex(known or sha256), root, progress)
    path = Path(spec).expanduser()
    if not path.exists():
        known = ", ".join(["synthetic", *REGISTRY])
        raise FileNotFoundError(f"{path}: no such file or folder (named datasets: {known})")
    if sha256 is not None and path.is_dir():
        raise KpnbError(f"{path}: sha256= checks a file, and this is a folder; drop it")
    is_zip = path.is_file() and path.suffix.lower() == ".zip"
    if is_zip or sha256 is not None:
        import pooch  # reads in chunks: a dataset zip may not fit in memory

        digest = pooch.file_hash(str(path), alg="sha256")
        if sha256 is not None and digest != _hex(sha256):
            raise DatasetUnavailableError(
                f"{path}: sha256 is {digest}, not the expected {_hex(sha256)}; "
                "the file is not the one you meant (or the checksum is out of date)"
            )
    if is_zip:
        extracted = root / "local" / f"{path.stem}-{digest[:12]}"
        if extracted.is_dir():
            return _dataset_root(extracted)
        return _extract_verified(path, extracted, discard=False)
    if path.is_file() and path.name == "annotations.xml":
        return path.parent
    return path


def open_export(
    spec: str | os.PathLike = "synthetic",
    *,
    label: str | None = None,
    skeleton_name: str | None = "object",
    points_as_skeleton: str | None = None,
    group_by: str = "auto",
    all_categories: bool = False,
    flip_pairs: Sequence[tuple[str, str]] | None = None,
    keyframes_only: bool = False,
    images_root: str | os.PathLike | None = None,
    **dataset_kwargs,
) -> tuple[Path, Annotations, str]:
    """Get a dataset, read it, and pick the skeleton label to learn: how notebooks 00-05
    and ``kpnb train``/``evaluate`` open an export.

    Multi-coordinate ``<points>`` labels become skeletons (`kpnb.grouping`). The label is
    `label`, else the first skeleton label with instances; with none, plain one-point
    ``<points>`` (Christian Mills' toy set) become a skeleton `skeleton_name` (logged).
    Returns ``(root, annotations, label)``: the images' folder (`images_root` if given, else
    beside the annotations), the tables, the label to learn.

    Args:
        spec: anything `get_dataset` takes; `dataset_kwargs` go to it too (``n_images``...).
        skeleton_name: None: make no skeleton of plain points, take the first skeleton
            declared, refuse an export without one (the CLI does).
        points_as_skeleton, group_by: first combine the one-point labels into instances
            of skeleton `points_as_skeleton`, grouped by `group_by`.
        all_categories: merge the skeleton labels sharing `label`'s layout into `label`.
        flip_pairs: ``(left, right)`` keypoint names for the training flip of `label`.
        keyframes_only: CVAT video tracks keep only their keyframes.

    Raises:
        KpnbError: no keypoints (no skeleton, when `skeleton_name` is None), `label` is
            no skeleton, or plain points do not form one object per image.
    """
    found = get_dataset(spec, **dataset_kwargs)
    ann = read_annotations(found, keyframes_only=keyframes_only)
    if points_as_skeleton:
        ann = points_to_skeleton(ann, points_as_skeleton, group_by=group_by)
    multi = ann.multi_point_labels()
    if multi and (label is None or label in multi):
        ann = points_as_instances(ann, [label] if label else multi)
    ann, label = _pick_label(ann, spec, found, label, skeleton_name)
    if all_categories:  # a COCO category per species, one layout
        layout = next(names for names in ann.same_layouts() if label in names)
        if len(layout) > 1:
            ann = merge_skeletons(ann, layout, label)
    if flip_pairs is not None:
        paired = ann.skeletons[label].with_flip_pairs(flip_pairs)
        ann = replace(ann, skeletons={**ann.skeletons, label: paired})
    root = found if found.is_dir() else found.parent
    return (root if images_root is None else Path(images_root)), ann, label


def _pick_label(
    ann: Annotations, spec, found: Path, label: str | None, skeleton_name: str | None
) -> tuple[Annotations, str]:
    """`label` checked, else the first skeleton label with instances; with none, a skeleton
    `skeleton_name` made of the plain points (one instance per image), else the first
    declared skeleton label."""
    used = set(ann.keypoints["label"].astype(str))
    if label is None:
        label = next((name for name in ann.skeletons if name in used), None)
    if label is None and skeleton_name is not None:
        if used <= set(ann.skeletons):
            raise KpnbError(
                f"{found}: no keypoints in this export ({len(ann.images)} images, skeletons "
                f"{list(ann.skeletons) or 'none'}); annotate some points in CVAT and export "
                "again, choosing 'CVAT for images' with the annotations included"
            )
        try:
            ann = points_to_skeleton(ann, skeleton_name)
        except ValueError as exc:
            raise KpnbError(f"{found}: {exc}") from None
        log.info(
            "%s has no skeleton: each image's plain <points> (%s) became one instance of "
            "a skeleton %r (kpnb.grouping.points_to_skeleton)",
            found,
            ", ".join(ann.skeletons[skeleton_name].keypoints),
            skeleton_name,
        )
        return ann, skeleton_name
    if not ann.skeletons:
        raise KpnbError(
            f"{spec}: no skeleton label; for one <points> shape per keypoint, "
            "pass {points_as_skeleton}",
            params={"points_as_skeleton": "NAME"},
        )
    label = label or next(iter(ann.skeletons))
    if label not in ann.skeletons:
        raise KpnbError(
            f"{{label}} is not a skeleton; skeletons: {list(ann.skeletons)}",
            params={"label": repr(label)},
        )
    return ann, label


def annotation_file(ann: Annotations, expect: str | None = None, hint: str = "") -> Path:
    """The annotation file `ann` was read from (CVAT ``.xml`` or COCO ``.json``), to look
    inside. With `expect` (``"cvat"`` or ``"coco"``), the other format is refused in one line
    that says which format the file is, plus `hint`; a zip is refused too."""
    path = ann.meta.get("path")
    if not path:
        raise KpnbError("these annotations do not say which file they came from")
    path = Path(str(path))
    if (fmt := {".xml": "cvat", ".json": "coco"}.get(path.suffix.lower())) is None:
        raise KpnbError(f"{path}: not an .xml or .json file; open the export with open_export")
    if expect is not None and fmt != expect:
        names = {"cvat": "CVAT XML", "coco": "a COCO keypoints file"}
        raise KpnbError(f"{path.name} is {names[fmt]}, not {names[expect]}. {hint}".strip())
    return path


def first_record(path: str | os.PathLike, max_chars: int = 2_000_000) -> str:
    """The first image of an annotation file that holds a keypoint, as the file writes it:
    CVAT XML's first ``<image>`` (or ``<track>``) element with a ``<points>``, or a COCO
    file's first annotation with keypoints beside its image entry. Only the first
    `max_chars` of an XML file are read."""
    path = Path(path)
    if path.suffix.lower() == ".json":
        doc = json.loads(path.read_text(encoding="utf-8"))
        found = next((a for a in doc.get("annotations", []) if a.get("keypoints")), None)
        if found is None:
            raise KpnbError(f"{path}: no annotation with keypoints")
        image = next(i for i in doc.get("images", []) if i.get("id") == found.get("image_id"))
        return f'"images": {json.dumps(image)}\n"annotations": {json.dumps(found)}'
    with open(path, encoding="utf-8") as f:
        head = f.read(max_chars)
    at = head.find("<points")
    if at < 0:
        raise KpnbError(f"{path}: no <points> in its first {max_chars:,} characters")
    tag = "image" if head.rfind("<image ", 0, at) > head.rfind("<track ", 0, at) else "track"
    start = head.rfind(f"<{tag} ", 0, at)
    end = head.find(f"</{tag}>", start)
    if end < 0:
        raise KpnbError(f"{path}: the <{tag}> holding the first point ends past {max_chars:,}")
    return head[start : end + len(f"</{tag}>")]
