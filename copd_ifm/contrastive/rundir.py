"""The run-folder contract of every pretraining command (CT and vision): ``RUN/config.yaml`` and ε.

A new run writes its resolved config; ``--resume`` refuses a config that differs
from the saved one outside the contract's runtime fields (where and how fast it
runs), and ``--extend`` also lets the epoch count grow, never shrink. A file that
records ε names it ``loss.epsilon`` (the dotted config field);
:func:`recorded_epsilon` also reads the keys of older run folders.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any
from collections.abc import Mapping

import yaml

from copd_ifm import config as cfg_io
from copd_ifm.contrastive import distributed as D
from copd_ifm.contrastive.checkpoint import prepare_run_dir
from copd_ifm.errors import UserError
from copd_ifm.files import atomic_write_text

CONFIG_FILE = "config.yaml"
#: The key under which summaries and feature metadata record ε.
EPSILON_KEY = "loss.epsilon"
#: Keys older run folders used for ε (CT summaries and features: ``ifm_epsilon``, vision: ``ifm_eps``).
OLD_EPSILON_KEYS = ("ifm_epsilon", "ifm_eps", "epsilon")


@dataclass(frozen=True)
class RunContract:
    """What a run folder of one config class may change on ``--resume``.

    ``cls``: the config dataclass; ``runtime``: dotted fields that may differ;
    ``epochs``: the dotted field ``--extend`` may raise; ``section``: the key of
    ``config.yaml`` that holds the config (None: the whole file).
    """

    cls: type
    runtime: tuple[str, ...]
    epochs: str
    section: str | None = None


def start_run(run_dir: str | Path, config: Any, contract: RunContract, resume: bool = False, extend: bool = False,
              document: Mapping[str, Any] | None = None) -> Path:
    """Create (or reopen with ``resume``) ``run_dir``, check a resumed config, then write ``config.yaml``.

    ``document``: the whole ``config.yaml`` when it holds more than ``config`` (its
    ``contract.section``); by default ``config`` itself. Returns the run folder.
    """
    run_dir = prepare_run_dir(run_dir, resume)
    if resume:
        check_resumed(run_dir, config, contract, extend)
    if D.is_main():
        write_config(run_dir, document if document is not None else cfg_io.to_dict(config))
    return run_dir


def write_config(run_dir: Path, document: Mapping[str, Any]) -> None:
    """``RUN/config.yaml`` (atomically), keys in the order given."""
    atomic_write_text(run_dir / CONFIG_FILE, yaml.safe_dump(dict(document), sort_keys=False))


def check_resumed(run_dir: Path, config: Any, contract: RunContract, extend: bool) -> None:
    """Refuse to resume ``run_dir`` with ``config`` if it differs from the saved one outside the contract."""
    path = run_dir / CONFIG_FILE
    if not path.is_file():
        raise UserError(f"{run_dir}: --resume needs the run's {CONFIG_FILE}, which is missing; start a new --out")
    doc = cfg_io.read_yaml(path)
    where = f"{path}:{contract.section}" if contract.section else str(path)
    saved = cfg_io.to_dict(cfg_io.from_dict(contract.cls, doc[contract.section] if contract.section else doc, where))
    given = cfg_io.to_dict(config)
    may_change = contract.runtime + ((contract.epochs,) if extend else ())
    cfg_io.check_resume(saved, given, may_change, str(path))
    before, after = cfg_io.flatten(saved)[contract.epochs], cfg_io.flatten(given)[contract.epochs]
    if after < before:
        raise UserError(f"--extend: --epochs {after} is fewer than the run's {before}; give more epochs")


def resume_source(out: str | Path | None, config_flag: str | None = None) -> Path:
    """``OUT/config.yaml``, the config ``--resume`` / ``--extend`` continue with (``config_flag``: a ``--config``
    the user gave, refused: the run's saved config is the one)."""
    if not out or config_flag:
        raise UserError(f"--resume continues --out RUN_DIR with its saved {CONFIG_FILE}: "
                        + ("drop --config" if out else "give --out"))
    path = Path(out) / CONFIG_FILE
    if not path.is_file():
        raise UserError(f"--resume: {path} not found; is --out a run folder of this pretrain command?")
    return path


#: The command that writes each kind of run folder (:func:`run_kind`).
PRETRAIN_COMMANDS = {"ct": "copd-ifm pretrain", "vision": "copd-ifm vision pretrain"}


def run_kind(run_dir: str | Path) -> str:
    """``ct`` or ``vision``: which pretraining command wrote ``RUN/config.yaml`` (CT: ``cohort`` and ``pretrain``
    sections; vision: a ``method`` field)."""
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise UserError(f"--run {run_dir}: no {CONFIG_FILE}; give a folder written by `copd-ifm pretrain` or "
                        f"`copd-ifm vision pretrain`")
    doc = cfg_io.read_yaml(path)
    if "pretrain" in doc and "cohort" in doc:
        return "ct"
    if "method" in doc:
        return "vision"
    raise UserError(f"{path}: neither a CT nor a vision run config; give a folder written by a pretrain command")


def check_kind(run_dir: str | Path, kind: str, commands: Mapping[str, str]) -> None:
    """Refuse a run folder of another kind than ``kind`` in one line naming ``commands[its kind]``, the command
    that does the same for it."""
    found = run_kind(run_dir)
    if found != kind:
        raise UserError(f"--run {run_dir}: a {found} run (written by `{PRETRAIN_COMMANDS[found]}`), not a {kind} "
                        f"run; use `{commands[found]} --run {run_dir}`")


def summary_fields(config: Any, epsilon: float, epochs: int, epochs_done: int, world_size: int,
                   device: Any) -> dict[str, Any]:
    """The fields every pretraining ``summary.json`` holds, CT and vision alike (each adds its own)."""
    return {"epochs": epochs, "epochs_done": epochs_done, EPSILON_KEY: epsilon, "config_hash": cfg_io.config_hash(config),
            "world_size": world_size, "device": str(device)}


def recorded_epsilon(record: Mapping[str, Any]) -> float | None:
    """ε of a summary, feature-metadata or result record: ``loss.epsilon``, else an older run folder's key."""
    for key in (EPSILON_KEY, *OLD_EPSILON_KEYS):
        if record.get(key) is not None:
            return float(record[key])
    return None
