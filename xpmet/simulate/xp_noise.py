"""XP measurement model: coefficient errors, correlations and noise, fitted on real DR3 spectra.

Reads ``data/xp_noise_model.npz`` (built by :mod:`xpmet.simulate.noise_fit`, provenance in data/).
Correlations: a fixed set of templates per band, each a convex combination of two real correlation
matrices (valid by construction). Templates are formatted to text once per run, so a star's
correlation column costs a lookup, not 1,485 float formats -- the choice that makes writing a million
XP stars with correlations feasible. The noise added to a star's coefficients is drawn from the
covariance its own row publishes, ``diag(err) C diag(err)`` (DR3: the published errors already
include the standard deviation; see :mod:`xpmet.xp_coefficients`), so the published uncertainties
are honest.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from xpmet.xp_coefficients import N_COEF, correlations_from_matrix

MODEL_PATH = Path(__file__).with_name("data") / "xp_noise_model.npz"


@functools.lru_cache(maxsize=1)
def noise_model() -> dict[str, np.ndarray]:
    with np.load(MODEL_PATH) as z:
        return {k: z[k] for k in z.files}


@dataclass
class Templates:
    """Per band: Cholesky factors of the correlation matrices (t, 55, 55) and their 1485-value arrays."""

    chol: dict[str, np.ndarray]
    flat: dict[str, np.ndarray]


def make_templates(rng: np.random.Generator, n_templates: int, uncorrelated: bool = False) -> Templates:
    """n_templates correlation matrices per band; ``uncorrelated`` gives one identity template per band
    (cheap, honest files for quick tests: coefficients are then drawn independently)."""
    m = noise_model()
    chol, flat = {}, {}
    for band in ("bp", "rp"):
        if uncorrelated:
            chol[band] = np.eye(N_COEF)[None]
            flat[band] = correlations_from_matrix(np.eye(N_COEF, dtype=np.float32)[None])
            continue
        basis = m[f"{band}_correlation_basis"].astype(np.float64)
        k = basis.shape[0]
        a = rng.integers(0, k, n_templates)
        b = (a + rng.integers(1, k, n_templates)) % k
        w = rng.uniform(0.0, 1.0, n_templates)[:, None, None]
        c = w * basis[a] + (1.0 - w) * basis[b]
        # Store as float32, as Gaia does, and factorise what was stored (plus a hair of jitter).
        c32 = c.astype(np.float32)
        chol[band] = np.linalg.cholesky(c32.astype(np.float64) + 1e-9 * np.eye(N_COEF))
        flat[band] = correlations_from_matrix(c32)
    return Templates(chol, flat)


def coefficient_errors(rng, g: np.ndarray, band: str) -> np.ndarray:
    """(n, 55) published coefficient errors (e-/s units of the coefficients) for stars of magnitude g."""
    m = noise_model()
    lo, hi = 8.0, 18.5
    x = np.clip(g, lo, hi) - float(m["g_pivot"])
    poly = m[f"{band}_log_err_poly"]  # (55, 3)
    log_err = poly[:, 0][None, :] + poly[:, 1][None, :] * x[:, None] + poly[:, 2][None, :] * (x * x)[:, None]
    # Outside the fitted range errors scale as photon noise: sqrt(flux) -> 0.2 dex per magnitude.
    log_err += (-0.2 * (np.minimum(g, lo) - lo) - 0.2 * (np.maximum(g, hi) - hi))[:, None]
    log_err += float(m[f"{band}_star_scatter"]) * rng.normal(size=(g.size, 1))
    log_err += m[f"{band}_coef_scatter"][None, :] * rng.normal(size=(g.size, N_COEF))
    return 10.0**log_err


def n_relevant_bases(rng, g: np.ndarray, band: str) -> np.ndarray:
    """Relevant-bases counts borrowed from real stars of similar G (nearest 40 in magnitude)."""
    ref = noise_model()[f"{band}_n_relevant_bases"]
    order = np.argsort(ref[:, 0])
    gs, ns = ref[order, 0], ref[order, 1]
    i = np.searchsorted(gs, g) + rng.integers(-20, 20, g.size)
    return ns[np.clip(i, 0, gs.size - 1)].astype(np.int16)


def observe(rng, true_coef: np.ndarray, g: np.ndarray, band: str, templates: Templates) -> dict[str, np.ndarray]:
    """Noisy coefficients plus every per-band column of xp_continuous_mean_spectrum."""
    n = g.size
    err = coefficient_errors(rng, g, band).astype(np.float32)
    t_idx = rng.integers(0, templates.chol[band].shape[0], n)
    n_meas = np.clip(rng.lognormal(np.log(3200.0), 0.35, n), 600, 12000).astype(np.int16)
    n_rej = np.minimum(rng.poisson(n_meas * 0.004), n_meas // 10).astype(np.int16)
    sd = (1.0 + np.abs(rng.normal(0.0, 0.12, n))).astype(np.float32)
    z = rng.normal(size=(n, N_COEF))
    corr_noise = np.einsum("nij,nj->ni", templates.chol[band][t_idx], z)
    coef = true_coef + corr_noise * err.astype(np.float64)
    dof = (n_meas - n_rej - N_COEF).astype(np.int16)
    chi2 = (dof * sd.astype(np.float64) ** 2 * rng.gamma(200.0, 1 / 200.0, n)).astype(np.float32)
    nrel = n_relevant_bases(rng, g, band)
    shrink = np.where(nrel < N_COEF, 1.0 - rng.uniform(1e-7, 1e-4, n), 1.0).astype(np.float32)
    return {
        "coefficients": coef, "coefficient_errors": err, "template": t_idx,
        "n_measurements": n_meas, "n_rejected_measurements": n_rej, "standard_deviation": sd,
        "chi_squared": chi2, "degrees_of_freedom": dof, "n_relevant_bases": nrel,
        "relative_shrinking": shrink,
    }
