"""Learning per minute on this machine: kpnb's presets side by side on the synthetic split.

Two parts, both in one run:

1. **Where the time goes.** For each preset, one CPU training step of a batch is broken
   down (data loading and augmentation, the model's resize/normalise transform, backbone
   and FPN, RPN, box head, keypoint head, the rest of the RoI heads with their losses,
   backward and optimizer step), then one validation pass and `predict`.
2. **What a budget buys.** Each preset trains from random weights for ``--minutes`` with
   its own recipe (`kpnb.model.PRESETS`: batch, learning rate, image size), then reports
   steps and epochs done, OKS AP, AP50, PCK@0.1, objects matched on the 40 validation
   images, `predict` images/s on them, and the size of ``best.pth``.

The reference row is a one-stage pose model (nano, from scratch, 2 threads) measured on the
same split, budget and scoring code (issue 26); its library is not a dependency of kpnb.

    python benchmarks/bench_train.py --minutes 12 [--presets fast cpu] [--size 192]
    python benchmarks/bench_train.py --predict runs/face/best.pth   # predict images/s only
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch

from kpnb.data import open_export
from kpnb.dataset import make_loaders
from kpnb.evaluate import evaluate, predict
from kpnb.model import PRESETS, build_model, training_recipe
from kpnb.train import TrainConfig, fit

#: Issue 26's measurement of a one-stage pose model (nano) in 12 minutes on this machine.
ONE_STAGE = {"AP": 0.62, "AP50": 0.84, "PCK@0.1": 0.94, "matched": "59-60/61", "img/s": "110-150"}

#: The model parts timed in a step, as (label, attribute path on KeypointRCNN).
PARTS = (
    ("transform", "transform"),
    ("backbone+FPN", "backbone"),
    ("RPN", "rpn"),
    ("box RoIAlign", "roi_heads.box_roi_pool"),
    ("box head", "roi_heads.box_head"),
    ("keypoint RoIAlign", "roi_heads.keypoint_roi_pool"),
    ("keypoint head", "roi_heads.keypoint_head"),
    ("keypoint predictor", "roi_heads.keypoint_predictor"),
    ("RoI heads (all)", "roi_heads"),
)


def _module(model, path: str):
    for name in path.split("."):
        model = getattr(model, name)
    return model


def _timed(model) -> dict[str, list[float]]:
    """Forward times of `PARTS`, recorded by hooks into the returned dict."""
    times: dict[str, list[float]] = defaultdict(list)
    for label, path in PARTS:
        module, start = _module(model, path), {}

        def pre(_m, _a, start=start):
            start["t"] = time.perf_counter()

        def post(_m, _a, _o, label=label, start=start):
            times[label].append(time.perf_counter() - start["t"])

        module.register_forward_pre_hook(pre)
        module.register_forward_hook(post)
    return times


def profile(preset: str, ann, root, label, steps: int, size: int | None) -> list[tuple[str, float]]:
    """Median seconds of each part of a training step, then a validation pass."""
    torch.manual_seed(0)
    k = ann.skeletons[label].num_keypoints
    model = build_model(k, weights=None, preset=preset, size=size)
    recipe, size = training_recipe(model), model.kpnb_build["size"]
    train, val = make_loaders(
        ann, root, label, size=size, batch_size=recipe["batch_size"], num_workers=0
    )
    times = _timed(model)
    opt = torch.optim.AdamW(model.parameters(), lr=recipe["lr"])
    rows: dict[str, list[float]] = defaultdict(list)
    batches = iter(train)
    for i in range(steps + 1):  # the first step warms up allocators and is not counted
        t0 = time.perf_counter()
        images, targets = next(batches)
        t1 = time.perf_counter()
        model.train()
        loss = sum(model(images, targets).values())
        t2 = time.perf_counter()
        opt.zero_grad()
        loss.backward()
        opt.step()
        t3 = time.perf_counter()
        if i:
            rows["data (load, augment)"].append(t1 - t0)
            rows["forward (all)"].append(t2 - t1)
            rows["backward + step"].append(t3 - t2)
    parts = {label: statistics.median(v[1 : steps + 1]) for label, v in times.items()}
    model.eval()
    t = time.perf_counter()
    evaluate(model, val, ann.skeletons[label])
    val_seconds = time.perf_counter() - t
    out = [(name, statistics.median(v)) for name, v in rows.items()]
    out[2:2] = [(f"  {name}", parts.get(name, 0.0)) for name, _ in PARTS]
    out.append(("step (total)", sum(statistics.median(v) for v in rows.values())))
    out.append((f"validation ({len(val.dataset)} images, random weights)", val_seconds))
    return out


def learn(preset: str, ann, root, label, minutes: float, size: int | None) -> dict:
    """Train `preset` from random weights for `minutes`; its scores, speed and size."""
    torch.manual_seed(0)
    skeleton = ann.skeletons[label]
    model = build_model(skeleton.num_keypoints, weights=None, preset=preset, size=size)
    recipe, size = training_recipe(model), model.kpnb_build["size"]
    train, val = make_loaders(ann, root, label, size=size, batch_size=recipe["batch_size"])
    curve = []
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        config = TrainConfig(epochs=None, size=size, max_minutes=minutes)
        history = fit(
            model,
            train,
            val,
            skeleton,
            config,
            out_dir=tmp,
            on_epoch_end=lambda row: curve.append(
                ((time.perf_counter() - start) / 60, row.get("AP"), row.get("PCK@0.1"))
            ),
        )
        ckpt_mb = (Path(tmp) / "best.pth").stat().st_size / 2**20
    result = evaluate(model, val, skeleton)
    paths = [item.path for item in val.dataset.items]
    predict(model, paths[:4], skeleton)  # warm-up
    t = time.perf_counter()
    predict(model, paths, skeleton, batch_size=8)
    per_second = len(paths) / (time.perf_counter() - t)
    m = result.metrics
    return {
        "preset": preset,
        "size": size,
        "batch": recipe["batch_size"],
        "lr": recipe["lr"],
        "params M": sum(p.numel() for p in model.parameters()) / 1e6,
        "steps": sum(row["steps"] for row in history),
        "epochs": len(history),
        "AP": m["AP"],
        "AP50": m["AP50"],
        "PCK@0.1": m["PCK@0.1"],
        "matched": f"{m['matched_instances']}/{m['instances']}",
        "img/s": per_second,
        "ckpt MB": ckpt_mb,
        "curve": curve,
    }


def predict_speed(checkpoint: Path, ann, root, label) -> None:
    """`predict` images/s of a trained checkpoint on the 40 validation images, by batch."""
    from kpnb.model import load_checkpoint_model

    model, ckpt = load_checkpoint_model(checkpoint, device="cpu")
    build = model.kpnb_build
    _, val = make_loaders(ann, root, label, size=build["size"], batch_size=8)
    paths = [item.path for item in val.dataset.items]
    skeleton = ckpt.skeleton
    print(f"\n== predict, {checkpoint} (preset {build['preset']}, {build['size']} px)")
    for batch in (1, 2, 8):
        predict(model, paths[:batch], skeleton, batch_size=batch)  # warm-up
        t = time.perf_counter()
        found = predict(model, paths, skeleton, batch_size=batch)
        seconds = time.perf_counter() - t
        print(
            f"batch {batch}: {len(paths) / seconds:5.1f} images/s "
            f"({found['instance_id'].nunique()} objects at score >= 0.5)"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=12.0, help="training budget per preset")
    ap.add_argument("--presets", nargs="+", default=["fast", "cpu"], choices=list(PRESETS))
    ap.add_argument("--images", type=int, default=200, help="synthetic images (160/40 split)")
    ap.add_argument("--steps", type=int, default=3, help="steps timed in the breakdown")
    ap.add_argument("--size", type=int, help="image size for every preset (default: its own)")
    ap.add_argument("--skip-profile", action="store_true")
    ap.add_argument(
        "--predict", type=Path, metavar="CKPT", help="only time predict with a trained best.pth"
    )
    args = ap.parse_args()
    logging.getLogger("kpnb").setLevel(logging.WARNING)
    root, ann, label = open_export("synthetic", n_images=args.images)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, synthetic {args.images}")
    if args.predict:
        predict_speed(args.predict, ann, root, label)
        return
    if not args.skip_profile:
        print(f"\n== where the time goes: one training step (median of {args.steps}), seconds")
        profiles = {p: profile(p, ann, root, label, args.steps, args.size) for p in args.presets}
        names = [name for name, _ in profiles[args.presets[0]]]
        print(f"{'part':44s}" + "".join(f"{p:>10s}" for p in args.presets))
        for i, name in enumerate(names):
            print(f"{name:44s}" + "".join(f"{profiles[p][i][1]:10.3f}" for p in args.presets))
    print(f"\n== what {args.minutes:g} minutes buy, from random weights, 40 validation images")
    cols = ["preset", "size", "batch", "lr", "params M", "steps", "epochs", "AP", "AP50"]
    cols += ["PCK@0.1", "matched", "img/s", "ckpt MB"]
    rows = [learn(p, ann, root, label, args.minutes, args.size) for p in args.presets]
    print(" ".join(f"{c:>9s}" for c in cols))
    for row in rows:
        cells = [
            f"{row[c]:9.3f}"
            if isinstance(row[c], float) and c in ("AP", "AP50", "PCK@0.1")
            else f"{row[c]:9.4g}"
            if isinstance(row[c], float)
            else f"{row[c]!s:>9s}"
            for c in cols
        ]
        print(" ".join(cells))
    ref = ONE_STAGE
    print(
        f"{'one-stage':>9s} (issue 26, 12 min): AP {ref['AP']}  AP50 {ref['AP50']}  "
        f"PCK@0.1 {ref['PCK@0.1']}  matched {ref['matched']}  {ref['img/s']} img/s"
    )
    print("\nlearning per minute (wall minutes: AP / PCK@0.1 after each epoch)")
    for row in rows:
        points = "  ".join(
            f"{t:.1f}: {ap_ or 0:.2f}/{pck or 0:.2f}" for t, ap_, pck in row["curve"]
        )
        print(f"{row['preset']:>9s}  {points}")
    best = max(rows, key=lambda r: r["AP"])
    print(
        f"\nbest AP: {best['preset']} {best['AP']:.3f} (goal >= 0.62), PCK@0.1 "
        f"{best['PCK@0.1']:.3f} (goal >= 0.94), matched {best['matched']} (goal >= 59/61), "
        f"{best['img/s']:.1f} img/s (goal >= 20)"
    )


if __name__ == "__main__":
    main()
