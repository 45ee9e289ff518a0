"""How fast and lean is `read_cvat`? Side by side, one run, on 20,000-image exports.

Two layouts, written with `kpnb.cvat.write_cvat` from random tables:
  points:   17 one-point <points> shapes per image (the seed tutorial's layout)
  skeleton: 1-3 instances of a 17-keypoint skeleton per image

For each it prints kpnb's time to finished tables; the floor: a bare pyexpat scan of the
same file with a no-op start handler (every element reaches Python once, as in any
callback reader); their ratio; kpnb's ratio to a scan with no handler at all ("no-handler");
and the ratio of the least any reader built on pyexpat callbacks can do ("least": keep each
``<points>``'s attributes and turn the coordinates into floats, nothing else: no ownership,
no lines, no checks, no tables), all timed in turns, round by round, in this one run; then
datumaro's CVAT import where it is installed, and kpnb's peak traced memory against the
file size. Goal: kpnb within 3.0x of the floor on both layouts, peak memory under 4x the
file size.

    python benchmarks/bench_parse.py [--images 20000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import gc
import pyexpat
import tempfile
import time
import tracemalloc
from operator import itemgetter
from pathlib import Path

import numpy as np
import pandas as pd

from kpnb.cvat import read_cvat, write_cvat
from kpnb.tables import Annotations, Skeleton, tidy_images, tidy_keypoints

NAMES = [f"kp_{i:02d}" for i in range(17)]


def make_tables(n_images: int, layout: str, seed: int = 0) -> Annotations:
    rng = np.random.default_rng(seed)
    if layout == "points":
        per_image = np.ones(n_images, int) * 17
    else:
        per_image = rng.integers(1, 4, n_images)
    n_inst = int(per_image.sum()) if layout == "skeleton" else n_images * 17
    image_of_inst = np.repeat(np.arange(n_images), per_image)
    k = 17 if layout == "skeleton" else 1
    n = n_inst * k
    inst = np.repeat(np.arange(n_inst), k)
    point = np.tile(np.arange(k), n_inst)
    names = np.array(NAMES, dtype=object)
    kp = pd.DataFrame(
        {
            "image_index": image_of_inst[inst],
            "instance_id": inst,
            "label": "body" if layout == "skeleton" else names[inst % 17],
            "keypoint": names[point] if layout == "skeleton" else names[inst % 17],
            "point_index": point,
            "x": rng.uniform(0, 1920, n).round(2),
            "y": rng.uniform(0, 1080, n).round(2),
            "occluded": rng.random(n) < 0.1,
            "outside": rng.random(n) < 0.05,
        }
    )
    images = pd.DataFrame(
        {
            "image_index": np.arange(n_images),
            "image_id": np.arange(n_images),
            "name": [f"frame/{i:06d}.jpg" for i in range(n_images)],
            "width": 1920,
            "height": 1080,
        }
    )
    skeletons = {}
    labels = pd.DataFrame({"name": NAMES, "type": "points"})
    if layout == "skeleton":
        skeletons = {"body": Skeleton(tuple(NAMES), tuple((i, i + 1) for i in range(16)))}
        labels = pd.DataFrame(
            [{"name": "body", "type": "skeleton"}]
            + [{"name": n, "type": "points", "parent": "body"} for n in NAMES]
        )
    return Annotations(tidy_images(images), tidy_keypoints(kp), skeletons, labels)


def bare_scan(path: Path, handler: bool = True) -> None:
    """The floor: expat reads every byte and calls a no-op for each element (`handler`),
    or builds nothing at all."""
    p = pyexpat.ParserCreate()
    if handler:
        p.StartElementHandler = lambda tag, attrs: None
    with open(path, "rb") as f:
        p.ParseFile(f)


def least_reader(path: Path) -> None:
    """The least a pyexpat-callback reader does: one Python call per element start and end
    (expat builds each element's attribute list), the ``<points>`` lists kept and, every
    1,024 of them at an ``</image>``, their attribute sets numbered and coordinates parsed."""
    p = pyexpat.ParserCreate()
    p.ordered_attributes = True
    p.buffer_text = True
    recs: list[list] = []
    ids: dict[tuple, int] = {}
    out: list[tuple] = []

    def flush() -> None:
        at = 2 * recs[0][::2].index("points") + 1
        keep = itemgetter(*(i for i in range(len(recs[0])) if i != at))
        sets = [ids.setdefault(c, len(ids)) for c in map(keep, recs)]
        coords = ";".join(map(itemgetter(at), recs)).replace(";", ",").split(",")
        out.append((np.array(sets), np.array(coords, np.float64)))
        recs.clear()

    def start(tag: str, attrs: list) -> None:
        if tag == "points":
            recs.append(attrs)

    def end(tag: str) -> None:
        if tag == "image" and len(recs) >= 1024:
            flush()

    p.StartElementHandler, p.EndElementHandler = start, end
    with open(path, "rb") as f:
        while data := f.read(1 << 16):
            p.Parse(data, False)
    p.Parse(b"", True)
    if recs:
        flush()


def datumaro_import(path: Path):
    try:
        import datumaro as dm  # noqa: F401
    except ImportError:
        return None
    return dm.Dataset.import_from(str(path.parent), "cvat")


def best_of(fn, repeat: int) -> float:
    return interleaved_best({"fn": fn}, repeat)["fn"]


def interleaved_best(fns: dict, repeat: int) -> dict[str, float]:
    """Best time of each function, taking turns round by round, so a slow spell of a shared
    machine hits all of them alike instead of one block of runs."""
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(repeat):
        for name, fn in fns.items():
            gc.collect()
            t = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - t)
    return best


def peak_memory(path: Path) -> int:
    gc.collect()
    tracemalloc.start()
    ann = read_cvat(path)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    del ann
    return peak


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=20000)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    print(
        f"{'layout':9s} {'points':>8s} {'file MB':>7s} {'floor s':>7s} {'kpnb s':>6s} "
        f"{'ratio':>6s} {'no-handler':>10s} {'least':>6s} {'datumaro s':>10s} {'peak MB':>7s} "
        f"{'peak/file':>9s}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        for layout in ("points", "skeleton"):
            path = write_cvat(
                make_tables(args.images, layout), Path(tmp) / layout / "annotations.xml"
            )
            size = path.stat().st_size
            times = interleaved_best(
                {
                    "floor": lambda p=path: bare_scan(p),
                    "bare": lambda p=path: bare_scan(p, handler=False),
                    "least": lambda p=path: least_reader(p),
                    "ours": lambda p=path: read_cvat(p),
                },
                args.repeat,
            )
            floor, least, ours, bare = times["floor"], times["least"], times["ours"], times["bare"]
            ann = read_cvat(path)
            try:
                dm_time = f"{best_of(lambda p=path: datumaro_import(p), 1):10.2f}"
                if datumaro_import(path) is None:
                    dm_time = f"{'n/a':>10s}"
            except Exception as exc:  # datumaro 1.x has no skeleton support
                dm_time = f"{'failed':>10s}"
                print(f"  datumaro failed on {layout}: {type(exc).__name__}: {exc}"[:200])
            peak = peak_memory(path)
            print(
                f"{layout:9s} {len(ann.keypoints):8d} {size / 1e6:7.1f} {floor:7.2f} {ours:6.2f} "
                f"{ours / floor:5.2f}x {ours / bare:9.2f}x {least / floor:5.2f}x {dm_time} "
                f"{peak / 1e6:7.1f} {peak / size:8.2f}x"
            )


if __name__ == "__main__":
    main()
