-- Undoes db/sql/reader_boundary.sql: back to what migration 0003 granted (SELECT on every table of
-- schema xpmet, now and later; PUBLIC's default EXECUTE and TEMPORARY). CREATE on schema public
-- stays revoked from PUBLIC, as PostgreSQL 15 creates it. Memberships the role lost are not restored.
-- (No percent signs in this file: SQLAlchemy's text() would double them.)
DO $$
DECLARE
    reader CONSTANT text := 'xpmet_reader';
    regranted CONSTANT text[] := ARRAY[
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
    su boolean := (SELECT rolsuper FROM pg_roles WHERE rolname = current_user);
    db text := current_database();
    w text;
BEGIN
    IF su THEN
        FOREACH w IN ARRAY regranted LOOP
            IF to_regprocedure('pg_catalog.' || w) IS NOT NULL THEN
                EXECUTE 'GRANT EXECUTE ON FUNCTION pg_catalog.' || w || ' TO PUBLIC';
            END IF;
        END LOOP;
    END IF;
    IF su OR pg_has_role(current_user, (SELECT datdba FROM pg_database WHERE datname = db), 'USAGE') THEN
        EXECUTE 'GRANT TEMPORARY ON DATABASE ' || quote_ident(db) || ' TO PUBLIC';
    END IF;
    EXECUTE 'GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA xpmet TO PUBLIC';
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = reader) THEN
        RETURN;
    END IF;
    BEGIN
        EXECUTE 'ALTER ROLE ' || reader || ' CONNECTION LIMIT -1';
        EXECUTE 'ALTER ROLE ' || reader || ' RESET statement_timeout';
        EXECUTE 'ALTER ROLE ' || reader || ' RESET idle_in_transaction_session_timeout';
        IF su THEN
            EXECUTE 'ALTER ROLE ' || reader || ' RESET temp_file_limit';
        END IF;
    EXCEPTION WHEN insufficient_privilege THEN
        RAISE NOTICE USING MESSAGE = reader || ' keeps its limits: ' || current_user || ' may not alter roles';
    END;
    EXECUTE 'GRANT SELECT ON ALL TABLES IN SCHEMA xpmet TO ' || reader;
    EXECUTE 'ALTER DEFAULT PRIVILEGES IN SCHEMA xpmet GRANT SELECT ON TABLES TO ' || reader;
END
$$;
