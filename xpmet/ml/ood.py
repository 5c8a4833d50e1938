"""Is a spectrum like the training set? A noise-aware PCA model of the training spectra.

Fitted on the TRAINING split's flux-normalised coefficients (standardised with the model's own
scaler) and saved in the model directory as ``ood.npz`` (plain arrays, read without pickle).
Two statistics per star, each compared with a cut far out in the tail of the training stars'
values (``TAIL`` below):

- ``residual``: the part of the spectrum the first K principal components cannot describe,
  ``sum_j r_j^2 / (s_j^2 + (1 - h_j) e_j^2) / (n_valid - K)`` with e_j the star's standardised
  coefficient errors, h_j the leverage of the subspace on coefficient j and s_j^2 the residual
  scatter the training stars themselves show beyond their noise. Emission lines, power laws and
  white-dwarf Balmer profiles live off the stellar subspace, and dividing by the noise keeps a
  faint genuine star (noisier than most training spectra) from looking unusual.
- ``mahalanobis``: ``sum_k p_k^2 / (lambda_k + n_k) / K``, the distance within the subspace,
  lambda_k the training stars' intrinsic variance along component k and n_k the star's own noise
  there: catches spectra with the right shape but far outside the training range (much hotter).

A very metal-poor star differs from the bulk along directions the training stars span (metallicity
is one of the components), so neither statistic singles it out for being rare; the benchmark
(benchmarks/bench_train.py) measures how often such stars are flagged next to all stars.
Stars missing a band are not scored (``missing_band`` rejects them already).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

#: threshold of each statistic, in log: the training median plus TAIL x the distance from the
#: median to the training 99th percentile (TAIL = 2: a star must be as far beyond the 99th percentile
#: as the 99th percentile is beyond the median). Not an extreme empirical quantile: a 0.999 quantile
#: is set by the training set's one or two oddest spectra (perhaps contaminants) and jumps from one
#: training set to the next, while the 99th percentile is stable. On the simulated sky quasars and
#: white dwarfs score 20-1000x the training median, genuine stars rarely above 10x.
TAIL = 2.0
#: principal components K. The share of variance is no guide (noise spreads over all 110), and on
#: the simulated sky any K from 6 to 20 flags the same quasars, white dwarfs and stars.
N_COMPONENTS = 12
FILENAME = "ood.npz"


@dataclass
class OODModel:
    mean: np.ndarray        # (110,) standardisation of the flux-normalised coefficients
    scale: np.ndarray       # (110,)
    components: np.ndarray  # (K, 110) orthonormal rows
    lam: np.ndarray         # (K,) intrinsic training variance per component
    s2: np.ndarray          # (110,) intrinsic residual variance per coefficient
    threshold: np.ndarray   # (2,) residual, mahalanobis thresholds
    tail: float = TAIL

    # -- scoring --------------------------------------------------------------------------
    def scores(self, x, e) -> tuple[np.ndarray, np.ndarray]:
        """(residual, mahalanobis) of flux-normalised coefficients x and errors e, (n,110) each.

        NaN where a band is missing (not scored)."""
        z = (np.asarray(x, np.float64) - self.mean) / self.scale
        ez2 = (np.asarray(e, np.float64) / self.scale) ** 2
        ok = np.isfinite(z).all(1) & np.isfinite(ez2).all(1)
        z, ez2 = np.where(ok[:, None], z, 0.0), np.where(ok[:, None], ez2, 0.0)
        v = self.components
        p = z @ v.T
        r = z - p @ v
        h = (v ** 2).sum(0)
        k = v.shape[0]
        res = (r ** 2 / (self.s2 + (1.0 - h) * ez2 + 1e-12)).sum(1) / (z.shape[1] - k)
        noise_k = ez2 @ (v ** 2).T
        maha = (p ** 2 / (self.lam + noise_k)).sum(1) / k
        return np.where(ok, res, np.nan), np.where(ok, maha, np.nan)

    def score(self, x, e) -> np.ndarray:
        """One number per star: the larger of the two statistics over its threshold (> 1: unlike training)."""
        res, maha = self.scores(x, e)
        return np.fmax(res / self.threshold[0], maha / self.threshold[1])

    def flag(self, x, e) -> np.ndarray:
        s = self.score(x, e)
        return np.isfinite(s) & (s > 1.0)

    # -- persistence ----------------------------------------------------------------------
    def save(self, path):
        np.savez(path, mean=self.mean, scale=self.scale, components=self.components, lam=self.lam,
                 s2=self.s2, threshold=self.threshold, tail=np.float64(self.tail))

    @classmethod
    def load(cls, path) -> "OODModel":
        with np.load(path, allow_pickle=False) as z:
            return cls(z["mean"], z["scale"], z["components"], z["lam"], z["s2"], z["threshold"],
                       float(z["tail"]))


def fit(x, e, mean, scale, tail: float = TAIL, n_components: int = N_COMPONENTS,
        max_stars: int = 200_000, seed: int = 0) -> OODModel:
    """Fit on training-split arrays x, e (n,110) with the model's standardisation (mean, scale)."""
    x, e = np.asarray(x, np.float64), np.asarray(e, np.float64)
    ok = np.isfinite(x).all(1) & np.isfinite(e).all(1)
    idx = np.flatnonzero(ok)
    if idx.size > max_stars:  # the subspace is settled long before; keeps memory flat on big sets
        idx = np.sort(np.random.default_rng(seed).choice(idx, max_stars, replace=False))
    if idx.size < 20:
        raise ValueError(f"only {idx.size} training spectra with both bands: too few to model the training set")
    mean, scale = np.asarray(mean, np.float64), np.asarray(scale, np.float64)
    z = (x[idx] - mean) / scale
    ez2 = (e[idx] / scale) ** 2
    centre = np.median(z, 0)  # robust: a few odd training spectra do not move the subspace's origin
    mean = mean + centre * scale
    z = z - centre
    _, _, vt = np.linalg.svd(z, full_matrices=False)
    k = min(n_components, z.shape[1] - 1, z.shape[0] - 1)
    v = vt[:k]
    p = z @ v.T
    r = z - p @ v
    h = (v ** 2).sum(0)
    # what the training stars scatter beyond their own noise, robustly (outliers do not widen it)
    mad2 = (1.4826 * np.median(np.abs(r - np.median(r, 0)), 0)) ** 2
    s2 = np.maximum(mad2 - np.median((1.0 - h) * ez2, 0), 0.05 * mad2)
    noise_k = ez2 @ (v ** 2).T
    lam = np.maximum(p.var(0) - noise_k.mean(0), 0.05 * p.var(0))
    m = OODModel(mean, scale, v, lam, s2, np.ones(2), tail)
    m.threshold = np.array([_log_cut(s, tail) for s in m.scores(x[idx], e[idx])])
    return m


def _log_cut(s, tail) -> float:
    """exp(median + tail * (99th percentile - median)) of log(s)."""
    s = np.asarray(s, np.float64)
    med, q99 = np.percentile(np.log(s[s > 0]), [50, 99])
    return float(np.exp(med + tail * (q99 - med)))


def load(model_dir) -> OODModel | None:
    """The model directory's OOD model, or None for directories written before it existed."""
    path = Path(model_dir) / FILENAME
    return OODModel.load(path) if path.exists() else None


# -- photometric and astrometric checks (gaia_source columns) ------------------------------------
def excess_factor_expected(bp_rp) -> np.ndarray:
    """The BP/RP excess factor of a well-behaved isolated source at colour BP-RP (Riello et al. 2021, eq. 6)."""
    x = np.asarray(bp_rp, np.float64)
    return np.where(x < 0.5, 1.154360 + 0.033772 * x + 0.032277 * x ** 2,
                    np.where(x < 4.0, 1.162004 + 0.011464 * x + 0.049255 * x ** 2 - 0.005879 * x ** 3,
                             1.057572 + 0.140537 * x))


def excess_factor_sigma(g) -> np.ndarray:
    """1-sigma scatter of the corrected excess factor C* at magnitude G (Riello et al. 2021, eq. 18)."""
    return 0.0059898 + 8.817481e-12 * np.asarray(g, np.float64) ** 7.618399


def corrected_excess_factor(excess, bp_rp) -> np.ndarray:
    """C* = C - f(BP-RP): ~0 for clean photometry, positive for blends and bad backgrounds."""
    return np.asarray(excess, np.float64) - excess_factor_expected(bp_rp)
