"""the read-only role xpmet_reader as a security boundary.

Grants and revocations live in db/sql/reader_boundary.sql; reader_boundary_drop.sql undoes them
(back to what 0003 granted).

Revision ID: 0004
Revises: 0003
"""
from alembic import op  # noqa: F401

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None

from xpmet.db.migrate import run_sql_file


def upgrade():
    run_sql_file("reader_boundary.sql")


def downgrade():
    run_sql_file("reader_boundary_drop.sql")
