"""Evaluation speed: the ordinal read-out's fit time and a whole ``evaluate`` at COPDGene size.

Prints (1) seconds per ordinal-logit fit with statsmodels' numerical gradient
(``OrderedModel``) vs the analytic one (``OrderedLogit``) on the same data, and
the ratio; (2) seconds for ``evaluate`` on a hand-made cohort of ``--n``
subjects with a 128-d graph set, a 128-d patch set and densitometry, all five
outcomes, 5 folds (plots and report included).

    python benchmarks/evaluation.py [--n 9000] [--small-n 7200] [--small-d 128]
"""
from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from statsmodels.miscmodels.ordinal_model import OrderedModel

from copd_ifm.cohort.config import CohortConfig
from copd_ifm.evaluation.cv import OrderedLogit
from copd_ifm.evaluation.evaluate import evaluate
from copd_ifm.evaluation.features import write_features


def fit_seconds(model_cls, y: np.ndarray, x: np.ndarray) -> tuple[float, np.ndarray]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        start = time.perf_counter()
        model = model_cls(y, x, distr="logit") if model_cls is OrderedModel else model_cls(y, x)
        fit = model.fit(method="bfgs", maxiter=2000, disp=False, skip_hessian=True)
        return time.perf_counter() - start, np.asarray(fit.params)


def cohort_tables(n: int, out: Path, rng: np.random.Generator) -> tuple[CohortConfig, list[str], pd.DataFrame]:
    sids = [f"S{i:05d}" for i in range(n)]
    severity = rng.uniform(0, 1, n)
    manifest = pd.DataFrame({
        "sid": sids, "image": "x.nii.gz",
        "FEV1pp_utah": 100 * np.exp(-severity + rng.normal(0, 0.2, n)),
        "FEV1_FVC_utah": 0.8 * np.exp(-0.5 * severity + rng.normal(0, 0.1, n)),
        "finalGold": 0,
        "Emph_Severity": np.clip(np.round(5 * severity + rng.normal(0, 1, n)), 0, 5),
        "Emph_Paraseptal": np.clip(np.round(2 * severity + rng.normal(0, 0.7, n)), 0, 2),
        "MMRCDyspneaScor": np.clip(np.round(4 * severity + rng.normal(0, 1.2, n)), 0, 4),
    })
    manifest.to_csv(out / "manifest.csv", index=False)
    mix = rng.normal(size=(2, 128))
    graph = severity[:, None] * mix[0] + rng.normal(size=(n, 128))
    patch = severity[:, None] * mix[1] + rng.normal(size=(n, 128))
    write_features(out / "run" / "features.parquet",
                   pd.DataFrame({"sid": sids, **{f"graph_f{i}": graph[:, i] for i in range(128)},
                                 **{f"patch_f{i}": patch[:, i] for i in range(128)}}),
                   {"run": "bench", "config_hash": "none"})
    densitometry = pd.DataFrame({"sid": sids, "laa950_pct": 20 * severity + rng.normal(0, 4, n),
                                 "perc15_hu": -910 - 40 * severity + rng.normal(0, 10, n),
                                 "lung_volume_l": rng.normal(5.5, 1, n)})
    cohort = CohortConfig(name="bench", manifest=str(out / "manifest.csv"))
    return cohort, [str(out / "run")], densitometry


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=9000, help="subjects in the whole-evaluate timing")
    parser.add_argument("--small-n", type=int, default=7200,
                        help="subjects in the fit comparison (a COPDGene training fold)")
    parser.add_argument("--small-d", type=int, default=128, help="features in the fit comparison")
    args = parser.parse_args()
    rng = np.random.default_rng(0)

    latent = rng.normal(size=args.small_n)
    x = np.c_[latent + rng.normal(size=args.small_n), rng.normal(size=(args.small_n, args.small_d - 1))]
    y = np.clip(np.round(2 + latent + rng.normal(size=args.small_n)), 0, 5)
    numeric, p_numeric = fit_seconds(OrderedModel, y, x)
    analytic, p_analytic = fit_seconds(OrderedLogit, y, x)
    print(f"ordinal fit n={args.small_n} d={args.small_d}: numerical gradient {numeric:.2f} s, "
          f"analytic {analytic:.3f} s, ratio {numeric / analytic:.0f}x, "
          f"max |param difference| {np.abs(p_numeric - p_analytic).max():.1e}")

    with tempfile.TemporaryDirectory() as tmp:
        cohort, sources, densitometry = cohort_tables(args.n, Path(tmp), rng)
        start = time.perf_counter()
        evaluate(cohort, sources, ["logFEV1pp", "logFEV1FVC", "CLE", "Paraseptal", "mMRC"], folds=5,
                 out=Path(tmp) / "report", densitometry=densitometry)
        print(f"evaluate n={args.n}, 3 methods (128 + 128 + 3 features), 5 outcomes, 5 folds: "
              f"{time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
