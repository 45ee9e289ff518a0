"""The notebooks run unchanged on other exports, only the parameter cell switched.

1. Notebooks 00-03 on the layout of Christian Mills' toy set
   (``cj-mills/cvat-keypoint-toy-dataset``, which needs the network), so synthetic exports
   of the same layout stand in: plain ``<points>``, one shape per keypoint label, one
object per image, no skeleton, no subsets; once with five labels (some cut off by the
frame), once with the toy set's single ``nose`` (no edges, no left/right pairs). Each
notebook runs in memory (nothing is written back) with its parameter cell's ``DATASET``
replaced by the export's path.
2. Notebooks 00-05 on two real third-party exports from ``tests/data``, with `DATASET` and
   `IMAGES_ROOT` set as a new user sets them: a CVAT task export (cvat-ai/datumaro's
   ``for_images/train.xml``: a legacy-layout skeleton with an outside point, plus
   multi-point shapes) whose images sit in a folder of their own, and a COCO keypoints file
   (CrowdPose, from mmpose: 14 keypoints, a person with ``num_keypoints: 0``) kept apart
   from its images. The images are not in the repositories, so grey JPEGs of the declared
   sizes stand in. Notebook 01 reads CVAT XML by hand: on the COCO file it must stop with
   its one-line message, nothing else.
"""

import re
import shutil
from pathlib import Path

import pytest

from kpnb.cvat import read_cvat, write_cvat
from kpnb.data import read_annotations
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


def _with_dataset(nb, dataset: Path, images_root: Path | None = None):
    (params,) = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    source = params.source
    for name, value in (("DATASET", str(dataset)), ("IMAGES_ROOT", images_root)):
        value = None if value is None else str(value)
        source, n = re.subn(rf"^{name} = .*$", f"{name} = {value!r}", source, flags=re.MULTILINE)
        assert n == 1, f"the parameter cell sets {name} once:\n{params.source}"
    params.source = source
    return nb


def _execute(nb, tmp_path, monkeypatch):
    monkeypatch.setenv("KPNB_SMOKE", "1")
    monkeypatch.setenv("KPNB_OUTPUTS", str(tmp_path / "outputs"))
    monkeypatch.setenv("KPNB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("MPLBACKEND", "agg")
    client = nbclient.NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(FOLDER)}}
    )
    client.execute()  # raises CellExecutionError, naming the cell, on the first error


@pytest.mark.parametrize(("stem", "layout"), CASES)
def test_notebook_runs_on_the_toy_layout(stem, layout, toy_layouts, tmp_path, monkeypatch):
    nb = _with_dataset(nbformat.read(FOLDER / f"{stem}.ipynb", as_version=4), toy_layouts[layout])
    _execute(nb, tmp_path, monkeypatch)
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


DATA = Path(__file__).parent / "data"
REAL = {
    "cvat, images apart": DATA / "conformance/cvat-ai-datumaro/tests/assets/cvat_dataset"
    "/for_images/train.xml",
    "coco keypoints": DATA / "real/open-mmlab-mmpose/tests/data/crowdpose/test_crowdpose.json",
}
#: Every notebook of the series, from the folder (a hand-kept list missed notebook 06).
SERIES = [path.stem for path in sorted(FOLDER.glob("[0-9][0-9]_*.ipynb"))]


@pytest.fixture(scope="module")
def real_exports(tmp_path_factory) -> dict[str, tuple[Path, Path]]:
    """Each real export copied alone into a folder, its images (grey JPEGs of the declared
    sizes) in a sibling folder of their own: ``{name: (annotation file, images folder)}``."""
    from PIL import Image

    out = {}
    for name, source in REAL.items():
        folder = tmp_path_factory.mktemp(name.split(",")[0])
        export = folder / "export" / source.name
        export.parent.mkdir()
        shutil.copyfile(source, export)
        images = folder / "pictures"
        for row in read_annotations(export).images.itertuples():
            path = images / str(row.name)
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (int(row.width), int(row.height)), (128, 128, 128)).save(path)
        out[name] = (export, images)
    return out


@pytest.mark.parametrize("export", list(REAL))
@pytest.mark.parametrize("stem", SERIES)
def test_notebook_runs_on_a_real_export(stem, export, real_exports, tmp_path, monkeypatch):
    dataset, images = real_exports[export]
    nb = _with_dataset(nbformat.read(FOLDER / f"{stem}.ipynb", as_version=4), dataset, images)
    if stem == "01_cvat_to_pandas" and export == "coco keypoints":
        with pytest.raises(nbclient.exceptions.CellExecutionError) as err:
            _execute(nb, tmp_path, monkeypatch)
        assert "KpnbError" in str(err.value)
        assert "is a COCO keypoints file, not CVAT XML" in str(err.value)
        assert "notebook 02" in str(err.value)
        return
    if stem == "06_label_faster_with_your_model":  # 2 images: nothing to hold out 60 from
        with pytest.raises(nbclient.exceptions.CellExecutionError) as err:
            _execute(nb, tmp_path, monkeypatch)
        assert "KpnbError" in str(err.value) and "n_labelled=60" in str(err.value)
        assert "N_LABELLED in notebook 06" in str(err.value)
        return
    _execute(nb, tmp_path, monkeypatch)
    errors = [
        o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"
    ]
    assert not errors
