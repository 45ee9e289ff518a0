"""A training run's folder: `check_run_folder` refuses one `kpnb.train.fit` must not write
into, and `run_lock` refuses a second run into the same folder, naming the lock."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from pathlib import Path

from kpnb.io import OutputExistsError, check_output

__all__ = ["RUN_FILES", "LOCK_FILE", "check_run_folder", "run_lock", "clean_leftovers"]

log = logging.getLogger("kpnb.train")

#: The files `fit` writes into its output folder (their ``.NAME.*.tmp`` leftovers are removed).
RUN_FILES = ("best.pth", "last.pth", "history.json", "history.csv")
#: The file a run holds in its folder while it writes there (its process id and host inside).
LOCK_FILE = ".kpnb-train.lock"


def check_run_folder(
    out: str | os.PathLike,
    *,
    overwrite: bool = False,
    resume: str | os.PathLike | None = None,
) -> None:
    """Refuse (`kpnb.io.OutputExistsError`) an `out` that `fit` must not write into: a
    non-empty folder unless `overwrite` or `resume` is its ``last.pth``; always one another
    run holds (`LOCK_FILE`), a file, or a folder where a run file goes."""
    out = Path(out)
    if (holder := _lock_holder(out / LOCK_FILE)) is not None:
        raise OutputExistsError(holder)
    own = resume is not None and Path(resume).resolve().parent == out.resolve()
    try:
        check_output(out, directory=True, overwrite=overwrite or own)
    except OutputExistsError as exc:
        if (out / "last.pth").is_file():
            raise OutputExistsError(
                f"{exc.template}; or continue the run in it with "
                f"resume={str(out / 'last.pth')!r} (on the command line: --resume)",
                params=exc.params,
            ) from None
        raise
    for name in RUN_FILES:
        check_output(out / name)  # a folder where a run file goes


def _lock_holder(lock: Path) -> str | None:
    """Why `lock` keeps a run out: a live process holds it (None: no lock, or a lock left
    by a process of this machine that is gone, which is removed)."""
    try:
        pid_text, _, host = lock.read_text(encoding="utf-8").partition(" ")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError):
        pid_text, host = "", ""
    if pid_text.isdigit() and host.strip() == socket.gethostname():
        try:
            os.kill(int(pid_text), 0)
        except ProcessLookupError:  # that run is gone (killed): its lock is stale
            log.info("removing %s, left by process %s, which has ended", lock, pid_text)
            lock.unlink(missing_ok=True)
            return None
        except PermissionError:  # alive, another user's
            pass
    return (
        f"{lock.parent}: a run on {host.strip() or 'an unknown machine'} (process "
        f"{pid_text or '?'}) holds {lock}; wait for it to end or train into another folder "
        "(if no run is writing into the folder any more, delete that file)"
    )


@contextlib.contextmanager
def run_lock(out: Path | None):
    """Hold `out`'s `LOCK_FILE` (created with O_EXCL, so only one run gets it) while the
    block runs; None: no folder, no lock."""
    if out is None:
        yield
        return
    out.mkdir(parents=True, exist_ok=True)
    lock = out / LOCK_FILE
    if (holder := _lock_holder(lock)) is not None:  # (a stale lock is removed)
        raise OutputExistsError(holder)
    try:
        fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        raise OutputExistsError(
            f"{lock.parent}: another run took its lock {lock} just now; train into another folder"
        ) from None
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(f"{os.getpid()} {socket.gethostname()}")
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)


def clean_leftovers(out: Path) -> None:
    """Remove temporary files of kpnb's own writes that a killed run left behind."""
    for name in RUN_FILES:
        for tmp in out.glob(f".{name}.*.tmp"):
            if tmp.is_file():
                log.info("removing %s, left by an interrupted run", tmp)
                tmp.unlink(missing_ok=True)
