"""crossmatch runs and rows, label settings, and the label views (db/sql/labels.sql).

Tables written from the models in xpmet/db/models/xmatch.py; the views and SQL functions
live in db/sql/labels.sql (created here, dropped by db/sql/labels_drop.sql on downgrade).

Revision ID: 0002
Revises: 0001
"""
from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None

from xpmet.db.migrate import run_sql_file


def upgrade():
    op.create_table('xmatch_run',
    sa.Column('run_id', sa.Integer(), nullable=False),
    sa.Column('version', sa.Text(), nullable=False, comment='name users cite, e.g. xm-3'),
    sa.Column('parameters', postgresql.JSONB(astext_type=sa.Text()), nullable=False, comment='radius, epoch handling, per-survey overrides'),
    sa.Column('status', sa.Text(), server_default='running', nullable=False),
    sa.Column('is_current', sa.Boolean(), server_default=sa.text('false'), nullable=False, comment='the run the label views read (one at a time)'),
    sa.Column('n_rows', sa.BigInteger(), nullable=True),
    sa.Column('n_matched', sa.BigInteger(), nullable=True),
    sa.Column('started_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('seconds', sa.DOUBLE_PRECISION(), nullable=True),
    sa.Column('xpmet_version', sa.Text(), nullable=True),
    sa.CheckConstraint("status IN ('running', 'done', 'failed')", name='xmatch_run_status_check'),
    sa.PrimaryKeyConstraint('run_id'),
    sa.UniqueConstraint('version'),
    schema='xpmet',
    comment='One row per crossmatch run (xpmet xmatch); its rows are in xmatch'
    )
    op.create_index('ix_xmatch_run_current', 'xmatch_run', ['is_current'], unique=True, schema='xpmet',
                    postgresql_where=sa.text('is_current'))
    op.create_table('xmatch',
    sa.Column('run_id', sa.Integer(), autoincrement=False, nullable=False),
    sa.Column('star_id', sa.BigInteger(), autoincrement=False, nullable=False),
    sa.Column('survey_id', sa.SmallInteger(), nullable=False),
    sa.Column('source_id', sa.BigInteger(), nullable=True, comment='best Gaia DR3 neighbour; NULL when none'),
    sa.Column('method', sa.Text(), nullable=False, comment='id | position | both | none'),
    sa.Column('separation', sa.DOUBLE_PRECISION(), nullable=True, comment="arcsec, at the survey row's epoch"),
    sa.Column('n_candidates', sa.SmallInteger(), server_default='0', nullable=False, comment='Gaia sources within the matching radius'),
    sa.Column('second_separation', sa.DOUBLE_PRECISION(), nullable=True, comment='arcsec, next-nearest candidate'),
    sa.Column('id_separation', sa.DOUBLE_PRECISION(), nullable=True, comment='arcsec between the row and its declared Gaia source (propagated)'),
    sa.Column('ambiguous', sa.Boolean(), server_default=sa.text('false'), nullable=False),
    sa.Column('duplicate_claim', sa.Boolean(), server_default=sa.text('false'), nullable=False, comment='another row of the same survey matched the same source'),
    sa.Column('flags', sa.Integer(), server_default='0', nullable=False, comment='see xpmet.flags.XMATCH_BITS'),
    sa.CheckConstraint("method IN ('id', 'position', 'both', 'none')", name='xmatch_method_check'),
    sa.PrimaryKeyConstraint('run_id', 'star_id'),
    schema='xpmet',
    comment='Best Gaia neighbour of every survey row, per crossmatch run'
    )
    op.create_index('ix_xmatch_source', 'xmatch', ['source_id'], schema='xpmet')
    op.create_table('label_setting',
    sa.Column('id', sa.SmallInteger(), server_default='1', nullable=False),
    sa.Column('reference', sa.Text(), server_default='gbs', nullable=False, comment='survey whose scale the labels are on'),
    sa.Column('fallback', sa.Text(), nullable=True, comment='survey calibrated on the reference, used for surveys without overlap'),
    sa.Column('min_overlap', sa.Integer(), server_default='3', nullable=False, comment='stars shared with a reference needed for a zero point'),
    sa.Column('min_trend_overlap', sa.Integer(), server_default='50', nullable=False, comment='stars shared needed to fit a linear trend as well'),
    sa.Column('clip', sa.REAL(), server_default='4', nullable=False, comment='leave-one-out |z| above which the worst measurement is rejected (3+ surveys)'),
    sa.Column('max_chi2_dof', sa.REAL(), server_default='9', nullable=False, comment='chi2 per degree of freedom above which a label is flagged discordant'),
    sa.Column('max_feh_err', sa.REAL(), server_default='0.2', nullable=False),
    sa.Column('min_xp_snr', sa.REAL(), server_default='30', nullable=False, comment='training_set cut: sqrt(sum (coef/err)^2) over the 110 XP coefficients'),
    sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.CheckConstraint('id = 1', name='label_setting_single_row'),
    sa.PrimaryKeyConstraint('id'),
    schema='xpmet',
    comment='The one row of settings the label views read (xpmet labels --reference ...)'
    )
    op.execute("INSERT INTO xpmet.label_setting (id) VALUES (1)")
    run_sql_file("labels.sql")
    run_sql_file("training_set_0002.sql")


def downgrade():
    run_sql_file("labels_drop.sql")
    op.drop_table('label_setting', schema='xpmet')
    op.drop_index('ix_xmatch_source', table_name='xmatch', schema='xpmet')
    op.drop_table('xmatch', schema='xpmet')
    op.drop_index('ix_xmatch_run_current', table_name='xmatch_run', schema='xpmet')
    op.drop_table('xmatch_run', schema='xpmet')
