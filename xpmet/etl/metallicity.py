"""Metallicity scales: surveys that publish [M/H] instead of [Fe/H].

An [M/H] from an alpha-enhanced fit is not [Fe/H]: averaging the two would bias metal-poor,
alpha-rich stars by ~0.2 dex. With the survey's own [alpha/Fe], Salaris, Chieffi & Straniero
(1993, ApJ 414, 580) give  [M/H] = [Fe/H] + log10(0.638 f + 0.362),  f = 10^[alpha/Fe].
"""
from __future__ import annotations

import numpy as np

#: what a descriptor's feh column holds: [Fe/H] itself, or an overall [M/H] to convert
METALLICITY_KINDS = ("feh", "m_h")
_A, _B = 0.638, 0.362


def feh_from_mh(mh, mh_err, alpha_fe, alpha_fe_err):
    """([Fe/H], its error) from [M/H] and [alpha/Fe]; NaN where either is unknown.

    The error adds the [alpha/Fe] term in quadrature: d[Fe/H]/d[alpha/Fe] = -0.638 f / (0.638 f + 0.362).
    """
    mh, alpha = np.asarray(mh, float), np.asarray(alpha_fe, float)
    f = np.power(10.0, alpha)
    feh = mh - np.log10(_A * f + _B)
    slope = _A * f / (_A * f + _B)
    e_mh = np.asarray(mh_err, float) if mh_err is not None else np.full(mh.shape, np.nan)
    e_a = np.asarray(alpha_fe_err, float) if alpha_fe_err is not None else np.zeros(mh.shape)
    err = np.sqrt(e_mh ** 2 + (slope * np.nan_to_num(e_a)) ** 2)
    return feh, err
