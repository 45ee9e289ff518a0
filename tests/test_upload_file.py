"""``kpnb predict``'s file for CVAT's "Upload annotations" of an existing task."""

from __future__ import annotations

import logging
import zipfile
from pathlib import Path

import numpy as np
import pytest

from kpnb.cli import main
from kpnb.cvat import read_cvat
from kpnb.evaluate import predict
from kpnb.model import load_checkpoint_model


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, synthetic_export):
    """An untrained tiny checkpoint of the export's skeleton: its points are as good as any
    for checking that the file carries them."""
    import torch

    from kpnb.checkpoint import Checkpoint
    from kpnb.model import build_model

    skeleton = read_cvat(synthetic_export).skeletons["face"]
    torch.manual_seed(0)
    model = build_model(skeleton.num_keypoints, weights=None, preset="tiny", size=64)
    path = tmp_path_factory.mktemp("ckpt") / "best.pth"
    return Checkpoint.of_model(model, skeleton, label="face").save(path)


def test_zip_and_xml_carry_predicts_points_under_the_tasks_image_names(
    checkpoint, synthetic_export, tmp_path
):
    task = read_cvat(synthetic_export)  # the task the images were annotated in
    paths = sorted((synthetic_export / "images").rglob("*.jpg"))[:3]
    common = ["--workers", "0", "--score-threshold", "0.0"]
    assert main(["predict", str(checkpoint), *map(str, paths), "--out", str(tmp_path / "p.zip"),
                 *common]) == 0  # fmt: skip
    assert main(["predict", str(checkpoint), *map(str, paths), "--out", str(tmp_path / "p.xml"),
                 *common]) == 0  # fmt: skip
    with zipfile.ZipFile(tmp_path / "p.zip") as zf:
        assert zf.namelist() == ["annotations.xml"]  # what CVAT's loader looks for in a zip
        text = zf.read("annotations.xml").decode("utf-8")
    assert text == (tmp_path / "p.xml").read_text(encoding="utf-8")
    back = read_cvat(tmp_path / "p.xml")
    assert (back.meta["format"], back.meta["version"]) == ("images", "1.1")  # CVAT for images 1.1
    # every name is one of the task's image names, as CVAT matches them on upload
    assert list(back.images["name"]) == [p.name for p in paths]
    assert set(back.images["name"]) <= set(task.images["name"])
    assert list(back.skeletons["face"].keypoints) == list(task.skeletons["face"].keypoints)
    model, ckpt = load_checkpoint_model(checkpoint, "cpu")
    expected = predict(model, paths, ckpt.skeleton, "face", score_threshold=0.0,
                       num_workers=0)  # fmt: skip
    assert len(expected) > 0
    got = back.keypoints.sort_values(["image_index", "instance_id", "point_index"])
    assert len(got) == len(expected)
    np.testing.assert_allclose(
        got[["x", "y"]].to_numpy(), expected[["x", "y"]].to_numpy(), atol=0.006
    )  # two decimals, as CVAT writes them
    assert set(got["source"]) == {"auto"} and set(got["label"]) == {"face"}


def test_repeated_file_names_are_logged(checkpoint, synthetic_export, tmp_path, caplog):
    import shutil

    source = sorted((synthetic_export / "images").rglob("*.jpg"))[0]
    images = []
    for folder in "ab":
        (tmp_path / folder).mkdir()
        images.append(Path(shutil.copy(source, tmp_path / folder / "x.jpg")))
    with caplog.at_level(logging.WARNING, logger="kpnb"):
        argv = ["predict", str(checkpoint), *map(str, images), "--out", str(tmp_path / "p.xml")]
        assert main([*argv, "--workers", "0"]) == 0
    assert any("'x.jpg'" in r.getMessage() for r in caplog.records)


def test_other_suffixes_are_refused(checkpoint, tmp_path, capsys):
    image = tmp_path / "a.jpg"
    assert main(["predict", str(checkpoint), str(image), "--out", str(tmp_path / "p.txt")]) == 2
    assert ".zip" in capsys.readouterr().err
