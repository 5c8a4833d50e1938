"""Reader of Gaia DR3 ``xp_continuous_mean_spectrum`` files, in every format users get them.

Yields :class:`~xpmet.io.reader.Chunk` s holding the 26 archive columns as numpy arrays
(coefficients float64 (n, 55), errors and correlations float32 (n, 55) / (n, 1485), a missing
band all-NaN — written as NULL, never zeros). Flattened user layouts (``bp_coeff_0..54``,
``e_bp_coeff_0..54``, as in xp_spectral_lines) are recognised.

    >>> from xpmet.io.xp_reader import read_xp
    >>> for chunk in read_xp("XpContinuousMeanSpectrum_000000-003111.csv.gz"):
    ...     chunk.data["bp_coefficients"].shape
"""
from __future__ import annotations

import numpy as np

from xpmet.io.reader import Problem, TableSpec, read_table, source_id_problems
from xpmet.xp_coefficients import N_COEF, N_CORR

BANDS = ("bp", "rp")
CORRELATION_COLUMNS = tuple(f"{b}_coefficient_correlations" for b in BANDS)


def _scalars():
    s = {"source_id": "i8", "solution_id": "i8"}
    for b in BANDS:
        s.update({f"{b}_basis_function_id": "i2", f"{b}_degrees_of_freedom": "i2", f"{b}_n_parameters": "i2",
                  f"{b}_n_measurements": "i2", f"{b}_n_rejected_measurements": "i2",
                  f"{b}_standard_deviation": "f4", f"{b}_chi_squared": "f4",
                  f"{b}_n_relevant_bases": "i2", f"{b}_relative_shrinking": "f4"})
    return s


def _arrays():
    a = {}
    for b in BANDS:
        a[f"{b}_coefficients"] = (N_COEF, "f8")
        a[f"{b}_coefficient_errors"] = (N_COEF, "f4")
        a[f"{b}_coefficient_correlations"] = (N_CORR, "f4")
    return a


def _flattened():
    f = {}
    for b in BANDS:
        f[f"{b}_coefficients"] = (f"{b}_coeff_{{}}", f"{b}_coefficients_{{}}", f"{b}_coefficient_{{}}")
        f[f"{b}_coefficient_errors"] = (f"e_{b}_coeff_{{}}", f"{b}_coeff_err_{{}}", f"{b}_coeff_error_{{}}",
                                        f"{b}_coefficient_errors_{{}}", f"{b}_coefficient_error_{{}}")
    return f


def check_xp(data: dict) -> list[Problem]:
    """Rows that cannot be XP spectra: no source_id, NaN/inf inside a present band, negative errors,
    correlations outside [-1, 1], errors without coefficients."""
    problems = source_id_problems(data["source_id"])
    for b in BANDS:
        coef = data.get(f"{b}_coefficients")
        present = None
        for name in (f"{b}_coefficients", f"{b}_coefficient_errors", f"{b}_coefficient_correlations"):
            a = data.get(name)
            if a is None:
                continue
            finite = np.isfinite(a)
            row_any = finite.any(axis=1)
            bad = row_any & ~finite.all(axis=1) | (~row_any & np.isinf(a).any(axis=1))
            if bad.any():
                problems.append(Problem(np.flatnonzero(bad), name, "NaN or infinite value inside the array"))
            if name.endswith("errors"):
                neg = row_any & (np.where(finite, a, 0) < 0).any(axis=1)
                if neg.any():
                    problems.append(Problem(np.flatnonzero(neg), name, "negative coefficient error"))
                if coef is not None:
                    orphan = row_any & ~present
                    if orphan.any():
                        problems.append(Problem(np.flatnonzero(orphan), name,
                                                "errors given for a band without coefficients"))
            if name.endswith("correlations"):
                out = row_any & (np.abs(np.where(finite, a, 0)) > 1).any(axis=1)
                if out.any():
                    problems.append(Problem(np.flatnonzero(out), name, "correlation outside [-1, 1]"))
            if name.endswith("coefficients"):
                present = row_any
    return problems


XP_SPEC = TableSpec(
    name="xp_continuous",
    scalars=_scalars(),
    arrays=_arrays(),
    required=("source_id",),
    one_of=("bp_coefficients", "rp_coefficients"),
    flattened=_flattened(),
    aliases={"source_id_gaiadr3": "source_id", "dr3_source_id": "source_id"},
    check=check_xp,
)

#: the 26 archive columns, in archive order (what xpmet.xp_continuous stores besides load_id)
XP_COLUMNS = ["source_id", "solution_id"] + [
    f"{b}_{c}" for b in BANDS for c in (
        "basis_function_id", "degrees_of_freedom", "n_parameters", "n_measurements", "n_rejected_measurements",
        "standard_deviation", "chi_squared", "coefficients", "coefficient_errors", "coefficient_correlations",
        "n_relevant_bases", "relative_shrinking")]


def read_xp(path, chunk_rows: int = 20000, correlations: bool = True, on_bad=None, block_bytes: int = 1 << 24,
            on_warning=None):
    """Chunks of XP spectra from ``path`` (any supported format); ``correlations=False`` skips them;
    ``on_warning`` receives columns that look like misspellings of absent XP columns."""
    skip = () if correlations else CORRELATION_COLUMNS
    return read_table(path, XP_SPEC, chunk_rows=chunk_rows, skip=skip, on_bad=on_bad, block_bytes=block_bytes,
                      on_warning=on_warning)
