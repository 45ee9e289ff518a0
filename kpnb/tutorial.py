"""Run the whole tutorial series in order and keep what it makes: ``python -m kpnb.tutorial``.

``make tutorial`` runs each ``notebooks/NN_*.ipynb`` in its own folder, as nbval does, into
``OUT`` (``KPNB_OUTPUTS``; datasets in ``OUT/data`` unless ``KPNB_CACHE`` is set), and writes
``OUT/run_record.json`` (`gather_record`). ``--record`` makes a full run the one the
repository shows: its notebooks, its record and the README's run table.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import logging
import math
import os
import platform
import re
import shutil
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
import torch
import torchvision

from kpnb.config import SMOKE, select_device, version
from kpnb.errors import KpnbError

REPO = Path(__file__).resolve().parents[1]
REPO_NOTEBOOKS = REPO / "notebooks"
#: What a full run writes beside its outputs, and where ``--record`` keeps it.
RECORD_NAME = "run_record.json"
#: What `run_card` writes into a training run's folder (gathered into the record).
CARD_NAME = "run_card.json"
#: The README's generated block: `update_readme` replaces what lies between these lines.
README_START = "<!-- run-record:start -->"
README_END = "<!-- run-record:end -->"
#: The training runs the record gathers: notebook -> its run folder under OUT/runs.
RUNS = {"04_finetune_keypoint_rcnn.ipynb": "face", "05_your_own_export.ipynb": "my_export"}
#: The metrics of notebook 04 the record keeps (from its ``metrics.json``).
RECORD_METRICS = tuple("AP AP50 PCK@0.1 PCK@0.05 mean_px_error matched_instances instances".split())


def run_series(
    notebooks: Path, out: Path, *, timeout: int | None = None
) -> list[tuple[str, float]]:
    """Execute every ``NN_*.ipynb`` in `notebooks` in order; return (name, seconds) pairs.
    No cell time limit by default: the training cells carry their own (``max_minutes``)."""
    import nbformat
    from nbclient import NotebookClient

    from kpnb.data import get_dataset

    out.mkdir(parents=True, exist_ok=True)
    os.environ["KPNB_OUTPUTS"] = str(out)
    os.environ.setdefault("KPNB_CACHE", str(out / "data"))  # datasets land beside the results
    print(f"synthetic dataset: {get_dataset('synthetic')}")  # the notebooks' data, made first
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


# -- what a training run says about itself (notebooks 04 and 05) ---------------------------


class WeightsNote:
    """Which weights `build_model` really started from, and why (see `noting_weights`)."""

    def __init__(self, asked):
        self.weights = "random" if asked is None else str(asked)
        self.why = "asked for (weights=None)" if asked is None else "asked for"
        self.messages: list[str] = []

    def __str__(self) -> str:
        return f"{self.weights} ({self.why})"


@contextmanager
def noting_weights(weights) -> Iterator[WeightsNote]:
    """Build a model inside this block to learn which weights it got, quietly:
    ``with noting_weights(WEIGHTS) as note: model = build_model(...)``. The offline warning
    of `build_model` goes into ``note.messages``, not the notebook; `run_card` states once
    which weights the model got (its build record's ``pretrained``)."""
    note, records = WeightsNote(weights), []
    logger = logging.getLogger("kpnb.model")
    keep = logging.Handler(logging.DEBUG)
    keep.emit = records.append
    propagate, level = logger.propagate, logger.level
    logger.addHandler(keep)
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    try:
        yield note
    finally:
        logger.removeHandler(keep)
        logger.propagate = propagate
        logger.setLevel(level)
    built = [r for r in records if hasattr(r, "kpnb_build")]
    note.messages = [r.getMessage() for r in records if not hasattr(r, "kpnb_build")]
    if built and not built[-1].kpnb_build["pretrained"] and weights is not None:
        note.weights, note.why = "random", built[-1].kpnb_why or "asked for"
    elif built and isinstance(weights, str) and weights.lower() == "coco":
        note.weights, note.why = "COCO", "torchvision's COCO person keypoints, fine-tuned"


def machine() -> dict:
    """Where this process trains: the device type and a readable name for the hardware."""
    device = select_device().type
    cpu = f"{device.upper()}, {torch.get_num_threads()} threads"
    return {"device": device, "machine": torch.cuda.get_device_name(0) if device == "cuda" else cpu}


def run_card(history: Sequence[dict], model, weights: WeightsNote, out_dir=None):
    """Where a training run ran, how long it took and from which weights, as a table; also
    written as ``run_card.json`` into `out_dir`, for the run record (`gather_record`)."""
    build = dict(getattr(model, "kpnb_build", {}) or {})
    seconds = sum(float(row.get("seconds", 0.0)) for row in history)
    card = {
        **machine(),
        "weights": weights.weights,
        "weights_why": weights.why,
        "preset": build.get("preset"),
        "size": build.get("size"),
        "epochs": len(history),
        "steps": int(sum(int(row.get("steps", 0)) for row in history)),
        "training_minutes": round(seconds / 60, 2),
        "smoke": SMOKE,
    }
    if out_dir is not None:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        (Path(out_dir) / CARD_NAME).write_text(json.dumps(card, indent=2) + "\n")
    shown = {k: v for k, v in {**card, "weights": str(weights)}.items() if k != "weights_why"}
    return pd.DataFrame({"value": [str(v) for v in shown.values()]}, index=list(shown))


# -- the run record -------------------------------------------------------------------------


def _read_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def gather_record(out: Path, timings: Sequence[tuple[str, float]]) -> dict:
    """The run record of a series run into `out`: see the module docstring."""
    cards = {name: _read_json(out / "runs" / folder / CARD_NAME) for name, folder in RUNS.items()}
    runs = {name: card for name, card in cards.items() if card is not None}
    metrics = _read_json(out / "runs" / RUNS["04_finetune_keypoint_rcnn.ipynb"] / "metrics.json")
    return {
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d"),
        "smoke": SMOKE,
        **machine(),
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "torchvision": torchvision.__version__,
            "kpnb": version(),
        },
        "seconds": {name: round(seconds, 1) for name, seconds in timings},
        "total_seconds": round(sum(s for _, s in timings), 1),
        "runs": runs,
        "metrics": {k: (metrics or {}).get("metrics", {}).get(k) for k in RECORD_METRICS},
    }


def duration(seconds: float) -> str:
    """Seconds as the README and the notebook intros say them: "38 s", "12.4 minutes"."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} minutes"


def _num(value, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return f"{value:.{digits}f}"


def render_run_table(record: dict) -> str:
    """The README's generated block (without its markers), made from a run record."""
    secs, runs, m = record["seconds"], record.get("runs", {}), record["metrics"]
    v = record["versions"]
    early = sum(s for name, s in secs.items() if name[:2] in ("00", "01", "02", "03"))
    lines = [
        f"Recorded by `python -m kpnb.tutorial --record` on {record['date']}: "
        f"{'' if record['device'] == 'cpu' else record['device'].upper() + ' '}"
        f"{record['machine']}, torch {v['torch']}, "
        f"torchvision {v['torchvision']}, kpnb {v['kpnb']}; full mode.",
        "",
        "| what | measured |",
        "|---|---|",
        f"| `make tutorial` (notebooks {min(secs)[:2]}-{max(secs)[:2]}) | "
        f"{duration(record['total_seconds'])} |",
        f"| notebooks 00-03 | {duration(early)} |",
    ]
    for name in sorted(secs):
        if name[:2] in ("00", "01", "02", "03"):
            continue
        run = runs.get(name)
        detail = duration(secs[name])
        if run:
            detail += (
                f": trained {run['epochs']} epoch{'' if run['epochs'] == 1 else 's'} "
                f"({run['steps']} steps, {run['training_minutes']:.1f} min) from {run['weights']} "
                f"weights, preset {run['preset']} at {run['size']} px"
            )
        lines.append(f"| notebook {name[:2]} | {detail} |")
    card = runs.get("04_finetune_keypoint_rcnn.ipynb", {})
    lines += [
        "",
        f"Notebook 04's model on its {m['instances']} validation objects "
        f"(`outputs/runs/face/metrics.json`): OKS AP {_num(m['AP'])}, AP50 {_num(m['AP50'])}, "
        f"PCK@0.1 {_num(m['PCK@0.1'])}, PCK@0.05 {_num(m['PCK@0.05'])}, mean error "
        f"{_num(m['mean_px_error'], 1)} px; {m['matched_instances']} of {m['instances']} "
        "objects matched.",
    ]
    if card.get("weights") == "random":
        lines.append(
            f"It trained from random weights ({card.get('weights_why')}); "
            "where COCO's weights can be downloaded (Colab), it fine-tunes them instead."
        )
    return "\n".join(lines) + "\n"


def update_readme(text: str, record: dict) -> str:
    """`text` (the README) with its marked block regenerated from `record`."""
    if text.count(README_START) != 1 or text.count(README_END) != 1:
        raise KpnbError(
            f"README.md: expected one {README_START} and one {README_END} line around the "
            "run table; put them back"
        )
    head, rest = text.split(README_START)
    _, tail = rest.split(README_END)
    return f"{head}{README_START}\n{render_run_table(record)}{README_END}{tail}"


#: A notebook intro's time claim, which `record_run` keeps equal to the measured time.
TIME_CLAIM = re.compile(r"about (\d+(?:\.\d+)?) minutes? on a 2-core CPU")


def _update_claim(path: Path, seconds: float) -> None:
    import nbformat

    nb = nbformat.read(path, as_version=4)
    minutes = seconds / 60
    rounded = f"{minutes:.0f}" if minutes >= 3 else f"{max(minutes, 0.1):.1f}"
    claim = f"about {rounded} minutes on a 2-core CPU"
    nb.cells[0].source = TIME_CLAIM.sub(claim, nb.cells[0].source)
    nbformat.write(nb, path)


def record_run(out: Path, repo: Path = REPO) -> dict:
    """Make the full run in `out` the one the repository shows (``--record``): its notebooks
    (on a CPU, their intro's time claim set to the measured time) and record go into
    ``repo/notebooks``, the README's run table is regenerated. Refuses a smoke or partial run.
    """
    record = _read_json(out / RECORD_NAME)
    if record is None:
        raise KpnbError(f"{out}: no {RECORD_NAME}; run `make tutorial` (full mode) first")
    if record.get("smoke"):
        raise KpnbError(
            f"{out / RECORD_NAME} is a smoke run (KPNB_SMOKE or CI was set): the repository "
            "shows full runs only; run `make tutorial` without KPNB_SMOKE/CI, then --record"
        )
    missing = [n for n in record["seconds"] if not (out / "notebooks" / n).is_file()]
    if missing or "04_finetune_keypoint_rcnn.ipynb" not in record.get("runs", {}):
        raise KpnbError(f"{out}: not a complete run (missing {missing or 'the run card'})")
    for name, seconds in record["seconds"].items():
        dest = repo / "notebooks" / name
        shutil.copyfile(out / "notebooks" / name, dest)
        if record["device"] == "cpu":
            _update_claim(dest, seconds)
    (repo / "notebooks" / RECORD_NAME).write_text(json.dumps(record, indent=2) + "\n")
    readme = repo / "README.md"
    readme.write_text(update_readme(readme.read_text(encoding="utf-8"), record), "utf-8")
    return record


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kpnb.tutorial", description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("outputs"), help="default: outputs")
    parser.add_argument("--notebooks", type=Path, default=REPO_NOTEBOOKS)
    parser.add_argument(
        "--record",
        action="store_true",
        help="do not run: make the full run already in --out the one the repository shows",
    )
    args = parser.parse_args(argv)
    out = args.out.resolve()
    if args.record:  # `record_run` refuses a smoke run's record
        try:
            record = record_run(out)
        except KpnbError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print(f"recorded the run of {record['date']} into {REPO_NOTEBOOKS} and README.md")
        return 0
    timings = run_series(args.notebooks, out)
    for name, seconds in timings:
        print(f"{name:40s} {seconds:7.1f} s")
    print(f"{'total':40s} {sum(s for _, s in timings):7.1f} s")
    record = gather_record(out, timings)
    (out / RECORD_NAME).write_text(json.dumps(record, indent=2) + "\n")
    print(f"notebook 04 on its validation images: {record['metrics']}")
    print(f"run record: {out / RECORD_NAME}; outputs are in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
