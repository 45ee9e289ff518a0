"""Samples per second through the training pipeline: kpnb's dataset vs the seed's way.

Both run the same transforms (`kpnb.transforms.train_transforms` at 384 px) on the same
synthetic export, single process, one run, side by side. The naive dataset is written the
way the seed tutorial does it: a pandas ``.loc`` lookup per item and a PIL decode.
Goal: kpnb at least 1.5x.

    python benchmarks/bench_dataset.py [--images 200] [--epochs 3] [--size 384]
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
from kpnb.dataset import KeypointDataset, find_image, to_model_input
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


def throughput(ds, epochs: int) -> float:
    torch.manual_seed(0)
    random.seed(0)
    start = time.perf_counter()
    n = 0
    for _ in range(epochs):
        for i in range(len(ds)):
            ds[i]
            n += 1
    return n / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=200)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--size", type=int, default=384)
    args = ap.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        root = generate(Path(tmp) / "syn", args.images, seed=0)
        ann = read_cvat(root)
        pipeline = train_transforms(args.size, ann.skeletons["face"].flip_indices)
        ours = KeypointDataset(ann, root, "face", pipeline)
        naive = SeedStyleDataset(ann, root, pipeline)
        throughput(ours, 1), throughput(naive, 1)  # warm the page cache for both
        a = throughput(ours, args.epochs)
        b = throughput(naive, args.epochs)
    print(f"images {args.images}, {args.epochs} epochs, {args.size} px, 1 process, 1 thread")
    print(f"kpnb KeypointDataset     {a:8.1f} samples/s")
    print(f"seed-style (.loc + PIL)  {b:8.1f} samples/s")
    print(f"ratio                    {a / b:8.2f}x   (goal >= 1.5x)")


if __name__ == "__main__":
    main()
