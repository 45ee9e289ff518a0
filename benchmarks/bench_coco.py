"""Instances per second through `kpnb.coco.to_coco` against a pandas ``groupby`` loop.

The baseline is an early writer's loop, kept here: a pandas ``groupby`` over instances
and one small numpy/pandas step per instance. `to_coco` is a plain loop over instances
on columns taken out once. Both write the same synthetic annotations (the 5-point face
skeleton of `kpnb.synthetic.synthesize`'s 200 images, tiled to `--copies` times as many
images), one run, side by side, and must produce the same annotations. Goal: at least
10,000 instances/s for kpnb.

    python benchmarks/bench_coco.py [--copies 50] [--repeats 3]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd

from kpnb.boxes import boxes_from_points
from kpnb.coco import to_coco
from kpnb.synthetic import synthesize
from kpnb.tables import Annotations, tidy_images, tidy_keypoints


def tiled(ann: Annotations, copies: int) -> Annotations:
    """`ann` repeated `copies` times as new images and instances (real-sized tables)."""
    n_img = len(ann.images)
    n_inst = int(ann.keypoints["instance_id"].max()) + 1
    images = pd.concat(
        [
            ann.images.assign(
                image_index=ann.images["image_index"] + c * n_img,
                image_id=ann.images["image_id"] + c * n_img,
            )
            for c in range(copies)
        ],
        ignore_index=True,
    )
    kp = pd.concat(
        [
            ann.keypoints.assign(
                image_index=ann.keypoints["image_index"] + c * n_img,
                instance_id=ann.keypoints["instance_id"] + c * n_inst,
            )
            for c in range(copies)
        ],
        ignore_index=True,
    )
    return Annotations(tidy_images(images), tidy_keypoints(kp), ann.skeletons, ann.labels)


def baseline_annotations(ann) -> list[dict]:
    """The old `to_coco` annotation loop (one groupby group per instance)."""
    kp = ann.keypoints
    cat_ids = {name: i + 1 for i, name in enumerate(ann.skeletons)}
    image_ids = {int(i): n + 1 for n, i in enumerate(ann.images["image_index"])}
    grouped = ann.grouped_boxes()
    sizes = {
        int(r.image_index): (float(r.width), float(r.height))
        for r in ann.images.itertuples(index=False)
    }
    annotations = []
    for _, rows in kp.groupby("instance_id", sort=False):
        first = rows.iloc[0]
        xy = rows[["x", "y"]].to_numpy(np.float64)
        v = rows["visibility"].to_numpy(int)
        key = (int(first["image_index"]), int(first["group_id"]))
        if first["group_id"] and key in grouped:
            x0, y0, x1, y1 = grouped[key]
        else:  # the box rule itself is kpnb's (it used to be the bare extent)
            x0, y0, x1, y1 = boxes_from_points(xy[None], v[None], *sizes[key[0]])[0]
        flat = []
        for (x, y), vis in zip(np.nan_to_num(xy), v, strict=True):
            flat += [round(float(x), 2), round(float(y), 2), int(vis)]
        bbox = [
            round(float(x0), 2),
            round(float(y0), 2),
            round(float(x1 - x0), 2),
            round(float(y1 - y0), 2),
        ]
        annotations.append(
            {
                "id": len(annotations) + 1,
                "image_id": image_ids[int(first["image_index"])],
                "category_id": cat_ids[str(first["label"])],
                "bbox": bbox,
                "keypoints": flat,
                "num_keypoints": int((v > 0).sum()),
            }
        )
    return annotations


def best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--copies", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    ann = tiled(synthesize(200, seed=0)[0], args.copies)
    n = ann.keypoints["instance_id"].nunique()
    new = to_coco(ann)["annotations"]
    old = baseline_annotations(ann)
    same = [{k: a[k] for k in ("image_id", "bbox", "keypoints", "num_keypoints")} for a in new]
    assert same == [
        {k: a[k] for k in ("image_id", "bbox", "keypoints", "num_keypoints")} for a in old
    ], "the writers disagree"
    t_new = best_of(lambda: to_coco(ann), args.repeats)
    t_old = best_of(lambda: baseline_annotations(ann), max(1, args.repeats - 2))
    print(f"{n} instances ({ann.skeletons[next(iter(ann.skeletons))].num_keypoints} keypoints)")
    print(f"  baseline (groupby loop): {n / t_old:10,.0f} instances/s  ({t_old:.2f} s)")
    print(f"  kpnb to_coco:            {n / t_new:10,.0f} instances/s  ({t_new:.2f} s)")
    print(
        f"  speed-up: {t_old / t_new:.1f}x; goal >= 10,000/s: "
        f"{'met' if n / t_new >= 10_000 else 'NOT met'}"
    )


if __name__ == "__main__":
    main()
