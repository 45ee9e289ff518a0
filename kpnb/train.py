"""Fine-tune Keypoint R-CNN: one-cycle AdamW, validation metrics each epoch, safe checkpoints.

`fit` is the whole loop; `train_one_epoch` one pass. Under ``torchrun`` (RANK/WORLD_SIZE
set) the model is wrapped in DistributedDataParallel, the training loader gets a
DistributedSampler, and rank 0 alone evaluates, logs and writes files. Without them it is
a plain single-process loop.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, DistributedSampler
from tqdm.auto import tqdm

from kpnb._io import atomic_path
from kpnb.tables import Skeleton

__all__ = ["TrainConfig", "fit", "train_one_epoch", "select_device", "seed_everything",
           "save_checkpoint", "load_checkpoint"]  # fmt: skip

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    """Everything that shapes a run; stored in every checkpoint."""

    epochs: int = 10
    lr: float = 1e-4  # AdamW peak; 1e-3 diverged from random init on CPU runs
    weight_decay: float = 1e-4
    grad_clip: float = 10.0
    pct_start: float = 0.3  # share of the one-cycle schedule spent warming up
    amp: bool | None = None  # None: on for CUDA
    seed: int = 0
    size: int = 256
    preset: str | None = "cpu"
    monitor: str = "AP"  # metric that picks the best checkpoint
    sigmas: list[float] | None = None
    extra: dict = field(default_factory=dict)


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def select_device(device: str | None = None) -> torch.device:
    """`device`, else CUDA, else Apple MPS, else CPU (under torchrun: this rank's GPU)."""
    if device:
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def _distributed() -> tuple[int, int]:
    """(rank, world size), starting the process group under torchrun."""
    import torch.distributed as dist

    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return 0, 1
    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), dist.get_world_size()


def _unwrap(model):
    return model.module if hasattr(model, "module") else model


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
    """One pass over `loader`; returns the mean of each loss. Raises on a non-finite loss."""
    model.train()
    sums: dict[str, float] = {}
    n = 0
    bar = tqdm(loader, desc=f"epoch {epoch}", leave=False, disable=not progress)
    for images, targets in bar:
        images = [im.to(device, non_blocking=True) for im in images]
        targets = [{k: v.to(device) for k, v in t.items()} for t in targets]
        with torch.autocast(device.type, enabled=scaler is not None):
            losses = model(images, targets)
            loss = sum(losses.values())
        if not math.isfinite(loss.item()):
            detail = {k: round(v.item(), 4) for k, v in losses.items()}
            raise FloatingPointError(
                f"non-finite loss {loss.item()} at epoch {epoch}, step {n}: {detail}; lower the "
                "learning rate, or check for degenerate boxes in the data"
            )
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            optimizer.step()
        if scheduler is not None:
            scheduler.step()
        n += 1
        for k, v in {"loss": loss, **losses}.items():
            sums[k] = sums.get(k, 0.0) + float(v.item())
        bar.set_postfix(loss=f"{loss.item():.3f}")
    return {k: v / max(n, 1) for k, v in sums.items()}


def _restore_schedule(scheduler, state: dict, done: int) -> None:
    """Continue the one-cycle schedule; when the run got longer, replay it to step `done`."""
    if state.get("total_steps") == scheduler.total_steps:
        scheduler.load_state_dict(state)
        return
    import warnings

    with warnings.catch_warnings():  # stepping a scheduler before the optimizer is intended here
        warnings.simplefilter("ignore", UserWarning)
        for _ in range(min(done, scheduler.total_steps - 1)):
            scheduler.step()


def save_checkpoint(path: str | os.PathLike, **state) -> Path:
    """Write a checkpoint dict atomically: a crash never leaves a half-written file."""
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    return path


def load_checkpoint(path: str | os.PathLike) -> dict:
    return torch.load(Path(path), map_location="cpu", weights_only=False)


def _write_history(out: Path, history: list[dict]) -> None:
    with atomic_path(out / "history.json") as tmp:
        tmp.write_text(json.dumps(history, indent=2))
    with atomic_path(out / "history.csv") as tmp:
        pd.DataFrame(history).to_csv(tmp, index=False)


def fit(
    model,
    train_loader: DataLoader,
    val_loader: DataLoader | None,
    skeleton: Skeleton,
    config: TrainConfig,
    *,
    out_dir: str | os.PathLike | None = None,
    device: str | None = None,
    resume: str | os.PathLike | None = None,
    progress: bool = True,
    on_epoch_end: Callable[[dict], None] | None = None,
) -> list[dict]:
    """Train `model`; returns the history (one dict per epoch, also written to `out_dir`).

    Each epoch: `train_one_epoch`, then validation metrics (`kpnb.evaluate.evaluate`) when
    a validation loader is given. `out_dir` receives ``last.pth`` every epoch and
    ``best.pth`` when `config.monitor` improves, each holding model, optimizer,
    scheduler, scaler, epoch, config, skeleton, history and kpnb version, which is
    everything `resume` needs to continue.
    """
    from kpnb import __version__
    from kpnb.evaluate import evaluate

    rank, world = _distributed()
    dev = select_device(device)
    seed_everything(config.seed + rank)
    model.to(dev)
    if world > 1:
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[dev.index] if dev.type == "cuda" else None
        )
        train_loader = DataLoader(
            train_loader.dataset, batch_size=train_loader.batch_size,
            sampler=DistributedSampler(train_loader.dataset, seed=config.seed),
            collate_fn=train_loader.collate_fn, num_workers=train_loader.num_workers,
        )  # fmt: skip
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    steps = max(1, config.epochs * len(train_loader))
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=config.lr, total_steps=steps,
                                                    pct_start=config.pct_start)  # fmt: skip
    use_amp = (dev.type == "cuda") if config.amp is None else config.amp
    scaler = torch.amp.GradScaler(dev.type) if use_amp else None
    history: list[dict] = []
    start_epoch, best = 0, -math.inf
    if resume is not None:
        ckpt = load_checkpoint(resume)
        _unwrap(model).load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        _restore_schedule(scheduler, ckpt["lr_scheduler"], (ckpt["epoch"] + 1) * len(train_loader))
        if scaler is not None and ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        history, start_epoch = ckpt.get("history", []), ckpt["epoch"] + 1
        best = ckpt.get("best", -math.inf)
        log.info("resumed from %s at epoch %d", resume, start_epoch)
    out = Path(out_dir) if out_dir is not None else None
    if out is not None and rank == 0:
        out.mkdir(parents=True, exist_ok=True)
    epochs = tqdm(range(start_epoch, config.epochs), desc="training", disable=not progress or rank)
    for epoch in epochs:
        if world > 1:
            train_loader.sampler.set_epoch(epoch)
        t0 = time.perf_counter()
        row = {"epoch": epoch, "lr": optimizer.param_groups[0]["lr"]}
        row.update(train_one_epoch(model, optimizer, train_loader, dev, epoch, scheduler=scheduler,
                                   scaler=scaler, grad_clip=config.grad_clip,
                                   progress=progress and rank == 0))  # fmt: skip
        if val_loader is not None and rank == 0:
            row.update(evaluate(_unwrap(model), val_loader, skeleton, config.sigmas, dev).metrics)
        row["seconds"] = round(time.perf_counter() - t0, 1)
        history.append(row)
        if world > 1:
            torch.distributed.barrier()
        if rank != 0:
            continue
        score = row.get(config.monitor, -row["loss"])
        score = (
            -math.inf
            if score is None or (isinstance(score, float) and math.isnan(score))
            else score
        )
        improved = score > best
        best = max(best, score)
        epochs.set_postfix(loss=f"{row['loss']:.3f}", **{config.monitor: f"{score:.3f}"})
        if out is not None:
            state = {"model": _unwrap(model).state_dict(), "optimizer": optimizer.state_dict(),
                     "lr_scheduler": scheduler.state_dict(),
                     "scaler": scaler.state_dict() if scaler is not None else None,
                     "epoch": epoch, "config": asdict(config), "best": best,
                     "skeleton": {"keypoints": list(skeleton.keypoints),
                                  "edges": [list(e) for e in skeleton.edges]},
                     "history": history, "kpnb_version": __version__}  # fmt: skip
            save_checkpoint(out / "last.pth", **state)
            if improved:
                save_checkpoint(out / "best.pth", **state)
            _write_history(out, history)
        if on_epoch_end is not None:
            on_epoch_end(row)
    return history
