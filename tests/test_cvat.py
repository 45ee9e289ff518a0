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
        2,
        0,
        2,
        0,
        2,
        0,
    ]


def test_openvino_project_export_with_duplicate_names_across_subsets():
    ann = read_cvat(OPENVINO / "export_project/annotations.xml")
    assert ann.meta["meta_kind"] == "project"
    assert ann.images["subset"].tolist() == [
        "Test",
        "Test",
        "Train",
        "Train",
        "Validation",
        "Validation",
    ]
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
        [-1, "pose", "open"],
        [2, "nail", "painted"],
    ]


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
    pd.testing.assert_frame_equal(
        ann.keypoints[cols], truth.keypoints[cols], check_categorical=False
    )
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
            r"line 5: <points> points='12.5,abc'",
        ),
        (
            '<image id="0" name="a.jpg" width="5" height="5">\n<skeleton label="s">\n'
            '<points label="a" points="1;2" outside="0" occluded="0"/>\n</skeleton>\n</image>',
            r"line 6: skeleton element points='1;2'",
        ),
        (
            '<image id="0" name="a.jpg" width="wide" height="5">\n</image>',
            r"line 4: <image> width='wide'",
        ),
        (
            '<image id="0" name="a.jpg" width="5" height="5">\n<points label="p" points="1,2"',
            r"line 6, column \d+: malformed XML",
        ),
        (
            '<track id="0" label="p">\n<points points="1,2"/>\n</track>',
            r"line 5: <points> .*no frame",
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
    cols = [
        "label",
        "keypoint",
        "point_index",
        "visibility",
        "occluded",
        "outside",
        "z_order",
        "group_id",
    ]
    kp = ann.keypoints.assign(x=ann.keypoints["x"].round(2), y=ann.keypoints["y"].round(2))
    out = []
    for (image, _), rows in kp.groupby(["image_index", "instance_id"], sort=False):
        values = rows[cols + ["x", "y"]].astype(str).values.tolist()
        out.append((int(image), tuple(map(tuple, values))))
    return sorted(out)


def _compare(a: Annotations, b: Annotations) -> None:
    assert _instances(a) == _instances(b)
    assert (
        a.images[["name", "width", "height"]].values.tolist()
        == b.images[["name", "width", "height"]].values.tolist()
    )
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


names = (
    st.text(st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), min_size=1, max_size=8)
    .map(str.strip)
    .filter(bool)
)


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
                rows.append(
                    dict(
                        image_index=i,
                        instance_id=inst,
                        label=label,
                        keypoint=name,
                        point_index=j,
                        x=round(xy[0], 2),
                        y=round(xy[1], 2),
                        occluded=flag == "occluded",
                        outside=flag == "outside",
                        z_order=z,
                    )
                )
            inst += 1
    images = [
        dict(
            image_index=i,
            image_id=i,
            name=f"{draw(names)}_{i}.jpg",
            width=draw(st.integers(1, 5000)),
            height=draw(st.integers(1, 5000)),
        )
        for i in range(n_images)
    ]
    kp = pd.DataFrame(rows, columns=KEYPOINT_COLUMNS[:7] + ["occluded", "outside", "z_order"])
    edges = draw(
        st.lists(st.tuples(st.integers(0, k - 1), st.integers(0, k - 1)), max_size=3, unique=True)
    )
    labels = pd.DataFrame(
        [{"name": label, "type": "skeleton"}]
        + [{"name": n, "type": "points", "parent": label} for n in kp_names]
    )
    return Annotations(
        tidy_images(pd.DataFrame(images)),
        tidy_keypoints(kp),
        skeletons={label: Skeleton(tuple(kp_names), tuple(edges))},
        labels=labels,
    )


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(annotations())
def test_round_trip_property(tmp_path, ann):
    back = read_cvat(write_cvat(ann, tmp_path / "rt.xml"))
    _compare(ann, back)


def test_write_is_atomic(tmp_path, monkeypatch):
    ann = read_cvat(DATA / "pitfalls_images.xml")
    out = tmp_path / "out.xml"
    out.write_text("previous")
    import kpnb.cvat.write

    def boom(*a, **k):
        yield "<annotations>"
        raise RuntimeError("interrupted")

    monkeypatch.setattr(kpnb.cvat.write, "iter_cvat_lines", boom)
    with pytest.raises(RuntimeError):
        write_cvat(ann, out)
    assert out.read_text() == "previous" and [p.name for p in tmp_path.iterdir()] == ["out.xml"]


# -- the one reader on unusual but well-formed bodies ------------------------------------
ALL_XML = sorted(FIXTURES.rglob("*.xml")) + sorted(DATA.glob("*.xml"))
_SVG = escape(skeleton_svg(Skeleton(("a", "b", "c"), ((0, 1), (1, 2)))))
HEAD = (
    '<?xml version="1.0" encoding="utf-8"?>\n<annotations>\n<version>1.1</version>\n<meta><task>'
    "<labels><label><name>s</name><type>skeleton</type><svg>"
    + _SVG
    + "</svg></label>"
    + "".join(
        f"<label><name>{k}</name><type>points</type><parent>s</parent></label>" for k in "abc"
    )
    + "</labels></task></meta>\n"
)
IMG = '<image id="0" name="a.jpg" width="10" height="10">\n'
ELEM = '<points label="{}" source="manual" outside="0" occluded="{}" points="{}">\n</points>\n'
PLAIN = '<points label="p" source="manual" occluded="0" points="{}" z_order="0">\n</points>\n'
SKEL = '<skeleton label="s" source="manual" z_order="0">\n{}</skeleton>\n'


def _doc(tmp_path, body, name="annotations.xml"):
    return _write(tmp_path, HEAD + body + "\n</annotations>\n", name)


def _xy(ann):
    return ann.keypoints[["x", "y"]].to_numpy().tolist()


@pytest.mark.parametrize("path", ALL_XML, ids=lambda p: p.parent.name + "/" + p.name)
def test_every_fixture_reads_into_consistent_tables(path):
    ann = read_cvat(path)
    kp = ann.keypoints
    assert kp["image_index"].between(0, len(ann.images) - 1).all()
    present = kp["x"].notna()
    assert np.isfinite(kp.loc[present, ["x", "y"]].to_numpy()).all()
    assert (kp.loc[~present, "visibility"] == 0).all()
    assert (ann.images["width"].dropna() >= 1).all()


def test_tiny_reads_give_the_same_tables(monkeypatch, synthetic_export):
    # start tags, attribute values and the UTF-8 of names straddle every read boundary
    import kpnb.cvat.parse

    whole = read_cvat(synthetic_export)
    monkeypatch.setattr(kpnb.cvat.parse, "_READ", 97)
    monkeypatch.setattr(kpnb.cvat.parse, "_CHUNK", 5)  # and many small column chunks
    pieces = read_cvat(synthetic_export)
    for name in ("images", "keypoints", "boxes", "attributes", "labels"):
        pd.testing.assert_frame_equal(getattr(whole, name), getattr(pieces, name), obj=name)


def test_elements_out_of_order_and_missing(tmp_path):
    body = IMG + SKEL.format(ELEM.format("c", 1, "5.00,6.00") + ELEM.format("a", 0, "1.00,2.00"))
    ann = read_cvat(_doc(tmp_path, body + "</image>"))
    assert _vis(ann, "s") == [2, 0, 1] and ann.keypoints["keypoint"].tolist() == ["a", "b", "c"]
    assert _xy(ann)[0] == [1, 2] and math.isnan(_xy(ann)[1][0])


def test_attributes_belong_to_their_element_skeleton_and_shape(tmp_path):
    body = (
        IMG + '<skeleton label="s" source="manual" z_order="0">\n'
        '<points label="b" source="manual" outside="0" occluded="0" points="3.00,4.00">\n'
        '<attribute name="side">left</attribute>\n</points>\n'
        '<attribute name="person">5 &lt; 6</attribute>\n</skeleton>\n'
        '<points label="p" source="manual" occluded="0" points="1.00,1.00" z_order="0">\n'
        '<attribute name="kind">x</attribute>\n<attribute name="more">y\r\nz</attribute>\n'
        "<attribute name='n'><![CDATA[<b>]]></attribute>\n</points>\n"
        '<box label="q" xtl="1" ytl="1" xbr="2" ybr="2"><attribute name="ignored">1'
        "</attribute></box>\n</image>"
    )
    ann = read_cvat(_doc(tmp_path, body))
    assert ann.attributes[["point_index", "name", "value"]].values.tolist() == [
        [1, "side", "left"],
        [-1, "person", "5 < 6"],
        [-1, "kind", "x"],
        [-1, "more", "y\nz"],
        [-1, "n", "<b>"],
    ]


def test_xml_spellings_read_as_xml_defines_them(tmp_path):
    body = (
        '<image id="0" name="a&amp;b&#10;c&#x41;.jpg" width="10" height="10">\n'
        '<points label="p &quot;q&quot; é" source="manual" occluded="0" points="1,2"/>\n'
        '<points label="two\nlines" occluded="0" points="1,2"/>\n'
        "<points label='single' occluded='1' points='3,4'/>\n"
        '<points label = "spaced" points = "5,6"/>\n'
        "<!-- <points label='comment' points='7,8'/> -->\n"
        '<points label=\'x points="9,9"\' points="1,2"/>\n</image>'
    )
    ann = read_cvat(_doc(tmp_path, body))
    assert ann.images["name"].tolist() == ["a&b\ncA.jpg"]  # references kept, not normalised
    assert ann.keypoints["label"].astype(str).tolist() == [
        'p "q" é',
        "two lines",
        "single",
        "spaced",
        'x points="9,9"',
    ]
    assert _xy(ann) == [[1, 2], [1, 2], [3, 4], [5, 6], [1, 2]]
    assert ann.keypoints["visibility"].tolist() == [2, 2, 1, 2, 2]


def test_many_points_decimals_signs_and_long_numbers(tmp_path):
    body = (
        IMG
        + PLAIN.format("1.00,2.00;3.5,4;-0.00,6.25e1;12345678901234567890.5,1_0")
        + PLAIN.format("")
        + "</image>"
    )
    ann = read_cvat(_doc(tmp_path, body))
    x = ann.keypoints["x"].tolist()
    assert x[:3] == [1.0, 3.5, 0.0] and math.copysign(1, x[2]) < 0
    assert x[3] == np.float32(12345678901234567890.5)  # no integer saturation
    assert ann.keypoints["y"].tolist()[2:] == [62.5, 10.0]  # Python's reading, as CVAT's
    assert ann.keypoints["point_index"].tolist() == [0, 1, 2, 3]  # the empty shape: no rows


def test_self_closing_project_boxes_skipped_and_empty_source(tmp_path):
    body = (
        '<image id="0" name="a.jpg" subset="Train" task_id="4" width="1" height="1"/>\n'
        '<image id="0" name="a.jpg" subset="Test" task_id="5" width="10" height="10">\n'
        '<skeleton label="s" source="" z_order="0" group_id="1"/>\n'
        '<points label="p" occluded="0" points="1,2" z_order="0" source=""/>\n'
        '<box label="face" occluded="1" xtl="1" ytl="2" xbr="3" ybr="4" z_order="2"/>\n'
        '<polygon label="r" points="1,2;3,4;5,6"/>\n<tag label="good"/>\n</image>'
    )
    ann = read_cvat(_doc(tmp_path, body))
    assert ann.images["subset"].tolist() == ["Train", "Test"]
    assert ann.images["task_id"].tolist() == [4, 5]
    assert _vis(ann, "s") == [0, 0, 0] and set(ann.keypoints["source"]) == {"manual"}
    assert ann.keypoints["group_id"].tolist()[:3] == [1, 1, 1]
    assert ann.boxes[["xtl", "ytl", "xbr", "ybr", "z_order"]].values.tolist() == [[1, 2, 3, 4, 2]]
    assert ann.meta["skipped"] == {"polygon": 1, "tag": 1}


def test_encodings(tmp_path):
    text = (
        HEAD.replace('<?xml version="1.0" encoding="utf-8"?>\n', "")
        + IMG
        + PLAIN.format("1,2").replace('"p"', '"café"')
        + "</image>\n</annotations>\n"
    )
    for name, data in [
        ("le.xml", text.encode("utf-16-le")),  # no BOM, no declaration
        ("be.xml", text.encode("utf-16-be")),
        ("bom.xml", text.encode("utf-16")),
        ("latin.xml", ('<?xml version="1.0" encoding="ISO-8859-1"?>' + text).encode("latin-1")),
    ]:
        (tmp_path / name).write_bytes(data)
        ann = read_cvat(tmp_path / name)
        assert ann.keypoints["label"].astype(str).tolist() == ["café"], name
        assert len(ann.images) == 1 and ann.skeletons["s"].keypoints == ("a", "b", "c")


def test_doctype_with_declarations_is_refused_a_bare_one_is_not(tmp_path):
    attlist = (
        '<?xml version="1.0"?>\n<!DOCTYPE annotations [\n'
        '<!ATTLIST points occluded CDATA "1">\n]>\n<annotations>\n'
        + IMG
        + '<points label="p" points="1,2"/>\n</image>\n</annotations>\n'
    )
    with pytest.raises(CvatFormatError, match=r"line \d+: refused: .*DOCTYPE"):
        read_cvat(_write(tmp_path, attlist))
    bare = attlist.replace('[\n<!ATTLIST points occluded CDATA "1">\n]', "")
    assert _vis(read_cvat(_write(tmp_path, bare, "b.xml")), "p") == [2]


def test_video_tracks_past_the_last_keyframe(tmp_path):
    track = (
        '<track id="{}" label="p" source="manual">\n'
        + "".join(
            f'<points frame="{f}" keyframe="{int(f == 0)}" outside="0" occluded="0" '
            f'points="{f},1" z_order="0"/>\n'
            for f in range(4)
        )
        + "</track>\n"
    )
    closed = (
        '<track id="7" label="p" source="manual">\n'
        '<points frame="0" keyframe="1" outside="0" occluded="0" points="0,1"/>\n'
        '<points frame="1" keyframe="0" outside="0" occluded="0" points="1,1"/>\n'
        '<points frame="2" keyframe="1" outside="1" occluded="0" points="1,1"/>\n'
        "</track>\n"
    )
    path = _doc(tmp_path, track.format(3) + closed)
    ann = read_cvat(path)
    assert ann.meta["past_last_keyframe"] == {3: 3}  # frames 1-3 repeat frame 0's pose
    assert len(ann.keypoints) == 7
    key = read_cvat(path, keyframes_only=True)
    assert key.keypoints["keyframe"].all() and len(key.keypoints) == 3
    assert key.keypoints["instance_id"].tolist() == [0, 1, 2]
    assert key.keypoints["track_id"].tolist() == [3, 7, 7]


# -- bad values: each refused with file, line, element, attribute and the fix ------------
_P = '<points label="p" occluded="0" points="{}" z_order="0"/>\n'
BAD_VALUES = {
    "nan coordinate": (
        IMG + _P.format("nan,1") + "</image>",
        r"line 6: <points> points='nan,1'",
    ),
    "inf coordinate": (IMG + _P.format("1,2;inf,1") + "</image>", r"line 6: <points> points="),
    "overflowing coordinate": (IMG + _P.format("1e999,1") + "</image>", "points='1e999,1'"),
    "inf in a skeleton element": (
        IMG + SKEL.format(ELEM.format("a", 0, "-inf,1")) + "</image>",
        r"line 7: skeleton element points='-inf,1'",
    ),
    "three numbers in a pair": (IMG + _P.format("1,2,3;4") + "</image>", "points='1,2,3;4'"),
    "a shape outside any image": (
        IMG + "</image>\n" + _P.format("1,2"),
        r"line 7: <points> outside any <image> or <track>",
    ),
    "a skeleton outside any image": (SKEL.format(""), r"line 5: <skeleton> outside any <image>"),
    "20-digit z_order": (
        IMG
        + _P.format("1,2").replace('z_order="0"', 'z_order="99999999999999999999"')
        + "</image>",
        r"line 6: <points> z_order='99999999999999999999' is outside -2147483648",
    ),
    "inf group_id": (
        IMG + SKEL.replace('z_order="0"', 'group_id="inf"').format("") + "</image>",
        r"line 6: <skeleton> group_id='inf'",
    ),
    "fractional z_order": (
        IMG + _P.format("1,2").replace('"0"/', '"2.5"/') + "</image>",
        r"<points> z_order='2.5'",
    ),
    "20-digit image id": (
        IMG.replace('id="0"', 'id="12345678901234567890"') + "</image>",
        r"line 5: <image> id='12345678901234567890'",
    ),
    "inf image id": (
        IMG.replace('id="0"', 'id="inf"') + "</image>",
        r"line 5: <image> id='inf'",
    ),
    "huge frame": (
        '<track id="0" label="p">\n<points frame="99999999999999999999" points="1,2"/>\n</track>',
        r"line 6: <points> frame='99999999999999999999'",
    ),
    "inf track id": ('<track id="inf" label="p">\n</track>', r"line 5: <track> id='inf'"),
    "fractional width": (
        IMG.replace('width="10"', 'width="416.7"') + "</image>",
        r"line 5: <image> width='416.7'",
    ),
    "huge width": (
        IMG.replace('width="10"', 'width="1' + "0" * 12 + '"') + "</image>",
        r"line 5: <image> width='1000000000000'",
    ),
    "zero width": (
        IMG.replace('width="10"', 'width="0"') + "</image>",
        r"line 5: <image> width='0'",
    ),
    "negative height": (
        IMG.replace('height="10"', 'height="-5"') + "</image>",
        r"line 5: <image> height='-5'",
    ),
    "non-numeric box": (
        IMG + '<box label="b" xtl="x" ytl="1" xbr="2" ybr="2"/>\n</image>',
        r"line 6: <box> xtl='x'",
    ),
    "points inside points": (
        IMG + '<points label="p" points="1,2">' + _P.format("1,2") + "</points>\n</image>",
        r"line 6: <points> inside <points>",
    ),
    "image inside image": (IMG + IMG + "</image></image>", r"line 6: <image> inside <image>"),
    "box inside a skeleton": (
        IMG + SKEL.format('<box label="b" xtl="1" ytl="1" xbr="2" ybr="2"/>\n') + "</image>",
        r"line 7: <box> inside",
    ),
    "track inside image": (
        IMG + '<track id="0" label="p"></track></image>',
        r"line 6: <track> inside <image>",
    ),
}


@pytest.mark.parametrize("case", list(BAD_VALUES))
def test_bad_values_are_refused_with_file_line_and_attribute(tmp_path, case):
    body, match = BAD_VALUES[case]
    path = _doc(tmp_path, body)
    with pytest.raises(CvatFormatError, match=match) as exc:
        read_cvat(path)
    assert str(exc.value).startswith(f"{path}: line ")


def test_zip_with_two_annotations_files_is_refused_naming_both(tmp_path, synthetic_export):
    archive = tmp_path / "two.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.write(synthetic_export / "annotations.xml", "annotations.xml")
        zf.write(synthetic_export / "annotations.xml", "old/annotations.xml")
    with pytest.raises(
        CvatFormatError,
        match=r"2 annotations.xml members \('annotations.xml', "
        r"'old/annotations.xml'\)",
    ):
        read_cvat(archive)


@pytest.mark.slow
def test_a_huge_whitespace_body_streams_in_bounded_memory(tmp_path, monkeypatch):
    import time
    import tracemalloc

    monkeypatch.setenv("KPNB_MAX_UNZIP_RATIO", "10000")  # trusted: 64 MB of spaces pack ~1000x

    archive = tmp_path / "spaces.zip"
    with (
        zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf,
        zf.open("annotations.xml", "w") as f,
    ):
        f.write((HEAD + IMG).encode())
        block = b" " * (1 << 20)
        for _ in range(64):  # 64 MB of spaces inside one <image>
            f.write(block)
        f.write((PLAIN.format("1,2") + "</image>\n</annotations>\n").encode())
    tracemalloc.start()
    t = time.perf_counter()
    try:
        ann = read_cvat(archive)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert _xy(ann) == [[1, 2]]
    assert peak < 8 << 20, f"peak {peak / 1e6:.1f} MB"  # the body is 64 MB
    assert time.perf_counter() - t < 60


# -- hostile edits of a real export: the right tables or a CvatFormatError, never a crash --
@pytest.fixture(scope="module")
def small_export(tmp_path_factory):
    from kpnb.synthetic import generate

    folder = generate(tmp_path_factory.mktemp("small") / "e", n_images=3, seed=1)
    return (folder / "annotations.xml").read_bytes()


_ALPHABET = b"<>/=\"' &;#.,-0123456789abxz\n!?e\xff\x00"
_ATTRS = [
    b"points",
    b"z_order",
    b"group_id",
    b"id",
    b"width",
    b"height",
    b"label",
    b"occluded",
    b"outside",
    b"source",
]
_VALUES = st.one_of(
    st.sampled_from(
        [
            "nan,1",
            "inf",
            "1e999",
            "99999999999999999999",
            "-1",
            "0",
            "416.7",
            "",
            "1,2;3",
            "1,2,3",
            " 7 ",
            "&#38;",
            "1_0",
            "abc",
            "2",
            "1;2",
        ]
    ),
    st.text(max_size=6),
)


def _consistent(ann) -> None:
    kp = ann.keypoints
    assert kp["image_index"].between(0, len(ann.images) - 1).all()
    present = kp["x"].notna()
    assert np.isfinite(kp.loc[present, ["x", "y"]].to_numpy()).all()
    assert (ann.images["width"].dropna() >= 1).all() and (ann.images["height"].dropna() >= 1).all()


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    edits=st.lists(
        st.tuples(
            st.floats(0, 1),
            st.sampled_from(["insert", "delete", "attr"]),
            st.binary(min_size=1, max_size=3),
            st.sampled_from(_ATTRS),
            _VALUES,
        ),
        min_size=1,
        max_size=3,
    )
)
def test_mutated_exports_read_right_or_are_refused(tmp_path, small_export, edits):
    import kpnb.cvat.parse

    data = bytearray(small_export)
    body = data.find(b"<image")
    for where, how, raw, attr, value in edits:
        at = body + int(where * (len(data) - body - 1))
        if how == "insert":
            data[at:at] = bytes(_ALPHABET[b % len(_ALPHABET)] for b in raw)
        elif how == "delete":
            del data[at : at + len(raw)]
        else:  # replace the value of the next such attribute
            hit = data.find(b" " + attr + b'="', at)
            if hit >= 0:
                start = hit + len(attr) + 3
                end = data.find(b'"', start)
                data[start:end] = escape(value, {'"': "&quot;"}).encode()
    path = tmp_path / "m.xml"
    path.write_bytes(bytes(data))
    try:
        ann = read_cvat(path)
    except CvatFormatError as exc:
        assert str(exc).startswith(str(path))
        return
    _consistent(ann)
    # the reference reading: the same bytes fed a few at a time, converted in tiny chunks
    saved = kpnb.cvat.parse._READ, kpnb.cvat.parse._CHUNK
    kpnb.cvat.parse._READ, kpnb.cvat.parse._CHUNK = 7, 3
    try:
        ref = read_cvat(path)
    finally:
        kpnb.cvat.parse._READ, kpnb.cvat.parse._CHUNK = saved
    for name in ("images", "keypoints", "boxes", "attributes", "labels"):
        pd.testing.assert_frame_equal(getattr(ann, name), getattr(ref, name), obj=name)


# -- writing an export that had no <meta> ------------------------------------------------
def test_write_without_meta_declares_every_label(tmp_path):
    body = (
        IMG
        + SKEL.format(ELEM.format("a", 0, "1,2"))
        + PLAIN.format("3,4")
        + '<box label="face" xtl="1" ytl="2" xbr="3" ybr="4"/>\n</image>'
    )
    text = "<annotations>\n<version>1.1</version>\n" + body + "\n</annotations>\n"
    ann = read_cvat(_write(tmp_path, text))
    assert ann.meta["name"] is None and len(ann.labels) == 0
    out = write_cvat(ann, tmp_path / "out.xml").read_text()
    assert "<name>None</name>" not in out and "<name>kpnb</name>" in out
    back = read_cvat(tmp_path / "out.xml")
    declared = back.labels.set_index("name")
    assert declared.loc["s", "type"] == "skeleton" and declared.loc["p", "type"] == "points"
    assert declared.loc["face", "type"] == "rectangle"
    assert declared.loc["a", "parent"] == "s"
    assert back.skeletons["s"].keypoints == ("a",)
    _compare(ann, back)


def test_attribute_order_may_differ_between_elements_of_one_chunk(tmp_path):
    """The reader splits attribute lists by the first list's layout; a list in another order
    (or with an extra attribute) must still be read by name, value for value."""
    orders = [
        'label="a" source="manual" occluded="0" points="1.00,2.00" z_order="0"',
        'points="3.00,4.00" z_order="2" label="b" occluded="1" source="auto"',
        'extra="points" label="a" points="5.00,6.00" occluded="0" source="manual" z_order="1"',
        'z_order="0" occluded="0" source="file" label="b" group_id="7" points="7.50,8.25"',
    ]
    body = "".join(
        f'<image id="{i}" name="{i}.jpg" width="10" height="10"><points {attrs}/></image>'
        for i, attrs in enumerate(orders)
    )
    path = tmp_path / "annotations.xml"
    path.write_text(f"<annotations><version>1.1</version>{body}</annotations>")
    kp = read_cvat(path).keypoints.sort_values("image_index")
    assert kp["label"].astype(str).tolist() == ["a", "b", "a", "b"]
    assert kp["x"].tolist() == [1.0, 3.0, 5.0, 7.5] and kp["y"].tolist() == [2.0, 4.0, 6.0, 8.25]
    assert kp["occluded"].tolist() == [False, True, False, False]
    assert kp["source"].astype(str).tolist() == ["manual", "auto", "manual", "file"]
    assert kp["z_order"].tolist() == [0, 2, 1, 0] and kp["group_id"].tolist() == [0, 0, 0, 7]


def test_info_flags_frozen_track_poses_and_keyframes_only_drops_them(tmp_path, capsys):
    from kpnb.cli import main

    track = "".join(
        f'<points frame="{f}" keyframe="{int(f == 0)}" outside="0" occluded="0" points="{f},1"/>'
        for f in range(4)
    )
    path = _doc(tmp_path, f'<track id="3" label="p" source="manual">{track}</track>\n')
    assert main(["info", str(path)]) == 0
    out = capsys.readouterr().out
    assert "3 shapes on 1 tracks lie past their track's last keyframe" in out
    assert "--keyframes-only drops them" in out
    assert main(["info", str(path), "--keyframes-only"]) == 0
    out = capsys.readouterr().out
    assert "points: 1" in out and "dropped (keyframes only)" in out


# -- export zips: read within kpnb's unzip limits ---------------------------------------------
def _zip_xml(path: Path, body: bytes, compression=zipfile.ZIP_DEFLATED) -> Path:
    with zipfile.ZipFile(path, "w", compression) as zf:
        zf.writestr("annotations.xml", body)
    return path


def test_zip_member_bomb_is_refused_before_decompressing(tmp_path, monkeypatch):
    # 32 MiB of whitespace inside a valid document packs ~1000x: refused from the header
    body = b"<annotations>" + b" " * 2**25 + b"</annotations>"
    archive = _zip_xml(tmp_path / "bomb.zip", body)
    opened = []
    real_open = zipfile.ZipFile.open
    monkeypatch.setattr(
        zipfile.ZipFile, "open", lambda self, *a, **k: opened.append(a) or real_open(self, *a, **k)
    )
    with pytest.raises(CvatFormatError, match=r"bomb.zip: member 'annotations.xml' unpacks.*200x"):
        read_cvat(archive)
    assert opened == []
    monkeypatch.setenv("KPNB_MAX_UNZIP_RATIO", "5000")  # trusted: the documented way to raise it
    assert len(read_cvat(archive).images) == 0


def test_zip_member_over_the_size_limit_is_refused(tmp_path, monkeypatch):
    archive = _zip_xml(tmp_path / "x.zip", b"<annotations>" + b"<image/>" * 100 + b"</annotations>")
    monkeypatch.setenv("KPNB_MAX_UNZIP_BYTES", "500")
    with pytest.raises(
        CvatFormatError, match=r"x.zip: member 'annotations.xml'.*KPNB_MAX_UNZIP_BYTES"
    ):
        read_cvat(archive)


def test_damaged_zip_member_names_the_member(tmp_path):
    body = b"<annotations>" + b"<!-- " + b"A" * 5000 + b" --></annotations>"
    archive = _zip_xml(tmp_path / "crc.zip", body, zipfile.ZIP_STORED)
    raw = bytearray(archive.read_bytes())
    raw[raw.index(b"AAAA")] = ord("B")  # the CRC no longer matches
    archive.write_bytes(bytes(raw))
    with pytest.raises(CvatFormatError, match=r"crc.zip!annotations.xml: .*damaged"):
        read_cvat(archive)
