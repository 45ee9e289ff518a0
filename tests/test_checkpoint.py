"""Checkpoint: what best.pth and last.pth hold, saved and loaded in one place; files that hold
code, damaged files and every field of the wrong type or range are one line naming the
file, the field and the value; a run's folder lock; --resume keeps the run's settings."""

import os
import subprocess
import sys

import pytest
import torch

from kpnb.checkpoint import MAX_SIZE, Checkpoint, RunData, TrainConfig
from kpnb.cli import main
from kpnb.errors import KpnbError
from kpnb.model import build_model, load_checkpoint_model
from kpnb.runs import LOCK_FILE, check_run_folder, run_lock
from kpnb.skeleton import Skeleton

SIZE = 64


@pytest.fixture(scope="module")
def tiny():
    """A tiny 2-keypoint model and its checkpoint."""
    torch.manual_seed(0)
    model = build_model(2, weights=None, size=SIZE, preset="tiny")
    skeleton = Skeleton(("a", "b"), ((0, 1),), ((0, 1),))
    return model, Checkpoint.of_model(model, skeleton, label="thing")


def test_a_checkpoint_saves_and_loads_as_it_was(tiny, tmp_path):
    model, ckpt = tiny
    ckpt.data = RunData("synthetic", None, 3, [1, 2], [5])
    ckpt.best, ckpt.history = (1, 0.5), [{"epoch": 0, "loss": 1.0}]
    again = Checkpoint.load(ckpt.save(tmp_path / "best.pth"))
    assert again.skeleton == ckpt.skeleton and again.label == "thing"
    assert again.data == RunData("synthetic", None, 3, [1, 2], [5])
    assert again.config == TrainConfig(size=SIZE) and again.build == model.kpnb_build
    assert again.best == (1, 0.5) and again.history == ckpt.history and again.resume is None
    assert again.pretrained is False
    rebuilt, loaded = load_checkpoint_model(tmp_path / "best.pth", "cpu")
    assert loaded.label == "thing" and rebuilt.kpnb_build == model.kpnb_build
    for a, b in zip(model.state_dict().values(), rebuilt.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    with pytest.raises(KpnbError, match="cannot resume"):  # a best.pth holds no optimizer
        Checkpoint.load(tmp_path / "best.pth", resume=True)


# -- files that are no checkpoint, or hold code --------------------------------------------
class _Payload:
    """Something that is neither a tensor nor plain data (a class to be imported on load)."""


def _calls_code():
    return None


@pytest.mark.parametrize(
    "payload, imported",
    [
        (_Payload, "_Payload"),
        (_calls_code, "_calls_code"),
        (_Payload(), "_Payload"),
        (os.system, f"{os.system.__module__}.system"),  # a module torch blocks outright
    ],
    ids=["class", "function", "object", "os.system"],
)
def test_a_checkpoint_holding_code_is_refused_naming_what_it_imports(tmp_path, payload, imported):
    path = tmp_path / "evil.pth"
    torch.save({"model": {}, "x": payload}, path)
    with pytest.raises(KpnbError, match="would run code") as exc:
        load_checkpoint_model(path)
    assert imported in str(exc.value) and "\n" not in str(exc.value)


def test_empty_garbage_and_foreign_files_are_one_line_errors(tmp_path):
    empty, garbage, foreign = tmp_path / "e.pth", tmp_path / "g.pth", tmp_path / "f.pth"
    empty.write_bytes(b"")
    garbage.write_bytes(b"\x80\x04not a pickle at all" * 10)
    torch.save({"weights": torch.zeros(2)}, foreign)
    for path, what in [(empty, "empty file"), (garbage, "not a checkpoint"), (foreign, "format")]:
        with pytest.raises(KpnbError, match=what) as exc:
            load_checkpoint_model(path)
        assert str(exc.value).startswith(f"{path}: ") and "\n" not in str(exc.value)


# -- fields of the wrong type or range (the files load with weights_only=True) -------------
@pytest.fixture
def blob(tiny, tmp_path):
    """What kpnb writes, but with one small tensor for weights: each case below breaks one
    field, and 100 MB of real weights per case would take seconds."""
    _, ckpt = tiny
    saved = torch.load(ckpt.save(tmp_path / "good.pth"), weights_only=True)
    return {**saved, "model": {"w": torch.zeros(1)}}


DROP = object()


def _with(**parts):
    """``part=value`` or ``part__entry=value`` (a nested entry); DROP removes it."""

    def change(blob):
        for name, value in parts.items():
            where, _, entry = name.partition("__")
            target, key = (blob[where], entry) if entry else (blob, where)
            if value is DROP:
                del target[key]
            else:
                target[key] = value
        return blob

    return change


def _resume(**parts):
    """A last.pth's resume state, with `parts` replaced."""
    from kpnb.checkpoint import rng_state

    state = {
        "optimizer": {"state": {}, "param_groups": []},
        "lr_scheduler": {"steps": 0, "seconds": 0.0},
        "scaler": None,
        "rng": rng_state(None),
    }
    return {**state, **parts}


def _kwargs(**options):
    return _with(build__kwargs=options)


_WRONG = {
    "no-format": (_with(format=DROP), "format"),
    "unknown-entry": (_with(extra={}), "extra"),
    "model-list": (_with(model=[1]), "model"),
    "model-not-tensors": (_with(model={"w": 1}), "'w'"),
    "skeleton-str": (_with(skeleton="abc"), "'abc'"),
    "keypoints-ints": (_with(skeleton__keypoints=[1, 2]), "keypoints"),
    "edges-out-of-range": (_with(skeleton__edges=[[0, 5]]), r"\(0, 5\)"),
    "build-str": (_with(build="xy"), "'xy'"),
    "build-unknown-entry": (_with(build__bogus=1), "bogus"),
    "no-num-keypoints": (_with(build__num_keypoints=DROP), "num_keypoints"),
    "num-keypoints-differ": (_with(build__num_keypoints=3), "num_keypoints'] = 3"),
    "size-str": (_with(build__size="big"), r"build\['size'\].*'big'"),
    "size-bool": (_with(build__size=True), r"build\['size'\].*True"),
    "size-zero": (_with(build__size=0), r"build\['size'\] = 0"),
    "size-negative": (_with(build__size=-64), r"build\['size'\] = -64"),
    "size-huge": (_with(build__size=10**6), rf"build\['size'\] = 1000000 .*{MAX_SIZE}"),
    "preset-unknown": (_with(build__preset="xy"), r"build\['preset'\] = 'xy'"),
    "stages-out-of-range": (_with(build__trainable_backbone_layers=9), "layers'] = 9"),
    "norm-eps-negative": (_with(build__norm_eps=-1.0), r"norm_eps'\] = -1.0"),
    "kwargs-list": (_with(build__kwargs=[1]), r"build\['kwargs'\].*\[1\]"),
    "kwargs-unknown": (_kwargs(min_sise=64), "min_sise"),
    "kwargs-module": (_kwargs(rpn_head=None), "rpn_head"),
    "size-divisible-zero": (_kwargs(size_divisible=0), r"'size_divisible'\] = 0"),
    "image-mean-empty": (_kwargs(image_mean=[]), r"'image_mean'\].*\[\]"),
    "image-std-zero": (_kwargs(image_std=[0.2, 0.0, 0.2]), r"'image_std'\]\[1\] = 0.0"),
    "min-size-negative": (_kwargs(min_size=-5), r"'min_size'\] = -5"),
    "max-size-huge": (_kwargs(max_size=300_000), r"'max_size'\] = 300000"),
    "min-sizes-one-huge": (_kwargs(min_size=[64, 10**7]), r"'min_size'\]\[1\] = 10000000"),
    "nms-above-one": (_kwargs(box_nms_thresh=1.5), r"'box_nms_thresh'\] = 1.5"),
    "detections-zero": (_kwargs(box_detections_per_img=0), "box_detections_per_img'] = 0"),
    "config-str": (_with(config="x"), r"config must be dict.*'x'"),
    "config-old-extra": (_with(config__extra={"label": "a"}), "extra"),
    "config-size-huge": (_with(config__size=10**9), r"config\['size'\] = 1000000000"),
    "config-seed-negative": (_with(config__seed=-1), r"config\['seed'\] = -1"),
    "config-lr-nan": (_with(config__lr=float("nan")), r"config\['lr'\] = nan"),
    "config-sigmas-count": (_with(config__sigmas=[0.1]), "1 values for 2 keypoints"),
    "label-int": (_with(label=5), "label must be str"),
    "data-ids": (
        _with(
            data={"spec": None, "points_as_skeleton": None, "seed": 0, "train": ["a"], "val": []}
        ),
        r"data\['train'\]",
    ),
    "epoch-negative": (_with(epoch=-1), "epoch = -1"),
    "metrics-list": (_with(metrics=[1]), "metrics must be dict"),
    "history-tensor": (_with(history=[{"loss": torch.zeros(1)}]), r"history\[0\] holds 'loss'"),
    "resume-optimizer": (_with(resume=_resume(optimizer={})), r"resume\['optimizer'\]"),
    "resume-steps": (_with(resume=_resume(lr_scheduler={"steps": -1})), r"\['steps'\] = -1"),
    "resume-rng": (_with(resume=_resume(rng={"python": [3, [0] * 5, None]})), r"resume\['rng'\]"),
    "best-nan": (_with(best=[1, float("nan")]), "best"),
}


@pytest.mark.parametrize("change, what", _WRONG.values(), ids=_WRONG.keys())
def test_a_field_of_the_wrong_type_or_range_is_one_line_naming_it(tmp_path, blob, change, what):
    path = tmp_path / "crafted.pth"
    torch.save(change(blob), path)
    with pytest.raises(KpnbError, match=what) as exc:
        Checkpoint.load(path)
    msg = str(exc.value)
    assert msg.startswith(f"{path}: ") and "\n" not in msg


def test_the_unchanged_blob_loads(tmp_path, blob):
    """The control of the cases above: only their change makes them fail."""
    torch.save(blob, tmp_path / "good.pth")
    assert Checkpoint.load(tmp_path / "good.pth").label == "thing"
    torch.save({**blob, "resume": _resume()}, tmp_path / "last.pth")
    assert Checkpoint.load(tmp_path / "last.pth", resume=True).resume["scaler"] is None


def test_weights_that_do_not_fit_the_build_record_are_named_before_load_state_dict(
    tiny, tmp_path, blob
):
    path = tmp_path / "misfit.pth"
    torch.save(blob, path)  # one tensor 'w': the network's entries are missing
    with pytest.raises(KpnbError, match=r"weights do not fit.*no entry 'backbone\.") as exc:
        load_checkpoint_model(path, "cpu")
    assert str(exc.value).startswith(f"{path}: ")
    key = "roi_heads.keypoint_predictor.kps_score_lowres.weight"
    state = dict(tiny[0].state_dict())
    wrong = torch.zeros(state[key].shape[0], 3, 4, 4)  # one misshaped entry
    torch.save({**blob, "model": {**state, key: wrong}}, path)
    with pytest.raises(KpnbError, match=rf"'{key}' is \({wrong.shape[0]}, 3, 4, 4\)"):
        load_checkpoint_model(path, "cpu")


@pytest.mark.parametrize("command", ["predict", "evaluate"])
def test_cli_reports_a_crafted_checkpoint_in_one_line(tmp_path, capsys, blob, command):
    from PIL import Image

    path = tmp_path / "crafted.pth"
    torch.save(_with(skeleton__edges=[1])(blob), path)
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    argv = {
        "predict": [
            "predict",
            str(path),
            str(tmp_path / "a.png"),
            "--out",
            str(tmp_path / "p.xml"),
        ],
        "evaluate": ["evaluate", str(path), "synthetic"],
    }[command]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"kpnb {command}: error: {path}: ") and "'edges'" in err
    assert "\n" not in err and "Traceback" not in err
    assert not (tmp_path / "p.xml").exists()


# -- a run's folder lock ------------------------------------------------------------------
def test_a_run_locks_its_folder_and_a_second_run_is_refused_naming_the_lock(tmp_path):
    out = tmp_path / "run"
    with run_lock(out):
        lock = out / LOCK_FILE
        assert lock.read_text().split()[0] == str(os.getpid())
        for second in (lambda: check_run_folder(out), lambda: run_lock(out).__enter__()):
            with pytest.raises(KpnbError, match=LOCK_FILE) as exc:
                second()
            assert str(os.getpid()) in str(exc.value)
    assert not lock.exists()  # released at the end
    check_run_folder(out)  # the empty folder is free again


def test_a_stale_lock_of_a_dead_process_is_recognised_and_removed(tmp_path, caplog):
    import socket

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    out = tmp_path / "run"
    out.mkdir()
    (out / LOCK_FILE).write_text(f"{dead.pid} {socket.gethostname()}")
    with caplog.at_level("INFO", logger="kpnb.train"), run_lock(out):
        assert (out / LOCK_FILE).read_text().split()[0] == str(os.getpid())
    assert str(dead.pid) in caplog.text
    (out / LOCK_FILE).write_text("123 another-machine")  # cannot be checked: explained
    with pytest.raises(KpnbError, match="another-machine.*delete that file"):
        check_run_folder(out)


# -- --resume takes the run's settings and refuses others ---------------------------------
@pytest.fixture(scope="module")
def cli_run(points_export, tmp_path_factory):
    """A 2-epoch CLI run of the tiny preset, seed 7, killed after its first epoch."""
    from kpnb import train as ktrain

    out = tmp_path_factory.mktemp("cli") / "run"
    argv = [
        "train",
        str(points_export),
        "--points-as-skeleton",
        "face",
        "--epochs",
        "2",
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
        str(out),
    ]
    save = ktrain._Run.save

    def save_then_die(self, *args):
        save(self, *args)
        raise KeyboardInterrupt  # killed once the first epoch is saved

    with pytest.MonkeyPatch.context() as patch, pytest.raises(KeyboardInterrupt):
        patch.setattr(ktrain._Run, "save", save_then_die)
        main(argv)
    return points_export, out


@pytest.mark.parametrize(
    "flag, given, run_value",
    [
        ("--seed", "3", "7"),
        ("--size", "32", str(SIZE)),
        ("--lr", "0.5", "0.0001"),
        ("--preset", "cpu", "tiny"),
    ],
)
def test_resume_refuses_a_flag_that_differs_from_the_runs(cli_run, capsys, flag, given, run_value):
    export, out = cli_run
    before = (out / "last.pth").read_bytes()
    argv = ["train", str(export), "--resume", "--out", str(out), flag, given, "--workers", "0"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"{flag} {given}" in err and f"{flag} {run_value}" in err and "\n" not in err.strip()
    assert (out / "last.pth").read_bytes() == before


def test_resume_without_the_runs_flags_continues_the_run_as_it_was(cli_run, capsys):
    """No --preset (auto would pick fast from random weights), --seed, --size or
    --points-as-skeleton: all are the run's, so its weights load and its split holds."""
    export, out = cli_run
    first = Checkpoint.load(out / "last.pth", resume=True)
    argv = ["train", str(export), "--resume", "--out", str(out), "--workers", "0"]
    assert main(argv) == 0, capsys.readouterr().err
    last = Checkpoint.load(out / "last.pth", resume=True)
    assert (
        first.epoch == 0
        and last.epoch == 1
        and last.build == first.build
        and last.data == first.data
    )
    assert last.config.seed == 7 and last.label == "face" and not (out / LOCK_FILE).exists()


def test_a_checkpoint_may_name_exactly_the_presets_the_model_builds():
    from kpnb.config import PRESET_NAMES
    from kpnb.model import PRESETS

    assert set(PRESET_NAMES) == set(PRESETS)
