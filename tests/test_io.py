"""kpnb.io, the one door for bytes: `Source`, zip limits and extraction, atomic outputs.

Zip bombs, zip slip, links, duplicates, encrypted members and over-long names in zips;
outputs that would overwrite or delete the user's files, turn a file into a folder, or
replace a device or FIFO; permissions.
"""

from __future__ import annotations

import os
import shutil
import stat
import time
import zipfile
from pathlib import Path

import pytest

from kpnb.cli import main
from kpnb.coco import write_coco
from kpnb.data import read_annotations
from kpnb.errors import KpnbError
from kpnb.io import (
    OutputExistsError,
    Source,
    ZipLimitError,
    atomic_path,
    check_output,
    extract_zip,
    zip_limits,
)
from kpnb.synthetic import generate
from kpnb.tables import save_tables


def _zip(tmp_path: Path, members: dict[str, bytes], name: str = "x.zip", **kw) -> Path:
    path = tmp_path / name
    with zipfile.ZipFile(path, "w", kw.get("compression", zipfile.ZIP_DEFLATED)) as zf:
        for member, data in members.items():
            zf.writestr(member, data)
    return path


def _leftovers(folder: Path) -> list[str]:
    """Hidden temporaries or moved-aside folders an atomic write might leave."""
    return sorted(p.name for p in folder.rglob(".*") if p.name.endswith((".tmp", ".old")))


# -- Source: which file holds the annotations, in which format ----------------------------------
def test_source_of_a_folder_a_file_and_a_zip(tmp_path, synthetic_export):
    folder = Source(synthetic_export)
    assert (folder.format, folder.files, folder.root) == (
        "cvat",
        ("annotations.xml",),
        synthetic_export,
    )
    assert folder.where("annotations.xml") == str(synthetic_export / "annotations.xml")
    xml = (synthetic_export / "annotations.xml").read_bytes()
    assert folder.read_bytes("annotations.xml") == xml
    assert Source(synthetic_export / "annotations.xml").files == ("annotations.xml",)
    archive = _zip(tmp_path, {"toy/images/a.jpg": b"x", "toy/annotations.xml": xml})
    zipped = Source(archive)
    assert (zipped.format, zipped.files, zipped.root) == ("cvat", ("toy/annotations.xml",), None)
    assert zipped.where("toy/annotations.xml") == f"{archive}!toy/annotations.xml"
    assert zipped.read_bytes("toy/annotations.xml") == xml


def test_source_of_coco_tables_and_nested_exports(tmp_path, synthetic_export):
    ann = read_annotations(synthetic_export)
    for subset in ("Validation", "Train"):
        write_coco(ann, tmp_path / "coco" / "annotations" / f"person_keypoints_{subset}.json")
    coco = Source(tmp_path / "coco")
    assert coco.format == "coco"
    assert coco.files == (
        "annotations/person_keypoints_Train.json",
        "annotations/person_keypoints_Validation.json",
    )
    assert Source(save_tables(ann, tmp_path / "tables")).format == "tables"
    shutil.copytree(tmp_path / "coco", tmp_path / "outer" / "deep" / "coco")
    nested = Source(tmp_path / "outer")
    assert nested.root == tmp_path / "outer" / "deep" / "coco"
    assert nested.files[0] == "deep/coco/annotations/person_keypoints_Train.json"
    with pytest.raises(FileNotFoundError, match="holds no annotations.xml"):
        Source(tmp_path / "coco", "cvat")
    with pytest.raises(FileNotFoundError, match="no such file"):
        Source(tmp_path / "nope")
    (tmp_path / "x.txt").touch()
    with pytest.raises(KpnbError, match=r"x.txt: unknown annotation file type '\.txt'"):
        Source(tmp_path / "x.txt")


def test_source_refuses_to_guess_between_two_annotation_files(tmp_path):
    for name in ("a.xml", "b.xml"):
        (tmp_path / "two" / name).parent.mkdir(exist_ok=True)
        (tmp_path / "two" / name).write_text("<annotations/>")
    with pytest.raises(KpnbError, match=r"several XML files \(a.xml, b.xml\)"):
        Source(tmp_path / "two")
    for sub in ("x", "y"):
        (tmp_path / "deep" / sub).mkdir(parents=True)
        (tmp_path / "deep" / sub / "annotations.xml").write_text("<annotations/>")
    with pytest.raises(KpnbError, match=r"x/annotations.xml, y/annotations.xml"):
        Source(tmp_path / "deep")


def test_source_names_a_damaged_member_and_raises_the_readers_error(tmp_path):
    class ReaderError(KpnbError):
        pass

    body = b"<annotations>" + b"A" * 5000 + b"</annotations>"
    archive = _zip(tmp_path, {"annotations.xml": body}, compression=zipfile.ZIP_STORED)
    raw = bytearray(archive.read_bytes())
    raw[raw.index(b"AAAA")] = ord("B")  # the CRC no longer matches
    archive.write_bytes(bytes(raw))
    src = Source(archive, error=ReaderError)
    with pytest.raises(ReaderError, match=r"x.zip!annotations.xml: .*damaged"):
        src.read_bytes("annotations.xml")
    (tmp_path / "junk.zip").write_bytes(b"not a zip")
    with pytest.raises(ReaderError, match="junk.zip: not a zip"):
        Source(tmp_path / "junk.zip", error=ReaderError)


# -- zips ---------------------------------------------------------------------------------------
ZEROS = bytes(32 * 2**20)  # 32 MiB of zeros pack to ~32 KB: 1000x, a zip bomb's ratio


def _patched(archive: Path, *, flags: int = 0, method: int | None = None) -> Path:
    """`archive` with its members' flag bits or compression method changed in both the local
    and the central headers, as an encrypting or imploding zip tool writes them."""
    raw = bytearray(archive.read_bytes())
    for signature, at in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        start = 0
        while (start := raw.find(signature, start)) >= 0:
            raw[start + at] |= flags
            if method is not None:
                raw[start + at + 2 : start + at + 4] = method.to_bytes(2, "little")
            start += 4
    archive.write_bytes(bytes(raw))
    return archive


@pytest.mark.parametrize("case", ["encrypted", "imploded"])
def test_an_encrypted_or_imploded_member_is_one_clear_line_in_every_command(
    tmp_path, synthetic_export, case, capsys
):
    members = {
        p.relative_to(synthetic_export).as_posix(): p.read_bytes()
        for p in sorted(synthetic_export.rglob("*"))
        if p.is_file()
    }
    archive = _zip(tmp_path, members, compression=zipfile.ZIP_STORED)
    _patched(archive, **({"flags": 1} if case == "encrypted" else {"method": 6}))
    fact = "is encrypted" if case == "encrypted" else "compression method 6"
    out = tmp_path / "out"
    for argv in (
        ["info", str(archive)],
        ["convert", str(archive), str(out / "kp.json"), "--to", "coco"],
        ["show", str(archive), "--out", str(out / "s.png")],
    ):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
        assert "'annotations.xml'" in err and fact in err, err
    assert not out.exists()


def test_many_small_members_adding_up_to_a_bomb_are_refused(tmp_path):
    # each member is under RATIO_FLOOR (exempt on its own); together they pack ~1000x
    archive = tmp_path / "many.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        for i in range(4):
            zf.writestr(f"part{i}.bin", bytes(2**20))
    with pytest.raises(ZipLimitError, match=r"4 members unpack .* limit 200x"):
        extract_zip(archive, tmp_path / "out", zip_limits())
    assert not (tmp_path / "out").exists()


def test_member_names_no_file_can_have_are_refused_by_name(tmp_path):
    long = "x" * 300 + ".jpg"
    archive = _zip(tmp_path, {"annotations.xml": b"<annotations/>", f"images/{long}": b"x"})
    with pytest.raises(ZipLimitError, match=f"'images/{long}' has a part longer than 255"):
        extract_zip(archive, tmp_path / "out", zip_limits())
    assert not (tmp_path / "out").exists() and _leftovers(tmp_path) == []


def test_zip_bomb_ratio_refused_from_the_header(tmp_path, no_decompression):
    archive = _zip(tmp_path, {"annotations.xml": b"<annotations/>", "big.bin": ZEROS})
    assert archive.stat().st_size < 100_000
    start = time.perf_counter()
    with pytest.raises(
        ZipLimitError,
        match=r"'big.bin' unpacks .* limit 200x.*"
        r"KPNB_MAX_UNZIP_RATIO",
    ) as exc:
        extract_zip(archive, tmp_path / "out", zip_limits())
    assert time.perf_counter() - start < 1.0
    assert str(archive) in str(exc.value)
    assert not (tmp_path / "out").exists() and _leftovers(tmp_path) == []


def test_zip_bomb_total_size_refused_and_limit_can_be_raised(tmp_path, monkeypatch):
    archive = _zip(tmp_path, {"a.bin": os.urandom(600_000), "b.bin": os.urandom(600_000)})
    monkeypatch.setenv("KPNB_MAX_UNZIP_BYTES", "1000000")
    with pytest.raises(
        ZipLimitError,
        match=r"1,200,000 bytes.*1,000,000.*"
        "KPNB_MAX_UNZIP_BYTES",
    ):
        extract_zip(archive, tmp_path / "out", zip_limits())
    assert not (tmp_path / "out").exists()
    # the parameter wins over the environment; the ratio limit likewise
    extract_zip(archive, tmp_path / "out", zip_limits(max_bytes=2_000_000))
    assert (tmp_path / "out" / "b.bin").stat().st_size == 600_000
    bomb = _zip(tmp_path, {"big.bin": ZEROS}, "bomb.zip")
    monkeypatch.setenv("KPNB_MAX_UNZIP_BYTES", str(2**30))
    monkeypatch.setenv("KPNB_MAX_UNZIP_RATIO", "5000")
    extract_zip(bomb, tmp_path / "trusted", zip_limits())
    assert (tmp_path / "trusted" / "big.bin").stat().st_size == len(ZEROS)


def test_too_many_members_and_bad_limits(tmp_path, monkeypatch):
    archive = _zip(tmp_path, {f"f{i}.txt": b"x" for i in range(5)})
    with pytest.raises(ZipLimitError, match="5 members, more than the limit of 4"):
        extract_zip(archive, tmp_path / "out", zip_limits(max_members=4))
    monkeypatch.setenv("KPNB_MAX_UNZIP_MEMBERS", "lots")
    with pytest.raises(ZipLimitError, match="KPNB_MAX_UNZIP_MEMBERS='lots' is not"):
        extract_zip(archive, tmp_path / "out", zip_limits())
    assert not (tmp_path / "out").exists()


def test_symlink_member_is_refused(tmp_path, no_decompression):
    archive = tmp_path / "link.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("toy/annotations.xml", "<annotations/>")
        link = zipfile.ZipInfo("toy/images/secret.png")
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(link, "/etc/passwd")
    with pytest.raises(ZipLimitError, match="'toy/images/secret.png' is a symbolic"):
        extract_zip(archive, tmp_path / "out", zip_limits())
    assert not (tmp_path / "out").exists()


def test_duplicate_and_file_folder_members_are_refused(tmp_path, no_decompression):
    with pytest.warns(UserWarning, match="Duplicate name"):
        dup = _zip(tmp_path, {"a.xml": b"1"}, "dup.zip")
        with zipfile.ZipFile(dup, "a") as zf:
            zf.writestr("./a.xml", b"2")
            zf.writestr("a.xml", b"3")
    with pytest.raises(ZipLimitError, match="'./a.xml' occurs twice"):
        extract_zip(dup, tmp_path / "out", zip_limits())
    both = _zip(tmp_path, {"images": b"a file", "images/x.png": b"png"}, "both.zip")
    with pytest.raises(ZipLimitError, match="'images/x.png' lies inside 'images'"):
        extract_zip(both, tmp_path / "out", zip_limits())
    assert not (tmp_path / "out").exists()


def test_corrupt_member_leaves_nothing_half_extracted(tmp_path):
    body = b"<annotations>" + b"A" * 5000 + b"</annotations>"
    archive = _zip(
        tmp_path, {"first.txt": b"fine", "annotations.xml": body}, compression=zipfile.ZIP_STORED
    )
    raw = bytearray(archive.read_bytes())
    raw[raw.index(b"AAAA")] = ord("B")  # the CRC no longer matches
    archive.write_bytes(bytes(raw))
    with pytest.raises(ZipLimitError, match=r"x.zip!annotations.xml: .*damaged"):
        extract_zip(archive, tmp_path / "out", zip_limits())
    assert not (tmp_path / "out").exists() and _leftovers(tmp_path) == []


def test_output_into_an_empty_folder_or_a_link_to_one(tmp_path):
    (tmp_path / "empty").mkdir()
    generate(tmp_path / "empty", 2)
    assert (tmp_path / "empty" / "annotations.xml").is_file()
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    generate(tmp_path / "link", 2)
    assert (tmp_path / "link").is_symlink() and (tmp_path / "real" / "annotations.xml").is_file()


def test_failed_overwrite_keeps_the_user_files(tmp_path, monkeypatch):
    from kpnb import synthetic

    out = tmp_path / "mine"
    generate(out, 2)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    (out / "notes.txt").write_text("my notes")

    def failing(img, quality):
        raise OSError("disk full")

    monkeypatch.setattr(synthetic.export, "_jpeg_bytes", failing)
    with pytest.raises(OSError, match="disk full"):
        generate(out, 2, overwrite=True)
    assert all(p.read_bytes() == b for p, b in before.items())
    assert (out / "notes.txt").read_text() == "my notes" and _leftovers(tmp_path) == []


def test_overwrite_conflict_changes_nothing(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "images").write_text("a file where kpnb writes a folder")
    (out / "annotations.xml").write_text("mine")
    with pytest.raises(OutputExistsError, match=r"images: is a file where kpnb writes a folder"):
        generate(out, 2, overwrite=True)
    assert (out / "annotations.xml").read_text() == "mine"
    assert _leftovers(tmp_path) == []


def test_a_file_never_becomes_a_folder_nor_the_reverse(tmp_path, synthetic_export):
    ann = read_annotations(synthetic_export)
    target = tmp_path / "precious.txt"
    target.write_text("keep me")
    for write in (
        lambda: generate(target, 2, overwrite=True),
        lambda: save_tables(ann, target, overwrite=True),
        lambda: generate(target / "sub", 2),
    ):
        with pytest.raises(OutputExistsError, match="precious.txt: is a file, not a folder"):
            write()
    assert target.read_text() == "keep me"
    (tmp_path / "adir").mkdir()
    with pytest.raises(OutputExistsError, match="adir: is a folder"):
        write_coco(ann, tmp_path / "adir")
    assert _leftovers(tmp_path) == [] and (tmp_path / "adir").is_dir()


def test_existing_zip_is_refused_unless_overwrite(tmp_path):
    first = generate(tmp_path / "x.zip", 2, as_zip=True)
    stamp = first.read_bytes()
    with pytest.raises(OutputExistsError, match="x.zip: the file exists"):
        generate(first, 3, as_zip=True)
    assert first.read_bytes() == stamp
    generate(first, 3, as_zip=True, overwrite=True)
    assert first.read_bytes() != stamp


@pytest.mark.parametrize("mask", [0o027, 0o002])
def test_outputs_respect_the_umask(tmp_path, synthetic_export, mask):
    ann = read_annotations(synthetic_export)
    old = os.umask(mask)
    try:
        out = generate(tmp_path / "syn", 2)
        zipped = generate(tmp_path / "syn.zip", 2, as_zip=True)
        tables = save_tables(ann, tmp_path / "tables")
        coco = write_coco(ann, tmp_path / "kp.json")
        with atomic_path(tmp_path / "plain.txt") as tmp:
            tmp.write_text("x")
    finally:
        os.umask(old)
    for folder in (out, tables):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o777 & ~mask, folder
    for file in (
        out / "annotations.xml",
        zipped,
        tables / "keypoints.csv",
        coco,
        tmp_path / "plain.txt",
    ):
        assert stat.S_IMODE(file.stat().st_mode) == 0o666 & ~mask, file


@pytest.mark.parametrize(
    "name",
    ["../evil.txt", "toy/../../evil.txt", "/tmp/kpnb-evil.txt", "..\\evil.txt", "C:/evil.txt"],
)
def test_zip_slip_is_refused(tmp_path, name, no_decompression):
    archive = _zip(tmp_path, {"toy/annotations.xml": b"<annotations/>", name: b"gotcha"})
    with pytest.raises(ZipLimitError, match="outside the target folder"):
        extract_zip(archive, tmp_path / "sub" / "out", zip_limits())
    assert not (tmp_path / "sub" / "out").exists() and not (tmp_path / "evil.txt").exists()
    assert not Path("/tmp/kpnb-evil.txt").exists()


def test_output_folder_with_user_files_is_refused_then_merged(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("my notes")
    (out / "annotations.xml").write_text("my own annotations")
    with pytest.raises(OutputExistsError, match="mine: the folder is not empty") as exc:
        generate(out, 3)
    assert exc.value.param == "overwrite" and "overwrite=True" in str(exc.value)
    assert sorted(p.name for p in out.iterdir()) == ["annotations.xml", "notes.txt"]
    assert (out / "annotations.xml").read_text() == "my own annotations"
    generate(out, 3, overwrite=True)
    assert (out / "notes.txt").read_text() == "my notes"  # not written by kpnb: kept
    assert "<annotations>" in (out / "annotations.xml").read_text()  # kpnb's file: replaced
    assert len(list((out / "images").rglob("*.jpg"))) == 3
    assert _leftovers(tmp_path) == [] and sorted(p.name for p in tmp_path.iterdir()) == ["mine"]


# -- outputs are regular files, or refused -------------------------------------------------------
def test_a_fifo_or_device_is_never_replaced_even_with_overwrite(tmp_path, synthetic_export, capsys):
    fifo = tmp_path / "s.png"
    os.mkfifo(fifo)
    argv = ["show", str(synthetic_export), "--image", "0", "--out", str(fifo), "--overwrite"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "FIFO" in err and "--overwrite" not in err
    assert stat.S_ISFIFO(fifo.stat().st_mode)
    with pytest.raises(OutputExistsError, match="/dev/null: is a character device"):
        check_output("/dev/null", overwrite=True)  # checked only: nothing is written
    tables = save_tables(read_annotations(synthetic_export), tmp_path / "tables")
    (tables / "keypoints.csv").unlink()
    os.mkfifo(tables / "keypoints.csv")
    with pytest.raises(OutputExistsError, match="keypoints.csv: is a FIFO"):
        save_tables(read_annotations(synthetic_export), tables, overwrite=True)
    assert stat.S_ISFIFO((tables / "keypoints.csv").stat().st_mode) and not _leftovers(tmp_path)


def test_output_names_up_to_255_bytes_are_written_longer_ones_refused(tmp_path):
    fits = tmp_path / ("y" * 251 + ".txt")
    with atomic_path(fits) as tmp:
        tmp.write_text("x")
    assert fits.read_text() == "x" and not _leftovers(tmp_path)
    with pytest.raises(KpnbError, match="longer than 255 bytes"):
        check_output(tmp_path / ("y" * 256 + ".txt"))
