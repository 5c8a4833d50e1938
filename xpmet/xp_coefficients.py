"""Gaia XP continuous-spectrum conventions: sizes, correlation order, covariance reconstruction.

Gaia ships each band's 55x55 correlation matrix as its 1485 off-diagonal values: the lower
triangle, row by row (numpy's ``tril_indices(55, k=-1)`` order; GaiaXPy uses the same). The
published coefficient errors already carry the solution's standard deviation (``err = sd x`` the
formal error), so the covariance of the coefficients is ``diag(err) @ C @ diag(err)``. GaiaXPy
computes the same thing in two steps: its ``correlation_to_covariance`` gives the unit-weight
matrix ``diag(err/sd) C diag(err/sd)``, and every error it propagates from it (sampled spectra,
synthetic photometry) is multiplied back by ``sd``.
"""
from __future__ import annotations

import numpy as np

N_COEF = 55
N_CORR = N_COEF * (N_COEF - 1) // 2
_TRIL = np.tril_indices(N_COEF, k=-1)


def correlation_matrix(correlations: np.ndarray) -> np.ndarray:
    """Full correlation matrices from Gaia's off-diagonal arrays: (..., 1485) -> (..., 55, 55)."""
    correlations = np.asarray(correlations, dtype=np.float64)
    if correlations.shape[-1] != N_CORR:
        raise ValueError(f"expected {N_CORR} correlation values per band, got {correlations.shape[-1]}")
    c = np.zeros(correlations.shape[:-1] + (N_COEF, N_COEF))
    c[..., _TRIL[0], _TRIL[1]] = correlations
    c = c + np.swapaxes(c, -1, -2)
    c[..., np.arange(N_COEF), np.arange(N_COEF)] = 1.0
    return c


def covariance_matrix(errors: np.ndarray, correlations: np.ndarray) -> np.ndarray:
    """Covariance of one band's coefficients, vectorised over leading axes.

    errors (..., 55), correlations (..., 1485) -> (..., 55, 55). A missing band (NaN errors) gives a
    NaN matrix.
    """
    err = np.asarray(errors, dtype=np.float64)
    return correlation_matrix(correlations) * err[..., :, None] * err[..., None, :]


def correlations_from_matrix(corr: np.ndarray) -> np.ndarray:
    """Inverse of :func:`correlation_matrix`: (..., 55, 55) -> (..., 1485) in Gaia's order."""
    return np.asarray(corr)[..., _TRIL[0], _TRIL[1]]
