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


def test_visible_point_has_a_dark_outline():
    canvas = Image.new("RGB", (100, 60), (255, 255, 255))  # white: the outline must show
    kps = np.array([[[50, 30, 2], [0, 0, 0], [0, 0, 0]]], np.float32)
    img = np.asarray(viz.draw_instances(canvas, kps, SK, show_names=False, radius=5))
    assert tuple(img[30, 50]) == viz.keypoint_colors(SK.keypoints)["a"]
    assert tuple(img[30, 56]) == viz.OUTLINE  # just outside the disc, on every side
    assert tuple(img[24, 50]) == viz.OUTLINE
    assert tuple(img[30, 60]) == (255, 255, 255)  # and the outline is thin


def test_markers_grow_with_the_image():
    kps = np.array([[[0.5, 0.5, 2], [0, 0, 0], [0, 0, 0]]], np.float32)

    def drawn(w, h):
        img = np.asarray(
            viz.draw_instances(Image.new("RGB", (w, h)), kps * [w, h, 1], SK, show_names=False)
        )
        return int((img.max(-1) > 0).sum())

    assert viz.marker_radius(640, 480) > viz.marker_radius(160, 120)
    assert drawn(640, 480) > 4 * drawn(160, 120) > 0


def test_edge_between_labelled_points_is_drawn_over_a_dark_halo():
    canvas = Image.new("RGB", (100, 60), (255, 255, 255))
    kps = np.array([[[20, 30, 2], [50, 30, 2], [80, 30, 0]]], np.float32)
    img = np.asarray(
        viz.draw_instances(canvas, kps, SK, show_names=False, radius=3, edge_color=(255, 255, 0))
    )
    column = [tuple(p) for p in img[20:40, 35]]
    assert (255, 255, 0) in column  # the a-b edge in its colour
    assert column.count(viz.OUTLINE) >= 2  # with the halo on both sides
    assert (img[20:40, 58:90] == 255).all()  # nothing towards the absent c


@pytest.mark.parametrize("style", ["square", "x"])
def test_occluded_point_cannot_pass_for_a_visible_one(style):
    kps = np.array([[[20, 30, 1], [50, 30, 0], [80, 30, 2]]], np.float32)  # no edge at a
    img = np.asarray(
        viz.draw_instances(_canvas(), kps, SK, show_names=False, radius=4, occluded_marker=style)
    )
    colour = viz.keypoint_colors(SK.keypoints)["a"]
    box = img[30 - 9 : 30 + 10, 20 - 9 : 20 + 10]
    assert (box == colour).all(-1).sum() > 10  # drawn in its colour...
    if style == "square":
        assert tuple(img[30, 20]) == (0, 0, 0)  # ...hollow: the picture shows through
        assert tuple(img[30, 25]) == colour  # on the square's side, not a ring
    else:
        assert tuple(img[30, 20]) == colour  # the crossing
        assert tuple(img[30, 24]) != colour and tuple(img[26, 24]) == colour  # arms, not a disc
    # and unlike a visible disc, which is solid in its colour around the centre
    visible = np.asarray(
        viz.draw_instances(_canvas(), kps * [1, 1, 0] + [0, 0, 2], SK, show_names=False, radius=4)
    )
    assert (visible[28:33, 18:23] == colour).all()
    assert not (img[28:33, 18:23] == colour).all()


def test_unknown_occluded_marker():
    with pytest.raises(ValueError, match="occluded_marker"):
        viz.draw_instances(_canvas(), np.zeros((1, 3, 3)), SK, occluded_marker="ring")


def test_names_do_not_cover_other_points():
    kps = np.array([[[30, 50, 2], [46, 36, 2], [0, 0, 0]]], np.float32)  # b up-right of a
    canvas = Image.new("RGB", (120, 80), (0, 0, 0))
    named = np.asarray(viz.draw_instances(canvas, kps, SK, show_names=True, radius=3, font_size=12))
    plain = np.asarray(viz.draw_instances(canvas, kps, SK, show_names=False, radius=3))
    assert (named != plain).any(-1).sum() > 40  # names are written
    colours = viz.keypoint_colors(SK.keypoints)
    for (x, y, _), name in zip(kps[0][:2], "ab", strict=True):
        assert (named[int(y) - 1 : int(y) + 2, int(x) - 1 : int(x) + 2] == colours[name]).all()


def test_accepts_tensors_and_table_slices(synthetic_export):
    ann = read_cvat(synthetic_export)
    rows = ann.keypoints[ann.keypoints["image_index"] == 0]
    t = torch.zeros(3, int(ann.images.loc[0, "height"]), int(ann.images.loc[0, "width"]))
    a = viz.draw_instances(t, rows, ann.skeletons["face"])
    b = viz.draw_instances(t, ann.instance_array(0, "face"), ann.skeletons["face"])
    assert np.array_equal(np.asarray(a), np.asarray(b))
    assert isinstance(viz.show_sample(ann, 0), Image.Image)


def test_names_are_written():
    kps = np.array([[[20, 30, 2], [50, 30, 2], [80, 30, 2]]], np.float32)
    plain = np.asarray(viz.draw_instances(_canvas(), kps, SK, show_names=False))
    named = np.asarray(viz.draw_instances(_canvas(), kps, SK, show_names=True))
    assert (named != plain).sum() > 20


def _assert_labelled(fig):
    assert isinstance(fig, Figure)
    axes = [ax for ax in fig.axes if ax.axison and not hasattr(ax, "_colorbar")]
    assert axes
    for ax in axes:
        assert ax.get_title() or fig._suptitle is not None
        assert ax.get_xlabel() and ax.get_ylabel()


def test_distribution_figures_have_titles_and_axis_labels(synthetic_export):
    ann = read_cvat(synthetic_export)
    for fig in (
        viz.plot_label_counts(ann),
        viz.plot_keypoint_visibility(ann),
        viz.plot_instances_per_image(ann),
        viz.plot_image_sizes(ann),
        viz.plot_keypoint_heatmap(ann, "face"),
        viz.plot_keypoint_heatmap(ann, "face", normalize="image"),
    ):
        _assert_labelled(fig)
    with pytest.raises(ValueError, match="normalize"):
        viz.plot_keypoint_heatmap(ann, "face", normalize="pixels")


def _history(n, **extra):
    return [
        {
            "epoch": e,
            "lr": 1e-4,
            "loss": 1 / (e + 1),
            "loss_keypoint": 2 / (e + 1),
            "AP": e / 10,
            "AP50": None,
            "APm": 0.1,
            "PCK@0.1": e / 5,
            "seconds": 3.0,
            **extra,
        }
        for e in range(n)
    ]


def _lines(ax):
    return [line.get_label() for line in ax.lines]


def test_history_has_whole_epochs_and_a_panel_per_kind_of_number():
    fig = viz.plot_history(_history(3))
    _assert_labelled(fig)
    loss, ap, pck = fig.axes
    assert list(loss.get_xticks()) == [1, 2, 3]  # 1-based, as the log lines count them
    assert _lines(loss) == ["total", "keypoint"]
    assert _lines(ap) == ["AP", "AP50"] and _lines(pck) == ["PCK@0.1"]  # no lr, no APm
    assert np.isnan(ap.lines[1].get_ydata()).all()  # None: a gap, not a zero
    assert fig._suptitle is None
    one = viz.plot_history(_history(1, complete=False))
    assert [list(ax.get_xticks()) for ax in one.axes] == [[1]] * 3
    assert "time budget" in one._suptitle.get_text()
    ticks = viz.plot_history(_history(40)).axes[0].get_xticks()
    assert len(ticks) <= 11 and all(float(t).is_integer() for t in ticks)


def _prediction_result():
    """One object (a, b labelled, c absent), its detection, a duplicate of it scoring lower
    with its points elsewhere, and a false detection."""
    from kpnb.evaluate import ImageResult

    gt_box = np.array([[10, 20, 90, 40]], np.float32)
    gt = np.array([[[20, 30, 2], [50, 30, 2], [80, 30, 0]]], np.float32)
    match = [[20, 50, 0.9], [50, 50, 0.9], [80, 50, 0.9]]
    duplicate = [[35, 10, 0.9], [45, 10, 0.9], [55, 10, 0.9]]
    false = [[92, 55, 0.9], [94, 55, 0.9], [96, 55, 0.9]]
    boxes = np.array([[10, 20, 90, 42], [11, 20, 90, 40], [90, 50, 99, 59]], np.float32)
    return ImageResult(
        gt_box,
        gt,
        boxes,
        np.array([0.9, 0.8, 0.7], np.float32),
        np.array([match, duplicate, false], np.float32),
    )


def test_errors_picture_draws_matched_predictions_with_dashed_lines():
    img = np.asarray(viz.draw_predictions(_canvas(), _prediction_result(), SK))
    colours = viz.keypoint_colors(SK.keypoints)
    white = (img == viz.ERROR_LINE).all(-1)
    assert white[36:45, 20].any() and not white[36:45, 20].all()  # a's error line, dashed
    assert white[36:45, 50].any()
    assert not white[33:47, 80].any()  # c is absent in the ground truth: no error line
    assert not white[30, 26:44].any()  # no skeleton edge between a and b
    assert tuple(img[30, 20]) == colours["a"]  # the ground-truth disc
    assert (img[48:53, 18:23] == colours["a"]).all(-1).any()  # the matched prediction's cross
    assert img[5:16, 30:60].max() == 0  # the duplicate is not drawn
    assert img[50:60, 88:100].max() == 0  # nor the false detection


def test_compare_predictions_shows_what_the_metrics_matched_with_a_legend():
    fig = viz.compare_predictions(_canvas(), _prediction_result(), SK, title="t")
    assert len(fig.axes) == 3
    truth, predicted, errors = (ax.get_title() for ax in fig.axes)
    assert truth == "ground truth: 1 object"
    assert predicted == "1 matched prediction (2 unmatched not shown)"
    shown = fig.axes[1].images[0].get_array()
    assert shown.shape[:2] == (180, 300)  # enlarged 3x: small markers at the grid's scale
    assert shown[15:48, 90:180].max() == 0  # the duplicate is not among the predictions
    (legend,) = fig.legends
    labels = [t.get_text() for t in legend.get_texts()]
    assert {"a", "b", "c", "prediction (errors panel)", "error: point to prediction"} <= set(labels)
    missed = _prediction_result()
    missed.boxes[:2] += 50  # nothing overlaps the object any more
    assert (
        fig.axes
        and "1 object not found"
        in viz.compare_predictions(_canvas(), missed, SK).axes[2].get_title()
    )


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
    argv = ["show", str(synthetic_export), "--image", "999", "--out", str(out), "--overwrite"]
    assert main(argv) == 2


def test_heatmap_has_one_colour_bar_for_all_panels(synthetic_export):
    ann = read_cvat(synthetic_export)
    fig = viz.plot_keypoint_heatmap(ann, "face")
    bars = [ax for ax in fig.axes if hasattr(ax, "_colorbar")]
    assert len(bars) == 1 and bars[0].get_ylabel() == "points per bin"
    panels = [ax for ax in fig.axes if ax.collections and not hasattr(ax, "_colorbar")]
    assert len(panels) == 5
    assert len({(c.norm.vmin, c.norm.vmax) for ax in panels for c in ax.collections}) == 1
    peak = max(c.get_array().max() for ax in panels for c in ax.collections)
    assert bars[0]._colorbar.norm.vmax == peak


def _png(fig) -> bytes:
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def test_sample_grid_has_a_colour_legend_and_saves_small(synthetic_export):
    import io

    from matplotlib.backends.backend_agg import FigureCanvasAgg

    ann = read_cvat(synthetic_export)
    fig = viz.sample_grid(ann)
    assert len(fig.legends) == 1
    legend = fig.legends[0]
    entries = {
        t.get_text(): h for t, h in zip(legend.get_texts(), legend.legend_handles, strict=True)
    }
    colours = viz.keypoint_colors(ann.skeletons["face"].keypoints)
    assert set(colours) < set(entries) and any("occluded" in k for k in entries)
    for name, rgb in colours.items():
        assert tuple(round(c * 255) for c in entries[name].get_markerfacecolor()[:3]) == rgb
    small = _png(fig)
    pixels = np.asarray(Image.open(io.BytesIO(small)).convert("RGB"))
    for rgb in colours.values():  # the palette keeps every keypoint colour exactly
        assert (pixels == rgb).all(-1).sum() > 20
    FigureCanvasAgg(fig)  # the same figure as a full-colour PNG
    assert len(small) < 0.6 * len(_png(fig))


def test_color_swatch_shows_both_markers():
    fig = viz.color_swatch(SK.keypoints)
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert set(SK.keypoints) <= set(texts) and {"visible", "occluded"} <= set(texts)
    collections = fig.axes[0].collections
    markers = {c.get_paths()[0].vertices.shape[0] for c in collections}
    assert len(markers) == 2  # a disc and a square
    edges = {tuple(np.round(c.get_edgecolor()[0][:3] * 255).astype(int)) for c in collections}
    assert viz.OUTLINE in edges  # with the dark outline draw_instances gives them


def test_showcase_image_is_a_lone_uncut_object(synthetic_export):
    from kpnb.errors import KpnbError

    ann = read_cvat(synthetic_export)
    first = viz.showcase_image(ann, "face")
    arr = ann.instance_array(first, "face")
    assert arr.shape[0] == 1 and (arr[0, :, 2] == 2).all()
    with pytest.raises(KpnbError, match="no labelled point of 'tail'"):
        viz.showcase_image(ann, "tail")


def test_image_grid_at_true_scale_draws_a_smaller_image_smaller():
    big, small = Image.new("RGB", (200, 100)), Image.new("RGB", (50, 25))
    same = viz.image_grid([big, small], ncols=2).axes[1]
    true = viz.image_grid([big, small], ncols=2, true_scale=True).axes[1]
    assert same.get_xlim() == (-0.5, 49.5)  # each image fills its cell
    assert true.get_xlim() == (-0.5, 199.5) and true.get_ylim() == (99.5, -0.5)


def test_visibility_plot_shows_shares_and_enlarges_the_not_visible(synthetic_export):
    ann = read_cvat(synthetic_export)
    left, right = viz.plot_keypoint_visibility(ann).axes
    assert left.get_xlim() == (0.0, 100.0) and "%" in left.get_xlabel()
    counts = ann.keypoint_counts()
    shares = 100 * counts[["occluded", "absent"]].to_numpy() / counts[["total"]].to_numpy()
    assert right.get_xlim()[1] < 100 and right.get_xlim()[1] >= shares.max()
    texts = {t.get_text() for t in right.texts}
    assert {str(int(n)) for n in counts[["occluded", "absent"]].to_numpy().ravel()} <= texts


def test_heatmap_by_object_has_no_points_piled_on_its_edges(synthetic_export):
    ann = read_cvat(synthetic_export)
    fig = viz.plot_keypoint_heatmap(ann, "face")
    panels = [ax for ax in fig.axes if ax.collections and not hasattr(ax, "_colorbar")]
    assert panels[0].get_xlabel() == "(x - centre) / size"
    for ax in panels:
        counts = ax.collections[0].get_array().reshape(24, 24)
        ring = np.concatenate([counts[0], counts[-1], counts[:, 0], counts[:, -1]])
        assert counts.sum() > 0 and ring.sum() == 0
    image = viz.plot_keypoint_heatmap(ann, "face", normalize="image")
    assert image.axes[0].get_xlabel() == "x / image width"
    assert image.axes[0].get_ylabel() == "y / image height"


def test_names_check_only_their_neighbours(monkeypatch):
    from kpnb.viz import draw

    calls = []
    real = draw._overlaps
    monkeypatch.setattr(draw, "_overlaps", lambda a, b: calls.append(1) or real(a, b))
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 2000, (1000, 3, 2))
    kps = np.concatenate([xy, np.full((1000, 3, 1), 2.0)], -1).astype(np.float32)
    viz.draw_instances(Image.new("RGB", (2000, 2000)), kps, SK, show_names=True, font_size=12)
    # 3,000 names among 3,000 markers: all pairs would be ~9 million checks
    assert 0 < len(calls) < 300_000
