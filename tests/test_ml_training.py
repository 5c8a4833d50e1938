"""Training, resume, determinism and inference of both model kinds on semi-synthetic files built
from real XP spectra (tests/ml_semisynth.py), without the database."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from xpmet.ml.evaluate import compute_metrics
from xpmet.flags import PREDICTION_BITS as QUALITY_BITS
from xpmet.ml.inference import load_predictor
from xpmet.ml.train import TrainConfig, train

import ml_semisynth as semi


pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("ml")
    faint, truth = semi.write_file(d / "data.h5", n=1600, n_faint=500)
    return d, faint, truth


@pytest.fixture(scope="module")
def estimator(data):
    d, _, _ = data
    cfg = TrainConfig(kind="estimator", hidden=(48, 48), epochs=40, batch_size=128, patience=8, ensemble=2, lr=4e-3)
    return train(d / "data.h5", d / "est", cfg, register=False, progress=False)


@pytest.fixture(scope="module")
def emulator(data):
    d, _, _ = data
    cfg = TrainConfig(kind="emulator", hidden=(48, 48), epochs=25, batch_size=128, patience=6)
    return train(d / "data.h5", d / "emu", cfg, register=False, progress=False)


def test_model_directory_is_complete(estimator):
    for name in ("config.json", "normalisation.json", "weights.pt", "fingerprint.txt", "history.json",
                 "metrics.json", "plots/learning_curve.png"):
        assert (estimator / name).exists(), name
    assert not (estimator / "checkpoint.pt").exists()
    cfg = json.loads((estimator / "config.json").read_text())
    assert cfg["data_attributes"]["reference"] == "semi-synthetic" and cfg["n_train"] > 1000
    assert len(json.loads((estimator / "history.json").read_text())) == 2  # two ensemble members


def test_estimator_learns_and_is_calibrated_on_bright_and_faint_stars(estimator, data):
    _, faint, truth = data
    m = json.loads((estimator / "metrics.json").read_text())["valid"]["overall"]
    assert m["feh"]["scatter"] < 0.25 * semi.LABEL_SCALE[2] * 2  # far better than the label spread
    assert 0.7 < m["feh"]["calibration"] < 1.4
    p = load_predictor(estimator)
    out = p.predict(faint)
    fm = compute_metrics(out, truth, np.zeros_like(truth), faint["phot_g_mean_mag"])["overall"]
    assert fm["feh"]["scatter"] < semi.LABEL_SCALE[2]          # learns something on fainter stars too
    assert 0.7 < fm["feh"]["calibration"] < 1.4                 # ... with honest uncertainties
    assert abs(fm["feh"]["bias"]) < 0.1


def test_predict_contract(estimator, data):
    _, faint, _ = data
    batch = {k: np.array(v[:50], copy=True) for k, v in faint.items()}
    batch["bp_coefficients"][3] = np.nan
    batch["bp_coefficient_errors"][3] = np.nan
    for k in ("bp_coefficients", "bp_coefficient_errors", "rp_coefficients", "rp_coefficient_errors"):
        batch[k][7] = np.nan
    p = load_predictor(estimator)
    assert p.kind == "estimator" and p.model_id is None and "bp_coefficients" in p.needs
    out = p.predict(batch)
    for k in ("teff", "teff_err", "logg", "logg_err", "feh", "feh_err", "alpha_fe", "alpha_fe_err",
              "fit_stat", "quality_flags", "recommended"):
        assert len(out[k]) == 50, k
    assert out["quality_flags"].dtype == np.int32 and out["recommended"].dtype == bool
    assert out["quality_flags"][3] & (1 << QUALITY_BITS["missing_band"])
    assert not out["recommended"][3]
    assert np.isnan(out["feh"][7])  # no spectrum, no metallicity
    assert np.isfinite(out["feh"][:3]).all() and (out["feh_err"][:3] > 0).all()
    assert np.isfinite(out["fit_stat"][:3]).all()  # ensemble disagreement


def test_emulator_fit_recovers_labels_with_fisher_uncertainties(emulator, data):
    _, faint, truth = data
    p = load_predictor(emulator)
    out = p.predict({k: v[:200] for k, v in faint.items()})
    m = compute_metrics(out, truth[:200], np.zeros_like(truth[:200]), faint["phot_g_mean_mag"][:200])
    assert m["median_fit_stat"] < 1.5                      # reduced chi2 of the held-out fits
    assert m["overall"]["feh"]["scatter"] < semi.LABEL_SCALE[2]
    assert 0.6 < m["overall"]["feh"]["calibration"] < 1.6
    # a spectrum that is not a star of the training set fits badly and is flagged
    bad = {k: v[:5].copy() for k, v in faint.items()}
    bad["bp_coefficients"] = bad["bp_coefficients"][:, ::-1].copy()
    o2 = p.predict(bad)
    assert (o2["fit_stat"] > 3).all() and (o2["quality_flags"] & (1 << QUALITY_BITS["poor_fit"])).all()


def test_training_is_deterministic_and_resume_continues_exactly(data):
    d, _, _ = data
    cfg = TrainConfig(kind="estimator", hidden=(32,), epochs=5, batch_size=256, patience=50, max_train=600)
    a = train(d / "data.h5", d / "a", cfg, register=False, progress=False)

    class Stop(Exception):
        pass

    def stop_at_2(member, epoch, *_):
        if epoch == 2:
            raise Stop

    with pytest.raises(Stop):
        train(d / "data.h5", d / "b", cfg, register=False, progress=False, on_epoch=stop_at_2)
    assert (d / "b" / "checkpoint.pt").exists() and not (d / "b" / "weights.pt").exists()
    with pytest.raises(Exception, match="--resume"):
        train(d / "data.h5", d / "b", cfg, register=False, progress=False)
    with pytest.raises(Exception, match="other options"):
        train(d / "data.h5", d / "b", TrainConfig(**{**cfg.__dict__, "lr": 1e-4}), resume=True, register=False,
              progress=False)
    b = train(d / "data.h5", d / "b", cfg, resume=True, register=False, progress=False)
    wa = torch.load(a / "weights.pt", weights_only=True)["members"][0]
    wb = torch.load(b / "weights.pt", weights_only=True)["members"][0]
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    with pytest.raises(Exception, match="already holds a trained model"):
        train(d / "data.h5", d / "a", cfg, register=False, progress=False)


def test_inputs_beyond_the_coefficients_and_models_without_them(estimator, data):
    d, faint, _ = data
    cfg = json.loads((estimator / "config.json").read_text())
    # the semi-synthetic file has no correlations: the degradation says it fell back to diagonal noise
    assert cfg["augment_noise_used"] == "diagonal" and cfg["valid_copies"] == 3
    assert cfg["extra_inputs"][:3] == ["parallax_g15", "bp_g", "g_rp"]
    p = load_predictor(estimator)
    assert {"parallax", "parallax_error", "phot_bp_mean_mag", "phot_rp_mean_mag"} <= set(p.needs)
    batch = {k: v[:20] for k, v in faint.items()}
    out = p.predict(batch)  # a batch without parallax or photometry: inputs marked missing, still answers
    assert np.isfinite(out["feh"]).all()
    # a model on the coefficients alone (as every model before the extra inputs) needs none of them
    old = train(d / "data.h5", d / "old", TrainConfig(kind="estimator", hidden=(16,), epochs=2, inputs="xp"),
                register=False, progress=False)
    assert "extra" not in json.loads((old / "normalisation.json").read_text())
    po = load_predictor(old)
    assert "parallax_error" not in po.needs
    assert po.members[0].net[0].in_features == 222
    assert np.isfinite(po.predict(batch)["feh"]).all()
    with pytest.raises(Exception, match="unknown inputs"):
        TrainConfig(inputs="everything")
