"""The notebook series' structure: badge, set-up cell, kernel, numbering, committed outputs."""

import json
import re
from pathlib import Path

import pytest

from kpnb.config import BRANCH, REPO, REPO_URL

NOTEBOOKS = sorted((Path(__file__).parents[1] / "notebooks").glob("*.ipynb"))
EXPECTED = [
    "00_setup",
    "01_cvat_to_pandas",
    "02_visualize",
    "03_augment_and_dataset",
    "04_finetune_keypoint_rcnn",
    "05_your_own_export",
    "06_label_faster_with_your_model",
]


def _load(path):
    return json.loads(path.read_text(encoding="utf-8"))


def _source(cell):
    return "".join(cell["source"])


def test_the_series_is_numbered_in_order():
    assert [p.stem for p in NOTEBOOKS] == EXPECTED
    for i, p in enumerate(NOTEBOOKS):
        assert re.fullmatch(rf"{i:02d}_[a-z0-9_]+", p.stem)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_title_badge_and_setup_cell(path):
    nb = _load(path)
    first, second = nb["cells"][0], nb["cells"][1]
    assert first["cell_type"] == "markdown" and _source(first).startswith("# ")
    badge = f"https://colab.research.google.com/github/{REPO}/blob/{BRANCH}/notebooks/{path.name}"
    assert f"]({badge})" in _source(first) and "colab-badge.svg" in _source(first)
    setup = _source(second)
    assert second["cell_type"] == "code" and '"google.colab" in sys.modules' in setup
    assert f"git+{REPO_URL}@{BRANCH}" in setup  # the one repository URL, from kpnb.config
    assert "setup_notebook" in setup


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_kernel_parameters_and_executed_outputs(path):
    nb = _load(path)
    assert nb["metadata"]["kernelspec"]["name"] == "python3"
    code = [c for c in nb["cells"] if c["cell_type"] == "code" and _source(c).strip()]
    assert (
        any("parameters" in c.get("metadata", {}).get("tags", []) for c in code)
        or path.stem == "00_setup"
    )
    assert all(c["execution_count"] is not None for c in code), "commit notebooks executed"
    counts = [c["execution_count"] for c in code]
    assert counts == sorted(counts), "cells were run out of order"
    errors = [o for c in code for o in c["outputs"] if o["output_type"] == "error"]
    assert not errors


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_cells_stay_short_and_few_outputs_are_ignored(path):
    code = [c for c in _load(path)["cells"] if c["cell_type"] == "code"]
    for c in code[1:]:  # the set-up cell is the same everywhere
        logic = [
            ln for ln in _source(c).splitlines() if ln.strip() and not ln.strip().startswith("#")
        ]
        assert len(logic) <= 15, f"a cell of {len(logic)} lines belongs in kpnb:\n{_source(c)}"
    with_output = [c for c in code if c["outputs"]]
    ignored = [c for c in with_output if "NBVAL_IGNORE_OUTPUT" in _source(c)]
    assert len(ignored) <= max(1, len(with_output) // 4)


NBVAL_MARKERS = {
    "# NBVAL_IGNORE_OUTPUT",
    "# NBVAL_SKIP",
    "# NBVAL_CHECK_OUTPUT",
    "# NBVAL_RAISES_EXCEPTION",
}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_nbval_markers_are_exact(path):
    """nbval reads a marker only when the line is exactly the marker: a reason goes on the
    next line, or the cell would be compared after all."""
    for cell in _load(path)["cells"]:
        for line in _source(cell).splitlines():
            if "NBVAL_" in line:
                assert line.strip() in NBVAL_MARKERS, f"{path.name}: {line!r} is not a marker"


def test_smoke_runs_write_apart_from_full_runs(tmp_path):
    """A full `make tutorial` leaves outputs/; a later smoke run must not meet those files."""
    import os
    import subprocess
    import sys

    code = "from kpnb.config import outputs_dir; print(outputs_dir())"
    env = {k: v for k, v in os.environ.items() if k not in ("KPNB_OUTPUTS", "CI")}
    where = {}
    for smoke in ("0", "1"):
        where[smoke] = subprocess.run(
            [sys.executable, "-c", code],
            cwd=tmp_path,
            text=True,
            env={**env, "KPNB_SMOKE": smoke},
            capture_output=True,
            check=True,
        ).stdout.strip()
    assert where["0"] == str(tmp_path.resolve() / "outputs")
    assert where["1"] == str(tmp_path.resolve() / "outputs" / "smoke")
