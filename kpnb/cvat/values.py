"""Attribute strings -> checked numbers, in bulk: one conversion per distinct value.

Every value is read as CVAT's own importer reads it (Python's ``int``/``float``), then checked:
a value CVAT would store differently or not at all is a `CvatFormatError` naming the
file, line, element and attribute, and what to do.
"""

from __future__ import annotations

import math
import re
import warnings
from operator import methodcaller

import numpy as np

from kpnb.cvat.errors import at_line

INT32 = (-(2**31), 2**31 - 1)  # CVAT's database keeps ids, frames, z_order and group_id so
_MAX_SIDE = 2**31 - 1
TRUE = frozenset(("1", "true", "True"))
_NUMBERS = re.compile(r"[0-9.eE+\-,]*")  # where numpy's parser and Python's float agree
_count_commas = methodcaller("count", ",")
_count_semicolons = methodcaller("count", ";")


def flags(values: list) -> np.ndarray:
    """``"1"``/``"true"`` -> True, anything else (or missing) -> False, as CVAT reads flags."""
    return np.fromiter(map(TRUE.__contains__, values), bool, len(values))


def _whole(value: str) -> int:
    try:
        return int(value)
    except ValueError:
        pass
    f = float(value)  # ValueError: not a number at all
    if not math.isfinite(f) or not f.is_integer():
        raise ValueError(value)
    return int(f)


def integers(values: list, lines: list[int], what: str, source: str, *, default: int = 0,
             bounds: tuple[int, int] = INT32, fix: str = "") -> np.ndarray:  # fmt: skip
    """Integer attribute strings (None or "" -> `default`) as int64, each within `bounds`."""
    conv: dict = {None: default, "": default}
    lo, hi = bounds
    for v in set(values) - conv.keys():
        try:
            i = _whole(v)
        except ValueError:
            _refuse(values, lines, v, what, source, "is not a whole number", fix)
        if not lo <= i <= hi:
            _refuse(values, lines, v, what, source,
                    f"is outside {lo}..{hi}, the range CVAT stores", fix)  # fmt: skip
        conv[v] = i
    return np.fromiter(map(conv.__getitem__, values), np.int64, len(values))


def sides(values: list, lines: list[int], what: str, source: str) -> np.ndarray:
    """Image widths or heights: whole pixels, at least 1 (missing -> NaN, e.g. video frames)."""
    fix = "CVAT writes the image's size in whole pixels: export the task again"
    out = integers(values, lines, what, source, default=-1, bounds=(-1, _MAX_SIDE), fix=fix)
    bad = np.flatnonzero((out < 1) & (out != -1))
    for v in (values[i] for i in bad[:1]):
        _refuse(values, lines, v, what, source, "is not a size of at least 1 pixel", fix)
    return np.where(out == -1, np.nan, out.astype(np.float64))


def _refuse(values, lines, v, what, source, reason, fix):
    i = values.index(v)
    what = what(i) if callable(what) else what
    raise at_line(source, lines[i], f"{what}={v!r} {reason}" + (f"; {fix}" if fix else ""))


def coordinates(strings: list[str], lines: list[int], what: str, source: str,
                one_each: bool = False) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """``points`` strings (``"x0,y0;x1,y1"``) -> ``[N, 2]`` float64 and the pairs per string.

    Every piece must be one ``x,y`` of finite numbers; `one_each`: exactly one per string
    (skeleton elements). The numbers are parsed in one call over the joined strings.
    """
    counts = np.fromiter(map(_count_semicolons, strings), np.int64, len(strings)) + 1
    empty = np.fromiter(map(bool, strings), bool, len(strings)) == 0
    counts[empty] = 0
    if one_each and (counts != 1).any():
        i = int(np.flatnonzero(counts != 1)[0])
        raise at_line(source, lines[i], f"{what} points={strings[i]!r} must be one 'x,y' "
                      "(a skeleton element is one point); fix the value or export again")
    joined = ";".join(filter(None, strings)) if empty.any() else ";".join(strings)
    pieces = joined.split(";") if joined else []
    commas = np.fromiter(map(_count_commas, pieces), np.int64, len(pieces))
    flat = None if (commas != 1).any() else _parse_numbers(joined.replace(";", ","))
    if flat is None or len(flat) != 2 * len(pieces) or not np.isfinite(flat).all():
        _find_bad_piece(strings, lines, what, source)
        raise AssertionError("a points value failed to parse but every piece reads")
    return flat.reshape(-1, 2), counts


def _parse_numbers(text: str) -> np.ndarray | None:
    """Comma-separated numbers -> float64, or None where numpy and Python could disagree."""
    if not _NUMBERS.fullmatch(text):
        try:
            return np.array(text.split(","), dtype=np.float64)  # Python's float per value
        except ValueError:
            return None
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)  # numpy's "could not be read"
        try:
            return np.fromstring(text, dtype=np.float64, sep=",")
        except (ValueError, DeprecationWarning):
            return None


def _find_bad_piece(strings: list[str], lines: list[int], what: str, source: str) -> None:
    for s, line in zip(strings, lines, strict=True):
        for piece in s.split(";") if s else ():
            parts = piece.split(",")
            try:
                ok = len(parts) == 2 and all(math.isfinite(float(p)) for p in parts)
            except ValueError:
                ok = False
            if not ok:
                raise at_line(source, line, f"{what} points={s!r} is not 'x,y' pairs of finite "
                              "numbers; fix the value in CVAT or export the task again")
