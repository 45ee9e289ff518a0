"""fit: safe checkpoints, history, resume after a kill, the time budget, torchrun with 2 CPU
processes, the CLI end to end (all on tiny exports at 64 px: they test plumbing), and one
overfit run that proves the model learns."""

import dataclasses
import json
import logging
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from torch.utils.data import DataLoader, Subset

from kpnb import dataset as kdataset
from kpnb import train as ktrain
from kpnb.checkpoint import Checkpoint
from kpnb.cli import main
from kpnb.cvat import read_cvat
from kpnb.dataset import KeypointDataset, collate_fn, split_indices
from kpnb.errors import KpnbError
from kpnb.io import OutputExistsError
from kpnb.model import build_model, load_checkpoint_model, training_recipe
from kpnb.train import OneCycle, TrainConfig, fit
from kpnb.transforms import eval_transforms

SIZE = 64


@pytest.fixture(scope="module")
def tiny(synthetic_export):
    ann = read_cvat(synthetic_export)
    ds = KeypointDataset(ann, synthetic_export, "face", eval_transforms(SIZE))
    train = DataLoader(Subset(ds, range(4)), batch_size=2, collate_fn=collate_fn)
    val = DataLoader(Subset(ds, range(4, 6)), batch_size=2, collate_fn=collate_fn)
    return ann.skeletons["face"], train, val


def _model():
    torch.manual_seed(0)
    return build_model(5, weights=None, size=SIZE, preset="tiny")  # plumbing, not accuracy


def _no_nan(text):
    return json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} in JSON"))


def _first_of(epochs: int, model, train, val, skeleton, out: Path, **kwargs) -> list[dict]:
    """The history of a `fit` of `epochs` epochs into `out`, killed after its first."""
    with pytest.raises(KeyboardInterrupt):
        config = TrainConfig(epochs=epochs, size=SIZE)
        fit(model, train, val, skeleton, config, out_dir=out, on_epoch_end=_killed, **kwargs)
    return json.loads((out / "history.json").read_text())


def test_fit_writes_safe_checkpoints_and_history_and_resumes(tiny, tmp_path, caplog):
    skeleton, train, val = tiny
    model = _model()
    with caplog.at_level(logging.INFO, logger="kpnb.train"):
        history = _first_of(2, model, train, val, skeleton, tmp_path)
    assert [h["epoch"] for h in history] == [0]
    assert {"loss", "loss_keypoint", "AP", "PCK@0.1", "mean_px_error", "lr"} <= set(history[0])
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("epoch ")]
    assert len(lines) == 1 and "loss" in lines[0] and "PCK@0.1" in lines[0] and " s" in lines[0]
    # both load with weights_only=True; best.pth is the model alone, about the weights' size
    best = torch.load(tmp_path / "best.pth", weights_only=True)
    last = Checkpoint.load(tmp_path / "last.pth", resume=True)
    assert best["resume"] is None and best["skeleton"] == skeleton.to_dict()
    assert set(last.resume) == {"optimizer", "lr_scheduler", "scaler", "rng"}
    weights = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    assert (tmp_path / "best.pth").stat().st_size < 1.05 * weights
    # what the run trained on: the loaders' label and images, by id
    assert last.label == "face" and last.data.seed == 0
    assert last.data.train == [item.image_id for item in train.dataset.dataset.items[:4]]
    assert last.data.val == [item.image_id for item in val.dataset.dataset.items[4:6]]
    # the checkpoint rebuilds exactly the trained model
    rebuilt, ckpt = load_checkpoint_model(tmp_path / "best.pth")
    assert ckpt.skeleton == skeleton and rebuilt.kpnb_build == model.kpnb_build
    images = next(iter(val))[0]
    model.eval()
    with torch.inference_mode():
        a, b = model(list(images)), rebuilt(list(images))
    assert all(torch.equal(x["boxes"], y["boxes"]) for x, y in zip(a, b, strict=True))
    assert len(pd.read_csv(tmp_path / "history.csv")) == 1
    assert _no_nan((tmp_path / "history.json").read_text())[0]["epoch"] == 0
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    cfg = TrainConfig(epochs=2, size=SIZE)
    resumed = fit(
        _model(), train, val, skeleton, cfg, out_dir=tmp_path, resume=tmp_path / "last.pth"
    )
    assert [h["epoch"] for h in resumed] == [0, 1]


def test_a_kill_while_best_is_written_leaves_no_last_that_claims_it(tiny, tmp_path, monkeypatch):
    skeleton, train, val = tiny
    real_save = torch.save

    def killed(obj, f, *a, **k):
        if os.path.basename(f).startswith(".best.pth."):
            raise KeyboardInterrupt  # the process dies mid-write
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(ktrain.torch, "save", killed)
    with pytest.raises(KeyboardInterrupt):
        fit(_model(), train, val, skeleton, TrainConfig(epochs=1, size=SIZE), out_dir=tmp_path)
    assert not (tmp_path / "last.pth").exists()  # no epoch counts as done without its best.pth


def test_resume_after_a_kill_writes_best_again_and_cleans_leftovers(tiny, tmp_path):
    skeleton, train, val = tiny
    _first_of(2, _model(), train, val, skeleton, tmp_path)
    # what a SIGKILL while best.pth is replaced can leave: no best.pth, a big temp file
    (tmp_path / "best.pth").unlink()
    leftover = tmp_path / ".best.pth.k1ll3d.tmp"
    leftover.write_bytes(b"\0" * 1000)
    mine = [tmp_path / "notes.tmp", tmp_path / ".data.csv.x.tmp"]  # not kpnb's: they stay
    for p in mine:
        p.write_text("user file")
    fit(
        _model(),
        train,
        val,
        skeleton,
        TrainConfig(epochs=2, size=SIZE),
        out_dir=tmp_path,
        resume=tmp_path / "last.pth",
    )
    model, ckpt = load_checkpoint_model(tmp_path / "best.pth")
    assert ckpt.epoch == 1 and not leftover.exists() and all(p.exists() for p in mine)


def test_fit_refuses_a_folder_with_files_it_did_not_make(tiny, tmp_path):
    skeleton, train, val = tiny
    (tmp_path / "best.pth").write_bytes(b"my weights")
    (tmp_path / "notes.txt").write_text("my notes")
    with pytest.raises(OutputExistsError, match="the folder is not empty"):
        fit(_model(), train, val, skeleton, TrainConfig(epochs=1, size=SIZE), out_dir=tmp_path)
    assert (tmp_path / "best.pth").read_bytes() == b"my weights"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pth", "notes.txt"]
    fit(
        _model(),
        train,
        val,
        skeleton,
        TrainConfig(epochs=1, size=SIZE),
        out_dir=tmp_path,
        overwrite=True,
    )
    load_checkpoint_model(tmp_path / "best.pth")  # kpnb's now; the user's other file stays
    assert (tmp_path / "notes.txt").read_text() == "my notes"
    (tmp_path / "history.csv").unlink()
    (tmp_path / "history.csv").mkdir()  # a folder where a run file goes: refused up front
    with pytest.raises(OutputExistsError, match="history.csv: is a folder"):
        fit(_model(), train, val, skeleton, TrainConfig(epochs=1), out_dir=tmp_path, overwrite=True)


def test_best_is_written_when_validation_has_nothing_to_measure(
    tiny, synthetic_export, tmp_path, caplog
):
    """No ground truth in validation: AP is None, and best.pth still comes from epoch 1,
    then from the epoch with the lowest training loss, also across a resume."""
    skeleton, train, _ = tiny
    ann = read_cvat(synthetic_export)
    ds = KeypointDataset(ann, synthetic_export, "face", eval_transforms(SIZE))
    empty = [i for i, item in enumerate(ds.items) if not len(item.boxes)][:2]
    assert len(empty) == 2
    val = DataLoader(Subset(ds, empty), batch_size=2, collate_fn=collate_fn)
    with caplog.at_level(logging.INFO, logger="kpnb.train"):
        history = _first_of(3, _model(), train, val, skeleton, tmp_path)
    assert history[0]["AP"] is None and "lowest training loss" in caplog.text
    _, ckpt = load_checkpoint_model(tmp_path / "best.pth")
    assert ckpt.epoch == 0
    last = torch.load(tmp_path / "last.pth", weights_only=True)
    assert last["best"] == [0, -history[0]["loss"]]
    resumed = fit(
        _model(),
        train,
        val,
        skeleton,
        TrainConfig(epochs=3, size=SIZE),
        out_dir=tmp_path,
        resume=tmp_path / "last.pth",
    )
    losses = [row["loss"] for row in resumed]
    _, ckpt = load_checkpoint_model(tmp_path / "best.pth")
    assert ckpt.epoch == losses.index(min(losses))


def test_an_epoch_with_the_metric_beats_one_without():
    run = ktrain._Run.__new__(ktrain._Run)
    run.config, run.rank, run.fallback_logged = TrainConfig(), 0, False
    none, nan, zero = ({"loss": 0.1, "AP": v} for v in (None, float("nan"), 0.0))
    assert run.score(none) == run.score(nan) == (0, -0.1) < run.score(zero) == (1, 0.0)
    assert run.score({"loss": 2.0}) < run.score(none)  # no validation: lower loss is better
    run.config = TrainConfig(monitor="mean_px_error")  # a pixel error: the smaller the better
    assert run.score({"loss": 1, "mean_px_error": 3.0}) > run.score({"mean_px_error": 9.0})


def test_resume_refuses_code_another_network_and_another_config(tiny, tmp_path):
    skeleton, train, val = tiny
    torch.save({"model": {}, "hook": print}, tmp_path / "last.pth")

    def resume(model, config=None, loader=train):
        config = config or TrainConfig(epochs=2, size=SIZE)
        fit(model, loader, val, skeleton, config, out_dir=tmp_path, resume=tmp_path / "last.pth")

    with pytest.raises(KpnbError, match="would run code"):
        resume(_model())
    _first_of(2, _model(), train, val, skeleton, tmp_path, overwrite=True)
    before = (tmp_path / "last.pth").read_bytes()
    fast = build_model(5, weights=None, size=SIZE, preset="fast")  # not the run's network
    with pytest.raises(KpnbError, match="preset='tiny' \\(this model: 'fast'\\)") as exc:
        resume(fast)
    assert exc.value.param == "preset"
    for change in ({"seed": 3}, {"size": 32}, {"lr": 0.5}, {"epochs": 5}):
        config = dataclasses.replace(TrainConfig(epochs=2, size=SIZE), **change)
        [(name, value)] = change.items()
        with pytest.raises(KpnbError, match=f"{name}={value!r}: the run has {name}=") as exc:
            resume(_model(), config)
        assert exc.value.param == name
    shuffled = DataLoader(
        Subset(val.dataset.dataset, range(1, 5)), batch_size=2, collate_fn=collate_fn
    )
    with pytest.raises(KpnbError, match="other images"):
        resume(_model(), loader=shuffled)
    assert (tmp_path / "last.pth").read_bytes() == before  # nothing was written


def _killed(row):
    raise KeyboardInterrupt


def test_time_budget_ends_the_schedule_and_the_run(tiny, tmp_path, caplog):
    skeleton, train, val = tiny
    with caplog.at_level(logging.INFO, logger="kpnb.train"):
        config = TrainConfig(epochs=5, size=SIZE, max_minutes=1e-5)
        history = fit(_model(), train, val, skeleton, config, out_dir=tmp_path)
    assert len(history) == 1 and history[0]["steps"] == 1 and not history[0]["complete"]
    assert "AP" in history[0] and "time budget" in caplog.text  # evaluated, then stopped
    assert torch.load(tmp_path / "best.pth", weights_only=True)["epoch"] == 0


def test_without_epochs_the_budget_decides_and_the_recipe_is_recorded(tiny, tmp_path):
    skeleton, train, val = tiny
    model = _model()
    config = TrainConfig(epochs=None, size=SIZE, max_minutes=0.05)
    t0 = time.perf_counter()
    history = fit(model, train, val, skeleton, config, out_dir=tmp_path)
    # no epoch count: the budget alone ended it, once its 3 seconds were used (whether that
    # fell mid-epoch or in validation depends on the machine's speed)
    assert history and time.perf_counter() - t0 >= 0.05 * 60
    saved = torch.load(tmp_path / "last.pth", weights_only=True)["config"]
    # lr None: the model's recipe (tiny from random weights); the loader's batch recorded
    assert saved["epochs"] is None and saved["batch_size"] == 2
    assert saved["lr"] == training_recipe(model)["lr"] == 1e-4
    with pytest.raises(KpnbError, match="epochs=None"):
        fit(_model(), train, val, skeleton, TrainConfig(epochs=None), overwrite=True)


def test_one_cycle_on_time_alone_follows_the_clock(monkeypatch):
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = OneCycle(opt, 1.0, None, minutes=1.0)
    sched.seconds_before = 30.0  # half the budget used
    sched.step()
    assert sched.progress == pytest.approx(0.5, abs=0.01) and not sched.finished


def test_the_progress_bar_is_off_in_logs_and_empties_its_notebook_display(monkeypatch):
    # stderr is no terminal under pytest: tqdm is disabled, the loop is unchanged
    assert list(ktrain.progress_bar(range(3), "epoch 1")) == [0, 1, 2]
    shown = []

    class Handle:
        def update(self, data, raw):
            shown.append(data["text/plain"])

    monkeypatch.setattr(ktrain, "_in_notebook", lambda: True)
    monkeypatch.setattr(
        ktrain._DisplayFile, "__init__", lambda self: setattr(self, "handle", Handle())
    )
    assert list(ktrain.progress_bar(range(3), "epoch 1")) == [0, 1, 2]
    assert any("epoch 1" in text for text in shown)  # it showed the bar while it ran
    assert shown[-1] == ""  # and the saved display is empty


def test_one_cycle_warms_up_then_decays():
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = OneCycle(opt, 1e-3, total_steps=10, pct_start=0.3)
    lrs = [opt.param_groups[0]["lr"]]
    for _ in range(10):
        sched.step()
        lrs.append(opt.param_groups[0]["lr"])
    assert lrs[0] == pytest.approx(1e-3 / 25) and max(lrs) == pytest.approx(1e-3)
    assert lrs[3] == max(lrs) and lrs[-1] < 1e-6 and sched.finished
    assert all(a <= b for a, b in zip(lrs[:3], lrs[1:4], strict=True))
    assert all(a >= b for a, b in zip(lrs[3:-1], lrs[4:], strict=True))


def test_split_keeps_a_validation_image_and_refuses_one_image(points_export):
    ann = read_cvat(points_export)
    two = dataclasses.replace(ann, images=ann.images.head(2))
    train, val = split_indices(two)
    assert len(train) == 1 and len(val) == 1
    with pytest.raises(ValueError, match="at least 2"):
        split_indices(dataclasses.replace(ann, images=ann.images.head(1)))


def test_non_finite_loss_stops_with_the_loss_dict(tiny):
    skeleton, train, _ = tiny
    model = _model()
    real = model.forward

    def nan_forward(images, targets=None):
        losses = real(images, targets)
        losses["loss_keypoint"] = losses["loss_keypoint"] * float("nan")
        return losses

    model.forward = nan_forward
    with pytest.raises(FloatingPointError, match="loss_keypoint"):
        fit(model, train, None, skeleton, TrainConfig(epochs=1, size=SIZE))


@pytest.mark.slow
def test_torchrun_two_cpu_processes_with_gloo(points_export, tmp_path):
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--master_addr",
            "127.0.0.1",
            "--master_port",
            "29517",
            "-m",
            "kpnb",
            "train",
            str(points_export),
            "--points-as-skeleton",
            "face",
            "--epochs",
            "1",
            "--size",
            str(SIZE),
            "--batch-size",
            "2",
            "--workers",
            "0",
            "--weights",
            "none",
            "--preset",
            "tiny",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    history = json.loads((out / "history.json").read_text())
    assert len(history) == 1 and "AP" in history[0]  # rank 0 evaluated and wrote
    assert proc.stdout.count("trained 1 epochs") == 1  # only rank 0 reports


def test_cli_train_evaluate_predict_on_the_runs_own_split(
    points_export, tmp_path, capsys, monkeypatch
):
    seeds = []
    real_split = kdataset.split_indices

    def recording(ann, val_fraction=0.2, seed=0):
        seeds.append(seed)
        return real_split(ann, val_fraction, seed)

    monkeypatch.setattr(kdataset, "split_indices", recording)
    run = tmp_path / "run"
    assert (
        main(
            [
                "train",
                str(points_export),
                "--points-as-skeleton",
                "face",
                "--epochs",
                "1",
                "--size",
                str(SIZE),
                "--workers",
                "0",
                "--seed",
                "7",
                "--weights",
                "none",
                "--preset",
                "tiny",
                "--out",
                str(run),
            ]
        )
        == 0
    )
    # no --size, --label, --points-as-skeleton, seed: all come from the checkpoint
    assert main(["evaluate", str(run / "best.pth"), str(points_export), "--workers", "0"]) == 0
    out = capsys.readouterr().out
    # the split is made once, by train; evaluate takes the run's validation images by id
    assert seeds == [7] and f"validation images at {SIZE} px" in out and "PCK@0.1" in out
    metrics = _no_nan((run / "metrics.json").read_text())["metrics"]
    assert metrics["instances"] > 0
    (run / "metrics.json").write_text("stale")  # an existing file: refused, then replaced
    assert main(["evaluate", str(run / "best.pth"), str(points_export), "--workers", "0"]) == 2
    assert (run / "metrics.json").read_text() == "stale"
    argv = ["evaluate", str(run / "best.pth"), str(points_export), "--workers", "0"]
    assert main([*argv, "--overwrite"]) == 0
    assert _no_nan((run / "metrics.json").read_text())["metrics"] == metrics
    images = sorted((points_export / "images").glob("*.jpg"))[:3]
    xml, coco = tmp_path / "preds.xml", tmp_path / "preds.json"
    threshold = ["--score-threshold", "0", "--workers", "1"]
    assert (
        main(
            [
                "predict",
                str(run / "best.pth"),
                *map(str, images),
                "--out",
                str(xml),
                "--viz",
                str(tmp_path / "viz"),
                *threshold,
            ]
        )
        == 0
    )
    assert (
        main(["predict", str(run / "best.pth"), *map(str, images), "--out", str(coco), *threshold])
        == 0
    )
    back = read_cvat(xml)
    assert list(back.images["name"]) == [p.name for p in images]
    assert set(back.keypoints["source"].astype(str)) <= {"auto"}
    assert set(back.keypoints["label"].astype(str)) <= {"face"}  # the run's label
    assert len(list((tmp_path / "viz").glob("*.png"))) == 3
    assert isinstance(json.loads(coco.read_text()), list)


def test_cli_resume_without_checkpoint_is_clear(synthetic_export, tmp_path, capsys):
    code = main(
        [
            "train",
            str(synthetic_export),
            "--epochs",
            "1",
            "--out",
            str(tmp_path / "r"),
            "--resume",
            "--weights",
            "none",
        ]
    )
    assert code == 2 and "nothing to resume" in capsys.readouterr().err


OVERFIT_SIZE = 96


def test_overfits_four_images_and_then_finds_their_keypoints(synthetic_export):
    """The model learns: from random weights, 60 one-cycle steps on 4 images take PCK@0.1
    on those images from ~0 to well above 0.6 (measured: 1.0, AP 0.46 after 60 steps).

    The "tiny" preset (a 2-layer keypoint head) keeps this to about a minute on 2 CPU
    cores; the losses, targets, transforms and schedule trained are the real ones, and
    the full-size network's learning is shown by the tutorial's full run (notebook 04).
    """
    from kpnb.evaluate import evaluate

    torch.manual_seed(0)
    ann = read_cvat(synthetic_export)
    ds = KeypointDataset(ann, synthetic_export, "face", eval_transforms(OVERFIT_SIZE))
    four = Subset(ds, [i for i in range(len(ds)) if len(ds.items[i].boxes)][:4])
    loader = DataLoader(four, batch_size=4, collate_fn=collate_fn)
    model = build_model(5, weights=None, size=OVERFIT_SIZE, preset="tiny")
    before = evaluate(model, loader, ann.skeletons["face"]).metrics
    config = TrainConfig(epochs=60, lr=5e-4, size=OVERFIT_SIZE)
    fit(model, loader, None, ann.skeletons["face"], config)
    after = evaluate(model, loader, ann.skeletons["face"]).metrics
    print(
        f"overfit PCK@0.1 {before['PCK@0.1']:.3f} -> {after['PCK@0.1']:.3f}, "
        f"AP {before['AP']:.3f} -> {after['AP']:.3f}"
    )
    assert before["PCK@0.1"] < 0.2
    assert after["PCK@0.1"] >= 0.6 and after["AP"] >= 0.3 and math.isfinite(after["AP"])
