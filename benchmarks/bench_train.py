"""Seconds per Keypoint R-CNN training step on the CPU: kpnb's CPU and tiny presets vs
torchvision's defaults, same batch of synthetic images, at 192, 256 and 384 px, side by side
in one run.

torchvision's defaults upscale every image to 640-800 px and sample 512 RoIs per image;
the CPU preset keeps the image size and samples 300 proposals and 32 RoIs per image; the
tiny preset (tests, smoke runs) also has a 2x128 keypoint head instead of 8x512.
Goal: the CPU preset at most 0.3x the default's time.

    python benchmarks/bench_train.py [--steps 3] [--batch 2]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from kpnb.cvat import read_cvat
from kpnb.dataset import KeypointDataset, collate_fn
from kpnb.model import build_model
from kpnb.synthetic import generate
from kpnb.transforms import eval_transforms


def seconds_per_step(model, images, targets, steps: int) -> float:
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    times = []
    for i in range(steps + 1):  # the first step warms up allocators and is not counted
        t = time.perf_counter()
        loss = sum(model(images, targets).values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        if i:
            times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--batch", type=int, default=2)
    args = ap.parse_args()
    print(
        f"torch threads {torch.get_num_threads()}, batch {args.batch}, "
        f"median of {args.steps} steps after one warm-up"
    )
    print(
        f"{'size':>5s} {'default s/step':>15s} {'cpu s/step':>11s} {'ratio':>7s} "
        f"{'tiny s/step':>12s} {'ratio':>7s}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        root = generate(Path(tmp) / "syn", 12, seed=0)
        ann = read_cvat(root)
        for size in (192, 256, 384):
            ds = KeypointDataset(ann, root, "face", eval_transforms(size))
            items = [ds[i] for i in range(len(ds)) if len(ds.items[i].boxes)][: args.batch]
            images, targets = (list(x) for x in collate_fn(items))
            torch.manual_seed(0)
            default = build_model(5, weights=None, preset=None)
            t_default = seconds_per_step(default, images, targets, args.steps)
            torch.manual_seed(0)
            preset = build_model(5, weights=None, preset="cpu", size=size)
            t_preset = seconds_per_step(preset, images, targets, args.steps)
            torch.manual_seed(0)
            tiny = build_model(5, weights=None, preset="tiny", size=size)
            t_tiny = seconds_per_step(tiny, images, targets, args.steps)
            print(
                f"{size:5d} {t_default:15.2f} {t_preset:11.2f} {t_preset / t_default:6.2f}x "
                f"{t_tiny:12.2f} {t_tiny / t_default:6.2f}x   (goal: cpu <= 0.3x)"
            )


if __name__ == "__main__":
    main()
