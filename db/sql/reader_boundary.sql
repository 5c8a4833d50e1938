-- xpmet_reader as a security boundary: it reads the published tables and views and changes nothing,
-- even after SET default_transaction_read_only = off. Applied by migration 0004; undone by
-- reader_boundary_drop.sql. Idempotent: an administrator may run it again by hand (psql -f) after
-- db/sql/readonly_role.sql, e.g. where the migrating user could not do all of it; the table grants
-- are redone only while readonly_role.sql's blanket grant is there, so later migrations' grants stay.
-- (No percent signs in this file: SQLAlchemy's text() would double them.)
--
-- Privileges, not settings, are the fence:
--   * SELECT only on the objects listed in `published` (xpmet.models without its file paths);
--     internal bookkeeping (etl_load paths and errors, alembic_version) is not readable, and
--     tables created later are not readable until a migration grants them.
--   * No TEMP on the database, no CREATE on the database or any schema (so no tables, functions,
--     types or temporary objects anywhere), no role memberships.
--   * PUBLIC loses EXECUTE on functions that change state outside the transaction or block
--     others: large-object writes, advisory locks, pg_logical_emit_message (writes WAL),
--     pg_cancel/terminate_backend. The writer roles (the migrating user, the database owner and
--     the schema owner) get them back, since loaders, predict and migrations use advisory locks
--     and the crossmatch uses temporary tables. Superusers need no grants.
--   * Server-file functions (pg_read_file, pg_ls_dir, lo_import, ...) are superuser-only by
--     default; they are revoked here only if the reader can run them.
--   * The functions of schema xpmet are not executable by PUBLIC; the reader gets
--     metallicity_model(), which the view xpmet.metallicity calls.
-- Settings bound a reader's resources: statement_timeout, idle_in_transaction_session_timeout
-- and CONNECTION LIMIT (the first two are defaults a reader may still change with SET: what
-- cannot be overridden is temp_file_limit, a superuser setting, and the privileges above).
--
-- Without superuser rights the pg_catalog revocations and temp_file_limit cannot be applied:
-- they are skipped with a NOTICE that names what the reader can still do, and the migration
-- goes on (a managed server's administrator then runs this file as a superuser).
DO $$
DECLARE
    reader CONSTANT text := 'xpmet_reader';
    published CONSTANT text[] := ARRAY[
        'gaia_source', 'xp_continuous', 'survey', 'survey_star', 'xmatch_run', 'xmatch',
        'label_setting', 'predictions',
        'xmatch_current', 'survey_measurement', 'survey_source_label', 'survey_zero_point',
        'calibrated_measurement', 'label_measurement', 'labels', 'training_set',
        'metallicity_all', 'metallicity'];
    model_columns CONSTANT text := 'model_id, name, kind, created_at, metrics, data_fingerprint, xpmet_version';
    -- Executable by PUBLIC by default, and with effects beyond the reader's own transaction.
    revoked CONSTANT text[] := ARRAY[
        'lo_creat(integer)', 'lo_create(oid)', 'lo_from_bytea(oid, bytea)', 'lo_put(oid, bigint, bytea)',
        'lowrite(integer, bytea)', 'lo_unlink(oid)', 'lo_truncate(integer, integer)',
        'lo_truncate64(integer, bigint)',
        'pg_advisory_lock(bigint)', 'pg_advisory_lock(integer, integer)',
        'pg_advisory_lock_shared(bigint)', 'pg_advisory_lock_shared(integer, integer)',
        'pg_try_advisory_lock(bigint)', 'pg_try_advisory_lock(integer, integer)',
        'pg_try_advisory_lock_shared(bigint)', 'pg_try_advisory_lock_shared(integer, integer)',
        'pg_advisory_xact_lock(bigint)', 'pg_advisory_xact_lock(integer, integer)',
        'pg_advisory_xact_lock_shared(bigint)', 'pg_advisory_xact_lock_shared(integer, integer)',
        'pg_try_advisory_xact_lock(bigint)', 'pg_try_advisory_xact_lock(integer, integer)',
        'pg_try_advisory_xact_lock_shared(bigint)', 'pg_try_advisory_xact_lock_shared(integer, integer)',
        'pg_logical_emit_message(boolean, text, text)', 'pg_logical_emit_message(boolean, text, bytea)',
        'pg_cancel_backend(integer)', 'pg_terminate_backend(integer, bigint)'];
    -- Superuser-only (or granted through pg_read_server_files & co.) by default: checked, not assumed.
    server_files CONSTANT text[] := ARRAY[
        'pg_read_file', 'pg_read_binary_file', 'pg_ls_dir', 'pg_stat_file', 'pg_ls_logdir',
        'pg_ls_waldir', 'pg_ls_tmpdir', 'pg_ls_archive_statusdir', 'pg_ls_logicalsnapdir',
        'pg_ls_logicalmapdir', 'pg_ls_replslotdir', 'lo_import', 'lo_export', 'pg_file_write',
        'pg_file_rename', 'pg_file_unlink', 'pg_logdir_ls', 'pg_file_sync'];
    su boolean := (SELECT rolsuper FROM pg_roles WHERE rolname = current_user);
    db text := current_database();
    writers text[];
    w text;
    r record;
    holes text := '';
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = reader) THEN
        RAISE NOTICE USING MESSAGE = reader || ' does not exist: nothing to fence (ask an administrator '
            || 'to run db/sql/readonly_role.sql, then db/sql/reader_boundary.sql)';
        RETURN;
    END IF;
    -- Roles that write the catalogue and keep what PUBLIC loses here.
    SELECT array_agg(DISTINCT rolname) INTO writers FROM pg_roles
    WHERE NOT rolsuper AND rolname <> reader AND oid IN (
        (SELECT oid FROM pg_roles WHERE rolname = current_user),
        (SELECT datdba FROM pg_database WHERE datname = db),
        (SELECT nspowner FROM pg_namespace WHERE nspname = 'xpmet'));
    writers := coalesce(writers, '{}');

    -- The role: resource limits, no memberships (predefined roles such as pg_read_server_files).
    BEGIN
        EXECUTE 'ALTER ROLE ' || reader || ' NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS '
            || 'NOINHERIT CONNECTION LIMIT 40';
        EXECUTE 'ALTER ROLE ' || reader || ' SET statement_timeout = ''10min''';
        EXECUTE 'ALTER ROLE ' || reader || ' SET idle_in_transaction_session_timeout = ''5min''';
        FOR r IN SELECT m.roleid::regrole::text AS role FROM pg_auth_members m
                 WHERE m.member = (SELECT oid FROM pg_roles WHERE rolname = reader) LOOP
            EXECUTE 'REVOKE ' || quote_ident(r.role) || ' FROM ' || reader;
        END LOOP;
    EXCEPTION WHEN insufficient_privilege THEN
        holes := holes || '; role limits and memberships (needs CREATEROLE)';
    END;
    IF su THEN
        EXECUTE 'ALTER ROLE ' || reader || ' SET temp_file_limit = ''10GB''';
    ELSE
        holes := holes || '; temp_file_limit (needs superuser)';
    END IF;
    -- predict evaluates --where under this role (SET LOCAL ROLE): writers must be members.
    FOREACH w IN ARRAY writers LOOP
        BEGIN
            EXECUTE 'GRANT ' || reader || ' TO ' || quote_ident(w);
        EXCEPTION WHEN insufficient_privilege THEN
            holes := holes || '; GRANT ' || reader || ' TO ' || w || ' (needs CREATEROLE)';
        END;
    END LOOP;

    -- The database: connect, nothing else.
    IF su OR pg_has_role(current_user, (SELECT datdba FROM pg_database WHERE datname = db), 'USAGE') THEN
        EXECUTE 'REVOKE TEMPORARY, CREATE ON DATABASE ' || quote_ident(db) || ' FROM PUBLIC, ' || reader;
        EXECUTE 'GRANT CONNECT ON DATABASE ' || quote_ident(db) || ' TO ' || reader;
        FOREACH w IN ARRAY writers LOOP
            EXECUTE 'GRANT TEMPORARY ON DATABASE ' || quote_ident(db) || ' TO ' || quote_ident(w);
        END LOOP;
    END IF;
    -- Every schema we may change: no CREATE for PUBLIC or the reader.
    FOR r IN SELECT nspname FROM pg_namespace
             WHERE nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')
               AND nspname !~ '^pg_(toast_)?temp_[0-9]+$'
               AND (su OR pg_has_role(current_user, nspowner, 'USAGE')) LOOP
        EXECUTE 'REVOKE CREATE ON SCHEMA ' || quote_ident(r.nspname) || ' FROM PUBLIC, ' || reader;
    END LOOP;

    -- Schema xpmet: SELECT on the published objects only, and no default grants for new tables.
    -- Only while readonly_role.sql's blanket grant is in place: run again by hand at a later
    -- revision, this file must not take back what later migrations published.
    IF has_table_privilege(reader, 'xpmet.etl_load', 'SELECT') OR EXISTS (
            SELECT 1 FROM pg_default_acl d, aclexplode(d.defaclacl) a
            WHERE d.defaclnamespace = 'xpmet'::regnamespace
              AND a.grantee = (SELECT oid FROM pg_roles WHERE rolname = reader)) THEN
        EXECUTE 'ALTER DEFAULT PRIVILEGES IN SCHEMA xpmet REVOKE ALL ON TABLES FROM ' || reader;
        EXECUTE 'REVOKE ALL ON ALL TABLES IN SCHEMA xpmet FROM ' || reader;
        EXECUTE 'REVOKE ALL ON ALL SEQUENCES IN SCHEMA xpmet FROM ' || reader;
        EXECUTE 'GRANT USAGE ON SCHEMA xpmet TO ' || reader;
        FOREACH w IN ARRAY published LOOP
            EXECUTE 'GRANT SELECT ON xpmet.' || quote_ident(w) || ' TO ' || reader;
        END LOOP;
        EXECUTE 'GRANT SELECT (' || model_columns || ') ON xpmet.models TO ' || reader;
        -- Functions of schema xpmet (a later migration that adds one with side effects revokes it too).
        EXECUTE 'REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA xpmet FROM PUBLIC';
        FOREACH w IN ARRAY writers LOOP
            EXECUTE 'GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA xpmet TO ' || quote_ident(w);
        END LOOP;
        EXECUTE 'GRANT EXECUTE ON FUNCTION xpmet.metallicity_model() TO ' || reader;
    END IF;

    -- pg_catalog functions belong to the bootstrap superuser: only a superuser changes their ACLs.
    IF su THEN
        FOREACH w IN ARRAY revoked LOOP
            IF to_regprocedure('pg_catalog.' || w) IS NOT NULL THEN
                EXECUTE 'REVOKE EXECUTE ON FUNCTION pg_catalog.' || w || ' FROM PUBLIC, ' || reader;
                IF cardinality(writers) > 0 THEN
                    EXECUTE 'GRANT EXECUTE ON FUNCTION pg_catalog.' || w || ' TO '
                        || (SELECT string_agg(quote_ident(x), ', ') FROM unnest(writers) x);
                END IF;
            END IF;
        END LOOP;
        FOR r IN SELECT p.oid::regprocedure::text AS f FROM pg_proc p
                 WHERE p.pronamespace = 'pg_catalog'::regnamespace AND p.proname = ANY (server_files)
                   AND has_function_privilege(reader, p.oid, 'EXECUTE') LOOP
            EXECUTE 'REVOKE EXECUTE ON FUNCTION pg_catalog.' || r.f || ' FROM PUBLIC, ' || reader;
        END LOOP;
    END IF;

    -- Say what the reader can still do, rather than pretend.
    FOR r IN SELECT p.oid::regprocedure::text AS f FROM pg_proc p
             WHERE p.pronamespace = 'pg_catalog'::regnamespace
               AND (p.oid IN (SELECT to_regprocedure('pg_catalog.' || x) FROM unnest(revoked) x)
                    OR p.proname = ANY (server_files))
               AND has_function_privilege(reader, p.oid, 'EXECUTE') LOOP
        holes := holes || '; EXECUTE ' || r.f;
    END LOOP;
    IF has_database_privilege(reader, db, 'TEMPORARY') THEN
        holes := holes || '; TEMPORARY on database ' || db;
    END IF;
    FOR r IN SELECT nspname FROM pg_namespace WHERE has_schema_privilege(reader, oid, 'CREATE') LOOP
        holes := holes || '; CREATE on schema ' || r.nspname;
    END LOOP;
    IF holes <> '' THEN
        RAISE NOTICE USING MESSAGE = reader || ' is not fully fenced: ' || current_user
            || ' could not revoke' || holes || '. Run db/sql/reader_boundary.sql as a superuser.';
    END IF;
END
$$;
