"""The survey calibration: one row per survey and label, fitted by xpmet.calibration over the whole
overlap network and applied by the label views (db/sql/calibration_0009.sql, migration 0009)."""
import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import ARRAY, DOUBLE_PRECISION

from xpmet.db.models.base import metadata

F8 = DOUBLE_PRECISION

survey_calibration = sa.Table(
    "survey_calibration", metadata,
    sa.Column("survey_id", sa.SmallInteger, primary_key=True),
    sa.Column("label", sa.Text, primary_key=True),
    sa.Column("survey", sa.Text, nullable=False),
    sa.Column("status", sa.Text, nullable=False,
              comment="reference | fallback_scale | calibrated | too_few | uncalibrated"),
    sa.Column("reference", sa.Text, comment="the reference survey when fitted"),
    sa.Column("calibrated_on", sa.Text, comment="the anchor survey (reference, or fallback for a label it lacks)"),
    sa.Column("knots", ARRAY(F8), comment="true-scale knots of the piecewise-linear offset"),
    sa.Column("offsets", ARRAY(F8), comment="survey - true at each knot (straight on beyond the ends)"),
    sa.Column("offset_errs", ARRAY(F8), comment="1-sigma error of each knot offset: the systematic error"),
    sa.Column("teff_coef", F8, comment="offset per K of the survey's own Teff - teff_pivot"),
    sa.Column("teff_pivot", F8),
    sa.Column("logg_coef", F8, comment="offset per dex of the survey's own log g - logg_pivot"),
    sa.Column("logg_pivot", F8),
    sa.Column("zero_point", F8, comment="mean offset over the survey's shared stars"),
    sa.Column("zero_point_err", F8),
    sa.Column("pivot", F8, comment="median true value of the shared stars"),
    sa.Column("slope", F8, comment="d offset / d true value at the pivot"),
    sa.Column("slope_err", F8),
    sa.Column("n_stars", sa.Integer, comment="stars shared with other surveys in the fit"),
    sa.Column("n_pairs", sa.Integer, comment="independent differences: sum over its stars of (surveys - 1)"),
    sa.Column("n_clipped", sa.Integer, comment="measurements dropped as outliers"),
    sa.Column("n_shared_with_reference", sa.Integer),
    sa.Column("err_scale", F8, comment="fitted factor on the reported errors (>= 1)"),
    sa.Column("error_floor_fitted", F8, comment="fitted floor added in quadrature"),
    sa.Column("error_floor_prior", F8, comment="the descriptor's floor (used when too few stars to fit one)"),
    sa.Column("scatter", F8, comment="robust scatter of the residuals"),
    sa.Column("chi2_dof", F8),
    sa.Column("fitted_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    comment="Per survey and label: the joint calibration onto the reference scale (xpmet.calibration)",
)
