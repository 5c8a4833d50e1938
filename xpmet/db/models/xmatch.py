"""Crossmatch and label tables: versioned crossmatch runs, their best-neighbour rows, label settings.

The label views (survey_zero_point, labels, training_set, ...) are SQL in db/sql/labels.sql,
created by migration 0002; they read these tables.
"""
import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import ARRAY, DOUBLE_PRECISION, JSONB, REAL

from xpmet.db.models.base import metadata

xmatch_run = sa.Table(
    "xmatch_run", metadata,
    sa.Column("run_id", sa.Integer, primary_key=True),
    sa.Column("version", sa.Text, nullable=False, unique=True, comment="name users cite, e.g. xm-3"),
    sa.Column("parameters", JSONB, nullable=False, comment="radius, epoch handling, per-survey overrides"),
    sa.Column("status", sa.Text, nullable=False, server_default="running"),
    sa.Column("is_current", sa.Boolean, nullable=False, server_default=sa.false(),
              comment="the run the label views read (one at a time)"),
    sa.Column("n_rows", sa.BigInteger),
    sa.Column("n_matched", sa.BigInteger),
    sa.Column("started_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    sa.Column("seconds", DOUBLE_PRECISION),
    sa.Column("xpmet_version", sa.Text),
    sa.Column("loads", ARRAY(sa.Integer), comment="etl_load ids (gaia_source and survey loads) the run read"),
    sa.CheckConstraint("status IN ('running', 'done', 'failed')", name="xmatch_run_status_check"),
    sa.Index("ix_xmatch_run_current", "is_current", unique=True, postgresql_where=sa.text("is_current")),
    comment="One row per crossmatch run (xpmet xmatch); its rows are in xmatch",
)

xmatch = sa.Table(
    "xmatch", metadata,
    # No foreign keys on purpose: their per-row triggers doubled the time of xpmet xmatch. Rows of
    # survey rows replaced since the run are left with it (star_id values are never reused) and the
    # label views join survey_star, so they never show.
    # Partitioned by run_id (migration 0008): a run creates, fills, indexes and attaches its own
    # partition xmatch_r<run_id> (xpmet.xmatch.run); pruning a run drops it.
    sa.Column("run_id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("star_id", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("survey_id", sa.SmallInteger, nullable=False),
    sa.Column("source_id", sa.BigInteger, comment="best Gaia DR3 neighbour; NULL when none"),
    sa.Column("method", sa.Text, nullable=False, comment="id | position | both | none"),
    sa.Column("separation", DOUBLE_PRECISION, comment="arcsec, at the survey row's epoch"),
    sa.Column("n_candidates", sa.SmallInteger, nullable=False, server_default="0",
              comment="Gaia sources within the matching radius"),
    sa.Column("second_separation", DOUBLE_PRECISION, comment="arcsec, next-nearest candidate"),
    sa.Column("id_separation", DOUBLE_PRECISION,
              comment="arcsec between the row and its declared Gaia source (propagated)"),
    sa.Column("ambiguous", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("duplicate_claim", sa.Boolean, nullable=False, server_default=sa.false(),
              comment="another row of the same survey matched the same source"),
    sa.Column("flags", sa.Integer, nullable=False, server_default="0",
              comment="see xpmet.flags.XMATCH_BITS"),
    sa.CheckConstraint("method IN ('id', 'position', 'both', 'none')", name="xmatch_method_check"),
    sa.Index("ix_xmatch_source", "source_id"),
    comment="Best Gaia neighbour of every survey row, per crossmatch run",
    postgresql_partition_by="LIST (run_id)",
)

label_setting = sa.Table(
    "label_setting", metadata,
    sa.Column("id", sa.SmallInteger, primary_key=True, server_default="1"),
    sa.Column("reference", sa.Text, nullable=False, server_default="gbs",
              comment="survey whose scale the labels are on"),
    sa.Column("fallback", sa.Text, comment="survey calibrated on the reference, used for surveys without overlap"),
    sa.Column("min_overlap", sa.Integer, nullable=False, server_default="3",
              comment="stars shared with a reference needed for a zero point"),
    sa.Column("min_trend_overlap", sa.Integer, nullable=False, server_default="50",
              comment="stars shared needed to fit a linear trend as well"),
    sa.Column("clip", REAL, nullable=False, server_default="4",
              comment="leave-one-out |z| above which the worst measurement is rejected (3+ surveys)"),
    sa.Column("max_chi2_dof", REAL, nullable=False, server_default="9",
              comment="chi2 per degree of freedom above which a label is flagged discordant"),
    sa.Column("max_feh_err", REAL, nullable=False, server_default="0.2"),
    sa.Column("min_xp_snr", REAL, nullable=False, server_default="30",
              comment="training_set cut: sqrt(sum (coef/err)^2) over the 110 XP coefficients"),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    sa.Column("labels_xmatch_version", sa.Text,
              comment="crossmatch version the label views were last built from"),
    sa.Column("labels_refreshed_at", sa.DateTime(timezone=True)),
    sa.CheckConstraint("id = 1", name="label_setting_single_row"),
    comment="The one row of settings the label views read (xpmet labels --reference ...)",
)
