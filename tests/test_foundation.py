"""The embedded cluster, the CLI's db commands, migrations and the Python API, on a real server."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

import xpmet
from xpmet.db import migrate
from xpmet.db.cluster import Cluster
from xpmet.errors import XpmetError

XPMET = [sys.executable, "-m", "xpmet.cli"]


def test_connect_reaches_q3c(engine):
    with engine.connect() as c:
        assert c.execute(sa.text("SELECT q3c_dist(0, 0, 0, 1)")).scalar() == pytest.approx(1.0)
        assert c.execute(sa.text("SHOW jit")).scalar() == "off"


def test_migration_round_trip_and_models_match(engine):
    from xpmet.db.engine import libpq_url
    url = libpq_url()
    migrate.downgrade(url, "base")
    with engine.connect() as c:
        left = c.execute(sa.text("SELECT count(*) FROM pg_tables WHERE schemaname='xpmet' "
                                 "AND tablename <> 'alembic_version'")).scalar()
    assert left == 0
    migrate.upgrade(url, "head")
    migrate.upgrade(url, "head")  # idempotent
    with engine.connect() as c:
        from xpmet.db.models import metadata
        from xpmet.db.migrate import include_object
        ctx = MigrationContext.configure(c, opts={"include_schemas": True, "include_object": include_object,
                                                  "compare_type": True, "version_table_schema": "xpmet"})
        diff = compare_metadata(ctx, metadata)
        assert diff == [], diff
        q3c = c.execute(sa.text("SELECT indexname FROM pg_indexes WHERE schemaname='xpmet' "
                                "AND indexdef LIKE '%q3c_ang2ipix%'")).scalars().all()
    assert {"ix_gaia_source_q3c", "ix_survey_star_q3c"} <= set(q3c)


def test_cli_db_commands(run_cli, xpmet_home):
    r = run_cli("db", "start")
    assert "already running" in r.output
    url = run_cli("db", "url").output.strip()
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT extname FROM pg_extension WHERE extname='q3c'").fetchone()
    assert "running      True" in run_cli("db", "status").output
    assert "schema at revision" in run_cli("db", "migrate").output
    assert run_cli("--version").output.startswith("xpmet, version")


def test_cluster_lifecycle_in_private_home(tmp_path):
    """A fresh cluster in a directory the server user may not enter (as root), with a crash and a restart."""
    home = tmp_path / "private home"
    home.mkdir()
    os.chmod(tmp_path, 0o700)
    c = Cluster(home)
    try:
        assert c.start() is True
        assert c.running()
        pid = c.status()["pid"]
        assert c.start() is False and c.status()["pid"] == pid  # second start: same server
        # Simulate a crash: kill -9 leaves a stale postmaster.pid behind.
        os.kill(pid, 9)
        import time
        for _ in range(100):
            if not Path(f"/proc/{pid}").exists():
                break
            time.sleep(0.05)
        # the children may hold shared memory for a moment; start must still succeed
        for _ in range(50):
            try:
                c.start()
                break
            except XpmetError:
                time.sleep(0.2)
        assert c.running() and c.status()["pid"] != pid
        assert c.stop() is True
        assert c.stop() is False
    finally:
        c.destroy()


def test_concurrent_starts_make_one_server(tmp_path):
    home = tmp_path / "h"
    env = dict(os.environ, XPMET_HOME=str(home))
    env.pop("XPMET_DATABASE_URL", None)
    procs = [subprocess.Popen(XPMET + ["db", "start"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(3)]
    outs = [p.communicate(timeout=120) for p in procs]
    try:
        assert all(p.returncode == 0 for p in procs), outs
        assert sum("started" in o for o, _ in outs) == 1
    finally:
        Cluster(home).destroy()


def test_bad_database_url_is_a_clear_error(tmp_path):
    env = dict(os.environ, XPMET_DATABASE_URL="postgresql://nobody@127.0.0.1:9/nothing")
    r = subprocess.run(XPMET + ["db", "migrate"], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 1
    assert "Cannot connect" in r.stderr and "Traceback" not in r.stderr


def test_server_without_q3c_is_named(engine, xpmet_home):
    """A database without q3c, on a role that may not create it, is refused with the package to install."""
    auto = engine.execution_options(isolation_level="AUTOCOMMIT")
    with auto.connect() as c:
        c.execute(sa.text("DROP DATABASE IF EXISTS noq3c"))
        c.execute(sa.text("DROP ROLE IF EXISTS plain"))
        c.execute(sa.text("CREATE ROLE plain LOGIN"))
        c.execute(sa.text("CREATE DATABASE noq3c OWNER plain"))
    from xpmet.db.engine import check_server, libpq_url
    url = libpq_url().replace("xpmet@", "plain@").replace("@/xpmet?", "@/noq3c?")
    try:
        with pytest.raises(XpmetError, match="q3c"):
            check_server(url)
    finally:
        with auto.connect() as c:
            c.execute(sa.text("DROP DATABASE noq3c"))
            c.execute(sa.text("DROP ROLE plain"))


def test_data_dir_of_another_user_is_refused(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root to give a directory to another user")
    home = tmp_path / "other"
    c = Cluster(home)
    (c.data).mkdir(parents=True)
    (c.data / "PG_VERSION").write_text("15\n")
    os.chown(c.data, 0, 0)
    try:
        with pytest.raises(XpmetError, match="belongs to"):
            c.start()
    finally:
        c.destroy()
