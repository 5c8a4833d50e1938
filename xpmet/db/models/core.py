"""Core tables: Gaia sources, XP continuous spectra, surveys and their rows, load provenance, models, predictions."""
import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import ARRAY, DOUBLE_PRECISION, JSONB, REAL

from xpmet.db.models.base import metadata

N_COEF = 55        # XP basis functions per band
N_CORR = 1485      # 55*54/2 off-diagonal correlations per band

etl_load = sa.Table(
    "etl_load", metadata,
    sa.Column("load_id", sa.Integer, primary_key=True),
    sa.Column("kind", sa.Text, nullable=False, comment="gaia_source | xp | survey:<name>"),
    sa.Column("path", sa.Text, nullable=False),
    sa.Column("size_bytes", sa.BigInteger, nullable=False),
    sa.Column("sha256", sa.Text, nullable=False),
    sa.Column("n_rows", sa.BigInteger),
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("options", JSONB),
    sa.Column("xpmet_version", sa.Text),
    sa.Column("started_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    sa.Column("finished_at", sa.DateTime(timezone=True)),
    sa.Column("seconds", DOUBLE_PRECISION),
    sa.Column("error", sa.Text),
    sa.Column("descriptor", JSONB, comment="survey loads: the descriptor this load used"),
    sa.CheckConstraint("status IN ('running', 'done', 'failed', 'replaced')", name="etl_load_status_check"),
    sa.Index("ix_etl_load_done", "kind", "sha256", unique=True, postgresql_where=sa.text("status = 'done'")),
    comment="Provenance: one row per file load attempt",
)


def _f8(name, **kw):
    return sa.Column(name, DOUBLE_PRECISION, **kw)


def _f4(name, **kw):
    return sa.Column(name, REAL, **kw)


gaia_source = sa.Table(
    "gaia_source", metadata,
    sa.Column("source_id", sa.BigInteger, primary_key=True, autoincrement=False),
    _f8("ref_epoch"),
    _f8("ra", nullable=False), _f4("ra_error"),
    _f8("dec", nullable=False), _f4("dec_error"),
    _f8("parallax"), _f4("parallax_error"),
    _f8("pmra"), _f4("pmra_error"),
    _f8("pmdec"), _f4("pmdec_error"),
    _f4("ruwe"),
    _f8("phot_g_mean_flux"), _f4("phot_g_mean_flux_error"), _f4("phot_g_mean_mag"),
    _f8("phot_bp_mean_flux"), _f4("phot_bp_mean_flux_error"), _f4("phot_bp_mean_mag"),
    _f8("phot_rp_mean_flux"), _f4("phot_rp_mean_flux_error"), _f4("phot_rp_mean_mag"),
    _f4("phot_bp_rp_excess_factor"), _f4("bp_rp"),
    _f4("radial_velocity"), _f4("radial_velocity_error"),
    sa.Column("has_xp_continuous", sa.Boolean),
    _f8("l"), _f8("b"),
    _f4("teff_gspphot"), _f4("logg_gspphot"), _f4("mh_gspphot"), _f4("ag_gspphot"), _f4("ebpminrp_gspphot"),
    sa.Column("load_id", sa.Integer, sa.ForeignKey("xpmet.etl_load.load_id"), nullable=False),
    comment="Gaia DR3 gaia_source, the columns xpmet uses (names and units as in the archive)",
)


def _band(b):
    return [
        sa.Column(f"{b}_basis_function_id", sa.SmallInteger),
        sa.Column(f"{b}_degrees_of_freedom", sa.SmallInteger),
        sa.Column(f"{b}_n_parameters", sa.SmallInteger),
        sa.Column(f"{b}_n_measurements", sa.SmallInteger),
        sa.Column(f"{b}_n_rejected_measurements", sa.SmallInteger),
        _f4(f"{b}_standard_deviation"),
        _f4(f"{b}_chi_squared"),
        sa.Column(f"{b}_coefficients", ARRAY(DOUBLE_PRECISION)),
        sa.Column(f"{b}_coefficient_errors", ARRAY(REAL)),
        sa.Column(f"{b}_coefficient_correlations", ARRAY(REAL)),
        sa.Column(f"{b}_n_relevant_bases", sa.SmallInteger),
        _f4(f"{b}_relative_shrinking"),
    ]


def _band_checks(b):
    return [
        sa.CheckConstraint(f"{b}_coefficients IS NULL OR cardinality({b}_coefficients) = {N_COEF}",
                           name=f"xp_{b}_coefficients_len"),
        sa.CheckConstraint(f"{b}_coefficient_errors IS NULL OR cardinality({b}_coefficient_errors) = {N_COEF}",
                           name=f"xp_{b}_errors_len"),
        sa.CheckConstraint(f"{b}_coefficient_correlations IS NULL OR "
                           f"cardinality({b}_coefficient_correlations) = {N_CORR}",
                           name=f"xp_{b}_correlations_len"),
    ]


xp_continuous = sa.Table(
    "xp_continuous", metadata,
    sa.Column("source_id", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("solution_id", sa.BigInteger),
    *_band("bp"), *_band("rp"),
    sa.Column("load_id", sa.Integer, sa.ForeignKey("xpmet.etl_load.load_id"), nullable=False),
    *_band_checks("bp"), *_band_checks("rp"),
    comment="Gaia DR3 xp_continuous_mean_spectrum (26 archive columns); a missing band is NULL",
)

survey = sa.Table(
    "survey", metadata,
    sa.Column("survey_id", sa.SmallInteger, primary_key=True),
    sa.Column("name", sa.Text, nullable=False, unique=True),
    sa.Column("title", sa.Text),
    sa.Column("release", sa.Text),
    sa.Column("is_reference", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("citation", sa.Text),
    sa.Column("descriptor", JSONB, comment="the declarative descriptor the survey was loaded with"),
    comment="Spectroscopic surveys (one row per descriptor)",
)

survey_star = sa.Table(
    "survey_star", metadata,
    sa.Column("star_id", sa.BigInteger, primary_key=True),
    sa.Column("survey_id", sa.SmallInteger, sa.ForeignKey("xpmet.survey.survey_id"), nullable=False),
    sa.Column("load_id", sa.Integer, sa.ForeignKey("xpmet.etl_load.load_id"), nullable=False),
    sa.Column("file_row", sa.Integer, nullable=False, comment="0-based row in the loaded file"),
    sa.Column("object_id", sa.Text, comment="the survey's own identifier"),
    _f8("ra"), _f8("dec"),
    _f8("epoch", comment="Julian year of the position"),
    sa.Column("gaia_source_id", sa.BigInteger, comment="Gaia id declared by the survey"),
    sa.Column("gaia_release", sa.Text, comment="DR2 | EDR3 | DR3 of gaia_source_id"),
    _f4("teff"), _f4("teff_err"), _f4("logg"), _f4("logg_err"),
    _f4("feh"), _f4("feh_err"), _f4("alpha_fe"), _f4("alpha_fe_err"),
    _f4("snr"),
    sa.Column("survey_flags", sa.BigInteger, comment="the survey's own flag bits, as shipped"),
    sa.Column("quality_flags", sa.Integer, nullable=False, server_default="0",
              comment="xpmet bits: see xpmet.flags.SURVEY_QUALITY_BITS"),
    sa.Column("quality_ok", sa.Boolean, nullable=False),
    sa.Column("extra", JSONB, comment="other columns the descriptor keeps"),
    sa.UniqueConstraint("load_id", "file_row", name="survey_star_load_row_key"),
    sa.Index("ix_survey_star_gaia", "gaia_source_id"),
    sa.Index("ix_survey_star_survey", "survey_id"),
    comment="One normalised row per survey measurement (duplicates and failed fits kept, flagged)",
)

models = sa.Table(
    "models", metadata,
    sa.Column("model_id", sa.Integer, primary_key=True),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("kind", sa.Text, nullable=False, comment="estimator | emulator"),
    sa.Column("path", sa.Text, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    sa.Column("config", JSONB),
    sa.Column("metrics", JSONB),
    sa.Column("data_fingerprint", sa.Text),
    sa.Column("xpmet_version", sa.Text),
    sa.Column("predictions_complete_at", sa.DateTime(timezone=True),
              comment="when a predict run last covered every XP star (no --where)"),
    comment="Trained models registered by xpmet train",
)

predictions = sa.Table(
    "predictions", metadata,
    sa.Column("model_id", sa.Integer, sa.ForeignKey("xpmet.models.model_id", ondelete="CASCADE"),
              primary_key=True),
    sa.Column("source_id", sa.BigInteger, primary_key=True, autoincrement=False),
    _f4("teff"), _f4("teff_err"), _f4("logg"), _f4("logg_err"),
    _f4("feh"), _f4("feh_err"), _f4("alpha_fe"), _f4("alpha_fe_err"),
    _f4("fit_stat", comment="reduced chi-squared (emulator fit) or ensemble disagreement"),
    sa.Column("quality_flags", sa.Integer, nullable=False, server_default="0"),
    sa.Column("recommended", sa.Boolean, nullable=False),
    sa.Column("load_id", sa.Integer,
              comment="the xp_continuous load (etl_load) the prediction was computed from"),
    sa.Index("ix_predictions_source", "source_id"),
    comment="Per-star predictions, one row per (model, source)",
)

training_export = sa.Table(
    "training_export", metadata,
    sa.Column("export_id", sa.Integer, primary_key=True),
    sa.Column("path", sa.Text, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    sa.Column("xmatch_version", sa.Text, comment="crossmatch version(s) of the exported labels"),
    sa.Column("reference", sa.Text),
    sa.Column("n_rows", sa.BigInteger),
    sa.Column("options", JSONB),
    sa.Column("xpmet_version", sa.Text),
    comment="One row per xpmet export: the file and the crossmatch version it was built from",
)


# -- what users see of the columns: unit, UCD (as the Gaia archive gives them) and description ----
# Kept in Column.info, which is Python-side only (no schema change); query outputs, VOTable/FITS
# files and their headers read it from here. Abundances and log g carry no unit: 'dex' is not a
# FITS or VOTable unit; the descriptions say dex.
_DOC = {
    gaia_source: {
        "source_id": (None, "meta.id;meta.main", "Gaia DR3 source_id"),
        "ra": ("deg", "pos.eq.ra;meta.main", "right ascension (ICRS, epoch 2016.0)"),
        "dec": ("deg", "pos.eq.dec;meta.main", "declination (ICRS, epoch 2016.0)"),
        "l": ("deg", "pos.galactic.lon", "Galactic longitude"),
        "b": ("deg", "pos.galactic.lat", "Galactic latitude"),
        "parallax": ("mas", "pos.parallax.trig", "parallax"),
        "parallax_error": ("mas", "stat.error;pos.parallax.trig", "parallax uncertainty"),
        "pmra": ("mas / yr", "pos.pm;pos.eq.ra", "proper motion in RA (times cos dec)"),
        "pmdec": ("mas / yr", "pos.pm;pos.eq.dec", "proper motion in Dec"),
        "ruwe": (None, "stat.error", "renormalised unit weight error"),
        "phot_g_mean_mag": ("mag", "phot.mag;em.opt", "Gaia G"),
        "phot_bp_mean_mag": ("mag", "phot.mag;em.opt.B", "Gaia BP"),
        "phot_rp_mean_mag": ("mag", "phot.mag;em.opt.R", "Gaia RP"),
        "bp_rp": ("mag", "phot.color;em.opt.B;em.opt.R", "BP - RP colour"),
        "ag_gspphot": ("mag", "phys.absorption;em.opt", "G-band extinction from GSP-Phot"),
    },
    predictions: {
        "source_id": (None, "meta.id;meta.main", "Gaia DR3 source_id"),
        "model_id": (None, "meta.id", "xpmet.models.model_id of the predicting model"),
        "teff": ("K", "phys.temperature.effective", "predicted effective temperature"),
        "teff_err": ("K", "stat.error;phys.temperature.effective", "uncertainty of teff"),
        "logg": (None, "phys.gravity", "predicted log10 surface gravity (cgs, dex)"),
        "logg_err": (None, "stat.error;phys.gravity", "uncertainty of logg (dex)"),
        "feh": (None, "phys.abund.Fe", "predicted [Fe/H] (dex)"),
        "feh_err": (None, "stat.error;phys.abund.Fe", "uncertainty of feh (dex)"),
        "alpha_fe": (None, "phys.abund", "predicted [alpha/Fe] (dex)"),
        "alpha_fe_err": (None, "stat.error;phys.abund", "uncertainty of alpha_fe (dex)"),
        "fit_stat": (None, "stat.fit.goodness", "reduced chi-squared (emulator fit) or ensemble disagreement"),
        "quality_flags": (None, "meta.code.qual", "quality bitmask (xpmet.flags.PREDICTION_BITS)"),
        "recommended": (None, "meta.code.qual", "passes the model's documented quality cut (no quality bit set)"),
    },
}
for _table, _cols in _DOC.items():
    for _name, (_unit, _ucd, _desc) in _cols.items():
        _table.c[_name].info.update(unit=_unit, ucd=_ucd, description=_desc)
