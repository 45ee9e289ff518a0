"""Real public exports, worked through the kpnb commands as a user with that export would.

Every file under tests/data/real and tests/data/conformance (see their READMEs for source and
license) goes through ``kpnb info``, ``kpnb convert --to coco``, ``kpnb show`` (on blank
images of the declared sizes, made here) and the training Dataset, and each case asserts
facts read off the file by hand: counts, names, ids, boxes.
"""

import json
import logging
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from kpnb.cli import main
from kpnb.coco import read_coco, to_coco
from kpnb.data import read_annotations
from kpnb.dataset import KeypointDataset, check_export, instance_boxes
from kpnb.evaluate import COCO_SIGMAS, DEFAULT_SIGMA, default_sigmas
from kpnb.transforms import eval_transforms

DATA = Path(__file__).parent / "data"
REAL = DATA / "real"
CONF = DATA / "conformance"
MMPOSE = REAL / "open-mmlab-mmpose/tests/data"


@dataclass
class Case:
    path: Path
    images: int
    instances: int
    info: list[str]  # lines `kpnb info` must print
    categories: list[str]  # COCO category names, in order
    coco_annotations: int
    image_ids: list[int]  # the first COCO image ids
    file_name: str  # the first COCO file_name
    label: str  # what a user trains on
    keypoints: int  # K of that label
    trained: dict = field(default_factory=dict)  # file name -> instances the Dataset keeps
    show: str = ""  # the image `kpnb show` draws


CASES = [
    Case(
        MMPOSE / "crowdpose/test_crowdpose.json",
        2,
        5,
        [
            "skeleton 'person': 14 keypoints",
            "flip pairs: left_shoulder<->right_shoulder, left_elbow<->right_elbow",
        ],
        ["person"],
        5,
        [106848, 103319],
        "106848.jpg",
        "person",
        14,
        {"106848.jpg": 3, "103319.jpg": 2},
        "106848.jpg",
    ),
    Case(
        MMPOSE / "animalpose/test_animalpose.json",
        2,
        2,
        ["skeleton 'cat': 20 keypoints", "L_Eye<->R_Eye", "L_B_Paw<->R_B_Paw"],
        ["cat"],
        2,
        [110, 3105],
        "ca110.jpeg",
        "cat",
        20,
        {"ca110.jpeg": 1, "ho105.jpeg": 1},
        "ho105.jpeg",
    ),
    Case(
        MMPOSE / "onehand10k/test_onehand10k.json",
        4,
        4,
        ["skeleton 'hand': 21 keypoints", "no left/right pairs: the training flip is off"],
        ["hand"],
        4,
        [9, 33, 784, 1402],
        "9.jpg",
        "hand",
        21,
        {"9.jpg": 1, "33.jpg": 1, "784.jpg": 1, "1402.jpg": 1},
        "784.jpg",
    ),
    Case(
        REAL / "talmolab-sleap-io/tests/data/coco/mixed_animals/annotations.json",
        3,
        6,
        ["skeleton 'mouse': 17 keypoints", "skeleton 'fly': 13 keypoints"],
        ["mouse", "fly"],
        6,
        [1, 2, 3],
        "image_001.jpg",
        "fly",
        13,
        {"image_001.jpg": 1, "image_002.jpg": 1, "image_003.jpg": 1},
        "image_002.jpg",
    ),
    Case(
        CONF / "opencv-cvat/site/content/en/docs/manual/advanced/"
        "xml_format.example_cvat_for_images.xml",
        1,
        2,
        [
            "skeleton 's1': 3 keypoints",
            "points label 'wheel': each shape is one object of up to 4 points",
        ],
        ["s1", "wheel"],
        2,
        [1],
        "filename000.jpg",
        "wheel",
        4,
        {"filename000.jpg": 1},
        "filename000.jpg",
    ),
    Case(
        CONF / "opencv-cvat/site/content/en/docs/manual/advanced/"
        "xml_format.example_cvat_for_video.xml",
        4620,
        6,
        ["skeleton 's1': 3 keypoints"],
        ["s1"],
        6,
        [1, 2, 3, 4],
        "frame_000000.PNG",
        "s1",
        3,
        # v=0 everywhere on frames 1, 7, 14 (outside keyframes): nothing to learn there
        {"frame_000000": 1, "frame_000001": 0, "frame_000006": 1},
        "frame_000006",
    ),
    Case(
        CONF / "openvinotoolkit-datumaro/tests/assets/cvat_dataset/for_images/"
        "export_project/annotations.xml",
        6,
        3,
        [
            "subsets: Test 2, Train 2, Validation 2",
            "points label 'label2': each shape is one object of up to 3 points",
        ],
        # img1.jpg is in each of the three subsets, one <points> shape in each
        ["label2"],
        3,
        [1, 2, 3, 4],
        "img0.jpg",
        "label2",
        3,
        {"img0.jpg": 0, "img1.jpg": 3},
        "Train/img1.jpg",
    ),
    Case(
        CONF / "openvinotoolkit-datumaro/tests/assets/cvat_dataset/for_images/"
        "export_task/train.xml",
        2,
        1,
        ["points label 'label2': each shape is one object of up to 3 points"],
        ["label2"],
        1,
        [1, 2],
        "img0.jpg",
        "label2",
        3,
        {"img0.jpg": 0, "img1.jpg": 1},
        "img1.jpg",
    ),
    Case(
        CONF / "cvat-ai-datumaro/tests/assets/cvat_dataset/for_images/train.xml",
        2,
        3,
        ["skeleton 'skeleton': 4 keypoints; edges: 3-2, 1-4"],
        ["skeleton", "label2"],
        3,
        [1, 2],
        "img0.jpg",
        "skeleton",
        4,
        {"img0.jpg": 1, "img1.jpg": 1},
        "img1.jpg",
    ),
    Case(
        CONF / "cvat-ai-datumaro/tests/assets/cvat_dataset/for_video/annotations.xml",
        4,
        5,
        ["skeleton 'skeleton': 4 keypoints"],
        ["skeleton", "klhg"],
        5,
        [1, 2, 3, 4],
        "frame_000010.PNG",
        "skeleton",
        4,
        {"frame_000010": 1, "frame_000013": 1, "frame_000016": 1, "frame_000019": 0},
        "frame_000010",
    ),
    Case(
        CONF / "cvat-ai-datumaro/tests/assets/coco_dataset/coco_person_keypoints/"
        "annotations/person_keypoints_val.json",
        1,
        2,
        ["skeleton 'a': 3 keypoints; edges: a_1-a_2, a_2-a_3"],
        ["a", "b"],
        2,
        [40],
        "b.jpg",
        "a",
        3,
        {"b.jpg": 1},
        "b.jpg",
    ),
]


def _ids(case: Case) -> str:
    return case.path.parent.name + "/" + case.path.name


def _blank_images(ann, root: Path, names=None) -> Path:
    """Grey images of the declared sizes where the export keeps them (video frames as CVAT
    writes them: ``.PNG``)."""
    for r in ann.images.itertuples(index=False):
        if names is not None and str(r.name) not in names:
            continue
        folder = root / "images" / r.subset if isinstance(r.subset, str) else root / "images"
        name = str(r.name) if Path(str(r.name)).suffix else f"{r.name}.PNG"
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (int(r.width), int(r.height)), (90, 90, 90)).save(folder / name)
    return root


@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_info(case, capsys):
    assert main(["info", str(case.path)]) == 0
    out = capsys.readouterr().out
    assert f"images: {case.images}   instances: {case.instances}" in out
    for line in case.info:
        assert line in out


@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_convert_to_coco(case, tmp_path):
    out = tmp_path / "kp.json"
    assert main(["convert", str(case.path), str(out), "--to", "coco"]) == 0
    doc = json.loads(out.read_text())
    assert [c["name"] for c in doc["categories"]] == case.categories
    assert len(doc["images"]) == case.images
    assert len(doc["annotations"]) == case.coco_annotations
    assert [im["id"] for im in doc["images"][: len(case.image_ids)]] == case.image_ids
    assert doc["images"][0]["file_name"] == case.file_name
    ids = {im["id"] for im in doc["images"]}
    assert all(a["image_id"] in ids for a in doc["annotations"])
    back = read_coco(out)  # what kpnb writes, kpnb (and pycocotools) reads back
    assert back.keypoints["instance_id"].nunique() == case.coco_annotations


@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_show_on_blank_images(case, tmp_path):
    ann = read_annotations(case.path)
    root = _blank_images(ann, tmp_path / "export", {case.show.rpartition("/")[2]})
    png = tmp_path / "shown.png"
    assert (
        main(
            [
                "show",
                str(case.path),
                "--image",
                case.show,
                "--out",
                str(png),
                "--images-root",
                str(root),
                "--boxes",
            ]
        )
        == 0
    )
    subset, _, name = case.show.rpartition("/")
    rows = ann.images[ann.images["name"] == name]
    row = rows[rows["subset"] == subset].iloc[0] if subset else rows.iloc[0]
    shown = np.asarray(Image.open(png).convert("RGB"))
    assert shown.shape == (int(row["height"]), int(row["width"]), 3)
    drawn = ann.keypoints[
        (ann.keypoints["image_index"] == row["image_index"]) & (ann.keypoints["visibility"] > 0)
    ]
    inside = drawn[(drawn["x"] < row["width"]) & (drawn["y"] < row["height"])]
    # a labelled point inside the picture leaves colour on the grey canvas
    assert (np.abs(shown.astype(int) - 90).sum(-1) > 0).any() == (len(inside) > 0)


@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_training_dataset(case, tmp_path):
    ann = read_annotations(case.path)
    names = set(case.trained)
    rows = ann.images[ann.images["name"].astype(str).isin(names)]
    root = _blank_images(ann, tmp_path / "export", names)
    ds = KeypointDataset(
        ann, root, case.label, eval_transforms(64), indices=rows["image_index"].tolist()
    )
    assert ds.skeleton.num_keypoints == case.keypoints
    kept: dict[str, int] = {}
    for item, name in zip(ds.items, rows["name"].astype(str), strict=True):
        kept[name] = kept.get(name, 0) + len(item.boxes)
        assert item.keypoints.shape == (len(item.boxes), case.keypoints, 2)
    assert kept == case.trained
    image, target = ds[0]
    assert image.shape == (3, 64, 64) and target["keypoints"].shape[-2:] == (case.keypoints, 3)


# -- what each file is there for --------------------------------------------------------


def test_crowdpose_keeps_box_only_persons_and_reads_past_k_skeletons(caplog, tmp_path):
    path = MMPOSE / "crowdpose/test_crowdpose.json"
    with caplog.at_level(logging.WARNING, logger="kpnb.coco"):
        ann = read_coco(path)
    assert "dropped 3 skeleton edges [(16, 14), (17, 15), (15, 13)]" in caplog.text
    assert len(ann.skeletons["person"].edges) == 9
    root = _blank_images(ann, tmp_path)
    ds = KeypointDataset(ann, root, "person")
    first = ds.items[0]  # image 106848: persons 123803, 131039 (num_keypoints 0), 147481
    np.testing.assert_allclose(first.boxes[1], [108.5, 96.78, 143.96, 127.01], atol=1e-3)
    assert (first.visibility[1] == 0).all()  # box-only: a detection target, no keypoint loss
    doc = to_coco(ann)
    assert [a["id"] for a in doc["annotations"]] == [123803, 131039, 147481, 127068, 129014]
    # CrowdPose's own num_keypoints counts only v=2; COCO's (and kpnb's) counts every v > 0
    assert [a["num_keypoints"] for a in doc["annotations"]] == [7, 0, 12, 14, 14]


def test_onehand_keeps_segmentation_area_and_ids():
    doc = to_coco(read_coco(MMPOSE / "onehand10k/test_onehand10k.json"))
    first = doc["annotations"][0]
    assert first["id"] == 9 and first["image_id"] == 9 and first["area"] == 19206
    assert first["segmentation"][0][:4] == [63, 92, 63, 188.5]
    assert [a["area"] for a in doc["annotations"]] == [19206, 2312, 139872, 31500]


def test_animalpose_pairs_and_sigmas():
    ann = read_coco(MMPOSE / "animalpose/test_animalpose.json")
    sk = ann.skeletons["cat"]
    assert len(sk.flip_pairs) == 8 and sk.flip_indices[:2] == [1, 0]
    sigmas = dict(zip(sk.keypoints, default_sigmas(sk.keypoints), strict=True))
    assert sigmas["L_Eye"] == COCO_SIGMAS["left_eye"] and sigmas["Nose"] == COCO_SIGMAS["nose"]
    assert sigmas["Throat"] == DEFAULT_SIGMA and sigmas["L_F_Paw"] == DEFAULT_SIGMA


def test_mixed_categories_say_which_is_trained(capsys):
    from types import SimpleNamespace

    from kpnb.cli.model_commands import _load_for_training

    path = REAL / "talmolab-sleap-io/tests/data/coco/mixed_animals/annotations.json"
    args = SimpleNamespace(
        keyframes_only=False,
        data=str(path),
        label=None,
        points_as_skeleton=None,
        group_by="auto",
        all_categories=True,
        flip_pairs=None,
        images_root=None,
    )
    ann, _, label = _load_for_training(args)
    out = capsys.readouterr().out
    # the layouts differ: --all-categories cannot merge them, and says what is left out
    assert label == "mouse" and "training label 'mouse'; not used: ['fly']" in out
    assert set(ann.skeletons) == {"mouse", "fly"}


def test_multi_point_shape_is_one_instance_everywhere(tmp_path):
    path = (
        CONF
        / "opencv-cvat/site/content/en/docs/manual/advanced/xml_format.example_cvat_for_images.xml"
    )  # noqa: E501
    ann = read_annotations(path)
    assert ann.skeleton_for("wheel").keypoints == ("1", "2", "3", "4")
    wheel = [
        a for a in to_coco(ann)["annotations"] if a["category_id"] == 2 or len(a["keypoints"]) == 12
    ]
    assert len(wheel) == 1 and wheel[0]["num_keypoints"] == 4
    # the box kpnb trains with: the points' extent (595.26 x 494.22) plus 10% on each side
    assert wheel[0]["bbox"] == [515.37, 395.84, 714.31, 593.06]
    boxes = instance_boxes(ann, "wheel")
    assert boxes["source"].tolist() == ["points"] and not boxes["degenerate"].any()
    report = check_export(ann, _blank_images(ann, tmp_path), "wheel")
    assert report.loc["instances", "detail"].startswith("1 instances of 4 keypoints, no edges")


def test_info_and_show_do_not_import_torch(tmp_path):
    """``kpnb info`` and ``kpnb show`` start fast: neither imports torch (15 s when busy)."""
    path = MMPOSE / "crowdpose/test_crowdpose.json"
    ann = read_annotations(path)
    root = _blank_images(ann, tmp_path / "export", set(ann.images["name"].astype(str)))
    png = tmp_path / "shown.png"
    code = (
        "import sys\n"
        "from kpnb.cli import main\n"
        f"assert main(['info', {str(path)!r}]) == 0\n"
        f"assert main(['show', {str(path)!r}, '--images-root', {str(root)!r}, "
        f"'--out', {str(png)!r}, '--boxes']) == 0\n"
        "assert 'torch' not in sys.modules, 'kpnb info or show imported torch'\n"
    )
    here = Path(__file__).parent.parent
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=here,
        env={"PYTHONPATH": str(here), "PATH": ""},
    )
    assert done.returncode == 0, done.stderr
    assert "skeleton 'person': 14 keypoints" in done.stdout
    assert png.is_file()


# -- the command line, as a user of these files meets it ----------------------------------


def _write(path: Path, doc: dict) -> Path:
    path.write_text(json.dumps(doc))
    return path


def test_shared_layout_categories_train_as_one_and_info_says_it_once(tmp_path, capsys):
    from types import SimpleNamespace

    from kpnb.cli.model_commands import _load_for_training

    doc = json.loads((MMPOSE / "animalpose/test_animalpose.json").read_text())
    cat = doc["categories"][0]
    doc["categories"] = [dict(cat, id=i + 1, name=n) for i, n in enumerate(["cat", "dog", "cow"])]
    doc["annotations"][1]["category_id"] = 3
    path = _write(tmp_path / "kp.json", doc)
    assert main(["info", str(path)]) == 0
    out = capsys.readouterr().out
    assert "3 skeletons with one layout ('cat', 'dog', 'cow'): 20 keypoints" in out
    assert out.count("20 keypoints") == 1
    args = SimpleNamespace(
        keyframes_only=False,
        data=str(path),
        label=None,
        points_as_skeleton=None,
        group_by="auto",
        all_categories=False,
        flip_pairs=None,
        images_root=None,
    )
    ann, _, label = _load_for_training(args)
    out = capsys.readouterr().out
    assert label == "cat" and "--all-categories trains the labels sharing its layout" in out
    assert ann.label_counts().to_dict() == {"cat": 1, "cow": 1}
    args.all_categories = True
    ann, _, label = _load_for_training(args)
    assert "training labels ['cat', 'dog', 'cow'] as one skeleton 'cat'" in capsys.readouterr().out
    assert ann.label_counts().to_dict() == {"cat": 2}


def test_cli_errors_name_flags_not_parameters(tmp_path, capsys):
    ann = read_annotations(MMPOSE / "onehand10k/test_onehand10k.json")
    _blank_images(ann, tmp_path, {"9.jpg"})  # three of four images missing
    args = ["evaluate", "ckpt.pth", str(MMPOSE / "onehand10k/test_onehand10k.json")]
    assert (
        main(
            [
                "train",
                args[2],
                "--images-root",
                str(tmp_path),
                "--out",
                str(tmp_path / "r"),
                "--epochs",
                "1",
                "--weights",
                "none",
                "--workers",
                "0",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "are missing" in err and "pass --skip-missing to leave them out" in err
    assert "skip_missing" not in err and "33.jpg (image id 33)" in err


def test_train_fails_on_its_input_before_the_model(tmp_path, capsys, monkeypatch):
    import kpnb.model

    def no_model(*a, **k):
        raise AssertionError("the model was built before the input was checked")

    monkeypatch.setattr(kpnb.model, "build_model", no_model)
    path = MMPOSE / "onehand10k/test_onehand10k.json"
    ann = read_annotations(path)
    _blank_images(ann, tmp_path)
    common = [
        "train",
        str(path),
        "--images-root",
        str(tmp_path),
        "--out",
        str(tmp_path / "r"),
        "--weights",
        "none",
        "--workers",
        "0",
    ]
    assert main(common + ["--sigmas", "0.1", "0.2"]) == 2
    assert "--sigmas: 2 values for 21 keypoints" in capsys.readouterr().err
    assert main(common + ["--flip-pairs", "wrist:nope"]) == 2
    assert "'nope' is not a keypoint" in capsys.readouterr().err


def test_show_reads_an_export_zip(tmp_path, monkeypatch):
    import zipfile

    path = MMPOSE / "animalpose/test_animalpose.json"
    ann = read_annotations(path)
    root = _blank_images(ann, tmp_path / "export")
    archive = tmp_path / "export.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.write(path, "annotations/person_keypoints_default.json")
        for f in (root / "images").iterdir():
            zf.write(f, f"images/{f.name}")
    monkeypatch.setenv("KPNB_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "shown.png"
    assert main(["show", str(archive), "--image", "3105", "--out", str(out)]) == 0
    assert Image.open(out).size == (300, 255)  # image id 3105 is ho105.jpeg, 300 x 255


def test_show_names_the_image_and_skips_missing(tmp_path, capsys):
    path = MMPOSE / "onehand10k/test_onehand10k.json"
    out = tmp_path / "x.png"
    assert (
        main(
            ["show", str(path), "--image", "784", "--out", str(out), "--images-root", str(tmp_path)]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "image id 784 '784.jpg': no such file" in err and "--images-root" in err
    assert (
        main(
            [
                "show",
                str(path),
                "--image",
                "784.jpg",
                "--out",
                str(out),
                "--images-root",
                str(tmp_path),
                "--skip-missing",
            ]
        )
        == 0
    )
    assert Image.open(out).size == (540, 960)
    assert main(["show", str(path), "--image", "nope", "--out", str(out), "--overwrite"]) == 2
    assert "no image with that file name or id" in capsys.readouterr().err


def test_predict_takes_image_ids_from_the_export(tmp_path):
    from kpnb.cli.predict_command import _export_ids

    path = MMPOSE / "crowdpose/test_crowdpose.json"
    root = _blank_images(read_annotations(path), tmp_path)
    images = [root / "images/103319.jpg", root / "images/106848.jpg"]
    assert _export_ids(path, images, root, "person") == ([103319, 106848], 1)
    with pytest.raises(ValueError, match="no image named 'other.jpg'"):
        _export_ids(path, [root / "images/other.jpg"], root, "person")


def test_grouping_rule_is_said():
    from types import SimpleNamespace

    from kpnb.cli.model_commands import _load_for_training

    xml = (
        CONF / "openvinotoolkit-datumaro/tests/assets/cvat_dataset/for_images/export_task/train.xml"
    )  # noqa: E501
    args = SimpleNamespace(
        keyframes_only=False,
        data=str(xml),
        label="label2",
        points_as_skeleton=None,
        group_by="auto",
        all_categories=False,
        flip_pairs=None,
        images_root=None,
    )
    ann, _, label = _load_for_training(args)  # a multi-point label trains as it is
    assert label == "label2" and ann.skeletons["label2"].keypoints == ("1", "2", "3")


def test_box_only_persons_are_ignored_ground_truth_in_oks_ap():
    from kpnb.evaluate import ImageResult, oks_ap

    person = np.array([[[10, 10, 2], [30, 10, 2], [20, 40, 2]]], np.float32)
    empty = np.zeros((1, 3, 3), np.float32)  # CrowdPose's num_keypoints 0 person
    gt_boxes = np.array([[0, 0, 40, 50], [100, 100, 140, 150]], np.float32)
    dets = np.concatenate([person, empty + [[[110, 110, 1]]]])
    scores = np.array([0.9, 0.95])  # the detection on the box-only person ranks first
    result = ImageResult(
        gt_boxes,
        np.concatenate([person, empty]),
        gt_boxes,
        scores,
        dets,
        np.array([1500.0, 1500.0]),
    )
    # kept as ignored ground truth: that detection is neither true nor false positive
    assert oks_ap([result], [0.05] * 3)["AP"] == pytest.approx(1.0)
    dropped = ImageResult(gt_boxes[:1], person, gt_boxes, scores, dets, np.array([1500.0]))
    assert oks_ap([dropped], [0.05] * 3)["AP"] < 0.9  # dropping it makes a false positive
