"""kpnb's own family of errors: input problems a user can fix.

Every error kpnb raises about its input (a file, a value, a flag) is a `KpnbError`, and its
message says what is wrong, where (file, line, id) and what to do. The command line prints
these as one line; anything else (a bug, CUDA running out of memory) keeps its traceback.
`KpnbError` is a ``ValueError``, so code that caught ``ValueError`` before still does.
"""

from __future__ import annotations

import re
from collections.abc import Callable

__all__ = ["KpnbError"]

_FIELD = re.compile(r"\{(\w+)\}")


def python_spelling(name: str, value: object) -> str:
    """How Python code sets a parameter: ``name=value``, or ``name`` for no value."""
    return name if value is None else f"{name}={value}"


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
        message = self._from_worker(message)
        names = (param,) if isinstance(param, str) else tuple(param or ())
        self.params: dict[str, object] = {**dict.fromkeys(names), **(params or {})}
        self.template = message
        super().__init__(self.render(python_spelling))

    @classmethod
    def _from_worker(cls, message: str) -> str:
        """The error's own message when a DataLoader worker raised it: torch rebuilds it in
        the main process as ``cls("Caught ... Original Traceback ...")``, 26 lines for one."""
        if not message.startswith("Caught ") or "\nOriginal Traceback" not in message:
            return message
        mark = f"\n{cls.__module__}.{cls.__qualname__}: "
        at = message.rfind(mark)
        return message[at + len(mark) :].rstrip("\n") if at >= 0 else message

    @property
    def param(self) -> str | None:
        """The first parameter at fault (None: the message names no parameter)."""
        return next(iter(self.params), None)

    def render(self, spell: Callable[[str, object], str]) -> str:
        """The message with each ``{name}`` of `params` spelled by ``spell(name, value)``."""

        def field(m: re.Match) -> str:
            name = m.group(1)
            return spell(name, self.params[name]) if name in self.params else m.group(0)

        return _FIELD.sub(field, self.template) if self.params else self.template

    def placed(self) -> set[str]:
        """The parameters the message places as ``{name}``."""
        return {n for n in _FIELD.findall(self.template) if n in self.params}
