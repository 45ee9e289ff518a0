"""Every figure the prose quotes comes from the recorded run (notebooks/run_record.json).

The README's run table is generated from the record (`kpnb.tutorial.render_run_table`);
no metric or measured duration may appear in the README or in notebook markdown anywhere
else; and each notebook intro's "about N minutes on a 2-core CPU" agrees with the seconds
the record measured. `python -m kpnb.tutorial --record` keeps all three true after a run.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import nbformat
import pytest

from kpnb.errors import KpnbError
from kpnb.tutorial import (
    README_END,
    README_START,
    RECORD_METRICS,
    RECORD_NAME,
    TIME_CLAIM,
    record_run,
    render_run_table,
    update_readme,
)

ROOT = Path(__file__).parents[1]
FOLDER = ROOT / "notebooks"
README = ROOT / "README.md"
NOTEBOOKS = sorted(FOLDER.glob("[0-9][0-9]_*.ipynb"))
TRAINING = ("04_finetune_keypoint_rcnn.ipynb", "05_your_own_export.ipynb")


def _record() -> dict:
    return json.loads((FOLDER / RECORD_NAME).read_text())


def _markdown(path: Path) -> list[str]:
    nb = nbformat.read(path, as_version=4)
    return [c.source for c in nb.cells if c.cell_type == "markdown"]


#: What a figure of a run looks like in prose: a metric followed by its value, a pixel
#: error, a measured duration. Parameters ("a 16-minute budget"), thresholds ("OKS 0.50
#: to 0.95") and worked examples ("10 px on a 100 px face") are not figures of a run.
FIGURES = [
    re.compile(r"\b(?:OKS )?AP(?:50|75|m|l)?\s*(?:of|is|was|reads|reached|=|:|≈|~)?\s*0?\.\d+"),
    re.compile(r"PCK@0\.\d+\s*(?:of|is|was|reads|reached|=|:|≈|~)?\s*0?\.\d+"),
    re.compile(r"(?:mean|pixel|px) error\s*(?:of|is|was|=|:|≈|~)?\s*\d+(?:\.\d+)?\s*px"),
    re.compile(r"\d+(?:\.\d+)?\s*(?:min(?:utes?)?|s)\s*\(measured\)"),
    re.compile(r"\btook\s+\d+(?:\.\d+)?\s*(?:min|minutes|s)\b"),
    re.compile(r"\b\d+\s*min\s+\d+\s*s\b"),
]


def stray_figures(text: str) -> list[str]:
    """The figures of a run quoted in `text`."""
    return [m.group(0) for pattern in FIGURES for m in pattern.finditer(text)]


def _outside_block(text: str) -> str:
    head, rest = text.split(README_START)
    return head + rest.split(README_END)[1]


def claim_errors(intro: str, seconds: float, name: str) -> list[str]:
    """The intro's time claims that are more than 25% off the measured `seconds`."""
    bad = []
    for minutes in TIME_CLAIM.findall(intro):
        if abs(float(minutes) * 60 - seconds) > 0.25 * seconds:
            bad.append(f"{name} says about {minutes} minutes; the run took {seconds / 60:.1f}")
    return bad


def test_the_record_is_a_full_run_of_this_series():
    record = _record()
    assert record["smoke"] is False
    assert sorted(record["seconds"]) == [p.name for p in NOTEBOOKS]
    assert record["total_seconds"] == pytest.approx(sum(record["seconds"].values()), abs=1)
    assert set(record["metrics"]) == set(RECORD_METRICS)
    assert 0.0 <= record["metrics"]["AP"] <= 1.0 and record["metrics"]["instances"] > 0
    for name in TRAINING:
        card = record["runs"][name]
        assert card["smoke"] is False and card["steps"] > 0 and card["weights"]


def test_readme_run_table_is_generated_from_the_record():
    text = README.read_text(encoding="utf-8")
    assert update_readme(text, _record()) == text, "run `python -m kpnb.tutorial --record`"
    block = text.split(README_START)[1].split(README_END)[0]
    assert f"OKS AP {_record()['metrics']['AP']:.2f}" in block


def test_no_figure_of_the_run_outside_the_generated_block():
    found = {"README.md": stray_figures(_outside_block(README.read_text(encoding="utf-8")))}
    for path in NOTEBOOKS:
        found[path.name] = [f for text in _markdown(path) for f in stray_figures(text)]
    assert {k: v for k, v in found.items() if v} == {}


def test_the_figure_check_catches_quoted_numbers_and_passes_explanations():
    for stale in (
        "reached PCK@0.1 0.78",
        "OKS AP 0.43 on its validation images",
        "AP of 0.5",
        "a mean error of 2.2 px",
        "took 12.4 minutes",
        "| notebook 04 | 18 minutes (measured) |",
        "took 21 min 27 s",
    ):
        assert stray_figures(stale), stale
    for fine in (
        "PCK@0.1 on a face 100 px across means within 10 px",
        "AP averages precision over the OKS thresholds 0.50, 0.55, ..., 0.95",
        "a 16-minute training budget",
        "an error of 10 px on a face 100 px across",
    ):
        assert stray_figures(fine) == [], fine
    readme = f"x\n{README_START}\nAP 0.43\n{README_END}\nAP 0.44\n"
    assert stray_figures(_outside_block(readme)) == ["AP 0.44"]


@pytest.mark.parametrize("name", TRAINING)
def test_time_claims_agree_with_the_record(name):
    intro = _markdown(FOLDER / name)[0]
    assert TIME_CLAIM.search(intro), f"{name}: the intro says how long it takes on a CPU"
    assert claim_errors(intro, _record()["seconds"][name], name) == []


def test_the_time_check_can_fail():
    intro = "**Time.** In full mode, about 18 minutes on a 2-core CPU."
    assert claim_errors(intro, 18 * 60, "x") == []
    assert claim_errors(intro, 12 * 60, "x") and claim_errors(intro, 25 * 60, "x")


def _fake_run(out: Path, *, smoke: bool) -> dict:
    (out / "notebooks").mkdir(parents=True)
    record = json.loads((FOLDER / RECORD_NAME).read_text())
    record["smoke"] = smoke
    record["device"] = "cpu"
    record["seconds"] = {"04_finetune_keypoint_rcnn.ipynb": 600.0}
    record["total_seconds"] = 600.0
    record["metrics"]["AP"] = 0.123
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("# 04\n\n**Time.** about 99 minutes on a 2-core CPU")]
    nbformat.write(nb, out / "notebooks" / "04_finetune_keypoint_rcnn.ipynb")
    (out / RECORD_NAME).write_text(json.dumps(record))
    return record


def test_record_copies_the_run_into_the_repository(tmp_path):
    out, repo = tmp_path / "out", tmp_path / "repo"
    _fake_run(out, smoke=False)
    (repo / "notebooks").mkdir(parents=True)
    (repo / "README.md").write_text(f"# kpnb\n{README_START}\nold\n{README_END}\nrest\n")
    record = record_run(out, repo)
    readme = (repo / "README.md").read_text()
    assert "OKS AP 0.12" in readme and "old" not in readme and readme.endswith("rest\n")
    assert readme.split(README_START)[1].split(README_END)[0].strip() == (
        render_run_table(record).strip()
    )
    assert json.loads((repo / "notebooks" / RECORD_NAME).read_text())["metrics"]["AP"] == 0.123
    intro = _markdown(repo / "notebooks" / "04_finetune_keypoint_rcnn.ipynb")[0]
    assert "about 10 minutes on a 2-core CPU" in intro


def test_record_refuses_a_smoke_run_and_a_missing_one(tmp_path):
    with pytest.raises(KpnbError, match="make tutorial"):
        record_run(tmp_path / "nothing", tmp_path)
    _fake_run(tmp_path / "out", smoke=True)
    with pytest.raises(KpnbError, match="smoke run"):
        record_run(tmp_path / "out", tmp_path)


def test_readme_needs_its_markers():
    with pytest.raises(KpnbError, match="run-record:start"):
        update_readme("# kpnb without a run table\n", _record())


@pytest.mark.parametrize("name", TRAINING)
def test_run_dependent_cells_are_tagged_not_commented(name):
    nb = nbformat.read(FOLDER / name, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    tagged = [c for c in code if "nbval-ignore-output" in c.metadata.get("tags", [])]
    assert not any("NBVAL_IGNORE_OUTPUT" in c.source for c in code)
    assert any("run_card(" in c.source for c in tagged), "the run card depends on the run"
    assert any("history = fit(" in c.source for c in tagged), "fit shows a live progress bar"
    with_output = [c for c in code if c.outputs]
    assert len(tagged) <= max(1, len(with_output) // 3)


def test_noting_weights_reads_the_models_pretrained_field_and_keeps_the_warning(
    caplog, tmp_path, monkeypatch
):
    import logging

    from kpnb import model as kmodel
    from kpnb.tutorial import noting_weights

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(kmodel, "COCO_URL", "http://127.0.0.1:9/keypointrcnn-fc266e95.pth")
    build = {"weights": "coco", "allow_random": True, "preset": "tiny", "size": 64}
    with caplog.at_level(logging.INFO, logger="kpnb"):
        with noting_weights("coco") as note:
            model = kmodel.build_model(2, **build)
    assert model.kpnb_build["pretrained"] is False
    assert "could not be downloaded" not in caplog.text  # kept, not printed
    assert any("could not be downloaded" in m for m in note.messages)
    assert note.weights == "random" and note.why.startswith("COCO weights could not be")
    with noting_weights(None) as note:
        kmodel.build_model(2, weights=None, preset="tiny", size=64)
    assert note.weights == "random" and "weights=None" in note.why
    # a model with pretrained weights (a kpnb checkpoint's, here): not "random"
    from kpnb.checkpoint import Checkpoint
    from kpnb.skeleton import Skeleton

    path = Checkpoint.of_model(model, Skeleton(("a", "b"))).save(tmp_path / "w.pth")
    with noting_weights(str(path)) as note:
        tuned = kmodel.build_model(2, weights=path, preset="tiny", size=64)
    assert tuned.kpnb_build["pretrained"] is True and note.weights == str(path)


def test_run_card_and_gather_record(tmp_path):
    import torch

    from kpnb.tutorial import WeightsNote, gather_record, run_card

    model = torch.nn.Linear(1, 1)
    model.kpnb_build = {"preset": "cpu", "size": 192}
    history = [{"steps": 10, "seconds": 60.0}, {"steps": 10, "seconds": 90.0}]
    table = run_card(history, model, WeightsNote("x.pth"), out_dir=tmp_path / "runs" / "face")
    assert table.loc["steps", "value"] == "20" and table.loc["preset", "value"] == "cpu"
    metrics = {"metrics": {"AP": 0.5, "PCK@0.1": 0.9, "instances": 3, "APm": None}}
    (tmp_path / "runs" / "face" / "metrics.json").write_text(json.dumps(metrics))
    record = gather_record(tmp_path, [("00_setup.ipynb", 30.04), ("04_x.ipynb", 600.0)])
    card = record["runs"]["04_finetune_keypoint_rcnn.ipynb"]
    assert card["training_minutes"] == 2.5 and card["epochs"] == 2 and card["weights"] == "x.pth"
    assert record["metrics"]["AP"] == 0.5 and record["metrics"]["AP50"] is None
    assert record["seconds"] == {"00_setup.ipynb": 30.0, "04_x.ipynb": 600.0}
    assert record["total_seconds"] == 630.0
