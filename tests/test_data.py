"""get_dataset against a real HTTP server on 127.0.0.1 (the `http_server` fixture):
downloads, cache, failures, zips."""

import hashlib
import io
import shutil
import zipfile
from pathlib import Path

import pytest

from kpnb.data import (
    DatasetUnavailableError,
    detect_format,
    get_dataset,
    read_annotations,
    register_dataset,
)
from kpnb.errors import KpnbError
from kpnb.synthetic import STYLE_VERSION


def _zip_bytes(folder: Path, prefix: str = "toy/") -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for p in sorted(folder.rglob("*")):
            if p.is_file():
                zf.write(p, prefix + str(p.relative_to(folder)))
    return buf.getvalue()


@pytest.fixture
def server(http_server, synthetic_export):
    """The local server with a good export zip, a hostile one and a junk file."""
    good = _zip_bytes(synthetic_export)
    http_server.sha256 = hashlib.sha256(good).hexdigest()  # what the tests pass as known
    evil = io.BytesIO()
    with zipfile.ZipFile(evil, "w") as zf:
        zf.writestr("toy/annotations.xml", "<annotations/>")
        zf.writestr("../escaped.txt", "gotcha")
    http_server.put("toy.zip", good)
    http_server.put("evil.zip", evil.getvalue())
    http_server.put("junk.zip", b"this is not a zip")
    return http_server


def test_first_download_then_cache_hit(server, tmp_path):
    url = server.url + "/toy.zip"
    root = get_dataset(url, tmp_path, sha256=server.sha256, progress=False)
    assert (root / "annotations.xml").is_file() and (root / "images").is_dir()
    assert len(read_annotations(root).images) == 40
    n = len(server.hits)
    again = get_dataset(url, tmp_path, sha256=server.sha256, progress=False)
    assert again == root and len(server.hits) == n  # no second request


def test_registered_name(server, tmp_path, monkeypatch):
    from kpnb import data

    monkeypatch.setattr(data, "REGISTRY", dict(data.REGISTRY))  # restored after the test
    register_dataset("test/toy", server.url + "/toy.zip", server.sha256)
    root = get_dataset("test/toy", tmp_path, progress=False)
    assert detect_format(root) == "cvat"


def test_checksum_mismatch_is_clear_and_leaves_nothing(server, tmp_path):
    with pytest.raises(DatasetUnavailableError, match="hash") as exc:
        get_dataset(server.url + "/toy.zip", tmp_path, sha256="0" * 64, progress=False)
    assert "discarded" in str(exc.value)
    assert not list((tmp_path / "downloads").rglob("*.zip"))
    assert not (tmp_path / "datasets").exists()


def _tampered(server) -> tuple[str, str]:
    """The URL of an export whose server first serves another (tampered) zip, and the
    sha256 of the genuine one."""
    genuine = (server.root / "toy.zip").read_bytes()
    tampered = io.BytesIO()
    with zipfile.ZipFile(tampered, "w") as zf:
        zf.writestr("toy/annotations.xml", "<annotations><!-- TAMPERED --></annotations>")
    url = server.put("data.zip", tampered.getvalue())
    return url, hashlib.sha256(genuine).hexdigest()


def test_a_cached_download_is_checked_against_a_later_sha256(server, tmp_path):
    """A zip cached by a call without a checksum is not returned for one with a checksum
    it does not have: the error names the URL and both hashes, the entry is deleted."""
    url, genuine = _tampered(server)
    first = get_dataset(url, tmp_path, progress=False)
    assert "TAMPERED" in (first / "annotations.xml").read_text()
    tampered = hashlib.sha256((server.root / "data.zip").read_bytes()).hexdigest()
    with pytest.raises(DatasetUnavailableError) as exc:
        get_dataset(url, tmp_path, sha256=genuine, progress=False)
    msg = str(exc.value)
    assert url in msg and genuine in msg and tampered in msg and "\n" not in msg
    assert not list((tmp_path / "datasets").iterdir())  # extraction and marker gone
    assert not list((tmp_path / "downloads").iterdir())
    server.put("data.zip", (server.root / "toy.zip").read_bytes())  # the server is fixed
    root = get_dataset(url, tmp_path, sha256=genuine.upper(), progress=False)
    assert len(read_annotations(root).images) == 40


def test_a_cached_extraction_is_checked_each_call_even_without_its_zip(server, tmp_path):
    url = server.url + "/toy.zip"
    root = get_dataset(url, tmp_path, sha256=server.sha256, progress=False)
    shutil.rmtree(tmp_path / "downloads")  # the zip may be deleted to save space
    assert get_dataset(url, tmp_path, sha256=server.sha256, progress=False) == root
    with pytest.raises(DatasetUnavailableError, match="1" * 64):
        get_dataset(url, tmp_path, sha256="1" * 64, progress=False)
    assert not root.exists()


def test_a_download_that_fails_without_a_checksum_mismatch_keeps_the_cache(server, tmp_path):
    """Only a checksum mismatch deletes a cache entry; a server that is gone does not."""
    url = server.url + "/toy.zip"
    root = get_dataset(url, tmp_path, sha256=server.sha256, progress=False)
    shutil.rmtree(tmp_path / "downloads")
    (server.root / "toy.zip").unlink()
    with pytest.raises(DatasetUnavailableError, match="404"):
        get_dataset(url, tmp_path, sha256=server.sha256, progress=False)
    assert (root / "annotations.xml").is_file()


def test_sha256_is_checked_for_local_files_and_must_be_a_checksum(server, tmp_path):
    archive = tmp_path / "mine.zip"
    archive.write_bytes((server.root / "toy.zip").read_bytes())
    assert get_dataset(archive, tmp_path / "c", sha256="sha256:" + server.sha256).is_dir()
    with pytest.raises(DatasetUnavailableError, match=f"mine.zip: sha256 is {server.sha256}"):
        get_dataset(archive, tmp_path / "c", sha256="2" * 64)
    with pytest.raises(KpnbError, match="is not a sha256 checksum"):
        get_dataset(server.url + "/toy.zip", tmp_path, sha256="abc", progress=False)
    with pytest.raises(KpnbError, match="this is a folder"):
        get_dataset(tmp_path, sha256=server.sha256)
    assert not server.hits


def test_connection_dropped_half_way_leaves_nothing_that_looks_complete(server, tmp_path):
    with pytest.raises(DatasetUnavailableError, match="could not download"):
        get_dataset(server.url + "/drop/toy.zip", tmp_path, progress=False)
    assert not list((tmp_path / "downloads").rglob("toy.zip"))
    assert not (tmp_path / "datasets").exists()


def test_404(server, tmp_path):
    with pytest.raises(DatasetUnavailableError, match="404"):
        get_dataset(server.url + "/missing.zip", tmp_path, progress=False)


def test_zip_member_escaping_the_folder_is_refused(server, tmp_path):
    with pytest.raises(DatasetUnavailableError, match=r"'\.\./escaped.txt' would be written"):
        get_dataset(server.url + "/evil.zip", tmp_path, progress=False)
    assert not (tmp_path / "escaped.txt").exists()
    assert not (tmp_path / "datasets").exists() or not any((tmp_path / "datasets").iterdir())
    assert not list((tmp_path / "downloads").rglob("*.zip"))  # nor kept as if good


def test_not_a_zip(server, tmp_path):
    with pytest.raises(DatasetUnavailableError, match="not a zip"):
        get_dataset(server.url + "/junk.zip", tmp_path, progress=False)


def test_offline_is_one_clear_line(tmp_path):
    # port 9 on loopback: nothing listens, the connection is refused at once
    with pytest.raises(DatasetUnavailableError) as exc:
        get_dataset("http://127.0.0.1:9/toy.zip", tmp_path, progress=False)
    msg = str(exc.value)
    assert "Offline?" in msg and "get_dataset('synthetic')" in msg and "\n" not in msg
    assert str(tmp_path / "downloads") in msg and "toy.zip" in msg


def test_synthetic_is_generated_once_and_seed_stable(tmp_path):
    a = get_dataset("synthetic", tmp_path, n_images=5, seed=3)
    stamp = (a / "annotations.xml").stat().st_mtime_ns
    assert get_dataset("synthetic", tmp_path, n_images=5, seed=3) == a
    assert (a / "annotations.xml").stat().st_mtime_ns == stamp
    b = get_dataset("synthetic", tmp_path / "other", n_images=5, seed=3)
    assert (a / "annotations.xml").read_bytes() == (b / "annotations.xml").read_bytes()


def test_cache_dir_honours_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("KPNB_CACHE", str(tmp_path / "cache"))
    assert get_dataset("synthetic", n_images=2).parent == tmp_path / "cache"


def test_local_paths(tmp_path, synthetic_export):
    assert get_dataset(synthetic_export) == synthetic_export
    assert get_dataset(synthetic_export / "annotations.xml") == synthetic_export
    archive = shutil.make_archive(str(tmp_path / "mine"), "zip", synthetic_export)
    root = get_dataset(archive, tmp_path / "cache")
    assert (root / "annotations.xml").is_file()
    with pytest.raises(FileNotFoundError, match="named datasets: synthetic"):
        get_dataset(tmp_path / "nope")


def test_cli_data(tmp_path, capsys, monkeypatch):
    from kpnb.cli import main

    monkeypatch.setenv("KPNB_CACHE", str(tmp_path))
    assert main(["data", "synthetic", "--images", "3"]) == 0
    assert f"synthetic-v{STYLE_VERSION}-seed0-n3" in capsys.readouterr().out
    assert main(["data", "http://127.0.0.1:9/x.zip"]) == 2
    assert "Offline?" in capsys.readouterr().err


def test_synthetic_cache_is_keyed_by_the_drawing_version(tmp_path, monkeypatch):
    """A cached copy drawn by an older generator is never taken for the current drawing."""
    from kpnb import synthetic

    first = get_dataset("synthetic", tmp_path, n_images=2)
    monkeypatch.setattr(synthetic, "STYLE_VERSION", synthetic.STYLE_VERSION + 1)
    second = get_dataset("synthetic", tmp_path, n_images=2)
    assert first != second and (second / "annotations.xml").is_file()


def test_annotation_file_and_first_record_of_cvat_and_coco(synthetic_export):
    from kpnb.data import annotation_file, first_record, read_annotations
    from kpnb.errors import KpnbError

    xml = annotation_file(read_annotations(synthetic_export), expect="cvat")
    assert xml == synthetic_export / "annotations.xml"
    record = first_record(xml)
    assert record.startswith("<image ") and record.endswith("</image>") and "<points" in record
    coco = Path(__file__).parent / "data/real/open-mmlab-mmpose/tests/data/crowdpose"
    ann = read_annotations(coco / "test_crowdpose.json")
    assert annotation_file(ann) == coco / "test_crowdpose.json"
    assert '"keypoints": [' in first_record(annotation_file(ann))
    with pytest.raises(KpnbError, match=r"is a COCO keypoints file, not CVAT XML\. go on"):
        annotation_file(ann, expect="cvat", hint="go on")
