"""OKS AP equals pycocotools' own numbers; PCK and pixel errors on hand-made cases; missing
metrics are null; inference follows the model's device; predict streams."""

import json

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from kpnb.evaluate import (
    ImageResult,
    collect_predictions,
    evaluate,
    keypoint_metrics,
    match_instances,
    predict,
)
from kpnb.skeleton import Skeleton

SK = Skeleton(("a", "b", "c"))


def _gt(seed=0, n_images=6):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_images):
        n = int(rng.integers(1, 3))
        kps = np.zeros((n, 3, 3), np.float32)
        boxes = np.zeros((n, 4), np.float32)
        for i in range(n):
            x0, y0 = rng.uniform(0, 200, 2)
            w, h = rng.uniform(40, 120, 2)
            kps[i, :, 0] = rng.uniform(x0, x0 + w, 3)
            kps[i, :, 1] = rng.uniform(y0, y0 + h, 3)
            kps[i, :, 2] = rng.choice([0, 1, 2], 3, p=[0.1, 0.2, 0.7])
            kps[i, 0, 2] = 2
            boxes[i] = [x0, y0, x0 + w, y0 + h]
        out.append((boxes, kps))
    return out


def _results(gt, noise=0.0, seed=1, drop_last=False):
    rng = np.random.default_rng(seed)
    res = []
    for boxes, kps in gt:
        pred = kps.copy()
        pred[..., :2] += rng.normal(0, noise, pred[..., :2].shape) if noise else 0
        pred[..., 2] = 1.0
        n = len(boxes) - (1 if drop_last and len(boxes) > 1 else 0)
        res.append(ImageResult(boxes, kps, boxes[:n], rng.uniform(0.5, 1, n), pred[:n]))
    return res


def test_perfect_predictions_give_ap_1():
    m = keypoint_metrics(_results(_gt()), SK).metrics
    assert m["AP"] == pytest.approx(1.0) and m["AP50"] == pytest.approx(1.0)
    assert m["PCK@0.05"] == 1.0 and m["mean_px_error"] == 0.0


def _pycocotools_ap(results, sigmas):
    """pycocotools' own computation, from our inputs written out by hand."""
    images, anns, dets = [], [], []
    for i, r in enumerate(results, start=1):
        images.append({"id": i})
        for b, k in zip(r.gt_boxes, r.gt_keypoints, strict=True):
            w, h = float(b[2] - b[0]), float(b[3] - b[1])
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": i,
                    "category_id": 1,
                    "iscrowd": 0,
                    "bbox": [float(b[0]), float(b[1]), w, h],
                    "area": w * h,
                    "keypoints": [float(v) for v in k.reshape(-1)],
                    "num_keypoints": int((k[:, 2] > 0).sum()),
                }
            )
        for b, s, k in zip(r.boxes, r.scores, r.keypoints, strict=True):
            dets.append(
                {
                    "image_id": i,
                    "category_id": 1,
                    "score": float(s),
                    "bbox": [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])],
                    "keypoints": [float(v) for v in k.reshape(-1)],
                }
            )
    gt = COCO()
    gt.dataset = {
        "images": images,
        "annotations": anns,
        "categories": [{"id": 1, "name": "x", "keypoints": ["a", "b", "c"]}],
    }
    gt.createIndex()
    ev = COCOeval(gt, gt.loadRes(dets), iouType="keypoints")
    ev.params.kpt_oks_sigmas = np.array(sigmas)
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    return ev.stats[:5]


@pytest.mark.parametrize("noise, sigmas", [(2.0, [0.05] * 3), (6.0, [0.03, 0.07, 0.1])])
def test_perturbed_predictions_equal_pycocotools(noise, sigmas):
    results = _results(_gt(seed=3, n_images=10), noise=noise, drop_last=True)
    ours = keypoint_metrics(results, SK, sigmas).metrics
    theirs = _pycocotools_ap(results, sigmas)
    for name, value in zip(["AP", "AP50", "AP75", "APm", "APl"], theirs, strict=True):
        if value < 0:
            assert ours[name] is None
        else:
            assert ours[name] == pytest.approx(value, abs=1e-12), name
    assert 0 < ours["AP"] < 1


def test_pck_counts_unmatched_instances_as_misses():
    boxes = np.array([[0, 0, 100, 100], [200, 200, 300, 300]], np.float32)
    kps = np.array(
        [[[10, 10, 2], [50, 50, 2], [90, 90, 0]], [[210, 210, 2], [250, 250, 2], [290, 290, 2]]],
        np.float32,
    )
    pred = kps[:1].copy()
    pred[0, 0, :2] += [8, 0]  # 8 px off: inside 0.1 x 100, outside 0.05 x 100
    r = ImageResult(boxes, kps, boxes[:1], np.array([0.9]), pred)
    res = keypoint_metrics([r], SK)
    m = res.metrics
    assert m["PCK@0.1"] == pytest.approx(2 / 5) and m["PCK@0.05"] == pytest.approx(1 / 5)
    assert m["matched_instances"] == 1 and m["instances"] == 2
    assert res.per_keypoint.loc["a", "mean_px_error"] == pytest.approx(8)
    assert res.per_keypoint.loc["c", "labelled"] == 1 and res.per_keypoint.loc["c", "matched"] == 0


def _boxes_result(gt_boxes, boxes, scores):
    gt_boxes, boxes = np.array(gt_boxes, np.float32), np.array(boxes, np.float32).reshape(-1, 4)
    return ImageResult(
        gt_boxes,
        np.zeros((len(gt_boxes), 3, 3), np.float32),
        boxes,
        np.array(scores, np.float32),
        np.zeros((len(boxes), 3, 3), np.float32),
    )


@pytest.mark.parametrize(
    ("boxes", "scores", "expected"),
    [
        # the best-scoring detection of each object wins; its duplicate stays unmatched
        ([[0, 0, 100, 100], [2, 0, 100, 100], [200, 200, 300, 300]], [0.6, 0.9, 0.7], [1, 2]),
        # a detection overlapping too little (IoU 1/3) matches nothing
        ([[50, 0, 150, 100]], [0.9], [-1, -1]),
        # scores decide, not overlap: the better-scoring detection takes the object even
        # though a weaker one overlaps it more (COCO's order)
        ([[0, 0, 100, 100], [0, 0, 100, 90]], [0.5, 0.9], [1, -1]),
        ([], [], [-1, -1]),
    ],
)
def test_match_instances_pairs_each_object_with_one_detection(boxes, scores, expected):
    gt = [[0, 0, 100, 100], [200, 200, 300, 300]]
    assert match_instances(_boxes_result(gt, boxes, scores)) == expected


def test_match_instances_threshold_and_no_ground_truth():
    r = _boxes_result([[0, 0, 100, 100]], [[50, 0, 150, 100]], [0.9])  # IoU 1/3
    assert match_instances(r, iou_threshold=0.3) == [0]
    assert match_instances(_boxes_result(np.zeros((0, 4)), [[0, 0, 1, 1]], [0.9])) == []


def test_match_instances_skips_an_empty_ground_truth_box():
    """A degenerate (zero-area) object and detection overlap nothing, not even each other,
    and do not hide the real object from its detection."""
    r = _boxes_result(
        [[5, 5, 5, 5], [0, 0, 100, 100]], [[0, 0, 100, 100], [5, 5, 5, 5]], [0.9, 0.8]
    )
    assert match_instances(r) == [-1, 0]


def test_no_predictions_and_bad_sigmas():
    gt = _gt(n_images=2)
    empty = [ImageResult(b, k, np.zeros((0, 4)), np.zeros(0), np.zeros((0, 3, 3))) for b, k in gt]
    m = keypoint_metrics(empty, SK).metrics
    assert m["AP"] == 0 and m["PCK@0.2"] == 0
    with pytest.raises(ValueError, match="2 sigmas for 3 keypoints"):
        keypoint_metrics(empty, SK, [0.1, 0.1])


def test_no_predictions_leave_empty_area_ranges_missing():
    """Nothing detected: AP is 0 where there was something to find, and an area range with
    no ground truth stays None (missing), as it does when there are detections."""
    boxes = np.array([[0, 0, 20, 20]], np.float32)  # area 400 < 32²: small, in AP only
    kps = np.array([[[5, 5, 2], [10, 10, 2], [15, 15, 2]]], np.float32)
    r = ImageResult(boxes, kps, np.zeros((0, 4)), np.zeros(0), np.zeros((0, 3, 3)))
    m = keypoint_metrics([r], SK).metrics
    assert m["AP"] == 0.0 and m["APm"] is None and m["APl"] is None
    r.gt_area = np.array([50.0**2], np.float32)  # medium by its own area
    m = keypoint_metrics([r], SK).metrics
    assert m["APm"] == 0.0 and m["APl"] is None


def test_metrics_over_no_instances_are_null_in_json(tmp_path):
    empty = [
        ImageResult(
            np.zeros((0, 4)),
            np.zeros((0, 3, 3)),
            np.zeros((0, 4)),
            np.zeros(0),
            np.zeros((0, 3, 3)),
        )
    ]
    result = keypoint_metrics(empty, SK)
    assert result.metrics["AP"] is None and result.metrics["PCK@0.1"] is None
    assert result.metrics["mean_px_error"] is None and result.metrics["instances"] == 0
    text = result.to_json(tmp_path / "m.json").read_text()
    assert "NaN" not in text
    doc = json.loads(text)
    assert doc["metrics"]["AP"] is None and doc["per_keypoint"][0]["mean_px_error"] is None


class _Recorder(torch.nn.Module):
    """A stand-in detector whose parameters live on `device`; it records where inputs are."""

    def __init__(self, device):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1, device=device))
        self.seen = []

    def forward(self, images):
        self.seen += [im.device for im in images]
        k = SK.num_keypoints
        return [
            {
                "boxes": torch.zeros(0, 4),
                "scores": torch.zeros(0),
                "labels": torch.zeros(0, dtype=torch.int64),
                "keypoints": torch.zeros(0, k, 3),
                "keypoints_scores": torch.zeros(0, k),
            }
            for _ in images
        ]


def test_inference_follows_the_models_device():
    images = [torch.zeros(3, 8, 8, dtype=torch.uint8), torch.ones(3, 6, 6)]
    targets = [{"boxes": torch.zeros(0, 4), "keypoints": torch.zeros(0, 3, 3)}] * 2
    model = _Recorder("meta")
    collect_predictions(model, [(images, targets)])
    evaluate(model, [(images, targets)], SK)
    table = predict(model, images, SK, num_workers=0)
    assert len(model.seen) == 6 and {d.type for d in model.seen} == {"meta"}
    assert list(table.columns)[:3] == ["image_index", "image_name", "instance_id"]


def test_predict_streams_paths_in_order_through_workers(tmp_path):
    from PIL import Image

    paths = []
    for i, size in enumerate([(10, 8), (12, 9), (7, 7)]):
        paths.append(tmp_path / f"im{i}.png")
        Image.new("RGB", size, (i, i, i)).save(paths[-1])
    seen, batches = [], []

    class Boxes(_Recorder):
        def forward(self, images):
            seen.extend(tuple(im.shape) for im in images)
            out = super().forward(images)
            for o in out:  # one detection per image, at its own size
                o.update(
                    boxes=torch.tensor([[0.0, 0, 2, 2]]),
                    scores=torch.tensor([0.9]),
                    labels=torch.tensor([1]),
                    keypoints=torch.ones(1, 3, 3),
                    keypoints_scores=torch.ones(1, 3),
                )
            return out

    table = predict(
        Boxes("cpu"), paths, SK, "face", batch_size=2, num_workers=2, on_batch=batches.append
    )
    assert seen == [(3, 8, 10), (3, 9, 12), (3, 7, 7)] and batches == [2, 1]
    assert list(table["image_name"].unique()) == ["im0.png", "im1.png", "im2.png"]
    assert list(table["instance_id"].unique()) == [0, 1, 2] and set(table["label"]) == {"face"}


def test_predict_drops_low_scores_before_the_keypoint_head_and_restores_the_model():
    """The box head's own threshold is raised to predict's while it runs (detections under
    it never reach the keypoint head), then set back: evaluation keeps its 0.05."""
    seen = []

    class Heads(torch.nn.Module):
        score_thresh = 0.05

    class Thresholds(_Recorder):
        def __init__(self):
            super().__init__("cpu")
            self.roi_heads = Heads()

        def forward(self, images):
            seen.append(self.roi_heads.score_thresh)
            return super().forward(images)

    model = Thresholds()
    predict(model, [torch.zeros(3, 8, 8)], SK, score_threshold=0.5, num_workers=0)
    predict(model, [torch.zeros(3, 8, 8)], SK, score_threshold=0.01, num_workers=0)
    assert seen == [0.5, 0.05]  # never below the model's own
    assert model.roi_heads.score_thresh == 0.05


# -- ids kept end to end: predictions score against the export they were made for ---------
def _animals_export(path):
    """An AP-10K-like COCO file: several categories with one keypoint layout, category and
    image ids that are neither 1 nor contiguous; 2 dogs and a cat on 3 images."""
    rng = np.random.default_rng(0)
    names = ["a", "b", "c"]
    categories = [
        {"id": cid, "name": name, "keypoints": names, "skeleton": [[1, 2], [2, 3]]}
        for cid, name in [(4, "cat"), (9, "dog"), (12, "horse")]
    ]
    images = [
        {"id": iid, "file_name": f"{name}.jpg", "width": 320, "height": 240}
        for iid, name in [(101, "p"), (205, "q"), (330, "r")]
    ]
    anns = []
    for image_id, category_id in [(101, 9), (205, 4), (330, 9), (330, 9)]:
        x0, y0 = rng.uniform(10, 150, 2)
        xy = np.c_[rng.uniform(x0, x0 + 80, 3), rng.uniform(y0, y0 + 60, 3)].round(1)
        kps = np.c_[xy, np.full(3, 2)].reshape(-1).tolist()
        anns.append(
            {
                "id": 50 + len(anns),
                "image_id": image_id,
                "category_id": category_id,
                "bbox": [float(x0), float(y0), 80.0, 60.0],
                "area": 4800.0,
                "iscrowd": 0,
                "keypoints": kps,
                "num_keypoints": 3,
            }
        )
    doc = {"images": images, "annotations": anns, "categories": categories}
    path.write_text(json.dumps(doc))
    return path


def test_predictions_keep_the_exports_image_and_category_ids(tmp_path):
    """`kpnb predict --annotations`'s path: the dogs predicted exactly, in another image
    order than the file's, score AP 1.0 in pycocotools against the file itself."""
    from kpnb.cli.predict_command import _export_ids
    from kpnb.coco import read_coco
    from kpnb.evaluate import predictions_to_coco, write_predictions

    path = _animals_export(tmp_path / "person_keypoints_val.json")
    images = [tmp_path / "images" / name for name in ("r.jpg", "q.jpg", "p.jpg")]
    image_ids, category_id = _export_ids(path, images, None, "dog")
    assert image_ids == [330, 205, 101] and category_id == 9
    kp = read_coco(path).keypoints
    dogs = kp[kp["label"] == "dog"].copy()  # as predict returns them: image_index in `images`
    dogs["image_index"] = dogs["image_index"].map({0: 2, 1: 1, 2: 0})
    preds = dogs.assign(score=0.9, keypoint_score=1.0)
    sizes = [(320, 240)] * 3
    out = tmp_path / "preds.json"
    write_predictions(preds, images, sizes, SK, "dog", out, image_ids, category_id=category_id)
    assert {r["category_id"] for r in json.loads(out.read_text())} == {9}
    # the same results in memory, for a COCO.loadRes of your own
    assert predictions_to_coco(preds, image_ids, category_id) == json.loads(out.read_text())
    gt = COCO(str(path))
    ev = COCOeval(gt, gt.loadRes(str(out)), iouType="keypoints")
    ev.params.kpt_oks_sigmas = np.full(3, 0.05)
    ev.params.catIds = [9]
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    assert ev.stats[0] == pytest.approx(1.0)


def test_a_label_the_export_lacks_is_named(tmp_path):
    from kpnb.cli import cli_message
    from kpnb.cli.predict_command import _export_ids
    from kpnb.errors import KpnbError

    path = _animals_export(tmp_path / "kp.json")
    with pytest.raises(KpnbError, match="no label 'zebra'") as caught:
        _export_ids(path, [tmp_path / "p.jpg"], None, "zebra")
    assert caught.value.param == "label" and "set --label to" in cli_message(caught.value)


def test_a_cvat_exports_label_gets_the_id_convert_gives_it(tmp_path):
    """A CVAT export has no COCO ids: predictions take those `kpnb convert --to coco`
    writes (images 1..N, CVAT's rule for labels, sublabels counted), so both files agree."""
    from pathlib import Path

    from kpnb.cli.predict_command import _export_ids
    from kpnb.coco import to_coco
    from kpnb.cvat import read_cvat

    xml = Path(__file__).parent / "data/pitfalls_images.xml"
    image_ids, category_id = _export_ids(xml, [tmp_path / "c.jpg"], None, "tiny")
    doc = to_coco(read_cvat(xml))
    assert image_ids == [im["id"] for im in doc["images"] if im["file_name"] == "c.jpg"] == [3]
    assert category_id == {c["name"]: c["id"] for c in doc["categories"]}["tiny"] == 5
