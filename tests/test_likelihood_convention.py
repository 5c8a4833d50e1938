"""The emulator's likelihood uses DR3's covariance convention on both paths, checked against GaiaXPy.

DR3's published coefficient errors already include the band's standard deviation. GaiaXPy builds a
unit-weight covariance (errors / sd) and multiplies every error it propagates from it by sd, so the
covariance its sampled spectra and synthetic photometry carry is diag(err) C diag(err). A real DR3
spectrum (tests/data/xp/XP_CONTINUOUS_RAW.ecsv, with correlations and a standard deviation that
differs from 1) gives GaiaXPy's matrix; xpmet's full-covariance path must reproduce sd^2 times it,
and its diagonal path must use that covariance's diagonal.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from astropy.table import Table

from xpmet.ml.models import covariance, gaussian_terms

DATA = Path(__file__).parent / "data" / "xp"


@pytest.fixture(scope="module")
def spectrum():
    from gaiaxpy.spectrum.utils import _correlation_to_covariance_dr3int5 as gaiaxpy_unit_weight
    from xpmet.xp_coefficients import correlation_matrix
    t = Table.read(DATA / "XP_CONTINUOUS_RAW.ecsv")
    row = next(r for r in t if np.isfinite(np.asarray(r["bp_coefficient_errors"], float)).all()
               and abs(float(r["bp_standard_deviation"]) - 1) > 0.05)
    out = {}
    for b in ("bp", "rp"):
        e = np.asarray(row[f"{b}_coefficient_errors"], float)
        corr = np.asarray(row[f"{b}_coefficient_correlations"], float)
        sd = float(row[f"{b}_standard_deviation"])
        # what GaiaXPy propagates: its unit-weight matrix, errors scaled back by sd (SampledSpectrum._sample_error)
        out[b] = dict(e=e, corr=corr, sd=sd, gaiaxpy=sd ** 2 * gaiaxpy_unit_weight(correlation_matrix(corr), e, sd))
    return out


def _t(*arrays):
    return torch.as_tensor(np.concatenate(arrays)[None, :], dtype=torch.float64)


def test_full_covariance_is_what_gaiaxpy_propagates(spectrum):
    bp, rp = spectrum["bp"], spectrum["rp"]
    cov = covariance(_t(bp["e"], rp["e"]), torch.as_tensor(np.stack([bp["corr"], rp["corr"]])[None])).numpy()[0]
    for i, b in enumerate((bp, rp)):
        ref = b["gaiaxpy"]
        # xpmet adds a 1e-6 relative ridge to keep Cholesky alive
        np.testing.assert_allclose(cov[i] - np.diag(1e-6 * np.diag(ref)), ref, rtol=1e-9, atol=1e-12 * ref.max())
        # and the unit-weight matrix (errors / sd) would be a different one (so the test can fail)
        assert abs(b["sd"] - 1) > 0.05 and not np.allclose(cov[i], ref / b["sd"] ** 2, rtol=1e-3)


def test_diagonal_path_uses_the_covariances_diagonal(spectrum):
    bp, rp = spectrum["bp"], spectrum["rp"]
    e = _t(bp["e"], rp["e"])
    np.testing.assert_allclose(e.numpy()[0] ** 2, np.concatenate([np.diag(bp["gaiaxpy"]), np.diag(rp["gaiaxpy"])]),
                               rtol=1e-12)
    # with zero correlations, the diagonal and the full path give the same chi2
    rng = np.random.default_rng(1)
    r = torch.as_tensor(rng.normal(size=(1, 110)) * e.numpy())
    ok = torch.ones_like(r, dtype=torch.bool)
    c2_diag, _ = gaussian_terms(r, e, ok)
    c2_full, _ = gaussian_terms(r, e, ok, corr=torch.zeros(1, 2, 1485, dtype=torch.float64))
    np.testing.assert_allclose(c2_diag.numpy(), c2_full.numpy(), rtol=1e-5)
