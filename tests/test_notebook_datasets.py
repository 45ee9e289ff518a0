"""Notebooks 00-03 run unchanged on the seed tutorial's layout, only `DATASET` switched.

The toy set (``cj-mills/cvat-keypoint-toy-dataset``) needs the network, so synthetic
exports of the same layout stand in: plain ``<points>``, one shape per keypoint label, one
object per image, no skeleton, no subsets; once with five labels (some cut off by the
frame), once with the toy set's single ``nose`` (no edges, no left/right pairs). Each
notebook runs in memory (nothing is written back) with its parameter cell's ``DATASET``
replaced by the export's path.
"""

import re
import shutil
from pathlib import Path

import pytest

from kpnb.cvat import read_cvat, write_cvat
from kpnb.synthetic import generate

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

FOLDER = Path(__file__).parents[1] / "notebooks"
# Each notebook once (about a minute of CPU in all): the layout-dependent branches of 02
# (heat maps) and 03 (flip pairs) on the one-keypoint export.
CASES = [
    ("00_setup", "five labels"),
    ("01_cvat_to_pandas", "five labels"),
    ("02_visualize", "nose only"),
    ("03_augment_and_dataset", "nose only"),
]


@pytest.fixture(scope="module")
def toy_layouts(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("toy")
    five = generate(folder / "toy export", 12, 5, layout="points")
    ann = read_cvat(five)
    ann.keypoints = ann.keypoints[ann.keypoints["keypoint"] == "nose"].reset_index(drop=True)
    ann.labels = ann.labels[ann.labels["name"] == "nose"]
    nose = folder / "nose only"
    shutil.copytree(five / "images", nose / "images")
    write_cvat(ann, nose / "annotations.xml")
    return {"five labels": five, "nose only": nose}


def _with_dataset(nb, dataset: Path):
    (params,) = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    source, n = re.subn(
        r"^DATASET = .*$", f"DATASET = {str(dataset)!r}", params.source, flags=re.MULTILINE
    )
    assert n == 1, f"the parameter cell sets DATASET once:\n{params.source}"
    params.source = source
    return nb


@pytest.mark.parametrize(("stem", "layout"), CASES)
def test_notebook_runs_on_the_toy_layout(stem, layout, toy_layouts, tmp_path, monkeypatch):
    monkeypatch.setenv("KPNB_SMOKE", "1")
    monkeypatch.setenv("KPNB_OUTPUTS", str(tmp_path / "outputs"))
    monkeypatch.setenv("KPNB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("MPLBACKEND", "agg")
    nb = _with_dataset(nbformat.read(FOLDER / f"{stem}.ipynb", as_version=4), toy_layouts[layout])
    client = nbclient.NotebookClient(
        nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(FOLDER)}}
    )
    client.execute()  # raises CellExecutionError, naming the cell, on the first error
    errors = [
        o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"
    ]
    assert not errors
    logs = "".join(
        o.get("text", "")
        for c in nb.cells
        if c.cell_type == "code"
        for o in c.outputs
        if o.get("name") == "stderr"
    )
    if "open_export(DATASET" in "".join(c.source for c in nb.cells):
        assert "became one instance of a skeleton 'object'" in logs
