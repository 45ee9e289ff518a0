"""torchvision's Keypoint R-CNN for any skeleton, with or without COCO weights.

`build_model` loads COCO's 17-keypoint weights into torchvision's network (frozen norm layers,
3 trainable backbone stages) and swaps in a K-keypoint predictor; from random weights every
stage trains with ``BatchNorm2d``. `PRESETS` are the networks and image sizes each device
suits. The build arguments stay on the model (``model.kpnb_build``) and in every checkpoint,
so `load_checkpoint_model` rebuilds exactly that network.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torchvision.models.detection import KeypointRCNN_ResNet50_FPN_Weights
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
from torchvision.models.detection.faster_rcnn import FasterRCNN, FastRCNNPredictor
from torchvision.models.detection.keypoint_rcnn import (
    KeypointRCNN,
    KeypointRCNNHeads,
    KeypointRCNNPredictor,
)
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork, LastLevelMaxPool
from torchvision.ops.misc import FrozenBatchNorm2d

from kpnb.checkpoint import Checkpoint, read_pth
from kpnb.config import select_device
from kpnb.errors import KpnbError

__all__ = [
    "WeightsUnavailableError",
    "build_model",
    "PRESETS",
    "Preset",
    "cpu_preset",
    "tiny_preset",
    "default_preset",
    "training_recipe",
    "load_checkpoint_model",
    "model_from_build",
    "misfit",
]

log = logging.getLogger(__name__)

COCO_WEIGHTS = KeypointRCNN_ResNet50_FPN_Weights.COCO_V1
#: Where the COCO weights come from (torchvision's own URL; tests point it at 127.0.0.1).
COCO_URL = COCO_WEIGHTS.url
#: Peak AdamW learning rate when the weights are pretrained: small, so the new head's first
#: large gradients do not wreck what the backbone learnt.
FINETUNE_LR = 1e-4


def cpu_preset(size: int = 256) -> dict:
    """Keyword arguments that make Keypoint R-CNN practical on a CPU: images stay at `size`
    (not 800 px), fewer proposals and RoIs reach the keypoint head (bench_train.py)."""
    return {
        "min_size": size,
        "max_size": size,
        "rpn_pre_nms_top_n_train": 600,
        "rpn_post_nms_top_n_train": 300,
        "rpn_pre_nms_top_n_test": 300,
        "rpn_post_nms_top_n_test": 100,
        # positive RoIs (a quarter) go through the keypoint head: 32 halves a step (bench_train.py)
        "box_batch_size_per_image": 32,
        "box_detections_per_img": 20,
    }


def tiny_preset(size: int = 256) -> dict:
    """The CPU preset cut further for tests and smoke runs: 16 RoIs and 100 proposals per
    image in training (the keypoint head itself is `TINY_HEAD`)."""
    return {
        **cpu_preset(size),
        "rpn_pre_nms_top_n_train": 200,
        "rpn_post_nms_top_n_train": 100,
        "box_batch_size_per_image": 16,
    }


@dataclass(frozen=True)
class Preset:
    """A network (backbone, FPN width, keypoint head, KeypointRCNN's options at an image size)
    and the recipe measured to suit it: batch size, and the peak learning rate from random
    weights (pretrained weights fine-tune at `FINETUNE_LR`)."""

    options: Callable[[int], dict]
    about: str
    backbone: str = "resnet50"
    fpn_channels: int = 256  # torchvision's; fewer make every stage after the backbone cheaper
    keypoint_head: tuple[int, ...] | None = None  # conv channels; None: torchvision's 8 x 512
    size: int = 256  # the loaders' image size unless one is given
    batch_size: int = 2
    scratch_lr: float = 1e-4


#: The ``"tiny"`` preset's keypoint head: about 40x fewer operations per RoI than 8 x 512.
TINY_HEAD = (128, 128)
#: The ``"fast"`` preset's keypoint head: 4 convolutions of 128 channels.
FAST_HEAD = (128, 128, 128, 128)

#: The networks `build_model` makes; ``benchmarks/bench_train.py`` measures them side by side.
PRESETS: dict[str, Preset] = {
    "cpu": Preset(
        options=cpu_preset,
        about="ResNet-50 FPN, COCO's 8x512 keypoint head, --size px: the COCO fine-tune on a CPU",
    ),
    "fast": Preset(
        backbone="resnet18",
        fpn_channels=128,
        keypoint_head=FAST_HEAD,
        options=cpu_preset,
        size=192,
        batch_size=8,
        scratch_lr=1e-3,
        about="ResNet-18, a 128-channel FPN, a 4x128 keypoint head, batch 8: learns from "
        "random weights on a CPU",
    ),
    "torchvision": Preset(
        options=lambda size: {},
        about="torchvision's own network and sizes (640-800 px): the COCO fine-tune on a GPU",
    ),
    "tiny": Preset(
        keypoint_head=TINY_HEAD,
        options=tiny_preset,
        about="the cpu preset with a 2x128 keypoint head and 16 RoIs: tests and smoke runs",
    ),
}


class WeightsUnavailableError(KpnbError, RuntimeError):
    """Pretrained weights could not be had (offline, or a bad path); the message says how,
    `reason` says why in a few words."""

    def __init__(self, message: str, reason: str = ""):
        super().__init__(message, param="weights")
        self.reason = reason or message


def default_preset(pretrained: bool = True) -> str:
    """What ``"auto"`` picks: ``"torchvision"`` on CUDA (COCO's image sizes); on a CPU,
    ``"cpu"`` to fine-tune pretrained weights and ``"fast"`` to train from random ones."""
    return "torchvision" if torch.cuda.is_available() else "cpu" if pretrained else "fast"


def training_recipe(model) -> dict:
    """``{"lr", "batch_size"}`` that suit `model`, from the preset and weights it was built
    with: `FINETUNE_LR` for pretrained weights, else the preset's own rate."""
    build = getattr(model, "kpnb_build", None) or {}
    preset = PRESETS.get(build.get("preset"), PRESETS["torchvision"])
    lr = FINETUNE_LR if build.get("pretrained", True) else preset.scratch_lr
    return {"lr": lr, "batch_size": preset.batch_size}


def _coco_state_dict() -> dict:
    """torchvision's COCO weights through torch.hub: cached in $TORCH_HOME, hash-checked."""
    hub = Path(torch.hub.get_dir()) / "checkpoints"
    said = io.StringIO()
    try:
        # torch.hub prints "Downloading: ..."; kpnb logs it instead
        with contextlib.redirect_stdout(said), contextlib.redirect_stderr(said):
            return torch.hub.load_state_dict_from_url(
                COCO_URL, model_dir=str(hub), progress=False, check_hash=True, weights_only=True
            )
    except (OSError, RuntimeError) as exc:  # URLError is an OSError
        if isinstance(exc, RuntimeError) and not str(exc).startswith("invalid hash value"):
            raise  # torch.hub's hash check says only this; any other is a torch failure
        why = (str(getattr(exc, "reason", exc)).splitlines() or [type(exc).__name__])[0]
        raise WeightsUnavailableError(
            f"COCO Keypoint R-CNN weights could not be downloaded ({why}). Download "
            f"{COCO_URL} on a connected machine and put it in {hub}/ or pass its path as "
            "weights=...; or train from scratch with weights=None (--weights none)",
            reason=f"COCO weights could not be downloaded: {why}",
        ) from None
    finally:
        for line in filter(None, map(str.strip, said.getvalue().splitlines())):
            log.info("%s", line)


def _load_path(path: Path) -> dict:
    """A state dict from a torchvision ``.pth`` or a kpnb checkpoint."""
    if not path.is_file():
        raise WeightsUnavailableError(f"{path}: no such weights file")
    try:
        blob = read_pth(path)
    except KpnbError as exc:
        raise WeightsUnavailableError(str(exc)) from None
    state = blob["model"] if isinstance(blob.get("model"), dict) else blob
    heads = {
        "roi_heads.keypoint_predictor.kps_score_lowres.weight": 4,
        "roi_heads.box_predictor.cls_score.weight": 2,
    }
    if not all(torch.is_tensor(state.get(k)) and state[k].ndim == n for k, n in heads.items()):
        raise WeightsUnavailableError(f"{path}: not Keypoint R-CNN weights (no keypoint head)")
    odd = next((k for k, v in state.items() if not torch.is_tensor(v)), None)
    if odd is not None or not all(isinstance(k, str) for k in state):
        raise WeightsUnavailableError(f"{path}: not a state dict ({odd!r} is no tensor)")
    return state


def misfit(model: nn.Module, state: dict) -> str | None:
    """What keeps `state` from loading into `model` (its first missing, unexpected or misshaped
    entry), None when it fits: a misfit is a clear error before ``load_state_dict``.
    ``num_batches_tracked`` is left out: frozen norm layers drop it, batch norm adds it."""

    def shapes(d: dict) -> dict:
        return {k: tuple(v.shape) for k, v in d.items() if not k.endswith("num_batches_tracked")}

    own, given = shapes(model.state_dict()), shapes(state)
    for what, keys in (("no", own.keys() - given), ("an unexpected", given.keys() - own)):
        if keys:
            more = f" (and {len(keys) - 1} more)" if len(keys) > 1 else ""
            return f"{what} entry {sorted(keys)[0]!r}{more}"
    return next(
        (f"{k!r} is {given[k]}, the network's {own[k]}" for k in own if own[k] != given[k]),
        None,
    )


def _network(
    num_keypoints: int, num_classes: int, preset: Preset, head, norm, norm_eps, trainable, options
) -> KeypointRCNN:
    """A ResNet FPN Keypoint R-CNN as `keypointrcnn_resnet50_fpn` assembles it, with the
    preset's backbone and FPN width, `build_model`'s norm layers, trainable stages and
    options, and a keypoint head of `head` conv channels (None: torchvision's 8 of 512)."""
    norm_layer = FrozenBatchNorm2d if norm == "frozen" else nn.BatchNorm2d
    backbone = resnet_fpn_backbone(
        backbone_name=preset.backbone,
        weights=None,
        norm_layer=norm_layer,
        trainable_layers=trainable,
    )
    if preset.fpn_channels != backbone.out_channels:  # torchvision's builder fixes 256
        in_channels = [block[0].in_channels for block in backbone.fpn.inner_blocks]
        backbone.fpn = FeaturePyramidNetwork(
            in_channels, preset.fpn_channels, extra_blocks=LastLevelMaxPool()
        )
        backbone.out_channels = preset.fpn_channels
    model = KeypointRCNN(backbone, num_classes, num_keypoints=num_keypoints, **options)
    if head is not None:
        model.roi_heads.keypoint_head = KeypointRCNNHeads(backbone.out_channels, head)
        model.roi_heads.keypoint_predictor = KeypointRCNNPredictor(head[-1], num_keypoints)
    if norm_eps is not None:  # torchvision sets eps 0 for the COCO_V1 weights (overwrite_eps)
        for module in model.modules():
            if isinstance(module, FrozenBatchNorm2d):
                module.eps = norm_eps
    return model


def _state_head(state: dict) -> tuple[int, ...] | None:
    """The keypoint head's conv channels in `state` (None: torchvision's 8 of 512)."""
    prefix = "roi_heads.keypoint_head."
    convs = sorted(
        (int(k[len(prefix) :].split(".")[0]), v.shape[0])
        for k, v in state.items()
        if k.startswith(prefix) and k.endswith(".weight") and v.ndim == 4
    )
    head = tuple(int(c) for _, c in convs)
    return None if head in ((), (512,) * 8) else head


def _from_state(
    weights, state: dict, num_keypoints: int, num_classes: int, preset: str, **net
) -> KeypointRCNN:
    """The network shaped like `state` (of `weights`) with `state` loaded, then given the
    preset's keypoint head, `num_keypoints` and `num_classes` where the state's differ."""
    state_k = state["roi_heads.keypoint_predictor.kps_score_lowres.weight"].shape[1]
    state_c = state["roi_heads.box_predictor.cls_score.weight"].shape[0]
    head, spec = _state_head(state), PRESETS[preset]
    model = _network(int(state_k), int(state_c), spec, head, **net)
    wrong = misfit(model, state)
    if wrong is not None:
        raise WeightsUnavailableError(
            f"{weights}: these weights do not fit the {preset!r} preset's network, "
            f"{spec.backbone} FPN Keypoint R-CNN ({wrong}); pass torchvision's COCO weights "
            "(presets cpu, torchvision, tiny) or a best.pth of a run with the same --preset"
        )
    model.load_state_dict(state, strict=False)  # `misfit` found nothing (it says why not strict)
    channels = spec.keypoint_head or (512,) * 8
    if head != spec.keypoint_head:  # COCO's 8x512 head under a small-head preset
        model.roi_heads.keypoint_head = KeypointRCNNHeads(model.backbone.out_channels, channels)
    if head != spec.keypoint_head or state_k != num_keypoints:
        model.roi_heads.keypoint_predictor = KeypointRCNNPredictor(channels[-1], num_keypoints)
    if state_c != num_classes:
        in_features = model.roi_heads.box_predictor.cls_score.in_features
        model.roi_heads.box_predictor = FastRCNNPredictor(in_features, num_classes)
    return model


def _options() -> frozenset[str]:
    """The keyword options ``KeypointRCNN`` takes (its own, FasterRCNN's, the transform's):
    torchvision passes unknown ones on and drops them silently, so a typo would be lost."""
    names = set()
    for cls in (KeypointRCNN, FasterRCNN, GeneralizedRCNNTransform):
        names |= set(inspect.signature(cls.__init__).parameters)
    return frozenset(names - {"self", "backbone", "num_classes", "num_keypoints", "kwargs"})


def build_model(
    num_keypoints: int,
    num_classes: int = 2,
    weights: str | os.PathLike | None = "coco",
    *,
    allow_random: bool = False,
    preset: str | None = "auto",
    size: int | None = None,
    trainable_backbone_layers: int | None = None,
    norm: str | None = None,
    norm_eps: float | None = None,
    **kwargs,
) -> KeypointRCNN:
    """A Keypoint R-CNN (ResNet-50 FPN) for `num_keypoints` keypoints.

    Args:
        num_classes: object classes including background (2: background + one object).
        weights: ``"coco"`` (torchvision's COCO_V1, downloaded once), a ``.pth`` path (a
            torchvision state dict or a kpnb checkpoint), or ``None`` for random weights.
        allow_random: when the weights cannot be had, log one line and continue from
            random weights instead of raising.
        preset: a name in `PRESETS` (``None``: ``"torchvision"``) or ``"auto"``
            (`default_preset` for the weights it could have).
        size: image size the cpu, fast and tiny presets keep (default: the preset's).
        trainable_backbone_layers: backbone stages that train (0-5); default 3 with
            pretrained weights, as torchvision does, and all 5 from random weights.
        norm: ``"frozen"`` (FrozenBatchNorm2d) or ``"batch"`` (BatchNorm2d); default frozen
            with pretrained weights (batch statistics of 2 images wreck them), else batch.
        norm_eps: eps of the frozen norm layers; default 0 for the COCO weights (what
            torchvision sets for them), else the layer's own 1e-5.
        **kwargs: passed on to ``KeypointRCNN`` (override the preset).

    Raises WeightsUnavailableError (unreachable weights, without `allow_random`) or KpnbError
    (an unknown preset, norm or ``KeypointRCNN`` option, or stages not 0-5).
    """
    if preset not in (*PRESETS, "auto", None):
        raise KpnbError(f"unknown preset {preset!r}; choose one of {[*PRESETS, 'auto']}")
    unknown = sorted(set(kwargs) - _options())
    if unknown:
        raise KpnbError(
            f"unknown KeypointRCNN options {unknown}; see torchvision's KeypointRCNN and "
            "FasterRCNN for the options there are"
        )
    state, coco, fallback = None, False, None  # fallback: why random weights replace `weights`
    if weights is not None:
        coco = str(weights).lower() == "coco"
        try:
            state = _coco_state_dict() if coco else _load_path(Path(weights))
        except WeightsUnavailableError as exc:
            if not allow_random:
                raise
            log.warning("%s -- continuing from random weights", exc)
            coco, fallback = False, exc.reason
    preset = default_preset(state is not None) if preset == "auto" else preset or "torchvision"
    spec = PRESETS[preset]
    size = size or spec.size
    options = {**spec.options(size), **kwargs}
    if coco and norm_eps is None:
        norm_eps = 0.0
    norm = norm or ("frozen" if state is not None else "batch")  # torchvision's defaults
    if norm not in ("frozen", "batch"):
        raise KpnbError(f"norm must be 'frozen' or 'batch', got {norm!r}")
    trainable = trainable_backbone_layers
    trainable = (3 if state is not None else 5) if trainable is None else int(trainable)
    if not 0 <= trainable <= 5:
        raise KpnbError(f"trainable_backbone_layers must be 0..5, got {trainable}")
    net = dict(norm=norm, norm_eps=norm_eps, trainable=trainable, options=options)
    if state is None:
        model = _network(num_keypoints, num_classes, spec, spec.keypoint_head, **net)
    else:
        model = _from_state(weights, state, num_keypoints, num_classes, preset, **net)
    model.kpnb_build = {
        "num_keypoints": int(num_keypoints),
        "num_classes": int(num_classes),
        "preset": preset,
        "pretrained": state is not None,
        "size": int(size),
        "trainable_backbone_layers": trainable,
        "norm": norm,
        "norm_eps": norm_eps,
        "kwargs": dict(kwargs),
    }
    # `kpnb.tutorial.noting_weights` reads which weights the model got from this record
    log.debug("built %s", preset, extra={"kpnb_build": model.kpnb_build, "kpnb_why": fallback})
    return model


def model_from_build(build: dict) -> KeypointRCNN:
    """The network a build record (``model.kpnb_build``, a checkpoint's ``build``) describes,
    with random weights; its ``kpnb_build`` is that record, so it says how it was trained."""
    args = {k: v for k, v in build.items() if k not in ("kwargs", "pretrained")}
    model = build_model(**args, **build["kwargs"], weights=None)
    model.kpnb_build = {**model.kpnb_build, "pretrained": build["pretrained"]}
    return model


def load_checkpoint_model(path: str | os.PathLike, device: str | torch.device | None = None):
    """``(model, checkpoint)``: the model of a kpnb checkpoint rebuilt as it was trained, in
    eval mode on `device` (default: CUDA, MPS, else the CPU), and its `Checkpoint`.

    Raises KpnbError naming the file and what is wrong (see `Checkpoint.load`), also for
    weights that do not fit the network its build record describes.
    """
    ckpt = Checkpoint.load(path)
    model = model_from_build(ckpt.build)
    wrong = misfit(model, ckpt.model)
    if wrong is not None:
        raise KpnbError(
            f"{path}: not a usable kpnb checkpoint: its weights do not fit the network its "
            f"build record describes ({wrong}); pass a best.pth or last.pth written by kpnb train"
        )
    model.load_state_dict(ckpt.model, strict=False)  # as in `_from_state`
    return model.to(select_device(device)).eval(), ckpt
