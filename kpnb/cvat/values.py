"""Attribute strings -> checked numbers, in bulk: one conversion per distinct value.

Every value is read as CVAT's own importer reads it (Python's ``int``/``float``), then checked:
a value CVAT would store differently or not at all is a `CvatFormatError` naming the
file, line, element and attribute, and what to do.
"""

from __future__ import annotations

import math

import numpy as np

from kpnb.cvat.errors import at_line

INT32 = (-(2**31), 2**31 - 1)  # CVAT's database keeps ids, frames, z_order and group_id so
_MAX_SIDE = 2**31 - 1
TRUE = frozenset(("1", "true", "True"))
_COMMA, _SEMI = ord(","), ord(";")


def flags(values: list) -> np.ndarray:
    """``"1"``/``"true"`` -> True, anything else (or missing) -> False, as CVAT reads flags."""
    distinct = set(values)
    if len(distinct) == 1:
        return np.full(len(values), distinct.pop() in TRUE)
    return np.array(list(map(TRUE.__contains__, values)), bool)


def _whole(value: str) -> int:
    try:
        return int(value)
    except ValueError:
        pass
    try:
        f = float(value)
    except ValueError:
        raise ValueError("is not a number") from None
    if not math.isfinite(f) or not f.is_integer():
        raise ValueError("is not a whole number")
    return int(f)


def integers(
    values: list,
    lines: list[int],
    what: str,
    source: str,
    *,
    default: int = 0,
    bounds: tuple[int, int] = INT32,
    fix: str = "",
) -> np.ndarray:
    """Integer attribute strings (None or "" -> `default`) as int64, each within `bounds`."""
    conv: dict = {None: default, "": default}
    lo, hi = bounds
    distinct = set(values)
    for v in distinct - conv.keys():
        try:
            i = _whole(v)
        except ValueError as exc:
            _refuse(values, lines, v, what, source, str(exc), fix)
        if not lo <= i <= hi:
            _refuse(
                values, lines, v, what, source, f"is outside {lo}..{hi}, the range CVAT stores", fix
            )
        conv[v] = i
    if len(distinct) == 1:
        return np.full(len(values), conv[distinct.pop()], np.int64)
    return np.array(list(map(conv.__getitem__, values)), np.int64)


def sides(values: list, lines: list[int], what: str, source: str) -> np.ndarray:
    """Image widths or heights: whole pixels, at least 1 (missing -> NaN, e.g. video frames)."""
    fix = "CVAT writes the image's size in whole pixels: export the task again"
    out = integers(values, lines, what, source, default=-1, bounds=(INT32[0], _MAX_SIDE), fix=fix)
    bad = np.flatnonzero((out < 1) & (out != -1))
    for v in (values[i] for i in bad[:1]):
        _refuse(values, lines, v, what, source, "is not a size of at least 1 pixel", fix)
    return np.where(out == -1, np.nan, out.astype(np.float64))


def _refuse(values, lines, v, what, source, reason, fix):
    i = values.index(v)
    what = what(i) if callable(what) else what
    raise at_line(source, lines[i], f"{what}={v!r} {reason}" + (f"; {fix}" if fix else ""))


def coordinates(
    strings: list[str], lines: list[int], what: str, source: str, one_each: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """``points`` strings (``"x0,y0;x1,y1"``) -> ``[N, 2]`` float64 and the pairs per string.

    Every piece must be one ``x,y`` of finite numbers; `one_each`: exactly one per string
    (skeleton elements). The numbers are parsed in one call over the joined strings.
    """
    n = len(strings)
    joined = ";".join(strings)
    if joined.count(";") == n - 1 and "" not in strings:
        counts = np.ones(n, np.int64)  # the usual case: one x,y each
    else:
        counts = np.array([s.count(";") + 1 if s else 0 for s in strings], np.int64)
        joined = ";".join(filter(None, strings))
    if one_each and (counts != 1).any():
        i = int(np.flatnonzero(counts != 1)[0])
        raise at_line(
            source,
            lines[i],
            f"{what} points={strings[i]!r} must be one 'x,y' "
            "(a skeleton element is one point); fix the value or export again",
        )
    flat = _parse_pairs(joined) if joined else np.zeros(0)
    if flat is None or len(flat) != 2 * int(counts.sum()) or not np.isfinite(flat).all():
        _find_bad_piece(strings, lines, what, source)
        raise AssertionError("a points value failed to parse but every piece reads")
    return flat.reshape(-1, 2), counts


def _parse_pairs(text: str) -> np.ndarray | None:
    """``"x,y;x,y"`` -> flat float64, or None unless every piece is one pair of numbers.

    Each number is read as Python's ``float`` reads it (so "1_000" and " 5" are numbers,
    as in CVAT's own importer); non-finite values are refused by the caller.
    """
    if not _pairs_shape(text):
        return None
    try:
        return np.array(text.replace(";", ",").split(","), dtype=np.float64)
    except ValueError:
        return None


def _pairs_shape(text: str) -> bool:
    """Whether `text` is ``a,b;a,b;...`` with no empty piece, checked on its bytes at once
    (separators are ASCII, so their byte positions are theirs in UTF-8 too)."""
    buf = np.frombuffer(text.encode("utf-8", "surrogatepass"), np.uint8)
    at = np.flatnonzero((buf == _COMMA) | (buf == _SEMI))
    if len(at) % 2 == 0 or at[0] == 0 or at[-1] == len(buf) - 1:
        return False
    seps = buf[at]
    return bool(
        (seps[0::2] == _COMMA).all() and (seps[1::2] == _SEMI).all() and (np.diff(at) > 1).all()
    )


def _find_bad_piece(strings: list[str], lines: list[int], what: str, source: str) -> None:
    for s, line in zip(strings, lines, strict=True):
        for piece in s.split(";") if s else ():
            parts = piece.split(",")
            try:
                ok = len(parts) == 2 and all(math.isfinite(float(p)) for p in parts)
            except ValueError:
                ok = False
            if not ok:
                raise at_line(
                    source,
                    line,
                    f"{what} points={s!r} is not 'x,y' pairs of finite "
                    "numbers; fix the value in CVAT or export the task again",
                )
