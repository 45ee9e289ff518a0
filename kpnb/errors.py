"""kpnb's own family of errors: input problems a user can fix.

Every error kpnb raises about its input (a file, a value, a flag) is a `KpnbError`, and its
message says what is wrong, where (file, line, id) and what to do. The command line prints
these as one line; anything else (a bug, CUDA running out of memory) keeps its traceback.
`KpnbError` is a ``ValueError``, so code that caught ``ValueError`` before still does.
"""

from __future__ import annotations

__all__ = ["KpnbError"]


class KpnbError(ValueError):
    """An input problem the user can fix; the message says what, where and how.

    `param` names the Python parameter at fault (``"label"``, ``"images_root"``), so a
    front end can name its own way of setting it: the CLI says ``--label``.
    """

    def __init__(self, message: str = "", *, param: str | None = None):
        super().__init__(message)
        self.param = param
