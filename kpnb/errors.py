"""kpnb's own family of errors: input problems a user can fix.

Every error kpnb raises about its input (a file, a value, a flag) is a `KpnbError` whose
message says what is wrong, where (file, line, id) and what to do; the command line prints
it as one line, anything else keeps its traceback. It is a ``ValueError``.
"""

from __future__ import annotations

import re
from collections.abc import Callable

__all__ = ["KpnbError", "brief"]

_FIELD = re.compile(r"\{(\w+)\}")


class KpnbError(ValueError):
    """An input problem the user can fix; the message says what, where and how.

    The parameters at fault travel as a field, so each front end names them its own way:
    `param` is a name or a tuple of names, `params` maps names to the value to show. The
    message may place them as ``{name}``: Python reads ``label='hand'``, the command line
    ``--label 'hand'`` (`kpnb.cli.cli_message`).
    """

    def __init__(
        self,
        message: str = "",
        *,
        param: str | tuple[str, ...] | None = None,
        params: dict[str, object] | None = None,
    ):
        if message.startswith("Caught ") and "\nOriginal Traceback" in message:
            # raised in a DataLoader worker, rebuilt here as 26 lines: keep its own message
            mark = f"\n{type(self).__module__}.{type(self).__qualname__}: "
            message = message.rpartition(mark)[2].rstrip("\n")
        names = (param,) if isinstance(param, str) else tuple(param or ())
        self.params: dict[str, object] = {**dict.fromkeys(names), **(params or {})}
        self.template = message
        super().__init__(
            self.render(lambda name, value: name if value is None else f"{name}={value}")
        )

    @property
    def param(self) -> str | None:
        """The first parameter at fault (None: the message names no parameter)."""
        return next(iter(self.params), None)

    def render(self, spell: Callable[[str, object], str]) -> str:
        """The message with each ``{name}`` of `params` spelled by ``spell(name, value)``."""

        return _FIELD.sub(
            lambda m: spell(m[1], self.params[m[1]]) if m[1] in self.params else m[0], self.template
        )

    def placed(self) -> set[str]:
        """The parameters the message places as ``{name}``."""
        return {n for n in _FIELD.findall(self.template) if n in self.params}


def brief(value) -> str:
    """`value`'s repr cut to 60 characters, for a message about a bad value."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
