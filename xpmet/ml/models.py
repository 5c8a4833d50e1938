"""The two model kinds, their losses, and the emulator's per-star maximum-likelihood fit.

- :class:`Estimator`: XP (flux-normalised, standardised coefficients + log errors + missing-band
  flags) -> mean and log-sigma of (teff, logg, feh, alpha_fe). Trained with a heteroscedastic
  Gaussian likelihood whose variance is sigma_model^2 + sigma_label^2, so the survey label errors
  are not learnt as model uncertainty; missing labels are masked out.
- :class:`Emulator`: (teff, logg, feh, alpha_fe, A_G) -> flux-normalised XP coefficients plus
  a per-coefficient model scatter s(labels). Trained with the Gaussian likelihood of the observed
  coefficients whose covariance is the published one (diagonal errors, or the full covariance
  reconstructed by :mod:`xpmet.xp_coefficients` when the file carries correlations) plus diag(s^2): the
  chi-squared on the coefficient errors, with s absorbing what the labels cannot explain (label
  noise, extinction mismatch) so bright stars are not fitted to noise in their labels.
- :func:`fit_emulator`: batched Levenberg–Marquardt maximum likelihood of the labels for many
  stars at once, with Fisher-matrix uncertainties and the reduced chi-squared.
"""
from __future__ import annotations

import functools

import numpy as np
import torch
from torch import nn

from xpmet.xp_coefficients import N_COEF, _TRIL, correlation_matrix

N_X = 2 * N_COEF
#: network inputs of an estimator on the coefficients alone; each extra input adds 3 (value, log error, missing)
ESTIMATOR_INPUTS = 2 * N_X + 2
LOG_SIGMA_MIN, LOG_SIGMA_MAX = -7.0, 3.0


def mlp(n_in, hidden, n_out, dropout=0.0):
    layers, width = [], n_in
    for h in hidden:
        layers += [nn.Linear(width, h), nn.SiLU()]
        if dropout:
            layers.append(nn.Dropout(dropout))
        width = h
    layers.append(nn.Linear(width, n_out))
    return nn.Sequential(*layers)


class Estimator(nn.Module):
    """XP -> (mu, log_sigma) of the 4 standardised labels."""

    def __init__(self, hidden=(256, 256), dropout=0.0, n_labels=4, n_extra=0):
        super().__init__()
        self.n_labels = n_labels
        self.net = mlp(ESTIMATOR_INPUTS + 3 * n_extra, hidden, 2 * n_labels, dropout)

    def forward(self, inputs):
        out = self.net(inputs)
        mu, log_sigma = out[:, :self.n_labels], out[:, self.n_labels:]
        return mu, log_sigma.clamp(LOG_SIGMA_MIN, LOG_SIGMA_MAX)


class Emulator(nn.Module):
    """Standardised (teff, logg, feh, alpha_fe, ag) -> (standardised coefficients (110), log model scatter (110)).

    The model scatter is in units of the coefficient scaler's std (multiply by it for flux units).
    """

    def __init__(self, hidden=(128, 128, 128), n_params=5):
        super().__init__()
        self.n_params = n_params
        self.net = mlp(n_params, hidden, 2 * N_X)

    def forward(self, params):
        out = self.net(params)
        return out[:, :N_X], out[:, N_X:].clamp(-14.0, 3.0)


def estimator_inputs(x_std, e_std, missing):
    """Network inputs from the standardised columns of :func:`xpmet.ml.normalise.network_columns`.

    x_std, e_std (n,110+k) torch: coefficients then k extra inputs, NaN where missing; missing (n,2)
    band flags. Inputs: coefficients (0 where missing), log errors (0 where missing), band flags, then
    per extra input its value, log error (0 where missing) and a missing indicator: a missing value
    is never a silent zero, the network is told.
    """
    miss = torch.isnan(x_std) | ~(e_std > 0)
    x = torch.where(miss, torch.zeros_like(x_std), x_std)
    le = torch.log(torch.where(miss, torch.ones_like(e_std), e_std))
    parts = [x[:, :N_X], le[:, :N_X], missing.to(x.dtype)]
    if x_std.shape[1] > N_X:
        parts += [x[:, N_X:], le[:, N_X:], miss[:, N_X:].to(x.dtype)]
    return torch.cat(parts, dim=1)


def ensemble_mixture(mus, sig2):
    """Members' (mean, variance) stacked on axis 0, as one equal-weight mixture: its mean, and its
    variance = the mean stated variance (aleatoric) + the members' disagreement (population variance).
    numpy or torch alike; inference and the training's sigma calibration combine members this way."""
    mu = mus.mean(0)
    return mu, sig2.mean(0) + ((mus - mu) ** 2).mean(0)


def heteroscedastic_nll(mu, log_sigma, y, y_err):
    """Mean Gaussian NLL with variance sigma_model^2 + sigma_label^2; NaN labels are masked out."""
    ok = torch.isfinite(y)
    var = torch.exp(2 * log_sigma) + torch.where(torch.isfinite(y_err), y_err, torch.zeros_like(y_err)) ** 2
    r = torch.where(ok, y - mu, torch.zeros_like(mu))
    nll = 0.5 * (r ** 2 / var + torch.log(var))
    nll = torch.where(ok, nll, torch.zeros_like(nll))
    return nll.sum() / ok.sum().clamp(min=1)


def known_label_nll(mu, log_sigma, y, y_err, known):
    """:func:`heteroscedastic_nll` for pre-cleaned tensors (unknown labels: y=0, known=0): fewer ops per batch.

    ``known`` may carry per-star weights (importance weights times the 0/1 mask).
    """
    var = torch.exp(2 * log_sigma) + y_err ** 2
    nll = 0.5 * ((y - mu) ** 2 / var + torch.log(var)) * known
    return nll.sum() / known.sum().clamp(min=1e-12)


def covariance(e, corr, extra_var=None):
    """Per-band covariance (n,2,55,55) of flux-normalised coefficients, in the units of ``e``.

    e (n,110) errors, corr (n,2,1485) Gaia correlations (order of :mod:`xpmet.xp_coefficients`), extra_var
    (n,110) added to the diagonal (the emulator's model scatter). A missing band -> identity.
    DR3's published errors already carry the band's standard deviation, so they enter as they are
    (see :func:`xpmet.xp_coefficients.covariance_matrix`); the diagonal likelihood uses the same e**2.
    """
    n = e.shape[0]
    c = torch.zeros(n, 2, N_COEF, N_COEF, dtype=e.dtype, device=e.device)
    r, k = torch.as_tensor(_TRIL[0], device=e.device), torch.as_tensor(_TRIL[1], device=e.device)
    c[:, :, r, k] = corr.to(e.dtype)
    c = c + c.transpose(-1, -2)
    c.diagonal(dim1=-2, dim2=-1).fill_(1.0)
    s = e.view(n, 2, N_COEF)
    bad = ~torch.isfinite(s).all(-1) | ~torch.isfinite(c).flatten(-2).all(-1)
    s = torch.where(bad[..., None], torch.ones_like(s), s)
    c = torch.where(bad[..., None, None], torch.eye(N_COEF, dtype=e.dtype, device=e.device), c)
    cov = c * s[..., :, None] * s[..., None, :]
    # a tiny ridge keeps Cholesky alive for nearly singular published matrices
    ridge = 1e-6 * torch.diagonal(cov, dim1=-2, dim2=-1)
    if extra_var is not None:
        ridge = ridge + torch.where(bad[..., None], torch.zeros_like(s), extra_var.view(n, 2, N_COEF))
    return cov + torch.diag_embed(ridge)


def cholesky(cov):
    """Cholesky factors; matrices that fail fall back to their diagonal."""
    L, info = torch.linalg.cholesky_ex(cov)
    fallback = torch.diag_embed(torch.sqrt(torch.diagonal(cov, dim1=-2, dim2=-1)))
    return torch.where((info > 0)[..., None, None], fallback, L)


_LOWER = torch.tril_indices(N_COEF, N_COEF)  # a Cholesky factor's lower triangle, diagonal included
_LOWER_FLAT = _LOWER[0] * N_COEF + _LOWER[1]


@functools.cache
def _lower_flat_on(device: torch.device) -> torch.Tensor:
    """_LOWER_FLAT on DEVICE, copied there once (unpack_cholesky runs every training step)."""
    return _LOWER_FLAT.to(device)


@torch.no_grad()
def packed_cholesky(corr, block: int = 512):
    """Cholesky factors of published correlation matrices (n,2,1485) for noise draws: their lower
    triangles packed, (n,2,1540) float16 (a quarter of the float32 matrices; draws need no more),
    and (n,2) bool: usable. Identity where a band is missing or its matrix is not positive
    definite (that band's noise is then diagonal)."""
    eye = torch.eye(N_COEF)
    out, oks = [], []
    for i in range(0, len(corr), block):
        part = np.asarray(corr[i:i + block])
        c = torch.nan_to_num(torch.as_tensor(correlation_matrix(part), dtype=torch.float32), nan=0.0) + 1e-5 * eye
        L, info = torch.linalg.cholesky_ex(c)
        ok = (info == 0) & torch.isfinite(L).flatten(-2).all(-1) & torch.as_tensor(np.isfinite(part).all(-1))
        L = torch.where(ok[..., None, None], torch.nan_to_num(L), eye)
        out.append(L[..., _LOWER[0], _LOWER[1]].half().numpy())
        oks.append(ok.numpy())
    if not out:
        return np.zeros((0, 2, len(_LOWER_FLAT)), np.float16), np.zeros((0, 2), bool)
    return np.concatenate(out), np.concatenate(oks)


def unpack_cholesky(packed) -> torch.Tensor:
    """(r,2,1540) packed factors -> (r,2,55,55) float32 (index_copy: the fastest unpacking measured,
    +0.4 ms per 128 degraded rows on one CPU thread over gathering float32 matrices)."""
    L = packed.new_zeros(packed.shape[:-1] + (N_COEF * N_COEF,), dtype=torch.float32)
    L.index_copy_(-1, _lower_flat_on(packed.device), packed.float())
    return L.view(packed.shape[:-1] + (N_COEF, N_COEF))


def gaussian_terms(r, e, ok, model_var=None, corr=None):
    """Per-star chi2 and log-determinant of residuals r (n,110) under cov = C_obs + diag(model_var).

    Coefficients that are not ``ok`` (missing) contribute nothing.
    """
    r = torch.where(ok, r, torch.zeros_like(r))
    mv = torch.zeros_like(r) if model_var is None else model_var
    if corr is None:
        var = torch.where(ok, e ** 2 + mv, torch.ones_like(r))
        return (r ** 2 / var).sum(1), torch.where(ok, torch.log(var), torch.zeros_like(r)).sum(1)
    eo = torch.where(ok, e, torch.ones_like(e))
    L = cholesky(covariance(eo, corr, torch.where(ok, mv, torch.zeros_like(mv))))
    z = torch.linalg.solve_triangular(L, r.reshape(-1, 2, N_COEF, 1), upper=False).reshape(-1, N_X)
    diag = torch.log(torch.diagonal(L, dim1=-2, dim2=-1)).reshape(-1, N_X)
    return (z ** 2).sum(1), 2 * torch.where(ok, diag, torch.zeros_like(diag)).sum(1)


def emulator_outputs(model, p_std, x_mean, x_scale):
    """Flux-normalised coefficient prediction and model variance (n,110) at standardised parameters."""
    mean_std, log_s = model(p_std)
    return mean_std * x_scale + x_mean, (torch.exp(log_s) * x_scale) ** 2


def emulator_nll(model, p_std, x, e, x_mean, x_scale, corr=None):
    """Mean negative log-likelihood per used coefficient, and the per-star reduced chi2."""
    pred, mvar = emulator_outputs(model, p_std, x_mean, x_scale)
    pred, mvar = pred.float(), mvar.float()
    ok = torch.isfinite(x) & torch.isfinite(e) & (e > 0)
    c2, logdet = gaussian_terms(pred - torch.where(ok, x, torch.zeros_like(x)), e, ok, mvar, corr)
    n = ok.sum(1).clamp(min=1)
    # the constant log|C_obs| part of logdet does not matter; dividing by e keeps numbers O(1)
    base = torch.where(ok, torch.log(torch.where(ok, e, torch.ones_like(e)) ** 2), torch.zeros_like(e)).sum(1)
    return (0.5 * (c2 + logdet - base)).sum() / n.sum(), c2 / n


@torch.no_grad()
def _jacobian(fn, p, n_params, h=1e-4):
    """Jacobian d fn / d params (n,110,P) by central differences in ONE batched call.

    (torch.func.jvp decomposes linear layers in Python and was 50x slower here.) Use float64
    parameters: the truncation error is ~h^2 and the rounding error ~1e-16/h.
    """
    n = p.shape[0]
    steps = torch.eye(n_params, dtype=p.dtype, device=p.device) * h
    q = torch.cat([p[:, None, :] + steps, p[:, None, :] - steps], dim=1).reshape(-1, n_params)
    out = fn(q).reshape(n, 2, n_params, -1)
    return ((out[:, 0] - out[:, 1]) / (2 * h)).transpose(1, 2)


def _whiten(v, e, ok, mvar, corr):
    """C^-1/2 v for v (n,110[,P]) with C = C_obs + diag(model var)."""
    n = v.shape[0]
    P = v.shape[2] if v.dim() == 3 else 1
    v3 = torch.where(ok.view(n, N_X, 1), v.reshape(n, N_X, P), torch.zeros(1, dtype=v.dtype, device=v.device))
    if corr is None:
        var = torch.where(ok, e ** 2 + mvar, torch.ones_like(e))
        out = v3 / torch.sqrt(var)[..., None]
    else:
        eo = torch.where(ok, e, torch.ones_like(e))
        L = cholesky(covariance(eo, corr, torch.where(ok, mvar, torch.zeros_like(mvar))))
        out = torch.linalg.solve_triangular(L, v3.reshape(n, 2, N_COEF, P), upper=False).reshape(n, N_X, P)
    out = torch.where(ok.view(n, N_X, 1), out, torch.zeros_like(out))
    return out if v.dim() == 3 else out[..., 0]


@torch.no_grad()
def fit_emulator(model: Emulator, x, e, x_mean, x_scale, prior_mu, prior_sigma, starts, n_iter=30,
                 corr=None):
    """Batched maximum likelihood of the standardised parameters for every star.

    Levenberg–Marquardt on chi2(p) = r^T (C_obs + diag s(p)^2)^-1 r + prior, with r the
    observed minus emulated flux-normalised coefficients (NaN = missing), C_obs diagonal or
    full (corr given). ``starts`` (k,P) are candidate starting points; each star starts from
    its best one. A weak Gaussian prior (standardised prior_mu, prior_sigma) keeps poorly
    constrained parameters near the training range. Returns p (n,P), covariance (n,P,P) =
    inverse Fisher matrix (+ prior), chi2 (n,) without the prior, and used coefficients (n,).
    """
    model.eval()
    n, P = x.shape[0], starts.shape[1]
    ok = torch.isfinite(x) & torch.isfinite(e) & (e > 0)
    xz = torch.where(ok, x, torch.zeros_like(x))
    mean_fn = lambda q: model(q)[0] * x_scale + x_mean  # noqa: E731

    def evaluate(p):
        pred, mvar = emulator_outputs(model, p, x_mean, x_scale)
        z = _whiten(pred - xz, e, ok, mvar, corr)
        return (z ** 2).sum(1), z, mvar

    prior_w = 1.0 / prior_sigma ** 2
    best = torch.full((n,), float("inf"), dtype=x.dtype, device=x.device)
    p = starts[0].expand(n, P).clone()
    for j in range(starts.shape[0]):
        c, _, _ = evaluate(starts[j].expand(n, P).contiguous())
        better = c < best
        best = torch.where(better, c, best)
        p = torch.where(better[:, None], starts[j].expand(n, P), p)
    lam = torch.full((n,), 1e-2, dtype=x.dtype, device=x.device)
    eye = torch.eye(P, dtype=x.dtype, device=x.device)
    prior = lambda q: (((q - prior_mu) / prior_sigma) ** 2).sum(1)  # noqa: E731
    c2, z, mvar = evaluate(p)
    cost = c2 + prior(p)
    for _ in range(n_iter):
        J = _whiten(_jacobian(mean_fn, p, P), e, ok, mvar, corr)
        JtJ = J.transpose(1, 2) @ J + torch.diag_embed(prior_w.expand(n, P))
        g = (J.transpose(1, 2) @ z[..., None])[..., 0] + prior_w * (p - prior_mu)
        A = JtJ + lam[:, None, None] * torch.diag_embed(torch.diagonal(JtJ, dim1=1, dim2=2)) + 1e-9 * eye
        step = torch.linalg.solve(A, -g[..., None])[..., 0].clamp(-1.0, 1.0)  # at most 1 training sigma
        new = p + step
        nc2, nz, nmvar = evaluate(new)
        ncost = nc2 + prior(new)
        accept = ncost < cost
        p = torch.where(accept[:, None], new, p)
        cost = torch.where(accept, ncost, cost)
        c2 = torch.where(accept, nc2, c2)
        z = torch.where(accept[:, None], nz, z)
        mvar = torch.where(accept[:, None], nmvar, mvar)
        lam = torch.where(accept, lam * 0.3, lam * 10).clamp(1e-6, 1e6)
    J = _whiten(_jacobian(mean_fn, p, P), e, ok, mvar, corr)
    fisher = J.transpose(1, 2) @ J + torch.diag_embed(prior_w.expand(n, P))
    cov = torch.linalg.inv(fisher + 1e-12 * eye)
    return p, cov, c2, ok.sum(1)


@torch.no_grad()
def fisher_sigma(model: Emulator, p, e, x_mean, x_scale, corr=None, model_scatter=False):
    """Cramér–Rao bound sqrt(diag(F^-1)) of the standardised parameters at p, F = J^T C^-1 J.

    C is the published covariance (plus the emulator's model scatter if ``model_scatter``).
    """
    P = p.shape[1]
    ok = torch.isfinite(e) & (e > 0)
    mvar = emulator_outputs(model, p, x_mean, x_scale)[1] if model_scatter else torch.zeros_like(e)
    J = _whiten(_jacobian(lambda q: model(q)[0] * x_scale + x_mean, p, P), e, ok, mvar, corr)
    F = J.transpose(1, 2) @ J
    return torch.sqrt(torch.clamp(torch.diagonal(torch.linalg.pinv(F), dim1=1, dim2=2), min=0))
