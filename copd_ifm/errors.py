"""User-facing errors: one line that names the file or field and the fix."""
from __future__ import annotations


class UserError(Exception):
    """Bad input from the user (file, flag or value).

    The CLI prints ``str(error)`` as a single line and exits non-zero without a
    traceback (``--debug`` shows it). The message must name the offending
    file/field and say how to fix it.
    """

    exit_code = 2


class ManifestNotFound(UserError):
    """A cohort's manifest file is missing.

    ``str()`` names the cohort and file and how to point at another one (both ways work for every stage that
    takes ``--cohort`` and ``--set``); the CLI rewords the fix with :meth:`message` when the user already gave
    the path that is missing.
    """

    FIX = ("point at yours with --cohort /path/to/manifest.csv or --set cohort.manifest=/path/to/manifest.csv, "
           "or use --cohort demo")

    def __init__(self, cohort: str, manifest: object, fix: str = FIX) -> None:
        self.cohort, self.manifest = cohort, manifest
        super().__init__(self.message(fix))

    def message(self, fix: str) -> str:
        return f"cohort {self.cohort!r}: manifest not found: {self.manifest} ({fix})"
