"""Flags that mean something: the simulator's non-stellar sources, the out-of-distribution model of
the training spectra (xpmet.ml.ood), and the quality bits of inference (xpmet.flags.PREDICTION_BITS)."""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

from xpmet.flags import PREDICTION_BITS
from xpmet.ml import ood
from xpmet.ml.normalise import Scaler, g_flux, label_range, normalise_xp

import ml_semisynth as semi

pytestmark = pytest.mark.usefixtures("torch_one_thread")
REAL = Path(__file__).parent / "data" / "xp" / "xp_continuous_combined_chunk0.fits"


def _read(path, **kw):
    from astropy.table import Table
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Table.read(path, **kw)


@pytest.fixture(scope="module")
def sky(tmp_path_factory):
    """A simulated sky (SIMULATED data) with 5 % quasars and white dwarfs, read back from its files."""
    from astropy.table import vstack
    from xpmet.io.xp_reader import read_xp
    from xpmet.simulate import simulate
    out = simulate(tmp_path_factory.mktemp("ood") / "sky", n_stars=3000, seed=21, nonstellar_fraction=0.05,
                   correlations=False, progress=False)
    chunks = [c.data for p in sorted((out / "xp_continuous").glob("*.csv.gz")) for c in read_xp(str(p))]
    xp = {k: np.concatenate([c[k] for c in chunks]) for k in
          ("source_id", "bp_coefficients", "bp_coefficient_errors", "rp_coefficients", "rp_coefficient_errors")}
    gaia = vstack([_read(p, format="ascii.ecsv") for p in sorted((out / "gaia_source").glob("*.csv.gz"))])
    truth = _read(out / "truth.fits")

    def rows(table):
        sid = np.asarray(table["source_id"])
        order = np.argsort(sid)
        return order[np.searchsorted(sid[order], xp["source_id"])]

    gi, ti = rows(gaia), rows(truth)
    g = np.asarray(gaia["phot_g_mean_mag"], float)[gi]
    x, e, missing = normalise_xp(xp["bp_coefficients"], xp["bp_coefficient_errors"], xp["rp_coefficients"],
                                 xp["rp_coefficient_errors"], g_flux(np.asarray(gaia["phot_g_mean_flux"], float)[gi], g))
    return {"dir": out, "truth": truth, "gaia": gaia, "x": x, "e": e, "missing": missing, "g": g,
            "cls": np.asarray(truth["source_class"]).astype(str)[ti], "feh": np.asarray(truth["feh"], float)[ti],
            "surveyed": np.char.strip(np.asarray(truth["surveys"]).astype(str)[ti]) != ""}


def test_simulate_writes_nonstellar_sources_with_their_class(sky):
    t, gaia = sky["truth"], sky["gaia"]
    cls = np.asarray(t["source_class"]).astype(str)
    xp = np.asarray(t["has_xp"], bool)
    n = {c: int((cls == c).sum()) for c in ("quasar", "white_dwarf")}
    assert n["quasar"] == 75 and n["white_dwarf"] == 75  # 5 % of 3000 XP sources, half each
    assert xp[cls != "star"].all()
    assert (np.char.strip(np.asarray(t["surveys"]).astype(str))[cls != "star"] == "").all()  # no survey sees them
    q = cls == "quasar"
    assert np.isnan(np.asarray(t["feh"])[cls != "star"]).all() and (np.asarray(t["redshift"])[q] > 0).all()
    # their Gaia rows: quasars have no parallax beyond the noise; white dwarfs are blue and nearby
    sid = np.asarray(gaia["source_id"])
    row = {s: i for i, s in enumerate(sid)}
    gq = np.array([row[s] for s in np.asarray(t["source_id"])[q]])
    z = np.asarray(gaia["parallax"], float)[gq] / np.asarray(gaia["parallax_error"], float)[gq]
    assert np.abs(z).max() < 5
    wd = np.array([row[s] for s in np.asarray(t["source_id"])[cls == "white_dwarf"]])
    assert np.median(np.asarray(gaia["bp_rp"], float)[wd]) < 0.3
    assert np.median(np.asarray(t["distance_pc"], float)[cls == "white_dwarf"]) < 1000


def test_ood_model_flags_nonstellar_sources_but_not_genuine_stars(sky):
    """Fitted on the surveyed stars (the training set's analogue): >= 95 % of quasars and white
    dwarfs flagged; at most 3 % of the never-surveyed stars and at most 10 % of the very metal-poor
    ones, although the training set holds only a handful of those (measured: 0.7 % and 4.8 %)."""
    x, e, cls, feh, g = sky["x"], sky["e"], sky["cls"], sky["feh"], sky["g"]
    both = ~sky["missing"].any(1)
    train = sky["surveyed"] & both
    assert train.sum() > 500
    sc = Scaler.fit(x[train])
    m = ood.fit(x[train], e[train], sc.mean, sc.std)
    f = m.flag(x, e)
    # both bands: a source missing one is not scored (missing_band rejects it)
    assert f[both & (cls == "quasar")].mean() >= 0.95 and f[both & (cls == "white_dwarf")].mean() >= 0.95
    stars = (cls == "star") & ~sky["surveyed"] & both
    vmp = stars & (feh < -2)
    assert vmp.sum() >= 20
    assert f[stars].mean() <= 0.03
    assert f[vmp].mean() <= 0.10
    assert f[train].mean() <= 0.02  # the cut lies beyond each statistic's training 99th percentile
    assert not np.isfinite(m.score(x[~both], e[~both])).any()  # a missing band is not scored


def test_ood_model_round_trips_without_pickle(tmp_path, sky):
    x, e = sky["x"][~sky["missing"].any(1)], sky["e"][~sky["missing"].any(1)]
    sc = Scaler.fit(x)
    m = ood.fit(x, e, sc.mean, sc.std)
    m.save(tmp_path / ood.FILENAME)
    with np.load(tmp_path / ood.FILENAME, allow_pickle=False) as z:
        assert set(z.files) == {"mean", "scale", "components", "lam", "s2", "threshold", "tail"}
    back = ood.load(tmp_path)
    np.testing.assert_array_equal(back.score(x, e), m.score(x, e))
    assert ood.load(tmp_path / "nothing") is None


@pytest.fixture(scope="module")
def estimator(tmp_path_factory):
    """A single-model estimator (the default) trained on semi-synthetic spectra from real XP data."""
    from xpmet.ml.train import TrainConfig, train
    d = tmp_path_factory.mktemp("est")
    faint, truth = semi.write_file(d / "data.h5", n=900, n_faint=200)
    cfg = TrainConfig(kind="estimator", hidden=(32, 32), epochs=12, batch_size=128, patience=6, lr=4e-3)
    return train(d / "data.h5", d / "est", cfg, register=False, progress=False), faint


def _flag(out, name):
    return (out["quality_flags"] >> PREDICTION_BITS[name] & 1).astype(bool)


def test_model_directory_carries_the_ood_model_and_inference_uses_it(estimator):
    from xpmet.ml.inference import load_predictor
    model_dir, faint = estimator
    assert (model_dir / ood.FILENAME).exists()
    p = load_predictor(model_dir)
    assert p.ood is not None and {"ruwe", "phot_bp_rp_excess_factor"} <= set(p.needs)
    batch = {k: np.array(v[:60], copy=True) for k, v in faint.items()}
    out = p.predict(batch)
    assert _flag(out, "unlike_training").mean() < 0.1
    odd = {k: v.copy() for k, v in batch.items()}
    odd["bp_coefficients"] = odd["bp_coefficients"][:, ::-1].copy()  # no star looks like this
    assert _flag(p.predict(odd), "unlike_training").all()
    # a single model still has a meaningful fit statistic (noise sensitivity over its sigma)
    assert np.isfinite(out["fit_stat"]).all() and np.median(out["fit_stat"]) < 1.5


def test_astrometric_photometric_and_magnitude_bits(estimator):
    from xpmet.ml.inference import EXCESS_SIGMA, MAX_RUWE, load_predictor
    model_dir, faint = estimator
    p = load_predictor(model_dir)
    b = {k: np.array(v[:6], copy=True) for k, v in faint.items()}
    b["ruwe"] = np.array([1.0, MAX_RUWE + 0.5, 1.0, 1.0, np.nan, 1.0])
    b["bp_rp"] = np.full(6, 1.0)
    clean = ood.excess_factor_expected(b["bp_rp"])
    b["phot_bp_rp_excess_factor"] = clean.copy()
    b["phot_bp_rp_excess_factor"][2] += 2 * EXCESS_SIGMA * ood.excess_factor_sigma(b["phot_g_mean_mag"][2])
    b["phot_g_mean_mag"][3] = p.g_range[0] - 1.0  # brighter than anything trained on
    out = p.predict(b)
    assert _flag(out, "high_ruwe").tolist() == [False, True, False, False, False, False]
    assert _flag(out, "bp_rp_excess").tolist() == [False, False, True, False, False, False]
    assert _flag(out, "outside_training_g")[3] and not _flag(out, "outside_training_g")[[0, 1, 2, 4, 5]].any()
    without = {k: v for k, v in b.items() if k not in ("ruwe", "phot_bp_rp_excess_factor")}
    o2 = p.predict(without)  # columns not supplied: those bits stay clear
    assert not (_flag(o2, "high_ruwe") | _flag(o2, "bp_rp_excess")).any()


def test_label_range_keeps_rare_labels_inside():
    """1 % of very metal-poor stars: a 0.5 % percentile would cut into them, the range does not."""
    rng = np.random.default_rng(0)
    feh = np.concatenate([rng.normal(-0.3, 0.3, 9900), rng.uniform(-3.5, -2.0, 100)])
    lo, hi = label_range(feh[:, None])
    assert lo[0] < np.sort(feh)[3] + 1e-9 and (feh < lo[0]).sum() == 2
    assert (feh[feh < -2] >= lo[0]).mean() >= 0.97
    assert (feh[feh < -2] >= np.percentile(feh, 0.5)).mean() < 0.8  # what the old cut did


def test_low_snr_threshold_fires_on_real_dr3_spectra():
    """On 2,000 real DR3 spectra (tests/data/xp) the threshold flags a few (1.9 %), mostly faint ones."""
    from xpmet.ml.inference import LOW_SNR, spectrum_snr
    from xpmet.ml.photometry import synthetic_photometry
    t = _read(REAL)
    col = lambda p: np.stack([np.asarray(t[f"{p}_{i}"], np.float64) for i in range(55)], 1)  # noqa: E731
    bp, bpe, rp, rpe = col("bp_coeff"), col("e_bp_coeff"), col("rp_coeff"), col("e_rp_coeff")
    g = synthetic_photometry(bp, bpe, rp, rpe, bands=("G",))["G"]
    snr = spectrum_snr(np.concatenate([bp, rp], 1), np.concatenate([bpe, rpe], 1))
    low = snr < LOW_SNR
    assert 0.005 <= low.mean() <= 0.10
    assert np.mean(g[low] > 17) >= 0.75  # mostly the faintest; the rest are bright spectra with odd errors
    edge = (g > 17) & (g < 17.65)  # the threshold sits near the 5th percentile at the XP limit
    assert 0.01 <= np.mean(snr[edge] < LOW_SNR) <= 0.15
