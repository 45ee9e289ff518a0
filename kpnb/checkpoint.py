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
from kpnb.errors import KpnbError
from kpnb.io import atomic_path
from kpnb.skeleton import Skeleton

__all__ = [
    "Checkpoint",
    "RunData",
    "TrainConfig",
    "MAX_SIZE",
    "read_pth",
    "resume_conflicts",
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
            raise check.fail(f"no format {FORMAT!r} (found {_brief(blob.get('format'))})")
        unknown = sorted(map(str, set(blob) - {f.name for f in fields(cls)} - {"format"}))
        if unknown:
            raise check.fail(f"unknown entries {unknown}")
        skeleton = check.skeleton(blob.get("skeleton"))
        return cls(
            model=check.state(blob.get("model")),
            skeleton=skeleton,
            build=check.build(blob.get("build"), skeleton),
            config=check.config(blob.get("config"), skeleton),
            label=check.value("label", blob.get("label"), (str, type(None))),
            data=check.data(blob.get("data")),
            epoch=check.number("epoch", blob.get("epoch"), int, 0),
            metrics=check.row("metrics", blob.get("metrics")),
            history=[
                check.row(f"history[{i}]", row)
                for i, row in enumerate(check.value("history", blob.get("history"), (list,)))
            ],
            best=check.best(blob.get("best")),
            resume=check.resume(blob.get("resume"), required=resume),
            kpnb_version=check.value("kpnb_version", blob.get("kpnb_version"), (str,)),
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
        code = _code_in(path)
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


def _code_in(path: Path) -> list[str]:
    """The functions and classes a torch.save file would import (torch's own list of what
    ``weights_only`` refuses); empty for a file that is no torch.save zip."""
    try:
        return list(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    except (ValueError, RuntimeError):  # not a torch.save zip, or a damaged one
        return []


_WHAT_TO_PASS = "pass a best.pth or last.pth written by kpnb train"

#: `kpnb.model.build_model` options a checkpoint may hold, each with its rule: a count, a
#: fraction, a size, or a list of a fixed length.
_COUNT, _FRACTION, _SIZE = (int, 1, 100_000), (float, 0.0, 1.0), (int, 1, MAX_SIZE)
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
    "size_divisible": (int, 1, 1024),
    "min_size": _SIZE,
    "max_size": _SIZE,
    "fixed_size": ("list", 2, _SIZE),
    "image_mean": ("list", 3, (float, -1e3, 1e3)),
    "image_std": ("list", 3, (float, 1e-6, 1e3)),
    "bbox_reg_weights": ("list", 4, (float, 1e-6, 1e3)),
}
#: The entries of a build record (``model.kpnb_build``: `build_model`'s arguments).
_BUILD = set(
    "num_keypoints num_classes preset pretrained size trainable_backbone_layers norm "
    "norm_eps kwargs".split()
)


def _brief(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


class _Checker:
    """The checks of one file's fields; each failure names the file, the field and value."""

    def __init__(self, path: Path):
        self.path = path

    def fail(self, what: str) -> KpnbError:
        return KpnbError(f"{self.path}: not a usable kpnb checkpoint: {what}; {_WHAT_TO_PASS}")

    def value(self, name: str, value, types: tuple):
        if isinstance(value, bool) and bool not in types or not isinstance(value, types):
            allowed = " or ".join("None" if t is type(None) else t.__name__ for t in types)
            raise self.fail(f"{name} must be {allowed}, not {_brief(value)}")
        return value

    def number(self, name: str, value, kind: type, lo=None, hi=None, *, none: bool = False):
        """`value` an int (or a float, where an int is fine too) in ``[lo, hi]``."""
        if none and value is None:
            return None
        types = (int,) if kind is int else (int, float)
        self.value(name, value, types)
        finite = not isinstance(value, float) or math.isfinite(value)
        if not finite or lo is not None and value < lo or hi is not None and value > hi:
            bounds = f"{lo if lo is not None else '-inf'}..{hi if hi is not None else 'inf'}"
            raise self.fail(f"{name} = {_brief(value)} is outside {bounds}")
        return value

    def option(self, key: str, value, rule: tuple):
        """A `build_model` option of `_OPTIONS`; `min_size` may be several sizes, and
        `fixed_size` and `bbox_reg_weights` None (torchvision's default)."""
        name = f"build['kwargs'][{key!r}]"
        kind, *rest = rule
        if key == "min_size" and isinstance(value, (list, tuple)):  # one size per image
            return [self.number(f"{name}[{i}]", v, *rule) for i, v in enumerate(value)]
        if kind != "list":
            return self.number(name, value, *rule)
        length, item = rest
        if key in ("fixed_size", "bbox_reg_weights") and value is None:
            return None
        if not isinstance(value, (list, tuple)) or len(value) != length:
            raise self.fail(f"{name} must be a list of {length} numbers, not {_brief(value)}")
        return [self.number(f"{name}[{i}]", v, *item) for i, v in enumerate(value)]

    def entries(self, name: str, record, names: set[str]) -> None:
        """`record` a dict of exactly `names`."""
        self.value(name, record, (dict,))
        if set(record) != names:
            missing, unknown = sorted(names - set(record)), sorted(map(str, set(record) - names))
            raise self.fail(f"{name} entries missing {missing}, unknown {unknown}")

    def row(self, name: str, row) -> dict:
        """A history row or the metrics: names to numbers, strings or None."""
        self.value(name, row, (dict,))
        for key, value in row.items():
            if not isinstance(key, str) or not isinstance(value, (int, float, str, type(None))):
                raise self.fail(f"{name} holds {_brief(key)}: {_brief(value)}, not a number")
        return row

    def skeleton(self, data) -> Skeleton:
        try:
            return Skeleton.from_dict(data)
        except KpnbError as exc:
            raise self.fail(f"its skeleton is wrong: {exc}") from None

    def state(self, state) -> dict:
        self.value("model", state, (dict,))
        for key, value in state.items():
            if not isinstance(key, str) or not torch.is_tensor(value):
                raise self.fail(f"its weights ('model') hold {_brief(key)}, not a named tensor")
        return state

    def build(self, build, skeleton: Skeleton) -> dict:
        """`kpnb.model.build_model`'s arguments: every one there, of its type and range."""
        self.entries("build", build, _BUILD)
        k = self.number("build['num_keypoints']", build["num_keypoints"], int, 1, 10_000)
        if k != skeleton.num_keypoints:
            raise self.fail(
                f"build['num_keypoints'] = {k}, but its skeleton has "
                f"{skeleton.num_keypoints} keypoints"
            )
        self.number("build['num_classes']", build["num_classes"], int, 2, 10_000)
        self.number("build['size']", build["size"], int, 1, MAX_SIZE)
        self.number(
            "build['trainable_backbone_layers']", build["trainable_backbone_layers"], int, 0, 5
        )
        self.number("build['norm_eps']", build["norm_eps"], float, 0.0, 1.0, none=True)
        self.value("build['pretrained']", build["pretrained"], (bool,))
        for name, allowed in (("preset", PRESET_NAMES), ("norm", ("frozen", "batch"))):
            if build[name] not in allowed:
                raise self.fail(f"build[{name!r}] = {_brief(build[name])} is not one of {allowed}")
        kwargs = self.value("build['kwargs']", build["kwargs"], (dict,))
        for name, value in kwargs.items():
            if name not in _OPTIONS:
                raise self.fail(
                    f"build['kwargs'] holds {_brief(name)}, not an option a checkpoint keeps "
                    f"(those are {sorted(_OPTIONS)})"
                )
            kwargs[name] = self.option(name, value, _OPTIONS[name])
        return build

    def config(self, config, skeleton: Skeleton) -> TrainConfig:
        self.entries("config", config, {f.name for f in fields(TrainConfig)})
        number = self.number
        number("config['epochs']", config["epochs"], int, 1, 1_000_000, none=True)
        number("config['lr']", config["lr"], float, 1e-12, 10.0, none=True)
        number("config['batch_size']", config["batch_size"], int, 1, 100_000, none=True)
        number("config['weight_decay']", config["weight_decay"], float, 0.0, 10.0)
        number("config['grad_clip']", config["grad_clip"], float, 1e-12, None)
        number("config['pct_start']", config["pct_start"], float, 0.0, 1.0)
        number("config['seed']", config["seed"], int, 0, 2**32 - 1)
        number("config['size']", config["size"], int, 1, MAX_SIZE)
        number("config['max_minutes']", config["max_minutes"], float, 1e-9, None, none=True)
        self.value("config['amp']", config["amp"], (bool, type(None)))
        self.value("config['monitor']", config["monitor"], (str,))
        sigmas = self.value("config['sigmas']", config["sigmas"], (list, type(None)))
        if sigmas is not None:
            if len(sigmas) != skeleton.num_keypoints:
                raise self.fail(
                    f"config['sigmas'] has {len(sigmas)} values for "
                    f"{skeleton.num_keypoints} keypoints"
                )
            for i, s in enumerate(sigmas):
                number(f"config['sigmas'][{i}]", s, float, 1e-9, None)
        return TrainConfig(**config)

    def data(self, data) -> RunData | None:
        if data is None:
            return None
        self.entries("data", data, {f.name for f in fields(RunData)})
        self.value("data['spec']", data["spec"], (str, type(None)))
        self.value("data['points_as_skeleton']", data["points_as_skeleton"], (str, type(None)))
        self.number("data['seed']", data["seed"], int, 0, 2**32 - 1)
        for side in ("train", "val"):
            ids = self.value(f"data[{side!r}]", data[side], (list,))
            if not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
                raise self.fail(f"data[{side!r}] must be a list of image ids")
        return RunData(**data)

    def best(self, best) -> tuple[int, float] | None:
        if best is None:
            return None
        if not isinstance(best, list) or len(best) != 2:
            raise self.fail(f"best must be [kind, value], not {_brief(best)}")
        kind = self.number("best[0]", best[0], int, 0, 1)
        value = self.value("best[1]", best[1], (int, float))
        if math.isnan(value):
            raise self.fail("best[1] is NaN")
        return kind, float(value)

    def resume(self, resume, *, required: bool) -> dict | None:
        if resume is None:
            if required:
                raise KpnbError(
                    f"{self.path}: cannot resume from it (it holds no optimizer state: a "
                    "best.pth?); resume from the last.pth that kpnb train wrote"
                )
            return None
        self.entries("resume", resume, {"optimizer", "lr_scheduler", "scaler", "rng"})
        optimizer = self.value("resume['optimizer']", resume["optimizer"], (dict,))
        groups = optimizer.get("param_groups")
        if set(optimizer) != {"state", "param_groups"} or not isinstance(groups, list):
            raise self.fail("resume['optimizer'] is not the optimizer state kpnb train saves")
        self.value("resume['scaler']", resume["scaler"], (dict, type(None)))
        schedule = self.value("resume['lr_scheduler']", resume["lr_scheduler"], (dict,))
        self.number("resume['lr_scheduler']['steps']", schedule.get("steps"), int, 0)
        self.number("resume['lr_scheduler']['seconds']", schedule.get("seconds"), float, 0.0)
        rng = self.value("resume['rng']", resume["rng"], (dict,))
        if not _rng_ok(rng):
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


def resume_conflicts(run: TrainConfig, given: TrainConfig) -> list[tuple[str, object, object]]:
    """``(field, the run's value, the given value)`` for each `TrainConfig` field in which
    `given` differs from the run being resumed: a resumed run must keep its split (seed),
    its images (size) and its schedule (lr, epochs, batch size...)."""
    return [(k, v, getattr(given, k)) for k, v in asdict(run).items() if v != getattr(given, k)]


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
