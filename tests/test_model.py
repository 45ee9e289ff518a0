"""build_model: K outputs, pretrained as torchvision builds it, the preset by device, COCO
weights through a real download from 127.0.0.1, offline; weights that do not fit."""

import hashlib
import logging

import pytest
import torch
import torchvision
from torch import nn
from torchvision.models.detection import keypointrcnn_resnet50_fpn
from torchvision.ops.misc import FrozenBatchNorm2d

from kpnb import model as kmodel
from kpnb.checkpoint import Checkpoint
from kpnb.errors import KpnbError
from kpnb.model import (
    WeightsUnavailableError,
    build_model,
    cpu_preset,
    load_checkpoint_model,
    training_recipe,
)
from kpnb.skeleton import Skeleton


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
    assert m.backbone.out_channels == 128 == m.roi_heads.keypoint_head[0].in_channels
    convs = [c for c in m.roi_heads.keypoint_head if isinstance(c, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == list(kmodel.FAST_HEAD)
    assert _k(m) == 5
    # rebuilt from its checkpoint: the same network, the same weights
    path = tmp_path / "best.pth"
    Checkpoint.of_model(m, Skeleton.from_dict(_skeleton(5))).save(path)
    again, _ = load_checkpoint_model(path, device="cpu")
    assert again.kpnb_build["preset"] == "fast"
    assert torch.equal(again.roi_heads.keypoint_head[0].weight, m.roi_heads.keypoint_head[0].weight)
    # a fast run's weights do not fit the ResNet-50 presets: one clear error
    with pytest.raises(WeightsUnavailableError, match="'cpu' preset"):
        build_model(5, weights=path, preset="cpu")


def test_tiny_preset_has_a_small_keypoint_head_and_rebuilds_from_its_checkpoint(tmp_path):
    from kpnb.model import TINY_HEAD

    tiny = build_model(5, weights=None, size=64, preset="tiny")
    full = build_model(5, weights=None, size=64, preset="cpu")
    count = lambda m: sum(p.numel() for p in m.roi_heads.keypoint_head.parameters())  # noqa: E731
    assert count(tiny) * 20 < count(full)
    assert tiny.roi_heads.keypoint_predictor.kps_score_lowres.in_channels == TINY_HEAD[-1]
    assert tiny.roi_heads.fg_bg_sampler.batch_size_per_image == 16
    assert full.roi_heads.fg_bg_sampler.batch_size_per_image == 32
    Checkpoint.of_model(tiny, Skeleton(tuple("abcde"))).save(tmp_path / "t.pth")
    again, _ = load_checkpoint_model(tmp_path / "t.pth", device="cpu")
    assert again.kpnb_build["preset"] == "tiny"
    for a, b in zip(tiny.state_dict().values(), again.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_build_model_refuses_an_unknown_option():
    with pytest.raises(KpnbError, match=r"unknown KeypointRCNN options \['min_sise'\]"):
        build_model(2, weights=None, min_sise=64)


def test_weights_that_do_not_fit_are_one_line_naming_the_file(tmp_path):
    """--weights X.pth: a file with the head keys but not the network (say, a tiny run's)."""
    kps = "roi_heads.keypoint_predictor.kps_score_lowres.weight"
    cls = "roi_heads.box_predictor.cls_score.weight"
    heads_only = tmp_path / "heads.pth"
    torch.save({"model": {kps: torch.zeros(1, 3, 1, 1), cls: torch.zeros(2, 1)}}, heads_only)
    with pytest.raises(
        WeightsUnavailableError, match=r"heads.pth: these weights do not fit.*no entry"
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
