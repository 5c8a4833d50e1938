"""xpmet.xmatch partitioned by run_id: each crossmatch run writes its own partition.

A run creates its partition in its own transaction, fills it, indexes it and attaches it: on a
server with wal_level = minimal (the embedded cluster) the rows then skip the WAL; pruning a run
drops its partition. The view xmatch_current reads the current run's partition only. Tables and
view text in db/sql/xmatch_partitioned.sql; the downgrade (xmatch_partitioned_drop.sql) makes
xmatch one table again with the rows of every run.

Revision ID: 0008
Revises: 0007
"""
revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None

from xpmet.db.migrate import run_sql_file


def upgrade():
    run_sql_file("xmatch_partitioned.sql")


def downgrade():
    run_sql_file("xmatch_partitioned_drop.sql")
