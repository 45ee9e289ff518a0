"""Pixels where it matters, titles and labels on figures, no global pyplot state."""

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure
from PIL import Image

from kpnb import viz
from kpnb.cvat import read_cvat
from kpnb.tables import Skeleton

SK = Skeleton(("a", "b", "c"), ((0, 1), (1, 2)))


def _canvas():
    return Image.new("RGB", (100, 60), (0, 0, 0))


def test_colours_are_distinct_and_stable():
    a = viz.keypoint_colors(["nose", "left_eye", "right_eye"])
    b = viz.keypoint_colors(["tail", "right_eye", "nose", "left_eye"])
    assert len(set(a.values())) == 3
    assert a["nose"] == b["nose"] and a["right_eye"] == b["right_eye"]  # same name, same colour


def test_visible_point_has_its_colour_and_absent_point_is_not_drawn():
    kps = np.array([[[20, 30, 2], [50, 30, 0], [80, 30, 2]]], np.float32)
    img = np.asarray(viz.draw_instances(_canvas(), kps, SK, show_names=False, radius=3))
    colours = viz.keypoint_colors(SK.keypoints)
    assert tuple(img[30, 20]) == colours["a"]
    assert tuple(img[30, 80]) == colours["c"]
    assert tuple(img[30, 50]) == (0, 0, 0)  # absent: nothing at its position
    # both edges touch the absent point "b": no line anywhere between a and c
    assert img[25:36, 26:74].max() == 0


def test_edge_between_labelled_points_is_drawn():
    kps = np.array([[[20, 30, 2], [50, 30, 2], [80, 30, 0]]], np.float32)
    img = np.asarray(viz.draw_instances(_canvas(), kps, SK, show_names=False, radius=3))
    assert tuple(img[30, 35]) == (255, 255, 255)  # the a-b edge
    assert img[25:36, 58:90].max() == 0  # nothing towards the absent c


def test_occluded_point_looks_different():
    kps = np.array([[[20, 30, 1], [50, 30, 2], [80, 30, 2]]], np.float32)
    img = np.asarray(viz.draw_instances(_canvas(), kps, SK, show_names=False, radius=4))
    colour = viz.keypoint_colors(SK.keypoints)["a"]
    assert tuple(img[30, 20]) != colour and img[30, 20].max() > 0  # dimmed, not missing
    assert tuple(img[30, 25]) == (255, 255, 255)  # with a white ring


def test_accepts_tensors_and_table_slices(synthetic_export):
    ann = read_cvat(synthetic_export)
    rows = ann.keypoints[ann.keypoints["image_index"] == 0]
    t = torch.zeros(3, int(ann.images.loc[0, "height"]), int(ann.images.loc[0, "width"]))
    a = viz.draw_instances(t, rows, ann.skeletons["face"])
    b = viz.draw_instances(t, ann.instance_array(0, "face"), ann.skeletons["face"])
    assert np.array_equal(np.asarray(a), np.asarray(b))
    assert isinstance(viz.show_sample(ann, 0), Image.Image)


def test_names_are_written(synthetic_export):
    kps = np.array([[[20, 30, 2], [50, 30, 2], [80, 30, 2]]], np.float32)
    plain = np.asarray(viz.draw_instances(_canvas(), kps, SK, show_names=False))
    named = np.asarray(viz.draw_instances(_canvas(), kps, SK, show_names=True))
    assert (named != plain).sum() > 20


def _assert_labelled(fig):
    assert isinstance(fig, Figure)
    axes = [ax for ax in fig.axes if ax.axison]
    assert axes
    for ax in axes:
        assert ax.get_title() or fig._suptitle is not None
        assert ax.get_xlabel() and ax.get_ylabel()


def test_distribution_figures_have_titles_and_axis_labels(synthetic_export):
    ann = read_cvat(synthetic_export)
    for fig in (viz.plot_label_counts(ann), viz.plot_keypoint_visibility(ann),
                viz.plot_instances_per_image(ann), viz.plot_image_sizes(ann),
                viz.plot_keypoint_heatmap(ann, "face"),
                viz.plot_keypoint_heatmap(ann, "face", normalize="image")):  # fmt: skip
        _assert_labelled(fig)
    with pytest.raises(ValueError, match="normalize"):
        viz.plot_keypoint_heatmap(ann, "face", normalize="pixels")


def test_history_and_prediction_figures():
    history = [{"epoch": e, "loss": 1 / (e + 1), "loss_keypoint": 2 / (e + 1), "AP": e / 10,
                "PCK@0.1": e / 5} for e in range(3)]  # fmt: skip
    _assert_labelled(viz.plot_history(history))
    gt = np.array([[[20, 30, 2], [50, 30, 2], [80, 30, 0]]], np.float32)
    pred = np.array([[[22, 31, 0.9], [55, 30, 0.8], [80, 30, 0.1]]], np.float32)
    img = np.asarray(viz.draw_predictions(_canvas(), gt, pred, SK))
    assert (img[:, :, 0] == 255).any()  # red error lines
    fig = viz.compare_predictions(_canvas(), gt, pred, SK, title="t")
    assert len(fig.axes) == 3


def test_no_pyplot_figures_are_left_open(synthetic_export):
    import matplotlib.pyplot as plt

    before = plt.get_fignums()
    viz.sample_grid(read_cvat(synthetic_export))
    assert plt.get_fignums() == before


def test_cli_show(tmp_path, synthetic_export):
    from kpnb.cli import main

    out = tmp_path / "s.png"
    assert main(["show", str(synthetic_export), "--image", "2", "--out", str(out)]) == 0
    assert Image.open(out).size[0] > 0
    assert main(["show", str(synthetic_export), "--image", "999", "--out", str(out)]) == 2
