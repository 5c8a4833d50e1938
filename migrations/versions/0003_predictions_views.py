"""metallicity views (predictions + Gaia positions, q3c-indexed) and the read-only role xpmet_reader.

Views and the model-choice function live in db/sql/metallicity.sql; the role and its grants in
db/sql/readonly_role.sql; each has a *_drop.sql for downgrade.

Revision ID: 0003
Revises: 0002
"""
from pathlib import Path

import sqlalchemy as sa
from alembic import op

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None

SQL = Path(__file__).resolve().parents[2] / "db" / "sql"


def _run_sql(name):
    op.execute(sa.text((SQL / name).read_text()).execution_options(no_parameters=True))


def upgrade():
    _run_sql("metallicity.sql")
    # Last, so that GRANT ... ON ALL TABLES also covers the views above.
    _run_sql("readonly_role.sql")


def downgrade():
    _run_sql("readonly_role_drop.sql")
    _run_sql("metallicity_drop.sql")
