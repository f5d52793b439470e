"""Per-subject failures of CT preprocessing.

A :class:`SubjectError` stops one subject, never the run: the orchestration
records ``str(error)`` as the one-line reason and ``error.code`` as its
reason code (what ``failures by reason`` counts) in ``failures.csv`` and moves on.
"""
from __future__ import annotations


class SubjectError(Exception):
    """One subject cannot be preprocessed; the message is a one-line reason, ``code`` a short reason code."""

    def __init__(self, message: str, code: str = "other"):
        super().__init__(message)
        self.code = code
