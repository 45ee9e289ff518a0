"""CVAT files built to hurt: each is refused in one line naming the file, or read in linear
memory; and names XML cannot hold are refused before anything is written."""

import json
import re
import tracemalloc
from xml.sax.saxutils import escape

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from kpnb.cli import main
from kpnb.cvat import CvatFormatError, read_cvat, skeleton_svg, write_cvat
from kpnb.errors import KpnbError
from kpnb.tables import Annotations, Skeleton, tidy_images, tidy_keypoints

IMG = '<image id="0" name="a.jpg" width="10" height="10">\n'


def _xml(tmp_path, body: str, meta: str = "", head: str = "") -> str:
    path = tmp_path / "annotations.xml"
    text = f"{head}<annotations>\n<version>1.1</version>\n<meta>{meta}</meta>\n{body}</annotations>"
    path.write_text(text, encoding="utf-8")
    return path


def test_a_made_up_stop_frame_is_refused_before_any_row(tmp_path):
    meta = "<task><start_frame>0</start_frame><stop_frame>2147483646</stop_frame></task>"
    track = '<track id="0" label="p"><points frame="0" points="1,2"/></track>\n'
    path = _xml(tmp_path, track, meta)
    with pytest.raises(CvatFormatError, match="2,147,483,647 frames") as exc:
        read_cvat(path)
    assert str(exc.value).startswith(str(path))


@pytest.mark.slow
def test_many_skeleton_labels_and_names_take_linear_memory(tmp_path):
    n = 3000  # a square table of labels x element names would be 72 MB
    labels = "".join(
        f"<label><name>s{i}</name><type>skeleton</type>"
        f"<svg>{escape(skeleton_svg(Skeleton((f'k{i}',))))}</svg></label>"
        for i in range(n)
    )
    body = "".join(
        f'{IMG}<skeleton label="s{i}"><points label="k{i}" points="1,2"/></skeleton></image>\n'
        for i in range(n)
    )
    path = _xml(tmp_path, body, f"<task><labels>{labels}</labels></task>")
    tracemalloc.start()
    try:
        ann = read_cvat(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(ann.keypoints) == n and ann.keypoints["keypoint"].nunique() == n
    assert peak < 40e6, f"peak {peak / 1e6:.0f} MB"


@pytest.mark.parametrize("encoding", ["bogus", "utf-7"])
def test_an_encoding_expat_cannot_read_is_a_format_error(tmp_path, encoding):
    path = _xml(tmp_path, "", head=f'<?xml version="1.0" encoding="{encoding}"?>\n')
    with pytest.raises(CvatFormatError, match="encoding") as exc:
        read_cvat(path)
    assert str(exc.value).startswith(str(path))


def test_more_points_than_int16_numbers_are_refused(tmp_path):
    coords = ";".join(["1,2"] * 40000)
    path = _xml(tmp_path, f'{IMG}<points label="p" points="{coords}"/>\n</image>\n')
    with pytest.raises(CvatFormatError, match="line 5: .*40,000 points"):
        read_cvat(path)


def test_duplicate_skeleton_keypoint_names_name_the_file_and_label(tmp_path):
    svg = escape(skeleton_svg(Skeleton(("a", "b"))).replace('"b"', '"a"'))
    meta = f"<task><labels><label><name>hand</name><svg>{svg}</svg></label></labels></task>"
    path = _xml(tmp_path, "", meta)
    with pytest.raises(CvatFormatError, match=r"skeleton label 'hand' .*\['a'\]") as exc:
        read_cvat(path)
    assert str(exc.value).startswith(str(path))


def _one_point(label="p", keypoint="p", image="a.jpg", width=10) -> Annotations:
    images = pd.DataFrame(
        {"image_index": [0], "image_id": [0], "name": [image], "width": [width], "height": [6]}
    )
    kp = pd.DataFrame(
        {
            "image_index": [0],
            "instance_id": [0],
            "label": [label],
            "keypoint": [keypoint],
            "point_index": [0],
            "x": [1.0],
            "y": [2.0],
        }
    )
    skeletons = {label: Skeleton((keypoint,))} if keypoint != label else {}
    labels = pd.DataFrame({"name": [label], "type": ["points"]})
    return Annotations(tidy_images(images), tidy_keypoints(kp), skeletons, labels)


@pytest.mark.parametrize(
    "names", [{"label": "cat\x01"}, {"label": "s", "keypoint": "nose\x07"}, {"image": "a\x00.jpg"}]
)
def test_names_xml_cannot_hold_are_refused_before_writing(tmp_path, names):
    bad = next(v for v in names.values() if not v.isprintable())
    with pytest.raises(KpnbError, match=re.escape(repr(bad))):
        write_cvat(_one_point(**names), tmp_path / "out.xml")
    assert not list(tmp_path.iterdir())


def test_a_tab_or_newline_in_a_name_round_trips(tmp_path):
    ann = _one_point(label="two\twords\n")
    back = read_cvat(write_cvat(ann, tmp_path / "out.xml"))
    assert back.keypoints["label"].tolist() == ["two\twords\n"]


def test_writing_an_image_without_a_size_names_it_and_reads_it_from_its_file(tmp_path):
    ann = _one_point(width=None)
    with pytest.raises(KpnbError, match="image 'a.jpg' has no width/height.* images_root") as exc:
        write_cvat(ann, tmp_path / "out.xml")
    assert exc.value.param == "images_root"
    assert not list(tmp_path.iterdir())  # nothing half-written
    (tmp_path / "images").mkdir()
    Image.new("RGB", (8, 6)).save(tmp_path / "images" / "a.jpg")
    out = write_cvat(ann, tmp_path / "out.xml", images_root=tmp_path)
    assert read_cvat(out).images[["width", "height"]].values.tolist() == [[8, 6]]


def test_sizeless_coco_converts_to_cvat_in_one_line_or_with_the_images(tmp_path, capsys):
    coco = {
        "images": [{"id": 1, "file_name": "a.png", "width": 0, "height": 0}],
        "categories": [{"id": 1, "name": "p", "keypoints": ["nose"], "skeleton": []}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "keypoints": [1, 2, 2], "num_keypoints": 1}
        ],
    }
    src = tmp_path / "sizeless.json"
    src.write_text(json.dumps(coco))
    assert main(["convert", str(src), "--to", "cvat", str(tmp_path / "out.xml")]) != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "'a.png'" in err and "Traceback" not in err
    assert "give --images-root" in err
    Image.new("RGB", (8, 6)).save(tmp_path / "a.png")
    argv = ["convert", str(src), "--to", "cvat", str(tmp_path / "out.xml")]
    assert main([*argv, "--images-root", str(tmp_path)]) == 0
    back = read_cvat(tmp_path / "out.xml")
    assert back.images[["width", "height"]].values.tolist() == [[8, 6]]
    assert np.allclose(back.keypoints[["x", "y"]].to_numpy(), [[1, 2]])
