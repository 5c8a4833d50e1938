"""Reader of Gaia DR3 ``gaia_source`` files (bulk GaiaSource_*.csv.gz, archive CSV/ECSV/FITS/VOTable).

Only the columns xpmet stores are read (the bulk files have 152); absent optional columns load
as NULL, and a column that looks like a misspelling of one of them is reported (file, column and
the likely intended name). Missing values ("", "null", NaN) become NULL.
"""
from __future__ import annotations

import numpy as np

from xpmet.db.models.columns import type_code
from xpmet.db.models.core import gaia_source as gaia_source_table
from xpmet.io.reader import Problem, TableSpec, read_table, source_id_problems

#: the gaia_source columns xpmet stores, in table order, and their types: from the table model
GAIA_COLUMNS = [c.name for c in gaia_source_table.columns if c.name != "load_id"]
_TYPES = {c.name: type_code(c) for c in gaia_source_table.columns if c.name != "load_id"}

#: every column of the Gaia DR3 gaia_source table (bulk files carry all 152): not reported as unknown
DR3_COLUMNS = frozenset((
    "solution_id", "designation", "source_id", "random_index", "ref_epoch", "ra", "ra_error", "dec",
    "dec_error", "parallax", "parallax_error", "parallax_over_error", "pm", "pmra", "pmra_error", "pmdec",
    "pmdec_error", "ra_dec_corr", "ra_parallax_corr", "ra_pmra_corr", "ra_pmdec_corr", "dec_parallax_corr",
    "dec_pmra_corr", "dec_pmdec_corr", "parallax_pmra_corr", "parallax_pmdec_corr", "pmra_pmdec_corr",
    "astrometric_n_obs_al", "astrometric_n_obs_ac", "astrometric_n_good_obs_al", "astrometric_n_bad_obs_al",
    "astrometric_gof_al", "astrometric_chi2_al", "astrometric_excess_noise", "astrometric_excess_noise_sig",
    "astrometric_params_solved", "astrometric_primary_flag", "nu_eff_used_in_astrometry", "pseudocolour",
    "pseudocolour_error", "ra_pseudocolour_corr", "dec_pseudocolour_corr", "parallax_pseudocolour_corr",
    "pmra_pseudocolour_corr", "pmdec_pseudocolour_corr", "astrometric_matched_transits",
    "visibility_periods_used", "astrometric_sigma5d_max", "matched_transits", "new_matched_transits",
    "matched_transits_removed", "ipd_gof_harmonic_amplitude", "ipd_gof_harmonic_phase", "ipd_frac_multi_peak",
    "ipd_frac_odd_win", "ruwe", "scan_direction_strength_k1", "scan_direction_strength_k2",
    "scan_direction_strength_k3", "scan_direction_strength_k4", "scan_direction_mean_k1",
    "scan_direction_mean_k2", "scan_direction_mean_k3", "scan_direction_mean_k4", "duplicated_source",
    "phot_g_n_obs", "phot_g_mean_flux", "phot_g_mean_flux_error", "phot_g_mean_flux_over_error",
    "phot_g_mean_mag", "phot_bp_n_obs", "phot_bp_mean_flux", "phot_bp_mean_flux_error",
    "phot_bp_mean_flux_over_error", "phot_bp_mean_mag", "phot_rp_n_obs", "phot_rp_mean_flux",
    "phot_rp_mean_flux_error", "phot_rp_mean_flux_over_error", "phot_rp_mean_mag", "phot_bp_rp_excess_factor",
    "phot_bp_n_contaminated_transits", "phot_bp_n_blended_transits", "phot_rp_n_contaminated_transits",
    "phot_rp_n_blended_transits", "phot_proc_mode", "bp_rp", "bp_g", "g_rp", "radial_velocity",
    "radial_velocity_error", "rv_method_used", "rv_nb_transits", "rv_nb_deblended_transits",
    "rv_visibility_periods_used", "rv_expected_sig_to_noise", "rv_renormalised_gof", "rv_chisq_pvalue",
    "rv_time_duration", "rv_amplitude_robust", "rv_template_teff", "rv_template_logg", "rv_template_fe_h",
    "rv_atm_param_origin", "vbroad", "vbroad_error", "vbroad_nb_transits", "grvs_mag", "grvs_mag_error",
    "grvs_mag_nb_transits", "rvs_spec_sig_to_noise", "phot_variable_flag", "l", "b", "ecl_lon", "ecl_lat",
    "in_qso_candidates", "in_galaxy_candidates", "non_single_star", "has_xp_continuous", "has_xp_sampled",
    "has_rvs", "has_epoch_photometry", "has_epoch_rv", "has_mcmc_gspphot", "has_mcmc_msc",
    "in_andromeda_survey", "classprob_dsc_combmod_quasar", "classprob_dsc_combmod_galaxy",
    "classprob_dsc_combmod_star", "teff_gspphot", "teff_gspphot_lower", "teff_gspphot_upper", "logg_gspphot",
    "logg_gspphot_lower", "logg_gspphot_upper", "mh_gspphot", "mh_gspphot_lower", "mh_gspphot_upper",
    "distance_gspphot", "distance_gspphot_lower", "distance_gspphot_upper", "azero_gspphot",
    "azero_gspphot_lower", "azero_gspphot_upper", "ag_gspphot", "ag_gspphot_lower", "ag_gspphot_upper",
    "ebpminrp_gspphot", "ebpminrp_gspphot_lower", "ebpminrp_gspphot_upper", "libname_gspphot",
))



def check_gaia(data: dict) -> list[Problem]:
    """Rows that cannot be Gaia sources: no source_id, no finite position, position out of range, inf values."""
    problems = source_id_problems(data["source_id"])
    ra, dec = data["ra"], data["dec"]
    bad = ~np.isfinite(ra) | (ra < 0) | (ra >= 360)
    if bad.any():
        problems.append(Problem(np.flatnonzero(bad), "ra", "ra missing, infinite or outside [0, 360)"))
    bad = ~np.isfinite(dec) | (np.abs(dec) > 90)
    if bad.any():
        problems.append(Problem(np.flatnonzero(bad), "dec", "dec missing, infinite or outside [-90, 90]"))
    for c, v in data.items():
        if c not in ("ra", "dec") and np.asarray(v).dtype.kind == "f":
            inf = np.isinf(v)
            if inf.any():
                problems.append(Problem(np.flatnonzero(inf), c, "infinite value"))
    return problems


GAIA_SPEC = TableSpec(
    name="gaia_source",
    scalars={c: _TYPES[c] for c in GAIA_COLUMNS},
    required=("source_id", "ra", "dec"),
    aliases={"source_id_gaiadr3": "source_id", "dr3_source_id": "source_id"},
    check=check_gaia,
    known_other=DR3_COLUMNS,
)


def read_gaia_source(path, chunk_rows: int = 50000, on_bad=None, block_bytes: int = 1 << 24, on_warning=None):
    """Chunks of gaia_source rows from ``path`` (any supported format); ``on_warning`` receives one line
    per problem that does not stop the load (columns that look misspelt, columns Gaia does not have)."""
    return read_table(path, GAIA_SPEC, chunk_rows=chunk_rows, on_bad=on_bad, block_bytes=block_bytes,
                      on_warning=on_warning)
