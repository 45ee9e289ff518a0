"""A keypoint layout (`Skeleton`) and the left/right partners a horizontal flip swaps.

Names pair up whatever their case, separators and ``L_``/``R_`` prefixes
(``Left_Ear``/``RIGHT_EAR``, ``L_Shoulder``/``R_Shoulder``); explicit pairs replace that.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from kpnb.errors import KpnbError, brief

__all__ = ["Skeleton", "flip_indices", "normalise_name", "resolve_pairs", "unpaired_sides"]

# Name words are split on case-insensitive separators: "_", "-", ".", space.
_SEPARATORS = re.compile(r"[\s_.\-]+")


def _side_key(name: str) -> tuple[str | None, tuple[str, ...]]:
    """``(side, words)`` of a keypoint name, its side word replaced by ``"*"``: ``left``/
    ``right`` anywhere, ``l``/``r`` only first or last (``L_Shoulder``, ``eye_L``; so
    ``"L_F_Paw"`` is the left ``f paw``). Case and separators do not matter."""
    words = [w for w in _SEPARATORS.split(str(name).lower()) if w]
    for i, w in enumerate(words):
        if w in ("left", "right") or (w in ("l", "r") and i in (0, len(words) - 1)):
            if len(words) == 1:
                break  # a name that is only "left"/"l" has nothing to pair on
            return ("left" if w[0] == "l" else "right"), tuple(words[:i] + ["*"] + words[i + 1 :])
    return None, tuple(words)


def normalise_name(name: str) -> str:
    """A keypoint name as kpnb compares names: lower case, words joined by ``_``, ``l``/``r``
    side prefixes spelled ``left``/``right`` (``"L_Eye"`` and ``"left-eye"`` -> ``left_eye``)."""
    side, words = _side_key(name)
    return "_".join(side if w == "*" else w for w in words)


def flip_indices(names: Sequence[str], pairs: Sequence[tuple] | None = None) -> list[int]:
    """The permutation that swaps left/right keypoints after a horizontal mirror.

    ``flipped[..., i, :] = original[..., perm[i], :]``. Without `pairs` (names or 0-based
    indices), a name pairs with the one that differs only by its side word after
    `normalise_name`; a name without a partner maps to itself.

    Example:
        >>> flip_indices(["nose", "left_eye", "right_eye"])
        [0, 2, 1]
        >>> flip_indices(["L_Eye", "R_Eye"])
        [1, 0]
    """
    perm = list(range(len(names)))
    for a, b in _index_pairs(names, pairs):
        perm[a], perm[b] = b, a
    return perm


def _index_pairs(names: Sequence[str], pairs: Sequence[tuple] | None) -> list[tuple[int, int]]:
    """The explicit `pairs` as indices, else each left name with its right partner."""
    if pairs is not None:
        return resolve_pairs(names, pairs)
    keys = [_side_key(n) for n in names]
    right = {words: i for i, (side, words) in enumerate(keys) if side == "right"}
    return [(i, right[w]) for i, (side, w) in enumerate(keys) if side == "left" and w in right]


def resolve_pairs(names: Sequence[str], pairs: Sequence[tuple]) -> list[tuple[int, int]]:
    """Explicit left/right `pairs` (names, or 0-based indices) as index pairs; a
    `KpnbError` for a name not a keypoint, an index out of range, or a keypoint in two."""
    names = [str(n) for n in names]
    out, seen = [], set()
    for pair in pairs:
        if len(pair) != 2:
            raise KpnbError(f"flip pair {pair!r}: give exactly two keypoints")
        idx = []
        for p in pair:
            if isinstance(p, (int, np.integer)):
                if not 0 <= int(p) < len(names):
                    raise KpnbError(f"flip pair {pair!r}: index {p} is not in 0..{len(names) - 1}")
                idx.append(int(p))
            elif str(p) in names:
                idx.append(names.index(str(p)))
            else:
                raise KpnbError(
                    f"flip pair {pair!r}: {p!r} is not a keypoint; keypoints are {names}"
                )
        a, b = idx
        if a == b or a in seen or b in seen:
            raise KpnbError(f"flip pair {pair!r}: a keypoint pairs with one other keypoint only")
        seen |= {a, b}
        out.append((min(a, b), max(a, b)))
    return out


def unpaired_sides(names: Sequence[str], pairs: Sequence[tuple] | None = None) -> list[str]:
    """Names that say left or right but have no partner (worth a warning: a typo, or a
    keypoint the flip cannot mirror)."""
    paired = {i for pair in _index_pairs(names, pairs) for i in pair}
    return [str(n) for i, n in enumerate(names) if _side_key(n)[0] and i not in paired]


def _pair_list(value, what: str, *, names: bool) -> tuple[tuple, ...]:
    """`value` as a tuple of 2-tuples of ints (or, with `names`, of names); a `KpnbError`
    naming `what` otherwise. Ranges are checked by `Skeleton` itself."""
    kinds = (int, str) if names else (int,)
    ok = isinstance(value, (list, tuple)) and all(
        isinstance(pair, (list, tuple))
        and len(pair) == 2
        and all(isinstance(i, kinds) and not isinstance(i, bool) for i in pair)
        for pair in value
    )
    if not ok:
        of = "indices or names" if names else "keypoint indices"
        raise KpnbError(f"skeleton {what!r} must be a list of pairs of {of}, not {brief(value)}")
    return tuple(tuple(pair) for pair in value)


@dataclass(frozen=True)
class Skeleton:
    """A keypoint layout: `keypoints` names, whose order is every ``[K]`` axis's in kpnb,
    `edges` between 0-based indices into them, and explicit left/right `pairs` (names or
    indices) for the flip; ``None`` derives them from the names (see `flip_indices`).
    """

    keypoints: tuple[str, ...]
    edges: tuple[tuple[int, int], ...] = ()
    pairs: tuple[tuple[int, int], ...] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "keypoints", tuple(str(k) for k in self.keypoints))
        object.__setattr__(self, "edges", tuple((int(a), int(b)) for a, b in self.edges))
        if self.pairs is not None:
            object.__setattr__(self, "pairs", tuple(resolve_pairs(self.keypoints, self.pairs)))
        if len(set(self.keypoints)) != len(self.keypoints):
            dupes = sorted({k for k in self.keypoints if self.keypoints.count(k) > 1})
            raise KpnbError(f"skeleton keypoint names must be unique, got duplicates {dupes}")
        k = len(self.keypoints)
        bad = [e for e in self.edges if not (0 <= e[0] < k and 0 <= e[1] < k)]
        if bad:
            raise KpnbError(f"skeleton edges {bad} point outside 0..{k - 1} ({k} keypoints)")

    @property
    def num_keypoints(self) -> int:
        return len(self.keypoints)

    def to_dict(self) -> dict:
        """Plain lists and strings (what checkpoints and JSON files hold)."""
        out = {"keypoints": list(self.keypoints), "edges": [list(e) for e in self.edges]}
        if self.pairs is not None:
            out["pairs"] = [list(p) for p in self.pairs]
        return out

    @classmethod
    def from_dict(cls, data: dict) -> Skeleton:
        """The inverse of `to_dict`, checking every part (a checkpoint's file may have been
        edited): a `KpnbError` saying what is wrong on anything else."""
        if not isinstance(data, dict):
            raise KpnbError(f"a skeleton is a dict of 'keypoints' and 'edges', not {brief(data)}")
        names = data.get("keypoints")
        listed = isinstance(names, (list, tuple)) and all(isinstance(n, str) for n in names)
        if not (listed and names):
            raise KpnbError(f"skeleton 'keypoints' must be a list of names, not {brief(names)}")
        edges = data.get("edges")
        edges = () if edges is None else _pair_list(edges, "edges", names=False)
        pairs = data.get("pairs")
        pairs = None if pairs is None else _pair_list(pairs, "pairs", names=True)
        return cls(tuple(names), edges, pairs)

    @property
    def flip_indices(self) -> list[int]:
        """Left/right permutation: the explicit `pairs`, else derived from the names."""
        return flip_indices(self.keypoints, self.pairs)

    def with_flip_pairs(self, pairs: Sequence[tuple]) -> Skeleton:
        """This skeleton with explicit left/right `pairs` (names or indices)."""
        return Skeleton(self.keypoints, self.edges, tuple(pairs))

    def flip_summary(self) -> str:
        """One line for ``info`` and ``check_export``: the pairs, or that the flip is off."""
        if not self.flip_pairs:
            return (
                "no left/right pairs: the training flip is off (pass --flip-pairs / "
                "flip_pairs= to turn it on)"
            )
        text = ", ".join(f"{self.keypoints[a]}<->{self.keypoints[b]}" for a, b in self.flip_pairs)
        lonely = unpaired_sides(self.keypoints, self.pairs)
        return text + (f"; no partner for {lonely}" if lonely else "")

    @property
    def flip_pairs(self) -> list[tuple[int, int]]:
        """The (left, right) index pairs that swap on a horizontal flip."""
        return [(i, j) for i, j in enumerate(self.flip_indices) if i < j]
