"""fit: checkpoints, history, resume, non-finite loss, torchrun with 2 CPU processes, the CLI."""

import json
import os
import subprocess
import sys

import pandas as pd
import pytest
import torch
from torch.utils.data import DataLoader, Subset

from kpnb.cli import main
from kpnb.cvat import read_cvat
from kpnb.dataset import KeypointDataset, collate_fn
from kpnb.model import build_model
from kpnb.train import TrainConfig, fit, load_checkpoint
from kpnb.transforms import eval_transforms


@pytest.fixture(scope="module")
def tiny(synthetic_export):
    ann = read_cvat(synthetic_export)
    ds = KeypointDataset(ann, synthetic_export, "face", eval_transforms(96))
    train = DataLoader(Subset(ds, range(4)), batch_size=2, collate_fn=collate_fn)
    val = DataLoader(Subset(ds, range(4, 6)), batch_size=2, collate_fn=collate_fn)
    return ann.skeletons["face"], train, val


def test_fit_writes_checkpoints_and_history_and_resumes(tiny, tmp_path):
    skeleton, train, val = tiny
    torch.manual_seed(0)
    cfg = TrainConfig(epochs=2, size=96, lr=1e-4)
    model = build_model(5, weights=None, size=96)
    history = fit(model, train, val, skeleton, TrainConfig(epochs=1, size=96, lr=1e-4),
                  out_dir=tmp_path, progress=False)  # fmt: skip
    assert [h["epoch"] for h in history] == [0]
    assert {"loss", "loss_keypoint", "AP", "PCK@0.1", "mean_px_error", "lr"} <= set(history[0])
    ckpt = load_checkpoint(tmp_path / "last.pth")
    assert {"model", "optimizer", "lr_scheduler", "epoch", "config", "skeleton", "history",
            "kpnb_version"} <= set(ckpt)  # fmt: skip
    assert ckpt["skeleton"]["keypoints"] == list(skeleton.keypoints)
    assert (tmp_path / "best.pth").is_file()
    assert len(pd.read_csv(tmp_path / "history.csv")) == 1
    assert json.loads((tmp_path / "history.json").read_text())[0]["epoch"] == 0
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    resumed = fit(build_model(5, weights=None, size=96), train, val, skeleton, cfg,
                  out_dir=tmp_path, resume=tmp_path / "last.pth", progress=False)  # fmt: skip
    assert [h["epoch"] for h in resumed] == [0, 1]


def test_non_finite_loss_stops_with_the_loss_dict(tiny):
    skeleton, train, _ = tiny
    model = build_model(5, weights=None, size=96)
    real = model.forward

    def nan_forward(images, targets=None):
        losses = real(images, targets)
        losses["loss_keypoint"] = losses["loss_keypoint"] * float("nan")
        return losses

    model.forward = nan_forward
    with pytest.raises(FloatingPointError, match="loss_keypoint"):
        fit(model, train, None, skeleton, TrainConfig(epochs=1, size=96), progress=False)


def test_torchrun_two_cpu_processes_with_gloo(synthetic_export, tmp_path):
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
         "--master_addr", "127.0.0.1", "--master_port", "29517", "-m", "kpnb", "train",
         str(synthetic_export), "--epochs", "1", "--size", "64", "--batch-size", "2",
         "--workers", "0", "--weights", "none", "--out", str(out)],
        capture_output=True, text=True, env=env, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    history = json.loads((out / "history.json").read_text())
    assert len(history) == 1 and "AP" in history[0]  # rank 0 evaluated and wrote
    assert proc.stdout.count("trained 1 epochs") == 1  # only rank 0 reports


def test_cli_train_evaluate_predict_end_to_end(synthetic_export, tmp_path, capsys):
    run = tmp_path / "run"
    args = [str(synthetic_export), "--epochs", "1", "--size", "96", "--workers", "0"]
    assert main(["train", *args, "--out", str(run), "--weights", "none"]) == 0
    assert main(["evaluate", str(run / "best.pth"), *args[:1], "--size", "96"]) == 0
    out = capsys.readouterr().out
    assert "PCK@0.1" in out and (run / "metrics.json").is_file()
    images = sorted((synthetic_export / "images/Validation").glob("*.jpg"))[:2]
    xml, coco = tmp_path / "preds.xml", tmp_path / "preds.json"
    threshold = ["--score-threshold", "0"]
    assert main(["predict", str(run / "best.pth"), *map(str, images), "--out", str(xml),
                 "--viz", str(tmp_path / "viz"), *threshold]) == 0  # fmt: skip
    assert main(["predict", str(run / "best.pth"), *map(str, images), "--out", str(coco),
                 *threshold]) == 0  # fmt: skip
    back = read_cvat(xml)
    assert list(back.images["name"]) == [p.name for p in images]
    assert set(back.keypoints["source"].astype(str)) <= {"auto"}
    assert len(list((tmp_path / "viz").glob("*.png"))) == 2
    assert isinstance(json.loads(coco.read_text()), list)


def test_cli_resume_without_checkpoint_is_clear(synthetic_export, tmp_path, capsys):
    code = main(["train", str(synthetic_export), "--epochs", "1", "--out", str(tmp_path / "r"),
                 "--resume", "--weights", "none"])  # fmt: skip
    assert code == 2 and "nothing to resume" in capsys.readouterr().err


@pytest.mark.slow
def test_overfits_four_images_and_then_finds_their_keypoints(synthetic_export):
    """The model learns: from random weights, 80 one-cycle steps on 4 images (a few minutes
    on 2 CPU cores) take PCK@0.1 on those images from ~0 to well above 0.6."""
    from kpnb.evaluate import evaluate

    torch.manual_seed(0)
    ann = read_cvat(synthetic_export)
    ds = KeypointDataset(ann, synthetic_export, "face", eval_transforms(128))
    four = Subset(ds, [i for i in range(len(ds)) if len(ds.items[i].boxes)][:4])
    loader = DataLoader(four, batch_size=4, collate_fn=collate_fn)
    model = build_model(5, weights=None, size=128)
    before = evaluate(model, loader, ann.skeletons["face"]).metrics
    fit(model, loader, None, ann.skeletons["face"], TrainConfig(epochs=80, lr=1e-4, size=128),
        progress=False)  # fmt: skip
    after = evaluate(model, loader, ann.skeletons["face"]).metrics
    print(
        f"overfit PCK@0.1 {before['PCK@0.1']:.3f} -> {after['PCK@0.1']:.3f}, "
        f"AP {before['AP']:.3f} -> {after['AP']:.3f}"
    )
    assert before["PCK@0.1"] < 0.2
    assert after["PCK@0.1"] >= 0.6 and after["AP"] >= 0.3
