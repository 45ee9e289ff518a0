"""Honest keypoint metrics and predictions as tidy tables.

* OKS AP (AP, AP50, AP75, APm, APl) by pycocotools' ``COCOeval``, one sigma per keypoint
  (`default_sigmas`: COCO's for names like its 17 person points, else ``DEFAULT_SIGMA`` =
  0.05, between COCO's face, 0.025-0.035, and body points, 0.06-0.11; pass your own when you
  know how precisely each point can be placed). Ground truth without labelled points is
  ignored (``num_keypoints == 0``); OKS uses the file's ``area``.
* PCK@0.05/0.1/0.2: the share of labelled points whose matched prediction lies within
  alpha x the longer side of the ground-truth box (`match_instances`: box IoU >= 0.5);
  points of an unmatched instance are misses.
* Mean pixel error per keypoint over matched, labelled points.

Keypoint R-CNN does not learn visibility (always v=1): predictions carry a ``keypoint_score``.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset
from torchvision.ops import box_iou

from kpnb.errors import KpnbError
from kpnb.skeleton import Skeleton
from kpnb.tables import Annotations, tidy_images, tidy_keypoints

__all__ = [
    "DEFAULT_SIGMA",
    "COCO_SIGMAS",
    "default_sigmas",
    "EvalResult",
    "keypoint_metrics",
    "oks_ap",
    "match_instances",
    "evaluate",
    "predict",
    "collect_predictions",
    "predictions_to_annotations",
    "predictions_to_coco",
    "json_safe",
    "write_predictions",
]

DEFAULT_SIGMA = 0.05
PCK_THRESHOLDS = (0.05, 0.1, 0.2)
#: COCO's per-keypoint OKS sigmas (pycocotools), by person keypoint name, in COCO's order.
_COCO_PAIRS = {
    "eye": 0.025,
    "ear": 0.035,
    "shoulder": 0.079,
    "elbow": 0.072,
    "wrist": 0.062,
    "hip": 0.107,
    "knee": 0.087,
    "ankle": 0.089,
}
COCO_SIGMAS = {"nose": 0.026} | {
    f"{side}_{part}": sigma for part, sigma in _COCO_PAIRS.items() for side in ("left", "right")
}


def default_sigmas(names: Sequence[str]) -> list[float]:
    """COCO's sigma for keypoints named like COCO's 17 person points (any case and
    separators: ``Left_Eye``, ``L_Eye``), `DEFAULT_SIGMA` for names COCO lacks."""
    from kpnb.skeleton import normalise_name

    return [COCO_SIGMAS.get(normalise_name(n), DEFAULT_SIGMA) for n in names]


def json_safe(value):
    """`value` with NaN and infinities replaced by None (JSON null), recursively."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


@dataclass
class ImageResult:
    """Ground truth and predictions of one image, in the same pixel frame."""

    gt_boxes: np.ndarray  # [N, 4] xyxy
    gt_keypoints: np.ndarray  # [N, K, 3] x, y, v
    boxes: np.ndarray  # [M, 4]
    scores: np.ndarray  # [M]
    keypoints: np.ndarray  # [M, K, 3] x, y, keypoint score
    gt_area: np.ndarray | None = None  # [N] COCO's area for OKS; None: box w x h


@dataclass
class EvalResult:
    """``metrics`` (AP..., PCK@a, mean_px_error) and a ``per_keypoint`` table. A metric with
    nothing to measure (no ground truth in its range, no labelled or matched point) is None
    (JSON null), never 0."""

    metrics: dict
    per_keypoint: pd.DataFrame
    sigmas: list[float] = field(default_factory=list)

    def to_json(self, path: str | os.PathLike) -> Path:
        from kpnb.io import atomic_path

        records = self.per_keypoint.reset_index().to_dict(orient="records")
        doc = {"metrics": self.metrics, "sigmas": self.sigmas, "per_keypoint": records}
        with atomic_path(Path(path)) as tmp:
            tmp.write_text(json.dumps(json_safe(doc), indent=2, allow_nan=False))
        return Path(path)


def _xywh(b: np.ndarray) -> list[float]:
    return [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])]


def coco_dicts(results: Sequence[ImageResult]) -> tuple[dict, list[dict]]:
    """Ground truth as a COCO dict and predictions as a COCO results list (for COCOeval)."""
    images, anns, dets = [], [], []
    for i, r in enumerate(results, start=1):
        images.append({"id": i, "width": 0, "height": 0, "file_name": str(i)})
        areas = r.gt_area if r.gt_area is not None else [None] * len(r.gt_boxes)
        for box, kps, area in zip(r.gt_boxes, r.gt_keypoints, areas, strict=True):
            kps = np.nan_to_num(kps)
            xywh = _xywh(box)
            area = xywh[2] * xywh[3] if area is None or not np.isfinite(area) else float(area)
            # num_keypoints 0 (a box-only person): COCOeval keeps it as ignored ground truth
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": i,
                    "category_id": 1,
                    "bbox": xywh,
                    "area": area,
                    "iscrowd": 0,
                    "num_keypoints": int((kps[:, 2] > 0).sum()),
                    "keypoints": kps.reshape(-1).tolist(),
                }
            )
        for box, score, kps in zip(r.boxes, r.scores, r.keypoints, strict=True):
            flat = np.concatenate([kps[:, :2], np.ones((len(kps), 1))], axis=1)
            dets.append(
                {
                    "image_id": i,
                    "category_id": 1,
                    "bbox": _xywh(box),
                    "score": float(score),
                    "keypoints": flat.reshape(-1).tolist(),
                }
            )
    return {"images": images, "annotations": anns, "categories": [{"id": 1}]}, dets


def oks_ap(results: Sequence[ImageResult], sigmas: Sequence[float]) -> dict:
    """COCO OKS AP, AP50, AP75, APm, APl from pycocotools with per-keypoint `sigmas`: None
    where there is no ground truth to score (in an area range), 0.0 where nothing detected."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gt_dict, dets = coco_dicts(results)
    names = ["AP", "AP50", "AP75", "APm", "APl"]
    if not gt_dict["annotations"]:
        return dict.fromkeys(names, None)
    if not dets:  # 0 where there was ground truth to find, None (as COCOeval) where none
        areas = [a["area"] for a in gt_dict["annotations"] if a["num_keypoints"] > 0]
        ranges = [(0, 1e10)] * 3 + [(32**2, 96**2), (96**2, 1e10)]  # COCOeval's areaRng
        return {n: 0.0 if any(lo <= a <= hi for a in areas) else None
                for n, (lo, hi) in zip(names, ranges, strict=True)}  # fmt: skip
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints; a library must not
        gt = COCO()
        gt.dataset = gt_dict
        gt.createIndex()
        dt = gt.loadRes(dets)
        ev = COCOeval(gt, dt, iouType="keypoints")
        ev.params.kpt_oks_sigmas = np.asarray(sigmas, dtype=np.float64)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    # -1 means "no ground truth in that area range": report it as missing, not as a score.
    return {n: (float(v) if v >= 0 else None) for n, v in zip(names, ev.stats[:5], strict=True)}


def match_instances(r: ImageResult, iou_threshold: float = 0.5) -> list[int]:
    """For each ground-truth instance of `r`, the index into ``r.boxes`` of its prediction
    (-1: none). By descending score, each prediction goes to the free ground-truth instance
    its box overlaps most if their IoU is at least `iou_threshold`: a duplicate detection
    of a matched instance stays unmatched, as in COCO's matching."""
    match = [-1] * len(r.gt_boxes)
    if not len(r.gt_boxes) or not len(r.boxes):
        return match
    gt, boxes = (torch.as_tensor(b, dtype=torch.float64) for b in (r.gt_boxes, r.boxes))
    iou = box_iou(gt, boxes).nan_to_num(0.0).numpy()  # two empty boxes: 0, not NaN
    for p in np.argsort(-r.scores, kind="stable"):
        free = [g for g in range(len(match)) if match[g] < 0]
        if not free:
            break
        g = max(free, key=lambda g: iou[g, p])
        if iou[g, p] >= iou_threshold:
            match[g] = int(p)
    return match


def keypoint_metrics(
    results: Sequence[ImageResult], skeleton: Skeleton, sigmas: Sequence[float] | None = None
) -> EvalResult:
    """OKS AP, PCK@0.05/0.1/0.2 and mean pixel error (see the module docstring)."""
    k = skeleton.num_keypoints
    sigmas = default_sigmas(skeleton.keypoints) if sigmas is None else [float(s) for s in sigmas]
    if len(sigmas) != k:
        raise KpnbError(f"{len(sigmas)} sigmas for {k} keypoints {list(skeleton.keypoints)}")
    metrics = oks_ap(results, sigmas)
    dists, sizes, labelled = [], [], []  # per ground-truth instance; an unmatched one: inf
    for r in results:
        for g, p in enumerate(match_instances(r)):
            gt, box = r.gt_keypoints[g], r.gt_boxes[g]
            xy = r.keypoints[p, :, :2] if p >= 0 else np.full((k, 2), np.inf)
            dists.append(np.linalg.norm(xy - gt[:, :2], axis=1))
            sizes.append(max(box[2] - box[0], box[3] - box[1], 1e-6))
            labelled.append(gt[:, 2] > 0)
    d = np.array(dists).reshape(-1, k)
    s = np.array(sizes, dtype=np.float64).reshape(-1, 1)
    m = np.array(labelled, dtype=bool).reshape(-1, k)
    rows = {}
    for a in PCK_THRESHOLDS:
        hit = (d <= a * s) & m
        metrics[f"PCK@{a:g}"] = float(hit.sum() / m.sum()) if m.sum() else None
        rows[f"PCK@{a:g}"] = hit.sum(0) / np.maximum(m.sum(0), 1)
    found = m & np.isfinite(d)
    per_err = np.where(found, d, 0).sum(0) / np.maximum(found.sum(0), 1)
    metrics["mean_px_error"] = float(d[found].mean()) if found.any() else None
    metrics["matched_instances"] = int(np.isfinite(d).all(axis=1).sum()) if len(d) else 0
    metrics["instances"] = len(d)
    table = pd.DataFrame(
        {
            "labelled": m.sum(0),
            "matched": found.sum(0),
            "mean_px_error": np.where(found.sum(0) > 0, per_err, np.nan),
            **rows,
        },
        index=pd.Index(skeleton.keypoints, name="keypoint"),
    )
    return EvalResult(metrics, table, sigmas)


@torch.inference_mode()
def collect_predictions(
    model, loader, device: str | torch.device | None = None
) -> list[ImageResult]:
    """Run `model` over `loader` (images, targets) and keep both sides per image; images go
    to `device`, by default the model's."""
    model.eval()
    device = next(model.parameters()).device if device is None else torch.device(device)
    results = []
    for images, targets in loader:
        outputs = model([im.to(device, non_blocking=True) for im in images])
        for t, o in zip(targets, outputs, strict=True):
            keep = o["labels"] == 1
            o = {k: v[keep].detach().cpu().numpy() for k, v in o.items()}
            if len(o["keypoints"]):  # the keypoint score in place of the constant v=1
                o["keypoints"][..., 2] = o["keypoints_scores"]
            area = None if t.get("area") is None else t["area"].cpu().numpy()
            gt = (t["boxes"].cpu().numpy(), t["keypoints"].cpu().numpy())
            results.append(ImageResult(*gt, o["boxes"], o["scores"], o["keypoints"], area))
    return results


def evaluate(
    model,
    loader,
    skeleton: Skeleton,
    sigmas: Sequence[float] | None = None,
    device: str | torch.device | None = None,
) -> EvalResult:
    """`keypoint_metrics` of `model` on a validation loader (on the model's device)."""
    return keypoint_metrics(collect_predictions(model, loader, device), skeleton, sigmas)


class _Images(Dataset):
    """Images for `predict`, loaded one at a time (in DataLoader workers for paths)."""

    def __init__(self, images: Sequence):
        self.images = list(images)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, str]:
        from PIL import Image

        from kpnb.images import load_image

        im, name = self.images[i], f"image_{i:05d}"
        if isinstance(im, (str, os.PathLike)):
            name, im = Path(im).name, load_image(im)
        if isinstance(im, Image.Image):
            im = np.array(im.convert("RGB"))  # a copy: torch wants a writable array
        if isinstance(im, np.ndarray):
            im = torch.from_numpy(np.ascontiguousarray(im)).permute(2, 0, 1)
        return torch.as_tensor(im), name


@torch.inference_mode()
def predict(
    model,
    images: Sequence,
    skeleton: Skeleton,
    label: str = "object",
    *,
    score_threshold: float = 0.5,
    batch_size: int = 2,
    num_workers: int | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> pd.DataFrame:
    """Keypoints of every instance scoring at least `score_threshold`, as a tidy table in
    original image pixels: the keypoints table's columns (``visibility`` 2: the model does
    not predict it; `label` in ``label``, `skeleton`'s names in ``keypoint``) plus
    ``image_name``, ``score`` (the instance's) and ``keypoint_score``.

    `images` (paths, PIL images or ``[3, H, W]`` tensors, uint8 or float 0-1) stream through
    a DataLoader (`num_workers` workers for paths, default `kpnb.dataset.default_workers`)
    to the model's device, so memory does not grow with their number. A batch pads its
    images to one size, which moves predictions by up to a pixel or two; on a CPU
    `batch_size` 2 was fastest, 8 pads more (``bench_train.py --predict``). `on_batch` is
    called with each batch's image count (a progress bar).
    """
    from torch.utils.data import DataLoader

    from kpnb.dataset import collate_fn, default_workers

    model.eval()
    device = next(model.parameters()).device
    if num_workers is None:  # paths load in workers, images in memory in this process
        paths_only = all(isinstance(im, (str, os.PathLike)) for im in images)
        num_workers = default_workers() if paths_only else 0
    loader = DataLoader(
        _Images(images),
        batch_size=batch_size,
        num_workers=num_workers,
        collate_fn=collate_fn,
        pin_memory=device.type == "cuda",
    )
    image, names, kps, scores, kp_scores = [], [], [], [], []  # one entry per kept instance
    seen = 0
    with _box_threshold(model, score_threshold):
        for batch, batch_names in loader:
            batch = [t.to(device, non_blocking=True) for t in batch]
            found = model([t if t.is_floating_point() else t.float().div_(255) for t in batch])
            for name, out in zip(batch_names, found, strict=True):
                keep = out["scores"] >= score_threshold
                image += [seen] * int(keep.sum())
                names += [name] * int(keep.sum())
                kps += list(out["keypoints"][keep].float().cpu().numpy())
                scores += out["scores"][keep].float().cpu().tolist()
                kp_scores += list(out["keypoints_scores"][keep].float().cpu().numpy())
                seen += 1
            if on_batch is not None:
                on_batch(len(batch))
    n, k = len(scores), skeleton.num_keypoints
    xy = np.array(kps, dtype=float).reshape(n, k, 3)
    return pd.DataFrame(
        {
            "image_index": np.repeat(np.array(image, dtype=int), k),
            "image_name": np.repeat(np.array(names, dtype=object), k),
            "instance_id": np.repeat(np.arange(n), k),
            "label": label,
            "keypoint": np.tile(np.array(skeleton.keypoints), n),
            "point_index": np.tile(np.arange(k), n),
            "x": xy[..., 0].reshape(-1),
            "y": xy[..., 1].reshape(-1),
            "visibility": 2,
            "score": np.repeat(np.array(scores, dtype=float), k),
            "keypoint_score": np.array(kp_scores, dtype=float).reshape(-1),
        }
    )


@contextlib.contextmanager
def _box_threshold(model, score_threshold: float):
    """Raise the box head's score threshold to `predict`'s while it runs: the detections it
    drops anyway then skip the keypoint head (same result: NMS and the per-image cap rank
    by score). About a tenth faster on a CPU (``bench_train.py --predict``)."""
    heads = getattr(model, "roi_heads", None)
    before = getattr(heads, "score_thresh", None)
    if before is None:
        yield
        return
    heads.score_thresh = max(before, score_threshold)
    try:
        yield
    finally:
        heads.score_thresh = before


def predictions_to_annotations(
    preds: pd.DataFrame,
    names: Sequence[str],
    sizes: Sequence[tuple[int, int]],
    skeleton: Skeleton,
    label: str,
) -> Annotations:
    """`predict`'s table as `Annotations` for `kpnb.cvat.write_cvat` (CVAT imports the file as
    pre-annotations: ``source="auto"``, every point visible). `names` and `sizes`
    (``(width, height)``): each image's, in `predict`'s order."""
    images = pd.DataFrame(
        {
            "image_index": range(len(names)),
            "image_id": range(len(names)),
            "name": list(names),
            "width": [w for w, _ in sizes],
            "height": [h for _, h in sizes],
        }
    )
    kp = preds.drop(columns=["image_name", "score", "keypoint_score"]).assign(source="auto")
    labels = pd.DataFrame(
        [{"name": label, "type": "skeleton"}]
        + [{"name": k, "type": "points", "parent": label} for k in skeleton.keypoints]
    )
    return Annotations(tidy_images(images), tidy_keypoints(kp), {label: skeleton}, labels)


def predictions_to_coco(
    preds: pd.DataFrame, image_ids: Sequence[int] | None = None, category_id: int = 1
) -> list[dict]:
    """`predict`'s table as a COCO results list (what `COCO.loadRes` takes): `image_ids` are
    the annotation file's id of each image, in `predict`'s order (default 1..N), and
    `category_id` the predicted label's (`kpnb.coco.category_ids`)."""
    results = []
    for _, rows in preds.groupby("instance_id", sort=False):
        index = int(rows["image_index"].iloc[0])
        flat = rows[["x", "y", "keypoint_score"]].to_numpy().reshape(-1).round(3)
        results.append(
            {
                "image_id": int(image_ids[index]) if image_ids is not None else index + 1,
                "category_id": category_id,
                "keypoints": flat.tolist(),
                "score": float(rows["score"].iloc[0]),
            }
        )
    return results


def write_predictions(
    preds: pd.DataFrame,
    paths: Sequence,
    sizes: Sequence[tuple[int, int]],
    skeleton: Skeleton,
    label: str,
    out: str | os.PathLike,
    image_ids: Sequence[int] | None = None,
    category_id: int = 1,
) -> Path:
    """`predict`'s table to `out`: ``.json`` COCO results, scored against an annotation file
    by pycocotools when `image_ids` (each image's, in `predict`'s order; default 1..N) and
    `category_id` (`kpnb.coco.category_ids`) are the file's; else CVAT for images 1.1
    pre-annotations for CVAT's "Upload annotations" of an existing task: ``.xml``, or
    ``.zip`` holding ``annotations.xml`` (CVAT's loader takes either), each image named by
    its file name (CVAT matches it to the task's image of that path, else of that name)."""
    from kpnb.io import atomic_path, write_zip

    out = Path(out)
    if out.suffix.lower() == ".json":
        results = predictions_to_coco(preds, image_ids, category_id)
        with atomic_path(out) as tmp:
            tmp.write_text(json.dumps(results))
        return out
    from kpnb.cvat import write_cvat

    names = [Path(p).name for p in paths]
    ann = predictions_to_annotations(preds, names, sizes, skeleton, label)
    if out.suffix.lower() != ".zip":
        write_cvat(ann, out)
        return out
    from kpnb.cvat.write import iter_cvat_lines

    text = "".join(line + "\n" for line in iter_cvat_lines(ann))
    return write_zip(out, [("annotations.xml", text.encode("utf-8"))])
