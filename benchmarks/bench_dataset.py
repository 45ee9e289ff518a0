"""Samples per second through the training pipeline: kpnb's dataset vs the seed's way.

Both run the same transforms (`kpnb.transforms.train_transforms` at 384 px) on the same
synthetic export, single process, one run, side by side. The naive dataset is written the
way the seed tutorial does it: a pandas ``.loc`` lookup per item and a PIL decode.
Goal: kpnb at least 1.5x.

    python benchmarks/bench_dataset.py [--images 200] [--epochs 5] [--size 384]
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision.transforms.v2 import functional as F

from kpnb.cvat import read_cvat
from kpnb.dataset import KeypointDataset, to_model_input
from kpnb.images import find_image
from kpnb.synthetic import generate
from kpnb.transforms import make_sample, train_transforms


class SeedStyleDataset(Dataset):
    """Per item: ``.loc`` rows out of the keypoints table, PIL open + convert, to tensor."""

    def __init__(self, ann, root: Path, transforms):
        self.root, self.transforms = root, transforms
        self.images = ann.images.set_index("image_index")
        self.keypoints = ann.keypoints.set_index("image_index").sort_index()
        self.keys = list(self.images.index)

    def __len__(self):
        return len(self.keys)

    def __getitem__(self, i):
        key = self.keys[i]
        info = self.images.loc[key]
        image = Image.open(find_image(self.root, info["name"], info["subset"])).convert("RGB")
        rows = self.keypoints.loc[[key]] if key in self.keypoints.index else self.keypoints.iloc[:0]
        n = rows["instance_id"].nunique()
        xy = rows[["x", "y"]].to_numpy(np.float32).reshape(n, 5, 2)
        vis = rows["visibility"].to_numpy(np.uint8).reshape(n, 5)
        lo = np.where(vis[..., None] > 0, xy, np.inf).min(axis=1)
        hi = np.where(vis[..., None] > 0, xy, -np.inf).max(axis=1)
        boxes = np.concatenate([lo - 2, hi + 2], axis=1).clip(
            0, [info["width"], info["height"]] * 2
        )
        sample = make_sample(F.pil_to_tensor(image), boxes, np.ones(n), np.nan_to_num(xy), vis)
        return to_model_input(*self.transforms(*sample), key)


def epoch_rate(ds, seed: int) -> float:
    torch.manual_seed(seed)
    random.seed(seed)
    start = time.perf_counter()
    for i in range(len(ds)):
        ds[i]
    return len(ds) / (time.perf_counter() - start)


def best_rates(a, b, epochs: int) -> tuple[float, float]:
    """Alternate epochs of `a` and `b` (so machine load hits both alike); best epoch each."""
    rates_a, rates_b = [], []
    for e in range(epochs):
        rates_a.append(epoch_rate(a, e))
        rates_b.append(epoch_rate(b, e))
    return max(rates_a), max(rates_b)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=200)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--size", type=int, default=384)
    args = ap.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        root = generate(Path(tmp) / "syn", args.images, seed=0)
        ann = read_cvat(root)
        pipeline = train_transforms(args.size, ann.skeletons["face"].flip_indices)
        ours = KeypointDataset(ann, root, "face", pipeline)
        naive = SeedStyleDataset(ann, root, pipeline)
        epoch_rate(ours, 0), epoch_rate(naive, 0)  # warm the page cache for both
        a, b = best_rates(ours, naive, args.epochs)
    print(
        f"images {args.images}, best of {args.epochs} alternating epochs each, {args.size} px, "
        "1 process, 1 thread"
    )
    print(f"kpnb KeypointDataset     {a:8.1f} samples/s")
    print(f"seed-style (.loc + PIL)  {b:8.1f} samples/s")
    print(f"ratio                    {a / b:8.2f}x   (goal >= 1.5x)")


if __name__ == "__main__":
    main()
