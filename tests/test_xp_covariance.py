"""Covariance reconstruction agrees with GaiaXPy's own on real Gaia DR3 spectra (tests/data/xp).

xpmet's side reads the ECSV with astropy; GaiaXPy reads the CSV of the same sources with its own
reader and unpacks the correlations itself, so an ordering or scaling slip on either side shows.
"""
import warnings
from pathlib import Path

import numpy as np
import pytest
from astropy.table import Table
from gaiaxpy.cholesky.cholesky import get_inverse_covariance_matrix
from gaiaxpy.core.generic_functions import correlation_to_covariance

from xpmet.xp_coefficients import correlation_matrix, correlations_from_matrix, covariance_matrix

XP = Path(__file__).parent / "data" / "xp"


@pytest.fixture(scope="module")
def real():
    t = Table.read(XP / "XP_CONTINUOUS_RAW.ecsv")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        inv = get_inverse_covariance_matrix(str(XP / "XP_CONTINUOUS_RAW.csv"))
    return t, inv


def _band(t, i, b):
    return (np.asarray(t[f"{b}_coefficient_errors"][i], np.float64),
            np.asarray(t[f"{b}_coefficient_correlations"][i], np.float64),
            float(t[f"{b}_standard_deviation"][i]))


def test_matches_gaiaxpy_on_real_spectra(real):
    t, inv = real
    assert len(t) == len(inv) == 2
    for i, sid in enumerate(t["source_id"]):
        for b in ("bp", "rp"):
            err, corr, sd = _band(t, i, b)
            assert corr.shape == (1485,) and sd != 1.0          # the standard deviation's place matters
            ours = covariance_matrix(err, corr)
            # GaiaXPy's matrices are unit-weight (errors / sd); every error it propagates from them is
            # multiplied back by sd, so the coefficients' covariance is sd^2 times theirs
            np.testing.assert_allclose(ours, sd ** 2 * correlation_to_covariance(corr, err, sd), rtol=1e-12)
            # GaiaXPy's inverse covariance, built from its own reading of the file
            theirs_inv = inv.loc[inv["source_id"] == sid, f"{b}_inverse_covariance"].iloc[0]
            np.testing.assert_allclose(ours @ theirs_inv / sd ** 2, np.eye(55), atol=1e-4)
            assert np.linalg.eigvalsh(ours).min() > 0
            # the matrix is symmetric with unit diagonal, and packing it again gives the file's values
            c = correlation_matrix(corr)
            assert np.allclose(c, c.T) and np.allclose(np.diag(c), 1.0)
            np.testing.assert_array_equal(correlations_from_matrix(c), corr)


def test_batches_and_missing_band(real):
    t, _ = real
    err, corr, _ = zip(*(_band(t, i, "bp") for i in range(len(t))))
    batch = covariance_matrix(np.stack(err), np.stack(corr))
    assert batch.shape == (2, 55, 55)
    for i in range(2):
        np.testing.assert_allclose(batch[i], covariance_matrix(err[i], corr[i]), rtol=1e-15)
    missing = covariance_matrix(np.full(55, np.nan), np.full(1485, np.nan))
    assert np.isnan(missing).all()
