"""A CVAT auto-annotation function made from a kpnb checkpoint: the model pre-annotates a task.

cvat-sdk's ``cvat_sdk.auto_annotation`` driver runs it on your machine (``cvat-cli task
auto-annotate``) or behind CVAT's UI through an agent (``cvat-cli function create-native`` +
``function run-agent``), passing cvat-cli's ``-p NAME=TYPE:VALUE`` parameters to `create`::

    cvat-cli --server-host https://app.cvat.ai --auth USER task auto-annotate TASK_ID \\
        --function-module kpnb.autoannotate -p checkpoint=str:runs/face/best.pth \\
        -p point_threshold=float:0.0 --conf-threshold 0.5

Each detection of `kpnb.evaluate.predict` (in the image's own pixels) at or above the
driver's ``--conf-threshold`` (default 0.5) becomes a ``skeleton`` of the checkpoint's label
with one ``keypoint`` per point, which the driver maps by name onto the task's skeleton; a
point scoring below ``point_threshold`` is ``outside``, for the person correcting it.
cvat-sdk is optional (``pip install "kpnb[cvat]"``): `create` says in one line what to install.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import pandas as pd

from kpnb.errors import KpnbError

if TYPE_CHECKING:  # pragma: no cover
    from PIL import Image

    from kpnb.skeleton import Skeleton

__all__ = ["DEFAULT_POINT_THRESHOLD", "DEFAULT_SCORE_THRESHOLD", "KpnbFunction", "create"]

#: Keypoint R-CNN's keypoint score is the heatmap's logit at its peak, not a probability;
#: below 0 the peak is weaker than the map's background and the point is a guess.
DEFAULT_POINT_THRESHOLD = 0.0
#: Detections kept when the driver gives no confidence threshold (as `kpnb.evaluate.predict`).
DEFAULT_SCORE_THRESHOLD = 0.5

INSTALL_HINT = 'the CVAT auto-annotation function needs cvat-sdk: pip install "kpnb[cvat]"'


def _sdk():
    """``cvat_sdk.auto_annotation``, or a one-line KpnbError saying what to install."""
    try:
        import cvat_sdk.auto_annotation as cvataa
    except ImportError:
        raise KpnbError(INSTALL_HINT) from None
    return cvataa


class KpnbFunction:
    """A detection function for cvat-sdk's auto-annotation driver (see the module docstring):
    `model` (`kpnb.model.load_checkpoint_model`) predicts `skeleton` as the task's `label`;
    keypoints scoring below `point_threshold` come out ``outside``."""

    def __init__(self, model, skeleton: Skeleton, label: str, point_threshold: float):
        cvataa = _sdk()
        self.model, self.skeleton, self.label = model, skeleton, label
        self.point_threshold = float(point_threshold)
        # one skeleton label (id 0), keypoint ids 0..K-1 in the order `predict` gives them
        points = [cvataa.keypoint_spec(name, j) for j, name in enumerate(skeleton.keypoints)]
        label_spec = cvataa.skeleton_label_spec(label, 0, points)
        self.spec = cvataa.DetectionFunctionSpec(labels=[label_spec])

    def predict(self, image: Image.Image, conf_threshold: float | None = None) -> pd.DataFrame:
        """`kpnb.evaluate.predict` on one image, at the driver's confidence threshold."""
        from kpnb.evaluate import predict

        threshold = DEFAULT_SCORE_THRESHOLD if conf_threshold is None else conf_threshold
        return predict(
            self.model, [image], self.skeleton, self.label, score_threshold=threshold, batch_size=1
        )

    def detect(self, context, image: Image.Image) -> list:
        """The skeletons found in `image` (the SDK's ``DetectionFunction.detect``): one
        ``keypoint`` per point, ``outside`` where its score is below `point_threshold`."""
        cvataa = _sdk()
        shapes = []
        preds = self.predict(image, context.conf_threshold)
        for _, rows in preds.sort_values("point_index").groupby("instance_id", sort=True):
            elements = [
                cvataa.keypoint(
                    int(r.point_index),
                    [float(r.x), float(r.y)],
                    outside=bool(r.keypoint_score < self.point_threshold),
                )
                for r in rows.itertuples(index=False)
            ]
            shapes.append(cvataa.skeleton(0, elements))
        return shapes


def create(
    checkpoint: str,
    point_threshold: float = DEFAULT_POINT_THRESHOLD,
    label: str = "",
    device: str = "",
) -> KpnbFunction:
    """The function cvat-cli builds from its ``-p`` parameters: `checkpoint` is a ``best.pth``
    or ``last.pth`` of kpnb train (``-p checkpoint=str:PATH``); keypoints scoring below
    `point_threshold` come out ``outside``; `label` is the task's skeleton label when it is
    named unlike the model's (default: the checkpoint's); `device` cuda, mps or cpu (default:
    the best available)."""
    _sdk()  # before loading a model: say what is missing first
    from kpnb.model import load_checkpoint_model

    model, ckpt = load_checkpoint_model(os.fspath(checkpoint), device or None)
    name = label or ckpt.label
    if not name:
        raise KpnbError(
            f"{checkpoint}: the checkpoint does not name its skeleton label; pass it with "
            "-p label=str:NAME (the skeleton label of your CVAT task)"
        )
    return KpnbFunction(model, ckpt.skeleton, str(name), point_threshold)
