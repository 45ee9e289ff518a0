"""Fine-tune Keypoint R-CNN: one-cycle AdamW, validation metrics each epoch, safe checkpoints.

`fit` is the whole loop, `train_one_epoch` one pass. Under ``torchrun`` the model is wrapped
in DistributedDataParallel and rank 0 alone evaluates, logs and writes. The checkpoints are
`kpnb.checkpoint.Checkpoint` records; ``best.pth`` is written before ``last.pth`` (which adds
the optimizer, schedule and random states), so a run killed at any moment and resumed always
ends with a loadable ``best.pth``. The output folder is the run's alone (`kpnb.runs`).
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path

import pandas as pd
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler, Subset
from tqdm import tqdm

from kpnb.checkpoint import (
    Checkpoint,
    RunData,
    TrainConfig,
    restore_rng,
    rng_state,
)
from kpnb.config import seed_everything, select_device, version
from kpnb.errors import KpnbError
from kpnb.evaluate import evaluate, json_safe
from kpnb.io import atomic_path
from kpnb.model import misfit, training_recipe
from kpnb.runs import check_run_folder, clean_leftovers, run_lock
from kpnb.skeleton import Skeleton

__all__ = [
    "TrainConfig",
    "OneCycle",
    "fit",
    "check_run_folder",
    "train_one_epoch",
]

log = logging.getLogger(__name__)

#: Monitored metrics where a smaller value is the better epoch (the others: larger).
LOWER_IS_BETTER = frozenset(("mean_px_error", "loss"))


def _distributed() -> tuple[int, int]:
    """(rank, world size), starting the process group under torchrun."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return 0, 1
    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), dist.get_world_size()


def _unwrap(model):
    return model.module if hasattr(model, "module") else model


class OneCycle:
    """One-cycle learning rate: a cosine warm-up from ``lr/25`` to `lr`, then a cosine decay,
    along the run's progress: steps over `total_steps` or, when larger, time over the budget
    (`minutes`), so a budgeted run completes its schedule; `finished` says when to stop.
    Under torchrun the ranks agree on the progress (the maximum) every step."""

    def __init__(
        self,
        optimizer,
        lr: float,
        total_steps: int | None,
        pct_start: float = 0.3,
        minutes: float | None = None,
        device: torch.device | None = None,
    ):
        self.optimizer, self.lr, self.pct_start = optimizer, lr, pct_start
        # total_steps None: the time budget alone measures progress
        self.total_steps = None if total_steps is None else max(1, total_steps)
        self.minutes, self.device = minutes, device
        self.steps, self.seconds_before, self.progress = 0, 0.0, 0.0
        self._start = time.perf_counter()
        for group in optimizer.param_groups:
            group["lr"] = self.lr_at(0.0)

    def seconds(self) -> float:
        """Seconds of this run so far (including earlier processes it resumed)."""
        return self.seconds_before + time.perf_counter() - self._start

    def lr_at(self, p: float) -> float:
        low, end = self.lr / 25, self.lr / 25 / 1e4
        if p < self.pct_start:
            return low + (self.lr - low) * (1 - math.cos(math.pi * p / self.pct_start)) / 2
        q = (p - self.pct_start) / max(1e-9, 1 - self.pct_start)
        return end + (self.lr - end) * (1 + math.cos(math.pi * min(q, 1.0))) / 2

    def _update(self) -> None:
        """Measure the progress (the ranks' maximum) and set the rate for it."""
        p = 0.0 if self.total_steps is None else self.steps / self.total_steps
        if self.minutes:
            p = max(p, self.seconds() / (60 * self.minutes))
        if dist.is_available() and dist.is_initialized():
            t = torch.tensor([p], dtype=torch.float64, device=self.device)
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
            p = float(t.item())
        self.progress = min(p, 1.0)
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr_at(self.progress)

    def step(self) -> None:
        self.steps += 1
        self._update()

    @property
    def finished(self) -> bool:
        return self.progress >= 1.0

    def state_dict(self) -> dict:
        return {"steps": self.steps, "seconds": self.seconds()}

    def load_state_dict(self, state: dict) -> None:
        self.steps, self.seconds_before = int(state["steps"]), float(state["seconds"])
        self._start = time.perf_counter()
        self._update()


class _DisplayFile:
    """A file for tqdm that shows its text in one Jupyter display, updated in place: the
    bar stays live while it runs, and an emptied display is what a saved notebook keeps."""

    def __init__(self):
        from IPython.display import display

        self.handle = display({"text/plain": ""}, raw=True, display_id=True)

    def write(self, text: str) -> None:
        self.handle.update({"text/plain": text.replace("\r", "").strip()}, raw=True)

    def flush(self) -> None:
        pass


def _in_notebook() -> bool:
    shell = getattr(sys.modules.get("IPython"), "get_ipython", lambda: None)()
    return hasattr(shell, "kernel")  # a kernel has imported IPython already


def progress_bar(iterable, desc: str, *, enabled: bool = True):
    """`iterable` with a tqdm bar that disappears when done (``leave=False``): in Jupyter
    a display updated in place, so no frozen bar is saved with the notebook; in a
    terminal the usual bar on stderr; off when stderr is no terminal (CI logs)."""
    if not enabled:
        return iterable
    if _in_notebook():
        return tqdm(iterable, desc=desc, leave=False, file=_DisplayFile(), mininterval=1.0)
    return tqdm(iterable, desc=desc, leave=False, disable=None, mininterval=1.0)


def train_one_epoch(
    model,
    optimizer,
    loader,
    device,
    epoch: int,
    *,
    scheduler=None,
    scaler=None,
    grad_clip: float = 10.0,
    progress: bool = True,
) -> dict:
    """One pass over `loader` (shorter when the schedule finishes); the mean of each loss.
    With `progress`, a bar of the steps. Raises FloatingPointError on a non-finite loss."""
    model.train()
    scaled = scaler or torch.amp.GradScaler(device.type, enabled=False)
    sums: dict[str, torch.Tensor] = {}
    n = 0
    for images, targets in progress_bar(loader, f"epoch {epoch + 1}", enabled=progress):
        images = [im.to(device, non_blocking=True) for im in images]
        targets = [{k: v.to(device, non_blocking=True) for k, v in t.items()} for t in targets]
        with torch.autocast(device.type, enabled=scaler is not None):
            losses = model(images, targets)
            loss = sum(losses.values())
        value = loss.item()  # the one host sync of a step: a non-finite loss must stop here
        if not math.isfinite(value):
            detail = {k: round(v.item(), 4) for k, v in losses.items()}
            raise FloatingPointError(
                f"non-finite loss {value} at epoch {epoch}, step {n}: {detail}; lower the "
                "learning rate, or check for degenerate boxes in the data"
            )
        optimizer.zero_grad(set_to_none=True)
        scaled.scale(loss).backward()  # a disabled GradScaler passes everything through
        scaled.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        scaled.step(optimizer)
        scaled.update()
        n += 1
        for k, v in {"loss": loss, **losses}.items():  # summed on the device: no sync
            sums[k] = sums.get(k, 0) + v.detach().float()
        if scheduler is not None:
            scheduler.step()
            if getattr(scheduler, "finished", False):
                break
    return {**{k: float(v) / max(n, 1) for k, v in sums.items()}, "steps": n}


def _write_history(out: Path, history: list[dict]) -> None:
    with atomic_path(out / "history.json") as tmp:
        tmp.write_text(json.dumps(json_safe(history), indent=2, allow_nan=False))
    with atomic_path(out / "history.csv") as tmp:
        pd.DataFrame(history).to_csv(tmp, index=False)


def _images(loader) -> tuple[str | None, list[int]]:
    """``(skeleton label, image ids)`` of a loader over a `kpnb.dataset.KeypointDataset`
    (or a ``Subset`` of one); ``(None, [])`` for other datasets."""
    ds, index = getattr(loader, "dataset", None), None
    if isinstance(ds, Subset):
        ds, index = ds.dataset, list(ds.indices)
    items = getattr(ds, "items", None)
    if items is None:
        return None, []
    index = range(len(items)) if index is None else index
    return getattr(ds, "label", None), [int(items[i].image_id) for i in index]


def _epoch_line(row: dict, epochs: int | None) -> str:
    def f(v):
        return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"

    part = "" if row.get("complete", True) else " (stopped early: time budget)"
    of = f"/{epochs}" if epochs else ""
    return (
        f"epoch {row['epoch'] + 1}{of}  loss {f(row['loss'])}  AP {f(row.get('AP'))}  "
        f"PCK@0.1 {f(row.get('PCK@0.1'))}  {row['seconds']:.0f} s{part}"
    )


def fit(
    model,
    train_loader: DataLoader,
    val_loader: DataLoader | None,
    skeleton: Skeleton,
    config: TrainConfig,
    *,
    out_dir: str | os.PathLike | None = None,
    device: str | torch.device | None = None,
    resume: str | os.PathLike | None = None,
    overwrite: bool = False,
    on_epoch_end: Callable[[dict], None] | None = None,
    data: str | None = None,
    points_as_skeleton: str | None = None,
) -> list[dict]:
    """Train `model`; returns the history (one dict per epoch, also written to `out_dir`).

    Each epoch trains, scores the validation loader (`kpnb.evaluate.evaluate`) and logs one
    line; with `config.max_minutes` the schedule fits that time. `out_dir` (checked by
    `check_run_folder` first) receives ``best.pth`` (see `_Run.score`) and ``last.pth``;
    `resume` is such a ``last.pth``, of the same network, config (`_refuse_conflicts`; an lr
    of None takes the run's) and split. `data` (the export as given) and `points_as_skeleton`
    are recorded in the checkpoints. On CUDA, mixed precision is on unless `config.amp` is False.
    """
    if config.epochs is None and not config.max_minutes:
        raise KpnbError("TrainConfig: epochs=None trains until max_minutes; give one of them")
    if out_dir is not None:
        check_run_folder(out_dir, overwrite=overwrite, resume=resume)
    last = None if resume is None else _resumable(resume, model)
    lr = config.lr or (last.config.lr if last else training_recipe(_unwrap(model))["lr"])
    config = replace(config, lr=lr, batch_size=train_loader.batch_size)
    label, train_ids = _images(train_loader)
    run_data = RunData(data, points_as_skeleton, config.seed, train_ids, _images(val_loader)[1])
    if last is not None:
        _refuse_conflicts(resume, last, config, run_data)
    with run_lock(None if out_dir is None or _distributed()[0] else Path(out_dir)):
        run = _Run(model, train_loader, config, device, out_dir, label, run_data)
        return _train(run, config, val_loader, skeleton, last, on_epoch_end)


def _resumable(path, model) -> Checkpoint:
    """The ``last.pth`` at `path`, its network the one `model` is (else one line naming
    the build entries that differ, such as the preset)."""
    last = Checkpoint.load(path, resume=True)
    build = getattr(_unwrap(model), "kpnb_build", None) or {}
    keys = [k for k in last.build if build and k != "pretrained" and build[k] != last.build[k]]
    if keys:
        said = "; ".join(f"{k}={last.build[k]!r} (this model: {build[k]!r})" for k in keys)
        raise KpnbError(
            f"{path}: cannot resume: the run's network was built with {said}; build it as "
            "the run did: kpnb.model.model_from_build(Checkpoint.load(path).build)",
            param=keys[0],
        )
    wrong = misfit(_unwrap(model), last.model)
    if wrong is not None:
        raise KpnbError(f"{path}: cannot resume: its weights do not fit this model ({wrong})")
    return last


def _refuse_conflicts(path, last: Checkpoint, given: TrainConfig, data: RunData) -> None:
    """Refuse to resume `last` with another config (a resumed run must keep its split, images
    and schedule) or another split of the images."""
    ran = asdict(last.config)
    name = next((k for k, v in ran.items() if v != getattr(given, k)), None)
    if last.data is not None and (last.data.train, last.data.val) != (data.train, data.val):
        raise KpnbError(
            f"{path}: cannot resume on other images: the run trained on "
            f"{len(last.data.train)} and validated on {len(last.data.val)} images, these "
            f"loaders hold {len(data.train)} and {len(data.val)} others; resume on the run's "
            "export and split"
        )
    if name is not None:
        raise KpnbError(
            f"{path}: cannot resume with {{{name}}}: the run has {name}={ran[name]!r}; resume "
            "with the run's settings, or start a new run in another folder",
            params={name: repr(getattr(given, name))},
        )


def _train(run: _Run, config: TrainConfig, val_loader, skeleton, last, on_epoch_end) -> list:
    """`fit`'s loop over epochs, from `last` (a ``last.pth``) when resuming."""
    history, start_epoch = run.resume(last) if last is not None else ([], 0)
    epochs = range(start_epoch, config.epochs) if config.epochs else itertools.count(start_epoch)
    for epoch in epochs:
        if run.scheduler.finished:
            log.info("time budget of %s min used up: training stops", config.max_minutes)
            break
        row = run.epoch(epoch, val_loader, skeleton)
        history.append(row)
        if run.world > 1:
            dist.barrier()
        if run.rank == 0:
            log.info(_epoch_line(row, config.epochs))
            if epoch == start_epoch and config.max_minutes and row["complete"]:
                fits = 60 * config.max_minutes / max(row["seconds"], 1e-9)
                log.info("about %.0f epochs fit the %g-minute budget", fits, config.max_minutes)
            run.save(epoch, row, history, skeleton)
            if on_epoch_end is not None:
                on_epoch_end(row)
        if run.scheduler.finished:
            if config.epochs and epoch < config.epochs - 1:
                done = f"{epoch + 1} of {config.epochs} epochs"
                log.info("time budget of %s min used up after %s", config.max_minutes, done)
            break
    return history


class _Run:
    """What one `fit` holds: the (wrapped) model, loader, optimizer, schedule and files."""

    def __init__(self, model, train_loader, config, device, out_dir, label, data: RunData):
        """Device, seeds, DDP wrapping (under torchrun), optimizer, schedule, output folder."""
        self.rank, self.world = _distributed()
        self.device = dev = select_device(device)
        seed_everything(config.seed + self.rank)
        model.to(dev)
        self.build = dict(getattr(_unwrap(model), "kpnb_build", {}) or {})
        if self.world > 1:
            model = torch.nn.parallel.DistributedDataParallel(
                model, device_ids=[dev.index] if dev.type == "cuda" else None
            )
            train_loader = DataLoader(
                train_loader.dataset,
                batch_size=train_loader.batch_size,
                sampler=DistributedSampler(train_loader.dataset, seed=config.seed),
                collate_fn=train_loader.collate_fn,
                num_workers=train_loader.num_workers,
                pin_memory=train_loader.pin_memory,
            )
        self.model, self.train_loader, self.config = model, train_loader, config
        self.label, self.data = label, data
        params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
        steps = config.epochs * len(train_loader) if config.epochs else None
        self.scheduler = OneCycle(
            self.optimizer, config.lr, steps, config.pct_start, config.max_minutes, dev
        )
        use_amp = (dev.type == "cuda") if config.amp is None else config.amp
        self.scaler = torch.amp.GradScaler(dev.type) if use_amp else None
        self.out = Path(out_dir) if out_dir is not None else None
        if self.out is not None and self.rank == 0:
            self.out.mkdir(parents=True, exist_ok=True)
            clean_leftovers(self.out)
        self.best: tuple[int, float] | None = None  # see `score`; None: nothing saved yet
        self.fallback_logged = False

    def resume(self, last: Checkpoint) -> tuple[list[dict], int]:
        """Restore a ``last.pth``: weights, optimizer, schedule, scaler, best score, RNG."""
        _unwrap(self.model).load_state_dict(last.model, strict=False)  # fits: `_resumable`
        self.optimizer.load_state_dict(last.resume["optimizer"])
        self.scheduler.load_state_dict(last.resume["lr_scheduler"])
        if self.scaler is not None and last.resume["scaler"]:
            self.scaler.load_state_dict(last.resume["scaler"])
        self.best = last.best
        if self.out is not None:
            try:
                Checkpoint.load(self.out / "best.pth")
            except (KpnbError, FileNotFoundError):
                self.best = None  # best.pth is missing or broken: the next epoch writes it
        restore_rng(last.resume["rng"], self.train_loader)
        log.info("resumed at epoch %d", last.epoch + 2)
        return list(last.history), last.epoch + 1

    def epoch(self, epoch: int, val_loader, skeleton: Skeleton) -> dict:
        """Train one epoch, then score the validation images (rank 0): the history row."""
        if self.world > 1:
            self.train_loader.sampler.set_epoch(epoch)
        t0 = time.perf_counter()
        row = {"epoch": epoch, "lr": self.optimizer.param_groups[0]["lr"]}
        row.update(
            train_one_epoch(
                self.model,
                self.optimizer,
                self.train_loader,
                self.device,
                epoch,
                scheduler=self.scheduler,
                scaler=self.scaler,
                grad_clip=self.config.grad_clip,
                progress=self.rank == 0,
            )
        )
        row["complete"] = row["steps"] == len(self.train_loader)
        if val_loader is not None and self.rank == 0:
            scored = evaluate(
                _unwrap(self.model), val_loader, skeleton, self.config.sigmas, self.device
            )
            row.update(scored.metrics)
        row["seconds"] = round(time.perf_counter() - t0, 1)
        return row

    def score(self, row: dict) -> tuple[int, float]:
        """How good an epoch is: ``(1, metric)`` with the monitored metric (negated where
        `LOWER_IS_BETTER`), else ``(0, -training loss)`` (no validation loader, or nothing to
        measure). As tuples, an epoch with the metric beats all without it, so the first
        finished epoch always writes ``best.pth``."""
        value = row.get(self.config.monitor)
        if value is not None and not (isinstance(value, float) and math.isnan(value)):
            sign = -1.0 if self.config.monitor in LOWER_IS_BETTER else 1.0
            return (1, sign * float(value))
        loss = row.get("loss")
        if not self.fallback_logged and self.rank == 0:
            self.fallback_logged = True
            log.info(
                "epoch %d has no %s (%s): best.pth keeps the epoch with the lowest training "
                "loss until an epoch has it",
                row.get("epoch", 0) + 1,
                self.config.monitor,
                "no validation images" if self.config.monitor not in row else "nothing to measure",
            )
        return (0, -float(loss) if loss is not None else -math.inf)

    def save(self, epoch: int, row: dict, history: list[dict], skeleton: Skeleton) -> None:
        """``best.pth`` when the epoch is the best so far (see `score`; always for the
        first), then ``last.pth`` and the history."""
        score = self.score(row)
        improved = self.best is None or score > self.best
        self.best = score if improved else self.best
        if self.out is None:
            return
        ckpt = Checkpoint(
            model=_unwrap(self.model).state_dict(),
            skeleton=skeleton,
            build=self.build,
            config=self.config,
            label=self.label,
            data=self.data,
            epoch=epoch,
            metrics=json_safe(row),
            history=json_safe(history),
            best=self.best,
            kpnb_version=version(),
        )
        if improved:  # before last.pth: no last.pth ever claims a best that is not saved
            ckpt.save(self.out / "best.pth")
        ckpt.resume = {
            "optimizer": self.optimizer.state_dict(),
            "lr_scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "rng": rng_state(self.train_loader),
        }
        ckpt.save(self.out / "last.pth")
        _write_history(self.out, history)
