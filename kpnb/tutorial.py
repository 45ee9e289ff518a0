"""Run the whole tutorial series in order and keep what it makes: ``python -m kpnb.tutorial``.

This is the README's main job (``make tutorial``). Each notebook under ``notebooks/`` runs
top to bottom in its own folder, like nbval does; executed copies go to
``OUT/notebooks/`` and the notebooks themselves write figures, the checkpoint and metrics
under ``OUT`` (they read it from ``KPNB_OUTPUTS``); datasets are cached in ``OUT/data``
unless ``KPNB_CACHE`` says otherwise. The synthetic dataset is made first, so the job
also does something useful before any notebook exists.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

REPO_NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


def run_series(
    notebooks: Path, out: Path, *, timeout: int | None = None
) -> list[tuple[str, float]]:
    """Execute every ``NN_*.ipynb`` in `notebooks` in order; return (name, seconds) pairs.

    No cell has a time limit by default (`timeout` None): a slow machine takes longer but
    finishes, because the training cells carry their own time budget (``max_minutes``).
    """
    import nbformat
    from nbclient import NotebookClient

    from kpnb.data import get_dataset

    out.mkdir(parents=True, exist_ok=True)
    os.environ["KPNB_OUTPUTS"] = str(out)
    os.environ.setdefault("KPNB_CACHE", str(out / "data"))  # datasets land beside the results
    data = get_dataset("synthetic")  # what the notebooks use; made once, here, up front
    print(f"synthetic dataset: {data}")
    timings = []
    for path in sorted(notebooks.glob("[0-9][0-9]_*.ipynb")):
        start = time.perf_counter()
        nb = nbformat.read(path, as_version=4)
        client = NotebookClient(
            nb,
            timeout=timeout,
            kernel_name="python3",
            resources={"metadata": {"path": str(path.parent)}},
        )
        print(f"running {path.name} ...", flush=True)
        client.execute()
        dest = out / "notebooks" / path.name
        dest.parent.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, dest)
        seconds = time.perf_counter() - start
        timings.append((path.name, seconds))
        print(f"  done in {seconds:.0f} s -> {dest}", flush=True)
    return timings


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kpnb.tutorial", description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("outputs"), help="default: outputs")
    parser.add_argument("--notebooks", type=Path, default=REPO_NOTEBOOKS)
    args = parser.parse_args(argv)
    timings = run_series(args.notebooks, args.out.resolve())
    for name, seconds in timings:
        print(f"{name:40s} {seconds:7.1f} s")
    print(f"{'total':40s} {sum(s for _, s in timings):7.1f} s")
    metrics = args.out.resolve() / "runs" / "face" / "metrics.json"
    if metrics.is_file():  # notebook 04's validation metrics
        import json

        shown = {
            k: v
            for k, v in json.loads(metrics.read_text())["metrics"].items()
            if k in ("AP", "PCK@0.1", "instances")
        }
        print(f"notebook 04 on its validation images: {shown}")
    print(f"outputs are in {args.out.resolve()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
