"""metallicity views (predictions + Gaia positions, q3c-indexed) and the read-only role xpmet_reader.

Views and the model-choice function live in db/sql/metallicity.sql; the role and its grants in
db/sql/readonly_role.sql; each has a *_drop.sql for downgrade.

Revision ID: 0003
Revises: 0002
"""
import sqlalchemy as sa
from alembic import op

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None

from xpmet.db.migrate import run_sql_file


def upgrade():
    run_sql_file("metallicity.sql")
    # Last, so that GRANT ... ON ALL TABLES also covers the views above.
    run_sql_file("readonly_role.sql")


def downgrade():
    run_sql_file("readonly_role_drop.sql")
    run_sql_file("metallicity_drop.sql")
