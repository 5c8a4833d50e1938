"""training_set leaves out [Fe/H] labels a survey without an [Fe/H] zero point contributed to.

The view's text lives in db/sql/training_set_0006.sql; the downgrade restores training_set_0002.sql.

Revision ID: 0006
Revises: 0005
"""
revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None

from xpmet.db.migrate import run_sql_file


def upgrade():
    run_sql_file("training_set_0006.sql")


def downgrade():
    run_sql_file("training_set_0002.sql")
