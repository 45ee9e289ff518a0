"""read_cvat / write_cvat: real fixtures, the format notes' pitfalls, bad input, round trips."""

import math
import shutil
import zipfile
from pathlib import Path
from xml.sax.saxutils import escape

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from shared_paths import FIXTURES

import kpnb.cvat as cvat
from kpnb.cvat import CvatFormatError, read_cvat, skeleton_svg, write_cvat
from kpnb.synthetic import FACE, synthesize
from kpnb.tables import KEYPOINT_COLUMNS, Annotations, Skeleton, tidy_images, tidy_keypoints

DATA = Path(__file__).parent / "data"
DATUMARO = FIXTURES / "cvat-ai-datumaro/tests/assets/cvat_dataset"
OPENVINO = FIXTURES / "openvinotoolkit-datumaro/tests/assets/cvat_dataset/for_images"
SPEC = FIXTURES / "opencv-cvat/site/content/en/docs/manual/advanced"


def _vis(ann, label):
    kp = ann.keypoints[ann.keypoints["label"] == label]
    return kp["visibility"].tolist()


# -- real fixtures ---------------------------------------------------------------------
def test_datumaro_images_legacy_skeleton():
    ann = read_cvat(DATUMARO / "for_images/train.xml")
    assert len(ann.images) == 2 and ann.meta["meta_kind"] == "task"
    # 4-keypoint skeleton from the svg; edges from node ids 3->2 and 1->4
    assert ann.skeletons["skeleton"] == Skeleton(("1", "2", "3", "4"), ((2, 1), (0, 3)))
    assert _vis(ann, "skeleton") == [0, 2, 2, 2, 2, 2, 0, 2]  # outside="1" -> 0
    # outside points keep their (stale) coordinates, as CVAT writes them
    first = ann.keypoints[ann.keypoints["label"] == "skeleton"].iloc[0]
    assert (first["x"], first["y"]) == (1.0, 1.0)
    plain = ann.keypoints[ann.keypoints["label"] == "label2"]
    assert plain["point_index"].tolist() == [0, 1, 2]  # multi-coordinate <points>
    assert ann.meta["skipped"] == {"polyline": 1, "polygon": 1}
    assert len(ann.boxes) == 1 and ann.boxes.iloc[0]["label"] == "label1"


def test_datumaro_video_legacy_nested_tracks():
    ann = read_cvat(DATUMARO / "for_video/annotations.xml")
    assert ann.images["image_id"].tolist() == [10, 13, 16, 19]  # start 10, step 3
    assert ann.images["name"].tolist()[0] == "frame_000010"
    assert ann.images["width"].tolist() == [25] * 4 and ann.images["height"].tolist() == [20] * 4
    skel = ann.keypoints[ann.keypoints["label"] == "skeleton"]
    assert skel["instance_id"].nunique() == 3 and len(skel) == 12
    per_frame = skel.groupby("image_index")["visibility"].apply(list).to_dict()
    assert per_frame[1] == [2, 2, 0, 2]  # element "3" hits an outside keyframe at frame 13
    assert per_frame[2] == [2, 2, 0, 2]  # ... and is missing at frame 16: absent, NaN
    missing = skel[(skel["image_index"] == 2) & (skel["keypoint"] == "3")].iloc[0]
    assert math.isnan(missing["x"]) and math.isnan(missing["y"])
    assert set(skel["track_id"]) == {3}
    klhg = ann.keypoints[ann.keypoints["label"] == "klhg"]
    assert klhg["visibility"].tolist() == [2, 2, 2, 0, 0, 0]  # outside keyframe kept as v=0
    assert ann.attributes["value"].tolist() == ["hgkf", "jk"]
    assert "z U k" in ann.labels["name"].tolist()  # label with spaces


def test_spec_example_images_current_skeleton():
    ann = read_cvat(SPEC / "xml_format.example_cvat_for_images.xml")
    assert ann.skeletons["s1"].keypoints == ("1", "2", "3")
    assert ann.skeletons["s1"].edges == ((1, 2), (0, 1))
    assert ann.label_counts().to_dict() == {"wheel": 1, "s1": 1}
    assert len(ann.keypoints) == 7 and (ann.keypoints["visibility"] == 2).all()
    assert ann.meta["skipped"] == {"polygon": 1, "polyline": 2, "tag": 1, "mask": 1}


def test_spec_example_video_current_skeleton_track():
    ann = read_cvat(SPEC / "xml_format.example_cvat_for_video.xml")
    assert len(ann.images) == 4620  # <size> frames, none listed in the file
    assert (ann.images["width"] == 640).all() and (ann.images["height"] == 480).all()
    skel = ann.keypoints
    assert skel["instance_id"].nunique() == 6 and set(skel["label"]) == {"s1"}
    frames = ann.images.set_index("image_index").loc[skel["image_index"], "image_id"]
    assert sorted(set(frames)) == [0, 1, 6, 7, 13, 14]
    assert skel.groupby("instance_id")["visibility"].apply(lambda v: int(v.max())).tolist() == [
        2, 0, 2, 0, 2, 0]  # fmt: skip


def test_openvino_project_export_with_duplicate_names_across_subsets():
    ann = read_cvat(OPENVINO / "export_project/annotations.xml")
    assert ann.meta["meta_kind"] == "project"
    assert ann.images["subset"].tolist() == ["Test", "Test", "Train", "Train", "Validation",
                                             "Validation"]  # fmt: skip
    assert ann.images["image_index"].tolist() == list(range(6))
    assert ann.images["name"].tolist().count("img0.jpg") == 3
    assert ann.images["task_id"].tolist() == [39] * 6
    assert ann.keypoints.groupby("image_index").size().to_dict() == {1: 3, 3: 3, 5: 3}


def test_openvino_minimal_task_without_types():
    ann = read_cvat(OPENVINO / "export_task/train.xml")
    assert ann.skeletons == {} and len(ann.keypoints) == 3
    assert ann.labels["type"].isna().all() or (ann.labels["type"] == "").all()


# -- pitfalls from the format notes ---------------------------------------------------
@pytest.fixture(scope="module")
def pitfalls():
    return read_cvat(DATA / "pitfalls_images.xml")


def test_elements_map_by_name_not_file_order(pitfalls):
    kp = pitfalls.keypoints[pitfalls.keypoints["label"] == "hand.v2 left"]
    # definition (circle) order, not the order the elements were written in
    assert kp["keypoint"].tolist() == ["wrist", "thumb tip", "zeigefinger-spitze.ü"]
    assert kp["visibility"].tolist() == [0, 0, 1]  # outside, missing, occluded
    assert kp["x"].tolist()[0] == 11.5 and math.isnan(kp["x"].tolist()[1])
    assert kp["source"].tolist()[0] == "auto" and kp["group_id"].tolist() == [3, 3, 3]


def test_node_id_gaps_map_to_positions(pitfalls):
    # svg node ids 2, 5, 9 -> positions 0, 1, 2; edges 5->2 and 2->9
    assert pitfalls.skeletons["hand.v2 left"].edges == ((1, 0), (0, 2))


def test_sublabel_names_repeat_across_skeletons(pitfalls):
    tiny = pitfalls.keypoints[pitfalls.keypoints["label"] == "tiny"]
    assert tiny["keypoint"].tolist() == ["wrist", "tip"]
    assert tiny[["x", "y"]].to_numpy().tolist() == [[1, 2], [5, 6]]


def test_attributes_of_elements_and_instances(pitfalls):
    attrs = pitfalls.attributes.sort_values("point_index")
    assert attrs[["point_index", "name", "value"]].values.tolist() == [
        [-1, "pose", "open"], [2, "nail", "painted"]]  # fmt: skip


def test_names_and_empty_images_are_kept(pitfalls):
    assert pitfalls.images["name"].tolist() == ["dir/sub/a.b.c.jpg", "C:\\data\\b.jpg", "c.jpg"]
    assert pitfalls.images["image_id"].tolist() == [10, 11, 12]
    assert pitfalls.instances_per_image().tolist() == [2, 0, 1]
    assert pitfalls.meta["meta_kind"] == "job" and pitfalls.meta["skipped"] == {"ellipse": 1}
    assert pitfalls.boxes.iloc[0]["label"] == "марка" and pitfalls.boxes.iloc[0]["group_id"] == 3


def test_instance_array(pitfalls):
    arr = pitfalls.instance_array(0, "hand.v2 left")
    assert arr.shape == (1, 3, 3) and arr[0, 2].tolist() == [30, 10, 1]
    assert pitfalls.instance_array(2, "landmark").shape == (1, 2, 3)


def test_job_video_original_size_under_meta():
    ann = read_cvat(DATA / "job_video.xml")
    assert ann.images["image_id"].tolist() == [5, 6, 7]
    assert ann.images["width"].tolist() == [640] * 3 and ann.images["height"].tolist() == [360] * 3
    assert ann.keypoints["visibility"].tolist() == [2, 1]
    assert ann.keypoints["keyframe"].tolist() == [True, False]


def test_project_video_sizes_per_task():
    ann = read_cvat(DATA / "project_video.xml")
    sizes = ann.images.set_index(["task_id", "image_id"])[["width", "height"]]
    assert sizes.loc[(4, 1)].tolist() == [320, 240] and sizes.loc[(5, 0)].tolist() == [64, 48]
    assert len(ann.images) == 3
    assert set(ann.images["subset"]) == {"Train", "Test"}


# -- sources: file, folder, zip --------------------------------------------------------
def test_folder_and_zip_sources(tmp_path, synthetic_export):
    direct = read_cvat(synthetic_export / "annotations.xml")
    folder = read_cvat(synthetic_export)
    archive = shutil.make_archive(str(tmp_path / "export"), "zip", synthetic_export)
    zipped = read_cvat(archive)
    pd.testing.assert_frame_equal(direct.keypoints, folder.keypoints)
    pd.testing.assert_frame_equal(direct.keypoints, zipped.keypoints)
    pd.testing.assert_frame_equal(direct.images, zipped.images)


def test_synthetic_export_reads_back_its_truth(synthetic_export):
    truth, _ = synthesize(40, seed=0)
    ann = read_cvat(synthetic_export)
    cols = ["image_index", "instance_id", "label", "keypoint", "point_index", "visibility"]
    pd.testing.assert_frame_equal(ann.keypoints[cols], truth.keypoints[cols],
                                  check_categorical=False)  # fmt: skip
    np.testing.assert_allclose(ann.keypoints[["x", "y"]], truth.keypoints[["x", "y"]], atol=1e-3)
    assert ann.skeletons == {"face": FACE}


# -- bad input -------------------------------------------------------------------------
def _write(tmp_path, text, name="annotations.xml"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


GOOD_HEAD = "<annotations>\n<version>1.1</version>\n<meta><task><labels/></task></meta>\n"


@pytest.mark.parametrize(
    "body, match",
    [
        (
            '<image id="0" name="a.jpg" width="5" height="5">\n'
            '<points label="p" points="12.5,abc" occluded="0"/>\n</image>',
            r"line 5: <points> points='12.5,abc' is not 'x,y'",
        ),
        (
            '<image id="0" name="a.jpg" width="5" height="5">\n<skeleton label="s">\n'
            '<points label="a" points="1;2" outside="0" occluded="0"/>\n</skeleton>\n</image>',
            r"line 6: skeleton element points='1;2'",
        ),
        (
            '<image id="0" name="a.jpg" width="wide" height="5">\n</image>',
            r"line 4: <image> width='wide' is not a number",
        ),
        (
            '<image id="0" name="a.jpg" width="5" height="5">\n<points label="p" points="1,2"',
            r"line 6, column \d+: malformed XML",
        ),
        (
            '<track id="0" label="p">\n<points points="1,2"/>\n</track>',
            r"line 5: <points> inside <track> has no frame",
        ),
    ],
)
def test_bad_values_name_file_line_and_element(tmp_path, body, match):
    path = _write(tmp_path, GOOD_HEAD + body + "\n</annotations>\n")
    with pytest.raises(CvatFormatError, match=match) as exc:
        read_cvat(path)
    assert str(path) in str(exc.value)


def test_unknown_skeleton_element_is_an_error_not_a_drop(tmp_path):
    text = (SPEC / "xml_format.example_cvat_for_images.xml").read_text()
    text = text.replace('<points label="3" occluded="0"', '<points label="7" occluded="0"', 1)
    with pytest.raises(CvatFormatError, match=r"skeleton 's1' has no keypoint '7'"):
        read_cvat(_write(tmp_path, text))


def test_not_cvat(tmp_path):
    with pytest.raises(CvatFormatError, match=r"line 1: root element is <svg>"):
        read_cvat(_write(tmp_path, "<svg><circle/></svg>"))
    with pytest.raises(CvatFormatError, match="malformed XML"):
        read_cvat(_write(tmp_path, ""))
    assert issubclass(CvatFormatError, ValueError)


def test_entity_bomb_and_external_entities_are_refused(tmp_path):
    bomb = (
        '<?xml version="1.0"?>\n<!DOCTYPE annotations [\n<!ENTITY a "aaaaaaaaaa">\n'
        '<!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">\n]>\n<annotations>&b;</annotations>'
    )
    with pytest.raises(CvatFormatError, match="refused"):
        read_cvat(_write(tmp_path, bomb))
    secret = tmp_path / "secret.txt"
    secret.write_text("password")
    xxe = (
        f'<?xml version="1.0"?>\n<!DOCTYPE annotations [\n<!ENTITY x SYSTEM "{secret.as_uri()}">'
        "\n]>\n<annotations><version>&x;</version></annotations>"
    )
    with pytest.raises(CvatFormatError, match="refused"):
        read_cvat(_write(tmp_path, xxe, "x.xml"))


def test_missing_sources(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        read_cvat(tmp_path / "nope.xml")
    with pytest.raises(FileNotFoundError, match="no annotations.xml"):
        read_cvat(tmp_path)
    bad_zip = tmp_path / "e.zip"
    with zipfile.ZipFile(bad_zip, "w") as zf:
        zf.writestr("readme.txt", "x")
    with pytest.raises(CvatFormatError, match="no annotations.xml in this zip"):
        read_cvat(bad_zip)


# -- writing ----------------------------------------------------------------------------
def _instances(ann: Annotations) -> list:
    """Each instance as a comparable tuple (write_cvat orders shapes by z_order, so ids move)."""
    cols = ["label", "keypoint", "point_index", "visibility", "occluded", "outside", "z_order",
            "group_id"]  # fmt: skip
    kp = ann.keypoints.assign(x=ann.keypoints["x"].round(2), y=ann.keypoints["y"].round(2))
    out = []
    for (image, _), rows in kp.groupby(["image_index", "instance_id"], sort=False):
        values = rows[cols + ["x", "y"]].astype(str).values.tolist()
        out.append((int(image), tuple(map(tuple, values))))
    return sorted(out)


def _compare(a: Annotations, b: Annotations) -> None:
    assert _instances(a) == _instances(b)
    assert a.images[["name", "width", "height"]].values.tolist() == \
        b.images[["name", "width", "height"]].values.tolist()  # fmt: skip
    assert a.skeletons == b.skeletons


def test_write_then_read_fixtures(tmp_path):
    for src in [
        DATUMARO / "for_images/train.xml",
        SPEC / "xml_format.example_cvat_for_images.xml",
        DATA / "pitfalls_images.xml",
        OPENVINO / "export_project/annotations.xml",
    ]:
        a = read_cvat(src)
        b = read_cvat(write_cvat(a, tmp_path / f"{src.stem}.xml"))
        _compare(a, b)


names = st.text(st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), min_size=1,
                max_size=8).map(str.strip).filter(bool)  # fmt: skip


@st.composite
def annotations(draw):
    kp_names = draw(st.lists(names, min_size=1, max_size=4, unique=True))
    label = draw(names)
    k = len(kp_names)
    n_images = draw(st.integers(1, 4))
    rows, inst = [], 0
    for i in range(n_images):
        for _ in range(draw(st.integers(0, 3))):
            z = draw(st.integers(0, 3))
            for j, name in enumerate(kp_names):
                flag = draw(st.sampled_from(["visible", "occluded", "outside"]))
                xy = draw(st.tuples(st.floats(-50, 500), st.floats(-50, 500)))
                rows.append(dict(image_index=i, instance_id=inst, label=label, keypoint=name,
                                 point_index=j, x=round(xy[0], 2), y=round(xy[1], 2),
                                 occluded=flag == "occluded", outside=flag == "outside",
                                 z_order=z))  # fmt: skip
            inst += 1
    images = [dict(image_index=i, image_id=i, name=f"{draw(names)}_{i}.jpg",
                   width=draw(st.integers(1, 5000)), height=draw(st.integers(1, 5000)))
              for i in range(n_images)]  # fmt: skip
    kp = pd.DataFrame(rows, columns=KEYPOINT_COLUMNS[:7] + ["occluded", "outside", "z_order"])
    edges = draw(st.lists(st.tuples(st.integers(0, k - 1), st.integers(0, k - 1)), max_size=3,
                          unique=True))  # fmt: skip
    labels = pd.DataFrame(
        [{"name": label, "type": "skeleton"}]
        + [{"name": n, "type": "points", "parent": label} for n in kp_names]
    )
    return Annotations(tidy_images(pd.DataFrame(images)), tidy_keypoints(kp),
                       skeletons={label: Skeleton(tuple(kp_names), tuple(edges))},
                       labels=labels)  # fmt: skip


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(annotations())
def test_round_trip_property(tmp_path, ann):
    back = _read_both(write_cvat(ann, tmp_path / "rt.xml"))  # fast and full readers agree
    assert back.meta["reader"] == "fast"
    _compare(ann, back)


def test_write_is_atomic(tmp_path, monkeypatch):
    ann = read_cvat(DATA / "pitfalls_images.xml")
    out = tmp_path / "out.xml"
    out.write_text("previous")
    import kpnb.cvat as cvat

    def boom(*a, **k):
        yield "<annotations>"
        raise RuntimeError("interrupted")

    monkeypatch.setattr(cvat, "iter_cvat_lines", boom)
    with pytest.raises(RuntimeError):
        write_cvat(ann, out)
    assert out.read_text() == "previous" and [p.name for p in tmp_path.iterdir()] == ["out.xml"]


# -- the fast reader, its full-parse fallback, and expat's check in a second process --------
# read_cvat reads CVAT-for-images bodies with regular expressions over bytes expat accepts,
# and parses again with expat callbacks where anything is unusual. Both must give the same
# tables, always; these tests hold the two side by side.

ALL_XML = sorted(FIXTURES.rglob("*.xml")) + sorted(DATA.glob("*.xml"))


def _read_both(path):
    fast = read_cvat(path)
    full = cvat._read(cvat._Source(path), fast=False)
    for name in ("images", "keypoints", "boxes", "attributes", "labels"):
        pd.testing.assert_frame_equal(getattr(fast, name), getattr(full, name), obj=name)
    assert fast.skeletons == full.skeletons
    assert full.meta["reader"] == "full"
    drop = {"reader"}
    assert {k: v for k, v in fast.meta.items() if k not in drop} == {
        k: v for k, v in full.meta.items() if k not in drop
    }
    return fast


@pytest.mark.parametrize("path", ALL_XML, ids=lambda p: p.parent.name + "/" + p.name)
def test_fast_and_full_readers_agree_on_every_fixture(path):
    ann = _read_both(path)
    video = b"<track" in path.read_bytes()
    assert ann.meta["reader"] == ("full" if video else "fast")


def test_fast_reader_on_the_synthetic_exports(synthetic_export, points_export):
    for export in (synthetic_export, points_export):
        assert _read_both(export).meta["reader"] == "fast"


_SVG = escape(skeleton_svg(Skeleton(("a", "b", "c"), ((0, 1), (1, 2)))))
FAST_HEAD = (
    '<?xml version="1.0" encoding="utf-8"?>\n<annotations>\n<version>1.1</version>\n<meta><task>'
    "<labels><label><name>s</name><type>skeleton</type><svg>" + _SVG + "</svg></label>"
    + "".join(f"<label><name>{k}</name><type>points</type><parent>s</parent></label>"
              for k in "abc")
    + "</labels></task></meta>\n"
)  # fmt: skip
IMG = '<image id="0" name="a.jpg" width="10" height="10">\n'
ELEM = '<points label="{}" source="manual" outside="0" occluded="{}" points="{}">\n</points>\n'
PLAIN = '<points label="p" source="manual" occluded="0" points="{}" z_order="0">\n</points>\n'
SKEL = '<skeleton label="s" source="manual" z_order="0">\n{}</skeleton>\n'
FAST_CASES = {
    "plain": (IMG + PLAIN.format("1.00,2.00") + "</image>", "fast"),
    "elements out of order, one missing": (
        IMG + SKEL.format(ELEM.format("c", 1, "5.00,6.00") + ELEM.format("a", 0, "1.00,2.00"))
        + "</image>", "fast"),
    "attributes of element, skeleton and shape": (
        IMG + '<skeleton label="s" source="manual" z_order="0">\n'
        '<points label="b" source="manual" outside="0" occluded="0" points="3.00,4.00">\n'
        '<attribute name="side">left</attribute>\n</points>\n'
        '<points label="a" source="manual" outside="1" occluded="0" points="1.00,2.00">\n'
        "</points>\n"
        '<attribute name="person">5 &lt; 6</attribute>\n</skeleton>\n'
        '<points label="p" source="manual" occluded="0" points="1.00,1.00" z_order="0">\n'
        '<attribute name="kind">x</attribute>\n<attribute name="more">y\r\nz</attribute>\n'
        "</points>\n</image>", "fast"),
    "self-closing tags": (
        '<image id="0" name="a.jpg" width="1" height="1"/>\n' + IMG
        + '<skeleton label="s" source="manual" z_order="0"/>\n'
        '<points label="p" occluded="0" points="1.00,2.00" z_order="0"/>\n</image>', "fast"),
    "entities, references and newlines in values": (
        '<image id="0" name="a&amp;b&#10;c&#x41;.jpg" width="10" height="10">\n'
        '<points label="p &quot;q&quot; é" source="manual" occluded="0" points="1.00,2.00" '
        'z_order="0">\n</points>\n'
        '<points label="two\nlines" source="manual" occluded="0" points="1.00,2.00" '
        'z_order="0">\n</points>\n</image>', "fast"),
    "many points per shape, other decimals, -0": (
        IMG + PLAIN.format("1.00,2.00;3.5,4;-0.00,6.25e1") + PLAIN.format("-0.00,0.00")
        + "</image>", "fast"),
    "attribute orders of other writers": (
        '<image height="10" id="0" name="a.jpg" width="10">\n'
        '<points points="1,2" label="p" z_order="0" occluded="1" group_id="3"/>\n'
        '<skeleton label="s" occluded="0" source="manual" points="" rotation="0.00" z_order="2">'
        '\n<points label="a" occluded="0" source="auto" outside="1" points="1,1" z_order="0">'
        "\n</points>\n</skeleton>\n</image>", "fast"),
    "project export": (
        '<image id="0" name="a.jpg" subset="Train" task_id="4" width="10" height="10">\n'
        + PLAIN.format("1.00,2.00") + "</image>\n"
        '<image id="0" name="a.jpg" subset="Test" task_id="5" width="10" height="10">\n'
        "</image>", "fast"),
    "boxes, polygons and tags": (
        IMG + '<box label="face" source="manual" occluded="0" xtl="1.00" ytl="2.00" xbr="3.00" '
        'ybr="4.00" z_order="0" group_id="1">\n<attribute name="q">1</attribute>\n</box>\n'
        '<polygon label="r" points="1,2;3,4;5,6" z_order="0">\n</polygon>\n'
        '<tag label="good" source="manual">\n</tag>\n'
        + SKEL.format(ELEM.format("a", 0, "1.00,2.00")).replace('z_order="0"',
                                                                 'z_order="0" group_id="1"')
        + "</image>", "fast"),  # fmt: skip
    "empty points value": (IMG + PLAIN.format("") + "</image>", "full"),
    "comment": (IMG + "<!-- <points label='x' points='1,2'/> -->\n" + PLAIN.format("1.00,2.00")
                + "</image>", "full"),
    "CDATA": (IMG + '<points label="p" occluded="0" points="1.00,2.00" z_order="0">\n'
              "<attribute name='n'><![CDATA[<b>]]></attribute>\n</points>\n</image>", "full"),
    "single quotes": (IMG + "<points label='p' occluded='0' points='1.00,2.00' z_order='0'/>"
                      "\n</image>", "full"),
    "spaces around =": (IMG + '<points label = "p" occluded="0" points="1.00,2.00"/>\n</image>',
                        None),
    "a shape outside any image": (IMG + "</image>\n" + PLAIN.format("1.00,2.00"), "full"),
    "a track after the images": (
        IMG + "</image>\n" + '<track id="0" label="p" source="manual">\n'
        '<points frame="0" outside="0" occluded="0" keyframe="1" points="1.00,2.00" '
        'z_order="0">\n</points>\n</track>', "full"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(FAST_CASES))
def test_fast_reader_agrees_with_full_parse_or_hands_over(tmp_path, case):
    body, reader = FAST_CASES[case]
    ann = _read_both(_write(tmp_path, FAST_HEAD + body + "\n</annotations>\n"))
    if reader is not None:
        assert ann.meta["reader"] == reader
    assert len(ann.images)


def test_fast_reader_keeps_what_matters(tmp_path):
    body, _ = FAST_CASES["attributes of element, skeleton and shape"]
    ann = read_cvat(_write(tmp_path, FAST_HEAD + body + "\n</annotations>\n"))
    assert ann.meta["reader"] == "fast"
    assert ann.attributes[["point_index", "name", "value"]].values.tolist() == [
        [1, "side", "left"], [-1, "person", "5 < 6"], [-1, "kind", "x"], [-1, "more", "y\nz"]]
    assert _vis(ann, "s") == [0, 2, 0]  # a outside, b visible, c missing
    body, _ = FAST_CASES["many points per shape, other decimals, -0"]
    ann = read_cvat(_write(tmp_path, FAST_HEAD + body + "\n</annotations>\n", "b.xml"))
    assert ann.keypoints["x"].tolist()[:3] == [1.0, 3.5, 0.0]
    assert ann.keypoints["y"].tolist()[2] == 62.5 and math.copysign(1, ann.keypoints["x"][2]) < 0


def test_non_utf8_documents_take_the_full_parser(tmp_path):
    text = (FAST_HEAD + IMG + PLAIN.format("1.00,2.00").replace('"p"', '"café"') + "</image>\n"
            "</annotations>\n").replace('encoding="utf-8"', 'encoding="ISO-8859-1"')  # fmt: skip
    latin = tmp_path / "latin.xml"
    latin.write_bytes(text.encode("latin-1"))
    ann = _read_both(latin)
    assert ann.meta["reader"] == "full" and "café" in set(ann.keypoints["label"])
    utf16 = tmp_path / "utf16.xml"
    utf16.write_bytes(text.replace("ISO-8859-1", "UTF-16").encode("utf-16"))
    assert _read_both(utf16).meta["reader"] == "full"


@pytest.fixture
def background(monkeypatch):
    """Run expat's check in a second process even for these small files; record them."""
    monkeypatch.setattr(cvat, "_BACKGROUND_CHECK_MIN_BYTES", 0)
    started = []
    start = cvat._BackgroundCheck.start.__func__

    def spy(cls, src):
        check = start(cls, src)
        started.append(check)
        return check

    monkeypatch.setattr(cvat._BackgroundCheck, "start", classmethod(spy))
    return started


def test_background_check_runs_beside_the_fast_reader(background, synthetic_export, tmp_path):
    ann = _read_both(synthetic_export)
    assert ann.meta["reader"] == "fast"
    assert background and background[0] is not None
    assert background[0].proc.returncode == 0  # the helper ran to the end and said "ok"
    zipped = shutil.make_archive(str(tmp_path / "export"), "zip", synthetic_export)
    assert len(read_cvat(zipped).keypoints) == len(ann.keypoints)


@pytest.mark.parametrize(
    "tail, line",
    [
        ("</image>\n</annotations>\n", None),  # well formed
        ("</imag>\n</annotations>\n", 7),  # mismatched tag in the body
        ("</image>\n", 8),  # truncated: no </annotations>
        ("&bogus;</image>\n</annotations>\n", 7),  # an entity nobody declared
    ],
)
def test_background_check_reports_malformed_bodies_with_their_line(background, tmp_path, tail,
                                                                   line):  # fmt: skip
    path = _write(tmp_path, GOOD_HEAD + IMG + PLAIN.format("1.00,2.00") + tail)
    if line is None:
        assert len(read_cvat(path).keypoints) == 1
    else:
        with pytest.raises(CvatFormatError, match=rf"line {line}, column \d+: malformed XML"):
            read_cvat(path)
    assert background[0] is not None and background[0].proc.poll() is not None


@pytest.mark.parametrize("executable", ["/nonexistent/python", "/bin/false", ""])
def test_without_a_helper_process_the_check_runs_here(background, monkeypatch, tmp_path,
                                                      executable):  # fmt: skip
    import sys

    monkeypatch.setattr(sys, "executable", executable)
    good = _write(tmp_path, GOOD_HEAD + IMG + PLAIN.format("1.00,2.00") + "</image>\n"
                  "</annotations>\n")  # fmt: skip
    assert len(read_cvat(good).keypoints) == 1
    bad = _write(tmp_path, GOOD_HEAD + IMG + PLAIN.format("1.00,2.00") + "</imag>\n", "b.xml")
    with pytest.raises(CvatFormatError, match=r"line 7, column \d+: malformed XML"):
        read_cvat(bad)


def test_hostile_files_stop_the_helper(background, tmp_path):
    bomb = (
        '<?xml version="1.0"?>\n<!DOCTYPE annotations [\n<!ENTITY a "aaaaaaaaaa">\n'
        '<!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">\n]>\n<annotations>&b;</annotations>'
    )
    with pytest.raises(CvatFormatError, match="refused"):
        read_cvat(_write(tmp_path, bomb))
    assert background[0].proc.poll() is not None  # not left running


def test_wellformed_helper_as_a_program(tmp_path):
    import subprocess
    import sys

    from kpnb import _wellformed

    good = _write(tmp_path, GOOD_HEAD + IMG + "</image>\n</annotations>\n")
    bad = _write(tmp_path, GOOD_HEAD + IMG + "</imag>\n", "bad.xml")
    zipped = tmp_path / "e.zip"
    with zipfile.ZipFile(zipped, "w") as zf:
        zf.write(bad, "export/annotations.xml")
    script = _wellformed.__file__

    def run(*args):
        done = subprocess.run([sys.executable, "-I", "-S", script, *map(str, args)],
                              capture_output=True, text=True, check=True)  # fmt: skip
        return done.stdout.strip()

    assert run(good) == "ok"
    assert run(bad).startswith("error 5 ")
    assert run(zipped, "export/annotations.xml") == run(bad)
    entity = _write(tmp_path, '<!DOCTYPE a [<!ENTITY x "y">]><a>&x;</a>', "ent.xml")
    assert "declares entities" in run(entity)
    assert _wellformed.check_path(str(good)) is None


@pytest.mark.parametrize("read_size", [97, 4096])
def test_fast_reader_across_chunk_boundaries(monkeypatch, tmp_path, synthetic_export, read_size):
    # tiny reads: the body starts mid-read, images straddle reads, and a file whose later
    # images are written by another writer switches tokenizer part-way
    monkeypatch.setattr(cvat, "_READ_SIZE", read_size)
    assert _read_both(synthetic_export).meta["reader"] == "fast"
    other, _ = FAST_CASES["attribute orders of other writers"]
    mixed = FAST_HEAD + (IMG + PLAIN.format("1.00,2.00") + "</image>\n") * 30 + other
    assert _read_both(_write(tmp_path, mixed + "\n</annotations>\n")).meta["reader"] == "fast"


@pytest.mark.parametrize("in_background", [False, True])
def test_mutated_exports_are_read_alike_or_refused(monkeypatch, tmp_path, synthetic_export,
                                                   in_background):  # fmt: skip
    # Random edits to a real body: read_cvat must either raise CvatFormatError (and the full
    # parse must refuse the file too) or give exactly the full parse's tables. Never a crash.
    import random

    if in_background:
        monkeypatch.setattr(cvat, "_BACKGROUND_CHECK_MIN_BYTES", 0)
    data = (synthetic_export / "annotations.xml").read_bytes()
    body = data.find(b"<image")
    data = data[: data.find(b"<image", body + 1500)] + b"</annotations>\n"  # a few images
    rng = random.Random(7 + in_background)
    alphabet = b"<>/=\"' &;#.,-0123456789abxz\n!?"
    read_alike = 0
    for i in range(40 if in_background else 120):
        b = bytearray(data)
        for _ in range(rng.randint(1, 3)):
            at = rng.randrange(body, len(b))
            if rng.random() < 0.4:
                del b[at : at + rng.randint(1, 4)]
            else:
                b[at:at] = bytes(rng.choice(alphabet) for _ in range(rng.randint(1, 3)))
        path = tmp_path / f"m{i}.xml"
        path.write_bytes(bytes(b))
        try:
            read_cvat(path)
        except CvatFormatError:
            with pytest.raises(CvatFormatError):
                cvat._read(cvat._Source(path), fast=False)
            continue
        _read_both(path)
        read_alike += 1
    assert read_alike >= 5  # the edits left some files well formed


def test_writing_an_image_without_a_size_says_what_to_fill(tmp_path):
    ann = read_cvat(DATA / "pitfalls_images.xml")
    ann.images.loc[0, "width"] = pd.NA
    with pytest.raises(ValueError, match=r"has no width/height; CVAT needs both"):
        write_cvat(ann, tmp_path / "out.xml")
    assert not list(tmp_path.iterdir())  # nothing half-written
