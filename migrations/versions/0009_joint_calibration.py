"""Joint calibration of the survey label scales: table survey_calibration and the views that apply it.

xpmet.calibration fits every survey and label over the whole overlap network (piecewise-linear
offsets in the label, Teff and log g terms, error floors and scales from the overlaps) and writes
xpmet.survey_calibration; survey_zero_point becomes a view of it; calibrated_measurement applies it
(xpmet.calibrate_value) and carries the calibration's systematic error, which labels reports as
<label>_err_sys and adds to <label>_err without averaging it down. SQL in db/sql/calibration_0009.sql;
the downgrade restores the 0002 views (db/sql/label_views_0002.sql). The 0002 fit function
(xpmet.fit_zero_points) stays: the restored views use it.

Revision ID: 0009
Revises: 0008
"""
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import ARRAY, DOUBLE_PRECISION

revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None

from xpmet.db.migrate import run_sql_file

#: the views this migration recreates, and the new table: readable by xpmet_reader as before
READABLE = ("survey_calibration", "survey_zero_point", "calibrated_measurement", "label_measurement", "labels",
            "training_set")


def _grant(names):
    op.execute("DO $$ BEGIN IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'xpmet_reader') THEN "
               + " ".join(f"GRANT SELECT ON xpmet.{n} TO xpmet_reader;" for n in names) + " END IF; END $$")


def upgrade():
    F8 = DOUBLE_PRECISION
    op.create_table(
        'survey_calibration',
        sa.Column('survey_id', sa.SmallInteger(), nullable=False),
        sa.Column('label', sa.Text(), nullable=False),
        sa.Column('survey', sa.Text(), nullable=False),
        sa.Column('status', sa.Text(), nullable=False,
                  comment='reference | fallback_scale | calibrated | too_few | uncalibrated'),
        sa.Column('reference', sa.Text(), nullable=True, comment='the reference survey when fitted'),
        sa.Column('calibrated_on', sa.Text(), nullable=True,
                  comment='the anchor survey (reference, or fallback for a label it lacks)'),
        sa.Column('knots', ARRAY(F8), nullable=True, comment='true-scale knots of the piecewise-linear offset'),
        sa.Column('offsets', ARRAY(F8), nullable=True,
                  comment='survey - true at each knot (straight on beyond the ends)'),
        sa.Column('offset_errs', ARRAY(F8), nullable=True,
                  comment='1-sigma error of each knot offset: the systematic error'),
        sa.Column('teff_coef', F8, nullable=True, comment="offset per K of the survey's own Teff - teff_pivot"),
        sa.Column('teff_pivot', F8, nullable=True),
        sa.Column('logg_coef', F8, nullable=True, comment="offset per dex of the survey's own log g - logg_pivot"),
        sa.Column('logg_pivot', F8, nullable=True),
        sa.Column('zero_point', F8, nullable=True, comment="mean offset over the survey's shared stars"),
        sa.Column('zero_point_err', F8, nullable=True),
        sa.Column('pivot', F8, nullable=True, comment='median true value of the shared stars'),
        sa.Column('slope', F8, nullable=True, comment='d offset / d true value at the pivot'),
        sa.Column('slope_err', F8, nullable=True),
        sa.Column('n_stars', sa.Integer(), nullable=True, comment='stars shared with other surveys in the fit'),
        sa.Column('n_pairs', sa.Integer(), nullable=True,
                  comment='independent differences: sum over its stars of (surveys - 1)'),
        sa.Column('n_clipped', sa.Integer(), nullable=True, comment='measurements dropped as outliers'),
        sa.Column('n_shared_with_reference', sa.Integer(), nullable=True),
        sa.Column('err_scale', F8, nullable=True, comment='fitted factor on the reported errors (>= 1)'),
        sa.Column('error_floor_fitted', F8, nullable=True, comment='fitted floor added in quadrature'),
        sa.Column('error_floor_prior', F8, nullable=True,
                  comment="the descriptor's floor (used when too few stars to fit one)"),
        sa.Column('scatter', F8, nullable=True, comment='robust scatter of the residuals'),
        sa.Column('chi2_dof', F8, nullable=True),
        sa.Column('fitted_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
        sa.PrimaryKeyConstraint('survey_id', 'label'),
        schema='xpmet',
        comment='Per survey and label: the joint calibration onto the reference scale (xpmet.calibration)',
    )
    run_sql_file("calibration_0009.sql")
    run_sql_file("training_set_0006.sql")
    _grant(READABLE)


def downgrade():
    run_sql_file("calibration_0009_drop.sql")
    run_sql_file("label_views_0002.sql")
    run_sql_file("training_set_0006.sql")
    _grant(READABLE[1:])
    op.drop_table('survey_calibration', schema='xpmet')
