"""User-facing errors: one line that names the file or field and the fix."""
from __future__ import annotations


class UserError(Exception):
    """Bad input from the user (file, flag or value).

    The CLI prints ``str(error)`` as a single line and exits non-zero without a
    traceback (``--debug`` shows it). The message must name the offending
    file/field and say how to fix it.
    """

    exit_code = 2
