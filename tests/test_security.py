"""The read-only role as a boundary, --where under it, and checkpoints loaded as data only.

Everything here runs against the real embedded server; every attempted write must fail.
"""
from __future__ import annotations

import json
import pathlib

import pytest
import torch

from xpmet.errors import XpmetError


class _Touch:
    """Unpickling this would create ``path``: proof that code ran."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (pathlib.Path.touch, (self.path,))


# -- checkpoints ----------------------------------------------------------------------------------
def test_checkpoint_with_code_is_refused_without_running_it(tmp_path):
    from xpmet.ml import checkpoint
    marker = tmp_path / "ran"
    torch.save({"members": [_Touch(marker)]}, tmp_path / "w.pt")
    with pytest.raises(XpmetError, match="not loaded.*GLOBAL"):
        checkpoint.load(tmp_path / "w.pt")
    assert not marker.exists()
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(XpmetError, match="not loaded"):
        checkpoint.load(tmp_path / "junk.pt")
    # what xpmet train saves is plain data and loads
    ok = {"members": [{"w": torch.ones(2)}], "best": float("inf"), "opt": {"betas": (0.9, 0.99), "foreach": None}}
    torch.save(ok, tmp_path / "ok.pt")
    back = checkpoint.load(tmp_path / "ok.pt")
    assert back["best"] == float("inf") and torch.equal(back["members"][0]["w"], torch.ones(2))


def test_resume_and_predictor_refuse_a_checkpoint_with_code(tmp_path):
    from xpmet.ml.inference import load_predictor
    from xpmet.ml.train import TrainConfig, train
    marker = tmp_path / "ran"
    import ml_semisynth as semi
    semi.write_file(tmp_path / "data.h5", n=400, n_faint=10)
    out = tmp_path / "model"
    out.mkdir()
    torch.save({"member": 0, "members": [], "history": [], "config": _Touch(marker)}, out / "checkpoint.pt")
    with pytest.raises(XpmetError, match="checkpoint.pt was not loaded"):
        train(tmp_path / "data.h5", out, TrainConfig(hidden=(8,), epochs=1), resume=True, register=False,
              progress=False)
    torch.save({"members": [_Touch(marker)], "kind": "estimator", "hidden": [8]}, out / "weights.pt")
    (out / "config.json").write_text(json.dumps({"kind": "estimator"}))
    with pytest.raises(XpmetError, match="weights.pt was not loaded"):
        load_predictor(out)
    assert not marker.exists()


# -- the read-only role ---------------------------------------------------------------------------
#: What the reader must be able to SELECT (tables and views users query).
PUBLISHED = ["gaia_source", "xp_continuous", "survey", "survey_star", "xmatch_run", "xmatch", "label_setting",
             "predictions", "xmatch_current", "survey_measurement", "survey_source_label", "survey_zero_point",
             "calibrated_measurement", "label_measurement", "labels", "training_set", "metallicity_all",
             "metallicity"]


@pytest.fixture(scope="module")
def reader_url(run_cli, engine):
    from xpmet.db.engine import raw_connect
    with raw_connect(autocommit=True) as c:  # a row to aim UPDATE/DELETE at
        load = c.execute("INSERT INTO xpmet.etl_load (kind, path, size_bytes, sha256, status) "
                         "VALUES ('test:gaia_source', '/secret/path', 0, 'x', 'done') RETURNING load_id").fetchone()[0]
        c.execute("INSERT INTO xpmet.gaia_source (source_id, ra, dec, load_id) VALUES (4295806720, 1, 2, %s)",
                  (load,))
    url = run_cli("db", "url", "--read-only").output.strip()
    assert "xpmet_reader@" in url
    yield url
    with raw_connect(autocommit=True) as c:
        c.execute("DELETE FROM xpmet.gaia_source WHERE source_id = 4295806720")
        c.execute("DELETE FROM xpmet.etl_load WHERE load_id = %s", (load,))


def _attempts(tmp):
    return {
        "temp table": "CREATE TEMP TABLE evil (a int)",
        "temp function": "CREATE FUNCTION pg_temp.evil() RETURNS int LANGUAGE sql AS 'SELECT 1'",
        "lo_create": "SELECT lo_create(0)",
        "lo_creat": "SELECT lo_creat(-1)",
        "lo_from_bytea": "SELECT lo_from_bytea(0, 'evil')",
        "lo_import": "SELECT lo_import('/etc/hostname')",
        "table in xpmet": "CREATE TABLE xpmet.evil (a int)",
        "table in public": "CREATE TABLE public.evil (a int)",
        "function in public": "CREATE FUNCTION public.evil() RETURNS int LANGUAGE sql AS 'SELECT 1'",
        "schema": "CREATE SCHEMA evil",
        "insert": "INSERT INTO xpmet.survey (survey_id, name) VALUES (999, 'evil')",
        "update": "UPDATE xpmet.gaia_source SET ra = 0",
        "delete": "DELETE FROM xpmet.gaia_source",
        "truncate": "TRUNCATE xpmet.predictions",
        "advisory lock": "SELECT pg_advisory_lock(1)",
        "advisory lock shared": "SELECT pg_advisory_lock_shared(1, 2)",
        "try advisory xact lock": "SELECT pg_try_advisory_xact_lock(1)",
        "pg_read_file": "SELECT pg_read_file('/etc/passwd')",
        "pg_read_binary_file": "SELECT pg_read_binary_file('PG_VERSION')",
        "pg_ls_dir": "SELECT pg_ls_dir('.')",
        "pg_stat_file": "SELECT pg_stat_file('PG_VERSION')",
        "etl_load": "SELECT count(*) FROM xpmet.etl_load",
        "model paths": "SELECT path FROM xpmet.models",
        "alembic_version": "SELECT * FROM xpmet.alembic_version",
        "refresh": "REFRESH MATERIALIZED VIEW xpmet.labels",
        "refresh_labels()": "SELECT xpmet.refresh_labels()",
        "copy to file": f"COPY (SELECT 1) TO '{tmp / 'evil.txt'}'",
        "copy to program": f"COPY (SELECT 1) TO PROGRAM 'touch {tmp / 'evil2.txt'}'",
        "wal message": "SELECT pg_logical_emit_message(false, 'evil', 'x')",
        "terminate": "SELECT pg_terminate_backend(0)",
        "cancel": "SELECT pg_cancel_backend(0)",
        "exclusive lock": "LOCK TABLE xpmet.labels IN ACCESS EXCLUSIVE MODE",
        "for update": "SELECT * FROM xpmet.gaia_source FOR UPDATE",
        "sequence": "SELECT nextval(pg_get_serial_sequence('xpmet.etl_load', 'load_id'))",
        "role": "SET ROLE xpmet",
        "set temp_file_limit": "SET temp_file_limit = -1",
    }


def test_reader_can_change_nothing_even_with_read_only_off(reader_url, tmp_path):
    import psycopg
    from xpmet.db.engine import raw_connect
    tmp_path.chmod(0o777)  # so that only privileges, not the directory, stop a server-side write
    attempts = _attempts(tmp_path)
    got_through = []
    with psycopg.connect(reader_url) as c:
        for name, sql in attempts.items():
            c.execute("SET default_transaction_read_only = off")
            c.commit()
            try:
                c.execute(sql)
                got_through.append(name)
            except psycopg.Error as e:
                # refused for want of privileges, not because the transaction was read-only
                assert "read-only transaction" not in str(e), (name, str(e))
            c.rollback()
    assert got_through == []
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path / "evil2.txt").exists()
    with raw_connect(autocommit=True) as c:
        assert c.execute("SELECT count(*) FROM pg_largeobject_metadata").fetchone()[0] == 0
        assert c.execute("SELECT to_regclass('xpmet.evil'), to_regclass('public.evil'), "
                         "to_regnamespace('evil')").fetchone() == (None, None, None)
        assert c.execute("SELECT ra FROM xpmet.gaia_source WHERE source_id = 4295806720").fetchone()[0] == 1


def test_reader_reads_the_published_objects(reader_url):
    import psycopg
    with psycopg.connect(reader_url, autocommit=True) as c:
        c.execute("SET default_transaction_read_only = off")  # reading does not depend on it
        for name in PUBLISHED:
            c.execute(f"SELECT * FROM xpmet.{name} LIMIT 1").fetchall()
        assert c.execute("SELECT count(*) FROM xpmet.gaia_source WHERE "
                         "q3c_radial_query(ra, dec, 1, 2, 0.1)").fetchone()[0] == 1
        c.execute("SELECT model_id, name, kind, created_at, metrics FROM xpmet.models").fetchall()
        c.execute("SELECT count(*), avg(feh) FROM xpmet.metallicity").fetchone()


def test_reader_sees_only_chosen_tables(engine):
    """Nothing in schema xpmet is readable unless listed: new tables stay private until granted."""
    from xpmet.db.engine import raw_connect
    with raw_connect(autocommit=True) as c:
        readable = {r[0] for r in c.execute(
            "SELECT c.relname FROM pg_class c WHERE c.relnamespace = 'xpmet'::regnamespace "
            "AND c.relkind IN ('r', 'v', 'm', 'p', 'f', 'S') "
            "AND has_table_privilege('xpmet_reader', c.oid, 'SELECT')")}
        assert set(PUBLISHED) <= readable
        assert not readable & {"etl_load", "alembic_version", "models"}
        # columns of models: everything but the file paths and the training configuration
        cols = {r[0] for r in c.execute(
            "SELECT attname FROM pg_attribute WHERE attrelid = 'xpmet.models'::regclass AND attnum > 0 "
            "AND NOT attisdropped AND has_column_privilege('xpmet_reader', attrelid, attnum, 'SELECT')")}
        assert "model_id" in cols and "path" not in cols and "config" not in cols
        # a table created from now on is private
        c.execute("CREATE TABLE xpmet.test_private (a int)")
        try:
            assert not c.execute("SELECT has_table_privilege('xpmet_reader', 'xpmet.test_private', "
                                 "'SELECT')").fetchone()[0]
        finally:
            c.execute("DROP TABLE xpmet.test_private")


def test_reader_role_limits(reader_url):
    import psycopg
    from xpmet.db.engine import raw_connect
    with psycopg.connect(reader_url, autocommit=True) as c:
        assert c.execute("SHOW statement_timeout").fetchone()[0] == "10min"
        assert c.execute("SHOW idle_in_transaction_session_timeout").fetchone()[0] == "5min"
        assert c.execute("SHOW temp_file_limit").fetchone()[0] == "10GB"
        assert c.execute("SHOW default_transaction_read_only").fetchone()[0] == "on"
    with raw_connect(autocommit=True) as c:
        row = c.execute("SELECT rolconnlimit, rolsuper, rolinherit, rolcreaterole, rolcreatedb, rolbypassrls "
                        "FROM pg_roles WHERE rolname = 'xpmet_reader'").fetchone()
        assert row == (40, False, False, False, False, False)
        assert c.execute("SELECT count(*) FROM pg_auth_members WHERE member = 'xpmet_reader'::regrole"
                         ).fetchone()[0] == 0


def test_writers_keep_advisory_locks_and_temp_tables(engine):
    """What PUBLIC lost, the server's owner still uses (migrations, predict, loaders, crossmatch)."""
    from xpmet.db.engine import raw_connect
    with raw_connect() as c:
        assert c.execute("SELECT pg_try_advisory_lock(7, 7)").fetchone()[0]
        c.execute("SELECT pg_advisory_unlock(7, 7)")
        c.execute("CREATE TEMP TABLE t_ok ON COMMIT DROP AS SELECT 1 AS a")
        c.rollback()


# -- predict --where ------------------------------------------------------------------------------
@pytest.fixture
def where_sky(clean_db):
    from predict_helpers import insert_sky
    return insert_sky(400, seed=11)


def _no_large_objects():
    from xpmet.db.engine import raw_connect
    with raw_connect(autocommit=True) as c:
        return c.execute("SELECT count(*) FROM pg_largeobject_metadata").fetchone()[0] == 0


@pytest.mark.parametrize("where, message", [
    ("pg_read_file('/etc/passwd') <> ''", "refused"),
    ("length(pg_read_binary_file('PG_VERSION')) > 0", "refused"),
    ("lo_create(0) > 0", "refused"),
    ("lo_from_bytea(0, 'x') > 0", "refused"),
    ("pg_advisory_lock(1) IS NOT NULL", "refused"),
    ("nextval('xpmet.etl_load_load_id_seq') > 0", "refused"),
    ("(SELECT count(*) FROM xpmet.etl_load) >= 0", "refused"),
    # SET ROLE back to the owner, then dynamic SQL planned as the owner: a login cannot switch
    ("set_config('role', 'xpmet', true) <> '' AND "
     "length(query_to_xml('SELECT pg_read_file(''/etc/passwd'')', true, false, '')::text) > 0", "refused"),
    ("pg_sleep(100) IS NOT NULL", "took longer than 5 s"),
])
def test_where_cannot_read_files_sleep_or_write(where_sky, where, message):
    import time
    from predict_helpers import ColourPredictor
    from xpmet.predict import predict
    t0 = time.monotonic()
    with pytest.raises(XpmetError, match=message) as e:
        predict(ColourPredictor(), where=where, progress=False)
    assert "\n" not in str(e.value)
    assert time.monotonic() - t0 < 60
    assert _no_large_objects()


@pytest.mark.parametrize("workers", [1, 2])
def test_where_still_filters_as_the_reader(where_sky, workers):
    from predict_helpers import ColourPredictor
    from xpmet.db.engine import raw_connect
    from xpmet.predict import predict
    r = predict(ColourPredictor(), where="current_user = 'xpmet_reader' AND g.phot_g_mean_mag < 14",
                chunk_rows=100, workers=workers, progress=False)
    want = int((where_sky["g"] < 14).sum())
    assert 0 < want < 400 and r.written == want
    with raw_connect(autocommit=True) as c:
        assert c.execute("SELECT count(*) FROM xpmet.predictions").fetchone()[0] == want


def test_where_that_sleeps_later_is_stopped_per_chunk(where_sky, monkeypatch):
    """A condition harmless on the sampled stars and slow on the rest meets the per-chunk timeout."""
    import xpmet.predict as p
    from predict_helpers import ColourPredictor
    import xpmet.predict.plan
    monkeypatch.setattr(xpmet.predict.plan, "WHERE_CHUNK_TIMEOUT_MS", 1500)  # read per chunk by the pipeline
    later = int(where_sky["source_id"][p.WHERE_CHECK_SAMPLE + 50])
    with pytest.raises(XpmetError, match=r"took longer than 1.5 s on source_ids \[") as e:
        p.predict(ColourPredictor(), where=f"x.source_id < {later} OR pg_sleep(100) IS NOT NULL",
                  chunk_rows=100, progress=False)
    assert "\n" not in str(e.value)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory, torch_one_thread):
    import ml_semisynth as semi
    from xpmet.ml.train import TrainConfig, train
    d = tmp_path_factory.mktemp("tiny-model")
    semi.write_file(d / "data.h5", n=300, n_faint=10)
    return train(d / "data.h5", d / "est", TrainConfig(hidden=(8,), epochs=1), register=False, progress=False)


def test_cli_where_refusals_are_one_line(where_sky, tiny_model, run_cli):
    for where in ("pg_read_file('/etc/passwd') <> ''", "pg_sleep(100) IS NOT NULL"):
        r = run_cli("predict", "--model", tiny_model, "--where", where, ok=False)
        assert r.exit_code == 1
        assert "Traceback" not in r.output
        lines = [ln for ln in r.output.splitlines() if ln.startswith("error:")]
        assert len(lines) == 1 and "--where" in lines[0], r.output
    r = run_cli("predict", "--model", tiny_model, "--where", "g.phot_g_mean_mag < 14")
    assert f"wrote {int((where_sky['g'] < 14).sum())} predictions" in r.output


# -- a server where the database owner is not a superuser -----------------------------------------
OWNER = "xpmet_t_owner"


def _url(base: str, db: str, user: str) -> str:
    from urllib.parse import urlsplit, urlunsplit
    p = urlsplit(base)
    return urlunsplit((p.scheme, f"{user}@{p.netloc.rsplit('@', 1)[-1]}", f"/{db}", p.query, ""))


@pytest.fixture(scope="module")
def owned_dbs(engine):
    """Two databases owned by a role that is neither superuser nor CREATEROLE, q3c installed by the
    superuser: 'by_su' is migrated by the superuser, 'by_owner' by the owner itself."""
    from xpmet.db import migrate
    from xpmet.db.engine import libpq_url, raw_connect
    base = libpq_url()
    dbs = {"by_su": "xpmet_t_by_su", "by_owner": "xpmet_t_by_owner"}
    with raw_connect(base, autocommit=True) as c:
        c.execute(f"CREATE ROLE {OWNER} LOGIN NOSUPERUSER NOCREATEROLE NOCREATEDB")
        for db in dbs.values():
            c.execute(f"CREATE DATABASE {db} OWNER {OWNER}")
    try:
        for key, db in dbs.items():
            with raw_connect(_url(base, db, "xpmet"), autocommit=True) as c:
                c.execute("CREATE EXTENSION q3c")
            migrate.upgrade(_url(base, db, "xpmet" if key == "by_su" else OWNER), "0004")
        yield {k: (lambda user, db=db: _url(base, db, user)) for k, db in dbs.items()}
    finally:
        with raw_connect(base, autocommit=True) as c:
            for db in dbs.values():
                c.execute(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")
            c.execute(f"DROP OWNED BY {OWNER}")
            c.execute(f"DROP ROLE {OWNER}")


def _reader_can(url: str, sql: str) -> bool:
    import psycopg
    with psycopg.connect(url) as c:
        c.execute("SET default_transaction_read_only = off")
        c.commit()  # the next transaction is read-write: only privileges can refuse
        try:
            c.execute(sql)
            return True
        except psycopg.Error as e:
            assert "read-only transaction" not in str(e), str(e)
            return False
        finally:
            c.rollback()


def test_writers_that_are_not_superusers_keep_what_public_lost(owned_dbs):
    """Superuser migrates, a non-superuser owns the database and writes: it keeps advisory locks and
    temporary tables, and may run --where as the reader."""
    import psycopg
    url = owned_dbs["by_su"]
    with psycopg.connect(url(OWNER)) as c:
        assert not c.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user").fetchone()[0]
        assert c.execute("SELECT pg_try_advisory_lock(1, 2)").fetchone()[0]
        c.execute("SELECT pg_advisory_xact_lock(3)")
        c.execute("CREATE TEMP TABLE t_ok (a int)")
        c.execute("SET LOCAL ROLE xpmet_reader")
        assert c.execute("SELECT current_user").fetchone()[0] == "xpmet_reader"
        c.rollback()
    for sql in ("SELECT pg_advisory_lock(1)", "CREATE TEMP TABLE evil (a int)", "SELECT lo_create(0)",
                "CREATE TABLE public.evil (a int)", "SELECT count(*) FROM xpmet.etl_load"):
        assert not _reader_can(url("xpmet_reader"), sql), sql
    assert _reader_can(url("xpmet_reader"), "SELECT count(*) FROM xpmet.metallicity")


def test_a_non_superuser_migration_fences_what_it_can_and_says_what_it_could_not(owned_dbs):
    import psycopg
    from xpmet import resources
    url = owned_dbs["by_owner"]
    # what the owner controls is fenced ...
    for sql in ("CREATE TEMP TABLE evil (a int)", "CREATE TABLE public.evil (a int)",
                "CREATE TABLE xpmet.evil (a int)", "SELECT count(*) FROM xpmet.etl_load"):
        assert not _reader_can(url("xpmet_reader"), sql), sql
    assert _reader_can(url("xpmet_reader"), "SELECT count(*) FROM xpmet.labels")
    # ... what needs a superuser is not, and the file says so when run again (it is idempotent)
    assert _reader_can(url("xpmet_reader"), "SELECT pg_try_advisory_xact_lock(1)")
    notices = []
    with psycopg.connect(url(OWNER), autocommit=True) as c:
        c.add_notice_handler(lambda d: notices.append(d.message_primary))
        c.execute(resources.sql_text("reader_boundary.sql"))
    text = " ".join(notices)
    assert "not fully fenced" in text and "lo_create(oid)" in text and "pg_advisory_lock(bigint)" in text
    assert "temp_file_limit" in text and "superuser" in text
    assert "TEMPORARY on database" not in text and "CREATE on schema" not in text


def test_downgrade_restores_0003_and_upgrade_fences_again(owned_dbs):
    from xpmet.db import migrate
    url = owned_dbs["by_su"]
    reader = url("xpmet_reader")
    probes = ["SELECT count(*) FROM xpmet.etl_load", "SELECT lo_create(0)", "CREATE TEMP TABLE t (a int)",
              "SELECT pg_advisory_xact_lock(1)"]
    try:
        migrate.downgrade(url("xpmet"), "0003")
        assert all(_reader_can(reader, sql) for sql in probes)
    finally:
        migrate.upgrade(url("xpmet"), "0004")
    assert not any(_reader_can(reader, sql) for sql in probes)


def test_running_the_file_again_keeps_what_later_migrations_published(engine):
    from xpmet import resources
    from xpmet.db.engine import raw_connect
    with raw_connect(autocommit=True) as c:
        c.execute("CREATE VIEW xpmet.test_later AS SELECT 1 AS a")
        try:
            c.execute("GRANT SELECT ON xpmet.test_later TO xpmet_reader")
            c.execute(resources.sql_text("reader_boundary.sql"))
            assert c.execute("SELECT has_table_privilege('xpmet_reader', 'xpmet.test_later', 'SELECT'), "
                             "has_table_privilege('xpmet_reader', 'xpmet.etl_load', 'SELECT'), "
                             "has_function_privilege('xpmet_reader', 'pg_catalog.lo_create(oid)', 'EXECUTE')"
                             ).fetchone() == (True, False, False)
        finally:
            c.execute("DROP VIEW xpmet.test_later")
