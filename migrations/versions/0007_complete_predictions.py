"""xpmet.metallicity shows the newest model whose predictions are complete, not the newest with any.

models.predictions_complete_at is set when a predict run has covered every XP star (no --where);
until a new model's run finishes, the catalogue keeps showing the previous complete one (a run
killed after its first chunk no longer switches the catalogue to a handful of stars). A database
with no complete run yet falls back on the newest model with predictions, as before.

Revision ID: 0007
Revises: 0006
"""
import sqlalchemy as sa
from alembic import op

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None

CHOICE = """
CREATE OR REPLACE FUNCTION xpmet.metallicity_model() RETURNS integer
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT coalesce(nullif(current_setting('xpmet.model_id', true), '')::integer,
                    {newest})
$$"""
COMPLETE = ("(SELECT max(model_id) FROM xpmet.models WHERE predictions_complete_at IS NOT NULL), "
            "(SELECT max(model_id) FROM xpmet.predictions)")
ANY = "(SELECT max(model_id) FROM xpmet.predictions)"


def upgrade():
    op.add_column('models', sa.Column('predictions_complete_at', sa.DateTime(timezone=True), nullable=True,
                                      comment='when a predict run last covered every XP star (no --where)'),
                  schema='xpmet')
    # the reader runs metallicity_model() itself: it needs the column (a role other servers may lack)
    op.execute("DO $$ BEGIN IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'xpmet_reader') THEN "
               "GRANT SELECT (predictions_complete_at) ON xpmet.models TO xpmet_reader; END IF; END $$")
    op.execute(CHOICE.format(newest=COMPLETE))
    op.execute("COMMENT ON FUNCTION xpmet.metallicity_model() IS 'Model shown by xpmet.metallicity: setting "
               "xpmet.model_id, else the newest model with complete predictions, else the newest with any'")


def downgrade():
    op.execute(CHOICE.format(newest=ANY))
    op.execute("COMMENT ON FUNCTION xpmet.metallicity_model() IS "
               "'Model shown by xpmet.metallicity: setting xpmet.model_id, else the newest model with predictions'")
    op.drop_column('models', 'predictions_complete_at', schema='xpmet')
