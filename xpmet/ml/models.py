"""The two model kinds, their losses, and the emulator's per-star maximum-likelihood fit.

- :class:`Estimator`: XP (flux-normalised, standardised coefficients + log errors + missing-band
  flags) -> mean and log-sigma of (teff, logg, feh, alpha_fe). Trained with a heteroscedastic
  Gaussian likelihood whose variance is sigma_model^2 + sigma_label^2, so the survey label errors
  are not learnt as model uncertainty; missing labels are masked out.
- :class:`Emulator`: (teff, logg, feh, alpha_fe, A_G) -> flux-normalised XP coefficients,
  trained with the chi-squared of the observed coefficients (diagonal errors, or the full
  covariance reconstructed by :mod:`xpmet.xp` when the file carries correlations).
- :func:`fit_emulator`: batched Levenberg–Marquardt maximum likelihood of the labels for many
  stars at once, with Fisher-matrix uncertainties and the reduced chi-squared.
"""
from __future__ import annotations

import torch
from torch import nn

from xpmet.xp import N_COEF, _TRIL

N_X = 2 * N_COEF
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

    def __init__(self, hidden=(256, 256), dropout=0.0, n_labels=4):
        super().__init__()
        self.n_labels = n_labels
        self.net = mlp(ESTIMATOR_INPUTS, hidden, 2 * n_labels, dropout)

    def forward(self, inputs):
        out = self.net(inputs)
        mu, log_sigma = out[:, :self.n_labels], out[:, self.n_labels:]
        return mu, log_sigma.clamp(LOG_SIGMA_MIN, LOG_SIGMA_MAX)


class Emulator(nn.Module):
    """Standardised (teff, logg, feh, alpha_fe, ag) -> standardised flux-normalised coefficients (110)."""

    def __init__(self, hidden=(128, 128, 128), n_params=5):
        super().__init__()
        self.n_params = n_params
        self.net = mlp(n_params, hidden, N_X)

    def forward(self, params):
        return self.net(params)


def estimator_inputs(x_std, e_std, missing):
    """Network inputs: standardised coefficients (0 where missing), log of the standardised errors, flags.

    x_std = (x - mean)/std and e_std = e/std per coefficient (torch, (n,110)); missing (n,2).
    """
    miss = torch.isnan(x_std)
    x = torch.where(miss, torch.zeros_like(x_std), x_std)
    le = torch.log(torch.where(miss | ~(e_std > 0), torch.ones_like(e_std), e_std))
    return torch.cat([x, le, missing.to(x.dtype)], dim=1)


def heteroscedastic_nll(mu, log_sigma, y, y_err):
    """Mean Gaussian NLL with variance sigma_model^2 + sigma_label^2; NaN labels are masked out."""
    ok = torch.isfinite(y)
    var = torch.exp(2 * log_sigma) + torch.where(torch.isfinite(y_err), y_err, torch.zeros_like(y_err)) ** 2
    r = torch.where(ok, y - mu, torch.zeros_like(mu))
    nll = 0.5 * (r ** 2 / var + torch.log(var))
    nll = torch.where(ok, nll, torch.zeros_like(nll))
    return nll.sum() / ok.sum().clamp(min=1)


def whitening(e, corr, std_dev=None):
    """Cholesky factors L (n,2,55,55) of the two bands' covariances, in the units of ``e``.

    e (n,110) errors (NaN band -> identity), corr (n,2,1485) Gaia correlations.
    """
    n = e.shape[0]
    c = torch.zeros(n, 2, N_COEF, N_COEF, dtype=e.dtype, device=e.device)
    r, k = torch.as_tensor(_TRIL[0], device=e.device), torch.as_tensor(_TRIL[1], device=e.device)
    c[:, :, r, k] = corr.to(e.dtype)
    c = c + c.transpose(-1, -2)
    c.diagonal(dim1=-2, dim2=-1).fill_(1.0)
    s = e.view(n, 2, N_COEF)
    if std_dev is not None:
        s = s / std_dev.to(e.dtype)[..., None]
    bad = ~torch.isfinite(s).all(-1) | ~torch.isfinite(c).flatten(-2).all(-1)
    s = torch.where(bad[..., None], torch.ones_like(s), s)
    cov = c * s[..., :, None] * s[..., None, :]
    eye = torch.eye(N_COEF, dtype=e.dtype, device=e.device)
    cov = torch.where(bad[..., None, None], eye, cov)
    # a tiny ridge keeps Cholesky alive for nearly singular published matrices
    cov = cov + 1e-6 * torch.diagonal(cov, dim1=-2, dim2=-1).mean(-1)[..., None, None] * eye
    L, info = torch.linalg.cholesky_ex(cov)
    fallback = torch.diag_embed(s)
    return torch.where((info > 0)[..., None, None], fallback, L)


def chi2(pred, x, e, L=None):
    """Per-star chi-squared and number of used coefficients; NaN coefficients are skipped.

    With Cholesky factors L of the covariance the residuals are whitened (full covariance).
    """
    ok = torch.isfinite(x) & torch.isfinite(e) & (e > 0)
    r = torch.where(ok, pred - x, torch.zeros_like(x))
    if L is None:
        z = r / torch.where(ok, e, torch.ones_like(e))
    else:
        z = torch.linalg.solve_triangular(L, r.view(-1, 2, N_COEF, 1), upper=False).view(-1, N_X)
        z = torch.where(ok, z, torch.zeros_like(z))
    return (z ** 2).sum(1), ok.sum(1)


def emulator_loss(pred_std, x, e, x_mean, x_scale, L=None):
    """Mean reduced chi-squared of the emulator's prediction against the observed coefficients."""
    pred = pred_std * x_scale + x_mean
    c2, n = chi2(pred, x, e, L)
    return (c2 / n.clamp(min=1)).mean()


@torch.no_grad()
def _jacobian(model, p, n_params):
    """Jacobian d out / d params (n,110,P) by forward-mode differentiation (P is small)."""
    cols = []
    for k in range(n_params):
        t = torch.zeros_like(p)
        t[:, k] = 1.0
        _, jv = torch.func.jvp(model, (p,), (t,))
        cols.append(jv)
    return torch.stack(cols, dim=2)


def fit_emulator(model: Emulator, x, e, x_mean, x_scale, prior_mu, prior_sigma, starts, n_iter=30, L=None):
    """Batched maximum likelihood of the standardised parameters for every star.

    x, e (n,110) observed normalised coefficients and errors (NaN = missing); starts (k,P)
    candidate starting points (standardised) — each star starts from its best candidate.
    A weak Gaussian prior (prior_mu, prior_sigma, standardised) keeps poorly constrained
    parameters inside the training range. Returns p (n,P), covariance (n,P,P) from the Fisher
    matrix, chi2 (n,), n_used (n,).
    """
    model.eval()
    n, P = x.shape[0], starts.shape[1]
    ok = torch.isfinite(x) & torch.isfinite(e) & (e > 0)
    xz = torch.where(ok, x, torch.zeros_like(x))
    w_sig = torch.where(ok, e, torch.ones_like(e))

    def residual(pred):
        r = pred - xz
        if L is None:
            return torch.where(ok, r / w_sig, torch.zeros_like(r))
        z = torch.linalg.solve_triangular(L, r.view(-1, 2, N_COEF, 1), upper=False).view(-1, N_X)
        return torch.where(ok, z, torch.zeros_like(z))

    def whiten_jac(J):
        if L is None:
            return torch.where(ok[..., None], J / w_sig[..., None], torch.zeros_like(J))
        Jw = torch.linalg.solve_triangular(L, J.view(-1, 2, N_COEF, P), upper=False).view(-1, N_X, P)
        return torch.where(ok[..., None], Jw, torch.zeros_like(Jw))

    def forward(p):
        return model(p) * x_scale + x_mean

    with torch.no_grad():
        # best starting point per star: evaluate every candidate (k small), keep the lowest chi2
        best = torch.full((n,), float("inf"), dtype=x.dtype, device=x.device)
        p = starts[0].expand(n, P).clone()
        preds = forward(starts)  # (k,110)
        for j in range(starts.shape[0]):
            z = residual(preds[j].expand(n, -1))
            c = (z ** 2).sum(1)
            better = c < best
            best = torch.where(better, c, best)
            p = torch.where(better[:, None], starts[j].expand(n, P), p)
        lam = torch.full((n,), 1e-2, dtype=x.dtype, device=x.device)
        prior_w = 1.0 / prior_sigma ** 2
        eye = torch.eye(P, dtype=x.dtype, device=x.device)

        def objective(p):
            z = residual(forward(p))
            return (z ** 2).sum(1) + (((p - prior_mu) / prior_sigma) ** 2).sum(1), z

        cost, z = objective(p)
        for _ in range(n_iter):
            J = whiten_jac(_jacobian(lambda q: forward(q), p, P))
            JtJ = J.transpose(1, 2) @ J + torch.diag_embed(prior_w.expand(n, P))
            g = (J.transpose(1, 2) @ z[..., None])[..., 0] + prior_w * (p - prior_mu)
            A = JtJ + lam[:, None, None] * torch.diag_embed(torch.diagonal(JtJ, dim1=1, dim2=2)) + 1e-9 * eye
            step = torch.linalg.solve(A, -g[..., None])[..., 0]
            step = step.clamp(-1.0, 1.0)  # never jump more than one training sigma per iteration
            new = p + step
            new_cost, new_z = objective(new)
            accept = new_cost < cost
            p = torch.where(accept[:, None], new, p)
            cost = torch.where(accept, new_cost, cost)
            z = torch.where(accept[:, None], new_z, z)
            lam = torch.where(accept, lam * 0.3, lam * 10).clamp(1e-6, 1e6)
        J = whiten_jac(_jacobian(lambda q: forward(q), p, P))
        fisher = J.transpose(1, 2) @ J + torch.diag_embed(prior_w.expand(n, P))
        cov = torch.linalg.inv(fisher + 1e-12 * eye)
        c2 = (z ** 2).sum(1)
        return p, cov, c2, ok.sum(1)


def fisher_sigma(model: Emulator, p, e, x_scale, x_mean, L=None):
    """Cramér–Rao bound: sqrt(diag((J^T C^-1 J)^-1)) at parameters p (standardised), no prior."""
    P = p.shape[1]
    ok = torch.isfinite(e) & (e > 0)
    with torch.no_grad():
        J = _jacobian(lambda q: model(q) * x_scale + x_mean, p, P)
        if L is None:
            Jw = torch.where(ok[..., None], J / torch.where(ok, e, torch.ones_like(e))[..., None],
                             torch.zeros_like(J))
        else:
            Jw = torch.linalg.solve_triangular(L, J.view(-1, 2, N_COEF, P), upper=False).view(-1, N_X, P)
            Jw = torch.where(ok[..., None], Jw, torch.zeros_like(Jw))
        F = Jw.transpose(1, 2) @ Jw
        cov = torch.linalg.pinv(F)
    return torch.sqrt(torch.clamp(torch.diagonal(cov, dim1=1, dim2=2), min=0))

