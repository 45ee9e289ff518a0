"""What ``best.pth`` and ``last.pth`` hold: the `Checkpoint` record, written and read here only.

`kpnb.train.fit` writes them; `Checkpoint.load` reads them with ``weights_only=True`` (which
runs no code) and, since a file may have been edited or made elsewhere, checks every field's
type and range, naming the field and its value, before a model is built from it.
"""

from __future__ import annotations

import math
import os
import pickle
import random
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch

from kpnb.config import PRESET_NAMES, version
from kpnb.errors import KpnbError, brief
from kpnb.io import atomic_path
from kpnb.skeleton import Skeleton

__all__ = [
    "Checkpoint",
    "RunData",
    "TrainConfig",
    "MAX_SIZE",
    "read_pth",
    "rng_state",
    "restore_rng",
]

#: What a checkpoint's ``format`` entry says.
FORMAT = "kpnb-checkpoint"
#: The largest image side a checkpoint may ask for (torchvision's own sizes end at 1333).
MAX_SIZE = 4096


@dataclass
class TrainConfig:
    """Everything that shapes a run; stored in every checkpoint."""

    epochs: int | None = 10  # None: as many as `max_minutes` allows (the budget decides)
    lr: float | None = None  # AdamW peak; None: the model's `kpnb.model.training_recipe`
    batch_size: int | None = None  # recorded by `fit` from the training loader
    weight_decay: float = 1e-4
    grad_clip: float = 10.0
    pct_start: float = 0.3  # share of the one-cycle schedule spent warming up
    amp: bool | None = None  # None: on for CUDA
    seed: int = 0  # also the train/validation split's seed
    size: int = 256  # the loaders' image size (`kpnb evaluate` and `predict` read it)
    max_minutes: float | None = None  # time budget: the schedule ends, and training stops, then
    monitor: str = "AP"  # metric that picks the best checkpoint
    sigmas: list[float] | None = None


@dataclass
class RunData:
    """What a run trained on: the export as given (None: loaders made in Python), the skeleton
    its plain points were grouped into, the split's seed and the image ids on each side."""

    spec: str | None
    points_as_skeleton: str | None
    seed: int
    train: list[int]
    val: list[int]


@dataclass
class Checkpoint:
    """The weights, what rebuilds the network (`build`), the run (`config`, `label`, `data`),
    where it stood (`epoch`, `metrics`, `history`, `best`) and, in ``last.pth`` only, what
    `kpnb.train.fit` needs to continue (`resume`)."""

    model: dict[str, torch.Tensor]
    skeleton: Skeleton
    build: dict
    config: TrainConfig
    label: str | None
    data: RunData | None
    epoch: int
    metrics: dict
    history: list[dict] = field(default_factory=list)
    best: tuple[int, float] | None = None
    resume: dict | None = None
    kpnb_version: str = ""

    @classmethod
    def of_model(
        cls, model, skeleton: Skeleton, label: str | None = None, config: TrainConfig | None = None
    ) -> Checkpoint:
        """A checkpoint of a `kpnb.model.build_model` model outside a run (epoch 0)."""
        return cls(
            model.state_dict(),
            skeleton,
            dict(model.kpnb_build),
            config or TrainConfig(size=model.kpnb_build["size"]),
            label,
            None,
            epoch=0,
            metrics={},
            kpnb_version=version(),
        )

    @property
    def pretrained(self) -> bool:
        """Whether the run started from pretrained weights (COCO's or a file's)."""
        return self.build["pretrained"]

    def save(self, path: str | os.PathLike) -> Path:
        """Write it atomically: a crash never leaves a half-written file."""
        blob = {f.name: getattr(self, f.name) for f in fields(self)}
        blob.update(
            format=FORMAT,
            skeleton=self.skeleton.to_dict(),
            config=asdict(self.config),
            data=None if self.data is None else asdict(self.data),
            best=None if self.best is None else list(self.best),
        )
        path = Path(path)
        with atomic_path(path) as tmp:
            torch.save(blob, tmp)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, *, resume: bool = False) -> Checkpoint:
        """The checkpoint at `path`, every field checked; with `resume`, a ``last.pth``.
        Raises KpnbError, one line naming the file and what is wrong (empty, unreadable, it
        would run code, a field of the wrong type or range)."""
        path = Path(path)
        blob = read_pth(path)
        check = _Checker(path)
        if blob.get("format") != FORMAT:
            raise check.fail(f"no format {FORMAT!r} (found {brief(blob.get('format'))})")
        unknown = sorted(map(str, set(blob) - {f.name for f in fields(cls)} - {"format"}))
        if unknown:
            raise check.fail(f"unknown entries {unknown}")
        skeleton = check.skeleton(blob.get("skeleton"))
        return cls(
            model=check.state(blob.get("model")),
            skeleton=skeleton,
            build=check.build(blob.get("build"), skeleton),
            config=check.config(blob.get("config"), skeleton),
            label=check.check("label", blob.get("label"), (str, _NONE)),
            data=check.data(blob.get("data")),
            epoch=check.check("epoch", blob.get("epoch"), _INT, 0),
            metrics=check.row("metrics", blob.get("metrics")),
            history=[
                check.row(f"history[{i}]", row)
                for i, row in enumerate(check.check("history", blob.get("history"), (list,)))
            ],
            best=check.best(blob.get("best")),
            resume=check.resume(blob.get("resume"), required=resume),
            kpnb_version=check.check("kpnb_version", blob.get("kpnb_version"), (str,)),
        )


def read_pth(path: Path) -> dict:
    """A ``.pth`` file's dict, read with ``weights_only=True``: one clear error for a missing,
    empty, unreadable or code-carrying file, or one that holds no dict."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise KpnbError(f"{path}: empty file, not a checkpoint; {_WHAT_TO_PASS}")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        try:  # what torch.save's file would import: torch's own list of what weights_only refuses
            code = list(torch.serialization.get_unsafe_globals_in_checkpoint(path))
        except (ValueError, RuntimeError):  # not a torch.save zip, or a damaged one
            code = []
        if code:
            raise KpnbError(
                f"{path}: refused: loading it would run code ({', '.join(code[:3])}); kpnb "
                "never writes such files, so do not trust where it came from"
            ) from None
        raise KpnbError(f"{path}: not a checkpoint (unreadable pickle data)") from None
    except Exception as exc:  # a damaged file: truncated zip, garbage bytes, whatever torch says
        raise KpnbError(f"{path}: not a checkpoint (unreadable: {type(exc).__name__})") from None
    if not isinstance(blob, dict):
        raise KpnbError(f"{path}: not a checkpoint (holds a {type(blob).__name__}, not a dict)")
    return blob


_WHAT_TO_PASS = "pass a best.pth or last.pth written by kpnb train"

# A rule is (types, lowest, highest): a bool passes only where bool is named; a number must
# be finite and in range.
_NONE = type(None)
_INT, _REAL = (int,), (int, float)
_COUNT, _FRACTION, _SIZE = (_INT, 1, 100_000), (_REAL, 0.0, 1.0), (_INT, 1, MAX_SIZE)
_SEED = (_INT, 0, 2**32 - 1)
#: `kpnb.model.build_model` options a checkpoint may hold: a number's rule, or a list's
#: ``("list", length, rule of each item)``.
_OPTIONS: dict[str, tuple] = {
    **dict.fromkeys(
        "rpn_pre_nms_top_n_train rpn_pre_nms_top_n_test rpn_post_nms_top_n_train "
        "rpn_post_nms_top_n_test rpn_batch_size_per_image box_batch_size_per_image "
        "box_detections_per_img".split(),
        _COUNT,
    ),
    **dict.fromkeys(
        "rpn_nms_thresh rpn_fg_iou_thresh rpn_bg_iou_thresh rpn_positive_fraction "
        "rpn_score_thresh box_score_thresh box_nms_thresh box_fg_iou_thresh "
        "box_bg_iou_thresh box_positive_fraction".split(),
        _FRACTION,
    ),
    "size_divisible": (_INT, 1, 1024),
    "min_size": _SIZE,
    "max_size": _SIZE,
    "fixed_size": ("list", 2, _SIZE),
    "image_mean": ("list", 3, (_REAL, -1e3, 1e3)),
    "image_std": ("list", 3, (_REAL, 1e-6, 1e3)),
    "bbox_reg_weights": ("list", 4, (_REAL, 1e-6, 1e3)),
}
#: A build record (``model.kpnb_build``: `build_model`'s arguments), entry by entry.
_BUILD = {
    "num_keypoints": (_INT, 1, 10_000),
    "num_classes": (_INT, 2, 10_000),
    "preset": ((str,),),
    "pretrained": ((bool,),),
    "size": _SIZE,
    "trainable_backbone_layers": (_INT, 0, 5),
    "norm": ((str,),),
    "norm_eps": ((int, float, _NONE), 0.0, 1.0),
    "kwargs": ((dict,),),
}
_CONFIG = {
    "epochs": ((int, _NONE), 1, 1_000_000),
    "lr": ((int, float, _NONE), 1e-12, 10.0),
    "batch_size": ((int, _NONE), 1, 100_000),
    "weight_decay": (_REAL, 0.0, 10.0),
    "grad_clip": (_REAL, 1e-12),
    "pct_start": _FRACTION,
    "amp": ((bool, _NONE),),
    "seed": _SEED,
    "size": _SIZE,
    "max_minutes": ((int, float, _NONE), 1e-9),
    "monitor": ((str,),),
    "sigmas": ((list, _NONE),),
}
_DATA = {
    "spec": ((str, _NONE),),
    "points_as_skeleton": ((str, _NONE),),
    "seed": _SEED,
    "train": ((list,),),
    "val": ((list,),),
}


class _Checker:
    """The checks of one file's fields; each failure names the file, the field and value."""

    def __init__(self, path: Path):
        self.path = path

    def fail(self, what: str) -> KpnbError:
        return KpnbError(f"{self.path}: not a usable kpnb checkpoint: {what}; {_WHAT_TO_PASS}")

    def check(self, name: str, value, types: tuple, lo=-math.inf, hi=math.inf):
        """`value`, of one of `types` and, a number, finite and in ``[lo, hi]``."""
        if isinstance(value, bool) and bool not in types or not isinstance(value, types):
            allowed = " or ".join("None" if t is _NONE else t.__name__ for t in types)
            raise self.fail(f"{name} must be {allowed}, not {brief(value)}")
        # NaN fails every comparison
        if isinstance(value, (int, float)) and (not lo <= value <= hi or abs(value) == math.inf):
            raise self.fail(f"{name} = {brief(value)} is outside {lo}..{hi}")
        return value

    def record(self, name: str, record, rules: dict[str, tuple]) -> dict:
        """`record`, a dict of exactly the entries of `rules`, each of its rule."""
        self.check(name, record, (dict,))
        if set(record) != set(rules):
            missing = sorted(rules - record.keys())
            unknown = sorted(map(str, record - rules.keys()))
            raise self.fail(f"{name} entries missing {missing}, unknown {unknown}")
        for key, rule in rules.items():
            self.check(f"{name}[{key!r}]", record[key], *rule)
        return record

    def option(self, key: str, value):
        """A `build_model` option of `_OPTIONS`; `min_size` may be several sizes, and
        `fixed_size` and `bbox_reg_weights` None (torchvision's default)."""
        name, rule = f"build['kwargs'][{key!r}]", _OPTIONS[key]
        if key == "min_size" and isinstance(value, (list, tuple)):  # one size per image
            rule = ("list", len(value), rule)
        if rule[0] != "list":
            return self.check(name, value, *rule)
        if key in ("fixed_size", "bbox_reg_weights") and value is None:
            return None
        if not isinstance(value, (list, tuple)) or len(value) != rule[1]:
            raise self.fail(f"{name} must be a list of {rule[1]} numbers, not {brief(value)}")
        return [self.check(f"{name}[{i}]", v, *rule[2]) for i, v in enumerate(value)]

    def row(self, name: str, row) -> dict:
        """A history row or the metrics: names to numbers, strings or None."""
        self.check(name, row, (dict,))
        for key, value in row.items():
            if not isinstance(key, str) or not isinstance(value, (int, float, str, _NONE)):
                raise self.fail(f"{name} holds {brief(key)}: {brief(value)}, not a number")
        return row

    def skeleton(self, data) -> Skeleton:
        try:
            return Skeleton.from_dict(data)
        except KpnbError as exc:
            raise self.fail(f"its skeleton is wrong: {exc}") from None

    def state(self, state) -> dict:
        self.check("model", state, (dict,))
        for key, value in state.items():
            if not isinstance(key, str) or not torch.is_tensor(value):
                raise self.fail(f"its weights ('model') hold {brief(key)}, not a named tensor")
        return state

    def build(self, build, skeleton: Skeleton) -> dict:
        """`kpnb.model.build_model`'s arguments: every one there, of its type and range."""
        self.record("build", build, _BUILD)
        if build["num_keypoints"] != skeleton.num_keypoints:
            raise self.fail(
                f"build['num_keypoints'] = {build['num_keypoints']}, but its skeleton has "
                f"{skeleton.num_keypoints} keypoints"
            )
        for name, allowed in (("preset", PRESET_NAMES), ("norm", ("frozen", "batch"))):
            if build[name] not in allowed:
                raise self.fail(f"build[{name!r}] = {brief(build[name])} is not one of {allowed}")
        kwargs = build["kwargs"]
        for name, value in kwargs.items():
            if name not in _OPTIONS:
                raise self.fail(
                    f"build['kwargs'] holds {brief(name)}, not an option a checkpoint keeps "
                    f"(those are {sorted(_OPTIONS)})"
                )
            kwargs[name] = self.option(name, value)
        return build

    def config(self, config, skeleton: Skeleton) -> TrainConfig:
        sigmas = self.record("config", config, _CONFIG)["sigmas"]
        if sigmas is not None:
            if len(sigmas) != skeleton.num_keypoints:
                raise self.fail(
                    f"config['sigmas'] has {len(sigmas)} values for "
                    f"{skeleton.num_keypoints} keypoints"
                )
            for i, s in enumerate(sigmas):
                self.check(f"config['sigmas'][{i}]", s, _REAL, 1e-9)
        return TrainConfig(**config)

    def data(self, data) -> RunData | None:
        if data is None:
            return None
        self.record("data", data, _DATA)
        for side in ("train", "val"):
            if not all(isinstance(i, int) and not isinstance(i, bool) for i in data[side]):
                raise self.fail(f"data[{side!r}] must be a list of image ids")
        return RunData(**data)

    def best(self, best) -> tuple[int, float] | None:
        """``[kind, value]``: see `kpnb.train._Run.score` (the value may be infinite)."""
        if best is None:
            return None
        if not (
            isinstance(best, list)
            and len(best) == 2
            and best[0] in (0, 1)
            and isinstance(best[1], (int, float))
            and not math.isnan(best[1])
        ):
            raise self.fail(f"best must be [0 or 1, a number], not {brief(best)}")
        return int(best[0]), float(best[1])

    def resume(self, resume, *, required: bool) -> dict | None:
        if resume is None:
            if required:
                raise KpnbError(
                    f"{self.path}: cannot resume from it (it holds no optimizer state: a "
                    "best.pth?); resume from the last.pth that kpnb train wrote"
                )
            return None
        rules = {"optimizer": ((dict,),), "lr_scheduler": ((dict,),), "scaler": ((dict, _NONE),)}
        self.record("resume", resume, {**rules, "rng": ((dict,),)})
        optimizer = resume["optimizer"]
        if set(optimizer) != {"state", "param_groups"} or not isinstance(
            optimizer["param_groups"], list
        ):
            raise self.fail("resume['optimizer'] is not the optimizer state kpnb train saves")
        schedule = resume["lr_scheduler"]
        self.check("resume['lr_scheduler']['steps']", schedule.get("steps"), _INT, 0)
        self.check("resume['lr_scheduler']['seconds']", schedule.get("seconds"), _REAL, 0.0)
        if not _rng_ok(resume["rng"]):
            raise self.fail("resume['rng'] is not the random state kpnb train saves")
        return resume


def _rng_ok(rng: dict) -> bool:
    """Whether `rng` is what `rng_state` saves: the Python and NumPy states are set on
    scratch generators, the torch ones compared in type and size with real ones."""
    try:
        random.Random().setstate(rng["python"])
        np.random.RandomState().set_state(_numpy_state(rng["numpy"]))
        checks = [(rng["torch"], torch.get_rng_state())]
        if "loader" in rng:
            checks.append((rng["loader"], torch.Generator().get_state()))
        checks += [(state, None) for state in rng.get("cuda", [])]
    except (AttributeError, KeyError, TypeError, ValueError, IndexError, OverflowError):
        return False
    return all(
        torch.is_tensor(state)
        and state.dtype == torch.uint8
        and (like is None or state.shape == like.shape)
        for state, like in checks
    )


def rng_state(loader) -> dict:
    """The random states a resumed run restores (Python, NumPy, torch, CUDA, `loader`'s
    generator), as plain data and tensors."""
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),  # tuples, which weights_only loads as they are
        "numpy": {
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "gauss": [int(np_state[3]), float(np_state[4])],
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    generator = getattr(loader, "generator", None)
    if generator is not None:
        state["loader"] = generator.get_state()
    return state


def restore_rng(state: dict, loader) -> None:
    """Set the states `rng_state` saved."""
    random.setstate(state["python"])
    np.random.set_state(_numpy_state(state["numpy"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    generator = getattr(loader, "generator", None)
    if "loader" in state and generator is not None:
        generator.set_state(state["loader"])


def _numpy_state(saved: dict) -> tuple:
    keys = saved["keys"].numpy().astype(np.uint32)
    return "MT19937", keys, saved["pos"], saved["gauss"][0], saved["gauss"][1]
