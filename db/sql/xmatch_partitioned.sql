-- Migration 0008: xpmet.xmatch partitioned by run_id, one partition per crossmatch run. A run
-- writes its rows into a table it creates in its own transaction (so a wal_level = minimal server
-- skips their WAL), indexes it after the rows are in and attaches it; pruning a run drops its
-- partition instead of deleting rows. Undone by xmatch_partitioned_drop.sql.
-- (No percent signs in this file: SQLAlchemy's text() would double them.)

ALTER TABLE xpmet.xmatch RENAME TO xmatch_unpartitioned;
ALTER TABLE xpmet.xmatch_unpartitioned RENAME CONSTRAINT xmatch_pkey TO xmatch_unpartitioned_pkey;
ALTER INDEX xpmet.ix_xmatch_source RENAME TO ix_xmatch_unpartitioned_source;

CREATE TABLE xpmet.xmatch (LIKE xpmet.xmatch_unpartitioned INCLUDING DEFAULTS INCLUDING CONSTRAINTS
                           INCLUDING COMMENTS) PARTITION BY LIST (run_id);
ALTER TABLE xpmet.xmatch ADD CONSTRAINT xmatch_pkey PRIMARY KEY (run_id, star_id);
CREATE INDEX ix_xmatch_source ON xpmet.xmatch (source_id);
COMMENT ON TABLE xpmet.xmatch IS 'Best Gaia neighbour of every survey row, per crossmatch run';

DO $$
DECLARE
    r integer;
BEGIN
    FOR r IN SELECT DISTINCT run_id FROM xpmet.xmatch_unpartitioned ORDER BY 1 LOOP
        EXECUTE 'CREATE TABLE xpmet.xmatch_r' || r || ' PARTITION OF xpmet.xmatch FOR VALUES IN (' || r || ')';
        EXECUTE 'INSERT INTO xpmet.xmatch_r' || r || ' SELECT * FROM xpmet.xmatch_unpartitioned WHERE run_id = $1'
            USING r;
    END LOOP;
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'xpmet_reader')
       AND has_table_privilege('xpmet_reader', 'xpmet.xmatch_unpartitioned', 'SELECT') THEN
        GRANT SELECT ON xpmet.xmatch TO xpmet_reader;
    END IF;
END $$;

-- The current run's rows: run_id compared with a sub-select (an init plan), so the executor reads
-- the current run's partition only (a join with xmatch_run would scan every run's).
CREATE OR REPLACE VIEW xpmet.xmatch_current AS
SELECT (SELECT version FROM xpmet.xmatch_run WHERE is_current) AS xmatch_version, x.*
FROM xpmet.xmatch x
WHERE x.run_id = (SELECT run_id FROM xpmet.xmatch_run WHERE is_current);

DROP TABLE xpmet.xmatch_unpartitioned;
ANALYZE xpmet.xmatch;
