-- The read-only role xpmet_reader: can connect and SELECT from schema xpmet, cannot modify anything.
-- (No percent signs in this file: SQLAlchemy's text() would double them.)
-- Roles belong to the whole server: create it only when missing, and only when we are allowed to.
-- Applied by migrations/versions/0003_predictions_views.py; undone by readonly_role_drop.sql.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'xpmet_reader') THEN
        IF NOT (SELECT rolsuper OR rolcreaterole FROM pg_roles WHERE rolname = current_user) THEN
            RAISE NOTICE USING MESSAGE = 'xpmet_reader not created: ' || current_user
                || ' may not create roles (ask an administrator to run db/sql/readonly_role.sql, then'
                || ' db/sql/reader_boundary.sql)';
            RETURN;
        END IF;
        CREATE ROLE xpmet_reader LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOINHERIT;
    END IF;
    -- Privileges are the guarantee (db/sql/reader_boundary.sql, migration 0004); read-only
    -- transactions by default are a second fence. The role may be another database's, made by
    -- someone else: then only its grants here are ours to set.
    BEGIN
        ALTER ROLE xpmet_reader SET default_transaction_read_only = on;
    EXCEPTION WHEN insufficient_privilege THEN
        RAISE NOTICE USING MESSAGE = 'xpmet_reader kept its settings: ' || current_user || ' may not alter roles';
    END;
    EXECUTE 'GRANT CONNECT ON DATABASE ' || quote_ident(current_database()) || ' TO xpmet_reader';
    GRANT USAGE ON SCHEMA xpmet TO xpmet_reader;
    GRANT SELECT ON ALL TABLES IN SCHEMA xpmet TO xpmet_reader;
    -- Tables and views created later by the migrating role become readable too.
    ALTER DEFAULT PRIVILEGES IN SCHEMA xpmet GRANT SELECT ON TABLES TO xpmet_reader;
    REVOKE CREATE ON SCHEMA public FROM xpmet_reader;
END
$$;
