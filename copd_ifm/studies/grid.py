"""A study's runs: every point of its sweeps × seeds, plus untrained-encoder controls, each with a stable id."""
from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

#: Short names of swept config fields in run ids (other fields: dots become dashes).
SHORT = {"loss.temperature": "tau", "loss.hcl_beta": "beta", "loss.tau_plus": "tauplus", "loss.epsilon": "eps",
         "loss.alpha": "alpha"}
CONTROL_PREFIX = "untrained"


@dataclass(frozen=True)
class RunPlan:
    """One run: ``values`` are (dotted config field, value) pairs of its sweep point, ``seed`` last.

    A ``control`` is an untrained encoder: no pretraining, read out only.
    """

    run_id: str
    values: tuple[tuple[str, Any], ...]
    control: bool = False

    def get(self, key: str, default: Any = None) -> Any:
        return dict(self.values).get(key, default)

    @property
    def seed(self) -> int:
        return int(self.get("seed", 0))


def fmt(value: Any) -> str:
    """``0.1`` → ``"0.1"``, ``1.0`` → ``"1"``; other values as ``str``."""
    return f"{value:g}" if isinstance(value, float) else str(value)


def run_id(values: Sequence[tuple[str, Any]]) -> str:
    """``(("loss.temperature", 0.2), ("seed", 0))`` → ``"tau0.2_seed0"``."""
    return "_".join(f"{SHORT.get(k, k.replace('.', '-'))}{fmt(v)}" for k, v in values)


def sweep_runs(sweeps: Sequence[Mapping[str, Sequence[Any]]], seeds: int,
               order: Sequence[str] | None = None) -> list[RunPlan]:
    """Every run of the union of the sweeps' Cartesian products × seeds 0..seeds−1, each once, in sweep order.

    ``order``: the fields' order in run ids (fields it does not name follow, sorted); default sorted.
    """
    rank = {k: i for i, k in enumerate(order or ())}
    plans: dict[str, RunPlan] = {}
    for sweep in sweeps:
        keys = sorted(sweep, key=lambda k: (rank.get(k, len(rank)), k))
        for combo in itertools.product(*(sweep[k] for k in keys)):
            for seed in range(seeds):
                values = tuple(zip(keys, combo)) + (("seed", seed),)
                plans.setdefault(run_id(values), RunPlan(run_id(values), values))
    return list(plans.values())


def controls(n: int) -> list[RunPlan]:
    """Untrained encoders of seeds 0..n−1 (each seed's trained runs start from its initial weights)."""
    return [RunPlan(f"{CONTROL_PREFIX}_seed{seed}", (("seed", seed),), control=True) for seed in range(n)]


def seed_major(plans: Sequence[RunPlan]) -> list[RunPlan]:
    """``plans`` ordered seed by seed, controls first (so a partly run study holds whole seeds)."""
    return sorted(plans, key=lambda p: (p.seed, not p.control))
