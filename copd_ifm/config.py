"""Typed configuration: YAML files in ``configs/`` loaded into dataclasses.

The default configs ship inside the package (``copd_ifm/configs``; in a checkout a link to the
top-level ``configs/``, their one source), so a wheel finds them as an editable install does;
``$COPD_IFM_CONFIGS`` names another folder of the same layout instead.

Every config class is a (nested) dataclass. :func:`from_dict` validates a plain
mapping against it (unknown keys, wrong types and out-of-range values are
rejected with a one-line :class:`~copd_ifm.errors.UserError` naming the file
and the dotted field). Overrides travel as one ``{"a.b": value}`` mapping:
CLI flags put their typed values in it, ``--set a.b=value`` strings are parsed
into it once (:func:`dotted`), and :func:`apply_overrides` applies it, one
:func:`set_dotted` at a time; a config YAML may inherit another with ``base: NAME``
(:func:`read_config`); :func:`named_config` is the one lookup of a config by name,
:func:`parse_floats` the one reader of comma-separated numbers (``--eps 0.1,0.5``);
and :func:`save_resolved` writes the fully resolved config next to a run's outputs.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import types
import typing
from pathlib import Path
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

import yaml

from copd_ifm.errors import UserError
from copd_ifm.files import atomic_write_text, package_path

T = TypeVar("T")



def default_config_dir() -> Path:
    """``$COPD_IFM_CONFIGS`` if set, else the configs shipped in the package (the one lookup of defaults)."""
    override = os.environ.get("COPD_IFM_CONFIGS")
    return Path(override) if override else package_path("copd_ifm", "configs")


CONFIG_DIR = default_config_dir()


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping; a missing or malformed file is a :class:`UserError`."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file not found: {path} (check the path or pick one in {CONFIG_DIR})")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        line = getattr(getattr(exc, "problem_mark", None), "line", None)
        where = f" line {line + 1}" if line is not None else ""
        raise UserError(f"{path}{where}: invalid YAML ({getattr(exc, 'problem', exc)}); fix the syntax") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"{path}: top level must be a mapping of fields, got {type(data).__name__}")
    return data


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp).replace("typing.", ""))


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check/convert ``value`` to annotation ``tp``; raise UserError naming ``where``."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except UserError as exc:
                errors.append(str(exc))
        raise UserError(errors[0] if len(errors) == 1 else f"{where}: {value!r} matches none of {_type_name(tp)}")
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise UserError(f"{where}: expected a mapping of fields, got {value!r}")
        return _build(tp, value, where)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise UserError(f"{where}: expected a list, got {value!r}")
        inner = args[0] if args else Any
        items = [_coerce(v, inner, f"{where}[{i}]") for i, v in enumerate(value)]
        return items if origin is list else tuple(items)
    if origin is dict:
        if not isinstance(value, Mapping):
            raise UserError(f"{where}: expected a mapping, got {value!r}")
        kt, vt = args if args else (Any, Any)
        return {_coerce(k, kt, where): _coerce(v, vt, f"{where}.{k}") for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise UserError(f"{where}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise UserError(f"{where}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise UserError(f"{where}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise UserError(f"{where}: expected a string, got {value!r}")
    if typing.get_origin(tp) is typing.Literal:
        if value not in args:
            raise UserError(f"{where}: {value!r} is not one of {', '.join(map(repr, args))}")
        return value
    return value


def _build(cls: type[T], data: Mapping[str, Any], where: str) -> T:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}  # type: ignore[arg-type]  # callers pass dataclasses
    unknown = sorted(set(data) - names)
    if unknown:
        raise UserError(f"{where}: unknown field {unknown[0]!r} (valid: {', '.join(sorted(names))})")
    kwargs = {k: _coerce(v, hints[k], f"{where}.{k}" if where else k) for k, v in data.items()}
    try:
        obj = cls(**kwargs)
    except TypeError as exc:
        raise UserError(f"{where}: {exc}") from exc
    validate = getattr(obj, "validate", None)
    if callable(validate):
        try:
            validate()
        except ValueError as exc:
            raise UserError(f"{where}: {exc}") from exc
    return obj


def from_dict(cls: type[T], data: Mapping[str, Any], source: str = "config") -> T:
    """Build dataclass ``cls`` from ``data``; errors name ``source`` and the field."""
    return _build(cls, data, source)


def to_dict(obj: Any) -> dict[str, Any]:
    """Plain, YAML/JSON-serialisable dict of a (nested) dataclass."""
    return json.loads(json.dumps(dataclasses.asdict(obj), default=str))


#: ``--set`` strings (``"optim.lr=0.1"``) or dotted keys with their values (``{"optim.lr": 0.1}``).
Overrides = Mapping[str, Any] | Sequence[str] | None


def parse_override(item: str) -> tuple[str, Any]:
    """``"optim.lr=0.1"`` → (``"optim.lr"``, ``0.1``); the value is parsed as YAML."""
    if "=" not in item:
        raise UserError(f"--set {item!r}: expected key=value, e.g. --set optim.lr=0.03")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key:
        raise UserError(f"--set {item!r}: empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise UserError(f"--set {item!r}: value is not valid YAML") from exc
    return key, value


def dotted(overrides: Overrides) -> dict[str, Any]:
    """Overrides as one ``{"a.b": value}`` mapping (``--set`` strings are parsed here, and only here)."""
    if overrides is None:
        return {}
    if isinstance(overrides, Mapping):
        return dict(overrides)
    return dict(parse_override(item) for item in overrides)


def split_prefix(overrides: Mapping[str, Any], prefix: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """``({k: v} with "PREFIX." stripped, the rest)``: routes ``--set cohort.manifest=…`` to the cohort."""
    mine = {k[len(prefix) + 1:]: v for k, v in overrides.items() if k.startswith(prefix + ".")}
    rest = {k: v for k, v in overrides.items() if not k.startswith(prefix + ".")}
    return mine, rest


def set_dotted(tree: dict[str, Any], key: str, value: Any) -> None:
    """``tree["a"]["b"] = value`` for ``key`` ``"a.b"`` (the one dotted-key setter), creating missing groups."""
    *groups, leaf = key.split(".")
    node = tree
    for k in groups:
        child = node.get(k)
        if child is None:
            child = node[k] = {}
        if not isinstance(child, dict):
            raise UserError(f"--set {key}: {k!r} is not a group of fields")
        node = child
    node[leaf] = value


def apply_overrides(data: dict[str, Any], overrides: Overrides) -> dict[str, Any]:
    """Set dotted keys in a nested mapping (in place and returned)."""
    for key, value in dotted(overrides).items():
        set_dotted(data, key, value)
    return data


def parse_floats(text: str, flag: str) -> list[float]:
    """``"0.1,0.5"`` → ``[0.1, 0.5]`` (the one comma-separated-number parser); anything else, or no number, is a
    one-line UserError naming ``flag``."""
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"{flag} {text!r}: give comma-separated numbers such as 0.1,0.5") from None
    if not values:
        raise UserError(f"{flag} is empty: give comma-separated numbers such as 0.1,0.5")
    return values


def read_config(path: str | Path) -> dict[str, Any]:
    """A config YAML with inheritance: ``base: NAME`` (a YAML beside it) is read first and this file merged on top."""
    path = Path(path)
    data = read_yaml(path)
    base = data.pop("base", None)
    if base is None:
        return data
    base_path = path.parent / (base if str(base).endswith((".yaml", ".yml")) else f"{base}.yaml")
    if base_path.resolve() == path.resolve():
        raise UserError(f"{path}: 'base: {base}' names the file itself; name another config")
    return merge(read_config(base_path), data)


def named_config(kind: str, spec: str, flag: str = "--config", noun: str = "config",
                 other: str = "a YAML path") -> Path:
    """``spec`` is a YAML path or the name of a config in ``configs/KIND`` (the one lookup by name).

    An unknown name is a one-line UserError listing the known ones; ``noun`` names what ``flag`` picks and
    ``other`` what else it takes.
    """
    if spec.endswith((".yaml", ".yml")) or Path(spec).is_file():
        return Path(spec)
    folder = CONFIG_DIR / kind
    path = folder / f"{spec}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in folder.glob("*.yaml"))
        raise UserError(f"{flag} {spec!r}: unknown {noun} (known in {folder}: {', '.join(known)}; or give {other})")
    return path


def check_resume(saved: Mapping[str, Any], given: Mapping[str, Any], may_change: Sequence[str],
                 source: str) -> None:
    """Refuse a resumed run whose config differs from the saved one outside ``may_change`` (dotted keys)."""
    old, new = flatten(saved), flatten(given)
    changed = sorted(k for k in old.keys() | new.keys()
                     if old.get(k) != new.get(k) and not any(k == m or k.startswith(m + ".") for m in may_change))
    if changed:
        diff = "; ".join(f"{k}: saved {old.get(k)!r}, given {new.get(k)!r}" for k in changed[:3])
        raise UserError(f"--resume: the run's config differs from {source} ({diff}); drop those flags to resume "
                        f"as saved, or start a new --out")


def merge(base: dict[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """Recursive dict merge: ``update`` wins; nested mappings are merged."""
    out = dict(base)
    for k, v in update.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v)
        else:
            out[k] = v
    return out


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mapping → ``{"a.b.c": value}`` (dotted keys as ``--set`` takes them)."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def config_hash(obj: Any) -> str:
    """Short stable hash of a resolved config (12 hex digits)."""
    blob = json.dumps(to_dict(obj) if dataclasses.is_dataclass(obj) else obj, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def save_resolved(obj: Any, path: str | Path) -> Path:
    """Write the fully resolved config ``obj`` as YAML to ``path`` (atomically)."""
    atomic_write_text(path, yaml.safe_dump(to_dict(obj), sort_keys=False))
    return Path(path)


def load(cls: type[T], path: str | Path | None = None, overrides: Overrides = None,
         extra: Mapping[str, Any] | None = None) -> T:
    """Load ``cls`` from YAML ``path`` (or defaults; ``base:`` inherited), then ``extra`` (nested), then overrides."""
    data: dict[str, Any] = read_config(path) if path else {}
    if extra:
        data = merge(data, extra)
    data = apply_overrides(data, overrides)
    source = str(path) if path else cls.__name__
    return from_dict(cls, data, source)
