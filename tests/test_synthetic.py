import hashlib
import xml.etree.ElementTree as ET
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from kpnb import synthetic
from kpnb.synthetic import FACE, FEATURE_COLOURS, generate, render_scene, synthesize


def _digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_same_seed_gives_identical_bytes(tmp_path):
    a = generate(tmp_path / "a", 8, seed=3)
    b = generate(tmp_path / "b", 8, seed=3)
    c = generate(tmp_path / "c", 8, seed=4)
    assert _digest(a) == _digest(b)
    assert _digest(a) != _digest(c)


def test_zip_matches_folder_and_is_deterministic(tmp_path):
    folder = generate(tmp_path / "f", 6, seed=1)
    z1 = generate(tmp_path / "z1", 6, seed=1, as_zip=True)
    z2 = generate(tmp_path / "z2.zip", 6, seed=1, as_zip=True)
    assert z1.name == "z1.zip" and z1.read_bytes() == z2.read_bytes()
    with zipfile.ZipFile(z1) as zf:
        members = {n: hashlib.sha256(zf.read(n)).hexdigest() for n in zf.namelist()}
    assert members == _digest(folder)
    assert "annotations.xml" in members  # at the zip root, like CVAT's export


def _parse(root: Path):
    tree = ET.parse(root / "annotations.xml").getroot()
    return tree, tree.findall("image")


def test_every_image_has_its_file_with_matching_size(synthetic_export):
    tree, images = _parse(synthetic_export)
    assert tree.find("version").text == "1.1"
    assert len(images) == 40
    for el in images:
        path = synthetic_export / "images" / el.get("subset") / el.get("name")
        with Image.open(path) as im:
            assert im.size == (int(el.get("width")), int(el.get("height")))
    on_disk = {p.name for p in (synthetic_export / "images").rglob("*.jpg")}
    assert on_disk == {el.get("name") for el in images}


def test_meta_declares_the_skeleton_like_cvat(synthetic_export):
    tree, _ = _parse(synthetic_export)
    labels = tree.findall("meta/project/labels/label")
    face = [lab for lab in labels if lab.find("name").text == "face"][0]
    assert face.find("type").text == "skeleton"
    svg = ET.fromstring("<root>" + face.find("svg").text + "</root>")
    assert [c.get("data-label-name") for c in svg.iter("circle")] == list(FACE.keypoints)
    edges = {
        (int(ln.get("data-node-from")) - 1, int(ln.get("data-node-to")) - 1)
        for ln in svg.iter("line")
    }
    assert edges == set(FACE.edges)
    parents = {lab.find("name").text: lab.findtext("parent") for lab in labels}
    assert all(parents[k] == "face" for k in FACE.keypoints)
    assert tree.find("meta/project/subsets").text.split("\n") == ["Train", "Validation"]


def test_written_points_match_the_truth(synthetic_export):
    _, images = _parse(synthetic_export)
    for el in images:
        scene = render_scene(0, int(el.get("id")))
        skeletons = el.findall("skeleton")
        assert len(skeletons) == len(scene.keypoints)
        for i, sk in enumerate(skeletons):
            assert [p.get("label") for p in sk.findall("points")] == list(FACE.keypoints)
            for j, p in enumerate(sk.findall("points")):
                x, y = map(float, p.get("points").split(","))
                assert abs(x - scene.keypoints[i, j, 0]) <= 0.005 + 1e-9
                assert abs(y - scene.keypoints[i, j, 1]) <= 0.005 + 1e-9
                assert p.get("outside") == str(int(scene.outside[i, j]))
                assert p.get("occluded") == str(int(scene.occluded[i, j]))


def test_drawn_features_sit_at_the_visible_points():
    hits = total = occluded_hits = occluded_total = 0
    for index in range(60):
        scene = render_scene(0, index)
        pixels = np.asarray(scene.image)
        for i in range(len(scene.keypoints)):
            for j, colour in enumerate(FEATURE_COLOURS):
                if scene.outside[i, j]:
                    continue
                x, y = (int(v) for v in np.floor(scene.keypoints[i, j]))
                here = tuple(int(c) for c in pixels[y, x])
                if scene.occluded[i, j]:
                    occluded_total += 1
                    occluded_hits += here == colour
                else:
                    total += 1
                    hits += here == colour
    assert total > 150 and hits / total >= 0.98
    # A point hidden by a face drawn on top no longer shows its own feature.
    assert occluded_total > 5 and occluded_hits / occluded_total <= 0.2


def test_dataset_has_what_a_model_and_tutorial_need():
    ann, pictures = synthesize(200, seed=0)
    per_image = ann.instances_per_image()
    assert (per_image == 0).sum() >= 5 and per_image.max() == 3
    vis = ann.keypoints["visibility"].value_counts()
    assert vis[0] >= 10 and vis[1] >= 10 and vis[2] > 500
    sizes = {p.size for p in pictures}
    assert len(sizes) >= 5
    assert any(w > h for w, h in sizes) and any(w < h for w, h in sizes)
    assert set(ann.images["subset"]) == {"Train", "Validation"}
    assert (ann.images["subset"] == "Validation").sum() == 40


def test_points_layout_is_the_toy_layout(points_export):
    tree, images = _parse(points_export)
    assert tree.find("meta/task") is not None and tree.find("meta/project") is None
    assert not tree.findall(".//skeleton") and not tree.findall(".//svg")
    for el in images:
        assert el.get("subset") is None
        labels = [p.get("label") for p in el.findall("points")]
        assert len(labels) == len(set(labels)) <= FACE.num_keypoints  # one shape per label
        for p in el.findall("points"):
            assert p.get("points").count(",") == 1  # one point per shape
        assert (points_export / "images" / el.get("name")).is_file()


def test_interrupted_generation_leaves_nothing(tmp_path, monkeypatch):
    calls = {"n": 0}
    real = synthetic.export._jpeg_bytes

    def failing(img, quality):
        calls["n"] += 1
        if calls["n"] % 3 == 0:
            raise OSError("disk full")
        return real(img, quality)

    monkeypatch.setattr(synthetic.export, "_jpeg_bytes", failing)
    with pytest.raises(OSError):
        generate(tmp_path / "out", 5)
    with pytest.raises(OSError):
        generate(tmp_path / "out.zip", 5, as_zip=True)
    assert list(tmp_path.iterdir()) == []


def test_unknown_layout():
    with pytest.raises(ValueError, match="skeleton' or 'points"):
        render_scene(0, 0, "boxes")


def test_pupils_and_noses_stand_out_from_what_surrounds_them():
    """The keypoints stay easy to learn: a dark pupil inside a lighter iris, a nose that
    differs from the muzzle around it."""
    checked = 0
    for index in range(30):
        scene = render_scene(0, index)
        pixels = np.asarray(scene.image).astype(float)
        h, w = pixels.shape[:2]
        for i in range(len(scene.keypoints)):
            kp, hidden = scene.keypoints[i], scene.occluded[i] | scene.outside[i]
            radius = np.linalg.norm(kp[1] - kp[2]) / 0.76  # the eyes sit 0.76 radii apart
            rp, re, rn = max(0.09 * radius, 2.5), max(0.17 * radius, 5.0), max(0.11 * radius, 2.5)
            iris = (rp + re - 1.0) / 2  # mid-way between the pupil and the eye's dark rim
            for j, ring in ((0, 2.0 * rn), (1, iris), (2, iris)):
                t = np.linspace(0, 2 * np.pi, 12, endpoint=False)
                xs, ys = kp[j, 0] + ring * np.cos(t), kp[j, 1] + ring * np.sin(t)
                if hidden.any() or not ((xs >= 0) & (xs < w) & (ys >= 0) & (ys < h)).all():
                    continue
                around = pixels[np.floor(ys).astype(int), np.floor(xs).astype(int)]
                centre = pixels[int(kp[j, 1]), int(kp[j, 0])]
                if j == 0:  # most of the nose's surroundings differ clearly in colour
                    far = np.linalg.norm(around - centre, axis=1)
                    assert np.percentile(far, 25) > 45, (index, i, "nose")
                else:  # the pupil is much darker than its iris
                    assert around.mean() - centre.mean() > 50, (index, i, j)
                checked += 1
    assert checked > 60


def test_appearance_never_moves_a_keypoint(monkeypatch):
    """The backdrop draws from its own random stream (the original drew it first from the
    geometry's): drawing it differently leaves sizes, faces and keypoints where they were."""
    before = [render_scene(5, i) for i in range(6)]
    monkeypatch.setattr(
        synthetic.scene, "_background", lambda rng, w, h: np.full((h, w, 3), 128, np.float32)
    )
    after = [render_scene(5, i) for i in range(6)]
    for a, b in zip(before, after, strict=True):
        assert a.image.size == b.image.size
        assert np.array_equal(a.keypoints, b.keypoints)
        assert np.array_equal(a.visibility, b.visibility)
        assert not np.array_equal(np.asarray(a.image), np.asarray(b.image))
