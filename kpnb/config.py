"""Run-wide settings read from the environment: smoke mode, cache folder, the repository URL.

`SMOKE` shrinks the tutorials for CI (``KPNB_SMOKE=1``, or ``CI`` set); on a GPU or a
desktop, the full schedule runs. Paths are absolute because nbval runs a notebook in its
own folder and Colab in ``/content``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

#: The one place the project's home is written; notebook badges and the Colab install use it.
REPO = "kpnb-dev/kpnb"
BRANCH = "main"
REPO_URL = f"https://github.com/{REPO}"


def _flag(value: str | None) -> bool:
    return (value or "").strip().lower() not in ("", "0", "false", "no", "off")


SMOKE: bool = _flag(os.environ.get("KPNB_SMOKE", os.environ.get("CI")))


def cache_dir() -> Path:
    """Where downloads and generated datasets live: ``$KPNB_CACHE`` or ``~/.cache/kpnb``."""
    return Path(os.environ.get("KPNB_CACHE") or Path.home() / ".cache" / "kpnb").expanduser()


def outputs_dir() -> Path:
    """Where tutorials write figures, checkpoints, metrics: ``$KPNB_OUTPUTS`` or ./outputs."""
    return Path(os.environ.get("KPNB_OUTPUTS") or Path.cwd() / "outputs").expanduser().resolve()


def pick(full: T, smoke: T) -> T:
    """`smoke` in smoke mode (CI), else `full`: how notebooks shrink their parameters."""
    return smoke if SMOKE else full
