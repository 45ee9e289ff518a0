"""CVAT attribute strings -> checked numbers, read as CVAT's own importer reads them (Python's
``int``/``float``: "1_000" and " 5" are numbers); a `BadValue` says why one is refused."""

from __future__ import annotations

import math

import numpy as np

from kpnb.errors import KpnbError

INT32 = (-(2**31), 2**31 - 1)  # CVAT's database keeps ids, frames, z_order and group_id so
FRAMES = (0, INT32[1])
TRUE = frozenset(("1", "true", "True"))


class CvatFormatError(KpnbError):
    """A CVAT file is malformed or not CVAT: the message names the file, line and fix."""


def at_line(source: str, line: int, message: str) -> CvatFormatError:
    """A `CvatFormatError` for `message` at `line` of `source`."""
    return CvatFormatError(f"{source}: line {line}: {message}")


class BadValue(Exception):
    """Why a value is refused; the reader re-raises it naming file, line and attribute."""


def whole(text: str, bounds: tuple[int, int] = INT32) -> int:
    """A whole number within `bounds` (``"3"``, ``"3.0"``), as CVAT's importer reads one."""
    try:
        value = int(text)
    except ValueError:
        try:
            f = float(text)
        except ValueError:
            raise BadValue("is not a number") from None
        if not math.isfinite(f) or not f.is_integer():
            raise BadValue("is not a whole number") from None
        value = int(f)
    if not bounds[0] <= value <= bounds[1]:
        raise BadValue(f"is outside {bounds[0]}..{bounds[1]}, the range CVAT stores")
    return value


def integers(texts, lines, what, source: str, default: int = 0) -> np.ndarray:
    """Integer attribute strings (None or "" -> `default`) as int64 within CVAT's int32,
    each distinct text converted once; `what(i)` names row i's element and attribute."""
    conv = {None: default, "": default}
    for text in set(texts) - conv.keys():
        try:
            conv[text] = whole(text)
        except BadValue as exc:
            i = texts.index(text)
            raise at_line(source, lines[i], f"{what(i)}={text!r} {exc}") from None
    return np.array([conv[t] for t in texts], np.int64)


def flags(texts) -> np.ndarray:
    """``"1"``/``"true"`` -> True, anything else (or missing) -> False, as CVAT reads flags."""
    return np.array([t in TRUE for t in texts], bool)


def _bulk(texts: list[str], one_each: bool):
    """`coordinates`' numbers as ``[N, 2]`` and pairs per string, or None if one is bad."""
    counts = np.array([t.count(";") + 1 if t else 0 for t in texts], np.int64)
    joined = ";".join(filter(None, texts))
    pieces = joined.split(";") if joined else []
    if {p.count(",") for p in pieces} - {1} or (one_each and (counts != 1).any()):
        return None, counts
    try:  # Python's float reads each number, as CVAT's importer does ("1_000", " 5")
        flat = np.array(joined.replace(";", ",").split(",") if joined else [], np.float64)
    except ValueError:
        return None, counts
    return (flat.reshape(-1, 2) if np.isfinite(flat).all() else None), counts


def coordinates(texts, lines, what: str, source: str, one_each: bool = False):
    """``points`` strings -> ``([N, 2] float64, pairs per string)``, parsed in one numpy call
    over the joined strings (a Python loop per number costs 1 s on a million points); only
    when that fails are the strings read one by one, to name the first bad one's line."""
    texts = [t or "" for t in texts]
    xy, counts = _bulk(texts, one_each)
    if xy is None:
        bad = next(i for i, t in enumerate(texts) if _bulk([t], one_each)[0] is None)
        why = "is not 'x,y' pairs of finite numbers"
        if one_each and _bulk([texts[bad]], False)[0] is not None:
            why = "must be one 'x,y' (a skeleton element is one point)"
        raise at_line(source, lines[bad], f"{what} points={texts[bad]!r} {why}")
    return xy, counts
