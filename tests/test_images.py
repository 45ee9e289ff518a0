"""kpnb.images: the one image loader (path check, EXIF, modes, pixel limit)."""

from __future__ import annotations

import os
import struct
import warnings
import zlib

import numpy as np
import pytest
from PIL import Image

from kpnb.images import ImageError, find_image, image_size, load_image


@pytest.fixture
def export(tmp_path):
    root = tmp_path / "export"
    (root / "images" / "Train").mkdir(parents=True)
    Image.new("RGB", (8, 4), (10, 20, 30)).save(root / "images" / "Train" / "a.png")
    Image.new("RGB", (8, 4)).save(root / "images" / "frame_000001.PNG")
    (tmp_path / "secret.png").write_bytes((root / "images" / "Train" / "a.png").read_bytes())
    return root


def test_find_image_looks_in_subset_images_and_root(export):
    assert find_image(export, "a.png", "Train") == (export / "images/Train/a.png").resolve()
    assert find_image(export, "frame_000001") == (export / "images/frame_000001.PNG").resolve()
    assert find_image(export, "nope.png") is None


@pytest.mark.parametrize(
    ("name", "subset"),
    [("../secret.png", None), ("../../secret.png", "Train"), ("a.png", "../.."), ("ABS", None)],
)
def test_find_image_refuses_names_that_leave_the_export(export, name, subset):
    if name == "ABS":
        name = str(export.parent / "secret.png")
    with pytest.raises(ImageError, match="leads outside the export"):
        find_image(export, name, subset)


def test_find_image_refuses_a_symlink_out_of_the_export(export):
    (export / "images" / "link.png").symlink_to(export.parent / "secret.png")
    with pytest.raises(ImageError, match="link.png"):
        find_image(export, "link.png")


def test_load_image_applies_exif_orientation(tmp_path):
    img = Image.new("RGB", (6, 2), (0, 0, 0))
    img.putpixel((0, 0), (255, 0, 0))
    exif = img.getexif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    img.save(tmp_path / "r.png", exif=exif)
    arr = load_image(tmp_path / "r.png")
    assert arr.shape == (6, 2, 3) and arr.dtype == np.uint8
    assert image_size(tmp_path / "r.png") == (2, 6)
    assert arr[0, 1].tolist() == [255, 0, 0] and arr[0, 0].tolist() == [0, 0, 0]  # top right


def test_load_image_scales_16_bit_grey_to_8_bit(tmp_path):
    grey = np.array([[0, 65535, 32768]], dtype=np.uint16)
    Image.fromarray(grey).save(tmp_path / "g16.png")
    arr = load_image(tmp_path / "g16.png")
    assert arr.shape == (1, 3, 3)
    assert arr[0, :, 0].tolist() == [0, 255, 128]


def test_load_image_makes_rgb_of_palette_and_alpha(tmp_path):
    Image.new("RGBA", (3, 3), (1, 2, 3, 0)).save(tmp_path / "a.png")
    Image.new("P", (3, 3)).save(tmp_path / "p.png")
    assert load_image(tmp_path / "a.png")[0, 0].tolist() == [1, 2, 3]
    assert load_image(tmp_path / "p.png").shape == (3, 3, 3)


def test_load_image_refuses_too_many_pixels_before_decoding(tmp_path, monkeypatch):
    Image.new("L", (100, 100)).save(tmp_path / "big.png")
    with pytest.raises(ImageError, match="KPNB_MAX_PIXELS"):
        load_image(tmp_path / "big.png", limit=9_999)
    monkeypatch.setenv("KPNB_MAX_PIXELS", "5000")
    with pytest.raises(ImageError, match="100x100"):
        load_image(tmp_path / "big.png")
    monkeypatch.setenv("KPNB_MAX_PIXELS", "10000")
    assert load_image(tmp_path / "big.png").shape == (100, 100, 3)


def test_load_image_names_an_undecodable_file(tmp_path):
    (tmp_path / "bad.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(ImageError, match="bad.jpg"):
        load_image(tmp_path / "bad.jpg")


def _png(path, width: int, height: int, *, complete: bool = True):
    """A black 1-bit grey PNG written by hand: a 10000x10000 one is 12 KB and 0.1 s, its
    header readable without decoding 100 MP. `complete=False` cuts it inside IDAT."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    rows = zlib.compress(bytes(1 + (width + 7) // 8) * height)
    data = b"\x89PNG\r\n\x1a\n" + chunk(
        b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    )
    data += chunk(b"IDAT", rows) + chunk(b"IEND", b"")
    path.write_bytes(data if complete else data[: 33 + 8 + len(rows) // 2])
    return path


def test_kpnb_max_pixels_can_raise_the_limit_above_pils(tmp_path, monkeypatch):
    """KPNB_MAX_PIXELS is the one limit: PIL's own (89.5 MP) gives way to a higher one."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)  # restored after
    big = _png(tmp_path / "big.png", 10_000, 10_000)  # 100 MP, over PIL's limit
    with pytest.raises(ImageError, match=r"big.png: the image .*more than 64,000,000 pixels"):
        image_size(big)
    monkeypatch.setenv("KPNB_MAX_PIXELS", "300000000")
    assert image_size(big) == (10_000, 10_000)
    assert Image.MAX_IMAGE_PIXELS == 300_000_000  # PIL follows, so it never contradicts kpnb


def test_pils_limit_follows_kpnbs_when_decoding_too(tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1_000)  # a user's (or PIL's) low limit
    Image.new("L", (50, 50)).save(tmp_path / "mid.png")  # 2500 px: PIL alone warns
    Image.new("L", (100, 100)).save(tmp_path / "big.png")  # 10000 px: PIL alone refuses
    monkeypatch.setenv("KPNB_MAX_PIXELS", "5000")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no DecompressionBombWarning either
        assert load_image(tmp_path / "mid.png").shape == (50, 50, 3)
    with pytest.raises(
        ImageError, match=r"big.png: the image \(10,000 pixels\) has more than 5,000"
    ):
        load_image(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 6_000)  # higher than kpnb's: left alone
    with pytest.raises(ImageError, match="more than 5,000 pixels"):
        image_size(tmp_path / "big.png")
    assert Image.MAX_IMAGE_PIXELS == 6_000


def test_image_size_of_a_truncated_image_names_the_file(tmp_path):
    cut = _png(tmp_path / "cut.png", 2_000, 2_000, complete=False)
    with pytest.raises(ImageError, match=r"cut.png: cannot read the image \(.*truncated"):
        image_size(cut)
    with pytest.raises(ImageError, match="cut.png: cannot decode"):
        load_image(cut)


def _tiff_with_rational_strip_offset() -> bytes:
    """A 4x4 grey TIFF whose StripOffsets tag is a RATIONAL, as a corrupt or hostile file
    has it: PIL fails with a TypeError while decoding."""
    tags = [  # (tag, type, value): 3 SHORT, 4 LONG, 5 RATIONAL (stored after the IFD)
        (256, 3, 4),
        (257, 3, 4),
        (258, 3, 8),
        (259, 3, 1),
        (262, 3, 1),
        (273, 5, (200, 1)),
        (277, 3, 1),
        (278, 3, 4),
        (279, 4, 16),
    ]
    extra = 8 + 2 + 12 * len(tags) + 4
    entries, body = [], b""
    for tag, kind, value in tags:
        if kind == 5:
            entries.append(struct.pack("<HHII", tag, kind, 1, extra + len(body)))
            body += struct.pack("<II", *value)
        elif kind == 3:
            entries.append(struct.pack("<HHIHH", tag, kind, 1, value, 0))
        else:
            entries.append(struct.pack("<HHII", tag, kind, 1, value))
    head = b"II*\x00" + struct.pack("<IH", 8, len(tags)) + b"".join(entries) + bytes(4) + body
    return head.ljust(200, b"\x00") + bytes(range(16))


def test_a_corrupt_tiff_is_an_image_error_not_a_type_error(tmp_path):
    path = tmp_path / "bad.tif"
    path.write_bytes(_tiff_with_rational_strip_offset())
    with pytest.raises(ImageError, match="bad.tif: cannot decode"):
        load_image(path)


def test_a_folder_or_fifo_named_like_an_image_is_said_to_be_one(export):
    (export / "images" / "Train" / "dir.png").mkdir()
    with pytest.raises(ImageError, match=r"dir.png is a folder"):
        find_image(export, "dir.png", "Train")
    os.mkfifo(export / "images" / "pipe.png")
    with pytest.raises(ImageError, match=r"pipe.png is not a regular file"):
        find_image(export, "pipe.png", "Train")
    assert find_image(export, "a.png", "Train") is not None  # a real file is still found


@pytest.mark.parametrize(
    "name, fact", [("a\0.png", "NUL"), ("x" * 256 + ".png", "longer than 255 bytes")]
)
def test_names_no_file_can_have_are_said_so(export, name, fact):
    with pytest.raises(ImageError, match=fact) as exc:
        find_image(export, name, "Train")
    assert "outside" not in str(exc.value)


def test_an_image_of_another_size_than_declared_is_refused_or_rescaled(export):
    path = export / "images" / "Train" / "a.png"  # 8x4
    assert load_image(path, expect=(8, 4)).shape == (4, 8, 3)
    assert load_image(path, expect=(0, float("nan"))).shape == (4, 8, 3)  # unknown: unchecked
    with pytest.raises(ImageError, match=r"a.png: .*8x4 .*80x40") as exc:
        load_image(path, expect=(80, 40))
    assert exc.value.param == "rescale_images"
    big = load_image(path, expect=(80, 40), rescale=True)
    assert big.shape == (40, 80, 3) and tuple(big[20, 40]) == (10, 20, 30)


def test_resized_image_files_are_refused_by_show_and_the_dataset(tmp_path, capsys):
    """The export declares 96x96 (the synthetic default); the files were shrunk to 32x32."""
    from kpnb.cli import main
    from kpnb.data import read_annotations
    from kpnb.dataset import KeypointDataset
    from kpnb.synthetic import generate

    root = generate(tmp_path / "export", 2, seed=0)
    ann = read_annotations(root)
    w, h = (int(v) for v in ann.images.loc[0, ["width", "height"]])
    for path in root.rglob("*.jpg"):
        Image.open(path).resize((w // 3, h // 3)).save(path)
    png = tmp_path / "s.png"
    assert main(["show", str(root), "--image", "0", "--out", str(png)]) == 2
    err = capsys.readouterr().err
    assert f"{w // 3}x{h // 3}" in err and f"{w}x{h}" in err and not png.exists()
    assert main(["show", str(root), "--image", "0", "--out", str(png), "--rescale-images"]) == 0
    assert Image.open(png).size == (w, h)
    label = next(iter(ann.skeletons))
    with pytest.raises(ImageError, match=f"{w}x{h}"):
        KeypointDataset(ann, root, label).load_image(0)
    image = KeypointDataset(ann, root, label, rescale_images=True).load_image(0)
    assert tuple(image.shape) == (3, h, w)


def test_train_refuses_resized_images_naming_the_flag_that_rescales_them(tmp_path, capsys):
    from kpnb.cli import main
    from kpnb.synthetic import generate

    root = generate(tmp_path / "export", 6, seed=0)
    for path in root.rglob("*.jpg"):
        image = Image.open(path)
        image.resize((image.width // 3, image.height // 3)).save(path)
    argv = ["train", str(root), "--out", str(tmp_path / "run"), "--weights", "none"]
    argv += ["--preset", "tiny", "--epochs", "1", "--workers", "0", "--size", "64"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "--rescale-images" in err and "rescale_images" not in err
    assert len(err.strip().splitlines()) == 1  # one line, no traceback
    assert main([*argv, "--overwrite", "--rescale-images"]) == 0
