"""The 26 columns of xp_continuous_mean_spectrum and their text for one batch of stars.

Layout as Gaia's ``XpContinuousMeanSpectrum_*.csv.gz``: basis function ids 56 (BP) / 57 (RP),
55 parameters per band, arrays as quoted ``"[...]"`` (coefficients float64, errors and
correlations float32); a missing band, as in the real archive files, has empty integer and array
fields and ``nan`` in its float columns.
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa

from xpmet.simulate.writers import Column, array_strings
from xpmet.xp_coefficients import N_COEF

SOLUTION_ID = 4545469030156206080  # the solution_id the real DR3 XP sample rows carry
_BASIS_ID = {"bp": 56, "rp": 57}


def _band_columns(band: str) -> list[Column]:
    b = band.upper()
    return [
        Column(f"{band}_basis_function_id", "int16", None, f"Identifier defining the set of basis functions for the {b} spectrum representation"),
        Column(f"{band}_degrees_of_freedom", "int16", None, f"Degrees of freedom for the {b} spectrum representation"),
        Column(f"{band}_n_parameters", "int16", None, f"Number of parameters for the {b} spectrum representation"),
        Column(f"{band}_n_measurements", "int16", None, f"Number of measurements used for the {b} spectrum generation"),
        Column(f"{band}_n_rejected_measurements", "int16", None, f"Number of rejected measurements in the {b} spectrum generation"),
        Column(f"{band}_standard_deviation", "float32", None, f"Standard deviation for the {b} spectrum representation"),
        Column(f"{band}_chi_squared", "float32", None, f"Chi squared for the {b} spectrum representation"),
        Column(f"{band}_coefficients", "string", None, f"Basis function coefficients for the {b} spectrum representation", "float64[null]"),
        Column(f"{band}_coefficient_errors", "string", None, f"Basis function coefficient errors for the {b} spectrum representation", "float32[null]"),
        Column(f"{band}_coefficient_correlations", "string", None, f"Correlation matrix for {b} coefficients", "float32[null]"),
        Column(f"{band}_n_relevant_bases", "int16", None, f"Number of bases that are relevant for the representation of this mean {b} spectrum"),
        Column(f"{band}_relative_shrinking", "float32", None, f"Measure of the relative shrinking of the coefficient vector when truncation is applied for the mean {b} spectrum"),
    ]


COLUMNS = [
    Column("source_id", "int64", None, "Unique source identifier (unique within a particular Data Release)"),
    Column("solution_id", "int64", None, "Solution Identifier"),
] + _band_columns("bp") + _band_columns("rp")


class CorrelationText:
    """Correlation templates formatted once: '"[...]"' strings indexed by template number."""

    def __init__(self, flat: dict[str, np.ndarray]):
        self.text = {band: array_strings(flat[band].astype(np.float32)) for band in flat}

    def take(self, band: str, idx: np.ndarray, missing: np.ndarray) -> pa.Array:
        import pyarrow.compute as pc

        out = self.text[band].take(pa.array(idx))
        if np.any(missing):
            out = pc.if_else(pa.array(missing), pa.scalar(""), out)
        return out


def values(source_id: np.ndarray, obs: dict[str, dict[str, np.ndarray]], missing: dict[str, np.ndarray],
           corr_text: CorrelationText) -> dict[str, object]:
    """Column values for the ECSV writer; ``obs[band]`` comes from :func:`xp_noise.observe`."""
    n = source_id.size
    out: dict[str, object] = {"source_id": source_id, "solution_id": np.full(n, SOLUTION_ID, np.int64)}
    for band in ("bp", "rp"):
        o, miss = obs[band], missing[band]

        def scalar(v, dtype):
            v = np.asarray(v).astype(np.float64)
            v[miss] = np.nan
            if dtype == "f":  # a missing band's float columns read "nan" in Gaia's files, its integers are empty
                return pa.array(v.astype(np.float32)).cast(pa.string())
            return pa.array(np.where(miss, 0, v).astype(np.int64), mask=miss)

        out[f"{band}_basis_function_id"] = scalar(np.full(n, _BASIS_ID[band]), "i")
        out[f"{band}_degrees_of_freedom"] = scalar(o["degrees_of_freedom"], "i")
        out[f"{band}_n_parameters"] = scalar(np.full(n, N_COEF), "i")
        out[f"{band}_n_measurements"] = scalar(o["n_measurements"], "i")
        out[f"{band}_n_rejected_measurements"] = scalar(o["n_rejected_measurements"], "i")
        out[f"{band}_standard_deviation"] = scalar(o["standard_deviation"], "f")
        out[f"{band}_chi_squared"] = scalar(o["chi_squared"], "f")
        out[f"{band}_coefficients"] = array_strings(o["coefficients"].astype(np.float64), miss)
        out[f"{band}_coefficient_errors"] = array_strings(o["coefficient_errors"].astype(np.float32), miss)
        out[f"{band}_coefficient_correlations"] = corr_text.take(band, o["template"], miss)
        out[f"{band}_n_relevant_bases"] = scalar(o["n_relevant_bases"], "i")
        out[f"{band}_relative_shrinking"] = scalar(o["relative_shrinking"], "f")
    return out
