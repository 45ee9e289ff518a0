"""Images per second and peak memory of `kpnb.evaluate.predict` over many small images.

Each count runs in its own process, so the peak resident memory (ru_maxrss) belongs to that
count alone: a streaming predict keeps it flat as the number of images grows (the old one
held every image as float32 before the first batch).

    python benchmarks/bench_predict.py [--images 100 1000] [--size 64] [--batch 8]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _one(folder: Path, n: int, size: int, batch: int) -> dict:
    import torch

    from kpnb.evaluate import predict
    from kpnb.model import build_model
    from kpnb.tables import Skeleton

    torch.manual_seed(0)
    model = build_model(5, weights=None, size=size)
    paths = sorted(folder.glob("*.jpg"))[:n]
    skeleton = Skeleton(tuple("abcde"))
    start = time.perf_counter()
    table = predict(model, paths, skeleton, batch_size=batch, score_threshold=0.0)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return {
        "images": n,
        "seconds": seconds,
        "images_per_s": n / seconds,
        "peak_rss_mb": peak,
        "rows": len(table),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, nargs="+", default=[100, 1000])
    ap.add_argument("--size", type=int, default=64, help="model size (CPU preset)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--_child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._child:
        print(json.dumps(_one(Path(args._child[0]), int(args._child[1]), args.size, args.batch)))
        return
    import numpy as np
    from PIL import Image

    with tempfile.TemporaryDirectory() as tmp:
        rng = np.random.default_rng(0)
        for i in range(max(args.images)):  # small photos of noise: decoding is real work
            pixels = rng.integers(0, 256, (96, 128, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(Path(tmp) / f"im_{i:05d}.jpg", quality=90)
        print(
            f"predict on {max(args.images)} 128x96 JPEGs, model at {args.size} px, "
            f"batch {args.batch}, default workers"
        )
        print(f"{'images':>7s} {'seconds':>8s} {'images/s':>9s} {'peak RSS MB':>12s}")
        for n in args.images:
            out = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--size",
                    str(args.size),
                    "--batch",
                    str(args.batch),
                    "--_child",
                    tmp,
                    str(n),
                ],
                check=True,
                capture_output=True,
                text=True,
            ).stdout
            r = json.loads(out.strip().splitlines()[-1])
            print(
                f"{r['images']:7d} {r['seconds']:8.1f} {r['images_per_s']:9.1f} "
                f"{r['peak_rss_mb']:12.0f}"
            )


if __name__ == "__main__":
    main()
