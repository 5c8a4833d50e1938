"""integrity: what each derived row was built from, so replacements and concurrent runs show up.

- xmatch_run.loads: the etl_load ids (gaia_source and survey loads) a crossmatch run read; a run is
  stale when one of them was replaced or a newer load exists (view xmatch_run_status).
- label_setting.labels_xmatch_version / labels_refreshed_at: the run the label views were built
  from (view label_status says when a newer run exists or the run is stale).
- predictions.load_id: the xp_continuous load a prediction was computed from; xpmet predict
  re-predicts stars whose XP load changed (view prediction_status counts them per model).
- etl_load.descriptor: the survey descriptor of that load (survey.descriptor is only the latest).
- survey ids from a sequence (two first loads at once must not collide).
- training_export: one row per `xpmet export`, with the crossmatch version it read.
SQL in db/sql/integrity.sql (undone by integrity_drop.sql).

Revision ID: 0005
Revises: 0004
"""
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None

from xpmet.db.migrate import run_sql_file


def upgrade():
    op.add_column('xmatch_run', sa.Column('loads', postgresql.ARRAY(sa.Integer()), nullable=True,
                                          comment='etl_load ids (gaia_source and survey loads) the run read'),
                  schema='xpmet')
    op.add_column('label_setting', sa.Column('labels_xmatch_version', sa.Text(), nullable=True,
                                             comment='crossmatch version the label views were last built from'),
                  schema='xpmet')
    op.add_column('label_setting', sa.Column('labels_refreshed_at', sa.DateTime(timezone=True), nullable=True),
                  schema='xpmet')
    op.add_column('predictions', sa.Column('load_id', sa.Integer(), nullable=True,
                                           comment='the xp_continuous load (etl_load) the prediction was computed from'),
                  schema='xpmet')
    op.add_column('etl_load', sa.Column('descriptor', postgresql.JSONB(astext_type=sa.Text()), nullable=True,
                                        comment='survey loads: the descriptor this load used'),
                  schema='xpmet')
    op.create_table('training_export',
    sa.Column('export_id', sa.Integer(), nullable=False),
    sa.Column('path', sa.Text(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('xmatch_version', sa.Text(), nullable=True, comment='crossmatch version(s) of the exported labels'),
    sa.Column('reference', sa.Text(), nullable=True),
    sa.Column('n_rows', sa.BigInteger(), nullable=True),
    sa.Column('options', postgresql.JSONB(astext_type=sa.Text()), nullable=True),
    sa.Column('xpmet_version', sa.Text(), nullable=True),
    sa.PrimaryKeyConstraint('export_id'),
    schema='xpmet',
    comment='One row per xpmet export: the file and the crossmatch version it was built from'
    )
    run_sql_file("integrity.sql")


def downgrade():
    run_sql_file("integrity_drop.sql")
    op.drop_table('training_export', schema='xpmet')
    op.drop_column('etl_load', 'descriptor', schema='xpmet')
    op.drop_column('predictions', 'load_id', schema='xpmet')
    op.drop_column('label_setting', 'labels_refreshed_at', schema='xpmet')
    op.drop_column('label_setting', 'labels_xmatch_version', schema='xpmet')
    op.drop_column('xmatch_run', 'loads', schema='xpmet')
