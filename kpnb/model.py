"""torchvision's Keypoint R-CNN for any skeleton, with or without COCO weights.

COCO weights fix the head at 17 person keypoints; `build_model` builds the network the way
torchvision does for pretrained weights (frozen norm layers, 3 trainable backbone stages),
loads the weights into that shape, then swaps the keypoint predictor for one with K outputs
(and the box predictor only when there is more than one object class). From random weights
every stage trains and the norm layers are ordinary ``BatchNorm2d``.

The preset (`PRESETS`) follows the device and the weights: on CUDA the model keeps
torchvision's own sizes (640-800 px), the sizes the COCO weights were trained at; on a CPU
the ``"cpu"`` preset keeps images small and samples fewer proposals, so a COCO fine-tune is
possible without a GPU, and without pretrained weights the ``"fast"`` preset (ResNet-18 FPN,
a small keypoint head) learns several times more per minute than ResNet-50. The
arguments a model was built with are kept on it (``model.kpnb_build``) and written into
every checkpoint, so `load_checkpoint_model` rebuilds exactly that network.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import io
import logging
import os
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torchvision.models.detection import KeypointRCNN_ResNet50_FPN_Weights
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor
from torchvision.models.detection.keypoint_rcnn import (
    KeypointRCNN,
    KeypointRCNNHeads,
    KeypointRCNNPredictor,
)
from torchvision.ops.misc import FrozenBatchNorm2d

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
    "read_checkpoint",
]

log = logging.getLogger(__name__)

COCO_WEIGHTS = KeypointRCNN_ResNet50_FPN_Weights.COCO_V1
#: Where the COCO weights come from (torchvision's own URL; tests point it at 127.0.0.1).
COCO_URL = COCO_WEIGHTS.url
#: Peak AdamW learning rate when the weights are pretrained: small, so the new head's first
#: large gradients do not wreck what the backbone learnt.
FINETUNE_LR = 1e-4


def cpu_preset(size: int = 256) -> dict:
    """Keyword arguments that make Keypoint R-CNN practical on a CPU.

    Images stay at `size` instead of being upscaled to 800 px, and fewer RPN proposals
    and sampled RoIs reach the keypoint head. ``benchmarks/bench_train.py`` measures it.
    """
    return {
        "min_size": size,
        "max_size": size,
        "rpn_pre_nms_top_n_train": 600,
        "rpn_post_nms_top_n_train": 300,
        "rpn_pre_nms_top_n_test": 300,
        "rpn_post_nms_top_n_test": 100,
        # RoIs sampled per image, a quarter of them positive; every positive RoI goes through
        # the keypoint head, the bulk of a CPU step. 32 (8 positives) halves a 192 px step
        # against torchvision's 512 (bench_train.py)
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
    """A network (the ResNet under the FPN, the keypoint head, KeypointRCNN's options at an
    image size) and the training recipe measured to suit it: batch size, and the peak
    learning rate from random weights (pretrained weights always fine-tune at
    `FINETUNE_LR`)."""

    backbone: str
    keypoint_head: tuple[int, ...] | None  # conv channels; None: torchvision's 8 x 512
    options: Callable[[int], dict]
    size: int  # the loaders' image size unless one is given
    batch_size: int
    scratch_lr: float
    about: str


#: The ``"tiny"`` preset's keypoint head: 2 convolutions of 128 channels instead of
#: torchvision's 8 of 512, about 40x fewer operations per RoI (tests and smoke runs).
TINY_HEAD = (128, 128)
#: The ``"fast"`` preset's keypoint head: 4 convolutions of 128 channels.
FAST_HEAD = (128, 128, 128, 128)

#: The networks `build_model` makes; ``benchmarks/bench_train.py`` measures them side by side.
PRESETS: dict[str, Preset] = {
    "cpu": Preset(
        "resnet50",
        None,
        cpu_preset,
        256,
        2,
        1e-4,
        "ResNet-50 FPN and COCO's 8x512 keypoint head at --size: the COCO fine-tune on a CPU",
    ),
    "fast": Preset(
        "resnet18",
        FAST_HEAD,
        cpu_preset,
        192,
        8,
        1e-3,
        "ResNet-18 FPN, a 4x128 keypoint head, batch 8: learns from random weights on a CPU",
    ),
    "torchvision": Preset(
        "resnet50",
        None,
        lambda size: {},
        256,
        2,
        1e-4,
        "torchvision's own network and sizes (640-800 px): the COCO fine-tune on a GPU",
    ),
    "tiny": Preset(
        "resnet50",
        TINY_HEAD,
        tiny_preset,
        256,
        2,
        1e-4,
        "the cpu preset with a 2x128 keypoint head and 16 RoIs: tests and smoke runs",
    ),
}


class WeightsUnavailableError(KpnbError, RuntimeError):
    """Pretrained weights could not be had (offline, or a bad path); the message says how."""


def _preset_options(preset: str, size: int) -> dict:
    return PRESETS[preset].options(size)


def default_preset(pretrained: bool = True) -> str:
    """What ``"auto"`` picks: ``"torchvision"`` on CUDA (COCO's image sizes); on a CPU,
    ``"cpu"`` to fine-tune pretrained weights and ``"fast"`` to train from random ones."""
    if torch.cuda.is_available():
        return "torchvision"
    return "cpu" if pretrained else "fast"


def _resolve_preset(preset: str | None, pretrained: bool = True) -> str:
    if preset == "auto":
        return default_preset(pretrained)
    if preset is None:
        return "torchvision"
    if preset not in PRESETS:
        raise KpnbError(f"unknown preset {preset!r}; choose one of {[*PRESETS, 'auto']}")
    return preset


def training_recipe(model) -> dict:
    """``{"lr", "batch_size"}`` that suit `model`, from the preset and weights it was built
    with: `FINETUNE_LR` for pretrained weights, else the preset's own rate."""
    build = getattr(model, "kpnb_build", None) or {}
    preset = PRESETS.get(build.get("preset"), PRESETS["torchvision"])
    lr = FINETUNE_LR if build.get("pretrained", True) else preset.scratch_lr
    return {"lr": lr, "batch_size": preset.batch_size}


def _short(exc: BaseException) -> str:
    return (str(getattr(exc, "reason", exc)).splitlines() or [type(exc).__name__])[0]


def _log_said(said: io.StringIO) -> None:
    for line in said.getvalue().splitlines():
        if line.strip():
            log.info("%s", line.strip())


def _coco_state_dict() -> dict:
    """torchvision's COCO weights through torch.hub: cached in $TORCH_HOME, hash-checked."""
    hub = Path(torch.hub.get_dir()) / "checkpoints"
    said = io.StringIO()
    try:
        # torch.hub prints "Downloading: ..."; kpnb logs it instead
        with contextlib.redirect_stdout(said), contextlib.redirect_stderr(said):
            state = torch.hub.load_state_dict_from_url(
                COCO_URL, model_dir=str(hub), progress=False, check_hash=True, weights_only=True
            )
        _log_said(said)
        return state
    except (OSError, RuntimeError) as exc:  # URLError is an OSError; a bad hash a RuntimeError
        _log_said(said)
        raise WeightsUnavailableError(
            f"COCO Keypoint R-CNN weights could not be downloaded ({_short(exc)}). Download "
            f"{COCO_URL} on a connected machine and put it in {hub}/ or pass its path as "
            "weights=...; or train from scratch with weights=None (--weights none)"
        ) from None


def read_checkpoint(path: str | os.PathLike) -> dict:
    """A ``.pth`` file's dict, read safely: tensors, plain containers, numbers, strings only.

    Anything else (a pickled function or class, which could run code when loaded) is
    refused, as are empty and unreadable files, each with a one-line ValueError.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise KpnbError(
            f"{path}: empty file, not a checkpoint; pass a best.pth or last.pth "
            "written by kpnb train"
        )
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "Unsupported global" in str(exc):  # a class or function to import: code
            raise KpnbError(
                f"{path}: refused: it holds Python objects (code) besides tensors "
                "and plain data; kpnb never writes such files, so do not trust "
                "where it came from"
            ) from None
        raise KpnbError(f"{path}: not a checkpoint (unreadable pickle data)") from None
    except Exception as exc:  # truncated zip, garbage bytes: whatever the unpickler trips on
        raise KpnbError(f"{path}: not a checkpoint (unreadable: {type(exc).__name__})") from None
    if not isinstance(blob, dict):
        raise KpnbError(f"{path}: not a checkpoint (holds a {type(blob).__name__}, not a dict)")
    return blob


def _load_path(path: Path) -> dict:
    """A state dict from a torchvision ``.pth`` or a kpnb checkpoint."""
    if not path.is_file():
        raise WeightsUnavailableError(f"{path}: no such weights file")
    try:
        blob = read_checkpoint(path)
    except ValueError as exc:
        raise WeightsUnavailableError(str(exc)) from None
    state = blob["model"] if isinstance(blob.get("model"), dict) else blob
    heads = {
        "roi_heads.keypoint_predictor.kps_score_lowres.weight": 4,
        "roi_heads.box_predictor.cls_score.weight": 2,
    }
    if not all(torch.is_tensor(state.get(k)) and state[k].ndim == n for k, n in heads.items()):
        raise WeightsUnavailableError(f"{path}: not Keypoint R-CNN weights (no keypoint head)")
    odd = _not_a_tensor(state)
    if odd is not None:
        raise WeightsUnavailableError(f"{path}: not a state dict ({odd[0]!r} is no tensor)")
    return state


def _not_a_tensor(state: dict) -> tuple | None:
    """``(key,)`` of the first entry of a state dict that is no name or holds no tensor
    (a tuple, since the key itself may be None); None: all are fine."""
    return next(
        ((k,) for k, v in state.items() if not isinstance(k, str) or not torch.is_tensor(v)),
        None,
    )


def _misfit(exc: RuntimeError) -> str:
    """The first concrete line of a ``load_state_dict`` error (the first is a header)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    line = lines[1] if len(lines) > 1 else (lines or [type(exc).__name__])[0]
    return line if len(line) <= 160 else line[:157] + "..."


def _network(
    num_keypoints: int,
    num_classes: int,
    backbone_name: str,
    head: tuple[int, ...] | None,
    norm: str,
    norm_eps: float | None,
    trainable: int,
    options: dict,
) -> KeypointRCNN:
    """A ResNet FPN Keypoint R-CNN as `keypointrcnn_resnet50_fpn` assembles it, with a
    keypoint head of `head` conv channels (None: torchvision's 8 of 512)."""
    norm_layer = FrozenBatchNorm2d if norm == "frozen" else nn.BatchNorm2d
    backbone = resnet_fpn_backbone(
        backbone_name=backbone_name, weights=None, norm_layer=norm_layer, trainable_layers=trainable
    )
    model = KeypointRCNN(backbone, num_classes, num_keypoints=num_keypoints, **options)
    if head is not None:
        model.roi_heads.keypoint_head = KeypointRCNNHeads(backbone.out_channels, head)
        model.roi_heads.keypoint_predictor = KeypointRCNNPredictor(head[-1], num_keypoints)
    if norm_eps is not None:  # torchvision sets eps 0 for the COCO_V1 weights (overwrite_eps)
        for module in model.modules():
            if isinstance(module, FrozenBatchNorm2d):
                module.eps = norm_eps
    return model


def _pretrained_state(
    weights: str | os.PathLike | None, allow_random: bool
) -> tuple[dict | None, bool]:
    """``(state dict or None, whether it is COCO's)`` for `weights`; with `allow_random`,
    unreachable weights log a warning and give None (random weights) instead of raising."""
    if weights is None:
        return None, False
    coco = str(weights).lower() == "coco"
    try:
        return (_coco_state_dict() if coco else _load_path(Path(weights))), coco
    except WeightsUnavailableError as exc:
        if not allow_random:
            raise
        log.warning("%s -- continuing from random weights", exc)
        return None, False


def _backbone_choice(pretrained: bool, norm: str | None, trainable: int | None) -> tuple[str, int]:
    """``(norm, trainable stages)``: the given ones checked, else torchvision's defaults
    (frozen norm and 3 stages with pretrained weights, batch norm and all 5 without)."""
    norm = norm or ("frozen" if pretrained else "batch")
    if norm not in ("frozen", "batch"):
        raise KpnbError(f"norm must be 'frozen' or 'batch', got {norm!r}")
    trainable = (3 if pretrained else 5) if trainable is None else int(trainable)
    if not 0 <= trainable <= 5:
        raise KpnbError(f"trainable_backbone_layers must be 0..5, got {trainable}")
    return norm, trainable


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
    state: dict,
    num_keypoints: int,
    num_classes: int,
    preset: Preset,
    norm: str,
    norm_eps: float | None,
    trainable: int,
    options: dict,
) -> KeypointRCNN:
    """The network shaped like `state` with `state` loaded, then given the preset's keypoint
    head where the state's differs (new weights), a keypoint predictor of `num_keypoints`
    and a box predictor of `num_classes` where those differ."""
    state_k = state["roi_heads.keypoint_predictor.kps_score_lowres.weight"].shape[1]
    state_c = state["roi_heads.box_predictor.cls_score.weight"].shape[0]
    head = _state_head(state)
    model = _network(
        int(state_k), int(state_c), preset.backbone, head, norm, norm_eps, trainable, options
    )
    model.load_state_dict(state)
    if head != preset.keypoint_head:  # COCO's 8x512 head under a small-head preset
        in_channels = model.backbone.out_channels
        channels = preset.keypoint_head or (512,) * 8
        model.roi_heads.keypoint_head = KeypointRCNNHeads(in_channels, channels)
        model.roi_heads.keypoint_predictor = KeypointRCNNPredictor(channels[-1], int(state_k))
    if state_k != num_keypoints:
        in_channels = model.roi_heads.keypoint_predictor.kps_score_lowres.in_channels
        model.roi_heads.keypoint_predictor = KeypointRCNNPredictor(in_channels, num_keypoints)
    if state_c != num_classes:
        in_features = model.roi_heads.box_predictor.cls_score.in_features
        model.roi_heads.box_predictor = FastRCNNPredictor(in_features, num_classes)
    return model


@functools.cache
def _options() -> frozenset[str]:
    """The keyword options ``KeypointRCNN`` takes (its own, FasterRCNN's, the transform's):
    torchvision passes unknown ones on and drops them silently, so a typo would be lost."""
    from torchvision.models.detection.faster_rcnn import FasterRCNN
    from torchvision.models.detection.transform import GeneralizedRCNNTransform

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
        num_keypoints: K, the skeleton's keypoint count.
        num_classes: object classes including background (2: background + one object).
        weights: ``"coco"`` (torchvision's COCO_V1, downloaded once), a ``.pth`` path (a
            torchvision state dict or a kpnb checkpoint), or ``None`` for random weights.
        allow_random: when the weights cannot be had, log one line and continue from
            random weights instead of raising.
        preset: a name in `PRESETS` (``None``: ``"torchvision"``) or ``"auto"``:
            ``"torchvision"`` on CUDA; on a CPU ``"cpu"`` when the weights could be had,
            else ``"fast"`` (ResNet-18, made to learn from random weights in minutes).
        size: image size the cpu, fast and tiny presets keep (default: the preset's).
        trainable_backbone_layers: backbone stages that train (0-5); default 3 with
            pretrained weights, as torchvision does, and all 5 from random weights.
        norm: ``"frozen"`` (FrozenBatchNorm2d) or ``"batch"`` (BatchNorm2d); default frozen
            with pretrained weights (batch statistics of 2 images wreck them), else batch.
        norm_eps: eps of the frozen norm layers; default 0 for the COCO weights (what
            torchvision sets for them), else the layer's own 1e-5.
        **kwargs: passed on to ``KeypointRCNN`` (override the preset).

    Raises:
        WeightsUnavailableError: the weights are unreachable and `allow_random` is False.
        KpnbError: an unknown preset, norm or ``KeypointRCNN`` option, or stages not 0-5.
    """
    if preset not in (*PRESETS, "auto", None):
        raise KpnbError(f"unknown preset {preset!r}; choose one of {[*PRESETS, 'auto']}")
    unknown = sorted(set(kwargs) - _options())
    if unknown:
        raise KpnbError(
            f"unknown KeypointRCNN options {unknown}; see torchvision's KeypointRCNN and "
            "FasterRCNN for the options there are"
        )
    state, coco = _pretrained_state(weights, allow_random)
    preset = _resolve_preset(preset, pretrained=state is not None)
    spec = PRESETS[preset]
    size = size or spec.size
    options = {**_preset_options(preset, size), **kwargs}
    if coco and norm_eps is None:
        norm_eps = 0.0
    norm, trainable = _backbone_choice(state is not None, norm, trainable_backbone_layers)
    if state is None:
        model = _network(
            num_keypoints,
            num_classes,
            spec.backbone,
            spec.keypoint_head,
            norm,
            norm_eps,
            trainable,
            options,
        )
    else:
        try:
            model = _from_state(
                state, num_keypoints, num_classes, spec, norm, norm_eps, trainable, options
            )
        except RuntimeError as exc:  # load_state_dict: keys missing, unexpected or misshaped
            raise WeightsUnavailableError(
                f"{weights}: these weights do not fit the {preset!r} preset's network, "
                f"{spec.backbone} FPN Keypoint R-CNN ({_misfit(exc)}); pass torchvision's "
                "COCO weights (presets cpu, torchvision, tiny) or a best.pth of a run with "
                "the same --preset"
            ) from None
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
    return model


def load_checkpoint_model(path: str | os.PathLike, device: str | torch.device | None = None):
    """The model of a kpnb checkpoint, rebuilt as it was trained, ready for inference.

    Returns ``(model, checkpoint)``; ``checkpoint["skeleton_obj"]`` is the `Skeleton` and
    ``checkpoint["config"]`` a dict (its ``"extra"`` a dict too). `device` defaults to the
    best available one (CUDA, MPS, else the CPU).

    Raises:
        KpnbError: one line naming the file and what is wrong: unreadable, holding code
            (see `read_checkpoint`), or a structure kpnb does not write (a skeleton, build
            record or config of the wrong shape, weights that do not fit the model).
    """
    from kpnb.config import select_device

    path = Path(path)
    ckpt = read_checkpoint(path)
    skeleton, build = _checked_checkpoint(path, ckpt)
    kwargs = build.pop("kwargs", None) or {}
    build.pop("pretrained", None)  # how it was trained; its weights are in the file
    try:
        model = build_model(**build, **kwargs, weights=None)
    except (KpnbError, TypeError) as exc:  # TypeError: kwargs repeating an argument
        raise _bad_checkpoint(path, f"its build record does not build a model ({exc})") from None
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as exc:
        raise _bad_checkpoint(
            path, f"its weights do not fit the model it describes ({_misfit(exc)})"
        ) from None
    model.to(select_device(device)).eval()
    ckpt["skeleton_obj"] = skeleton
    return model, ckpt


#: The types of a checkpoint's build record (`build_model`'s arguments, ``model.kpnb_build``).
_BUILD_TYPES: dict[str, tuple[type, ...]] = {
    "num_keypoints": (int,),
    "num_classes": (int,),
    "preset": (str,),
    "pretrained": (bool,),
    "size": (int,),
    "trainable_backbone_layers": (int, type(None)),
    "norm": (str, type(None)),
    "norm_eps": (float, int, type(None)),
    "kwargs": (dict, type(None)),
}
#: The types of the config entries kpnb reads back (``kpnb evaluate``/``predict``).
_CONFIG_TYPES: dict[str, tuple[type, ...]] = {
    "size": (int, type(None)),
    "seed": (int, type(None)),
    "preset": (str, type(None)),
    "extra": (dict, type(None)),
}
_EXTRA_TYPES: dict[str, tuple[type, ...]] = {
    "label": (str, type(None)),
    "points_as_skeleton": (str, type(None)),
}


def _bad_checkpoint(path: Path, what: str) -> KpnbError:
    return KpnbError(
        f"{path}: not a usable kpnb checkpoint: {what}; pass a best.pth or last.pth "
        "written by kpnb train (this file is damaged or was made by something else)"
    )


def _brief(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _check_types(path: Path, where: str, record: dict, types: dict, *, known: bool) -> None:
    """Each entry of `record` of its type in `types` (a bool is no int); with `known`,
    no other entries."""
    for key, value in record.items():
        if key not in types:
            if known:
                raise _bad_checkpoint(
                    path, f"{where} has an unknown entry {_brief(key)} (known: {list(types)})"
                )
            continue
        allowed = types[key]
        if isinstance(value, bool) and bool not in allowed or not isinstance(value, allowed):
            names = " or ".join("None" if t is type(None) else t.__name__ for t in allowed)
            raise _bad_checkpoint(path, f"{where}[{key!r}] must be {names}, not {_brief(value)}")


def _checked_checkpoint(path: Path, ckpt: dict) -> tuple:
    """``(skeleton, build record)`` of a checkpoint dict, its structure checked: the one
    place that does, so every reader of a checkpoint may trust its fields afterwards.

    ``torch.load(weights_only=True)`` guarantees plain data, not kpnb's layout; a file
    edited or made elsewhere could hold anything there. ``ckpt["config"]`` is made a dict
    (with a dict ``"extra"``) in place.
    """
    from kpnb.tables import Skeleton

    state = ckpt.get("model")
    if not isinstance(state, dict) or "skeleton" not in ckpt:
        raise KpnbError(
            f"{path}: not a kpnb checkpoint (no 'model'/'skeleton'); "
            "pass a best.pth or last.pth written by kpnb train"
        )
    odd = _not_a_tensor(state)
    if odd is not None:
        raise _bad_checkpoint(path, f"its weights ('model') hold {_brief(odd[0])}, not a tensor")
    try:
        skeleton = Skeleton.from_dict(ckpt["skeleton"])
    except KpnbError as exc:
        raise _bad_checkpoint(path, f"its skeleton is wrong: {exc}") from None
    config = ckpt.get("config")
    if not isinstance(config, (dict, type(None))):
        raise _bad_checkpoint(path, f"its config must be a dict, not {_brief(config)}")
    config = dict(config or {})
    _check_types(path, "config", config, _CONFIG_TYPES, known=False)
    config["extra"] = dict(config.get("extra") or {})
    _check_types(path, "config['extra']", config["extra"], _EXTRA_TYPES, known=False)
    ckpt["config"] = config
    build = ckpt.get("build")
    if not isinstance(build, (dict, type(None))):
        raise _bad_checkpoint(path, f"its build record must be a dict, not {_brief(build)}")
    if not build:  # checkpoints from before the build record: the preset of their size
        build = {
            "num_keypoints": skeleton.num_keypoints,
            "size": config.get("size") or 256,
            "preset": config.get("preset") or "torchvision",
        }
    build = dict(build)
    _check_types(path, "build", build, _BUILD_TYPES, known=True)
    for key in ("size", "num_classes"):
        if key in build and build[key] < (2 if key == "num_classes" else 1):
            raise _bad_checkpoint(path, f"build[{key!r}] = {build[key]} is too small")
    if build.get("num_keypoints") != skeleton.num_keypoints:
        raise _bad_checkpoint(
            path,
            f"build['num_keypoints'] = {build.get('num_keypoints')!r}, but its skeleton has "
            f"{skeleton.num_keypoints} keypoints",
        )
    for key, value in (build.get("kwargs") or {}).items():
        if not isinstance(key, str) or not _plain_option(value):
            raise _bad_checkpoint(
                path, f"build['kwargs'] holds {_brief(key)}: {_brief(value)}, not an option value"
            )
    return skeleton, build


def _plain_option(value) -> bool:
    """A KeypointRCNN option a checkpoint can hold: a number, None, or a list of numbers."""
    if isinstance(value, (list, tuple)):
        return all(_plain_option(v) and not isinstance(v, (list, tuple)) for v in value)
    return value is None or isinstance(value, (int, float))
