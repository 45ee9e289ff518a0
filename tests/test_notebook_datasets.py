"""Notebooks 00-03 run unchanged on the seed tutorial's layout, only `DATASET` switched.

The toy set (``cj-mills/cvat-keypoint-toy-dataset``) needs the network, so a synthetic
export of the same layout stands in: plain ``<points>``, one shape per keypoint label, one
object per image, no skeleton, no subsets. Each notebook runs in memory (nothing is
written back) with its parameter cell's ``DATASET`` replaced by the export's path.
"""

import re
from pathlib import Path

import pytest

from kpnb.synthetic import generate

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

FOLDER = Path(__file__).parents[1] / "notebooks"
NOTEBOOKS = ["00_setup", "01_cvat_to_pandas", "02_visualize", "03_augment_and_dataset"]


@pytest.fixture(scope="module")
def toy_layout(tmp_path_factory) -> Path:
    return generate(tmp_path_factory.mktemp("toy") / "toy export", 12, 5, layout="points")


def _with_dataset(nb, dataset: Path):
    (params,) = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    source, n = re.subn(r"^DATASET = .*$", f"DATASET = {str(dataset)!r}", params.source,
                        flags=re.MULTILINE)  # fmt: skip
    assert n == 1, f"the parameter cell sets DATASET once:\n{params.source}"
    params.source = source
    return nb


@pytest.mark.parametrize("stem", NOTEBOOKS)
def test_notebook_runs_on_the_toy_layout(stem, toy_layout, tmp_path, monkeypatch):
    monkeypatch.setenv("KPNB_SMOKE", "1")
    monkeypatch.setenv("KPNB_OUTPUTS", str(tmp_path / "outputs"))
    monkeypatch.setenv("KPNB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("MPLBACKEND", "agg")
    nb = _with_dataset(nbformat.read(FOLDER / f"{stem}.ipynb", as_version=4), toy_layout)
    client = nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                                     resources={"metadata": {"path": str(FOLDER)}})  # fmt: skip
    client.execute()  # raises CellExecutionError, naming the cell, on the first error
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs
              if o.output_type == "error"]  # fmt: skip
    assert not errors
    logs = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                   for o in c.outputs if o.get("name") == "stderr")  # fmt: skip
    if "open_export(DATASET" in "".join(c.source for c in nb.cells):
        assert "became one instance of a skeleton 'object'" in logs
