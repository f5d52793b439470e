"""Hidden subject latents of the synthetic cohort and the physiology derived from them.

A subject is described by a few latents (:class:`SubjectLatents`): how much
lung is destroyed by emphysema and how that splits into centrilobular (CLE)
and para-septal (PSE) types, an airway-disease factor (airway wall thickness),
a scanner/site, and a body size. The images are rendered from the latents
(``copd_ifm.cohort.phantom``); the outcomes are computed from the amounts
*measured in the rendered images* plus modest noise, so they are driven by what
is visible. The site carries no outcome information by construction.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from copd_ifm.cohort.config import COPDGENE_OUTCOME_COLUMNS

#: Scanner/site table: (white-noise standard deviation in HU, reconstruction-kernel
#: Gaussian sigma in mm). Low-noise smooth kernels to noisy sharp ones.
SITES: tuple[tuple[float, float], ...] = ((14.0, 1.6), (19.0, 1.3), (24.0, 1.0), (30.0, 0.8))
#: Default nuisance strength: the site table as it stands.
DEFAULT_NUISANCE = 1.0

#: Quantile function of the emphysema burden (fraction of lung volume): a quarter of
#: smokers with none, a long tail to advanced destruction (DESIGN.md §6: mean %LAA-950
#: by GOLD 0..4 ≈ 1, 4.5, 19, 33, 41 %).
_BURDEN_U = np.array([0.0, 0.25, 0.40, 0.55, 0.70, 0.85, 1.0])
_BURDEN_E = np.array([0.0, 0.0, 0.015, 0.05, 0.12, 0.25, 0.45])

#: CLE visual score (none, trace, mild, moderate, confluent, advanced destructive) from the
#: CLE volume fraction of the lung: upper bounds of levels 0..4.
CLE_SCORE_BOUNDS = (0.002, 0.02, 0.06, 0.14, 0.26)
#: Para-septal score (none, mild, substantial) from the bullae volume fraction: bounds of 0, 1.
PSE_SCORE_BOUNDS = (0.0005, 0.02)
#: The outcome columns written to a synthetic manifest (COPDGene's names, DESIGN.md §4).
OUTCOME_COLUMNS = list(COPDGENE_OUTCOME_COLUMNS.values())
#: mMRC 0..4 cut points on the dyspnoea latent.
_MMRC_CUTS = (0.35, 0.75, 1.15, 1.6)


@dataclass(frozen=True)
class SubjectLatents:
    """Ground truth of one synthetic subject.

    ``emphysema`` is the fraction of lung volume to destroy (0..0.45), ``cle_share`` the
    part of it that is centrilobular (the rest is para-septal bullae), ``airway`` the
    airway-disease factor in [0, 1] (wall thickness), ``site`` an index into
    :data:`SITES`, ``body_size`` a z-score scaling lungs and the subcutaneous fat,
    ``nuisance`` the cohort's nuisance strength (see :func:`site_scanner`).
    """

    emphysema: float
    cle_share: float
    airway: float
    site: int
    body_size: float
    nuisance: float = DEFAULT_NUISANCE

    @property
    def cle_target(self) -> float:
        """Centrilobular emphysema to render, as a fraction of lung volume."""
        return self.emphysema * self.cle_share

    @property
    def pse_target(self) -> float:
        """Para-septal bullae to render, as a fraction of lung volume."""
        return self.emphysema * (1.0 - self.cle_share)

    @property
    def noise_sd_hu(self) -> float:
        return site_scanner(self.site, self.nuisance)[0]

    @property
    def kernel_sigma_mm(self) -> float:
        return site_scanner(self.site, self.nuisance)[1]


def site_scanner(site: int, nuisance: float = DEFAULT_NUISANCE) -> tuple[float, float]:
    """(noise sd in HU, kernel sigma in mm) of ``site`` at nuisance strength ``nuisance``.

    The spread of the sites around their mean is scaled by ``nuisance``: 0 makes
    every site the same scanner (no shortcut), 1 is :data:`SITES` exactly, 2 doubles
    the differences. Written as ``x + (s − 1)(x − mean)`` so that s = 1 returns the
    table's values bit for bit (existing cohorts stay byte-identical).
    """
    table = np.asarray(SITES)
    mean = table.mean(0)
    noise, kernel = (float(x + (nuisance - 1.0) * (x - m)) for x, m in zip(table[site], mean))
    return noise, kernel


def check_nuisance(nuisance: float) -> None:
    """Raise ValueError unless every site keeps a positive noise sd and kernel width at ``nuisance``."""
    if nuisance < 0:
        raise ValueError(f"nuisance must be >= 0, got {nuisance}")
    worst = min(min(site_scanner(i, nuisance)) for i in range(len(SITES)))
    if worst <= 0:
        raise ValueError(f"nuisance {nuisance} gives a site a non-positive noise sd or kernel width "
                         f"({worst:.3g}); use a smaller nuisance")


def sample_latents(rng: np.random.Generator, nuisance: float = DEFAULT_NUISANCE) -> SubjectLatents:
    """Draw one subject's latents (independent across subjects; site independent of all else).

    ``nuisance`` scales the scanner differences between sites (:func:`site_scanner`); it
    draws no random numbers, so the same seed gives the same latents at every strength.
    """
    emphysema = float(np.interp(rng.random(), _BURDEN_U, _BURDEN_E))
    # About half of the subjects with emphysema also have some para-septal bullae.
    cle_share = 1.0 if rng.random() < 0.5 else float(rng.uniform(0.8, 0.98))
    airway = float(rng.random())
    site = int(rng.integers(len(SITES)))
    body_size = float(np.clip(rng.standard_normal(), -2.5, 2.5))
    return SubjectLatents(emphysema, cle_share, airway, site, body_size, nuisance)


def gold_stage(fev1pp: float, fev1_fvc: float) -> int:
    """GOLD stage from spirometry: 0–4, or −1 for PRISm (ratio ≥ 0.70 with FEV1pp < 80)."""
    if fev1_fvc >= 0.70:
        return 0 if fev1pp >= 80 else -1
    if fev1pp >= 80:
        return 1
    if fev1pp >= 50:
        return 2
    return 3 if fev1pp >= 30 else 4


def cle_score(cle_fraction: float) -> int:
    """Centrilobular visual score 0..5 from the CLE volume fraction of the lung."""
    return int(np.searchsorted(CLE_SCORE_BOUNDS, cle_fraction, side="right"))


def paraseptal_score(pse_fraction: float) -> int:
    """Para-septal visual score 0..2 from the bullae volume fraction of the lung."""
    return int(np.searchsorted(PSE_SCORE_BOUNDS, pse_fraction, side="right"))


def spirometry(cle_fraction: float, pse_fraction: float, airway: float,
               rng: np.random.Generator) -> tuple[float, float]:
    """(FEV1 % predicted, FEV1/FVC), rounded to 2 and 4 decimals, from the rendered emphysema
    amounts (fractions of lung volume) and the airway factor.

    Log-linear in the emphysema burden (para-septal counts half: it spares the
    airways) and in the airway factor, with modest non-imaging noise.
    """
    burden = cle_fraction + 0.5 * pse_fraction
    log_fev1pp = np.log(110.0) - 2.9 * burden - 0.4 * airway + 0.07 * rng.standard_normal()
    fev1pp = float(np.clip(np.exp(log_fev1pp), 12.0, 130.0))
    ratio = 0.80 - 1.3 * burden - 0.1 * airway + 0.025 * rng.standard_normal()
    return round(fev1pp, 2), round(float(np.clip(ratio, 0.22, 0.92)), 4)


def mmrc(fev1pp: float, rng: np.random.Generator) -> int:
    """mMRC dyspnoea 0..4: rises with airflow limitation (−log FEV1pp/100) plus noise."""
    latent = 1.6 * max(0.0, -np.log(fev1pp / 100.0)) + 0.35 * rng.standard_normal()
    return int(np.searchsorted(_MMRC_CUTS, latent, side="right"))


def outcomes(cle_fraction: float, pse_fraction: float, airway: float,
             rng: np.random.Generator) -> dict[str, float | int]:
    """Outcomes under COPDGene's column names (:data:`OUTCOME_COLUMNS`) from measured amounts."""
    fev1pp, ratio = spirometry(cle_fraction, pse_fraction, airway, rng)
    values = {"FEV1pp": fev1pp, "FEV1FVC": ratio, "GOLD": gold_stage(fev1pp, ratio),
              "CLE": cle_score(cle_fraction), "Paraseptal": paraseptal_score(pse_fraction),
              "mMRC": mmrc(fev1pp, rng)}
    return {COPDGENE_OUTCOME_COLUMNS[name]: value for name, value in values.items()}
