"""A study's config: its YAML (by default ``configs/<folder>/<kind>-<scale>.yaml``), then fields, then ``--set``."""
from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

from copd_ifm import config as cfg
from copd_ifm.errors import UserError

T = TypeVar("T")


def load_study(cls: type[T], kind: str, scale: str, folder: str | Path, path: str | None = None,
               overrides: list[str] | None = None, extra: dict[str, Any] | None = None,
               check_scale: bool = True) -> T:
    """``path`` (default ``CONFIG_DIR/folder/<kind>-<scale>.yaml``) as ``cls``, then ``extra`` fields, then
    ``--set`` overrides; a config describing another study kind (or, with ``check_scale``, another scale)
    is a one-line UserError."""
    source = path or str(cfg.CONFIG_DIR / folder / f"{kind}-{scale}.yaml")
    study = cfg.load(cls, source, overrides, extra)
    checks = [("study", kind, "--config")] + ([("scale", scale, "--scale")] if check_scale else [])
    for field, wanted, flag in checks:
        if getattr(study, field) != wanted:
            raise UserError(f"{source}: describes {field} {getattr(study, field)!r}, not {wanted!r}; pick the "
                            f"matching {flag} or fix its {field} field")
    return study
