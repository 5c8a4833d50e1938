"""The emulator's likelihood uses DR3's covariance convention on both paths, checked against GaiaXPy.

A real DR3 spectrum (tests/data/xp/XP_CONTINUOUS_RAW.ecsv, with correlations and a standard
deviation that differs from 1) gives GaiaXPy's covariance; xpmet's full-covariance path must
reproduce it, and its diagonal path must use that covariance's diagonal.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from astropy.table import Table

from xpmet.ml.models import covariance, dr3_errors, gaussian_terms

DATA = Path(__file__).parent / "data" / "xp"


@pytest.fixture(scope="module")
def spectrum():
    from gaiaxpy.spectrum.utils import _correlation_to_covariance_dr3int5 as gaiaxpy_covariance
    from xpmet.xp_coefficients import correlation_matrix
    t = Table.read(DATA / "XP_CONTINUOUS_RAW.ecsv")
    row = next(r for r in t if np.isfinite(np.asarray(r["bp_coefficient_errors"], float)).all()
               and abs(float(r["bp_standard_deviation"]) - 1) > 0.05)
    out = {}
    for b in ("bp", "rp"):
        e = np.asarray(row[f"{b}_coefficient_errors"], float)
        corr = np.asarray(row[f"{b}_coefficient_correlations"], float)
        sd = float(row[f"{b}_standard_deviation"])
        out[b] = dict(e=e, corr=corr, sd=sd, gaiaxpy=gaiaxpy_covariance(correlation_matrix(corr), e, sd))
    return out


def _t(*arrays):
    return torch.as_tensor(np.concatenate(arrays)[None, :], dtype=torch.float64)


def test_full_covariance_is_gaiaxpys(spectrum):
    bp, rp = spectrum["bp"], spectrum["rp"]
    cov = covariance(_t(bp["e"], rp["e"]), torch.as_tensor(np.stack([bp["corr"], rp["corr"]])[None]),
                     torch.tensor([[bp["sd"], rp["sd"]]], dtype=torch.float64)).numpy()[0]
    for i, b in enumerate((bp, rp)):
        ref = b["gaiaxpy"]
        # xpmet adds a 1e-6 relative ridge to keep Cholesky alive
        np.testing.assert_allclose(cov[i] - np.diag(1e-6 * np.diag(ref)), ref, rtol=1e-9, atol=1e-12 * ref.max())


def test_diagonal_path_uses_the_covariances_diagonal(spectrum):
    bp, rp = spectrum["bp"], spectrum["rp"]
    e, sd = _t(bp["e"], rp["e"]), torch.tensor([[bp["sd"], rp["sd"]]], dtype=torch.float64)
    np.testing.assert_allclose(dr3_errors(e, sd).numpy()[0] ** 2,
                               np.concatenate([np.diag(bp["gaiaxpy"]), np.diag(rp["gaiaxpy"])]), rtol=1e-12)
    # with zero correlations, the diagonal and the full path give the same chi2
    rng = np.random.default_rng(1)
    r = torch.as_tensor(rng.normal(size=(1, 110)) * e.numpy())
    ok = torch.ones_like(r, dtype=torch.bool)
    c2_diag, _ = gaussian_terms(r, e, ok, std_dev=sd)
    c2_full, _ = gaussian_terms(r, e, ok, corr=torch.zeros(1, 2, 1485, dtype=torch.float64), std_dev=sd)
    np.testing.assert_allclose(c2_diag.numpy(), c2_full.numpy(), rtol=1e-5)
    # and both differ from ignoring the standard deviation (so the test can fail)
    c2_raw, _ = gaussian_terms(r, e, ok)
    assert abs(float(c2_raw / c2_diag) - 1) > 0.05
