"""torchvision's Keypoint R-CNN for any skeleton, with or without COCO weights.

COCO weights fix the head at 17 person keypoints; `build_model` loads them into that
shape, then swaps the keypoint predictor for one with K outputs (and the box predictor
only when there is more than one object class). The CPU preset trades proposals and
image size for speed, so a fine-tune is possible without a GPU.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from torchvision.models.detection import (
    KeypointRCNN_ResNet50_FPN_Weights,
    keypointrcnn_resnet50_fpn,
)
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor
from torchvision.models.detection.keypoint_rcnn import KeypointRCNN, KeypointRCNNPredictor

__all__ = ["WeightsUnavailableError", "build_model", "cpu_preset", "load_checkpoint_model"]

log = logging.getLogger(__name__)

COCO_WEIGHTS = KeypointRCNN_ResNet50_FPN_Weights.COCO_V1
#: Where the COCO weights come from (torchvision's own URL; tests point it at 127.0.0.1).
COCO_URL = COCO_WEIGHTS.url


class WeightsUnavailableError(RuntimeError):
    """Pretrained weights could not be had (offline, or a bad path); the message says how."""


def cpu_preset(size: int = 256) -> dict:
    """Keyword arguments that make Keypoint R-CNN practical on a CPU.

    Images stay at `size` instead of being upscaled to 800 px, and fewer RPN proposals
    and sampled RoIs reach the heavy 8-conv keypoint head. ``benchmarks/bench_train.py``
    measures the effect.
    """
    return {
        "min_size": size, "max_size": size,
        "rpn_pre_nms_top_n_train": 600, "rpn_post_nms_top_n_train": 300,
        "rpn_pre_nms_top_n_test": 300, "rpn_post_nms_top_n_test": 100,
        "box_batch_size_per_image": 128, "box_detections_per_img": 20,
    }  # fmt: skip


def _coco_state_dict() -> dict:
    """torchvision's COCO weights through torch.hub: cached in $TORCH_HOME, hash-checked."""
    hub = Path(torch.hub.get_dir()) / "checkpoints"
    try:
        return torch.hub.load_state_dict_from_url(COCO_URL, model_dir=str(hub), progress=False,
                                                  check_hash=True, weights_only=True)  # fmt: skip
    except (OSError, RuntimeError) as exc:  # URLError is an OSError; a bad hash a RuntimeError
        reason = str(getattr(exc, "reason", exc)).splitlines()[0]
        raise WeightsUnavailableError(
            f"COCO Keypoint R-CNN weights could not be downloaded ({reason}). Download "
            f"{COCO_URL} on a connected machine and put it in {hub}/ or pass its path as "
            "weights=...; or train from scratch with weights=None (--weights none)"
        ) from None


def _load_path(path: Path) -> tuple[dict, int]:
    """A state dict and its keypoint count from a torchvision .pth or a kpnb checkpoint."""
    if not path.is_file():
        raise WeightsUnavailableError(f"{path}: no such weights file")
    blob = torch.load(path, map_location="cpu", weights_only=True)
    state = blob["model"] if isinstance(blob, dict) and "model" in blob else blob
    k = state["roi_heads.keypoint_predictor.kps_score_lowres.weight"].shape[1]
    return state, int(k)


def build_model(
    num_keypoints: int,
    num_classes: int = 2,
    weights: str | os.PathLike | None = "coco",
    *,
    allow_random: bool = False,
    preset: str | None = "cpu",
    size: int = 256,
    trainable_backbone_layers: int | None = None,
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
        preset: ``"cpu"`` (see `cpu_preset`) or ``None`` for torchvision's defaults
            (images upscaled to 800 px).
        size: image size the CPU preset keeps.
        **kwargs: passed on to ``KeypointRCNN`` (override the preset).

    Raises:
        WeightsUnavailableError: the weights are unreachable and `allow_random` is False.
    """
    options = {**(cpu_preset(size) if preset == "cpu" else {}), **kwargs}
    if preset not in ("cpu", None):
        raise ValueError(f"unknown preset {preset!r}; choose 'cpu' or None")
    state, state_k = None, None
    if weights is not None:
        try:
            if str(weights).lower() == "coco":
                state, state_k = _coco_state_dict(), 17
            else:
                state, state_k = _load_path(Path(weights))
        except WeightsUnavailableError as exc:
            if not allow_random:
                raise
            log.warning("%s -- continuing from random weights", exc)
    model = keypointrcnn_resnet50_fpn(
        weights=None, weights_backbone=None, num_classes=2 if state is not None else num_classes,
        num_keypoints=state_k or num_keypoints, trainable_backbone_layers=trainable_backbone_layers,
        **options,
    )  # fmt: skip
    if state is None:
        return model
    model.load_state_dict(state)
    if state_k != num_keypoints:
        in_channels = model.roi_heads.keypoint_predictor.kps_score_lowres.in_channels
        model.roi_heads.keypoint_predictor = KeypointRCNNPredictor(in_channels, num_keypoints)
    if num_classes != 2:
        in_features = model.roi_heads.box_predictor.cls_score.in_features
        model.roi_heads.box_predictor = FastRCNNPredictor(in_features, num_classes)
    return model


def load_checkpoint_model(path: str | os.PathLike, device: str | torch.device = "cpu"):
    """The model of a kpnb checkpoint, ready for inference, and the checkpoint dict."""
    from kpnb.tables import Skeleton

    ckpt = torch.load(Path(path), map_location="cpu", weights_only=False)
    if not isinstance(ckpt, dict) or "model" not in ckpt or "skeleton" not in ckpt:
        raise ValueError(f"{path}: not a kpnb checkpoint (no 'model'/'skeleton'); "
                         "pass a file written by kpnb train")  # fmt: skip
    skeleton = Skeleton(tuple(ckpt["skeleton"]["keypoints"]),
                        tuple(map(tuple, ckpt["skeleton"]["edges"])))  # fmt: skip
    config = ckpt.get("config", {})
    model = build_model(skeleton.num_keypoints, weights=None, size=config.get("size", 256),
                        preset=config.get("preset", "cpu"))  # fmt: skip
    model.load_state_dict(ckpt["model"])
    model.to(device).eval()
    ckpt["skeleton_obj"] = skeleton
    return model, ckpt
