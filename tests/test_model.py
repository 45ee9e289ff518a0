"""build_model: K outputs, pretrained as torchvision builds it, the preset by device, COCO
weights through a real download from 127.0.0.1, offline; checkpoints that hold code."""

import hashlib
import logging

import pytest
import torch
import torchvision
from torch import nn
from torchvision.models.detection import keypointrcnn_resnet50_fpn
from torchvision.ops.misc import FrozenBatchNorm2d

from kpnb import model as kmodel
from kpnb.errors import KpnbError
from kpnb.model import (
    WeightsUnavailableError,
    build_model,
    cpu_preset,
    load_checkpoint_model,
    read_checkpoint,
    training_recipe,
)


def _skeleton(k: int) -> dict:
    return {"keypoints": [f"p{i}" for i in range(k)], "edges": []}


def _k(model):
    return model.roi_heads.keypoint_predictor.kps_score_lowres.out_channels


def test_random_model_has_k_outputs_and_the_cpu_preset():
    m = build_model(5, weights=None, size=192, preset="cpu")
    assert _k(m) == 5
    assert m.transform.min_size == (192,) and m.transform.max_size == 192
    assert (
        m.roi_heads.fg_bg_sampler.batch_size_per_image == cpu_preset()["box_batch_size_per_image"]
    )
    d = build_model(5, weights=None, preset=None)
    assert d.transform.min_size == (640, 672, 704, 736, 768, 800)


@pytest.fixture(scope="module")
def coco_like_weights(tmp_path_factory):
    """A real 17-keypoint state dict, named the way torch.hub checks hashes."""
    torch.manual_seed(0)
    state = keypointrcnn_resnet50_fpn(weights=None, weights_backbone=None).state_dict()
    folder = tmp_path_factory.mktemp("weights")
    raw = folder / "raw.pth"
    torch.save(state, raw)
    digest = hashlib.sha256(raw.read_bytes()).hexdigest()
    named = folder / f"keypointrcnn_test-{digest[:8]}.pth"
    raw.rename(named)
    return named, state


@pytest.fixture
def weights_server(coco_like_weights, http_server):
    """torchvision's COCO weights URL, as served by the shared 127.0.0.1 `http_server`."""
    path, _ = coco_like_weights
    return http_server.put(path.name, path.read_bytes())


def test_coco_weights_download_then_swap_the_keypoint_head(
    weights_server, coco_like_weights, tmp_path, monkeypatch
):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(kmodel, "COCO_URL", weights_server)
    _, state = coco_like_weights
    m = build_model(5, weights="coco")
    assert _k(m) == 5
    backbone_key = "backbone.body.layer1.0.conv1.weight"
    assert torch.equal(m.state_dict()[backbone_key], state[backbone_key])  # loaded, not random
    assert (tmp_path / "hub/checkpoints" / weights_server.rsplit("/", 1)[1]).is_file()  # cached
    three = build_model(5, num_classes=3, weights="coco")  # box head swapped only when needed
    assert three.roi_heads.box_predictor.cls_score.out_features == 3


def test_bad_hash_is_refused_and_not_cached(coco_like_weights, http_server, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    # same bytes, but the name promises another hash: torch.hub's check must refuse them
    path, _ = coco_like_weights
    bad_name = path.name.rsplit("-", 1)[0] + "-deadbeef.pth"
    monkeypatch.setattr(kmodel, "COCO_URL", http_server.put(bad_name, path.read_bytes()))
    with pytest.raises(WeightsUnavailableError, match="could not be downloaded"):
        build_model(5, weights="coco")
    assert not list((tmp_path / "hub/checkpoints").glob("*deadbeef*"))


def test_offline_is_one_clear_line_and_random_only_when_allowed(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(kmodel, "COCO_URL", "http://127.0.0.1:9/keypointrcnn-fc266e95.pth")
    with pytest.raises(WeightsUnavailableError) as exc:
        build_model(5, weights="coco")
    msg = str(exc.value)
    assert "\n" not in msg and "weights=None" in msg and "put it in" in msg
    with caplog.at_level(logging.WARNING, logger="kpnb.model"):
        m = build_model(5, weights="coco", allow_random=True)
    assert _k(m) == 5 and "continuing from random weights" in caplog.text


def test_local_pth_path(coco_like_weights, tmp_path):
    path, state = coco_like_weights
    m = build_model(4, weights=path)
    assert _k(m) == 4
    key = "roi_heads.box_head.fc6.weight"
    assert torch.equal(m.state_dict()[key], state[key])
    with pytest.raises(WeightsUnavailableError, match="no such weights file"):
        build_model(4, weights=tmp_path / "missing.pth")


def _norms(model):
    return {
        type(m)
        for m in model.backbone.body.modules()
        if isinstance(m, (nn.BatchNorm2d, FrozenBatchNorm2d))
    }


def _trains(model, stage):
    return all(
        p.requires_grad for n, p in model.backbone.body.named_parameters() if n.startswith(stage)
    )


def test_pretrained_is_built_as_torchvision_does(coco_like_weights):
    path, _ = coco_like_weights
    m = build_model(4, weights=path)
    assert _norms(m) == {FrozenBatchNorm2d}
    assert not any(
        p.requires_grad
        for n, p in m.backbone.body.named_parameters()
        if n.startswith(("conv1", "layer1"))
    )
    assert all(_trains(m, s) for s in ("layer2", "layer3", "layer4"))
    assert m.kpnb_build["norm"] == "frozen" and m.kpnb_build["trainable_backbone_layers"] == 3
    five = build_model(4, weights=path, trainable_backbone_layers=5)
    assert _trains(five, "conv1") and _trains(five, "layer1")


def test_random_weights_keep_batchnorm_and_train_every_stage():
    m = build_model(4, weights=None)
    assert _norms(m) == {nn.BatchNorm2d}
    assert all(p.requires_grad for p in m.parameters())
    assert m.kpnb_build["norm"] == "batch" and m.kpnb_build["trainable_backbone_layers"] == 5


TORCHVISION_SIZES = (640, 672, 704, 736, 768, 800)


@pytest.mark.parametrize("cuda, expected", [(False, (160,)), (True, TORCHVISION_SIZES)])
def test_the_preset_follows_the_device(monkeypatch, cuda, expected):
    monkeypatch.setattr(kmodel.torch.cuda, "is_available", lambda: cuda)
    m = build_model(4, weights=None, size=160)
    assert m.transform.min_size == expected
    assert m.kpnb_build["preset"] == ("torchvision" if cuda else "fast")


def test_auto_on_a_cpu_fine_tunes_with_cpu_and_trains_from_scratch_with_fast(
    monkeypatch, coco_like_weights
):
    monkeypatch.setattr(kmodel.torch.cuda, "is_available", lambda: False)
    tuned = build_model(4, weights=coco_like_weights[0], size=96)
    scratch = build_model(4, weights=None)
    assert tuned.kpnb_build["preset"] == "cpu" and tuned.kpnb_build["pretrained"] is True
    assert scratch.kpnb_build["preset"] == "fast" and scratch.kpnb_build["pretrained"] is False
    assert training_recipe(tuned) == {"lr": kmodel.FINETUNE_LR, "batch_size": 2}
    assert training_recipe(scratch) == {"lr": 1e-3, "batch_size": 8}


def test_fast_preset_is_resnet18_with_a_small_head_at_192_px(tmp_path):
    m = build_model(5, weights=None, preset="fast")
    assert m.transform.min_size == (192,) and m.kpnb_build["size"] == 192
    assert isinstance(m.backbone.body.layer1[0], torchvision.models.resnet.BasicBlock)
    convs = [c for c in m.roi_heads.keypoint_head if isinstance(c, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == list(kmodel.FAST_HEAD)
    assert _k(m) == 5
    # rebuilt from its checkpoint: the same network, the same weights
    path = tmp_path / "best.pth"
    torch.save({"model": m.state_dict(), "skeleton": _skeleton(5), "build": m.kpnb_build}, path)
    again, _ = load_checkpoint_model(path, device="cpu")
    assert again.kpnb_build["preset"] == "fast"
    assert torch.equal(again.roi_heads.keypoint_head[0].weight, m.roi_heads.keypoint_head[0].weight)
    # a fast run's weights do not fit the ResNet-50 presets: one clear error
    with pytest.raises(WeightsUnavailableError, match="'cpu' preset"):
        build_model(5, weights=path, preset="cpu")


class _Payload:
    """Something that is neither a tensor nor plain data (a class to be imported on load)."""


def _calls_code():
    return None


@pytest.mark.parametrize(
    "payload", [_Payload, _calls_code, _Payload()], ids=["class", "function", "object"]
)
def test_a_checkpoint_holding_code_is_refused(tmp_path, payload):
    path = tmp_path / "evil.pth"
    torch.save({"model": {}, "skeleton": {"keypoints": ["a"], "edges": []}, "x": payload}, path)
    with pytest.raises(ValueError, match="refused") as exc:
        load_checkpoint_model(path)
    assert "\n" not in str(exc.value) and "weights_only" not in str(exc.value)


def test_empty_garbage_and_foreign_files_are_one_line_errors(tmp_path):
    empty, garbage, foreign = tmp_path / "e.pth", tmp_path / "g.pth", tmp_path / "f.pth"
    empty.write_bytes(b"")
    garbage.write_bytes(b"\x80\x04not a pickle at all" * 10)
    torch.save({"weights": torch.zeros(2)}, foreign)
    for path, what in [
        (empty, "empty file"),
        (garbage, "not a checkpoint"),
        (foreign, "not a kpnb checkpoint"),
    ]:
        with pytest.raises(ValueError, match=what) as exc:
            load_checkpoint_model(path)
        assert "\n" not in str(exc.value) and "weights_only" not in str(exc.value)
    assert read_checkpoint(foreign)["weights"].shape == (2,)


def test_tiny_preset_has_a_small_keypoint_head_and_rebuilds_from_its_checkpoint(tmp_path):
    from kpnb.model import TINY_HEAD

    tiny = build_model(5, weights=None, size=64, preset="tiny")
    full = build_model(5, weights=None, size=64, preset="cpu")
    count = lambda m: sum(p.numel() for p in m.roi_heads.keypoint_head.parameters())  # noqa: E731
    assert count(tiny) * 20 < count(full)
    assert tiny.roi_heads.keypoint_predictor.kps_score_lowres.in_channels == TINY_HEAD[-1]
    assert tiny.roi_heads.fg_bg_sampler.batch_size_per_image == 16
    assert full.roi_heads.fg_bg_sampler.batch_size_per_image == 32
    torch.save(
        {
            "model": tiny.state_dict(),
            "skeleton": {"keypoints": list("abcde")},
            "build": tiny.kpnb_build,
        },
        tmp_path / "t.pth",
    )
    again, _ = load_checkpoint_model(tmp_path / "t.pth", device="cpu")
    assert again.kpnb_build["preset"] == "tiny"
    for a, b in zip(tiny.state_dict().values(), again.state_dict().values(), strict=True):
        assert torch.equal(a, b)


# -- checkpoints of the wrong structure (they load with weights_only=True) -----------------
@pytest.fixture(scope="module")
def tiny_build():
    """A tiny 2-keypoint model: its state dict and build record."""
    model = build_model(2, weights=None, size=64, preset="tiny")
    return model.state_dict(), model.kpnb_build


@pytest.fixture
def good_checkpoint(tiny_build):
    """What kpnb train writes, but with one small tensor for weights: the cases below each
    break one part, and saving 160 MB of real weights per case would take seconds."""
    return {
        "format": "kpnb-checkpoint",
        "model": {"w": torch.zeros(1)},
        "skeleton": {"keypoints": ["a", "b"], "edges": [[0, 1]], "pairs": [[0, 1]]},
        "config": {"size": 64, "seed": 0, "extra": {"label": "thing"}},
        "build": dict(tiny_build[1]),
    }


def _with(**parts):
    """A change of the good checkpoint: ``part=value``, ``part__entry=value`` (a nested
    entry), ``part=DROP`` / ``part__entry=DROP`` (removed)."""

    def change(ckpt):
        for name, value in parts.items():
            where, _, entry = name.partition("__")
            target = ckpt if not entry else ckpt[where]
            key = entry or where
            if value is DROP:
                del target[key]
            else:
                target[key] = value
        return ckpt

    return change


DROP = object()
_WRONG = {
    "model-list": (_with(model=[1]), "no 'model'/'skeleton'"),
    "model-not-tensors": (_with(model={"w": 1}), r"weights \('model'\) hold 'w', not a tensor"),
    "no-skeleton": (_with(skeleton=DROP), "no 'model'/'skeleton'"),
    "skeleton-str": (_with(skeleton="abc"), "a skeleton is a dict.*not 'abc'"),
    "no-keypoints": (_with(skeleton__keypoints=DROP), "'keypoints' must be a list of names"),
    "keypoints-ints": (_with(skeleton__keypoints=[1, 2]), "'keypoints' must be a list of names"),
    "edges-flat": (_with(skeleton__edges=[1]), "'edges' must be a list of pairs"),
    "edges-names": (_with(skeleton__edges=[["a", "b"]]), "'edges' must be a list of pairs"),
    "edges-out-of-range": (_with(skeleton__edges=[[0, 5]]), r"edges \[\(0, 5\)\] point outside"),
    "pairs-single": (_with(skeleton__pairs=[[0]]), "'pairs' must be a list of pairs"),
    "pairs-unknown-name": (_with(skeleton__pairs=[["a", "zz"]]), "'zz' is not a keypoint"),
    "build-str": (_with(build="xy"), "build record must be a dict, not 'xy'"),
    "build-unknown-entry": (_with(build__bogus=1), "build has an unknown entry 'bogus'"),
    "no-num-keypoints": (_with(build__num_keypoints=DROP), r"build\['num_keypoints'\] = None"),
    "num-keypoints-differ": (_with(build__num_keypoints=3), "skeleton has 2 keypoints"),
    "size-str": (_with(build__size="big"), r"build\['size'\] must be int, not 'big'"),
    "size-bool": (_with(build__size=True), r"build\['size'\] must be int, not True"),
    "size-zero": (_with(build__size=0), r"build\['size'\] = 0 is too small"),
    "preset-unknown": (_with(build__preset="xy"), "unknown preset 'xy'"),
    "stages-out-of-range": (_with(build__trainable_backbone_layers=9), "must be 0..5, got 9"),
    "kwargs-list": (_with(build__kwargs=[1]), r"build\['kwargs'\] must be dict or None"),
    "kwargs-str-value": (_with(build__kwargs={"min_size": "x"}), "holds 'min_size': 'x'"),
    "kwargs-unknown": (_with(build__kwargs={"min_sise": 64}), r"unknown KeypointRCNN options"),
    "kwargs-repeat-size": (_with(build__kwargs={"size": 64}), "does not build a model"),
    "config-str": (_with(config="x"), "config must be a dict, not 'x'"),
    "config-size-str": (_with(build=DROP, config__size="big"), r"config\['size'\] must be int"),
    "extra-list": (_with(config__extra=[1]), r"config\['extra'\] must be dict or None"),
    "label-int": (_with(config__extra={"label": 5}), r"config\['extra'\]\['label'\] must be str"),
    "weights-misfit": (_with(), "weights do not fit the model it describes"),
    "legacy-misfit": (_with(build=DROP), "weights do not fit the model it describes"),
}


@pytest.mark.parametrize("change, what", _WRONG.values(), ids=_WRONG.keys())
def test_a_checkpoint_of_the_wrong_structure_is_one_line_naming_the_file(
    tmp_path, good_checkpoint, change, what
):
    path = tmp_path / "crafted.pth"
    torch.save(change(good_checkpoint), path)
    with pytest.raises(KpnbError, match=what) as exc:
        load_checkpoint_model(path, "cpu")
    msg = str(exc.value)
    assert msg.startswith(f"{path}: ") and "\n" not in msg
    assert "kpnb train" in msg  # what to do instead


def test_the_good_checkpoint_loads_with_its_config_as_dicts(tmp_path, good_checkpoint, tiny_build):
    """The control of the cases above: with real weights it loads, so only their change
    makes them fail."""
    torch.save({**good_checkpoint, "model": tiny_build[0]}, tmp_path / "good.pth")
    model, ckpt = load_checkpoint_model(tmp_path / "good.pth", "cpu")
    assert model.kpnb_build == tiny_build[1]
    assert ckpt["skeleton_obj"].edges == ((0, 1),) and ckpt["skeleton_obj"].flip_pairs == [(0, 1)]
    assert ckpt["config"]["extra"] == {"label": "thing"}


def test_build_model_refuses_an_unknown_option():
    with pytest.raises(KpnbError, match=r"unknown KeypointRCNN options \['min_sise'\]"):
        build_model(2, weights=None, min_sise=64)


@pytest.mark.parametrize("command", ["predict", "evaluate"])
def test_cli_reports_a_crafted_checkpoint_in_one_line(tmp_path, capsys, command):
    from PIL import Image

    from kpnb.cli import main

    path = tmp_path / "crafted.pth"
    torch.save({"model": {}, "skeleton": {"keypoints": ["a"], "edges": [1]}}, path)
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


def test_weights_that_do_not_fit_are_one_line_naming_the_file(tmp_path):
    """--weights X.pth: a file with the head keys but not the network (say, a tiny run's)."""
    kps = "roi_heads.keypoint_predictor.kps_score_lowres.weight"
    cls = "roi_heads.box_predictor.cls_score.weight"
    heads_only = tmp_path / "heads.pth"
    torch.save({"model": {kps: torch.zeros(1, 3, 1, 1), cls: torch.zeros(2, 1)}}, heads_only)
    with pytest.raises(
        WeightsUnavailableError, match=r"heads.pth: these weights do not fit.*Missing"
    ) as exc:
        build_model(3, weights=heads_only, allow_random=True)  # a file that is there: no fallback
    assert "\n" not in str(exc.value)
    for name, state in {
        "flat.pth": {kps: 1, cls: torch.zeros(2, 1)},
        "vector.pth": {kps: torch.zeros(3), cls: torch.zeros(2, 1)},
    }.items():
        torch.save(state, tmp_path / name)
        with pytest.raises(WeightsUnavailableError, match=f"{name}: not Keypoint R-CNN weights"):
            build_model(3, weights=tmp_path / name)
    torch.save({kps: torch.zeros(1, 3, 1, 1), cls: torch.zeros(2, 1), "x": [1]}, tmp_path / "l.pth")
    with pytest.raises(WeightsUnavailableError, match=r"l.pth: not a state dict \('x' is no"):
        build_model(3, weights=tmp_path / "l.pth")
