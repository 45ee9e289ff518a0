"""Files as an attacker (or an accident) makes them: kpnb refuses them clearly and loses nothing.

Zip bombs, zip slip, links and duplicates in zips; outputs that would overwrite or delete the
user's files, or turn a file into a folder; permissions; download cache collisions and
corrupt downloads; image names that climb out of the export; PNG decompression bombs.
"""

from __future__ import annotations

import io
import json
import re
import struct
import time
import zipfile
import zlib
from pathlib import Path

import pytest

from kpnb.cli import main
from kpnb.coco import CocoFormatError, read_coco, write_coco
from kpnb.data import DatasetUnavailableError, get_dataset, read_annotations
from kpnb.images import ImageError
from kpnb.synthetic import generate


def _zip(tmp_path: Path, members: dict[str, bytes], name: str = "x.zip", **kw) -> Path:
    path = tmp_path / name
    with zipfile.ZipFile(path, "w", kw.get("compression", zipfile.ZIP_DEFLATED)) as zf:
        for member, data in members.items():
            zf.writestr(member, data)
    return path


def _zip_folder(folder: Path) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for p in sorted(folder.rglob("*")):
            if p.is_file():
                zf.write(p, str(p.relative_to(folder)))
    return buf.getvalue()


def _leftovers(folder: Path) -> list[str]:
    """Hidden temporaries or moved-aside folders an atomic write might leave."""
    return sorted(p.name for p in folder.rglob(".*") if p.name.endswith((".tmp", ".old")))


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.strip() and "\n" not in err.strip(), err
    return err


# -- zip bombs ------------------------------------------------------------------------------
ZEROS = bytes(32 * 2**20)  # 32 MiB of zeros pack to ~32 KB: 1000x, a zip bomb's ratio


def test_coco_zip_member_bomb_is_refused(tmp_path, no_decompression):
    archive = _zip(tmp_path, {"annotations/person_keypoints_default.json": ZEROS})
    with pytest.raises(CocoFormatError, match="person_keypoints_default.json' unpacks"):
        read_coco(archive)


def test_coco_zip_is_read_within_the_limits(tmp_path, synthetic_export, monkeypatch):
    ann = read_annotations(synthetic_export)
    doc = write_coco(ann, tmp_path / "person_keypoints_Train.json").read_bytes()
    archive = _zip(tmp_path, {"annotations/person_keypoints_Train.json": doc})
    assert len(read_coco(archive).images) == 40
    monkeypatch.setenv("KPNB_MAX_UNZIP_BYTES", str(len(doc) - 1))
    with pytest.raises(CocoFormatError, match="KPNB_MAX_UNZIP_BYTES"):
        read_coco(archive)


def _edit_first(doc: dict, edit: str) -> None:
    first = doc["annotations"][0]
    if edit == "nan keypoint":
        first["keypoints"][0] = float("nan")  # json.dumps writes the literal NaN
    elif edit == "infinite keypoint":
        first["keypoints"][4] = float("inf")  # Infinity
    elif edit == "width text":
        doc["images"][0]["width"] = "x"
    elif edit == "no file_name":
        del doc["images"][0]["file_name"]
    elif edit == "bbox text":
        first["bbox"] = "x"
    elif edit == "annotations a dict":
        doc["annotations"] = {"a": 1}


@pytest.mark.parametrize(
    "edit",
    [
        "nan keypoint",
        "infinite keypoint",
        "width text",
        "no file_name",
        "bbox text",
        "annotations a dict",
    ],
)
def test_hostile_coco_values_are_one_line_errors(tmp_path, synthetic_export, edit, capsys):
    """Review findings 2-3: kpnb's own COCO export edited as an accident or an attacker
    would; `kpnb info` (plain file and zip member) says which file and record, no
    traceback, and read_coco refuses it so no dataset is built on NaN targets."""
    doc = write_coco(read_annotations(synthetic_export), tmp_path / "kp.json")
    edited = json.loads(doc.read_text())
    _edit_first(edited, edit)
    member = "annotations/person_keypoints_Train.json"
    doc.write_text(json.dumps(edited))
    archive = _zip(tmp_path, {member: doc.read_bytes()})
    with pytest.raises(CocoFormatError, match=re.escape(str(doc))):
        read_coco(doc)
    for source, named in ((doc, str(doc)), (archive, f"{archive}!{member}")):
        assert main(["info", str(source)]) == 2
        err = _one_line_error(capsys)
        assert named in err, err


# -- outputs from the command line ------------------------------------------------------
def test_cli_refuses_existing_outputs_in_one_line(tmp_path, synthetic_export, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("my notes")
    assert main(["synth", "--out", str(mine), "--images", "2"]) == 2
    err = _one_line_error(capsys)
    assert f"{mine}: the folder is not empty" in err and "--overwrite" in err
    assert main(["convert", str(synthetic_export), str(mine), "--to", "csv"]) == 2
    assert "the folder is not empty" in _one_line_error(capsys)
    coco = tmp_path / "kp.json"
    coco.write_text("mine")
    assert main(["convert", str(synthetic_export), str(coco), "--to", "coco"]) == 2
    err = _one_line_error(capsys)
    assert f"{coco}: the file exists" in err and "--overwrite" in err
    assert coco.read_text() == "mine"
    assert main(["convert", str(synthetic_export), str(mine), "--to", "csv", "--overwrite"]) == 0
    assert main(["convert", str(synthetic_export), str(coco), "--to", "coco", "--overwrite"]) == 0
    assert (mine / "notes.txt").read_text() == "my notes" and (mine / "keypoints.csv").is_file()
    assert coco.read_text().startswith("{")


# -- downloads ------------------------------------------------------------------------------
def test_cache_is_keyed_by_the_whole_url(http_server, tmp_path):
    exports = {n: _zip_folder(generate(tmp_path / f"e{n}", n, seed=n)) for n in (2, 3, 4, 5)}
    urls = {
        2: http_server.put("a/data.zip", exports[2]),
        3: http_server.put("b/data.zip", exports[3]),
        4: http_server.put("data.zip?v=1", exports[4]),
        5: http_server.put("data.zip?v=2", exports[5]),
    }
    cache = tmp_path / "cache"
    roots = {n: get_dataset(url, cache, progress=False) for n, url in urls.items()}
    for n, root in roots.items():
        assert len(read_annotations(root).images) == n, urls[n]
    assert len(set(roots.values())) == 4
    assert all("data-" in p.name for p in (cache / "downloads").iterdir())  # readable names


def test_corrupt_download_is_deleted_and_fetched_again(http_server, tmp_path, synthetic_export):
    good = _zip_folder(synthetic_export)
    bad = bytearray(good)
    bad[len(bad) // 3] ^= 0xFF  # inside some member's data: its CRC fails
    url = http_server.put("toy.zip", bytes(bad))
    with pytest.raises(DatasetUnavailableError, match="damaged.*deleted"):
        get_dataset(url, tmp_path, progress=False)
    assert not list((tmp_path / "downloads").rglob("*.zip"))
    assert not (tmp_path / "datasets").exists() or not any((tmp_path / "datasets").iterdir())
    http_server.put("toy.zip", good)  # the server is fixed: the next run downloads again
    root = get_dataset(url, tmp_path, progress=False)
    assert len(read_annotations(root).images) == 40
    assert http_server.hits.count("/toy.zip") == 2


def test_download_over_the_limits_is_deleted(http_server, tmp_path):
    url = http_server.put("bomb.zip", _zip(tmp_path, {"annotations.xml": ZEROS}).read_bytes())
    with pytest.raises(DatasetUnavailableError, match="KPNB_MAX_UNZIP_RATIO.*deleted"):
        get_dataset(url, tmp_path / "cache", progress=False)
    assert not list((tmp_path / "cache" / "downloads").rglob("*.zip"))
    no_export = _zip(tmp_path, {"readme.txt": b"no annotations here"}, "plain.zip")
    url = http_server.put("plain.zip", no_export.read_bytes())
    with pytest.raises(DatasetUnavailableError, match="holds no annotations.xml.*deleted"):
        get_dataset(url, tmp_path / "cache", progress=False)
    assert not list((tmp_path / "cache" / "downloads").rglob("*.zip"))
    assert not list((tmp_path / "cache" / "datasets").iterdir())


def test_local_zip_is_hashed_as_a_stream(tmp_path, synthetic_export, monkeypatch):
    archive = tmp_path / "mine.zip"
    archive.write_bytes(_zip_folder(synthetic_export))

    def whole(self):
        raise AssertionError("read_bytes() of a whole archive")

    monkeypatch.setattr(Path, "read_bytes", whole)
    root = get_dataset(archive, tmp_path / "cache")
    assert (root / "annotations.xml").is_file()


# -- image names that climb out of the export ---------------------------------------------
def _hostile_export(tmp_path: Path, name: str, subset: str = "Train") -> Path:
    root = generate(tmp_path / "export", 3, seed=0)
    (tmp_path / "secret.png").write_bytes((root / "images/Train/img_00000.jpg").read_bytes())
    xml = root / "annotations.xml"
    text = xml.read_text(encoding="utf-8")
    old = 'name="img_00000.jpg" subset="Train"'
    assert old in text
    xml.write_text(text.replace(old, f'name="{name}" subset="{subset}"'), encoding="utf-8")
    return root


def _escapes(tmp_path: Path):
    secret = str(tmp_path / "secret.png")
    return [("../../../secret.png", "Train"), (secret, "Train"), ("secret.png", "../..")]


@pytest.mark.parametrize("case", range(3), ids=["dotdot", "absolute", "subset"])
def test_image_name_escaping_the_export_is_refused(tmp_path, case, capsys):
    from kpnb.dataset import KeypointDataset, check_export

    name, subset = _escapes(tmp_path)[case]
    root = _hostile_export(tmp_path, name, subset)
    ann = read_annotations(root)
    label = next(iter(ann.skeletons))
    named = re.escape(f"image {name!r}") + ".*leads outside"
    with pytest.raises(ImageError, match=named):
        KeypointDataset(ann, root, label)
    with pytest.raises(ImageError, match=named):
        check_export(ann, root)
    png = tmp_path / "drawn.png"
    assert main(["show", str(root), "--image", "0", "--out", str(png)]) == 2
    err = _one_line_error(capsys)
    assert name in err and "leads outside" in err and not png.exists()


# -- decompression bombs ---------------------------------------------------------------------
def _png_declaring(width: int, height: int) -> bytes:
    """A 100-byte PNG whose header says `width` x `height` (its data is one tiny row)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 4))
        + chunk(b"IEND", b"")
    )


def test_png_decompression_bomb_is_refused(tmp_path, capsys):
    from kpnb.dataset import KeypointDataset

    root = generate(tmp_path / "export", 3, seed=0)
    bomb = root / "images" / "Train" / "img_00001.jpg"  # PIL reads the content, not the name
    bomb.write_bytes(_png_declaring(50_000, 50_000))  # 2.5 gigapixels, 7.5 GB decoded
    assert bomb.stat().st_size < 200
    ann = read_annotations(root)
    ds = KeypointDataset(ann, root, next(iter(ann.skeletons)))
    index = next(i for i, item in enumerate(ds.items) if item.path.name == bomb.name)
    start = time.perf_counter()
    with pytest.raises(
        ImageError,
        match=r"img_00001.jpg: .*more than 64,000,000 pixels.*"
        "KPNB_MAX_PIXELS",
    ):
        ds[index]
    assert time.perf_counter() - start < 1.0
    png = tmp_path / "drawn.png"
    assert main(["show", str(root), "--image", "1", "--out", str(png)]) == 2
    err = _one_line_error(capsys)
    assert "img_00001.jpg" in err and "KPNB_MAX_PIXELS" in err and not png.exists()


# -- command line values ---------------------------------------------------------------------
@pytest.mark.parametrize(
    "argv, flag",
    [
        (["synth", "--out", "x", "--images", "-1"], "--images"),
        (["synth", "--out", "x", "--seed", "x"], "--seed"),
        (["train", "synthetic", "--out", "r", "--size", "0"], "--size"),
        (["train", "synthetic", "--out", "r", "--epochs", "-3"], "--epochs"),
        (["train", "synthetic", "--out", "r", "--batch-size", "0"], "--batch-size"),
        (["train", "synthetic", "--out", "r", "--lr", "-1"], "--lr"),
        (["train", "synthetic", "--out", "r", "--lr", "nan"], "--lr"),
        (["evaluate", "c.pth", "synthetic", "--sigmas", "0.1", "0"], "--sigmas"),
        (["evaluate", "c.pth", "synthetic", "--workers", "-1"], "--workers"),
        (
            ["predict", "c.pth", "a.jpg", "--out", "p.xml", "--score-threshold", "2"],
            "--score-threshold",
        ),
        (["data", "synthetic", "--images", "-5"], "--images"),
    ],
)
def test_bad_flag_values_are_refused_by_the_parser(argv, flag, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"error: argument {flag}: must be" in err or f"error: argument {flag}: '" in err
    assert "Traceback" not in err and not list(tmp_path.iterdir())


# -- show, predict, train, evaluate outputs ----------------------------------------------------
def test_show_refuses_an_existing_file_and_replaces_it_with_overwrite(
    tmp_path, synthetic_export, capsys
):
    png = tmp_path / "s.png"
    png.write_bytes(b"my picture")
    assert main(["show", str(synthetic_export), "--image", "2", "--out", str(png)]) == 2
    err = _one_line_error(capsys)
    assert err.startswith("kpnb show: error: ") and f"{png}: the file exists" in err
    assert "--overwrite" in err and png.read_bytes() == b"my picture"
    argv = ["show", str(synthetic_export), "--image", "2", "--out", str(png), "--overwrite"]
    assert main(argv) == 0
    assert png.read_bytes().startswith(b"\x89PNG") and not _leftovers(tmp_path)


@pytest.mark.parametrize(
    "name, message",
    [("folder.png", "is a folder"), ("s.nope", "not an image format"), ("s", "no extension")],
)
def test_show_bad_out_is_refused_before_reading(tmp_path, name, message, capsys):
    (tmp_path / "folder.png").mkdir()
    (tmp_path / "folder.png" / "keep.txt").write_text("mine")
    # the export does not exist: the refusal names --out, so it came before reading
    assert main(["show", str(tmp_path / "no_export"), "--out", str(tmp_path / name)]) == 2
    err = _one_line_error(capsys)
    assert err.startswith("kpnb show: error: ") and message in err and "no_export" not in err
    assert (tmp_path / "folder.png" / "keep.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folder.png"]


def test_show_failed_save_keeps_the_old_file(tmp_path, synthetic_export, capsys, monkeypatch):
    from PIL import Image

    xbm = tmp_path / "s.xbm"  # PIL knows XBM but cannot write a colour picture as one
    xbm.write_bytes(b"my picture")
    argv = ["show", str(synthetic_export), "--image", "2", "--overwrite", "--out"]
    assert main([*argv, str(xbm)]) == 2
    assert "cannot write the picture as XBM" in _one_line_error(capsys)
    assert xbm.read_bytes() == b"my picture" and not _leftovers(tmp_path)
    png = tmp_path / "s.png"
    png.write_bytes(b"my picture")

    def half_written(self, fp, *args, **kwargs):
        Path(fp).write_bytes(b"\x89PNG half")
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", half_written)
    assert main([*argv, str(png)]) == 2
    assert "disk full" in _one_line_error(capsys)
    assert png.read_bytes() == b"my picture" and not _leftovers(tmp_path)


def test_predict_evaluate_train_refuse_existing_outputs_before_work(tmp_path, capsys):
    # no checkpoint and no export exist: each refusal comes before either is opened
    image = tmp_path / "a.png"
    image.write_bytes(b"not read")
    out = tmp_path / "preds.xml"
    out.write_text("my predictions")
    viz = tmp_path / "viz"
    viz.mkdir()
    (viz / "a.png").write_text("my drawing")
    ckpt = str(tmp_path / "run" / "best.pth")
    assert main(["predict", ckpt, str(image), "--out", str(out)]) == 2
    assert f"{out}: the file exists" in _one_line_error(capsys)
    new = tmp_path / "new.xml"
    assert main(["predict", ckpt, str(image), "--out", str(new), "--viz", str(viz)]) == 2
    assert f"{viz}: the folder is not empty" in _one_line_error(capsys) and not new.exists()
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.json").write_text("my metrics")
    assert main(["evaluate", ckpt, str(tmp_path / "no_export")]) == 2
    assert f"{run / 'metrics.json'}: the file exists" in _one_line_error(capsys)
    (run / "best.pth").write_bytes(b"my weights")
    argv = ["train", str(tmp_path / "no_export"), "--out", str(run), "--weights", "none"]
    assert main(argv) == 2
    err = _one_line_error(capsys)
    assert f"{run}: the folder is not empty" in err and "--overwrite" in err
    assert "--resume" not in err  # no last.pth: nothing to resume
    (run / "last.pth").write_bytes(b"my other weights")
    assert "--resume" in (main(argv) == 2 and _one_line_error(capsys))
    assert out.read_text() == "my predictions" and (viz / "a.png").read_text() == "my drawing"
    assert (run / "metrics.json").read_text() == "my metrics"
    assert (run / "best.pth").read_bytes() == b"my weights"
    assert (run / "last.pth").read_bytes() == b"my other weights"
    assert not _leftovers(tmp_path)
