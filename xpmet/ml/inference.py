"""Applying a trained model directory to batches of stars (the API ``xpmet predict`` uses).

>>> from xpmet.ml.inference import load_predictor
>>> p = load_predictor("models/est")
>>> out = p.predict(batch)   # batch: source_id, bp/rp coefficients and errors, phot_g_mean_mag, ...

``predict`` returns teff, logg, feh, alpha_fe with their ``_err`` (1-sigma), ``fit_stat``,
``quality_flags`` (bits: ``xpmet.flags.PREDICTION_BITS``, thresholds below) and ``recommended``
(= no quality bit set).
"""
from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import torch

from xpmet.errors import XpmetError
from xpmet.ml import checkpoint, ood
from xpmet.db.models.photometry import EXTERNAL_PHOT
from xpmet.flags import PREDICTION_BITS
from xpmet.ml.dataset import XPArrays, from_batch
from xpmet.ml.models import Emulator, Estimator, emulator_outputs, ensemble_mixture, estimator_inputs, fit_emulator
from xpmet.ml.normalise import GAIA_SOURCES, IR_EXTRAS, LABELS, Normaliser, emulator_params, network_columns

#: whole-spectrum S/N below which ``low_snr`` is set: the 5th percentile of real DR3 spectra at
#: 17 < G < 17.65 is ~310 (tests/data/xp/xp_continuous_combined_chunk0.fits, tests/test_ood.py),
#: so this fires on spectra noisier than a typical one at the XP publication limit (1.9 % of those
#: 2,000 real spectra: 32 at G > 17, 6 brighter ones with unusually large errors)
LOW_SNR = 300.0
POOR_FIT_CHI2 = 3.0
POOR_FIT_SPREAD = 2.0
#: single estimator: [Fe/H] noise-sensitivity over the stated (calibrated) uncertainty above which
#: ``poor_fit`` is set. Measured on the simulated sky (bench_train --n-stars 60000 --only flags): the
#: 0-20 stars per 19,500 above 3 have a z-spread of 7.2 against 0.98 for the rest; very metal-poor
#: stars, whose stated errors are larger, essentially never reach it. An absolute cut on the
#: propagated error would (0.15 dex flagged 10 % of them).
POOR_FIT_SENSITIVITY = 3.0
#: ``out_of_training_range``: predicted labels this many sigma beyond the training labels' range
OUT_OF_RANGE_SIGMA = 2.0
MAX_RUWE = 1.4
#: ``bp_rp_excess`` above this many sigma of the corrected excess factor
EXCESS_SIGMA = 3.0
#: the quality cut ``recommended`` applies: no bit set
RECOMMENDED_MASK = sum(1 << b for b in PREDICTION_BITS.values())

BASE_NEEDS = ["source_id", "bp_coefficients", "bp_coefficient_errors", "rp_coefficients",
              "rp_coefficient_errors", "phot_g_mean_mag", "phot_g_mean_flux", "bp_rp", "parallax",
              "ruwe", "phot_bp_rp_excess_factor"]


def spectrum_snr(x, e) -> np.ndarray:
    """Signal-to-noise of the whole flux-normalised spectrum: sqrt(sum (x/e)^2) over valid coefficients."""
    z = np.where(np.isfinite(x) & (e > 0), x / np.where(e > 0, e, 1), 0.0)
    return np.sqrt((z ** 2).sum(1))


class Predictor:
    """A loaded model directory; ``predict`` maps a batch dict to a dict of label arrays."""

    def __init__(self, model_dir, device="cpu", batch_size=4096):
        d = Path(model_dir)
        if not (d / "weights.pt").exists():
            raise XpmetError(f"{d}: no weights.pt; is this a model directory written by `xpmet train`?")
        self.dir = d
        self.config = json.loads((d / "config.json").read_text())
        self.kind = self.config["kind"]
        self.norm = Normaliser.load(d / "normalisation.json")
        self.device = torch.device(device)
        self.batch_size = batch_size
        w = checkpoint.load(d / "weights.pt", self.device)
        # models trained before the extra inputs have none (normalisation.json without "extra")
        n_extra = len(self.norm.extra.names) if self.norm.extra is not None else 0
        self.members = []
        for sd in w["members"]:
            m = Estimator(tuple(w["hidden"]), n_extra=n_extra) if self.kind == "estimator" else Emulator(tuple(w["hidden"]))
            m.load_state_dict(sd)
            m.eval()
            self.members.append(m.to(self.device))
        self.members64 = [copy.deepcopy(m).double() for m in self.members] if self.kind == "emulator" else []
        self.model_id = None
        mj = d / "model.json"
        if mj.exists():
            self.model_id = json.loads(mj.read_text()).get("model_id")
        self.uses_correlations = bool(self.config.get("correlations")) and self.kind == "emulator"
        self.needs = list(BASE_NEEDS)
        if self.uses_correlations:
            self.needs += ["bp_coefficient_correlations", "rp_coefficient_correlations"]
        if n_extra:
            self.needs += [c for c in GAIA_SOURCES if c not in self.needs]
            if set(self.norm.extra.names) & set(IR_EXTRAS):  # read from xpmet.external_photometry
                self.needs += list(EXTERNAL_PHOT)
        self._f = lambda v: torch.as_tensor(np.asarray(v), dtype=torch.float32, device=self.device)  # noqa: E731
        self.x_mean, self.x_scale = self._f(self.norm.x.mean), self._f(self.norm.x.std)
        self.ood = ood.load(d)  # None for directories written before it existed: no unlike_training bit
        lo, hi = self.norm.g_range
        if self.config.get("augment", 0) > 0 and self.kind == "estimator" and self.norm.noise.target_g.size:
            hi = max(hi, float(self.norm.noise.target_g.max()))  # spectra were degraded down to these
        self.g_range = (lo, hi)

    # -- public API -------------------------------------------------------------------------
    def predict(self, batch: dict) -> dict:
        return self.predict_arrays(from_batch(batch))

    def predict_arrays(self, arr: XPArrays) -> dict:
        parts = [self._predict(arr.subset(slice(i, i + self.batch_size)))
                 for i in range(0, len(arr), self.batch_size)]
        if not parts:
            return {k: np.zeros(0) for k in self._keys()}
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

    def emulate(self, labels, ag=None) -> np.ndarray:
        """Emulator only: flux-normalised coefficients (n,110) at physical labels (n,4)."""
        if self.kind != "emulator":
            raise XpmetError(f"{self.dir} is an {self.kind}, not an emulator")
        labels = np.asarray(labels, np.float64)
        ag = np.full(len(labels), np.nan) if ag is None else ag
        p = self._f(self.norm.params.transform(emulator_params(self.norm, labels, ag)))
        with torch.no_grad():
            out = np.mean([emulator_outputs(m, p, self.x_mean, self.x_scale)[0].cpu().numpy()
                           for m in self.members], axis=0)
        return out

    # -- internals --------------------------------------------------------------------------
    @staticmethod
    def _keys():
        return [k for l in LABELS for k in (l, l + "_err")] + ["fit_stat", "quality_flags", "recommended"]

    def _predict(self, arr: XPArrays) -> dict:
        mean, err, fit_stat, poor = (self._estimate if self.kind == "estimator" else self._fit)(arr)
        flags = np.zeros(len(arr), np.int32)

        def bit(name, cond):
            nonlocal flags
            flags |= np.asarray(cond, bool).astype(np.int32) << PREDICTION_BITS[name]

        # beyond the training labels by more than twice the uncertainty: a rare star inside the range,
        # scattered past its edge by its own noise, passes (1 sigma still caught 6 % of them)
        e3 = OUT_OF_RANGE_SIGMA * np.nan_to_num(err[:, :3])
        bit("out_of_training_range", ((mean[:, :3] < self.norm.label_lo[:3] - e3)
                                      | (mean[:, :3] > self.norm.label_hi[:3] + e3)).any(1))
        bit("low_snr", spectrum_snr(arr.x, arr.e) < LOW_SNR)
        bit("missing_band", arr.missing.any(1))
        bit("poor_fit", poor)
        if self.ood is not None:
            bit("unlike_training", self.ood.flag(arr.x, arr.e))
        g = arr.g_mag
        bit("outside_training_g", np.isfinite(g) & ((g < self.g_range[0]) | (g > self.g_range[1])))
        if arr.ruwe is not None:
            bit("high_ruwe", np.isfinite(arr.ruwe) & (arr.ruwe > MAX_RUWE))
        if arr.excess is not None:
            cstar = ood.corrected_excess_factor(arr.excess, arr.bp_rp)
            bit("bp_rp_excess", np.isfinite(cstar) & (np.abs(cstar) > EXCESS_SIGMA * ood.excess_factor_sigma(g)))
        nothing = arr.missing.all(1)  # no spectrum at all: no prediction
        mean[nothing], err[nothing] = np.nan, np.nan
        out = {}
        for j, l in enumerate(LABELS):
            out[l], out[l + "_err"] = mean[:, j], err[:, j]
        out["fit_stat"] = fit_stat
        out["quality_flags"] = flags
        out["recommended"] = (flags & RECOMMENDED_MASK) == 0
        return out

    @torch.no_grad()
    def _estimate(self, arr: XPArrays):
        n = self.norm
        x, e, _, _ = network_columns(n, arr)
        inp = estimator_inputs(self._f(x), self._f(e), self._f(arr.missing))
        mus, sig2 = [], []
        for m in self.members:
            mu, log_sigma = m(inp)
            mus.append(mu.cpu().numpy())
            sig2.append(np.exp(2 * log_sigma.cpu().numpy()))
        sig2 = np.stack(sig2)
        mu, var = ensemble_mixture(np.stack(mus), sig2)
        mean = n.labels.inverse(mu)
        # the training's calibration on the degraded validation stars (xpmet.ml.train.sigma_scale)
        k = np.broadcast_to(np.asarray(self.config.get("sigma_scale") or 1.0, np.float64), (len(LABELS),))
        err = np.sqrt(var) * n.labels.std * k
        # fit_stat in units of the stated (calibrated) [Fe/H] uncertainty
        if len(self.members) > 1:
            aleatoric = sig2.mean(0)[:, 2]
            fit_stat = np.sqrt((var[:, 2] - aleatoric) / aleatoric) / k[2]  # the members' [Fe/H] disagreement
            poor = fit_stat > POOR_FIT_SPREAD
        else:
            fit_stat = self._sensitivity(inp, self._f(e[:, :arr.e.shape[1]])) / k[2]
            poor = fit_stat > POOR_FIT_SENSITIVITY
        return mean, err, fit_stat, poor

    def _sensitivity(self, inp, e_std) -> np.ndarray:
        """How far [Fe/H] moves when the coefficients move by their errors, over its stated sigma.

        First-order propagation of the (diagonal) coefficient errors through the network. A model
        trained on noisy spectra states a sigma that covers its own noise response; a spectrum where
        the answer swings by more than that sits where the network is unstable: a poor fit.
        """
        m = self.members[0]
        with torch.enable_grad():
            x = inp.detach().clone().requires_grad_(True)
            mu, log_sigma = m(x)
            (grad,) = torch.autograd.grad(mu[:, 2].sum(), x)
        e = torch.nan_to_num(e_std, nan=0.0)
        prop = torch.sqrt(((grad[:, :e.shape[1]] * e) ** 2).sum(1))
        return (prop / torch.exp(log_sigma[:, 2].detach())).cpu().numpy().astype(np.float64)

    def _fit(self, arr: XPArrays):
        # float64: the Fisher matrix and the finite-difference Jacobian need the precision
        n = self.norm
        d = lambda v: torch.as_tensor(np.asarray(v), dtype=torch.float64, device=self.device)  # noqa: E731
        x, e = d(arr.x), d(arr.e)
        corr = d(arr.corr) if self.uses_correlations and arr.corr is not None else None
        P = self.members[0].n_params
        starts = self._starts().double()
        prior_mu = torch.zeros(P, dtype=torch.float64, device=self.device)
        prior_sigma = torch.full((P,), 3.0, dtype=torch.float64, device=self.device)
        x_mean, x_scale = d(self.norm.x.mean), d(self.norm.x.std)
        ps, covs, c2s = [], [], []
        for m in self.members64:
            p, cov, c2, nused = fit_emulator(m, x, e, x_mean, x_scale, prior_mu, prior_sigma, starts,
                                             corr=corr)
            ps.append(p.cpu().numpy())
            covs.append(torch.diagonal(cov, dim1=1, dim2=2).cpu().numpy())
            c2s.append(c2.cpu().numpy())
        p = np.mean(ps, 0)
        var = np.mean(covs, 0) + np.var(ps, 0)
        phys = n.params.inverse(p)
        err = np.sqrt(var) * n.params.std
        dof = np.maximum(nused.cpu().numpy() - P, 1)
        rchi2 = np.mean(c2s, 0) / dof
        return phys[:, :4], err[:, :4], rchi2.astype(np.float64), rchi2 > POOR_FIT_CHI2

    def _starts(self):
        """Starting points: a coarse grid over the standardised teff/logg/feh (others at the median)."""
        P = self.members[0].n_params
        g = torch.tensor([-1.5, 0.0, 1.5], device=self.device)
        grid = torch.cartesian_prod(g, g, torch.tensor([-2.0, -1.0, 0.0, 1.0], device=self.device))
        return torch.cat([grid, torch.zeros(len(grid), P - 3, device=self.device)], dim=1)


def load_predictor(model_dir, device: str = "cpu") -> Predictor:
    """Load a model directory written by ``xpmet train`` (CONTRACTS.md section 3)."""
    return Predictor(model_dir, device=device)
