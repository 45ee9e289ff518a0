"""OKS AP equals pycocotools' own numbers; PCK and pixel errors on hand-made cases."""

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from kpnb.evaluate import ImageResult, keypoint_metrics
from kpnb.tables import Skeleton

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
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": 1, "iscrowd": 0,
                         "bbox": [float(b[0]), float(b[1]), w, h], "area": w * h,
                         "keypoints": [float(v) for v in k.reshape(-1)],
                         "num_keypoints": int((k[:, 2] > 0).sum())})  # fmt: skip
        for b, s, k in zip(r.boxes, r.scores, r.keypoints, strict=True):
            dets.append({"image_id": i, "category_id": 1, "score": float(s),
                         "bbox": [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])],
                         "keypoints": [float(v) for v in k.reshape(-1)]})  # fmt: skip
    gt = COCO()
    gt.dataset = {"images": images, "annotations": anns,
                  "categories": [{"id": 1, "name": "x", "keypoints": ["a", "b", "c"]}]}  # fmt: skip
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
            assert np.isnan(ours[name])
        else:
            assert ours[name] == pytest.approx(value, abs=1e-12), name
    assert 0 < ours["AP"] < 1


def test_pck_counts_unmatched_instances_as_misses():
    boxes = np.array([[0, 0, 100, 100], [200, 200, 300, 300]], np.float32)
    kps = np.array([[[10, 10, 2], [50, 50, 2], [90, 90, 0]],
                    [[210, 210, 2], [250, 250, 2], [290, 290, 2]]], np.float32)  # fmt: skip
    pred = kps[:1].copy()
    pred[0, 0, :2] += [8, 0]  # 8 px off: inside 0.1 x 100, outside 0.05 x 100
    r = ImageResult(boxes, kps, boxes[:1], np.array([0.9]), pred)
    res = keypoint_metrics([r], SK)
    m = res.metrics
    assert m["PCK@0.1"] == pytest.approx(2 / 5) and m["PCK@0.05"] == pytest.approx(1 / 5)
    assert m["matched_instances"] == 1 and m["instances"] == 2
    assert res.per_keypoint.loc["a", "mean_px_error"] == pytest.approx(8)
    assert res.per_keypoint.loc["c", "labelled"] == 1 and res.per_keypoint.loc["c", "matched"] == 0


def test_no_predictions_and_bad_sigmas():
    gt = _gt(n_images=2)
    empty = [ImageResult(b, k, np.zeros((0, 4)), np.zeros(0), np.zeros((0, 3, 3))) for b, k in gt]
    m = keypoint_metrics(empty, SK).metrics
    assert m["AP"] == 0 and m["PCK@0.2"] == 0
    with pytest.raises(ValueError, match="2 sigmas for 3 keypoints"):
        keypoint_metrics(empty, SK, [0.1, 0.1])
