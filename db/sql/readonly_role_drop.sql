-- Undoes db/sql/readonly_role.sql in this database; the role itself goes when nothing else uses it.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'xpmet_reader') THEN
        RETURN;
    END IF;
    ALTER DEFAULT PRIVILEGES IN SCHEMA xpmet REVOKE SELECT ON TABLES FROM xpmet_reader;
    REVOKE ALL ON ALL TABLES IN SCHEMA xpmet FROM xpmet_reader;
    REVOKE USAGE ON SCHEMA xpmet FROM xpmet_reader;
    EXECUTE 'REVOKE CONNECT ON DATABASE ' || quote_ident(current_database()) || ' FROM xpmet_reader';
    BEGIN
        DROP ROLE xpmet_reader;
    EXCEPTION WHEN dependent_objects_still_exist OR insufficient_privilege THEN
        RAISE NOTICE 'xpmet_reader kept: it still has privileges in another database';
    END;
END
$$;
