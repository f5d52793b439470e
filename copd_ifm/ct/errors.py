"""Per-subject failures of CT preprocessing.

A :class:`SubjectError` stops one subject, never the run: the orchestration
records ``str(error)`` as the one-line reason in ``failures.csv`` and moves on.
"""
from __future__ import annotations


class SubjectError(Exception):
    """One subject cannot be preprocessed; the message is a one-line reason."""
