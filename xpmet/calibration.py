"""Joint calibration of the survey label scales over the whole overlap network.

Model, per label: every survey s measures a star's true value x as

    y = m_s(x) + c_teff,s (teff_s - TEFF_PIVOT) + c_logg,s (logg_s - LOGG_PIVOT) + noise,
    m_s(x) = x + sum_k a_s,k B_k(x)                (piecewise-linear offset, knots KNOTS[label])

with teff_s, logg_s the survey's own values of the star (a label is not its own covariate), B_k the
hat functions (straight on beyond the end knots) and the anchor (the reference survey, or the fallback
survey for a label the reference lacks) m = identity. Noise: (err_scale * err)^2 + floor^2.

Fit: the true values x_i of stars measured by >= 2 surveys are free parameters (a functional
errors-in-variables model, Deming-like: regressing on any one survey's noisy value would bend the
metal-poor end), eliminated exactly at each Gauss-Newton step (Schur complement: a sparse design
reduced to a small dense system in the offsets). Every pair of surveys sharing stars therefore
counts, and a survey that only shares stars with another survey is calibrated through it.
Knots without data stay flat (a first-difference penalty); surveys with fewer than
min_trend_overlap stars get one constant offset. Measurements more than `clip` sigma from their
star's fitted value are dropped and the fit repeated. Error floors and scales per survey are the
maximum of the marginal likelihood of the differences (the three-cornered hat, generalised);
with too few stars the descriptor's floor is kept.

The result is xpmet.survey_calibration (one row per survey and label), which the SQL views apply
(xpmet.calibrate_value); the offsets' uncertainties per knot are the systematic error.
"""
from __future__ import annotations

import math

import numpy as np
import scipy.sparse as sp
from scipy.optimize import minimize

from xpmet.db.models.calibration import survey_calibration

#: knots (on the true scale) of the piecewise-linear offset per label, where metal-poor scales are
#: known to bend; the end segments continue straight (a knot further out, with few stars there,
#: only added noise); two knots = a linear trend across the range
KNOTS = {"feh": (-2.5, -1.5, -0.5, 0.3), "alpha_fe": (0.0, 0.4), "teff": (4000.0, 6500.0),
         "logg": (1.5, 4.5)}
TEFF_PIVOT, LOGG_PIVOT = 5000.0, 3.0
#: prior width of an offset change between neighbouring knots and of a covariate term (label units
#: per K / per dex): weak next to a few stars, decisive where there are none
KNOT_STEP_PRIOR = {"feh": 0.3, "alpha_fe": 0.2, "teff": 300.0, "logg": 0.5}
COEF_PRIOR = {"teff": 1e-3, "logg": 0.5}   # per K and per dex, in units of the calibrated label
#: stars (shared with other surveys) a survey needs before its error floor and scale are fitted
MIN_NOISE_STARS = 30
#: width of the prior on log(err_scale)
SCALE_PRIOR = 0.3
#: the largest error scale and floor the fit may choose (multiples of the median reported error)
MAX_SCALE, MAX_FLOOR = 5.0, 10.0
STATUSES = ("reference", "fallback_scale", "calibrated", "too_few", "uncalibrated")


def basis(x: np.ndarray, knots) -> tuple[np.ndarray, np.ndarray]:
    """Hat functions B (len(x), K) and their derivatives; the end segments continue straight
    beyond the end knots (a compressed metal-poor scale keeps compressing)."""
    k = np.asarray(knots, float)
    B = np.zeros((x.size, k.size))
    dB = np.zeros((x.size, k.size))
    if k.size == 1:
        B[:] = 1.0
        return B, dB
    j = np.clip(np.searchsorted(k, x, side="right") - 1, 0, k.size - 2)
    h = k[j + 1] - k[j]
    t = (x - k[j]) / h
    rows = np.arange(x.size)
    B[rows, j] = 1 - t
    B[rows, j + 1] = t
    dB[rows, j] = -1 / h
    dB[rows, j + 1] = 1 / h
    return B, dB


class _Design:
    """Column layout of one label's fit: K knot offsets, then covariate terms, per fitted survey."""

    def __init__(self, fitted: list[int], K: int, covs: dict[int, list[str]]):
        self.K, self.cols, n = K, {}, 0
        for s in fitted:
            self.cols[s] = (n, covs[s])
            n += K + len(covs[s])
        self.P = n


def _fit_label(label, star, surv, y, err, floor0, Z, anchor, settings):
    """The fit described in the module docstring for one label (arrays over measurements; star and
    surv are dense indices). Returns per survey index a dict of results (absent: not fitted)."""
    knots = np.asarray(KNOTS.get(label, (0.0,)), float)
    K = knots.size
    n_surv = int(surv.max()) + 1
    min_n, min_trend = settings["min_overlap"], settings["min_trend_overlap"]
    clip = float(settings.get("clip") or 4.0)
    keep = np.isfinite(y) & np.isfinite(err) & (err > 0)
    # graph pruning: only surveys with >= min_overlap multi-survey stars that reach the anchor
    status = {}
    while True:
        n_per_star = np.bincount(star, weights=keep, minlength=star.max() + 1)
        multi = keep & (n_per_star[star] >= 2)
        n_stars = np.bincount(surv, weights=multi, minlength=n_surv)
        few = [s for s in range(n_surv) if s != anchor and 0 < n_stars[s] < min_n and keep[surv == s].any()]
        comp = _component(star[multi], surv[multi], anchor, n_surv)
        out = [s for s in range(n_surv) if s != anchor and s not in comp and keep[surv == s].any()]
        if not few and not out:
            break
        for s in few:
            status[s] = "too_few"
        for s in out:
            status.setdefault(s, "too_few" if n_stars[s] > 0 else "uncalibrated")
        keep &= ~np.isin(surv, few + out)
    n_per_star = np.bincount(star, weights=keep, minlength=star.max() + 1)
    keep &= n_per_star[star] >= 2
    if not keep.any() or anchor not in set(surv[keep]):
        return {}, status
    fitted = sorted(set(surv[keep].tolist()) - {anchor})
    idx = np.flatnonzero(keep)
    star, surv, y, err, floor0 = star[idx], surv[idx], y[idx], err[idx], floor0[idx]
    Z = {c: v[idx] for c, v in Z.items()}
    _, star = np.unique(star, return_inverse=True)
    N, M = star.max() + 1, star.size
    covs = {s: [c for c, v in Z.items() if np.isfinite(v[surv == s]).sum() >= min_trend] for s in fitted}
    D_ = _Design(fitted, K, covs)
    zc = {c: np.nan_to_num(v - (TEFF_PIVOT if c == "teff" else LOGG_PIVOT)) for c, v in Z.items()}
    # penalty on the first differences of the knot offsets: where a survey has no data a knot stays
    # flat; a stiff one (one constant offset) for surveys with too few stars for a shape; a weak
    # ridge on the covariate terms. (Where the anchor has no star, only offsets relative to other
    # surveys are measured: the penalty then sets their common part, and the covariance says so.)
    n_star_s = np.bincount(surv, minlength=n_surv)
    steps, ridge = [], np.zeros(D_.P)
    for s in fitted:
        o, cs = D_.cols[s]
        lam = 1e8 if n_star_s[s] < min_trend else 1.0 / KNOT_STEP_PRIOR.get(label, 1.0) ** 2
        steps += [(o + k, lam) for k in range(K - 1)]
        for j, c in enumerate(cs):
            ridge[o + K + j] = 1.0 / COEF_PRIOR[c] ** 2
        ridge[o:o + K] += 1e-9
    R = np.diag(ridge)
    for i, lam in steps:
        R[i:i + 2, i:i + 2] += lam * np.array([[1.0, -1.0], [-1.0, 1.0]])
    # noise model per survey: v = (scale * err)^2 + floor^2, starting from the descriptor's floor
    scale = np.ones(n_surv)
    floor = np.array([np.nanmedian(floor0[surv == s]) if (surv == s).any() else 0.0 for s in range(n_surv)])
    floor = np.nan_to_num(floor)
    prior_floor = floor.copy()
    theta = np.zeros(D_.P)
    w_ok = np.ones(M, bool)
    S = sp.csr_matrix((np.ones(M), (star, np.arange(M))), shape=(N, M))   # star <- measurement

    def design(xs):
        B, dB = basis(xs, knots)
        rows, cols, vals = [], [], []
        m = xs.copy()
        d = np.ones(M)
        for s in fitted:
            o, cs = D_.cols[s]
            sel = np.flatnonzero(surv == s)
            a = theta[o:o + K]
            m[sel] += B[sel] @ a
            d[sel] += dB[sel] @ a
            for k in range(K):
                rows.append(sel), cols.append(np.full(sel.size, o + k)), vals.append(B[sel, k])
            for j, c in enumerate(cs):
                m[sel] += theta[o + K + j] * zc[c][sel]
                rows.append(sel), cols.append(np.full(sel.size, o + K + j)), vals.append(zc[c][sel])
        J = sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(M, D_.P))
        return m, d, J

    tol = 1e-4 * float(np.median(err))

    def gauss_newton(x, w, n_iter=40):
        nonlocal theta
        for _ in range(n_iter):
            m, d, J = design(x[star])
            r = y - m
            D = S @ (w * d * d)
            Dinv = np.where(D > 0, 1 / np.where(D > 0, D, 1), 0)
            U = S @ sp.diags(w * d) @ J                               # N x P
            A = (J.T @ sp.diags(w) @ J).toarray() - (U.T @ sp.diags(Dinv) @ U).toarray() + R
            g = J.T @ (w * r) - U.T @ (Dinv * (S @ (w * d * r))) - R @ theta
            delta = np.linalg.solve(A, g)
            theta = theta + delta
            x = x + Dinv * (S @ (w * d * (r - J @ delta)))
            if np.max(np.abs(delta), initial=0) < tol:
                break
        m, d, J = design(x[star])
        return x, A, y - m, d, J

    def weights():
        v = (scale[surv] * err) ** 2 + floor[surv] ** 2
        return np.where(w_ok, 1.0 / v, 0.0), v

    w, v = weights()
    x = (S @ (w * y)) / (S @ w)
    noise_fitted = set()
    for round_ in range(4):
        x, A, r, d, J = gauss_newton(x, w)
        # the noise model: maximum of the marginal likelihood (true values integrated out)
        noisy = [s for s in range(n_surv) if s in fitted or s == anchor]
        n_kept = S @ w_ok.astype(float)
        free = [s for s in noisy if (((S @ (w_ok & (surv == s))) > 0) & (n_kept >= 2)).sum() >= MIN_NOISE_STARS]
        if free and round_ < 3:
            med = {s: float(np.median(err[surv == s])) for s in free}
            use = w_ok & (n_kept[star] >= 2)   # fixed while the noise model is fitted
            shared = n_kept >= 2

            def nll(p):
                sc, fl = scale.copy(), floor.copy()
                for i, s in enumerate(free):
                    sc[s], fl[s] = p[2 * i], p[2 * i + 1] * med[s]
                vv = (sc[surv] * err) ** 2 + fl[surv] ** 2
                ww = np.where(w_ok, 1 / vv, 0)
                D = S @ (ww * d * d)
                ok = D > 0
                dx = np.where(ok, (S @ (ww * d * r)) / np.where(ok, D, 1), 0)
                rr = r - d * dx[star]
                # + weak priors (reported errors are right unless the data say otherwise; a floor
                # about the descriptor's): two surveys seen mostly with each other only fix the sum
                # of their variances
                prior = sum((math.log(p[2 * i]) / SCALE_PRIOR) ** 2
                            + (p[2 * i + 1] * med[s] / max(prior_floor[s], 1e-3 * med[s])) ** 2
                            for i, s in enumerate(free))
                return float(np.sum(np.log(vv[use])) + np.sum(np.log(D[shared])) + np.sum(ww[use] * rr[use] ** 2)
                             + prior)

            p0 = np.concatenate([[scale[s], floor[s] / med[s]] for s in free])
            bounds = [b for _ in free for b in ((1.0, MAX_SCALE), (0.0, MAX_FLOOR))]
            res = minimize(nll, np.clip(p0, [b[0] for b in bounds], [b[1] for b in bounds]),
                           method="L-BFGS-B", bounds=bounds)
            for i, s in enumerate(free):
                scale[s], floor[s] = res.x[2 * i], res.x[2 * i + 1] * med[s]
            noise_fitted = set(free)
        # robust clipping: a measurement far from its star's fitted value (relative to what the
        # residual should be, leverage included, and to its survey's robust spread of that, so a
        # noise model still being fitted cannot clip wholesale) is dropped; with two surveys both
        # go. Decided afresh each round from every measurement.
        w, v = weights()
        D = S @ (np.where(w_ok, 1 / v, 0) * d * d)
        h = np.where(w_ok, d * d / v / np.where(D[star] > 0, D[star], 1), 0)
        z = r / np.sqrt(v * np.clip(1 - h, 1e-6, None))
        for s in range(n_surv):
            sel = (surv == s) & w_ok
            if sel.sum() >= MIN_NOISE_STARS:
                z[surv == s] /= max(1.0, 1.4826 * float(np.median(np.abs(z[sel]))))
        new_ok = np.abs(z) <= clip
        if round_ >= 1 and (new_ok == w_ok).all():
            break
        w_ok = new_ok
        w, v = weights()
    x, A, r, d, J = gauss_newton(x, w)
    cov = np.linalg.inv(A)
    n_kept = S @ w_ok.astype(float)
    used = w_ok & (n_kept[star] >= 2)
    out = {}
    anchor_stars = set(star[used & (surv == anchor)].tolist())
    for s in sorted(set(fitted) | {anchor}):
        sel = used & (surv == s)
        stars_s = star[sel]
        res = {"n_stars": int(np.unique(stars_s).size),
               "n_pairs": int(np.sum(n_kept[stars_s] - 1)),
               "n_clipped": int(np.sum(~w_ok & (surv == s))),
               "n_shared_with_reference": int(len(anchor_stars & set(stars_s.tolist()))) if s != anchor else 0,
               "err_scale": float(scale[s]), "error_floor_fitted": float(floor[s]),
               "error_floor_prior": float(prior_floor[s]),
               "noise_fitted": s in noise_fitted,
               "scatter": float(1.4826 * np.median(np.abs(r[sel]))) if sel.any() else None,
               "chi2_dof": float(np.mean((r[sel] ** 2 * w[sel]))) if sel.any() else None}
        if s == anchor:
            res.update(knots=knots.tolist(), offsets=[0.0] * K, offset_errs=[0.0] * K, teff_coef=0.0,
                       logg_coef=0.0, zero_point=0.0, zero_point_err=0.0, slope=0.0, slope_err=0.0,
                       pivot=float(np.median(x[stars_s])) if sel.any() else None)
            out[s] = res
            continue
        o, cs = D_.cols[s]
        P_s = K + len(cs)
        C = cov[o:o + P_s, o:o + P_s]
        a = theta[o:o + K]
        coef = dict(zip(cs, theta[o + K:o + P_s]))
        # user-facing summary: the mean offset over the survey's stars and the local trend at the
        # median true value (both with errors from the fit's covariance)
        g_mean = np.asarray(J[np.flatnonzero(sel)][:, o:o + P_s].mean(axis=0)).ravel()
        piv = float(np.median(x[stars_s]))
        B, dB = basis(np.array([piv]), knots)
        g_slope = np.concatenate([dB[0], np.zeros(len(cs))])
        res.update(knots=knots.tolist(), offsets=a.tolist(),
                   offset_errs=np.sqrt(np.clip(np.diag(C)[:K], 0, None)).tolist(),
                   teff_coef=float(coef.get("teff", 0.0)), logg_coef=float(coef.get("logg", 0.0)),
                   zero_point=float(g_mean @ theta[o:o + P_s]),
                   zero_point_err=float(math.sqrt(max(g_mean @ C @ g_mean, 0))),
                   pivot=piv, slope=float(dB[0] @ a), slope_err=float(math.sqrt(max(g_slope @ C @ g_slope, 0))))
        out[s] = res
    return out, status


def _component(star, surv, anchor, n_surv) -> set[int]:
    """Surveys connected to the anchor through shared stars."""
    if star.size == 0:
        return set()
    _, st = np.unique(star, return_inverse=True)
    inc = sp.csr_matrix((np.ones(st.size), (surv, st)), shape=(n_surv, st.max() + 1))
    adj = (inc @ inc.T).toarray() > 0
    seen, todo = {anchor}, [anchor]
    while todo:
        s = todo.pop()
        for t in np.flatnonzero(adj[s]):
            if int(t) not in seen:
                seen.add(int(t))
                todo.append(int(t))
    return seen


LABELS = ("teff", "logg", "feh", "alpha_fe")
# one binary COPY of fixed-width rows (xpmet.io.copyout.select_arrays) of the stars measured by 2+
# surveys (all the fit uses), and one row of every other (survey, label), so that it gets a status
_READ = f"""
SELECT source_id, survey_id, label, value, err, floor0 FROM (
  SELECT source_id, survey_id::int4, array_position(ARRAY{list(LABELS)}::text[], label)::int4 - 1 AS label,
         value, coalesce(err_stat, 'NaN') AS err, coalesce(sqrt(greatest(err ^ 2 - err_stat ^ 2, 0)), 0) AS floor0,
         min(survey_id) OVER star <> max(survey_id) OVER star AS shared,
         row_number() OVER (PARTITION BY survey_id, label ORDER BY source_id) = 1 AS first
  FROM xpmet.survey_source_label WHERE label = ANY (ARRAY{list(LABELS)}::text[])
  WINDOW star AS (PARTITION BY source_id)) s
WHERE shared OR first
ORDER BY label, survey_id, source_id"""   # one order: the same data always give the same fit


def fit(rows: dict, reference: str, fallback: str | None, settings: dict) -> list[dict]:
    """The calibration rows for every (survey, label) in ``rows`` (arrays: source_id, survey_id,
    survey, label, value, err, floor0; one entry per source, survey and label)."""
    out = []
    names = dict(zip(rows["survey_id"].tolist(), rows["survey"].tolist()))
    # each survey's own Teff and log g of a star, the covariates of the other labels' fits
    by_star = {}
    for cov in ("teff", "logg"):
        c = rows["label"] == cov
        by_star[cov] = dict(zip(zip(rows["source_id"][c].tolist(), rows["survey_id"][c].tolist()),
                                rows["value"][c].tolist()))
    for label in sorted(set(rows["label"].tolist())):
        sel = rows["label"] == label
        sid, src = rows["survey_id"][sel], rows["source_id"][sel]
        present = sorted(set(sid.tolist()))
        by_name = {names[s]: s for s in present}
        if reference in by_name:
            anchor_id, anchor_status = by_name[reference], "reference"
        elif fallback and fallback in by_name:
            anchor_id, anchor_status = by_name[fallback], "fallback_scale"
        else:
            anchor_id, anchor_status = None, None
        res, status = {}, {}
        if anchor_id is not None:
            s_ids = np.array(present)
            surv = np.searchsorted(s_ids, sid)
            _, star = np.unique(src, return_inverse=True)
            Z = {cov: np.array([key.get(k, np.nan) for k in zip(src.tolist(), sid.tolist())], float)
                 for cov, key in by_star.items() if cov != label}
            y = rows["value"][sel].astype(float)
            err = rows["err"][sel].astype(float)
            floor0 = np.nan_to_num(rows["floor0"][sel].astype(float))
            r, st = _fit_label(label, star, surv, y, err, floor0, Z, int(np.searchsorted(s_ids, anchor_id)), settings)
            res = {int(s_ids[k]): v for k, v in r.items()}
            status = {int(s_ids[k]): v for k, v in st.items()}
        for s in present:
            row = {"survey_id": s, "survey": names[s], "label": label,
                   "calibrated_on": names[anchor_id] if anchor_id is not None else None}
            if s == anchor_id:
                row["status"] = anchor_status
            elif s in res:
                row["status"] = "calibrated"
            else:
                row["status"] = status.get(s, "uncalibrated")
            r = res.get(s, {})
            if s == anchor_id and not r:
                knots = list(KNOTS.get(label, (0.0,)))
                r = {"knots": knots, "offsets": [0.0] * len(knots), "offset_errs": [0.0] * len(knots),
                     "zero_point": 0.0, "zero_point_err": 0.0}
            row.update(r, teff_pivot=TEFF_PIVOT, logg_pivot=LOGG_PIVOT)
            out.append(row)
    return out


#: what a fit writes per survey and label: xpmet.survey_calibration's columns but the reference
#: (the setting's, added on insert) and fitted_at (the server's default)
COLUMNS = tuple(c.name for c in survey_calibration.columns if c.name not in ("reference", "fitted_at"))


def _read(conn) -> dict:
    """survey_source_label rows as numpy arrays (psycopg connection, in the caller's transaction)."""
    from xpmet.io.copyout import select_arrays
    from xpmet.io.pgcopy import Col
    conn.execute("SET LOCAL enable_nestloop = off")
    names = dict(conn.execute("SELECT survey_id::int4, name FROM xpmet.survey").fetchall())
    keys = ("source_id", "survey_id", "label", "value", "err", "floor0")
    cols = [Col(k, t) for k, t in zip(keys, ("i8", "i4", "i4", "f8", "f8", "f8"))]
    blocks = list(select_arrays(conn, _READ, None, cols))
    out = {k: np.concatenate([np.asarray(b[k]) for b in blocks]) if blocks else np.empty(0) for k in keys}
    out["source_id"] = out["source_id"].astype(np.int64)
    out["survey_id"] = out["survey_id"].astype(np.int32)
    out["survey"] = np.array([names.get(i) for i in range(max(names, default=0) + 1)], object)[out["survey_id"]]
    out["label"] = np.array(LABELS, object)[out["label"].astype(np.int64)]
    for k in ("value", "err", "floor0"):
        out[k] = out[k].astype(float)
    return out


def refresh_on(conn) -> list[dict]:
    """Fit and store xpmet.survey_calibration inside the caller's psycopg transaction."""
    cfg = conn.execute("SELECT reference, fallback, min_overlap, min_trend_overlap, clip "
                       "FROM xpmet.label_setting WHERE id = 1").fetchone()
    settings = {"min_overlap": max(int(cfg[2]), 2), "min_trend_overlap": int(cfg[3]), "clip": float(cfg[4])}
    rows = _read(conn)
    result = fit(rows, cfg[0], cfg[1], settings) if rows["source_id"].size else []
    conn.execute("DELETE FROM xpmet.survey_calibration")
    cols = ", ".join(COLUMNS)
    marks = ", ".join(f"%({c})s" for c in COLUMNS)
    with conn.cursor() as cur:
        cur.executemany(f"INSERT INTO xpmet.survey_calibration ({cols}, reference) VALUES ({marks}, %(reference)s)",
                        [{**{c: r.get(c) for c in COLUMNS}, "reference": cfg[0]} for r in result])
    return result
