"""Run-wide settings read from the environment: smoke mode, cache folder, the repository URL.

`SMOKE` shrinks the tutorials' training for CI (``KPNB_SMOKE=1``, or ``CI`` set). Paths are
absolute because nbval runs a notebook in its own folder and Colab in ``/content``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import platform
import random
import sys
from importlib import metadata
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

#: The model presets' names (`kpnb.model.PRESETS` holds them; a checkpoint names one).
PRESET_NAMES = ("cpu", "fast", "torchvision", "tiny")

#: The one place the project's home is written; notebook badges and the Colab install use it.
REPO = "kpnb-dev/kpnb"
BRANCH = "main"
REPO_URL = f"https://github.com/{REPO}"


_SMOKE = os.environ.get("KPNB_SMOKE", os.environ.get("CI", "")).strip().lower()
SMOKE: bool = _SMOKE not in ("", "0", "false", "no", "off")


def cache_dir() -> Path:
    """Where downloads and generated datasets live: ``$KPNB_CACHE`` or ``~/.cache/kpnb``."""
    return Path(os.environ.get("KPNB_CACHE") or Path.home() / ".cache" / "kpnb").expanduser()


def outputs_dir() -> Path:
    """Where tutorials write figures, checkpoints, metrics: ``$KPNB_OUTPUTS``, else
    ``./outputs`` (``./outputs/smoke`` in smoke mode, so a full run's files never meet a
    smoke run's)."""
    default = Path.cwd() / "outputs" / ("smoke" if SMOKE else "")
    return Path(os.environ.get("KPNB_OUTPUTS") or default).expanduser().resolve()


_UNSET = object()


def pick(full: T, smoke: T, *, cpu: T = _UNSET) -> T:
    """`smoke` in smoke mode (CI), else `full`: how notebooks shrink their parameters.
    With `cpu`, full mode on a machine without a GPU takes that value instead (a CPU
    schedule that fits the README's expected times)."""
    if SMOKE:
        return smoke
    import torch

    return full if cpu is _UNSET or torch.cuda.is_available() else cpu


def version() -> str:
    """kpnb's version, from the installed package's metadata (pyproject.toml is its source)."""
    try:
        return metadata.version("kpnb")
    except metadata.PackageNotFoundError:  # imported from a source tree that was never installed
        return "0+unknown"


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch (CPU and every CUDA device)."""
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def select_device(device=None):
    """`device`, else CUDA, else Apple MPS, else CPU (under torchrun: this rank's GPU)."""
    import torch

    if device:
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device(type="cpu")


def setup_notebook(seed: int = 0) -> bool:
    """What every tutorial does first: seed everything, readable tables, visible kpnb logs.
    Returns `SMOKE`, so a notebook can say which mode it runs in."""
    import pandas as pd

    seed_everything(seed)
    pd.set_option("display.max_columns", 20, "display.width", 120, "display.precision", 2)
    pd.set_option("display.max_colwidth", None)  # a checklist's `detail` is never cut off
    # kpnb's INFO logs on stderr, by a handler on the "kpnb" logger itself: in Jupyter the
    # root logger has handlers, so basicConfig does nothing
    logger = logging.getLogger("kpnb")
    logger.setLevel(logging.INFO)
    if not any(getattr(h, "kpnb_notebook", False) for h in logger.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        handler.kpnb_notebook = True
        logger.addHandler(handler)
    logger.propagate = False
    # kpnb.viz returns Figures built without pyplot; inline mode registers their display
    with contextlib.suppress(ImportError):
        from IPython import get_ipython

        if (shell := get_ipython()) is not None:
            shell.run_line_magic("matplotlib", "inline")
    return SMOKE


def environment_report():
    """Versions and the device training will use, as a small table."""
    import pandas as pd
    import torch
    import torchvision

    device = select_device().type
    rows = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "kpnb": version(),
        "device": device,
        "cpu threads": torch.get_num_threads(),
        "smoke mode": SMOKE,
    }
    if device == "cuda":
        rows["gpu"] = torch.cuda.get_device_name(0)
    return pd.DataFrame({"value": [str(v) for v in rows.values()]}, index=list(rows))
