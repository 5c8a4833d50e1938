"""Unit tests of xpmet.ml on real XP spectra (tests/data/ml) and semi-synthetic files: no database."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from xpmet.ml import dataset as ds
from xpmet.ml.export import assign_split, parse_split
from xpmet.ml.models import covariance, gaussian_terms, heteroscedastic_nll
from xpmet.ml.normalise import G_ZERO_POINT, NoiseModel, Scaler, g_flux, normalise_xp
from xpmet.xp_coefficients import N_CORR, covariance_matrix

import ml_semisynth as semi


def test_g_flux_falls_back_to_the_magnitude():
    f = g_flux([1000.0, np.nan, -1.0], [20.0, 15.0, G_ZERO_POINT])
    assert f[0] == 1000.0
    assert f[1] == pytest.approx(10 ** (-0.4 * (15.0 - G_ZERO_POINT)))
    assert f[2] == pytest.approx(1.0)


def test_normalisation_removes_brightness_and_flags_missing_bands():
    bp, bpe, rp, rpe, flux = semi.real_xp()
    x1, e1, m1 = normalise_xp(bp, bpe, rp, rpe, flux)
    x2, e2, _ = normalise_xp(bp * 7.0, bpe * 7.0, rp * 7.0, rpe * 7.0, flux * 7.0)
    np.testing.assert_allclose(x1, x2, rtol=1e-12)
    assert not m1.any()
    bp2 = bp.copy()
    bp2[3] = np.nan
    _, _, m = normalise_xp(bp2, bpe, rp, rpe, flux)
    assert m[3].tolist() == [True, False] and m.sum() == 1


def test_scaler_is_robust_and_ignores_nan():
    v = np.r_[np.random.default_rng(0).normal(5, 2, 2000), 1e9, np.nan][:, None]
    s = Scaler.fit(v)
    assert s.mean[0] == pytest.approx(5, abs=0.2) and s.std[0] == pytest.approx(2, rel=0.1)
    assert Scaler.from_dict(s.to_dict()).transform(np.array([[5.0]]))[0, 0] == pytest.approx((5 - s.mean[0]) / s.std[0])


def test_noise_model_recovers_background_and_photon_terms():
    rng = np.random.default_rng(1)
    flux = 10 ** rng.uniform(2.5, 5.5, 3000)
    a, b = np.array([4.0, 100.0]), np.array([0.01, 0.002])
    err = np.sqrt(a + b * flux[:, None]) * np.exp(rng.normal(0, 0.05, (3000, 2)))
    nm = NoiseModel.fit(err, flux, target_g=rng.uniform(15, 18, 100))
    np.testing.assert_allclose(nm.a, a, rtol=0.15)
    np.testing.assert_allclose(nm.b, b, rtol=0.15)
    assert NoiseModel.from_dict(nm.to_dict()).target_g.size == 201


def test_splits_depend_only_on_id_and_seed():
    ids = np.arange(4295806720, 4295806720 + 20000 * 7, 7, dtype=np.int64)
    fr = parse_split("train=0.8,valid=0.1,test=0.1")
    s = assign_split(ids, fr, seed=3)
    perm = np.random.default_rng(0).permutation(len(ids))
    assert (assign_split(ids[perm], fr, 3) == s[perm]).all()  # order does not matter
    assert (assign_split(ids[:100], fr, 3) == s[:100]).all()  # nor does what else is exported
    counts = np.bincount(s, minlength=3) / len(ids)
    np.testing.assert_allclose(counts, [0.8, 0.1, 0.1], atol=0.01)
    assert (assign_split(ids, fr, 4) != s).mean() > 0.2       # another seed, another split
    with pytest.raises(Exception, match="sum to 1"):
        parse_split("train=0.8,valid=0.3,test=0.1")


def test_heteroscedastic_nll_masks_unknown_labels_and_adds_label_errors():
    mu = torch.zeros(2, 2)
    ls = torch.zeros(2, 2)
    y = torch.tensor([[1.0, float("nan")], [0.0, 2.0]])
    err = torch.tensor([[0.0, 0.0], [0.0, 1.0]])
    got = float(heteroscedastic_nll(mu, ls, y, err))
    want = (0.5 * 1.0 + 0.0 + 0.5 * (4 / 2 + np.log(2))) / 3  # mean over the 3 known labels only
    assert got == pytest.approx(want, rel=1e-6)


def test_fast_label_nll_equals_the_reference_one():
    from xpmet.ml.models import known_label_nll
    g = torch.Generator().manual_seed(0)
    mu, ls = torch.randn(50, 4, generator=g), 0.3 * torch.randn(50, 4, generator=g)
    y, err = torch.randn(50, 4, generator=g), torch.rand(50, 4, generator=g)
    y[::3, 1] = float("nan")
    known = torch.isfinite(y).float()
    a = heteroscedastic_nll(mu, ls, y, err)
    b = known_label_nll(mu, ls, torch.nan_to_num(y), err, known)
    assert float(a) == pytest.approx(float(b), rel=1e-6)


def test_full_covariance_chi2_matches_numpy_and_xpmet_xp():
    rng = np.random.default_rng(2)
    n = 3
    # valid correlation matrices: normalised Gram matrices of random vectors
    corrs = []
    for _ in range(2 * n):
        a = rng.normal(size=(55, 80))
        c = a @ a.T
        d = np.sqrt(np.diag(c))
        corrs.append((c / d[:, None] / d[None, :])[np.tril_indices(55, -1)])
    corr = np.asarray(corrs).reshape(n, 2, N_CORR)
    e = rng.uniform(0.5, 2.0, (n, 110))
    r = rng.normal(size=(n, 110))
    ok = np.ones((n, 110), bool)
    t = lambda v: torch.as_tensor(v, dtype=torch.float64)  # noqa: E731
    c2, logdet = gaussian_terms(t(r), t(e), torch.as_tensor(ok), None, t(corr))
    for i in range(n):
        want = 0.0
        ld = 0.0
        for b in range(2):
            cov = covariance_matrix(e[i, 55 * b:55 * (b + 1)], corr[i, b])
            rb = r[i, 55 * b:55 * (b + 1)]
            want += rb @ np.linalg.solve(cov, rb)
            ld += np.linalg.slogdet(cov)[1]
        assert float(c2[i]) == pytest.approx(want, rel=1e-4)
        assert float(logdet[i]) == pytest.approx(ld, rel=1e-4)
    # zero correlations reduce to the diagonal chi2
    c2d, _ = gaussian_terms(t(r), t(e), torch.as_tensor(ok), None, t(np.zeros_like(corr)))
    np.testing.assert_allclose(c2d.numpy(), ((r / e) ** 2).sum(1), rtol=1e-4)
    cov = covariance(t(e), t(corr), extra_var=t(np.ones_like(e)))
    assert torch.allclose(torch.diagonal(cov, dim1=-2, dim2=-1).reshape(n, 110), t(e ** 2 + 1), rtol=1e-5)


def test_synthetic_photometry_scales_with_flux_and_skips_missing_bands():
    from xpmet.ml.photometry import synthetic_photometry
    bp, bpe, rp, rpe, _ = semi.real_xp()
    bp, bpe, rp, rpe = bp[:20], bpe[:20], rp[:20], rpe[:20]
    bp[5] = np.nan
    m1 = synthetic_photometry(bp, bpe, rp, rpe)
    m2 = synthetic_photometry(bp * 10, bpe * 10, rp * 10, rpe * 10)
    ok = np.arange(20) != 5
    for band in ("CaHK", "g_sdss", "G", "BP", "RP"):
        fin = ok & np.isfinite(m1[band])  # a negative synthetic flux (faint CaHK) has no magnitude
        assert fin.sum() >= 15
        np.testing.assert_allclose(m1[band][fin] - m2[band][fin], 2.5, atol=1e-6)
        assert np.isnan(m1[band][5])
        assert (m1[band + "_err"][fin] > 0).all()
    # the CaHK band is the noisy one for these faint-ish stars; G the precise one
    assert np.nanmedian(m1["CaHK_err"][ok]) > 5 * np.nanmedian(m1["G_err"][ok])


def test_read_rejects_foreign_files(tmp_path):
    import h5py
    p = tmp_path / "x.h5"
    with h5py.File(p, "w") as f:
        f["a"] = [1]
    with pytest.raises(Exception, match="not an xpmet training file"):
        ds.read(p, "train")
    (tmp_path / "junk.h5").write_bytes(b"not hdf5")
    with pytest.raises(Exception, match="not a readable HDF5"):
        ds.read(tmp_path / "junk.h5")


def _arrays(n, g, corr=None, parallax=1.0, seed=0):
    """n copies of one real star at magnitude g (XPArrays with parallax and BP/RP magnitudes)."""
    bp, bpe, rp, rpe, flux = semi.real_xp()
    f = 10 ** (-0.4 * (g - G_ZERO_POINT))
    scale = f / flux[0]
    # errors at the new flux from the same background + photon form the noise model fits
    err = np.concatenate([bpe[0], rpe[0]]) * np.sqrt(scale)
    batch = {"source_id": np.arange(n) + 1, "bp_coefficients": np.tile(bp[0] * scale, (n, 1)),
             "bp_coefficient_errors": np.tile(err[:55], (n, 1)), "rp_coefficients": np.tile(rp[0] * scale, (n, 1)),
             "rp_coefficient_errors": np.tile(err[55:], (n, 1)), "phot_g_mean_mag": np.full(n, g),
             "phot_g_mean_flux": np.full(n, f), "bp_standard_deviation": np.full(n, 1.1),
             "rp_standard_deviation": np.full(n, 1.2), "parallax": np.full(n, parallax),
             "parallax_error": np.full(n, 0.02), "phot_bp_mean_mag": np.full(n, g + 0.4),
             "phot_rp_mean_mag": np.full(n, g - 0.6)}
    if corr is not None:
        batch["bp_coefficient_correlations"] = np.tile(corr[0], (n, 1))
        batch["rp_coefficient_correlations"] = np.tile(corr[1], (n, 1))
    arr = ds.from_batch(batch)
    arr.labels = np.tile([5000.0, 4.0, -1.0, 0.1], (n, 1))
    arr.label_err = np.full((n, 4), 0.1)
    return arr


def _random_correlations(rng):
    out = []
    for _ in range(2):
        a = rng.normal(size=(55, 60)) + 2 * rng.normal(size=(55, 1))  # strongly correlated
        c = a @ a.T
        d = np.sqrt(np.diag(c))
        out.append((c / d[:, None] / d[None, :])[np.tril_indices(55, -1)])
    return np.asarray(out)


def _degrade(arr, target_g, frac=1.0, seed=0):
    from xpmet.ml.normalise import fit_extra, fit_normaliser
    from xpmet.ml.train import Augmenter, Tensors
    bright = _arrays(50, 11.0)
    faint = _arrays(50, 17.5)
    ref = ds._concat([bright, faint])  # the noise and parallax-error models see both magnitudes
    norm = fit_normaliser(ref.x, ref.labels, ref.ag, ref.g_mag, ref.e * ref.flux[:, None], ref.flux,
                          np.full(100, target_g))
    norm.extra = fit_extra(ref, norm.noise)
    t = Tensors(arr, norm, "estimator", torch.device("cpu"))
    aug = Augmenter(norm, torch.device("cpu"))
    inp = aug(t, torch.arange(t.n), frac, torch.Generator().manual_seed(seed))
    return norm, t, aug, inp


def test_degradation_draws_noise_from_each_stars_own_covariance():
    from xpmet.xp_coefficients import correlation_matrix
    rng = np.random.default_rng(3)
    corr = _random_correlations(rng)
    arr = _arrays(6000, 12.0, corr=corr)
    norm, t, _, inp = _degrade(arr, 16.5)
    added = (inp[:, :110] - t.fixed[:, :110]).numpy().astype(np.float64)
    C = correlation_matrix(corr[0])
    got = np.corrcoef(added[:, :55], rowvar=False)
    assert np.abs(got - C).max() < 0.08                  # correlated as the published matrix says
    # the degraded errors are the noise model's at the new magnitude; the noise is what they add to the
    # star's own (DR3's published errors already include the standard deviation: no division by it)
    e0 = t.packed[0, t.layout["e"]].numpy()[:110]
    e1 = np.exp(inp[0, 110:220].numpy())
    u = 10 ** (0.4 * (16.5 - G_ZERO_POINT))
    want_e1 = np.sqrt(t.packed[0, t.layout["ka"]].numpy()[:110] * u ** 2 + t.packed[0, t.layout["kb"]].numpy()[:110] * u)
    np.testing.assert_allclose(e1, want_e1, rtol=1e-4)
    want = np.sqrt(e1 ** 2 - e0 ** 2)
    np.testing.assert_allclose(added.std(0), want, rtol=0.06)
    # without correlations in the file (or only NaN ones: exported from a database loaded without
    # them): independent noise of the same size
    _, t2, _, inp2 = _degrade(_arrays(6000, 12.0), 16.5)
    assert t2.chol is None
    assert _degrade(_arrays(50, 12.0, corr=np.full_like(corr, np.nan)), 16.5)[1].chol is None
    added2 = (inp2[:, :110] - t2.fixed[:, :110]).numpy().astype(np.float64)
    off = np.corrcoef(added2[:, :55], rowvar=False)[np.tril_indices(55, -1)]
    assert np.abs(off).max() < 0.08
    np.testing.assert_allclose(added2.std(0), want, rtol=0.06)


def test_extra_inputs_have_masks_and_errors_that_grow_with_the_degradation():
    from xpmet.ml.models import ESTIMATOR_INPUTS, N_X
    arr = _arrays(4000, 12.0, parallax=2.0)
    arr.extra[:10, arr.extra_names.index("parallax")] = np.nan  # no parallax for the first ten
    norm, t, _, inp = _degrade(arr, 17.0)
    names = norm.extra.names
    k = len(names)
    assert names[:3] == ("parallax_g15", "bp_g", "g_rp") and inp.shape[1] == ESTIMATOR_INPUTS + 3 * k
    j = names.index("parallax_g15")
    val, le, miss = ESTIMATOR_INPUTS + j, ESTIMATOR_INPUTS + k + j, ESTIMATOR_INPUTS + 2 * k + j
    assert (t.fixed[:10, miss] == 1).all() and (t.fixed[:10, val] == 0).all() and (t.fixed[:10, le] == 0).all()
    assert (inp[:10, miss] == 1).all() and (inp[:10, val] == 0).all()  # missing stays missing, never noise
    assert (t.fixed[10:, miss] == 0).all()
    # the parallax error at G 17 from the model fitted on the training stars, in feature units
    c0, c1 = norm.extra.plx_err
    s = 10 ** (0.2 * (np.r_[12.0, 17.0] - 15))
    r2 = 0.02 ** 2 / (c0 + c1 * s[0] ** 2)
    sig = np.sqrt(r2 * (c0 + c1 * s ** 2)) * s / norm.extra.scaler.std[j]
    assert np.exp(float(inp[10, le])) == pytest.approx(sig[1], rel=1e-3)
    added = (inp[10:, val] - t.fixed[10:, val]).numpy()
    assert added.std() == pytest.approx(np.sqrt(sig[1] ** 2 - sig[0] ** 2), rel=0.06)
    assert abs(added.mean()) < 0.1 * added.std()  # the distance-free value itself is kept
    # colours get noisier too, from the noise model of their band
    jc = names.index("bp_g")
    assert float(inp[10, ESTIMATOR_INPUTS + k + jc]) > float(t.fixed[10, ESTIMATOR_INPUTS + k + jc])


def test_degraded_validation_is_fixed_by_its_seed():
    arr = _arrays(40, 12.0)
    _, t, aug, _ = _degrade(arr, 17.0)
    a, b, c = t.degraded(aug, 3, 5), t.degraded(aug, 3, 5), t.degraded(aug, 3, 6)
    assert a.n == 120 and a.packed.shape[0] == 120
    assert torch.equal(a.fixed, b.fixed) and not torch.equal(a.fixed, c.fixed)
    assert not torch.equal(a.fixed[:40], t.fixed)


def test_prior_weights_make_the_labelled_stars_count_as_the_target_magnitudes():
    from xpmet.ml.train import prior_weights
    rng = np.random.default_rng(0)
    g = np.r_[rng.uniform(10, 14, 900), rng.uniform(16, 17, 100)]
    w = prior_weights(g, rng.uniform(16, 17, 5000))
    assert w.mean() == pytest.approx(1.0)
    assert w[900:].mean() > 5 * w[:900].mean()
    assert np.all(prior_weights(g, []) == 1)


def test_sigma_scale_matches_the_validation_residuals():
    """A model stating twice the spread its answers have gets its uncertainty halved (k ~ 0.5): 68.27 %
    of the stars then lie within k sigma (with their label errors), the quantile solved here directly;
    stars whose label error exceeds the stated sigma do not count (they would be 'covered' at any k);
    a label without stars keeps k = 1."""
    from xpmet.ml import distributed as dist
    from xpmet.ml.train import Tensors, TrainConfig, build_model, sigma_scale
    rng = np.random.default_rng(5)
    arr = _arrays(400, 14.0)
    arr.labels[:, 2] = rng.normal(-1.0, 0.5, 400)
    arr.labels[:, 3] = np.nan                      # no [alpha/Fe] labels at all
    norm, _, _, _ = _degrade(arr, 16.0)
    norm.labels.mean[:], norm.labels.std[:] = 0.0, 1.0  # physical units = network units
    t = Tensors(arr, norm, "estimator", torch.device("cpu"))
    config = TrainConfig(hidden=(8,))
    net = build_model(config, norm)
    last = net.net[-1]
    torch.nn.init.zeros_(last.weight)
    rms = float(np.sqrt(np.mean((arr.labels[:, 2] + 1.0) ** 2)))
    with torch.no_grad():
        last.bias[:] = torch.tensor([5000.0, 4.0, -1.0, 0.0] + [np.log(2 * rms)] * 4)
    k = sigma_scale([net.state_dict()], config, norm, t, 128, dist.Context())
    r2, v, e2 = (arr.labels[:, 2] + 1.0) ** 2, (2 * rms) ** 2, 0.1 ** 2
    q = np.sort(r2)[int(np.ceil(0.6827 * len(r2))) - 1]  # the smallest r^2 that 68.27 % lie within
    want = np.sqrt((q - e2) / v)
    assert abs(k[2] - want) < 2e-3 and 0.4 < k[2] < 0.55
    assert np.mean(r2 < k[2] ** 2 * v + e2) == pytest.approx(0.6827, abs=0.005)
    assert k[3] == 1.0
    # 100 more stars with label errors far beyond the model's sigma: k stays what the others say
    arr2 = _arrays(500, 14.0)
    arr2.labels[:400, 2], arr2.labels[:, 3] = arr.labels[:, 2], np.nan
    arr2.labels[400:, 2] = -1.0 + rng.normal(0, 0.01, 100)
    arr2.label_err[400:, 2] = 10 * rms
    k2 = sigma_scale([net.state_dict()], config, norm, Tensors(arr2, norm, "estimator", torch.device("cpu")), 128,
                     dist.Context())
    assert abs(k2[2] - k[2]) < 2e-3
